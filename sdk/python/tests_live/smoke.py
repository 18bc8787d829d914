"""Live smoke test of the Python SDK (run by .ci/sdk-smoke.sh against a corral on the test
driver): log in, create a pool, a template and a guest, wait for the operation, list, power
off, delete, and check that the guest's address is free again."""

import os
import sys

from corral_client import (
    CreateGuest,
    CreatePool,
    CreateTemplate,
    GuestAction,
    GuestsApi,
    OsType,
    ResourcesApi,
)
from corral_client.session import Session


def main() -> int:
    s = Session.login(os.environ["CORRAL_URL"], os.environ["CORRAL_USER"], os.environ["CORRAL_PASSWORD"])
    res, guests = ResourcesApi(s.client), GuestsApi(s.client)

    pool = res.pool_create(CreatePool(name="py-net", cidr="10.88.0.0/24", gateway="10.88.0.1",
                                      range_start="10.88.0.10", range_end="10.88.0.20"))
    res.template_create(CreateTemplate(name="py-tmpl", path=os.environ["CORRAL_TEMPLATE_IMAGE"],
                                       os_type=OsType.LINUX))
    accepted = guests.guest_create(CreateGuest(name="py-1", template="py-tmpl", cpus=1,
                                               memory_mib=64, pool="py-net"))
    op = s.wait(accepted.operations[0].operation_id)
    assert op.state == "succeeded", op

    listed = [g for g in guests.guest_list() if g.name == "py-1"]
    assert len(listed) == 1 and listed[0].state.value == "running", listed
    ip = listed[0].ip
    assert ip and ip.startswith("10.88.0."), listed[0]
    held = [a.ip for a in res.pool_addresses(pool.id, state="allocated")]
    assert ip in held, held

    op = s.wait(guests.guest_action("py-1", GuestAction.POWEROFF).operation_id)
    assert op.state == "succeeded", op
    assert guests.guest_get("py-1").state.value == "shutoff"

    op = s.wait(guests.guest_delete("py-1").operation_id)
    assert op.state == "succeeded", op
    free = [a.ip for a in res.pool_addresses(pool.id, state="free")]
    assert ip in free, f"{ip} is not free again"
    print(f"python SDK: created, listed, powered off and deleted py-1; {ip} is free again")
    return 0


if __name__ == "__main__":
    sys.exit(main())

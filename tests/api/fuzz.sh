#!/usr/bin/env bash
# Fuzzes the HTTP API against its own OpenAPI document with schemathesis.
#
#   tests/api/fuzz.sh CORRAL_BINARY [SECONDS]
#
# Starts Redis, a controller and a node on libvirt's test driver in a scratch directory,
# seeds one pool, one template and one guest so that ids and names resolve, and runs
# schemathesis for at most SECONDS (default 120) with every response check: no 5xx, every
# body matching its schema, every status documented, bad input refused. Exits non-zero on
# any finding. Needs `schemathesis` on PATH (PyPI) and `redis-server`.
set -euo pipefail

bin=$(readlink -f "$1")
secs=${2:-120}
spec=$(dirname "$(readlink -f "$0")")/../../openapi/corral.json
work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rport=$(free_port)
port=$(free_port)
redis-server --port "$rport" --bind 127.0.0.1 --dir "$work" --save '' --appendonly no \
    >"$work/redis.log" 2>&1 &
pids+=($!)

export CORRAL_LISTEN=127.0.0.1:$port
export CORRAL_DATABASE=$work/corral.db
export CORRAL_DATA_DIR=$work
export CORRAL_STORAGE_DIR=$work/images
export CORRAL_REDIS_URL=redis://127.0.0.1:$rport
export CORRAL_HYPERVISOR_URI=test:///default
export CORRAL_NODE_ID=fuzz-node
export CORRAL_ADMIN_PASSWORD=fuzz-admin
export CORRAL_LOG=warn
"$bin" node >"$work/node.log" 2>&1 &
pids+=($!)
"$bin" controller >"$work/controller.log" 2>&1 &
pids+=($!)

base=http://127.0.0.1:$port/api/v1
token=
for _ in $(seq 300); do
    if out=$(curl -sf -H 'content-type: application/json' \
        -d '{"username":"admin","password":"fuzz-admin"}' "$base/auth/login"); then
        token=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])' <<<"$out")
        break
    fi
    sleep 0.1
done
[ -n "$token" ] || { echo "corral did not start"; tail -20 "$work"/*.log; exit 1; }

api() { curl -sf -H "authorization: Bearer $token" -H 'content-type: application/json' "$@"; }
qemu-img create -q -f qcow2 "$work/base.qcow2" 16M
api -d '{"name":"fuzz-net","cidr":"10.77.0.0/24","gateway":"10.77.0.1","bridge":"br0","range_start":"10.77.0.10","range_end":"10.77.0.200","dns":[]}' \
    "$base/ip-pools" >/dev/null
api -d "{\"name\":\"fuzz-tmpl\",\"path\":\"$work/base.qcow2\",\"os_type\":\"linux\"}" \
    "$base/templates" >/dev/null
api -d '{"template":"fuzz-tmpl","name":"fuzz-guest","cpus":1,"memory_mib":64,"pool":"fuzz-net","password":"fuzz-pass-1"}' \
    "$base/guests" >/dev/null

echo "schemathesis: ${secs}s against $base"
status=0
schemathesis run "$spec" --url "$base" -H "Authorization: Bearer $token" \
    --checks all --exclude-checks ignored_auth,use_after_free,ensure_resource_availability,positive_data_acceptance \
    --max-time "$secs" --workers 2 --no-color \
    --report junit --report-dir "$work/report" || status=$?
if [ "$status" -ne 0 ]; then
    echo "--- controller log (tail)"
    tail -30 "$work/controller.log"
fi
exit "$status"

// Live smoke test of the TypeScript SDK, on its compiled output (run by .ci/sdk-smoke.sh
// against a corral on the test driver): log in, create a pool, a template and a guest,
// wait for the operation, list, power off, delete, and check that the guest's address is
// free again.
const assert = require("node:assert/strict");
const { Session, GuestsApi, ResourcesApi } = require("../dist/index.js");

async function main() {
  const env = process.env;
  const s = await Session.login(env.CORRAL_URL, env.CORRAL_USER, env.CORRAL_PASSWORD);
  const res = new ResourcesApi(s.config);
  const guests = new GuestsApi(s.config);

  const pool = await res.poolCreate({
    createPool: {
      name: "ts-net", cidr: "10.89.0.0/24", gateway: "10.89.0.1",
      rangeStart: "10.89.0.10", rangeEnd: "10.89.0.20",
    },
  });
  await res.templateCreate({
    createTemplate: { name: "ts-tmpl", path: env.CORRAL_TEMPLATE_IMAGE, osType: "linux" },
  });
  const accepted = await guests.guestCreate({
    createGuest: { name: "ts-1", template: "ts-tmpl", cpus: 1, memoryMib: 64, pool: "ts-net" },
  });
  let op = await s.wait(accepted.operations[0].operationId);
  assert.equal(op.state, "succeeded", JSON.stringify(op));

  const listed = (await guests.guestList({})).filter((g) => g.name === "ts-1");
  assert.equal(listed.length, 1);
  assert.equal(listed[0].state, "running");
  const ip = listed[0].ip;
  assert.ok(ip && ip.startsWith("10.89.0."), JSON.stringify(listed[0]));

  op = await s.wait((await guests.guestAction({ id: "ts-1", action: "poweroff" })).operationId);
  assert.equal(op.state, "succeeded");
  assert.equal((await guests.guestGet({ id: "ts-1" })).state, "shutoff");

  op = await s.wait((await guests.guestDelete({ id: "ts-1" })).operationId);
  assert.equal(op.state, "succeeded");
  const free = (await res.poolAddresses({ id: pool.id, state: "free" })).map((a) => a.ip);
  assert.ok(free.includes(ip), `${ip} is not free again`);
  console.log(`typescript SDK: created, listed, powered off and deleted ts-1; ${ip} is free again`);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});

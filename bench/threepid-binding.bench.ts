// Binding 3pids through the homeserver, through the HTTP API against a mock identity server on
// loopback (HTTPS, tests/identity-server-mock.ts), one at a time:
// - /account/3pid/bind: the identity server's /v2/3pid/bind, then the binding recorded;
// - /account/3pid/unbind without id_server: the recorded binding read, /v2/3pid/unbind signed
//   with X-Matrix, the row deleted;
// - /account/deactivate of a user with 3 bindings (password UIA, then 3 signed unbinds).
// Figures: p50 / p99 in ms. Embedded PGlite, and PostgreSQL when DATABASE_URL is set.
//   npx tsx bench/threepid-binding.bench.ts
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { createTestDatabase, startTestServer } from "../tests/harness.ts";
import { ACCESS_TOKEN, MockIdentityServer } from "../tests/identity-server-mock.ts";

const RUNS = Number(process.env.BENCH_BIND_RUNS ?? 50);

function percentile(xs: number[], p: number): number {
  const sorted = [...xs].sort((a, b) => a - b);
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return Math.round(sorted[i]! * 10) / 10;
}

const figures = (xs: number[]) => `${percentile(xs, 50)} / ${percentile(xs, 99)}`;

const dir = await mkdtemp(path.join(tmpdir(), "parley-bench-bind-"));
const ids = await MockIdentityServer.start(dir);
const database = await createTestDatabase();
const hs = await startTestServer({ database, config: { server_name: "bench.local", identity_servers_insecure: ids.name } });
try {
  const call = async (token: string, p: string, body: unknown, expect = 200) => {
    const res = await fetch(`${hs.url}${p}`, {
      method: "POST",
      headers: { ...(token ? { Authorization: `Bearer ${token}` } : {}), "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    const json = (await res.json()) as Record<string, any>;
    if (res.status !== expect) throw new Error(`POST ${p}: ${res.status} ${JSON.stringify(json)}`);
    return json;
  };
  const register = async (username: string) => {
    const json = await call("", "/_matrix/client/v3/register", { username, password: "bench password", auth: { type: "m.login.dummy" } });
    return { token: json.access_token as string, userId: json.user_id as string };
  };
  const bindOne = (token: string, address: string) => {
    const sid = ids.validate("email", address, "secret");
    return call(token, "/_matrix/client/v3/account/3pid/bind", { id_server: ids.name, id_access_token: ACCESS_TOKEN, sid, client_secret: "secret" });
  };
  const binds: number[] = [];
  const unbinds: number[] = [];
  const deactivations: number[] = [];
  for (let i = 0; i < RUNS; i++) {
    const user = await register(`binder${i}`);
    const address = `binder${i}@example.org`;
    let t = performance.now();
    await bindOne(user.token, address);
    binds.push(performance.now() - t);
    t = performance.now();
    const res = await call(user.token, "/_matrix/client/v3/account/3pid/unbind", { medium: "email", address });
    unbinds.push(performance.now() - t);
    if (res.id_server_unbind_result !== "success") throw new Error(JSON.stringify(res));
    for (let j = 0; j < 3; j++) await bindOne(user.token, `binder${i}-${j}@example.org`);
    t = performance.now();
    const first = await call(user.token, "/_matrix/client/v3/account/deactivate", {}, 401);
    const auth = { type: "m.login.password", identifier: { type: "m.id.user", user: user.userId }, password: "bench password", session: first.session };
    const done = await call(user.token, "/_matrix/client/v3/account/deactivate", { auth });
    deactivations.push(performance.now() - t);
    if (done.id_server_unbind_result !== "success") throw new Error(JSON.stringify(done));
  }
  console.log(`${database.url ? "PostgreSQL" : "PGlite"}, ${RUNS} runs, p50 / p99 ms:`);
  console.log(`  /account/3pid/bind (identity server bind + record):           ${figures(binds)}`);
  console.log(`  /account/3pid/unbind (recorded server, signed unbind):        ${figures(unbinds)}`);
  console.log(`  /account/deactivate with 3 bindings (UIA + 3 signed unbinds): ${figures(deactivations)}`);
} finally {
  await hs.destroy();
  await ids.close();
  await rm(dir, { recursive: true, force: true });
}

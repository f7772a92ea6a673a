// Third-party invites through the HTTP API against a mock identity server on loopback (HTTPS,
// tests/identity-server-mock.ts), one at a time, in one room each:
// - invite by 3pid, unbound: hash_details + lookup + store-invite, then the m.room.third_party_invite
//   state event;
// - invite by 3pid, bound: hash_details + lookup, then the m.room.member invite;
// - /3pid/onbind for one pending invite: the signature checked against the invite's keys, the
//   key_validity_url asked, the m.room.member invite sent;
// - and without HTTP, the signature check alone (keySigningThirdPartyInvite, two keys).
// Figures: p50 / p99 in ms. Embedded PGlite, and PostgreSQL when DATABASE_URL is set.
//   npx tsx bench/third-party-invites.bench.ts
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { signJson } from "../federation/protocol/signing.ts";
import { keySigningThirdPartyInvite } from "../federation/protocol/third-party-invite.ts";
import { createTestDatabase, startTestServer } from "../tests/harness.ts";
import { ACCESS_TOKEN, MockIdentityServer } from "../tests/identity-server-mock.ts";

const RUNS = Number(process.env.BENCH_3PID_RUNS ?? 50);

function percentile(xs: number[], p: number): number {
  const sorted = [...xs].sort((a, b) => a - b);
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return Math.round(sorted[i]! * 10) / 10;
}

const figures = (xs: number[]) => `${percentile(xs, 50)} / ${percentile(xs, 99)}`;

const dir = await mkdtemp(path.join(tmpdir(), "parley-bench-3pid-"));
const ids = await MockIdentityServer.start(dir);
const database = await createTestDatabase();
const hs = await startTestServer({ database, config: { server_name: "bench.local", identity_servers_insecure: ids.name } });
try {
  const call = async (token: string, method: string, p: string, body?: unknown) => {
    const res = await fetch(`${hs.url}${p}`, {
      method,
      headers: { ...(token ? { Authorization: `Bearer ${token}` } : {}), ...(body === undefined ? {} : { "Content-Type": "application/json" }) },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    });
    const json = (await res.json()) as Record<string, any>;
    if (res.status !== 200) throw new Error(`${method} ${p}: ${res.status} ${JSON.stringify(json)}`);
    return json;
  };
  const register = async (username: string) => {
    const json = await call("", "POST", "/_matrix/client/v3/register", { username, password: "bench password", auth: { type: "m.login.dummy" } });
    return { token: json.access_token as string, userId: json.user_id as string };
  };
  const owner = await register("owner");
  const invite = (roomId: string, address: string) =>
    call(owner.token, "POST", `/_matrix/client/v3/rooms/${encodeURIComponent(roomId)}/invite`, {
      id_server: ids.name,
      id_access_token: ACCESS_TOKEN,
      medium: "email",
      address,
    });
  const unbound: number[] = [];
  const bound: number[] = [];
  const onbind: number[] = [];
  for (let i = 0; i < RUNS; i++) {
    const roomId = (await call(owner.token, "POST", "/_matrix/client/v3/createRoom", { preset: "private_chat" })).room_id as string;
    const invitee = await register(`invitee${i}`);
    const address = `invitee${i}@example.org`;
    let t = performance.now();
    await invite(roomId, address);
    unbound.push(performance.now() - t);
    t = performance.now();
    const res = await ids.bind(address, invitee.userId, hs.url);
    if (res?.status !== 200) throw new Error(`onbind: ${res?.status} ${JSON.stringify(res?.json)}`);
    onbind.push(performance.now() - t);
    const other = await register(`bound${i}`);
    await ids.bind(`bound${i}@example.org`, other.userId);
    t = performance.now();
    await invite(roomId, `bound${i}@example.org`);
    bound.push(performance.now() - t);
  }
  // The signature check alone: the signing key second of two, as an ephemeral key would be.
  const content = { public_keys: [{ public_key: ids.ephemeral.publicKeyBase64 }, { public_key: ids.key.publicKeyBase64 }] };
  const signed = signJson({ mxid: "@bob:bench.local", token: "t" }, ids.name, ids.key);
  const checks = 2_000;
  let t = performance.now();
  for (let i = 0; i < checks; i++) if (!keySigningThirdPartyInvite(content, signed)) throw new Error("no key");
  const perCheckUs = Math.round(((performance.now() - t) * 1000) / checks);
  console.log(`${database.url ? "PostgreSQL" : "PGlite"}, ${RUNS} runs, p50 / p99 ms:`);
  console.log(`  invite unbound 3pid (lookup + store-invite + state event): ${figures(unbound)}`);
  console.log(`  invite bound 3pid (lookup + invite):                       ${figures(bound)}`);
  console.log(`  /3pid/onbind, one invite (verify + isvalid + invite):      ${figures(onbind)}`);
  console.log(`  signature check alone: ${perCheckUs} µs`);
} finally {
  await hs.destroy();
  await ids.close();
  await rm(dir, { recursive: true, force: true });
}

// Push notifications, in one in-process server (embedded PGlite, or PostgreSQL when DATABASE_URL is
// set) and a push gateway on loopback answering 200 at once:
// - push-rule evaluations per second for a room of MEMBERS local members: every member evaluated on
//   their own (the server-default rules, each with its own user ID: the cost when every member has
//   rules of their own), and the persist path's evaluation (`PushActions.actionsFor`: members with
//   the default rules share one evaluation) in events per second and member-evaluations per second;
// - the latency a sender sees (PUT /send, p50/p99, REPEAT sends one at a time) into a room of MEMBERS
//   members: with no pushers, then with one pusher per member (MEMBERS pushers), then with none
//   again; and with pushers, how long the gateway took to get every push (pushes per second).
// `npx tsx bench/push.bench.ts` (or `npm run bench push`).
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { sql } from "drizzle-orm";
import { rowsOf } from "../schema/db.ts";
import { request, startTestServer } from "../tests/harness.ts";
import { withServerDefaults } from "../server/pushrules/ruleset.ts";
import { evaluatePushRules } from "../server/pushrules/evaluate.ts";

const MEMBERS = Number(process.env.BENCH_PUSH_MEMBERS ?? 1_000);
const REPEAT = Number(process.env.BENCH_PUSH_REPEAT ?? 30);
const EVAL_ROUNDS = Number(process.env.BENCH_PUSH_EVAL_ROUNDS ?? 20);
const enc = encodeURIComponent;

let pushes = 0;
const gateway = createServer((req, res) => {
  req.resume();
  req.on("end", () => {
    pushes++;
    res.writeHead(200, { "content-type": "application/json" }).end('{"rejected":[]}');
  });
});
await new Promise<void>((resolve) => gateway.listen(0, "127.0.0.1", resolve));
const gatewayUrl = `http://127.0.0.1:${(gateway.address() as AddressInfo).port}/_matrix/push/v1/notify`;
const hs = await startTestServer({ config: { log_level: "warn", push_gateways_insecure: ["*"] } });
const s = hs.services;

const pct = (xs: number[], p: number) => {
  const sorted = [...xs].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
};
const ms = (x: number) => `${x.toFixed(2)} ms`;

// Users: accounts, devices and tokens written through the services (registration's password
// hashing would dominate the set-up), then joined over HTTP.
console.log(`setting up a room of ${MEMBERS} members...`);
const users: Array<{ userId: string; deviceId: string; token: string }> = [];
for (let i = 0; i < MEMBERS; i++) {
  const userId = await s.accounts.createUser({ localpart: `member${i}` }, "cli");
  const deviceId = `DEV${i}`;
  await s.accounts.createDevice(userId, deviceId, null);
  const { accessToken } = await s.sessions.issue(userId, deviceId, false);
  users.push({ userId, deviceId, token: accessToken });
}
const call = async (token: string, method: string, path: string, body?: unknown) => {
  const r = await request(hs.url, method, path, { token, body });
  if (r.status !== 200) throw new Error(`${method} ${path}: ${r.status} ${JSON.stringify(r.json)}`);
  return r.json;
};
const sender = users[0]!;
const roomId = (await call(sender.token, "POST", "/_matrix/client/v3/createRoom", { preset: "public_chat" })).room_id as string;
for (const u of users.slice(1)) await call(u.token, "POST", `/_matrix/client/v3/join/${enc(roomId)}`, {});
const members = users.map((u) => u.userId);

// 1. Evaluations.
const event = { type: "m.room.message", sender: sender.userId, room_id: roomId, content: { msgtype: "m.text", body: "hello everyone in the room" } };
const rulesets = members.map((u) => withServerDefaults(undefined, u));
const ctx = { roomMemberCount: MEMBERS, senderPowerLevel: 100, powerLevels: null };
let t0 = performance.now();
let notified = 0;
for (let r = 0; r < EVAL_ROUNDS; r++) {
  for (let i = 1; i < MEMBERS; i++) if (evaluatePushRules(rulesets[i]!, event, { ...ctx, userId: members[i]! }).notify) notified++;
}
const perMember = ((MEMBERS - 1) * EVAL_ROUNDS) / ((performance.now() - t0) / 1000);
if (notified !== (MEMBERS - 1) * EVAL_ROUNDS) throw new Error("every member should be notified");
const room = {
  joinedMemberCount: MEMBERS,
  localJoinedMembers: members,
  powerLevels: null,
  powerLevelOf: (u: string) => (u === sender.userId ? 100 : 0),
  displayNameOf: async () => null,
};
await s.pushActions.actionsFor(room, event); // loads the rulesets into the cache
t0 = performance.now();
for (let r = 0; r < EVAL_ROUNDS * 10; r++) {
  const out = await s.pushActions.actionsFor(room, { ...event, content: { ...event.content, body: `message ${r}` } });
  if (out.length !== MEMBERS - 1) throw new Error("every member should be notified");
}
const eventsPerSecond = (EVAL_ROUNDS * 10) / ((performance.now() - t0) / 1000);
console.log(`push-rule evaluation, room of ${MEMBERS}:`);
console.log(`  each member on their own: ${Math.round(perMember).toLocaleString("en")} evaluations/s`);
console.log(`  persist path (actionsFor, default rules shared): ${Math.round(eventsPerSecond).toLocaleString("en")} events/s = ${Math.round(eventsPerSecond * (MEMBERS - 1)).toLocaleString("en")} member-evaluations/s`);

// 2. Send latency with and without pushers.
let txn = 0;
async function sends(label: string): Promise<number[]> {
  const times: number[] = [];
  for (let i = 0; i < REPEAT; i++) {
    const t = performance.now();
    await call(sender.token, "PUT", `/_matrix/client/v3/rooms/${enc(roomId)}/send/m.room.message/b${txn++}`, { msgtype: "m.text", body: `${label} ${i}` });
    times.push(performance.now() - t);
  }
  return times;
}
const settle = async () => {
  // Let the background copy and sending finish before the next phase.
  for (let last = -1; ; ) {
    await new Promise((r) => setTimeout(r, 300));
    const n = Number(rowsOf<{ n: number }>(await s.db.execute(sql`select count(*)::int as n from push_queue`))[0]?.n ?? 0);
    if (n === 0 && pushes === last) return;
    last = pushes;
  }
};
console.log("sending with no pushers...");
const none1 = await sends("none");
await settle();
for (const u of users.slice(1)) {
  await s.pushers.set(u.userId, u.deviceId, { kind: "http", app_id: "bench", pushkey: `key-${u.userId}`, app_display_name: "b", device_display_name: "d", lang: "en", data: { url: gatewayUrl } });
}
console.log("sending with pushers...");
const before = pushes;
t0 = performance.now();
const withPushers = await sends("pushers");
const sentAt = performance.now();
const expected = before + REPEAT * (MEMBERS - 1);
while (pushes < expected) await new Promise((r) => setTimeout(r, 20));
const drained = performance.now();
console.log("sending with no pushers again...");
for (const u of users.slice(1)) await s.pushers.set(u.userId, u.deviceId, { kind: null, app_id: "bench", pushkey: `key-${u.userId}` });
await settle();
const none2 = await sends("none again");
const none = [...none1, ...none2];
console.log(`PUT /send into the room of ${MEMBERS} (${REPEAT} sends each, one at a time):`);
console.log(`  no pushers:            p50 ${ms(pct(none, 50))}  p99 ${ms(pct(none, 99))}  (before ${ms(pct(none1, 50))}, after ${ms(pct(none2, 50))})`);
console.log(`  ${MEMBERS - 1} pushers:          p50 ${ms(pct(withPushers, 50))}  p99 ${ms(pct(withPushers, 99))}`);
console.log(`  pushes: ${REPEAT * (MEMBERS - 1)} delivered ${((drained - sentAt) / 1000).toFixed(1)} s after the last send, ${Math.round((REPEAT * (MEMBERS - 1)) / ((drained - t0) / 1000)).toLocaleString("en")} pushes/s from the first send`);

const results = [
  { name: `push-rule evaluations, each of ${MEMBERS - 1} members on their own`, value: perMember, unit: "evaluations/s" },
  { name: `persist-path evaluation (actionsFor), room of ${MEMBERS}`, value: eventsPerSecond, unit: "events/s" },
  { name: `PUT /send into a room of ${MEMBERS}, no pushers p50`, value: pct(none, 50), unit: "ms" },
  { name: `PUT /send into a room of ${MEMBERS}, no pushers p99`, value: pct(none, 99), unit: "ms" },
  { name: `PUT /send into a room of ${MEMBERS}, ${MEMBERS - 1} pushers p50`, value: pct(withPushers, 50), unit: "ms" },
  { name: `PUT /send into a room of ${MEMBERS}, ${MEMBERS - 1} pushers p99`, value: pct(withPushers, 99), unit: "ms" },
  { name: "pushes delivered from the first send", value: (REPEAT * (MEMBERS - 1)) / ((drained - t0) / 1000), unit: "pushes/s" },
].map((r) => ({ ...r, value: Math.round(r.value * 10) / 10 }));
console.log(`BENCH_RESULT ${JSON.stringify({ bench: "push", results })}`);

await hs.destroy();
gateway.close();

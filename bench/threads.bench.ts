// The threads list and room upgrades, in one in-process server (embedded PGlite, or PostgreSQL
// when DATABASE_URL is set):
// - GET /v1/rooms/{roomId}/threads (limit 20) in a room of THREADS threads (a root and two replies
//   each) among MESSAGES plain messages: the first page, a page deep in the list, and
//   include=participated for a user in one thread in ten; p50/p99 over REPEAT requests each;
// - POST /rooms/{roomId}/upgrade of a room with BANS bans and the state the spec lists: p50 over a
//   few upgrades.
// `npx tsx bench/threads.bench.ts` (or `npm run bench threads`).
import { registerUser } from "../tests/accounts-helpers.ts";
import { request, startTestServer } from "../tests/harness.ts";

const THREADS = Number(process.env.BENCH_THREADS ?? 500);
const MESSAGES = Number(process.env.BENCH_THREADS_MESSAGES ?? 1_000);
const REPEAT = Number(process.env.BENCH_THREADS_REPEAT ?? 50);
const BANS = Number(process.env.BENCH_THREADS_BANS ?? 100);
const UPGRADES = 5;

const hs = await startTestServer({ config: { log_level: "warn" } });
const enc = encodeURIComponent;
let txn = 0;

async function ok(res: Promise<{ status: number; json: any }>, what: string): Promise<any> {
  const r = await res;
  if (r.status !== 200) throw new Error(`${what}: ${r.status} ${JSON.stringify(r.json)}`);
  return r.json;
}

try {
  const [alice, bob] = await Promise.all([registerUser(hs.url, "alice"), registerUser(hs.url, "bob")]);
  const call = (token: string, method: string, p: string, body?: unknown) => request(hs.url, method, p, { token, ...(body !== undefined ? { body } : {}) });
  const send = (token: string, roomId: string, content: Record<string, unknown>) =>
    ok(call(token, "PUT", `/_matrix/client/v3/rooms/${enc(roomId)}/send/m.room.message/b${txn++}`, content), "send").then((j) => j.event_id as string);

  const roomId = (await ok(call(alice.accessToken, "POST", "/_matrix/client/v3/createRoom", { preset: "public_chat" }), "createRoom")).room_id;
  await ok(call(bob.accessToken, "POST", `/_matrix/client/v3/join/${enc(roomId)}`, {}), "join");
  const seedStart = performance.now();
  const plainEvery = Math.max(1, Math.floor(THREADS / Math.max(1, MESSAGES)));
  let plain = 0;
  for (let i = 0; i < THREADS; i++) {
    const root = await send(alice.accessToken, roomId, { msgtype: "m.text", body: `root ${i}` });
    const relates = { "m.relates_to": { rel_type: "m.thread", event_id: root, is_falling_back: true, "m.in_reply_to": { event_id: root } } };
    await send(alice.accessToken, roomId, { msgtype: "m.text", body: `reply ${i}`, ...relates });
    await send(i % 10 === 0 ? bob.accessToken : alice.accessToken, roomId, { msgtype: "m.text", body: `reply ${i}b`, ...relates });
    while (plain < MESSAGES && (plain * plainEvery <= i || i === THREADS - 1)) {
      await send(alice.accessToken, roomId, { msgtype: "m.text", body: `plain ${plain++}` });
    }
  }
  process.stderr.write(`seeded ${THREADS} threads and ${plain} messages in ${((performance.now() - seedStart) / 1000).toFixed(1)} s\n`);

  const threads = (token: string, query: Record<string, string>) =>
    ok(call(token, "GET", `/_matrix/client/v1/rooms/${enc(roomId)}/threads?${new URLSearchParams(query)}`), "threads");
  async function latency(run: () => Promise<unknown>): Promise<{ p50: number; p99: number }> {
    const times: number[] = [];
    for (let i = 0; i < REPEAT; i++) {
      const t = performance.now();
      await run();
      times.push(performance.now() - t);
    }
    times.sort((a, b) => a - b);
    return { p50: times[Math.floor(times.length * 0.5)]!, p99: times[Math.min(times.length - 1, Math.floor(times.length * 0.99))]! };
  }
  // A token deep in the list: the 20th page's.
  let deep: string | undefined;
  for (let page = 0, from: string | undefined; page < Math.min(20, Math.floor(THREADS / 20) - 1); page++) {
    const json = await threads(alice.accessToken, { limit: "20", ...(from ? { from } : {}) });
    from = deep = json.next_batch;
  }
  const first = await latency(() => threads(alice.accessToken, { limit: "20" }));
  const deepPage = await latency(() => threads(alice.accessToken, { limit: "20", ...(deep ? { from: deep } : {}) }));
  const participated = await latency(() => threads(bob.accessToken, { limit: "20", include: "participated" }));

  const upgradeTimes: number[] = [];
  for (let u = 0; u < UPGRADES; u++) {
    const old = (await ok(call(alice.accessToken, "POST", "/_matrix/client/v3/createRoom", { room_version: "10", name: "to upgrade", topic: "t" }), "createRoom")).room_id;
    for (let b = 0; b < BANS; b++) {
      await ok(call(alice.accessToken, "POST", `/_matrix/client/v3/rooms/${enc(old)}/ban`, { user_id: `@banned${b}:test.local` }), "ban");
    }
    const t = performance.now();
    await ok(call(alice.accessToken, "POST", `/_matrix/client/v3/rooms/${enc(old)}/upgrade`, { new_version: "11" }), "upgrade");
    upgradeTimes.push(performance.now() - t);
  }
  upgradeTimes.sort((a, b) => a - b);

  const results = [
    { name: `threads first page (limit 20, ${THREADS} threads) p50`, value: first.p50, unit: "ms" },
    { name: `threads first page (limit 20, ${THREADS} threads) p99`, value: first.p99, unit: "ms" },
    { name: "threads page 20 p50", value: deepPage.p50, unit: "ms" },
    { name: "threads include=participated p50", value: participated.p50, unit: "ms" },
    { name: `upgrade of a room with ${BANS} bans p50`, value: upgradeTimes[Math.floor(UPGRADES / 2)]!, unit: "ms" },
  ].map((r) => ({ ...r, value: Math.round(r.value * 10) / 10 }));
  for (const r of results) process.stderr.write(`${r.name}: ${r.value} ${r.unit}\n`);
  console.log(`BENCH_RESULT ${JSON.stringify({ bench: "threads", results })}`);
} finally {
  await hs.destroy();
}

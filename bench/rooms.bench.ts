// Events accepted per second: a Parley process (`bin/parley.js serve`) under many senders, each
// `PUT /rooms/{roomId}/send/m.room.message/{txnId}` answered only once the event is signed, checked
// and committed.
// - one room: SENDERS senders, each sending one message after another, all into the same room
//   (the events of one room are persisted one at a time; queued ones share a transaction);
// - 100 rooms: CONCURRENCY requests in flight, each from a random sender into a random room;
// - 100 rooms at a fixed rate (open loop: 1,000 events/s on PostgreSQL, 200 on PGlite): the latency
//   a client sees at that load, whatever the concurrency it takes.
// Figures: events/s and the p50/p99 latency of PUT /send. Embedded PGlite, and PostgreSQL when
// DATABASE_URL is set (the target on a 2-core machine: 1,000 events/s across rooms, p99 < 50 ms).
import { Agent, request as httpRequest } from "node:http";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { createTestDatabase } from "../tests/harness.ts";
import { startParley, stopParley } from "./parley-process.ts";

const SENDERS = 20;
const ROOMS = 100;
const CONCURRENCY = 32;
const PHASE_MS = Number(process.env.BENCH_ROOMS_PHASE_MS ?? 4_000);
/** The fixed rate of the open-loop phase: the target on PostgreSQL; PGlite (one connection) gets less. */
const TARGET_RATE: Record<string, number> = {
  postgres: Number(process.env.BENCH_ROOMS_RATE ?? 1_000),
  pglite: Number(process.env.BENCH_ROOMS_PGLITE_RATE ?? 200),
};

const agent = new Agent({ keepAlive: true, maxSockets: 256 });

interface Session {
  userId: string;
  token: string;
}

/** One JSON request over a kept-alive connection (lighter than fetch, so the client costs less CPU). */
function call(base: string, method: string, p: string, body: unknown, token?: string): Promise<{ status: number; json: any }> {
  const url = new URL(base + p);
  const payload = JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const req = httpRequest(
      {
        agent,
        host: url.hostname,
        port: url.port,
        path: url.pathname + url.search,
        method,
        headers: {
          "Content-Type": "application/json",
          "Content-Length": Buffer.byteLength(payload),
          ...(token ? { Authorization: `Bearer ${token}` } : {}),
        },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => {
          const text = Buffer.concat(chunks).toString();
          resolve({ status: res.statusCode ?? 0, json: text ? JSON.parse(text) : undefined });
        });
        res.on("error", reject);
      },
    );
    req.on("error", reject);
    req.end(payload);
  });
}

async function register(base: string, username: string): Promise<Session> {
  const password = `bench password ${username}`;
  const first = await call(base, "POST", "/_matrix/client/v3/register", { username, password });
  const done = await call(base, "POST", "/_matrix/client/v3/register", {
    username,
    password,
    auth: { type: "m.login.dummy", session: first.json.session },
  });
  if (done.status !== 200) throw new Error(`registration failed: ${JSON.stringify(done.json)}`);
  return { userId: done.json.user_id, token: done.json.access_token };
}

async function ok(res: Promise<{ status: number; json: any }>, what: string): Promise<any> {
  const r = await res;
  if (r.status !== 200) throw new Error(`${what} failed: ${r.status} ${JSON.stringify(r.json)}`);
  return r.json;
}

let txn = 0;
async function sendTimed(base: string, sender: Session, roomId: string, latencies: number[]): Promise<void> {
  const started = performance.now();
  await ok(
    call(base, "PUT", `/_matrix/client/v3/rooms/${encodeURIComponent(roomId)}/send/m.room.message/b${txn++}`, { msgtype: "m.text", body: `bench message ${txn}` }, sender.token),
    "send",
  );
  latencies.push(performance.now() - started);
}

interface Figures {
  rate: number;
  p50: number;
  p99: number;
}

function figures(latencies: number[], ms: number): Figures {
  const sorted = [...latencies].sort((a, b) => a - b);
  const at = (q: number) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? 0;
  return {
    rate: Math.round(latencies.length / (ms / 1000)),
    p50: Math.round(at(0.5) * 10) / 10,
    p99: Math.round(at(0.99) * 10) / 10,
  };
}

/** `workers` closed loops for PHASE_MS: each sends, waits for the answer, sends again. */
async function closedLoop(workers: number, next: (worker: number) => Promise<void>): Promise<number> {
  const started = performance.now();
  const deadline = started + PHASE_MS;
  await Promise.all(
    Array.from({ length: workers }, async (_, w) => {
      while (performance.now() < deadline) await next(w);
    }),
  );
  return performance.now() - started;
}

/** Requests started at a fixed rate for PHASE_MS, however long each takes. */
async function openLoop(rate: number, send: (i: number) => Promise<void>): Promise<number> {
  const started = performance.now();
  const total = Math.round((rate * PHASE_MS) / 1000);
  const inflight: Promise<void>[] = [];
  for (let i = 0; i < total; i++) {
    const due = started + (i * 1000) / rate;
    const wait = due - performance.now();
    if (wait > 1) await new Promise((r) => setTimeout(r, wait));
    inflight.push(send(i));
  }
  await Promise.all(inflight);
  return performance.now() - started;
}

async function benchOne(kind: string, databaseUrl: string | undefined) {
  const dataDir = await mkdtemp(path.join(tmpdir(), "parley-bench-rooms-"));
  const { child, base } = await startParley(dataDir, databaseUrl);
  try {
    const progress = (what: string) => process.stderr.write(`${kind}: ${what}\n`);
    const owner = await register(base, "owner");
    const senders = await Promise.all(Array.from({ length: SENDERS }, (_, i) => register(base, `sender${i}`)));
    progress("registered");
    const create = () => ok(call(base, "POST", "/_matrix/client/v3/createRoom", { preset: "public_chat" }, owner.token), "createRoom");
    const oneRoom: string = (await create()).room_id;
    const rooms: string[] = [];
    for (let i = 0; i < ROOMS; i += 10) rooms.push(...(await Promise.all(Array.from({ length: 10 }, async () => (await create()).room_id))));
    for (const roomId of [oneRoom, ...rooms]) {
      await Promise.all(senders.map((s) => ok(call(base, "POST", `/_matrix/client/v3/join/${encodeURIComponent(roomId)}`, {}, s.token), "join")));
    }
    progress("rooms created and joined");
    // Warm-up: every room's state into the server's cache, connections open.
    await Promise.all(rooms.map((r, i) => sendTimed(base, senders[i % SENDERS]!, r, [])));

    const one: number[] = [];
    const oneMs = await closedLoop(SENDERS, (w) => sendTimed(base, senders[w]!, oneRoom, one));
    const many: number[] = [];
    const manyMs = await closedLoop(CONCURRENCY, () =>
      sendTimed(base, senders[Math.floor(Math.random() * SENDERS)]!, rooms[Math.floor(Math.random() * ROOMS)]!, many),
    );
    const fixed: number[] = [];
    const fixedMs = await openLoop(TARGET_RATE[kind]!, (i) => sendTimed(base, senders[i % SENDERS]!, rooms[Math.floor(Math.random() * ROOMS)]!, fixed));

    const f = { one: figures(one, oneMs), many: figures(many, manyMs), fixed: figures(fixed, fixedMs) };
    console.log(
      `${kind}: one room, ${SENDERS} senders: ${f.one.rate} events/s (p50 ${f.one.p50} ms, p99 ${f.one.p99} ms); ` +
        `${ROOMS} rooms, ${CONCURRENCY} in flight: ${f.many.rate} events/s (p50 ${f.many.p50} ms, p99 ${f.many.p99} ms); ` +
        `${ROOMS} rooms at ${TARGET_RATE[kind]}/s: achieved ${f.fixed.rate} events/s (p50 ${f.fixed.p50} ms, p99 ${f.fixed.p99} ms)`,
    );
    return f;
  } finally {
    await stopParley(child);
    await rm(dataDir, { recursive: true, force: true });
  }
}

const results: { name: string; value: number; unit: string }[] = [];
// BENCH_ROOMS_ONLY_POSTGRES=1 skips the PGlite run (while profiling PostgreSQL).
const targets: [string, boolean][] = process.env.BENCH_ROOMS_ONLY_POSTGRES ? [] : [["pglite", false]];
if (process.env.DATABASE_URL) targets.push(["postgres", true]);
for (const [kind, usePostgres] of targets) {
  const database = usePostgres ? await createTestDatabase() : undefined;
  try {
    const f = await benchOne(kind, database?.url);
    const add = (name: string, x: Figures) =>
      results.push(
        { name: `${name}: events accepted (${kind})`, value: x.rate, unit: "events/s" },
        { name: `${name}: PUT /send p50 (${kind})`, value: x.p50, unit: "ms" },
        { name: `${name}: PUT /send p99 (${kind})`, value: x.p99, unit: "ms" },
      );
    add(`one room, ${SENDERS} senders`, f.one);
    add(`${ROOMS} rooms, ${CONCURRENCY} in flight`, f.many);
    add(`${ROOMS} rooms at ${TARGET_RATE[kind]} events/s`, f.fixed);
  } finally {
    await database?.drop();
  }
}
agent.destroy();
console.log(`BENCH_RESULT ${JSON.stringify({ bench: "rooms", results })}`);

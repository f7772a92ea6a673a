// What durable commits cost on the embedded database: the same sends against a Parley process
// (`bin/parley.js serve`, PGlite on disk) with `embedded_fsync` on (each commit's WAL synced to
// disk before the answer) and off (the page cache only), in one run, on the same machine and disk:
// - one at a time: one sender, each send answered before the next (every send its own commit,
//   so its own fsync);
// - 32 in flight across 20 rooms: sends queued behind a commit share the next one (group commit),
//   so syncs are shared too;
// - 100 events/s across 20 rooms (open loop): the latency a client sees at a steady load.
// And, without HTTP or Parley's own work, single-row commits one after another straight on PGlite:
// the cost of one commit's sync alone.
// Figures: events/s and the p50/p99 latency of PUT /send, for each setting. The cost depends on the
// disk's flush latency (a laptop SSD, a cloud volume and a VM's virtual disk differ by 10x and more).
import { Agent, request as httpRequest } from "node:http";
import { cp, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { sql } from "drizzle-orm";
import { openDatabase } from "../schema/db.ts";
import { startParley, stopParley } from "./parley-process.ts";

const ROOMS = 20;
const SENDERS = 10;
const CONCURRENCY = 32;
const RATE = Number(process.env.BENCH_DURABILITY_RATE ?? 100);
const PHASE_MS = Number(process.env.BENCH_DURABILITY_PHASE_MS ?? 4_000);

const agent = new Agent({ keepAlive: true, maxSockets: 256 });

function call(base: string, method: string, p: string, body: unknown, token?: string): Promise<{ status: number; json: any }> {
  const url = new URL(base + p);
  const payload = JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const req = httpRequest(
      {
        agent,
        host: url.hostname,
        port: url.port,
        path: url.pathname,
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

async function ok(res: Promise<{ status: number; json: any }>, what: string): Promise<any> {
  const r = await res;
  if (r.status !== 200) throw new Error(`${what} failed: ${r.status} ${JSON.stringify(r.json)}`);
  return r.json;
}

async function register(base: string, username: string): Promise<string> {
  const password = `bench password ${username}`;
  const first = await call(base, "POST", "/_matrix/client/v3/register", { username, password });
  const done = await ok(
    call(base, "POST", "/_matrix/client/v3/register", { username, password, auth: { type: "m.login.dummy", session: first.json.session } }),
    "register",
  );
  return done.access_token;
}

let txn = 0;
async function sendTimed(base: string, token: string, roomId: string, latencies: number[]): Promise<void> {
  const started = performance.now();
  await ok(
    call(base, "PUT", `/_matrix/client/v3/rooms/${encodeURIComponent(roomId)}/send/m.room.message/d${txn++}`, { msgtype: "m.text", body: `durability ${txn}` }, token),
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

async function openLoop(rate: number, send: (i: number) => Promise<void>): Promise<number> {
  const started = performance.now();
  const total = Math.round((rate * PHASE_MS) / 1000);
  const inflight: Promise<void>[] = [];
  for (let i = 0; i < total; i++) {
    const wait = started + (i * 1000) / rate - performance.now();
    if (wait > 1) await new Promise((r) => setTimeout(r, wait));
    inflight.push(send(i));
  }
  await Promise.all(inflight);
  return performance.now() - started;
}

type Setting = "fsync on" | "fsync off";

const COMMITS = 300;

/** Single-row commits one after another on a copy of the template, opened in this process. */
async function commitsOne(setting: Setting, template: string): Promise<Figures> {
  const dataDir = await mkdtemp(path.join(tmpdir(), "parley-bench-durability-"));
  await cp(template, dataDir, { recursive: true });
  const opened = await openDatabase({ dataDir, embeddedFsync: setting === "fsync on" });
  try {
    const latencies: number[] = [];
    const started = performance.now();
    for (let i = 0; i < COMMITS; i++) {
      const t = performance.now();
      await opened.db.execute(sql`insert into server_settings (key, value, updated_ts) values (${`bench ${i}`}, 'v', ${i})`);
      latencies.push(performance.now() - t);
    }
    const f = figures(latencies, performance.now() - started);
    console.log(`${setting}: single-row commits: ${f.rate} commits/s (p50 ${f.p50} ms, p99 ${f.p99} ms)`);
    return f;
  } finally {
    await opened.close();
    await rm(dataDir, { recursive: true, force: true });
  }
}

/**
 * A data directory with the database created and migrated, copied for each setting: both start from
 * the same files, and neither start waits for initdb.
 */
async function templateDataDir(): Promise<string> {
  const dir = await mkdtemp(path.join(tmpdir(), "parley-bench-durability-template-"));
  const opened = await openDatabase({ dataDir: dir });
  await opened.close();
  return dir;
}

async function benchOne(setting: Setting, template: string) {
  const dataDir = await mkdtemp(path.join(tmpdir(), "parley-bench-durability-"));
  await cp(template, dataDir, { recursive: true });
  // startParley passes its environment on.
  process.env.PARLEY_EMBEDDED_FSYNC = setting === "fsync on" ? "true" : "false";
  const { child, base } = await startParley(dataDir);
  try {
    const tokens = await Promise.all(Array.from({ length: SENDERS }, (_, i) => register(base, `sender${i}`)));
    const rooms: string[] = [];
    for (let i = 0; i < ROOMS; i++) {
      rooms.push((await ok(call(base, "POST", "/_matrix/client/v3/createRoom", { preset: "public_chat" }, tokens[0]), "createRoom")).room_id);
    }
    for (const roomId of rooms) {
      await Promise.all(tokens.slice(1).map((t) => ok(call(base, "POST", `/_matrix/client/v3/join/${encodeURIComponent(roomId)}`, {}, t), "join")));
    }
    await Promise.all(rooms.map((r, i) => sendTimed(base, tokens[i % SENDERS]!, r, [])));
    const pick = () => rooms[Math.floor(Math.random() * ROOMS)]!;

    const serial: number[] = [];
    const serialMs = await closedLoop(1, () => sendTimed(base, tokens[0]!, rooms[0]!, serial));
    const many: number[] = [];
    const manyMs = await closedLoop(CONCURRENCY, (w) => sendTimed(base, tokens[w % SENDERS]!, pick(), many));
    const fixed: number[] = [];
    const fixedMs = await openLoop(RATE, (i) => sendTimed(base, tokens[i % SENDERS]!, pick(), fixed));
    const f = { serial: figures(serial, serialMs), many: figures(many, manyMs), fixed: figures(fixed, fixedMs) };
    console.log(
      `${setting}: one at a time: ${f.serial.rate} events/s (p50 ${f.serial.p50} ms, p99 ${f.serial.p99} ms); ` +
        `${CONCURRENCY} in flight: ${f.many.rate} events/s (p50 ${f.many.p50} ms, p99 ${f.many.p99} ms); ` +
        `at ${RATE}/s: achieved ${f.fixed.rate} events/s (p50 ${f.fixed.p50} ms, p99 ${f.fixed.p99} ms)`,
    );
    return f;
  } finally {
    await stopParley(child);
    await rm(dataDir, { recursive: true, force: true });
  }
}

const results: { name: string; value: number; unit: string }[] = [];
const template = await templateDataDir();
for (const setting of ["fsync on", "fsync off"] as const) {
  const c = await commitsOne(setting, template);
  results.push(
    { name: `single-row commits: commits (pglite, ${setting})`, value: c.rate, unit: "commits/s" },
    { name: `single-row commits: p50 (pglite, ${setting})`, value: c.p50, unit: "ms" },
    { name: `single-row commits: p99 (pglite, ${setting})`, value: c.p99, unit: "ms" },
  );
}
for (const setting of ["fsync on", "fsync off"] as const) {
  const f = await benchOne(setting, template);
  const add = (phase: string, x: Figures) =>
    results.push(
      { name: `${phase}: events accepted (pglite, ${setting})`, value: x.rate, unit: "events/s" },
      { name: `${phase}: PUT /send p50 (pglite, ${setting})`, value: x.p50, unit: "ms" },
      { name: `${phase}: PUT /send p99 (pglite, ${setting})`, value: x.p99, unit: "ms" },
    );
  add("one at a time", f.serial);
  add(`${CONCURRENCY} in flight, ${ROOMS} rooms`, f.many);
  add(`${RATE} events/s, ${ROOMS} rooms`, f.fixed);
}
agent.destroy();
await rm(template, { recursive: true, force: true });
console.log(`BENCH_RESULT ${JSON.stringify({ bench: "durability", results })}`);

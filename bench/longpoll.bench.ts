// Admission control under many long-polls (server/http/admission.ts): one Parley process (embedded
// PGlite), N clients each holding a /sync long-poll that nothing wakes, and meanwhile one user
// sending messages. Run twice in one go: with admission control off (a ceiling far above N, what
// Parley did before it had one) and on (`max_long_polls` at its default, or BENCH_LONGPOLL_CEILING).
// Per level of N it reports
// - PUT /send latency (p50, p99, max) while the long-polls are held, and GET /versions p99;
// - RSS per held long-poll: RSS with them held minus RSS before any, after full garbage collections
//   (through the server's inspector), divided by the long-polls held;
// - the 429s the refused clients got (they come back after `retry_after_ms`, as a client should);
// - while the clients connect: the slowest GET /versions (is the server still answering?).
// The long-polls carry the longest timeout Parley grants (BENCH_LONGPOLL_TIMEOUT_MS, 5 min), so
// "held" is idle: no time-out wave in the figures. Loopback only; a few minutes (more on a busy
// machine: the clients' first syncs are most of it). Levels: BENCH_LONGPOLL_LEVELS. Every client is in this
// process, each on its own connection: the open-file limit (`ulimit -n`, both processes) bounds N.
// Ends with one line: BENCH_RESULT {"bench":"longpoll","results":[...]}.
import { Agent, request as httpRequest } from "node:http";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { configKeys } from "../server/config.ts";
import { freePort, memoryAfterGc, startParley, stopParley } from "./parley-process.ts";

const openFiles = await openFileLimit();
/** Each client socket is a descriptor here and one in the server; keep 1,000 spare for the rest. */
const MAX_CLIENTS = Math.max(100, openFiles - 1000);
const LEVELS = (process.env.BENCH_LONGPOLL_LEVELS ?? "1000,3000")
  .split(",")
  .map(Number)
  .filter((n) => n > 0)
  .map((n) => Math.min(n, MAX_CLIENTS));
const CEILING = Number(process.env.BENCH_LONGPOLL_CEILING ?? configKeys.max_long_polls.default);
const TIMEOUT_MS = Number(process.env.BENCH_LONGPOLL_TIMEOUT_MS ?? 300_000);
const SENDS = Number(process.env.BENCH_LONGPOLL_SENDS ?? 100);
/** The long-polls are spread over this many users (guests: no password to hash). */
const USERS = 200;

const agent = new Agent({ keepAlive: true, maxSockets: Number.POSITIVE_INFINITY, maxFreeSockets: Number.POSITIVE_INFINITY });

interface Answer {
  status: number;
  json: any;
}

/** One request; again once when the server had just closed the kept-alive connection it went out on. */
async function call(base: string, method: string, p: string, body?: unknown, token?: string, onWritten?: () => void): Promise<Answer> {
  try {
    return await callOnce(base, method, p, body, token, onWritten);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ECONNRESET") throw err;
    return callOnce(base, method, p, body, token, onWritten);
  }
}

function callOnce(base: string, method: string, p: string, body: unknown, token: string | undefined, onWritten?: () => void): Promise<Answer> {
  const url = new URL(base + p);
  const payload = body === undefined ? "" : JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const req = httpRequest(
      {
        agent,
        host: url.hostname,
        port: url.port,
        path: url.pathname + url.search,
        method,
        headers: {
          ...(payload ? { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(payload) } : {}),
          ...(token ? { Authorization: `Bearer ${token}` } : {}),
        },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => {
          const text = Buffer.concat(chunks).toString();
          let json: any;
          try {
            json = text ? JSON.parse(text) : undefined;
          } catch {
            json = text;
          }
          resolve({ status: res.statusCode ?? 0, json });
        });
        res.on("error", reject);
      },
    );
    req.on("error", reject);
    if (onWritten) req.on("finish", onWritten);
    req.end(payload || undefined);
  });
}

async function ok(res: Promise<Answer>, what: string): Promise<any> {
  const r = await res;
  if (r.status !== 200) throw new Error(`${what} failed: ${r.status} ${JSON.stringify(r.json)}`);
  return r.json;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function percentile(xs: number[], p: number): number {
  if (xs.length === 0) return 0;
  const sorted = [...xs].sort((a, b) => a - b);
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return Math.round(sorted[i]! * 10) / 10;
}

const NO_ROOMS = encodeURIComponent(JSON.stringify({ room: { rooms: [] }, presence: { types: [] } }));

interface Counters {
  refused: number;
  answered: number;
  failed: number;
}

/** One client: a /sync long-poll, again when answered; after a 429, again after `retry_after_ms`. */
class Poller {
  running = false;
  /** When the request now out reached the server's socket (undefined: none out, or not yet connected). */
  sentAt: number | undefined;
  /** The last answer was a 429 (a request out now is a retry, likely refused again). */
  refused = false;

  constructor(
    private readonly base: string,
    private readonly token: string,
    private since: string,
    private readonly counters: Counters,
  ) {}

  start(): void {
    this.running = true;
    void this.loop();
  }

  private async loop(): Promise<void> {
    while (this.running) {
      const path = `/_matrix/client/v3/sync?filter=${NO_ROOMS}&set_presence=offline&timeout=${TIMEOUT_MS}&since=${encodeURIComponent(this.since)}`;
      const res = await call(this.base, "GET", path, undefined, this.token, () => (this.sentAt = performance.now())).catch(() => undefined);
      this.sentAt = undefined;
      if (!this.running) return;
      if (!res) {
        this.counters.failed++;
        await sleep(1000);
      } else if (res.status === 429) {
        this.counters.refused++;
        this.refused = true;
        await sleep(Number(res.json?.retry_after_ms ?? 1000));
      } else if (res.status === 200) {
        this.counters.answered++;
        this.refused = false;
        this.since = res.json.next_batch;
      } else {
        this.counters.failed++;
        await sleep(1000);
      }
    }
  }
}

/**
 * Long-polls written to a connected socket more than 2 s ago and not answered, from clients not
 * refused last time: the server holds them (a refusal comes back in milliseconds once it has the request).
 */
const held = (pollers: Poller[]) => {
  const before = performance.now() - 2000;
  return pollers.filter((p) => p.sentAt !== undefined && p.sentAt < before && !p.refused).length;
};

async function versionsMs(base: string): Promise<number> {
  const t = performance.now();
  await ok(call(base, "GET", "/_matrix/client/versions"), "versions");
  return performance.now() - t;
}

/** Both runs use one data directory: the second start skips creating the embedded database. */
async function benchMode(mode: "off" | "on", dataDir: string): Promise<Array<{ name: string; value: number; unit: string }>> {
  const ceiling = mode === "off" ? 10_000_000 : CEILING;
  const inspectorPort = await freePort();
  const { child, base } = await startParley(dataDir, undefined, {
    startupMs: 240_000,
    nodeArgs: [`--inspect=127.0.0.1:${inspectorPort}`],
    env: {
      PARLEY_ALLOW_GUEST_ACCESS: "true",
      PARLEY_MAX_LONG_POLLS: String(ceiling),
      // The long-polls are spread over a few users: the per-user ceiling is not what is measured.
      PARLEY_MAX_LONG_POLLS_PER_USER: "10000000",
    },
  });
  // Whatever happens to this process, the server goes with it.
  const kill = () => child.kill("SIGKILL");
  process.once("exit", kill);
  const label = `admission ${mode}${mode === "on" ? ` (max_long_polls ${ceiling})` : ""}`;
  const results: Array<{ name: string; value: number; unit: string }> = [];
  const figure = (name: string, value: number, unit: string) => results.push({ name: `${label}: ${name}`, value, unit });
  const pollers: Poller[] = [];
  const counters: Counters = { refused: 0, answered: 0, failed: 0 };
  try {
    // A guest cannot create rooms: the sender registers with a password.
    const username = `sender-${mode}`;
    const first = await call(base, "POST", "/_matrix/client/v3/register", { username, password: "bench sender password" });
    const sender = await ok(
      call(base, "POST", "/_matrix/client/v3/register", { username, password: "bench sender password", auth: { type: "m.login.dummy", session: first.json.session } }),
      "register",
    );
    const room = await ok(call(base, "POST", "/_matrix/client/v3/createRoom", {}, sender.access_token), "createRoom");
    const users: Array<{ token: string; since: string }> = [];
    for (let i = 0; i < USERS; i++) {
      const g = await ok(call(base, "POST", "/_matrix/client/v3/register?kind=guest", {}), "guest");
      const s = await ok(call(base, "GET", `/_matrix/client/v3/sync?filter=${NO_ROOMS}&set_presence=offline`, undefined, g.access_token), "initial sync");
      users.push({ token: g.access_token, since: s.next_batch });
    }
    await sleep(500);
    const idle = await memoryAfterGc(child.pid!, inspectorPort);
    process.stderr.write(`${label}: idle server RSS ${idle.rss.toFixed(1)} MB, JS heap ${idle.heap.toFixed(1)} MB\n`);

    let txn = 0;
    for (const n of LEVELS) {
      // Clients connect in waves of 500 (a burst beyond the listen backlog only adds SYN retries),
      // while a probe measures how /versions fares.
      const rampStart = performance.now();
      const probe: number[] = [];
      let probing = true;
      const prober = (async () => {
        while (probing) {
          probe.push(await versionsMs(base).catch(() => Number.NaN));
          await sleep(100);
        }
      })();
      while (pollers.length < n) {
        for (let k = 0; k < 500 && pollers.length < n; k++) {
          const u = users[pollers.length % USERS]!;
          const p = new Poller(base, u.token, u.since, counters);
          pollers.push(p);
          p.start();
        }
        await sleep(50);
      }
      // Settled: the count of held long-polls has stopped moving and /versions answers at once.
      let last = -1;
      await sleep(2000);
      for (let i = 0; i < 120; i++) {
        await sleep(500);
        const now = held(pollers);
        if (now === last && (await versionsMs(base)) < 20) break;
        last = now;
      }
      probing = false;
      await prober;
      const holding = held(pollers);
      const rampS = (performance.now() - rampStart) / 1000;
      process.stderr.write(`${label}: ${n} clients, ${holding} long-polls held after ${rampS.toFixed(1)} s; slowest /versions meanwhile ${Math.round(Math.max(...probe))} ms\n`);

      const mem = await memoryAfterGc(child.pid!, inspectorPort);
      const perPollKb = holding > 0 ? ((mem.rss - idle.rss) * 1024) / holding : 0;
      const heapKb = holding > 0 ? ((mem.heap - idle.heap) * 1024) / holding : 0;
      await sleep(500);

      const refusedBefore = counters.refused;
      const windowStart = performance.now();
      const sends: number[] = [];
      const versions: number[] = [];
      for (let i = 0; i < SENDS; i++) {
        const t = performance.now();
        await ok(call(base, "PUT", `/_matrix/client/v3/rooms/${encodeURIComponent(room.room_id)}/send/m.room.message/b${txn++}`, { msgtype: "m.text", body: `m${i}` }, sender.access_token), "send");
        sends.push(performance.now() - t);
        versions.push(await versionsMs(base));
        await sleep(20);
      }
      const windowS = (performance.now() - windowStart) / 1000;
      const refusedPerS = (counters.refused - refusedBefore) / windowS;
      const p50 = percentile(sends, 50);
      const p99 = percentile(sends, 99);
      process.stderr.write(
        `${label}: ${n} clients, ${holding} held: PUT /send p50 ${p50} ms, p99 ${p99} ms, max ${percentile(sends, 100)} ms; ` +
          `/versions p99 ${percentile(versions, 99)} ms; RSS +${(mem.rss - idle.rss).toFixed(1)} MB (${perPollKb.toFixed(1)} KB per held long-poll, JS heap ${heapKb.toFixed(1)} KB); ` +
          `429s ${(counters.refused - refusedBefore)} in ${windowS.toFixed(1)} s (${refusedPerS.toFixed(0)}/s), ${counters.refused} in all\n`,
      );
      figure(`${n} clients: long-polls held`, holding, "count");
      figure(`${n} clients: PUT /send p50`, p50, "ms");
      figure(`${n} clients: PUT /send p99`, p99, "ms");
      figure(`${n} clients: PUT /send max`, percentile(sends, 100), "ms");
      figure(`${n} clients: GET /versions p99`, percentile(versions, 99), "ms");
      figure(`${n} clients: slowest GET /versions while they connect`, Math.round(Math.max(...probe)), "ms");
      figure(`${n} clients: RSS per held long-poll`, Math.round(perPollKb * 10) / 10, "KB");
      figure(`${n} clients: JS heap per held long-poll`, Math.round(heapKb * 10) / 10, "KB");
      figure(`${n} clients: 429s per second while held`, Math.round(refusedPerS), "1/s");
    }
    if (counters.failed) process.stderr.write(`${label}: ${counters.failed} long-polls failed (connection errors or other statuses)\n`);
    figure("failed long-polls", counters.failed, "count");
  } finally {
    for (const p of pollers) p.running = false;
    await stopParley(child);
    process.off("exit", kill);
    agent.destroy();
  }
  return results;
}

async function openFileLimit(): Promise<number> {
  const limits = await readFile("/proc/self/limits", "utf8").catch(() => "");
  const m = /Max open files\s+(\d+)/.exec(limits);
  return m ? Number(m[1]) : 1024;
}

process.stderr.write(`levels ${LEVELS.join(", ")} (open files ${openFiles}); long-poll timeout ${TIMEOUT_MS} ms\n`);
const dataDir = await mkdtemp(path.join(tmpdir(), "parley-bench-longpoll-"));
let results: Array<{ name: string; value: number; unit: string }>;
try {
  results = [...(await benchMode("off", dataDir)), ...(await benchMode("on", dataDir))];
} finally {
  await rm(dataDir, { recursive: true, force: true });
}
process.stdout.write(`BENCH_RESULT ${JSON.stringify({ bench: "longpoll", results })}\n`);

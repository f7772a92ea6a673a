// Real-time delivery: the time from `PUT /rooms/{roomId}/send/...` to a recipient's waiting `/sync`
// returning with the message, with 1, 100 and 1,000 clients long-polling at once. A Parley process
// (`bin/parley.js serve`) serves; this process plays every client, over kept-alive connections.
// - every member: N clients long-poll, all members of one room; each message wakes all N, and every
//   recipient's latency is a sample (the server builds N responses for one event);
// - one of many: N clients long-poll, and each message goes to a room where only one of them is: the
//   other N-1 keep waiting (a change wakes exactly the requests that can see it).
// And the memory the 1,000 waiting long-polls cost the server: RSS with them waiting minus RSS of the
// idle server (both after a full garbage collection, through the server's inspector), and the same
// for the JS heap in use (RSS also moves with PGlite's and the allocator's own memory).
// Embedded PGlite, then PostgreSQL too when DATABASE_URL is set.
// Targets on loopback: p50 < 5 ms and p99 < 25 ms with 1,000 waiting clients; < 100 MB for 1,000
// idle long-polls. Ends with one line: BENCH_RESULT {"bench":"sync","results":[...]}.
import { Agent, request as httpRequest } from "node:http";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { freePort, memoryAfterGc, startParley, stopParley } from "./parley-process.ts";

const CLIENTS = (process.env.BENCH_SYNC_CLIENTS ?? "1,100,1000").split(",").map(Number);
const MESSAGES = Number(process.env.BENCH_SYNC_MESSAGES ?? 25);
const agent = new Agent({ keepAlive: true, maxSockets: Number.POSITIVE_INFINITY });

interface Session {
  userId: string;
  token: string;
}

/** One request; retried once when the server had just closed the kept-alive connection it went out on. */
async function call(base: string, method: string, p: string, body: unknown, token?: string): Promise<{ status: number; json: any; at: number }> {
  try {
    return await callOnce(base, method, p, body, token);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ECONNRESET") throw err;
    return callOnce(base, method, p, body, token);
  }
}

function callOnce(base: string, method: string, p: string, body: unknown, token?: string): Promise<{ status: number; json: any; at: number }> {
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
          const at = performance.now();
          const text = Buffer.concat(chunks).toString();
          resolve({ status: res.statusCode ?? 0, json: text ? JSON.parse(text) : undefined, at });
        });
        res.on("error", reject);
      },
    );
    req.on("error", reject);
    req.end(payload || undefined);
  });
}

async function ok(res: Promise<{ status: number; json: any }>, what: string): Promise<any> {
  const r = await res;
  if (r.status !== 200) throw new Error(`${what} failed: ${r.status} ${JSON.stringify(r.json)}`);
  return r.json;
}

async function register(base: string, username: string): Promise<Session> {
  const password = `bench password ${username}`;
  const first = await call(base, "POST", "/_matrix/client/v3/register", { username, password });
  const done = await ok(call(base, "POST", "/_matrix/client/v3/register", { username, password, auth: { type: "m.login.dummy", session: first.json.session } }), "register");
  return { userId: done.user_id, token: done.access_token };
}

/** Guests: no password to hash, so a thousand of them register in seconds. */
async function guest(base: string): Promise<Session> {
  const done = await ok(call(base, "POST", "/_matrix/client/v3/register?kind=guest", {}), "guest registration");
  return { userId: done.user_id, token: done.access_token };
}

async function inParallel<T>(n: number, concurrency: number, f: (i: number) => Promise<T>): Promise<T[]> {
  const out: T[] = new Array(n);
  let next = 0;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < n) {
        const i = next++;
        out[i] = await f(i);
      }
    }),
  );
  return out;
}

const NO_ROOMS = encodeURIComponent(JSON.stringify({ room: { rooms: [] }, presence: { types: [] } }));
// What Element asks for: lazy-loaded members, a short timeline; presence left out of the figures.
const FILTER = encodeURIComponent(
  JSON.stringify({ room: { timeline: { limit: 10 }, state: { lazy_load_members: true } }, presence: { types: [] } }),
);

/** A client long-polling /sync in a loop, reporting when each message body arrives. */
class Poller {
  since = "";
  running = false;
  inFlight = 0;
  private readonly seen = new Map<string, number>();
  private waiters = new Map<string, (at: number) => void>();

  constructor(
    private readonly base: string,
    readonly session: Session,
  ) {}

  /** A first token: an initial sync of no rooms (the bench is about what comes after). */
  async initial(): Promise<void> {
    const res = await ok(call(this.base, "GET", `/_matrix/client/v3/sync?filter=${NO_ROOMS}&set_presence=offline`, undefined, this.session.token), "initial sync");
    this.since = res.next_batch;
  }

  /** One incremental sync that does not wait. */
  async once(): Promise<void> {
    const path = `/_matrix/client/v3/sync?filter=${FILTER}&set_presence=offline&timeout=0&since=${encodeURIComponent(this.since)}`;
    this.since = (await ok(call(this.base, "GET", path, undefined, this.session.token), "sync")).next_batch;
  }

  start(): void {
    this.running = true;
    void this.loop();
  }

  stop(): void {
    this.running = false;
  }

  /** When `body` arrived (now, or later). */
  arrival(body: string): Promise<number> {
    const at = this.seen.get(body);
    if (at !== undefined) return Promise.resolve(at);
    return new Promise((resolve) => this.waiters.set(body, resolve));
  }

  private async loop(): Promise<void> {
    while (this.running) {
      this.inFlight++;
      const res = await call(
        this.base,
        "GET",
        `/_matrix/client/v3/sync?filter=${FILTER}&set_presence=offline&timeout=30000&since=${encodeURIComponent(this.since)}`,
        undefined,
        this.session.token,
      ).catch((err: unknown) => {
        // The server going away at the end cuts the long-polls in flight.
        if (this.running) throw err;
        return undefined;
      });
      this.inFlight--;
      if (!res) return;
      if (res.status !== 200) throw new Error(`sync answered ${res.status}: ${JSON.stringify(res.json)}`);
      this.since = res.json.next_batch;
      for (const room of Object.values<any>(res.json.rooms?.join ?? {})) {
        for (const e of room.timeline.events) {
          const body = e.content?.body;
          if (typeof body !== "string") continue;
          this.seen.set(body, res.at);
          this.waiters.get(body)?.(res.at);
          this.waiters.delete(body);
        }
      }
    }
  }
}

function percentile(xs: number[], p: number): number {
  const sorted = [...xs].sort((a, b) => a - b);
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return Math.round(sorted[i]! * 100) / 100;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

let txn = 0;
/** How long each PUT /send took to answer (for reading the delivery figures). */
const sendLatencies: number[] = [];
/** Sends one message and resolves with each recipient's latency once all have it. */
async function measure(base: string, sender: Session, roomId: string, recipients: Poller[]): Promise<number[]> {
  const body = `bench ${txn++}`;
  const arrivals = recipients.map((p) => p.arrival(body));
  const t0 = performance.now();
  await ok(call(base, "PUT", `/_matrix/client/v3/rooms/${encodeURIComponent(roomId)}/send/m.room.message/s${txn}`, { msgtype: "m.text", body }, sender.token), "send");
  sendLatencies.push(performance.now() - t0);
  return (await Promise.all(arrivals)).map((at) => at - t0);
}

/** Until every poller has its next long-poll out again, and the server has taken them all. */
async function settled(base: string, pollers: Poller[]): Promise<void> {
  for (let i = 0; i < 400 && pollers.some((p) => p.inFlight === 0); i++) await sleep(5);
  await quiet(base);
}

/** Until the server answers `GET /versions` at once three times in a row (it has no backlog). */
async function quiet(base: string): Promise<void> {
  let fast = 0;
  for (let i = 0; i < 150 && fast < 3; i++) {
    const t = performance.now();
    await call(base, "GET", "/_matrix/client/versions", undefined);
    fast = performance.now() - t < 3 ? fast + 1 : 0;
    await sleep(fast ? 2 : 10);
  }
}

async function benchOne(kind: string, databaseUrl: string | undefined) {
  const dataDir = await mkdtemp(path.join(tmpdir(), "parley-bench-sync-"));
  process.env.PARLEY_ALLOW_GUEST_ACCESS = "true";
  // The inspector (idle until asked) lets the memory figure be taken after a garbage collection.
  const inspectorPort = await freePort();
  const { child, base } = await startParley(dataDir, databaseUrl, { nodeArgs: [`--inspect=127.0.0.1:${inspectorPort}`] });
  const results: Array<{ name: string; value: number; unit: string }> = [];
  const pollers: Poller[] = [];
  try {
    const alice = await register(base, "alice");
    const guestAccess = [{ type: "m.room.guest_access", state_key: "", content: { guest_access: "can_join" } }];
    const room = await ok(call(base, "POST", "/_matrix/client/v3/createRoom", { preset: "public_chat", initial_state: guestAccess }, alice.token), "createRoom");
    const max = Math.max(...CLIENTS);
    let t = performance.now();
    const guests = await inParallel(max, 32, () => guest(base));
    process.stderr.write(`${kind}: ${max} guests registered in ${Math.round(performance.now() - t)} ms\n`);
    t = performance.now();
    await inParallel(max, 32, (i) => ok(call(base, "POST", `/_matrix/client/v3/join/${encodeURIComponent(room.room_id)}`, {}, guests[i]!.token), "join"));
    process.stderr.write(`${kind}: ${max} guests joined one room in ${Math.round(performance.now() - t)} ms\n`);
    // A room of alice and the first guest alone, for the "one of many" figures.
    const pair = await ok(call(base, "POST", "/_matrix/client/v3/createRoom", { preset: "public_chat", initial_state: guestAccess }, alice.token), "createRoom");
    await ok(call(base, "POST", `/_matrix/client/v3/join/${encodeURIComponent(pair.room_id)}`, {}, guests[0]!.token), "join");

    for (const g of guests) pollers.push(new Poller(base, g));
    t = performance.now();
    await inParallel(max, 16, (i) => pollers[i]!.initial());
    process.stderr.write(`${kind}: ${max} initial syncs in ${Math.round(performance.now() - t)} ms\n`);
    // The same requests once more without waiting, so the baseline has done what the long-polls do.
    await inParallel(max, 16, (i) => pollers[i]!.once());
    await quiet(base);
    const idle = await memoryAfterGc(child.pid!, inspectorPort);

    for (const n of CLIENTS) {
      const active = pollers.slice(0, n);
      for (const p of active) if (!p.running) p.start();
      await settled(base, active);
      if (n === max) {
        const waiting = await memoryAfterGc(child.pid!, inspectorPort);
        const mb = (x: number) => Math.round(x * 10) / 10;
        results.push({ name: `${kind} rss increase, ${n} idle long-polls`, value: mb(waiting.rss - idle.rss), unit: "MB" });
        results.push({ name: `${kind} JS heap increase, ${n} idle long-polls`, value: mb(waiting.heap - idle.heap), unit: "MB" });
        process.stderr.write(`${kind}: ${n} idle long-polls: RSS ${mb(idle.rss)} -> ${mb(waiting.rss)} MB, JS heap ${mb(idle.heap)} -> ${mb(waiting.heap)} MB\n`);
      }
      // One recipient while the others wait (a change wakes only the requests that can see it).
      const one: number[] = [];
      for (let i = 0; i < 3 + MESSAGES; i++) {
        const latency = await measure(base, alice, pair.room_id, [active[0]!]);
        if (i >= 3) one.push(...latency);
        await settled(base, active);
      }
      sendLatencies.length = 0;
      for (let i = 0; i < 10; i++) {
        await measure(base, alice, pair.room_id, [active[0]!]);
        await settled(base, active);
      }
      const send = percentile(sendLatencies, 50);
      // Every member of a room at once.
      const every: number[] = [];
      const rounds = n >= 1000 ? 5 : MESSAGES;
      for (let i = 0; i < 3 + rounds; i++) {
        const latency = await measure(base, alice, room.room_id, active);
        if (i >= 3) every.push(...latency);
        await settled(base, active);
      }
      process.stderr.write(`${kind}: PUT /send into a 2-member room answers in p50 ${send} ms\n`);
      results.push({ name: `${kind} PUT /send p50 (2-member room), ${n} long-polling`, value: send, unit: "ms" });
      for (const [label, xs] of [
        [`one of ${n} long-polling`, one],
        [`every member, ${n} long-polling`, every],
      ] as const) {
        for (const p of [50, 95, 99]) results.push({ name: `${kind} delivery p${p}, ${label}`, value: percentile(xs, p), unit: "ms" });
        process.stderr.write(`${kind}: ${label}: p50 ${percentile(xs, 50)} ms, p95 ${percentile(xs, 95)} ms, p99 ${percentile(xs, 99)} ms (${xs.length} samples)\n`);
      }
    }
  } finally {
    for (const p of pollers) p.stop();
    await stopParley(child);
    await rm(dataDir, { recursive: true, force: true });
  }
  return results;
}

const results = [...(await benchOne("pglite", undefined))];
if (process.env.DATABASE_URL) {
  const { createTestDatabase } = await import("../tests/harness.ts");
  const database = await createTestDatabase();
  try {
    results.push(...(await benchOne("postgres", database.url)));
  } finally {
    await database.drop();
  }
}
agent.destroy();
process.stdout.write(`BENCH_RESULT ${JSON.stringify({ bench: "sync", results })}\n`);

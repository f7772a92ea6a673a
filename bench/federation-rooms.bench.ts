// Rooms across servers (issue 12): two Parley servers on loopback (tests/federation-harness.ts: both
// IN THIS ONE PROCESS, each with its own in-memory PGlite, federating over plain HTTP), so every
// figure below is two servers sharing one Node process, one event loop and the machine's cores.
// - joining a remote room with N members: on hs1 a public room gets N joined members quickly (fake
//   users @u<i>:hs1.test, their joins driven straight into hs1's persister in jobs of
//   SETUP_BATCH templates: no accounts), then a user on hs2 joins it over federation
//   (`POST /_matrix/client/v3/join/{roomId}?via=hs1.test`: make_join, send_join, the state and
//   auth chain checked and stored, the join placed). Figures: wall time of the join call, split
//   into hs1's serving (its make_join and send_join handlers; their HTTP round trips as hs2 sees
//   them, which add serialising, transfer and parsing) and hs2's own steps (checks, outliers,
//   the join placed); the process's RSS sampled every 50 ms during the join, and the kernel's peak
//   (VmHWM, the same as process.resourceUsage().maxRSS; reset before each join through
//   /proc/self/clear_refs where the kernel allows it, else a high-water mark of the whole run).
//   Target: 20,000 members in under 15 s.
// - cross-server delivery latency: alice (hs1) and bob (hs2) in one room; bob long-polls /sync,
//   alice sends one message (PUT /send); the sample is the time from the start of the send call
//   until bob's /sync returns with it, over LATENCY_ROUNDS messages. Target p50 under 20 ms.
// - cross-server messages/s: alice sends MESSAGES messages, IN_FLIGHT at once, while bob syncs in a
//   loop (timeline limit 1000, so no message is skipped); messages/s from the first send to the
//   last message in bob's /sync.
// Environment: BENCH_FED_ROOMS_SIZES (default 1000,5000,20000), BENCH_FED_ROOMS_PARTS (default
// latency,throughput,join), BENCH_FED_ROOMS_ROUNDS (300), BENCH_FED_ROOMS_MESSAGES (2000),
// BENCH_FED_ROOMS_PROFILE=<size> writes a CPU profile of that size's join (main thread, through
// node:inspector; the PDU check workers are not in it) and prints its top self-time functions.
// Run: `npm run bench federation-rooms` or `npx tsx bench/federation-rooms.bench.ts` (a few
// minutes). Ends with one BENCH_RESULT line.
import { readFileSync, writeFileSync } from "node:fs";
import { Session } from "node:inspector/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { performance } from "node:perf_hooks";
import { and, count, eq } from "drizzle-orm";
import { schema } from "../schema/db.ts";
import type { EventTemplate } from "../server/rooms/persister.ts";
import { startNetwork } from "../tests/federation-harness.ts";
import { type TestServer, request } from "../tests/harness.ts";

const SIZES = (process.env.BENCH_FED_ROOMS_SIZES ?? "1000,5000,20000").split(",").map(Number).filter((n) => n > 0);
const PARTS = new Set((process.env.BENCH_FED_ROOMS_PARTS ?? "latency,throughput,join").split(","));
const LATENCY_ROUNDS = Number(process.env.BENCH_FED_ROOMS_ROUNDS ?? 300);
const MESSAGES = Number(process.env.BENCH_FED_ROOMS_MESSAGES ?? 2000);
const PROFILE_SIZE = Number(process.env.BENCH_FED_ROOMS_PROFILE ?? 0);
const IN_FLIGHT = 20;
/** Member joins per persister job while building the big rooms. */
const SETUP_BATCH = 250;
/** How long bob's /sync is given to start waiting before alice sends. */
const SETTLE_MS = 10;
const enc = encodeURIComponent;

interface Session_ {
  userId: string;
  token: string;
}

async function register(base: string, username: string): Promise<Session_> {
  const password = `bench password ${username}`;
  const first = await request(base, "POST", "/_matrix/client/v3/register", { body: { username, password } });
  const done = await request(base, "POST", "/_matrix/client/v3/register", {
    body: { username, password, auth: { type: "m.login.dummy", session: first.json.session } },
  });
  if (done.status !== 200) throw new Error(`registration failed: ${JSON.stringify(done.json)}`);
  return { userId: done.json.user_id, token: done.json.access_token };
}

async function ok(res: Promise<{ status: number; json: any }>, what: string): Promise<any> {
  const r = await res;
  if (r.status !== 200) throw new Error(`${what} failed: ${r.status} ${JSON.stringify(r.json).slice(0, 500)}`);
  return r.json;
}

function percentile(sorted: readonly number[], p: number): number {
  const value = sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]!;
  return Math.round(value * 10) / 10;
}

const round = (x: number, digits = 1) => Math.round(x * 10 ** digits) / 10 ** digits;
const mb = (bytes: number) => round(bytes / 1048576, 0);

const results: Array<{ name: string; value: number; unit: string }> = [];
function record(name: string, value: number, unit: string) {
  results.push({ name, value, unit });
  process.stdout.write(`  ${name.padEnd(64)} ${value.toLocaleString("en").padStart(10)} ${unit}\n`);
}

function loadAverage(): string {
  return readFileSync("/proc/loadavg", "utf8").split(" ").slice(0, 3).join(" ");
}

/** The kernel's peak RSS of this process (VmHWM), in bytes. */
function peakRss(): number {
  const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync("/proc/self/status", "utf8"));
  return m ? Number(m[1]) * 1024 : process.resourceUsage().maxRSS * 1024;
}

/** Resets the kernel's peak RSS to the current RSS (Linux: "5" to clear_refs); false where not allowed. */
function resetPeakRss(): boolean {
  try {
    writeFileSync("/proc/self/clear_refs", "5");
    return true;
  } catch {
    return false;
  }
}

/**
 * Wraps methods of an object so the time spent in each (from call to settle) adds up in `spans`
 * while `on.active`; nested or concurrent calls each count their own wall time.
 */
function timeMethods(target: object, label: string, methods: string[], spans: Map<string, { ms: number; calls: number }>, on: { active: boolean }) {
  const t = target as Record<string, (...args: unknown[]) => unknown>;
  for (const name of methods) {
    const original = t[name];
    if (typeof original !== "function") throw new Error(`benchmark setup is wrong: ${label} has no method ${name}`);
    t[name] = async function (this: unknown, ...args: unknown[]) {
      if (!on.active) return original.apply(this, args);
      const start = performance.now();
      try {
        return await original.apply(this, args);
      } finally {
        const key = `${label}.${name}`;
        const span = spans.get(key) ?? { ms: 0, calls: 0 };
        span.ms += performance.now() - start;
        span.calls++;
        spans.set(key, span);
      }
    };
  }
}

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  hitCount?: number;
}

/** The top self-time functions (and files) of a V8 CPU profile. */
function topSelfTime(profile: { nodes: ProfileNode[]; startTime: number; endTime: number; samples?: number[] }, count: number): void {
  const total = profile.nodes.reduce((n, x) => n + (x.hitCount ?? 0), 0);
  const msPerSample = (profile.endTime - profile.startTime) / 1000 / Math.max(1, total);
  const byFunction = new Map<string, number>();
  const byFile = new Map<string, number>();
  const short = (url: string) => url.replace(/^file:\/\//, "").replace(/^.*\/node_modules\//, "node_modules/").replace(/^.*\/main\//, "");
  for (const n of profile.nodes) {
    const hits = n.hitCount ?? 0;
    if (hits === 0) continue;
    const f = n.callFrame;
    const key = `${f.functionName || "(anonymous)"}  ${short(f.url)}${f.url ? `:${f.lineNumber + 1}` : ""}`;
    byFunction.set(key, (byFunction.get(key) ?? 0) + hits);
    const file = f.url ? short(f.url) : f.functionName;
    byFile.set(file, (byFile.get(file) ?? 0) + hits);
  }
  const print = (title: string, m: Map<string, number>) => {
    process.stdout.write(`  ${title} (of ${round(total * msPerSample, 0)} ms sampled on the main thread)\n`);
    for (const [k, hits] of [...m].sort((a, b) => b[1] - a[1]).slice(0, count)) {
      process.stdout.write(`    ${String(round(hits * msPerSample, 0)).padStart(7)} ms ${String(round((100 * hits) / total)).padStart(5)}%  ${k}\n`);
    }
  };
  print("top self time by function", byFunction);
  print("top self time by file", byFile);
}

/** The room's joined members in a server's current state. */
async function joinedCount(hs: TestServer, roomId: string): Promise<number> {
  const t = schema.currentState;
  const [row] = await hs.services.db
    .select({ n: count() })
    .from(t)
    .where(and(eq(t.roomId, roomId), eq(t.type, "m.room.member"), eq(t.membership, "join")));
  return Number(row?.n ?? 0);
}

const net = await startNetwork(2);
const [hs1, hs2] = net.servers as [TestServer, TestServer];
process.stdout.write(
  `rooms across two Parley servers on loopback, both in this one process (PGlite in memory each), Node ${process.version}, load average ${loadAverage()}\n`,
);

try {
  const alice = await register(hs1.url, "alice");
  const bob = await register(hs2.url, "bob");

  if (PARTS.has("latency") || PARTS.has("throughput")) {
    const roomId = (await ok(request(hs1.url, "POST", "/_matrix/client/v3/createRoom", { token: alice.token, body: { preset: "public_chat" } }), "createRoom"))
      .room_id as string;
    await ok(request(hs2.url, "POST", `/_matrix/client/v3/join/${enc(roomId)}?via=hs1.test`, { token: bob.token, body: {} }), "join");
    const filter = enc(JSON.stringify({ room: { timeline: { limit: 1000 }, state: { lazy_load_members: true } }, presence: { types: [] } }));
    const syncOnce = async (since: string | undefined, timeout: number) => {
      const res = await request(hs2.url, "GET", `/_matrix/client/v3/sync?timeout=${timeout}&filter=${filter}${since ? `&since=${enc(since)}` : ""}`, {
        token: bob.token,
      });
      if (res.status !== 200) throw new Error(`sync failed: ${res.status} ${JSON.stringify(res.json)}`);
      return res.json as { next_batch: string; rooms?: { join?: Record<string, { timeline: { events: Array<{ type: string; content: { n?: number; tag?: string } }>; limited?: boolean } }> } };
    };
    let since = (await syncOnce(undefined, 0)).next_batch;
    /** Syncs until `wanted` messages tagged `tag` arrived, calling `seen` with each one's n as it arrives. */
    const receive = async (tag: string, wanted: number, seen: (n: number) => void) => {
      let count = 0;
      const deadline = performance.now() + 300_000;
      while (count < wanted) {
        if (performance.now() > deadline) throw new Error(`only ${count} of ${wanted} ${tag} messages arrived within 300 s`);
        const res = await syncOnce(since, 10_000);
        since = res.next_batch;
        const timeline = res.rooms?.join?.[roomId]?.timeline;
        if (timeline?.limited && count > 0) throw new Error("bob's /sync skipped messages (limited timeline): raise the filter's limit");
        for (const e of timeline?.events ?? []) {
          if (e.type !== "m.room.message" || e.content.tag !== tag || typeof e.content.n !== "number") continue;
          seen(e.content.n);
          count++;
        }
      }
    };
    let txn = 0;
    const send = async (tag: string, n: number) => {
      await ok(
        request(hs1.url, "PUT", `/_matrix/client/v3/rooms/${enc(roomId)}/send/m.room.message/b${++txn}`, {
          token: alice.token,
          body: { msgtype: "m.text", body: `${tag} message ${n}: the quick brown fox jumps over the lazy dog`, tag, n },
        }),
        "send",
      );
    };
    // Warm-up: connections, caches, the destination queue.
    for (let n = 0; n < 10; n++) {
      const arrived = receive("warmup", 1, () => {});
      await send("warmup", n);
      await arrived;
    }

    if (PARTS.has("latency")) {
      process.stdout.write(`delivery latency, one message at a time (load average ${loadAverage()})\n`);
      const samples: number[] = [];
      for (let n = 0; n < LATENCY_ROUNDS; n++) {
        let arrivedAt = 0;
        const arrived = receive("alone", 1, () => (arrivedAt = performance.now()));
        await new Promise((r) => setTimeout(r, SETTLE_MS));
        const sentAt = performance.now();
        await send("alone", n);
        await arrived;
        samples.push(arrivedAt - sentAt);
      }
      samples.sort((a, b) => a - b);
      record(`delivery hs1 send → hs2 /sync, p50 (${LATENCY_ROUNDS} messages)`, percentile(samples, 50), "ms");
      record("delivery hs1 send → hs2 /sync, p99", percentile(samples, 99), "ms");
      process.stdout.write(`  (load average after: ${loadAverage()})\n`);
    }

    if (PARTS.has("throughput")) {
      process.stdout.write(`messages/s, ${MESSAGES} messages, ${IN_FLIGHT} sends in flight (load average ${loadAverage()})\n`);
      const sentAt = new Array<number>(MESSAGES);
      const latencies: number[] = [];
      let lastSeen = 0;
      const arrived = receive("load", MESSAGES, (n) => {
        lastSeen = performance.now();
        latencies.push(lastSeen - sentAt[n]!);
      });
      await new Promise((r) => setTimeout(r, SETTLE_MS));
      const start = performance.now();
      let next = 0;
      await Promise.all(
        Array.from({ length: IN_FLIGHT }, async () => {
          while (next < MESSAGES) {
            const n = next++;
            sentAt[n] = performance.now();
            await send("load", n);
          }
        }),
      );
      const sendSeconds = (performance.now() - start) / 1000;
      await arrived;
      latencies.sort((a, b) => a - b);
      record(`messages hs1 → hs2 /sync, ${IN_FLIGHT} in flight (${MESSAGES})`, Math.round(MESSAGES / ((lastSeen - start) / 1000)), "messages/s");
      record("  PUT /send answered on hs1", Math.round(MESSAGES / sendSeconds), "requests/s");
      record("  latency send → hs2 /sync, p50", percentile(latencies, 50), "ms");
      record("  latency send → hs2 /sync, p99", percentile(latencies, 99), "ms");
      process.stdout.write(`  (load average after: ${loadAverage()})\n`);
    }
  }

  if (PARTS.has("join")) {
    const spans = new Map<string, { ms: number; calls: number }>();
    const on = { active: false };
    const rf1 = hs1.services.federation.rooms!;
    const rf2 = hs2.services.federation.rooms!;
    timeMethods(rf1, "hs1", ["makeJoin", "sendJoin"], spans, on);
    timeMethods(rf1, "hs1", ["place"], spans, on);
    timeMethods(hs1.services.serverReads, "hs1.serverReads", ["state"], spans, on);
    timeMethods(rf2, "hs2", ["storeOutliers"], spans, on);
    timeMethods(hs2.services.federation.pduChecker, "hs2.checker", ["check"], spans, on);
    timeMethods(hs2.services.persister, "hs2.persister", ["storeOutliers", "enqueueRemote"], spans, on);
    // hs2's federation requests: each round trip as hs2 sees it (hs1's serving, the transfer, the parse).
    const http2 = hs2.services.federation.http as unknown as Record<string, (...args: any[]) => Promise<unknown>>;
    const originalRequest = http2.request!.bind(hs2.services.federation.http);
    http2.request = async (destination: string, req: { method: string; path: string }) => {
      const start = performance.now();
      try {
        return await originalRequest(destination, req);
      } finally {
        if (on.active) {
          const kind = /\/(make_join|send_join)\//.exec(req.path)?.[1] ?? req.path.split("?")[0]!.split("/").slice(0, 5).join("/");
          const key = `hs2→hs1 ${kind} round trip`;
          const span = spans.get(key) ?? { ms: 0, calls: 0 };
          span.ms += performance.now() - start;
          span.calls++;
          spans.set(key, span);
        }
      }
    };

    for (const size of SIZES) {
      const roomId = (await ok(request(hs1.url, "POST", "/_matrix/client/v3/createRoom", { token: alice.token, body: { preset: "public_chat" } }), "createRoom"))
        .room_id as string;
      const setupStart = performance.now();
      const jobs: Promise<unknown>[] = [];
      for (let from = 1; from <= size; from += SETUP_BATCH) {
        const templates: EventTemplate[] = [];
        for (let i = from; i < Math.min(size + 1, from + SETUP_BATCH); i++) {
          const user = `@u${i}:hs1.test`;
          templates.push({ type: "m.room.member", state_key: user, sender: user, content: { membership: "join", displayname: `User ${i}` } });
        }
        jobs.push(hs1.services.persister.enqueue(roomId, () => templates));
      }
      await Promise.all(jobs);
      const setupMs = performance.now() - setupStart;
      const joinedBefore = await joinedCount(hs1, roomId);
      if (joinedBefore !== size + 1) throw new Error(`benchmark setup is wrong: the room has ${joinedBefore} joined members, not ${size + 1}`);
      const joiner = await register(hs2.url, `joiner${size}`);
      process.stdout.write(`join a room of ${size.toLocaleString("en")} members on hs1 from hs2 (hs1 built it in ${round(setupMs / 1000)} s; load average ${loadAverage()})\n`);

      globalThis.gc?.();
      await new Promise((r) => setTimeout(r, 200));
      const rssBefore = process.memoryUsage().rss;
      const peakResettable = resetPeakRss();
      let sampledPeak = rssBefore;
      const sampler = setInterval(() => (sampledPeak = Math.max(sampledPeak, process.memoryUsage().rss)), 50);
      let profiler: Session | undefined;
      if (PROFILE_SIZE === size) {
        profiler = new Session();
        profiler.connect();
        await profiler.post("Profiler.enable");
        await profiler.post("Profiler.start");
      }
      spans.clear();
      on.active = true;
      const start = performance.now();
      await ok(request(hs2.url, "POST", `/_matrix/client/v3/join/${enc(roomId)}?via=hs1.test`, { token: joiner.token, body: {} }), "remote join");
      const joinMs = performance.now() - start;
      on.active = false;
      clearInterval(sampler);
      sampledPeak = Math.max(sampledPeak, process.memoryUsage().rss);
      const kernelPeak = peakRss();
      let profileFile: string | undefined;
      let profile: Parameters<typeof topSelfTime>[0] | undefined;
      if (profiler) {
        profile = (await profiler.post("Profiler.stop")).profile as unknown as Parameters<typeof topSelfTime>[0];
        profiler.disconnect();
        profileFile = path.join(tmpdir(), `parley-federation-join-${size}-${process.pid}.cpuprofile`);
        writeFileSync(profileFile, JSON.stringify(profile));
      }
      const members = await joinedCount(hs2, roomId);
      if (members !== size + 2) throw new Error(`after the join hs2 counts ${members} joined members, not ${size + 2}`);

      const n = size.toLocaleString("en");
      record(`join ${n} members: wall time of POST /join on hs2`, round(joinMs / 1000, 2), "s");
      const span = (k: string) => spans.get(k)?.ms ?? 0;
      const hs1Serving = span("hs1.makeJoin") + span("hs1.sendJoin");
      const roundTrips = span("hs2→hs1 make_join round trip") + span("hs2→hs1 send_join round trip");
      record(`join ${n}: hs1 serving (make_join + send_join handlers)`, round(hs1Serving / 1000, 2), "s");
      record(`join ${n}: round trips as hs2 sees them (+ JSON, transfer)`, round(roundTrips / 1000, 2), "s");
      record(`join ${n}: hs2's own part (wall time − round trips)`, round((joinMs - roundTrips) / 1000, 2), "s");
      record(`join ${n}: RSS before`, mb(rssBefore), "MB");
      record(`join ${n}: peak RSS sampled every 50 ms`, mb(sampledPeak), "MB");
      record(`join ${n}: kernel peak RSS (VmHWM = maxRSS)${peakResettable ? "" : ", whole run"}`, mb(kernelPeak), "MB");
      process.stdout.write(`  where the time went (wall time of each step, ms; calls):\n`);
      for (const [k, v] of [...spans].sort((a, b) => b[1].ms - a[1].ms)) {
        process.stdout.write(`    ${k.padEnd(40)} ${String(round(v.ms, 0)).padStart(8)} ms  ${v.calls}×\n`);
      }
      process.stdout.write(`  (load average after: ${loadAverage()})\n`);
      if (profile) {
        process.stdout.write(`  CPU profile of the join (main thread): ${profileFile}\n`);
        topSelfTime(profile, 25);
      }
    }
  }
} finally {
  await net.destroy();
}

process.stdout.write(`BENCH_RESULT ${JSON.stringify({ bench: "federation-rooms", results })}\n`);

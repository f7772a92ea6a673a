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
//   Target: 20,000 members in under 15 s. Each step's CPU time is given beside its wall time: on a
//   shared machine the wall times move with the load, the CPU times much less. A first join of
//   WARM_UP_SIZE members, measured apart, starts the PDU check workers and fetches hs1's key.
//   Building the room on hs1 grows quadratically with N (a full state snapshot every 51 state
//   events): about 29 s for 5,000 and 470 s for 20,000 on a nearly idle 2-core VM.
// - cross-server delivery latency: alice (hs1) and bob (hs2) in one room; bob long-polls /sync,
//   alice sends one message (PUT /send); the sample is the time from the start of the send call
//   until bob's /sync returns with it, over LATENCY_ROUNDS messages. Target p50 under 20 ms.
// - cross-server messages/s: alice sends MESSAGES messages, IN_FLIGHT at once, while bob syncs in a
//   loop (timeline limit 1000, so no message is skipped); messages/s from the first send to the
//   last message in bob's /sync.
// Environment: BENCH_FED_ROOMS_SIZES (default 1000,5000,20000), BENCH_FED_ROOMS_PARTS (default
// latency,throughput,join), BENCH_FED_ROOMS_ROUNDS (300), BENCH_FED_ROOMS_MESSAGES (2000),
// BENCH_FED_ROOMS_PROFILE=join-20000,latency,throughput,setup-5000 writes a CPU profile of those
// phases (main thread, through node:inspector; the PDU check workers are not in it) and prints
// where it went. Run: `npm run bench federation-rooms` or `npx tsx bench/federation-rooms.bench.ts`
// (BENCH_FED_ROOMS_SIZES=1000,5000 for a run of minutes). Ends with one BENCH_RESULT line.
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
/** Phases to profile: `latency`, `throughput`, `join-<size>`, `setup-<size>` (hs1 building the room). */
const PROFILE = new Set((process.env.BENCH_FED_ROOMS_PROFILE ?? "").split(",").filter(Boolean));
const profileFile = (phase: string) => path.join(tmpdir(), `parley-federation-rooms-${phase}-${process.pid}.cpuprofile`);
const IN_FLIGHT = 20;
/** The members of the room joined first, outside the figures (see below). */
const WARM_UP_SIZE = 50;
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

interface Span {
  ms: number;
  /** Process CPU time (every thread) while the step ran: its own work, as the join's steps run one after another. */
  cpuMs: number;
  calls: number;
}
type Spans = Map<string, Span>;

/** Times `work` into `spans[key]`: wall time and the process's CPU time meanwhile. */
async function timed<T>(spans: Spans, key: string, work: () => Promise<T>): Promise<T> {
  const start = performance.now();
  const cpu = process.cpuUsage();
  try {
    return await work();
  } finally {
    const used = process.cpuUsage(cpu);
    const span = spans.get(key) ?? { ms: 0, cpuMs: 0, calls: 0 };
    span.ms += performance.now() - start;
    span.cpuMs += (used.user + used.system) / 1000;
    span.calls++;
    spans.set(key, span);
  }
}

/** Wraps methods of an object so each call is timed into `spans` while `on.active`. */
function timeMethods(target: object, label: string, methods: string[], spans: Spans, on: { active: boolean }) {
  const t = target as Record<string, (...args: unknown[]) => unknown>;
  for (const name of methods) {
    const original = t[name];
    if (typeof original !== "function") throw new Error(`benchmark setup is wrong: ${label} has no method ${name}`);
    t[name] = function (this: unknown, ...args: unknown[]) {
      if (!on.active) return original.apply(this, args);
      return timed(spans, `${label}.${name}`, async () => original.apply(this, args));
    };
  }
}

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  hitCount?: number;
  children?: number[];
}
type CpuProfile = { nodes: ProfileNode[]; startTime: number; endTime: number };

/** Starts the V8 CPU profiler on the main thread; the returned function stops it and answers the profile. */
async function startProfile(): Promise<() => Promise<CpuProfile>> {
  const session = new Session();
  session.connect();
  await session.post("Profiler.enable");
  await session.post("Profiler.start");
  return async () => {
    const { profile } = await session.post("Profiler.stop");
    session.disconnect();
    return profile as unknown as CpuProfile;
  };
}

/**
 * Prints a CPU profile's top self time by function and by file, and the self time charged to the
 * nearest Parley frame above it (so PGlite's WebAssembly, drizzle and JSON work show under the
 * Parley function that asked for them).
 */
function printProfile(profile: CpuProfile, file: string, count: number): void {
  writeFileSync(file, JSON.stringify(profile));
  const total = profile.nodes.reduce((n, x) => n + (x.hitCount ?? 0), 0);
  const msPerSample = (profile.endTime - profile.startTime) / 1000 / Math.max(1, total);
  const short = (url: string) => url.replace(/^file:\/\//, "").replace(/^.*\/node_modules\//, "node_modules/").replace(/^.*\/main\//, "");
  const ours = (url: string) => url.startsWith("file://") && !url.includes("/node_modules/") && !url.includes("/bench/");
  const name = (n: ProfileNode) => {
    const f = n.callFrame;
    if (f.url.startsWith("wasm://")) return "PGlite (WebAssembly)";
    return `${f.functionName || "(anonymous)"}  ${short(f.url)}${f.url ? `:${f.lineNumber + 1}` : ""}`;
  };
  const parent = new Map<number, ProfileNode>();
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n);
  const byFunction = new Map<string, number>();
  const byFile = new Map<string, number>();
  const byParley = new Map<string, number>();
  const add = (m: Map<string, number>, k: string, hits: number) => m.set(k, (m.get(k) ?? 0) + hits);
  for (const n of profile.nodes) {
    const hits = n.hitCount ?? 0;
    if (hits === 0) continue;
    const url = n.callFrame.url;
    add(byFunction, name(n), hits);
    add(byFile, url.startsWith("wasm://") ? "PGlite (WebAssembly)" : url ? short(url).replace(/^(node_modules\/(@[^/]+\/)?[^/]+)\/.*$/, "$1") : n.callFrame.functionName, hits);
    let at: ProfileNode | undefined = n;
    while (at && !ours(at.callFrame.url)) at = parent.get(at.id);
    add(byParley, at ? name(at) : name(n), hits);
  }
  process.stdout.write(`  CPU profile (main thread): ${file}, ${round(total * msPerSample, 0)} ms sampled\n`);
  const print = (title: string, m: Map<string, number>) => {
    process.stdout.write(`  ${title}\n`);
    for (const [k, hits] of [...m].sort((a, b) => b[1] - a[1]).slice(0, count)) {
      process.stdout.write(`    ${String(round(hits * msPerSample, 0)).padStart(7)} ms ${String(round((100 * hits) / total)).padStart(5)}%  ${k}\n`);
    }
  };
  print("top self time by function", byFunction);
  print("self time by file or package", byFile);
  print("self time charged to the nearest Parley function (its own, and the libraries and PGlite it called)", byParley);
}

/** Main-thread utilisation and process CPU (all threads: the PDU check workers too) over a phase. */
function startCpuMeter(): () => { elu: number; cpuCores: number; cpuSeconds: number } {
  const elu = performance.eventLoopUtilization();
  const cpu = process.cpuUsage();
  const start = performance.now();
  return () => {
    const used = process.cpuUsage(cpu);
    return {
      elu: round(performance.eventLoopUtilization(elu).utilization * 100, 0),
      cpuCores: round((used.user + used.system) / 1000 / (performance.now() - start), 2),
      cpuSeconds: round((used.user + used.system) / 1e6, 2),
    };
  };
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
      // Where each message is on its way (first time each point is reached in the round), to split the latency.
      let marks: Record<string, number> | undefined;
      const mark = (name: string) => {
        if (marks && marks[name] === undefined) marks[name] = performance.now();
      };
      const http1 = hs1.services.federation.http as unknown as Record<string, (...args: any[]) => Promise<unknown>>;
      const request1 = http1.request!.bind(hs1.services.federation.http);
      http1.request = async (destination: string, req: { path: string }) => {
        const isTxn = req.path.startsWith("/_matrix/federation/v1/send/");
        if (isTxn) mark("txnStart");
        try {
          return await request1(destination, req);
        } finally {
          if (isTxn) mark("txnAnswered");
        }
      };
      const rf2 = hs2.services.federation.rooms! as unknown as Record<string, (...args: any[]) => Promise<unknown>>;
      const receivePdus2 = rf2.receivePdus!.bind(rf2);
      rf2.receivePdus = async (...args: unknown[]) => {
        mark("placeStart");
        try {
          return await receivePdus2(...args);
        } finally {
          mark("placeEnd");
        }
      };
      const segments: Record<string, number[]> = {};
      const stopProfile = PROFILE.has("latency") ? await startProfile() : undefined;
      const cpu = startCpuMeter();
      for (let n = 0; n < LATENCY_ROUNDS; n++) {
        let arrivedAt = 0;
        const arrived = receive("alone", 1, () => (arrivedAt = performance.now()));
        await new Promise((r) => setTimeout(r, SETTLE_MS));
        marks = {};
        const sentAt = performance.now();
        await send("alone", n);
        mark("putAnswered");
        await arrived;
        samples.push(arrivedAt - sentAt);
        const m = marks;
        marks = undefined;
        const points: Array<[string, number | undefined, number | undefined]> = [
          ["hs1: PUT /send answered (persisted)", sentAt, m.putAnswered],
          ["hs1: send start → transaction to hs2 starts", sentAt, m.txnStart],
          ["transaction starts → hs2 starts placing the PDU (HTTP, X-Matrix, checks)", m.txnStart, m.placeStart],
          ["hs2: placing the PDU (persist)", m.placeStart, m.placeEnd],
          ["hs2: placed → bob's /sync returns with it", m.placeEnd, arrivedAt],
        ];
        for (const [name, from, to] of points) {
          if (from === undefined || to === undefined) continue;
          (segments[name] ??= []).push(to - from);
        }
      }
      http1.request = request1;
      rf2.receivePdus = receivePdus2;
      const used = cpu();
      const profile = await stopProfile?.();
      samples.sort((a, b) => a - b);
      record(`delivery hs1 send → hs2 /sync, p50 (${LATENCY_ROUNDS} messages)`, percentile(samples, 50), "ms");
      record("delivery hs1 send → hs2 /sync, p99", percentile(samples, 99), "ms");
      record("  main thread busy", used.elu, "%");
      record("  process CPU time per message (both servers and both clients, all threads)", round((used.cpuSeconds * 1000) / LATENCY_ROUNDS), "ms");
      for (const [name, values] of Object.entries(segments)) {
        values.sort((a, b) => a - b);
        record(`  ${name}, p50`, percentile(values, 50), "ms");
      }
      if (profile) printProfile(profile, profileFile("latency"), 20);
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
      const stopProfile = PROFILE.has("throughput") ? await startProfile() : undefined;
      const cpu = startCpuMeter();
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
      const used = cpu();
      const profile = await stopProfile?.();
      latencies.sort((a, b) => a - b);
      record(`messages hs1 → hs2 /sync, ${IN_FLIGHT} in flight (${MESSAGES})`, Math.round(MESSAGES / ((lastSeen - start) / 1000)), "messages/s");
      record("  PUT /send answered on hs1", Math.round(MESSAGES / sendSeconds), "requests/s");
      record("  latency send → hs2 /sync, p50", percentile(latencies, 50), "ms");
      record("  latency send → hs2 /sync, p99", percentile(latencies, 99), "ms");
      record("  main thread busy", used.elu, "%");
      record("  process CPU (all threads) / wall time", used.cpuCores, "cores");
      record("  process CPU time per message (both servers and both clients, all threads)", round((used.cpuSeconds * 1000) / MESSAGES), "ms");
      if (profile) printProfile(profile, profileFile("throughput"), 20);
      process.stdout.write(`  (load average after: ${loadAverage()})\n`);
    }
  }

  if (PARTS.has("join")) {
    const spans: Spans = new Map();
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
    http2.request = (destination: string, req: { method: string; path: string }) => {
      if (!on.active) return originalRequest(destination, req);
      const kind = /\/(make_join|send_join)\//.exec(req.path)?.[1] ?? req.path.split("?")[0]!.split("/").slice(0, 5).join("/");
      return timed(spans, `hs2→hs1 ${kind} round trip`, () => originalRequest(destination, req));
    };

    // The first large join after start pays for the PDU check workers' start and hs1's key fetch
    // (both once per process): a small join first, measured apart.
    for (const [size, warmUp] of [[WARM_UP_SIZE, true] as const, ...SIZES.map((s) => [s, false] as const)]) {
      const roomId = (await ok(request(hs1.url, "POST", "/_matrix/client/v3/createRoom", { token: alice.token, body: { preset: "public_chat" } }), "createRoom"))
        .room_id as string;
      const setupStart = performance.now();
      const stopSetupProfile = PROFILE.has(`setup-${size}`) ? await startProfile() : undefined;
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
      const setupProfile = await stopSetupProfile?.();
      if (setupProfile) printProfile(setupProfile, profileFile(`setup-${size}`), 20);
      const joinedBefore = await joinedCount(hs1, roomId);
      if (joinedBefore !== size + 1) throw new Error(`benchmark setup is wrong: the room has ${joinedBefore} joined members, not ${size + 1}`);
      const joiner = await register(hs2.url, `joiner${size}${warmUp ? "warmup" : ""}`);
      if (warmUp) {
        const cpu = startCpuMeter();
        const start = performance.now();
        await ok(request(hs2.url, "POST", `/_matrix/client/v3/join/${enc(roomId)}?via=hs1.test`, { token: joiner.token, body: {} }), "remote join");
        record(`first join after start, ${size} members (workers start, keys fetched)`, round((performance.now() - start) / 1000, 2), "s");
        record("  its process CPU time", cpu().cpuSeconds, "s");
        continue;
      }
      process.stdout.write(`join a room of ${size.toLocaleString("en")} members on hs1 from hs2 (hs1 built it in ${round(setupMs / 1000)} s; load average ${loadAverage()})\n`);

      globalThis.gc?.();
      await new Promise((r) => setTimeout(r, 200));
      const rssBefore = process.memoryUsage().rss;
      const peakResettable = resetPeakRss();
      let sampledPeak = rssBefore;
      const sampler = setInterval(() => (sampledPeak = Math.max(sampledPeak, process.memoryUsage().rss)), 50);
      const stopProfile = PROFILE.has(`join-${size}`) ? await startProfile() : undefined;
      spans.clear();
      const cpu = startCpuMeter();
      on.active = true;
      const start = performance.now();
      await ok(request(hs2.url, "POST", `/_matrix/client/v3/join/${enc(roomId)}?via=hs1.test`, { token: joiner.token, body: {} }), "remote join");
      const joinMs = performance.now() - start;
      const used = cpu();
      on.active = false;
      clearInterval(sampler);
      sampledPeak = Math.max(sampledPeak, process.memoryUsage().rss);
      const kernelPeak = peakRss();
      const profile = await stopProfile?.();
      const members = await joinedCount(hs2, roomId);
      if (members !== size + 2) throw new Error(`after the join hs2 counts ${members} joined members, not ${size + 2}`);

      const n = size.toLocaleString("en");
      record(`join ${n} members: wall time of POST /join on hs2`, round(joinMs / 1000, 2), "s");
      const wall = (k: string) => spans.get(k)?.ms ?? 0;
      const cpuOf = (k: string) => spans.get(k)?.cpuMs ?? 0;
      const serving = ["hs1.makeJoin", "hs1.sendJoin"];
      const trips = ["hs2→hs1 make_join round trip", "hs2→hs1 send_join round trip"];
      const sum = (keys: string[], f: (k: string) => number) => keys.reduce((x, k) => x + f(k), 0);
      record(`join ${n}: hs1 serving (make_join + send_join handlers)`, round(sum(serving, wall) / 1000, 2), "s");
      record(`join ${n}: round trips as hs2 sees them (+ JSON, transfer)`, round(sum(trips, wall) / 1000, 2), "s");
      record(`join ${n}: hs2's own part (wall time − round trips)`, round((joinMs - sum(trips, wall)) / 1000, 2), "s");
      record(`join ${n}: CPU time of the round trips (hs1 serving, JSON, transfer)`, round(sum(trips, cpuOf) / 1000, 2), "s");
      record(`join ${n}: CPU time of hs2's own part`, round(used.cpuSeconds - sum(trips, cpuOf) / 1000, 2), "s");
      record(`join ${n}: main thread busy`, used.elu, "%");
      record(`join ${n}: process CPU time (all threads)`, used.cpuSeconds, "s");
      record(`join ${n}: process CPU (all threads) / wall time`, used.cpuCores, "cores");
      record(`join ${n}: RSS before`, mb(rssBefore), "MB");
      record(`join ${n}: peak RSS sampled every 50 ms`, mb(sampledPeak), "MB");
      record(`join ${n}: kernel peak RSS (VmHWM = maxRSS)${peakResettable ? "" : ", whole run"}`, mb(kernelPeak), "MB");
      process.stdout.write(`  where the time went (each step's wall time, and the process's CPU time meanwhile; steps nest):\n`);
      for (const [k, v] of [...spans].sort((a, b) => b[1].ms - a[1].ms)) {
        process.stdout.write(`    ${k.padEnd(40)} ${String(round(v.ms, 0)).padStart(8)} ms wall ${String(round(v.cpuMs, 0)).padStart(8)} ms CPU  ${v.calls}×\n`);
      }
      process.stdout.write(`  (load average after: ${loadAverage()})\n`);
      if (profile) printProfile(profile, profileFile(`join-${size}`), 20);
    }
  }
} finally {
  await net.destroy();
}

process.stdout.write(`BENCH_RESULT ${JSON.stringify({ bench: "federation-rooms", results })}\n`);

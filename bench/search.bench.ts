// Server-side search (POST /_matrix/client/v3/search) over 100,000 messages in 5 rooms, one user
// joined to them all: the latency of whole requests over HTTP (the full-text query and its count,
// history visibility, the client format, highlights), p50/p99 over RUNS runs of each query, for
// order_by rank and recent, for terms from one message to half of them. Also what indexing adds to
// the persist path: to_tsvector over message bodies, per message.
//
// The messages are written straight into the database as the persister stores them (events rows
// on the rooms' current state group, and their event_search rows with to_tsvector), so setup takes
// seconds, not the minutes 100,000 sends would. Embedded PGlite (in memory), and PostgreSQL when
// DATABASE_URL is set. `npx tsx bench/search.bench.ts`
import { sql } from "drizzle-orm";
import { rowsOf } from "../schema/db.ts";
import { registerUser } from "../tests/accounts-helpers.ts";
import { request, startTestServer } from "../tests/harness.ts";

const MESSAGES = Number(process.env.BENCH_SEARCH_MESSAGES ?? 100_000);
const ROOMS = 5;
const RUNS = Number(process.env.BENCH_SEARCH_RUNS ?? 30);
const CHUNK = 2_000;

/** Deterministic pseudo-random numbers (a bench must be the same from run to run). */
function lcg(seed: number) {
  let s = seed >>> 0;
  return () => (s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32;
}

// Filler words (a few hundred, unevenly used) and marker words of known frequency.
const FILLER = Array.from({ length: 400 }, (_, i) => `word${i.toString(36)}x`);
const MARKERS: Array<[word: string, share: number]> = [
  ["alpha", 0.5],
  ["bravo", 0.05],
  ["charlie", 0.005],
  ["delta", 0.1],
  ["echo", 0.1],
];

function body(random: () => number, i: number): string {
  const words: string[] = [];
  const n = 5 + Math.floor(random() * 15);
  for (let k = 0; k < n; k++) words.push(FILLER[Math.floor(random() ** 2 * FILLER.length)]!);
  for (const [word, share] of MARKERS) if (random() < share) words.splice(Math.floor(random() * words.length), 0, word);
  if (i === Math.floor(MESSAGES / 2)) words.push("needle");
  return words.join(" ");
}

function percentile(xs: number[], p: number): number {
  const sorted = [...xs].sort((a, b) => a - b);
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return Math.round(sorted[i]! * 10) / 10;
}

// BENCH_SEARCH_KEEP=<dir>: the embedded database on disk in <dir>, kept afterwards (to EXPLAIN queries on it).
const keep = process.env.BENCH_SEARCH_KEEP;
const hs = await startTestServer({ config: { log_level: "warn" }, ...(keep ? { dataDir: keep } : {}) });
const kind = process.env.DATABASE_URL ? "postgres" : "pglite";
const results: Array<{ name: string; value: number; unit: string }> = [];
try {
  const db = hs.services.db;
  const user = await registerUser(hs.url, "searcher");
  const call = (method: string, path: string, body?: unknown) => request(hs.url, method, path, { token: user.accessToken, body });
  const rooms: Array<{ roomId: string; group: number; depth: number; version: string }> = [];
  for (let r = 0; r < ROOMS; r++) {
    const res = await call("POST", "/_matrix/client/v3/createRoom", { name: `bench room ${r}` });
    if (res.status !== 200) throw new Error(`createRoom: ${res.text}`);
    const [row] = rowsOf<{ current_state_group: string | number; max_depth: string | number; room_version: string }>(
      await db.execute(sql`select current_state_group, max_depth, room_version from rooms where room_id = ${res.json.room_id}`),
    );
    rooms.push({ roomId: res.json.room_id, group: Number(row!.current_state_group), depth: Number(row!.max_depth), version: row!.room_version });
  }

  // The messages, as the persister writes them: stream positions after the current one, depth
  // after each room's, the state group the room is at, and the index row in the same statement.
  const [pos] = rowsOf<{ position: string | number }>(await db.execute(sql`select position from stream_positions where stream = 'events'`));
  const base = Number(pos!.position);
  const random = lcg(42);
  const now = Date.now();
  let t = performance.now();
  for (let start = 0; start < MESSAGES; start += CHUNK) {
    const rows: Array<ReturnType<typeof sql>> = [];
    for (let i = start; i < Math.min(MESSAGES, start + CHUNK); i++) {
      const room = rooms[i % ROOMS]!;
      const depth = room.depth + 1 + Math.floor(i / ROOMS);
      const eventId = `$bench${i}`;
      const content = { msgtype: "m.text", body: body(random, i) };
      const pdu = {
        type: "m.room.message",
        room_id: room.roomId,
        sender: user.userId,
        content,
        origin_server_ts: now - MESSAGES + i,
        depth,
        prev_events: [],
        auth_events: [],
        hashes: { sha256: "" },
        signatures: {},
      };
      rows.push(sql`(${eventId}, ${room.roomId}, ${user.userId}, ${now - MESSAGES + i}::bigint, ${depth}::bigint, ${JSON.stringify(pdu)},
        ${base + 1 + i}::bigint, ${room.group}::bigint, ${content.body})`);
    }
    await db.execute(sql`with v(event_id, room_id, sender, ts, depth, json, stream, grp, body) as (values ${sql.join(rows, sql`, `)}),
      ev as (insert into events (event_id, room_id, type, state_key, sender, origin_server_ts, depth, json, stream_ordering,
          topological_ordering, soft_failed, state_before_group, outlier)
        select event_id, room_id, 'm.room.message', null, sender, ts, depth, json, stream, depth, false, grp, false from v)
      insert into event_search (event_id, room_id, sender, key, vector, stream_ordering)
        select event_id, room_id, sender, 'content.body', to_tsvector('english', body), stream from v`);
  }
  await db.execute(sql`update stream_positions set position = ${base + MESSAGES}::bigint where stream = 'events'`);
  await db.execute(sql`analyze events`);
  await db.execute(sql`analyze event_search`);
  process.stderr.write(`${kind}: ${MESSAGES} messages in ${ROOMS} rooms stored and indexed in ${Math.round(performance.now() - t)} ms\n`);

  // What the write extension adds to each persisted message: to_tsvector over its body.
  const sample = Array.from({ length: 2_000 }, (_, i) => body(random, i));
  const tsv: number[] = [];
  for (let k = 0; k < 5; k++) {
    t = performance.now();
    await db.execute(sql`select count(to_tsvector('english', b)) from (values ${sql.join(sample.map((b) => sql`(${b})`), sql`, `)}) as v(b)`);
    tsv.push(((performance.now() - t) * 1000) / sample.length);
  }
  const perMessage = percentile(tsv, 50);
  results.push({ name: `${kind} to_tsvector per message body (indexing cost on the persist path)`, value: perMessage, unit: "µs" });
  process.stderr.write(`${kind}: to_tsvector per message body: ${perMessage} µs\n`);

  const queries: Array<[label: string, criteria: Record<string, unknown>]> = [
    ["1 match (needle)", { search_term: "needle" }],
    ["~500 matches (charlie)", { search_term: "charlie" }],
    ["~5,000 matches (bravo)", { search_term: "bravo" }],
    ["~1,000 matches, two words (delta echo)", { search_term: "delta echo" }],
    ["~50,000 matches (alpha)", { search_term: "alpha" }],
    ["~50,000 matches (alpha), event_context 5/5", { search_term: "alpha", event_context: { before_limit: 5, after_limit: 5 } }],
    ["no match (zebra)", { search_term: "zebra" }],
  ];
  for (const order_by of ["rank", "recent"]) {
    for (const [label, criteria] of queries) {
      const times: number[] = [];
      let count = 0;
      for (let k = 0; k < RUNS + 3; k++) {
        t = performance.now();
        const res = await call("POST", "/_matrix/client/v3/search", { search_categories: { room_events: { ...criteria, order_by } } });
        const ms = performance.now() - t;
        if (res.status !== 200) throw new Error(`search: ${res.text}`);
        count = res.json.search_categories.room_events.count;
        if (k >= 3) times.push(ms);
      }
      const p50 = percentile(times, 50);
      const p99 = percentile(times, 99);
      results.push({ name: `${kind} search ${order_by}, ${label}, p50`, value: p50, unit: "ms" });
      results.push({ name: `${kind} search ${order_by}, ${label}, p99`, value: p99, unit: "ms" });
      process.stderr.write(`${kind}: order_by ${order_by}, ${label}: count ${count}, p50 ${p50} ms, p99 ${p99} ms\n`);
    }
    // Paging: the 10th page of the common term (next_batch nine times).
    const criteria = { search_term: "alpha", order_by };
    let next: string | undefined;
    for (let page = 0; page < 9; page++) {
      const query = next === undefined ? "" : `?next_batch=${encodeURIComponent(next)}`;
      const res = await call("POST", `/_matrix/client/v3/search${query}`, { search_categories: { room_events: criteria } });
      next = res.json.search_categories.room_events.next_batch;
    }
    const times: number[] = [];
    for (let k = 0; k < RUNS; k++) {
      t = performance.now();
      const res = await call("POST", `/_matrix/client/v3/search?next_batch=${encodeURIComponent(next!)}`, { search_categories: { room_events: criteria } });
      times.push(performance.now() - t);
      if (res.status !== 200 || res.json.search_categories.room_events.results.length !== 10) throw new Error(`page 10: ${res.text}`);
    }
    results.push({ name: `${kind} search ${order_by}, ~50,000 matches, 10th page, p50`, value: percentile(times, 50), unit: "ms" });
    results.push({ name: `${kind} search ${order_by}, ~50,000 matches, 10th page, p99`, value: percentile(times, 99), unit: "ms" });
    process.stderr.write(`${kind}: order_by ${order_by}, alpha, 10th page: p50 ${percentile(times, 50)} ms, p99 ${percentile(times, 99)} ms\n`);
  }
} finally {
  await (keep ? hs.stop() : hs.destroy());
}
console.log(`BENCH_RESULT ${JSON.stringify({ bench: "search", results })}`);

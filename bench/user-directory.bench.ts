// User directory search (`POST /user_directory/search`) over 10,000 users: 8,000 local accounts
// and 2,000 users of another server, in 500 rooms of varied sizes (400 of 2–12 members, 90 of
// 20–200, 10 of 1,000–3,000), a fifth of them public. Users, rooms and memberships are written
// straight into the database (the persist path would take minutes for 30,000 joins); the
// directory then fills itself from them as at start-up on an existing database (timed). Searches
// go through HTTP with an access token, one after another, for searchers in no room, in one small
// room, in a 3,000-member room and in 50 rooms, over terms of varied selectivity.
// Embedded PGlite, and PostgreSQL when DATABASE_URL is set.
//   npx tsx bench/user-directory.bench.ts
import { sql } from "drizzle-orm";
import { createTestDatabase, startTestServer, type TestServer } from "../tests/harness.ts";
import { UserDirectory } from "../server/userdirectory/user-directory.ts";

const LOCAL = 8_000;
const REMOTE = 2_000;
const SEARCHES = Number(process.env.BENCH_UDIR_SEARCHES ?? 100);
const FIRST = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory", "niaj", "olivia", "peggy", "rupert", "sybil", "trent", "victor", "walter", "yvonne", "zoe", "ann", "ben", "chloe", "dmitri", "emma", "farah", "gustav", "hana", "igor", "jamal", "kenji", "lena", "mateo", "noor", "oskar", "priya", "quentin", "rosa", "sven"];
const LAST = ["smith", "jones", "garcia", "müller", "rossi", "dubois", "kowalski", "nakamura", "okafor", "singh", "silva", "novak", "larsen", "ivanova", "cohen", "haddad", "kim", "nguyen", "papadopoulos", "o'brien", "fischer", "moreau", "andersson", "costa", "yilmaz"];

/** Deterministic pseudo-random numbers (the same data each run). */
let seed = 42;
const rand = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
const pick = <T>(xs: readonly T[]) => xs[Math.floor(rand() * xs.length)]!;
const between = (lo: number, hi: number) => lo + Math.floor(rand() * (hi - lo + 1));

function percentile(xs: number[], p: number): number {
  const sorted = [...xs].sort((a, b) => a - b);
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return Math.round(sorted[i]! * 100) / 100;
}

async function insertJson(hs: TestServer, rows: unknown[], statement: (json: string) => ReturnType<typeof sql>) {
  for (let i = 0; i < rows.length; i += 2000) await hs.services.db.execute(statement(JSON.stringify(rows.slice(i, i + 2000))));
}

async function register(hs: TestServer, username: string): Promise<{ userId: string; token: string }> {
  const post = async (body: unknown) => {
    const res = await fetch(`${hs.url}/_matrix/client/v3/register`, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
    return (await res.json()) as Record<string, any>;
  };
  const first = await post({ username, password: "bench password" });
  const done = await post({ username, password: "bench password", auth: { type: "m.login.dummy", session: first.session } });
  return { userId: done.user_id, token: done.access_token };
}

async function benchOne(kind: string, database: Awaited<ReturnType<typeof createTestDatabase>> | undefined) {
  seed = 42; // the same data on both databases
  const hs = await startTestServer({ database: database ?? { drop: async () => {} }, config: { server_name: "bench.local" } });
  try {
    const searchers = {
      "in no room": await register(hs, "searcher-none"),
      "in a 2-member room": await register(hs, "searcher-small"),
      "in a 3,000-member room": await register(hs, "searcher-big"),
      "in 50 rooms": await register(hs, "searcher-many"),
    };

    // Users.
    const users: Array<{ id: string; name: string; local: boolean }> = [];
    for (let i = 0; i < LOCAL + REMOTE; i++) {
      const local = i < LOCAL;
      const name = `${pick(FIRST)} ${pick(LAST)}`.replace(/^./, (c) => c.toUpperCase());
      users.push({ id: local ? `@user${String(i).padStart(5, "0")}:bench.local` : `@r${i}:remote.example`, name, local });
    }
    const now = Date.now();
    await insertJson(hs, users.filter((u) => u.local), (j) => sql`insert into users (user_id, display_name, created_ts)
      select x.id, x.name, ${now} from jsonb_to_recordset(${j}::jsonb) as x(id text, name text)`);

    // Rooms and memberships.
    const sizes = [...Array.from({ length: 400 }, () => between(2, 12)), ...Array.from({ length: 90 }, () => between(20, 200)), ...Array.from({ length: 10 }, () => between(1000, 3000))];
    const rooms = sizes.map((size, r) => ({ id: `!room${r}:bench.local`, size, public: r % 5 === 0 }));
    rooms[rooms.length - 1]!.size = 3000;
    rooms[1]!.size = 1; // private: with its searcher, a 2-member room
    const state: Array<{ r: string; k: string; e: string; m: string | null; t: string }> = [];
    const local: Array<{ u: string; r: string; e: string; s: number }> = [];
    const events: Array<{ e: string; r: string; k: string; j: string }> = [];
    let n = 0;
    const join = (room: string, userId: string, name?: string) => {
      const e = `$m${n++}`;
      state.push({ r: room, k: userId, e, m: "join", t: "m.room.member" });
      if (userId.endsWith(":bench.local")) local.push({ u: userId, r: room, e, s: n });
      else events.push({ e, r: room, k: userId, j: JSON.stringify({ type: "m.room.member", state_key: userId, content: { membership: "join", displayname: name } }) });
    };
    for (const room of rooms) {
      const members = new Set<number>();
      members.add(between(0, LOCAL - 1)); // a local user in every room
      while (members.size < room.size) members.add(between(0, users.length - 1));
      for (const m of members) join(room.id, users[m]!.id, users[m]!.name);
      const e = `$j${n++}`;
      state.push({ r: room.id, k: "", e, m: null, t: "m.room.join_rules" });
      events.push({ e, r: room.id, k: "", j: JSON.stringify({ type: "m.room.join_rules", state_key: "", content: { join_rule: room.public ? "public" : "invite" } }) });
    }
    join(rooms[1]!.id, searchers["in a 2-member room"].userId);
    join(rooms[rooms.length - 1]!.id, searchers["in a 3,000-member room"].userId);
    for (let r = 100; r < 150; r++) join(rooms[r]!.id, searchers["in 50 rooms"].userId);
    await insertJson(hs, state, (j) => sql`insert into current_state (room_id, type, state_key, event_id, membership)
      select x.r, x.t, x.k, x.e, x.m from jsonb_to_recordset(${j}::jsonb) as x(r text, t text, k text, e text, m text)`);
    await insertJson(hs, local, (j) => sql`insert into room_memberships (user_id, room_id, membership, event_id, stream_ordering)
      select x.u, x.r, 'join', x.e, x.s from jsonb_to_recordset(${j}::jsonb) as x(u text, r text, e text, s bigint)`);
    await insertJson(hs, events, (j) => sql`insert into events (event_id, room_id, type, state_key, sender, origin_server_ts, depth, json, topological_ordering, outlier)
      select x.e, x.r, x.j::jsonb->>'type', x.k, '@x:bench.local', 0, 1, x.j, 1, true from jsonb_to_recordset(${j}::jsonb) as x(e text, r text, k text, j text)`);
    if (kind === "postgres") await hs.services.db.execute(sql`analyze`);

    // The directory fills itself from what is there, as on a database that predates it.
    const filling = new UserDirectory({ db: hs.services.db, serverName: "bench.local", accounts: hs.services.accounts, logger: hs.services.logger, searchAllUsers: false });
    const t0 = performance.now();
    filling.start();
    await filling.settled();
    const fillMs = Math.round(performance.now() - t0);
    const counts = (await hs.services.db.execute(sql`select (select count(*) from user_directory) as users, (select count(*) from user_directory_search) as words, (select count(*) from user_directory_public_rooms) as public_rooms`)) as any;
    const c = (counts.rows ?? counts)[0];
    console.log(`${kind}: directory filled in ${fillMs} ms: ${c.users} users, ${c.words} words, ${c.public_rooms} public rooms; ${state.length} state rows`);
    // A restart: the directory is there, only public rooms are worked out again and missing users looked for.
    const t1 = performance.now();
    const restarted = new UserDirectory({ db: hs.services.db, serverName: "bench.local", accounts: hs.services.accounts, logger: hs.services.logger, searchAllUsers: false });
    restarted.start();
    await restarted.settled();
    const restartMs = Math.round(performance.now() - t1);
    console.log(`${kind}: start-up check of a filled directory: ${restartMs} ms`);
    if (kind === "postgres") await hs.services.db.execute(sql`analyze`);

    if (process.env.BENCH_UDIR_EXPLAIN) {
      for (const [who, term] of [["in a 3,000-member room", "a"], ["in 50 rooms", "user01234"], ["in no room", "bench"]] as const) {
        const plan = (await hs.services.db.execute(sql`explain analyze ${filling.searchSql(searchers[who].userId, term, 11)!}`)) as any;
        console.log(`--- ${who}, ${term}\n${(plan.rows ?? plan).map((r: any) => r["QUERY PLAN"]).join("\n")}`);
      }
    }
    const terms: Record<string, () => string> = {
      "one letter (thousands match)": () => pick("abcdefghijklmnoprstvwyz".split("")),
      "three letters": () => pick(FIRST).slice(0, 3),
      "first name": () => pick(FIRST),
      "first and last name": () => `${pick(FIRST)} ${pick(LAST)}`,
      "localpart (one match)": () => `user${String(between(0, LOCAL - 1)).padStart(5, "0")}`,
      "server name (every local user)": () => "bench",
      "no match": () => `zq${between(0, 999)}`,
    };
    const results: { name: string; value: number; unit: string }[] = [
      { name: `fill from 10,000 users (${kind})`, value: fillMs, unit: "ms" },
      { name: `start-up check of a filled directory (${kind})`, value: restartMs, unit: "ms" },
    ];
    const all: number[] = [];
    for (const [label, term] of Object.entries(terms)) {
      const samples: number[] = [];
      let found = 0;
      for (let i = 0; i < SEARCHES; i++) {
        const searcher = Object.values(searchers)[i % 4]!;
        const t = performance.now();
        const res = await fetch(`${hs.url}/_matrix/client/v3/user_directory/search`, {
          method: "POST",
          headers: { "Content-Type": "application/json", Authorization: `Bearer ${searcher.token}` },
          body: JSON.stringify({ search_term: term(), limit: 10 }),
        });
        const body = (await res.json()) as { results: unknown[] };
        samples.push(performance.now() - t);
        if (res.status !== 200) throw new Error(`search answered ${res.status}: ${JSON.stringify(body)}`);
        found += body.results.length;
      }
      all.push(...samples);
      console.log(`${kind}: ${label}: p50 ${percentile(samples, 50)} ms, p99 ${percentile(samples, 99)} ms (${SEARCHES} searches, ${(found / SEARCHES).toFixed(1)} results each)`);
      results.push({ name: `search p50, ${label} (${kind})`, value: percentile(samples, 50), unit: "ms" }, { name: `search p99, ${label} (${kind})`, value: percentile(samples, 99), unit: "ms" });
    }
    for (const [label, searcher] of Object.entries(searchers)) {
      const samples: number[] = [];
      for (let i = 0; i < SEARCHES; i++) {
        const t = performance.now();
        const res = await fetch(`${hs.url}/_matrix/client/v3/user_directory/search`, {
          method: "POST",
          headers: { "Content-Type": "application/json", Authorization: `Bearer ${searcher.token}` },
          body: JSON.stringify({ search_term: pick("abcdefghijklmnoprstvwyz".split("")) }),
        });
        await res.arrayBuffer();
        samples.push(performance.now() - t);
      }
      console.log(`${kind}: searcher ${label}, one-letter terms: p50 ${percentile(samples, 50)} ms, p99 ${percentile(samples, 99)} ms`);
    }
    console.log(`${kind}: all searches: p50 ${percentile(all, 50)} ms, p99 ${percentile(all, 99)} ms`);
    results.push({ name: `search p50, all (${kind})`, value: percentile(all, 50), unit: "ms" }, { name: `search p99, all (${kind})`, value: percentile(all, 99), unit: "ms" });
    return results;
  } finally {
    await hs.destroy();
  }
}

const results: { name: string; value: number; unit: string }[] = [];
results.push(...(await benchOne("pglite", undefined)));
if (process.env.DATABASE_URL) {
  const database = await createTestDatabase();
  results.push(...(await benchOne("postgres", database)));
}
console.log(`BENCH_RESULT ${JSON.stringify({ bench: "user-directory", results })}`);

// The spaces hierarchy (`GET /_matrix/client/v1/rooms/{roomId}/hierarchy`) of one space holding 10
// sub spaces of 20 rooms each (211 rooms, all on this server, built through the HTTP API), walked by
// a user who is in none of them (so every room's access is checked): the first page (50 rooms), and
// the whole walk page by page (5 pages), repeated. Embedded PGlite, and PostgreSQL when
// DATABASE_URL is set.
//   npx tsx bench/space-hierarchy.bench.ts
import { createTestDatabase, startTestServer } from "../tests/harness.ts";

const SUBSPACES = 10;
const ROOMS_PER_SUBSPACE = 20;
const RUNS = Number(process.env.BENCH_HIERARCHY_RUNS ?? 20);

function percentile(xs: number[], p: number): number {
  const sorted = [...xs].sort((a, b) => a - b);
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return Math.round(sorted[i]! * 10) / 10;
}

async function benchOne(kind: string, database: Awaited<ReturnType<typeof createTestDatabase>> | undefined) {
  const hs = await startTestServer({ database: database ?? { drop: async () => {} }, config: { server_name: "bench.local" } });
  try {
    const call = async (token: string, method: string, path: string, body?: unknown) => {
      const res = await fetch(`${hs.url}${path}`, {
        method,
        headers: { Authorization: `Bearer ${token}`, ...(body === undefined ? {} : { "Content-Type": "application/json" }) },
        ...(body === undefined ? {} : { body: JSON.stringify(body) }),
      });
      const json = (await res.json()) as Record<string, any>;
      if (res.status !== 200) throw new Error(`${method} ${path}: ${res.status} ${JSON.stringify(json)}`);
      return json;
    };
    const register = async (username: string) => {
      const json = await call("", "POST", "/_matrix/client/v3/register", { username, password: "bench password", auth: { type: "m.login.dummy" } });
      return json.access_token as string;
    };
    const [owner, visitor] = [await register("owner"), await register("visitor")];
    const room = async (body: Record<string, unknown>) => (await call(owner, "POST", "/_matrix/client/v3/createRoom", { preset: "public_chat", ...body })).room_id as string;
    const child = (space: string, id: string) =>
      call(owner, "PUT", `/_matrix/client/v3/rooms/${encodeURIComponent(space)}/state/m.space.child/${encodeURIComponent(id)}`, { via: ["bench.local"] });
    const setupStart = performance.now();
    const top = await room({ creation_content: { type: "m.space" }, name: "top" });
    for (let s = 0; s < SUBSPACES; s++) {
      const sub = await room({ creation_content: { type: "m.space" }, name: `sub ${s}` });
      await child(top, sub);
      for (let r = 0; r < ROOMS_PER_SUBSPACE; r++) await child(sub, await room({ name: `room ${s}.${r}` }));
    }
    console.log(`${kind}: built ${1 + SUBSPACES * (1 + ROOMS_PER_SUBSPACE)} rooms in ${Math.round(performance.now() - setupStart)} ms`);

    const path = `/_matrix/client/v1/rooms/${encodeURIComponent(top)}/hierarchy?limit=50`;
    const firstPage: number[] = [];
    const wholeWalk: number[] = [];
    for (let i = 0; i < RUNS; i++) {
      const started = performance.now();
      let page = await call(visitor, "GET", path);
      firstPage.push(performance.now() - started);
      let seen = page.rooms.length as number;
      while (page.next_batch) {
        page = await call(visitor, "GET", `${path}&from=${encodeURIComponent(page.next_batch)}`);
        seen += page.rooms.length;
      }
      wholeWalk.push(performance.now() - started);
      if (seen !== 1 + SUBSPACES * (1 + ROOMS_PER_SUBSPACE)) throw new Error(`walk saw ${seen} rooms`);
    }
    console.log(`${kind}: first page (50 rooms): p50 ${percentile(firstPage, 50)} ms, p99 ${percentile(firstPage, 99)} ms`);
    console.log(`${kind}: whole walk (211 rooms, 5 pages): p50 ${percentile(wholeWalk, 50)} ms, p99 ${percentile(wholeWalk, 99)} ms`);
    return [
      { name: `hierarchy first page of 50, p50 (${kind})`, value: percentile(firstPage, 50), unit: "ms" },
      { name: `hierarchy walk of 211 rooms, p50 (${kind})`, value: percentile(wholeWalk, 50), unit: "ms" },
    ];
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
console.log(`BENCH_RESULT ${JSON.stringify({ bench: "space-hierarchy", results })}`);

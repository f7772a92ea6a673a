// An application service acting as its users (identity assertion, server/appservices/auth.ts): a
// Parley process (`bin/parley.js serve`) with one registration; the service registers 100 ghosts
// (m.login.application_service, no UIA), joins them to a room, then sends messages as them with
// its as_token and `?user_id=`, and the same with a ghost's own access token for comparison. The
// figures: registration time per ghost, and p50/p99 latency of `PUT /send` and of
// `GET /account/whoami` both ways. Embedded PGlite, and PostgreSQL when DATABASE_URL is set.
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { createTestDatabase } from "../tests/harness.ts";
import { startParley, stopParley } from "./parley-process.ts";

const GHOSTS = 100;
const SENDS = Number(process.env.BENCH_AS_SENDS ?? 400);
const AS_TOKEN = "bench-as-token";

async function call(base: string, method: string, p: string, token: string, body?: unknown) {
  const res = await fetch(base + p, {
    method,
    headers: { Authorization: `Bearer ${token}`, ...(body === undefined ? {} : { "Content-Type": "application/json" }) },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const json = (await res.json()) as Record<string, unknown>;
  if (!res.ok) throw new Error(`${method} ${p} answered ${res.status}: ${JSON.stringify(json)}`);
  return json;
}

function percentile(xs: number[], p: number): number {
  const sorted = [...xs].sort((a, b) => a - b);
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return Math.round(sorted[i]! * 100) / 100;
}

async function timed(n: number, f: (i: number) => Promise<unknown>): Promise<number[]> {
  const samples: number[] = [];
  for (let i = 0; i < n; i++) {
    const t = performance.now();
    await f(i);
    samples.push(performance.now() - t);
  }
  return samples;
}

async function benchOne(kind: string, databaseUrl: string | undefined) {
  const dataDir = await mkdtemp(path.join(tmpdir(), "parley-bench-as-client-"));
  const registration = path.join(dataDir, "bridge.yaml");
  await writeFile(
    registration,
    [
      "id: bench-bridge",
      "url: null",
      `as_token: ${AS_TOKEN}`,
      "hs_token: bench-hs-token",
      "sender_localpart: benchbot",
      "namespaces:",
      "  users:",
      "    - regex: '@_bench_.*'",
      "      exclusive: true",
      "  aliases: []",
      "  rooms: []",
      "",
    ].join("\n"),
  );
  const { child, base } = await startParley(dataDir, databaseUrl, { env: { PARLEY_APP_SERVICE_CONFIG_FILES: registration } });
  try {
    const server = String((await call(base, "GET", "/_matrix/client/v3/account/whoami", AS_TOKEN)).user_id).split(":").slice(1).join(":");
    const tokens: string[] = [];
    const started = performance.now();
    for (let i = 0; i < GHOSTS; i++) {
      const res = await call(base, "POST", "/_matrix/client/v3/register", AS_TOKEN, { type: "m.login.application_service", username: `_bench_${i}` });
      tokens.push(String(res.access_token));
    }
    const registerMs = (performance.now() - started) / GHOSTS;
    const ghost = (i: number) => encodeURIComponent(`@_bench_${i % GHOSTS}:${server}`);
    const room = String((await call(base, "POST", "/_matrix/client/v3/createRoom", AS_TOKEN, { preset: "public_chat" })).room_id);
    const roomPath = `/_matrix/client/v3/rooms/${encodeURIComponent(room)}`;
    for (let i = 0; i < GHOSTS; i++) await call(base, "POST", `${roomPath}/join?user_id=${ghost(i)}`, AS_TOKEN, {});

    // Warm up both paths, then alternate in blocks so drift hits both alike.
    await timed(50, (i) => call(base, "GET", `/_matrix/client/v3/account/whoami?user_id=${ghost(i)}`, AS_TOKEN));
    await timed(50, (i) => call(base, "GET", "/_matrix/client/v3/account/whoami", tokens[i % GHOSTS]!));
    const whoamiAs = await timed(SENDS, (i) => call(base, "GET", `/_matrix/client/v3/account/whoami?user_id=${ghost(i)}`, AS_TOKEN));
    const whoamiOwn = await timed(SENDS, (i) => call(base, "GET", "/_matrix/client/v3/account/whoami", tokens[i % GHOSTS]!));
    const sendAs = await timed(SENDS, (i) =>
      call(base, "PUT", `${roomPath}/send/m.room.message/as${i}?user_id=${ghost(i)}`, AS_TOKEN, { msgtype: "m.text", body: `as ${i}` }),
    );
    const sendOwn = await timed(SENDS, (i) => call(base, "PUT", `${roomPath}/send/m.room.message/own${i}`, tokens[i % GHOSTS]!, { msgtype: "m.text", body: `own ${i}` }));
    const figures = {
      registerMs: Math.round(registerMs * 100) / 100,
      whoamiAs: [percentile(whoamiAs, 50), percentile(whoamiAs, 99)],
      whoamiOwn: [percentile(whoamiOwn, 50), percentile(whoamiOwn, 99)],
      sendAs: [percentile(sendAs, 50), percentile(sendAs, 99)],
      sendOwn: [percentile(sendOwn, 50), percentile(sendOwn, 99)],
    };
    process.stderr.write(`${kind}: ${JSON.stringify(figures)}\n`);
    return [
      { name: `${kind}: AS registration of a ghost (mean of ${GHOSTS})`, value: figures.registerMs, unit: "ms" },
      { name: `${kind}: whoami as a ghost via as_token + user_id p50`, value: figures.whoamiAs[0]!, unit: "ms" },
      { name: `${kind}: whoami as a ghost via as_token + user_id p99`, value: figures.whoamiAs[1]!, unit: "ms" },
      { name: `${kind}: whoami with the ghost's own token p50`, value: figures.whoamiOwn[0]!, unit: "ms" },
      { name: `${kind}: PUT /send as a ghost via as_token + user_id p50`, value: figures.sendAs[0]!, unit: "ms" },
      { name: `${kind}: PUT /send as a ghost via as_token + user_id p99`, value: figures.sendAs[1]!, unit: "ms" },
      { name: `${kind}: PUT /send with the ghost's own token p50`, value: figures.sendOwn[0]!, unit: "ms" },
      { name: `${kind}: PUT /send with the ghost's own token p99`, value: figures.sendOwn[1]!, unit: "ms" },
    ];
  } finally {
    await stopParley(child);
    await rm(dataDir, { recursive: true, force: true });
  }
}

const results = await benchOne("pglite", undefined);
if (process.env.DATABASE_URL) {
  const db = await createTestDatabase();
  try {
    results.push(...(await benchOne("postgres", db.url)));
  } finally {
    await db.drop();
  }
}
console.log(`BENCH_RESULT ${JSON.stringify({ bench: "appservices-client", results })}`);

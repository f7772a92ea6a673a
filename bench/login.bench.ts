// Logins hash passwords (Argon2id) on libuv's thread pool, not on the event loop. This measures
// that: a Parley process (`bin/parley.js serve`) takes 20 password logins at once while a client
// measures `GET /_matrix/client/versions` one request after another. The figures are the versions
// latencies seen while the logins run (target: p99 under 50 ms), the same with no logins running,
// and the time until all 20 logins have answered. Embedded PGlite, and PostgreSQL when
// DATABASE_URL is set.
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { createTestDatabase } from "../tests/harness.ts";
import { startParley, stopParley } from "./parley-process.ts";

const LOGINS = 20;
const ROUNDS = Number(process.env.BENCH_LOGIN_ROUNDS ?? 5);

async function post(base: string, p: string, body: unknown): Promise<{ status: number; json: Record<string, unknown> }> {
  const res = await fetch(base + p, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  return { status: res.status, json: (await res.json()) as Record<string, unknown> };
}

async function register(base: string, username: string, password: string): Promise<void> {
  const first = await post(base, "/_matrix/client/v3/register", { username, password });
  const done = await post(base, "/_matrix/client/v3/register", {
    username,
    password,
    inhibit_login: true,
    auth: { type: "m.login.dummy", session: first.json.session },
  });
  if (done.status !== 200) throw new Error(`registration failed: ${JSON.stringify(done.json)}`);
}

async function versionsLatency(base: string): Promise<number> {
  const t = performance.now();
  const res = await fetch(`${base}/_matrix/client/versions`);
  await res.arrayBuffer();
  if (!res.ok) throw new Error(`versions answered ${res.status}`);
  return performance.now() - t;
}

/** Measures versions latency one request at a time until `done` settles. */
async function probeUntil(base: string, done: Promise<unknown>): Promise<number[]> {
  let finished = false;
  void done.finally(() => {
    finished = true;
  });
  const samples: number[] = [];
  while (!finished) samples.push(await versionsLatency(base));
  return samples;
}

function percentile(xs: number[], p: number): number {
  const sorted = [...xs].sort((a, b) => a - b);
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return Math.round(sorted[i]! * 10) / 10;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

async function benchOne(kind: string, databaseUrl: string | undefined) {
  const dataDir = await mkdtemp(path.join(tmpdir(), "parley-bench-login-"));
  const { child, base } = await startParley(dataDir, databaseUrl);
  try {
    const users = Array.from({ length: LOGINS }, (_, i) => ({ name: `bench${i}`, password: `bench password ${i}` }));
    for (const u of users) await register(base, u.name, u.password);
    for (let i = 0; i < 50; i++) await versionsLatency(base); // warm up

    const idle: number[] = [];
    const t0 = performance.now();
    while (performance.now() - t0 < 1000) idle.push(await versionsLatency(base));

    const during: number[] = [];
    const totals: number[] = [];
    for (let round = 0; round < ROUNDS; round++) {
      const started = performance.now();
      const logins = Promise.all(
        users.map(async (u) => {
          const res = await post(base, "/_matrix/client/v3/login", {
            type: "m.login.password",
            identifier: { type: "m.id.user", user: u.name },
            password: u.password,
          });
          if (res.status !== 200) throw new Error(`login failed: ${JSON.stringify(res.json)}`);
        }),
      );
      const timed = logins.then(() => totals.push(performance.now() - started));
      during.push(...(await probeUntil(base, timed)));
      await timed;
    }
    const figures = {
      p50: percentile(during, 50),
      p95: percentile(during, 95),
      p99: percentile(during, 99),
      max: percentile(during, 100),
      idleP99: percentile(idle, 99),
      loginsMs: Math.round(median(totals)),
    };
    console.log(
      `${kind}: versions latency during ${LOGINS} concurrent logins (${during.length} samples over ${ROUNDS} rounds): ` +
        `p50 ${figures.p50} ms, p95 ${figures.p95} ms, p99 ${figures.p99} ms, max ${figures.max} ms; ` +
        `idle p99 ${figures.idleP99} ms; ${LOGINS} logins answered in ${figures.loginsMs} ms (median; rounds: ${totals.map(Math.round).join(", ")})`,
    );
    return figures;
  } finally {
    await stopParley(child);
    await rm(dataDir, { recursive: true, force: true });
  }
}

const results: { name: string; value: number; unit: string }[] = [];
const targets: [string, boolean][] = [["pglite", false]];
if (process.env.DATABASE_URL) targets.push(["postgres", true]);
for (const [kind, usePostgres] of targets) {
  const database = usePostgres ? await createTestDatabase() : undefined;
  try {
    const f = await benchOne(kind, database?.url);
    results.push(
      { name: `versions p50 during ${LOGINS} logins (${kind})`, value: f.p50, unit: "ms" },
      { name: `versions p95 during ${LOGINS} logins (${kind})`, value: f.p95, unit: "ms" },
      { name: `versions p99 during ${LOGINS} logins (${kind})`, value: f.p99, unit: "ms" },
      { name: `versions p99 idle (${kind})`, value: f.idleP99, unit: "ms" },
      { name: `${LOGINS} concurrent logins, total (${kind})`, value: f.loginsMs, unit: "ms" },
    );
  } finally {
    await database?.drop();
  }
}
console.log(`BENCH_RESULT ${JSON.stringify({ bench: "login", results })}`);

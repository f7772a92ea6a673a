// Startup time (process spawn → first answered /_matrix/client/versions) and idle RSS, through the
// real CLI (`node bin/parley.js serve`), on embedded PGlite and, when DATABASE_URL is set, on
// PostgreSQL. Each figure is the median of several fresh starts on fresh data directories.
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { createTestDatabase } from "../tests/harness.ts";
import { freePort } from "./parley-process.ts";

const root = path.join(path.dirname(fileURLToPath(import.meta.url)), "..");
const RUNS = Number(process.env.BENCH_STARTUP_RUNS ?? 3);
const IDLE_MS = Number(process.env.BENCH_IDLE_MS ?? 5000);

async function rssMb(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, "utf8");
  const kb = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? NaN);
  return Math.round((kb / 1024) * 10) / 10;
}

async function oneStart(dataDir: string, databaseUrl?: string): Promise<{ startupMs: number; idleRssMb: number }> {
  const port = await freePort();
  const started = performance.now();
  const child: ChildProcess = spawn(process.execPath, [path.join(root, "dist/parley.js"), "serve"], {
    env: {
      ...process.env,
      PARLEY_PORT: String(port),
      PARLEY_DATA_DIR: dataDir,
      PARLEY_LOG_LEVEL: "warn",
      DATABASE_URL: databaseUrl ?? "",
    },
    stdio: ["ignore", "ignore", "inherit"],
  });
  try {
    let startupMs = NaN;
    for (;;) {
      if (child.exitCode !== null) throw new Error(`parley exited with ${child.exitCode}`);
      try {
        const res = await fetch(`http://127.0.0.1:${port}/_matrix/client/versions`);
        if (res.ok) {
          startupMs = performance.now() - started;
          break;
        }
      } catch {
        // not listening yet
      }
      await new Promise((r) => setTimeout(r, 5));
      if (performance.now() - started > 30_000) throw new Error("parley did not answer within 30 s");
    }
    await new Promise((r) => setTimeout(r, IDLE_MS));
    const idleRssMb = await rssMb(child.pid!);
    return { startupMs: Math.round(startupMs), idleRssMb };
  } finally {
    const exited = new Promise((r) => child.once("exit", r));
    child.kill("SIGTERM");
    await exited;
  }
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

const results: { name: string; value: number; unit: string }[] = [];
const targets: ["pglite" | "postgres", boolean][] = [["pglite", false]];
if (process.env.DATABASE_URL) targets.push(["postgres", true]);
// What `npm start` and the Docker image run: the bundle.
execFileSync(process.execPath, [path.join(root, "bin/build.mjs")], { stdio: "inherit" });
for (const [kind, usePostgres] of targets) {
  const first = [];
  const restart = [];
  for (let i = 0; i < RUNS; i++) {
    const database = usePostgres ? await createTestDatabase() : undefined;
    const dataDir = await mkdtemp(path.join(tmpdir(), "parley-bench-"));
    // A first start creates the database (and migrates it); a restart finds it ready.
    first.push(await oneStart(dataDir, database?.url));
    restart.push(await oneStart(dataDir, database?.url));
    await database?.drop();
    await rm(dataDir, { recursive: true, force: true });
  }
  const fig = (runs: { startupMs: number; idleRssMb: number }[], label: string) => {
    const startup = median(runs.map((r) => r.startupMs));
    const rss = median(runs.map((r) => r.idleRssMb));
    console.log(`${kind}, ${label}: start to first answered request ${startup} ms, idle RSS ${rss} MB (median of ${RUNS}: ${JSON.stringify(runs)})`);
    results.push({ name: `${label}: start to first request (${kind})`, value: startup, unit: "ms" });
    results.push({ name: `${label}: idle RSS (${kind})`, value: rss, unit: "MB" });
  };
  fig(first, "first start");
  fig(restart, "restart");
}
console.log(`BENCH_RESULT ${JSON.stringify({ bench: "startup", results })}`);

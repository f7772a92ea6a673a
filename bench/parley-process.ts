// A Parley process for benchmarks: `bin/parley.js serve` on a free port with its own data directory,
// started and stopped the way an operator would.
import { type ChildProcess, spawn } from "node:child_process";
import { createServer } from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";

export const root = path.join(path.dirname(fileURLToPath(import.meta.url)), "..");

export function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = createServer().listen(0, "127.0.0.1", () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

/**
 * Starts Parley with open registration and no rate limits (benchmarks send many requests from one
 * address, on purpose), and resolves once it answers `/_matrix/client/versions`.
 */
export async function startParley(
  dataDir: string,
  databaseUrl?: string,
  options: { nodeArgs?: string[] } = {},
): Promise<{ child: ChildProcess; base: string }> {
  const port = await freePort();
  const child = spawn(process.execPath, [...(options.nodeArgs ?? []), path.join(root, "bin/parley.js"), "serve"], {
    env: {
      ...process.env,
      PARLEY_PORT: String(port),
      PARLEY_DATA_DIR: dataDir,
      PARLEY_LOG_LEVEL: "warn",
      PARLEY_REGISTRATION: "open",
      PARLEY_RATE_LIMITS: "false",
      DATABASE_URL: databaseUrl ?? "",
    },
    stdio: ["ignore", "ignore", "inherit"],
  });
  const base = `http://127.0.0.1:${port}`;
  const started = Date.now();
  for (;;) {
    if (child.exitCode !== null) throw new Error(`parley exited with ${child.exitCode}`);
    try {
      if ((await fetch(`${base}/_matrix/client/versions`)).ok) return { child, base };
    } catch {
      // not listening yet
    }
    if (Date.now() - started > 30_000) throw new Error("parley did not answer within 30 s");
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** SIGTERM, and wait for the process to exit. */
export async function stopParley(child: ChildProcess): Promise<void> {
  const exited = new Promise((r) => child.once("exit", r));
  child.kill("SIGTERM");
  await exited;
}

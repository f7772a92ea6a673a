// A Parley process for benchmarks: `bin/parley.js serve` on a free port with its own data directory,
// started and stopped the way an operator would.
import { type ChildProcess, spawn } from "node:child_process";
import { readFile } from "node:fs/promises";
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
  options: { nodeArgs?: string[]; env?: Record<string, string>; startupMs?: number } = {},
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
      ...options.env,
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
    // A first start creates the embedded database (initdb): a minute or more on a busy machine.
    const startupMs = options.startupMs ?? 60_000;
    if (Date.now() - started > startupMs) {
      child.kill("SIGKILL");
      throw new Error(`parley did not answer within ${startupMs / 1000} s`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** SIGTERM, and wait for the process to exit. */
export async function stopParley(child: ChildProcess): Promise<void> {
  const exited = new Promise((r) => child.once("exit", r));
  child.kill("SIGTERM");
  await exited;
}

export async function rssMb(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, "utf8");
  return Number(/VmRSS:\s+(\d+)/.exec(status)![1]) / 1024;
}

/**
 * The server's memory after full garbage collections (asked for through its inspector), so what
 * is compared is memory in use, not garbage waiting for the next collection: the lowest RSS of two
 * tries half a second apart (RSS also holds the allocator's and PGlite's memory, which moves on its own),
 * and the JS heap in use.
 */
export async function memoryAfterGc(pid: number, inspectorPort: number): Promise<{ rss: number; heap: number }> {
  const [target] = (await (await fetch(`http://127.0.0.1:${inspectorPort}/json/list`)).json()) as Array<{ webSocketDebuggerUrl: string }>;
  // Node 20 has WebSocket only behind a flag: a short helper process sends the commands.
  const script = `const ws = new WebSocket(${JSON.stringify(target!.webSocketDebuggerUrl)});
    ws.onopen = () => ws.send(JSON.stringify({ id: 1, method: "HeapProfiler.collectGarbage" }));
    ws.onmessage = (m) => { const r = JSON.parse(m.data);
      if (r.id === 1) ws.send(JSON.stringify({ id: 2, method: "Runtime.getHeapUsage" }));
      if (r.id === 2) { process.stdout.write(String(r.result.usedSize)); ws.close(); process.exit(0); } };`;
  let rss = Number.POSITIVE_INFINITY;
  let heap = Number.POSITIVE_INFINITY;
  for (let i = 0; i < 2; i++) {
    const used = await new Promise<number>((resolve, reject) => {
      const helper = spawn(process.execPath, ["--experimental-websocket", "--no-warnings", "-e", script], { stdio: ["ignore", "pipe", "ignore"] });
      let out = "";
      helper.stdout.on("data", (d: Buffer) => (out += d.toString()));
      helper.on("error", reject);
      helper.on("exit", (code) => (code === 0 ? resolve(Number(out)) : reject(new Error(`gc helper exited with ${code}`))));
    });
    await sleep(300);
    rss = Math.min(rss, await rssMb(pid));
    heap = Math.min(heap, used / 1048576);
    await sleep(200);
  }
  return { rss, heap };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// `npm run bench [name...]`: runs every benchmark under bench/ (each `*.bench.ts` is a standalone
// script), one after another on this machine, collects the `BENCH_RESULT {json}` line each prints,
// and writes the figures to bench/results/latest.json and a Markdown table bench/results/latest.md.
import { spawn } from "node:child_process";
import { mkdir, readdir, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

interface Figure {
  name: string;
  value: number;
  unit: string;
}
interface BenchResult {
  bench: string;
  results: Figure[];
}

const benchDir = path.dirname(fileURLToPath(import.meta.url));
const only = process.argv.slice(2);

const files = (await readdir(benchDir))
  .filter((f) => f.endsWith(".bench.ts"))
  .filter((f) => only.length === 0 || only.some((o) => f.startsWith(o)))
  .sort();

const collected: BenchResult[] = [];
const failed: string[] = [];
for (const file of files) {
  process.stdout.write(`\n== ${file}\n`);
  const lines: string[] = [];
  const code = await new Promise<number>((resolve) => {
    const child = spawn(process.execPath, ["--import", "tsx", path.join(benchDir, file)], {
      stdio: ["ignore", "pipe", "inherit"],
      env: process.env,
    });
    let buffer = "";
    child.stdout.on("data", (chunk: Buffer) => {
      process.stdout.write(chunk);
      buffer += chunk.toString();
      const parts = buffer.split("\n");
      buffer = parts.pop() ?? "";
      lines.push(...parts);
    });
    child.on("close", (c) => {
      if (buffer) lines.push(buffer);
      resolve(c ?? 1);
    });
  });
  const line = lines.find((l) => l.startsWith("BENCH_RESULT "));
  if (code !== 0 || !line) {
    failed.push(file);
    continue;
  }
  collected.push(JSON.parse(line.slice("BENCH_RESULT ".length)) as BenchResult);
}

const outDir = path.join(benchDir, "results");
await mkdir(outDir, { recursive: true });
const meta = {
  date: new Date().toISOString(),
  node: process.version,
  cpus: os.cpus().length,
  cpu: os.cpus()[0]?.model ?? "unknown",
  database: process.env.DATABASE_URL ? "pglite+postgres" : "pglite",
};
await writeFile(path.join(outDir, "latest.json"), JSON.stringify({ ...meta, benches: collected }, null, 2) + "\n");
const table = [
  `Parley benchmarks, ${meta.date}, Node ${meta.node}, ${meta.cpus} cores (${meta.cpu})`,
  "",
  "| bench | figure | value | unit |",
  "| --- | --- | ---: | --- |",
  ...collected.flatMap((b) => b.results.map((r) => `| ${b.bench} | ${r.name} | ${r.value} | ${r.unit} |`)),
].join("\n");
await writeFile(path.join(outDir, "latest.md"), table + "\n");
process.stdout.write(`\n${table}\n\nwritten to bench/results/latest.{json,md}\n`);
if (failed.length) {
  process.stderr.write(`failed: ${failed.join(", ")}\n`);
  process.exitCode = 1;
}

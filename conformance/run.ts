// The conformance runner: resolves the targets, starts the peer, runs the checks one after the
// other (each with its time limit), shows a progress line, and builds the summary and JSON report.
// `parley conformance` (server/cli.ts) is its command line.
import { writeFile } from "node:fs/promises";
import { parseArgs } from "node:util";
import { type Check, type CheckContext, type CheckResult, CheckSkipped, type Outcome, type Settings, type Target } from "./check.ts";
import { allChecks } from "./checks/index.ts";
import { httpCall, registerUser } from "./client.ts";
import { Peer } from "./peer.ts";

export interface RunOptions {
  /** Base URLs of the servers under test (at least one). */
  servers: readonly string[];
  /** The targets' `registration_shared_secret`: one for all, or one per server (in order). */
  sharedSecrets?: readonly string[];
  /** The peer's server name (default `127.0.0.1:<peerPort>`) and where it listens. */
  peerName?: string;
  peerPort?: number;
  peerBind?: string;
  /** Run only checks whose id or group is one of these, or whose id starts with one followed by "." */
  only?: readonly string[];
  /** The checks to choose from (default: conformance/checks/index.ts). */
  checks?: readonly Check[];
  /** Default: `{ robustnessRequests: 1000 }`. */
  settings?: Partial<Settings>;
  /** Where the progress line goes (default: none). */
  progress?: NodeJS.WritableStream & { isTTY?: boolean };
}

export interface Report {
  startedAt: string;
  durationMs: number;
  targets: Array<{ url: string; serverName: string }>;
  peer: string;
  counts: Record<Outcome, number>;
  results: CheckResult[];
}

const DEFAULT_TIMEOUT_MS = 20_000;

/** The server name a target states at its key endpoint. */
async function resolveTarget(url: string, sharedSecret: string | undefined): Promise<Target> {
  const base = url.replace(/\/+$/, "");
  let res;
  try {
    res = await httpCall(`${base}/_matrix/key/v2/server`, "GET", { signal: AbortSignal.timeout(10_000) });
  } catch (err) {
    throw new Error(`cannot reach ${base}: ${(err as Error).message}`);
  }
  const name = res.json?.server_name;
  if (res.status !== 200 || typeof name !== "string") throw new Error(`${base}/_matrix/key/v2/server did not answer a key document (status ${res.status})`);
  return { url: base, serverName: name, ...(sharedSecret ? { sharedSecret } : {}) };
}

export function selectChecks(checks: readonly Check[], only?: readonly string[]): Check[] {
  if (!only?.length) return [...checks];
  return checks.filter((c) => only.some((o) => c.id === o || c.group === o || c.id.startsWith(`${o}.`)));
}

/** Runs one check under its time limit; any error but a skip is a failure. */
export async function runCheck(check: Check, base: Omit<CheckContext, "signal">): Promise<CheckResult> {
  const started = performance.now();
  const controller = new AbortController();
  const limit = check.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      controller.abort();
      reject(new Error(`did not finish within ${limit} ms`));
    }, limit);
  });
  let outcome: Outcome = "pass";
  let reason: string | undefined;
  try {
    await Promise.race([check.run({ ...base, signal: controller.signal }), timeout]);
  } catch (err) {
    outcome = err instanceof CheckSkipped ? "skip" : "fail";
    reason = err instanceof Error ? err.message : String(err);
  } finally {
    clearTimeout(timer);
  }
  const durationMs = Math.round(performance.now() - started);
  return { id: check.id, group: check.group, title: check.title, outcome, ...(reason !== undefined ? { reason } : {}), durationMs };
}

export async function runConformance(options: RunOptions): Promise<Report> {
  if (options.servers.length === 0) throw new Error("at least one --server is needed");
  const startedAt = new Date();
  const t0 = performance.now();
  const secrets = options.sharedSecrets ?? [];
  const targets = await Promise.all(options.servers.map((url, i) => resolveTarget(url, secrets.length === 1 ? secrets[0] : secrets[i])));
  const peer = await Peer.start({
    port: options.peerPort ?? 0,
    ...(options.peerBind ? { bind: options.peerBind } : {}),
    ...(options.peerName ? { serverName: options.peerName } : {}),
  });
  const checks = selectChecks(options.checks ?? allChecks, options.only);
  const results: CheckResult[] = [];
  const out = options.progress;
  try {
    const base: Omit<CheckContext, "signal"> = {
      targets,
      target: targets[0]!,
      peer,
      settings: { robustnessRequests: 1000, ...options.settings },
      user: (label, target) => registerUser(target ?? targets[0]!, label),
    };
    for (const [i, check] of checks.entries()) {
      if (out?.isTTY) out.write(`\r\x1b[K[${i + 1}/${checks.length}] ${check.id} …`);
      const result = await runCheck(check, base);
      results.push(result);
      if (out?.isTTY) out.write("\r\x1b[K");
      if (out) out.write(`[${i + 1}/${checks.length}] ${resultLine(result)}\n`);
    }
  } finally {
    await peer.close();
  }
  const counts: Record<Outcome, number> = { pass: 0, fail: 0, skip: 0 };
  for (const r of results) counts[r.outcome]++;
  return {
    startedAt: startedAt.toISOString(),
    durationMs: Math.round(performance.now() - t0),
    targets: targets.map((t) => ({ url: t.url, serverName: t.serverName })),
    peer: peer.serverName,
    counts,
    results,
  };
}

function resultLine(r: CheckResult): string {
  const mark = r.outcome === "pass" ? "PASS" : r.outcome === "fail" ? "FAIL" : "SKIP";
  return `${mark} ${r.id} (${r.durationMs} ms)${r.reason ? `: ${r.reason}` : ""}`;
}

/** The readable summary: every check by group, with its result, duration and reason. */
export function formatSummary(report: Report): string {
  const lines: string[] = [];
  lines.push(`Federation conformance of ${report.targets.map((t) => `${t.serverName} (${t.url})`).join(", ")}`);
  let group = "";
  for (const r of report.results) {
    if (r.group !== group) {
      group = r.group;
      lines.push("", `${group}:`);
    }
    lines.push(`  ${resultLine(r)}  — ${r.title}`);
  }
  const { pass, fail, skip } = report.counts;
  lines.push("", `${pass} passed, ${fail} failed, ${skip} skipped in ${(report.durationMs / 1000).toFixed(1)} s`);
  return lines.join("\n") + "\n";
}

const USAGE = `Usage: parley conformance --server URL [--server URL ...] [options]

Checks a homeserver's federation against the Matrix spec. The suite runs its own small homeserver
identity (the "peer") on loopback; the servers under test must be able to reach it over plain HTTP
(for Parley: federation_hosts and federation_insecure naming the peer, see the README).

Options:
  --server URL          A server under test (its Client-Server and Server-Server base URL). The
                        first is the main target; checks needing two servers use the second.
  --shared-secret S     registration_shared_secret of the targets (repeat: one per --server, in
                        order); without it users are registered through open registration
  --peer-name NAME      The peer's server name (default 127.0.0.1:<peer-port>)
  --peer-port PORT      The port the peer listens on (default 8450)
  --peer-bind ADDR      The address the peer listens on (default 127.0.0.1)
  --only ID|GROUP       Run only these checks or groups (repeatable)
  --report FILE         Write the JSON report there
  --robustness-requests N
                        How many random bodies the robustness check sends (default 1000)
  --list                List the checks and exit

Exit status: 0 when no check failed, 1 when one did, 2 on a usage error.
`;

/** `parley conformance …`: returns the exit status. */
export async function conformanceMain(argv: string[], out: NodeJS.WriteStream = process.stdout, err: NodeJS.WriteStream = process.stderr): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      server: { type: "string", multiple: true },
      "shared-secret": { type: "string", multiple: true },
      "peer-name": { type: "string" },
      "peer-port": { type: "string" },
      "peer-bind": { type: "string" },
      only: { type: "string", multiple: true },
      report: { type: "string" },
      "robustness-requests": { type: "string" },
      list: { type: "boolean" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) {
    out.write(USAGE);
    return 0;
  }
  if (values.list) {
    for (const c of selectChecks(allChecks, values.only)) out.write(`${c.id}\t${c.title}\n`);
    return 0;
  }
  if (!values.server?.length) {
    err.write(`parley conformance: at least one --server is needed\n${USAGE}`);
    return 2;
  }
  const peerPort = values["peer-port"] === undefined ? 8450 : Number(values["peer-port"]);
  if (!Number.isInteger(peerPort) || peerPort < 0 || peerPort > 65535) {
    err.write(`parley conformance: --peer-port must be a port number\n`);
    return 2;
  }
  const robustnessRequests = Number(values["robustness-requests"] ?? 1000);
  if (!Number.isInteger(robustnessRequests) || robustnessRequests < 1) {
    err.write(`parley conformance: --robustness-requests must be a positive integer\n`);
    return 2;
  }
  let report: Report;
  try {
    report = await runConformance({
      servers: values.server,
      ...(values["shared-secret"] ? { sharedSecrets: values["shared-secret"] } : {}),
      ...(values["peer-name"] ? { peerName: values["peer-name"] } : {}),
      peerPort,
      ...(values["peer-bind"] ? { peerBind: values["peer-bind"] } : {}),
      ...(values.only ? { only: values.only } : {}),
      settings: { robustnessRequests },
      progress: err,
    });
  } catch (e) {
    err.write(`parley conformance: ${(e as Error).message}\n`);
    return 2;
  }
  out.write(formatSummary(report));
  if (values.report) await writeFile(values.report, JSON.stringify(report, null, 2) + "\n");
  return report.counts.fail > 0 ? 1 : 0;
}

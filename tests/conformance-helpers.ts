// Running the conformance suite (conformance/) against Parley servers in a test: healthy ones
// (tests/conformance.test.ts) and deliberately broken ones (tests/conformance-broken*.test.ts).
//
// Broken targets, two ways (conformance/check.ts explains when to use which):
//   - `withUnsafeTestBreak(["flag", ...], fn)`: PARLEY_UNSAFE_TEST_BREAK set for the duration of
//     `fn` (server/unsafe-test-break.ts lists the flags; honoured in test runs only). Test files
//     run in their own processes, so this never reaches another file's servers.
//   - `mutatingProxy(targetUrl, rewrite)`: a proxy in front of a healthy server whose answers (or
//     requests) `rewrite` changes; the suite is pointed at the proxy's URL.
import { type IncomingMessage, createServer } from "node:http";
import type { AddressInfo } from "node:net";
import type { Check, CheckResult, Settings } from "../conformance/check.ts";
import { type Report, runConformance } from "../conformance/run.ts";
import { type Network, startNetwork } from "./federation-harness.ts";

/**
 * Two federating Parley servers the suite's peer can reach: the peer's name is `127.0.0.1:<port>`
 * and the servers reach every name over plain HTTP, loopback included (`federation_insecure: *`).
 */
export function startConformanceNetwork(count = 2, config: (i: number) => Record<string, unknown> = () => ({})): Promise<Network> {
  return startNetwork(count, { config: (i) => ({ federation_insecure: "*", ...config(i) }) });
}

/** Runs `checks` against these base URLs; answers the report. */
export function runChecks(checks: readonly Check[], servers: readonly string[], settings: Partial<Settings> = {}): Promise<Report> {
  return runConformance({ servers, checks, peerPort: 0, settings });
}

/** The result of one check in a report. */
export function resultOf(report: Report, id: string): CheckResult {
  const r = report.results.find((x) => x.id === id);
  if (!r) throw new Error(`no result for ${id}`);
  return r;
}

export async function withUnsafeTestBreak<T>(flags: readonly string[], fn: () => Promise<T>): Promise<T> {
  const before = process.env.PARLEY_UNSAFE_TEST_BREAK;
  process.env.PARLEY_UNSAFE_TEST_BREAK = flags.join(",");
  try {
    return await fn();
  } finally {
    if (before === undefined) delete process.env.PARLEY_UNSAFE_TEST_BREAK;
    else process.env.PARLEY_UNSAFE_TEST_BREAK = before;
  }
}

/** Headers of one connection (RFC 9110 §7.6.1), and those fetch sets itself. */
const HOP_BY_HOP = new Set(["host", "content-length", "connection", "keep-alive", "transfer-encoding", "upgrade", "expect", "te", "trailer", "proxy-connection"]);

export interface ProxiedExchange {
  method: string;
  /** Path and query. */
  path: string;
  requestBody: Buffer;
  status: number;
  /** The answer's body; JSON-parsed when it was JSON. */
  json: any;
}

/**
 * A proxy in front of `targetUrl`. `rewrite` sees each exchange and may return a replacement
 * answer `[status, json]`; undefined passes the original through.
 */
export async function mutatingProxy(
  targetUrl: string,
  rewrite: (x: ProxiedExchange) => [number, unknown] | undefined,
): Promise<{ url: string; close(): Promise<void> }> {
  const server = createServer((req, res) => {
    void (async () => {
      const body = await readAll(req);
      const headers: Record<string, string> = {};
      for (const [k, v] of Object.entries(req.headers)) if (typeof v === "string" && !HOP_BY_HOP.has(k)) headers[k] = v;
      const upstream = await fetch(targetUrl + (req.url ?? "/"), {
        method: req.method,
        headers,
        ...(body.length && req.method !== "GET" && req.method !== "HEAD" ? { body } : {}),
      });
      const text = await upstream.text();
      let json: unknown;
      try {
        json = text ? JSON.parse(text) : undefined;
      } catch {
        json = undefined;
      }
      const replaced = rewrite({ method: req.method ?? "GET", path: req.url ?? "/", requestBody: body, status: upstream.status, json });
      const [status, out] = replaced ?? [upstream.status, undefined];
      const outText = replaced ? JSON.stringify(out) : text;
      res.writeHead(status, { "Content-Type": upstream.headers.get("content-type") ?? "application/json" });
      res.end(outText);
    })().catch(() => {
      res.writeHead(502).end();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

async function readAll(req: IncomingMessage): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of req as AsyncIterable<Buffer>) chunks.push(c);
  return Buffer.concat(chunks);
}

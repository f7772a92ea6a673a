// What the homeserver asks of application services: does this user exist, does this alias exist,
// third-party protocol lookups, and the ping. https://spec.matrix.org/latest/application-service-api/
//
// Each request carries the service's `hs_token` as `Authorization: Bearer` and, for services that
// speak the older drafts, as the `access_token` query parameter too (the spec's note allows both).
// The versioned path (`/_matrix/app/v1/...`) is tried first; when the service answers it with a
// status that is not a success, the legacy path (#legacy-routes) is tried, and whichever worked is
// remembered per service. A service that does not answer the versioned path at all while we do
// not yet know which it speaks (older mocks leave unknown paths hanging) gets the legacy path
// after a short probe time; once known, a request waits the full timeout.
//
// The URL is the operator's choice in the registration, so loopback and private addresses are
// allowed (unlike federation); redirects are never followed. Certificates are checked, except for
// hosts named in `federation_insecure` (or all, with `*`), as the delivery of transactions does
// (sytest's mock services have a self-signed certificate).
import type { Logger } from "pino";
import { Agent, fetch, type Response } from "undici";
import { MatrixError } from "../http/errors.ts";
import type { AppService, AppServiceRegistry } from "./registration.ts";

const REQUEST_TIMEOUT_MS = 10_000;
/** How long an unanswered versioned path waits before the legacy one is tried, while the service's kind is unknown. */
const PROBE_TIMEOUT_MS = 2_500;
const MAX_RESPONSE_BYTES = 1024 * 1024;

type PathStyle = "v1" | "legacy";

export interface AsResponse {
  status: number;
  /** The body parsed as JSON, or undefined when it is not JSON. */
  json: unknown;
  text: string;
}

/** A request that got no answer: the connection failed or it timed out. */
export class AppServiceUnreachable extends Error {
  override name = "AppServiceUnreachable";
  constructor(
    readonly timedOut: boolean,
    message: string,
  ) {
    super(message);
  }
}

export interface AppServiceQueriesOptions {
  registry: AppServiceRegistry;
  logger: Logger;
  /** `federation_insecure`: hosts (or `*`) whose certificates are not checked. */
  insecure?: readonly string[];
  /** Tests shorten these. */
  timeoutMs?: number;
  probeTimeoutMs?: number;
}

export class AppServiceQueries {
  private readonly registry: AppServiceRegistry;
  private readonly logger: Logger;
  private readonly timeoutMs: number;
  private readonly probeTimeoutMs: number;
  private readonly styles = new Map<string, PathStyle>();
  private readonly insecure: readonly string[];
  private readonly agents = new Set<Agent>();

  constructor(options: AppServiceQueriesOptions) {
    this.registry = options.registry;
    this.logger = options.logger;
    this.insecure = options.insecure ?? [];
    this.timeoutMs = options.timeoutMs ?? REQUEST_TIMEOUT_MS;
    this.probeTimeoutMs = Math.min(options.probeTimeoutMs ?? PROBE_TIMEOUT_MS, this.timeoutMs);
  }

  /**
   * Asks the services whose user namespaces hold `userId` whether it exists
   * (`GET /_matrix/app/v1/users/{userId}`): true when one answers 200, which means it has created
   * the user (it registers it itself before answering). Services are asked one at a time, as the
   * first yes ends the search.
   */
  async queryUser(userId: string): Promise<boolean> {
    for (const service of this.registry.interestedInUser(userId)) {
      if (service.url === null) continue;
      const e = encodeURIComponent(userId);
      const ok = await this.askExists(service, `/_matrix/app/v1/users/${e}`, `/users/${e}`);
      if (ok) return true;
    }
    return false;
  }

  /** The same for a room alias (`GET /_matrix/app/v1/rooms/{roomAlias}`): 200 means the service created it. */
  async queryAlias(alias: string): Promise<boolean> {
    for (const service of this.registry.interestedInAlias(alias)) {
      if (service.url === null) continue;
      const e = encodeURIComponent(alias);
      const ok = await this.askExists(service, `/_matrix/app/v1/rooms/${e}`, `/rooms/${e}`);
      if (ok) return true;
    }
    return false;
  }

  private async askExists(service: AppService, v1: string, legacy: string): Promise<boolean> {
    try {
      const res = await this.get(service, v1, legacy);
      return res.status === 200;
    } catch (err) {
      this.logger.warn({ appservice: service.id, err: (err as Error).message }, "application service query failed");
      return false;
    }
  }

  /**
   * GETs a versioned path (with `query`), falling back to its legacy path as the spec says.
   * Throws AppServiceUnreachable when neither answered.
   */
  async get(service: AppService, v1: string, legacy: string, query: Array<[string, string]> = []): Promise<AsResponse> {
    const known = this.styles.get(service.id);
    if (known === "legacy") return this.request(service, "GET", legacy, query, undefined, this.timeoutMs);
    let first: AsResponse | undefined;
    try {
      first = await this.request(service, "GET", v1, query, undefined, known === "v1" ? this.timeoutMs : this.probeTimeoutMs);
    } catch (err) {
      // A known v1 service that does not answer is down, not legacy.
      if (known === "v1" || !(err instanceof AppServiceUnreachable) || !err.timedOut) throw err;
    }
    // A success, or a Matrix error other than "unrecognised", is the answer of a service that
    // speaks the versioned API (a 404 M_NOT_FOUND for a user it does not have, say).
    if (first && (isSuccess(first.status) || isMatrixAnswer(first))) {
      this.styles.set(service.id, "v1");
      return first;
    }
    const second = await this.request(service, "GET", legacy, query, undefined, this.timeoutMs);
    if (isSuccess(second.status)) this.styles.set(service.id, "legacy");
    // Neither path worked: the versioned answer is the one to report when there was one.
    return isSuccess(second.status) || !first ? second : first;
  }

  /**
   * `POST /_matrix/app/v1/ping` (no legacy form): the time it took, or the spec's errors
   * (M_URL_NOT_SET, M_BAD_STATUS, M_CONNECTION_FAILED, M_CONNECTION_TIMEOUT).
   * https://spec.matrix.org/latest/application-service-api/#pinging
   */
  async ping(service: AppService, transactionId: string | undefined): Promise<number> {
    if (service.url === null) throw new MatrixError(400, "M_URL_NOT_SET", "Application service doesn't have a URL configured");
    const started = performance.now();
    let res: AsResponse;
    try {
      res = await this.request(service, "POST", "/_matrix/app/v1/ping", [], transactionId === undefined ? {} : { transaction_id: transactionId }, this.timeoutMs);
    } catch (err) {
      if (err instanceof AppServiceUnreachable && err.timedOut) {
        throw new MatrixError(504, "M_CONNECTION_TIMEOUT", "Connection to application service timed out");
      }
      throw new MatrixError(502, "M_CONNECTION_FAILED", `Connection to application service failed: ${(err as Error).message}`);
    }
    if (!isSuccess(res.status)) {
      throw new MatrixError(502, "M_BAD_STATUS", `Ping returned status ${res.status}`, { status: res.status, body: res.text.slice(0, 4096) });
    }
    return Math.round(performance.now() - started);
  }

  /**
   * A connection pool of its own for each request, closed with it: queries are rare, and a request
   * given up on (the versioned path a service leaves unanswered) must leave nothing behind that
   * the next one could queue on or race with (undici otherwise opens a spare connection that it
   * drops mid-handshake, which sytest's mock services count as an error).
   */
  private agentFor(service: AppService): Agent {
    const host = service.url === null ? "" : new URL(service.url).hostname;
    const verify = !(this.insecure.includes("*") || this.insecure.includes(host));
    return new Agent({ pipelining: 0, connect: verify ? {} : { rejectUnauthorized: false } });
  }

  /** One HTTP request to the service: `hs_token` in the header and the query, a timeout, no redirects. */
  private async request(
    service: AppService,
    method: "GET" | "POST",
    path: string,
    query: Array<[string, string]>,
    body: unknown,
    timeoutMs: number,
  ): Promise<AsResponse> {
    if (service.url === null) throw new AppServiceUnreachable(false, "the application service has no URL");
    const url = new URL(service.url + path);
    for (const [k, v] of query) url.searchParams.append(k, v);
    url.searchParams.set("access_token", service.hsToken);
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), timeoutMs);
    const agent = this.agentFor(service);
    this.agents.add(agent);
    try {
      let res: Response;
      try {
        res = await fetch(url, {
          method,
          redirect: "manual",
          dispatcher: agent,
          signal: controller.signal,
          headers: {
            Authorization: `Bearer ${service.hsToken}`,
            ...(body === undefined ? {} : { "Content-Type": "application/json" }),
          },
          body: body === undefined ? undefined : JSON.stringify(body),
        });
      } catch (err) {
        if (controller.signal.aborted) throw new AppServiceUnreachable(true, `no answer within ${timeoutMs} ms`);
        const cause = (err as { cause?: { code?: string; message?: string } }).cause;
        throw new AppServiceUnreachable(false, cause?.code ?? cause?.message ?? (err as Error).message);
      }
      const text = await readLimited(res, controller.signal).catch((err) => {
        if (controller.signal.aborted) throw new AppServiceUnreachable(true, `no whole answer within ${timeoutMs} ms`);
        throw new AppServiceUnreachable(false, (err as Error).message);
      });
      let json: unknown;
      try {
        json = text === "" ? undefined : JSON.parse(text);
      } catch {
        json = undefined;
      }
      return { status: res.status, json, text };
    } finally {
      clearTimeout(timer);
      this.agents.delete(agent);
      void agent.destroy().catch(() => {});
    }
  }

  /** Ends the requests in flight (shutdown). */
  async close(): Promise<void> {
    const agents = [...this.agents];
    this.agents.clear();
    await Promise.all(agents.map((a) => a.destroy().catch(() => {})));
  }
}

function isMatrixAnswer(res: AsResponse): boolean {
  const errcode = (res.json as { errcode?: unknown } | undefined)?.errcode;
  return typeof errcode === "string" && errcode !== "M_UNRECOGNIZED";
}

function isSuccess(status: number): boolean {
  return status >= 200 && status < 300;
}

async function readLimited(res: Response, signal: AbortSignal): Promise<string> {
  if (!res.body) return "";
  const reader = res.body.getReader();
  const chunks: Uint8Array[] = [];
  let size = 0;
  for (;;) {
    if (signal.aborted) throw new Error("aborted");
    const { done, value } = await reader.read();
    if (done) break;
    size += value.byteLength;
    if (size > MAX_RESPONSE_BYTES) {
      await reader.cancel().catch(() => {});
      throw new Error(`the answer is larger than ${MAX_RESPONSE_BYTES} bytes`);
    }
    chunks.push(value);
  }
  return Buffer.concat(chunks).toString("utf8");
}

// The client's HTTP layer: one place that speaks JSON to a homeserver, attaches the access token,
// turns Matrix error bodies into MatrixApiError, and waits out 429s as the server asks.
//
// Spec: https://spec.matrix.org/v1.16/client-server-api/#api-standards (errors, rate limiting).
// Only the global fetch (undici in Node 20) is used, so the library runs anywhere fetch does; tests
// pass their own fetch to simulate a dropped connection.

/** An error answer from the homeserver: its HTTP status and the spec's `errcode`. */
export class MatrixApiError extends Error {
  override name = "MatrixApiError";
  readonly status: number;
  readonly errcode: string;
  readonly data: Record<string, unknown>;
  /** From `retry_after_ms` in the body (or the Retry-After header) of a 429. */
  readonly retryAfterMs?: number;

  constructor(status: number, errcode: string, message: string, data: Record<string, unknown>, retryAfterMs?: number) {
    super(`${status} ${errcode}: ${message}`);
    this.status = status;
    this.errcode = errcode;
    this.data = data;
    if (retryAfterMs !== undefined) this.retryAfterMs = retryAfterMs;
  }
}

/**
 * The server could not be reached or did not answer in time (connection refused or reset, DNS,
 * timeout). Distinct from MatrixApiError so a caller (the sync loop) can tell "try again later"
 * from "the server said no".
 */
export class MatrixConnectionError extends Error {
  override name = "MatrixConnectionError";
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
  }
}

export interface HttpOptions {
  /** The homeserver's client API base URL, e.g. "https://matrix.example.org" (a trailing slash is fine). */
  baseUrl: string;
  accessToken?: string;
  /** Replaces the global fetch (tests, proxies). */
  fetch?: typeof fetch;
  /** Default per-request timeout; 60 s when unset. */
  timeoutMs?: number;
}

export type HttpMethod = "GET" | "POST" | "PUT" | "DELETE";
export type QueryValues = Record<string, string | number | boolean | undefined>;

export interface RequestOptions {
  query?: QueryValues;
  body?: unknown;
  signal?: AbortSignal;
  timeoutMs?: number;
}

/** Percent-encodes each path segment (room IDs and aliases contain '!', '#', ':'), joined with "/". */
export function encodePath(...segments: string[]): string {
  return segments.map((s) => encodeURIComponent(s)).join("/");
}

const DEFAULT_TIMEOUT_MS = 60_000;
/** How many 429s in a row one request waits out before the error reaches the caller. */
const MAX_RATE_LIMIT_RETRIES = 5;
/** A server asking for a longer wait than this gets its 429 passed to the caller instead: a request
 *  silently blocked for minutes looks like a hang. */
const MAX_RATE_LIMIT_WAIT_MS = 30_000;
/** When a 429 carries no retry_after_ms (it is optional in the spec). */
const DEFAULT_RATE_LIMIT_WAIT_MS = 1_000;

export class MatrixHttp {
  readonly baseUrl: string;
  accessToken: string | undefined;
  private readonly fetchImpl: typeof fetch;
  private readonly timeoutMs: number;

  constructor(opts: HttpOptions) {
    this.baseUrl = opts.baseUrl.replace(/\/+$/, "");
    this.accessToken = opts.accessToken;
    // Bound late so a test that replaces globalThis.fetch after construction is still honoured.
    this.fetchImpl = opts.fetch ?? ((input, init) => globalThis.fetch(input, init));
    this.timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  }

  /** A JSON request; the parsed JSON answer. Throws MatrixApiError or MatrixConnectionError. */
  async request<T = any>(method: HttpMethod, path: string, opts: RequestOptions = {}): Promise<T> {
    const headers: Record<string, string> = { accept: "application/json" };
    let body: string | undefined;
    if (opts.body !== undefined) {
      headers["content-type"] = "application/json";
      body = JSON.stringify(opts.body);
    }
    const response = await this.send(method, this.url(path, opts.query), headers, body, opts);
    return (await readJson(response)) as T;
  }

  /** Uploads bytes to the media repository; the `mxc://` URI. */
  async upload(bytes: Uint8Array, contentType: string, fileName?: string): Promise<string> {
    const url = this.url("/_matrix/media/v3/upload", { filename: fileName });
    const response = await this.send("POST", url, { "content-type": contentType, accept: "application/json" }, bytes, {});
    const answer = (await readJson(response)) as { content_uri?: unknown };
    if (typeof answer.content_uri !== "string") throw new MatrixApiError(response.status, "M_UNKNOWN", "upload answer without content_uri", answer as Record<string, unknown>);
    return answer.content_uri;
  }

  /** Downloads an `mxc://server/mediaId` through the authenticated media API (v1.11+). */
  async download(mxc: string): Promise<Uint8Array> {
    const match = /^mxc:\/\/([^/]+)\/([^/?#]+)$/.exec(mxc);
    if (!match) throw new TypeError(`not an mxc URI: ${mxc}`);
    const path = `/_matrix/client/v1/media/download/${encodePath(match[1]!, match[2]!)}`;
    const response = await this.send("GET", this.url(path), {}, undefined, {});
    return new Uint8Array(await response.arrayBuffer());
  }

  private url(path: string, query?: QueryValues): string {
    let url = this.baseUrl + path;
    if (query) {
      const params = new URLSearchParams();
      for (const [key, value] of Object.entries(query)) if (value !== undefined) params.set(key, String(value));
      const text = params.toString();
      if (text) url += (url.includes("?") ? "&" : "?") + text;
    }
    return url;
  }

  /** Sends, waiting out 429s (bounded); an OK response, or throws. */
  private async send(
    method: HttpMethod,
    url: string,
    headers: Record<string, string>,
    body: string | Uint8Array | undefined,
    opts: { signal?: AbortSignal; timeoutMs?: number },
  ): Promise<Response> {
    for (let attempt = 0; ; attempt++) {
      const allHeaders = this.accessToken ? { ...headers, authorization: `Bearer ${this.accessToken}` } : headers;
      const timeout = AbortSignal.timeout(opts.timeoutMs ?? this.timeoutMs);
      const signal = opts.signal ? AbortSignal.any([opts.signal, timeout]) : timeout;
      let response: Response;
      try {
        response = await this.fetchImpl(url, { method, headers: allHeaders, body, signal });
      } catch (err) {
        // The caller's own abort is passed on as is: it is not a connection problem.
        if (opts.signal?.aborted) throw opts.signal.reason ?? err;
        const reason = timeout.aborted ? "timed out" : "failed";
        // The URL is left out of the message: its query may hold a since token or a filter, and
        // messages end up in logs.
        throw new MatrixConnectionError(`${method} ${pathOf(url)} ${reason}: ${(err as Error)?.message ?? err}`, { cause: err });
      }
      if (response.ok) return response;
      const error = await toApiError(response);
      if (error.status === 429 && attempt < MAX_RATE_LIMIT_RETRIES) {
        const wait = error.retryAfterMs ?? DEFAULT_RATE_LIMIT_WAIT_MS;
        if (wait <= MAX_RATE_LIMIT_WAIT_MS) {
          await sleep(wait, opts.signal);
          continue;
        }
      }
      throw error;
    }
  }
}

function pathOf(url: string): string {
  try {
    return new URL(url).pathname;
  } catch {
    return "?";
  }
}

async function readJson(response: Response): Promise<unknown> {
  const text = await response.text();
  if (!text) return {};
  try {
    return JSON.parse(text);
  } catch {
    throw new MatrixApiError(response.status, "M_NOT_JSON", "the server answered something that is not JSON", {});
  }
}

async function toApiError(response: Response): Promise<MatrixApiError> {
  let data: Record<string, unknown> = {};
  try {
    const parsed: unknown = JSON.parse(await response.text());
    if (parsed && typeof parsed === "object" && !Array.isArray(parsed)) data = parsed as Record<string, unknown>;
  } catch {
    // A proxy's HTML error page, or nothing: the status is all there is.
  }
  const errcode = typeof data.errcode === "string" ? data.errcode : "M_UNKNOWN";
  const message = typeof data.error === "string" ? data.error : response.statusText || "request failed";
  let retryAfterMs: number | undefined;
  if (typeof data.retry_after_ms === "number" && data.retry_after_ms >= 0) retryAfterMs = data.retry_after_ms;
  else {
    // Newer servers (spec v1.10+) may send the standard header instead of, or as well as, the body field.
    const header = response.headers.get("retry-after");
    if (header && /^\d+$/.test(header)) retryAfterMs = Number(header) * 1000;
  }
  return new MatrixApiError(response.status, errcode, message, data, retryAfterMs);
}

/** Resolves after `ms`, or rejects with the signal's reason when it aborts first. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal!.reason);
    };
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

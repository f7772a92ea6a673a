// Outbound federation HTTP: where to connect (discovery, or the operator's pins), how (HTTPS with
// certificate checks; for the servers named insecure, TLS without the checks or, when the peer does
// not speak TLS at all, plain HTTP), and what we refuse (private
// addresses after DNS, slow or oversized answers). Requests to peers are signed with X-Matrix.
//
// Connections are pooled per connect target with keep-alive (undici). The certificate is checked
// against the name the spec says (the server name or the delegated name), which for SRV targets is
// not the host connected to; SNI carries the same name.

import { lookup as dnsLookup } from "node:dns";
import { isIP, type LookupFunction } from "node:net";
import { type Dispatcher, Pool, errors as undiciErrors } from "undici";
import { MAX_JSON_DEPTH, nestingExceeds } from "../protocol/json-nesting.ts";
import type { SigningKey } from "../protocol/signing.ts";
import { isAllowedFederationAddress } from "./address-policy.ts";
import { type ConnectTarget, type ResolvedServer, type WellKnownResult, parseServerName, wellKnownMaxAge } from "./discovery.ts";
import { xMatrixAuthorization } from "./request-auth.ts";

export interface FederationHttpOptions {
  /** Our server name: the X-Matrix origin. */
  serverName: string;
  signingKey: SigningKey;
  /** Discovery for names that are not pinned. */
  resolve(serverName: string): Promise<ResolvedServer>;
  /** `federation_hosts`: server names the operator pinned to an address (host:port). */
  pinnedHosts?: ReadonlyMap<string, ConnectTarget>;
  /**
   * `federation_insecure`: names reached without certificate checks, over plain HTTP when they do
   * not speak TLS; "*" for every name (a closed test network), which also lifts the address policy.
   */
  insecure?: ReadonlySet<string> | "*";
  connectTimeoutMs?: number;
  /** Time to the response headers. */
  headersTimeoutMs?: number;
  /** The whole request, body included. */
  requestTimeoutMs?: number;
  maxResponseBytes?: number;
  /** CA certificates (PEM) to trust for peers instead of the well-known ones: a private network's own CA. */
  tlsCa?: string | string[];
  /** Which resolved addresses may be connected to; defaults to the federation address policy. */
  allowAddress?(address: string): boolean;
  /** The port .well-known is fetched from (443; tests change it). */
  wellKnownPort?: number;
  /** DNS for tests; defaults to the system resolver (all addresses). */
  lookupAll?(hostname: string): Promise<{ address: string; family: number }[]>;
}

export type FederationRequestFailure =
  | "invalid-destination"
  | "blocked-address"
  | "unreachable"
  | "timeout"
  | "too-large"
  | "bad-response";

export class FederationRequestError extends Error {
  constructor(
    readonly failure: FederationRequestFailure,
    readonly destination: string,
    message: string,
  ) {
    super(`${destination}: ${message}`);
  }
}

export interface FederationResponse {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  /** The parsed JSON body; undefined when the body was empty. */
  body: unknown;
}

export interface FederationStreamResponse {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  /** The body, unread: read it or destroy it. */
  body: Dispatcher.ResponseData["body"];
}

export interface FederationRequest {
  method: "GET" | "PUT" | "POST" | "DELETE";
  /** From `/_matrix/…`, query string included, already percent-encoded: exactly what is signed. */
  path: string;
  body?: unknown;
  /** Sign with X-Matrix (everything but the key server's own endpoints). Default true. */
  signed?: boolean;
  signal?: AbortSignal;
}

const DEFAULTS = {
  connectTimeoutMs: 10_000,
  headersTimeoutMs: 30_000,
  requestTimeoutMs: 60_000,
  maxResponseBytes: 32 * 1024 * 1024,
};
const POOL_LIMIT = 512;

interface Route {
  target: ConnectTarget;
  hostHeader: string;
  tlsName: string;
  /** Check the peer's certificate (false only for names marked insecure). */
  verify: boolean;
  /** Pinned or insecure-for-all: the operator chose the address, the policy does not apply. */
  trusted: boolean;
}

export class FederationHttpClient {
  private readonly pools = new Map<string, Pool>();
  /** Targets of insecure names found to speak plain HTTP. */
  private readonly plainHttpTargets = new Set<string>();
  private readonly opts: FederationHttpOptions & typeof DEFAULTS;
  private closed = false;

  constructor(options: FederationHttpOptions) {
    this.opts = { ...DEFAULTS, ...options };
  }

  /** A request to a peer server, signed unless `signed: false`. */
  async request(destination: string, req: FederationRequest): Promise<FederationResponse> {
    return this.attempt(destination, req, (route, headers, payload) => this.send(destination, route, req, headers, payload));
  }

  /**
   * A request whose answer's body is handed back unread, as a stream (media): the caller reads it
   * or destroys it. The same signing, routing and limits as `request`.
   */
  async requestStream(destination: string, req: FederationRequest): Promise<FederationStreamResponse> {
    return this.attempt(destination, req, async (route, headers, payload) => {
      const response = await this.dispatch(destination, route, req, headers, payload);
      return { status: response.statusCode, headers: response.headers, body: response.body };
    });
  }

  private async attempt<T>(
    destination: string,
    req: FederationRequest,
    send: (route: Route, headers: Record<string, string>, payload: string | undefined) => Promise<T>,
  ): Promise<T> {
    if (this.closed) throw new FederationRequestError("unreachable", destination, "the federation client is closed");
    const routes = await this.routes(destination);
    const payload = req.body === undefined ? undefined : JSON.stringify(req.body);
    const headers: Record<string, string> = {};
    if (payload !== undefined) headers["content-type"] = "application/json";
    if (req.signed !== false) {
      headers.authorization = xMatrixAuthorization(
        { method: req.method, uri: req.path, origin: this.opts.serverName, destination, content: req.body },
        this.opts.signingKey,
      );
    }
    let lastError: FederationRequestError | undefined;
    // SRV may give several targets: try the next only when one could not be connected to.
    for (const route of routes) {
      try {
        return await send(route, headers, payload);
      } catch (err) {
        if (!(err instanceof FederationRequestError) || (err.failure !== "unreachable" && err.failure !== "blocked-address")) throw err;
        lastError = err;
      }
    }
    throw lastError ?? new FederationRequestError("unreachable", destination, "no address to connect to");
  }

  /**
   * `GET https://<hostname>/.well-known/matrix/server` for discovery: TLS with certificate checks
   * (or as for any insecure name), the address policy, at most 3 redirects, at most 50 KB.
   * https://spec.matrix.org/latest/server-server-api/#getwell-knownmatrixserver
   */
  async fetchWellKnown(hostname: string): Promise<WellKnownResult> {
    const port = this.opts.wellKnownPort ?? 443;
    let url = new URL(`https://${isIP(hostname) === 6 ? `[${hostname}]` : hostname}${port === 443 ? "" : `:${port}`}/.well-known/matrix/server`);
    for (let redirects = 0; redirects <= 3; redirects++) {
      const host = url.hostname.replace(/^\[|\]$/g, "");
      const port = url.port ? Number(url.port) : url.protocol === "http:" ? 80 : 443;
      if (url.protocol !== "https:" && url.protocol !== "http:") return { kind: "invalid" };
      const insecure = this.opts.insecure === "*" || this.opts.insecure?.has(hostname) === true;
      const route: Route = {
        target: { host, port },
        hostHeader: url.host,
        tlsName: host,
        verify: url.protocol === "https:" && !insecure,
        trusted: this.opts.insecure === "*",
      };
      let response;
      try {
        if (!route.trusted && isIP(host) && !(this.opts.allowAddress ?? isAllowedFederationAddress)(host)) return { kind: "unreachable" };
        response = await this.pool(route, url.protocol === "https:" ? "https" : "http").request({
          method: "GET",
          path: url.pathname + url.search,
          headers: { host: url.host },
          signal: AbortSignal.timeout(Math.min(this.opts.requestTimeoutMs, 15_000)),
        });
      } catch {
        return { kind: "unreachable" };
      }
      const location = response.headers.location;
      if (response.statusCode >= 300 && response.statusCode < 400 && typeof location === "string") {
        await response.body.dump().catch(() => {});
        url = new URL(location, url);
        continue;
      }
      let text: string;
      try {
        text = await readLimited(response.body, 50 * 1024);
      } catch {
        return { kind: "invalid" };
      }
      if (response.statusCode !== 200) return { kind: "invalid" };
      try {
        const json = JSON.parse(text) as { "m.server"?: unknown };
        if (typeof json !== "object" || json === null || typeof json["m.server"] !== "string") return { kind: "invalid" };
        const maxAgeMs = wellKnownMaxAge(typeof response.headers["cache-control"] === "string" ? response.headers["cache-control"] : undefined);
        return maxAgeMs === undefined ? { kind: "delegated", server: json["m.server"] } : { kind: "delegated", server: json["m.server"], maxAgeMs };
      } catch {
        return { kind: "invalid" };
      }
    }
    return { kind: "invalid" };
  }

  async close(): Promise<void> {
    this.closed = true;
    const pools = [...this.pools.values()];
    this.pools.clear();
    await Promise.all(pools.map((p) => p.destroy().catch(() => {})));
  }

  private async routes(destination: string): Promise<Route[]> {
    const parsed = parseServerName(destination);
    if (!parsed) throw new FederationRequestError("invalid-destination", destination, "not a valid server name");
    const insecure = this.opts.insecure === "*" || this.opts.insecure?.has(destination) === true;
    const pinned = this.opts.pinnedHosts?.get(destination);
    if (pinned) {
      return [{ target: pinned, hostHeader: destination, tlsName: parsed.host, verify: !insecure, trusted: true }];
    }
    const resolved = await this.opts.resolve(destination);
    return resolved.targets.map((target) => ({
      target,
      hostHeader: resolved.hostHeader,
      tlsName: resolved.tlsName,
      verify: !insecure,
      trusted: this.opts.insecure === "*",
    }));
  }

  private pool(route: Route, scheme: "https" | "http"): Pool {
    const { target } = route;
    const hostForUrl = isIP(target.host) === 6 ? `[${target.host}]` : target.host;
    const origin = `${scheme}://${hostForUrl}:${target.port}`;
    const key = `${origin}|${route.tlsName}|${route.verify ? "verify" : "noverify"}|${route.trusted ? "trusted" : "checked"}`;
    let pool = this.pools.get(key);
    if (pool) {
      // Most recently used last, so the first entry is the one to evict.
      this.pools.delete(key);
      this.pools.set(key, pool);
      return pool;
    }
    pool = new Pool(origin, {
      connections: 8,
      connectTimeout: this.opts.connectTimeoutMs,
      headersTimeout: this.opts.headersTimeoutMs,
      bodyTimeout: this.opts.requestTimeoutMs,
      keepAliveTimeout: 30_000,
      // No pool-wide response limit: JSON answers are bounded in `send`, while a media stream is
      // bounded by its reader (the media repository's max_upload_size, which may be larger).
      connect: {
        ...(route.trusted ? {} : { lookup: this.policyLookup() }),
        // Node checks the certificate against `servername` (else the host connected to), so this is
        // also what makes an SRV target prove it serves the delegated name.
        ...(scheme === "https"
          ? {
              servername: isIP(route.tlsName) ? undefined : route.tlsName,
              rejectUnauthorized: route.verify,
              ...(this.opts.tlsCa ? { ca: this.opts.tlsCa } : {}),
            }
          : {}),
      },
    });
    if (this.pools.size >= POOL_LIMIT) {
      const [oldestKey, oldest] = this.pools.entries().next().value as [string, Pool];
      this.pools.delete(oldestKey);
      oldest.close().catch(() => {});
    }
    this.pools.set(key, pool);
    return pool;
  }

  /** A DNS lookup for net.connect that refuses private, loopback and other blocked addresses. */
  private policyLookup(): LookupFunction {
    const lookupAll =
      this.opts.lookupAll ??
      ((hostname: string) =>
        new Promise<{ address: string; family: number }[]>((resolve, reject) =>
          dnsLookup(hostname, { all: true }, (err, addresses) => (err ? reject(err) : resolve(addresses))),
        ));
    return ((hostname: string, options: { all?: boolean }, callback: (...args: unknown[]) => void) => {
      const literal = isIP(hostname);
      const addresses = literal ? Promise.resolve([{ address: hostname, family: literal }]) : lookupAll(hostname);
      addresses.then(
        (all) => {
          const allowAddress = this.opts.allowAddress ?? isAllowedFederationAddress;
          const allowed = all.filter((a) => allowAddress(a.address));
          if (allowed.length === 0) {
            const err = Object.assign(new Error(`${hostname} resolves only to addresses federation may not reach`), {
              code: "EPARLEYBLOCKED",
            });
            callback(err, options.all ? [] : undefined, undefined);
          } else if (options.all) {
            callback(null, allowed);
          } else {
            const first = allowed[0] as { address: string; family: number };
            callback(null, first.address, first.family);
          }
        },
        (err) => callback(err, options.all ? [] : undefined, undefined),
      );
    }) as unknown as LookupFunction;
  }

  private async dispatch(
    destination: string,
    route: Route,
    req: FederationRequest,
    headers: Record<string, string>,
    payload: string | undefined,
  ): Promise<Dispatcher.ResponseData> {
    const signal = req.signal
      ? AbortSignal.any([req.signal, AbortSignal.timeout(this.opts.requestTimeoutMs)])
      : AbortSignal.timeout(this.opts.requestTimeoutMs);
    // net.connect skips the lookup for IP literals, so they are judged here.
    const allowAddress = this.opts.allowAddress ?? isAllowedFederationAddress;
    if (!route.trusted && isIP(route.target.host) && !allowAddress(route.target.host)) {
      throw new FederationRequestError("blocked-address", destination, `${route.target.host} is an address federation may not reach`);
    }
    const targetKey = `${route.target.host}|${route.target.port}`;
    let scheme = route.verify ? "https" : (this.plainHttpTargets.has(targetKey) ? "http" : "https");
    let response;
    for (;;) {
      try {
        response = await this.pool(route, scheme as "https" | "http").request({
          method: req.method,
          path: req.path,
          headers: { ...headers, host: route.hostHeader },
          body: payload,
          signal,
        });
        break;
      } catch (err) {
        // A peer marked insecure that answered our TLS hello in plain HTTP: speak plain HTTP to it.
        if (!route.verify && scheme === "https" && speaksPlainHttp(err)) {
          scheme = "http";
          this.plainHttpTargets.add(targetKey);
          if (this.plainHttpTargets.size > POOL_LIMIT) this.plainHttpTargets.delete(this.plainHttpTargets.values().next().value as string);
          continue;
        }
        throw classify(destination, err);
      }
    }
    return response;
  }

  private async send(
    destination: string,
    route: Route,
    req: FederationRequest,
    headers: Record<string, string>,
    payload: string | undefined,
  ): Promise<FederationResponse> {
    const response = await this.dispatch(destination, route, req, headers, payload);
    let text: string;
    try {
      text = await readLimited(response.body, this.opts.maxResponseBytes);
    } catch (err) {
      response.body.destroy();
      if (err instanceof ResponseTooLarge) throw new FederationRequestError("too-large", destination, "the response is larger than allowed");
      throw classify(destination, err);
    }
    let body: unknown;
    if (text.trim() !== "") {
      // The same bound as on what clients send: walking deeper JSON would overflow the stack.
      if (nestingExceeds(text, MAX_JSON_DEPTH)) {
        throw new FederationRequestError("bad-response", destination, `answered ${response.statusCode} with JSON nested deeper than ${MAX_JSON_DEPTH} levels`);
      }
      try {
        body = JSON.parse(text);
      } catch {
        throw new FederationRequestError("bad-response", destination, `answered ${response.statusCode} with a body that is not JSON`);
      }
    }
    return { status: response.statusCode, headers: response.headers, body };
  }
}

class ResponseTooLarge extends Error {}

async function readLimited(body: AsyncIterable<Uint8Array>, maxBytes: number): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of body) {
    size += chunk.byteLength;
    if (size > maxBytes) throw new ResponseTooLarge("too large");
    chunks.push(Buffer.from(chunk));
  }
  return Buffer.concat(chunks).toString("utf8");
}

/** OpenSSL's complaint when the other side answers a TLS hello with something that is not TLS. */
function speaksPlainHttp(err: unknown): boolean {
  for (let e = err as { code?: string; message?: string; cause?: unknown } | undefined, i = 0; e && i < 4; e = e.cause as typeof e, i++) {
    if (e.code === "ERR_SSL_WRONG_VERSION_NUMBER" || e.code === "ERR_SSL_PACKET_LENGTH_TOO_LONG" || e.code === "ERR_SSL_HTTP_REQUEST") return true;
    if (typeof e.message === "string" && /wrong version number|packet length too long|http request/i.test(e.message)) return true;
  }
  return false;
}

function classify(destination: string, err: unknown): FederationRequestError {
  if (err instanceof FederationRequestError) return err;
  const e = err as { code?: string; name?: string; message?: string; cause?: { code?: string } };
  const code = e.code ?? e.cause?.code;
  if (code === "EPARLEYBLOCKED") return new FederationRequestError("blocked-address", destination, e.message ?? "blocked address");
  if (err instanceof undiciErrors.ResponseExceededMaxSizeError || code === "UND_ERR_RES_EXCEEDED_MAX_SIZE") {
    return new FederationRequestError("too-large", destination, "the response is larger than allowed");
  }
  if (
    err instanceof undiciErrors.HeadersTimeoutError ||
    err instanceof undiciErrors.BodyTimeoutError ||
    err instanceof undiciErrors.ConnectTimeoutError ||
    e.name === "TimeoutError"
  ) {
    return new FederationRequestError("timeout", destination, "timed out");
  }
  return new FederationRequestError("unreachable", destination, e.message ?? String(err));
}

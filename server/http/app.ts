// The HTTP application: CORS on every response, OPTIONS answered before any endpoint logic,
// request IDs and JSON access logs, a body-size limit, JSON parsing and schema validation, and
// every error rendered as a Matrix error with a JSON content type.
import { randomUUID } from "node:crypto";
import { IncomingMessage } from "node:http";
import { Readable } from "node:stream";
import { type Context, Hono } from "hono";
import { matchedRoutes } from "hono/route";
import type { z } from "zod";
import { isDatabaseClosed } from "../../schema/db.ts";
import type { Services } from "../services.ts";
import { appServiceOfToken, appServiceRequester, isRateLimited } from "../appservices/auth.ts";
import { Admission, admissionMiddleware, admissionSlot } from "./admission.ts";
import { MatrixError, unrecognized } from "./errors.ts";
import { parseJsonFromOthers } from "./safe-json.ts";
import type { AnyRoute, RequestInfo, Requester } from "./route.ts";

// https://spec.matrix.org/latest/client-server-api/#web-browser-clients
export const CORS_HEADERS: Record<string, string> = {
  "Access-Control-Allow-Origin": "*",
  "Access-Control-Allow-Methods": "GET, POST, PUT, DELETE, OPTIONS",
  "Access-Control-Allow-Headers": "X-Requested-With, Content-Type, Authorization",
};

type Env = { Variables: { requestId: string; requestInfo: RequestInfo; userId?: string } };

/**
 * The longest path parameter (ID, type, transaction ID, state key...) accepted, in UTF-8 bytes. The
 * spec bounds IDs and types at 255 bytes; nothing longer than this is meaningful, and a longer one
 * would reach PostgreSQL's btree limit (about 2,700 bytes an index entry) as a 500.
 */
export const MAX_PATH_PARAM_BYTES = 1024;

/**
 * Told of every answered request (metrics): `route` is the declared path pattern of the route that
 * answered, undefined when none did, so a label made of it has as many values as there are routes.
 */
export type RequestObserver = (method: string, route: string | undefined, status: number, seconds: number) => void;

export function createApp(services: Services, routes: AnyRoute[], observe?: RequestObserver): Hono<Env> {
  const app = new Hono<Env>();
  if (observe) {
    const declared = new Set(routes.map((r) => r.path));
    app.use(async (c, next) => {
      const started = performance.now();
      await next();
      // After next(), routeIndex is the handler that answered (a route's, or this app-wide middleware's).
      const path = matchedRoutes(c)[c.req.routeIndex]?.path;
      observe(c.req.method, path !== undefined && declared.has(path) ? path : undefined, c.res.status, (performance.now() - started) / 1000);
    });
  }
  const { logger } = services;
  const maxBytes = services.config.max_request_bytes;

  app.use(async (c, next) => {
    const started = performance.now();
    const requestId = randomUUID();
    c.set("requestId", requestId);
    c.set("requestInfo", requestInfo(c, requestId, services.config.x_forwarded_for));
    if (c.req.method === "OPTIONS") {
      c.res = new Response(null, { status: 204 });
    } else {
      await next();
    }
    for (const [k, v] of Object.entries(CORS_HEADERS)) c.res.headers.set(k, v);
    c.res.headers.set("X-Request-Id", requestId);
    // The path only: a query string may carry secrets (legacy access_token, login tokens).
    const info = c.get("requestInfo");
    logger.info(
      {
        requestId,
        method: c.req.method,
        path: c.req.path,
        ip: info.ip,
        ...(c.get("userId") ? { user: c.get("userId") } : {}),
        status: c.res.status,
        ms: Math.round((performance.now() - started) * 10) / 10,
      },
      "request",
    );
  });

  const { config } = services;
  const admission = new Admission({
    longPolls: config.max_long_polls,
    longPollsPerUser: config.max_long_polls_per_user,
    requests: config.max_in_flight_requests,
    requestsPerUser: config.max_in_flight_requests_per_user,
  });
  for (const r of routes) {
    const admit = admissionMiddleware(admission, r);
    if (admit) app.on(r.method, r.path, admit);
    app.on(r.method, r.path, async (c) => {
      const info = c.get("requestInfo");
      // An application service's own calls (its as_token) are not limited per address: it
      // registers and acts for many users from one.
      if (r.rateLimit && !appServiceOfToken(accessToken(c), services.appServices)) services.rateLimiter.take(r.rateLimit, info.ip);
      const requester = await authenticate(r, c, info, services);
      if (requester) {
        c.set("userId", requester.userId);
        logger.debug({ requestId: info.requestId, user: requester.userId, device: requester.deviceId, guest: requester.isGuest || undefined }, "authenticated");
        if (requester.isGuest && !r.allowGuests) {
          throw new MatrixError(403, "M_GUEST_ACCESS_FORBIDDEN", "Guest accounts cannot use this endpoint");
        }
        if (isRateLimited(requester, services.appServices)) services.rateLimiter.take("requests", requester.userId);
        admissionSlot(c)?.forUser(requester.userId);
      }
      let body: unknown;
      let origin: string | undefined;
      let rawBody: Readable | undefined;
      if (r.rawBody) {
        const limit = services.config.max_upload_size;
        if (Number(c.req.header("content-length") ?? "0") > limit) throw tooLarge(limit);
        rawBody = requestStream(c);
      } else if (r.auth === "server") {
        // The X-Matrix signature covers the body as parsed, so it is read before the check.
        const text = c.req.method === "GET" || c.req.method === "DELETE" ? "" : await readBodyText(c, maxBytes);
        const content = text.trim() === "" ? undefined : parseJsonFromOthers(text, { strict: r.strictJson === true });
        origin = await services.serverAuth.authenticate({
          authorization: c.req.header("authorization"),
          method: c.req.method,
          rawTarget: info.rawTarget,
          content,
        });
        body = r.body ? validateBody(r.body, content ?? {}) : undefined;
      } else {
        body = r.body ? await readJsonBody(c, r.body, maxBytes, r.strictJson === true) : undefined;
      }
      const query = r.query ? validateQuery(c, r.query) : c.req.query();
      const params = c.req.param() as Record<string, string>;
      for (const [name, value] of Object.entries(params)) {
        // PostgreSQL text cannot hold NUL; no Matrix identifier contains one.
        if (value.includes("\u0000")) throw new MatrixError(400, "M_INVALID_PARAM", `${name} must not contain NUL`);
        if (value.length > MAX_PATH_PARAM_BYTES / 3 && Buffer.byteLength(value) > MAX_PATH_PARAM_BYTES) {
          throw new MatrixError(400, "M_INVALID_PARAM", `${name} is longer than ${MAX_PATH_PARAM_BYTES} bytes`);
        }
      }
      let result: unknown;
      try {
        result = await r.handler({ params, query, body, rawBody, requester, origin, request: info, c }, services);
      } catch (err) {
        // An upload whose client went away mid-body fails wherever it was being read: that is the
        // client's doing, not a bug of ours.
        if (rawBody && !rawBody.readableEnded && !(err instanceof MatrixError)) throw new ClientAbortedError((err as Error).message);
        throw err;
      }
      if (result instanceof Response) return result;
      return c.json(result ?? {});
    });
  }

  const methodTable = routes.map((r) => ({ method: r.method, pattern: pathPattern(r.path) }));
  app.notFound((c) => {
    const path = c.req.path;
    const allowed = methodTable.filter((m) => m.pattern.test(path)).map((m) => m.method);
    if (allowed.length > 0) {
      return errorResponse(c, unrecognized(405, `Method ${c.req.method} is not allowed on ${path}`), {
        Allow: [...new Set(allowed)].join(", "),
      });
    }
    return errorResponse(c, unrecognized(404, "Unrecognized request"));
  });

  app.onError((err, c) => {
    if (err instanceof ClientAbortedError) {
      // Nobody is left to read the answer, and it was the client's doing: not an error of ours.
      logger.debug({ requestId: c.get("requestId"), reason: err.message }, "client aborted the request");
      return errorResponse(c, err);
    }
    if (err instanceof MatrixError) {
      // Why a client was turned away (a token unknown, expired, a guest, a missing permission):
      // the errcode says it without the token.
      if (err.status === 401 || err.status === 403) logger.debug({ requestId: c.get("requestId"), errcode: err.errcode, reason: err.message }, "request refused");
      return errorResponse(c, err);
    }
    if (isDatabaseClosed(err)) {
      // A handler that outlived the shutdown grace period: the database refused its query.
      logger.warn({ requestId: c.get("requestId") }, "request cut short by shutdown");
      return errorResponse(c, new MatrixError(503, "M_UNKNOWN", "The server is shutting down"));
    }
    if (isUnstorableText(err)) {
      // A string from the request that PostgreSQL cannot store (NUL): the client's fault, not ours.
      // The transaction it was in rolled back, so nothing was half-written.
      return errorResponse(c, new MatrixError(400, "M_BAD_JSON", "The request contains a character that cannot be stored (NUL)"));
    }
    logger.error({ requestId: c.get("requestId"), err }, "unhandled error");
    return errorResponse(c, new MatrixError(500, "M_UNKNOWN", "Internal server error"));
  });

  return app;
}

/** PostgreSQL's "invalid byte sequence" (22021) and "untranslatable character" (22P05), through drizzle's wrapping. */
function isUnstorableText(err: unknown): boolean {
  for (let e = err as { code?: unknown; cause?: unknown } | undefined, depth = 0; e && depth < 5; e = e.cause as typeof e, depth++) {
    if (e.code === "22021" || e.code === "22P05") return true;
  }
  return false;
}

function errorResponse(c: Context, err: MatrixError, headers: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(err.toJSON()), {
    status: err.status,
    headers: { "Content-Type": "application/json", ...err.headers, ...headers },
  });
}

function requestInfo(c: Context, requestId: string, trustForwardedFor: boolean): RequestInfo {
  const incoming = (c.env as { incoming?: { url?: string; socket?: { remoteAddress?: string } } } | undefined)
    ?.incoming;
  const url = new URL(c.req.url);
  let ip = incoming?.socket?.remoteAddress ?? "unknown";
  if (trustForwardedFor) {
    // The last entry is the one our own proxy added; earlier ones came from the client and may be forged.
    const forwarded = c.req.header("x-forwarded-for")?.split(",").at(-1)?.trim();
    if (forwarded) ip = forwarded;
  }
  return {
    requestId,
    ip,
    userAgent: c.req.header("user-agent") ?? "",
    rawTarget: incoming?.url ?? url.pathname + url.search,
  };
}

async function authenticate(
  r: AnyRoute,
  c: Context,
  info: RequestInfo,
  services: Services,
): Promise<Requester | undefined> {
  // Server routes are authenticated by their X-Matrix signature, once the body is read.
  if (r.auth === "none" || r.auth === "server") return undefined;
  const token = accessToken(c);
  if (!token) {
    if (r.auth === "optional") return undefined;
    throw new MatrixError(401, "M_MISSING_TOKEN", "Missing access token");
  }
  // https://spec.matrix.org/latest/application-service-api/#identity-assertion
  const appService = appServiceOfToken(token, services.appServices);
  if (appService) {
    // The service is up (it is calling us): what waits for it need not wait out its backoff.
    services.appServiceDelivery?.markReachable(appService.id);
    return appServiceRequester(appService, c.req.query(), services.accounts);
  }
  return services.auth.authenticate(token, info);
}

// https://spec.matrix.org/latest/client-server-api/#using-access-tokens — the query-string form is
// deprecated (and gone in v1.20) but still accepted for older clients.
export function accessToken(c: Context): string | undefined {
  const header = c.req.header("authorization");
  if (header) {
    const m = /^Bearer\s+(\S+)\s*$/i.exec(header);
    return m ? m[1] : undefined;
  }
  return c.req.query("access_token") || undefined;
}

/**
 * Reads and validates a JSON body. An empty body counts as `{}` (many clients send nothing to
 * endpoints whose every field is optional). Not JSON → 400 M_NOT_JSON; JSON of the wrong shape or
 * nested too deep (safe-json.ts) → 400 M_BAD_JSON; too large → 413 M_TOO_LARGE.
 */
async function readJsonBody<B>(c: Context, schema: z.ZodType<B>, maxBytes: number, strict: boolean): Promise<B> {
  const text = await readBodyText(c, maxBytes);
  let value: unknown;
  if (text.trim() === "") {
    value = {};
  } else {
    value = parseJsonFromOthers(text, { strict });
  }
  return validateBody(schema, value);
}

function validateBody<B>(schema: z.ZodType<B>, value: unknown): B {
  const parsed = schema.safeParse(value);
  if (!parsed.success) throw new MatrixError(400, "M_BAD_JSON", describeIssue(parsed.error));
  return parsed.data;
}

export async function readBodyText(c: Context, maxBytes: number): Promise<string> {
  const declared = Number(c.req.header("content-length") ?? "0");
  if (declared > maxBytes) throw tooLarge(maxBytes);
  const incoming = (c.env as { incoming?: IncomingMessage } | undefined)?.incoming;
  // Reading Node's request directly: materialising the web Request's body stream costs more than
  // the rest of a small request's handling (measured on PUT /send).
  if (incoming instanceof IncomingMessage && !incoming.readableDidRead) return readIncoming(incoming, maxBytes);
  const body = c.req.raw.body;
  if (!body) return "";
  const reader = body.getReader();
  const chunks: Uint8Array[] = [];
  let size = 0;
  for (;;) {
    let chunk: Awaited<ReturnType<typeof reader.read>>;
    try {
      chunk = await reader.read();
    } catch (err) {
      throw new ClientAbortedError((err as Error).message);
    }
    const { done, value } = chunk;
    if (done) break;
    size += value.byteLength;
    if (size > maxBytes) {
      await reader.cancel().catch(() => {});
      throw tooLarge(maxBytes);
    }
    chunks.push(value);
  }
  return utf8Text(Buffer.concat(chunks));
}

/** The request body as a byte stream: Node's request itself when it is there, unread. */
function requestStream(c: Context): Readable {
  const incoming = (c.env as { incoming?: IncomingMessage } | undefined)?.incoming;
  if (incoming instanceof IncomingMessage && !incoming.readableDidRead) return incoming;
  const body = c.req.raw.body;
  return body ? Readable.fromWeb(body as import("node:stream/web").ReadableStream<Uint8Array>) : Readable.from([]);
}

/** JSON bodies are UTF-8 (RFC 8259 §8.1): bytes that are not are no JSON, not text to repair. */
function utf8Text(bytes: Uint8Array): string {
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    throw new MatrixError(400, "M_NOT_JSON", "The request body is not valid UTF-8");
  }
}

function readIncoming(incoming: IncomingMessage, maxBytes: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const done = (finish: () => void) => {
      incoming.off("data", onData);
      incoming.off("end", onEnd);
      incoming.off("error", onError);
      incoming.off("close", onClose);
      finish();
    };
    const onData = (chunk: Buffer) => {
      size += chunk.byteLength;
      if (size > maxBytes) {
        incoming.pause();
        done(() => reject(tooLarge(maxBytes)));
        return;
      }
      chunks.push(chunk);
    };
    const onEnd = () =>
      done(() => {
        try {
          resolve(utf8Text(Buffer.concat(chunks)));
        } catch (err) {
          reject(err);
        }
      });
    // Node reports a client that goes away mid-body as an "aborted" (ECONNRESET) error, then a close.
    const onError = (err: Error) => done(() => reject(new ClientAbortedError(err.message)));
    const onClose = () => {
      if (!incoming.readableEnded) done(() => reject(new ClientAbortedError("the client closed the connection before sending the whole body")));
    };
    incoming.on("data", onData);
    incoming.on("end", onEnd);
    incoming.on("error", onError);
    incoming.on("close", onClose);
  });
}

/**
 * The client closed the connection (or it broke) before the whole request body arrived. Rendered
 * like any Matrix error for the access log, but logged at debug only: nobody reads the answer.
 */
export class ClientAbortedError extends MatrixError {
  override name = "ClientAbortedError";
  constructor(reason: string) {
    super(400, "M_UNKNOWN", `The request body did not arrive whole: ${reason}`);
  }
}

// The rest of the body is never read, so the connection cannot carry another request: close it.
const tooLarge = (maxBytes: number) =>
  new MatrixError(413, "M_TOO_LARGE", `Request body is larger than ${maxBytes} bytes`, {}, { Connection: "close" });

function validateQuery<Q>(c: Context, schema: z.ZodType<Q>): Q {
  const parsed = schema.safeParse(c.req.query());
  if (!parsed.success) throw new MatrixError(400, "M_INVALID_PARAM", describeIssue(parsed.error));
  return parsed.data;
}

function describeIssue(error: z.ZodError): string {
  const issue = error.issues[0];
  if (!issue) return "Invalid request";
  const where = issue.path.length ? issue.path.join(".") : "body";
  return `${where}: ${issue.message}`;
}

/** Hono path → anchored regex, for telling "wrong method" (405) from "no such path" (404). */
function pathPattern(path: string): RegExp {
  const source = path
    .split("/")
    .map((seg) => (seg.startsWith(":") ? "[^/]+" : seg === "*" ? ".*" : seg.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")))
    .join("/");
  return new RegExp(`^${source}$`);
}

// One endpoint, one declaration (after ruma): method, path, authentication, and the schemas of the
// request's body and query. Validation, types and the 405 table all come from this one place.
import type { Readable } from "node:stream";
import type { Context } from "hono";
import type { z } from "zod";
import type { RateLimitName } from "../ratelimit.ts";
import type { Services } from "../services.ts";

export type Method = "GET" | "POST" | "PUT" | "DELETE";

/** Who made a Client-Server request, once its access token has been checked. */
export interface Requester {
  userId: string;
  deviceId: string;
  isGuest: boolean;
  /** The session (access token row) the request came with. */
  sessionId: string;
  /**
   * Set when an application service made the request with its `as_token` (acting as its bot, or as
   * a user of its namespaces): the service's `id`.
   */
  appServiceId?: string;
}

/**
 * - `none`: no authentication.
 * - `user`: a valid access token is required (401 M_MISSING_TOKEN / M_UNKNOWN_TOKEN otherwise).
 * - `optional`: the requester is known when a token is given, else undefined.
 * - `server`: another homeserver, authenticated by its X-Matrix signature over the request
 *   (401 M_UNAUTHORIZED otherwise); the handler gets its name as `origin`.
 */
export type AuthMode = "none" | "user" | "optional" | "server";

/** Checks another server's X-Matrix signature over a request; answers that server's name. */
export interface ServerAuthenticator {
  authenticate(request: {
    authorization: string | undefined;
    method: string;
    rawTarget: string;
    content: unknown;
  }): Promise<string>;
}

export interface RequestInfo {
  requestId: string;
  ip: string;
  userAgent: string;
  /** The raw request target (path and query) exactly as received, for signature checks. */
  rawTarget: string;
}

export interface HandlerInput<A extends AuthMode, B, Q> {
  params: Record<string, string>;
  query: Q;
  body: B;
  requester: A extends "user" ? Requester : A extends "optional" ? Requester | undefined : undefined;
  /** The authenticated origin server of a `server` route. */
  origin: A extends "server" ? string : undefined;
  request: RequestInfo;
  /** The request body as a stream of bytes, for `rawBody` routes (uploads); undefined otherwise. */
  rawBody: Readable | undefined;
  /** The raw Hono context, for the rare endpoint that needs headers or repeated query values. */
  c: Context;
}

export interface RouteDef<A extends AuthMode = AuthMode, B = unknown, Q = unknown> {
  method: Method;
  path: string;
  auth: A;
  body?: z.ZodType<B>;
  /**
   * The body is not JSON but a file (media uploads): the handler gets it as a stream, unread, in
   * `rawBody`. A Content-Length above `max_upload_size` is answered 413 M_TOO_LARGE before it is
   * read; the handler enforces the same limit on the bytes as they stream.
   */
  rawBody?: boolean;
  query?: z.ZodType<Q>;
  /**
   * Rate limit applied per client IP address before the handler runs (see server/ratelimit.ts).
   * Authenticated requests also share one general per-user limit, whatever this says.
   */
  rateLimit?: RateLimitName;
  /**
   * Guest accounts may call this endpoint. By default a guest gets 403 M_GUEST_ACCESS_FORBIDDEN;
   * https://spec.matrix.org/latest/client-server-api/#client-behaviour-14 lists what guests may do.
   */
  allowGuests?: boolean;
  /**
   * Parse the body as canonical-JSON-able (room versions 6+): floats such as `1.5` or `1.0` and
   * integers outside ±(2^53-1) answer 400 M_BAD_JSON. For bodies that become event content.
   */
  strictJson?: boolean;
  /**
   * Admission control (server/http/admission.ts): `exempt` for cheap constant answers that must stay
   * reachable under overload (/versions, /health); every other route counts against a ceiling.
   */
  admission?: "exempt";
  /**
   * Whether a request may wait (a long-poll), from its raw query: it then counts against the
   * long-poll ceilings instead of the in-flight request ones.
   */
  longPoll?: (query: Record<string, string>) => boolean;
  /** Returns a JSON body (status 200) or a full Response. */
  handler(input: HandlerInput<A, B, Q>, services: Services): Promise<unknown> | unknown;
}

export function route<A extends AuthMode, B = undefined, Q = Record<string, string>>(
  def: RouteDef<A, B, Q>,
): RouteDef<A, B, Q> {
  return def;
}

// biome-ignore lint: a heterogeneous list of routes
export type AnyRoute = RouteDef<any, any, any>;

// Admission control: a ceiling on how much one process takes on at once, so that an overloaded
// server keeps answering the requests it admits in good time instead of answering everyone late.
//
// Two pools, each with a ceiling for the whole process and one per user:
// - long-polls: `/sync` requests that may wait (a `since` token, `timeout` > 0, no `full_state`).
//   They cost little while they wait, but each one is a connection, memory, and a full /sync
//   computation every time it wakes or times out; thousands re-polling at once starve the sends.
// - requests: everything else that is not exempt (the cheap, constant answers: /versions, /health,
//   the well-known files; OPTIONS never reaches a route).
//
// Beyond a ceiling the answer is 429 M_LIMIT_EXCEEDED with `retry_after_ms` and Retry-After, as a
// rate limit answers (https://spec.matrix.org/latest/client-server-api/#rate-limiting). A refused
// long-poll is NOT answered as a sync that does not wait: that invites the client to come back at
// once, a busy loop that multiplies the very load being shed; a 429 makes it back off. The delay is
// spread at random so the clients refused together do not all come back together.
//
// The process-wide check runs before authentication (a refusal then costs no database read); the
// per-user check right after it. A slot is given back when the handler is done, and a long-poll's
// also when its client goes away (its wait ends then anyway; this makes sure of it).
import type { ServerResponse } from "node:http";
import type { Context, MiddlewareHandler } from "hono";
import { limitExceeded } from "./errors.ts";
import type { AnyRoute } from "./route.ts";

export interface AdmissionLimits {
  longPolls: number;
  longPollsPerUser: number;
  requests: number;
  requestsPerUser: number;
}

export type AdmissionKind = "long-poll" | "request";

/** A refused long-poll is asked to come back after 2–4 s; a refused request after 0.5–1 s. */
const RETRY_AFTER_MS: Record<AdmissionKind, number> = { "long-poll": 2_000, request: 500 };

interface UserCounts {
  "long-poll": number;
  request: number;
}

/** One admitted request's place in the counts; `release` is idempotent. */
export interface AdmissionSlot {
  readonly kind: AdmissionKind;
  /** Counts the request against its user's ceiling too, or throws 429 (the slot is then released). */
  forUser(userId: string): void;
  release(): void;
}

export class Admission {
  private readonly inProcess: UserCounts = { "long-poll": 0, request: 0 };
  private readonly perUser = new Map<string, UserCounts>();
  private readonly processLimit: Record<AdmissionKind, number>;
  private readonly userLimit: Record<AdmissionKind, number>;

  constructor(
    limits: AdmissionLimits,
    private readonly random: () => number = Math.random,
  ) {
    this.processLimit = { "long-poll": limits.longPolls, request: limits.requests };
    this.userLimit = { "long-poll": limits.longPollsPerUser, request: limits.requestsPerUser };
  }

  /** Takes a slot of the process's `kind` pool, or throws 429 M_LIMIT_EXCEEDED. */
  enter(kind: AdmissionKind): AdmissionSlot {
    if (this.inProcess[kind] >= this.processLimit[kind]) throw this.refusal(kind);
    this.inProcess[kind]++;
    let user: string | undefined;
    let released = false;
    const release = () => {
      if (released) return;
      released = true;
      this.inProcess[kind]--;
      if (user === undefined) return;
      const counts = this.perUser.get(user);
      if (!counts) return;
      counts[kind]--;
      if (counts["long-poll"] === 0 && counts.request === 0) this.perUser.delete(user);
    };
    return {
      kind,
      release,
      forUser: (userId: string) => {
        if (released || user !== undefined) return;
        let counts = this.perUser.get(userId);
        if ((counts?.[kind] ?? 0) >= this.userLimit[kind]) {
          release();
          throw this.refusal(kind);
        }
        if (!counts) this.perUser.set(userId, (counts = { "long-poll": 0, request: 0 }));
        counts[kind]++;
        user = userId;
      },
    };
  }

  /** What is admitted now, in the process and for one user (tests and metrics). */
  counts(userId?: string): Readonly<UserCounts> {
    if (userId === undefined) return { ...this.inProcess };
    return { ...(this.perUser.get(userId) ?? { "long-poll": 0, request: 0 }) };
  }

  private refusal(kind: AdmissionKind) {
    const base = RETRY_AFTER_MS[kind];
    return limitExceeded(base + Math.floor(this.random() * base));
  }
}

/**
 * The per-route middleware: which pool the request belongs to (none for exempt routes), a slot taken
 * before anything else runs and given back when the handler is done. The route's handler wrapper
 * calls `admissionSlot(c)?.forUser(...)` once it knows the requester.
 */
export function admissionMiddleware(admission: Admission, route: AnyRoute): MiddlewareHandler | undefined {
  if (route.admission === "exempt") return undefined;
  const longPoll = route.longPoll;
  return async (c, next) => {
    const kind: AdmissionKind = longPoll?.(c.req.query()) ? "long-poll" : "request";
    const slot = admission.enter(kind);
    c.set(SLOT, slot);
    if (kind === "long-poll") {
      // A long-poll's client going away gives its slot back at once, whatever the handler does.
      (c.env as { outgoing?: ServerResponse } | undefined)?.outgoing?.once("close", slot.release);
    }
    try {
      await next();
    } finally {
      slot.release();
    }
  };
}

const SLOT = "admissionSlot";

/** The slot the admission middleware took for this request (none on exempt routes). */
export function admissionSlot(c: Context): AdmissionSlot | undefined {
  return c.get(SLOT as never) as AdmissionSlot | undefined;
}

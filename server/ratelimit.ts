// Token-bucket rate limiting. A bucket holds up to `burst` tokens and regains one every `refillMs`;
// each request takes one, and a request that finds the bucket empty is refused with 429
// M_LIMIT_EXCEEDED, `retry_after_ms` and a Retry-After header.
// https://spec.matrix.org/latest/client-server-api/#rate-limiting
//
// Buckets live in this process's memory. With several processes behind a load balancer each one
// limits on its own, so the effective limit is at most (processes × limit): the limits here are a
// guard against brute force and floods, not an exact quota.
import { z } from "zod";
import { limitExceeded } from "./http/errors.ts";

export interface RateLimit {
  burst: number;
  refillMs: number;
}

/** `"5/3s"`: a burst of 5, then one more every 3 seconds. Units: ms, s, m. */
export const rateLimitSchema = z
  .string()
  .regex(/^\s*\d+\s*\/\s*\d+(\.\d+)?\s*(ms|s|m)\s*$/, 'must look like "5/3s" (burst / time to regain one)')
  .transform((text): RateLimit => {
    const m = /^\s*(\d+)\s*\/\s*(\d+(?:\.\d+)?)\s*(ms|s|m)\s*$/.exec(text)!;
    const unit = m[3] === "ms" ? 1 : m[3] === "s" ? 1000 : 60_000;
    return { burst: Math.max(1, Number(m[1])), refillMs: Math.max(1, Number(m[2]) * unit) };
  });

/** The named limits routes refer to (`route({ rateLimit: "login" })`). */
export type RateLimitName = "login" | "registration" | "requests";

interface Bucket {
  tokens: number;
  updated: number;
}

/** Above this many buckets, full ones (which carry no information) are swept away. */
const SWEEP_ABOVE = 10_000;

export class RateLimiter {
  private readonly buckets = new Map<string, Bucket>();

  constructor(
    private readonly limits: Record<RateLimitName, RateLimit> | false,
    private readonly now: () => number,
  ) {}

  /** Takes one token from the bucket of (`name`, `key`), or throws 429 M_LIMIT_EXCEEDED. */
  take(name: RateLimitName, key: string): void {
    if (!this.limits) return;
    const limit = this.limits[name];
    const id = `${name}\u0000${key}`;
    const now = this.now();
    const bucket = this.buckets.get(id) ?? { tokens: limit.burst, updated: now };
    const regained = Math.floor((now - bucket.updated) / limit.refillMs);
    if (regained > 0) {
      bucket.tokens = Math.min(limit.burst, bucket.tokens + regained);
      bucket.updated = bucket.tokens === limit.burst ? now : bucket.updated + regained * limit.refillMs;
    }
    if (bucket.tokens < 1) {
      this.buckets.set(id, bucket);
      throw limitExceeded(Math.max(1, bucket.updated + limit.refillMs - now));
    }
    bucket.tokens--;
    this.buckets.set(id, bucket);
    if (this.buckets.size > SWEEP_ABOVE) this.sweep(now);
  }

  private sweep(now: number): void {
    if (!this.limits) return;
    for (const [id, bucket] of this.buckets) {
      const limit = this.limits[id.slice(0, id.indexOf("\u0000")) as RateLimitName];
      if (bucket.tokens + (now - bucket.updated) / limit.refillMs >= limit.burst) this.buckets.delete(id);
    }
  }
}

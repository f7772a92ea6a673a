import { describe, expect, it } from "vitest";
import { MatrixError } from "./http/errors.ts";
import { RateLimiter, rateLimitSchema } from "./ratelimit.ts";

describe("rate limits", () => {
  it("parse as burst / time to regain one token", () => {
    expect(rateLimitSchema.parse("5/3s")).toEqual({ burst: 5, refillMs: 3000 });
    expect(rateLimitSchema.parse("300/50ms")).toEqual({ burst: 300, refillMs: 50 });
    expect(rateLimitSchema.parse("2/1.5m")).toEqual({ burst: 2, refillMs: 90_000 });
    expect(rateLimitSchema.safeParse("fast").success).toBe(false);
  });

  it("allow a burst, then one request per period, per key", () => {
    let now = 1_000_000;
    const limiter = new RateLimiter(
      { login: { burst: 3, refillMs: 1000 }, registration: { burst: 1, refillMs: 1000 }, requests: { burst: 1, refillMs: 1 } },
      () => now,
    );
    for (let i = 0; i < 3; i++) limiter.take("login", "1.2.3.4");
    let refused: unknown;
    try {
      limiter.take("login", "1.2.3.4");
    } catch (err) {
      refused = err;
    }
    expect(refused).toBeInstanceOf(MatrixError);
    expect((refused as MatrixError).status).toBe(429);
    expect((refused as MatrixError).extra.retry_after_ms).toBe(1000);
    expect((refused as MatrixError).headers["Retry-After"]).toBe("1");
    // Another key has its own bucket.
    limiter.take("login", "5.6.7.8");
    now += 999;
    expect(() => limiter.take("login", "1.2.3.4")).toThrow(MatrixError);
    now += 1;
    limiter.take("login", "1.2.3.4");
    expect(() => limiter.take("login", "1.2.3.4")).toThrow(MatrixError);
    // A long pause refills up to the burst, no further.
    now += 60_000;
    for (let i = 0; i < 3; i++) limiter.take("login", "1.2.3.4");
    expect(() => limiter.take("login", "1.2.3.4")).toThrow(MatrixError);
  });

  it("do nothing when turned off", () => {
    const limiter = new RateLimiter(false, () => 0);
    for (let i = 0; i < 100; i++) limiter.take("login", "x");
  });
});

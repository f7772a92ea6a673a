import pino from "pino";
import { describe, expect, it } from "vitest";
import type { OpenedDatabase } from "../../schema/db.ts";
import { Notifier } from "./notifier.ts";
import { zeroPositions } from "./streams.ts";

// The notifier's in-process behaviour: PGlite's kind, so nothing goes to a real database.
function notifier(): Notifier {
  const database = { kind: "pglite" } as unknown as OpenedDatabase;
  return new Notifier(database, pino({ level: "silent" }));
}

const at = (events: number) => ({ ...zeroPositions(), events });

describe("Notifier", () => {
  it("wakes a waiter when a change reaches one of its rooms, and not for other rooms", async () => {
    const n = notifier();
    await n.start(async () => zeroPositions());
    let woken = false;
    const waiting = n.wait({ userId: "@a:x", rooms: ["!r1:x"], after: at(0), timeoutMs: 5_000 }).then((w) => (woken = w));
    n.publish({ stream: "events", position: 1, rooms: ["!other:x"] });
    await new Promise((r) => setTimeout(r, 10));
    expect(woken).toBe(false);
    n.publish({ stream: "events", position: 2, rooms: ["!r1:x"] });
    await waiting;
    expect(woken).toBe(true);
    expect(n.positions().events).toBe(2);
    expect(n.waiting).toBe(0);
  });

  it("wakes a user's waiters for a change addressed to the user", async () => {
    const n = notifier();
    await n.start(async () => zeroPositions());
    const waiting = n.wait({ userId: "@a:x", rooms: [], after: zeroPositions(), timeoutMs: 5_000 });
    n.publish({ stream: "account_data", position: 7, users: ["@a:x"] });
    expect(await waiting).toBe(true);
  });

  it("returns at once when a watched key changed after the request's upper bound", async () => {
    const n = notifier();
    await n.start(async () => zeroPositions());
    // The change lands between the request computing an empty response at position 0 and waiting.
    n.publish({ stream: "events", position: 1, rooms: ["!r1:x"] });
    const started = Date.now();
    expect(await n.wait({ userId: "@a:x", rooms: ["!r1:x"], after: at(0), timeoutMs: 5_000 })).toBe(true);
    expect(Date.now() - started).toBeLessThan(100);
    // A request whose bound already includes it waits.
    expect(await n.wait({ userId: "@a:x", rooms: ["!r1:x"], after: at(1), timeoutMs: 20 })).toBe(false);
  });

  it("times out, and honours an aborted request", async () => {
    const n = notifier();
    await n.start(async () => zeroPositions());
    expect(await n.wait({ userId: "@a:x", rooms: [], after: zeroPositions(), timeoutMs: 10 })).toBe(false);
    const abort = new AbortController();
    const waiting = n.wait({ userId: "@a:x", rooms: [], after: zeroPositions(), timeoutMs: 5_000, signal: abort.signal });
    abort.abort();
    expect(await waiting).toBe(false);
    expect(n.waiting).toBe(0);
  });

  it("releases every waiter at once on close, and waits no more after", async () => {
    const n = notifier();
    await n.start(async () => zeroPositions());
    const waits = [1, 2, 3].map((i) => n.wait({ userId: `@u${i}:x`, rooms: ["!r:x"], after: zeroPositions(), timeoutMs: 60_000 }));
    const started = Date.now();
    await n.close();
    expect(await Promise.all(waits)).toEqual([false, false, false]);
    expect(Date.now() - started).toBeLessThan(100);
    expect(await n.wait({ userId: "@u1:x", rooms: [], after: zeroPositions(), timeoutMs: 60_000 })).toBe(false);
  });

  it("runs a stream's handler before waking waiters", async () => {
    const n = notifier();
    await n.start(async () => zeroPositions());
    const seen: unknown[] = [];
    n.onChange("typing", (c) => seen.push(c.data));
    const waiting = n.wait({ userId: "@a:x", rooms: ["!r:x"], after: zeroPositions(), timeoutMs: 5_000 }).then(() => [...seen]);
    n.publish({ stream: "typing", position: 1, rooms: ["!r:x"], data: { hello: 1 } });
    expect(await waiting).toEqual([{ hello: 1 }]);
  });

  it("knows up to where it has heard of every room event, across gaps", async () => {
    const n = notifier();
    await n.start(async () => at(10));
    expect(n.coveredEvents()).toBe(10);
    // A batch from another process arrives before the one before it.
    n.publish({ stream: "events", position: 15, first: 13, rooms: ["!a:x"] });
    expect(n.coveredEvents()).toBe(10);
    n.publish({ stream: "events", position: 12, first: 11, rooms: ["!b:x"] });
    expect(n.coveredEvents()).toBe(15);
    expect(n.positions().events).toBe(15);
  });

  it("hands broadcasts to their topic's handlers", async () => {
    const n = notifier();
    await n.start(async () => zeroPositions());
    const got: unknown[] = [];
    n.onBroadcast("key_counts", (d) => got.push(d));
    n.broadcast("key_counts", ["@a:x\u0000DEV"]);
    n.broadcast("other", 1);
    expect(got).toEqual([["@a:x\u0000DEV"]]);
  });
});

describe("Notifier timeouts", () => {
  it("times out many long-polls of many rooms on its one timer, each close to its timeout, and keeps nothing of them", async () => {
    const n = notifier();
    await n.start(async () => zeroPositions());
    const rooms = Array.from({ length: 50 }, (_, i) => `!r${i}:x`);
    const started = performance.now();
    const ends: Promise<number>[] = [];
    for (let i = 0; i < 200; i++) {
      const timeoutMs = 50 + (i % 4) * 50;
      ends.push(n.wait({ userId: `@u${i % 7}:x`, rooms, after: zeroPositions(), timeoutMs }).then((woken) => {
        expect(woken).toBe(false);
        return performance.now() - started - timeoutMs;
      }));
    }
    expect(n.waiting).toBe(200);
    const lateness = await Promise.all(ends);
    expect(Math.min(...lateness)).toBeGreaterThanOrEqual(-1);
    expect(Math.max(...lateness)).toBeLessThan(1_000);
    expect(n.waiting).toBe(0);
    // A change to any of those rooms now wakes nobody and finds no one to wake.
    n.publish({ stream: "events", position: 1, rooms });
    const woken = n.wait({ userId: "@u0:x", rooms: ["!r3:x"], after: at(1), timeoutMs: 5_000 });
    n.publish({ stream: "events", position: 2, rooms: ["!r3:x"] });
    expect(await woken).toBe(true);
    expect(n.waiting).toBe(0);
  });
});

// https://spec.matrix.org/latest/server-server-api/#checks-performed-on-receipt-of-a-pdu (steps 1–3)
import { Writable } from "node:stream";
import type { Worker } from "node:worker_threads";
import pino from "pino";
import { afterEach, describe, expect, it, vi } from "vitest";
import { computeEventId } from "../protocol/event-hashes.ts";
import { signEvent } from "../protocol/event-signing.ts";
import { redactEvent } from "../protocol/redaction.ts";
import { signingKeyFromSeed } from "../protocol/signing.ts";
import { type CheckedPdu, PduChecker, type PduCheckerDeps } from "./pdu-checks.ts";

const VERSION = "10";
const ROOM = "!room:remote.test";
const remoteKey = signingKeyFromSeed(new Uint8Array(32).fill(4), "ed25519:r1");
const otherKey = signingKeyFromSeed(new Uint8Array(32).fill(6), "ed25519:o1");
const TS = 1_800_000_000_000;

/** A message event from @alice:remote.test, signed by remote.test. */
function message(i: number, extra: Record<string, unknown> = {}) {
  return signEvent(
    VERSION,
    {
      type: "m.room.message",
      sender: "@alice:remote.test",
      room_id: ROOM,
      content: { msgtype: "m.text", body: `message ${i}` },
      origin_server_ts: TS + i,
      depth: 10 + i,
      prev_events: ["$prev"],
      auth_events: ["$create", "$power", "$member"],
      ...extra,
    },
    "remote.test",
    remoteKey,
  );
}

/** Serves remote.test's key (valid for events up to `validUpTo`), counting the look-ups. */
function keyStore(validUpTo = Number.MAX_SAFE_INTEGER, onLookup?: () => Promise<void>) {
  const lookups: string[] = [];
  return {
    lookups,
    async verifyKey(server: string, keyId: string, validAt?: number) {
      lookups.push(`${server} ${keyId} ${validAt}`);
      await onLookup?.();
      if (server === "remote.test" && keyId === remoteKey.keyId && (validAt ?? 0) <= validUpTo) return remoteKey.publicKey;
      if (server === "other.test" && keyId === otherKey.keyId) return otherKey.publicKey;
      return undefined;
    },
  };
}

function logs() {
  const lines: Array<Record<string, unknown>> = [];
  const logger = pino(
    { level: "info" },
    new Writable({
      write(chunk: Buffer, _encoding, done) {
        lines.push(JSON.parse(chunk.toString()) as Record<string, unknown>);
        done();
      },
    }),
  );
  return { lines, logger };
}

const checkers: PduChecker[] = [];
function checker(workers: number, keys: PduCheckerDeps["keys"] = keyStore(), logger = pino({ level: "silent" })) {
  const c = new PduChecker({ keys, logger, workers });
  checkers.push(c);
  return c;
}
/** A checker whose workers are running. */
async function pooled(keys: PduCheckerDeps["keys"] = keyStore(), logger = pino({ level: "silent" })) {
  const c = checker(2, keys, logger);
  await poolOf(c).whenReady();
  return c;
}
function poolOf(c: PduChecker) {
  return (c as unknown as { pool: { whenReady(): Promise<void>; check(...args: unknown[]): Promise<unknown>; slots: Array<{ worker: Worker } | undefined> } }).pool;
}
afterEach(async () => {
  await Promise.all(checkers.splice(0).map((c) => c.close()));
});

/** A mix of good and bad PDUs, so results out of order would show. */
function mixedBatch(n: number): unknown[] {
  return Array.from({ length: n }, (_, i) => {
    const pdu = message(i);
    switch (i % 7) {
      case 3:
        return { ...pdu, content: { ...pdu.content, body: "tampered" } }; // content hash fails: redacted
      case 5:
        return { ...pdu, depth: pdu.depth + 1 }; // signature fails
      case 6:
        return { ...pdu, depth: -1 }; // format fails
      default:
        return pdu;
    }
  });
}

describe("checking received PDUs", () => {
  it("passes good PDUs with their event IDs, in input order", async () => {
    const pdus = [message(1), message(2), message(3)];
    const results = await checker(0).check(VERSION, pdus);
    expect(results.map((r) => r.ok)).toEqual([true, true, true]);
    results.forEach((r, i) => {
      const eventId = computeEventId(VERSION, pdus[i]!);
      expect(r).toEqual({ ok: true, eventId, redacted: false, event: { ...pdus[i], event_id: eventId } });
    });
  });

  it("ignores a top-level event_id: the ID is computed", async () => {
    const pdu = message(1);
    const [result] = await checker(0).check(VERSION, [{ ...pdu, event_id: "$forged" }]);
    expect(result).toMatchObject({ ok: true, eventId: computeEventId(VERSION, pdu) });
  });

  it("refuses a PDU whose signature does not verify", async () => {
    const pdu = { ...message(1), depth: 99 };
    const [result] = await checker(0).check(VERSION, [pdu]);
    expect(result).toEqual({ ok: false, eventId: computeEventId(VERSION, pdu), reason: "signature ed25519:r1 from remote.test does not verify" });
  });

  it("refuses a PDU not signed by its sender's server, even if another server signed it", async () => {
    const pdu = signEvent(VERSION, { ...message(1), signatures: {} }, "other.test", otherKey);
    const [result] = await checker(0).check(VERSION, [pdu]);
    expect(result).toMatchObject({ ok: false, reason: "no signature from remote.test" });
  });

  it("refuses a PDU signed with a key that cannot be found", async () => {
    const pdu = signEvent(VERSION, { ...message(1), signatures: {} }, "remote.test", { ...otherKey, keyId: "ed25519:unknown" });
    const [result] = await checker(0).check(VERSION, [pdu]);
    expect(result).toMatchObject({ ok: false, reason: "no ed25519 signature from remote.test with a known key" });
  });

  it("refuses a malformed PDU with the reason, under its given or computed event ID", async () => {
    const noSender = { ...message(1), sender: undefined };
    const results = await checker(0).check(VERSION, [noSender, { ...message(2), depth: -1, event_id: "$given" }, "not an object", null]);
    expect(results[0]).toMatchObject({ ok: false, reason: "invalid PDU: sender is required" });
    expect(results[0]!.eventId).toMatch(/^\$/);
    expect(results[1]).toMatchObject({ ok: false, eventId: "$given", reason: expect.stringMatching(/^invalid PDU: depth/) });
    expect(results[2]).toEqual({ ok: false, eventId: undefined, reason: "invalid PDU: not a JSON object" });
    expect(results[3]).toEqual({ ok: false, eventId: undefined, reason: "invalid PDU: not a JSON object" });
  });

  it("gives the redacted form of a PDU whose content hash does not match", async () => {
    const signed = message(1);
    const tampered = { ...signed, content: { ...signed.content, body: "not what was signed" } };
    const [result] = await checker(0).check(VERSION, [tampered]);
    const eventId = computeEventId(VERSION, signed);
    expect(result).toEqual({ ok: true, eventId, redacted: true, event: { ...redactEvent(VERSION, signed), event_id: eventId } });
    expect((result as Extract<CheckedPdu, { ok: true }>).event.content).toEqual({});
  });

  it("looks each signing key up once for a batch", async () => {
    const keys = keyStore();
    await checker(0, keys).check(VERSION, Array.from({ length: 12 }, (_, i) => message(i)));
    expect(keys.lookups).toEqual([`remote.test ${remoteKey.keyId} ${TS + 11}`]);
  });

  it("uses a key only for events before it stopped being valid", async () => {
    const keys = keyStore(TS + 5);
    const results = await checker(0, keys).check(VERSION, Array.from({ length: 12 }, (_, i) => message(i)));
    expect(results.map((r) => r.ok)).toEqual([true, true, true, true, true, true, false, false, false, false, false, false]);
    expect(results[6]).toMatchObject({ reason: "no ed25519 signature from remote.test with a known key" });
    expect(keys.lookups.length).toBeLessThanOrEqual(5); // the latest timestamp, then a binary search
  });

  it("does not look up keys for a malformed PDU", async () => {
    const keys = keyStore();
    await checker(0, keys).check(VERSION, [{ ...message(1), depth: "deep" }]);
    expect(keys.lookups).toEqual([]);
  });
});

describe("checking large batches on worker threads", () => {
  it("gives the same results as inline, in order, for 200 PDUs", async () => {
    const { lines, logger } = logs();
    const batch = mixedBatch(200);
    const inline = await checker(0).check(VERSION, batch);
    const threaded = await checker(2, keyStore(), logger).check(VERSION, batch);
    expect(threaded).toEqual(inline);
    expect(lines).toEqual([]); // no worker failed: they checked it all
    expect(inline.filter((r) => r.ok && r.redacted)).toHaveLength(29);
    expect(inline.filter((r) => !r.ok)).toHaveLength(56);
  });

  it("sends each chunk to a worker once when the keys it used last are still the keys", async () => {
    const c = await pooled();
    const requests = vi.spyOn(poolOf(c), "check");
    const batch = mixedBatch(50);
    const expected = await checker(0).check(VERSION, batch);
    expect(await c.check(VERSION, batch)).toEqual(expected);
    expect(requests).toHaveBeenCalledTimes(4); // no keys known yet: checked again with the keys looked up
    requests.mockClear();
    expect(await c.check(VERSION, batch)).toEqual(expected);
    expect(requests).toHaveBeenCalledTimes(2);
  });

  it("checks a transaction inline while the workers start, then on them", async () => {
    const c = checker(2);
    const requests = vi.spyOn(poolOf(c), "check");
    const batch = mixedBatch(50);
    const expected = await checker(0).check(VERSION, batch);
    expect(await c.check(VERSION, batch)).toEqual(expected);
    expect(requests).not.toHaveBeenCalled();
    expect(poolOf(c).slots.every((s) => s !== undefined)).toBe(true);
    await poolOf(c).whenReady();
    expect(await c.check(VERSION, batch)).toEqual(expected);
    expect(requests).toHaveBeenCalled();
  });

  it("checks the chunks of a worker that died inline, and starts a new worker afterwards", async () => {
    const { lines, logger } = logs();
    const c = checker(2, keyStore(), logger);
    const batch = mixedBatch(200);
    const expected = await checker(0).check(VERSION, batch);
    expect(await c.check(VERSION, batch)).toEqual(expected); // the workers are running now
    const slots = (c as unknown as { pool: { slots: Array<{ worker: Worker } | undefined> } }).pool.slots;
    expect(slots.every((s) => s !== undefined)).toBe(true);
    const first = slots[0]!.worker;
    void first.terminate(); // it dies with the next chunk sent to it
    expect(await c.check(VERSION, batch)).toEqual(expected);
    expect(lines.some((l) => l.msg === "a PDU check worker failed; checking its PDUs inline")).toBe(true);
    expect(await c.check(VERSION, batch)).toEqual(expected);
    expect(slots[0]?.worker).toBeDefined();
    expect(slots[0]?.worker).not.toBe(first);
  });

  it("gives the right results when a worker dies while the keys are looked up", async () => {
    let kill = false;
    const c: PduChecker = checker(
      2,
      keyStore(Number.MAX_SAFE_INTEGER, async () => {
        if (!kill) return;
        kill = false;
        const slots = (c as unknown as { pool: { slots: Array<{ worker: Worker } | undefined> } }).pool.slots;
        await slots[1]!.worker.terminate();
        await new Promise((resolve) => setImmediate(resolve)); // the pool hears of the exit
      }),
    );
    const batch = mixedBatch(200);
    const expected = await checker(0).check(VERSION, batch);
    kill = true;
    expect(await c.check(VERSION, batch)).toEqual(expected);
    expect(kill).toBe(false);
    expect(await c.check(VERSION, batch)).toEqual(expected);
  });

  it("checks again with the keys looked up when a key is no longer valid for some events", async () => {
    let validUpTo = Number.MAX_SAFE_INTEGER;
    const keys = keyStore();
    const c = await pooled({
      verifyKey: (server: string, keyId: string, validAt?: number) => ((validAt ?? 0) <= validUpTo ? keys.verifyKey(server, keyId, validAt) : Promise.resolve(undefined)),
    });
    const batch = Array.from({ length: 40 }, (_, i) => message(i));
    expect((await c.check(VERSION, batch)).every((r) => r.ok)).toBe(true);
    validUpTo = TS + 5;
    const results = await c.check(VERSION, batch);
    expect(results.map((r) => r.ok)).toEqual(batch.map((_, i) => i <= 5));
    expect(results).toEqual(await checker(0, keyStore(TS + 5)).check(VERSION, batch));
  });

  it("checks again with the keys looked up when a server's key changed under the same key ID", async () => {
    const newKey = signingKeyFromSeed(new Uint8Array(32).fill(8), remoteKey.keyId);
    let current = remoteKey;
    const c = await pooled({ verifyKey: async (server: string, keyId: string) => (server === "remote.test" && keyId === current.keyId ? current.publicKey : undefined) });
    const signedWith = (key: typeof remoteKey) => Array.from({ length: 40 }, (_, i) => signEvent(VERSION, { ...message(i), signatures: {} }, "remote.test", key));
    expect((await c.check(VERSION, signedWith(remoteKey))).every((r) => r.ok)).toBe(true);
    current = newKey;
    expect((await c.check(VERSION, signedWith(newKey))).every((r) => r.ok)).toBe(true);
    const stale = await c.check(VERSION, signedWith(remoteKey));
    expect(stale.every((r) => !r.ok && r.reason === "signature ed25519:r1 from remote.test does not verify")).toBe(true);
  });

  it("stops workers idle for five minutes, and starts them again for the next batch", async () => {
    const c = await pooled();
    const slots = poolOf(c).slots;
    const batch = mixedBatch(40);
    const expected = await checker(0).check(VERSION, batch);
    vi.useFakeTimers({ toFake: ["setTimeout", "clearTimeout"] });
    try {
      expect(await c.check(VERSION, batch)).toEqual(expected);
      expect(slots.every((s) => s !== undefined)).toBe(true);
      vi.advanceTimersByTime(299_000);
      expect(slots.every((s) => s !== undefined)).toBe(true);
      vi.advanceTimersByTime(1_000);
      expect(slots.every((s) => s === undefined)).toBe(true);
    } finally {
      vi.useRealTimers();
    }
    expect(await c.check(VERSION, batch)).toEqual(expected); // inline while they start again
    expect(slots.every((s) => s !== undefined)).toBe(true);
  });

  it("checks inline after close", async () => {
    const c = checker(2);
    const batch = mixedBatch(40);
    const expected = await checker(0).check(VERSION, batch);
    await c.check(VERSION, batch);
    await c.close();
    expect(await c.check(VERSION, batch)).toEqual(expected);
  });
});

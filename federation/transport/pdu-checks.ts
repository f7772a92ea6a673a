// Steps 1–3 of the checks on receipt of a PDU, for every PDU another server gives us: in `/send`
// transactions, and the state and auth chain of a `send_join` answer, missing events and backfill.
// https://spec.matrix.org/latest/server-server-api/#checks-performed-on-receipt-of-a-pdu
//
// Format is checked first, on the calling thread: only a well-formed PDU may make us contact the
// servers that must sign it. Their verify keys are then fetched once per (server, key ID) for the
// whole batch. Signatures, event IDs and content hashes are pure work: a batch of fewer than
// INLINE_BELOW PDUs is checked inline; a larger one (a join brings thousands) is split over a pool
// of worker threads, so the event loop keeps answering requests while it is verified. Ed25519
// verification is most of that work (ARCHITECTURE.md: about 10,000 verifications/s per core).
//
// The workers run the same TypeScript as this module. From the sources (tsx: `bin/parley.js`,
// benchmarks, vitest) a worker starts at `pdu-checks-worker.mjs`, which registers tsx's loader
// (workers do not inherit a loader registered by `register()`) and imports `pdu-checks-worker.ts`;
// from the bundle (`npm start`, Docker), at `dist/pdu-checks-worker.js`, which `bin/build.mjs`
// builds beside `dist/parley.js`.

import os from "node:os";
import { Worker } from "node:worker_threads";
import type { Logger } from "pino";
import { computeEventId } from "../protocol/event-hashes.ts";
import { checkValidatedPdu, serversThatMustSign } from "../protocol/event-signing.ts";
import { type Pdu, type RoomEvent, validatePdu } from "../protocol/pdu.ts";
import { redactEvent } from "../protocol/redaction.ts";
import type { ServerKeyStore } from "./server-keys.ts";

export type CheckedPdu =
  | {
      ok: true;
      eventId: string;
      /** The PDU with its event_id; its redacted form when the content hash did not match (step 3). */
      event: RoomEvent;
      redacted: boolean;
    }
  | { ok: false; eventId: string | undefined; reason: string };

export interface PduCheckerDeps {
  /** Only `verifyKey` is used (benchmarks and tests pass a stub). */
  keys: Pick<ServerKeyStore, "verifyKey">;
  logger: Logger;
  /** Worker threads for large batches; default min(2, available cores). 0 checks everything inline. */
  workers?: number;
}

/** Batches smaller than this are checked on the calling thread: a worker round trip costs more. */
export const INLINE_BELOW = 16;
/** The most PDUs sent to a worker at once, so concurrent batches share the pool fairly. */
const MAX_CHUNK = 250;
/** At most this many key lookups (each possibly a fetch from another server) at once per batch. */
const KEY_FETCH_CONCURRENCY = 8;
/** Key IDs looked at per server per PDU: more cannot make a PDU valid, only make us fetch more. */
const KEY_IDS_PER_SERVER = 5;

/**
 * The verify keys of a batch by "server keyId": the key, and the latest `origin_server_ts` of the
 * batch at which it may be used. A key's validity is a bound on the timestamp (a current key until
 * its `valid_until_ts`, an old one before its `expired_ts`), so it is valid at every earlier one.
 */
export type BatchKeys = Map<string, { key: Uint8Array; validUpTo: number }>;

/** What verifying one well-formed PDU gives; crosses the thread boundary, so it holds no PDU. */
export type VerifiedPdu = { ok: true; eventId: string; redacted: boolean } | { ok: false; eventId: string | undefined; reason: string };

/** Steps 2–3 for PDUs `validatePdu` accepted, with the batch's keys. Pure: runs in the workers too. */
export function verifyValidatedPdus(roomVersion: string, pdus: readonly Pdu[], keys: BatchKeys): VerifiedPdu[] {
  const lookup = (server: string, keyId: string, ts: number) => {
    const found = keys.get(`${server} ${keyId}`);
    return found !== undefined && ts <= found.validUpTo ? found.key : undefined;
  };
  return pdus.map((pdu): VerifiedPdu => {
    const check = checkValidatedPdu(roomVersion, pdu, lookup);
    if (check.ok) return { ok: true, eventId: check.eventId, redacted: check.redacted };
    return { ok: false, eventId: safeEventId(roomVersion, pdu), reason: check.reason };
  });
}

export class PduChecker {
  private readonly pool: WorkerPool | undefined;

  constructor(private readonly deps: PduCheckerDeps) {
    const size = deps.workers ?? Math.min(2, os.availableParallelism());
    this.pool = size > 0 ? new WorkerPool(size, deps.logger) : undefined;
  }

  /**
   * Steps 1–3 of "checks performed on receipt of a PDU" for each PDU of a room of `roomVersion`
   * (a supported one), results in input order. Never throws for a bad PDU: it is refused with a reason.
   */
  async check(roomVersion: string, pdus: readonly unknown[]): Promise<CheckedPdu[]> {
    const results: CheckedPdu[] = new Array(pdus.length);
    const valid: Pdu[] = [];
    const validAt: number[] = [];
    pdus.forEach((value, i) => {
      if (typeof value !== "object" || value === null || Array.isArray(value)) {
        results[i] = { ok: false, eventId: undefined, reason: "invalid PDU: not a JSON object" };
        return;
      }
      // A top-level `event_id` is not part of v4+ PDUs: left out before the format check, as the core does.
      const { event_id: givenId, ...rest } = value as Record<string, unknown>;
      const format = validatePdu(roomVersion, rest);
      if (!format.ok) {
        const eventId = typeof givenId === "string" ? givenId : safeEventId(roomVersion, rest);
        results[i] = { ok: false, eventId, reason: `invalid PDU: ${format.reason}` };
        return;
      }
      valid.push(format.value);
      validAt.push(i);
    });
    if (valid.length === 0) return results;

    const keys = await this.fetchKeys(roomVersion, valid);
    const verified = await this.verify(roomVersion, valid, keys);
    verified.forEach((v, j) => {
      const i = validAt[j]!;
      if (!v.ok) {
        const givenId = (pdus[i] as { event_id?: unknown }).event_id;
        results[i] = { ok: false, eventId: typeof givenId === "string" ? givenId : v.eventId, reason: v.reason };
        return;
      }
      const pdu = valid[j]!;
      const form = v.redacted ? redactEvent(roomVersion, pdu) : pdu;
      results[i] = { ok: true, eventId: v.eventId, event: { ...form, event_id: v.eventId } as RoomEvent, redacted: v.redacted };
    });
    return results;
  }

  /** Terminates the workers. Later checks run inline. */
  async close(): Promise<void> {
    await this.pool?.close();
  }

  /**
   * The keys of the servers that must sign each PDU (only those: a PDU naming other servers must
   * not make us contact them), for the ed25519 key IDs their signatures name: each (server, key ID)
   * looked up once, at the batch's latest timestamp that uses it, then, if the key is not valid
   * that late, at earlier ones (a binary search: validity only ends). A key we cannot get is left
   * out: the signature check then says which server's signature is missing.
   */
  private async fetchKeys(roomVersion: string, pdus: readonly Pdu[]): Promise<BatchKeys> {
    const wanted = new Map<string, { server: string; keyId: string; timestamps: Set<number> }>();
    for (const pdu of pdus) {
      const signatures = pdu.signatures;
      for (const server of serversThatMustSign(roomVersion, pdu)) {
        const byKey = Object.hasOwn(signatures, server) ? signatures[server] : undefined;
        if (typeof byKey !== "object" || byKey === null) continue;
        for (const keyId of Object.keys(byKey).slice(0, KEY_IDS_PER_SERVER)) {
          if (!keyId.startsWith("ed25519:")) continue;
          const id = `${server} ${keyId}`;
          let entry = wanted.get(id);
          if (!entry) wanted.set(id, (entry = { server, keyId, timestamps: new Set() }));
          entry.timestamps.add(pdu.origin_server_ts);
        }
      }
    }
    const keys: BatchKeys = new Map();
    const lookUp = async (id: string, { server, keyId, timestamps }: { server: string; keyId: string; timestamps: Set<number> }) => {
      const latestFirst = [...timestamps].sort((a, b) => b - a);
      const at = (ts: number) => this.deps.keys.verifyKey(server, keyId, ts).catch(() => undefined);
      const latest = await at(latestFirst[0]!);
      const found = latest ? { key: latest, ts: latestFirst[0]! } : await latestValid(at, latestFirst, 1, latestFirst.length - 1);
      if (found) keys.set(id, { key: found.key, validUpTo: found.ts });
    };
    await runBounded([...wanted], KEY_FETCH_CONCURRENCY, ([id, entry]) => lookUp(id, entry));
    return keys;
  }

  private async verify(roomVersion: string, pdus: Pdu[], keys: BatchKeys): Promise<VerifiedPdu[]> {
    if (!this.pool || this.pool.closed || pdus.length < INLINE_BELOW) return verifyValidatedPdus(roomVersion, pdus, keys);
    const chunkSize = Math.min(MAX_CHUNK, Math.ceil(pdus.length / this.pool.size));
    const chunks: Pdu[][] = [];
    for (let i = 0; i < pdus.length; i += chunkSize) chunks.push(pdus.slice(i, i + chunkSize));
    const done = await Promise.all(
      chunks.map((chunk) =>
        this.pool!.run({ roomVersion, pdus: chunk, keys }).catch((err: unknown) => {
          // A worker that died (or could not start) fails only its chunks: checked here instead.
          this.deps.logger.warn({ err: String(err), pdus: chunk.length }, "a PDU check worker failed; checking its PDUs inline");
          return verifyValidatedPdus(roomVersion, chunk, keys);
        }),
      ),
    );
    return done.flat();
  }
}

/** The event ID to answer a refused PDU under, when one can be computed. */
function safeEventId(roomVersion: string, pdu: object): string | undefined {
  try {
    return computeEventId(roomVersion, pdu);
  } catch {
    return undefined;
  }
}

/**
 * The latest timestamp in latestFirst[lo..hi] (sorted latest first) at which `at` finds the key,
 * by binary search: a key valid at some timestamp is valid at every earlier one.
 */
async function latestValid(
  at: (ts: number) => Promise<Uint8Array | undefined>,
  latestFirst: readonly number[],
  lo: number,
  hi: number,
): Promise<{ key: Uint8Array; ts: number } | undefined> {
  let best: { key: Uint8Array; ts: number } | undefined;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    const found = await at(latestFirst[mid]!);
    if (found) {
      best = { key: found, ts: latestFirst[mid]! };
      hi = mid - 1;
    } else {
      lo = mid + 1;
    }
  }
  return best;
}

async function runBounded<T>(items: readonly T[], concurrency: number, work: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const runner = async () => {
    while (next < items.length) await work(items[next++]!);
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, items.length) }, runner));
}

/** A request to a worker and its answer (pdu-checks-worker.ts). */
export interface WorkerTask {
  id: number;
  roomVersion: string;
  pdus: Pdu[];
  keys: BatchKeys;
}
export type WorkerAnswer = { id: number; results: VerifiedPdu[] } | { id: number; error: string };

interface Slot {
  worker: Worker;
  pending: Map<number, { pdus: number; resolve(results: VerifiedPdu[]): void; reject(err: Error): void }>;
  /** PDUs sent and not yet answered: new chunks go to the least loaded worker. */
  load: number;
}

const fromSources = import.meta.url.endsWith(".ts");
const WORKER_URL = new URL(fromSources ? "./pdu-checks-worker.mjs" : "./pdu-checks-worker.js", import.meta.url);

/**
 * Worker threads started when first needed, unref'd while idle (an idle pool never keeps the
 * process alive), replaced when one dies: its unanswered tasks are rejected, and their caller
 * checks them inline.
 */
class WorkerPool {
  private readonly slots: Array<Slot | undefined>;
  private nextId = 0;
  closed = false;

  constructor(
    readonly size: number,
    private readonly logger: Logger,
  ) {
    this.slots = new Array(size).fill(undefined);
  }

  run(task: Omit<WorkerTask, "id">): Promise<VerifiedPdu[]> {
    if (this.closed) return Promise.reject(new Error("the PDU check workers are closed"));
    let index = 0;
    let least = Number.POSITIVE_INFINITY;
    this.slots.forEach((slot, i) => {
      const load = slot?.load ?? 0;
      if (load < least) [index, least] = [i, load];
    });
    const slot = this.slots[index] ?? this.start(index);
    const id = this.nextId++;
    return new Promise<VerifiedPdu[]>((resolve, reject) => {
      slot.pending.set(id, { pdus: task.pdus.length, resolve, reject });
      slot.load += task.pdus.length;
      if (slot.pending.size === 1) slot.worker.ref();
      slot.worker.postMessage({ id, ...task } satisfies WorkerTask);
    });
  }

  async close(): Promise<void> {
    this.closed = true;
    const slots = this.slots.splice(0, this.slots.length, ...new Array<undefined>(this.size).fill(undefined));
    await Promise.all(slots.map((slot) => slot?.worker.terminate()));
  }

  private start(index: number): Slot {
    const worker = new Worker(WORKER_URL);
    worker.unref();
    const slot: Slot = { worker, pending: new Map(), load: 0 };
    this.slots[index] = slot;
    const fail = (err: Error) => {
      if (this.slots[index] === slot) this.slots[index] = undefined;
      for (const task of slot.pending.values()) task.reject(err);
      slot.pending.clear();
      slot.load = 0;
    };
    worker.on("message", (answer: WorkerAnswer) => {
      const task = slot.pending.get(answer.id);
      if (!task) return;
      slot.pending.delete(answer.id);
      slot.load -= task.pdus;
      if (slot.pending.size === 0) worker.unref();
      if ("error" in answer) task.reject(new Error(answer.error));
      else task.resolve(answer.results);
    });
    worker.on("error", (err) => {
      this.logger.warn({ err }, "a PDU check worker crashed");
      fail(err);
    });
    worker.on("exit", (code) => fail(new Error(`the PDU check worker exited (code ${code})`)));
    return slot;
  }
}

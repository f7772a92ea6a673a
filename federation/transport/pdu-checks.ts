// Steps 1–3 of the checks on receipt of a PDU, for every PDU another server gives us: in `/send`
// transactions, and the state and auth chain of a `send_join` answer, missing events and backfill.
// https://spec.matrix.org/latest/server-server-api/#checks-performed-on-receipt-of-a-pdu
//
// Format is checked first: only a well-formed PDU may make us contact the servers that must sign
// it. Their verify keys are then fetched once per (server, key ID) for the whole batch. Then
// signatures, event IDs and content hashes. All but the key fetching is pure work: a batch of fewer
// than INLINE_BELOW PDUs is checked inline; a larger one (a transaction of 50, a join's thousands)
// is split over a pool of worker threads, so the event loop keeps answering requests meanwhile
// (while the workers start, a transaction's worth is still checked inline rather than wait).
// Ed25519 verification is most of that work (ARCHITECTURE.md: about 10,000 verifications/s per core).
//
// One round trip to a worker per chunk: the worker checks the formats and, speculatively, the
// signatures, with the keys this checker last used for the servers the chunk names (their keys
// rarely change). The keys the valid PDUs need are then looked up as above, and a chunk's results
// stand only if every key lookup its PDUs' checks made gives the same answer with the keys just
// looked up; otherwise the chunk is checked again with those (a chunk naming no key used before,
// such as a join's first batch, gets its formats checked only, then its check). So what is decided
// is exactly what checking in order would decide; the speculation only saves a second round trip.
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
import { checkValidatedPdu, keyValidityTime, serversThatMustSign } from "../protocol/event-signing.ts";
import { type Pdu, type RoomEvent, pduOf, validatePdu } from "../protocol/pdu.ts";
import { redactEvent } from "../protocol/redaction.ts";
import type { ServerKeyStore } from "./server-keys.ts";
import { unsafeTestBreak } from "../../server/unsafe-test-break.ts";

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
/** Batches up to this size (a transaction's 50) are checked inline while the workers start; larger ones wait for them. */
const INLINE_WHILE_STARTING = 64;
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

/** Step 1 for one PDU, as it crosses the thread boundary: refused, or the keys its check needs. */
export type FormatChecked =
  | {
      ok: true;
      /** The servers that must sign it, each with the ed25519 key IDs of its signatures on the PDU. */
      signers: Array<[server: string, keyIds: string[]]>;
      originServerTs: number;
    }
  | { ok: false; eventId: string | undefined; reason: string };

/** What verifying one well-formed PDU gives; crosses the thread boundary, so it holds no PDU. */
export type VerifiedPdu = { ok: true; eventId: string; redacted: boolean } | { ok: false; eventId: string | undefined; reason: string };

/**
 * Step 1 for each PDU (a top-level `event_id`, not part of v4+ PDUs, is left out first, as the core
 * does): the formats in input order, and the valid PDUs in order. Pure: runs in the workers too.
 */
export function checkFormats(roomVersion: string, values: readonly unknown[]): { formats: FormatChecked[]; valid: Pdu[] } {
  const valid: Pdu[] = [];
  const formats = values.map((value): FormatChecked => {
    if (typeof value !== "object" || value === null || Array.isArray(value)) {
      return { ok: false, eventId: undefined, reason: "invalid PDU: not a JSON object" };
    }
    const givenId = (value as Record<string, unknown>).event_id;
    const rest = pduOf(roomVersion, value);
    let format = validatePdu(roomVersion, rest);
    if (!format.ok && unsafeTestBreak("skip-pdu-size-check") && /bytes of canonical JSON/.test(format.reason)) format = { ok: true, value: rest as Pdu };
    if (!format.ok) {
      const eventId = typeof givenId === "string" ? givenId : safeEventId(roomVersion, rest);
      return { ok: false, eventId, reason: `invalid PDU: ${format.reason}` };
    }
    const pdu = format.value;
    valid.push(pdu);
    const signers: Array<[string, string[]]> = [];
    for (const server of serversThatMustSign(roomVersion, pdu)) {
      const byKey = Object.hasOwn(pdu.signatures, server) ? pdu.signatures[server] : undefined;
      if (typeof byKey !== "object" || byKey === null) continue;
      signers.push([server, Object.keys(byKey).filter((keyId) => keyId.startsWith("ed25519:"))]);
    }
    return { ok: true, signers, originServerTs: keyValidityTime(roomVersion, pdu) };
  });
  return { formats, valid };
}

/** Steps 2–3 for PDUs `validatePdu` accepted, with the batch's keys. Pure: runs in the workers too. */
export function verifyValidatedPdus(roomVersion: string, pdus: readonly Pdu[], keys: BatchKeys): VerifiedPdu[] {
  const lookup = (server: string, keyId: string, ts: number) => {
    const found = keys.get(`${server} ${keyId}`);
    return found !== undefined && ts <= found.validUpTo ? found.key : undefined;
  };
  return pdus.map((pdu): VerifiedPdu => {
    const check = checkValidatedPdu(roomVersion, pdu, lookup);
    if (check.ok && check.redacted && unsafeTestBreak("skip-content-hash-check")) return { ok: true, eventId: check.eventId, redacted: false };
    if (!check.ok && unsafeTestBreak("skip-pdu-signature-check")) return { ok: true, eventId: safeEventId(roomVersion, pdu) ?? "", redacted: false };
    if (check.ok) return { ok: true, eventId: check.eventId, redacted: check.redacted };
    return { ok: false, eventId: safeEventId(roomVersion, pdu), reason: check.reason };
  });
}

/** A chunk of a batch, checked: the formats in input order, the verifications of its valid PDUs in order (none if not asked). */
interface CheckedChunk {
  formats: FormatChecked[];
  verified: VerifiedPdu[];
}

/** The keys a checker used last, by "server keyId", for its next guesses. */
const KEYS_REMEMBERED = 1000;

export class PduChecker {
  private readonly pool: WorkerPool | undefined;
  private readonly keysUsed = new Map<string, Uint8Array>();

  constructor(private readonly deps: PduCheckerDeps) {
    const size = deps.workers ?? Math.min(2, os.availableParallelism());
    this.pool = size > 0 ? new WorkerPool(size, deps.logger) : undefined;
  }

  /**
   * Steps 1–3 of "checks performed on receipt of a PDU" for each PDU of a room of `roomVersion`
   * (a supported one), results in input order. Never throws for a bad PDU: it is refused with a reason.
   */
  async check(roomVersion: string, pdus: readonly unknown[]): Promise<CheckedPdu[]> {
    // While the workers start (hundreds of ms), a transaction's worth is checked here rather than wait.
    const usePool =
      this.pool !== undefined && !this.pool.closed && pdus.length >= INLINE_BELOW && (this.pool.warm() || pdus.length > INLINE_WHILE_STARTING);
    const pool = usePool ? this.pool : undefined;
    if (!pool) {
      const { formats, valid } = checkFormats(roomVersion, pdus);
      const keys = await this.fetchKeys(formats);
      return assemble(roomVersion, [pdus], [{ formats, verified: verifyValidatedPdus(roomVersion, valid, keys) }]);
    }
    const chunkSize = Math.min(MAX_CHUNK, Math.ceil(pdus.length / pool.size));
    const slices: Array<readonly unknown[]> = [];
    for (let i = 0; i < pdus.length; i += chunkSize) slices.push(pdus.slice(i, i + chunkSize));
    const guesses = slices.map((slice) => this.guessKeys(slice));
    // Without a single guessed key, verifying would only be done again: formats only, then.
    const speculative = await Promise.all(slices.map((slice, c) => this.onWorker(pool, roomVersion, slice, guesses[c]!, guesses[c]!.size > 0)));
    const keys = await this.fetchKeys(speculative.flatMap((chunk) => chunk.formats));
    const chunks = await Promise.all(
      speculative.map((chunk, c) =>
        guesses[c]!.size > 0 && sameLookups(chunk.formats, guesses[c]!, keys) ? chunk : this.onWorker(pool, roomVersion, slices[c]!, keys, true),
      ),
    );
    return assemble(roomVersion, slices, chunks);
  }

  /**
   * A chunk checked on a worker with `keys` (its formats only unless `verify`); on this thread if
   * the worker fails (a worker that dies fails only the chunks it held).
   */
  private async onWorker(pool: WorkerPool, roomVersion: string, values: readonly unknown[], keys: BatchKeys, verify: boolean): Promise<CheckedChunk> {
    try {
      return await pool.check(roomVersion, values, keys, verify);
    } catch (err) {
      this.deps.logger.warn({ err: String(err), pdus: values.length }, "a PDU check worker failed; checking its PDUs inline");
      const { formats, valid } = checkFormats(roomVersion, values);
      return { formats, verified: verify ? verifyValidatedPdus(roomVersion, valid, keys) : [] };
    }
  }

  /**
   * The keys last used for the (server, key ID) pairs the chunk's signatures name, as if valid at
   * any time: read from the PDUs unchecked (a guess contacts nobody, and decides nothing alone).
   */
  private guessKeys(values: readonly unknown[]): BatchKeys {
    const guess: BatchKeys = new Map();
    if (this.keysUsed.size === 0) return guess;
    for (const value of values) {
      const signatures = (value as { signatures?: unknown } | null)?.signatures;
      if (typeof signatures !== "object" || signatures === null) continue;
      for (const server of firstKeys(signatures, 4)) {
        const byKey = (signatures as Record<string, unknown>)[server];
        if (typeof byKey !== "object" || byKey === null) continue;
        for (const keyId of firstKeys(byKey, KEY_IDS_PER_SERVER)) {
          const id = `${server} ${keyId}`;
          const key = this.keysUsed.get(id);
          if (key) guess.set(id, { key, validUpTo: Number.MAX_SAFE_INTEGER });
        }
      }
    }
    return guess;
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
  private async fetchKeys(formats: readonly FormatChecked[]): Promise<BatchKeys> {
    const wanted = new Map<string, { server: string; keyId: string; timestamps: Set<number> }>();
    for (const format of formats) {
      if (!format.ok) continue;
      for (const [server, keyIds] of format.signers) {
        for (const keyId of keyIds.slice(0, KEY_IDS_PER_SERVER)) {
          const id = `${server} ${keyId}`;
          let entry = wanted.get(id);
          if (!entry) wanted.set(id, (entry = { server, keyId, timestamps: new Set() }));
          entry.timestamps.add(format.originServerTs);
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
    for (const [id, { key }] of keys) {
      this.keysUsed.delete(id);
      this.keysUsed.set(id, key);
      if (this.keysUsed.size > KEYS_REMEMBERED) this.keysUsed.delete(this.keysUsed.keys().next().value!);
    }
    return keys;
  }
}

/** The first `n` own keys of an object not yet checked (however many it has). */
function firstKeys(o: object, n: number): string[] {
  const keys: string[] = [];
  for (const key in o) {
    if (keys.length >= n) break;
    if (Object.hasOwn(o, key)) keys.push(key);
  }
  return keys;
}

/**
 * Whether checking the chunk's valid PDUs with `guess` looked up exactly the keys that `keys`
 * gives, for every key ID of every server that must sign each (the only lookups a check makes):
 * then its results are those a check with `keys` gives.
 */
function sameLookups(formats: readonly FormatChecked[], guess: BatchKeys, keys: BatchKeys): boolean {
  const at = (batch: BatchKeys, id: string, ts: number) => {
    const found = batch.get(id);
    return found !== undefined && ts <= found.validUpTo ? found.key : undefined;
  };
  for (const format of formats) {
    if (!format.ok) continue;
    for (const [server, keyIds] of format.signers) {
      for (const keyId of keyIds) {
        const id = `${server} ${keyId}`;
        const guessed = at(guess, id, format.originServerTs);
        const known = at(keys, id, format.originServerTs);
        if (guessed === known) continue;
        if (guessed === undefined || known === undefined || !Buffer.from(guessed).equals(Buffer.from(known))) return false;
      }
    }
  }
  return true;
}

/** The results of the chunks of a batch, in input order. */
function assemble(roomVersion: string, slices: ReadonlyArray<readonly unknown[]>, chunks: readonly CheckedChunk[]): CheckedPdu[] {
  const results: CheckedPdu[] = [];
  chunks.forEach((chunk, c) => {
    let v = 0;
    chunk.formats.forEach((format, j) => {
      if (!format.ok) {
        results.push(format);
        return;
      }
      const givenId = (slices[c]![j] as Record<string, unknown>).event_id;
      const pdu = pduOf(roomVersion, slices[c]![j] as Record<string, unknown>);
      const check = chunk.verified[v++]!;
      if (!check.ok) {
        results.push({ ok: false, eventId: typeof givenId === "string" ? givenId : check.eventId, reason: check.reason });
        return;
      }
      const form = check.redacted ? redactEvent(roomVersion, pdu) : pdu;
      results.push({ ok: true, eventId: check.eventId, event: { ...form, event_id: check.eventId } as RoomEvent, redacted: check.redacted });
    });
  });
  return results;
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

/**
 * What a worker is asked (pdu-checks-worker.ts): steps 1–3 for a chunk, sent as JSON text (cheaper
 * to send than a structured clone), with the keys to verify with; and what it answers.
 */
export interface WorkerRequest {
  id: number;
  roomVersion: string;
  json: string;
  keys: BatchKeys;
  /** False: step 1 only (`verified` is then empty). */
  verify: boolean;
}
export type WorkerAnswer = { id: number; formats: FormatChecked[]; verified: VerifiedPdu[] } | { id: number; error: string };

interface Slot {
  worker: Worker;
  pending: Map<number, { pdus: number; resolve(answer: WorkerAnswer): void; reject(err: Error): void }>;
  /** PDUs sent and not yet answered: new chunks go to the least loaded worker. */
  load: number;
  /** Set while the worker has nothing to do: it is stopped when this fires. */
  idleTimer: NodeJS.Timeout | undefined;
  /** Whether the worker has loaded its code (it says so): starting one takes hundreds of ms. */
  ready: boolean;
  /** Settles when it is ready or gone. */
  started: Promise<void>;
}

/** A worker with nothing to do for this long is stopped (it holds tens of MB); the next batch starts one. */
const IDLE_WORKER_MS = 5 * 60_000;

const fromSources = import.meta.url.endsWith(".ts");
const WORKER_URL = new URL(fromSources ? "./pdu-checks-worker.mjs" : "./pdu-checks-worker.js", import.meta.url);

/**
 * Worker threads started when first needed, unref'd while idle (an idle pool never keeps the
 * process alive) and stopped after IDLE_WORKER_MS idle, replaced when one dies: its unanswered
 * requests are rejected, and their caller checks those PDUs inline.
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

  /** Steps 1–3 (step 1 only unless `verify`) for a chunk on the least loaded worker. */
  async check(roomVersion: string, values: readonly unknown[], keys: BatchKeys, verify: boolean): Promise<CheckedChunk> {
    if (this.closed) throw new Error("the PDU check workers are closed");
    let index = 0;
    let least = Number.POSITIVE_INFINITY;
    this.slots.forEach((slot, i) => {
      const load = slot?.load ?? 0;
      if (load < least) [index, least] = [i, load];
    });
    const slot = this.slots[index] ?? this.start(index);
    const answer = await this.request(slot, { id: this.nextId++, roomVersion, json: JSON.stringify(values), keys, verify }, values.length);
    if ("error" in answer) throw new Error(answer.error);
    if (answer.formats.length !== values.length || answer.verified.length !== (verify ? answer.formats.filter((f) => f.ok).length : 0)) {
      throw new Error("a PDU check worker answered for other PDUs");
    }
    return answer;
  }

  /** Starts the workers not running; whether all are ready to take work. */
  warm(): boolean {
    if (this.closed) return false;
    return this.slots.map((slot, i) => slot ?? this.start(i)).every((slot) => slot.ready);
  }

  /** Starts the workers not running, and waits until they are ready (or gone). */
  async whenReady(): Promise<void> {
    this.warm();
    await Promise.all(this.slots.map((slot) => slot?.started));
  }

  async close(): Promise<void> {
    this.closed = true;
    const slots = this.slots.splice(0, this.slots.length, ...new Array<undefined>(this.size).fill(undefined));
    await Promise.all(slots.map((slot) => slot?.worker.terminate()));
  }

  private request(slot: Slot, message: WorkerRequest, pdus: number): Promise<WorkerAnswer> {
    if (!this.slots.includes(slot)) return Promise.reject(new Error("the PDU check worker is gone"));
    return new Promise<WorkerAnswer>((resolve, reject) => {
      slot.pending.set(message.id, { pdus, resolve, reject });
      slot.load += pdus;
      clearTimeout(slot.idleTimer);
      if (slot.pending.size === 1) slot.worker.ref();
      slot.worker.postMessage(message);
    });
  }

  private start(index: number): Slot {
    const worker = new Worker(WORKER_URL);
    worker.unref();
    let started!: () => void;
    const slot: Slot = { worker, pending: new Map(), load: 0, idleTimer: undefined, ready: false, started: new Promise((resolve) => (started = resolve)) };
    this.slots[index] = slot;
    const idle = () => {
      worker.unref();
      slot.idleTimer = setTimeout(() => {
        if (this.slots[index] === slot && slot.pending.size === 0) {
          this.slots[index] = undefined;
          void worker.terminate();
        }
      }, IDLE_WORKER_MS).unref();
    };
    const fail = (err: Error) => {
      started();
      clearTimeout(slot.idleTimer);
      if (this.slots[index] === slot) this.slots[index] = undefined;
      for (const request of slot.pending.values()) request.reject(err);
      slot.pending.clear();
      slot.load = 0;
    };
    worker.on("message", (answer: WorkerAnswer | { ready: true }) => {
      if ("ready" in answer) {
        slot.ready = true;
        started();
        if (slot.pending.size === 0) idle();
        return;
      }
      const request = slot.pending.get(answer.id);
      if (!request) return;
      slot.pending.delete(answer.id);
      slot.load -= request.pdus;
      if (slot.pending.size === 0) idle();
      request.resolve(answer);
    });
    worker.on("error", (err) => {
      this.logger.warn({ err }, "a PDU check worker crashed");
      fail(err);
    });
    worker.on("exit", (code) => fail(new Error(`the PDU check worker exited (code ${code})`)));
    return slot;
  }
}

// Transactions other servers push to us: `PUT /_matrix/federation/v1/send/{txnId}`.
// https://spec.matrix.org/latest/server-server-api/#transactions
// https://spec.matrix.org/latest/server-server-api/#checks-performed-on-receipt-of-a-pdu
//
// Idempotent on (origin, txnId): the first request inserts a claim row and processes the
// transaction; the answer is stored in that row, and a repeat (a retry after a lost response, or a
// duplicate arriving while the first is still being processed, in this process or another) gets the
// stored answer and delivers nothing. A claim whose process died before answering is taken over
// after CLAIM_ABANDONED_MS. Rows are pruned a day after they arrived (a sender retries a
// transaction until it is answered, and never reuses an ID after that).
//
// Each EDU goes to its handler (edu-handlers.ts), one at a time in the order sent (a typing start
// then stop must stay in that order); an unknown type is ignored and a failing one fails alone.
// PDUs are answered one by one in the spec's per-PDU result map; see `receivePdus` for how far.
import { and, eq, lt } from "drizzle-orm";
import type { Logger } from "pino";
import { type Database, schema } from "../../schema/db.ts";
import { computeEventId } from "../protocol/event-hashes.ts";
import { isSupportedRoomVersion } from "../protocol/room-versions.ts";
import type { EduHandlers } from "./edu-handlers.ts";
import type { CheckedPdu, PduChecker } from "./pdu-checks.ts";
import { unsafeTestBreak } from "../../server/unsafe-test-break.ts";

/** The spec's limits on one transaction. */
export const MAX_PDUS_PER_TRANSACTION = 50;
export const MAX_EDUS_PER_TRANSACTION = 100;
/** How long a processed transaction is remembered. */
const REMEMBER_MS = 24 * 3600_000;
const PRUNE_EVERY_MS = 3600_000;
/** A claim without an answer after this long belongs to a process that died: taken over. */
const CLAIM_ABANDONED_MS = 2 * 60_000;
/** How often a duplicate looks whether the first request has answered. */
const DUPLICATE_POLL_MS = 50;
/** The stored answer of a transaction still being processed. */
const PENDING = "";

export interface TransactionBody {
  origin: string;
  origin_server_ts: number;
  pdus: unknown[];
  edus?: unknown[];
}

export interface TransactionResponse {
  pdus: Record<string, { error?: string }>;
}

export interface InboundTransactionsDeps {
  db: Database;
  edus: EduHandlers;
  /** Steps 1–3 of the checks on receipt (format, signatures, content hash) for a batch of PDUs. */
  pduChecker: PduChecker;
  /** The room's version when this server knows the room. */
  roomVersion(roomId: string): Promise<string | undefined>;
  logger: Logger;
  now(): number;
}

export class InboundTransactions {
  /** Transactions being processed here, by origin and ID: a duplicate waits for the first. */
  private readonly inFlight = new Map<string, Promise<TransactionResponse>>();
  private pruner: NodeJS.Timeout | undefined;
  private placePdus: ((origin: string, roomVersion: string, checked: readonly CheckedPdu[]) => Promise<Array<string | undefined>>) | undefined;

  constructor(private readonly deps: InboundTransactionsDeps) {}

  start(): void {
    this.pruner = setInterval(() => {
      this.prune().catch((err: unknown) => this.deps.logger.warn({ err }, "could not prune inbound transactions"));
    }, PRUNE_EVERY_MS);
    this.pruner.unref();
  }

  stop(): void {
    clearInterval(this.pruner);
  }

  /** Forgets transactions received more than a day ago. */
  async prune(): Promise<void> {
    const t = schema.federationInboundTxns;
    await this.deps.db.delete(t).where(lt(t.receivedTs, this.deps.now() - REMEMBER_MS));
  }

  /** Handles a transaction `origin` (already authenticated, and equal to the body's) sent us. */
  async receive(origin: string, txnId: string, body: TransactionBody): Promise<TransactionResponse> {
    if (unsafeTestBreak("no-transaction-dedupe")) return this.process(origin, body);
    const key = `${origin}\u0000${txnId}`;
    const running = this.inFlight.get(key);
    if (running) return running;
    const work = this.claimAndProcess(origin, txnId, body).finally(() => this.inFlight.delete(key));
    this.inFlight.set(key, work);
    return work;
  }

  private async claimAndProcess(origin: string, txnId: string, body: TransactionBody): Promise<TransactionResponse> {
    const { db, now } = this.deps;
    const t = schema.federationInboundTxns;
    const where = and(eq(t.origin, origin), eq(t.txnId, txnId));
    for (;;) {
      const claimedAt = now();
      const claimed = await db
        .insert(t)
        .values({ origin, txnId, responseJson: PENDING, receivedTs: claimedAt })
        .onConflictDoNothing()
        .returning({ origin: t.origin });
      if (claimed.length > 0) return this.processClaimed(origin, txnId, body, claimedAt);
      const [row] = await db.select().from(t).where(where);
      if (!row) continue; // pruned or given up in between: claim again
      if (row.responseJson !== PENDING) return JSON.parse(row.responseJson) as TransactionResponse;
      if (row.receivedTs < now() - CLAIM_ABANDONED_MS) {
        const takenOver = await db
          .update(t)
          .set({ receivedTs: claimedAt })
          .where(and(where, eq(t.responseJson, PENDING), eq(t.receivedTs, row.receivedTs)))
          .returning({ origin: t.origin });
        if (takenOver.length > 0) return this.processClaimed(origin, txnId, body, claimedAt);
        continue;
      }
      // Another process is handling it: its answer is ours.
      await new Promise((resolve) => setTimeout(resolve, DUPLICATE_POLL_MS));
    }
  }

  private async processClaimed(origin: string, txnId: string, body: TransactionBody, claimedAt: number): Promise<TransactionResponse> {
    const t = schema.federationInboundTxns;
    const where = and(eq(t.origin, origin), eq(t.txnId, txnId), eq(t.receivedTs, claimedAt));
    let response: TransactionResponse;
    try {
      response = await this.process(origin, body);
    } catch (err) {
      // Nothing was answered: let the sender's retry process it again.
      await this.deps.db.delete(t).where(and(where, eq(t.responseJson, PENDING))).catch(() => {});
      throw err;
    }
    await this.deps.db.update(t).set({ responseJson: JSON.stringify(response) }).where(where);
    return response;
  }

  private async process(origin: string, body: TransactionBody): Promise<TransactionResponse> {
    // PDUs first, then EDUs (as Synapse does): a receipt may name an event of the same transaction.
    const pdus = await this.receivePdus(origin, body.pdus);
    for (const edu of body.edus ?? []) await this.receiveEdu(origin, edu);
    return { pdus };
  }

  private async receiveEdu(origin: string, edu: unknown): Promise<void> {
    if (typeof edu !== "object" || edu === null || Array.isArray(edu)) return;
    const { edu_type: type, content } = edu as { edu_type?: unknown; content?: unknown };
    if (typeof type !== "string" || typeof content !== "object" || content === null || Array.isArray(content)) return;
    const handler = this.deps.edus.get(type);
    if (!handler) return; // a type we do not understand is ignored
    try {
      await handler(origin, content as Record<string, unknown>);
    } catch (err) {
      this.deps.logger.info({ err, origin, eduType: type }, "an EDU from a peer was not applied");
    }
  }

  /**
   * The transaction's PDUs, answered in the spec's per-PDU result map (keyed by event ID; a PDU
   * without one we can compute is not answered). The room must be one we know (Synapse ignores
   * PDUs of rooms it is not in; we answer them with an error). The PDUs of known rooms are checked
   * together, per room version (PduChecker: format, the signatures of the servers that must sign,
   * content hash; keys fetched once for the transaction, signatures verified off the main thread
   * when there are many), then handed to `persistChecked` in the order they came. A PDU that fails
   * never blocks the rest.
   */
  private async receivePdus(origin: string, values: readonly unknown[]): Promise<Record<string, { error?: string }>> {
    const answers: Record<string, { error?: string }> = Object.create(null);
    const answer = (eventId: string | undefined, error: string | undefined) => {
      if (eventId !== undefined) answers[eventId] = error === undefined ? {} : { error };
    };
    const versions = new Map<string, Promise<string | undefined>>();
    const byVersion = new Map<string, unknown[]>();
    for (const value of values) {
      if (typeof value !== "object" || value === null || Array.isArray(value)) continue;
      const pdu = value as Record<string, unknown>;
      const roomId = pdu.room_id;
      let version: string | undefined;
      try {
        if (typeof roomId === "string") {
          let known = versions.get(roomId);
          if (!known) versions.set(roomId, (known = this.deps.roomVersion(roomId)));
          version = await known;
        }
      } catch (err) {
        this.deps.logger.warn({ err, origin }, "a received PDU failed");
        continue;
      }
      if (version === undefined || !isSupportedRoomVersion(version)) {
        answer(eventIdOfUnknownRoomPdu(pdu), `Unknown room ${typeof roomId === "string" ? roomId.slice(0, 255) : ""}`.trimEnd());
        continue;
      }
      let batch = byVersion.get(version);
      if (!batch) byVersion.set(version, (batch = []));
      batch.push(pdu);
    }
    for (const [version, batch] of byVersion) {
      try {
        const checked = await this.deps.pduChecker.check(version, batch);
        for (const c of checked) {
          if (!c.ok) this.deps.logger.info({ origin, eventId: c.eventId, reason: c.reason }, "dropped a received PDU");
        }
        const errors = await this.persistChecked(origin, version, checked);
        checked.forEach((c, i) => answer(c.eventId, errors[i]));
      } catch (err) {
        this.deps.logger.warn({ err, origin, pdus: batch.length }, "received PDUs failed");
      }
    }
    return answers;
  }

  /**
   * What comes after steps 1–3 for checked PDUs of rooms of `roomVersion`, in the order received:
   * returns, for each PDU of `checked`, the error to answer it with, or undefined when it was
   * accepted. Refused ones (`ok: false`) are answered with their reason. The rooms' side
   * (room-federation.ts: auth, soft-fail, missing events, the persist path) is plugged in with
   * `placePdusWith`.
   */
  private async persistChecked(origin: string, roomVersion: string, checked: CheckedPdu[]): Promise<Array<string | undefined>> {
    if (this.placePdus) return this.placePdus(origin, roomVersion, checked);
    return checked.map((c) => (c.ok ? "This server does not take room events over federation" : c.reason));
  }

  /** Plugs in where checked PDUs go (rooms across servers). */
  placePdusWith(place: (origin: string, roomVersion: string, checked: readonly CheckedPdu[]) => Promise<Array<string | undefined>>): void {
    this.placePdus = place;
  }
}

/**
 * The ID to answer a PDU of a room we do not know under: its `event_id` in the v1/v2 format, else
 * the reference hash as rooms v4+ compute it (the room's version is unknown; v4+ is what nearly
 * every room uses). Undefined when neither can be had.
 */
function eventIdOfUnknownRoomPdu(pdu: Record<string, unknown>): string | undefined {
  if (typeof pdu.event_id === "string") return pdu.event_id;
  try {
    return computeEventId("10", pdu);
  } catch {
    return undefined;
  }
}

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
// PDUs are answered one by one in the spec's per-PDU result map; see `receivePdu` for how far.
import { and, eq, lt } from "drizzle-orm";
import type { Logger } from "pino";
import { type Database, schema } from "../../schema/db.ts";
import { computeEventId } from "../protocol/event-hashes.ts";
import { type ReceivedPduCheck, checkValidatedPdu, serversThatMustSign } from "../protocol/event-signing.ts";
import { type Pdu, validatePdu } from "../protocol/pdu.ts";
import { isSupportedRoomVersion } from "../protocol/room-versions.ts";
import type { EduHandlers } from "./edu-handlers.ts";
import type { ServerKeyStore } from "./server-keys.ts";

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
  keys: ServerKeyStore;
  /** The room's version when this server knows the room. */
  roomVersion(roomId: string): Promise<string | undefined>;
  logger: Logger;
  now(): number;
}

export class InboundTransactions {
  /** Transactions being processed here, by origin and ID: a duplicate waits for the first. */
  private readonly inFlight = new Map<string, Promise<TransactionResponse>>();
  private pruner: NodeJS.Timeout | undefined;

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
    const pdus: Record<string, { error?: string }> = Object.create(null);
    for (const pdu of body.pdus) {
      const result = await this.receivePdu(origin, pdu).catch((err: unknown) => {
        this.deps.logger.warn({ err, origin }, "a received PDU failed");
        return { eventId: undefined, error: "internal error processing this event" };
      });
      if (result.eventId !== undefined) pdus[result.eventId] = result.error === undefined ? {} : { error: result.error };
    }
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
   * The checks on receipt of a PDU that need no join: the room must be one we know (Synapse ignores
   * PDUs of rooms it is not in; we answer them with an error), the format valid for its room version,
   * the signatures of the servers that must sign (keys fetched, cached, checked against the event's
   * timestamp), the content hash (a mismatch keeps the redacted form).
   *
   * Not done yet (issue 12, rooms across servers): the auth checks against the auth events and the
   * state before, soft-fail, fetching missing prev_events, and the rooms' persist path for remote
   * events (`writeEvents` takes checked events, but nothing builds the state before a remote event
   * yet). A PDU that passes the checks is answered with an error saying so.
   *
   * Signatures are verified on the main thread, one PDU at a time (at most 50 per transaction).
   */
  private async receivePdu(origin: string, value: unknown): Promise<{ eventId: string | undefined; error?: string }> {
    if (typeof value !== "object" || value === null || Array.isArray(value)) return { eventId: undefined };
    const pdu = value as Record<string, unknown>;
    const roomId = pdu.room_id;
    const version = typeof roomId === "string" ? await this.deps.roomVersion(roomId) : undefined;
    if (version === undefined || !isSupportedRoomVersion(version)) {
      const eventId = eventIdOfUnknownRoomPdu(pdu);
      return { eventId, error: `Unknown room ${typeof roomId === "string" ? roomId.slice(0, 255) : ""}`.trimEnd() };
    }
    // A top-level `event_id` is not part of v4+ PDUs: left out before the format check, as the core does.
    const { event_id: _ignored, ...rest } = pdu;
    const format = validatePdu(version, rest);
    const keys = format.ok ? await this.fetchSigningKeys(version, format.value) : new Map<string, Uint8Array>();
    const check: ReceivedPduCheck = format.ok
      ? checkValidatedPdu(version, format.value, (server, keyId) => keys.get(`${server} ${keyId}`))
      : { ok: false, reason: `invalid PDU: ${format.reason}` };
    if (!check.ok) {
      const eventId = typeof pdu.event_id === "string" ? pdu.event_id : safeEventId(version, pdu);
      this.deps.logger.info({ origin, eventId, reason: check.reason }, "dropped a received PDU");
      return { eventId, error: check.reason };
    }
    return { eventId: check.eventId, error: "Events of rooms across servers are not supported yet" };
  }

  /**
   * The verify keys of the servers that must sign the PDU (only those: a PDU naming other servers
   * must not make us contact them), for the ed25519 key IDs their signatures name, fetched (or read
   * from the cache) as valid at the event's `origin_server_ts`, keyed by "server keyId". A key we
   * cannot get is left out: the signature check then says which server's signature is missing.
   */
  private async fetchSigningKeys(version: string, pdu: Pdu): Promise<Map<string, Uint8Array>> {
    const keys = new Map<string, Uint8Array>();
    const signatures = (pdu.signatures ?? {}) as Record<string, unknown>;
    const ts = pdu.origin_server_ts;
    for (const server of serversThatMustSign(version, pdu)) {
      const byKey = Object.hasOwn(signatures, server) ? signatures[server] : undefined;
      if (typeof byKey !== "object" || byKey === null) continue;
      for (const keyId of Object.keys(byKey).slice(0, 5)) {
        if (!keyId.startsWith("ed25519:")) continue;
        const key = await this.deps.keys.verifyKey(server, keyId, ts).catch(() => undefined);
        if (key) keys.set(`${server} ${keyId}`, key);
      }
    }
    return keys;
  }
}

/**
 * The ID to answer a PDU of a room we do not know under: its `event_id` in the v1/v2 format, else
 * the reference hash as rooms v4+ compute it (the room's version is unknown; v4+ is what nearly
 * every room uses). Undefined when neither can be had.
 */
function eventIdOfUnknownRoomPdu(pdu: Record<string, unknown>): string | undefined {
  if (typeof pdu.event_id === "string") return pdu.event_id;
  return safeEventId("10", pdu);
}

function safeEventId(version: string, pdu: Record<string, unknown>): string | undefined {
  try {
    const { event_id: _ignored, ...rest } = pdu;
    return computeEventId(version, rest);
  } catch {
    return undefined;
  }
}

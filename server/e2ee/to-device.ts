// Send-to-device messaging: a mailbox per device, read and emptied by /sync.
// https://spec.matrix.org/latest/client-server-api/#send-to-device-messaging
// https://spec.matrix.org/latest/client-server-api/#put_matrixclientv3sendtodeviceeventtypetxnid
//
// Each message stored takes the next position of the to-device stream. `/sync` reads a device's
// mailbox past the position in its token (`fetchToDevice`) and, when the client comes back with a
// later token, deletes what it has delivered (`ackToDevice`): a message is never lost between the
// two. Mailboxes are capped (`to_device_mailbox_limit`): a send that would overfill one is refused
// as a whole, so the sender knows, rather than anything being dropped.
import { and, asc, eq, gt, inArray, lte, sql } from "drizzle-orm";
import { type Database, schema } from "../../schema/db.ts";
import type { Accounts } from "../accounts/accounts.ts";
import { isLocalUser, parseUserId } from "../accounts/user-id.ts";
import { MatrixError } from "../http/errors.ts";
import { advanceStream, type Queryable, readStreamPositions } from "../sync/streams.ts";
import { canonicalOrBadJson, type JsonObject } from "./signed-json.ts";

export interface ToDeviceEvent {
  sender: string;
  type: string;
  content: JsonObject;
}

export interface ToDeviceBatch {
  events: ToDeviceEvent[];
  /** The position of the last event returned (or `since` when none): the next `since`. */
  position: number;
}

/**
 * Devices that have new messages, called after they are committed with the stream position reached
 * (a safe upper bound): the wake-up of `/sync`.
 */
export type ToDeviceListener = (targets: { userId: string; deviceId: string }[], position: number) => void;

/** How long a full mailbox's sender is told to wait before trying again. */
const MAILBOX_FULL_RETRY_MS = 10_000;
/** Rows per statement (PostgreSQL takes at most 65,535 parameters in one). */
const CHUNK = 1000;

export class ToDevice {
  private readonly listeners: ToDeviceListener[] = [];

  constructor(
    private readonly db: Database,
    private readonly accounts: Accounts,
    private readonly serverName: string,
    private readonly mailboxLimit: number,
    private readonly now: () => number,
  ) {}

  onMessages(listener: ToDeviceListener): void {
    this.listeners.push(listener);
  }

  /**
   * `PUT /sendToDevice/{eventType}/{txnId}`: `messages` is `{userId: {deviceId | "*": content}}`.
   * `*` means every device the user has now; a named device that does not exist is skipped (as
   * Synapse does). Idempotent per (sender, sending device, txnId): a repeat stores nothing.
   */
  async send(
    sender: string,
    senderDevice: string,
    eventType: string,
    txnId: string,
    messages: Record<string, Record<string, JsonObject>>,
  ): Promise<void> {
    const remote = Object.keys(messages).filter((u) => !isLocalUser(u, this.serverName));
    if (remote.length > 0) {
      const servers = [...new Set(remote.map((u) => parseUserId(u)?.serverName ?? u))];
      throw new MatrixError(
        403,
        "M_FORBIDDEN",
        `Sending to-device messages to other servers (${servers.join(", ")}) is not supported yet: this server does not federate`,
      );
    }

    const rows: Omit<typeof schema.toDeviceMessages.$inferInsert, "streamId">[] = [];
    for (const [userId, byDevice] of Object.entries(messages)) {
      const entries = Object.entries(byDevice);
      if (entries.length === 0) continue;
      const devices = (await this.accounts.listDevices(userId)).map((d) => d.device_id);
      const wildcard = byDevice["*"];
      for (const deviceId of devices) {
        const content = Object.hasOwn(byDevice, deviceId) ? byDevice[deviceId] : wildcard;
        if (content === undefined) continue;
        rows.push({
          userId,
          deviceId,
          sender,
          senderDevice,
          type: eventType,
          content: canonicalOrBadJson(content, `messages.${userId}.${deviceId}`),
        });
      }
    }
    // One lock order for every sender, so two multi-device sends cannot deadlock on the counters.
    rows.sort((a, b) => (a.userId === b.userId ? cmp(a.deviceId, b.deviceId) : cmp(a.userId, b.userId)));

    const stored = await this.db.transaction(async (tx) => {
      const txn = schema.toDeviceTxns;
      const fresh = await tx
        .insert(txn)
        .values({ userId: sender, deviceId: senderDevice, txnId, createdTs: this.now() })
        .onConflictDoNothing()
        .returning({ txnId: txn.txnId });
      if (fresh.length === 0 || rows.length === 0) return 0;

      // Every target's counter goes up by one only if it stays within the cap; one that does not
      // aborts the whole transaction (nothing stored, the txnId not spent, so a retry can succeed).
      const m = schema.toDeviceMailboxes;
      for (let i = 0; i < rows.length; i += CHUNK) {
        const chunk = rows.slice(i, i + CHUNK);
        const counted = await tx
          .insert(m)
          .values(chunk.map((r) => ({ userId: r.userId, deviceId: r.deviceId, pending: 1 })))
          .onConflictDoUpdate({
            target: [m.userId, m.deviceId],
            set: { pending: sql`${m.pending} + 1` },
            setWhere: sql`${m.pending} < ${this.mailboxLimit}`,
          })
          .returning({ userId: m.userId, deviceId: m.deviceId });
        if (counted.length !== chunk.length) {
          const ok = new Set(counted.map((c) => `${c.userId}\u0000${c.deviceId}`));
          const full = chunk.find((r) => !ok.has(`${r.userId}\u0000${r.deviceId}`))!;
          throw new MatrixError(
            429,
            "M_LIMIT_EXCEEDED",
            `The to-device mailbox of ${full.userId}'s device ${full.deviceId} is full (${this.mailboxLimit} undelivered messages); nothing was sent. Try again once it has synced.`,
            { retry_after_ms: MAILBOX_FULL_RETRY_MS, user_id: full.userId, device_id: full.deviceId },
            { "Retry-After": String(MAILBOX_FULL_RETRY_MS / 1000) },
          );
        }
      }
      // Positions last: from here until commit, other senders wait (server/sync/streams.ts).
      const last = await advanceStream(tx, "to_device", rows.length);
      const first = last - rows.length + 1;
      for (let i = 0; i < rows.length; i += CHUNK) {
        await tx
          .insert(schema.toDeviceMessages)
          .values(rows.slice(i, i + CHUNK).map((r, j) => ({ ...r, streamId: first + i + j })));
      }
      return last;
    });
    if (stored) {
      const targets = rows.map((r) => ({ userId: r.userId, deviceId: r.deviceId }));
      for (const listener of this.listeners) listener(targets, stored);
    }
  }

  /** Messages waiting for a device after position `since`, oldest first, at most `limit`. */
  async fetchToDevice(userId: string, deviceId: string, since: number, limit: number): Promise<ToDeviceBatch> {
    const t = schema.toDeviceMessages;
    const rows = await this.db
      .select({ streamId: t.streamId, sender: t.sender, type: t.type, content: t.content })
      .from(t)
      .where(and(eq(t.userId, userId), eq(t.deviceId, deviceId), gt(t.streamId, since)))
      .orderBy(asc(t.streamId))
      .limit(limit);
    return {
      events: rows.map((r) => ({ sender: r.sender, type: r.type, content: JSON.parse(r.content) as JsonObject })),
      position: rows.length ? rows[rows.length - 1]!.streamId : since,
    };
  }

  /** Deletes a device's messages up to and including position `upTo` (delivered); answers how many. */
  async ackToDevice(userId: string, deviceId: string, upTo: number): Promise<number> {
    return this.db.transaction(async (tx) => {
      const t = schema.toDeviceMessages;
      const deleted = await tx
        .delete(t)
        .where(and(eq(t.userId, userId), eq(t.deviceId, deviceId), lte(t.streamId, upTo)))
        .returning({ streamId: t.streamId });
      if (deleted.length > 0) {
        const m = schema.toDeviceMailboxes;
        await tx
          .update(m)
          .set({ pending: sql`greatest(${m.pending} - ${deleted.length}, 0)` })
          .where(and(eq(m.userId, userId), eq(m.deviceId, deviceId)));
      }
      return deleted.length;
    });
  }

  /** The to-device stream's current position: everything at or below it is committed. */
  async currentPosition(): Promise<number> {
    return (await readStreamPositions(this.db)).to_device;
  }

  /** Empties and forgets the mailboxes (and sent-transaction IDs) of deleted devices, in the caller's transaction. */
  async deleteDevices(q: Queryable, userId: string, deviceIds: readonly string[]): Promise<void> {
    const ids = [...deviceIds];
    for (const t of [schema.toDeviceMessages, schema.toDeviceMailboxes, schema.toDeviceTxns]) {
      await q.delete(t).where(and(eq(t.userId, userId), inArray(t.deviceId, ids)));
    }
  }
}

const cmp = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);

// Send-to-device messaging: a mailbox per device, read and emptied by /sync.
// https://spec.matrix.org/latest/client-server-api/#send-to-device-messaging
// https://spec.matrix.org/latest/client-server-api/#put_matrixclientv3sendtodeviceeventtypetxnid
//
// Each message stored takes the next position of the to-device stream. `/sync` reads a device's
// mailbox past the position in its token (`fetchToDevice`) and, when the client comes back with a
// later token, deletes what it has delivered (`ackToDevice`): a message is never lost between the
// two.
//
// Mailboxes are capped so that no user can keep another device's keys out (README, "Mailbox
// limits"): each sender may have at most `perSender` messages waiting in one mailbox, a sender who
// shares no room with the recipient at most `stranger`, and the mailbox as a whole `mailbox`,
// which key-sharing messages from room members may exceed up to twice that. A send that would
// break a cap is refused as a whole with 429, so the sender knows, rather than anything being
// dropped.
import { and, asc, eq, gt, inArray, lte, sql } from "drizzle-orm";
import { type Database, schema } from "../../schema/db.ts";
import type { Accounts } from "../accounts/accounts.ts";
import { groupUsersByServer, isLocalUser } from "../accounts/user-id.ts";
import { MatrixError } from "../http/errors.ts";
import { advanceStream, type Queryable, readStreamPositions } from "../sync/streams.ts";
import { isValidServerName } from "../../federation/protocol/identifiers.ts";
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
/** The messages themselves, once stored (application services with `receive_to_device` get them). */
export type ToDeviceContentListener = (
  messages: Array<{ sender: string; type: string; userId: string; deviceId: string; content: string }>,
) => void;

/**
 * Hands messages for users of other servers to federation (wired at startup: e2ee does not import
 * federation). `byServer` maps each destination server to its part of `messages`; `messageKey`
 * is unique to this send (sender, sending device, transaction ID), so a repeated send can be
 * recognised by the receiver. Resolves once the messages are durably queued.
 */
export type RemoteToDevice = (
  sender: string,
  eventType: string,
  messageKey: string,
  byServer: Map<string, Record<string, Record<string, JsonObject>>>,
) => Promise<void>;

/** The sending "device" of messages that came from another server (their sender's device is not known). */
export const REMOTE_SENDER_DEVICE = "";

/**
 * Which users share a joined room with `userId`, among `localUsers`. `userId` may be a user of
 * another server (to-device messages will arrive over federation through `send`).
 */
export type RoomSharing = (userId: string, localUsers: readonly string[]) => Promise<ReadonlySet<string>>;

export interface ToDeviceLimits {
  /** Undelivered messages one device's mailbox holds (`to_device_mailbox_limit`). */
  mailbox: number;
  /** Undelivered messages of one sender in one mailbox (`to_device_per_sender_limit`). */
  perSender: number;
  /** The same for a sender who shares no room with the recipient (`to_device_stranger_limit`). */
  stranger: number;
}

/**
 * The to-device types end-to-end encryption cannot do without, which room members may deliver
 * into a mailbox that strangers have filled (up to `KEY_SHARING_CEILING` times the mailbox limit).
 * These are the types a client accepts as they arrive at the outer level:
 * - `m.room.encrypted`: Olm, the envelope of `m.room_key`, `m.forwarded_room_key`, `m.secret.send`
 *   and `m.dummy` (the spec accepts those only inside Olm, so sent bare they get no priority);
 * - `m.room_key_request` and `m.secret.request`: asking other devices for a room key or a secret
 *   (sent in the clear);
 * - `m.room_key.withheld`: why a key will not come (sent in the clear), so the client stops waiting;
 * - `m.key.verification.*`: interactive verification, in the clear when done by to-device.
 * The type is all the server can see: a member can put anything under `m.room.encrypted`, which is
 * why the per-sender cap applies to every type and the ceiling stays finite.
 */
const KEY_SHARING_TYPES: ReadonlySet<string> = new Set([
  "m.room.encrypted",
  "m.room_key_request",
  "m.secret.request",
  "m.room_key.withheld",
]);
const KEY_SHARING_PREFIX = "m.key.verification.";

export function isKeySharing(eventType: string): boolean {
  return KEY_SHARING_TYPES.has(eventType) || eventType.startsWith(KEY_SHARING_PREFIX);
}

/** Room members' key-sharing messages may fill a mailbox up to this many times its limit, no more. */
export const KEY_SHARING_CEILING = 2;

/** How long a full mailbox's sender is told to wait before trying again. */
const MAILBOX_FULL_RETRY_MS = 10_000;
/** Rows per statement (PostgreSQL takes at most 65,535 parameters in one). */
const CHUNK = 1000;

export class ToDevice {
  private readonly listeners: ToDeviceListener[] = [];
  private readonly contentListeners: ToDeviceContentListener[] = [];
  /** Until the rooms component is wired in, nobody shares a room: every other user is a stranger. */
  private roomSharing: RoomSharing = async () => new Set();
  /** Until federation is wired in, messages for other servers are refused. */
  private remote?: RemoteToDevice;

  constructor(
    private readonly db: Database,
    private readonly accounts: Accounts,
    private readonly serverName: string,
    private readonly limits: ToDeviceLimits,
    private readonly now: () => number,
  ) {}

  onMessages(listener: ToDeviceListener): void {
    this.listeners.push(listener);
  }

  /** Hears each stored send with its messages' content (canonical JSON); a listener must not throw. */
  onMessageContents(listener: ToDeviceContentListener): void {
    this.contentListeners.push(listener);
  }

  /** How to send to users of other servers (federation's, wired at startup). */
  useRemoteDelivery(remote: RemoteToDevice): void {
    this.remote = remote;
  }

  /** How to ask who shares a room (the rooms component's, wired at startup: e2ee does not import rooms). */
  useRoomSharing(roomSharing: RoomSharing): void {
    this.roomSharing = roomSharing;
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
    const { remote: byServer, notUserIds } = groupUsersByServer(messages, this.serverName);
    for (const [server, users] of byServer) if (!isValidServerName(server)) notUserIds.push(...Object.keys(users));
    if (notUserIds.length > 0) {
      throw new MatrixError(400, "M_INVALID_PARAM", `messages: ${notUserIds[0]!.slice(0, 64)} is not a user ID`);
    }
    if (byServer.size > 0) {
      for (const users of byServer.values()) {
        for (const [userId, byDevice] of Object.entries(users)) {
          for (const [deviceId, content] of Object.entries(byDevice)) canonicalOrBadJson(content, `messages.${userId}.${deviceId}`);
        }
      }
      if (!this.remote) {
        throw new MatrixError(403, "M_FORBIDDEN", `Sending to-device messages to other servers (${[...byServer.keys()].join(", ")}) is not supported: this server does not federate`);
      }
      // Queued before the local part is stored: should that be refused (429) or this process die
      // before it, the client's retry queues them again under the same key, which the receiving
      // server recognises (message_id), so they are delivered once.
      await this.remote(sender, eventType, `${sender}\u0000${senderDevice}\u0000${txnId}`, byServer);
    }
    await this.deliver(sender, senderDevice, eventType, txnId, messages);
  }

  /**
   * An `m.direct_to_device` EDU from another server, its sender already checked against the
   * origin: delivered like a local send from `sender` (the same per-sender and stranger caps),
   * idempotent per (sender, message_id). Users of other servers in it are ignored.
   */
  async receive(sender: string, eventType: string, messageId: string, messages: Record<string, Record<string, JsonObject>>): Promise<void> {
    // deliver() takes only this server's users.
    await this.deliver(sender, REMOTE_SENDER_DEVICE, eventType, messageId, messages);
  }

  private async deliver(
    sender: string,
    senderDevice: string,
    eventType: string,
    txnId: string,
    messages: Record<string, Record<string, JsonObject>>,
  ): Promise<void> {
    const rows: MessageRow[] = [];
    for (const [userId, byDevice] of Object.entries(messages)) {
      if (!isLocalUser(userId, this.serverName)) continue;
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

    // First as if every other recipient were a stranger: what passes the strictest caps passes the
    // true ones, and nearly every send does, so it costs no question to the rooms component. Only
    // a target those caps refuse makes it ask who shares a room with the sender (a stranger's
    // refusal is then final), and the send is tried again with the room members' caps.
    // The sender themself is never a stranger: their other devices share secrets and verify.
    let members: readonly string[] = [sender];
    let asked = false;
    let stored: number;
    for (;;) {
      try {
        stored = await this.store(sender, senderDevice, txnId, eventType, rows, members);
        break;
      } catch (err) {
        if (!(err instanceof CapReached)) throw err;
        // Room members' caps differ from strangers' for their own share, and for the mailbox
        // only with key-sharing messages.
        const looser = err.cap === "sender" || isKeySharing(eventType);
        if (looser && !asked && !members.includes(err.target.userId)) {
          asked = true;
          const others = [...new Set(rows.map((r) => r.userId))].filter((u) => u !== sender);
          const sharing = await this.roomSharing(sender, others);
          members = [sender, ...others.filter((u) => sharing.has(u))];
          if (members.includes(err.target.userId)) continue;
        }
        throw this.refusal(err, members.includes(err.target.userId), eventType);
      }
    }
    if (stored) {
      const targets = rows.map((r) => ({ userId: r.userId, deviceId: r.deviceId }));
      for (const listener of this.listeners) listener(targets, stored);
      if (this.contentListeners.length) {
        const messages = rows.map((r) => ({ sender, type: eventType, userId: r.userId, deviceId: r.deviceId, content: r.content }));
        for (const listener of this.contentListeners) listener(messages);
      }
    }
  }

  /**
   * Stores one send in one transaction, the counters of `members`' mailboxes held to room members'
   * caps and the others' to strangers'; answers the last stream position taken (0 when nothing was
   * stored: a repeated txnId). Throws `CapReached`, the transaction rolled back, when a target's
   * counter would pass its cap.
   */
  private async store(
    sender: string,
    senderDevice: string,
    txnId: string,
    eventType: string,
    rows: readonly MessageRow[],
    members: readonly string[],
  ): Promise<number> {
    const { mailbox, perSender } = this.limits;
    const stranger = Math.min(this.limits.stranger, perSender);
    const ceiling = isKeySharing(eventType) ? KEY_SHARING_CEILING * mailbox : mailbox;
    return this.db.transaction(async (tx) => {
      const txn = schema.toDeviceTxns;
      const fresh = await tx
        .insert(txn)
        .values({ userId: sender, deviceId: senderDevice, txnId, createdTs: this.now() })
        .onConflictDoNothing()
        .returning({ txnId: txn.txnId });
      if (fresh.length === 0 || rows.length === 0) return 0;

      // Every target's counters go up by one only if they stay within their caps; one that does
      // not aborts the whole transaction (nothing stored, the txnId not spent, so a retry can
      // succeed). The mailboxes' counters first, then the sender's: acknowledging a delivery
      // takes them in that order too, so the two cannot deadlock.
      const m = schema.toDeviceMailboxes;
      // Room members' key-sharing messages may go past the mailbox limit, strangers' never.
      const mailboxCap =
        ceiling === mailbox ? sql`${mailbox}` : sql`(case when ${inArray(m.userId, [...members])} then ${ceiling}::integer else ${mailbox}::integer end)`;
      for (let i = 0; i < rows.length; i += CHUNK) {
        const chunk = rows.slice(i, i + CHUNK);
        const counted = await tx
          .insert(m)
          .values(chunk.map((r) => ({ userId: r.userId, deviceId: r.deviceId, pending: 1 })))
          .onConflictDoUpdate({
            target: [m.userId, m.deviceId],
            set: { pending: sql`${m.pending} + 1` },
            setWhere: sql`${m.pending} < ${mailboxCap}`,
          })
          .returning({ userId: m.userId, deviceId: m.deviceId });
        const refused = uncounted(chunk, counted);
        if (refused) throw new CapReached("mailbox", refused);
      }
      const s = schema.toDeviceMailboxSenders;
      const senderCap = sql`(case when ${inArray(s.userId, [...members])} then ${perSender}::integer else ${stranger}::integer end)`;
      for (let i = 0; i < rows.length; i += CHUNK) {
        const chunk = rows.slice(i, i + CHUNK);
        const counted = await tx
          .insert(s)
          .values(chunk.map((r) => ({ userId: r.userId, deviceId: r.deviceId, sender, pending: 1 })))
          .onConflictDoUpdate({
            target: [s.userId, s.deviceId, s.sender],
            set: { pending: sql`${s.pending} + 1` },
            setWhere: sql`${s.pending} < ${senderCap}`,
          })
          .returning({ userId: s.userId, deviceId: s.deviceId });
        const refused = uncounted(chunk, counted);
        if (refused) throw new CapReached("sender", refused);
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
  }

  /** The 429 for a cap that refused a send, `member` saying which caps applied to its target. */
  private refusal(reached: CapReached, member: boolean, eventType: string): MatrixError {
    const { userId, deviceId } = reached.target;
    const { mailbox, perSender } = this.limits;
    const why =
      reached.cap === "mailbox"
        ? `The to-device mailbox of ${userId}'s device ${deviceId} is full (${member && isKeySharing(eventType) ? KEY_SHARING_CEILING * mailbox : mailbox} undelivered messages)`
        : member
          ? `${perSender} of your messages already wait in the to-device mailbox of ${userId}'s device ${deviceId}, the most one sender may have there`
          : `You share no room with ${userId}, and ${Math.min(this.limits.stranger, perSender)} of your messages already wait in the to-device mailbox of their device ${deviceId}, the most such a sender may have there`;
    return new MatrixError(
      429,
      "M_LIMIT_EXCEEDED",
      `${why}; nothing was sent. Try again once it has synced.`,
      { retry_after_ms: MAILBOX_FULL_RETRY_MS, user_id: userId, device_id: deviceId },
      { "Retry-After": String(MAILBOX_FULL_RETRY_MS / 1000) },
    );
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
        .returning({ sender: t.sender });
      if (deleted.length > 0) {
        // The mailbox's counter first (as in `send`): it also keeps senders away from this
        // mailbox's per-sender rows until commit.
        const m = schema.toDeviceMailboxes;
        await tx
          .update(m)
          .set({ pending: sql`greatest(${m.pending} - ${deleted.length}, 0)` })
          .where(and(eq(m.userId, userId), eq(m.deviceId, deviceId)));
        const bySender = new Map<string, number>();
        for (const d of deleted) bySender.set(d.sender, (bySender.get(d.sender) ?? 0) + 1);
        // Each sender's count goes down by what was delivered of theirs; a count reaching zero
        // takes its row with it. One statement for all the senders.
        const delivered = sql.join(
          [...bySender].map(([s, n]) => sql`(${s}::text, ${n}::integer)`),
          sql`, `,
        );
        await tx.execute(sql`with d(sender, n) as (values ${delivered}),
          gone as (delete from to_device_mailbox_senders s using d
            where s.user_id = ${userId} and s.device_id = ${deviceId} and s.sender = d.sender and s.pending <= d.n)
          update to_device_mailbox_senders s set pending = s.pending - d.n from d
            where s.user_id = ${userId} and s.device_id = ${deviceId} and s.sender = d.sender and s.pending > d.n`);
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
    for (const t of [schema.toDeviceMessages, schema.toDeviceMailboxes, schema.toDeviceMailboxSenders, schema.toDeviceTxns]) {
      await q.delete(t).where(and(eq(t.userId, userId), inArray(t.deviceId, ids)));
    }
  }
}

const cmp = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);

type Target = { userId: string; deviceId: string };
/** A message to store, before it has its stream position. */
type MessageRow = Omit<typeof schema.toDeviceMessages.$inferInsert, "streamId">;

/** The first target of `chunk` whose counter did not go up (not in `counted`), if any. */
function uncounted(chunk: readonly Target[], counted: readonly Target[]): Target | undefined {
  if (counted.length === chunk.length) return undefined;
  const ok = new Set(counted.map((c) => `${c.userId}\u0000${c.deviceId}`));
  return chunk.find((r) => !ok.has(`${r.userId}\u0000${r.deviceId}`));
}

/** A target's counter would pass its cap: the transaction is rolled back. */
class CapReached extends Error {
  constructor(
    readonly cap: "mailbox" | "sender",
    readonly target: Target,
  ) {
    super(`to-device ${cap} cap reached for ${target.userId} ${target.deviceId}`);
  }
}

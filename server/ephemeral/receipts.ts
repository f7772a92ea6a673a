// Read receipts: `m.read` (seen by the room) and `m.read.private` (seen only by its sender),
// unthreaded or per thread.
// https://spec.matrix.org/latest/client-server-api/#receipts
//
// The latest receipt per (room, type, user, thread) is kept with a position in the `receipts`
// stream; a sync sends the receipts of its rooms that moved past its token, batched into one
// `m.receipt` event per room. A receipt also marks the user's notifications up to the event as read.
import { dictionary } from "../../federation/protocol/dictionary.ts";
import { and, eq, gt, inArray, lte, sql } from "drizzle-orm";
import { type Database, schema } from "../../schema/db.ts";
import { MatrixError, forbidden, notFound } from "../http/errors.ts";
import type { Notifier } from "../sync/notifier.ts";
import { advanceStream } from "../sync/streams.ts";
import type { UnreadCounts } from "../sync/unread.ts";
import type { MembershipView } from "./membership.ts";

export const RECEIPT_TYPES = ["m.read", "m.read.private"] as const;
export type ReceiptType = (typeof RECEIPT_TYPES)[number];

/** `m.receipt` content: event ID → receipt type → user ID → `{ts, thread_id?}`. */
export type ReceiptContent = Record<string, Record<string, Record<string, { ts: number; thread_id?: string }>>>;

/** A receipt that moved (a local user's, or one a remote server sent). */
export type ReceiptListener = (receipt: { roomId: string; userId: string; type: ReceiptType; eventId: string; threadId?: string; ts: number }) => void;

export class Receipts {
  private readonly listeners: ReceiptListener[] = [];

  constructor(
    private readonly db: Database,
    private readonly notifier: Notifier,
    private readonly membership: MembershipView,
    private readonly unread: UnreadCounts,
    private readonly now: () => number,
  ) {}

  /**
   * Moves the user's receipt of `type` (in `threadId`, or unthreaded) to `eventId`. A receipt never
   * moves back: one for an event before the current receipt is accepted and ignored.
   */
  async setReceipt(userId: string, roomId: string, type: ReceiptType, eventId: string, threadId?: string): Promise<void> {
    if (threadId !== undefined && threadId === "") {
      throw new MatrixError(400, "M_INVALID_PARAM", "thread_id must be a non-empty string");
    }
    if ((await this.membership.membershipOf(roomId, userId)) !== "join") {
      throw forbidden("You are not joined to this room");
    }
    const event = await this.membership.eventPosition(roomId, eventId);
    if (!event) throw notFound("Unknown event");
    if (threadId !== undefined && threadId !== event.threadId && threadId !== eventId) {
      throw new MatrixError(400, "M_INVALID_PARAM", `The event is not in thread ${threadId}`);
    }
    await this.store(userId, roomId, type, eventId, event.streamOrdering, threadId, this.now(), true);
  }

  /**
   * Called for each receipt that moved, after it is stored (federation sends its own users' public
   * receipts to the room's other servers). A listener that throws is ignored.
   */
  onReceipt(listener: ReceiptListener): void {
    this.listeners.push(listener);
  }

  /**
   * A remote user's `m.read` receipt, from an `m.receipt` EDU, with the time their server gave. The
   * caller has checked that the user belongs to the sending server and is joined to the room. A
   * receipt for an event we do not have (or in another room) is ignored: receipts are kept by
   * position in our stream.
   */
  async setRemoteReceipt(userId: string, roomId: string, eventId: string, ts: number, threadId?: string): Promise<boolean> {
    if (threadId === "") return false;
    const event = await this.membership.eventPosition(roomId, eventId);
    if (!event) return false;
    if (threadId !== undefined && threadId !== event.threadId && threadId !== eventId) return false;
    await this.store(userId, roomId, "m.read", eventId, event.streamOrdering, threadId, ts, false);
    return true;
  }

  private async store(
    userId: string,
    roomId: string,
    type: ReceiptType,
    eventId: string,
    eventStreamOrdering: number,
    threadId: string | undefined,
    ts: number,
    local: boolean,
  ): Promise<void> {
    const t = schema.receipts;
    const thread = threadId ?? "";
    const event = { streamOrdering: eventStreamOrdering };
    const streamId = await this.db.transaction(async (tx) => {
      const [existing] = await tx
        .select({ eventStreamOrdering: t.eventStreamOrdering })
        .from(t)
        .where(and(eq(t.roomId, roomId), eq(t.receiptType, type), eq(t.userId, userId), eq(t.threadId, thread)))
        .for("update");
      if (existing && existing.eventStreamOrdering >= event.streamOrdering) return undefined;
      // Unread counts are kept for local users only.
      if (local) await this.unread.markRead(tx, userId, roomId, threadId ?? null, event.streamOrdering);
      const position = await advanceStream(tx, "receipts");
      await tx
        .insert(t)
        .values({ roomId, receiptType: type, userId, threadId: thread, eventId, eventStreamOrdering: event.streamOrdering, ts, streamId: position })
        .onConflictDoUpdate({
          target: [t.roomId, t.receiptType, t.userId, t.threadId],
          set: { eventId, eventStreamOrdering: event.streamOrdering, ts, streamId: position },
        });
      return position;
    });
    if (streamId === undefined) return;
    // A private receipt concerns its sender alone; the unread counts it changed are the sender's.
    this.notifier.publish({ stream: "receipts", position: streamId, users: [userId], ...(type === "m.read" ? { rooms: [roomId] } : {}) });
    for (const listener of this.listeners) {
      try {
        listener({ roomId, userId, type, eventId, ...(threadId === undefined ? {} : { threadId }), ts });
      } catch {
        // a listener's failure is its own
      }
    }
  }

  /**
   * The `m.receipt` content of each room in `roomIds` with receipts that moved after `since` and at
   * or before `upTo` (all of the room's receipts when `since` is 0), as `viewer` may see them:
   * private receipts only when they are the viewer's own.
   */
  async receiptsIn(roomIds: string[], since: number, upTo: number, viewer: string): Promise<Map<string, ReceiptContent>> {
    const out = new Map<string, ReceiptContent>();
    if (roomIds.length === 0 || upTo <= since) return out;
    const t = schema.receipts;
    const rows = await this.db
      .select()
      .from(t)
      .where(
        and(
          inArray(t.roomId, roomIds),
          gt(t.streamId, since),
          lte(t.streamId, upTo),
          sql`(${t.receiptType} <> 'm.read.private' or ${t.userId} = ${viewer})`,
        ),
      );
    for (const r of rows) {
      let content = out.get(r.roomId);
      if (!content) out.set(r.roomId, (content = dictionary()));
      const byType = (content[r.eventId] ??= dictionary());
      const byUser = (byType[r.receiptType] ??= dictionary());
      byUser[r.userId] = r.threadId ? { ts: r.ts, thread_id: r.threadId } : { ts: r.ts };
    }
    return out;
  }
}

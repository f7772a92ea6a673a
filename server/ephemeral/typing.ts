// Typing notifications: who is typing in which room, in memory, with expiry.
// https://spec.matrix.org/latest/client-server-api/#typing-notifications
//
// Each start or stop takes the next position of the `typing` stream and is announced with
// `Notifier.publishOrdered`, so every process (this one included) applies the changes of the
// stream in position order and keeps the same table of typers. A sync sends a room's `m.typing`
// (the full list of typers, not a delta) when the room's typers changed after the sync's token.
//
// Expiry: the process that accepted a start owns its timer and announces the stop when it fires
// (unless a later start moved the expiry). Should that process die first, the others drop the
// entry from every list they build once its expiry has passed; only the wake-up is lost.
import type { Database } from "../../schema/db.ts";
import { forbidden } from "../http/errors.ts";
import type { Change, Notifier } from "../sync/notifier.ts";
import type { MembershipView } from "./membership.ts";

/** The longest a client may ask to be shown typing for. */
export const MAX_TYPING_TIMEOUT_MS = 5 * 60_000;
/** When a client starts typing without a timeout. */
const DEFAULT_TYPING_TIMEOUT_MS = 30_000;
/**
 * How long a remote user is shown typing after their server said so: the `m.typing` EDU carries no
 * timeout, and their server sends a stop when they stop (Synapse's FEDERATION_TIMEOUT, 60 s).
 */
export const REMOTE_TYPING_TIMEOUT_MS = 60_000;

/** A start or stop accepted here (a local user's, or one a remote server sent). */
export type TypingListener = (change: { roomId: string; userId: string; typing: boolean }) => void;

interface TypingData {
  room: string;
  user: string;
  /** Absolute expiry (ms since the epoch); 0 = stopped. */
  until: number;
}

interface RoomTyping {
  /** The typing-stream position of the last change to this room's typers. */
  changedAt: number;
  /** user ID → expiry. */
  typers: Map<string, number>;
}

export class Typing {
  private readonly rooms = new Map<string, RoomTyping>();
  private readonly timers = new Map<string, NodeJS.Timeout>();
  private applied = 0;
  private readonly listeners: TypingListener[] = [];

  constructor(
    private readonly db: Database,
    private readonly notifier: Notifier,
    private readonly membership: MembershipView,
    private readonly now: () => number,
  ) {
    notifier.onChange("typing", (change) => this.apply(change));
  }

  /** Starts at the stream's position in the database: earlier typing died with the old process. */
  start(position: number): void {
    this.applied = Math.max(this.applied, position);
  }

  stop(): void {
    for (const t of this.timers.values()) clearTimeout(t);
    this.timers.clear();
  }

  /** The highest typing position applied here: the typing part of a sync's upper bound. */
  position(): number {
    return this.applied;
  }

  /**
   * Called for each start or stop accepted in this process, including expiries (federation sends
   * its own users' typing to the room's other servers). A listener that throws is ignored.
   */
  onTyping(listener: TypingListener): void {
    this.listeners.push(listener);
  }

  /** `PUT /rooms/{roomId}/typing/{userId}` for the requester themself, who must be joined. */
  async setTyping(userId: string, roomId: string, typing: boolean, timeoutMs?: number): Promise<void> {
    if ((await this.membership.membershipOf(roomId, userId)) !== "join") {
      throw forbidden("You are not joined to this room");
    }
    await this.change(userId, roomId, typing, Math.min(timeoutMs ?? DEFAULT_TYPING_TIMEOUT_MS, MAX_TYPING_TIMEOUT_MS));
  }

  /**
   * A remote user's typing, from an `m.typing` EDU. The caller has checked that the user belongs to
   * the sending server and is joined to the room (this service knows only local memberships).
   */
  async setRemoteTyping(userId: string, roomId: string, typing: boolean): Promise<void> {
    await this.change(userId, roomId, typing, REMOTE_TYPING_TIMEOUT_MS);
  }

  private async change(userId: string, roomId: string, typing: boolean, timeoutMs: number): Promise<void> {
    const until = typing ? this.now() + timeoutMs : 0;
    const current = this.rooms.get(roomId)?.typers.get(userId);
    // A stop for someone not typing changes nothing; say nothing.
    if (!typing && (current === undefined || current <= this.now())) return;
    await this.announce({ room: roomId, user: userId, until });
    const key = `${roomId}\u0000${userId}`;
    clearTimeout(this.timers.get(key));
    this.timers.delete(key);
    if (typing) this.scheduleExpiry(key, roomId, userId, until);
  }

  /**
   * The typers of each room in `roomIds` whose typers changed after `since` and at or before
   * `upTo`; with `since` null (a room new to the sync, an initial sync), every room where anyone
   * typed since this server started, even if no one types now (as Synapse does: a client that
   * missed a stop learns the list is empty). A `since` of 0 is a real position (a token from
   * before any typing on this server), not "new": a stop after it must still be reported, as an
   * empty list.
   */
  typingIn(roomIds: Iterable<string>, since: number | null, upTo: number): Map<string, string[]> {
    const now = this.now();
    const out = new Map<string, string[]>();
    for (const roomId of roomIds) {
      const room = this.rooms.get(roomId);
      if (!room || room.changedAt > upTo) continue;
      const typers = [...room.typers].filter(([, until]) => until > now).map(([u]) => u);
      if (since === null || room.changedAt > since) out.set(roomId, typers);
    }
    return out;
  }

  private async announce(data: TypingData): Promise<void> {
    await this.notifier.publishOrdered(this.db, "typing", () => ({ rooms: [data.room], data }));
    for (const listener of this.listeners) {
      try {
        listener({ roomId: data.room, userId: data.user, typing: data.until > 0 });
      } catch {
        // a listener's failure is its own
      }
    }
  }

  private scheduleExpiry(key: string, roomId: string, userId: string, until: number): void {
    const timer = setTimeout(() => {
      this.timers.delete(key);
      const current = this.rooms.get(roomId)?.typers.get(userId);
      // A later start (here or in another process) moved the expiry: that one's owner stops it.
      if (current === undefined || current > until) return;
      void this.announce({ room: roomId, user: userId, until: 0 }).catch(() => {});
    }, Math.max(0, until - this.now()));
    timer.unref();
    this.timers.set(key, timer);
  }

  private apply(change: Change): void {
    const data = change.data as TypingData | undefined;
    if (!data || typeof data.room !== "string" || typeof data.user !== "string") return;
    this.applied = Math.max(this.applied, change.position);
    let room = this.rooms.get(data.room);
    if (!room) this.rooms.set(data.room, (room = { changedAt: 0, typers: new Map() }));
    room.changedAt = Math.max(room.changedAt, change.position);
    if (data.until > 0) room.typers.set(data.user, data.until);
    else room.typers.delete(data.user);
    // Expired entries of owners that died are swept here.
    const now = this.now();
    for (const [u, until] of room.typers) if (until <= now) room.typers.delete(u);
  }
}

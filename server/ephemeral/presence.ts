// Presence: online, unavailable or offline, a status message, and when the user was last active.
// https://spec.matrix.org/latest/client-server-api/#presence
//
// Each change takes the next position of the `presence` stream. A user sees the presence of the
// users who share a room with them, and their own.
//
// Set by `PUT /presence/{userId}/status`, and by `/sync`: a sync marks the user online (or
// `unavailable` with `set_presence=unavailable`; `offline` leaves presence alone). A sync marking
// online does not override an `unavailable` the user set themselves: it only brings an offline user
// online. A sweep marks users offline once no process has seen a sync from them for
// OFFLINE_AFTER_MS: each process refreshes `last_sync_ts`, in one statement per sweep, for the users
// it has seen syncing since the last one, so a sync whose presence is already right costs no query.
import { and, eq, gt, inArray, lt, lte, ne } from "drizzle-orm";
import type { Logger } from "pino";
import { type Database, schema } from "../../schema/db.ts";
import { forbidden, notFound } from "../http/errors.ts";
import type { Notifier } from "../sync/notifier.ts";
import { advanceStream } from "../sync/streams.ts";
import type { MembershipView } from "./membership.ts";

export const PRESENCE_STATES = ["online", "unavailable", "offline"] as const;
export type PresenceState = (typeof PRESENCE_STATES)[number];

/** A user not seen syncing for this long goes offline. */
const OFFLINE_AFTER_MS = 60_000;
const SWEEP_EVERY_MS = 15_000;
/** A user's presence as this process knows it is checked against the database at least this often. */
const RECHECK_EVERY_MS = 60_000;
/** `currently_active` holds for this long after the last activity. */
const ACTIVE_FOR_MS = 60_000;

export interface PresenceContent {
  presence: PresenceState;
  last_active_ago?: number;
  currently_active?: boolean;
  status_msg?: string;
}

export interface PresenceEvent {
  type: "m.presence";
  sender: string;
  content: PresenceContent;
}

type Row = typeof schema.presence.$inferSelect;

/**
 * A remote user stays as their server last said for this long without news (their server refreshes
 * it; Synapse's FEDERATION_TIMEOUT is 30 minutes), then the sweep takes them offline.
 */
export const REMOTE_PRESENCE_TIMEOUT_MS = 30 * 60_000;

/** A user's presence changed here (a local user's, or one a remote server sent). */
export type PresenceListener = (userId: string, content: PresenceContent) => void;

export class Presence {
  /** user → what this process last wrote or read, to skip redundant writes from syncs. */
  private readonly seen = new Map<string, { state: PresenceState; touchedTs: number }>();
  /** Users with a /sync open in this process, and how many. */
  private readonly syncing = new Map<string, number>();
  /** Users who began a /sync here since the last sweep (their `last_sync_ts` is refreshed then). */
  private readonly seenSyncing = new Set<string>();
  private sweeper: NodeJS.Timeout | undefined;
  private readonly listeners: PresenceListener[] = [];

  constructor(
    private readonly db: Database,
    private readonly notifier: Notifier,
    private readonly membership: MembershipView,
    private readonly now: () => number,
    private readonly logger: Logger,
  ) {}

  start(): void {
    // Changes made elsewhere (PUT in another process, another process's sweep).
    this.notifier.onChange("presence", (change) => {
      if (change.remote) for (const u of change.users ?? []) this.seen.delete(u);
    });
    this.sweeper = setInterval(() => {
      this.sweep().catch((err) => this.logger.warn({ err }, "presence sweep failed"));
    }, SWEEP_EVERY_MS);
    this.sweeper.unref();
  }

  stop(): void {
    clearInterval(this.sweeper);
  }

  /**
   * Called after each change of a user's presence written in this process (federation sends its
   * own users' presence to the servers that share a room with them). A listener that throws is
   * ignored.
   */
  onPresence(listener: PresenceListener): void {
    this.listeners.push(listener);
  }

  /**
   * A remote user's presence, from an `m.presence` EDU; the caller has checked that the user belongs
   * to the sending server, and gives the rooms it shares with us (whose members' syncs wake: this
   * service knows the rooms of local users only).
   */
  async setRemotePresence(
    userId: string,
    update: { state: PresenceState; statusMsg?: string | null; lastActiveAgo?: number; currentlyActive?: boolean },
    rooms: string[],
  ): Promise<void> {
    const now = this.now();
    // `last_sync_ts` is when the sweep counts from: pushed forward so the sweep takes a remote user
    // offline REMOTE_PRESENCE_TIMEOUT_MS after the last news, not OFFLINE_AFTER_MS.
    await this.write(userId, {
      state: update.state,
      ...(update.statusMsg !== undefined ? { statusMsg: update.statusMsg } : {}),
      active: update.currentlyActive === true,
      lastActiveTs: now - Math.max(0, update.lastActiveAgo ?? 0),
      lastSyncTs: now + REMOTE_PRESENCE_TIMEOUT_MS - OFFLINE_AFTER_MS,
      rooms,
    });
  }

  /** `PUT /presence/{userId}/status`. */
  async setPresence(userId: string, state: PresenceState, statusMsg?: string | null): Promise<void> {
    await this.write(userId, { state, ...(statusMsg !== undefined ? { statusMsg } : {}), active: state === "online" });
  }

  /** `GET /presence/{userId}/status`, as `viewer` may see it. */
  async getPresence(viewer: string, userId: string, userExists: boolean): Promise<PresenceContent> {
    if (viewer !== userId && !(await this.membership.shareARoom(viewer, userId))) {
      if (!userExists) throw notFound("Unknown user");
      throw forbidden("You do not share a room with this user");
    }
    const [row] = await this.db.select().from(schema.presence).where(eq(schema.presence.userId, userId));
    if (!row) {
      if (!userExists) throw notFound("Unknown user");
      return { presence: "offline" };
    }
    return this.content(row);
  }

  /**
   * A /sync of the user begins (`setPresence` is its `set_presence`). Returns a function to call
   * when it ends. Writes only when the state changes or `last_sync_ts` is getting old.
   */
  async syncStarted(userId: string, setPresence: PresenceState | undefined): Promise<() => void> {
    this.syncing.set(userId, (this.syncing.get(userId) ?? 0) + 1);
    const done = () => {
      const n = (this.syncing.get(userId) ?? 1) - 1;
      if (n <= 0) this.syncing.delete(userId);
      else this.syncing.set(userId, n);
    };
    const target = setPresence ?? "online";
    if (target === "offline") return done;
    this.seenSyncing.add(userId);
    const seen = this.seen.get(userId);
    const now = this.now();
    const settled = seen && (seen.state === target || (target === "online" && seen.state === "unavailable"));
    // What this process knows is re-read now and then (another process's sweep may have taken the
    // user offline; their changes reach `seen` through the presence stream too).
    if (settled && now - seen.touchedTs < RECHECK_EVERY_MS) return done;
    try {
      const [row] = await this.db.select().from(schema.presence).where(eq(schema.presence.userId, userId));
      const keep = row && (row.state === target || (target === "online" && row.state === "unavailable"));
      if (keep) {
        await this.db.update(schema.presence).set({ lastSyncTs: now }).where(eq(schema.presence.userId, userId));
        this.seen.set(userId, { state: row.state as PresenceState, touchedTs: now });
      } else {
        await this.write(userId, { state: target, active: target === "online" });
      }
    } catch (err) {
      done();
      throw err;
    }
    return done;
  }

  /**
   * The presence events `viewer` sees that changed after `since` and at or before `upTo` (every
   * known presence when `since` is 0): their own, and that of users who share a room with them.
   */
  async presenceFor(viewer: string, since: number, upTo: number, sharing: () => Promise<Set<string>>): Promise<PresenceEvent[]> {
    if (upTo <= since) return [];
    const t = schema.presence;
    let rows: Row[];
    if (since === 0) {
      const users = [...(await sharing()), viewer];
      rows = await this.db.select().from(t).where(and(inArray(t.userId, users), lte(t.streamId, upTo)));
    } else {
      rows = await this.db.select().from(t).where(and(gt(t.streamId, since), lte(t.streamId, upTo)));
      if (rows.some((r) => r.userId !== viewer)) {
        const visible = await sharing();
        rows = rows.filter((r) => r.userId === viewer || visible.has(r.userId));
      }
    }
    return rows.map((r) => ({ type: "m.presence", sender: r.userId, content: this.content(r) }));
  }

  /**
   * The presence of these users as of `upTo`: for users newly sharing a room with a syncing user.
   * With `unknownAsOffline`, a user with none recorded is `offline` (their state as far as we know,
   * which Synapse sends too); otherwise they are left out.
   */
  async presenceOf(users: readonly string[], upTo: number, unknownAsOffline = false): Promise<PresenceEvent[]> {
    if (users.length === 0) return [];
    const t = schema.presence;
    const rows = await this.db.select().from(t).where(and(inArray(t.userId, [...users]), lte(t.streamId, upTo)));
    const events: PresenceEvent[] = rows.map((r) => ({ type: "m.presence", sender: r.userId, content: this.content(r) }));
    if (unknownAsOffline) {
      const known = new Set(rows.map((r) => r.userId));
      for (const u of users) if (!known.has(u)) events.push({ type: "m.presence", sender: u, content: { presence: "offline" } });
    }
    return events;
  }

  private content(row: Row): PresenceContent {
    const now = this.now();
    const content: PresenceContent = {
      presence: row.state as PresenceState,
      last_active_ago: Math.max(0, now - row.lastActiveTs),
    };
    if (row.state === "online") content.currently_active = row.currentlyActive && now - row.lastActiveTs < ACTIVE_FOR_MS;
    if (row.statusMsg) content.status_msg = row.statusMsg;
    return content;
  }

  private async write(
    userId: string,
    change: { state: PresenceState; statusMsg?: string | null; active: boolean; lastActiveTs?: number; lastSyncTs?: number; rooms?: string[] },
  ): Promise<void> {
    const t = schema.presence;
    const now = this.now();
    const lastActiveTs = change.lastActiveTs ?? (change.active ? now : undefined);
    const [position, row] = await this.db.transaction(async (tx) => {
      const streamId = await advanceStream(tx, "presence");
      const set = {
        state: change.state,
        lastSyncTs: change.lastSyncTs ?? now,
        currentlyActive: change.active,
        streamId,
        ...(lastActiveTs !== undefined ? { lastActiveTs } : {}),
        ...(change.statusMsg !== undefined ? { statusMsg: change.statusMsg } : {}),
      };
      const [written] = await tx
        .insert(t)
        .values({ userId, lastActiveTs: lastActiveTs ?? now, statusMsg: change.statusMsg ?? null, ...set })
        .onConflictDoUpdate({ target: t.userId, set })
        .returning();
      return [streamId, written] as const;
    });
    this.seen.set(userId, { state: change.state, touchedTs: now });
    await this.announce(userId, position, row, change.rooms);
  }

  private async announce(userId: string, position: number, row?: Row, roomsOfRemoteUser?: string[]): Promise<void> {
    const rooms = roomsOfRemoteUser ?? (await this.membership.joinedRooms(userId));
    this.notifier.publish({ stream: "presence", position, users: [userId], rooms });
    if (!row || this.listeners.length === 0) return;
    const content = this.content(row);
    for (const listener of this.listeners) {
      try {
        listener(userId, content);
      } catch {
        // a listener's failure is its own
      }
    }
  }

  /** Refreshes the users syncing here, then takes offline whoever no process has seen lately. */
  async sweep(): Promise<void> {
    const t = schema.presence;
    const now = this.now();
    const seen = new Set([...this.syncing.keys(), ...this.seenSyncing]);
    this.seenSyncing.clear();
    const users = [...seen];
    for (let i = 0; i < users.length; i += 1_000) {
      await this.db.update(t).set({ lastSyncTs: now }).where(and(inArray(t.userId, users.slice(i, i + 1_000)), ne(t.state, "offline")));
    }
    const stale = await this.db
      .select({ userId: t.userId })
      .from(t)
      .where(and(ne(t.state, "offline"), lt(t.lastSyncTs, now - OFFLINE_AFTER_MS)));
    for (const { userId } of stale) {
      const position = await this.db.transaction(async (tx) => {
        const [row] = await tx
          .select({ userId: t.userId })
          .from(t)
          .where(and(eq(t.userId, userId), ne(t.state, "offline"), lt(t.lastSyncTs, now - OFFLINE_AFTER_MS)))
          .for("update");
        if (!row) return undefined; // another process got there first, or the user came back
        const streamId = await advanceStream(tx, "presence");
        const [written] = await tx.update(t).set({ state: "offline", currentlyActive: false, streamId }).where(eq(t.userId, userId)).returning();
        return written && ([streamId, written] as const);
      });
      if (position === undefined) continue;
      this.seen.delete(userId);
      await this.announce(userId, position[0], position[1]);
    }
  }
}

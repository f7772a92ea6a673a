// The device-list stream: who changed their devices or keys, and when.
// https://spec.matrix.org/latest/client-server-api/#tracking-the-device-list-for-a-user
// https://spec.matrix.org/latest/client-server-api/#get_matrixclientv3keyschanges
//
// A row is written whenever a user's devices, device keys or cross-signing keys change: a new device
// (a login), new device keys, a deleted device, a renamed device, a cross-signing upload, a
// signature on one's own keys.
// Its `stream_id` is a position of the `device_lists` stream, which `/sync` (`device_lists.changed`)
// and `/keys/changes` read. Positions come from server/sync/streams.ts as the last step of the
// writer's transaction, so they become visible in order (see server/sync/README.md).
import { and, desc, eq, gt, isNotNull, lt, lte, or } from "drizzle-orm";
import { type Database, schema } from "../../schema/db.ts";
import { advanceStream, type Queryable, readStreamPositions } from "../sync/streams.ts";

export type { Queryable };

export interface DeviceListChange {
  userId: string;
  deviceId?: string;
  /** Seen only by the user themself (a signature they made of someone else's master key). */
  selfOnly?: boolean;
  /**
   * Of a self-only change: the other user whose master key the user signed. The user's devices
   * are told that user changed (they must fetch that user's keys again to see the signature), as
   * Synapse does (sytest "Changing user-signing key notifies local users"). Kept in the row's
   * `device_id`, which a self-only row has no other use for.
   */
  signedUserId?: string;
}

/**
 * Called after a change is committed, with the users whose device lists changed and the stream
 * position reached (a safe upper bound); `/sync` hangs its wake-ups here.
 */
export type DeviceListListener = (userIds: string[], position: number, changes: readonly RecordedChange[]) => void;

/** A change with the stream position `record` gave it (what federation's `m.device_list_update` carries). */
export interface RecordedChange extends DeviceListChange {
  streamId: number;
}

export class DeviceLists {
  private readonly listeners: DeviceListListener[] = [];

  constructor(private readonly db: Database) {}

  onChange(listener: DeviceListListener): void {
    this.listeners.push(listener);
  }

  /**
   * Writes stream rows for `changes` in the caller's transaction, as its LAST step (it takes the
   * stream's positions, which holds the stream until commit). Returns the highest position; pass
   * it to `notify` once the transaction has committed.
   */
  async record(q: Queryable, changes: DeviceListChange[]): Promise<number> {
    if (changes.length === 0) return 0;
    const last = await advanceStream(q, "device_lists", changes.length);
    await q.insert(schema.deviceListsStream).values(
      changes.map((c, i) => ({
        streamId: last - changes.length + 1 + i,
        userId: c.userId,
        deviceId: c.deviceId ?? (c.selfOnly ? c.signedUserId : undefined) ?? null,
        selfOnly: c.selfOnly ?? false,
      })),
    );
    return last;
  }

  /**
   * After commit: `changes`, when given, must be exactly those passed to `record` (they took the
   * positions up to `position` in order), so listeners learn each one's position.
   */
  notify(userIds: string[], position: number, changes: readonly DeviceListChange[] = []): void {
    const unique = [...new Set(userIds)];
    if (unique.length === 0 || position === 0) return;
    const recorded = changes.map((c, i) => ({ ...c, streamId: position - changes.length + 1 + i }));
    for (const listener of this.listeners) listener(unique, position, recorded);
  }

  /**
   * The position of a user's last change to a device (not a self-only one) before `before`, or 0:
   * the `stream_id` of `/user/devices` and the `prev_id` of `m.device_list_update`.
   */
  async lastDeviceChange(userId: string, before = Number.MAX_SAFE_INTEGER): Promise<number> {
    const t = schema.deviceListsStream;
    const [row] = await this.db
      .select({ streamId: t.streamId })
      .from(t)
      .where(and(eq(t.userId, userId), lt(t.streamId, before), isNotNull(t.deviceId), eq(t.selfOnly, false)))
      .orderBy(desc(t.streamId))
      .limit(1);
    return row?.streamId ?? 0;
  }

  /** The stream's current position: everything at or below it is committed. */
  async currentPosition(): Promise<number> {
    return (await readStreamPositions(this.db)).device_lists;
  }

  /**
   * The users whose devices or keys changed after position `from` and at or before `to`, as
   * `requester` may see them: the requester themself, every other user's changes but those seen
   * only by their maker, and the users whose master keys the requester signed. Who of them shares a room with the requester (what the spec limits
   * `device_lists` and `/keys/changes` to) is the sync component's to decide
   * (server/sync/device-list-changes.ts): the device-list stream knows nothing of rooms.
   */
  async changedUsers(requester: string, from: number, to: number): Promise<string[]> {
    if (to <= from) return [];
    const t = schema.deviceListsStream;
    const rows = await this.db
      .selectDistinct({ userId: t.userId, deviceId: t.deviceId, selfOnly: t.selfOnly })
      .from(t)
      .where(and(gt(t.streamId, from), lte(t.streamId, to), or(eq(t.userId, requester), eq(t.selfOnly, false))));
    // A self-only row naming another user (a signature the requester made of their key) is a change of that user.
    const users = new Set(rows.map((r) => (r.selfOnly && r.deviceId !== null ? r.deviceId : r.userId)));
    return [...users].sort();
  }
}


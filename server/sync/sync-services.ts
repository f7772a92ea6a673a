// The sync component's services, built once per process, and the hooks that feed the notifier:
// every committed write a user can see publishes a change (room events, account data, to-device
// messages, device lists; typing, receipts and presence publish their own).
import type { Logger } from "pino";
import type { OpenedDatabase } from "../../schema/db.ts";
import { serverNameOf } from "../../federation/protocol/identifiers.ts";
import type { E2ee } from "../e2ee/e2ee.ts";
import type { MembershipView } from "../ephemeral/membership.ts";
import { Presence } from "../ephemeral/presence.ts";
import { ReadMarkerService } from "../ephemeral/read-markers.ts";
import { Receipts } from "../ephemeral/receipts.ts";
import { Typing } from "../ephemeral/typing.ts";
import type { RoomServices } from "../rooms/room-services.ts";
import { SyncReads } from "../rooms/sync-reads.ts";
import { HistoryVisibility } from "../rooms/visibility.ts";
import type { UserData } from "../userdata/userdata.ts";
import { DeviceListChanges } from "./device-list-changes.ts";
import { InitialSync } from "./initial-sync.ts";
import { Notifier } from "./notifier.ts";
import { PushActions } from "./push-actions.ts";
import { DEVICES_DELETED, Sync } from "./sync.ts";
import type { Accounts } from "../accounts/accounts.ts";
import { UnreadCounts } from "./unread.ts";

export interface SyncServices {
  notifier: Notifier;
  sync: Sync;
  typing: Typing;
  receipts: Receipts;
  readMarkers: ReadMarkerService;
  presence: Presence;
  unread: UnreadCounts;
  pushActions: PushActions;
  /** `device_lists` of /sync and GET /keys/changes. */
  deviceListChanges: DeviceListChanges;
  /** The legacy GET /initialSync and GET /rooms/{roomId}/initialSync. */
  initialSync: InitialSync;
}

export function createSyncServices(options: {
  database: OpenedDatabase;
  serverName: string;
  logger: Logger;
  now: () => number;
  userData: UserData;
  e2ee: E2ee;
  rooms: RoomServices;
  accounts: Pick<Accounts, "onDevicesDeleted">;
}): SyncServices {
  const { database, logger, now, userData, e2ee, rooms, serverName, accounts } = options;
  const db = database.db;
  const notifier = new Notifier(database, logger);
  const reads = new SyncReads(db, rooms.eventStore);
  const membership: MembershipView = {
    membershipOf: async (roomId, userId) => (await rooms.rooms.membership(roomId, userId))?.membership,
    joinedRooms: (userId) => rooms.rooms.joinedRooms(userId),
    shareARoom: async (a, b) => (await reads.sharingARoom(a, [b])).has(b),
    eventPosition: (roomId, eventId) => reads.eventPosition(roomId, eventId),
  };
  const unread = new UnreadCounts(db);
  const typing = new Typing(db, notifier, membership, now);
  const receipts = new Receipts(db, notifier, membership, unread, now);
  const presence = new Presence(db, notifier, membership, now, logger);
  const pushActions = new PushActions(userData, notifier, serverName);
  const deviceListChanges = new DeviceListChanges(db, reads, e2ee.deviceLists);
  rooms.persister.extendWrites(pushActions.writeExtension);
  const sync = new Sync({
    db,
    notifier,
    reads,
    eventStore: rooms.eventStore,
    visibility: new HistoryVisibility(db),
    userData,
    e2ee,
    typing,
    receipts,
    presence,
    unread,
    pushActions,
    deviceListChanges,
    logger,
  });

  rooms.persister.onBatchPersisted((events) => {
    // The rooms' members see the events; a membership event's target sees it too (an invite,
    // a kick), whether or not they are in the room. One change per committed batch: its positions
    // form one range, so the notifier knows how far it has heard of every event (`first`).
    const targets = events
      .filter((e) => e.type === "m.room.member" && e.stateKey !== undefined && serverNameOf(e.stateKey) === serverName)
      .map((e) => e.stateKey!);
    const orderings = events.map((e) => e.streamOrdering);
    // In memory before anyone wakes: the woken long-polls want exactly these. Should that fail, the
    // rooms' events in memory are dropped (read from the database instead) and the waiters still wake.
    try {
      sync.committed(events);
    } catch (err) {
      logger.error({ err }, "could not keep committed events in memory");
      sync.committed(events.map((e) => ({ ...e, stored: undefined })));
    }
    notifier.publish({
      stream: "events",
      position: Math.max(...orderings),
      first: Math.min(...orderings),
      rooms: [...new Set(events.map((e) => e.roomId))],
      users: [...new Set(targets)],
    });
  });
  rooms.roomAdmin.onRoomPurged((roomId, localUsers) => {
    // A room purged by an admin (server/rooms/room-admin.ts) is gone from the tables; what sync keeps
    // in memory of it (its recent events, its users' memberships and unread counts) must go too, in
    // every process. `remote` is what makes the handlers drop a room's events and the unread counts.
    notifier.publish({ stream: "events", position: notifier.positions().events, rooms: [roomId], users: localUsers, remote: true });
  });
  // A logged-out (deleted) device's long-polls end at once with 401, in whichever process they wait.
  // Another process hears it through NOTIFY like the device-list change the deletion also makes,
  // which is sent after this in the usual case; should the change come first there, that long-poll
  // answers once more (200) and the next request gets 401.
  accounts.onDevicesDeleted((userId, deviceIds) => notifier.broadcast(DEVICES_DELETED, { userId, deviceIds }));
  userData.onAccountData((userId, _roomId, position) => {
    notifier.publish({ stream: "account_data", position, users: [userId] });
  });
  // Whether a to-device sender shares a room with the recipients decides their cap.
  e2ee.toDevice.useRoomSharing((userId, localUsers) => reads.localUsersSharingARoomWith(userId, localUsers));
  e2ee.toDevice.onMessages((targets, position) => {
    notifier.publish({ stream: "to_device", position, users: [...new Set(targets.map((t) => t.userId))] });
  });
  e2ee.deviceLists.onChange((userIds, position) => {
    // Whoever shares a room with a user sees their device list change.
    // A remote user (their server announced the change) has no local memberships: their rooms
    // are those whose current state has them joined.
    // The writer syncing right after its upload must see it: the position is known before the lookup.
    notifier.raise("device_lists", position);
    void Promise.all(userIds.map((u) => (serverNameOf(u) === serverName ? rooms.rooms.joinedRooms(u) : reads.roomsJoinedBy(u))))
      .then((lists) => notifier.publish({ stream: "device_lists", position, users: userIds, rooms: [...new Set(lists.flat())] }))
      .catch((err) => logger.warn({ err }, "could not announce a device-list change"));
  });

  const initialSync = new InitialSync({
    db,
    notifier,
    reads,
    rooms: rooms.rooms,
    timeline: rooms.timeline,
    eventStore: rooms.eventStore,
    visibility: new HistoryVisibility(db),
    directory: rooms.directory,
    presence,
    receipts,
    userData,
  });
  return { notifier, sync, typing, receipts, readMarkers: new ReadMarkerService(userData, receipts, membership), presence, unread, pushActions, deviceListChanges, initialSync };
}

/** Starts what the sync component runs in the background (after the database is open). */
export async function startSyncServices(services: SyncServices): Promise<void> {
  await services.sync.start();
  services.presence.start();
}

/** Shutdown: waiting long-polls answer at once; background work stops. */
export async function stopSyncServices(services: SyncServices): Promise<void> {
  services.presence.stop();
  await services.sync.close();
}

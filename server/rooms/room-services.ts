// The rooms component's services, built once per process: the persister (the one event path),
// the write side (Rooms), the read side (Timeline, Relations), aliases and the room directory.
import type { Logger } from "pino";
import type { OpenedDatabase } from "../../schema/db.ts";
import { serverNameOf } from "../../federation/protocol/identifiers.ts";
import type { SigningKey } from "../../federation/protocol/signing.ts";
import type { Accounts } from "../accounts/accounts.ts";
import { RoomTags } from "../userdata/room-tags.ts";
import type { UserData } from "../userdata/userdata.ts";
import { RoomAliases } from "./aliases.ts";
import { EventReports } from "./event-reports.ts";
import { RoomAdmin } from "./room-admin.ts";
import { Directory } from "./directory.ts";
import { EventStore } from "./event-store.ts";
import { EventPersister, type PersistFaults } from "./persister.ts";
import { Relations } from "./relations.ts";
import { RoomUpgrades } from "./room-upgrades.ts";
import { Rooms } from "./rooms.ts";
import { RoomSearch } from "./search.ts";
import { ServerReads } from "./server-reads.ts";
import { SpaceHierarchy } from "./space-hierarchy.ts";
import { Timeline } from "./timeline.ts";
import { HistoryVisibility } from "./visibility.ts";

export interface RoomServices {
  /** The one "persist an event" path; `onEventsPersisted` is the notifier hook. */
  persister: EventPersister;
  rooms: Rooms;
  eventStore: EventStore;
  timeline: Timeline;
  relations: Relations;
  /** What other servers read of rooms: events, state, auth chains, backfill (the federation read endpoints). */
  serverReads: ServerReads;
  directory: Directory;
  roomTags: RoomTags;
  /** Server-side search (`POST /search`): its index is written by the persist path. */
  search: RoomSearch;
  /** POST /rooms/{roomId}/upgrade. */
  roomUpgrades: RoomUpgrades;
  /** GET /rooms/{roomId}/hierarchy and federation's /hierarchy (spaces). */
  spaceHierarchy: SpaceHierarchy;
  /** What server admins do to rooms (Synapse's admin API): list, inspect, block, shut down, purge. */
  roomAdmin: RoomAdmin;
  /** `POST /rooms/{roomId}/report/{eventId}` and the admins' list of reports. */
  eventReports: EventReports;
}

export function createRoomServices(options: {
  database: OpenedDatabase;
  serverName: string;
  signingKey: SigningKey;
  now: () => number;
  logger: Logger;
  accounts: Accounts;
  userData: UserData;
  /** Test-only fault injection into the persist path (StartOptions.persisterFaults). */
  persisterFaults?: PersistFaults;
  /** The version of rooms created without one (config `default_room_version`). */
  defaultRoomVersion?: string;
}): RoomServices {
  const { database, serverName, signingKey, now, logger, accounts, userData } = options;
  const db = database.db;
  const persister = new EventPersister(database, serverName, signingKey, now, logger, options.persisterFaults);
  const aliases = new RoomAliases(db, serverName, now);
  const rooms = new Rooms(db, persister, accounts, aliases, serverName, logger, options.defaultRoomVersion);
  const eventStore = new EventStore(db, now);
  const visibility = new HistoryVisibility(db);
  const timeline = new Timeline(db, rooms, eventStore, visibility, (userId) => userData.ignoredUsers(userId));
  const relations = new Relations(db, eventStore, timeline, visibility);
  eventStore.setBundler(relations.bundle);
  const search = new RoomSearch(db, eventStore, timeline, visibility, rooms, logger);
  persister.extendWrites(search.writeExtension);
  persister.extendHistoricalWrites(search.historicalWriteExtension);
  persister.onBatchPersisted(search.onBatchPersisted);
  accounts.onProfileChanged((userId, profile) => rooms.profileChanged(userId, profile));
  const roomTags = new RoomTags(userData);
  const roomUpgrades = new RoomUpgrades(db, persister, rooms, aliases, userData, roomTags, serverName, logger);
  persister.onEventsPersisted(roomUpgrades.onEventsPersisted);
  // Another server's change of guest access: local guests leave if it no longer lets them stay
  // (a local change does this before answering its client: Rooms.setState).
  persister.onEventsPersisted((roomId, events) => {
    if (!events.some((e) => e.type === "m.room.guest_access" && e.stateKey === "" && serverNameOf(e.sender) !== serverName)) return;
    rooms.removeGuests(roomId).catch((err: unknown) => logger.warn({ err, roomId }, "could not remove the guests of a room that stopped guest access"));
  });
  const roomAdmin = new RoomAdmin(db, persister, rooms, serverName, now, logger);
  rooms.refuseBlockedRooms((roomId) => roomAdmin.isBlocked(roomId));
  return {
    persister,
    rooms,
    eventStore,
    timeline,
    relations,
    serverReads: new ServerReads(db, eventStore, visibility, serverName, now),
    directory: new Directory(db, rooms, aliases, accounts, serverName),
    roomTags,
    search,
    roomUpgrades,
    spaceHierarchy: new SpaceHierarchy(db, rooms, now),
    roomAdmin,
    eventReports: new EventReports(db, timeline, now),
  };
}

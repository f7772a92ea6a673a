// Room versions: https://spec.matrix.org/latest/rooms/
// Every algorithm that differs between room versions branches on a flag of this table, never on
// the version string, so adding a version is adding a row.

export interface RoomVersionRules {
  id: string;
  /** Redaction algorithm: v9 (`rooms/fragments/v9-redactions`, v9–10) or v11 (v11–12). */
  redaction: "v9" | "v11";
  /** State resolution v2 (`rooms/fragments/v2-state-res`) or v2.1 (`rooms/v12#state-resolution`). */
  stateResolution: "v2" | "v2.1";
  /** Whether `m.room.create` is one of the auth events selected for other events (v1–11). */
  createEventInAuthEvents: boolean;
  /** v12: the room ID is `!` + the create event's reference hash; the create event has no room_id. */
  roomIdIsCreateEventId: boolean;
  /** v10: `content.creator` names the creator and is required. v11+: the create event's sender. */
  creatorFromCreateSender: boolean;
  /** v12: creators (sender + `additional_creators`) have infinite power and may not be in PL `users`. */
  privilegedCreators: boolean;
  /** v10+: power level values must be integers, not strings. */
  integerPowerLevels: boolean;
  /** v11+: `redacts` lives in the content of `m.room.redaction`, not at the top level. */
  redactsInContent: boolean;
  /** v8+: `restricted` joins via `join_authorised_via_users_server`. */
  restrictedJoinRule: boolean;
  /** v10+: the `knock_restricted` join rule. */
  knockRestrictedJoinRule: boolean;
  /** v6+: events must be canonical JSON (integers only, in range). */
  strictCanonicalJson: boolean;
  /**
   * Auth events must be in the same room as the event (v12 rule 3.5, MSC4307). Applied to every
   * version we support: an auth event from another room can never be right.
   */
  authEventsInSameRoom: boolean;
}

const V10: RoomVersionRules = {
  id: "10",
  redaction: "v9",
  stateResolution: "v2",
  createEventInAuthEvents: true,
  roomIdIsCreateEventId: false,
  creatorFromCreateSender: false,
  privilegedCreators: false,
  integerPowerLevels: true,
  redactsInContent: false,
  restrictedJoinRule: true,
  knockRestrictedJoinRule: true,
  strictCanonicalJson: true,
  authEventsInSameRoom: true,
};

const V11: RoomVersionRules = { ...V10, id: "11", redaction: "v11", creatorFromCreateSender: true, redactsInContent: true };

const V12: RoomVersionRules = {
  ...V11,
  id: "12",
  stateResolution: "v2.1",
  createEventInAuthEvents: false,
  roomIdIsCreateEventId: true,
  privilegedCreators: true,
};

/** The room versions the spec lists as stable: what auth rule 1 calls "recognised" versions. */
export const STABLE_ROOM_VERSIONS: readonly string[] = ["1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12"];

/** The room versions Parley implements, oldest first. */
export const SUPPORTED_ROOM_VERSIONS: readonly string[] = ["10", "11", "12"];

/** "Servers SHOULD use room version 12 as the default room version when creating new rooms." */
export const DEFAULT_ROOM_VERSION = "12";

const RULES = new Map<string, RoomVersionRules>([
  ["10", V10],
  ["11", V11],
  ["12", V12],
]);

export class UnsupportedRoomVersionError extends Error {
  override name = "UnsupportedRoomVersionError";
  constructor(readonly roomVersion: string) {
    super(`room version ${JSON.stringify(roomVersion)} is not supported (supported: ${SUPPORTED_ROOM_VERSIONS.join(", ")})`);
  }
}

export function isSupportedRoomVersion(id: string): boolean {
  return RULES.has(id);
}

export function isRecognisedRoomVersion(id: unknown): boolean {
  return typeof id === "string" && STABLE_ROOM_VERSIONS.includes(id);
}

/** The rules of a supported room version. Throws UnsupportedRoomVersionError otherwise. */
export function roomVersionRules(version: string | RoomVersionRules): RoomVersionRules {
  if (typeof version !== "string") return version;
  const rules = RULES.get(version);
  if (!rules) throw new UnsupportedRoomVersionError(version);
  return rules;
}

/**
 * The `m.room_versions` capability (`GET /capabilities`). "available" lists the versions this
 * server supports, not every stable version: a client may create a room in any of them.
 */
export function roomVersionsCapability(): { default: string; available: Record<string, "stable" | "unstable"> } {
  const available: Record<string, "stable" | "unstable"> = {};
  for (const id of SUPPORTED_ROOM_VERSIONS) available[id] = "stable";
  return { default: DEFAULT_ROOM_VERSION, available };
}

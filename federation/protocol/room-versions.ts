// Room versions: https://spec.matrix.org/latest/rooms/
// Every algorithm that differs between room versions branches on a flag of this table, never on
// the version string, so adding a version is adding a row.

export interface RoomVersionRules {
  id: string;
  /**
   * Event format. v1 (room versions 1–2): the PDU carries `event_id` (`$opaque:domain`, chosen by
   * its server) and names prev and auth events as `[event_id, {hashes}]` pairs. v3: no event_id,
   * plain ID lists, IDs are the reference hash in standard unpadded base64. v4 (4+): URL-safe base64.
   */
  eventFormat: "v1" | "v3" | "v4";
  /**
   * Redaction algorithm (rooms/fragments/*-redactions): v1 (1–5, keeps m.room.aliases `aliases`),
   * v6 (6–7), v8 (8: join rules keep `allow`), v9 (9–10: members keep
   * `join_authorised_via_users_server`), v11 (11–12).
   */
  redaction: "v1" | "v6" | "v8" | "v9" | "v11";
  /** State resolution v1 (room version 1), v2 (`rooms/fragments/v2-state-res`, 2–11) or v2.1 (`rooms/v12`). */
  stateResolution: "v1" | "v2" | "v2.1";
  /** Whether `m.room.create` is one of the auth events selected for other events (v1–11). */
  createEventInAuthEvents: boolean;
  /** v12: the room ID is `!` + the create event's reference hash; the create event has no room_id. */
  roomIdIsCreateEventId: boolean;
  /** v1–10: `content.creator` names the creator and is required. v11+: the create event's sender. */
  creatorFromCreateSender: boolean;
  /** v12: creators (sender + `additional_creators`) have infinite power and may not be in PL `users`. */
  privilegedCreators: boolean;
  /**
   * v10+: power level values must be integers. Before, they may be strings holding an integer
   * (v1-stringy-power-levels) or floats truncated toward zero (v1-floaty-power-levels).
   */
  integerPowerLevels: boolean;
  /** v11+: `redacts` lives in the content of `m.room.redaction`, not at the top level. */
  redactsInContent: boolean;
  /** v1–2: auth rule 11 authorises `m.room.redaction` by the redact level or the event IDs' domains. */
  redactionAuthRule: boolean;
  /** v1–5: auth rule 4 lets only the server named by the state_key send `m.room.aliases`. */
  aliasesAuthRule: boolean;
  /** v6+: the power levels rules also cover `notifications`. */
  notificationsPowerLevels: boolean;
  /** v7+: the `knock` join rule and membership. */
  knockJoinRule: boolean;
  /** v8+: `restricted` joins via `join_authorised_via_users_server`. */
  restrictedJoinRule: boolean;
  /** v10+: the `knock_restricted` join rule. */
  knockRestrictedJoinRule: boolean;
  /** v6+: events must be canonical JSON (integers only, in range). */
  strictCanonicalJson: boolean;
  /** v5+: a signing key counts only for events up to its `valid_until_ts` (v5-signing-requirements). */
  enforceKeyValidity: boolean;
  /**
   * Auth events must be in the same room as the event (v12 rule 3.5, MSC4307). Applied to every
   * version we support: an auth event from another room can never be right.
   */
  authEventsInSameRoom: boolean;
}

const V1: RoomVersionRules = {
  id: "1",
  eventFormat: "v1",
  redaction: "v1",
  stateResolution: "v1",
  createEventInAuthEvents: true,
  roomIdIsCreateEventId: false,
  creatorFromCreateSender: false,
  privilegedCreators: false,
  integerPowerLevels: false,
  redactsInContent: false,
  redactionAuthRule: true,
  aliasesAuthRule: true,
  notificationsPowerLevels: false,
  knockJoinRule: false,
  restrictedJoinRule: false,
  knockRestrictedJoinRule: false,
  strictCanonicalJson: false,
  enforceKeyValidity: false,
  authEventsInSameRoom: true,
};

const V2: RoomVersionRules = { ...V1, id: "2", stateResolution: "v2" };
const V3: RoomVersionRules = { ...V2, id: "3", eventFormat: "v3", redactionAuthRule: false };
const V4: RoomVersionRules = { ...V3, id: "4", eventFormat: "v4" };
const V5: RoomVersionRules = { ...V4, id: "5", enforceKeyValidity: true };
const V6: RoomVersionRules = {
  ...V5,
  id: "6",
  redaction: "v6",
  aliasesAuthRule: false,
  notificationsPowerLevels: true,
  strictCanonicalJson: true,
};
const V7: RoomVersionRules = { ...V6, id: "7", knockJoinRule: true };
const V8: RoomVersionRules = { ...V7, id: "8", redaction: "v8", restrictedJoinRule: true };
const V9: RoomVersionRules = { ...V8, id: "9", redaction: "v9" };
const V10: RoomVersionRules = { ...V9, id: "10", integerPowerLevels: true, knockRestrictedJoinRule: true };
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
export const SUPPORTED_ROOM_VERSIONS: readonly string[] = STABLE_ROOM_VERSIONS;

/** "Servers SHOULD use room version 12 as the default room version when creating new rooms." */
export const DEFAULT_ROOM_VERSION = "12";

const RULES = new Map<string, RoomVersionRules>([V1, V2, V3, V4, V5, V6, V7, V8, V9, V10, V11, V12].map((rules) => [rules.id, rules]));

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
export function roomVersionsCapability(defaultVersion = DEFAULT_ROOM_VERSION): { default: string; available: Record<string, "stable" | "unstable"> } {
  const available: Record<string, "stable" | "unstable"> = {};
  for (const id of SUPPORTED_ROOM_VERSIONS) available[id] = "stable";
  return { default: defaultVersion, available };
}

// Authorization rules for room versions 1 to 12.
//   v1–2:  content/rooms/fragments/v1-auth-rules.md (rule 11: m.room.redaction by the redact level
//          or the event IDs' domains)
//   v3–5:  content/rooms/fragments/v3-auth-rules.md (rule 4: m.room.aliases)
//   v6:    content/rooms/v6.md (no aliases rule; `notifications` in the power levels rules)
//   v7:    content/rooms/v7.md (the knock join rule and membership)
//   v8–9:  content/rooms/fragments/v8-auth-rules.md (restricted joins)
//   v10:   content/rooms/v10.md#authorization-rules (knock_restricted; power levels must be integers)
//   v11:   content/rooms/v11.md#authorization-rules (creator is the create event's sender)
//   v12:   content/rooms/v12.md#authorization-rules (creators with infinite power, room ID names the
//          create event, the create event is never an auth event, auth events in the same room)
//   Power level values before v10: content/rooms/fragments/v1-stringy-power-levels.md (all of
//   v1–9) and v1-floaty-power-levels.md (v1–5; from v6 canonical JSON keeps floats out of events).
// Every difference branches on a flag of room-versions.ts. Comments quote the rules with v12's
// numbering. v1–5 number them the same from rule 5 on (their rule 3 is m.federate, 4 is
// m.room.aliases, and v1–2 add 11, m.room.redaction); v6–11 number every rule after 1 one lower.
//
// checkAuth applies the rules that depend on a set of state (the event's auth events, the state
// before it, or the current state: checks 4–6 on receipt of a PDU). checkAuthAgainstAuthEvents
// adds the rules about the auth_events list itself and builds that state from the list.

import { isValidUserId, serverNameOf } from "./identifiers.ts";
import { authTypesForEvent } from "./auth-events-selection.ts";
import { createEventIdOfRoom } from "./event-hashes.ts";
import { referencedIds, type RoomEvent } from "./pdu.ts";
import { stateMapKey, type StateMapKey } from "./room-state.ts";
import { isRecognisedRoomVersion, roomVersionRules, type RoomVersionRules } from "./room-versions.ts";
import { decodeBase64, decodeBase64Url } from "./base64.ts";
import { verifyJsonSignature } from "./signing.ts";

export type AuthDecision = { allowed: true } | { allowed: false; reason: string };

/** The state an event is checked against: state map key → event. */
export type AuthState = ReadonlyMap<StateMapKey, RoomEvent>;

type JsonObject = Record<string, unknown>;

const ALLOW: AuthDecision = { allowed: true };
function reject(reason: string): AuthDecision {
  return { allowed: false, reason };
}

function isObject(value: unknown): value is JsonObject {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function isInteger(value: unknown): value is number {
  return typeof value === "number" && Number.isSafeInteger(value);
}

function ownValue(object: JsonObject, key: string): unknown {
  return Object.hasOwn(object, key) ? object[key] : undefined;
}

/**
 * A stringy power level (v1-stringy-power-levels): "a single base 10 integer ... optionally with any
 * number of leading zeroes", "optionally prefixed with a single - or +", "optionally with any number
 * of leading or trailing whitespace characters". The spec does not say which characters are
 * whitespace; these are Python's (str.isspace), which is what Synapse's int() strips. Digits are
 * ASCII only and underscores are not allowed, as the spec's format says (Python's int() would also
 * take "1_0" and non-ASCII digits).
 */
const STRINGY_POWER_LEVEL =
  /^[\t\n\v\f\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*([+-]?[0-9]+)[\t\n\v\f\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$/;

/**
 * A value of an m.room.power_levels event read as a power level, or undefined if it is not one.
 * v10+ (integerPowerLevels): only integers. v1–9: also a string holding an integer in the format
 * above, and a number, truncated toward zero (v1-floaty-power-levels: `50.57` is 50; only v1–5
 * events can carry floats, v6+ refuse them as non-canonical JSON on receipt). Numbers or strings
 * outside the range of a double (JSON.parse makes `1e400` Infinity) are not power levels.
 * Booleans and null are not power levels in any version (Python's int() would read true as 1).
 */
export function powerLevelValue(roomVersion: string | RoomVersionRules, value: unknown): number | undefined {
  const rules = roomVersionRules(roomVersion);
  if (rules.integerPowerLevels) return isInteger(value) ? value : undefined;
  let level: number;
  if (typeof value === "number") level = Math.trunc(value);
  else if (typeof value === "string") {
    const integer = STRINGY_POWER_LEVEL.exec(value)?.[1];
    if (integer === undefined) return undefined;
    level = Number(integer);
  } else return undefined;
  // + 0 turns -0 (from "-0" or -0.5) into 0.
  return Number.isFinite(level) ? level + 0 : undefined;
}

/**
 * A power level the rules need holds a value that is not a power level. Only possible before v10,
 * where rule 10 checks only `users`: `{"ban": "fifty"}` passes it. The spec is silent on what such
 * a level means; Synapse 1.67 (synapse/event_auth.py) calls int() on it when a rule reads it, and
 * the ValueError stops it from accepting the event. So an event whose check needs such a level is
 * rejected (checkAuth catches this), and an event whose rules do not read it is unaffected.
 */
class UnreadablePowerLevel extends Error {
  override name = "UnreadablePowerLevel";
  constructor(where: string, value: unknown) {
    super(`power levels: ${where} is ${JSON.stringify(value)}, which is not a power level`);
  }
}

/**
 * What a reader does with a value that is not a power level: the auth rules refuse the event
 * (UnreadablePowerLevel); userPowerLevel, which other components call, treats it as absent.
 */
type OnUnreadable = "refuse" | "ignore";

/**
 * The level at `key` of a power levels object, or undefined if there is none. null counts as
 * absent, as in Synapse's get_named_level and get_user_power_level (its get_send_level and its
 * power levels change check raise on a null instead; we do not copy that).
 */
function levelIn(rules: RoomVersionRules, object: JsonObject, key: string, where: string, onUnreadable: OnUnreadable): number | undefined {
  const value = ownValue(object, key);
  if (value === undefined || value === null) return undefined;
  const level = powerLevelValue(rules, value);
  if (level === undefined && onUnreadable === "refuse") throw new UnreadablePowerLevel(where, value);
  return level;
}

/** The `users`, `events` or `notifications` object of power levels content, if present (null counts as absent). */
function levelMapIn(content: JsonObject, field: string, onUnreadable: OnUnreadable): JsonObject | undefined {
  const value = ownValue(content, field);
  if (value === undefined || value === null) return undefined;
  if (isObject(value)) return value;
  if (onUnreadable === "refuse") throw new UnreadablePowerLevel(field, value);
  return undefined;
}

/**
 * The room's creators. v12: the create event's sender plus `content.additional_creators`.
 * v11: its sender. v1–10: `content.creator`.
 */
export function roomCreators(roomVersion: string | RoomVersionRules, createEvent: RoomEvent): Set<string> {
  const rules = roomVersionRules(roomVersion);
  if (!rules.creatorFromCreateSender) {
    const creator = createEvent.content.creator;
    return new Set(typeof creator === "string" ? [creator] : []);
  }
  const creators = new Set([createEvent.sender]);
  if (rules.privilegedCreators) {
    const additional = createEvent.content.additional_creators;
    if (Array.isArray(additional)) for (const user of additional) if (typeof user === "string") creators.add(user);
  }
  return creators;
}

function levelOfUser(
  rules: RoomVersionRules,
  userId: string,
  createEvent: RoomEvent | undefined,
  powerLevels: RoomEvent | undefined,
  onUnreadable: OnUnreadable,
): number {
  const creators = createEvent ? roomCreators(rules, createEvent) : new Set<string>();
  if (rules.privilegedCreators && creators.has(userId)) return Number.POSITIVE_INFINITY;
  if (powerLevels) {
    const content = powerLevels.content;
    const users = levelMapIn(content, "users", onUnreadable);
    const level = users ? levelIn(rules, users, userId, `the level of ${userId}`, onUnreadable) : undefined;
    return level ?? levelIn(rules, content, "users_default", "users_default", onUnreadable) ?? 0;
  }
  return creators.has(userId) ? 100 : 0;
}

/**
 * A user's power level given the create event and the m.room.power_levels event (if any).
 * v12 creators have infinite power. Without a power levels event, "the room's creator has a
 * power level of 100, and all other users have a power level of 0". Before v10 values may be
 * strings or floats (powerLevelValue); one that is not a power level at all counts as absent here
 * (the auth rules instead refuse an event that needs it).
 */
export function userPowerLevel(
  roomVersion: string | RoomVersionRules,
  userId: string,
  createEvent: RoomEvent | undefined,
  powerLevels: RoomEvent | undefined,
): number {
  return levelOfUser(roomVersionRules(roomVersion), userId, createEvent, powerLevels, "ignore");
}

const NAMED_LEVEL_DEFAULTS = { invite: 0, kick: 50, ban: 50, redact: 50 } as const;

/** The invite, kick, ban or redact level: "The invite level defaults to 0 ... the others default to 50." */
function namedLevel(rules: RoomVersionRules, powerLevels: RoomEvent | undefined, name: keyof typeof NAMED_LEVEL_DEFAULTS): number {
  const level = powerLevels ? levelIn(rules, powerLevels.content, name, name, "refuse") : undefined;
  return level ?? NAMED_LEVEL_DEFAULTS[name];
}

/** The required power level to send an event of this type (state_default 50, events_default 0). */
function requiredPowerLevel(rules: RoomVersionRules, powerLevels: RoomEvent | undefined, type: string, isState: boolean): number {
  const content = powerLevels?.content ?? {};
  const events = levelMapIn(content, "events", "refuse");
  const level = events ? levelIn(rules, events, type, `events[${JSON.stringify(type)}]`, "refuse") : undefined;
  if (level !== undefined) return level;
  const fallback = isState ? "state_default" : "events_default";
  return levelIn(rules, content, fallback, fallback, "refuse") ?? (isState ? 50 : 0);
}

/** Reads the bits of state the rules ask about. */
class StateView {
  readonly create: RoomEvent | undefined;
  readonly powerLevels: RoomEvent | undefined;

  constructor(
    private readonly rules: RoomVersionRules,
    private readonly state: AuthState,
  ) {
    this.create = state.get(stateMapKey("m.room.create", ""));
    this.powerLevels = state.get(stateMapKey("m.room.power_levels", ""));
  }

  /** "If the user does not have a membership event then they are presumed to be in the leave state." */
  membership(userId: string): string {
    const membership = this.state.get(stateMapKey("m.room.member", userId))?.content.membership;
    return typeof membership === "string" ? membership : "leave";
  }

  joinRule(): unknown {
    return this.state.get(stateMapKey("m.room.join_rules", ""))?.content.join_rule;
  }

  powerLevel(userId: string): number {
    return levelOfUser(this.rules, userId, this.create, this.powerLevels, "refuse");
  }

  namedLevel(name: keyof typeof NAMED_LEVEL_DEFAULTS): number {
    return namedLevel(this.rules, this.powerLevels, name);
  }

  get(type: string, stateKey: string): RoomEvent | undefined {
    return this.state.get(stateMapKey(type, stateKey));
  }
}

function describeLevel(level: number): string {
  return level === Number.POSITIVE_INFINITY ? "infinite (room creator)" : String(level);
}

/**
 * Checks an event against the authorization rules of its room version, given the state to check
 * it against (state map key → event; it must include the m.room.create event). The reason says
 * which rule refused it.
 */
export function checkAuth(roomVersion: string | RoomVersionRules, event: RoomEvent, authState: AuthState): AuthDecision {
  const rules = roomVersionRules(roomVersion);
  try {
    return checkAuthRules(rules, event, authState);
  } catch (err) {
    if (err instanceof UnreadablePowerLevel) return reject(err.message);
    throw err;
  }
}

function checkAuthRules(rules: RoomVersionRules, event: RoomEvent, authState: AuthState): AuthDecision {
  // 1. If type is m.room.create:
  if (event.type === "m.room.create") return checkCreate(rules, event);

  const state = new StateView(rules, authState);
  const create = state.create;
  if (!create) return reject("there is no m.room.create event in the room state");
  if (rules.roomIdIsCreateEventId) {
    // 2. If the event's room_id is not an event ID for an accepted (not rejected) m.room.create
    //    event, with the sigil ! instead of $, reject.
    if (typeof event.room_id !== "string" || !event.room_id.startsWith("!") || createEventIdOfRoom(event.room_id) !== create.event_id) {
      return reject(`room_id ${JSON.stringify(event.room_id)} does not name the room's m.room.create event ${create.event_id}`);
    }
  }

  // 4. If the content of the m.room.create event in the room state has the property m.federate set
  //    to false, and the sender domain of the event does not match the sender domain of the create
  //    event, reject.
  if (create.content["m.federate"] === false && serverNameOf(event.sender) !== serverNameOf(create.sender)) {
    return reject(`the room does not federate (m.federate is false) and ${event.sender} is not on the creator's server`);
  }

  // (v1–5 rule 4) If type is m.room.aliases: allow if and only if it has a state_key that is the
  // sender's domain. From v6 it is an ordinary state event, held to the rules below.
  if (rules.aliasesAuthRule && event.type === "m.room.aliases") return checkAliases(event);

  // 5. If type is m.room.member:
  if (event.type === "m.room.member") return checkMember(rules, event, state);

  // 6. If the sender's current membership state is not join, reject.
  const senderMembership = state.membership(event.sender);
  if (senderMembership !== "join") return reject(`sender ${event.sender} is not joined to the room (membership: ${senderMembership})`);

  const senderLevel = state.powerLevel(event.sender);
  // 7. If type is m.room.third_party_invite: allow if and only if sender's current power level is
  //    greater than or equal to the invite level.
  if (event.type === "m.room.third_party_invite") {
    const inviteLevel = state.namedLevel("invite");
    return senderLevel >= inviteLevel
      ? ALLOW
      : reject(`sender's power level ${describeLevel(senderLevel)} is below the invite level ${inviteLevel} needed for m.room.third_party_invite`);
  }

  // 8. If the event type's required power level is greater than the sender's power level, reject.
  const isState = typeof event.state_key === "string";
  const required = requiredPowerLevel(rules, state.powerLevels, event.type, isState);
  if (required > senderLevel) {
    return reject(`sending ${event.type} needs power level ${required}; sender ${event.sender} has ${describeLevel(senderLevel)}`);
  }

  // 9. If the event has a state_key that starts with an @ and does not match the sender, reject.
  if (isState && event.state_key!.startsWith("@") && event.state_key !== event.sender) {
    return reject(`state_key ${event.state_key} starts with @ and is not the sender ${event.sender}`);
  }

  // 10. If type is m.room.power_levels:
  if (event.type === "m.room.power_levels") return checkPowerLevels(rules, event, state, senderLevel);

  // (v1–2 rule 11) If type is m.room.redaction: the redact level, or the event IDs' domains. From
  // v3 "the redact level is not considered by the auth rules" (it is checked when the redaction is
  // applied: Handling redactions).
  if (rules.redactionAuthRule && event.type === "m.room.redaction") return checkRedaction(rules, event, state, senderLevel);

  // 11. Otherwise, allow.
  return ALLOW;
}

function checkCreate(rules: RoomVersionRules, event: RoomEvent): AuthDecision {
  // 1.1 If it has any prev_events, reject.
  if (event.prev_events.length > 0) return reject("m.room.create must not have prev_events");
  if (rules.roomIdIsCreateEventId) {
    // 1.2 (v12) If the event has a room_id, reject.
    if (event.room_id !== undefined) return reject("m.room.create must not have a room_id in this room version (the room ID is derived from it)");
  } else {
    // 1.2 If the domain of the room_id does not match the domain of the sender, reject.
    if (typeof event.room_id !== "string" || serverNameOf(event.room_id) !== serverNameOf(event.sender)) {
      return reject(`the domain of room_id ${event.room_id} does not match the domain of the sender ${event.sender}`);
    }
  }
  // 1.3 If content.room_version is present and is not a recognised version, reject.
  if (Object.hasOwn(event.content, "room_version") && !isRecognisedRoomVersion(event.content.room_version)) {
    return reject(`content.room_version ${JSON.stringify(event.content.room_version)} is not a recognised room version`);
  }
  // 1.4 (v1–10) If content has no creator property, reject.
  if (!rules.creatorFromCreateSender && !Object.hasOwn(event.content, "creator")) {
    return reject("m.room.create content has no creator property");
  }
  // 1.4 (v12) If additional_creators is present in content and is not an array of strings where
  //     each string passes the same user ID validation applied to sender, reject.
  if (rules.privilegedCreators && Object.hasOwn(event.content, "additional_creators")) {
    const additional = event.content.additional_creators;
    if (!Array.isArray(additional) || !additional.every((user) => isValidUserId(user))) {
      return reject("content.additional_creators must be an array of valid user IDs");
    }
  }
  return ALLOW;
}

function checkAliases(event: RoomEvent): AuthDecision {
  // 4.1 (v1–5) If event has no state_key, reject.
  if (typeof event.state_key !== "string") return reject("m.room.aliases has no state_key");
  // 4.2 (v1–5) If sender's domain doesn't match state_key, reject.
  const senderDomain = serverNameOf(event.sender);
  if (event.state_key !== senderDomain) {
    return reject(`m.room.aliases with state_key ${JSON.stringify(event.state_key)} may only be sent from that server, not ${senderDomain}`);
  }
  // 4.3 (v1–5) Otherwise, allow.
  return ALLOW;
}

function checkRedaction(rules: RoomVersionRules, event: RoomEvent, state: StateView, senderLevel: number): AuthDecision {
  // 11.1 (v1–2) If the sender's power level is greater than or equal to the redact level, allow.
  const redactLevel = state.namedLevel("redact");
  if (senderLevel >= redactLevel) return ALLOW;
  // 11.2 (v1–2) If the domain of the event_id of the event being redacted is the same as the
  //      domain of the event_id of the m.room.redaction, allow. (v1–2 event IDs are
  //      `$opaque:domain`.) A redaction that names no event has no such domain, so 11.3 refuses it
  //      (Synapse 1.67 allows one whose `redacts` is not a string; the spec's rule does not).
  const redacts = rules.redactsInContent ? event.content.redacts : event.redacts;
  const domain = serverNameOf(event.event_id);
  if (typeof redacts === "string" && domain !== undefined && serverNameOf(redacts) === domain) return ALLOW;
  // 11.3 (v1–2) Otherwise, reject.
  return reject(
    `${event.sender} (power level ${describeLevel(senderLevel)}, redact level ${redactLevel}) cannot redact ${typeof redacts === "string" ? redacts : "an unnamed event"}: it is not from the redaction's server ${domain}`,
  );
}

function checkMember(rules: RoomVersionRules, event: RoomEvent, state: StateView): AuthDecision {
  // 5.1 If there is no state_key property, or no membership property in content, reject.
  if (typeof event.state_key !== "string") return reject("m.room.member has no state_key");
  if (!Object.hasOwn(event.content, "membership")) return reject("m.room.member content has no membership");
  const target = event.state_key;
  const membership = event.content.membership;
  const sender = event.sender;
  // 5.2 join_authorised_via_users_server: "If the event is not validly signed by the homeserver
  //     of the user ID denoted by the key, reject." Signatures need keys, so this is checked with
  //     the others on receipt (event-signing.ts serversThatMustSign), before the auth rules.
  const senderMembership = state.membership(sender);
  const targetMembership = state.membership(target);
  const joinRule = state.joinRule();
  // Power levels are read only by the rules that need them: before v10 one may hold a value that
  // is not a power level, and that refuses only the events whose rules read it. (Synapse 1.67
  // reads the sender's, the target's, the invite and the ban level for every membership change.)

  switch (membership) {
    case "join": {
      // 5.3.1 If the only previous event is an m.room.create and the state_key is the creator
      //       (v1–10: content.creator; v11+: the sender of the m.room.create), allow.
      const create = state.create!;
      const creator = rules.creatorFromCreateSender ? create.sender : create.content.creator;
      const prevEvents = referencedIds(event.prev_events);
      if (prevEvents.length === 1 && prevEvents[0] === create.event_id && target === creator) return ALLOW;
      // 5.3.2 If the sender does not match state_key, reject.
      if (sender !== target) return reject(`${sender} cannot join on behalf of ${target}`);
      // 5.3.3 If the sender is banned, reject.
      if (senderMembership === "ban") return reject(`${sender} is banned from the room`);
      // 5.3.4 If the join_rule is invite or knock (v7+) then allow if membership state is invite or join.
      if (joinRule === "invite" || (joinRule === "knock" && rules.knockJoinRule)) {
        return senderMembership === "invite" || senderMembership === "join"
          ? ALLOW
          : reject(`the join rule is ${joinRule} and ${sender} is not invited (membership: ${senderMembership})`);
      }
      // 5.3.5 If the join_rule is restricted (v8+) or knock_restricted (v10+):
      if ((joinRule === "restricted" && rules.restrictedJoinRule) || (joinRule === "knock_restricted" && rules.knockRestrictedJoinRule)) {
        // 5.3.5.1 If membership state is join or invite, allow.
        if (senderMembership === "join" || senderMembership === "invite") return ALLOW;
        // 5.3.5.2 If the join_authorised_via_users_server key in content is not a user with
        //         sufficient permission to invite other users, reject.
        const authoriser = event.content.join_authorised_via_users_server;
        if (typeof authoriser !== "string") return reject(`the join rule is ${joinRule} and the join names no join_authorised_via_users_server`);
        if (state.membership(authoriser) !== "join") return reject(`join_authorised_via_users_server ${authoriser} is not joined to the room`);
        const inviteLevel = state.namedLevel("invite");
        const authoriserLevel = state.powerLevel(authoriser);
        if (authoriserLevel < inviteLevel) {
          return reject(`join_authorised_via_users_server ${authoriser} has power level ${describeLevel(authoriserLevel)}, below the invite level ${inviteLevel}`);
        }
        // 5.3.5.3 Otherwise, allow.
        return ALLOW;
      }
      // 5.3.6 If the join_rule is public, allow.
      if (joinRule === "public") return ALLOW;
      // 5.3.7 Otherwise, reject.
      return reject(`${sender} may not join: the join rule is ${joinRule === undefined ? "not set" : JSON.stringify(joinRule)}`);
    }
    case "invite": {
      // 5.4.1 If content has a third_party_invite property:
      if (Object.hasOwn(event.content, "third_party_invite")) return checkThirdPartyInvite(event, state, targetMembership);
      // 5.4.2 If the sender's current membership state is not join, reject.
      if (senderMembership !== "join") return reject(`${sender} cannot invite: not joined to the room (membership: ${senderMembership})`);
      // 5.4.3 If target user's current membership state is join or ban, reject.
      if (targetMembership === "join" || targetMembership === "ban") return reject(`${target} cannot be invited: membership is ${targetMembership}`);
      // 5.4.4 If the sender's power level is greater than or equal to the invite level, allow.
      const senderLevel = state.powerLevel(sender);
      const inviteLevel = state.namedLevel("invite");
      if (senderLevel >= inviteLevel) return ALLOW;
      // 5.4.5 Otherwise, reject.
      return reject(`${sender} has power level ${describeLevel(senderLevel)}, below the invite level ${inviteLevel}`);
    }
    case "leave": {
      // 5.5.1 If the sender matches state_key, allow if and only if that user's current membership
      //       state is invite, join, or knock (v7+).
      if (sender === target) {
        return senderMembership === "invite" || senderMembership === "join" || (senderMembership === "knock" && rules.knockJoinRule)
          ? ALLOW
          : reject(`${sender} cannot leave: membership is ${senderMembership}`);
      }
      // 5.5.2 If the sender's current membership state is not join, reject.
      if (senderMembership !== "join") return reject(`${sender} cannot kick or unban: not joined to the room (membership: ${senderMembership})`);
      // 5.5.3 If the target user's current membership state is ban, and the sender's power level
      //       is less than the ban level, reject.
      const senderLevel = state.powerLevel(sender);
      if (targetMembership === "ban") {
        const banLevel = state.namedLevel("ban");
        if (senderLevel < banLevel) return reject(`${sender} has power level ${describeLevel(senderLevel)}, below the ban level ${banLevel} needed to unban`);
      }
      // 5.5.4 If the sender's power level is greater than or equal to the kick level, and the
      //       target user's power level is less than the sender's power level, allow.
      const kickLevel = state.namedLevel("kick");
      const targetLevel = state.powerLevel(target);
      if (senderLevel >= kickLevel && targetLevel < senderLevel) return ALLOW;
      // 5.5.5 Otherwise, reject.
      return reject(
        `${sender} (power level ${describeLevel(senderLevel)}) cannot kick ${target} (power level ${describeLevel(targetLevel)}; kick level ${kickLevel})`,
      );
    }
    case "ban": {
      // 5.6.1 If the sender's current membership state is not join, reject.
      if (senderMembership !== "join") return reject(`${sender} cannot ban: not joined to the room (membership: ${senderMembership})`);
      // 5.6.2 If the sender's power level is greater than or equal to the ban level, and the target
      //       user's power level is less than the sender's power level, allow.
      const senderLevel = state.powerLevel(sender);
      const targetLevel = state.powerLevel(target);
      const banLevel = state.namedLevel("ban");
      if (senderLevel >= banLevel && targetLevel < senderLevel) return ALLOW;
      // 5.6.3 Otherwise, reject.
      return reject(
        `${sender} (power level ${describeLevel(senderLevel)}) cannot ban ${target} (power level ${describeLevel(targetLevel)}; ban level ${banLevel})`,
      );
    }
    case "knock": {
      // Before v7 knock is not a membership: 5.8 refuses it.
      if (!rules.knockJoinRule) return reject(`unknown membership "knock" (knocking needs room version 7 or later)`);
      // 5.7.1 If the join_rule is anything other than knock or knock_restricted (v10+), reject.
      if (joinRule !== "knock" && !(joinRule === "knock_restricted" && rules.knockRestrictedJoinRule)) {
        return reject(`cannot knock: the join rule is ${joinRule === undefined ? "not set" : JSON.stringify(joinRule)}`);
      }
      // 5.7.2 If sender does not match state_key, reject.
      if (sender !== target) return reject(`${sender} cannot knock on behalf of ${target}`);
      // 5.7.3 If the sender's current membership is not ban, invite, or join, allow.
      if (senderMembership !== "ban" && senderMembership !== "invite" && senderMembership !== "join") return ALLOW;
      // 5.7.4 Otherwise, reject.
      return reject(`${sender} cannot knock: membership is ${senderMembership}`);
    }
    default:
      // 5.8 Otherwise, the membership is unknown. Reject.
      return reject(`unknown membership ${JSON.stringify(membership)}`);
  }
}

function checkThirdPartyInvite(event: RoomEvent, state: StateView, targetMembership: string): AuthDecision {
  const target = event.state_key!;
  // 5.4.1.1 If target user is banned, reject.
  if (targetMembership === "ban") return reject(`${target} is banned from the room`);
  // 5.4.1.2 If content.third_party_invite does not have a signed property, reject.
  const invite = event.content.third_party_invite;
  if (!isObject(invite) || !isObject(invite.signed)) return reject("content.third_party_invite has no signed object");
  const signed = invite.signed;
  // 5.4.1.3 If signed does not have mxid and token properties, reject.
  if (typeof signed.mxid !== "string" || typeof signed.token !== "string") return reject("third_party_invite.signed needs mxid and token");
  // 5.4.1.4 If mxid does not match state_key, reject.
  if (signed.mxid !== target) return reject(`third_party_invite.signed.mxid ${signed.mxid} is not the invited user ${target}`);
  // 5.4.1.5 If there is no m.room.third_party_invite event in the current room state with
  //         state_key matching token, reject.
  const thirdPartyInvite = state.get("m.room.third_party_invite", signed.token);
  if (!thirdPartyInvite) return reject(`no m.room.third_party_invite in the room state for token ${signed.token}`);
  // 5.4.1.6 If sender does not match sender of the m.room.third_party_invite, reject.
  if (thirdPartyInvite.sender !== event.sender) return reject("the invite's sender did not send the m.room.third_party_invite");
  // 5.4.1.7 If any signature in signed matches any public key in the m.room.third_party_invite
  //         event, allow. (public_key, and public_keys[].public_key)
  const publicKeys: Uint8Array[] = [];
  const addKey = (encoded: unknown) => {
    if (typeof encoded !== "string") return;
    for (const decode of [decodeBase64, decodeBase64Url]) {
      try {
        publicKeys.push(decode(encoded));
        return;
      } catch {
        // not this alphabet
      }
    }
  };
  addKey(thirdPartyInvite.content.public_key);
  if (Array.isArray(thirdPartyInvite.content.public_keys)) {
    for (const key of thirdPartyInvite.content.public_keys) if (isObject(key)) addKey(key.public_key);
  }
  const signatures = isObject(signed.signatures) ? signed.signatures : {};
  for (const [entity, byKey] of Object.entries(signatures)) {
    if (!isObject(byKey)) continue;
    for (const keyId of Object.keys(byKey)) {
      if (!keyId.startsWith("ed25519:")) continue;
      if (publicKeys.some((publicKey) => verifyJsonSignature(signed, entity, keyId, publicKey))) return ALLOW;
    }
  }
  // 5.4.1.8 Otherwise, reject.
  return reject("no signature in third_party_invite.signed matches a public key of the m.room.third_party_invite");
}

const POWER_LEVEL_FIELDS = ["users_default", "events_default", "state_default", "ban", "redact", "kick", "invite"] as const;

function checkPowerLevels(rules: RoomVersionRules, event: RoomEvent, state: StateView, senderLevel: number): AuthDecision {
  const content = event.content;
  // `notifications` is covered from v6 (rooms/v6: "the authorisation rules for events of type
  // m.room.power_levels now include a notifications property"); before, only `events`.
  const levelMaps = rules.notificationsPowerLevels ? (["events", "notifications"] as const) : (["events"] as const);
  if (rules.integerPowerLevels) {
    // 10.1 (v10+) If any of the properties users_default, events_default, state_default, ban,
    //      redact, kick, or invite in content are present and not an integer, reject.
    for (const field of POWER_LEVEL_FIELDS) {
      if (Object.hasOwn(content, field) && !isInteger(content[field])) return reject(`power levels: ${field} must be an integer`);
    }
    // 10.2 (v10+) If either of the properties events or notifications in content are present and
    //      not an object with values that are integers, reject.
    for (const field of levelMaps) {
      if (!Object.hasOwn(content, field)) continue;
      const value = content[field];
      if (!isObject(value) || !Object.values(value).every(isInteger)) return reject(`power levels: ${field} must map to integers`);
    }
  } else {
    // v1–9 check the type of `users` only (below). But v1-floaty-power-levels: "Values outside the
    // range represented by IEEE754 binary64 ... cause the powerlevel event to be rejected, as do
    // Infinity, -Infinity and NaN" (JSON.parse reads `1e400` as Infinity).
    const nonFinite = (value: unknown) => typeof value === "number" && !Number.isFinite(value);
    for (const field of POWER_LEVEL_FIELDS) {
      if (nonFinite(ownValue(content, field))) return reject(`power levels: ${field} is outside the range of a double`);
    }
    for (const field of levelMaps) {
      const map = ownValue(content, field);
      if (isObject(map) && Object.values(map).some(nonFinite)) return reject(`power levels: ${field} has a value outside the range of a double`);
    }
  }
  // 10.3 If the users property in content is not an object with keys that are valid user IDs with
  //      values that are integers (v1–9: "or a string that is an integer"), reject.
  const users = Object.hasOwn(content, "users") ? content.users : {};
  if (!isObject(users)) return reject("power levels: users must be an object");
  for (const [user, level] of Object.entries(users)) {
    if (!isValidUserId(user)) return reject(`power levels: ${JSON.stringify(user)} in users is not a valid user ID`);
    if (powerLevelValue(rules, level) === undefined) {
      return reject(`power levels: the level of ${user} must be an integer${rules.integerPowerLevels ? "" : " (or a string holding one)"}`);
    }
  }
  // 10.4 (v12) If the users property in content contains the sender of the m.room.create event or
  //      any of the additional_creators array (if present), reject.
  if (rules.privilegedCreators) {
    for (const creator of roomCreators(rules, state.create!)) {
      if (Object.hasOwn(users, creator)) return reject(`power levels: room creator ${creator} must not be listed in users`);
    }
  }
  // 10.5 If there is no previous m.room.power_levels event in the room, allow.
  const previous = state.powerLevels;
  if (!previous) return ALLOW;
  const old = previous.content;
  // The checks below compare levels, not how they are written: before v10, "50" to 50 is no change.
  // A value on either side that is not a power level refuses the event (UnreadablePowerLevel).
  const level = (object: JsonObject, key: string, where: string) => levelIn(rules, object, key, where, "refuse");
  // 10.6 For the properties users_default, events_default, state_default, ban, redact, kick,
  //      invite check if they were added, changed or removed. For each found alteration: if the
  //      current value is higher than the sender's current power level, reject; if the new value
  //      is higher than the sender's current power level, reject.
  for (const field of POWER_LEVEL_FIELDS) {
    const before = level(old, field, `the current ${field}`);
    const after = level(content, field, field);
    if (before === after) continue;
    if (before !== undefined && before > senderLevel) return reject(`power levels: cannot change ${field} from ${before}, above the sender's level ${describeLevel(senderLevel)}`);
    if (after !== undefined && after > senderLevel) return reject(`power levels: cannot set ${field} to ${after}, above the sender's level ${describeLevel(senderLevel)}`);
  }
  for (const field of levelMaps) {
    const before = levelMapIn(old, field, "refuse") ?? {};
    const after = levelMapIn(content, field, "refuse") ?? {};
    for (const key of new Set([...Object.keys(before), ...Object.keys(after)])) {
      const was = level(before, key, `the current ${field}[${JSON.stringify(key)}]`);
      const now = level(after, key, `${field}[${JSON.stringify(key)}]`);
      if (was === now) continue;
      // 10.7 For each entry being changed in, or removed from, the events or notifications (v6+)
      //      properties: if the current value is greater than the sender's power level, reject.
      if (was !== undefined && was > senderLevel) return reject(`power levels: cannot change ${field}.${key} from ${was}, above the sender's level ${describeLevel(senderLevel)}`);
      // 10.8 For each entry being added to, or changed in, the events or notifications (v6+)
      //      properties: if the new value is greater than the sender's power level, reject.
      if (now !== undefined && now > senderLevel) return reject(`power levels: cannot set ${field}.${key} to ${now}, above the sender's level ${describeLevel(senderLevel)}`);
    }
  }
  const oldUsers = levelMapIn(old, "users", "refuse") ?? {};
  for (const user of new Set([...Object.keys(oldUsers), ...Object.keys(users)])) {
    const was = level(oldUsers, user, `the current level of ${user}`);
    const now = level(users, user, `the level of ${user}`);
    if (was === now) continue;
    // 10.9 For each entry being changed in, or removed from, the users property, other than the
    //      sender's own entry: if the current value is greater than or equal to the sender's
    //      current power level, reject.
    if (user !== event.sender && was !== undefined && was >= senderLevel) {
      return reject(`power levels: cannot change the level of ${user} (${was}): not below the sender's level ${describeLevel(senderLevel)}`);
    }
    // 10.10 For each entry being added to, or changed in, the users property: if the new value is
    //       greater than the sender's current power level, reject.
    if (now !== undefined && now > senderLevel) return reject(`power levels: cannot give ${user} level ${now}, above the sender's level ${describeLevel(senderLevel)}`);
  }
  // 10.11 Otherwise, allow.
  return ALLOW;
}

/** How the auth_events of an event are looked up: the event, and whether it was rejected. */
export type AuthEventLookup = (eventId: string) => { event: RoomEvent; rejected: boolean } | undefined;

/**
 * Checks an event against its own auth_events (check 4 on receipt of a PDU): first the rules
 * about the list itself (v12 rule 3: no duplicate (type, state_key), only the types the auth
 * events selection names, none rejected, all in the same room; v1–11 also: the create event is
 * among them), then all the other rules with the auth events as the state. In v12 the create
 * event is found from the room ID (rule 2) instead.
 */
export function checkAuthAgainstAuthEvents(roomVersion: string | RoomVersionRules, event: RoomEvent, lookup: AuthEventLookup): AuthDecision {
  const rules = roomVersionRules(roomVersion);
  if (event.type === "m.room.create") return checkAuth(rules, event, new Map());

  const authState = new Map<StateMapKey, RoomEvent>();
  if (rules.roomIdIsCreateEventId) {
    // 2. The room_id must be an event ID for an accepted (not rejected) m.room.create event.
    if (typeof event.room_id !== "string" || !event.room_id.startsWith("!")) return reject("the event has no room_id");
    const found = lookup(createEventIdOfRoom(event.room_id));
    if (!found || found.event.type !== "m.room.create" || found.event.state_key !== "") {
      return reject(`room_id ${event.room_id} does not name a known m.room.create event`);
    }
    if (found.rejected) return reject(`the m.room.create event named by room_id ${event.room_id} was rejected`);
    authState.set(stateMapKey("m.room.create", ""), found.event);
  }

  const expected = new Set(authTypesForEvent(rules, event).map(([type, stateKey]) => stateMapKey(type, stateKey)));
  const seen = new Set<StateMapKey>();
  for (const authEventId of referencedIds(event.auth_events)) {
    const found = lookup(authEventId);
    if (!found) return reject(`auth event ${authEventId} is unknown`);
    const authEvent = found.event;
    if (typeof authEvent.state_key !== "string") return reject(`auth event ${authEventId} is not a state event`);
    const key = stateMapKey(authEvent.type, authEvent.state_key);
    // 3.1 If there are duplicate entries for a given type and state_key pair, reject.
    if (seen.has(key)) return reject(`auth_events has more than one (${authEvent.type}, ${JSON.stringify(authEvent.state_key)})`);
    seen.add(key);
    // 3.2 If there are entries whose type and state_key don't match those specified by the auth
    //     events selection algorithm, reject.
    if (!expected.has(key)) return reject(`auth event ${authEventId} (${authEvent.type}, ${JSON.stringify(authEvent.state_key)}) is not one the auth events selection allows`);
    // 3.3 If there are entries which were themselves rejected, reject.
    if (found.rejected) return reject(`auth event ${authEventId} was rejected`);
    // 3.5 If any event in auth_events has a room_id which does not match that of the event being
    //     authorised, reject.
    if (rules.authEventsInSameRoom && authEvent.room_id !== event.room_id) {
      // A v12 create event has no room_id; the selection never allows it, so 3.2 refused it already.
      return reject(`auth event ${authEventId} is in room ${authEvent.room_id}, not ${event.room_id}`);
    }
    authState.set(key, authEvent);
  }
  // 3.4 (v1–11) If there is no m.room.create event among the entries, reject.
  if (rules.createEventInAuthEvents && !seen.has(stateMapKey("m.room.create", ""))) {
    return reject("auth_events does not include the m.room.create event");
  }
  return checkAuth(rules, event, authState);
}

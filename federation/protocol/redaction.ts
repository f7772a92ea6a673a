// The redaction algorithm, per room version:
//   v10     rooms/fragments/v9-redactions.md
//   v11–12  rooms/fragments/v11-redactions.md
// Redaction is what signatures and reference hashes cover, so a difference of one key here
// changes event IDs and breaks signature checks with every other server.

import { roomVersionRules, type RoomVersionRules } from "./room-versions.ts";

type JsonObject = Record<string, unknown>;

const TOP_LEVEL_V9 = [
  "event_id", "type", "room_id", "sender", "state_key", "content", "hashes", "signatures", "depth",
  "prev_events", "prev_state", "auth_events", "origin", "origin_server_ts", "membership",
];

// v11 "no longer protects the top-level origin, membership, and prev_state properties".
const TOP_LEVEL_V11 = [
  "event_id", "type", "room_id", "sender", "state_key", "content", "hashes", "signatures", "depth",
  "prev_events", "auth_events", "origin_server_ts",
];

// Maps: an event type is whatever the sender chose (`constructor`, `__proto__`), never an inherited key.
const CONTENT_V9 = new Map<string, readonly string[]>(Object.entries({
  "m.room.member": ["membership", "join_authorised_via_users_server"],
  "m.room.create": ["creator"],
  "m.room.join_rules": ["join_rule", "allow"],
  "m.room.power_levels": ["ban", "events", "events_default", "kick", "redact", "state_default", "users", "users_default"],
  "m.room.history_visibility": ["history_visibility"],
}));

const CONTENT_V11 = new Map<string, readonly string[]>(Object.entries({
  "m.room.member": ["membership", "join_authorised_via_users_server"],
  "m.room.join_rules": ["join_rule", "allow"],
  "m.room.power_levels": ["ban", "events", "events_default", "invite", "kick", "redact", "state_default", "users", "users_default"],
  "m.room.history_visibility": ["history_visibility"],
  "m.room.redaction": ["redacts"],
}));

function isObject(value: unknown): value is JsonObject {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function pick(source: JsonObject, keys: readonly string[]): JsonObject {
  const out: JsonObject = {};
  for (const key of keys) {
    if (Object.hasOwn(source, key)) out[key] = source[key];
  }
  return out;
}

function redactContent(rules: RoomVersionRules, type: unknown, content: JsonObject): JsonObject {
  if (rules.redaction === "v11") {
    // "m.room.create allows all keys."
    if (type === "m.room.create") return { ...content };
    const kept = pick(content, (typeof type === "string" && CONTENT_V11.get(type)) || []);
    if (type === "m.room.member") {
      // "Additionally, it allows the signed key of the third_party_invite key." An object
      // third_party_invite keeps only `signed` (and stays, possibly empty, as Synapse keeps it);
      // anything else under the key is dropped.
      const invite = content.third_party_invite;
      if (isObject(invite)) kept.third_party_invite = pick(invite, ["signed"]);
    }
    return kept;
  }
  return pick(content, (typeof type === "string" && CONTENT_V9.get(type)) || []);
}

/**
 * Redacts an event (or PDU) as the room version's redaction algorithm says: strips every top-level
 * key not in the list and every content key the event type does not protect. Always returns a
 * `content` object (`{}` when nothing survives). Does not modify its input.
 */
export function redactEvent<T extends object>(roomVersion: string | RoomVersionRules, event: T): JsonObject {
  const rules = roomVersionRules(roomVersion);
  const source = event as JsonObject;
  const redacted = pick(source, rules.redaction === "v11" ? TOP_LEVEL_V11 : TOP_LEVEL_V9);
  redacted.content = redactContent(rules, source.type, isObject(source.content) ? source.content : {});
  return redacted;
}

// The redaction algorithm, per room version:
//   v1–5    rooms/fragments/v1-redactions.md (m.room.aliases keeps `aliases`)
//   v6–7    rooms/fragments/v6-redactions.md
//   v8      rooms/v8.md#redactions (m.room.join_rules also keeps `allow`)
//   v9–10   rooms/fragments/v9-redactions.md (m.room.member also keeps `join_authorised_via_users_server`)
//   v11–12  rooms/fragments/v11-redactions.md
// Redaction is what signatures and reference hashes cover, so a difference of one key here
// changes event IDs and breaks signature checks with every other server.

import { roomVersionRules, type RoomVersionRules } from "./room-versions.ts";

type JsonObject = Record<string, unknown>;

// The same list for v1 to v10.
const TOP_LEVEL_V1 = [
  "event_id", "type", "room_id", "sender", "state_key", "content", "hashes", "signatures", "depth",
  "prev_events", "prev_state", "auth_events", "origin", "origin_server_ts", "membership",
];

// v11 "no longer protects the top-level origin, membership, and prev_state properties".
const TOP_LEVEL_V11 = [
  "event_id", "type", "room_id", "sender", "state_key", "content", "hashes", "signatures", "depth",
  "prev_events", "auth_events", "origin_server_ts",
];

// Maps: an event type is whatever the sender chose (`constructor`, `__proto__`), never an inherited key.
const POWER_LEVELS_V1 = ["ban", "events", "events_default", "kick", "redact", "state_default", "users", "users_default"];

const CONTENT_V6 = {
  "m.room.member": ["membership"],
  "m.room.create": ["creator"],
  "m.room.join_rules": ["join_rule"],
  "m.room.power_levels": POWER_LEVELS_V1,
  "m.room.history_visibility": ["history_visibility"],
};

const CONTENT_V8 = { ...CONTENT_V6, "m.room.join_rules": ["join_rule", "allow"] };

const CONTENT_PRE_V11 = {
  v1: new Map<string, readonly string[]>(Object.entries({ ...CONTENT_V6, "m.room.aliases": ["aliases"] })),
  v6: new Map<string, readonly string[]>(Object.entries(CONTENT_V6)),
  v8: new Map<string, readonly string[]>(Object.entries(CONTENT_V8)),
  v9: new Map<string, readonly string[]>(Object.entries({ ...CONTENT_V8, "m.room.member": ["membership", "join_authorised_via_users_server"] })),
};

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
  return pick(content, (typeof type === "string" && CONTENT_PRE_V11[rules.redaction].get(type)) || []);
}

/**
 * Redacts an event (or PDU) as the room version's redaction algorithm says: strips every top-level
 * key not in the list and every content key the event type does not protect. Always returns a
 * `content` object (`{}` when nothing survives). Does not modify its input.
 */
export function redactEvent<T extends object>(roomVersion: string | RoomVersionRules, event: T): JsonObject {
  const rules = roomVersionRules(roomVersion);
  const source = event as JsonObject;
  const redacted = pick(source, rules.redaction === "v11" ? TOP_LEVEL_V11 : TOP_LEVEL_V1);
  redacted.content = redactContent(rules, source.type, isObject(source.content) ? source.content : {});
  return redacted;
}

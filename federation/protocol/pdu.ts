// The PDU (persistent data unit) and its format checks.
// Schemas: data/api/server-server/definitions/pdu_v1.yaml (rooms 1–2), pdu_v3.yaml (3), pdu_v4.yaml
// (4–10), pdu_v11.yaml, pdu_v12.yaml.
// Size limits: https://spec.matrix.org/latest/client-server-api/#size-limits
//
// "Checks performed on receipt of a PDU", step 1: "Is a valid event, otherwise it is dropped. For an
// event to be valid, it must contain a room_id, and it must comply with the event format of that
// room version." A malformed PDU is refused here, with a reason, before anything else reads it.

import { z } from "zod";
import { CanonicalJsonError, canonicalJson } from "./canonical-json.ts";
import { byteLength, isValidEventId, isValidEventIdWithDomain, isValidHashRoomId, isValidRoomIdWithDomain, isValidUserId } from "./identifiers.ts";
import { roomVersionRules, type RoomVersionRules } from "./room-versions.ts";

export type JsonObject = Record<string, unknown>;

/**
 * How a PDU names its prev and auth events: by event ID (room versions 3+), or (versions 1–2) as an
 * `[event_id, {sha256: reference hash}]` pair. Read the IDs with `referencedIds`.
 */
export type EventReference = string | readonly [eventId: string, hashes: JsonObject];

/**
 * What the authorization rules and state resolution read from an event: its PDU as it travels,
 * with its ID. Event IDs are not part of PDUs from room version 3 on (they are computed), so an
 * event carries its ID beside the PDU; in versions 1–2 the PDU holds it.
 */
export interface RoomEvent {
  event_id: string;
  type: string;
  sender: string;
  /** Absent only on the `m.room.create` event of a v12 room. */
  room_id?: string;
  state_key?: string;
  content: JsonObject;
  origin_server_ts: number;
  prev_events: readonly EventReference[];
  auth_events: readonly EventReference[];
  [key: string]: unknown;
}

/** A PDU as it travels between servers (room versions 3+: no event_id; 1–2: with it). */
export interface Pdu {
  type: string;
  sender: string;
  room_id?: string;
  state_key?: string;
  content: JsonObject;
  origin_server_ts: number;
  depth: number;
  prev_events: EventReference[];
  auth_events: EventReference[];
  hashes: { sha256: string; [algorithm: string]: unknown };
  signatures: Record<string, Record<string, string>>;
  unsigned?: JsonObject;
  [key: string]: unknown;
}

export type Validation<T> = { ok: true; value: T } | { ok: false; reason: string };

/** "A complete event MUST NOT exceed 65536 bytes, ... encoded as Canonical JSON." */
export const MAX_PDU_BYTES = 65_536;
const MAX_ID_BYTES = 255;
const MAX_PREV_EVENTS = 20;
const MAX_AUTH_EVENTS = 10;

const jsonObject = z.record(z.string(), z.unknown(), { error: "must be a JSON object" });
const safeInteger = z.int(); // zod's int() is a safe integer: ±(2^53 - 1)
// Before v6 events need not be canonical JSON: numbers may be floats or beyond ±(2^53 - 1).
const anyNumber = z.number();

const eventIdString = z.string().refine(isValidEventId, "must be an event ID");
const hashedReference = z.tuple([eventIdString, jsonObject], { error: "must be an [event_id, hashes] pair" });

function pduShape(rules: RoomVersionRules) {
  const v1 = rules.eventFormat === "v1";
  const reference = v1 ? hashedReference : eventIdString;
  const integer = rules.strictCanonicalJson ? safeInteger : anyNumber;
  return z.looseObject({
  type: z.string().refine((s) => byteLength(s) <= MAX_ID_BYTES, "must not exceed 255 bytes"),
  sender: z.string().refine(isValidUserId, "must be a valid user ID of at most 255 bytes"),
  room_id: z.string().refine((s) => byteLength(s) <= MAX_ID_BYTES, "must not exceed 255 bytes").optional(),
  state_key: z.string().refine((s) => byteLength(s) <= MAX_ID_BYTES, "must not exceed 255 bytes").optional(),
  content: jsonObject,
  origin_server_ts: integer,
  depth: integer.min(0),
  prev_events: z.array(reference).max(MAX_PREV_EVENTS),
  auth_events: z.array(reference).max(MAX_AUTH_EVENTS),
  hashes: z.looseObject({ sha256: z.string() }),
  signatures: z.record(z.string(), z.record(z.string(), z.string())),
  unsigned: jsonObject.optional(),
  // v1–2: "$opaque_id:domain", part of the PDU. Later versions compute it; one sent along is ignored.
  event_id: v1
    ? z.string().refine(isValidEventIdWithDomain, "must be an event ID of the form $opaque_id:domain")
    : z.string().refine((s) => byteLength(s) <= MAX_ID_BYTES, "must not exceed 255 bytes").optional(),
  });
}

const PDU_SHAPES = new Map<RoomVersionRules, ReturnType<typeof pduShape>>();

function valueAt(input: unknown, path: readonly PropertyKey[]): unknown {
  let value = input;
  for (const key of path) {
    if (typeof value !== "object" || value === null || !Object.hasOwn(value, key)) return undefined;
    value = (value as Record<PropertyKey, unknown>)[key];
  }
  return value;
}

/** The first problem zod found, as "field: what is wrong" or "field is required". */
function describeIssues(error: z.ZodError, input: unknown): string {
  const issue = error.issues[0];
  if (!issue) return "invalid";
  const path = issue.path.length > 0 ? issue.path.join(".") : "the event";
  if (issue.code === "invalid_type" && valueAt(input, issue.path) === undefined) return `${path} is required`;
  return `${path}: ${issue.message}`;
}

/**
 * Checks that a value is a well-formed PDU for the room version (step 1 of the checks on receipt).
 * Returns the PDU typed, or the first reason it is not one.
 */
export function validatePdu(roomVersion: string | RoomVersionRules, value: unknown): Validation<Pdu> {
  const rules = roomVersionRules(roomVersion);
  let shape = PDU_SHAPES.get(rules);
  if (!shape) PDU_SHAPES.set(rules, (shape = pduShape(rules)));
  const parsed = shape.safeParse(value);
  if (!parsed.success) return { ok: false, reason: describeIssues(parsed.error, value) };
  const pdu = parsed.data as Pdu;

  const isCreate = pdu.type === "m.room.create";
  if (pdu.room_id === undefined) {
    // v12 create events have no room_id: their ID is the room ID (auth rule 1.2 refuses one that does).
    if (!(rules.roomIdIsCreateEventId && isCreate)) return { ok: false, reason: "room_id is required" };
  } else if (rules.roomIdIsCreateEventId) {
    if (!isCreate && !isValidHashRoomId(pdu.room_id)) {
      return { ok: false, reason: "room_id must be '!' followed by the create event's reference hash (43 URL-safe base64 characters)" };
    }
  } else if (!isValidRoomIdWithDomain(pdu.room_id)) {
    return { ok: false, reason: "room_id must be of the form !opaque_id:server_name" };
  }
  if (isCreate && pdu.state_key !== "") return { ok: false, reason: "m.room.create must have an empty state_key" };
  if (pdu.type === "m.room.member" && pdu.state_key === undefined) {
    return { ok: false, reason: "m.room.member must have a state_key" };
  }
  if (!rules.redactsInContent && pdu.type === "m.room.redaction" && pdu.redacts !== undefined && typeof pdu.redacts !== "string") {
    return { ok: false, reason: "redacts must be an event ID" };
  }

  let size: number;
  try {
    size = Buffer.byteLength(canonicalJson(pdu, { strict: rules.strictCanonicalJson }), "utf8");
  } catch (err) {
    if (err instanceof CanonicalJsonError) return { ok: false, reason: `not canonical JSON: ${err.message}` };
    throw err;
  }
  if (size > MAX_PDU_BYTES) return { ok: false, reason: `PDU is ${size} bytes of canonical JSON; the limit is ${MAX_PDU_BYTES}` };
  return { ok: true, value: pdu };
}

const roomEventShape = z.looseObject({
  event_id: z.string().refine(isValidEventId, "must be an event ID"),
  type: z.string(),
  sender: z.string(),
  room_id: z.string().optional(),
  state_key: z.string().optional(),
  content: jsonObject,
  origin_server_ts: z.number(),
  prev_events: z.array(z.union([z.string(), z.tuple([z.string(), jsonObject])])),
  auth_events: z.array(z.union([z.string(), z.tuple([z.string(), jsonObject])])),
});

/**
 * Checks the fields the authorization rules and state resolution read, on an event that carries
 * its event_id (as stored, or as written in a test scenario). Hashes and signatures are not looked at.
 */
export function validateRoomEvent(value: unknown): Validation<RoomEvent> {
  const parsed = roomEventShape.safeParse(value);
  if (!parsed.success) {
    const id = typeof (value as { event_id?: unknown })?.event_id === "string" ? ` ${(value as { event_id: string }).event_id}` : "";
    return { ok: false, reason: `event${id}: ${describeIssues(parsed.error, value)}` };
  }
  return { ok: true, value: parsed.data as RoomEvent };
}

/**
 * The PDU of an event, as it travels: from room version 3 on, the event without the event_id
 * attached to it locally; in versions 1–2 the event_id is part of the PDU and stays.
 */
export function pduOf<T extends object>(roomVersion: string | RoomVersionRules, event: T): T {
  if (roomVersionRules(roomVersion).eventFormat === "v1") return event;
  if (!Object.hasOwn(event, "event_id")) return event;
  const { event_id: _eventId, ...pdu } = event as T & { event_id?: unknown };
  return pdu as T;
}

/** The event IDs a list of prev_events or auth_events names, in order (pairs give their first item). */
export function referencedIds(references: readonly EventReference[]): readonly string[] {
  if (references.length === 0 || typeof references[0] === "string" && references.every((r) => typeof r === "string")) {
    return references as readonly string[];
  }
  return references.map((r) => (typeof r === "string" ? r : r[0]));
}

/**
 * The references a new event of this room version makes to the given events: their IDs (3+), or
 * (1–2) `[event_id, {sha256: reference hash}]` pairs, as Synapse writes them. `referenceHash`
 * gives the unpadded base64 reference hash of an event the caller holds.
 */
export function eventReferences(
  roomVersion: string | RoomVersionRules,
  eventIds: readonly string[],
  referenceHash: (eventId: string) => string | undefined,
): EventReference[] {
  if (roomVersionRules(roomVersion).eventFormat !== "v1") return [...eventIds];
  return eventIds.map((id) => {
    const hash = referenceHash(id);
    return [id, hash === undefined ? {} : { sha256: hash }] as const;
  });
}

/** Whether the event is a state event (it has a state_key, possibly empty). */
export function isStateEvent(event: { state_key?: unknown }): boolean {
  return typeof event.state_key === "string";
}

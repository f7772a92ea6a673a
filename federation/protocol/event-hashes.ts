// Content hashes, reference hashes, event IDs and (v12) room IDs.
// https://spec.matrix.org/latest/server-server-api/#calculating-the-content-hash-for-an-event
// https://spec.matrix.org/latest/server-server-api/#calculating-the-reference-hash-for-an-event
// https://spec.matrix.org/latest/rooms/v4/#event-ids (rooms/fragments/v4-event-ids.md)

import { createHash } from "node:crypto";
import { canonicalJsonBytes, type CanonicalJsonOptions } from "./canonical-json.ts";
import { Base64Error, decodeBase64, encodeUnpaddedBase64, encodeUnpaddedBase64Url } from "./base64.ts";
import { redactEvent } from "./redaction.ts";
import { roomVersionRules, type RoomVersionRules } from "./room-versions.ts";

type JsonObject = Record<string, unknown>;

function sha256(bytes: Uint8Array): Uint8Array {
  return new Uint8Array(createHash("sha256").update(bytes).digest());
}

/**
 * The content hash: sha256 of the canonical JSON of the event without `unsigned`, `signatures`
 * and `hashes`. It covers the unredacted content. The event is hashed exactly as given.
 */
export function computeContentHash(event: object, options?: CanonicalJsonOptions): Uint8Array {
  const { unsigned: _u, signatures: _s, hashes: _h, ...rest } = event as JsonObject;
  return sha256(canonicalJsonBytes(rest, options));
}

/** Whether `hashes.sha256` of the event matches its content hash (false if missing or not base64). */
export function checkContentHash(event: object, options?: CanonicalJsonOptions): boolean {
  const hashes = (event as { hashes?: unknown }).hashes;
  const claimed = typeof hashes === "object" && hashes !== null ? (hashes as JsonObject).sha256 : undefined;
  if (typeof claimed !== "string") return false;
  let claimedBytes: Uint8Array;
  try {
    claimedBytes = decodeBase64(claimed);
  } catch (err) {
    if (err instanceof Base64Error) return false;
    throw err;
  }
  return Buffer.from(claimedBytes).equals(Buffer.from(computeContentHash(event, options)));
}

/**
 * The reference hash: redact the event, remove `signatures`, `unsigned` and the legacy top-level
 * `age_ts` (the spec's list, and Synapse's), then sha256 of the canonical JSON.
 */
export function computeReferenceHash(roomVersion: string | RoomVersionRules, event: object): Uint8Array {
  const rules = roomVersionRules(roomVersion);
  const { signatures: _s, unsigned: _u, age_ts: _a, ...rest } = redactEvent(rules, event);
  return sha256(canonicalJsonBytes(rest, { strict: rules.strictCanonicalJson }));
}

/**
 * The event ID of a PDU. Room versions 3+: `$` + the unpadded base64 of its reference hash (v3:
 * the standard alphabet, rooms/v3#event-ids; 4+: URL-safe, rooms/fragments/v4-event-ids). Event
 * IDs are not part of these PDUs, so a top-level `event_id` attached to the object locally is
 * ignored: an ID cannot depend on itself. Versions 1–2: the `event_id` the PDU carries, which its
 * server chose (rooms/fragments/v1-event-ids); throws if it has none.
 */
export function computeEventId(roomVersion: string | RoomVersionRules, pdu: object): string {
  const rules = roomVersionRules(roomVersion);
  const { event_id: id, ...rest } = pdu as JsonObject;
  if (rules.eventFormat === "v1") {
    if (typeof id !== "string") throw new Error(`a room version ${rules.id} event carries its event_id, and this one has none`);
    return id;
  }
  const hash = computeReferenceHash(rules, rest);
  return `$${rules.eventFormat === "v3" ? encodeUnpaddedBase64(hash) : encodeUnpaddedBase64Url(hash)}`;
}

/** The reference hash of an event as a v1–2 reference names it: `{sha256: unpadded base64}`. */
export function referenceHashes(roomVersion: string | RoomVersionRules, event: object): { sha256: string } {
  return { sha256: encodeUnpaddedBase64(computeReferenceHash(roomVersion, event)) };
}

/**
 * The room ID of a v12 room: the event ID of its `m.room.create` event with the sigil `!` instead
 * of `$` (https://spec.matrix.org/latest/rooms/v12/, MSC4291).
 */
export function computeRoomIdFromCreateEvent(roomVersion: string | RoomVersionRules, createPdu: object): string {
  const rules = roomVersionRules(roomVersion);
  if (!rules.roomIdIsCreateEventId) throw new Error(`room IDs of room version ${rules.id} are not derived from the create event`);
  return `!${computeEventId(rules, createPdu).slice(1)}`;
}

/** The create event ID a v12 room ID names (`!x` → `$x`). */
export function createEventIdOfRoom(roomId: string): string {
  return `$${roomId.slice(1)}`;
}

/** Adds `hashes.sha256` (the content hash, unpadded base64) to a copy of the event. */
export function withContentHash<T extends object>(event: T, options?: CanonicalJsonOptions): T & { hashes: { sha256: string } } {
  const { hashes: _h, ...rest } = event as JsonObject;
  return { ...event, hashes: { sha256: encodeUnpaddedBase64(computeContentHash(rest, options)) } };
}

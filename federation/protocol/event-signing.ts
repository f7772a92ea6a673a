// Signing events and checking received ones.
// https://spec.matrix.org/latest/server-server-api/#signing-events
// https://spec.matrix.org/latest/server-server-api/#checks-performed-on-receipt-of-a-pdu (steps 1–3)

import { own } from "./dictionary.ts";
import { computeContentHash, checkContentHash, computeEventId } from "./event-hashes.ts";
import { encodeUnpaddedBase64 } from "./base64.ts";
import { serverNameOf } from "./identifiers.ts";
import { pduOf, validatePdu, type Pdu } from "./pdu.ts";
import { redactEvent } from "./redaction.ts";
import { roomVersionRules, type RoomVersionRules } from "./room-versions.ts";
import { signJson, verifyJsonSignature, type SigningKey, type Signatures } from "./signing.ts";

type JsonObject = Record<string, unknown>;

/**
 * Hashes and signs an event as `serverName`: computes the content hash into `hashes.sha256`,
 * redacts the event, signs the redacted form (which keeps `hashes`, so the signature covers the
 * full content through the hash), and copies the signatures back onto the full event.
 * Existing signatures are kept. Returns a new object.
 */
export function signEvent<T extends object>(
  roomVersion: string | RoomVersionRules,
  event: T,
  serverName: string,
  key: SigningKey,
): T & { hashes: { sha256: string }; signatures: Signatures } {
  const rules = roomVersionRules(roomVersion);
  const json = { strict: rules.strictCanonicalJson };
  const hashes = { ...(((event as JsonObject).hashes as JsonObject | undefined) ?? {}), sha256: encodeUnpaddedBase64(computeContentHash(event, json)) };
  const hashed = { ...event, hashes };
  const signedRedacted = signJson(redactEvent(rules, hashed), serverName, key, json);
  return { ...hashed, signatures: signedRedacted.signatures } as T & { hashes: { sha256: string }; signatures: Signatures };
}

/**
 * Looks up a server's verify key. `originServerTs` lets the caller apply key validity (v5+: a key
 * whose `valid_until_ts` is before the event's timestamp must not be used).
 */
export type VerifyKeyLookup = (serverName: string, keyId: string, originServerTs: number) => Uint8Array | undefined;

export type SignatureCheck = { ok: true } | { ok: false; reason: string };

/**
 * The servers whose signatures a PDU needs: the sender's server, except on an invite
 * made from a third-party invite (the sender matches the 3pid invite and another server may
 * carry it); and, for membership events naming `join_authorised_via_users_server` (v8+), that
 * user's server (auth rule "the event is validly signed by the homeserver of the user ID denoted
 * by the key", checked here, where the keys are). Room versions 1–2 also need the server the
 * event ID names (rooms/fragments/v3-auth-rules: "In room versions 1 and 2, events need a
 * signature from the domain of the event_id in order to be considered valid").
 */
export function serversThatMustSign(roomVersion: string | RoomVersionRules, pdu: Pdu): string[] {
  const rules = roomVersionRules(roomVersion);
  const servers = new Set<string>();
  const content = pdu.content;
  const isThirdPartyInvite = pdu.type === "m.room.member" && content.membership === "invite" && "third_party_invite" in content;
  const senderServer = serverNameOf(pdu.sender);
  if (!isThirdPartyInvite && senderServer !== undefined) servers.add(senderServer);
  if (rules.eventFormat === "v1" && typeof pdu.event_id === "string") {
    const server = serverNameOf(pdu.event_id);
    if (server !== undefined) servers.add(server);
  }
  const authorisingUser = content.join_authorised_via_users_server;
  if (rules.restrictedJoinRule && pdu.type === "m.room.member" && typeof authorisingUser === "string") {
    const server = serverNameOf(authorisingUser);
    if (server !== undefined) servers.add(server);
  }
  return [...servers];
}

/**
 * Checks the signatures on a received PDU ("Validating hashes and signatures on received events"):
 * the redacted event must be signed by every server in serversThatMustSign. For each server,
 * signatures under algorithms other than ed25519 are skipped; at least one ed25519 signature must
 * be from a key we know, and every signature from a key we know must verify.
 */
export function verifyEventSignatures(roomVersion: string | RoomVersionRules, pdu: Pdu, lookupKey: VerifyKeyLookup): SignatureCheck {
  const rules = roomVersionRules(roomVersion);
  const redacted = redactEvent(rules, pdu);
  const json = { strict: rules.strictCanonicalJson };
  const keyTime = keyValidityTime(rules, pdu);
  const signatures = pdu.signatures ?? {};
  for (const server of serversThatMustSign(roomVersion, pdu)) {
    const byServer = own(signatures, server) as Record<string, string> | undefined;
    if (typeof byServer !== "object" || byServer === null) return { ok: false, reason: `no signature from ${server}` };
    let checked = 0;
    for (const keyId of Object.keys(byServer)) {
      if (!keyId.startsWith("ed25519:")) continue;
      const publicKey = lookupKey(server, keyId, keyTime);
      if (!publicKey) continue;
      if (!verifyJsonSignature(redacted, server, keyId, publicKey, json)) {
        return { ok: false, reason: `signature ${keyId} from ${server} does not verify` };
      }
      checked++;
    }
    if (checked === 0) return { ok: false, reason: `no ed25519 signature from ${server} with a known key` };
  }
  return { ok: true };
}

/**
 * The time at which a signing key must be valid to count for an event: its `origin_server_ts` from
 * room version 5 (v5-signing-requirements); before, any key the server ever had (0).
 */
export function keyValidityTime(roomVersion: string | RoomVersionRules, pdu: { origin_server_ts: number }): number {
  return roomVersionRules(roomVersion).enforceKeyValidity ? pdu.origin_server_ts : 0;
}

export type ReceivedPduCheck =
  | {
      ok: true;
      eventId: string;
      /** The event to process further: the PDU, or its redacted form if the content hash failed. */
      pdu: Pdu;
      /** True when the content hash did not match and the event was redacted (step 3). */
      redacted: boolean;
    }
  | { ok: false; reason: string };

/**
 * Steps 1–3 of the checks on receipt of a PDU: valid format (else drop), valid signatures (else
 * drop), content hash (else redact). A top-level `event_id` is not part of v3+ PDUs and is removed
 * before anything is checked (in versions 1–2 it is part of the PDU).
 */
export function checkReceivedPdu(roomVersion: string | RoomVersionRules, value: unknown, lookupKey: VerifyKeyLookup): ReceivedPduCheck {
  const rules = roomVersionRules(roomVersion);
  const input = typeof value === "object" && value !== null ? pduOf(rules, value) : value;
  const format = validatePdu(rules, input);
  if (!format.ok) return { ok: false, reason: `invalid PDU: ${format.reason}` };
  return checkValidatedPdu(rules, format.value, lookupKey);
}

/**
 * Steps 2–3 for a PDU whose format `validatePdu` already accepted (a caller that needed the valid
 * PDU first, to know which keys to fetch, does not validate it twice).
 */
export function checkValidatedPdu(roomVersion: string | RoomVersionRules, pdu: Pdu, lookupKey: VerifyKeyLookup): ReceivedPduCheck {
  const rules = roomVersionRules(roomVersion);
  const signatures = verifyEventSignatures(rules, pdu, lookupKey);
  if (!signatures.ok) return { ok: false, reason: signatures.reason };
  const eventId = computeEventId(rules, pdu);
  if (checkContentHash(pdu, { strict: rules.strictCanonicalJson })) return { ok: true, eventId, pdu, redacted: false };
  return { ok: true, eventId, pdu: redactEvent(rules, pdu) as Pdu, redacted: true };
}

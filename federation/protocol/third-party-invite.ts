// Which public key of an m.room.third_party_invite event signed a `signed` block, and where its
// validity is checked.
// https://spec.matrix.org/latest/client-server-api/#mroomthird_party_invite
// https://spec.matrix.org/latest/client-server-api/#third-party-invites ("MUST validate that the
// public key used for signing is still valid, by checking key_validity_url")
import { decodeBase64, decodeBase64Url } from "./base64.ts";
import { verifyJsonSignature } from "./signing.ts";

type JsonObject = Record<string, unknown>;

export interface ThirdPartyInviteKey {
  /** As the event has it (unpadded base64, standard or URL-safe alphabet). */
  publicKey: string;
  /** Absent: "the key must be considered valid indefinitely". */
  keyValidityUrl?: string;
}

const isObject = (v: unknown): v is JsonObject => typeof v === "object" && v !== null && !Array.isArray(v);

/**
 * The keys an m.room.third_party_invite content names: each of `public_keys` with its own
 * `key_validity_url`, and the older `public_key` with the top-level `key_validity_url`.
 */
export function thirdPartyInviteKeys(content: JsonObject): ThirdPartyInviteKey[] {
  const keys: ThirdPartyInviteKey[] = [];
  if (Array.isArray(content.public_keys)) {
    for (const k of content.public_keys) {
      if (!isObject(k) || typeof k.public_key !== "string") continue;
      keys.push(typeof k.key_validity_url === "string" ? { publicKey: k.public_key, keyValidityUrl: k.key_validity_url } : { publicKey: k.public_key });
    }
  }
  if (typeof content.public_key === "string" && !keys.some((k) => k.publicKey === content.public_key)) {
    keys.push(
      typeof content.key_validity_url === "string"
        ? { publicKey: content.public_key, keyValidityUrl: content.key_validity_url }
        : { publicKey: content.public_key },
    );
  }
  return keys;
}

function decodeKey(encoded: string): Uint8Array | undefined {
  for (const decode of [decodeBase64, decodeBase64Url]) {
    try {
      return decode(encoded);
    } catch {
      // not this alphabet
    }
  }
  return undefined;
}

/**
 * The first key of the invite (in `thirdPartyInviteKeys` order) that verifies an ed25519
 * signature of `signed`, whatever entity and key ID the signature is under (the auth rules:
 * "any signature in signed matches any public key"); undefined when none does.
 */
export function keySigningThirdPartyInvite(inviteContent: JsonObject, signed: JsonObject): ThirdPartyInviteKey | undefined {
  const signatures = isObject(signed.signatures) ? signed.signatures : {};
  for (const key of thirdPartyInviteKeys(inviteContent)) {
    const bytes = decodeKey(key.publicKey);
    if (!bytes) continue;
    for (const [entity, byKey] of Object.entries(signatures)) {
      if (!isObject(byKey)) continue;
      for (const keyId of Object.keys(byKey)) {
        if (keyId.startsWith("ed25519:") && verifyJsonSignature(signed, entity, keyId, bytes)) return key;
      }
    }
  }
  return undefined;
}

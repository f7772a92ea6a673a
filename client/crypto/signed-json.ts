// Signing and verifying JSON objects with Ed25519, as the appendix "Signing JSON" says:
// https://spec.matrix.org/latest/appendices/#signing-json
//
// The signed bytes are the canonical JSON of the object without its `signatures` and `unsigned`;
// the signature goes under `signatures[userId][keyId]` (unpadded base64), next to any signatures
// already there. Device keys, one-time keys, cross-signing keys and the signatures uploaded with
// /keys/signatures/upload are all signed this way.
import { CanonicalJsonError, canonicalJson } from "../../federation/protocol/canonical-json.ts";
import { ed25519Verify, fromBase64 } from "./primitives.ts";

export type SignedJson = Record<string, unknown> & { signatures?: Record<string, Record<string, string>> };

/** Makes an Ed25519 signature (unpadded base64) of a message: an OlmAccount's `sign`, or a cross-signing key's. */
export type Signer = (message: string) => string;

/** The canonical JSON an object's signatures are made over. Throws CanonicalJsonError for what has no canonical form. */
export function signedPayload(obj: Record<string, unknown>): string {
  const { signatures: _signatures, unsigned: _unsigned, ...rest } = obj;
  return canonicalJson(rest);
}

/** A copy of `obj` with a signature by `userId`'s key `keyId` added (the object itself is not changed). */
export function signJson<T extends Record<string, unknown>>(obj: T, userId: string, keyId: string, sign: Signer): T & SignedJson {
  const signature = sign(signedPayload(obj));
  const existing = isStringMap(obj.signatures) ? (obj.signatures as Record<string, Record<string, string>>) : {};
  // Built from entries, never by `signatures[userId] = …`: a user ID of "__proto__" stays a key.
  const mine = own(existing, userId) as Record<string, string> | undefined;
  const others = Object.entries(existing).filter(([user]) => user !== userId);
  const signatures = Object.fromEntries([...others, [userId, { ...mine, [keyId]: signature }]]);
  return { ...obj, signatures };
}

/**
 * Whether `obj` carries a valid signature by `userId`'s key `keyId` made with `publicKey` (unpadded
 * base64 Ed25519). False for a missing or malformed signature, a wrong key, or an object without a
 * canonical form; never throws, so a hostile object is just unsigned.
 */
export function verifyJsonSignature(obj: unknown, userId: string, keyId: string, publicKey: string): boolean {
  if (!isPlainObject(obj)) return false;
  const signature = own(own(obj, "signatures"), userId, keyId);
  if (typeof signature !== "string") return false;
  let payload: string;
  let key: Uint8Array;
  let sig: Uint8Array;
  try {
    payload = signedPayload(obj);
    key = fromBase64(publicKey);
    sig = fromBase64(signature);
  } catch (err) {
    if (err instanceof CanonicalJsonError || (err as Error)?.name === "Base64Error") return false;
    throw err;
  }
  return ed25519Verify(key, payload, sig);
}

/** `obj[k1][k2]…` through own properties only (a key like "__proto__" or "constructor" finds nothing inherited). */
export function own(obj: unknown, ...path: string[]): unknown {
  let v = obj;
  for (const key of path) {
    if (!isPlainObject(v) || !Object.hasOwn(v, key)) return undefined;
    v = v[key];
  }
  return v;
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function isStringMap(v: unknown): boolean {
  return isPlainObject(v) && Object.values(v).every(isPlainObject);
}

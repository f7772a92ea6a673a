// Signing JSON: https://spec.matrix.org/latest/appendices/#signing-json
// JSON is signed by encoding the object without `signatures` and `unsigned` as canonical JSON and
// signing those bytes with ed25519; the unpadded-base64 signature goes under
// signatures[entity][keyId], next to any signatures already there.
//
// Ed25519 runs on node:crypto (OpenSSL). Verification is the hot path of joins and ingest, so the
// KeyObject for each public key is imported once and cached.

import { createPrivateKey, createPublicKey, sign, verify, type KeyObject } from "node:crypto";
import { CanonicalJsonError, canonicalJsonBytes, type CanonicalJsonOptions } from "./canonical-json.ts";
import { Base64Error, decodeBase64, encodeUnpaddedBase64, encodeUnpaddedBase64Url } from "./base64.ts";
import { own } from "./dictionary.ts";

export interface SigningKey {
  /** The signing key identifier: algorithm and key identifier, e.g. "ed25519:abc". */
  keyId: string;
  /** The 32-byte RFC 8032 seed. */
  seed: Uint8Array;
  /** The 32-byte Ed25519 public key. */
  publicKey: Uint8Array;
}

export type Signatures = Record<string, Record<string, string>>;

// ASN.1 wrappers that turn raw 32-byte Ed25519 keys into the DER forms node:crypto imports.
const PKCS8_ED25519_PREFIX = Buffer.from("302e020100300506032b657004220420", "hex");
const SPKI_ED25519_PREFIX = Buffer.from("302a300506032b6570032100", "hex");

function privateKeyObject(seed: Uint8Array): KeyObject {
  if (seed.length !== 32) throw new Error(`an Ed25519 seed is 32 bytes, got ${seed.length}`);
  return createPrivateKey({ key: Buffer.concat([PKCS8_ED25519_PREFIX, seed]), format: "der", type: "pkcs8" });
}

export function signingKeyFromSeed(seed: Uint8Array, keyId: string): SigningKey {
  const jwk = createPublicKey(privateKeyObject(seed)).export({ format: "jwk" });
  const publicKey = new Uint8Array(Buffer.from(jwk.x as string, "base64url"));
  return { keyId, seed: new Uint8Array(seed), publicKey };
}

const privateKeys = new WeakMap<SigningKey, KeyObject>();

/** Signs raw bytes with an Ed25519 key; returns the 64-byte signature. */
export function signEd25519(key: SigningKey, message: Uint8Array): Uint8Array {
  let keyObject = privateKeys.get(key);
  if (!keyObject) {
    keyObject = privateKeyObject(key.seed);
    privateKeys.set(key, keyObject);
  }
  return new Uint8Array(sign(null, message, keyObject));
}

// Public keys are cached by their base64 form. The map is bounded so that a flood of distinct
// keys from peers cannot grow it without limit; Map iteration order lets us evict the oldest.
const PUBLIC_KEY_CACHE_LIMIT = 10_000;
const publicKeys = new Map<string, KeyObject>();

function publicKeyObject(publicKey: Uint8Array): KeyObject | undefined {
  if (publicKey.length !== 32) return undefined;
  const cacheKey = encodeUnpaddedBase64Url(publicKey);
  let keyObject = publicKeys.get(cacheKey);
  if (keyObject) return keyObject;
  try {
    keyObject = createPublicKey({ key: Buffer.concat([SPKI_ED25519_PREFIX, publicKey]), format: "der", type: "spki" });
  } catch {
    return undefined;
  }
  if (publicKeys.size >= PUBLIC_KEY_CACHE_LIMIT) {
    const oldest = publicKeys.keys().next().value;
    if (oldest !== undefined) publicKeys.delete(oldest);
  }
  publicKeys.set(cacheKey, keyObject);
  return keyObject;
}

/** Verifies an Ed25519 signature. Never throws: malformed keys or signatures are just invalid. */
export function verifyEd25519(publicKey: Uint8Array, message: Uint8Array, signature: Uint8Array): boolean {
  if (signature.length !== 64) return false;
  const keyObject = publicKeyObject(publicKey);
  if (!keyObject) return false;
  try {
    return verify(null, message, keyObject, signature);
  } catch {
    return false;
  }
}

/** The object as it is signed: everything but `signatures` and `unsigned`. */
function signedPart(obj: object): Record<string, unknown> {
  const { signatures: _signatures, unsigned: _unsigned, ...rest } = obj as Record<string, unknown>;
  return rest;
}

/**
 * Signs a JSON object as `entityName` with `key`. Returns a new object carrying the existing
 * signatures plus this one (and `unsigned` untouched). Throws CanonicalJsonError if the object
 * cannot be encoded as canonical JSON.
 */
export function signJson<T extends object>(obj: T, entityName: string, key: SigningKey, options?: CanonicalJsonOptions): T & { signatures: Signatures } {
  const signature = encodeUnpaddedBase64(signEd25519(key, canonicalJsonBytes(signedPart(obj), options)));
  const existing = ((obj as { signatures?: unknown }).signatures ?? {}) as Signatures;
  const mine = own(existing, entityName);
  const signatures: Signatures = { ...existing, [entityName]: { ...(typeof mine === "object" ? mine : {}), [key.keyId]: signature } };
  return { ...obj, signatures };
}

/**
 * Checks that `entityName` signed `obj` with the key `keyId` (appendix "Checking for a signature",
 * steps 4–7; choosing which key IDs to check is the caller's job). False when the signature is
 * missing, not base64, or wrong, or the object is not canonical JSON.
 */
export function verifyJsonSignature(
  obj: object,
  entityName: string,
  keyId: string,
  publicKey: Uint8Array,
  options?: CanonicalJsonOptions,
): boolean {
  const signatures = (obj as { signatures?: unknown }).signatures;
  if (typeof signatures !== "object" || signatures === null) return false;
  // Own properties only: a server named `toString` (a valid host name) has no signatures inherited.
  const byEntity = own(signatures, entityName);
  if (typeof byEntity !== "object" || byEntity === null) return false;
  const encoded = own(byEntity, keyId);
  if (typeof encoded !== "string") return false;
  let signature: Uint8Array;
  let message: Uint8Array;
  try {
    signature = decodeBase64(encoded);
    message = canonicalJsonBytes(signedPart(obj), options);
  } catch (err) {
    if (err instanceof Base64Error || err instanceof CanonicalJsonError) return false;
    throw err;
  }
  return verifyEd25519(publicKey, message, signature);
}

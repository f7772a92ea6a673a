// Checks shared by the E2EE services on the signed key objects clients upload: canonical JSON form,
// Ed25519 public keys in unpadded base64, and signatures made by them.
// https://spec.matrix.org/latest/appendices/#signing-json
import { Base64Error, decodeBase64 } from "../../federation/protocol/base64.ts";
import { CanonicalJsonError, canonicalJson } from "../../federation/protocol/canonical-json.ts";
import { dictionary } from "../../federation/protocol/dictionary.ts";
import { verifyJsonSignature } from "../../federation/protocol/signing.ts";
import { MatrixError } from "../http/errors.ts";

export type JsonObject = Record<string, unknown>;

export function isJsonObject(v: unknown): v is JsonObject {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** The canonical JSON of a client-supplied value; 400 M_BAD_JSON when it has none (floats, huge integers). */
export function canonicalOrBadJson(value: unknown, what: string): string {
  try {
    return canonicalJson(value);
  } catch (err) {
    if (err instanceof CanonicalJsonError) throw new MatrixError(400, "M_BAD_JSON", `${what}: ${err.message}`);
    throw err;
  }
}

/** An Ed25519 public key in unpadded base64 → its 32 bytes, or undefined when it is not one. */
export function ed25519PublicKey(encoded: unknown): Uint8Array | undefined {
  if (typeof encoded !== "string") return undefined;
  try {
    const bytes = decodeBase64(encoded);
    return bytes.length === 32 ? bytes : undefined;
  } catch (err) {
    if (err instanceof Base64Error) return undefined;
    throw err;
  }
}

/** Whether `obj` carries a valid signature by `signer`'s key `ed25519:<keyName>` with public key `publicKey`. */
export function hasValidSignature(obj: JsonObject, signer: string, keyName: string, publicKey: string): boolean {
  const key = ed25519PublicKey(publicKey);
  return key !== undefined && verifyJsonSignature(obj, signer, `ed25519:${keyName}`, key);
}

/** The object without `signatures` and `unsigned`: what a signature covers, and what "the same key" compares. */
export function signedContent(obj: JsonObject): JsonObject {
  const { signatures: _s, unsigned: _u, ...rest } = obj;
  return rest;
}

/**
 * `signatures` of a key object as a map of maps of strings (anything else is dropped), without
 * prototypes: `signaturesOf(o)[userId]` finds nothing for a user ID such as `constructor`.
 */
export function signaturesOf(obj: JsonObject): Record<string, Record<string, string>> {
  const out = dictionary<Record<string, string>>();
  const sigs = obj.signatures;
  if (!isJsonObject(sigs)) return out;
  for (const [user, byKey] of Object.entries(sigs)) {
    if (!isJsonObject(byKey)) continue;
    for (const [keyId, sig] of Object.entries(byKey)) {
      if (typeof sig === "string") (out[user] ??= dictionary())[keyId] = sig;
    }
  }
  return out;
}

export const invalidSignature = (message: string) => new MatrixError(400, "M_INVALID_SIGNATURE", message);

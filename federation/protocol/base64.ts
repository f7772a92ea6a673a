// Unpadded Base64: https://spec.matrix.org/latest/appendices/#unpadded-base64
// "implementations SHOULD accept input with or without padding characters". Event IDs from room
// version 4 on use the URL-safe alphabet (RFC 4648 §5), also unpadded.

export class Base64Error extends Error {
  override name = "Base64Error";
}

const STANDARD = /^[A-Za-z0-9+/]*$/;
const URL_SAFE = /^[A-Za-z0-9_-]*$/;

export function encodeUnpaddedBase64(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("base64").replace(/=+$/, "");
}

export function encodeUnpaddedBase64Url(bytes: Uint8Array): string {
  // Node's base64url output is already unpadded.
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("base64url");
}

function stripPadding(s: string): string {
  const unpadded = s.replace(/={1,2}$/, "");
  if (unpadded.length !== s.length && s.length % 4 !== 0) {
    throw new Base64Error("base64 padding does not make a multiple of four characters");
  }
  return unpadded;
}

function decodeWith(s: string, alphabet: RegExp, encoding: "base64" | "base64url"): Uint8Array {
  const body = stripPadding(s);
  // Buffer.from silently skips characters outside the alphabet; a signature with a stray
  // character must fail to decode instead.
  if (!alphabet.test(body)) throw new Base64Error("invalid character in base64");
  if (body.length % 4 === 1) throw new Base64Error("base64 length is impossible (4n+1 characters)");
  const buf = Buffer.from(body, encoding);
  return new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
}

/** Decodes standard-alphabet base64, with or without padding. Throws Base64Error on bad input. */
export function decodeBase64(s: string): Uint8Array {
  return decodeWith(s, STANDARD, "base64");
}

/** Decodes URL-safe base64, with or without padding. Throws Base64Error on bad input. */
export function decodeBase64Url(s: string): Uint8Array {
  return decodeWith(s, URL_SAFE, "base64url");
}

// Request authentication between servers: the X-Matrix Authorization scheme.
// https://spec.matrix.org/latest/server-server-api/#request-authentication
//
// The sender signs {method, uri, origin, destination, content} with its server key (JSON signing)
// and sends the signature in `Authorization: X-Matrix origin=…,destination=…,key=…,sig=…`. The
// receiver rebuilds the same object from the request as it arrived (method, the raw path and query,
// its own name, the parsed body) and checks the signature with the origin's key.
//
// Pure: the caller supplies keys and the request's parts; fetching the origin's key is the caller's.

import { CanonicalJsonError, canonicalJsonBytes } from "../protocol/canonical-json.ts";
import { Base64Error, decodeBase64, encodeUnpaddedBase64 } from "../protocol/base64.ts";
import { type SigningKey, signEd25519, verifyEd25519 } from "../protocol/signing.ts";

export interface SignedRequestParts {
  method: string;
  /** The request target from `/_matrix/…`, with `?` and the query string if any, as sent. */
  uri: string;
  origin: string;
  destination: string;
  /** The JSON-parsed body; absent for requests without one. */
  content?: unknown;
}

export interface XMatrixCredentials {
  origin: string;
  /** Absent from servers older than v1.3; required of us when we send. */
  destination?: string;
  key: string;
  sig: string;
}

export class XMatrixParseError extends Error {}

function requestJson(parts: SignedRequestParts): Record<string, unknown> {
  const json: Record<string, unknown> = {
    method: parts.method,
    uri: parts.uri,
    origin: parts.origin,
    destination: parts.destination,
  };
  if (parts.content !== undefined) json.content = parts.content;
  return json;
}

/**
 * The Authorization header value for a request we send. Follows the spec's advice for older
 * servers: one space after the scheme, lower-case names, no whitespace around commas, quoted values.
 */
export function xMatrixAuthorization(parts: SignedRequestParts, key: SigningKey): string {
  const sig = encodeUnpaddedBase64(signEd25519(key, canonicalJsonBytes(requestJson(parts))));
  return `X-Matrix origin=${quote(parts.origin)},destination=${quote(parts.destination)},key=${quote(key.keyId)},sig=${quote(sig)}`;
}

function quote(value: string): string {
  return `"${value.replace(/(["\\])/g, "\\$1")}"`;
}

// RFC 9110 §5.6.2 tchar.
const TCHAR = /[!#$%&'*+\-.^_`|~0-9A-Za-z]/;

/**
 * Parses an `X-Matrix` Authorization header (RFC 9110 §11.4 auth-params): names case-insensitive,
 * in any order, values quoted (with backslash escapes) or bare tokens; colons are allowed in bare
 * values for older servers; unknown parameters are ignored. Throws XMatrixParseError when the
 * scheme is not X-Matrix, the syntax is broken, a parameter repeats, or origin/key/sig is missing.
 */
export function parseXMatrixAuthorization(header: string): XMatrixCredentials {
  const scheme = /^X-Matrix[ ]+/i.exec(header);
  if (!scheme) throw new XMatrixParseError("the Authorization scheme is not X-Matrix");
  const params = new Map<string, string>();
  let i = scheme[0].length;
  const n = header.length;
  const skipSpace = () => {
    while (i < n && (header[i] === " " || header[i] === "\t")) i++;
  };
  for (;;) {
    skipSpace();
    const nameStart = i;
    while (i < n && TCHAR.test(header[i] as string)) i++;
    const name = header.slice(nameStart, i).toLowerCase();
    if (name === "") throw new XMatrixParseError("expected a parameter name");
    skipSpace();
    if (header[i] !== "=") throw new XMatrixParseError(`expected = after ${name}`);
    i++;
    skipSpace();
    let value = "";
    if (header[i] === '"') {
      i++;
      for (;;) {
        if (i >= n) throw new XMatrixParseError("unterminated quoted value");
        const ch = header[i] as string;
        if (ch === '"') {
          i++;
          break;
        }
        if (ch === "\\") {
          if (i + 1 >= n) throw new XMatrixParseError("unterminated escape");
          value += header[i + 1];
          i += 2;
          continue;
        }
        value += ch;
        i++;
      }
    } else {
      const valueStart = i;
      while (i < n && (TCHAR.test(header[i] as string) || header[i] === ":")) i++;
      value = header.slice(valueStart, i);
      if (value === "") throw new XMatrixParseError(`empty value for ${name}`);
    }
    if (params.has(name)) throw new XMatrixParseError(`${name} is given twice`);
    params.set(name, value);
    skipSpace();
    if (i >= n) break;
    if (header[i] !== ",") throw new XMatrixParseError("expected a comma between parameters");
    i++;
  }
  const origin = params.get("origin");
  const key = params.get("key");
  const sig = params.get("sig");
  if (!origin || !key || !sig) throw new XMatrixParseError("origin, key and sig are required");
  const destination = params.get("destination");
  return destination === undefined ? { origin, key, sig } : { origin, destination, key, sig };
}

/**
 * Checks a request's X-Matrix signature against the origin's public key for `credentials.key`.
 * `parts.destination` is our own server name (what the signer must have signed, whether or not the
 * header named it). False on any mismatch or malformed input; never throws.
 */
export function verifyXMatrixRequest(
  credentials: XMatrixCredentials,
  parts: Omit<SignedRequestParts, "origin">,
  publicKey: Uint8Array,
): boolean {
  if (credentials.destination !== undefined && credentials.destination !== parts.destination) return false;
  let message: Uint8Array;
  let signature: Uint8Array;
  try {
    signature = decodeBase64(credentials.sig);
    // Lenient about numbers: a body may hold events of rooms before v6, which need not be
    // canonical JSON, and an invalid event in a v6+ room is refused for what it is (400
    // M_BAD_JSON when it is checked), not as a bad signature.
    message = canonicalJsonBytes(requestJson({ ...parts, origin: credentials.origin }), { strict: false });
  } catch (err) {
    if (err instanceof Base64Error || err instanceof CanonicalJsonError) return false;
    throw err;
  }
  return verifyEd25519(publicKey, message, signature);
}

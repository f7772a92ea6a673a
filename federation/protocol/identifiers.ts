// Identifier grammar: https://spec.matrix.org/latest/appendices/#identifier-grammar
// These checks are for what arrives over federation, so user IDs follow the historical
// (lenient) grammar: servers must accept them from other servers.

const utf8 = new TextEncoder();

export function byteLength(s: string): number {
  // Fast path: ASCII strings are as long in bytes as in UTF-16 units.
  return /^[\x00-\x7f]*$/.test(s) ? s.length : utf8.encode(s).length;
}

// server_name = hostname [ ":" port ]; hostname = IPv4address / "[" IPv6address "]" / dns-name
const SERVER_NAME = /^(?:\[[0-9A-Fa-f:.]{2,45}\]|[A-Za-z0-9.-]{1,255})(?::[0-9]{1,5})?$/;

export function isValidServerName(s: string): boolean {
  return SERVER_NAME.test(s);
}

/**
 * `@localpart:server_name`, at most 255 bytes. The localpart may hold any character but `:` and
 * NUL (historical user IDs, which servers must still accept over federation).
 */
export function isValidUserId(s: unknown): s is string {
  if (typeof s !== "string" || !s.startsWith("@") || byteLength(s) > 255) return false;
  const colon = s.indexOf(":");
  if (colon < 2) return false;
  if (s.slice(1, colon).includes("\u0000")) return false;
  return isValidServerName(s.slice(colon + 1));
}

/** The server name of a user ID (everything after the first colon), or undefined. */
export function serverNameOf(id: string): string | undefined {
  const colon = id.indexOf(":");
  return colon < 0 ? undefined : id.slice(colon + 1);
}

/** Room IDs before v12: `!opaque:server_name`. */
export function isValidRoomIdWithDomain(s: string): boolean {
  if (!s.startsWith("!") || byteLength(s) > 255) return false;
  const colon = s.indexOf(":");
  return colon > 1 && isValidServerName(s.slice(colon + 1));
}

/** Room IDs from v12: `!` + the URL-safe unpadded base64 of a sha256 reference hash (43 chars). */
export function isValidHashRoomId(s: string): boolean {
  return /^![A-Za-z0-9_-]{43}$/.test(s);
}

/** An event ID as it may appear in prev_events/auth_events: `$` and at most 255 bytes. */
export function isValidEventId(s: string): boolean {
  return s.length > 1 && s.startsWith("$") && byteLength(s) <= 255;
}

/** Room versions 1–2 event IDs: `$opaque_id:domain`, at most 255 bytes (v1-event-ids). */
export function isValidEventIdWithDomain(s: string): boolean {
  if (!isValidEventId(s)) return false;
  const colon = s.indexOf(":");
  return colon > 1 && isValidServerName(s.slice(colon + 1));
}

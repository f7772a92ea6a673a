// Server ACLs: which servers a room's `m.room.server_acl` lets take part in it.
// https://spec.matrix.org/latest/client-server-api/#mroomserver_acl
// https://spec.matrix.org/latest/server-server-api/#server-access-control-lists-acls
// https://spec.matrix.org/latest/appendices/#glob-style-matching
//
// The spec's order: (1) no ACL event: allow; (2) an IP literal when `allow_ip_literals` is false:
// deny; (3) a `deny` entry matches: deny; (4) an `allow` entry matches: allow; (5) otherwise deny.
// Entries are case-insensitive globs (`*` any run of characters, `?` exactly one, everything else
// literal) matched against the whole server name without its port.
//
// Malformed content is read as Synapse reads it (federation_server.py, server_matches_acl_event),
// field by field: `allow_ip_literals` that is not a boolean counts as true (the spec says so too),
// `allow` or `deny` that is not an array as empty, and entries that are not strings match nothing.
// So an ACL whose `allow` is missing or malformed denies every server, as the spec warns.

/**
 * Whether `serverName` may take part in a room whose current `m.room.server_acl` has this content.
 * `undefined` (or null) stands for a room without an ACL event: every server is allowed. Content
 * that is not a JSON object (which an event's content cannot be) has none of the fields: deny.
 */
export function serverAllowedByAcl(aclContent: unknown, serverName: string): boolean {
  if (aclContent === undefined || aclContent === null) return true;
  const content = isObject(aclContent) ? aclContent : {};
  const host = hostOf(serverName).toLowerCase();

  const allowIpLiterals = typeof content.allow_ip_literals === "boolean" ? content.allow_ip_literals : true;
  if (!allowIpLiterals && isIpLiteral(host)) return false;

  const deny = Array.isArray(content.deny) ? content.deny : [];
  if (deny.some((entry) => typeof entry === "string" && globMatches(entry.toLowerCase(), host))) return false;

  const allow = Array.isArray(content.allow) ? content.allow : [];
  return allow.some((entry) => typeof entry === "string" && globMatches(entry.toLowerCase(), host));
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && !Array.isArray(v);

/**
 * The server name without its port. An IPv6 literal keeps its brackets (`[::1]:8448` is `[::1]`),
 * so ACL entries name it as it appears in server names. A name with several colons and no
 * brackets is no valid server name; it is kept whole (and counts as an IP literal).
 */
function hostOf(serverName: string): string {
  if (serverName.startsWith("[")) {
    const end = serverName.indexOf("]");
    return end === -1 ? serverName : serverName.slice(0, end + 1);
  }
  const colon = serverName.indexOf(":");
  if (colon === -1 || serverName.indexOf(":", colon + 1) !== -1) return serverName;
  return serverName.slice(0, colon);
}

/**
 * An IPv6 literal (bracketed, or bare in a malformed name) or an IPv4 one. Any host of digits and
 * dots counts as IPv4: it is never a DNS name (no top-level domain is numeric, and discovery
 * refuses such a name unless it is a valid dotted quad), so `allow_ip_literals: false` cannot be
 * dodged with `1.2.3.999` or inet_aton's shorthands such as `127.1`.
 */
function isIpLiteral(host: string): boolean {
  return host.startsWith("[") || host.includes(":") || /^[0-9.]+$/.test(host);
}

/**
 * Glob matching of the whole `text`, without regular expressions: a peer's ACL is untrusted input,
 * and a pattern such as `*a*a*a*a*b` compiled to a backtracking regex takes time exponential in
 * its stars. This is the greedy two-pointer walk: on a mismatch it retries from the last `*`, one
 * character further on; at most |pattern| × |text| steps. Both sides are compared by code point.
 */
export function globMatches(pattern: string, text: string): boolean {
  const p = Array.from(pattern);
  const t = Array.from(text);
  let pi = 0;
  let ti = 0;
  let star = -1; // the index in p just after the last `*` seen
  let starText = 0; // where in t that star's match currently ends
  while (ti < t.length) {
    if (pi < p.length && (p[pi] === "?" || (p[pi] !== "*" && p[pi] === t[ti]))) {
      pi++;
      ti++;
    } else if (pi < p.length && p[pi] === "*") {
      star = ++pi;
      starText = ti;
    } else if (star !== -1) {
      pi = star;
      ti = ++starText;
    } else {
      return false;
    }
  }
  while (pi < p.length && p[pi] === "*") pi++;
  return pi === p.length;
}

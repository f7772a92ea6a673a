// Resolving server names: https://spec.matrix.org/latest/server-server-api/#resolving-server-names
//
// A server name becomes an ordered list of places to connect to (a host still to be resolved to an
// address, and a port), the Host header to send and the name the TLS certificate must carry.
// Steps, in the spec's order: IP literal; explicit port; /.well-known/matrix/server (cached per
// the spec's advice, errors included) with its own IP-literal / port / SRV / 8448 sub-steps; SRV
// `_matrix-fed._tcp` then the deprecated `_matrix._tcp`; then port 8448.
//
// The I/O (fetching .well-known, SRV look-ups, the clock) is injected, so this file decides and
// the HTTP client connects. Turning a host into an IP address happens at connect time, where the
// address policy (address-policy.ts) applies to whatever DNS answers.

import { isIP } from "node:net";

export const DEFAULT_FEDERATION_PORT = 8448;

export interface ParsedServerName {
  /** A DNS name or an IP literal (IPv6 without brackets). */
  host: string;
  port?: number;
  ipLiteral: boolean;
}

/** Parses `server_name = hostname [ ":" port ]` (appendix grammar); undefined when invalid. */
export function parseServerName(name: string): ParsedServerName | undefined {
  const m = /^(?:\[([0-9A-Fa-f:.]{2,45})\]|([0-9A-Za-z.-]{1,255}))(?::([0-9]{1,5}))?$/.exec(name);
  if (!m) return undefined;
  const port = m[3] === undefined ? undefined : Number(m[3]);
  if (port !== undefined && (port < 1 || port > 65535)) return undefined;
  if (m[1] !== undefined) {
    if (isIP(m[1]) !== 6) return undefined;
    return { host: m[1], port, ipLiteral: true };
  }
  const host = m[2] as string;
  // A dotted quad is an IPv4 literal only when it is a valid one; "1.2.3.999" is refused rather
  // than looked up in DNS as a name.
  if (/^[0-9.]+$/.test(host)) {
    if (isIP(host) !== 4) return undefined;
    return { host, port, ipLiteral: true };
  }
  return { host, port, ipLiteral: false };
}

export interface ConnectTarget {
  /** What to connect to: a DNS name (resolved at connect time) or an IP literal. */
  host: string;
  port: number;
}

export interface ResolvedServer {
  /** Places to try in order (several only when SRV answered with several records). */
  targets: ConnectTarget[];
  /** The Host header to send. */
  hostHeader: string;
  /** The name the server's TLS certificate must be valid for (also the SNI name, unless an IP). */
  tlsName: string;
}

export interface SrvRecord {
  name: string;
  port: number;
  priority: number;
  weight: number;
}

export type WellKnownResult =
  /** A 200 with valid JSON carrying `m.server`; `maxAgeMs` from Cache-Control when given. */
  | { kind: "delegated"; server: string; maxAgeMs?: number }
  /** The server answered, but not with a usable delegation (non-200, bad JSON, missing field). */
  | { kind: "invalid" }
  /** No answer at all (connection refused, timeout, TLS failure). */
  | { kind: "unreachable" };

export interface DiscoveryDeps {
  fetchWellKnown(hostname: string): Promise<WellKnownResult>;
  /** SRV records for a name; an empty list when there are none. */
  resolveSrv(name: string): Promise<SrvRecord[]>;
  now(): number;
  /** In [0, 1); for SRV weight selection. */
  random?(): number;
}

// The spec recommends 24 hours by default and at most 48 hours; errors up to an hour. A server
// that is down is retried sooner (2 minutes, doubling), so a peer's brief outage does not hide
// its delegation for an hour. The floor keeps a peer's `max-age=0` from making us fetch on every
// request.
const WELL_KNOWN_DEFAULT_MS = 24 * 3600_000;
const WELL_KNOWN_MAX_MS = 48 * 3600_000;
const WELL_KNOWN_MIN_MS = 5 * 60_000;
const WELL_KNOWN_INVALID_MS = 3600_000;
const WELL_KNOWN_DOWN_FIRST_MS = 2 * 60_000;
const WELL_KNOWN_CACHE_LIMIT = 10_000;

interface CachedWellKnown {
  delegated?: string;
  expiresAt: number;
  /** For unreachable answers: how long the last one was cached, to double the next. */
  downMs?: number;
}

/**
 * `Cache-Control` → how long a .well-known answer may be cached, in ms; undefined when the header
 * says nothing about it. `no-store`/`no-cache` mean the minimum.
 */
export function wellKnownMaxAge(cacheControl: string | null | undefined): number | undefined {
  if (!cacheControl) return undefined;
  const directives = cacheControl.toLowerCase().split(",").map((d) => d.trim());
  if (directives.includes("no-store") || directives.includes("no-cache")) return 0;
  for (const d of directives) {
    const m = /^max-age\s*=\s*"?(\d+)"?$/.exec(d);
    if (m) return Number(m[1]) * 1000;
  }
  return undefined;
}

export class ServerResolver {
  private readonly wellKnownCache = new Map<string, CachedWellKnown>();

  constructor(private readonly deps: DiscoveryDeps) {}

  /** Resolves a server name; throws on a name that is not a valid server name. */
  async resolve(serverName: string): Promise<ResolvedServer> {
    const parsed = parseServerName(serverName);
    if (!parsed) throw new Error(`not a valid server name: ${JSON.stringify(serverName)}`);
    // Step 1: an IP literal.
    if (parsed.ipLiteral) {
      return { targets: [{ host: parsed.host, port: parsed.port ?? DEFAULT_FEDERATION_PORT }], hostHeader: serverName, tlsName: parsed.host };
    }
    // Step 2: an explicit port.
    if (parsed.port !== undefined) {
      return { targets: [{ host: parsed.host, port: parsed.port }], hostHeader: serverName, tlsName: parsed.host };
    }
    // Step 3: .well-known delegation.
    const delegatedName = await this.wellKnown(parsed.host);
    const delegated = delegatedName === undefined ? undefined : parseServerName(delegatedName);
    if (delegated && delegatedName !== undefined) {
      if (delegated.ipLiteral) {
        // 3.1: Host is the IP literal (with the port if one was given).
        return {
          targets: [{ host: delegated.host, port: delegated.port ?? DEFAULT_FEDERATION_PORT }],
          hostHeader: delegatedName,
          tlsName: delegated.host,
        };
      }
      if (delegated.port !== undefined) {
        // 3.2
        return { targets: [{ host: delegated.host, port: delegated.port }], hostHeader: delegatedName, tlsName: delegated.host };
      }
      // 3.3–3.5: SRV for the delegated name, then 8448.
      return this.srvOr8448(delegated.host);
    }
    // Steps 4–6: SRV for the server name itself, then 8448.
    return this.srvOr8448(parsed.host);
  }

  private async srvOr8448(hostname: string): Promise<ResolvedServer> {
    for (const service of ["_matrix-fed._tcp", "_matrix._tcp"]) {
      let records: SrvRecord[];
      try {
        records = await this.deps.resolveSrv(`${service}.${hostname}`);
      } catch {
        records = [];
      }
      // RFC 2782: a single record with target "." means the service is decidedly not available.
      const usable = records.filter((r) => r.name !== "" && r.name !== ".");
      if (records.length > 0 && usable.length === 0) break;
      if (usable.length > 0) {
        return {
          targets: orderSrv(usable, this.deps.random ?? Math.random).map((r) => ({ host: r.name.replace(/\.$/, ""), port: r.port })),
          hostHeader: hostname,
          tlsName: hostname,
        };
      }
    }
    return { targets: [{ host: hostname, port: DEFAULT_FEDERATION_PORT }], hostHeader: hostname, tlsName: hostname };
  }

  /** The delegated server name from .well-known, or undefined when there is none (cached). */
  private async wellKnown(hostname: string): Promise<string | undefined> {
    const now = this.deps.now();
    const cached = this.wellKnownCache.get(hostname);
    if (cached && cached.expiresAt > now) return cached.delegated;
    let result: WellKnownResult;
    try {
      result = await this.deps.fetchWellKnown(hostname);
    } catch {
      result = { kind: "unreachable" };
    }
    let entry: CachedWellKnown;
    if (result.kind === "delegated" && parseServerName(result.server)) {
      const age = Math.min(Math.max(result.maxAgeMs ?? WELL_KNOWN_DEFAULT_MS, WELL_KNOWN_MIN_MS), WELL_KNOWN_MAX_MS);
      entry = { delegated: result.server, expiresAt: now + age };
    } else if (result.kind === "unreachable") {
      const downMs = Math.min(cached?.downMs ? cached.downMs * 2 : WELL_KNOWN_DOWN_FIRST_MS, WELL_KNOWN_INVALID_MS);
      // While a peer's .well-known is unreachable, keep using a delegation it gave us before.
      entry = { delegated: cached?.delegated, expiresAt: now + downMs, downMs };
    } else {
      entry = { expiresAt: now + WELL_KNOWN_INVALID_MS };
    }
    this.wellKnownCache.delete(hostname);
    if (this.wellKnownCache.size >= WELL_KNOWN_CACHE_LIMIT) {
      const oldest = this.wellKnownCache.keys().next().value;
      if (oldest !== undefined) this.wellKnownCache.delete(oldest);
    }
    this.wellKnownCache.set(hostname, entry);
    return entry.delegated;
  }
}

/** RFC 2782 order: ascending priority; within one priority, a weighted random draw. */
export function orderSrv(records: SrvRecord[], random: () => number): SrvRecord[] {
  const byPriority = new Map<number, SrvRecord[]>();
  for (const r of records) {
    const list = byPriority.get(r.priority) ?? [];
    list.push(r);
    byPriority.set(r.priority, list);
  }
  const ordered: SrvRecord[] = [];
  for (const priority of [...byPriority.keys()].sort((a, b) => a - b)) {
    // Zero-weight records first so they have a small chance of being chosen (RFC 2782).
    const pool = [...(byPriority.get(priority) as SrvRecord[])].sort((a, b) => a.weight - b.weight);
    while (pool.length > 0) {
      const total = pool.reduce((sum, r) => sum + r.weight, 0);
      let pick = 0;
      if (total > 0) {
        const threshold = random() * total;
        let running = 0;
        pick = pool.findIndex((r) => (running += r.weight) > threshold);
        if (pick < 0) pick = pool.length - 1;
      }
      ordered.push(pool.splice(pick, 1)[0] as SrvRecord);
    }
  }
  return ordered;
}

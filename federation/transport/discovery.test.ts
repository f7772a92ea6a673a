// https://spec.matrix.org/latest/server-server-api/#resolving-server-names
import { describe, expect, it } from "vitest";
import {
  type DiscoveryDeps,
  type SrvRecord,
  type WellKnownResult,
  ServerResolver,
  orderSrv,
  parseServerName,
  wellKnownMaxAge,
} from "./discovery.ts";

function fakeDeps(opts: {
  wellKnown?: Record<string, WellKnownResult>;
  srv?: Record<string, SrvRecord[]>;
}) {
  let now = 1_000_000;
  const calls = { wellKnown: [] as string[], srv: [] as string[] };
  const deps: DiscoveryDeps = {
    async fetchWellKnown(host) {
      calls.wellKnown.push(host);
      return opts.wellKnown?.[host] ?? { kind: "invalid" };
    },
    async resolveSrv(name) {
      calls.srv.push(name);
      return opts.srv?.[name] ?? [];
    },
    now: () => now,
    random: () => 0,
  };
  return { deps, calls, advance: (ms: number) => (now += ms) };
}

const srv = (name: string, port: number, priority = 10, weight = 0): SrvRecord => ({ name, port, priority, weight });

describe("server name grammar", () => {
  it("parses DNS names, ports, IPv4 and bracketed IPv6 literals", () => {
    expect(parseServerName("matrix.org")).toEqual({ host: "matrix.org", port: undefined, ipLiteral: false });
    expect(parseServerName("matrix.org:8888")).toEqual({ host: "matrix.org", port: 8888, ipLiteral: false });
    expect(parseServerName("1.2.3.4")).toEqual({ host: "1.2.3.4", port: undefined, ipLiteral: true });
    expect(parseServerName("1.2.3.4:1234")).toEqual({ host: "1.2.3.4", port: 1234, ipLiteral: true });
    expect(parseServerName("[1234:5678::abcd]")).toEqual({ host: "1234:5678::abcd", port: undefined, ipLiteral: true });
    expect(parseServerName("[1234:5678::abcd]:5678")).toEqual({ host: "1234:5678::abcd", port: 5678, ipLiteral: true });
  });

  it("refuses what the grammar does not allow", () => {
    for (const bad of ["", "matrix.org:", "matrix.org:123456", "matrix.org:0", "ex ample.org", "a_b.org", "[::1", "1234::1", "[nothex]", "1.2.3.999", "user@host", "host/path"]) {
      expect(parseServerName(bad), bad).toBeUndefined();
    }
  });
});

describe("resolving server names", () => {
  it("step 1: an IP literal is used with its port or 8448, Host is the server name", async () => {
    const { deps, calls } = fakeDeps({});
    const r = new ServerResolver(deps);
    expect(await r.resolve("1.2.3.4")).toEqual({ targets: [{ host: "1.2.3.4", port: 8448 }], hostHeader: "1.2.3.4", tlsName: "1.2.3.4" });
    expect(await r.resolve("[2001:db8::1]:8009")).toEqual({
      targets: [{ host: "2001:db8::1", port: 8009 }],
      hostHeader: "[2001:db8::1]:8009",
      tlsName: "2001:db8::1",
    });
    expect(calls.wellKnown).toEqual([]);
  });

  it("step 2: an explicit port skips .well-known and SRV", async () => {
    const { deps, calls } = fakeDeps({});
    const r = await new ServerResolver(deps).resolve("example.org:8009");
    expect(r).toEqual({ targets: [{ host: "example.org", port: 8009 }], hostHeader: "example.org:8009", tlsName: "example.org" });
    expect(calls).toEqual({ wellKnown: [], srv: [] });
  });

  it("step 3: follows .well-known to a delegated name with a port, an IP literal, or SRV of the delegated name", async () => {
    const { deps } = fakeDeps({
      wellKnown: {
        "a.example": { kind: "delegated", server: "matrix.a.example:443" },
        "b.example": { kind: "delegated", server: "5.6.7.8" },
        "c.example": { kind: "delegated", server: "matrix.c.example" },
        "d.example": { kind: "delegated", server: "matrix.d.example" },
        "e.example": { kind: "delegated", server: "matrix.e.example" },
      },
      srv: {
        "_matrix-fed._tcp.matrix.c.example": [srv("fed.c.example.", 8450)],
        "_matrix._tcp.matrix.d.example": [srv("old.d.example", 8451)],
      },
    });
    const r = new ServerResolver(deps);
    expect(await r.resolve("a.example")).toEqual({ targets: [{ host: "matrix.a.example", port: 443 }], hostHeader: "matrix.a.example:443", tlsName: "matrix.a.example" });
    expect(await r.resolve("b.example")).toEqual({ targets: [{ host: "5.6.7.8", port: 8448 }], hostHeader: "5.6.7.8", tlsName: "5.6.7.8" });
    // SRV targets are connected to, but Host and the certificate stay the delegated name.
    expect(await r.resolve("c.example")).toEqual({ targets: [{ host: "fed.c.example", port: 8450 }], hostHeader: "matrix.c.example", tlsName: "matrix.c.example" });
    expect(await r.resolve("d.example")).toEqual({ targets: [{ host: "old.d.example", port: 8451 }], hostHeader: "matrix.d.example", tlsName: "matrix.d.example" });
    expect(await r.resolve("e.example")).toEqual({ targets: [{ host: "matrix.e.example", port: 8448 }], hostHeader: "matrix.e.example", tlsName: "matrix.e.example" });
  });

  it("steps 4–6: without .well-known, SRV _matrix-fed then _matrix of the server name, else 8448", async () => {
    const { deps, calls } = fakeDeps({
      srv: {
        "_matrix-fed._tcp.f.example": [srv("fed.f.example", 8460)],
        "_matrix-fed._tcp.g.example": [],
        "_matrix._tcp.g.example": [srv("legacy.g.example", 8461)],
      },
    });
    const r = new ServerResolver(deps);
    expect(await r.resolve("f.example")).toEqual({ targets: [{ host: "fed.f.example", port: 8460 }], hostHeader: "f.example", tlsName: "f.example" });
    expect(await r.resolve("g.example")).toEqual({ targets: [{ host: "legacy.g.example", port: 8461 }], hostHeader: "g.example", tlsName: "g.example" });
    expect(await r.resolve("h.example")).toEqual({ targets: [{ host: "h.example", port: 8448 }], hostHeader: "h.example", tlsName: "h.example" });
    expect(calls.srv).toContain("_matrix-fed._tcp.f.example");
    expect(calls.srv).not.toContain("_matrix._tcp.f.example");
  });

  it("a delegation that is not a valid server name counts as no delegation", async () => {
    const { deps } = fakeDeps({ wellKnown: { "i.example": { kind: "delegated", server: "not a name" } } });
    expect((await new ServerResolver(deps).resolve("i.example")).targets).toEqual([{ host: "i.example", port: 8448 }]);
  });

  it("caches .well-known per Cache-Control within 5 minutes and 48 hours, 24 hours by default", async () => {
    const { deps, calls, advance } = fakeDeps({
      wellKnown: {
        "j.example": { kind: "delegated", server: "m.j.example:1", maxAgeMs: 100 * 3600_000 },
        "k.example": { kind: "delegated", server: "m.k.example:1" },
      },
    });
    const r = new ServerResolver(deps);
    await r.resolve("j.example");
    await r.resolve("k.example");
    advance(24 * 3600_000 - 1);
    await r.resolve("j.example");
    await r.resolve("k.example");
    expect(calls.wellKnown).toEqual(["j.example", "k.example"]);
    advance(2);
    await r.resolve("k.example");
    expect(calls.wellKnown).toEqual(["j.example", "k.example", "k.example"]);
    advance(24 * 3600_000);
    await r.resolve("j.example");
    expect(calls.wellKnown.filter((h) => h === "j.example")).toHaveLength(2);
  });

  it("caches an invalid answer for an hour, and an unreachable one for 2 minutes, doubling, keeping an earlier delegation", async () => {
    const answers: WellKnownResult[] = [
      { kind: "delegated", server: "m.l.example:9", maxAgeMs: 0 },
      { kind: "unreachable" },
      { kind: "unreachable" },
      { kind: "invalid" },
    ];
    const { deps, calls, advance } = fakeDeps({});
    deps.fetchWellKnown = async (host) => {
      calls.wellKnown.push(host);
      return answers.shift() ?? { kind: "invalid" };
    };
    const r = new ServerResolver(deps);
    expect((await r.resolve("l.example")).targets).toEqual([{ host: "m.l.example", port: 9 }]);
    advance(5 * 60_000); // the 5-minute floor, despite max-age=0
    expect((await r.resolve("l.example")).targets).toEqual([{ host: "m.l.example", port: 9 }]); // down: old delegation kept
    advance(2 * 60_000 - 1);
    await r.resolve("l.example");
    expect(calls.wellKnown).toHaveLength(2);
    advance(1);
    await r.resolve("l.example"); // down again: now cached for 4 minutes
    advance(4 * 60_000 - 1);
    await r.resolve("l.example");
    expect(calls.wellKnown).toHaveLength(3);
    advance(1);
    expect((await r.resolve("l.example")).targets).toEqual([{ host: "l.example", port: 8448 }]); // invalid: no delegation
    advance(3600_000 - 1);
    await r.resolve("l.example");
    expect(calls.wellKnown).toHaveLength(4);
  });

  it("reads max-age from Cache-Control; no-store and no-cache mean do not keep", () => {
    expect(wellKnownMaxAge("public, max-age=3600")).toBe(3_600_000);
    expect(wellKnownMaxAge("no-store")).toBe(0);
    expect(wellKnownMaxAge("private")).toBeUndefined();
    expect(wellKnownMaxAge(null)).toBeUndefined();
  });

  it("orders SRV records by priority, then by weight (RFC 2782), and honours the '.' target", async () => {
    const ordered = orderSrv([srv("c", 1, 20, 5), srv("a", 1, 10, 0), srv("b", 1, 10, 10)], () => 0.5);
    expect(ordered.map((r) => r.name)).toEqual(["b", "a", "c"]);
    const { deps } = fakeDeps({ srv: { "_matrix-fed._tcp.n.example": [srv(".", 0)] } });
    expect((await new ServerResolver(deps).resolve("n.example")).targets).toEqual([{ host: "n.example", port: 8448 }]);
  });
});

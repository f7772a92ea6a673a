import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { type IncomingMessage, type Server, type ServerResponse, createServer } from "node:http";
import { createServer as createHttpsServer } from "node:https";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { signingKeyFromSeed } from "../protocol/signing.ts";
import type { ResolvedServer } from "./discovery.ts";
import { FederationHttpClient, FederationRequestError } from "./http-client.ts";
import { parseXMatrixAuthorization, verifyXMatrixRequest } from "./request-auth.ts";

const key = signingKeyFromSeed(new Uint8Array(32).fill(3), "ed25519:t");

type Handler = (req: IncomingMessage, body: string, res: ServerResponse) => void;
let handler: Handler = (_req, _body, res) => res.end("{}");
let server: Server;
let port: number;

beforeAll(async () => {
  server = createServer((req, res) => {
    let body = "";
    req.on("data", (c) => (body += c));
    req.on("end", () => handler(req, body, res));
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  port = (server.address() as AddressInfo).port;
});
afterAll(() => new Promise<void>((r) => server.close(() => r())));

const noDiscovery = async (name: string): Promise<ResolvedServer> => {
  throw new Error(`unexpected discovery of ${name}`);
};

function client(extra: Partial<ConstructorParameters<typeof FederationHttpClient>[0]> = {}) {
  return new FederationHttpClient({
    serverName: "origin.test",
    signingKey: key,
    resolve: noDiscovery,
    pinnedHosts: new Map([["peer.test", { host: "127.0.0.1", port }]]),
    insecure: new Set(["peer.test"]),
    ...extra,
  });
}

describe("federation HTTP client", () => {
  it("sends a signed request to a pinned name over plain HTTP, with Host set to the server name", async () => {
    let seen: { auth?: string; host?: string; url?: string; body?: string } = {};
    handler = (req, body, res) => {
      seen = { auth: req.headers.authorization, host: req.headers.host, url: req.url, body };
      res.setHeader("content-type", "application/json");
      res.end(JSON.stringify({ ok: true }));
    };
    const c = client();
    const res = await c.request("peer.test", { method: "PUT", path: "/_matrix/federation/v1/send/t%201?x=1", body: { pdus: [] } });
    await c.close();
    expect(res).toMatchObject({ status: 200, body: { ok: true } });
    expect(seen.host).toBe("peer.test");
    expect(seen.url).toBe("/_matrix/federation/v1/send/t%201?x=1");
    const creds = parseXMatrixAuthorization(seen.auth as string);
    expect(creds).toMatchObject({ origin: "origin.test", destination: "peer.test", key: "ed25519:t" });
    const ok = verifyXMatrixRequest(
      creds,
      { method: "PUT", uri: seen.url as string, destination: "peer.test", content: JSON.parse(seen.body as string) },
      key.publicKey,
    );
    expect(ok).toBe(true);
  });

  it("sends no Authorization header for unsigned requests (the key server)", async () => {
    let auth: string | undefined = "unset";
    handler = (req, _b, res) => {
      auth = req.headers.authorization;
      res.end("{}");
    };
    const c = client();
    await c.request("peer.test", { method: "GET", path: "/_matrix/key/v2/server", signed: false });
    await c.close();
    expect(auth).toBeUndefined();
  });

  it("refuses to connect to a name that resolves to a loopback or private address unless pinned", async () => {
    let hits = 0;
    handler = (_r, _b, res) => {
      hits++;
      res.end("{}");
    };
    const c = client({
      pinnedHosts: new Map(),
      insecure: new Set(["sneaky.test"]),
      resolve: async () => ({ targets: [{ host: "sneaky.test", port }], hostHeader: "sneaky.test", tlsName: "sneaky.test" }),
      lookupAll: async () => [{ address: "127.0.0.1", family: 4 }],
    });
    const err = await c.request("sneaky.test", { method: "GET", path: "/_matrix/federation/v1/version" }).catch((e) => e);
    await c.close();
    expect(err).toBeInstanceOf(FederationRequestError);
    expect((err as FederationRequestError).failure).toBe("blocked-address");
    expect(hits).toBe(0);
  });

  it("refuses an IP-literal server name in a private range, and allows it with insecure '*'", async () => {
    handler = (_r, _b, res) => res.end('{"v":1}');
    const name = `127.0.0.1:${port}`;
    const strict = client({ pinnedHosts: new Map(), insecure: new Set([name]), resolve: async () => ({ targets: [{ host: "127.0.0.1", port }], hostHeader: name, tlsName: "127.0.0.1" }) });
    const err = await strict.request(name, { method: "GET", path: "/x" }).catch((e) => e);
    await strict.close();
    expect((err as FederationRequestError).failure).toBe("blocked-address");
    const open = client({ pinnedHosts: new Map(), insecure: "*", resolve: async () => ({ targets: [{ host: "127.0.0.1", port }], hostHeader: name, tlsName: "127.0.0.1" }) });
    const res = await open.request(name, { method: "GET", path: "/x" });
    await open.close();
    expect(res.body).toEqual({ v: 1 });
  });

  it("gives up on answers larger than the limit and on peers that do not answer in time", async () => {
    handler = (_r, _b, res) => res.end(JSON.stringify({ big: "x".repeat(5000) }));
    const small = client({ maxResponseBytes: 1000 });
    const tooLarge = await small.request("peer.test", { method: "GET", path: "/big" }).catch((e) => e);
    await small.close();
    expect((tooLarge as FederationRequestError).failure).toBe("too-large");

    // A stream (media) is not bound by the JSON limit: its reader applies the media size limit.
    const streaming = client({ maxResponseBytes: 1000 });
    const stream = await streaming.requestStream("peer.test", { method: "GET", path: "/big" });
    let streamed = 0;
    for await (const chunk of stream.body) streamed += (chunk as Buffer).byteLength;
    await streaming.close();
    expect(streamed).toBeGreaterThan(5000);

    handler = () => {}; // never answers
    const impatient = client({ headersTimeoutMs: 200, requestTimeoutMs: 300 });
    const started = Date.now();
    const timedOut = await impatient.request("peer.test", { method: "GET", path: "/slow" }).catch((e) => e);
    await impatient.close();
    expect((timedOut as FederationRequestError).failure).toBe("timeout");
    expect(Date.now() - started).toBeLessThan(3000);
  });

  it("reports a body that is not JSON as a bad response, and an invalid server name before any connection", async () => {
    handler = (_r, _b, res) => res.end("<html>");
    const c = client();
    const bad = await c.request("peer.test", { method: "GET", path: "/html" }).catch((e) => e);
    const invalid = await c.request("not a name", { method: "GET", path: "/" }).catch((e) => e);
    await c.close();
    expect((bad as FederationRequestError).failure).toBe("bad-response");
    expect((invalid as FederationRequestError).failure).toBe("invalid-destination");
  });

  it("reports JSON nested deeper than 100 levels as a bad response", async () => {
    handler = (_r, _b, res) => res.end(`{"a":${"[".repeat(5000)}${"]".repeat(5000)}}`);
    const c = client();
    const deep = await c.request("peer.test", { method: "GET", path: "/deep" }).catch((e) => e);
    await c.close();
    expect((deep as FederationRequestError).failure).toBe("bad-response");
  });

  it("tries the next SRV target when one cannot be reached", async () => {
    handler = (_r, _b, res) => res.end('{"second":true}');
    const c = client({
      pinnedHosts: new Map(),
      insecure: "*",
      resolve: async () => ({
        targets: [{ host: "127.0.0.1", port: 1 }, { host: "127.0.0.1", port }],
        hostHeader: "multi.test",
        tlsName: "multi.test",
      }),
    });
    const res = await c.request("multi.test", { method: "GET", path: "/x" });
    await c.close();
    expect(res.body).toEqual({ second: true });
  });
});

const hasOpenssl = (() => {
  try {
    execFileSync("openssl", ["version"], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
})();

describe.skipIf(!hasOpenssl)("federation HTTP client over TLS", () => {
  let tlsServer: Server;
  let tlsPort: number;
  let cert: string;
  let dir: string;
  beforeAll(async () => {
    dir = mkdtempSync(path.join(tmpdir(), "parley-tls-"));
    execFileSync("openssl", [
      "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1",
      "-subj", "/CN=secure.test", "-addext", "subjectAltName=DNS:secure.test",
      "-keyout", path.join(dir, "key.pem"), "-out", path.join(dir, "cert.pem"),
    ], { stdio: "ignore" });
    cert = readFileSync(path.join(dir, "cert.pem"), "utf8");
    tlsServer = createHttpsServer({ key: readFileSync(path.join(dir, "key.pem")), cert }, (req, res) => {
      if (req.url === "/.well-known/matrix/server") {
        res.setHeader("cache-control", "public, max-age=600");
        res.end(JSON.stringify({ "m.server": "delegated.test:1234" }));
      } else if (req.url === "/moved") {
        res.statusCode = 301;
        res.setHeader("location", "/.well-known/matrix/server");
        res.end();
      } else {
        res.end(JSON.stringify({ host: req.headers.host }));
      }
    });
    await new Promise<void>((r) => tlsServer.listen(0, "127.0.0.1", r));
    tlsPort = (tlsServer.address() as AddressInfo).port;
  });
  afterAll(async () => {
    await new Promise<void>((r) => tlsServer.close(() => r()));
    rmSync(dir, { recursive: true, force: true });
  });

  it("checks the certificate against the server name, and refuses one it does not trust or that names another server", async () => {
    const pins = new Map([
      ["secure.test", { host: "127.0.0.1", port: tlsPort }],
      ["other.test", { host: "127.0.0.1", port: tlsPort }],
    ]);
    const trusting = new FederationHttpClient({ serverName: "o.test", signingKey: key, resolve: noDiscovery, pinnedHosts: pins, tlsCa: cert });
    const res = await trusting.request("secure.test", { method: "GET", path: "/" });
    expect(res.body).toEqual({ host: "secure.test" });
    const wrongName = await trusting.request("other.test", { method: "GET", path: "/" }).catch((e) => e);
    await trusting.close();
    expect((wrongName as FederationRequestError).failure).toBe("unreachable");
    expect(String(wrongName)).toMatch(/other\.test/);

    const untrusting = new FederationHttpClient({ serverName: "o.test", signingKey: key, resolve: noDiscovery, pinnedHosts: pins });
    const selfSigned = await untrusting.request("secure.test", { method: "GET", path: "/" }).catch((e) => e);
    await untrusting.close();
    expect((selfSigned as FederationRequestError).failure).toBe("unreachable");
  });

  it("fetches .well-known/matrix/server over verified TLS with its cache lifetime, and refuses private addresses", async () => {
    const c = new FederationHttpClient({
      serverName: "o.test",
      signingKey: key,
      resolve: noDiscovery,
      tlsCa: cert,
      wellKnownPort: tlsPort,
      lookupAll: async () => [{ address: "127.0.0.1", family: 4 }],
      allowAddress: () => true,
    });
    expect(await c.fetchWellKnown("secure.test")).toEqual({ kind: "delegated", server: "delegated.test:1234", maxAgeMs: 600_000 });
    // The certificate names secure.test only.
    expect(await c.fetchWellKnown("impostor.test")).toEqual({ kind: "unreachable" });
    await c.close();
    const strict = new FederationHttpClient({
      serverName: "o.test",
      signingKey: key,
      resolve: noDiscovery,
      tlsCa: cert,
      wellKnownPort: tlsPort,
      lookupAll: async () => [{ address: "127.0.0.1", family: 4 }],
    });
    expect(await strict.fetchWellKnown("secure.test")).toEqual({ kind: "unreachable" });
    await strict.close();
  });

  it("reaches a name marked insecure over TLS without checking its certificate", async () => {
    const c = new FederationHttpClient({
      serverName: "o.test",
      signingKey: key,
      resolve: noDiscovery,
      pinnedHosts: new Map([["anything.test", { host: "127.0.0.1", port: tlsPort }]]),
      insecure: new Set(["anything.test"]),
    });
    const res = await c.request("anything.test", { method: "GET", path: "/" });
    await c.close();
    expect(res.body).toEqual({ host: "anything.test" });
  });

  it("connects to an SRV target but checks the certificate and SNI against the delegated name", async () => {
    const viaSrv = (tlsName: string) =>
      new FederationHttpClient({
        serverName: "o.test",
        signingKey: key,
        tlsCa: cert,
        resolve: async () => ({ targets: [{ host: "srv-target.test", port: tlsPort }], hostHeader: tlsName, tlsName }),
        lookupAll: async () => [{ address: "127.0.0.1", family: 4 }],
        allowAddress: () => true,
      });
    const good = viaSrv("secure.test");
    expect((await good.request("secure.test", { method: "GET", path: "/" })).body).toEqual({ host: "secure.test" });
    await good.close();
    const bad = viaSrv("impostor.test");
    const err = await bad.request("impostor.test", { method: "GET", path: "/" }).catch((e) => e);
    await bad.close();
    expect((err as FederationRequestError).failure).toBe("unreachable");
  });
});

// Parley listening with TLS itself (`tls_port`), so a small deployment needs no reverse proxy and
// peers can reach it on 8448: the same app as the plain listener, closed on shutdown like it.
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { connect as tlsConnect } from "node:tls";
import { tmpdir } from "node:os";
import path from "node:path";
import { Agent, fetch } from "undici";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ConfigError } from "../server/config.ts";
import { type SelfSignedCertificate, opensslMissing, selfSignedCertificate } from "./self-signed.ts";
import { type TestServer, startTestServer } from "./harness.ts";

const missing = await opensslMissing();
if (missing) console.warn(`tls-listener tests skipped: ${missing}`);

describe.skipIf(missing !== undefined)("TLS listener", () => {
  let dir: string;
  let cert: SelfSignedCertificate;
  let agent: Agent;

  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), "parley-tls-"));
    cert = await selfSignedCertificate(dir);
    agent = new Agent({ connect: { ca: cert.cert } });
  });
  afterAll(async () => {
    await agent?.close();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  const tlsConfig = () => ({ tls_port: 0, tls_certificate: cert.certFile, tls_private_key: cert.keyFile });
  const getJson = async (url: string) => {
    const res = await fetch(url, { dispatcher: agent });
    return { status: res.status, json: (await res.json()) as Record<string, any> };
  };

  describe("with a certificate", () => {
    let hs: TestServer;
    beforeAll(async () => {
      hs = await startTestServer({ config: { server_name: "tls.test", ...tlsConfig() } });
    });
    afterAll(async () => {
      await hs?.destroy();
    });

    it("serves the federation version over HTTPS on its own port", async () => {
      expect(hs.tlsPort).toBeGreaterThan(0);
      expect(hs.tlsPort).not.toBe(hs.port);
      expect(hs.tlsUrl).toBe(`https://127.0.0.1:${hs.tlsPort}`);
      const { status, json } = await getJson(`${hs.tlsUrl}/_matrix/federation/v1/version`);
      expect(status).toBe(200);
      expect(json.server.name).toBe("Parley");
    });

    it("serves the server's signing key over HTTPS, the same as over plain HTTP", async () => {
      const overTls = await getJson(`${hs.tlsUrl}/_matrix/key/v2/server`);
      expect(overTls.status).toBe(200);
      expect(overTls.json.server_name).toBe("tls.test");
      expect(Object.keys(overTls.json.verify_keys)).toEqual([hs.services.signingKey.keyId]);
      const plain = await (await fetch(`${hs.url}/_matrix/key/v2/server`)).json();
      expect((plain as { verify_keys: unknown }).verify_keys).toEqual(overTls.json.verify_keys);
    });

    it("answers malformed HTTP inside TLS with a Matrix error, like the plain listener", async () => {
      const answer = await new Promise<string>((resolve, reject) => {
        const socket = tlsConnect({ host: "127.0.0.1", port: hs.tlsPort!, ca: cert.cert, servername: "localhost" }, () => {
          socket.write("NOT HTTP AT ALL\r\n\r\n");
        });
        let text = "";
        socket.setEncoding("utf8").on("data", (d: string) => (text += d));
        socket.on("end", () => resolve(text));
        socket.on("error", reject);
      });
      expect(answer).toMatch(/^HTTP\/1\.1 400 /);
      expect(answer).toContain('"errcode":"M_UNKNOWN"');
    });
  });

  it("stops listening with TLS on shutdown", async () => {
    const hs = await startTestServer({ config: tlsConfig() });
    const url = `${hs.tlsUrl}/_matrix/federation/v1/version`;
    expect((await getJson(url)).status).toBe(200);
    await hs.destroy();
    const fresh = new Agent({ connect: { ca: cert.cert } });
    try {
      await expect(fetch(url, { dispatcher: fresh })).rejects.toMatchObject({ cause: { code: "ECONNREFUSED" } });
    } finally {
      await fresh.close();
    }
  });

  it("does not listen with TLS when tls_port is unset", async () => {
    const hs = await startTestServer();
    try {
      expect(hs.tlsPort).toBeUndefined();
      expect(hs.tlsUrl).toBeUndefined();
    } finally {
      await hs.destroy();
    }
  });

  it("refuses to start when tls_port is set without a certificate and key", async () => {
    const start = startTestServer({ config: { tls_port: 0 } });
    await expect(start).rejects.toBeInstanceOf(ConfigError);
    await expect(start).rejects.toThrow(/tls_certificate and tls_private_key are not set/);
  });

  it("refuses to start when a certificate is given without tls_port", async () => {
    const start = startTestServer({ config: { tls_certificate: cert.certFile, tls_private_key: cert.keyFile } });
    await expect(start).rejects.toThrow(/tls_port is not set/);
  });

  it("refuses to start when the certificate file cannot be read", async () => {
    const absent = path.join(dir, "absent.crt");
    const start = startTestServer({ config: { ...tlsConfig(), tls_certificate: absent } });
    await expect(start).rejects.toBeInstanceOf(ConfigError);
    await expect(start).rejects.toThrow(`cannot read tls_certificate ${absent}`);
  });

  it("refuses to start when the key is not a PEM key", async () => {
    const garbage = path.join(dir, "garbage.key");
    await writeFile(garbage, "not a key\n");
    const start = startTestServer({ config: { ...tlsConfig(), tls_private_key: garbage } });
    await expect(start).rejects.toBeInstanceOf(ConfigError);
    await expect(start).rejects.toThrow(/not a usable PEM certificate and key/);
  });
});

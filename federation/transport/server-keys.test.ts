// https://spec.matrix.org/latest/server-server-api/#retrieving-server-keys
import { mkdtemp, rm } from "node:fs/promises";
import { type Server, createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import pino from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type OpenedDatabase, openDatabase } from "../../schema/db.ts";
import { createTestDatabase, type TestDatabase } from "../../tests/harness.ts";
import { encodeUnpaddedBase64 } from "../protocol/base64.ts";
import { signJson, signingKeyFromSeed } from "../protocol/signing.ts";
import { FederationHttpClient } from "./http-client.ts";
import { serverKeysResponse } from "./key-server.ts";
import { KeyResponseError, MAX_KEY_VALIDITY_MS, ServerKeyStore, checkKeyResponse } from "./server-keys.ts";

const peerKey = signingKeyFromSeed(new Uint8Array(32).fill(1), "ed25519:peer1");
const peerKey2 = signingKeyFromSeed(new Uint8Array(32).fill(2), "ed25519:peer2");
const notaryKey = signingKeyFromSeed(new Uint8Array(32).fill(9), "ed25519:n");
const ourKey = signingKeyFromSeed(new Uint8Array(32).fill(5), "ed25519:us");
const NOW = 1_800_000_000_000;

describe("checking a key response", () => {
  it("accepts a server's self-signed response and lists current and old keys", () => {
    const json = signJson(
      {
        ...serverKeysResponse("peer.test", peerKey, NOW),
        old_verify_keys: { "ed25519:old": { key: encodeUnpaddedBase64(peerKey2.publicKey), expired_ts: NOW - 1000 } },
      },
      "peer.test",
      peerKey,
    );
    const keys = checkKeyResponse(json, "peer.test", NOW);
    expect(keys.get("ed25519:peer1")?.key).toEqual(peerKey.publicKey);
    expect(keys.get("ed25519:old")).toMatchObject({ expiredTs: NOW - 1000 });
  });

  it("caps validity at 7 days after fetching, whatever the server claims", () => {
    const json = signJson({ ...serverKeysResponse("peer.test", peerKey, NOW), valid_until_ts: NOW + 365 * 86_400_000 }, "peer.test", peerKey);
    expect(checkKeyResponse(json, "peer.test", NOW).get("ed25519:peer1")?.validUntilTs).toBe(NOW + MAX_KEY_VALIDITY_MS);
  });

  it("refuses a response for another server, one not signed by its own keys, a bad signature, malformed keys", () => {
    const good = serverKeysResponse("peer.test", peerKey, NOW);
    expect(() => checkKeyResponse(good, "other.test", NOW)).toThrow(KeyResponseError);
    const { signatures: _s, ...unsigned } = good;
    expect(() => checkKeyResponse({ ...unsigned, signatures: {} }, "peer.test", NOW)).toThrow(/not signed/);
    const signedByOther = signJson(unsigned, "peer.test", { ...peerKey2, keyId: "ed25519:peer1" });
    expect(() => checkKeyResponse(signedByOther, "peer.test", NOW)).toThrow(/bad self-signature/);
    expect(() => checkKeyResponse({ ...good, valid_until_ts: good.valid_until_ts + 1 }, "peer.test", NOW)).toThrow(/bad self-signature/);
    expect(() => checkKeyResponse({ ...good, verify_keys: { "ed25519:peer1": { key: "AAAA" } } }, "peer.test", NOW)).toThrow(/32 bytes/);
    expect(() => checkKeyResponse({ server_name: "peer.test" }, "peer.test", NOW)).toThrow(/malformed/);
  });
});

describe("the server key store", () => {
  let server: Server;
  let port: number;
  let served: Record<string, () => unknown> = {};
  let hits: string[] = [];
  let dataDir: string;
  let testDb: TestDatabase;
  let database: OpenedDatabase;
  let now = NOW;

  beforeAll(async () => {
    server = createServer((req, res) => {
      let body = "";
      req.on("data", (c) => (body += c));
      req.on("end", () => {
        const host = req.headers.host as string;
        hits.push(`${host} ${req.method} ${req.url}`);
        const answer = served[`${host} ${req.url}`];
        if (!answer) {
          res.statusCode = 404;
          res.end('{"errcode":"M_NOT_FOUND"}');
          return;
        }
        res.end(JSON.stringify(answer()));
      });
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    port = (server.address() as AddressInfo).port;
    dataDir = await mkdtemp(path.join(tmpdir(), "parley-keys-"));
    testDb = await createTestDatabase();
    database = await openDatabase({ dataDir, databaseUrl: testDb.url, embedded: "memory" });
  });
  afterAll(async () => {
    await database.close();
    await testDb.drop();
    await rm(dataDir, { recursive: true, force: true });
    await new Promise<void>((r) => server.close(() => r()));
  });

  function store(notaries: string[] = []) {
    const names = ["peer.test", "down.test", "notary.test", "liar.test"];
    const http = new FederationHttpClient({
      serverName: "us.test",
      signingKey: ourKey,
      resolve: async () => {
        throw new Error("no discovery in tests");
      },
      pinnedHosts: new Map(names.map((n) => [n, { host: "127.0.0.1", port }])),
      insecure: new Set(names),
    });
    return new ServerKeyStore({
      db: database.db,
      http,
      serverName: "us.test",
      signingKey: ourKey,
      notaries,
      now: () => now,
      logger: pino({ level: "silent" }),
    });
  }

  it("fetches a server's key once, then answers from memory and, after a restart, from the database", async () => {
    served = { "peer.test /_matrix/key/v2/server": () => serverKeysResponse("peer.test", peerKey, now) };
    hits = [];
    const first = store();
    expect(await first.verifyKey("peer.test", "ed25519:peer1")).toEqual(peerKey.publicKey);
    expect(await first.verifyKey("peer.test", "ed25519:peer1")).toEqual(peerKey.publicKey);
    expect(hits).toHaveLength(1);
    const restarted = store();
    expect(await restarted.verifyKey("peer.test", "ed25519:peer1")).toEqual(peerKey.publicKey);
    expect(hits).toHaveLength(1);
  });

  it("refetches for an unknown key ID, but not more often than every few seconds", async () => {
    const s = store();
    await s.verifyKey("peer.test", "ed25519:peer1");
    hits = [];
    served = {
      "peer.test /_matrix/key/v2/server": () => {
        const r = serverKeysResponse("peer.test", peerKey2, now);
        return signJson(r, "peer.test", peerKey2);
      },
    };
    expect(await s.verifyKey("peer.test", "ed25519:peer2")).toEqual(peerKey2.publicKey);
    expect(await s.verifyKey("peer.test", "ed25519:forged")).toBeUndefined();
    expect(await s.verifyKey("peer.test", "ed25519:forged2")).toBeUndefined();
    expect(hits).toHaveLength(1);
    now += 11_000;
    expect(await s.verifyKey("peer.test", "ed25519:forged")).toBeUndefined();
    expect(hits).toHaveLength(2);
  });

  it("refetches a key whose validity has run out, and refuses it when the server cannot be reached", async () => {
    served = { "peer.test /_matrix/key/v2/server": () => serverKeysResponse("peer.test", peerKey, now) };
    const s = store();
    expect(await s.verifyKey("peer.test", "ed25519:peer1")).toBeDefined();
    now += MAX_KEY_VALIDITY_MS + 1;
    served = {};
    expect(await s.verifyKey("peer.test", "ed25519:peer1")).toBeUndefined();
    // Still good for what it signed while it was valid.
    expect(await s.verifyKey("peer.test", "ed25519:peer1", now - MAX_KEY_VALIDITY_MS)).toBeDefined();
  });

  it("asks a notary when the server cannot be reached, and accepts only answers the notary signed", async () => {
    const downResponse = serverKeysResponse("down.test", peerKey, now);
    served = {
      "notary.test /_matrix/key/v2/server": () => serverKeysResponse("notary.test", notaryKey, now),
      "notary.test /_matrix/key/v2/query": () => ({ server_keys: [signJson(downResponse, "notary.test", notaryKey)] }),
    };
    expect(await store(["notary.test"]).verifyKey("down.test", "ed25519:peer1")).toEqual(peerKey.publicKey);

    served["liar.test /_matrix/key/v2/server"] = () => serverKeysResponse("liar.test", notaryKey, now);
    served["liar.test /_matrix/key/v2/query"] = () => ({ server_keys: [downResponse] }); // not vouched for
    now += 11_000;
    const s = store(["liar.test"]);
    expect(await s.verifyKey("down.test", "ed25519:other")).toBeUndefined();
  });

  it("answers for its own name with its own key, without fetching", async () => {
    hits = [];
    expect(await store().verifyKey("us.test", "ed25519:us")).toEqual(ourKey.publicKey);
    expect(hits).toEqual([]);
  });
});

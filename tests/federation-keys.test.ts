// Two Parley servers: keys, notary answers and signed requests between them.
// https://spec.matrix.org/latest/server-server-api/#retrieving-server-keys
// https://spec.matrix.org/latest/server-server-api/#request-authentication
import { randomBytes } from "node:crypto";
import { createServer } from "node:http";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { encodeUnpaddedBase64 } from "../federation/protocol/base64.ts";
import { verifyJsonSignature } from "../federation/protocol/signing.ts";
import { xMatrixAuthorization } from "../federation/transport/request-auth.ts";
import { signJson, signingKeyFromSeed } from "../federation/protocol/signing.ts";
import { type Network, startNetwork } from "./federation-harness.ts";
import { freePort } from "./free-port.ts";
import { request, startTestServer } from "./harness.ts";

describe("federation between two Parley servers", () => {
  let net: Network;
  beforeAll(async () => {
    net = await startNetwork(2);
  });
  afterAll(() => net?.destroy());

  it("each fetches and verifies the other's signing key", async () => {
    const [a, b] = net.servers as [NonNullable<Network["servers"][0]>, NonNullable<Network["servers"][0]>];
    expect(await a.services.federation.keys.verifyKey("hs2.test", b.services.signingKey.keyId)).toEqual(b.services.signingKey.publicKey);
    expect(await b.services.federation.keys.verifyKey("hs1.test", a.services.signingKey.keyId)).toEqual(a.services.signingKey.publicKey);
  });

  it("answers notary queries with the other server's key, signed by both", async () => {
    const [a, b] = net.servers as [NonNullable<Network["servers"][0]>, NonNullable<Network["servers"][0]>];
    const res = await request(b.url, "POST", "/_matrix/key/v2/query", { body: { server_keys: { "hs1.test": {} } } });
    expect(res.status).toBe(200);
    const [answer] = res.json.server_keys;
    expect(answer.server_name).toBe("hs1.test");
    expect(answer.verify_keys[a.services.signingKey.keyId].key).toBeDefined();
    expect(verifyJsonSignature(answer, "hs1.test", a.services.signingKey.keyId, a.services.signingKey.publicKey)).toBe(true);
    expect(verifyJsonSignature(answer, "hs2.test", b.services.signingKey.keyId, b.services.signingKey.publicKey)).toBe(true);
    const one = await request(b.url, "GET", "/_matrix/key/v2/query/hs2.test");
    expect(one.json.server_keys[0].server_name).toBe("hs2.test");
  });

  it("serves a signed profile query and refuses forged ones with 401", async () => {
    const [a, b] = net.servers as [NonNullable<Network["servers"][0]>, NonNullable<Network["servers"][0]>];
    const reg = await request(b.url, "POST", "/_matrix/client/v3/register", {
      body: { username: "bob", password: "a long password", auth: { type: "m.login.dummy" } },
    });
    await request(b.url, "PUT", "/_matrix/client/v3/profile/@bob:hs2.test/displayname", { token: reg.json.access_token, body: { displayname: "Bob" } });
    const path = "/_matrix/federation/v1/query/profile?user_id=%40bob%3Ahs2.test";
    const ok = await a.services.federation.http.request("hs2.test", { method: "GET", path });
    expect(ok).toMatchObject({ status: 200, body: { displayname: "Bob" } });

    const sign = (key = a.services.signingKey, destination = "hs2.test", uri = path) =>
      xMatrixAuthorization({ method: "GET", uri, origin: "hs1.test", destination }, key);
    const forged = signingKeyFromSeed(new Uint8Array(32).fill(99), a.services.signingKey.keyId);
    const cases: Record<string, string | undefined> = {
      missing: undefined,
      "wrong signature": sign(forged),
      "unknown key": sign({ ...a.services.signingKey, keyId: "ed25519:nope" }),
      "wrong destination": sign(a.services.signingKey, "hs3.test"),
      "another path": sign(a.services.signingKey, "hs2.test", "/_matrix/federation/v1/query/profile?user_id=%40eve%3Ahs2.test"),
      "signed by another server": xMatrixAuthorization({ method: "GET", uri: path, origin: "hs2.test", destination: "hs2.test" }, b.services.signingKey).replace('origin="hs2.test"', 'origin="hs1.test"'),
    };
    for (const [what, authorization] of Object.entries(cases)) {
      const res = await request(b.url, "GET", path, authorization ? { headers: { Authorization: authorization } } : {});
      expect(res.status, what).toBe(401);
      expect(res.json.errcode, what).toBe("M_UNAUTHORIZED");
    }
  });
});

// A notary asked for a particular key fetches it when it holds none, and keeps answering a key
// the origin server has since forgotten (as sytest's "Key notary server must not overwrite a valid
// key with a spurious result from the origin server").
describe("a notary and an origin server that changes its key", () => {
  it("fetches a key ID it lacks, and keeps the old key's response after the origin forgot it", async () => {
    const dayAgo = Date.now() - 86_400_000;
    let current = signingKeyFromSeed(randomBytes(32), "ed25519:key_0");
    let validUntil = Date.now() + 3_600_000;
    let fetches = 0;
    const origin = createServer((req, res) => {
      fetches++;
      const body = signJson(
        { server_name: "origin.test", valid_until_ts: validUntil, verify_keys: { [current.keyId]: { key: encodeUnpaddedBase64(current.publicKey) } }, old_verify_keys: {} },
        "origin.test",
        current,
      );
      res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify(body));
    });
    const port = await freePort();
    await new Promise<void>((r) => origin.listen(port, "127.0.0.1", r));
    const notary = await startTestServer({ config: { federation_hosts: `origin.test=127.0.0.1:${port}`, federation_insecure: "origin.test" } });
    try {
      const ask = (keyId: string, min?: number) =>
        request(notary.url, "POST", "/_matrix/key/v2/query", { body: { server_keys: { "origin.test": { [keyId]: min === undefined ? {} : { minimum_valid_until_ts: min } } } } });
      // The notary learns key_0 first.
      expect((await request(notary.url, "POST", "/_matrix/key/v2/query", { body: { server_keys: { "origin.test": {} } } })).json.server_keys[0].verify_keys["ed25519:key_0"]).toBeDefined();
      // Asked for key_1, which it does not hold, it fetches again (the origin now has key_1, expired a day ago).
      current = signingKeyFromSeed(randomBytes(32), "ed25519:key_1");
      validUntil = dayAgo;
      const first = await ask("ed25519:key_1");
      expect(first.status).toBe(200);
      expect(Object.keys(first.json.server_keys[0].verify_keys)).toEqual(["ed25519:key_1"]);
      // Asked for a key_1 valid until now, it fetches again; the origin has forgotten key_1.
      current = signingKeyFromSeed(randomBytes(32), "ed25519:key_2");
      validUntil = dayAgo + 1000;
      const before = fetches;
      await ask("ed25519:key_1", Date.now());
      expect(fetches).toBe(before + 1);
      // Asked for key_1 as valid as it was, the notary still answers it from the first response.
      const again = await ask("ed25519:key_1", dayAgo);
      expect(again.json.server_keys).toHaveLength(1);
      expect(Object.keys(again.json.server_keys[0].verify_keys)).toEqual(["ed25519:key_1"]);
      expect(fetches).toBe(before + 1);
    } finally {
      await notary.destroy();
      origin.close();
    }
  });
});

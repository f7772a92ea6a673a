// Two Parley servers: keys, notary answers and signed requests between them.
// https://spec.matrix.org/latest/server-server-api/#retrieving-server-keys
// https://spec.matrix.org/latest/server-server-api/#request-authentication
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { verifyJsonSignature } from "../federation/protocol/signing.ts";
import { xMatrixAuthorization } from "../federation/transport/request-auth.ts";
import { signingKeyFromSeed } from "../federation/protocol/signing.ts";
import { type Network, startNetwork } from "./federation-harness.ts";
import { request } from "./harness.ts";

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

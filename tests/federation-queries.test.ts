// Two Parley servers: a client of one reads profiles and resolves aliases of the other.
// https://spec.matrix.org/latest/server-server-api/#querying-for-information
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { OpenIdTokens } from "../server/accounts/openid.ts";
import { registerUser, type TestUser } from "./accounts-helpers.ts";
import { type Network, startNetwork } from "./federation-harness.ts";
import { request } from "./harness.ts";
import { createRoom } from "./sync-helpers.ts";

describe("remote queries between two Parley servers", () => {
  let net: Network;
  let a: Network["servers"][0];
  let b: Network["servers"][0];
  let alice: TestUser;
  let bob: TestUser;
  beforeAll(async () => {
    net = await startNetwork(2);
    [a, b] = net.servers as [Network["servers"][0], Network["servers"][0]];
    [alice, bob] = await Promise.all([registerUser(a!.url, "alice"), registerUser(b!.url, "bob")]);
    await request(b!.url, "PUT", `/_matrix/client/v3/profile/${bob.userId}/displayname`, { token: bob.accessToken, body: { displayname: "Bob B" } });
  });
  afterAll(() => net?.destroy());

  it("reads the profile of a user on the other server through its own server", async () => {
    const profile = await request(a!.url, "GET", "/_matrix/client/v3/profile/@bob:hs2.test");
    expect(profile).toMatchObject({ status: 200, json: { displayname: "Bob B" } });
    const name = await request(a!.url, "GET", "/_matrix/client/v3/profile/@bob:hs2.test/displayname", { token: alice.accessToken });
    expect(name).toMatchObject({ status: 200, json: { displayname: "Bob B" } });
    const avatar = await request(a!.url, "GET", "/_matrix/client/v3/profile/@bob:hs2.test/avatar_url");
    expect(avatar).toMatchObject({ status: 404, json: { errcode: "M_NOT_FOUND" } });
  });

  it("answers a query for a field the user has not set with an empty profile, not a 404", async () => {
    const path = (user: string, field: string) => `/_matrix/federation/v1/query/profile?user_id=${encodeURIComponent(user)}&field=${field}`;
    const unset = await a!.services.federation.http.request("hs2.test", { method: "GET", path: path(bob.userId, "avatar_url") });
    expect(unset).toMatchObject({ status: 200, body: {} });
    const set = await a!.services.federation.http.request("hs2.test", { method: "GET", path: path(bob.userId, "displayname") });
    expect(set).toMatchObject({ status: 200, body: { displayname: "Bob B" } });
    const nobody = await a!.services.federation.http.request("hs2.test", { method: "GET", path: path("@nobody:hs2.test", "displayname") });
    expect(nobody.status).toBe(404);
  });

  it("answers 404 when the other server knows no such user, and 502 when it cannot be reached", async () => {
    const missing = await request(a!.url, "GET", "/_matrix/client/v3/profile/@nobody:hs2.test");
    expect(missing).toMatchObject({ status: 404, json: { errcode: "M_NOT_FOUND" } });
    // An address federation may not reach (loopback, not pinned) is as good as a dead server.
    const unreachable = await request(a!.url, "GET", "/_matrix/client/v3/profile/@carol:127.0.0.1:9");
    expect(unreachable.status).toBe(502);
    expect(unreachable.json.errcode).toBe("M_UNKNOWN");
  });

  it("resolves an alias of the other server, and 404s an unknown one", async () => {
    const roomId = await createRoom(b!.url, bob, { room_alias_name: "lounge" });
    const resolved = await request(a!.url, "GET", `/_matrix/client/v3/directory/room/${encodeURIComponent("#lounge:hs2.test")}`);
    expect(resolved).toMatchObject({ status: 200, json: { room_id: roomId, servers: ["hs2.test"] } });
    const unknown = await request(a!.url, "GET", `/_matrix/client/v3/directory/room/${encodeURIComponent("#nowhere:hs2.test")}`);
    expect(unknown).toMatchObject({ status: 404, json: { errcode: "M_NOT_FOUND" } });
  });

  it("serves /query/directory only for its own aliases", async () => {
    const other = await a!.services.federation.http.request("hs2.test", {
      method: "GET",
      path: `/_matrix/federation/v1/query/directory?room_alias=${encodeURIComponent("#x:hs1.test")}`,
    });
    expect(other.status).toBe(400);
    const unsigned = await request(b!.url, "GET", `/_matrix/federation/v1/query/directory?room_alias=${encodeURIComponent("#lounge:hs2.test")}`);
    expect(unsigned.status).toBe(401);
  });

  it("answers notary queries that name a key ID (the deprecated form sytest and older servers use)", async () => {
    const keyId = b!.services.signingKey.keyId;
    const res = await request(a!.url, "GET", `/_matrix/key/v2/query/hs2.test/${encodeURIComponent(keyId)}`);
    expect(res.status).toBe(200);
    expect(res.json.server_keys[0].verify_keys[keyId]).toBeDefined();
  });

  it("refuses userinfo without a token with 401", async () => {
    const res = await request(a!.url, "GET", "/_matrix/federation/v1/openid/userinfo");
    expect(res).toMatchObject({ status: 401, json: { errcode: "M_UNKNOWN_TOKEN" } });
  });

  it("proves a user's identity to another server with an OpenID token", async () => {
    const issued = await request(a!.url, "POST", `/_matrix/client/v3/user/${alice.userId}/openid/request_token`, { token: alice.accessToken, body: {} });
    expect(issued).toMatchObject({ status: 200, json: { token_type: "Bearer", matrix_server_name: "hs1.test", expires_in: 3600 } });
    expect(await b!.services.federation.queries.openIdUser("hs1.test", issued.json.access_token)).toBe(alice.userId);
    // Good for nothing else: not an access token.
    const whoami = await request(a!.url, "GET", "/_matrix/client/v3/account/whoami", { token: issued.json.access_token });
    expect(whoami.status).toBe(401);
    expect(await b!.services.federation.queries.openIdUser("hs1.test", "not-a-token")).toBeUndefined();
    const unknown = await request(a!.url, "GET", "/_matrix/federation/v1/openid/userinfo?access_token=not-a-token");
    expect(unknown).toMatchObject({ status: 401, json: { errcode: "M_UNKNOWN_TOKEN" } });
    const forOther = await request(a!.url, "POST", `/_matrix/client/v3/user/${bob.userId}/openid/request_token`, { token: alice.accessToken, body: {} });
    expect(forOther.status).toBe(403);
  });

  it("expires OpenID tokens after an hour", async () => {
    const { accessToken } = await a!.services.openId.issue(alice.userId);
    expect(await a!.services.openId.userOf(accessToken)).toBe(alice.userId);
    const later = Date.now() + 3600_000 + 1_000;
    expect(await new OpenIdTokens(a!.services.db, () => later).userOf(accessToken)).toBeUndefined();
  });
});

// Binding third-party identifiers through the homeserver: `/account/3pid/bind` asks the identity
// server (a mock, tests/identity-server-mock.ts) to bind; `/account/3pid/unbind`, `/delete` and
// deactivation unbind with a request the homeserver signs (X-Matrix), from the identity server named
// or the one recorded.
// https://spec.matrix.org/latest/client-server-api/#adding-account-administrative-contact-information
// https://spec.matrix.org/latest/identity-service-api/#post_matrixidentityv23pidunbind
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { decodeBase64 } from "../federation/protocol/base64.ts";
import { parseXMatrixAuthorization, verifyXMatrixRequest } from "../federation/transport/request-auth.ts";
import { type TestUser, passwordAuth, registerUser } from "./accounts-helpers.ts";
import { type TestServer, request, startTestServer } from "./harness.ts";
import { ACCESS_TOKEN, MockIdentityServer } from "./identity-server-mock.ts";
import { opensslMissing } from "./self-signed.ts";

const missing = await opensslMissing();
let hs: TestServer;
let ids: MockIdentityServer;
let dir: string;
let n = 0;
let user: TestUser;

const post = (p: string, body: unknown, who = user) => request(hs.url, "POST", p, { token: who.accessToken, body });

async function bind(address: string, prefix = "/_matrix/client/v3") {
  const secret = `secret-${n}`;
  const sid = ids.validate("email", address, secret);
  const res = await post(`${prefix}/account/3pid/bind`, { id_server: ids.name, id_access_token: ACCESS_TOKEN, sid, client_secret: secret });
  expect(res.status, JSON.stringify(res.json)).toBe(200);
  expect(ids.boundTo(address)).toBe(user.userId);
}

describe.skipIf(missing)("binding 3pids through the homeserver", () => {
  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), "parley-idbind-"));
    ids = await MockIdentityServer.start(dir);
    hs = await startTestServer({ config: { identity_servers_insecure: [ids.name] } });
  });
  afterAll(async () => {
    await hs?.destroy();
    await ids?.close();
    await rm(dir, { recursive: true, force: true });
  });
  beforeEach(async () => {
    ids.unbindStatus = undefined;
    user = await registerUser(hs.url, `binder${n++}`);
  });

  it("binds with the identity-server token, then /delete unbinds with a request signed by the homeserver", async () => {
    const address = `a${n}@example.org`;
    await bind(address, "/_matrix/client/unstable");
    const bindCall = ids.requests.findLast((r) => r.path === "/_matrix/identity/v2/3pid/bind")!;
    expect(bindCall.auth).toBe(`Bearer ${ACCESS_TOKEN}`);
    expect(bindCall.body).toMatchObject({ mxid: user.userId });

    const res = await post("/_matrix/client/v3/account/3pid/delete", { medium: "email", address });
    expect(res.status, JSON.stringify(res.json)).toBe(200);
    expect(res.json).toEqual({ id_server_unbind_result: "success" });
    expect(ids.boundTo(address)).toBeUndefined();

    // The unbind is signed by the homeserver's key, addressed to the identity server.
    const unbind = ids.requests.findLast((r) => r.path === "/_matrix/identity/v2/3pid/unbind")!;
    expect(unbind.body).toEqual({ mxid: user.userId, threepid: { medium: "email", address } });
    const credentials = parseXMatrixAuthorization(unbind.auth!);
    expect(credentials.origin).toBe(hs.config.server_name);
    expect(credentials.destination).toBe(ids.name);
    const keys = await request(hs.url, "GET", "/_matrix/key/v2/server");
    const publicKey = decodeBase64(keys.json.verify_keys[credentials.key].key);
    const parts = { method: "POST", uri: "/_matrix/identity/v2/3pid/unbind", destination: ids.name, content: unbind.body };
    expect(verifyXMatrixRequest(credentials, parts, publicKey)).toBe(true);
    expect(verifyXMatrixRequest(credentials, { ...parts, content: { ...unbind.body, mxid: "@other:x" } }, publicKey)).toBe(false);

    // Nothing recorded any more: no identity server to ask.
    const again = await post("/_matrix/client/v3/account/3pid/unbind", { medium: "email", address });
    expect(again.json).toEqual({ id_server_unbind_result: "no-support" });
  });

  it("/unbind without id_server uses the identity server the 3pid was bound through", async () => {
    const address = `b${n}@example.org`;
    await bind(address);
    const before = ids.requests.length;
    const res = await post("/_matrix/client/unstable/account/3pid/unbind", { medium: "email", address });
    expect(res.json).toEqual({ id_server_unbind_result: "success" });
    expect(ids.boundTo(address)).toBeUndefined();
    expect(ids.requests.slice(before).filter((r) => r.path === "/_matrix/identity/v2/3pid/unbind")).toHaveLength(1);
  });

  it("/delete with id_server unbinds a 3pid bound out of band; a refusal is no-support", async () => {
    const address = `c${n}@example.org`;
    await ids.bind(address, user.userId);
    const res = await post("/_matrix/client/v3/account/3pid/delete", { medium: "email", address, id_server: ids.name });
    expect(res.json).toEqual({ id_server_unbind_result: "success" });
    expect(ids.boundTo(address)).toBeUndefined();

    // The identity server knows no such binding (404): it does not support the request.
    const missingOne = await post("/_matrix/client/v3/account/3pid/unbind", { medium: "email", address, id_server: ids.name });
    expect(missingOne.status).toBe(200);
    expect(missingOne.json).toEqual({ id_server_unbind_result: "no-support" });
  });

  it("deactivation unbinds every 3pid the user bound", async () => {
    const [a1, a2] = [`d${n}@example.org`, `e${n}@example.org`];
    await bind(a1);
    await bind(a2);
    const first = await post("/_matrix/client/v3/account/deactivate", {});
    expect(first.status).toBe(401);
    const res = await post("/_matrix/client/v3/account/deactivate", { auth: passwordAuth(user, first.json.session) });
    expect(res.status, JSON.stringify(res.json)).toBe(200);
    expect(res.json).toEqual({ id_server_unbind_result: "success" });
    expect(ids.boundTo(a1)).toBeUndefined();
    expect(ids.boundTo(a2)).toBeUndefined();
  });

  it("deactivation answers no-support when the identity server refuses, and still deactivates", async () => {
    const address = `f${n}@example.org`;
    await bind(address);
    ids.unbindStatus = 501;
    const first = await post("/_matrix/client/v3/account/deactivate", {});
    const res = await post("/_matrix/client/v3/account/deactivate", { auth: passwordAuth(user, first.json.session) });
    expect(res.status).toBe(200);
    expect(res.json).toEqual({ id_server_unbind_result: "no-support" });
    const whoami = await request(hs.url, "GET", "/_matrix/client/v3/account/whoami", { token: user.accessToken });
    expect(whoami.status).toBe(401);
  });

  it("passes the identity server's refusal of a bind on, and records nothing", async () => {
    const res = await post("/_matrix/client/v3/account/3pid/bind", { id_server: ids.name, id_access_token: ACCESS_TOKEN, sid: "nope", client_secret: "x" });
    expect(res.status).toBe(404);
    expect(res.json.errcode).toBe("M_NO_VALID_SESSION");
    const unbind = await post("/_matrix/client/v3/account/3pid/unbind", { medium: "email", address: "nobody@example.org" });
    expect(unbind.json).toEqual({ id_server_unbind_result: "no-support" });
  });

  it("validates bodies: missing fields and a bad id_server are 400s, not 500s", async () => {
    const missingSid = await post("/_matrix/client/v3/account/3pid/bind", { id_server: ids.name, id_access_token: ACCESS_TOKEN, client_secret: "x" });
    expect(missingSid.status).toBe(400);
    expect(missingSid.json.errcode).toMatch(/^M_(BAD_JSON|MISSING_PARAM|INVALID_PARAM)$/);
    const badServer = await post("/_matrix/client/v3/account/3pid/unbind", { medium: "email", address: "x@example.org", id_server: "not a host/" });
    expect(badServer.status).toBe(400);
    expect((await post("/_matrix/client/v3/account/3pid/delete", { medium: 5, address: "x" })).status).toBe(400);
    const list = await request(hs.url, "GET", "/_matrix/client/v3/account/3pid", { token: user.accessToken });
    expect(list.json).toEqual({ threepids: [] });
  });
});

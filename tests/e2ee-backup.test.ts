// Server-side key backups over HTTP: versions, storing keys with the spec's "keep the better key"
// rule, etags and counts, and the wrong-version error.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { registerUser, type TestUser } from "./accounts-helpers.ts";
import { request, startTestServer, type TestServer } from "./harness.ts";

let hs: TestServer;
beforeAll(async () => {
  hs = await startTestServer();
});
afterAll(() => hs.destroy());

let n = 0;
const newUser = () => registerUser(hs.url, `backup${++n}`);
const ALGORITHM = "m.megolm_backup.v1.curve25519-aes-sha2";
const call = (user: TestUser, method: string, path: string, body?: unknown) =>
  request(hs.url, method, `/_matrix/client/v3/room_keys${path}`, { token: user.accessToken, body });
const ROOM = "!room:test.local";
const room = encodeURIComponent(ROOM);

function keyData(firstMessageIndex: number, forwardedCount: number, isVerified: boolean, tag: string) {
  return {
    first_message_index: firstMessageIndex,
    forwarded_count: forwardedCount,
    is_verified: isVerified,
    session_data: { ephemeral: "e", ciphertext: tag, mac: "m" },
  };
}

describe("backup versions", () => {
  it("answers 404 M_NOT_FOUND until a backup exists, then creates increasing versions", async () => {
    const alice = await newUser();
    const none = await call(alice, "GET", "/version");
    expect(none.status).toBe(404);
    expect(none.json.errcode).toBe("M_NOT_FOUND");

    const created = await call(alice, "POST", "/version", { algorithm: ALGORITHM, auth_data: { public_key: "abc" } });
    expect(created.status).toBe(200);
    expect(created.json).toEqual({ version: "1" });
    const current = await call(alice, "GET", "/version");
    expect(current.json).toEqual({ algorithm: ALGORITHM, auth_data: { public_key: "abc" }, count: 0, etag: "0", version: "1" });
    expect((await call(alice, "GET", "/version/1")).json.version).toBe("1");
    expect((await call(alice, "GET", "/version/7")).status).toBe(404);
    expect((await call(alice, "GET", "/version/banana")).status).toBe(404);

    expect((await call(alice, "POST", "/version", { algorithm: ALGORITHM, auth_data: { public_key: "def" } })).json.version).toBe("2");
    expect((await call(alice, "GET", "/version")).json.version).toBe("2");

    // Another user's backups are their own.
    const bob = await newUser();
    expect((await call(bob, "GET", "/version")).status).toBe(404);
  });

  it("replaces auth_data but not the algorithm, and checks the version in the body", async () => {
    const alice = await newUser();
    await call(alice, "POST", "/version", { algorithm: ALGORITHM, auth_data: { public_key: "abc" } });
    const ok = await call(alice, "PUT", "/version/1", { algorithm: ALGORITHM, auth_data: { public_key: "abc", signatures: {} } });
    expect(ok.status).toBe(200);
    expect((await call(alice, "GET", "/version/1")).json.auth_data).toEqual({ public_key: "abc", signatures: {} });

    const otherAlgorithm = await call(alice, "PUT", "/version/1", { algorithm: "org.example.other", auth_data: {} });
    expect(otherAlgorithm.status).toBe(400);
    expect(otherAlgorithm.json.errcode).toBe("M_INVALID_PARAM");
    const otherVersion = await call(alice, "PUT", "/version/1", { algorithm: ALGORITHM, auth_data: {}, version: "2" });
    expect(otherVersion.status).toBe(400);
    expect((await call(alice, "PUT", "/version/9", { algorithm: ALGORITHM, auth_data: {} })).status).toBe(404);
  });

  it("keeps auth_data of any JSON type as given (opaque), but requires it", async () => {
    const alice = await newUser();
    const created = await call(alice, "POST", "/version", { algorithm: ALGORITHM, auth_data: "anopaquestring" });
    expect(created.status).toBe(200);
    expect((await call(alice, "GET", "/version")).json.auth_data).toBe("anopaquestring");
    await call(alice, "PUT", `/version/${created.json.version}`, { algorithm: ALGORITHM, auth_data: ["a", { b: 1 }] });
    expect((await call(alice, "GET", "/version")).json.auth_data).toEqual(["a", { b: 1 }]);
    expect((await call(alice, "POST", "/version", { algorithm: ALGORITHM })).status).toBe(400);
    expect((await call(alice, "POST", "/version", { algorithm: ALGORITHM, auth_data: null })).status).toBe(400);
  });

  it("deletes a version with its keys; deleting again succeeds; numbers are never reused", async () => {
    const alice = await newUser();
    await call(alice, "POST", "/version", { algorithm: ALGORITHM, auth_data: {} });
    await call(alice, "POST", "/version", { algorithm: ALGORITHM, auth_data: {} });
    await call(alice, "PUT", `/keys/${room}/s1?version=2`, keyData(0, 0, true, "a"));

    expect((await call(alice, "DELETE", "/version/2")).status).toBe(200);
    expect((await call(alice, "DELETE", "/version/2")).status).toBe(200);
    expect((await call(alice, "DELETE", "/version/5")).status).toBe(404);
    expect((await call(alice, "GET", "/version/2")).status).toBe(404);
    expect((await call(alice, "GET", "/keys?version=2")).status).toBe(404);
    // The latest remaining version is current again; a new one gets a fresh number.
    expect((await call(alice, "GET", "/version")).json.version).toBe("1");
    expect((await call(alice, "POST", "/version", { algorithm: ALGORITHM, auth_data: {} })).json.version).toBe("3");
  });
});

describe("backed-up keys", () => {
  it("stores keys in the current version only, with 403 M_WRONG_ROOM_KEYS_VERSION otherwise", async () => {
    const alice = await newUser();
    expect((await call(alice, "PUT", `/keys/${room}/s1?version=1`, keyData(0, 0, true, "a"))).status).toBe(404);
    await call(alice, "POST", "/version", { algorithm: ALGORITHM, auth_data: {} });
    await call(alice, "POST", "/version", { algorithm: ALGORITHM, auth_data: {} });
    const wrong = await call(alice, "PUT", `/keys/${room}/s1?version=1`, keyData(0, 0, true, "a"));
    expect(wrong.status).toBe(403);
    expect(wrong.json).toMatchObject({ errcode: "M_WRONG_ROOM_KEYS_VERSION", current_version: "2" });
    const missing = await call(alice, "PUT", `/keys/${room}/s1`, keyData(0, 0, true, "a"));
    expect(missing.status).toBe(400);
    expect(missing.json.errcode).toBe("M_MISSING_PARAM");
  });

  it("stores and reads keys at every level, with counts and an etag that changes with the keys", async () => {
    const alice = await newUser();
    await call(alice, "POST", "/version", { algorithm: ALGORITHM, auth_data: {} });
    const one = await call(alice, "PUT", `/keys/${room}/s1?version=1`, keyData(0, 0, false, "s1"));
    expect(one.status).toBe(200);
    expect(one.json.count).toBe(1);
    const many = await call(alice, "PUT", "/keys?version=1", {
      rooms: {
        [ROOM]: { sessions: { s2: keyData(0, 0, false, "s2") } },
        "!other:test.local": { sessions: { s3: keyData(0, 0, false, "s3") } },
      },
    });
    expect(many.json.count).toBe(3);
    expect(many.json.etag).not.toBe(one.json.etag);
    const byRoom = await call(alice, "PUT", `/keys/${room}?version=1`, { sessions: { s4: keyData(0, 0, false, "s4") } });
    expect(byRoom.json.count).toBe(4);

    const all = await call(alice, "GET", "/keys?version=1");
    expect(Object.keys(all.json.rooms).sort()).toEqual(["!other:test.local", ROOM]);
    expect(Object.keys(all.json.rooms[ROOM].sessions).sort()).toEqual(["s1", "s2", "s4"]);
    expect((await call(alice, "GET", `/keys/${room}/s2?version=1`)).json).toEqual(keyData(0, 0, false, "s2"));
    expect((await call(alice, "GET", `/keys/${room}/nope?version=1`)).status).toBe(404);
    expect((await call(alice, "GET", `/keys/${encodeURIComponent("!empty:test.local")}?version=1`)).json).toEqual({
      sessions: {},
    });
    const info = await call(alice, "GET", "/version");
    expect(info.json.count).toBe(4);
    expect(info.json.etag).toBe(byRoom.json.etag);

    const delOne = await call(alice, "DELETE", `/keys/${room}/s1?version=1`);
    expect(delOne.json.count).toBe(3);
    expect(delOne.json.etag).not.toBe(byRoom.json.etag);
    const delRoom = await call(alice, "DELETE", `/keys/${room}?version=1`);
    expect(delRoom.json.count).toBe(1);
    const delAll = await call(alice, "DELETE", "/keys?version=1");
    expect(delAll.json.count).toBe(0);
    expect((await call(alice, "GET", "/keys?version=1")).json).toEqual({ rooms: {} });
    // Nothing to delete: the etag stays.
    const again = await call(alice, "DELETE", "/keys?version=1");
    expect(again.json.etag).toBe(delAll.json.etag);
  });

  it("keeps the better key: verified, then lower first_message_index, then lower forwarded_count", async () => {
    const alice = await newUser();
    await call(alice, "POST", "/version", { algorithm: ALGORITHM, auth_data: {} });
    const put = (data: ReturnType<typeof keyData>) => call(alice, "PUT", `/keys/${room}/s?version=1`, data);
    const stored = async () => (await call(alice, "GET", `/keys/${room}/s?version=1`)).json.session_data.ciphertext;

    const first = await put(keyData(5, 2, false, "unverified"));
    expect(await stored()).toBe("unverified");
    await put(keyData(10, 9, true, "verified")); // verified beats unverified, even with worse indexes
    expect(await stored()).toBe("verified");
    const unchanged = await put(keyData(0, 0, false, "unverified again")); // unverified never beats verified
    expect(await stored()).toBe("verified");
    await put(keyData(3, 9, true, "lower index"));
    expect(await stored()).toBe("lower index");
    await put(keyData(3, 1, true, "fewer forwards"));
    expect(await stored()).toBe("fewer forwards");
    const tie = await put(keyData(3, 1, true, "tie"));
    expect(await stored()).toBe("fewer forwards");
    expect(tie.json.etag).toBe((await call(alice, "GET", "/version")).json.etag);
    expect(unchanged.json.count).toBe(1);
    expect(first.json.count).toBe(1);
  });
});

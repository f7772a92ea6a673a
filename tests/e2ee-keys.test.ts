// Device keys over HTTP: /keys/upload, /keys/query, /keys/claim, /keys/changes, and what deleting a
// device does to its keys.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { verifyJsonSignature } from "../federation/protocol/signing.ts";
import { loginUser, passwordAuth, registerUser, type TestUser } from "./accounts-helpers.ts";
import { deviceIdentity, fallbackKey, type Json, oneTimeKeys, post, sign } from "./e2ee-helpers.ts";
import { request, startTestServer, type TestServer } from "./harness.ts";
import { createRoom, joinRoom } from "./sync-helpers.ts";

let hs: TestServer;
beforeAll(async () => {
  hs = await startTestServer();
});
afterAll(() => hs.destroy());

let n = 0;
const newUser = () => registerUser(hs.url, `keys${++n}`);

describe("/keys/upload", () => {
  it("stores device keys and answers one-time key counts with signed_curve25519 always present", async () => {
    const alice = await newUser();
    const device = deviceIdentity(alice);
    const res = await post(hs.url, alice, "/keys/upload", { device_keys: device.deviceKeys });
    expect(res.status, res.text).toBe(200);
    expect(res.json).toEqual({ one_time_key_counts: { signed_curve25519: 0 } });

    const query = await post(hs.url, alice, "/keys/query", { device_keys: { [alice.userId]: [] } });
    expect(query.status).toBe(200);
    expect(query.json.device_keys[alice.userId][alice.deviceId]).toEqual({ ...device.deviceKeys, unsigned: {} });
    expect(query.json.failures).toEqual({});
  });

  it("refuses device keys for another device; their self-signature is for clients to check", async () => {
    const alice = await newUser();
    const device = deviceIdentity(alice);
    const otherDevice = await post(hs.url, alice, "/keys/upload", {
      device_keys: sign({ ...device.deviceKeys, device_id: "SOMEONEELSE", signatures: undefined }, alice.userId, device.key),
    });
    expect(otherDevice.status).toBe(400);
    expect(otherDevice.json.errcode).toBe("M_INVALID_PARAM");

    // Stored as given (the spec asks no server to verify it, Synapse does not, and sytest uploads
    // placeholder signatures); a client that queries the keys finds the signature does not verify.
    const tampered = { ...device.deviceKeys, algorithms: ["m.megolm.v1.aes-sha2"] };
    expect((await post(hs.url, alice, "/keys/upload", { device_keys: tampered })).status).toBe(200);
    const query = await post(hs.url, alice, "/keys/query", { device_keys: { [alice.userId]: [alice.deviceId] } });
    const served = query.json.device_keys[alice.userId][alice.deviceId];
    expect(served.algorithms).toEqual(["m.megolm.v1.aes-sha2"]);
    expect(verifyJsonSignature(served, alice.userId, `ed25519:${alice.deviceId}`, device.key.publicKey)).toBe(false);
  });

  it("takes device keys without algorithms, keys or signatures (the upload names no error for them), but not of the wrong type", async () => {
    const alice = await newUser();
    const bare = { user_id: alice.userId, device_id: alice.deviceId };
    expect((await post(hs.url, alice, "/keys/upload", { device_keys: bare })).status).toBe(200);
    // A placeholder may be replaced, by another or by real keys.
    expect((await post(hs.url, alice, "/keys/upload", { device_keys: { ...bare, updated: "keys" } })).status).toBe(200);
    const query = await post(hs.url, alice, "/keys/query", { device_keys: { [alice.userId]: [] } });
    expect(query.json.device_keys[alice.userId][alice.deviceId]).toEqual({ ...bare, updated: "keys", unsigned: {} });
    const device = deviceIdentity(alice);
    expect((await post(hs.url, alice, "/keys/upload", { device_keys: device.deviceKeys })).status).toBe(200);

    for (const wrong of [{ algorithms: "m.megolm.v1.aes-sha2" }, { keys: { "curve25519:X": 5 } }, { signatures: [] }]) {
      const res = await post(hs.url, alice, "/keys/upload", { device_keys: { ...bare, ...wrong } });
      expect(res.status, JSON.stringify(wrong)).toBe(400);
      expect(res.json.errcode).toBe("M_BAD_JSON");
    }
  });

  it("keeps a device's identity keys: the same keys again are fine, different ones are refused", async () => {
    const alice = await newUser();
    const device = deviceIdentity(alice);
    expect((await post(hs.url, alice, "/keys/upload", { device_keys: device.deviceKeys })).status).toBe(200);
    expect((await post(hs.url, alice, "/keys/upload", { device_keys: device.deviceKeys })).status).toBe(200);

    const replacement = deviceIdentity(alice);
    const res = await post(hs.url, alice, "/keys/upload", { device_keys: replacement.deviceKeys });
    expect(res.status).toBe(400);
    expect(res.json.errcode).toBe("M_INVALID_PARAM");
    const query = await post(hs.url, alice, "/keys/query", { device_keys: { [alice.userId]: [alice.deviceId] } });
    expect(query.json.device_keys[alice.userId][alice.deviceId].keys).toEqual(device.deviceKeys.keys);
  });

  it("counts one-time keys; the same key again is fine, the same ID with other content is refused whole", async () => {
    const alice = await newUser();
    const device = deviceIdentity(alice);
    const keys = oneTimeKeys(alice, device, 5);
    const first = await post(hs.url, alice, "/keys/upload", { device_keys: device.deviceKeys, one_time_keys: keys });
    expect(first.json.one_time_key_counts).toEqual({ signed_curve25519: 5 });

    const again = await post(hs.url, alice, "/keys/upload", { one_time_keys: keys });
    expect(again.json.one_time_key_counts).toEqual({ signed_curve25519: 5 });

    const conflicting = { ...oneTimeKeys(alice, device, 2, "NEW"), ...oneTimeKeys(alice, device, 1) };
    const refused = await post(hs.url, alice, "/keys/upload", { one_time_keys: conflicting });
    expect(refused.status).toBe(400);
    expect(refused.json.errcode).toBe("M_INVALID_PARAM");
    expect(refused.json.error).toContain("signed_curve25519:AAAA0");
    // Nothing of the refused upload was stored, not even the new keys.
    const counts = await post(hs.url, alice, "/keys/upload", {});
    expect(counts.json.one_time_key_counts).toEqual({ signed_curve25519: 5 });

    const other = await post(hs.url, alice, "/keys/upload", { one_time_keys: { "curve25519:X1": "c29tZSBrZXkgYnl0ZXM" } });
    expect(other.json.one_time_key_counts).toEqual({ signed_curve25519: 5, curve25519: 1 });
  });

  it("refuses malformed key IDs", async () => {
    const alice = await newUser();
    const res = await post(hs.url, alice, "/keys/upload", { one_time_keys: { nocolon: "abc" } });
    expect(res.status).toBe(400);
  });
});

describe("/keys/claim", () => {
  it("hands each one-time key out exactly once to 20 parallel claims, then the fallback key", async () => {
    const alice = await newUser();
    const bob = await newUser();
    const device = deviceIdentity(alice);
    const otks = oneTimeKeys(alice, device, 10);
    const fallback = fallbackKey(alice, device);
    await post(hs.url, alice, "/keys/upload", { device_keys: device.deviceKeys, one_time_keys: otks, fallback_keys: fallback });
    expect(await hs.services.e2ee.deviceKeys.unusedFallbackKeyTypes(alice.userId, alice.deviceId)).toEqual([
      "signed_curve25519",
    ]);

    const claims = await Promise.all(
      Array.from({ length: 20 }, () =>
        post(hs.url, bob, "/keys/claim", { one_time_keys: { [alice.userId]: { [alice.deviceId]: "signed_curve25519" } } }),
      ),
    );
    const got: [string, Json][] = claims.map((c) => {
      expect(c.status).toBe(200);
      const keys = c.json.one_time_keys[alice.userId][alice.deviceId] as Json;
      expect(Object.keys(keys)).toHaveLength(1);
      return Object.entries(keys)[0] as [string, Json];
    });
    const oneTime = got.filter(([id]) => id !== "signed_curve25519:FB1");
    const fallbacks = got.filter(([id]) => id === "signed_curve25519:FB1");
    expect(oneTime).toHaveLength(10);
    expect(new Set(oneTime.map(([id]) => id)).size).toBe(10);
    for (const [id, key] of oneTime) expect(key).toEqual(otks[id]);
    expect(fallbacks).toHaveLength(10);
    for (const [, key] of fallbacks) expect(key).toEqual(fallback["signed_curve25519:FB1"]);

    const counts = await post(hs.url, alice, "/keys/upload", {});
    expect(counts.json.one_time_key_counts).toEqual({ signed_curve25519: 0 });
    expect(await hs.services.e2ee.deviceKeys.unusedFallbackKeyTypes(alice.userId, alice.deviceId)).toEqual([]);

    // A new fallback key replaces the used one and is unused; the same key again keeps its state.
    const next = fallbackKey(alice, device, "FB2");
    await post(hs.url, alice, "/keys/upload", { fallback_keys: next });
    expect(await hs.services.e2ee.deviceKeys.unusedFallbackKeyTypes(alice.userId, alice.deviceId)).toEqual([
      "signed_curve25519",
    ]);
    const claimed = await post(hs.url, bob, "/keys/claim", {
      one_time_keys: { [alice.userId]: { [alice.deviceId]: "signed_curve25519" } },
    });
    expect(claimed.json.one_time_keys[alice.userId][alice.deviceId]).toEqual(next);
    await post(hs.url, alice, "/keys/upload", { fallback_keys: next });
    expect(await hs.services.e2ee.deviceKeys.unusedFallbackKeyTypes(alice.userId, alice.deviceId)).toEqual([]);
  });

  it("leaves out devices without keys and reports other servers in failures", async () => {
    const alice = await newUser();
    const res = await post(hs.url, alice, "/keys/claim", {
      one_time_keys: {
        [alice.userId]: { [alice.deviceId]: "signed_curve25519", NOSUCHDEVICE: "signed_curve25519" },
        "@someone:elsewhere.example": { DEV: "signed_curve25519" },
      },
    });
    expect(res.status).toBe(200);
    expect(res.json.one_time_keys).toEqual({});
    expect(Object.keys(res.json.failures)).toEqual(["elsewhere.example"]);
  });
});

describe("/keys/query", () => {
  it("returns all devices or the listed ones, with display names, and leaves out unknown users", async () => {
    const alice = await newUser();
    const login = await loginUser(hs.url, alice.userId, alice.password, { initial_device_display_name: "Alice's laptop" });
    const laptop: TestUser = { ...alice, accessToken: login.json.access_token, deviceId: login.json.device_id };
    const phoneKeys = deviceIdentity(alice);
    const laptopKeys = deviceIdentity(laptop);
    await post(hs.url, alice, "/keys/upload", { device_keys: phoneKeys.deviceKeys });
    await post(hs.url, laptop, "/keys/upload", { device_keys: laptopKeys.deviceKeys });
    const bob = await newUser();

    const all = await post(hs.url, bob, "/keys/query", {
      device_keys: { [alice.userId]: [], "@nobody:test.local": [] },
    });
    expect(Object.keys(all.json.device_keys[alice.userId]).sort()).toEqual([alice.deviceId, laptop.deviceId].sort());
    expect(all.json.device_keys[alice.userId][laptop.deviceId].unsigned).toEqual({ device_display_name: "Alice's laptop" });
    expect(all.json.device_keys["@nobody:test.local"]).toEqual({});

    const one = await post(hs.url, bob, "/keys/query", { device_keys: { [alice.userId]: [laptop.deviceId, "NOPE"] } });
    expect(Object.keys(one.json.device_keys[alice.userId])).toEqual([laptop.deviceId]);

    const remote = await post(hs.url, bob, "/keys/query", { device_keys: { "@x:elsewhere.example": [] } });
    expect(remote.json.failures["elsewhere.example"]).toBeDefined();
  });
});

describe("/keys/changes and device deletion", () => {
  it("lists room-mates whose keys changed between two positions, and a deleted device takes its keys with it", async () => {
    const alice = await newUser();
    const login = await loginUser(hs.url, alice.userId, alice.password);
    const second: TestUser = { ...alice, accessToken: login.json.access_token, deviceId: login.json.device_id };
    const bob = await newUser();
    const stranger = await newUser();
    const e2ee = hs.services.e2ee;
    // /keys/changes tells only about users who share a room (tests/e2ee-sync.test.ts has the rest).
    const roomId = await createRoom(hs.url, alice, { preset: "public_chat" });
    await joinRoom(hs.url, bob, roomId);

    const before = await e2ee.deviceLists.currentPosition();
    const device = deviceIdentity(second);
    await post(hs.url, second, "/keys/upload", {
      device_keys: device.deviceKeys,
      one_time_keys: oneTimeKeys(second, device, 3),
      fallback_keys: fallbackKey(second, device),
    });
    const afterUpload = await e2ee.deviceLists.currentPosition();
    expect(afterUpload).toBeGreaterThan(before);

    const changes = await request(hs.url, "GET", `/_matrix/client/v3/keys/changes?from=${before}&to=${afterUpload}`, {
      token: bob.accessToken,
    });
    expect(changes.status).toBe(200);
    expect(changes.json).toEqual({ changed: [alice.userId], left: [] });
    const strangerSees = await request(hs.url, "GET", `/_matrix/client/v3/keys/changes?from=${before}&to=${afterUpload}`, {
      token: stranger.accessToken,
    });
    expect(strangerSees.json).toEqual({ changed: [], left: [] });
    const none = await request(hs.url, "GET", `/_matrix/client/v3/keys/changes?from=${afterUpload}&to=${afterUpload}`, {
      token: bob.accessToken,
    });
    expect(none.json.changed).toEqual([]);
    // Sync tokens work too: the device-list position is the seventh (server/sync/streams.ts).
    const syncTokens = await request(
      hs.url,
      "GET",
      `/_matrix/client/v3/keys/changes?from=s9_9_9_9_9_9_${before}&to=s0_0_0_0_0_0_${afterUpload}`,
      { token: bob.accessToken },
    );
    expect(syncTokens.json.changed).toEqual([alice.userId]);

    // Delete the device (password UIA): its keys go, and the device list changes.
    const first = await request(hs.url, "DELETE", `/_matrix/client/v3/devices/${second.deviceId}`, {
      token: alice.accessToken,
      body: {},
    });
    const deleted = await request(hs.url, "DELETE", `/_matrix/client/v3/devices/${second.deviceId}`, {
      token: alice.accessToken,
      body: { auth: passwordAuth(alice, first.json.session) },
    });
    expect(deleted.status).toBe(200);
    const afterDelete = await e2ee.deviceLists.currentPosition();
    expect(afterDelete).toBeGreaterThan(afterUpload);
    const changed = await e2ee.deviceLists.changedUsers(bob.userId, afterUpload, afterDelete);
    expect(changed).toEqual([alice.userId]);

    const query = await post(hs.url, bob, "/keys/query", { device_keys: { [alice.userId]: [] } });
    expect(query.json.device_keys[alice.userId]).toEqual({});
    const claim = await post(hs.url, bob, "/keys/claim", {
      one_time_keys: { [alice.userId]: { [second.deviceId]: "signed_curve25519" } },
    });
    expect(claim.json.one_time_keys).toEqual({});
  });

  it("records a change when a device is renamed (its name shows in /keys/query)", async () => {
    const alice = await newUser();
    const before = await hs.services.e2ee.deviceLists.currentPosition();
    const res = await request(hs.url, "PUT", `/_matrix/client/v3/devices/${alice.deviceId}`, {
      token: alice.accessToken,
      body: { display_name: "Renamed" },
    });
    expect(res.status).toBe(200);
    const after = await hs.services.e2ee.deviceLists.currentPosition();
    expect(await hs.services.e2ee.deviceLists.changedUsers(alice.userId, before, after)).toEqual([alice.userId]);
  });

  it("refuses tokens it cannot read", async () => {
    const alice = await newUser();
    const res = await request(hs.url, "GET", "/_matrix/client/v3/keys/changes?from=abc&to=1", { token: alice.accessToken });
    expect(res.status).toBe(400);
  });
});

describe("dehydrated devices", () => {
  it("answers the MSC3814 probe with 404 M_UNRECOGNIZED (unsupported)", async () => {
    const alice = await newUser();
    const res = await request(hs.url, "GET", "/_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device", {
      token: alice.accessToken,
    });
    expect(res.status).toBe(404);
    expect(res.json.errcode).toBe("M_UNRECOGNIZED");
  });
});

// Cross-signing over HTTP: /keys/device_signing/upload (UIA only for replacing keys) and
// /keys/signatures/upload, and how both show in /keys/query.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { passwordAuth, registerUser, type TestUser } from "./accounts-helpers.ts";
import { crossSigningIdentity, deviceIdentity, ed25519Key, type Json, post, sign } from "./e2ee-helpers.ts";
import { request, startTestServer, type TestServer } from "./harness.ts";

let hs: TestServer;
beforeAll(async () => {
  hs = await startTestServer();
});
afterAll(() => hs.destroy());

let n = 0;
const newUser = () => registerUser(hs.url, `xsign${++n}`);
const query = (as: TestUser, userId: string) => post(hs.url, as, "/keys/query", { device_keys: { [userId]: [] } });

describe("/keys/device_signing/upload", () => {
  it("takes the first upload without user-interactive auth and shows the keys in /keys/query", async () => {
    const alice = await newUser();
    const bob = await newUser();
    const cs = crossSigningIdentity(alice.userId);
    const res = await post(hs.url, alice, "/keys/device_signing/upload", cs.body);
    expect(res.status, res.text).toBe(200);

    const own = await query(alice, alice.userId);
    expect(own.json.master_keys[alice.userId]).toEqual(cs.body.master_key);
    expect(own.json.self_signing_keys[alice.userId]).toEqual(cs.body.self_signing_key);
    expect(own.json.user_signing_keys[alice.userId]).toEqual(cs.body.user_signing_key);

    // Others see the master and self-signing keys, never the user-signing key.
    const other = await query(bob, alice.userId);
    expect(other.json.master_keys[alice.userId]).toEqual(cs.body.master_key);
    expect(other.json.self_signing_keys[alice.userId]).toEqual(cs.body.self_signing_key);
    expect(other.json.user_signing_keys).toEqual({});
  });

  it("takes an identical upload without auth, and asks for the password to replace the keys", async () => {
    const alice = await newUser();
    const cs = crossSigningIdentity(alice.userId);
    expect((await post(hs.url, alice, "/keys/device_signing/upload", cs.body)).status).toBe(200);
    expect((await post(hs.url, alice, "/keys/device_signing/upload", cs.body)).status).toBe(200);

    const replacement = crossSigningIdentity(alice.userId);
    const challenge = await post(hs.url, alice, "/keys/device_signing/upload", replacement.body);
    expect(challenge.status).toBe(401);
    expect(challenge.json.flows).toEqual([{ stages: ["m.login.password"] }]);

    const wrong = await post(hs.url, alice, "/keys/device_signing/upload", {
      ...replacement.body,
      auth: { ...passwordAuth(alice, challenge.json.session), password: "not it" },
    });
    expect(wrong.status).toBe(401);
    expect(wrong.json.errcode).toBe("M_FORBIDDEN");
    expect((await query(alice, alice.userId)).json.master_keys[alice.userId]).toEqual(cs.body.master_key);

    const done = await post(hs.url, alice, "/keys/device_signing/upload", {
      ...replacement.body,
      auth: passwordAuth(alice, challenge.json.session),
    });
    expect(done.status, done.text).toBe(200);
    expect((await query(alice, alice.userId)).json.master_keys[alice.userId]).toEqual(replacement.body.master_key);
  });

  it("refuses keys not signed by the master key, without a master key, or for another user", async () => {
    const alice = await newUser();
    const cs = crossSigningIdentity(alice.userId);
    const other = crossSigningIdentity(alice.userId);

    const noMaster = await post(hs.url, alice, "/keys/device_signing/upload", { self_signing_key: cs.body.self_signing_key });
    expect(noMaster.status).toBe(400);
    expect(noMaster.json.errcode).toBe("M_MISSING_PARAM");

    const badSig = await post(hs.url, alice, "/keys/device_signing/upload", {
      master_key: cs.body.master_key,
      self_signing_key: other.body.self_signing_key,
    });
    expect(badSig.status).toBe(400);
    expect(badSig.json.errcode).toBe("M_INVALID_SIGNATURE");

    const notHers = crossSigningIdentity("@someoneelse:test.local");
    const wrongUser = await post(hs.url, alice, "/keys/device_signing/upload", notHers.body);
    expect(wrongUser.status).toBe(400);

    // Nothing was stored by the refused uploads: the first real upload still needs no auth.
    expect((await post(hs.url, alice, "/keys/device_signing/upload", cs.body)).status).toBe(200);
  });

  it("is served under the unstable prefix too (as Synapse still serves it), and so are signature uploads", async () => {
    const alice = await newUser();
    const cs = crossSigningIdentity(alice.userId);
    const unstable = (path: string, body: unknown) =>
      request(hs.url, "POST", `/_matrix/client/unstable/keys/${path}`, { token: alice.accessToken, body });
    expect((await unstable("device_signing/upload", cs.body)).status).toBe(200);
    expect((await query(alice, alice.userId)).json.master_keys[alice.userId]).toEqual(cs.body.master_key);
    const device = deviceIdentity(alice);
    expect((await post(hs.url, alice, "/keys/upload", { device_keys: device.deviceKeys })).status).toBe(200);
    const signed = await unstable("signatures/upload", { [alice.userId]: { [alice.deviceId]: sign(device.deviceKeys, alice.userId, cs.selfSigning) } });
    expect(signed.status, signed.text).toBe(200);
    expect(signed.json.failures).toEqual({});
  });
});

describe("/keys/signatures/upload", () => {
  async function setUp(user: TestUser) {
    const device = deviceIdentity(user);
    await post(hs.url, user, "/keys/upload", { device_keys: device.deviceKeys });
    const cs = crossSigningIdentity(user.userId);
    await post(hs.url, user, "/keys/device_signing/upload", cs.body);
    return { device, cs };
  }

  it("stores a device's signature by the self-signing key and shows it in /keys/query", async () => {
    const alice = await newUser();
    const bob = await newUser();
    const { device, cs } = await setUp(alice);
    const signed = sign(device.deviceKeys, alice.userId, cs.selfSigning);
    const before = await hs.services.e2ee.deviceLists.currentPosition();
    const res = await post(hs.url, alice, "/keys/signatures/upload", { [alice.userId]: { [alice.deviceId]: signed } });
    expect(res.status).toBe(200);
    expect(res.json).toEqual({ failures: {} });

    const seen = (await query(bob, alice.userId)).json.device_keys[alice.userId][alice.deviceId];
    expect(seen.signatures[alice.userId][`ed25519:${cs.selfSigning.publicKeyBase64}`]).toBe(
      signed.signatures[alice.userId][`ed25519:${cs.selfSigning.publicKeyBase64}`],
    );
    expect(seen.signatures[alice.userId][`ed25519:${alice.deviceId}`]).toBe(
      device.deviceKeys.signatures[alice.userId][`ed25519:${alice.deviceId}`],
    );
    const after = await hs.services.e2ee.deviceLists.currentPosition();
    expect(await hs.services.e2ee.deviceLists.changedUsers(bob.userId, before, after)).toEqual([alice.userId]);
  });

  it("stores a signature of one's master key by one's device", async () => {
    const alice = await newUser();
    const { device, cs } = await setUp(alice);
    const signed = sign(cs.body.master_key, alice.userId, device.key);
    const res = await post(hs.url, alice, "/keys/signatures/upload", {
      [alice.userId]: { [cs.master.publicKeyBase64]: signed },
    });
    expect(res.json).toEqual({ failures: {} });
    const master = (await query(alice, alice.userId)).json.master_keys[alice.userId];
    expect(master.signatures[alice.userId][`ed25519:${alice.deviceId}`]).toBe(
      signed.signatures[alice.userId][`ed25519:${alice.deviceId}`],
    );
  });

  it("shows a signature of another user's master key only to its maker", async () => {
    const alice = await newUser();
    const bob = await newUser();
    const carol = await newUser();
    const a = await setUp(alice);
    const b = await setUp(bob);
    const signed = sign(b.cs.body.master_key, alice.userId, a.cs.userSigning);
    const res = await post(hs.url, alice, "/keys/signatures/upload", { [bob.userId]: { [b.cs.master.publicKeyBase64]: signed } });
    expect(res.json).toEqual({ failures: {} });

    const asAlice = (await query(alice, bob.userId)).json.master_keys[bob.userId];
    expect(asAlice.signatures[alice.userId][`ed25519:${a.cs.userSigning.publicKeyBase64}`]).toBeDefined();
    const asCarol = (await query(carol, bob.userId)).json.master_keys[bob.userId];
    expect(asCarol.signatures?.[alice.userId]).toBeUndefined();
  });

  it("reports bad signatures, unknown keys and changed objects per key, and keeps the good ones", async () => {
    const alice = await newUser();
    const { device, cs } = await setUp(alice);
    const stranger = ed25519Key(cs.selfSigning.publicKeyBase64); // the right key ID, the wrong key
    const badlySigned = sign(device.deviceKeys, alice.userId, stranger);
    const changed = sign({ ...device.deviceKeys, algorithms: ["x"] }, alice.userId, cs.selfSigning);
    const res = await post(hs.url, alice, "/keys/signatures/upload", {
      [alice.userId]: {
        [alice.deviceId]: badlySigned,
        NOSUCHDEVICE: sign({ ...device.deviceKeys, device_id: "NOSUCHDEVICE" }, alice.userId, cs.selfSigning),
      },
    });
    expect(res.status).toBe(200);
    expect(res.json.failures[alice.userId][alice.deviceId].errcode).toBe("M_INVALID_SIGNATURE");
    expect(res.json.failures[alice.userId].NOSUCHDEVICE.errcode).toBe("M_NOT_FOUND");

    const mismatch = await post(hs.url, alice, "/keys/signatures/upload", { [alice.userId]: { [alice.deviceId]: changed } });
    expect(mismatch.json.failures[alice.userId][alice.deviceId].errcode).toBe("M_INVALID_PARAM");

    const seen: Json = (await query(alice, alice.userId)).json.device_keys[alice.userId][alice.deviceId];
    expect(Object.keys(seen.signatures[alice.userId])).toEqual([`ed25519:${alice.deviceId}`]);
  });
});

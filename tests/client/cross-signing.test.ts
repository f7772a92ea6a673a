// Cross-signing on the client: keys from seeds as libolm's PkSigning makes them, JSON signatures,
// and against a real Parley server: publishing the keys (user-interactive auth when replacing
// them), signing a device and another user's master key, and trust evaluated from /keys/query,
// where a forged or missing signature leaves the device untrusted.
import Olm from "@towns-protocol/olm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { canonicalJson } from "../../federation/protocol/canonical-json.ts";
import {
  CrossSigningIdentity,
  CrossSigningKey,
  type KeysQueryResponse,
  deviceTrust,
  masterKeyOf,
  signMasterKeyWithDevice,
  signaturesAfterVerification,
  uploadCrossSigningKeys,
  uploadSignatures,
  userTrust,
} from "../../client/crypto/cross-signing.ts";
import { cryptoReady, ed25519Generate, ed25519Sign, randomBytes, toBase64 } from "../../client/crypto/primitives.ts";
import { SasVerification } from "../../client/crypto/sas.ts";
import { signJson, verifyJsonSignature } from "../../client/crypto/signed-json.ts";
import { MatrixApiError, MatrixHttp } from "../../client/http.ts";
import { registerUser } from "../accounts-helpers.ts";
import { startTestServer, type TestServer } from "../harness.ts";

type LibOlm = Awaited<ReturnType<typeof Olm.initAsync>>;
let olm: LibOlm;

beforeAll(async () => {
  await cryptoReady();
  olm = await Olm.initAsync();
});

describe("cross-signing keys and signed JSON", () => {
  it("derives the same public key from a seed as libolm's PkSigning, and signs what libolm verifies", () => {
    const seed = randomBytes(32);
    const pk = new olm.PkSigning();
    const key = CrossSigningKey.fromSeed(toBase64(seed));
    expect(key.publicKey).toBe(pk.init_with_seed(seed));
    expect(key.keyId).toBe(`ed25519:${key.publicKey}`);
    expect(key.seed()).toBe(toBase64(seed));
    // libolm's own signature verifies with ours, and ours with libolm's.
    const obj = { user_id: "@a:x", usage: ["master"], keys: { [key.keyId]: key.publicKey } };
    const signed = signJson(obj, "@a:x", key.keyId, (m) => pk.sign(m));
    expect(verifyJsonSignature(signed, "@a:x", key.keyId, key.publicKey)).toBe(true);
    const ours = signJson(obj, "@a:x", key.keyId, key.sign);
    expect(() => new olm.Utility().ed25519_verify(key.publicKey, canonicalJson(obj), ours.signatures!["@a:x"]![key.keyId]!)).not.toThrow();
  });

  it("signs without `signatures` and `unsigned`, keeps earlier signatures, and refuses a changed object", () => {
    const a = CrossSigningKey.generate();
    const b = CrossSigningKey.generate();
    const obj = { user_id: "@a:x", n: 1, unsigned: { device_display_name: "phone" } };
    const once = signJson(obj, "@a:x", a.keyId, a.sign);
    const twice = signJson(once, "@b:y", b.keyId, b.sign);
    expect(verifyJsonSignature(twice, "@a:x", a.keyId, a.publicKey)).toBe(true);
    expect(verifyJsonSignature(twice, "@b:y", b.keyId, b.publicKey)).toBe(true);
    expect(verifyJsonSignature({ ...twice, unsigned: { other: true } }, "@a:x", a.keyId, a.publicKey)).toBe(true);
    expect(verifyJsonSignature({ ...twice, n: 2 }, "@a:x", a.keyId, a.publicKey)).toBe(false);
    expect(verifyJsonSignature(twice, "@a:x", a.keyId, b.publicKey)).toBe(false);
    expect(verifyJsonSignature(twice, "@a:x", "ed25519:other", a.publicKey)).toBe(false);
    expect(verifyJsonSignature({ ...twice, signatures: { "@a:x": { [a.keyId]: "not base64!" } } }, "@a:x", a.keyId, a.publicKey)).toBe(false);
    expect(verifyJsonSignature(JSON.parse('{"signatures":{"__proto__":{"k":"x"}}}'), "__proto__", "k", a.publicKey)).toBe(false);
  });

  it("builds the device_signing/upload body with the self-signing and user-signing keys signed by the master key, and restores from seeds", () => {
    const id = CrossSigningIdentity.generate("@a:x");
    const body = id.deviceSigningUploadBody();
    const master = id.master!;
    expect(body.master_key).toEqual({ user_id: "@a:x", usage: ["master"], keys: { [master.keyId]: master.publicKey } });
    expect(body.self_signing_key?.usage).toEqual(["self_signing"]);
    expect(body.user_signing_key?.keys).toEqual({ [id.userSigning!.keyId]: id.userSigning!.publicKey });
    expect(verifyJsonSignature(body.self_signing_key, "@a:x", master.keyId, master.publicKey)).toBe(true);
    expect(verifyJsonSignature(body.user_signing_key, "@a:x", master.keyId, master.publicKey)).toBe(true);
    const again = CrossSigningIdentity.fromSeeds("@a:x", JSON.parse(JSON.stringify(id.seeds())));
    expect(again.deviceSigningUploadBody()).toEqual(body);
    // A device holding only the self-signing key cannot publish or sign users.
    const partial = CrossSigningIdentity.fromSeeds("@a:x", { selfSigning: id.seeds().selfSigning! });
    expect(() => partial.deviceSigningUploadBody()).toThrow(/master/);
    expect(() => partial.signUser(body.master_key!)).toThrow(/user-signing/);
  });
});

// ---- Against a Parley server ----

let hs: TestServer;
beforeAll(async () => {
  hs = await startTestServer();
});
afterAll(() => hs?.destroy());

interface Account {
  userId: string;
  deviceId: string;
  password: string;
  http: MatrixHttp;
  deviceKeys: Record<string, unknown>;
  deviceSign: (m: string) => string;
}

let n = 0;
/** A registered user whose device has published signed device keys. */
async function account(name: string): Promise<Account> {
  const user = await registerUser(hs.url, `${name}${++n}`);
  const http = new MatrixHttp({ baseUrl: hs.url, accessToken: user.accessToken });
  const key = ed25519Generate();
  const deviceSign = (m: string) => toBase64(ed25519Sign(key.privateKey, m));
  const deviceKeys = signJson(
    {
      user_id: user.userId,
      device_id: user.deviceId,
      algorithms: ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
      keys: { [`curve25519:${user.deviceId}`]: toBase64(randomBytes(32)), [`ed25519:${user.deviceId}`]: toBase64(key.publicKey) },
    },
    user.userId,
    `ed25519:${user.deviceId}`,
    deviceSign,
  );
  await http.request("POST", "/_matrix/client/v3/keys/upload", { body: { device_keys: deviceKeys } });
  return { ...user, http, deviceKeys, deviceSign };
}

const query = (as: Account, ...users: string[]): Promise<KeysQueryResponse> =>
  as.http.request("POST", "/_matrix/client/v3/keys/query", { body: { device_keys: Object.fromEntries(users.map((u) => [u, []])) } });

/** An account with cross-signing keys published and its device signed by its self-signing key. */
async function crossSigned(name: string) {
  const acc = await account(name);
  const id = CrossSigningIdentity.generate(acc.userId);
  await uploadCrossSigningKeys(acc.http, id.deviceSigningUploadBody(), acc);
  await uploadSignatures(acc.http, id.signOwnDevice(acc.deviceKeys));
  return { acc, id };
}

describe("cross-signing with a Parley server", () => {
  it("publishes the keys, signs its own device, and trusts it from /keys/query only through its own master key", async () => {
    const { acc, id } = await crossSigned("alice");
    const q = await query(acc, acc.userId);
    expect(masterKeyOf(q, acc.userId)).toBe(id.master!.publicKey);
    expect(deviceTrust(q, acc.userId, acc.deviceId, { userId: acc.userId, ownMasterKey: id.master!.publicKey })).toEqual({
      trusted: true,
      masterKey: id.master!.publicKey,
      via: "own",
    });
    // A master key we neither hold nor verified (e.g. the server swapped it) is not ours.
    expect(deviceTrust(q, acc.userId, acc.deviceId, { userId: acc.userId, ownMasterKey: CrossSigningKey.generate().publicKey })).toEqual({
      trusted: false,
      reason: "master_key_not_trusted",
    });
    // The master key signed by the device is accepted by the server and shows in the query.
    await uploadSignatures(acc.http, signMasterKeyWithDevice(id.deviceSigningUploadBody().master_key!, acc.deviceId, acc.deviceSign));
    const after = await query(acc, acc.userId);
    expect(verifyJsonSignature(after.master_keys![acc.userId], acc.userId, `ed25519:${acc.deviceId}`, (acc.deviceKeys.keys as Record<string, string>)[`ed25519:${acc.deviceId}`]!)).toBe(true);
  });

  it("replaces the keys through user-interactive auth with the password, and not without it", async () => {
    const { acc } = await crossSigned("uia");
    const replacement = CrossSigningIdentity.generate(acc.userId);
    const refused = await uploadCrossSigningKeys(acc.http, replacement.deviceSigningUploadBody()).catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(MatrixApiError);
    expect((refused as MatrixApiError).status).toBe(401);
    const wrong = await uploadCrossSigningKeys(acc.http, replacement.deviceSigningUploadBody(), { ...acc, password: "wrong password" }).catch((e: unknown) => e);
    expect((wrong as MatrixApiError).errcode).toBe("M_FORBIDDEN");
    await uploadCrossSigningKeys(acc.http, replacement.deviceSigningUploadBody(), acc);
    expect(masterKeyOf(await query(acc, acc.userId), acc.userId)).toBe(replacement.master!.publicKey);
    // The device was signed by the old self-signing key: no longer cross-signed.
    expect(deviceTrust(await query(acc, acc.userId), acc.userId, acc.deviceId, { userId: acc.userId, ownMasterKey: replacement.master!.publicKey })).toEqual({
      trusted: false,
      reason: "device_not_signed",
    });
  });

  it("trusts another user's device once their master key is verified, or signed by our user-signing key", async () => {
    const alice = await crossSigned("alice");
    const bob = await crossSigned("bob");
    const bobCtx = { userId: bob.acc.userId, ownMasterKey: bob.id.master!.publicKey };
    const aliceMaster = alice.id.master!.publicKey;

    let q = await query(bob.acc, alice.acc.userId, bob.acc.userId);
    expect(deviceTrust(q, alice.acc.userId, alice.acc.deviceId, bobCtx)).toEqual({ trusted: false, reason: "master_key_not_trusted" });
    // After a SAS that covered Alice's master key:
    expect(deviceTrust(q, alice.acc.userId, alice.acc.deviceId, { ...bobCtx, verifiedMasterKeys: { [alice.acc.userId]: aliceMaster } })).toMatchObject({
      trusted: true,
      via: "verified",
    });

    // Bob signs Alice's master key with his user-signing key after SAS verified it; his queries now carry the signature.
    const aliceDevice = (alice.acc.deviceKeys.keys as Record<string, string>)[`ed25519:${alice.acc.deviceId}`]!;
    const peer = { userId: alice.acc.userId, deviceId: alice.acc.deviceId, ed25519: aliceDevice, masterKey: aliceMaster };
    const verified = [`ed25519:${alice.acc.deviceId}`, `ed25519:${aliceMaster}`];
    // Nothing to sign when the master key was not among the verified keys, or is not the one in the query.
    expect(signaturesAfterVerification(bob.id, peer, verified.slice(0, 1), q)).toEqual({});
    expect(signaturesAfterVerification(bob.id, { ...peer, masterKey: CrossSigningKey.generate().publicKey }, verified, q)).toEqual({});
    await uploadSignatures(bob.acc.http, signaturesAfterVerification(bob.id, peer, verified, q));
    q = await query(bob.acc, alice.acc.userId, bob.acc.userId);
    expect(deviceTrust(q, alice.acc.userId, alice.acc.deviceId, bobCtx)).toEqual({ trusted: true, masterKey: aliceMaster, via: "user_signing" });
    expect(userTrust(q, alice.acc.userId, bobCtx)).toMatchObject({ trusted: true, via: "user_signing" });
    // Without Bob's own master key the user-signing key proves nothing.
    expect(deviceTrust(q, alice.acc.userId, alice.acc.deviceId, { userId: bob.acc.userId })).toEqual({ trusted: false, reason: "master_key_not_trusted" });

    // A third user does not see Bob's user-signing signature (spec: it is private to Bob).
    const carol = await crossSigned("carol");
    const cq = await query(carol.acc, alice.acc.userId);
    expect(Object.keys((cq.master_keys![alice.acc.userId] as { signatures?: object }).signatures ?? {})).not.toContain(bob.acc.userId);
  });

  it("SAS between two users with keys from /keys/query, then the user-signing signature: each trusts the other's device", async () => {
    const alice = await crossSigned("alice");
    const bob = await crossSigned("bob");
    const users = [alice, bob];
    const queries = await Promise.all(users.map(({ acc }) => query(acc, alice.acc.userId, bob.acc.userId)));
    const peerOf = (q: KeysQueryResponse, acc: Account) => ({
      userId: acc.userId,
      deviceId: acc.deviceId,
      ed25519: (q.device_keys![acc.userId]![acc.deviceId]!.keys as Record<string, string>)[`ed25519:${acc.deviceId}`]!,
      masterKey: masterKeyOf(q, acc.userId)!,
    });
    const wire: Array<{ to: 0 | 1; type: string; content: Record<string, unknown> }> = [];
    const sas: SasVerification[] = [];
    for (const i of [0, 1] as const) {
      const me = users[i]!;
      const other = users[1 - i]!;
      sas.push(
        new SasVerification({
          userId: me.acc.userId,
          deviceId: me.acc.deviceId,
          ed25519: (me.acc.deviceKeys.keys as Record<string, string>)[`ed25519:${me.acc.deviceId}`]!,
          masterKey: me.id.master!.publicKey,
          other: peerOf(queries[i]!, other.acc),
          ...(i === 1 ? { transactionId: sas[0]!.transactionId } : {}),
          send: (type, content) => void wire.push({ to: (1 - i) as 0 | 1, type, content }),
        }),
      );
    }
    const pump = async () => {
      for (let m = wire.shift(); m; m = wire.shift()) await sas[m.to]!.handle(m.type, m.content);
    };
    await sas[0]!.request();
    await pump();
    await sas[1]!.ready();
    await pump();
    await sas[1]!.start();
    await pump();
    expect(sas[0]!.emojis()).toEqual(sas[1]!.emojis());
    await Promise.all(sas.map((v) => v.confirm()));
    await pump();
    const verified = await Promise.all(sas.map((v) => v.done));

    for (const i of [0, 1] as const) {
      const me = users[i]!;
      const other = users[1 - i]!;
      expect(verified[i]).toContain(`ed25519:${other.id.master!.publicKey}`);
      await uploadSignatures(me.acc.http, signaturesAfterVerification(me.id, peerOf(queries[i]!, other.acc), verified[i]!, queries[i]!));
      const q = await query(me.acc, other.acc.userId, me.acc.userId);
      expect(deviceTrust(q, other.acc.userId, other.acc.deviceId, { userId: me.acc.userId, ownMasterKey: me.id.master!.publicKey })).toMatchObject({
        trusted: true,
        via: "user_signing",
      });
    }
  });

  it("leaves a device untrusted when a signature on the way is forged, missing or misplaced", async () => {
    const alice = await crossSigned("alice");
    const ctx = { userId: alice.acc.userId, ownMasterKey: alice.id.master!.publicKey };
    const q = await query(alice.acc, alice.acc.userId);
    const u = alice.acc.userId;
    const d = alice.acc.deviceId;
    expect(deviceTrust(q, u, d, ctx).trusted).toBe(true);
    const tampered = (edit: (q: any) => void) => {
      const copy = structuredClone(q) as any;
      edit(copy);
      return copy as KeysQueryResponse;
    };
    const sskKeyId = alice.id.selfSigning!.keyId;
    const forger = CrossSigningKey.generate();

    // The device signature by the self-signing key replaced by one made with another key.
    const forgedDevice = tampered((c) => {
      const { signatures: _s, unsigned: _u, ...body } = c.device_keys[u][d];
      c.device_keys[u][d].signatures[u][sskKeyId] = forger.sign(canonicalJson(body));
    });
    expect(deviceTrust(forgedDevice, u, d, ctx)).toEqual({ trusted: false, reason: "device_not_signed" });
    // The device's keys changed after signing (a swapped Curve25519 key).
    const swapped = tampered((c) => {
      c.device_keys[u][d].keys[`curve25519:${d}`] = toBase64(randomBytes(32));
    });
    expect(deviceTrust(swapped, u, d, ctx)).toEqual({ trusted: false, reason: "bad_device_signature" });
    // A self-signing key the master never signed (the server substituted its own).
    const substitutedSsk = tampered((c) => {
      c.self_signing_keys[u] = signJson({ user_id: u, usage: ["self_signing"], keys: { [forger.keyId]: forger.publicKey } }, u, forger.keyId, forger.sign);
    });
    expect(deviceTrust(substitutedSsk, u, d, ctx)).toEqual({ trusted: false, reason: "bad_self_signing_signature" });
    // A master key offered where the self-signing key should be.
    const misused = tampered((c) => {
      c.self_signing_keys[u] = c.master_keys[u];
    });
    expect(deviceTrust(misused, u, d, ctx)).toEqual({ trusted: false, reason: "no_self_signing_key" });
    // A device named like the master key.
    const collision = tampered((c) => {
      c.device_keys[u][alice.id.master!.publicKey] = { user_id: u, device_id: alice.id.master!.publicKey, keys: {} };
    });
    expect(deviceTrust(collision, u, d, ctx)).toEqual({ trusted: false, reason: "device_id_collision" });
    expect(deviceTrust(q, u, "NOSUCHDEVICE", ctx)).toEqual({ trusted: false, reason: "no_device" });
  });

  it("has the server refuse a signature made with a key that is not the user's self-signing key, and a second device stays unsigned", async () => {
    const alice = await crossSigned("alice");
    const impostor = CrossSigningIdentity.generate(alice.acc.userId);
    await expect(uploadSignatures(alice.acc.http, impostor.signOwnDevice(alice.acc.deviceKeys))).rejects.toThrow(/signatures refused.*M_INVALID_SIGNATURE/);

    // A new device of Alice's (logged in elsewhere) is not cross-signed until her self-signing key signs it.
    const login = await fetch(`${hs.url}/_matrix/client/v3/login`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ type: "m.login.password", identifier: { type: "m.id.user", user: alice.acc.userId }, password: alice.acc.password }),
    }).then((r) => r.json() as Promise<{ access_token: string; device_id: string }>);
    const second = new MatrixHttp({ baseUrl: hs.url, accessToken: login.access_token });
    const key = ed25519Generate();
    const secondKeys = signJson(
      { user_id: alice.acc.userId, device_id: login.device_id, algorithms: ["m.olm.v1.curve25519-aes-sha2"], keys: { [`ed25519:${login.device_id}`]: toBase64(key.publicKey) } },
      alice.acc.userId,
      `ed25519:${login.device_id}`,
      (m) => toBase64(ed25519Sign(key.privateKey, m)),
    );
    await second.request("POST", "/_matrix/client/v3/keys/upload", { body: { device_keys: secondKeys } });
    const ctx = { userId: alice.acc.userId, ownMasterKey: alice.id.master!.publicKey };
    expect(deviceTrust(await query(alice.acc, alice.acc.userId), alice.acc.userId, login.device_id, ctx)).toEqual({ trusted: false, reason: "device_not_signed" });
    const secondPeer = { userId: alice.acc.userId, deviceId: login.device_id, ed25519: toBase64(key.publicKey) };
    const q = await query(alice.acc, alice.acc.userId);
    expect(signaturesAfterVerification(alice.id, { ...secondPeer, ed25519: toBase64(ed25519Generate().publicKey) }, [`ed25519:${login.device_id}`], q)).toEqual({});
    await uploadSignatures(alice.acc.http, signaturesAfterVerification(alice.id, secondPeer, [`ed25519:${login.device_id}`], q));
    expect(deviceTrust(await query(alice.acc, alice.acc.userId), alice.acc.userId, login.device_id, ctx)).toMatchObject({ trusted: true, via: "own" });
  });
});

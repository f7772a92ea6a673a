// matrix-js-sdk's Rust crypto (matrix-sdk-crypto-wasm) against Parley's E2EE endpoints, one piece
// at a time.
//
// The SDK's sync loop does not run here: the test kicks its outgoing-request loop
// (`outgoingRequestsManager.doProcessOutgoingRequests()`, what the sync loop calls after each sync)
// and hands it what the E2EE service functions /sync calls return (to-device messages, device-list
// changes, key counts) through the SDK's own sync hook, `processSyncChanges`, so each endpoint's part
// is checked on its own. The whole flow through /sync (startClient, encrypted rooms, new devices) is
// tests/e2ee-rooms-sdk.test.ts.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { registerUser, type TestUser } from "./accounts-helpers.ts";
import { startTestServer, type TestServer } from "./harness.ts";
import { sdk } from "./matrix-sdk.ts";

const RustSdkCryptoJs = await import("@matrix-org/matrix-sdk-crypto-wasm");

const quiet = { trace() {}, debug() {}, info() {}, warn() {}, error() {}, getChild: () => quiet };

/** The parts of the SDK's RustCrypto this test drives directly (not in its public CryptoApi types). */
interface RustCryptoInternals {
  outgoingRequestsManager: { doProcessOutgoingRequests(): Promise<void> };
  olmMachine: { updateTrackedUsers(users: unknown[]): Promise<void> };
  processSyncChanges(changes: {
    toDeviceEvents: unknown[];
    deviceLists?: { changed?: string[]; left?: string[] };
    oneTimeKeysCounts?: Record<string, number>;
    unusedFallbackKeys?: string[];
  }): Promise<{ message: { type: string; content: Record<string, unknown>; sender: string } }[]>;
}

let hs: TestServer;
beforeAll(async () => {
  hs = await startTestServer();
});
afterAll(() => hs.destroy());

async function cryptoClient(user: TestUser) {
  const client = sdk.createClient({
    baseUrl: hs.url,
    accessToken: user.accessToken,
    userId: user.userId,
    deviceId: user.deviceId,
    logger: quiet as never,
  });
  await client.initRustCrypto({ useIndexedDB: false });
  const crypto = client.getCrypto()!;
  return { client, crypto, internals: crypto as unknown as RustCryptoInternals };
}

const passwordAuth = (user: TestUser) => ({
  type: "m.login.password",
  identifier: { type: "m.id.user", user: user.userId },
  password: user.password,
});

describe("matrix-js-sdk Rust crypto", () => {
  it("uploads its keys, cross-signs, backs up, and sends an Olm-encrypted to-device message another SDK decrypts", async () => {
    const aliceUser = await registerUser(hs.url, "sdkalice");
    const bobUser = await registerUser(hs.url, "sdkbob");
    const alice = await cryptoClient(aliceUser);
    const bob = await cryptoClient(bobUser);
    const e2ee = hs.services.e2ee;

    // 1. Device keys and one-time keys go up through the outgoing-request loop.
    await alice.internals.outgoingRequestsManager.doProcessOutgoingRequests();
    await bob.internals.outgoingRequestsManager.doProcessOutgoingRequests();
    const counts = await e2ee.deviceKeys.oneTimeKeyCounts(aliceUser.userId, aliceUser.deviceId);
    expect(counts.signed_curve25519).toBeGreaterThan(0);
    const aliceKeys = await e2ee.deviceKeys.deviceKeysOf(aliceUser.userId);
    expect(aliceKeys.get(aliceUser.deviceId)?.keys).toBeDefined();

    // 2. Cross-signing: the first upload needs no user-interactive auth...
    let asked = 0;
    await alice.crypto.bootstrapCrossSigning({
      authUploadDeviceSigningKeys: async (makeRequest) => {
        asked++;
        await makeRequest(null as never);
      },
    });
    expect(asked).toBe(1);
    expect(await alice.crypto.isCrossSigningReady()).toBe(true);
    const status = await alice.crypto.getCrossSigningStatus();
    expect(status.publicKeysOnDevice).toBe(true);
    const query = await e2ee.queryKeys(bobUser.userId, { [aliceUser.userId]: [] });
    expect(query.master_keys[aliceUser.userId]).toBeDefined();
    // ...and the device is signed by the self-signing key (uploaded through /keys/signatures/upload).
    const selfSigningKeyId = Object.keys(query.self_signing_keys[aliceUser.userId]!.keys as object)[0]!;
    const deviceSignatures = (query.device_keys[aliceUser.userId]![aliceUser.deviceId]!.signatures as Record<string, object>)[
      aliceUser.userId
    ]!;
    expect(Object.keys(deviceSignatures)).toContain(selfSigningKeyId);

    // Bob sees Alice's device and cross-signing identity through /keys/query.
    expect(await bob.crypto.userHasCrossSigningKeys(aliceUser.userId, true)).toBe(true);
    const devices = await bob.crypto.getUserDeviceInfo([aliceUser.userId], true);
    expect([...(devices.get(aliceUser.userId)?.keys() ?? [])]).toEqual([aliceUser.deviceId]);

    // 3. Replacing the cross-signing keys needs the password, which the SDK sends UIA-wrapped.
    const oldMaster = query.master_keys[aliceUser.userId];
    await alice.crypto.bootstrapCrossSigning({
      setupNewCrossSigning: true,
      authUploadDeviceSigningKeys: async (makeRequest) => {
        await expect(makeRequest(null as never)).rejects.toMatchObject({ httpStatus: 401 });
        await makeRequest(passwordAuth(aliceUser) as never);
      },
    });
    const replaced = await e2ee.queryKeys(aliceUser.userId, { [aliceUser.userId]: [] });
    expect(replaced.master_keys[aliceUser.userId]).not.toEqual(oldMaster);

    // 4. Key backup: none (404 M_NOT_FOUND is "no backup" to the SDK), then one the SDK creates.
    expect(await alice.crypto.checkKeyBackupAndEnable()).toBeNull();
    await alice.crypto.resetKeyBackup();
    const backup = await alice.crypto.getKeyBackupInfo();
    expect(backup?.version).toBe("1");
    expect((await e2ee.keyBackup.getVersion(aliceUser.userId)).algorithm).toBe("m.megolm_backup.v1.curve25519-aes-sha2");

    // Dehydrated devices: the probe's 404 M_UNRECOGNIZED means "unsupported".
    expect(await alice.crypto.isDehydrationSupported()).toBe(false);

    // 5. Bob claims one of Alice's one-time keys, opens an Olm session and sends her an encrypted
    //    to-device message; Alice's SDK decrypts it from her mailbox.
    await bob.internals.olmMachine.updateTrackedUsers([new RustSdkCryptoJs.UserId(aliceUser.userId)]);
    await bob.internals.outgoingRequestsManager.doProcessOutgoingRequests();
    const before = await e2ee.deviceKeys.oneTimeKeyCounts(aliceUser.userId, aliceUser.deviceId);
    const batch = await bob.crypto.encryptToDeviceMessages(
      "org.example.secret",
      [{ userId: aliceUser.userId, deviceId: aliceUser.deviceId }],
      { hello: "Alice" },
    );
    expect(batch.batch).toHaveLength(1);
    const after = await e2ee.deviceKeys.oneTimeKeyCounts(aliceUser.userId, aliceUser.deviceId);
    expect(after.signed_curve25519).toBe(before.signed_curve25519! - 1);
    await bob.client.queueToDevice(batch);
    // queueToDevice sends in the background; wait for the message to land.
    let mailbox = await e2ee.toDevice.fetchToDevice(aliceUser.userId, aliceUser.deviceId, 0, 100);
    for (let i = 0; i < 100 && mailbox.events.length === 0; i++) {
      await new Promise((r) => setTimeout(r, 20));
      mailbox = await e2ee.toDevice.fetchToDevice(aliceUser.userId, aliceUser.deviceId, 0, 100);
    }
    expect(mailbox.events.map((e) => e.type)).toEqual(["m.room.encrypted"]);

    const received = await alice.internals.processSyncChanges({
      toDeviceEvents: mailbox.events,
      deviceLists: { changed: await e2ee.deviceLists.changedUsers(aliceUser.userId, 0, await e2ee.deviceLists.currentPosition()) },
      oneTimeKeysCounts: await e2ee.deviceKeys.oneTimeKeyCounts(aliceUser.userId, aliceUser.deviceId),
      unusedFallbackKeys: await e2ee.deviceKeys.unusedFallbackKeyTypes(aliceUser.userId, aliceUser.deviceId),
    });
    const decrypted = received.find((r) => r.message.type === "org.example.secret");
    expect(decrypted?.message.content).toMatchObject({ hello: "Alice" });
    expect(decrypted?.message.sender).toBe(bobUser.userId);
    await e2ee.toDevice.ackToDevice(aliceUser.userId, aliceUser.deviceId, mailbox.position);

    alice.client.stopClient();
    bob.client.stopClient();
  }, 60_000);
});

// End-to-end encryption on one Parley server, as matrix-js-sdk's Rust crypto does it: two users'
// clients (each with its own OlmMachine, syncing with startClient) talk in an m.megolm.v1.aes-sha2
// room and each decrypts what the other sent; a device that logs in later gets the keys of the
// messages sent after it appeared; cross-signing set up by one user is seen by the other; a deleted
// device drops out of the other user's device list. Everything the SDKs know comes through /sync
// (to_device, device_lists, key counts) and the key endpoints — nothing is handed to them here.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loginUser, passwordAuth, registerUser, type TestUser } from "./accounts-helpers.ts";
import { request, startTestServer, type TestServer } from "./harness.ts";
import { enc } from "./sync-helpers.ts";
import { sdk } from "./matrix-sdk.ts";

const RustSdkCryptoJs = await import("@matrix-org/matrix-sdk-crypto-wasm");

const quiet = { trace() {}, debug() {}, info() {}, warn() {}, error() {}, getChild: () => quiet };
type Client = ReturnType<typeof sdk.createClient>;
type MatrixEvent = InstanceType<typeof sdk.MatrixEvent>;

const MEGOLM = "m.megolm.v1.aes-sha2";
/** The longest any one step may take before the test fails with a message naming it. */
const STEP_MS = 20_000;

let hs: TestServer;
const clients: Client[] = [];
beforeAll(async () => {
  hs = await startTestServer();
});
afterAll(async () => {
  for (const c of clients) c.stopClient();
  await hs.destroy();
});

/** Rejects with `what` when `promise` takes longer than `ms`. */
function within<T>(promise: Promise<T>, what: string, ms = STEP_MS): Promise<T> {
  let timer: NodeJS.Timeout;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Polls `check` (every 50 ms) until it returns something other than undefined. */
async function eventually<T>(what: string, check: () => Promise<T | undefined> | T | undefined, ms = STEP_MS): Promise<T> {
  const deadline = performance.now() + ms;
  for (;;) {
    const value = await check();
    if (value !== undefined) return value;
    if (performance.now() > deadline) throw new Error(`timed out after ${ms} ms: ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** A client with Rust crypto (in memory), synced once. */
async function cryptoClient(user: TestUser): Promise<Client> {
  const client = sdk.createClient({
    baseUrl: hs.url,
    accessToken: user.accessToken,
    userId: user.userId,
    deviceId: user.deviceId,
    logger: quiet as never,
  });
  clients.push(client);
  await client.initRustCrypto({ useIndexedDB: false });
  const ready = new Promise<void>((resolve, reject) => {
    const onSync = (state: string) => {
      if (state === "PREPARED" || state === "SYNCING") {
        client.off(sdk.ClientEvent.Sync, onSync);
        resolve();
      } else if (state === "ERROR") reject(new Error(`${user.userId}/${user.deviceId}: sync failed`));
    };
    client.on(sdk.ClientEvent.Sync, onSync);
  });
  await client.startClient({ initialSyncLimit: 20 });
  await within(ready, `${user.userId}/${user.deviceId}: first sync`);
  return client;
}

/** The room message `body` as this client decrypted it, once it has (failing on a decryption error). */
async function decrypted(client: Client, roomId: string, body: string, who: string): Promise<MatrixEvent> {
  return eventually(`${who} decrypts "${body}"`, async () => {
    const room = client.getRoom(roomId);
    for (const event of room?.getLiveTimeline().getEvents() ?? []) {
      if (event.getWireType() !== "m.room.encrypted") continue;
      await client.decryptEventIfNeeded(event);
      if (event.isDecryptionFailure()) continue;
      if (event.getClearContent()?.body === body) return event;
    }
    return undefined;
  });
}

/** A second session of `user` (a new device, logged in with the password). */
async function newDevice(user: TestUser): Promise<TestUser> {
  const res = await loginUser(hs.url, user.userId, user.password);
  expect(res.status, JSON.stringify(res.json)).toBe(200);
  return { ...user, accessToken: res.json.access_token, deviceId: res.json.device_id };
}

/** The device IDs `client` knows for `userId` (from what it tracked through /sync, no download). */
async function knownDevices(client: Client, userId: string): Promise<string[]> {
  const devices = await client.getCrypto()!.getUserDeviceInfo([userId], false);
  return [...(devices.get(userId)?.keys() ?? [])].sort();
}

describe("end-to-end encryption with matrix-js-sdk Rust crypto", () => {
  it("two users exchange Megolm messages both ways; a later device decrypts new messages; cross-signing and device changes reach the other user", async () => {
    const aliceUser = await registerUser(hs.url, "e2ealice");
    const bobUser = await registerUser(hs.url, "e2ebob");
    const alice = await cryptoClient(aliceUser);
    const bob = await cryptoClient(bobUser);

    // Both devices upload their identity keys and one-time keys (the SDK does it after its sync).
    for (const u of [aliceUser, bobUser]) {
      await eventually(`${u.userId} uploads device keys`, async () =>
        (await hs.services.e2ee.deviceKeys.deviceKeysOf(u.userId)).has(u.deviceId) ? true : undefined,
      );
    }

    // Alice sets up cross-signing; the SDK's auth callback answers with her password (the server
    // needs no auth for a first upload, and takes it all the same).
    let authCalls = 0;
    await within(
      alice.getCrypto()!.bootstrapCrossSigning({
        authUploadDeviceSigningKeys: async (makeRequest) => {
          authCalls++;
          await makeRequest(passwordAuth(aliceUser) as never);
        },
      }),
      "alice bootstraps cross-signing",
    );
    expect(authCalls).toBe(1);
    expect(await alice.getCrypto()!.isCrossSigningReady()).toBe(true);
    const aliceMasterKey = await alice.getCrypto()!.getCrossSigningKeyId();
    expect(aliceMasterKey).toBeTruthy();

    // An encrypted room; bob is invited and joins.
    const invited = new Promise<void>((resolve) => {
      bob.on(sdk.RoomEvent.MyMembership, (_room: unknown, membership: string) => {
        if (membership === "invite") resolve();
      });
    });
    const { room_id: roomId } = await alice.createRoom({
      preset: sdk.Preset.PrivateChat,
      invite: [bobUser.userId],
      initial_state: [{ type: "m.room.encryption", state_key: "", content: { algorithm: MEGOLM } }],
    });
    await within(invited, "bob sees the invite");
    await bob.joinRoom(roomId);
    await eventually("alice sees bob joined", () =>
      alice.getRoom(roomId)?.getMember(bobUser.userId)?.membership === "join" ? true : undefined,
    );
    await eventually("both clients see the room as encrypted", async () =>
      (await alice.getCrypto()!.isEncryptionEnabledInRoom(roomId)) && (await bob.getCrypto()!.isEncryptionEnabledInRoom(roomId)) ? true : undefined,
    );

    // Alice → bob, then bob → alice: both go over the wire encrypted, and both decrypt.
    const { event_id: fromAlice } = await within(alice.sendTextMessage(roomId, "hello bob, secretly"), "alice sends");
    const wire = await request(hs.url, "GET", `/_matrix/client/v3/rooms/${enc(roomId)}/event/${enc(fromAlice)}`, { token: bobUser.accessToken });
    expect(wire.json.type).toBe("m.room.encrypted");
    expect(wire.json.content.algorithm).toBe(MEGOLM);
    expect(JSON.stringify(wire.json)).not.toContain("secretly");
    const bobGot = await decrypted(bob, roomId, "hello bob, secretly", "bob");
    expect(bobGot.getSender()).toBe(aliceUser.userId);
    expect(bobGot.isDecryptionFailure()).toBe(false);
    expect(bobGot.getClearContent()?.msgtype).toBe("m.text");

    await within(bob.sendTextMessage(roomId, "hi alice, also secretly"), "bob sends");
    const aliceGot = await decrypted(alice, roomId, "hi alice, also secretly", "alice");
    expect(aliceGot.getSender()).toBe(bobUser.userId);

    // Bob sees alice's cross-signing identity, and her device signed by it.
    const bobCrypto = bob.getCrypto()!;
    expect(await bobCrypto.userHasCrossSigningKeys(aliceUser.userId)).toBe(true);
    const aliceIdentity = await within(
      bob.downloadKeysForUsers([aliceUser.userId]),
      "bob downloads alice's keys",
    );
    expect(Object.values((aliceIdentity.master_keys?.[aliceUser.userId] as { keys: Record<string, string> }).keys)).toContain(aliceMasterKey);
    expect(aliceIdentity.self_signing_keys?.[aliceUser.userId]).toBeDefined();
    const aliceDeviceStatus = await bobCrypto.getDeviceVerificationStatus(aliceUser.userId, aliceUser.deviceId);
    expect(aliceDeviceStatus?.signedByOwner).toBe(true);
    const status = await bobCrypto.getUserVerificationStatus(aliceUser.userId);
    expect(status.isCrossSigningVerified()).toBe(false); // known, not verified by bob

    // Alice replaces her cross-signing keys (now the server wants her password, UIA-wrapped); bob's
    // client learns her new identity through /sync (device_lists.changed), without being told.
    await within(
      alice.getCrypto()!.bootstrapCrossSigning({
        setupNewCrossSigning: true,
        authUploadDeviceSigningKeys: async (makeRequest) => {
          await expect(makeRequest(null as never)).rejects.toMatchObject({ httpStatus: 401 });
          await makeRequest(passwordAuth(aliceUser) as never);
        },
      }),
      "alice replaces her cross-signing keys",
    );
    const newMasterKey = (await alice.getCrypto()!.getCrossSigningKeyId())!;
    expect(newMasterKey).not.toBe(aliceMasterKey);
    const bobMachine = (bobCrypto as unknown as { olmMachine: { getIdentity(u: unknown): Promise<{ masterKey: string } | undefined> } }).olmMachine;
    await eventually("bob's client learns alice's new master key through /sync", async () => {
      const identity = await bobMachine.getIdentity(new RustSdkCryptoJs.UserId(aliceUser.userId));
      return identity?.masterKey.includes(newMasterKey) ? true : undefined;
    });

    // Alice logs in on a second device. Bob's sync announces her device list change, and his
    // client picks the new device up without being told.
    const alice2User = await newDevice(aliceUser);
    const alice2 = await cryptoClient(alice2User);
    await eventually("bob learns of alice's new device through /sync", async () =>
      (await knownDevices(bob, aliceUser.userId)).includes(alice2User.deviceId) ? true : undefined,
    );
    await eventually("alice's first device learns of her new device through /sync", async () =>
      (await knownDevices(alice, aliceUser.userId)).includes(alice2User.deviceId) ? true : undefined,
    );
    await eventually("alice's new device sees the room", () => (alice2.getRoom(roomId) ? true : undefined));

    // New messages from bob and from alice's first device reach the new device's keys.
    await within(bob.sendTextMessage(roomId, "bob, after the new device"), "bob sends again");
    await within(alice.sendTextMessage(roomId, "alice, after the new device"), "alice sends again");
    const newDeviceGot = await decrypted(alice2, roomId, "bob, after the new device", "alice's new device");
    expect(newDeviceGot.getSender()).toBe(bobUser.userId);
    await decrypted(alice2, roomId, "alice, after the new device", "alice's new device");
    // ...and the others still decrypt them.
    await decrypted(alice, roomId, "bob, after the new device", "alice");
    await decrypted(bob, roomId, "alice, after the new device", "bob");

    // Alice deletes the new device (password UIA): its keys go, and bob's client drops it.
    const path = `/_matrix/client/v3/devices/${enc(alice2User.deviceId)}`;
    const first = await request(hs.url, "DELETE", path, { token: aliceUser.accessToken, body: {} });
    expect(first.status).toBe(401);
    const deleted = await request(hs.url, "DELETE", path, { token: aliceUser.accessToken, body: { auth: passwordAuth(aliceUser, first.json.session) } });
    expect(deleted.status, JSON.stringify(deleted.json)).toBe(200);
    alice2.stopClient();
    expect((await hs.services.e2ee.deviceKeys.deviceKeysOf(aliceUser.userId)).has(alice2User.deviceId)).toBe(false);
    await eventually("bob's client drops alice's deleted device", async () =>
      (await knownDevices(bob, aliceUser.userId)).includes(alice2User.deviceId) ? undefined : true,
    );
    expect(await knownDevices(bob, aliceUser.userId)).toEqual([aliceUser.deviceId]);

    // Messages keep flowing (the session shared with the deleted device is fine to keep using).
    await within(bob.sendTextMessage(roomId, "still secret"), "bob sends after the deletion");
    await decrypted(alice, roomId, "still secret", "alice");
  }, 120_000);
});

// An encrypted room across Parley servers, as matrix-js-sdk's Rust crypto does it (issue 12): alice on
// hs1 creates an m.megolm.v1.aes-sha2 room and invites bob on hs2; each client decrypts what the other
// sent — the Megolm keys go as Olm to-device messages over federation, to devices each client learned
// through its own server's /keys/query, which asks the other server. Then bob logs in on a second
// device: hs2 tells hs1 (m.device_list_update), alice's /sync lists bob in device_lists.changed, her
// client queries his keys again and shares her session with the new device. Then carol on hs3 joins
// the room through hs1: her server is new to the room, and both other clients must find her device.
// Everything the SDKs know comes through /sync and the key endpoints — nothing is handed to them here.
// https://spec.matrix.org/latest/server-server-api/#device-management
// https://spec.matrix.org/latest/server-server-api/#end-to-end-encryption
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loginUser, passwordAuth, registerUser, type TestUser } from "./accounts-helpers.ts";
import { type Network, startNetwork } from "./federation-harness.ts";
import { request, type TestServer } from "./harness.ts";
import { sdk } from "./matrix-sdk.ts";
import { enc } from "./sync-helpers.ts";

const quiet = { trace() {}, debug() {}, info() {}, warn() {}, error() {}, getChild: () => quiet };
type Client = ReturnType<typeof sdk.createClient>;
type MatrixEvent = InstanceType<typeof sdk.MatrixEvent>;

const MEGOLM = "m.megolm.v1.aes-sha2";
/** The longest any one step may take before the test fails with a message naming it. */
const STEP_MS = 20_000;

let net: Network;
const clients: Client[] = [];
beforeAll(async () => {
  net = await startNetwork(3);
}, 120_000);
afterAll(async () => {
  for (const c of clients) c.stopClient();
  await net?.destroy();
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

/** A client of the server at `base` with Rust crypto (in memory), synced once. */
async function cryptoClient(base: string, user: TestUser): Promise<Client> {
  const client = sdk.createClient({ baseUrl: base, accessToken: user.accessToken, userId: user.userId, deviceId: user.deviceId, logger: quiet as never });
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

/** The room message `body` as this client decrypted it, once it has (skipping decryption failures). */
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

/** The device IDs `client` knows for `userId` (from what it tracked through /sync, no download). */
async function knownDevices(client: Client, userId: string): Promise<string[]> {
  const devices = await client.getCrypto()!.getUserDeviceInfo([userId], false);
  return [...(devices.get(userId)?.keys() ?? [])].sort();
}

/** Waits until `server` holds `user`'s device keys (the SDK uploads them after its first sync). */
async function uploaded(server: TestServer, user: TestUser): Promise<void> {
  await eventually(`${user.userId}/${user.deviceId} uploads device keys`, async () =>
    (await server.services.e2ee.deviceKeys.deviceKeysOf(user.userId)).has(user.deviceId) ? true : undefined,
  );
}

describe("an encrypted room across Parley servers with matrix-js-sdk Rust crypto", () => {
  it("users of two servers decrypt each other's messages; a new device and a third server's user decrypt what is sent after they appear", async () => {
    const [hs1, hs2, hs3] = net.servers as [TestServer, TestServer, TestServer];
    const aliceUser = await registerUser(hs1.url, "alice");
    const bobUser = await registerUser(hs2.url, "bob");
    const alice = await cryptoClient(hs1.url, aliceUser);
    const bob = await cryptoClient(hs2.url, bobUser);
    await uploaded(hs1, aliceUser);
    await uploaded(hs2, bobUser);
    // Cross-signing on both sides, so that each client checks the other's device signatures too.
    for (const [client, user] of [
      [alice, aliceUser],
      [bob, bobUser],
    ] as const) {
      await within(
        client.getCrypto()!.bootstrapCrossSigning({ authUploadDeviceSigningKeys: async (makeRequest) => void (await makeRequest(passwordAuth(user) as never)) }),
        `${user.userId} bootstraps cross-signing`,
      );
    }

    // An encrypted room on hs1; bob on hs2 is invited over federation and joins through the invite.
    const invited = new Promise<void>((resolve) => {
      bob.on(sdk.RoomEvent.MyMembership, (_room: unknown, membership: string) => {
        if (membership === "invite") resolve();
      });
    });
    const { room_id: roomId } = await within(
      alice.createRoom({
        preset: sdk.Preset.PublicChat,
        invite: [bobUser.userId],
        initial_state: [{ type: "m.room.encryption", state_key: "", content: { algorithm: MEGOLM } }],
      }),
      "alice creates the room",
    );
    await within(invited, "bob sees the invite from hs1");
    await within(bob.joinRoom(roomId, { viaServers: ["hs1.test"] }), "bob joins over federation");
    await eventually("alice sees bob joined", () => (alice.getRoom(roomId)?.getMember(bobUser.userId)?.membership === "join" ? true : undefined));
    await eventually("both clients see the room as encrypted", async () =>
      (await alice.getCrypto()!.isEncryptionEnabledInRoom(roomId)) && (await bob.getCrypto()!.isEncryptionEnabledInRoom(roomId)) ? true : undefined,
    );

    // Alice → bob, then bob → alice: both cross the servers encrypted, and both are decrypted.
    const { event_id: fromAlice } = await within(alice.sendTextMessage(roomId, "hello bob, secretly"), "alice sends");
    const bobGot = await decrypted(bob, roomId, "hello bob, secretly", "bob");
    expect(bobGot.getSender()).toBe(aliceUser.userId);
    expect(bobGot.getClearContent()?.msgtype).toBe("m.text");
    // What hs2 received over federation is the ciphertext.
    const wire = await request(hs2.url, "GET", `/_matrix/client/v3/rooms/${enc(roomId)}/event/${enc(fromAlice)}`, { token: bobUser.accessToken });
    expect(wire.status, JSON.stringify(wire.json)).toBe(200);
    expect(wire.json.type).toBe("m.room.encrypted");
    expect(wire.json.content.algorithm).toBe(MEGOLM);
    expect(JSON.stringify(wire.json)).not.toContain("secretly");

    await within(bob.sendTextMessage(roomId, "hi alice, also secretly"), "bob sends");
    const aliceGot = await decrypted(alice, roomId, "hi alice, also secretly", "alice");
    expect(aliceGot.getSender()).toBe(bobUser.userId);
    // Each trusts the other's device as signed by its owner (keys and cross-signing fetched across servers).
    expect((await alice.getCrypto()!.getDeviceVerificationStatus(bobUser.userId, bobUser.deviceId))?.signedByOwner).toBe(true);
    expect((await bob.getCrypto()!.getDeviceVerificationStatus(aliceUser.userId, aliceUser.deviceId))?.signedByOwner).toBe(true);

    // Bob logs in on a second device. hs2 sends hs1 an m.device_list_update; alice's sync names bob
    // in device_lists.changed, and her client picks the new device up without being told.
    const hs1Before = await hs1.services.e2ee.deviceLists.currentPosition();
    const login = await loginUser(hs2.url, bobUser.userId, bobUser.password);
    expect(login.status, JSON.stringify(login.json)).toBe(200);
    const bob2User: TestUser = { ...bobUser, accessToken: login.json.access_token, deviceId: login.json.device_id };
    const bob2 = await cryptoClient(hs2.url, bob2User);
    await uploaded(hs2, bob2User);
    await eventually("hs1 hears of bob's new device (m.device_list_update)", async () => {
      const now = await hs1.services.e2ee.deviceLists.currentPosition();
      return (await hs1.services.e2ee.deviceLists.changedUsers(aliceUser.userId, hs1Before, now)).includes(bobUser.userId) ? true : undefined;
    });
    await eventually("alice's client learns of bob's new device over federation", async () =>
      (await knownDevices(alice, bobUser.userId)).includes(bob2User.deviceId) ? true : undefined,
    );
    await eventually("bob's new device sees the room", () => (bob2.getRoom(roomId) ? true : undefined));

    await within(alice.sendTextMessage(roomId, "alice, after bob's new device"), "alice sends again");
    await within(bob.sendTextMessage(roomId, "bob, after his new device"), "bob sends again");
    const bob2Got = await decrypted(bob2, roomId, "alice, after bob's new device", "bob's new device");
    expect(bob2Got.getSender()).toBe(aliceUser.userId);
    await decrypted(bob2, roomId, "bob, after his new device", "bob's new device");
    await decrypted(bob, roomId, "alice, after bob's new device", "bob");
    await decrypted(alice, roomId, "bob, after his new device", "alice");

    // Carol on hs3 joins the public room through hs1: her server is new to the room, and the other
    // clients find her device when her join reaches them (a new member is a device list change).
    const carolUser = await registerUser(hs3.url, "carol");
    const carol = await cryptoClient(hs3.url, carolUser);
    await uploaded(hs3, carolUser);
    await within(carol.joinRoom(roomId, { viaServers: ["hs1.test"] }), "carol joins over federation");
    for (const [client, who] of [
      [alice, "alice"],
      [bob, "bob"],
    ] as const) {
      await eventually(`${who} sees carol joined`, () => (client.getRoom(roomId)?.getMember(carolUser.userId)?.membership === "join" ? true : undefined));
    }
    await within(alice.sendTextMessage(roomId, "welcome carol"), "alice sends to carol");
    await within(bob.sendTextMessage(roomId, "hello carol, from hs2"), "bob sends to carol");
    await within(carol.sendTextMessage(roomId, "thanks, from hs3"), "carol sends");
    await decrypted(carol, roomId, "welcome carol", "carol");
    await decrypted(carol, roomId, "hello carol, from hs2", "carol");
    for (const [client, who] of [
      [alice, "alice"],
      [bob, "bob"],
      [bob2, "bob's new device"],
    ] as const) {
      const got = await decrypted(client, roomId, "thanks, from hs3", who);
      expect(got.getSender()).toBe(carolUser.userId);
    }
  }, 120_000);
});

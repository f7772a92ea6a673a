// Encrypted rooms between Parley and the reference Synapse 1.67 on loopback (room version 10), with
// matrix-js-sdk and its Rust crypto as the clients: one user on each server, an m.megolm.v1.aes-sha2
// room created on either side with the other user invited, and messages both ways that each client
// decrypts. Everything the clients know comes through their own server: the room and its members over
// federation, the other user's device keys through /keys/query (asked of the other server), the Megolm
// room keys as Olm-encrypted to-device messages across the servers. Skipped (with the reason printed)
// when Synapse is not set up here: see tests/synapse-harness.ts.
// https://spec.matrix.org/latest/client-server-api/#end-to-end-encryption
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loginUser, passwordAuth, registerUser, type TestUser } from "./accounts-helpers.ts";
import { request } from "./harness.ts";
import { sdk } from "./matrix-sdk.ts";
import {
  type ParleyForSynapse,
  type RunningSynapse,
  type SynapseInstance,
  registerSynapseUser,
  startParleyForSynapse,
  startSynapse,
  synapseInteropMissing,
  synapseSetup,
} from "./synapse-harness.ts";

const setup = synapseSetup();
const missing = await synapseInteropMissing(setup);
if (missing) console.warn(`synapse-rooms-sdk tests skipped: ${missing}`);

const quiet = { trace() {}, debug() {}, info() {}, warn() {}, error() {}, getChild: () => quiet };
type Client = ReturnType<typeof sdk.createClient>;
type MatrixEvent = InstanceType<typeof sdk.MatrixEvent>;

const MEGOLM = "m.megolm.v1.aes-sha2";
const STEP_MS = 30_000;
const enc = encodeURIComponent;

function within<T>(promise: Promise<T>, what: string, ms = STEP_MS): Promise<T> {
  let timer: NodeJS.Timeout;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Polls `check` until it returns something other than undefined. */
async function eventually<T>(what: string, check: () => Promise<T | undefined> | T | undefined, ms = STEP_MS): Promise<T> {
  const deadline = performance.now() + ms;
  for (;;) {
    const value = await check();
    if (value !== undefined) return value;
    if (performance.now() > deadline) throw new Error(`timed out after ${ms} ms: ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** The room message `body` as this client decrypted it, once it has. */
async function decrypted(client: Client, roomId: string, body: string, who: string): Promise<MatrixEvent> {
  return eventually(`${who} decrypts "${body}"`, async () => {
    for (const event of client.getRoom(roomId)?.getLiveTimeline().getEvents() ?? []) {
      if (event.getWireType() !== "m.room.encrypted") continue;
      await client.decryptEventIfNeeded(event);
      if (event.isDecryptionFailure()) continue;
      if (event.getClearContent()?.body === body) return event;
    }
    return undefined;
  });
}

describe.skipIf(missing !== undefined)("encrypted rooms between Parley and Synapse with matrix-js-sdk", () => {
  let synapse: RunningSynapse;
  let hs1: SynapseInstance;
  let parley: ParleyForSynapse;
  const clients: Client[] = [];
  let patUser: TestUser; // on Parley
  let samUser: TestUser; // on Synapse
  let pat: Client;
  let sam: Client;

  async function cryptoClient(base: string, user: TestUser): Promise<Client> {
    const client = sdk.createClient({ baseUrl: base, accessToken: user.accessToken, userId: user.userId, deviceId: user.deviceId, logger: quiet as never });
    clients.push(client);
    await client.initRustCrypto({ useIndexedDB: false });
    const ready = new Promise<void>((resolve, reject) => {
      const onSync = (state: string) => {
        if (state === "PREPARED" || state === "SYNCING") {
          client.off(sdk.ClientEvent.Sync, onSync);
          resolve();
        } else if (state === "ERROR") reject(new Error(`${user.userId}: sync failed`));
      };
      client.on(sdk.ClientEvent.Sync, onSync);
    });
    await client.startClient({ initialSyncLimit: 20 });
    await within(ready, `${user.userId}: first sync`);
    await within(
      client.getCrypto()!.bootstrapCrossSigning({ authUploadDeviceSigningKeys: async (makeRequest) => void (await makeRequest(passwordAuth(user) as never)) }),
      `${user.userId} bootstraps cross-signing`,
    );
    return client;
  }

  beforeAll(async () => {
    if (!setup.ready) return;
    synapse = await startSynapse(setup, [setup.instances[0]!.name]);
    hs1 = synapse.instances[0]!;
    parley = await startParleyForSynapse(synapse.instances);
    patUser = await registerUser(parley.url, "pat");
    samUser = await registerSynapseUser(hs1, "sam");
    pat = await cryptoClient(parley.url, patUser);
    sam = await cryptoClient(hs1.clientUrl, samUser);
  }, 240_000);

  afterAll(async () => {
    for (const c of clients) c.stopClient();
    await parley?.destroy();
    await synapse?.release();
  });

  /** `creator` makes an encrypted v10 room and invites `guest`, who joins; both see it encrypted. */
  async function encryptedRoom(creator: Client, guest: Client, guestUserId: string): Promise<string> {
    const invited = new Promise<void>((resolve) => {
      guest.on(sdk.RoomEvent.MyMembership, (room: { roomId: string }, membership: string) => {
        if (membership === "invite") resolve();
      });
    });
    const { room_id: roomId } = await creator.createRoom({
      preset: sdk.Preset.PrivateChat,
      room_version: "10",
      invite: [guestUserId],
      initial_state: [{ type: "m.room.encryption", state_key: "", content: { algorithm: MEGOLM } }],
    });
    await within(invited, `${guestUserId} sees the invite`);
    await within(guest.joinRoom(roomId), `${guestUserId} joins`);
    await eventually("the creator sees the guest joined", () => (creator.getRoom(roomId)?.getMember(guestUserId)?.membership === "join" ? true : undefined));
    await eventually("both clients see the room as encrypted", async () =>
      (await creator.getCrypto()!.isEncryptionEnabledInRoom(roomId)) && (await guest.getCrypto()!.isEncryptionEnabledInRoom(roomId)) ? true : undefined,
    );
    return roomId;
  }

  /** Each client sends, the other decrypts; what crossed the servers was ciphertext. */
  async function talk(roomId: string) {
    const { event_id: fromPat } = await within(pat.sendTextMessage(roomId, "from Parley, secretly"), "pat sends");
    const samGot = await decrypted(sam, roomId, "from Parley, secretly", "sam (Synapse)");
    expect(samGot.getSender()).toBe(patUser.userId);
    // Synapse holds what Parley sent: Megolm ciphertext only.
    const wire = await request(hs1.clientUrl, "GET", `/_matrix/client/v3/rooms/${enc(roomId)}/event/${enc(fromPat)}`, { token: samUser.accessToken });
    expect(wire.json.type).toBe("m.room.encrypted");
    expect(wire.json.content.algorithm).toBe(MEGOLM);
    expect(JSON.stringify(wire.json)).not.toContain("secretly");

    const { event_id: fromSam } = await within(sam.sendTextMessage(roomId, "from Synapse, secretly"), "sam sends");
    const patGot = await decrypted(pat, roomId, "from Synapse, secretly", "pat (Parley)");
    expect(patGot.getSender()).toBe(samUser.userId);
    const onParley = await request(parley.url, "GET", `/_matrix/client/v3/rooms/${enc(roomId)}/event/${enc(fromSam)}`, { token: patUser.accessToken });
    expect(onParley.json.type).toBe("m.room.encrypted");
    expect(JSON.stringify(onParley.json)).not.toContain("secretly");
  }

  it("in a room created on Parley, messages cross both ways encrypted and each client decrypts", async () => {
    await talk(await encryptedRoom(pat, sam, samUser.userId));
  }, 180_000);

  let synapseRoom: string;

  it("in a room created on Synapse, messages cross both ways encrypted and each client decrypts", async () => {
    synapseRoom = await encryptedRoom(sam, pat, patUser.userId);
    await talk(synapseRoom);
  }, 180_000);

  // Now that they share a room, each server tells the other of its users' device changes
  // (m.device_list_update), and each client learns of the other's new device through its /sync
  // (device_lists.changed), then shares its next room key with it.
  // https://spec.matrix.org/latest/server-server-api/#device-management
  it("a new device on either side is learnt by the other's client through the shared room, and decrypts what comes next", async () => {
    const roomId = synapseRoom;
    const known = async (client: Client, userId: string) => [...((await client.getCrypto()!.getUserDeviceInfo([userId], false)).get(userId)?.keys() ?? [])];

    const login = await loginUser(hs1.clientUrl, samUser.userId, samUser.password);
    expect(login.status, JSON.stringify(login.json)).toBe(200);
    const sam2User = { ...samUser, accessToken: login.json.access_token, deviceId: login.json.device_id };
    const sam2 = await cryptoClient(hs1.clientUrl, sam2User);
    await eventually("pat's client learns of sam's new device", async () => ((await known(pat, samUser.userId)).includes(sam2User.deviceId) ? true : undefined));
    await eventually("sam's new device sees the room", () => (sam2.getRoom(roomId) ? true : undefined));
    await within(pat.sendTextMessage(roomId, "for sam's new device"), "pat sends");
    expect((await decrypted(sam2, roomId, "for sam's new device", "sam's new device")).getSender()).toBe(patUser.userId);

    const again = await loginUser(parley.url, patUser.userId, patUser.password);
    expect(again.status, JSON.stringify(again.json)).toBe(200);
    const pat2User = { ...patUser, accessToken: again.json.access_token, deviceId: again.json.device_id };
    const pat2 = await cryptoClient(parley.url, pat2User);
    await eventually("sam's client learns of pat's new device", async () => ((await known(sam, patUser.userId)).includes(pat2User.deviceId) ? true : undefined));
    await eventually("pat's new device sees the room", () => (pat2.getRoom(roomId) ? true : undefined));
    await within(sam.sendTextMessage(roomId, "for pat's new device"), "sam sends");
    expect((await decrypted(pat2, roomId, "for pat's new device", "pat's new device")).getSender()).toBe(samUser.userId);
  }, 180_000);
});

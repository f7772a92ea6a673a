// Parley's client (ParleyClient + the E2EE machine on our Olm/Megolm) and matrix-js-sdk with Rust
// crypto (vodozemac) in one encrypted room on a Parley server: each decrypts the other's messages,
// across Megolm rotations (rotation_period_msgs: 2) and when a new device of either side appears; and
// what the SDK sent, tampered with, is reported by our client, never shown as valid; and the two
// verify each other's devices with SAS (emoji), and with cross-signing set up on both sides the SAS
// is published as signatures each side's other devices (and the other user) trust.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { TimelineEvent } from "../../client/room.ts";
import type { SasVerification } from "../../client/crypto/sas.ts";
import { deviceTrust, type KeysQueryResponse, masterKeyOf, userTrust } from "../../client/crypto/cross-signing.ts";
import { loginUser, passwordAuth, registerUser, type TestUser } from "../accounts-helpers.ts";
import { startTestServer, type TestServer } from "../harness.ts";
import { elementClient, eventually as eventuallyWithin, sdk, type SdkClient } from "../matrix-sdk.ts";
import { type CryptoClient, cryptoClientFor, memberJoined, newDevice, timelineEvent, untilSynced } from "./e2ee-helpers.ts";

await import("@matrix-org/matrix-sdk-crypto-wasm");
const { EventShieldReason, VerificationPhase, VerifierEvent } = await import("matrix-js-sdk/lib/crypto-api/index.js");

type MatrixEvent = InstanceType<typeof sdk.MatrixEvent>;
const STEP_MS = 15_000;
const eventually = <T>(what: string, check: () => Promise<T | undefined> | T | undefined, ms = STEP_MS) => eventuallyWithin(what, check, ms);

let hs: TestServer;
const sdkClients: SdkClient[] = [];
const ours: CryptoClient[] = [];
beforeAll(async () => {
  hs = await startTestServer();
});
afterAll(async () => {
  for (const c of sdkClients) c.stopClient();
  await Promise.all(ours.map((c) => c.client.stop()));
  await hs.destroy();
});

/** A matrix-js-sdk client as Element runs it (Rust crypto in memory, lazy-loaded members), synced once. */
async function sdkClient(user: TestUser): Promise<SdkClient> {
  const client = await elementClient(hs.url, user, sdkClients);
  await eventually(`${user.userId} uploads its device keys`, async () => ((await hs.services.e2ee.deviceKeys.deviceKeysOf(user.userId)).has(user.deviceId) ? true : undefined));
  return client;
}

/** The SDK's decryption of the room message with this body (failing the step on a timeout). */
async function sdkDecrypted(client: SdkClient, roomId: string, body: string): Promise<MatrixEvent> {
  return eventually(`${client.getUserId()}/${client.getDeviceId()} decrypts "${body}"`, async () => {
    for (const event of client.getRoom(roomId)?.getLiveTimeline().getEvents() ?? []) {
      if (event.getWireType() !== "m.room.encrypted") continue;
      await client.decryptEventIfNeeded(event);
      if (!event.isDecryptionFailure() && event.getClearContent()?.body === body) return event;
    }
    return undefined;
  });
}

async function oursDecrypted(c: CryptoClient, roomId: string, eventId: string): Promise<TimelineEvent> {
  const event = await timelineEvent(c, roomId, eventId);
  expect(event.encrypted, `${c.client.userId}/${c.client.deviceId} decrypts ${eventId}: ${JSON.stringify(event.encrypted)}`).toMatchObject({ decrypted: true });
  return event;
}

async function parleyUser(name: string): Promise<CryptoClient> {
  const user = await registerUser(hs.url, name);
  const c = await cryptoClientFor(hs.url, user);
  ours.push(c);
  return c;
}

/** A room created by our client with rotation every 2 messages, which the SDK user joined. */
async function sharedRoom(alice: CryptoClient, bob: SdkClient, bobUser: TestUser): Promise<string> {
  const { room_id: roomId } = await alice.client.http.request<{ room_id: string }>("POST", "/_matrix/client/v3/createRoom", {
    body: {
      preset: "private_chat",
      invite: [bobUser.userId],
      initial_state: [{ type: "m.room.encryption", state_key: "", content: { algorithm: "m.megolm.v1.aes-sha2", rotation_period_msgs: 2 } }],
    },
  });
  await eventually("bob sees the invite", () => (bob.getRoom(roomId)?.getMyMembership() === "invite" ? true : undefined));
  await bob.joinRoom(roomId);
  await memberJoined(alice, roomId, bobUser.userId);
  await eventually("bob's client sees the room as encrypted", async () => ((await bob.getCrypto()!.isEncryptionEnabledInRoom(roomId)) ? true : undefined));
  await untilSynced(alice.client, "alice sees the room encrypted", () => alice.client.room(roomId)?.encrypted);
  return roomId;
}

/**
 * The SDK asks our client's device for verification and starts SAS, our client accepting: returns
 * once both sides show the SAS (the SDK's emoji and confirm, our verification, the SDK's finish).
 */
async function sdkStartsSas(sdk: SdkClient, ours: CryptoClient) {
  const incoming = new Promise<SasVerification>((resolve) => {
    ours.e2ee.onVerificationRequest = resolve;
  });
  const request = await sdk.getCrypto()!.requestDeviceVerification(ours.client.userId, ours.client.deviceId);
  const verification = await incoming;
  await verification.ready();
  await eventually("the SDK sees the request accepted", () => (request.phase === VerificationPhase.Ready ? true : undefined));
  const verifier = await request.startVerification("m.sas.v1");
  const shown = new Promise<{ emoji: string[]; confirm(): Promise<void> }>((resolve) => {
    verifier.on(VerifierEvent.ShowSas, (sas) => resolve({ emoji: (sas.sas.emoji ?? []).map(([e]) => e), confirm: () => sas.confirm() }));
  });
  const sdkDone = verifier.verify();
  await verification.keysExchanged;
  return { request, ours: verification, sdkSas: await shown, sdkDone };
}

describe("Parley's client and matrix-js-sdk (Rust crypto) in one encrypted room", () => {
  it("each decrypts the other's messages, across Megolm rotations", async () => {
    const alice = await parleyUser("interalice");
    const bobUser = await registerUser(hs.url, "interbob");
    const bob = await sdkClient(bobUser);
    const roomId = await sharedRoom(alice, bob, bobUser);

    // Three messages from alice: sessions of 2 and 1 (rotation_period_msgs), each decrypted by the SDK.
    const sent: string[] = [];
    for (let i = 0; i < 3; i++) sent.push(await alice.client.sendText(roomId, `parley says ${i}`));
    const sessions = new Set<string>();
    for (let i = 0; i < 3; i++) {
      const event = await sdkDecrypted(bob, roomId, `parley says ${i}`);
      expect(event.getId()).toBe(sent[i]);
      expect(event.getSender()).toBe(alice.client.userId);
      sessions.add(event.getWireContent().session_id as string);
    }
    expect(sessions.size).toBe(2);
    // The SDK attributes them to alice's device (a device not cross-signed: UNSIGNED_DEVICE, not UNKNOWN_DEVICE).
    const info = await bob.getCrypto()!.getEncryptionInfoForEvent(await sdkDecrypted(bob, roomId, "parley says 2"));
    expect(info?.shieldReason).toBe(EventShieldReason.UNSIGNED_DEVICE);

    // Three from the SDK (which rotates by the same setting); our client decrypts each.
    const fromSdk: string[] = [];
    for (let i = 0; i < 3; i++) fromSdk.push((await bob.sendTextMessage(roomId, `sdk says ${i}`)).event_id);
    const sdkSessions = new Set<string>();
    for (const [i, eventId] of fromSdk.entries()) {
      const event = await oursDecrypted(alice, roomId, eventId);
      expect(event.content).toMatchObject({ msgtype: "m.text", body: `sdk says ${i}` });
      expect(event.sender).toBe(bobUser.userId);
      expect(event.encrypted).toMatchObject({ decrypted: true, senderDevice: bobUser.deviceId, verified: "unverified" });
      sdkSessions.add((await alice.client.http.request("GET", `/_matrix/client/v3/rooms/${encodeURIComponent(roomId)}/event/${encodeURIComponent(eventId)}`)).content.session_id);
    }
    expect(sdkSessions.size).toBe(2);
  }, 60_000);

  it("a new device on either side decrypts what is sent after it appeared", async () => {
    const alice = await parleyUser("devalice");
    const bobUser = await registerUser(hs.url, "devbob");
    const bob = await sdkClient(bobUser);
    const roomId = await sharedRoom(alice, bob, bobUser);
    await alice.client.sendText(roomId, "before any new device");
    await sdkDecrypted(bob, roomId, "before any new device");

    // Bob logs in a second SDK device: alice's next message reaches it.
    const login = await loginUser(hs.url, bobUser.userId, bobUser.password);
    const bob2User = { ...bobUser, accessToken: login.json.access_token, deviceId: login.json.device_id };
    const bob2 = await sdkClient(bob2User);
    await eventually("bob's second device sees the room", () => (bob2.getRoom(roomId) ? true : undefined));
    await untilSynced(alice.client, "alice learns bob's new device", async () => {
      await alice.e2ee.devices.ensureUpToDate([bobUser.userId]);
      return alice.e2ee.devices.device(bobUser.userId, bob2User.deviceId);
    });
    await alice.client.sendText(roomId, "for both of bob's devices");
    await sdkDecrypted(bob2, roomId, "for both of bob's devices");
    await sdkDecrypted(bob, roomId, "for both of bob's devices");

    // Alice's second device (ours): the SDK's next message reaches it.
    const alice2 = await newDevice(hs.url, alice);
    ours.push(alice2);
    await untilSynced(alice2.client, "alice's new device sees the room", () => alice2.client.room(roomId));
    await eventually("bob's client learns alice's new device", async () => {
      const devices = await bob.getCrypto()!.getUserDeviceInfo([alice.client.userId], true);
      return devices.get(alice.client.userId)?.has(alice2.client.deviceId) ? true : undefined;
    });
    const { event_id: eventId } = await bob.sendTextMessage(roomId, "for both of alice's devices");
    expect((await oursDecrypted(alice2, roomId, eventId)).content.body).toBe("for both of alice's devices");
    expect((await oursDecrypted(alice, roomId, eventId)).content.body).toBe("for both of alice's devices");
  }, 60_000);

  it("reports the SDK's messages tampered with: a modified ciphertext, a replayed index, another sender", async () => {
    const alice = await parleyUser("tampalice");
    const bobUser = await registerUser(hs.url, "tampbob");
    const bob = await sdkClient(bobUser);
    const roomId = await sharedRoom(alice, bob, bobUser);
    const { event_id: eventId } = await bob.sendTextMessage(roomId, "genuine");
    const genuine = await oursDecrypted(alice, roomId, eventId);
    expect(genuine.content.body).toBe("genuine");
    const wire = await alice.client.http.request<TimelineEvent>("GET", `/_matrix/client/v3/rooms/${encodeURIComponent(roomId)}/event/${encodeURIComponent(eventId)}`);

    const ciphertext = wire.content.ciphertext as string;
    const at = ciphertext.length - 20;
    const flipped = ciphertext.slice(0, at) + (ciphertext[at] === "A" ? "B" : "A") + ciphertext.slice(at + 1);
    const modified = await alice.e2ee.decryptRoomEvent(roomId, { ...wire, event_id: "$modified", content: { ...wire.content, ciphertext: flipped } });
    expect(modified.encrypted).toEqual({ decrypted: false, error: "BAD_MAC" });

    const replayed = await alice.e2ee.decryptRoomEvent(roomId, { ...wire, event_id: "$replayed", origin_server_ts: wire.origin_server_ts + 1 });
    expect(replayed.encrypted).toEqual({ decrypted: false, error: "REPLAYED_INDEX" });

    // The same event said to come from a user none of whose devices holds that session.
    const carol = await registerUser(hs.url, "tampcarol");
    const misattributed = await alice.e2ee.decryptRoomEvent(roomId, { ...wire, sender: carol.userId });
    expect(misattributed.encrypted).toMatchObject({ decrypted: true, verified: "unknown_device" });
    expect(misattributed.encrypted).not.toHaveProperty("senderDevice");
  }, 60_000);

  it("when the SDK shares keys only with verified devices, our client reports its messages as withheld (m.unverified), not just missing", async () => {
    const alice = await parleyUser("whalice");
    const bobUser = await registerUser(hs.url, "whbob");
    const bob = await sdkClient(bobUser);
    const roomId = await sharedRoom(alice, bob, bobUser);
    bob.getCrypto()!.globalBlacklistUnverifiedDevices = true;
    const { event_id: eventId } = await bob.sendTextMessage(roomId, "for verified devices only");
    const failure = await eventually("our client learns why it has no key", async () => {
      const e = (await timelineEvent(alice, roomId, eventId)).encrypted;
      return e && !e.decrypted && e.withheld ? e : undefined;
    });
    expect(failure).toMatchObject({ decrypted: false, error: "UNKNOWN_SESSION", withheld: { code: "m.unverified" } });
  }, 60_000);

  it("verify each other's devices with SAS (emoji), the SDK asking and our client answering", async () => {
    const alice = await parleyUser("sasalice");
    const bobUser = await registerUser(hs.url, "sasbob");
    const bob = await sdkClient(bobUser);
    await sharedRoom(alice, bob, bobUser);

    const { request, ours, sdkSas, sdkDone } = await sdkStartsSas(bob, alice);
    // Both sides show the same seven emoji (what the two users compare).
    expect(ours.emojis()!.map((e) => e.emoji)).toEqual(sdkSas.emoji);
    expect(sdkSas.emoji).toHaveLength(7);
    await Promise.all([ours.confirm(), sdkSas.confirm()]);
    expect(await ours.done).toContain(`ed25519:${bobUser.deviceId}`);
    await sdkDone;
    await eventually("the SDK's request is done", () => (request.phase === VerificationPhase.Done ? true : undefined));

    // Each now trusts the other's device: our client marks bob's messages verified; the SDK alice's device.
    expect(alice.e2ee.devices.device(bobUser.userId, bobUser.deviceId)?.verified).toBe(true);
    expect((await bob.getCrypto()!.getDeviceVerificationStatus(alice.client.userId, alice.client.deviceId))?.localVerified).toBe(true);
  }, 60_000);

  it("with cross-signing on both sides, SAS publishes the trust: we sign the SDK user's master key, the SDK signs ours", async () => {
    const aliceUser = await registerUser(hs.url, "xsalice");
    const alice = await cryptoClientFor(hs.url, aliceUser);
    ours.push(alice);
    const bobUser = await registerUser(hs.url, "xsbob");
    const bob = await sdkClient(bobUser);
    await sharedRoom(alice, bob, bobUser);
    // Our client sets up cross-signing through its E2EE machine (the server asks for the password);
    // the SDK as Element does.
    expect(alice.e2ee.hasCrossSigningKeys()).toBe(false);
    await alice.e2ee.bootstrapCrossSigning({ password: aliceUser.password });
    expect(alice.e2ee.hasCrossSigningKeys()).toBe(true);
    await bob.getCrypto()!.bootstrapCrossSigning({ authUploadDeviceSigningKeys: async (makeRequest) => void (await makeRequest(passwordAuth(bobUser) as never)) });
    const aliceQuery = async (): Promise<KeysQueryResponse> =>
      alice.client.http.request("POST", "/_matrix/client/v3/keys/query", { body: { device_keys: { [alice.client.userId]: [], [bobUser.userId]: [] } } });
    const aliceMaster = masterKeyOf(await aliceQuery(), alice.client.userId)!;
    const bobMaster = await eventually("bob's master key is published", async () => masterKeyOf(await aliceQuery(), bobUser.userId));
    // Alice's own device is cross-signed by her new keys (what bob's SDK will check).
    expect(deviceTrust(await aliceQuery(), alice.client.userId, alice.client.deviceId, { userId: alice.client.userId, ownMasterKey: aliceMaster })).toMatchObject({ trusted: true });
    // Before the verification, neither trusts the other's user.
    expect(userTrust(await aliceQuery(), bobUser.userId, { userId: alice.client.userId, ownMasterKey: aliceMaster }).trusted).toBe(false);
    await alice.e2ee.devices.refresh([bobUser.userId]);
    const errors: unknown[] = [];
    alice.e2ee.onCrossSigningError = (err) => errors.push(err);

    const { ours: v, sdkSas, sdkDone } = await sdkStartsSas(bob, alice);
    await Promise.all([v.confirm(), sdkSas.confirm()]);
    // Each side's MAC covered its master key.
    expect((await v.done).sort()).toEqual([`ed25519:${bobMaster}`, `ed25519:${bobUser.deviceId}`].sort());
    await sdkDone;

    // Our machine published bob's master key signed by alice's user-signing key: the server's
    // /keys/query shows it to everyone, and alice's trust follows from her own master key alone.
    const published = await eventually("alice's signature of bob's master key", async () => {
      const trust = userTrust(await aliceQuery(), bobUser.userId, { userId: alice.client.userId, ownMasterKey: aliceMaster });
      return trust.trusted ? trust : undefined;
    });
    expect(published).toEqual({ trusted: true, masterKey: bobMaster, via: "user_signing" });
    expect(errors).toEqual([]);
    // A second device of alice's that trusts only her master key trusts bob's device through it.
    const alice2 = await newDevice(hs.url, alice);
    ours.push(alice2);
    await alice2.e2ee.trustMasterKey(alice.client.userId, aliceMaster);
    await alice2.e2ee.devices.ensureUpToDate([alice.client.userId, bobUser.userId]);
    expect(alice2.e2ee.isVerified(alice2.e2ee.devices.device(bobUser.userId, bobUser.deviceId)!)).toBe(true);
    // And the SDK, which signed alice's master key after the SAS, sees her user and her device as cross-signing verified.
    const status = await eventually("the SDK trusts alice through cross-signing", async () => {
      const s = await bob.getCrypto()!.getUserVerificationStatus(alice.client.userId);
      return s.isCrossSigningVerified() ? s : undefined;
    });
    expect(status.isCrossSigningVerified()).toBe(true);
    expect((await bob.getCrypto()!.getDeviceVerificationStatus(alice.client.userId, alice.client.deviceId))?.crossSigningVerified).toBe(true);
  }, 90_000);
});

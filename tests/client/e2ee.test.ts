// The E2EE machine (client/crypto/e2ee.ts) on Parley clients against a real Parley: keys published
// and replenished, Megolm messages both ways between a client on our Olm/Megolm and one on libolm,
// rotation by count and by a member leaving, a later device, a restart on the store, key requests
// answered only for our own verified devices, and tampering reported (a modified ciphertext, a
// replayed index, a session of another device than the sender's).
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import {
  CrossSigningIdentity,
  deviceTrust,
  type KeysQueryResponse,
  masterKeyOf,
  uploadCrossSigningKeys,
  uploadSignatures,
} from "../../client/crypto/cross-signing.ts";
import type { SasVerification } from "../../client/crypto/sas.ts";
import { E2EE } from "../../client/crypto/e2ee.ts";
import { FileCryptoStore, MemoryCryptoStore } from "../../client/crypto/store.ts";
import type { OlmImplementation } from "../../client/crypto/types.ts";
import type { TimelineEvent } from "../../client/room.ts";
import { curve25519Generate, ed25519Generate, ed25519Sign, toBase64 } from "../../client/crypto/primitives.ts";
import { signJson } from "../../client/crypto/signed-json.ts";
import { registerUser, type TestUser } from "../accounts-helpers.ts";
import { request, startTestServer, type TestServer } from "../harness.ts";
import { type CryptoClient, memberJoined, newDevice, registerCryptoClient, timelineEvent, untilSynced } from "./e2ee-helpers.ts";
import { libolmImplementation } from "./libolm-impl.ts";

let hs: TestServer;
let libolm: OlmImplementation;
const started: CryptoClient[] = [];
beforeAll(async () => {
  [hs, libolm] = await Promise.all([startTestServer(), libolmImplementation()]);
});
afterAll(async () => {
  await Promise.all(started.map((c) => c.client.stop()));
  await hs.destroy();
});

async function user(name: string, impl: "ours" | "libolm" = "ours", store?: FileCryptoStore): Promise<CryptoClient> {
  const c = await registerCryptoClient(hs.url, name, impl === "libolm" ? libolm : undefined, store);
  started.push(c);
  return c;
}

async function device(of: CryptoClient, impl: "ours" | "libolm" = "ours"): Promise<CryptoClient> {
  const c = await newDevice(hs.url, of, impl === "libolm" ? libolm : undefined);
  started.push(c);
  return c;
}

/** An encrypted room of `owner` that `others` joined (and that everyone has synced). */
async function encryptedRoom(owner: CryptoClient, others: CryptoClient[], extra: Record<string, unknown> = {}): Promise<string> {
  const { room_id: roomId } = await owner.client.http.request<{ room_id: string }>("POST", "/_matrix/client/v3/createRoom", {
    body: {
      preset: "private_chat",
      invite: [...new Set(others.map((o) => o.client.userId))].filter((u) => u !== owner.client.userId),
      initial_state: [{ type: "m.room.encryption", state_key: "", content: { algorithm: "m.megolm.v1.aes-sha2", ...extra } }],
    },
  });
  for (const other of others) if (other.client.userId !== owner.client.userId) await other.client.joinRoom(roomId);
  for (const other of others) await memberJoined(owner, roomId, other.client.userId);
  for (const c of [owner, ...others]) await untilSynced(c.client, "room encrypted", () => c.client.room(roomId)?.encrypted);
  return roomId;
}

async function wireEvent(c: CryptoClient, roomId: string, eventId: string): Promise<TimelineEvent> {
  return c.client.http.request("GET", `/_matrix/client/v3/rooms/${encodeURIComponent(roomId)}/event/${encodeURIComponent(eventId)}`);
}

async function decryptedBody(c: CryptoClient, roomId: string, eventId: string): Promise<TimelineEvent> {
  const event = await timelineEvent(c, roomId, eventId);
  expect(event.encrypted, `${c.client.userId} decrypts ${eventId}: ${JSON.stringify(event.encrypted)}`).toMatchObject({ decrypted: true });
  return event;
}

/**
 * A device that publishes signed device keys (and one signed one-time key when asked) but runs no
 * Olm: what it receives is read raw from /sync.
 */
async function bareDevice(name: string, withOneTimeKey: boolean) {
  const user: TestUser = await registerUser(hs.url, `${name}${Date.now().toString(36)}`);
  const ed = ed25519Generate();
  const curve = curve25519Generate();
  const sign = (message: string) => toBase64(ed25519Sign(ed.privateKey, message));
  const keyId = `ed25519:${user.deviceId}`;
  const deviceKeys = signJson(
    {
      user_id: user.userId,
      device_id: user.deviceId,
      algorithms: ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
      keys: { [`curve25519:${user.deviceId}`]: toBase64(curve.publicKey), [keyId]: toBase64(ed.publicKey) },
    },
    user.userId,
    keyId,
    sign,
  );
  const body: Record<string, unknown> = { device_keys: deviceKeys };
  if (withOneTimeKey) body.one_time_keys = { "signed_curve25519:AAAAAQ": signJson({ key: toBase64(curve25519Generate().publicKey) }, user.userId, keyId, sign) };
  expect((await request(hs.url, "POST", "/_matrix/client/v3/keys/upload", { token: user.accessToken, body })).status).toBe(200);
  let since: string | undefined;
  return {
    user,
    curve25519: toBase64(curve.publicKey),
    /** The to-device events that arrived since the last call. */
    async toDevice(): Promise<Array<{ type: string; sender: string; content: Record<string, unknown> }>> {
      const res = await request(hs.url, "GET", `/_matrix/client/v3/sync?timeout=0${since ? `&since=${encodeURIComponent(since)}` : ""}`, { token: user.accessToken });
      since = res.json.next_batch as string;
      return ((res.json.to_device as { events?: [] } | undefined)?.events ?? []) as Array<{ type: string; sender: string; content: Record<string, unknown> }>;
    },
    async sendToDevice(to: CryptoClient, type: string, content: Record<string, unknown>): Promise<void> {
      const path = `/_matrix/client/v3/sendToDevice/${encodeURIComponent(type)}/${Date.now()}${Math.random()}`;
      const res = await request(hs.url, "PUT", path, { token: user.accessToken, body: { messages: { [to.client.userId]: { [to.client.deviceId]: content } } } });
      expect(res.status).toBe(200);
    },
  };
}

async function oneTimeKeyCount(c: CryptoClient): Promise<number> {
  const res = await c.client.http.request<{ one_time_key_counts: Record<string, number> }>("POST", "/_matrix/client/v3/keys/upload", { body: {} });
  return res.one_time_key_counts.signed_curve25519 ?? 0;
}

describe("E2EE machine", () => {
  it("publishes signed device keys, one-time keys and a fallback key, and replenishes one-time keys as they are claimed", async () => {
    const alice = await user("keysalice");
    const bob = await user("keysbob");
    const query = await bob.client.http.request("POST", "/_matrix/client/v3/keys/query", { body: { device_keys: { [alice.client.userId]: [] } } });
    const keys = query.device_keys[alice.client.userId][alice.client.deviceId];
    expect(keys.keys[`ed25519:${alice.client.deviceId}`]).toBe(alice.e2ee.identityKeys().ed25519);
    expect(keys.algorithms).toEqual(["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"]);
    expect(await oneTimeKeyCount(alice)).toBe(50);

    // Bob claims 20 of them; alice's next sync sees the count drop and tops it up to half the maximum.
    for (let i = 0; i < 20; i++) {
      await bob.client.http.request("POST", "/_matrix/client/v3/keys/claim", {
        body: { one_time_keys: { [alice.client.userId]: { [alice.client.deviceId]: "signed_curve25519" } } },
      });
    }
    expect(await oneTimeKeyCount(alice)).toBe(30);
    // A to-device message wakes alice's long-poll (claims alone need not).
    await bob.client.sendToDevice("org.example.wake", { [alice.client.userId]: { [alice.client.deviceId]: {} } });
    await untilSynced(alice.client, "one-time keys replenished", async () => (await oneTimeKeyCount(alice)) === 50);

    // A fallback key was published too (the server hands it out once the one-time keys run out).
    const sync = await alice.client.http.request("GET", "/_matrix/client/v3/sync", { query: { timeout: 0 } });
    expect(sync.device_unused_fallback_key_types).toEqual(["signed_curve25519"]);
    await alice.client.stop();
  });

  it("a client on our Olm/Megolm and one on libolm exchange encrypted messages both ways", async () => {
    const alice = await user("alice", "ours");
    const bob = await user("bob", "libolm");
    const roomId = await encryptedRoom(alice, [bob]);

    const fromAlice = await alice.client.sendText(roomId, "hello bob, secretly");
    const wire = await wireEvent(bob, roomId, fromAlice);
    expect(wire.type).toBe("m.room.encrypted");
    expect(JSON.stringify(wire)).not.toContain("secretly");
    const got = await decryptedBody(bob, roomId, fromAlice);
    expect(got.type).toBe("m.room.message");
    expect(got.content).toMatchObject({ msgtype: "m.text", body: "hello bob, secretly" });
    expect(got.encrypted).toMatchObject({ decrypted: true, senderDevice: alice.client.deviceId, senderCurve25519: alice.e2ee.identityKeys().curve25519, verified: "unverified" });

    const fromBob = await bob.client.sendText(roomId, "hi alice");
    expect((await decryptedBody(alice, roomId, fromBob)).content.body).toBe("hi alice");
    // Alice reads her own message too (her own copy of the session).
    expect((await decryptedBody(alice, roomId, fromAlice)).content.body).toBe("hello bob, secretly");

    // Once alice verifies bob's device, his messages say so.
    await alice.e2ee.setDeviceVerified(bob.client.userId, bob.client.deviceId);
    const verifiedOne = await bob.client.sendText(roomId, "now verified");
    expect((await decryptedBody(alice, roomId, verifiedOne)).encrypted).toMatchObject({ verified: "verified", senderDevice: bob.client.deviceId });
  });

  it("rotates the Megolm session after rotation_period_msgs messages and when a member leaves", async () => {
    const alice = await user("rotalice");
    const bob = await user("rotbob", "libolm");
    const carol = await user("rotcarol");
    const roomId = await encryptedRoom(alice, [bob, carol], { rotation_period_msgs: 2 });

    const sent: string[] = [];
    for (let i = 0; i < 5; i++) sent.push(await alice.client.sendText(roomId, `message ${i}`));
    const sessions = await Promise.all(sent.map(async (id) => (await wireEvent(bob, roomId, id)).content.session_id as string));
    expect(new Set(sessions).size).toBe(3); // 2 + 2 + 1
    expect(sessions[0]).toBe(sessions[1]);
    expect(sessions[1]).not.toBe(sessions[2]);
    for (const [i, id] of sent.entries()) expect((await decryptedBody(bob, roomId, id)).content.body).toBe(`message ${i}`);

    // Carol leaves: the next message is in a new session she never receives.
    await carol.client.leaveRoom(roomId);
    await untilSynced(alice.client, "carol's leave", () => alice.client.room(roomId)?.members().get(carol.client.userId)?.membership === "leave");
    const afterLeave = await alice.client.sendText(roomId, "carol is gone");
    const afterSession = (await wireEvent(bob, roomId, afterLeave)).content.session_id;
    expect(afterSession).not.toBe(sessions[4]);
    expect((await decryptedBody(bob, roomId, afterLeave)).content.body).toBe("carol is gone");
    const carolTries = await carol.e2ee.decryptRoomEvent(roomId, await wireEvent(alice, roomId, afterLeave));
    expect(carolTries.encrypted).toEqual({ decrypted: false, error: "UNKNOWN_SESSION" });
  });

  it("a device that appears later gets the keys of what is sent after, and the room keeps one session", async () => {
    const alice = await user("latealice");
    const bob = await user("latebob", "libolm");
    const roomId = await encryptedRoom(alice, [bob]);
    const before = await alice.client.sendText(roomId, "before bob's second device");
    await decryptedBody(bob, roomId, before);

    const bob2 = await device(bob);
    await untilSynced(alice.client, "bob's new device", async () => {
      await alice.e2ee.devices.ensureUpToDate([bob.client.userId]);
      return alice.e2ee.devices.device(bob.client.userId, bob2.client.deviceId);
    });
    const after = await alice.client.sendText(roomId, "after bob's second device");
    // Same session (nobody left), shared with the new device at its current index.
    expect((await wireEvent(bob, roomId, after)).content.session_id).toBe((await wireEvent(bob, roomId, before)).content.session_id);
    expect((await decryptedBody(bob2, roomId, after)).content.body).toBe("after bob's second device");
    expect((await decryptedBody(bob, roomId, after)).content.body).toBe("after bob's second device");
    // The earlier message stays unreadable to the new device (its key starts at the later index).
    const old = await bob2.e2ee.decryptRoomEvent(roomId, await wireEvent(bob2, roomId, before));
    expect(old.encrypted).toMatchObject({ decrypted: false });
  });

  it("trusts another user's devices that user cross-signed, once their master key is verified", async () => {
    const alice = await user("csalice");
    const bob = await user("csbob");
    const roomId = await encryptedRoom(alice, [bob]);
    const identity = CrossSigningIdentity.generate(bob.client.userId);
    await uploadCrossSigningKeys(bob.client.http, identity.deviceSigningUploadBody(), { userId: bob.client.userId, password: bob.password });
    await uploadSignatures(bob.client.http, identity.signOwnDevice(bob.e2ee.deviceKeys()));

    // Cross-signed, but alice has not verified bob's master key: unverified.
    const first = await bob.client.sendText(roomId, "signed, not yet trusted");
    expect((await decryptedBody(alice, roomId, first)).encrypted).toMatchObject({ verified: "unverified" });
    // Alice verifies bob's master key (as SAS covering it would): his signed device is verified.
    await alice.e2ee.trustMasterKey(bob.client.userId, identity.master!.publicKey);
    const second = await bob.client.sendText(roomId, "signed and trusted");
    expect((await decryptedBody(alice, roomId, second)).encrypted).toMatchObject({ verified: "verified", senderDevice: bob.client.deviceId });

    // A new device of bob's is unverified until bob signs it with his self-signing key.
    const bob2 = await device(bob);
    await untilSynced(bob2.client, "bob's new device sees the room", () => bob2.client.room(roomId));
    const unsigned = await bob2.client.sendText(roomId, "from an unsigned device");
    expect((await decryptedBody(alice, roomId, unsigned)).encrypted).toMatchObject({ verified: "unverified", senderDevice: bob2.client.deviceId });
    await uploadSignatures(bob.client.http, identity.signOwnDevice(bob2.e2ee.deviceKeys()));
    await untilSynced(alice.client, "alice learns bob's new signature", async () => {
      await alice.e2ee.devices.ensureUpToDate([bob.client.userId]);
      return alice.e2ee.isVerified(alice.e2ee.devices.device(bob.client.userId, bob2.client.deviceId)!);
    });
    const signed = await bob2.client.sendText(roomId, "from a signed device");
    expect((await decryptedBody(alice, roomId, signed)).encrypted).toMatchObject({ verified: "verified", senderDevice: bob2.client.deviceId });
  });

  it("a client restarted on its encrypted file store decrypts old messages; a restarted sender never reuses a message index", async () => {
    const dir = await mkdtemp(path.join(tmpdir(), "parley-e2ee-"));
    try {
      const file = path.join(dir, "bob.store");
      const alice = await user("restalice");
      const bob = await user("restbob", "ours", await FileCryptoStore.open(file, "bob's passphrase", { kdf: "interactive" }));
      const roomId = await encryptedRoom(alice, [bob]);
      const first = await alice.client.sendText(roomId, "before the restart");
      await decryptedBody(bob, roomId, first);
      for (const c of [alice, bob]) await c.client.stop();
      await bob.store.close();

      // Bob's machine starts again from his file (same identity: no new device keys) and reads the old message.
      const bobStore = await FileCryptoStore.open(file, "bob's passphrase");
      const bobAgain = await E2EE.create({ http: bob.client.http, userId: bob.client.userId, deviceId: bob.client.deviceId, store: bobStore });
      expect(bobAgain.identityKeys()).toEqual(bob.e2ee.identityKeys());
      const again = await bobAgain.decryptRoomEvent(roomId, await wireEvent(bob, roomId, first));
      expect(again.content.body).toBe("before the restart");
      // Alice's machine starts again from her store: the session goes on (bob has it) at the next index.
      const aliceAgain = await E2EE.create({ http: alice.client.http, userId: alice.client.userId, deviceId: alice.client.deviceId, store: alice.store });
      const content = await aliceAgain.encryptRoomEvent(roomId, "m.room.message", { msgtype: "m.text", body: "after the restart" }, [alice.client.userId, bob.client.userId]);
      expect(content.session_id).toBe((await wireEvent(bob, roomId, first)).content.session_id);
      const { event_id: second } = await alice.client.http.request("PUT", `/_matrix/client/v3/rooms/${encodeURIComponent(roomId)}/send/m.room.encrypted/restart1`, { body: content });
      // Had the index been reused, bob's replay check would refuse the second event.
      const decrypted = await bobAgain.decryptRoomEvent(roomId, await wireEvent(bob, roomId, second));
      expect(decrypted.content.body).toBe("after the restart");
      expect(decrypted.encrypted).toMatchObject({ decrypted: true, senderDevice: alice.client.deviceId });
      await bobStore.close();
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("reports a modified ciphertext, a replayed index, a session of another device than the sender's, and a ciphertext from another room", async () => {
    const alice = await user("tamperalice");
    const bob = await user("tamperbob", "libolm");
    const mallory = await user("tampermallory");
    const roomId = await encryptedRoom(alice, [bob, mallory]);
    const eventId = await alice.client.sendText(roomId, "the real one");
    const real = await wireEvent(bob, roomId, eventId);
    expect((await bob.e2ee.decryptRoomEvent(roomId, real)).content.body).toBe("the real one");

    // A flipped byte in the ciphertext: the MAC (or the signature) catches it.
    const ciphertext = real.content.ciphertext as string;
    const middle = Math.floor(ciphertext.length / 2);
    const flipped = ciphertext.slice(0, middle) + (ciphertext[middle] === "A" ? "B" : "A") + ciphertext.slice(middle + 1);
    const modified = await bob.e2ee.decryptRoomEvent(roomId, { ...real, event_id: "$modified", content: { ...real.content, ciphertext: flipped } });
    expect(modified.encrypted).toEqual({ decrypted: false, error: "BAD_MAC" });
    expect(modified.content.body).toBeUndefined();

    // The same ciphertext again under another event ID: a replay.
    const replayed = await bob.e2ee.decryptRoomEvent(roomId, { ...real, event_id: "$replayed" });
    expect(replayed.encrypted).toEqual({ decrypted: false, error: "REPLAYED_INDEX" });
    expect(replayed.type).toBe("m.room.encrypted");
    // The original still decrypts (same event ID and timestamp).
    expect((await bob.e2ee.decryptRoomEvent(roomId, real)).encrypted).toMatchObject({ decrypted: true });

    // Mallory's own session, in an event claiming alice as its sender (as a hostile server could
    // forge): it decrypts, but is flagged as from no device of alice's.
    const mallorys = await mallory.client.sendText(roomId, "from mallory");
    await decryptedBody(bob, roomId, mallorys);
    const forgedContent = await mallory.e2ee.encryptRoomEvent(roomId, "m.room.message", { msgtype: "m.text", body: "i am alice" }, [alice.client.userId, bob.client.userId]);
    const forged = await bob.e2ee.decryptRoomEvent(roomId, { ...real, event_id: "$forged", content: forgedContent });
    expect(forged.encrypted).toEqual({ decrypted: true, senderCurve25519: mallory.e2ee.identityKeys().curve25519, verified: "unknown_device" });

    // A ciphertext of this room under another room's ID.
    const elsewhere = await bob.e2ee.decryptRoomEvent("!other:room", real);
    expect(elsewhere.encrypted).toMatchObject({ decrypted: false });
  });

  it("asks our other devices for a missing key; only a verified device of ours gets it forwarded", async () => {
    const alice = await user("fwdalice");
    const bob = await user("fwdbob", "libolm");
    const roomId = await encryptedRoom(alice, [bob]);
    const old = await bob.client.sendText(roomId, "before alice's second device");
    await decryptedBody(alice, roomId, old);

    const alice2 = await device(alice);
    const received: string[] = [];
    alice2.e2ee.onRoomKeyReceived = (r) => received.push(r);
    const requests: Array<[string, boolean]> = [];
    alice.e2ee.onRoomKeyRequest = (deviceId, forwarded) => requests.push([deviceId, forwarded]);
    const oldEvent = await wireEvent(alice2, roomId, old);
    // Unverified: the request goes out, alice's first device does not answer it.
    expect((await alice2.e2ee.decryptRoomEvent(roomId, oldEvent)).encrypted).toEqual({ decrypted: false, error: "UNKNOWN_SESSION" });
    await untilSynced(alice.client, "alice's first device sees the request", () => requests.length > 0);
    expect(requests).toEqual([[alice2.client.deviceId, false]]);
    // ... and tells the new device why (m.room_key.withheld), which its failure then reports.
    const refused = await untilSynced(alice2.client, "the new device is told the key is withheld", async () => {
      const e = (await alice2.e2ee.decryptRoomEvent(roomId, oldEvent)).encrypted;
      return e && !e.decrypted && e.withheld ? e : undefined;
    });
    expect(refused).toEqual({ decrypted: false, error: "UNKNOWN_SESSION", withheld: { code: "m.unverified", reason: "The requesting device is not verified." } });

    // Each device verifies the other; the request is made again (a fresh one) and answered.
    await alice.e2ee.setDeviceVerified(alice.client.userId, alice2.client.deviceId);
    await alice2.e2ee.setDeviceVerified(alice.client.userId, alice.client.deviceId);
    await alice2.e2ee.cancelKeyRequests();
    expect((await alice2.e2ee.decryptRoomEvent(roomId, oldEvent)).encrypted).toEqual({ decrypted: false, error: "UNKNOWN_SESSION" });
    await untilSynced(alice2.client, "the forwarded key", () => received.includes(roomId));
    expect(requests.at(-1)).toEqual([alice2.client.deviceId, true]);
    const now = await alice2.e2ee.decryptRoomEvent(roomId, oldEvent);
    expect(now.content.body).toBe("before alice's second device");
    // A forwarded key authenticates the session only as far as our own device: never "verified".
    expect(now.encrypted).toMatchObject({ decrypted: true, senderDevice: bob.client.deviceId, verified: "unverified" });
  });

  it("tells a device it could not set up an Olm session with (m.no_olm) once, not per room key; a withheld claim by someone else is not believed", async () => {
    const alice = await user("noolmalice");
    const carol = await user("noolmcarol");
    const bare = await bareDevice("noolmbob", false);
    const roomId = await encryptedRoom(alice, [carol], { rotation_period_msgs: 1 });
    await alice.client.http.request("POST", `/_matrix/client/v3/rooms/${encodeURIComponent(roomId)}/invite`, { body: { user_id: bare.user.userId } });
    await request(hs.url, "POST", `/_matrix/client/v3/join/${encodeURIComponent(roomId)}`, { token: bare.user.accessToken, body: {} });
    await memberJoined(alice, roomId, bare.user.userId);
    // Three messages, three Megolm sessions (rotation every message): the device has no one-time key.
    for (const text of ["one", "two", "three"]) await alice.client.sendText(roomId, text);
    const received = await bare.toDevice();
    expect(received.filter((e) => e.type === "m.room.encrypted")).toEqual([]);
    const withheld = received.filter((e) => e.type === "m.room_key.withheld");
    expect(withheld).toEqual([
      {
        type: "m.room_key.withheld",
        sender: alice.client.userId,
        content: {
          code: "m.no_olm",
          reason: "Unable to establish a secure channel.",
          algorithm: "m.megolm.v1.aes-sha2",
          sender_key: alice.e2ee.identityKeys().curve25519,
          from_device: alice.client.deviceId,
        },
      },
    ]);
    expect(await bare.toDevice()).toEqual([]);

    // The bare device's user says a session of the room is withheld: believed for its own events,
    // not for one of alice's (a session carol has no key of, so the reason would be shown).
    const wire = await wireEvent(alice, roomId, await alice.client.sendText(roomId, "four"));
    const unknown = { ...wire, event_id: "$unknown-session", content: { ...wire.content, session_id: "an unknown session" } };
    await bare.sendToDevice(carol, "m.room_key.withheld", {
      code: "m.blacklisted",
      reason: "forged",
      algorithm: "m.megolm.v1.aes-sha2",
      room_id: roomId,
      session_id: "an unknown session",
      sender_key: "x",
    });
    const own = await untilSynced(carol.client, "carol's device took the claim", async () => {
      const e = (await carol.e2ee.decryptRoomEvent(roomId, { ...unknown, sender: bare.user.userId })).encrypted;
      return e && !e.decrypted && e.withheld ? e : undefined;
    });
    expect(own).toEqual({ decrypted: false, error: "UNKNOWN_SESSION", withheld: { code: "m.blacklisted", reason: "forged" } });
    expect((await carol.e2ee.decryptRoomEvent(roomId, unknown)).encrypted).toEqual({ decrypted: false, error: "UNKNOWN_SESSION" });
  });

  it("answers an m.no_olm from a device by setting up a session with it and sending an m.dummy", async () => {
    const alice = await user("dummyalice");
    const bare = await bareDevice("dummybob", true);
    await bare.sendToDevice(alice, "m.room_key.withheld", { code: "m.no_olm", reason: "no keys", algorithm: "m.megolm.v1.aes-sha2", sender_key: bare.curve25519, from_device: bare.user.deviceId });
    // Alice claims the device's one-time key and sends a pre-key message (type 0) to its Curve25519 key.
    const encrypted = await untilSynced(alice.client, "alice's m.dummy reaches the device", async () => {
      const events = (await bare.toDevice()).filter((e) => e.type === "m.room.encrypted");
      return events.length > 0 ? events : undefined;
    });
    expect(encrypted).toHaveLength(1);
    expect(encrypted[0]!.sender).toBe(alice.client.userId);
    expect(encrypted[0]!.content).toMatchObject({ algorithm: "m.olm.v1.curve25519-aes-sha2", sender_key: alice.e2ee.identityKeys().curve25519, ciphertext: { [bare.curve25519]: { type: 0 } } });
  });

  it("with cross-signing keys, SAS with our own new device signs it with the self-signing key; the keys survive a restart", async () => {
    const alice = await user("xsownalice");
    const bob = await user("xsownbob");
    const roomId = await encryptedRoom(alice, [bob]);
    await alice.e2ee.bootstrapCrossSigning({ password: alice.password });
    const query = async (): Promise<KeysQueryResponse> =>
      bob.client.http.request("POST", "/_matrix/client/v3/keys/query", { body: { device_keys: { [alice.client.userId]: [] } } });
    const master = masterKeyOf(await query(), alice.client.userId)!;
    expect(master).toBeDefined();
    // Bob verified alice's master key: her bootstrapping device is cross-signed, a new one is not.
    await bob.e2ee.trustMasterKey(alice.client.userId, master);
    const alice2 = await device(alice);
    const bobView = { userId: bob.client.userId, verifiedMasterKeys: { [alice.client.userId]: master } };
    expect(deviceTrust(await query(), alice.client.userId, alice.client.deviceId, bobView)).toEqual({ trusted: true, masterKey: master, via: "verified" });
    expect(deviceTrust(await query(), alice.client.userId, alice2.client.deviceId, bobView).trusted).toBe(false);

    // The new device asks, the first one (holding the keys) answers; both compare and confirm.
    const incoming = new Promise<SasVerification>((resolve) => (alice.e2ee.onVerificationRequest = resolve));
    const asking = await alice2.e2ee.requestVerification(alice.client.userId, alice.client.deviceId);
    const answering = await incoming;
    await answering.ready();
    await untilSynced(alice2.client, "the new device sees ready", () => asking.state === "ready" || undefined);
    await asking.start();
    await Promise.all([asking.keysExchanged, answering.keysExchanged]);
    expect(asking.emojis()).toEqual(answering.emojis());
    await Promise.all([asking.confirm(), answering.confirm()]);
    expect(await answering.done).toContain(`ed25519:${alice2.client.deviceId}`);
    await asking.done;
    await untilSynced(bob.client, "alice's new device is cross-signed", async () => deviceTrust(await query(), alice.client.userId, alice2.client.deviceId, bobView).trusted || undefined);
    // Bob's machine, trusting only alice's master key, sees her new device's messages as verified.
    const sent = await alice2.client.sendText(roomId, "from the cross-signed new device");
    await bob.e2ee.devices.refresh([alice.client.userId]);
    expect((await decryptedBody(bob, roomId, sent)).encrypted).toMatchObject({ verified: "verified", senderDevice: alice2.client.deviceId });

    // The private keys are in the store: a machine started again on it still holds them.
    const again = await E2EE.create({ http: alice.client.http, userId: alice.client.userId, deviceId: alice.client.deviceId, store: alice.store });
    expect(again.hasCrossSigningKeys()).toBe(true);
    expect(alice2.e2ee.hasCrossSigningKeys()).toBe(false);
  });
});

describe("E2EE machine without a server", () => {
  /** A stand-in homeserver's key endpoints that records what is uploaded. */
  function recordingHttp() {
    const uploads: Array<Record<string, any>> = [];
    let stored = 0;
    const http = {
      async request(_method: string, path: string, opts?: { body?: unknown }) {
        if (path !== "/_matrix/client/v3/keys/upload") throw new Error(`unexpected ${path}`);
        const body = (opts?.body ?? {}) as Record<string, any>;
        if (Object.keys(body).length > 0) uploads.push(body);
        stored += Object.keys(body.one_time_keys ?? {}).length;
        return { one_time_key_counts: { signed_curve25519: stored } };
      },
    };
    return { http: http as never, uploads };
  }

  it("uploads device keys once, one-time keys up to half the maximum as the count drops, and a new fallback key when it was used", async () => {
    const { http, uploads } = recordingHttp();
    const store = new MemoryCryptoStore();
    const e2ee = await E2EE.create({ http, userId: "@a:x", deviceId: "A", store, olm: libolm });
    expect(uploads).toHaveLength(1);
    expect(Object.keys(uploads[0]!.one_time_keys)).toHaveLength(50);
    expect(Object.keys(uploads[0]!.fallback_keys)).toHaveLength(1);
    expect(uploads[0]!.device_keys.device_id).toBe("A");

    // Enough keys on the server, fallback unused: nothing to do.
    await e2ee.processSync({ device_one_time_keys_count: { signed_curve25519: 50 }, device_unused_fallback_key_types: ["signed_curve25519"] });
    expect(uploads).toHaveLength(1);
    // 12 claimed: 12 new ones, no device keys again.
    await e2ee.processSync({ device_one_time_keys_count: { signed_curve25519: 38 }, device_unused_fallback_key_types: ["signed_curve25519"] });
    expect(uploads).toHaveLength(2);
    expect(Object.keys(uploads[1]!.one_time_keys)).toHaveLength(12);
    expect(uploads[1]!.device_keys).toBeUndefined();
    expect(uploads[1]!.fallback_keys).toBeUndefined();
    // The fallback key was handed out: a new one (another key ID), signed and marked as fallback.
    await e2ee.processSync({ device_one_time_keys_count: { signed_curve25519: 50 }, device_unused_fallback_key_types: [] });
    expect(uploads).toHaveLength(3);
    const oldId = Object.keys(uploads[0]!.fallback_keys)[0];
    const [newId, newKey] = Object.entries(uploads[2]!.fallback_keys)[0] as [string, Record<string, unknown>];
    expect(newId).not.toBe(oldId);
    expect(newKey).toMatchObject({ fallback: true, signatures: { "@a:x": { "ed25519:A": expect.any(String) } } });

    // A restart on the same store publishes nothing it already published.
    await E2EE.create({ http, userId: "@a:x", deviceId: "A", store, olm: libolm });
    expect(uploads).toHaveLength(3);
  });

  it("refuses a store made for another device", async () => {
    const { http } = recordingHttp();
    const store = new MemoryCryptoStore();
    await E2EE.create({ http, userId: "@a:x", deviceId: "A", store, olm: libolm });
    await expect(E2EE.create({ http, userId: "@a:x", deviceId: "B", store, olm: libolm })).rejects.toThrow(/belongs to @a:x\/A/);
  });
});

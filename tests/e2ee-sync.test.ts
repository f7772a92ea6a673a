// What /sync and /keys/changes tell a device about end-to-end encryption, over HTTP:
// - device_lists: who shares a room with the user and changed their devices or keys, who began to
//   share a room with them (`changed`), who no longer shares any (`left`); waking long-polls of the
//   users who should see a change;
// - to_device: delivered until a later sync acknowledges it, then deleted;
// - device_one_time_keys_count and device_unused_fallback_key_types.
// https://spec.matrix.org/latest/client-server-api/#tracking-the-device-list-for-a-user
// https://spec.matrix.org/latest/client-server-api/#e2e-extensions-to-sync
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loginUser, passwordAuth, registerUser, type TestUser } from "./accounts-helpers.ts";
import { crossSigningIdentity, deviceIdentity, fallbackKey, oneTimeKeys, post, sign } from "./e2ee-helpers.ts";
import { request, startTestServer, type TestServer } from "./harness.ts";
import { createRoom, enc, joinRoom, leaveRoom, sync } from "./sync-helpers.ts";

let hs: TestServer;
beforeAll(async () => {
  hs = await startTestServer();
});
afterAll(() => hs.destroy());

let n = 0;
const newUser = (name = "u") => registerUser(hs.url, `${name}${++n}`);

async function secondDevice(user: TestUser): Promise<TestUser> {
  const login = await loginUser(hs.url, user.userId, user.password);
  expect(login.status).toBe(200);
  return { ...user, accessToken: login.json.access_token, deviceId: login.json.device_id };
}

/** Uploads identity keys (and optionally one-time and fallback keys) for the user's device. */
async function uploadKeys(user: TestUser, options: { oneTime?: number; fallback?: boolean } = {}) {
  const device = deviceIdentity(user);
  const res = await post(hs.url, user, "/keys/upload", {
    device_keys: device.deviceKeys,
    ...(options.oneTime ? { one_time_keys: oneTimeKeys(user, device, options.oneTime) } : {}),
    ...(options.fallback ? { fallback_keys: fallbackKey(user, device) } : {}),
  });
  expect(res.status, JSON.stringify(res.json)).toBe(200);
  return device;
}

async function sharedRoom(owner: TestUser, ...others: TestUser[]): Promise<string> {
  const roomId = await createRoom(hs.url, owner, { preset: "private_chat", invite: others.map((u) => u.userId) });
  for (const u of others) await joinRoom(hs.url, u, roomId);
  return roomId;
}

/** A long-poll that must come back early, with a response that satisfies `check`. */
async function wokenSync(user: TestUser, since: string, action: () => Promise<unknown>): Promise<any> {
  const started = performance.now();
  const waiting = sync(hs.url, user, { since, timeout: 20_000 });
  await new Promise((r) => setTimeout(r, 100)); // let the request start waiting
  await action();
  const res = await waiting;
  expect(performance.now() - started, "the long-poll was not woken").toBeLessThan(10_000);
  return res;
}

const keyChanges = (user: TestUser, from: string, to: string) =>
  request(hs.url, "GET", `/_matrix/client/v3/keys/changes?from=${enc(from)}&to=${enc(to)}`, { token: user.accessToken });

describe("device_lists in /sync", () => {
  it("wakes room-mates' long-polls with a key upload, and tells nothing to strangers", async () => {
    const alice = await newUser("alice");
    const bob = await newUser("bob");
    const stranger = await newUser("stranger");
    await sharedRoom(alice, bob);
    const [b0, s0] = await Promise.all([sync(hs.url, bob), sync(hs.url, stranger)]);

    const woken = await wokenSync(bob, b0.next_batch, () => uploadKeys(alice));
    expect(woken.device_lists).toEqual({ changed: [alice.userId], left: [] });

    const strangerSees = await sync(hs.url, stranger, { since: s0.next_batch, timeout: 300 });
    expect(strangerSees.device_lists).toBeUndefined();
  });

  it("shows a key upload to a room-mate who syncs right after it, even when a sync just before read the positions", async () => {
    // Syncs arriving close together share one read of the streams' positions: a read made just
    // before the upload committed must not hide the upload from a sync that began after it.
    for (let round = 0; round < 5; round++) {
      const alice = await newUser("alice");
      const bob = await newUser("bob");
      const other = await newUser("other");
      await sharedRoom(alice, bob);
      const [a0, o0] = await Promise.all([sync(hs.url, alice), sync(hs.url, other)]);
      await sync(hs.url, other, { since: o0.next_batch, timeout: 0 });
      await uploadKeys(bob);
      const a1 = await sync(hs.url, alice, { since: a0.next_batch, timeout: 0 });
      expect(a1.device_lists, `round ${round}`).toEqual({ changed: [bob.userId], left: [] });
    }
  });

  it("shows a user their own change (for their other devices), and wakes their other device", async () => {
    const alice = await newUser("alice");
    const alice2 = await secondDevice(alice);
    const a0 = await sync(hs.url, alice2);
    const woken = await wokenSync(alice2, a0.next_batch, () => uploadKeys(alice));
    expect(woken.device_lists.changed).toEqual([alice.userId]);
  });

  it("announces a new device (a login, before any key upload) to room-mates and the user's other devices", async () => {
    const alice = await newUser("alice");
    const bob = await newUser("bob");
    await sharedRoom(alice, bob);
    // One after the other: alice's sync marks her online, and bob's token must already cover that
    // presence change, or it (not the new device) is what wakes bob's long-poll.
    const a0 = await sync(hs.url, alice);
    const b0 = await sync(hs.url, bob);
    const woken = await wokenSync(bob, b0.next_batch, () => secondDevice(alice));
    expect(woken.device_lists.changed).toEqual([alice.userId]);
    const own = await sync(hs.url, alice, { since: a0.next_batch, timeout: 300 });
    expect(own.device_lists.changed).toEqual([alice.userId]);
  });

  it("announces new cross-signing keys and a deleted device to room-mates", async () => {
    const alice = await newUser("alice");
    const bob = await newUser("bob");
    await sharedRoom(alice, bob);
    const b0 = await sync(hs.url, bob);

    const identity = crossSigningIdentity(alice.userId);
    const afterCrossSigning = await wokenSync(bob, b0.next_batch, async () => {
      const res = await post(hs.url, alice, "/keys/device_signing/upload", identity.body);
      expect(res.status, JSON.stringify(res.json)).toBe(200);
    });
    expect(afterCrossSigning.device_lists.changed).toEqual([alice.userId]);

    const alice2 = await secondDevice(alice);
    await uploadKeys(alice2);
    const b1 = await sync(hs.url, bob, { since: afterCrossSigning.next_batch });
    expect(b1.device_lists.changed).toEqual([alice.userId]);
    const path = `/_matrix/client/v3/devices/${enc(alice2.deviceId)}`;
    const afterDelete = await wokenSync(bob, b1.next_batch, async () => {
      const first = await request(hs.url, "DELETE", path, { token: alice.accessToken, body: {} });
      const res = await request(hs.url, "DELETE", path, { token: alice.accessToken, body: { auth: passwordAuth(alice, first.json.session) } });
      expect(res.status, JSON.stringify(res.json)).toBe(200);
    });
    expect(afterDelete.device_lists.changed).toEqual([alice.userId]);
    const query = await post(hs.url, bob, "/keys/query", { device_keys: { [alice.userId]: [] } });
    expect(Object.keys(query.json.device_keys[alice.userId])).toEqual([]);
  });

  it("tells a new user-signing key alone only to the user's own devices", async () => {
    const alice = await newUser("alice");
    const bob = await newUser("bob");
    await sharedRoom(alice, bob);
    const first = crossSigningIdentity(alice.userId);
    expect((await post(hs.url, alice, "/keys/device_signing/upload", first.body)).status).toBe(200);
    const [a0, b0] = await Promise.all([sync(hs.url, alice), sync(hs.url, bob)]);

    const replacement = crossSigningIdentity(alice.userId);
    // Only a new user-signing key, signed by the master key that stays.
    const body = { user_signing_key: sign({ ...replacement.body.user_signing_key, signatures: {} }, alice.userId, first.master) };
    const challenge = await post(hs.url, alice, "/keys/device_signing/upload", body);
    const res = await post(hs.url, alice, "/keys/device_signing/upload", { ...body, auth: passwordAuth(alice, challenge.json.session) });
    expect(res.status, JSON.stringify(res.json)).toBe(200);

    const own = await sync(hs.url, alice, { since: a0.next_batch, timeout: 2_000 });
    expect(own.device_lists?.changed).toEqual([alice.userId]);
    const other = await sync(hs.url, bob, { since: b0.next_batch, timeout: 300 });
    expect(other.device_lists?.changed ?? []).toEqual([]);
  });

  it("tells the signer's devices, and no one else, that the user whose master key they signed changed", async () => {
    const alice = await newUser("alice");
    const bob = await newUser("bob");
    await sharedRoom(alice, bob);
    const aliceKeys = crossSigningIdentity(alice.userId);
    const bobKeys = crossSigningIdentity(bob.userId);
    expect((await post(hs.url, alice, "/keys/device_signing/upload", aliceKeys.body)).status).toBe(200);
    expect((await post(hs.url, bob, "/keys/device_signing/upload", bobKeys.body)).status).toBe(200);
    const [a0, b0] = await Promise.all([sync(hs.url, alice), sync(hs.url, bob)]);

    const signed = sign(bobKeys.body.master_key, alice.userId, aliceKeys.userSigning);
    const res = await post(hs.url, alice, "/keys/signatures/upload", { [bob.userId]: { [bobKeys.master.publicKeyBase64]: signed } });
    expect(res.json.failures).toEqual({});

    const own = await sync(hs.url, alice, { since: a0.next_batch, timeout: 2_000 });
    expect(own.device_lists?.changed).toEqual([bob.userId]);
    const theirs = await sync(hs.url, bob, { since: b0.next_batch, timeout: 300 });
    expect(theirs.device_lists?.changed ?? []).toEqual([]);
    const changes = await keyChanges(alice, a0.next_batch, own.next_batch);
    expect(changes.json.changed).toEqual([bob.userId]);
  });

  it("puts the members of a room one joins in one's `changed`, and the joiner in theirs", async () => {
    const alice = await newUser("alice");
    const bob = await newUser("bob");
    const carol = await newUser("carol");
    const roomId = await sharedRoom(alice, bob);
    await request(hs.url, "POST", `/_matrix/client/v3/rooms/${enc(roomId)}/invite`, { token: alice.accessToken, body: { user_id: carol.userId } });
    // Carol's sync first: alice's token then covers carol's going online, so only the join wakes her.
    const c0 = await sync(hs.url, carol);
    const a0 = await sync(hs.url, alice);

    const aliceSees = await wokenSync(alice, a0.next_batch, () => joinRoom(hs.url, carol, roomId));
    expect(aliceSees.device_lists.changed).toEqual([carol.userId]);
    const carolSees = await sync(hs.url, carol, { since: c0.next_batch });
    expect(carolSees.device_lists.changed).toEqual([alice.userId, bob.userId].sort());
  });

  it("puts a user invited to one's room in `changed` (clients encrypt for invitees)", async () => {
    const alice = await newUser("alice");
    const bob = await newUser("bob");
    const dave = await newUser("dave");
    const roomId = await sharedRoom(alice, bob);
    const a0 = await sync(hs.url, alice);
    const invited = await request(hs.url, "POST", `/_matrix/client/v3/rooms/${enc(roomId)}/invite`, { token: alice.accessToken, body: { user_id: dave.userId } });
    expect(invited.status).toBe(200);
    const a1 = await sync(hs.url, alice, { since: a0.next_batch });
    expect(a1.device_lists?.changed).toEqual([dave.userId]);
  });

  it("counts a join even when the timeline filter hides member events", async () => {
    const alice = await newUser("alice");
    const bob = await newUser("bob");
    const roomId = await createRoom(hs.url, alice, { preset: "public_chat" });
    const filter = { room: { timeline: { types: ["m.room.message"] } } };
    const a0 = await sync(hs.url, alice, { filter });
    await joinRoom(hs.url, bob, roomId);
    const a1 = await sync(hs.url, alice, { since: a0.next_batch, filter });
    expect(a1.device_lists?.changed).toEqual([bob.userId]);
  });

  it("puts users who share no room any more in `left`, and stops telling their changes", async () => {
    const alice = await newUser("alice");
    const bob = await newUser("bob");
    const carol = await newUser("carol");
    const room1 = await sharedRoom(alice, bob, carol);
    const room2 = await sharedRoom(alice, bob);
    const [a0, b0, c0] = await Promise.all([sync(hs.url, alice), sync(hs.url, bob), sync(hs.url, carol)]);

    // Bob leaves room1 but still shares room2 with alice: only carol loses him.
    await leaveRoom(hs.url, bob, room1);
    const [a1, c1] = await Promise.all([sync(hs.url, alice, { since: a0.next_batch }), sync(hs.url, carol, { since: c0.next_batch })]);
    expect(a1.device_lists).toBeUndefined();
    expect(c1.device_lists).toEqual({ changed: [], left: [bob.userId] });
    // Bob, who left, no longer shares a room with carol either.
    const b1 = await sync(hs.url, bob, { since: b0.next_batch });
    expect(b1.device_lists).toEqual({ changed: [], left: [carol.userId] });

    // Bob's key changes reach alice, not carol.
    await uploadKeys(bob);
    const [a2, c2] = await Promise.all([
      sync(hs.url, alice, { since: a1.next_batch }),
      sync(hs.url, carol, { since: c1.next_batch, timeout: 300 }),
    ]);
    expect(a2.device_lists.changed).toEqual([bob.userId]);
    expect(c2.device_lists).toBeUndefined();

    // Alice leaves room2: bob is gone for her (and she for him).
    await leaveRoom(hs.url, alice, room2);
    const a3 = await sync(hs.url, alice, { since: a2.next_batch });
    expect(a3.device_lists).toEqual({ changed: [], left: [bob.userId] });
  });
});

describe("GET /keys/changes", () => {
  it("lists changes of users who share a room, joins since the token, and users who left", async () => {
    const alice = await newUser("alice");
    const bob = await newUser("bob");
    const carol = await newUser("carol");
    const stranger = await newUser("stranger");
    const roomId = await sharedRoom(alice, bob);
    const from = (await sync(hs.url, alice)).next_batch as string;

    await uploadKeys(bob);
    await uploadKeys(stranger);
    await request(hs.url, "POST", `/_matrix/client/v3/rooms/${enc(roomId)}/invite`, { token: alice.accessToken, body: { user_id: carol.userId } });
    await joinRoom(hs.url, carol, roomId);
    const mid = (await sync(hs.url, alice, { since: from })).next_batch as string;

    const changes = await keyChanges(alice, from, mid);
    expect(changes.status).toBe(200);
    expect(changes.json).toEqual({ changed: [bob.userId, carol.userId].sort(), left: [] });

    await leaveRoom(hs.url, carol, roomId);
    const to = (await sync(hs.url, alice, { since: mid })).next_batch as string;
    expect((await keyChanges(alice, mid, to)).json).toEqual({ changed: [], left: [carol.userId] });
    // A bare device-list position says nothing of memberships.
    const bare = (token: string) => token.split("_").at(-1)!;
    expect((await keyChanges(alice, bare(from), bare(to))).json).toEqual({ changed: [bob.userId], left: [] });
  });
});

describe("to_device and key counts in /sync", () => {
  it("wakes the recipient's long-poll, repeats until a later sync acknowledges, then deletes", async () => {
    const alice = await newUser("alice");
    const bob = await newUser("bob");
    const b0 = await sync(hs.url, bob);
    const first = await wokenSync(bob, b0.next_batch, async () => {
      const res = await request(hs.url, "PUT", "/_matrix/client/v3/sendToDevice/org.example.ping/t1", {
        token: alice.accessToken,
        body: { messages: { [bob.userId]: { [bob.deviceId]: { n: 1 } } } },
      });
      expect(res.status).toBe(200);
    });
    expect(first.to_device.events).toEqual([{ sender: alice.userId, type: "org.example.ping", content: { n: 1 } }]);

    // The response was lost: the same token gets the message again.
    const retried = await sync(hs.url, bob, { since: b0.next_batch });
    expect(retried.to_device.events).toHaveLength(1);
    // The next sync with the later token acknowledges it: it is deleted from the mailbox.
    const next = await sync(hs.url, bob, { since: first.next_batch });
    expect(next.to_device).toBeUndefined();
    expect((await hs.services.e2ee.toDevice.fetchToDevice(bob.userId, bob.deviceId, 0, 100)).events).toEqual([]);
    expect((await sync(hs.url, bob, { since: b0.next_batch })).to_device).toBeUndefined();
  });

  it("delivers a mailbox larger than one response over several syncs, in order, each message once", async () => {
    const alice = await newUser("alice");
    const bob = await newUser("bob");
    // Room-mates: a stranger may leave only `to_device_stranger_limit` (100) messages waiting.
    await joinRoom(hs.url, bob, await createRoom(hs.url, alice, { preset: "public_chat" }));
    const b0 = await sync(hs.url, bob);
    for (let i = 0; i < 150; i++) {
      const res = await request(hs.url, "PUT", `/_matrix/client/v3/sendToDevice/org.example.n/many${i}`, {
        token: alice.accessToken,
        body: { messages: { [bob.userId]: { [bob.deviceId]: { i } } } },
      });
      expect(res.status).toBe(200);
    }
    const received: number[] = [];
    let since = b0.next_batch as string;
    for (let page = 0; page < 5; page++) {
      const res = await sync(hs.url, bob, { since });
      since = res.next_batch;
      if (!res.to_device) break;
      expect(res.to_device.events.length).toBeLessThanOrEqual(100);
      received.push(...res.to_device.events.map((e: any) => e.content.i as number));
    }
    expect(received).toEqual([...Array(150).keys()]);
  });

  it("counts one-time keys and reports an unused fallback key until it is claimed", async () => {
    const alice = await newUser("alice");
    const bob = await newUser("bob");
    await uploadKeys(alice, { oneTime: 2, fallback: true });
    const a0 = await sync(hs.url, alice);
    expect(a0.device_one_time_keys_count.signed_curve25519).toBe(2);
    expect(a0.device_unused_fallback_key_types).toEqual(["signed_curve25519"]);

    for (let i = 0; i < 3; i++) {
      const claim = await post(hs.url, bob, "/keys/claim", { one_time_keys: { [alice.userId]: { [alice.deviceId]: "signed_curve25519" } } });
      expect(Object.keys(claim.json.one_time_keys[alice.userId][alice.deviceId])).toHaveLength(1);
    }
    const a1 = await sync(hs.url, alice, { since: a0.next_batch });
    expect(a1.device_one_time_keys_count.signed_curve25519).toBe(0);
    // The third claim took the fallback key.
    expect(a1.device_unused_fallback_key_types).toEqual([]);
  });
});

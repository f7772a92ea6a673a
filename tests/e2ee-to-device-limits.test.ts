// Mailbox limits of to-device messaging: no user can keep another device's keys out. Each sender
// has a share of a mailbox (a small one when they share no room with the recipient), and room
// members' key-sharing messages get through a mailbox that strangers have filled.
// https://spec.matrix.org/latest/client-server-api/#send-to-device-messaging
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loginUser, registerUser, type TestUser } from "./accounts-helpers.ts";
import { request, startTestServer, type TestServer } from "./harness.ts";
import { createRoom, invite, joinRoom, leaveRoom, sync } from "./sync-helpers.ts";

// Small limits, as a server's config would set them large: the mailbox, one sender's share of it,
// and a stranger's. Room members' key-sharing messages may fill the mailbox up to twice its limit.
const MAILBOX = 8;
const PER_SENDER = 4;
const STRANGER = 3;

let hs: TestServer;
beforeAll(async () => {
  hs = await startTestServer({
    config: { to_device_mailbox_limit: MAILBOX, to_device_per_sender_limit: PER_SENDER, to_device_stranger_limit: STRANGER },
  });
});
afterAll(() => hs.destroy());

let n = 0;
const newUsers = (count: number) => Promise.all(Array.from({ length: count }, () => registerUser(hs.url, `limits${++n}`)));
let txn = 0;

/** One to-device message from `from` to one device of `to`; an Olm envelope unless `type` says otherwise. */
function sendTo(from: TestUser, to: TestUser, type = "m.room.encrypted", content: Record<string, unknown> = {}) {
  const olm = { algorithm: "m.olm.v1.curve25519-aes-sha2", sender_key: "K", ciphertext: { K: { type: 0, body: "A" } } };
  return request(hs.url, "PUT", `/_matrix/client/v3/sendToDevice/${type}/l${++txn}`, {
    token: from.accessToken,
    body: { messages: { [to.userId]: { [to.deviceId]: { ...(type === "m.room.encrypted" ? olm : {}), ...content } } } },
  });
}

/** Sends `count` messages, each of which must be accepted. */
async function sendAccepted(from: TestUser, to: TestUser, count: number, type?: string) {
  for (let i = 0; i < count; i++) {
    const res = await sendTo(from, to, type, { i });
    expect(res.status, JSON.stringify(res.json)).toBe(200);
  }
}

function expectRefused(res: { status: number; json: any }, to: TestUser, why: string) {
  expect(res.status, JSON.stringify(res.json)).toBe(429);
  expect(res.json.errcode).toBe("M_LIMIT_EXCEEDED");
  expect(res.json.error).toContain(why);
  expect(res.json.retry_after_ms).toBeGreaterThan(0);
  expect(res.json.user_id).toBe(to.userId);
  expect(res.json.device_id).toBe(to.deviceId);
}

/** A room `creator` makes and every one of `members` joins. */
async function shareRoom(creator: TestUser, ...members: TestUser[]): Promise<string> {
  const roomId = await createRoom(hs.url, creator, { preset: "public_chat" });
  for (const m of members) await joinRoom(hs.url, m, roomId);
  return roomId;
}

/** Who sent the to-device messages of a sync response, in order. */
const senders = (response: any): string[] => (response.to_device?.events ?? []).map((e: any) => e.sender);

describe("to-device mailbox limits", () => {
  it("holds a stranger to a few messages, even one who invited the recipient, while a room-mate's keys arrive", async () => {
    const [bob, eve, alice] = await newUsers(3);
    // An invitation the recipient has not accepted shares nothing: anyone can send one.
    const lure = await createRoom(hs.url, eve!);
    await invite(hs.url, eve!, lure, bob!.userId);
    await shareRoom(alice!, bob!);

    await sendAccepted(eve!, bob!, STRANGER);
    expectRefused(await sendTo(eve!, bob!), bob!, "You share no room with");
    expect((await sendTo(alice!, bob!, "m.room.encrypted", { from: "alice" })).status).toBe(200);

    // The refused message was not stored: the mailbox holds what was accepted, in order.
    const delivered = await sync(hs.url, bob!);
    expect(senders(delivered)).toEqual([...Array(STRANGER).fill(eve!.userId), alice!.userId]);
    expect(delivered.to_device.events.at(-1).content.from).toBe("alice");
  });

  it("holds each room member to a share of the mailbox, key-sharing messages too", async () => {
    const [bob, alice, carol] = await newUsers(3);
    await shareRoom(alice!, bob!, carol!);

    await sendAccepted(alice!, bob!, PER_SENDER);
    expectRefused(await sendTo(alice!, bob!), bob!, `${PER_SENDER} of your messages already wait`);
    // The others' shares are their own.
    await sendAccepted(carol!, bob!, 1);
    expect(senders(await sync(hs.url, bob!))).toEqual([...Array(PER_SENDER).fill(alice!.userId), carol!.userId]);
  });

  it("counts a user's own other devices as sharing a room, never as strangers", async () => {
    const [bob] = await newUsers(1);
    const login = await loginUser(hs.url, bob!.userId, bob!.password);
    const bob2: TestUser = { ...bob!, accessToken: login.json.access_token, deviceId: login.json.device_id };

    // More than a stranger may send (no room at all), up to a room member's share.
    await sendAccepted(bob2, bob!, PER_SENDER, "m.secret.request");
    expectRefused(await sendTo(bob2, bob!, "m.secret.request"), bob!, `${PER_SENDER} of your messages already wait`);
  });

  it("lets room members' key-sharing messages through a mailbox strangers have filled, up to twice its limit", async () => {
    const [bob, s1, s2, s3, alice, carol] = await newUsers(6);
    await shareRoom(alice!, bob!, carol!);

    // Three strangers fill the mailbox (3 + 3 + 2 = 8), none of them past their own share.
    await sendAccepted(s1!, bob!, STRANGER);
    await sendAccepted(s2!, bob!, STRANGER);
    await sendAccepted(s3!, bob!, MAILBOX - 2 * STRANGER);
    expectRefused(await sendTo(s3!, bob!), bob!, "is full");
    // A room member's other messages wait like everyone's...
    expectRefused(await sendTo(alice!, bob!, "org.example.ping"), bob!, "is full");
    // ...but keys, key requests and verification get through, each member within their share.
    await sendAccepted(alice!, bob!, 2, "m.room.encrypted");
    await sendAccepted(alice!, bob!, 1, "m.room_key_request");
    await sendAccepted(alice!, bob!, 1, "m.key.verification.request");
    await sendAccepted(carol!, bob!, PER_SENDER, "m.room.encrypted");
    // 8 + 4 + 4: the hard ceiling, which nothing goes past.
    const login = await loginUser(hs.url, bob!.userId, bob!.password);
    const bob2: TestUser = { ...bob!, accessToken: login.json.access_token, deviceId: login.json.device_id };
    expectRefused(await sendTo(bob2, bob!, "m.room.encrypted"), bob!, `is full (${2 * MAILBOX} undelivered messages)`);

    const delivered = await sync(hs.url, bob!);
    expect(delivered.to_device.events).toHaveLength(2 * MAILBOX);
    expect(delivered.to_device.events.slice(MAILBOX).map((e: any) => [e.sender, e.type])).toEqual([
      [alice!.userId, "m.room.encrypted"],
      [alice!.userId, "m.room.encrypted"],
      [alice!.userId, "m.room_key_request"],
      [alice!.userId, "m.key.verification.request"],
      ...Array(PER_SENDER).fill([carol!.userId, "m.room.encrypted"]),
    ]);
  });

  it("frees a sender's share as the device syncs", async () => {
    const [bob, eve] = await newUsers(2);
    await sendAccepted(eve!, bob!, STRANGER);
    expectRefused(await sendTo(eve!, bob!), bob!, "You share no room with");

    const first = await sync(hs.url, bob!);
    expect(senders(first)).toEqual(Array(STRANGER).fill(eve!.userId));
    // Delivered but not yet acknowledged: still counted.
    expectRefused(await sendTo(eve!, bob!), bob!, "You share no room with");
    // Coming back with the token acknowledges them, which frees the whole share again.
    const second = await sync(hs.url, bob!, { since: first.next_batch });
    expect(second.to_device).toBeUndefined();
    await sendAccepted(eve!, bob!, STRANGER);
    expectRefused(await sendTo(eve!, bob!), bob!, "You share no room with");
    expect(senders(await sync(hs.url, bob!, { since: second.next_batch }))).toEqual(Array(STRANGER).fill(eve!.userId));
  });

  it("counts exactly under concurrent sends to several devices while the recipient syncs", async () => {
    const [bob, alice, carol] = await newUsers(3);
    await shareRoom(alice!, bob!, carol!);
    const login = await loginUser(hs.url, bob!.userId, bob!.password);
    const bob2: TestUser = { ...bob!, accessToken: login.json.access_token, deviceId: login.json.device_id };
    await sendAccepted(bob2, bob!, 2, "m.secret.request");
    const first = await sync(hs.url, bob!);
    expect(senders(first)).toHaveLength(2);

    // Two senders race to both of bob's devices (opposite orders in their bodies) while bob's
    // first device acknowledges what it had: each is held to its share, nothing deadlocks.
    const toBoth = (from: TestUser, i: number, reversed: boolean) => {
      const devices = [bob!.deviceId, bob2.deviceId];
      if (reversed) devices.reverse();
      return request(hs.url, "PUT", `/_matrix/client/v3/sendToDevice/m.room.encrypted/race${++txn}`, {
        token: from.accessToken,
        body: { messages: { [bob!.userId]: Object.fromEntries(devices.map((d) => [d, { i }])) } },
      });
    };
    const sends = Array.from({ length: 2 * PER_SENDER }, (_, i) => [toBoth(alice!, i, false), toBoth(carol!, i, true)]).flat();
    const syncs = Array.from({ length: 3 }, () => sync(hs.url, bob!, { since: first.next_batch }));
    const statuses = (await Promise.all(sends)).map((r) => r.status);
    await Promise.all(syncs);
    expect(statuses.filter((s) => s === 200)).toHaveLength(2 * PER_SENDER);
    expect(statuses.filter((s) => s === 429)).toHaveLength(2 * PER_SENDER);

    for (const device of [bob!, bob2]) {
      const got = await hs.services.e2ee.toDevice.fetchToDevice(device.userId, device.deviceId, 0, 100);
      expect(got.events.filter((e) => e.sender === alice!.userId)).toHaveLength(PER_SENDER);
      expect(got.events.filter((e) => e.sender === carol!.userId)).toHaveLength(PER_SENDER);
      expect(got.events).toHaveLength(2 * PER_SENDER);
    }
    // What was acknowledged meanwhile left the counts too: bob's other device has its share back.
    await sendAccepted(bob2, bob!, PER_SENDER, "m.secret.request");
  });

  it("treats a room-mate who left as a stranger", async () => {
    const [bob, alice] = await newUsers(2);
    const roomId = await shareRoom(alice!, bob!);
    await sendAccepted(alice!, bob!, 1);
    await leaveRoom(hs.url, alice!, roomId);
    // Their message already waiting counts towards the stranger's share.
    await sendAccepted(alice!, bob!, STRANGER - 1);
    expectRefused(await sendTo(alice!, bob!), bob!, "You share no room with");
  });
});

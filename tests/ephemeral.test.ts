// Typing, receipts, read markers and presence over HTTP, as /sync delivers them.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { registerUser, type TestUser } from "./accounts-helpers.ts";
import { request, startTestServer, type TestServer } from "./harness.ts";
import { createRoom, enc, joinRoom, send, sync } from "./sync-helpers.ts";

let hs: TestServer;
let alice: TestUser;
let bob: TestUser;
let stranger: TestUser;
beforeAll(async () => {
  hs = await startTestServer();
  alice = await registerUser(hs.url, "alice");
  bob = await registerUser(hs.url, "bob");
  stranger = await registerUser(hs.url, "stranger");
});
afterAll(() => hs.destroy());

async function sharedRoom(): Promise<string> {
  const roomId = await createRoom(hs.url, alice, { preset: "private_chat", invite: [bob.userId] });
  await joinRoom(hs.url, bob, roomId);
  return roomId;
}

const ephemeralOf = (res: any, roomId: string, type: string) =>
  res.rooms?.join?.[roomId]?.ephemeral?.events?.find((e: any) => e.type === type);

function putTyping(user: TestUser, roomId: string, body: Record<string, unknown>, target = user.userId) {
  return request(hs.url, "PUT", `/_matrix/client/v3/rooms/${enc(roomId)}/typing/${enc(target)}`, { token: user.accessToken, body });
}

describe("typing", () => {
  it("wakes the other members' long-polls with m.typing, and again when it stops", async () => {
    const roomId = await sharedRoom();
    const start = await sync(hs.url, bob);
    const waiting = sync(hs.url, bob, { since: start.next_batch, timeout: 10_000 });
    expect((await putTyping(alice, roomId, { typing: true, timeout: 30_000 })).status).toBe(200);
    const typing = await waiting;
    expect(ephemeralOf(typing, roomId, "m.typing").content.user_ids).toEqual([alice.userId]);

    expect((await putTyping(alice, roomId, { typing: false })).status).toBe(200);
    const stopped = await sync(hs.url, bob, { since: typing.next_batch, timeout: 10_000 });
    expect(ephemeralOf(stopped, roomId, "m.typing").content.user_ids).toEqual([]);
    // A sync from before the start (as a client that missed both) shows no one typing.
    const both = await sync(hs.url, bob, { since: start.next_batch, timeout: 0 });
    expect(ephemeralOf(both, roomId, "m.typing").content.user_ids).toEqual([]);
    const own = await sync(hs.url, alice, { since: start.next_batch, timeout: 0 });
    expect(ephemeralOf(own, roomId, "m.typing").content.user_ids).toEqual([]);
    // An initial sync too: the room's list is empty now (as Synapse answers), not left out.
    expect(ephemeralOf(await sync(hs.url, bob), roomId, "m.typing").content.user_ids).toEqual([]);
  });

  it("expires after the timeout", async () => {
    const roomId = await sharedRoom();
    const start = await sync(hs.url, bob);
    await putTyping(alice, roomId, { typing: true, timeout: 300 });
    const typing = await sync(hs.url, bob, { since: start.next_batch, timeout: 5_000 });
    expect(ephemeralOf(typing, roomId, "m.typing").content.user_ids).toEqual([alice.userId]);
    const expired = await sync(hs.url, bob, { since: typing.next_batch, timeout: 5_000 });
    expect(ephemeralOf(expired, roomId, "m.typing").content.user_ids).toEqual([]);
  });

  it("is refused for another user, and outside the room", async () => {
    const roomId = await sharedRoom();
    expect((await putTyping(alice, roomId, { typing: true }, bob.userId)).status).toBe(403);
    const outside = await putTyping(stranger, roomId, { typing: true });
    expect(outside.status).toBe(403);
    expect(outside.json.errcode).toBe("M_FORBIDDEN");
  });
});

describe("receipts", () => {
  it("shows m.read to the room and m.read.private to its sender only", async () => {
    const roomId = await sharedRoom();
    const eventId = await send(hs.url, alice, roomId);
    const [a0, b0] = await Promise.all([sync(hs.url, alice), sync(hs.url, bob)]);
    const post = (type: string, body: Record<string, unknown> = {}) =>
      request(hs.url, "POST", `/_matrix/client/v3/rooms/${enc(roomId)}/receipt/${type}/${enc(eventId)}`, { token: bob.accessToken, body });

    expect((await post("m.read.private")).status).toBe(200);
    const bobSees = await sync(hs.url, bob, { since: b0.next_batch });
    expect(ephemeralOf(bobSees, roomId, "m.receipt").content[eventId]["m.read.private"][bob.userId].ts).toBeTypeOf("number");
    const aliceSees = await sync(hs.url, alice, { since: a0.next_batch, timeout: 300 });
    expect(ephemeralOf(aliceSees, roomId, "m.receipt")).toBeUndefined();

    const waiting = sync(hs.url, alice, { since: aliceSees.next_batch, timeout: 10_000 });
    expect((await post("m.read", { thread_id: "main" })).status).toBe(200);
    const publicReceipt = await waiting;
    const content = ephemeralOf(publicReceipt, roomId, "m.receipt").content;
    expect(content[eventId]["m.read"][bob.userId].thread_id).toBe("main");
    expect(content[eventId]["m.read.private"]).toBeUndefined();

    // An initial sync has the room's receipts too.
    const initial = await sync(hs.url, alice, { filter: { room: { rooms: [roomId] } } });
    expect(ephemeralOf(initial, roomId, "m.receipt").content[eventId]["m.read"][bob.userId]).toBeDefined();
  });

  it("refuses unknown receipt types, empty thread IDs and unknown events", async () => {
    const roomId = await sharedRoom();
    const eventId = await send(hs.url, alice, roomId);
    const path = (type: string, id = eventId) => `/_matrix/client/v3/rooms/${enc(roomId)}/receipt/${type}/${enc(id)}`;
    expect((await request(hs.url, "POST", path("m.unknown"), { token: bob.accessToken, body: {} })).status).toBe(400);
    const empty = await request(hs.url, "POST", path("m.read"), { token: bob.accessToken, body: { thread_id: "" } });
    expect(empty.status).toBe(400);
    expect(empty.json.errcode).toBe("M_INVALID_PARAM");
    expect((await request(hs.url, "POST", path("m.read", "$nope"), { token: bob.accessToken, body: {} })).status).toBe(404);
  });
});

describe("read markers", () => {
  it("stores m.fully_read as room account data and sets the receipts", async () => {
    const roomId = await sharedRoom();
    const eventId = await send(hs.url, alice, roomId);
    const start = await sync(hs.url, bob);
    const res = await request(hs.url, "POST", `/_matrix/client/v3/rooms/${enc(roomId)}/read_markers`, {
      token: bob.accessToken,
      body: { "m.fully_read": eventId, "m.read": eventId },
    });
    expect(res.status).toBe(200);
    const next = await sync(hs.url, bob, { since: start.next_batch });
    const room = next.rooms.join[roomId];
    expect(room.account_data.events).toEqual([{ type: "m.fully_read", content: { event_id: eventId } }]);
    expect(ephemeralOf(next, roomId, "m.receipt").content[eventId]["m.read"][bob.userId]).toBeDefined();
    // The receipt endpoint accepts m.fully_read too.
    const viaReceipt = await request(hs.url, "POST", `/_matrix/client/v3/rooms/${enc(roomId)}/receipt/m.fully_read/${enc(eventId)}`, {
      token: bob.accessToken,
      body: {},
    });
    expect(viaReceipt.status).toBe(200);
  });
});

describe("presence", () => {
  it("is set by PUT and by syncing, seen by room-mates, hidden from strangers", async () => {
    await sharedRoom();
    const start = await sync(hs.url, bob, { setPresence: "offline" });
    const put = await request(hs.url, "PUT", `/_matrix/client/v3/presence/${enc(alice.userId)}/status`, {
      token: alice.accessToken,
      body: { presence: "unavailable", status_msg: "lunch" },
    });
    expect(put.status).toBe(200);
    const res = await sync(hs.url, bob, { since: start.next_batch, setPresence: "offline", timeout: 5_000 });
    const event = res.presence.events.find((e: any) => e.sender === alice.userId);
    expect(event.type).toBe("m.presence");
    expect(event.content).toMatchObject({ presence: "unavailable", status_msg: "lunch" });
    expect(event.content.last_active_ago).toBeTypeOf("number");

    const got = await request(hs.url, "GET", `/_matrix/client/v3/presence/${enc(alice.userId)}/status`, { token: bob.accessToken });
    expect(got.status).toBe(200);
    expect(got.json.presence).toBe("unavailable");
    const hidden = await request(hs.url, "GET", `/_matrix/client/v3/presence/${enc(alice.userId)}/status`, { token: stranger.accessToken });
    expect(hidden.status).toBe(403);
    const others = await request(hs.url, "PUT", `/_matrix/client/v3/presence/${enc(alice.userId)}/status`, {
      token: bob.accessToken,
      body: { presence: "online" },
    });
    expect(others.status).toBe(403);

    // A sync brings an offline user online.
    const carol = await registerUser(hs.url, "carol");
    await sync(hs.url, carol);
    const own = await request(hs.url, "GET", `/_matrix/client/v3/presence/${enc(carol.userId)}/status`, { token: carol.accessToken });
    expect(own.json.presence).toBe("online");
  });
});

describe("presence going offline", () => {
  it("takes a user offline once no sync has been seen from them for a minute", async () => {
    let clock = Date.now();
    const server = await startTestServer({ now: () => clock });
    try {
      const dora = await registerUser(server.url, "dora");
      await sync(server.url, dora);
      const status = async () =>
        (await request(server.url, "GET", `/_matrix/client/v3/presence/${enc(dora.userId)}/status`, { token: dora.accessToken })).json.presence;
      expect(await status()).toBe("online");
      await server.services.presence.sweep(); // records the sync seen since the last sweep
      clock += 30_000;
      await server.services.presence.sweep();
      expect(await status()).toBe("online");
      clock += 61_000;
      await server.services.presence.sweep();
      expect(await status()).toBe("offline");
    } finally {
      await server.destroy();
    }
  });
});

describe("to-device and device lists", () => {
  it("delivers to-device messages once, and device-list changes of room-mates", async () => {
    await sharedRoom();
    const start = await sync(hs.url, bob);
    const sent = await request(hs.url, "PUT", "/_matrix/client/v3/sendToDevice/org.example.ping/txn-1", {
      token: alice.accessToken,
      body: { messages: { [bob.userId]: { [bob.deviceId]: { n: 1 } } } },
    });
    expect(sent.status).toBe(200);
    const res = await sync(hs.url, bob, { since: start.next_batch, timeout: 5_000 });
    expect(res.to_device.events).toEqual([{ sender: alice.userId, type: "org.example.ping", content: { n: 1 } }]);
    const again = await sync(hs.url, bob, { since: res.next_batch });
    expect(again.to_device).toBeUndefined();

    // Alice uploads device keys: bob, who shares a room with her, sees her device list change.
    const upload = await request(hs.url, "POST", "/_matrix/client/v3/keys/upload", {
      token: alice.accessToken,
      body: { one_time_keys: { "signed_curve25519:AAAA": { key: "x", signatures: {} } } },
    });
    expect(upload.status).toBe(200);
    const deviceNamed = await request(hs.url, "PUT", `/_matrix/client/v3/devices/${enc(alice.deviceId)}`, {
      token: alice.accessToken,
      body: { display_name: "renamed" },
    });
    expect(deviceNamed.status).toBe(200);
    const lists = await sync(hs.url, bob, { since: again.next_batch, timeout: 5_000 });
    expect(lists.device_lists.changed).toContain(alice.userId);
    // Alice's own key counts come with every sync.
    const aliceSync = await sync(hs.url, alice);
    expect(aliceSync.device_one_time_keys_count.signed_curve25519).toBe(1);
  });
});

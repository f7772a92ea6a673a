// /sync over HTTP: initial and incremental syncs, long-polls, limited timelines and pagination,
// invites, joins and leaves, filters, unread counts, tokens, shutdown.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loginUser, registerUser, type TestUser } from "./accounts-helpers.ts";
import { request, startTestServer, type TestServer } from "./harness.ts";
import { bodies, createRoom, enc, invite, joinRoom, leaveRoom, send, sync, syncRaw } from "./sync-helpers.ts";

let hs: TestServer;
let alice: TestUser;
let bob: TestUser;
let carol: TestUser;
beforeAll(async () => {
  hs = await startTestServer();
  alice = await registerUser(hs.url, "alice");
  bob = await registerUser(hs.url, "bob");
  carol = await registerUser(hs.url, "carol");
});
afterAll(() => hs.destroy());

/** A room of alice's that bob has joined. */
async function sharedRoom(extra: Record<string, unknown> = {}): Promise<string> {
  const roomId = await createRoom(hs.url, alice, { preset: "private_chat", invite: [bob.userId], ...extra });
  await joinRoom(hs.url, bob, roomId);
  return roomId;
}

describe("initial sync", () => {
  it("returns the rooms with state, timeline and the fields clients require", async () => {
    const roomId = await createRoom(hs.url, alice, { name: "Initial", preset: "private_chat" });
    await send(hs.url, alice, roomId, { msgtype: "m.text", body: "first" });
    const res = await sync(hs.url, alice);
    expect(typeof res.next_batch).toBe("string");
    expect(res.device_one_time_keys_count).toBeTypeOf("object");
    expect(res.device_unused_fallback_key_types).toEqual([]);
    const room = res.rooms.join[roomId];
    expect(bodies(res, roomId)).toEqual(["first"]);
    const stateTypes = [...room.state.events, ...room.timeline.events].map((e: any) => e.type);
    expect(stateTypes).toContain("m.room.create");
    expect(stateTypes).toContain("m.room.name");
    expect(room.timeline.prev_batch).toBeTypeOf("string");
    expect(room.summary["m.joined_member_count"]).toBe(1);
    expect(room.unread_notifications).toEqual({ notification_count: 0, highlight_count: 0 });
    // Every event comes in the client format.
    for (const e of room.timeline.events) {
      expect(e.event_id).toBeTypeOf("string");
      expect(e.room_id).toBe(roomId);
      expect(e.unsigned.age).toBeTypeOf("number");
      expect(e.auth_events).toBeUndefined();
    }
  });

  it("puts the state at the start of the timeline in `state`, not events of the timeline", async () => {
    const roomId = await createRoom(hs.url, alice, { preset: "private_chat" });
    for (let i = 0; i < 12; i++) await send(hs.url, alice, roomId, { msgtype: "m.text", body: `m${i}` });
    const res = await sync(hs.url, alice, { filter: { room: { timeline: { limit: 3 }, rooms: [roomId] } } });
    const room = res.rooms.join[roomId];
    expect(bodies(res, roomId)).toEqual(["m9", "m10", "m11"]);
    expect(room.timeline.limited).toBe(true);
    const timelineIds = new Set(room.timeline.events.map((e: any) => e.event_id));
    for (const e of room.state.events) expect(timelineIds.has(e.event_id)).toBe(false);
    expect(room.state.events.map((e: any) => e.type)).toContain("m.room.create");
  });
});

describe("incremental sync", () => {
  it("answers a malformed since with 400 M_INVALID_PARAM", async () => {
    for (const since of ["garbage", "s1_x", "s-3"]) {
      const res = await syncRaw(hs.url, alice, { since });
      expect(res.status).toBe(400);
      expect(res.json.errcode).toBe("M_INVALID_PARAM");
    }
  });

  it("returns only what is new, and an empty response when nothing is", async () => {
    const roomId = await sharedRoom();
    const first = await sync(hs.url, bob);
    const empty = await sync(hs.url, bob, { since: first.next_batch });
    expect(empty.rooms).toBeUndefined();
    expect(empty.device_unused_fallback_key_types).toEqual([]);
    await send(hs.url, alice, roomId, { msgtype: "m.text", body: "new" });
    const next = await sync(hs.url, bob, { since: empty.next_batch });
    expect(bodies(next, roomId)).toEqual(["new"]);
    expect(next.rooms.join[roomId].timeline.limited).toBe(false);
    expect(next.rooms.join[roomId].state.events).toEqual([]);
  });

  it("long-polls until a message arrives, then answers at once", async () => {
    const roomId = await sharedRoom();
    const { next_batch } = await sync(hs.url, bob);
    const started = Date.now();
    const waiting = sync(hs.url, bob, { since: next_batch, timeout: 20_000 });
    await new Promise((r) => setTimeout(r, 200));
    await send(hs.url, alice, roomId, { msgtype: "m.text", body: "wake up" });
    const res = await waiting;
    expect(bodies(res, roomId)).toEqual(["wake up"]);
    expect(Date.now() - started).toBeLessThan(5_000);
  });

  it("times out with an empty response and a usable token", async () => {
    const { next_batch } = await sync(hs.url, carol);
    const started = Date.now();
    const res = await sync(hs.url, carol, { since: next_batch, timeout: 300 });
    expect(Date.now() - started).toBeGreaterThanOrEqual(250);
    expect(res.rooms).toBeUndefined();
    expect(typeof res.next_batch).toBe("string");
  });

  it("gives the sending device, and only it, the transaction_id", async () => {
    const roomId = await sharedRoom();
    const login = await loginUser(hs.url, alice.userId, alice.password);
    const alice2: TestUser = { ...alice, accessToken: login.json.access_token, deviceId: login.json.device_id };
    const [a1, a2] = await Promise.all([sync(hs.url, alice), sync(hs.url, alice2)]);
    await send(hs.url, alice, roomId, { msgtype: "m.text", body: "mine" }, "m.room.message", "txn-own-1");
    const [s1, s2] = await Promise.all([sync(hs.url, alice, { since: a1.next_batch }), sync(hs.url, alice2, { since: a2.next_batch })]);
    const e1 = s1.rooms.join[roomId].timeline.events.find((e: any) => e.content.body === "mine");
    const e2 = s2.rooms.join[roomId].timeline.events.find((e: any) => e.content.body === "mine");
    expect(e1.unsigned.transaction_id).toBe("txn-own-1");
    expect(e2.unsigned.transaction_id).toBeUndefined();
  });

  it("catches up after 500 messages with a limited timeline whose prev_batch pages back through the rest", async () => {
    const roomId = await sharedRoom();
    const before = await sync(hs.url, bob);
    const sent: string[] = [];
    for (let i = 0; i < 500; i++) {
      await send(hs.url, alice, roomId, { msgtype: "m.text", body: `catch-up ${i}` });
      sent.push(`catch-up ${i}`);
    }
    const res = await sync(hs.url, bob, { since: before.next_batch, filter: { room: { timeline: { limit: 20 } } } });
    const room = res.rooms.join[roomId];
    expect(room.timeline.limited).toBe(true);
    expect(bodies(res, roomId)).toEqual(sent.slice(-20));
    // Page back with /messages from prev_batch until everything sent is seen.
    const seen = [...bodies(res, roomId)];
    let from = room.timeline.prev_batch;
    for (let page = 0; page < 20 && seen.length < 500; page++) {
      const msgs = await request(hs.url, "GET", `/_matrix/client/v3/rooms/${enc(roomId)}/messages?dir=b&limit=100&from=${enc(from)}`, {
        token: bob.accessToken,
      });
      expect(msgs.status, JSON.stringify(msgs.json)).toBe(200);
      const page_ = msgs.json.chunk.filter((e: any) => e.type === "m.room.message").map((e: any) => e.content.body);
      seen.unshift(...page_.reverse());
      if (!msgs.json.end) break;
      from = msgs.json.end;
    }
    expect(seen.slice(-500)).toEqual(sent);
  }, 120_000);

  it("delivers a redaction, and the redacted event comes redacted afterwards", async () => {
    const roomId = await sharedRoom();
    const start = await sync(hs.url, bob);
    const eventId = await send(hs.url, alice, roomId, { msgtype: "m.text", body: "oops" });
    const first = await sync(hs.url, bob, { since: start.next_batch });
    expect(bodies(first, roomId)).toEqual(["oops"]);
    const redact = await request(hs.url, "PUT", `/_matrix/client/v3/rooms/${enc(roomId)}/redact/${enc(eventId)}/r1`, {
      token: alice.accessToken,
      body: {},
    });
    expect(redact.status).toBe(200);
    const next = await sync(hs.url, bob, { since: first.next_batch });
    const redaction = next.rooms.join[roomId].timeline.events.find((e: any) => e.type === "m.room.redaction");
    expect(redaction.redacts).toBe(eventId);
    const initial = await sync(hs.url, bob, { filter: { room: { rooms: [roomId] } } });
    const redacted = initial.rooms.join[roomId].timeline.events.find((e: any) => e.event_id === eventId);
    expect(redacted.content).toEqual({});
    expect(redacted.unsigned.redacted_because.event_id).toBe(redact.json.event_id);
  });

  it("gives the state changed in the gap of a limited sync", async () => {
    const roomId = await sharedRoom();
    const before = await sync(hs.url, bob);
    const topic = await request(hs.url, "PUT", `/_matrix/client/v3/rooms/${enc(roomId)}/state/m.room.topic/`, {
      token: alice.accessToken,
      body: { topic: "changed in the gap" },
    });
    expect(topic.status).toBe(200);
    for (let i = 0; i < 5; i++) await send(hs.url, alice, roomId);
    const res = await sync(hs.url, bob, { since: before.next_batch, filter: { room: { timeline: { limit: 2 } } } });
    const room = res.rooms.join[roomId];
    expect(room.timeline.limited).toBe(true);
    const topicEvent = room.state.events.find((e: any) => e.type === "m.room.topic");
    expect(topicEvent.content.topic).toBe("changed in the gap");
  });
});

describe("membership", () => {
  it("shows an invite with stripped state, a join with full state, and a leave with its event", async () => {
    const roomId = await createRoom(hs.url, alice, { name: "Invite me", preset: "private_chat" });
    const start = await sync(hs.url, carol);
    const waiting = sync(hs.url, carol, { since: start.next_batch, timeout: 10_000 });
    await invite(hs.url, alice, roomId, carol.userId);
    const invited = await waiting;
    const inviteState = invited.rooms.invite[roomId].invite_state.events;
    expect(inviteState.find((e: any) => e.type === "m.room.name").content.name).toBe("Invite me");
    const own = inviteState.find((e: any) => e.type === "m.room.member" && e.state_key === carol.userId);
    expect(own.content.membership).toBe("invite");
    expect(own.event_id).toBeUndefined();

    await joinRoom(hs.url, carol, roomId);
    const joined = await sync(hs.url, carol, { since: invited.next_batch });
    const room = joined.rooms.join[roomId];
    const all = [...room.state.events, ...room.timeline.events];
    expect(all.map((e: any) => e.type)).toContain("m.room.create");
    expect(room.summary["m.joined_member_count"]).toBe(2);

    await leaveRoom(hs.url, carol, roomId);
    const left = await sync(hs.url, carol, { since: joined.next_batch });
    const leave = left.rooms.leave[roomId];
    const last = leave.timeline.events.at(-1);
    expect(last.type).toBe("m.room.member");
    expect(last.content.membership).toBe("leave");
    expect(left.rooms.join?.[roomId]).toBeUndefined();
  });

  it("gives heroes and member counts in the summary", async () => {
    const roomId = await sharedRoom();
    const res = await sync(hs.url, bob, { filter: { room: { rooms: [roomId] } } });
    const summary = res.rooms.join[roomId].summary;
    expect(summary["m.heroes"]).toEqual([alice.userId]);
    expect(summary["m.joined_member_count"]).toBe(2);
    expect(summary["m.invited_member_count"]).toBe(0);
  });
});

describe("what a room new to the sync carries", () => {
  it("a display-name change of a member all along is no join: no full state, only the change", async () => {
    const roomId = await sharedRoom();
    const { next_batch } = await sync(hs.url, bob);
    const put = await request(hs.url, "PUT", `/_matrix/client/v3/rooms/${enc(roomId)}/state/m.room.member/${enc(bob.userId)}`, {
      token: bob.accessToken,
      body: { membership: "join", displayname: "Robert" },
    });
    expect(put.status).toBe(200);
    const res = await sync(hs.url, bob, { since: next_batch });
    const room = res.rooms.join[roomId];
    expect(room.state.events).toEqual([]);
    expect(room.timeline.events.map((e: any) => e.event_id)).toEqual([put.json.event_id]);
    expect(room.timeline.limited).toBe(false);
  });

  it("a room joined since the token is limited, with the presence of its members", async () => {
    const roomId = await createRoom(hs.url, alice, { preset: "public_chat" });
    await request(hs.url, "PUT", `/_matrix/client/v3/presence/${enc(alice.userId)}/status`, {
      token: alice.accessToken,
      body: { presence: "online", status_msg: "here" },
    });
    for (let i = 0; i < 3; i++) await send(hs.url, alice, roomId, { msgtype: "m.text", body: `m${i}` });
    const filter = { room: { timeline: { types: ["m.room.message"], limit: 10 } } };
    const { next_batch } = await sync(hs.url, carol, { filter });
    await joinRoom(hs.url, carol, roomId);
    const res = await sync(hs.url, carol, { since: next_batch, filter });
    // Every message fits, but the client has none of the room's history before them: limited, so
    // it pages back for the rest (as Synapse answers).
    expect(bodies(res, roomId)).toEqual(["m0", "m1", "m2"]);
    expect(res.rooms.join[roomId].timeline.limited).toBe(true);
    const presence = (res.presence?.events ?? []).find((e: any) => e.sender === alice.userId);
    expect(presence?.content).toMatchObject({ presence: "online", status_msg: "here" });
    // A member who never set any presence is offline, as far as the server knows.
    const quiet = await registerUser(hs.url, "quietmember");
    await joinRoom(hs.url, quiet, roomId);
    const next = await sync(hs.url, carol, { since: res.next_batch });
    expect((next.presence?.events ?? []).find((e: any) => e.sender === quiet.userId)?.content.presence).toBe("offline");
    await leaveRoom(hs.url, carol, roomId);
  });

  it("a room joined and left since the token comes with its state", async () => {
    const roomId = await createRoom(hs.url, alice, { preset: "public_chat", name: "Brief" });
    const { next_batch } = await sync(hs.url, carol);
    await joinRoom(hs.url, carol, roomId);
    await leaveRoom(hs.url, carol, roomId);
    const res = await sync(hs.url, carol, { since: next_batch });
    const left = res.rooms.leave[roomId];
    expect(left.state.events.find((e: any) => e.type === "m.room.name")?.content.name).toBe("Brief");
    // With the timeline filtered away, the state is the state at the leave.
    const filter = { room: { timeline: { types: [] }, state: { types: ["m.room.name"] }, include_leave: true } };
    const filtered = await sync(hs.url, carol, { since: next_batch, filter });
    expect(filtered.rooms.leave[roomId].state.events.map((e: any) => e.content.name)).toEqual(["Brief"]);
  });

  it("shows current state events in the timeline even where history visibility hides their time", async () => {
    const roomId = await createRoom(hs.url, alice, { preset: "public_chat", initial_state: [{ type: "m.room.history_visibility", state_key: "", content: { history_visibility: "joined" } }] });
    await joinRoom(hs.url, bob, roomId);
    const { next_batch } = await sync(hs.url, bob);
    await leaveRoom(hs.url, bob, roomId);
    await joinRoom(hs.url, carol, roomId);
    // More hidden messages than a timeline holds: the window has to look past them.
    for (let i = 0; i < 50; i++) await send(hs.url, alice, roomId, { msgtype: "m.text", body: "hidden from bob" });
    await joinRoom(hs.url, bob, roomId);
    const res = await sync(hs.url, bob, { since: next_batch });
    const timeline = res.rooms.join[roomId].timeline.events;
    // carol's join is in the room's current state: bob sees it; the message of that time he does not.
    expect(timeline.some((e: any) => e.type === "m.room.member" && e.state_key === carol.userId)).toBe(true);
    expect(bodies(res, roomId)).not.toContain("hidden from bob");
    await leaveRoom(hs.url, carol, roomId);
  });

  it("names heroes only for a room without a name or canonical alias", async () => {
    const named = await sharedRoom({ name: "Has a name" });
    const unnamed = await sharedRoom();
    const res = await sync(hs.url, bob);
    expect(res.rooms.join[named].summary["m.heroes"]).toBeUndefined();
    expect(res.rooms.join[named].summary["m.joined_member_count"]).toBe(2);
    expect(res.rooms.join[unnamed].summary["m.heroes"]).toEqual([alice.userId]);
  });
});

describe("filters", () => {
  it("accepts a stored filter by ID and inline JSON, and refuses unknown IDs", async () => {
    const roomId = await sharedRoom();
    await send(hs.url, alice, roomId, { msgtype: "m.text", body: "a" });
    await send(hs.url, alice, roomId, { msgtype: "m.text", body: "b" });
    const created = await request(hs.url, "POST", `/_matrix/client/v3/user/${enc(bob.userId)}/filter`, {
      token: bob.accessToken,
      body: { room: { timeline: { limit: 1, types: ["m.room.message"] }, rooms: [roomId] } },
    });
    const byId = await sync(hs.url, bob, { filter: created.json.filter_id });
    expect(byId.rooms.join[roomId].timeline.events.map((e: any) => e.content.body)).toEqual(["b"]);
    const inline = await sync(hs.url, bob, { filter: { room: { timeline: { limit: 2, types: ["m.room.message"] }, rooms: [roomId] } } });
    expect(bodies(inline, roomId)).toEqual(["a", "b"]);
    const unknown = await syncRaw(hs.url, bob, { filter: "987654" });
    expect(unknown.status).toBe(400);
    const badJson = await syncRaw(hs.url, bob, { filter: "{nope" });
    expect(badJson.status).toBe(400);
    expect(badJson.json.errcode).toBe("M_NOT_JSON");
  });

  it("lazy-loads members: only the timeline's senders (and the user), then nothing redundant", async () => {
    const roomId = await createRoom(hs.url, alice, { preset: "public_chat" });
    await joinRoom(hs.url, bob, roomId);
    await joinRoom(hs.url, carol, roomId);
    await send(hs.url, carol, roomId, { msgtype: "m.text", body: "from carol" });
    const filter = { room: { rooms: [roomId], timeline: { limit: 1 }, state: { lazy_load_members: true } } };
    const res = await sync(hs.url, bob, { filter });
    const members = res.rooms.join[roomId].state.events.filter((e: any) => e.type === "m.room.member").map((e: any) => e.state_key);
    expect(members).toContain(carol.userId);
    expect(members).toContain(bob.userId);
    await send(hs.url, carol, roomId, { msgtype: "m.text", body: "again" });
    const next = await sync(hs.url, bob, { filter, since: res.next_batch });
    expect(next.rooms.join[roomId].state.events.filter((e: any) => e.type === "m.room.member")).toEqual([]);
  });

  it("leaves out rooms not asked for", async () => {
    const roomId = await sharedRoom();
    const other = await sharedRoom();
    const res = await sync(hs.url, bob, { filter: { room: { not_rooms: [other] } } });
    expect(res.rooms.join[roomId]).toBeDefined();
    expect(res.rooms.join[other]).toBeUndefined();
  });
});

describe("account data and unread counts", () => {
  it("streams global and room account data, waking a long-poll", async () => {
    const roomId = await sharedRoom();
    const { next_batch } = await sync(hs.url, bob);
    const waiting = sync(hs.url, bob, { since: next_batch, timeout: 10_000 });
    await request(hs.url, "PUT", `/_matrix/client/v3/user/${enc(bob.userId)}/account_data/org.example.a`, {
      token: bob.accessToken,
      body: { x: 1 },
    });
    const res = await waiting;
    expect(res.account_data.events).toEqual([{ type: "org.example.a", content: { x: 1 } }]);
    await request(hs.url, "PUT", `/_matrix/client/v3/user/${enc(bob.userId)}/rooms/${enc(roomId)}/account_data/org.example.r`, {
      token: bob.accessToken,
      body: { y: 2 },
    });
    const next = await sync(hs.url, bob, { since: res.next_batch });
    expect(next.rooms.join[roomId].account_data.events).toEqual([{ type: "org.example.r", content: { y: 2 } }]);
  });

  it("counts notifications and highlights until a read receipt", async () => {
    const roomId = await sharedRoom({ preset: "public_chat" });
    await joinRoom(hs.url, carol, roomId); // three members: plain messages notify per the default rules
    const start = await sync(hs.url, bob);
    await send(hs.url, alice, roomId, { msgtype: "m.text", body: "one" });
    const mention = await send(hs.url, alice, roomId, { msgtype: "m.text", body: "hi bob", "m.mentions": { user_ids: [bob.userId] } });
    const res = await sync(hs.url, bob, { since: start.next_batch });
    expect(res.rooms.join[roomId].unread_notifications).toEqual({ notification_count: 2, highlight_count: 1 });
    // Alice's own messages do not count for her.
    const aliceView = await sync(hs.url, alice, { filter: { room: { rooms: [roomId] } } });
    expect(aliceView.rooms.join[roomId].unread_notifications.notification_count).toBe(0);

    const receipt = await request(hs.url, "POST", `/_matrix/client/v3/rooms/${enc(roomId)}/receipt/m.read/${enc(mention)}`, {
      token: bob.accessToken,
      body: {},
    });
    expect(receipt.status).toBe(200);
    const after = await sync(hs.url, bob, { since: res.next_batch });
    expect(after.rooms.join[roomId].unread_notifications).toEqual({ notification_count: 0, highlight_count: 0 });

    // A private receipt clears them too.
    const more = await send(hs.url, alice, roomId, { msgtype: "m.text", body: "more" });
    const counted = await sync(hs.url, bob, { since: after.next_batch });
    expect(counted.rooms.join[roomId].unread_notifications.notification_count).toBe(1);
    await request(hs.url, "POST", `/_matrix/client/v3/rooms/${enc(roomId)}/receipt/m.read.private/${enc(more)}`, { token: bob.accessToken, body: {} });
    const cleared = await sync(hs.url, bob, { since: counted.next_batch });
    expect(cleared.rooms.join[roomId].unread_notifications.notification_count).toBe(0);
  });
});

describe("unread counts", () => {
  it("clears one's counts when one sends, and counts threads apart when asked", async () => {
    const roomId = await sharedRoom({ preset: "public_chat" });
    await joinRoom(hs.url, carol, roomId);
    const start = await sync(hs.url, bob);
    const root = await send(hs.url, alice, roomId, { msgtype: "m.text", body: "root" });
    await send(hs.url, alice, roomId, { msgtype: "m.text", body: "in thread", "m.relates_to": { rel_type: "m.thread", event_id: root } });
    await send(hs.url, alice, roomId, { msgtype: "m.text", body: "main again" });
    const filter = { room: { rooms: [roomId], timeline: { unread_thread_notifications: true } } };
    const threaded = await sync(hs.url, bob, { since: start.next_batch, filter });
    const room = threaded.rooms.join[roomId];
    expect(room.unread_notifications.notification_count).toBe(2);
    expect(room.unread_thread_notifications[root].notification_count).toBe(1);
    const plain = await sync(hs.url, bob, { since: start.next_batch });
    expect(plain.rooms.join[roomId].unread_notifications.notification_count).toBe(3);

    // Bob writes in the main timeline: what he had unread there is read; the thread stays unread.
    await send(hs.url, bob, roomId, { msgtype: "m.text", body: "reply" });
    const after = await sync(hs.url, bob, { since: threaded.next_batch, filter });
    expect(after.rooms.join[roomId].unread_notifications.notification_count).toBe(0);
    expect(after.rooms.join[roomId].unread_thread_notifications[root].notification_count).toBe(1);
  });
});

describe("tokens", () => {
  it("stay valid across a restart", async () => {
    const dataDir = (await import("node:fs/promises")).mkdtemp;
    const dir = await dataDir((await import("node:path")).join((await import("node:os")).tmpdir(), "parley-sync-restart-"));
    const { createTestDatabase } = await import("./harness.ts");
    const database = await createTestDatabase();
    let server = await startTestServer({ dataDir: dir, database });
    try {
      const dora = await registerUser(server.url, "dora");
      const roomId = await createRoom(server.url, dora, { preset: "private_chat" });
      const { next_batch } = await sync(server.url, dora);
      await server.stop();
      server = await startTestServer({ dataDir: dir, database });
      await send(server.url, dora, roomId, { msgtype: "m.text", body: "after restart" });
      const res = await sync(server.url, dora, { since: next_batch });
      expect(bodies(res, roomId)).toEqual(["after restart"]);
    } finally {
      await server.destroy();
    }
  });
});

describe("shutdown", () => {
  it("answers waiting long-polls at once", async () => {
    const server = await startTestServer();
    const erin = await registerUser(server.url, "erin");
    const { next_batch } = await sync(server.url, erin);
    const started = Date.now();
    const waiting = syncRaw(server.url, erin, { since: next_batch, timeout: 60_000 });
    await new Promise((r) => setTimeout(r, 200));
    await server.destroy();
    const res = await waiting;
    expect(res.status).toBe(200);
    expect(Date.now() - started).toBeLessThan(5_000);
  });
});

describe("a long-poll of a device that logs out", () => {
  /** Until a long-poll of this device is in progress (the server's own count, not a sleep). */
  const longPolling = async (user: TestUser) => {
    const deadline = Date.now() + 10_000;
    while (hs.services.sync.longPollsOf(user.userId, user.deviceId) === 0) {
      if (Date.now() > deadline) throw new Error(`no long-poll of ${user.deviceId} in progress`);
      await new Promise((r) => setTimeout(r, 10));
    }
  };

  const secondDevice = async (user: TestUser): Promise<TestUser> => {
    const res = await loginUser(hs.url, user.userId, user.password);
    expect(res.status).toBe(200);
    return { ...user, accessToken: res.json.access_token, deviceId: res.json.device_id };
  };

  it("ends at once with 401 M_UNKNOWN_TOKEN; another device's long-poll keeps waiting and gets the next event", async () => {
    const gil = await registerUser(hs.url, "gil");
    const gil2 = await secondDevice(gil);
    const roomId = await createRoom(hs.url, gil, { preset: "private_chat" });
    // One after the other: a first sync marks its user online, which would wake the other's long-poll.
    const a = await sync(hs.url, gil);
    const b = await sync(hs.url, gil2);
    const started = performance.now();
    const revoked = syncRaw(hs.url, gil, { since: a.next_batch, timeout: 20_000 });
    const other = syncRaw(hs.url, gil2, { since: b.next_batch, timeout: 20_000 });
    await longPolling(gil);
    expect((await request(hs.url, "POST", "/_matrix/client/v3/logout", { token: gil.accessToken, body: {} })).status).toBe(200);
    const res = await revoked;
    expect(res.status).toBe(401);
    expect(res.json).toMatchObject({ errcode: "M_UNKNOWN_TOKEN", soft_logout: false });
    expect(performance.now() - started).toBeLessThan(10_000);
    // The other device was not logged out: its long-poll answers 200 (woken by the device-list
    // change of the logout, or by the next event), and its token goes on.
    await send(hs.url, gil2, roomId, { msgtype: "m.text", body: "still here" });
    const woken = await other;
    expect(woken.status).toBe(200);
    const next = await sync(hs.url, gil2, { since: woken.json.next_batch, timeout: 0 });
    expect([...bodies(woken.json, roomId), ...bodies(next, roomId)]).toEqual(["still here"]);
  });

  it("on GET /events too, when the device is deleted", async () => {
    const hal = await registerUser(hs.url, "hal");
    const hal2 = await secondDevice(hal);
    const start = await request(hs.url, "GET", "/_matrix/client/v3/events?timeout=0", { token: hal2.accessToken });
    expect(start.status).toBe(200);
    const polling = request(hs.url, "GET", `/_matrix/client/v3/events?from=${encodeURIComponent(start.json.end)}&timeout=20000`, { token: hal2.accessToken });
    await longPolling(hal2);
    const deleted = await request(hs.url, "POST", "/_matrix/client/v3/delete_devices", {
      token: hal.accessToken,
      body: { devices: [hal2.deviceId], auth: { type: "m.login.password", identifier: { type: "m.id.user", user: hal.userId }, password: hal.password } },
    });
    expect(deleted.status).toBe(200);
    const res = await polling;
    expect(res.status).toBe(401);
    expect(res.json.errcode).toBe("M_UNKNOWN_TOKEN");
  });
});

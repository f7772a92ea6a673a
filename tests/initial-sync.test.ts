// The deprecated GET /initialSync and GET /rooms/{roomId}/initialSync (old_sync.yaml,
// room_initial_sync.yaml), and peeking a world_readable room with the latter (Room Previews).
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { registerUser, type TestUser } from "./accounts-helpers.ts";
import { request, startTestServer, type TestServer } from "./harness.ts";
import { createRoom, enc, invite, joinRoom, leaveRoom, send } from "./sync-helpers.ts";

let hs: TestServer;
let alice: TestUser;
let bob: TestUser;
beforeAll(async () => {
  hs = await startTestServer({ config: { allow_guest_access: true } });
  alice = await registerUser(hs.url, "alice");
  bob = await registerUser(hs.url, "bob");
});
afterAll(() => hs.destroy());

function get(user: TestUser, path: string, query: Record<string, string | number | boolean> = {}) {
  const q = new URLSearchParams(Object.entries(query).map(([k, v]): [string, string] => [k, String(v)]));
  return request(hs.url, "GET", `${path}${Object.keys(query).length ? `?${q}` : ""}`, { token: user.accessToken });
}

async function ok(res: { status: number; json: any }): Promise<any> {
  expect(res.status, JSON.stringify(res.json)).toBe(200);
  return res.json;
}

const initialSync = (user: TestUser, query: Record<string, string | number | boolean> = {}) => get(user, "/_matrix/client/v3/initialSync", query);
const roomInitialSync = (user: TestUser, roomId: string, query: Record<string, string | number> = {}) =>
  get(user, `/_matrix/client/v3/rooms/${enc(roomId)}/initialSync`, query);

const bodiesOf = (chunk: any[]) => chunk.filter((e) => e.type === "m.room.message").map((e) => e.content.body);
const roomOf = (res: any, roomId: string) => (res.rooms as any[]).find((r) => r.room_id === roomId);

async function sendAll(user: TestUser, roomId: string, texts: string[]): Promise<void> {
  for (const body of texts) await send(hs.url, user, roomId, { msgtype: "m.text", body });
}

describe("GET /initialSync", () => {
  it("gives a joined room's state, its latest messages oldest first, account data and presence", async () => {
    const roomId = await createRoom(hs.url, alice, { preset: "public_chat", visibility: "public", name: "Snap" });
    await sendAll(alice, roomId, ["one", "two", "three"]);
    const put = await request(hs.url, "PUT", `/_matrix/client/v3/user/${enc(alice.userId)}/account_data/org.example.global`, {
      token: alice.accessToken,
      body: { answer: 42 },
    });
    expect(put.status).toBe(200);
    const putRoom = await request(hs.url, "PUT", `/_matrix/client/v3/user/${enc(alice.userId)}/rooms/${enc(roomId)}/account_data/org.example.room`, {
      token: alice.accessToken,
      body: { here: true },
    });
    expect(putRoom.status).toBe(200);

    const res = await ok(await initialSync(alice));
    expect(typeof res.end).toBe("string");
    expect(Array.isArray(res.presence)).toBe(true);
    expect(res.presence.some((p: any) => p.type === "m.presence" && p.content.user_id === alice.userId)).toBe(true);
    expect(res.account_data).toContainEqual({ type: "org.example.global", content: { answer: 42 } });

    const room = roomOf(res, roomId);
    expect(room).toBeDefined();
    expect(room.membership).toBe("join");
    expect(room.visibility).toBe("public");
    expect(room.account_data).toContainEqual({ type: "org.example.room", content: { here: true } });
    expect(bodiesOf(room.messages.chunk)).toEqual(["one", "two", "three"]);
    expect(typeof room.messages.start).toBe("string");
    expect(typeof room.messages.end).toBe("string");
    // The client event format: room_id, sender, unsigned, no PDU fields.
    const last = room.messages.chunk.at(-1);
    expect(last).toMatchObject({ room_id: roomId, sender: alice.userId, type: "m.room.message" });
    expect(last.unsigned).toBeDefined();
    expect(last.prev_events).toBeUndefined();
    expect(last.hashes).toBeUndefined();
    const types = new Set((room.state as any[]).map((e) => e.type));
    expect(types).toContain("m.room.create");
    expect(types).toContain("m.room.power_levels");
    expect(room.state.find((e: any) => e.type === "m.room.name").content.name).toBe("Snap");
  });

  it("gives at most limit messages per room (10 by default), and none with limit=0", async () => {
    const roomId = await createRoom(hs.url, alice);
    const texts = Array.from({ length: 12 }, (_, i) => `m${i}`);
    await sendAll(alice, roomId, texts);

    const two = roomOf(await ok(await initialSync(alice, { limit: 2 })), roomId);
    expect(two.messages.chunk.map((e: any) => e.content.body)).toEqual(["m10", "m11"]);

    const byDefault = roomOf(await ok(await initialSync(alice)), roomId);
    expect(byDefault.messages.chunk).toHaveLength(10);
    expect(bodiesOf(byDefault.messages.chunk)).toEqual(texts.slice(2));

    const none = roomOf(await ok(await initialSync(alice, { limit: 0 })), roomId);
    expect(none.messages.chunk).toEqual([]);
    expect(none.state.length).toBeGreaterThan(0);

    // The page's start continues backwards with /messages.
    const back = await ok(
      await get(alice, `/_matrix/client/v3/rooms/${enc(roomId)}/messages`, { dir: "b", from: two.messages.start, limit: 3 }),
    );
    expect(bodiesOf(back.chunk)).toEqual(["m9", "m8", "m7"]);
  });

  it("rejects a limit that is not a non-negative integer and an archived that is not a boolean", async () => {
    const queries: Array<Record<string, string | number>> = [{ limit: "hello" }, { limit: -1 }, { archived: "yes" }];
    for (const query of queries) {
      const res = await initialSync(alice, query);
      expect(res.status, JSON.stringify(query)).toBe(400);
      expect(res.json.errcode).toBe("M_INVALID_PARAM");
    }
  });

  it("lists a left room only with archived=true, with the messages and state up to the leave", async () => {
    const roomId = await createRoom(hs.url, alice, { preset: "public_chat", name: "Before" });
    await joinRoom(hs.url, bob, roomId);
    await sendAll(alice, roomId, ["while there"]);
    await leaveRoom(hs.url, bob, roomId);
    await sendAll(alice, roomId, ["after bob left"]);
    const rename = await request(hs.url, "PUT", `/_matrix/client/v3/rooms/${enc(roomId)}/state/m.room.name/`, {
      token: alice.accessToken,
      body: { name: "After" },
    });
    expect(rename.status).toBe(200);

    expect(roomOf(await ok(await initialSync(bob)), roomId)).toBeUndefined();
    expect(roomOf(await ok(await initialSync(bob, { archived: false })), roomId)).toBeUndefined();

    const room = roomOf(await ok(await initialSync(bob, { archived: true })), roomId);
    expect(room.membership).toBe("leave");
    const chunk = room.messages.chunk as any[];
    expect(bodiesOf(chunk)).toEqual(["while there"]);
    expect(chunk.at(-1)).toMatchObject({ type: "m.room.member", state_key: bob.userId, content: { membership: "leave" } });
    expect(room.state.find((e: any) => e.type === "m.room.name").content.name).toBe("Before");
    expect(room.state.find((e: any) => e.type === "m.room.member" && e.state_key === bob.userId).content.membership).toBe("leave");
  });

  it("lists an invite with its invite event and no messages", async () => {
    const roomId = await createRoom(hs.url, alice, { preset: "private_chat" });
    await sendAll(alice, roomId, ["secret"]);
    await invite(hs.url, alice, roomId, bob.userId);

    const room = roomOf(await ok(await initialSync(bob)), roomId);
    expect(room.membership).toBe("invite");
    expect(room.invite).toMatchObject({ type: "m.room.member", state_key: bob.userId, sender: alice.userId, content: { membership: "invite" } });
    expect(room.messages).toBeUndefined();
    expect(room.state).toBeUndefined();
  });

  it("gives an end that GET /events continues from: later events, none twice", async () => {
    const roomId = await createRoom(hs.url, alice);
    await sendAll(alice, roomId, ["before"]);
    const snapshot = await ok(await initialSync(alice));
    expect(bodiesOf(roomOf(snapshot, roomId).messages.chunk)).toEqual(["before"]);

    const idle = await ok(await get(alice, "/_matrix/client/v3/events", { from: snapshot.end }));
    expect(bodiesOf(idle.chunk)).toEqual([]);
    await sendAll(alice, roomId, ["after"]);
    const next = await ok(await get(alice, "/_matrix/client/v3/events", { from: snapshot.end, timeout: 5000 }));
    expect(bodiesOf(next.chunk)).toEqual(["after"]);
    expect(next.chunk[0].room_id).toBe(roomId);
  });

  it("is not for guests", async () => {
    const reg = await request(hs.url, "POST", "/_matrix/client/v3/register?kind=guest", { body: {} });
    expect(reg.status).toBe(200);
    const res = await request(hs.url, "GET", "/_matrix/client/v3/initialSync", { token: reg.json.access_token });
    expect(res.status).toBe(403);
    expect(res.json.errcode).toBe("M_GUEST_ACCESS_FORBIDDEN");
  });
});

describe("GET /rooms/{roomId}/initialSync", () => {
  it("gives a member the room's snapshot: membership, messages, state, presence, visibility, account data", async () => {
    const roomId = await createRoom(hs.url, alice, { preset: "private_chat", invite: [bob.userId] });
    await joinRoom(hs.url, bob, roomId);
    await sendAll(alice, roomId, ["a", "b", "c"]);
    const status = await request(hs.url, "PUT", `/_matrix/client/v3/presence/${enc(alice.userId)}/status`, {
      token: alice.accessToken,
      body: { presence: "online", status_msg: "snapshotting" },
    });
    expect(status.status).toBe(200);

    const res = await ok(await roomInitialSync(bob, roomId, { limit: 2 }));
    expect(res.room_id).toBe(roomId);
    expect(res.membership).toBe("join");
    expect(res.visibility).toBe("private");
    expect(bodiesOf(res.messages.chunk)).toEqual(["b", "c"]);
    expect(typeof res.messages.start).toBe("string");
    expect(typeof res.messages.end).toBe("string");
    expect(res.state.some((e: any) => e.type === "m.room.member" && e.state_key === alice.userId)).toBe(true);
    // Every joined member's presence: as set, or offline when never set.
    const presence = new Map((res.presence as any[]).map((p) => [p.content.user_id, p]));
    expect(presence.get(alice.userId)).toMatchObject({ type: "m.presence", content: { presence: "online", status_msg: "snapshotting" } });
    expect(presence.get(bob.userId)?.content.presence).toBe("offline");
    expect(Array.isArray(res.account_data)).toBe(true);
  });

  it("gives a former member the room up to their leave", async () => {
    const roomId = await createRoom(hs.url, alice, { preset: "public_chat" });
    await joinRoom(hs.url, bob, roomId);
    await sendAll(alice, roomId, ["seen"]);
    await leaveRoom(hs.url, bob, roomId);
    await sendAll(alice, roomId, ["unseen"]);

    const res = await ok(await roomInitialSync(bob, roomId));
    expect(res.membership).toBe("leave");
    expect(bodiesOf(res.messages.chunk)).toEqual(["seen"]);
    expect(res.state.find((e: any) => e.type === "m.room.member" && e.state_key === bob.userId).content.membership).toBe("leave");
  });

  it("lets anyone peek into a world_readable room without joining it, and refuses a shared one", async () => {
    const readable = await createRoom(hs.url, alice, {
      preset: "public_chat",
      initial_state: [{ type: "m.room.history_visibility", state_key: "", content: { history_visibility: "world_readable" } }],
    });
    await sendAll(alice, readable, ["for everyone"]);
    const shared = await createRoom(hs.url, alice, { preset: "public_chat" });
    await sendAll(alice, shared, ["members only"]);

    const peek = await ok(await roomInitialSync(bob, readable));
    expect(peek.room_id).toBe(readable);
    expect(peek.membership).toBeUndefined();
    expect(bodiesOf(peek.messages.chunk)).toEqual(["for everyone"]);
    // History visibility still applies: what came before world_readable (the create event) is not shown.
    expect(peek.messages.chunk.some((e: any) => e.type === "m.room.create")).toBe(false);
    expect(peek.messages.chunk.some((e: any) => e.type === "m.room.history_visibility")).toBe(true);
    expect(peek.state.some((e: any) => e.type === "m.room.history_visibility")).toBe(true);
    // Peeking is not joining.
    const members = await ok(await get(alice, `/_matrix/client/v3/rooms/${enc(readable)}/joined_members`));
    expect(Object.keys(members.joined)).toEqual([alice.userId]);

    const refused = await roomInitialSync(bob, shared);
    expect(refused.status).toBe(403);
    expect(refused.json.errcode).toBe("M_FORBIDDEN");
    const unknown = await roomInitialSync(bob, "!nowhere:localhost");
    expect(unknown.status).toBe(403);
  });

  it("lets a guest peek into a world_readable room", async () => {
    const roomId = await createRoom(hs.url, alice, {
      preset: "public_chat",
      initial_state: [
        { type: "m.room.history_visibility", state_key: "", content: { history_visibility: "world_readable" } },
        { type: "m.room.guest_access", state_key: "", content: { guest_access: "can_join" } },
      ],
    });
    await sendAll(alice, roomId, ["hello guests"]);
    const reg = await request(hs.url, "POST", "/_matrix/client/v3/register?kind=guest", { body: {} });
    expect(reg.status).toBe(200);
    const res = await request(hs.url, "GET", `/_matrix/client/v3/rooms/${enc(roomId)}/initialSync`, { token: reg.json.access_token });
    expect(res.status, JSON.stringify(res.json)).toBe(200);
    expect(bodiesOf(res.json.messages.chunk)).toEqual(["hello guests"]);
  });
});

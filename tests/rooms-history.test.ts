// Reading rooms over HTTP: /messages (tokens, directions, filters), history visibility, /context,
// /event, /members, /joined_members.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { request, startTestServer, type TestServer } from "./harness.ts";
import { type RoomUser, registerRoomUser, roomPath, timeline } from "./rooms-helpers.ts";

let hs: TestServer;
let alice: RoomUser;
let bob: RoomUser;
let carol: RoomUser;
beforeAll(async () => {
  hs = await startTestServer();
  [alice, bob, carol] = (await Promise.all(["alice", "bob", "carol"].map((n) => registerRoomUser(hs.url, n)))) as [RoomUser, RoomUser, RoomUser];
});
afterAll(() => hs.destroy());

const bodies = (events: any[]) => events.filter((e) => e.type === "m.room.message").map((e) => e.content.body);
const text = (body: string) => ({ msgtype: "m.text", body });

describe("/messages", () => {
  it("pages backwards and forwards with opaque tokens, and leaves out end when history is exhausted", async () => {
    const roomId = await alice.createRoom();
    for (let i = 0; i < 7; i++) await alice.send(roomId, text(`m${i}`));
    const first = await alice.messages(roomId, { dir: "b", limit: "3" });
    expect(bodies(first.json.chunk)).toEqual(["m6", "m5", "m4"]);
    expect(typeof first.json.start).toBe("string");
    const second = await alice.messages(roomId, { dir: "b", limit: "3", from: first.json.end });
    expect(bodies(second.json.chunk)).toEqual(["m3", "m2", "m1"]);
    // Forwards from the second page's end comes back over the same events.
    const forwards = await alice.messages(roomId, { dir: "f", limit: "4", from: second.json.end });
    expect(bodies(forwards.json.chunk)).toEqual(["m1", "m2", "m3", "m4"]);
    // `to` stops the page.
    const bounded = await alice.messages(roomId, { dir: "b", from: first.json.end, to: second.json.end });
    expect(bodies(bounded.json.chunk)).toEqual(["m3", "m2", "m1"]);
    expect(bounded.json.end).toBeUndefined();
    // From the very start, forwards.
    const fromStart = await alice.messages(roomId, { dir: "f", limit: "2" });
    expect(fromStart.json.chunk.map((e: any) => e.type)).toEqual(["m.room.create", "m.room.member"]);
    // The whole history, then nothing more.
    const all = await alice.messages(roomId, { dir: "b", limit: "100" });
    expect(all.json.end).toBeUndefined();
    expect(all.json.chunk.at(-1).type).toBe("m.room.create");
    // A later message is found forwards from the first page's start.
    await alice.send(roomId, text("m7"));
    const later = await alice.messages(roomId, { dir: "f", from: first.json.start });
    expect(bodies(later.json.chunk)).toEqual(["m7"]);
  });

  it("pages forwards from a /sync next_batch; a forwards page always carries end, to poll from", async () => {
    const roomId = await alice.createRoom();
    await alice.send(roomId, text("before"));
    const synced = await request(hs.url, "GET", "/_matrix/client/v3/sync", { token: alice.accessToken });
    const token = synced.json.next_batch as string;
    const empty = await alice.messages(roomId, { dir: "f", from: token });
    expect(empty.status).toBe(200);
    expect(empty.json.chunk).toEqual([]);
    expect(typeof empty.json.end).toBe("string");
    await alice.send(roomId, text("after"));
    const next = await alice.messages(roomId, { dir: "f", from: empty.json.end });
    expect(bodies(next.json.chunk)).toEqual(["after"]);
    expect(typeof next.json.end).toBe("string");
  });

  it("requires dir and refuses bad tokens", async () => {
    const roomId = await alice.createRoom();
    expect((await alice.messages(roomId, {})).status).toBe(400);
    const bad = await alice.messages(roomId, { dir: "b", from: "garbage" });
    expect(bad.status).toBe(400);
  });

  it("applies the RoomEventFilter: types, not_types, senders, contains_url, lazy-loaded members", async () => {
    const roomId = await alice.createRoom({ preset: "public_chat" });
    await bob.join(roomId);
    await alice.send(roomId, text("from alice"));
    await bob.send(roomId, text("from bob"));
    await bob.send(roomId, { msgtype: "m.image", body: "pic", url: "mxc://test.local/pic" });
    await alice.send(roomId, { x: 1 }, "org.example.custom");
    const get = (filter: object) => alice.messages(roomId, { dir: "b", filter: JSON.stringify(filter) });
    expect((await get({ types: ["org.example.*"] })).json.chunk.map((e: any) => e.type)).toEqual(["org.example.custom"]);
    expect(bodies((await get({ senders: [bob.userId], types: ["m.room.message"] })).json.chunk)).toEqual(["pic", "from bob"]);
    expect(bodies((await get({ not_senders: [bob.userId], types: ["m.room.message"] })).json.chunk)).toEqual(["from alice"]);
    expect(bodies((await get({ contains_url: true })).json.chunk)).toEqual(["pic"]);
    expect((await get({ not_types: ["m.room.member", "m.room.message"], limit: 100 })).json.chunk.map((e: any) => e.type)).not.toContain(
      "m.room.message",
    );
    const lazy = await get({ lazy_load_members: true, types: ["m.room.message"], senders: [bob.userId] });
    expect(lazy.json.state.map((e: any) => e.state_key)).toEqual([bob.userId]);
    expect((await alice.messages(roomId, { dir: "b", filter: "{not json" })).status).toBe(400);
  });

  it("answers 403 to users who were never in the room", async () => {
    const roomId = await alice.createRoom();
    const res = await carol.messages(roomId, { dir: "b" });
    expect(res.status).toBe(403);
    expect(res.json.errcode).toBe("M_FORBIDDEN");
    expect((await carol.call("GET", roomPath(roomId, "/state"))).status).toBe(403);
    expect((await carol.call("GET", roomPath("!unknown:test.local", "/messages?dir=b"))).status).toBe(403);
  });
});

describe("history visibility", () => {
  async function roomWith(visibility: string) {
    const roomId = await alice.createRoom({
      preset: "public_chat",
      initial_state: [{ type: "m.room.history_visibility", content: { history_visibility: visibility } }],
    });
    await alice.send(roomId, text("before invite"));
    return roomId;
  }

  it("shared: a new member sees what was sent before they joined", async () => {
    const roomId = await roomWith("shared");
    await bob.join(roomId);
    expect(bodies(await timeline(bob, roomId))).toEqual(["before invite"]);
  });

  it("joined: a new member sees only what was sent while they were joined", async () => {
    const roomId = await roomWith("joined");
    await alice.call("POST", roomPath(roomId, "/invite"), { user_id: bob.userId });
    await alice.send(roomId, text("while invited"));
    await bob.join(roomId);
    await alice.send(roomId, text("after join"));
    const events = await timeline(bob, roomId);
    expect(bodies(events)).toEqual(["after join"]);
    // Their own join (and the invite before it) are theirs to see.
    expect(events.some((e) => e.type === "m.room.member" && e.state_key === bob.userId && e.content.membership === "join")).toBe(true);
    expect((await bob.call("GET", roomPath(roomId, `/event/${encodeURIComponent(events[0].event_id)}`))).status).toBe(200);
  });

  it("invited: a member sees what was sent from their invite on", async () => {
    const roomId = await roomWith("invited");
    await alice.call("POST", roomPath(roomId, "/invite"), { user_id: bob.userId });
    await alice.send(roomId, text("while invited"));
    await bob.join(roomId);
    expect(bodies(await timeline(bob, roomId))).toEqual(["while invited"]);
  });

  it("world_readable: anyone reads the history and the state without joining", async () => {
    const roomId = await roomWith("world_readable");
    expect(bodies(await timeline(carol, roomId))).toEqual(["before invite"]);
    expect((await carol.call("GET", roomPath(roomId, "/state"))).status).toBe(200);
    expect((await carol.state(roomId, "m.room.join_rules")).json).toEqual({ join_rule: "public" });
  });

  it("a former member reads up to their leave, and nothing after it", async () => {
    const roomId = await roomWith("shared");
    await bob.join(roomId);
    await alice.send(roomId, text("while joined"));
    await alice.setState(roomId, "m.room.topic", { topic: "old topic" });
    await bob.call("POST", roomPath(roomId, "/leave"), {});
    await alice.send(roomId, text("after leave"));
    await alice.setState(roomId, "m.room.topic", { topic: "new topic" });
    const events = await timeline(bob, roomId);
    expect(bodies(events)).toEqual(["before invite", "while joined"]);
    expect(events.at(-1)).toMatchObject({ type: "m.room.member", state_key: bob.userId, content: { membership: "leave" } });
    // The state they see is the state at their leave.
    expect((await bob.state(roomId, "m.room.topic")).json).toEqual({ topic: "old topic" });
    const members = (await bob.call("GET", roomPath(roomId, "/members"))).json.chunk;
    expect(members.find((m: any) => m.state_key === bob.userId).content.membership).toBe("leave");
    // Events after the leave are not found for them.
    const after = (await timeline(alice, roomId)).at(-2);
    expect(after.content.body).toBe("after leave");
    expect((await bob.call("GET", roomPath(roomId, `/event/${encodeURIComponent(after.event_id)}`))).status).toBe(404);
    // Forwards from an early point stops at the leave too.
    const forwards = await bob.messages(roomId, { dir: "f", limit: "100" });
    expect(bodies(forwards.json.chunk)).toEqual(["before invite", "while joined"]);
    expect((await bob.call("GET", roomPath(roomId, "/joined_members"))).status).toBe(403);
  });
});

describe("/context, /event, /members, /joined_members", () => {
  it("returns an event with the events around it, tokens both ways and the state at the last one", async () => {
    const roomId = await alice.createRoom({ name: "Context" });
    const ids: string[] = [];
    for (let i = 0; i < 9; i++) ids.push(await alice.send(roomId, text(`c${i}`)));
    const res = await alice.call("GET", roomPath(roomId, `/context/${encodeURIComponent(ids[4]!)}?limit=4`));
    expect(res.status).toBe(200);
    expect(res.json.event.content.body).toBe("c4");
    expect(bodies(res.json.events_before)).toEqual(["c3", "c2"]);
    expect(bodies(res.json.events_after)).toEqual(["c5", "c6"]);
    expect(res.json.state.find((e: any) => e.type === "m.room.name").content).toEqual({ name: "Context" });
    const before = await alice.messages(roomId, { dir: "b", limit: "2", from: res.json.start });
    expect(bodies(before.json.chunk)).toEqual(["c1", "c0"]);
    const after = await alice.messages(roomId, { dir: "f", limit: "2", from: res.json.end });
    expect(bodies(after.json.chunk)).toEqual(["c7", "c8"]);
    const lazy = await alice.call("GET", roomPath(roomId, `/context/${encodeURIComponent(ids[4]!)}?limit=2&filter=${encodeURIComponent('{"lazy_load_members":true}')}`));
    expect(lazy.json.state.map((e: any) => e.type)).toEqual(["m.room.member"]);
    const missing = await alice.call("GET", roomPath(roomId, "/context/$nope"));
    expect(missing.status).toBe(404);
    expect((await alice.call("GET", roomPath(roomId, "/event/$nope"))).status).toBe(404);
  });

  it("lists members now and at an earlier point, filtered by membership", async () => {
    const roomId = await alice.createRoom({ preset: "public_chat" });
    await bob.join(roomId);
    const early = await alice.messages(roomId, { dir: "b", limit: "1" });
    await carol.join(roomId);
    await alice.call("POST", roomPath(roomId, "/kick"), { user_id: bob.userId });
    const members = async (query: string) =>
      ((await alice.call("GET", roomPath(roomId, `/members${query}`))).json.chunk as any[]).map((e) => `${e.state_key}=${e.content.membership}`).sort();
    expect(await members("")).toEqual([`${alice.userId}=join`, `${bob.userId}=leave`, `${carol.userId}=join`].sort());
    expect(await members("?membership=join")).toEqual([`${alice.userId}=join`, `${carol.userId}=join`].sort());
    expect(await members("?not_membership=join")).toEqual([`${bob.userId}=leave`]);
    expect(await members(`?at=${encodeURIComponent(early.json.start)}`)).toEqual([`${alice.userId}=join`, `${bob.userId}=join`].sort());
    const joined = (await alice.call("GET", roomPath(roomId, "/joined_members"))).json.joined;
    expect(joined).toEqual({ [alice.userId]: { display_name: "alice", avatar_url: null }, [carol.userId]: { display_name: "carol", avatar_url: null } });
  });
});

// The threads list over HTTP: GET /_matrix/client/v1/rooms/{roomId}/threads.
// https://spec.matrix.org/latest/client-server-api/#querying-threads-in-a-room
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startTestServer, type TestServer } from "./harness.ts";
import { type RoomUser, registerRoomUser } from "./rooms-helpers.ts";

let hs: TestServer;
let alice: RoomUser;
let bob: RoomUser;
let carol: RoomUser;
let dave: RoomUser;
beforeAll(async () => {
  hs = await startTestServer();
  [alice, bob, carol, dave] = (await Promise.all(["alice", "bob", "carol", "dave"].map((n) => registerRoomUser(hs.url, n)))) as RoomUser[] as [
    RoomUser,
    RoomUser,
    RoomUser,
    RoomUser,
  ];
});
afterAll(() => hs.destroy());

const enc = encodeURIComponent;

function threadsOf(user: RoomUser, roomId: string, query: Record<string, string> = {}) {
  return user.call("GET", `/_matrix/client/v1/rooms/${enc(roomId)}/threads?${new URLSearchParams(query)}`);
}

async function threadIds(user: RoomUser, roomId: string, query: Record<string, string> = {}): Promise<string[]> {
  const res = await threadsOf(user, roomId, query);
  expect(res.status, JSON.stringify(res.json)).toBe(200);
  return res.json.chunk.map((e: any) => e.event_id);
}

const root = (user: RoomUser, roomId: string, body: string) => user.send(roomId, { msgtype: "m.text", body });
const reply = (user: RoomUser, roomId: string, rootId: string, body: string) =>
  user.send(roomId, {
    msgtype: "m.text",
    body,
    "m.relates_to": { rel_type: "m.thread", event_id: rootId, is_falling_back: true, "m.in_reply_to": { event_id: rootId } },
  });

async function publicRoom(...members: RoomUser[]): Promise<string> {
  const roomId = await alice.createRoom({ preset: "public_chat" });
  for (const m of members) expect((await m.join(roomId)).status).toBe(200);
  return roomId;
}

describe("threads list", () => {
  it("lists thread roots, the latest reply first, each with its m.thread aggregation", async () => {
    const roomId = await publicRoom(bob);
    const a = await root(alice, roomId, "a");
    const b = await root(alice, roomId, "b");
    const c = await root(bob, roomId, "c");
    await root(alice, roomId, "not a thread");
    await reply(bob, roomId, a, "a1");
    await reply(bob, roomId, c, "c1");
    const latestOfB = await reply(alice, roomId, b, "b1");
    expect(await threadIds(alice, roomId)).toEqual([b, c, a]);

    const res = await threadsOf(alice, roomId);
    const [first] = res.json.chunk;
    expect(first.content.body).toBe("b");
    expect(first.unsigned["m.relations"]["m.thread"]).toMatchObject({ count: 1, current_user_participated: true });
    expect(first.unsigned["m.relations"]["m.thread"].latest_event.event_id).toBe(latestOfB);
    // For bob: b is alice's alone, c is his root, a has his reply.
    const forBob = (await threadsOf(bob, roomId)).json.chunk;
    expect(forBob.map((e: any) => e.unsigned["m.relations"]["m.thread"].current_user_participated)).toEqual([false, true, true]);

    // A new reply moves its thread to the front.
    await reply(alice, roomId, a, "a2");
    expect(await threadIds(alice, roomId)).toEqual([a, b, c]);
    const aggregated = (await threadsOf(alice, roomId)).json.chunk[0].unsigned["m.relations"]["m.thread"];
    expect(aggregated.count).toBe(2);
    expect(aggregated.latest_event.content.body).toBe("a2");
    expect(await threadIds(alice, roomId, { include: "all" })).toEqual([a, b, c]);
  });

  it("include=participated: threads whose root or a reply the user sent", async () => {
    const roomId = await publicRoom(bob, carol);
    const byAlice = await root(alice, roomId, "alice's root");
    const byBob = await root(bob, roomId, "bob's root");
    const bobAlone = await root(bob, roomId, "bob alone");
    await reply(bob, roomId, byAlice, "bob answers alice");
    await reply(alice, roomId, byBob, "alice answers bob");
    await reply(bob, roomId, bobAlone, "bob talks to himself");
    expect(await threadIds(alice, roomId, { include: "participated" })).toEqual([byBob, byAlice]);
    expect(await threadIds(bob, roomId, { include: "participated" })).toEqual([bobAlone, byBob, byAlice]);
    expect(await threadIds(carol, roomId, { include: "participated" })).toEqual([]);
    expect(await threadIds(carol, roomId)).toEqual([bobAlone, byBob, byAlice]);
  });

  it("pages with next_batch, without repeating or skipping a thread", async () => {
    const roomId = await publicRoom();
    const roots: string[] = [];
    for (let i = 0; i < 5; i++) roots.push(await root(alice, roomId, `root ${i}`));
    for (const r of roots) await reply(alice, roomId, r, `reply to ${r}`);
    const expected = [...roots].reverse();

    const pages: string[][] = [];
    let from: string | undefined;
    for (let guard = 0; guard < 10; guard++) {
      const res = await threadsOf(alice, roomId, { limit: "2", ...(from ? { from } : {}) });
      expect(res.status).toBe(200);
      pages.push(res.json.chunk.map((e: any) => e.event_id));
      from = res.json.next_batch;
      if (!from) break;
    }
    expect(pages[0]).toEqual(expected.slice(0, 2));
    expect(pages[1]).toEqual(expected.slice(2, 4));
    expect(pages.flat()).toEqual(expected);
    expect(from).toBeUndefined();
    // A reply while paging moves that thread to the front; the pages already read are unaffected.
    const firstPage = await threadsOf(alice, roomId, { limit: "2" });
    await reply(alice, roomId, expected[4]!, "late");
    const rest = await threadIds(alice, roomId, { limit: "10", from: firstPage.json.next_batch });
    expect(rest).toEqual(expected.slice(2, 4));
  });

  it("answers 400 for bad parameters and 403 for rooms the user cannot read", async () => {
    const roomId = await alice.createRoom({ preset: "private_chat" });
    const bad: Array<Record<string, string>> = [{ limit: "0" }, { limit: "-1" }, { limit: "ten" }, { include: "mine" }, { from: "garbage" }, { from: "s5" }];
    for (const query of bad) {
      const res = await threadsOf(alice, roomId, query);
      expect(res.status, JSON.stringify(query)).toBe(400);
      expect(res.json.errcode, JSON.stringify(query)).toMatch(/^M_(INVALID_PARAM|BAD_JSON)$/);
    }
    const outsider = await threadsOf(bob, roomId);
    expect(outsider.status).toBe(403);
    expect(outsider.json.errcode).toBe("M_FORBIDDEN");
    expect((await threadsOf(bob, "!unknown:test.local")).status).toBe(403);
  });

  it("follows history visibility: threads before a joined-only member's join are hidden, and after a member left", async () => {
    const roomId = await alice.createRoom({ preset: "public_chat" });
    expect((await alice.setState(roomId, "m.room.history_visibility", { history_visibility: "joined" })).status).toBe(200);
    const early = await root(alice, roomId, "before dave");
    await reply(alice, roomId, early, "early reply");
    expect((await dave.join(roomId)).status).toBe(200);
    const later = await root(alice, roomId, "with dave");
    await reply(alice, roomId, later, "later reply");
    expect(await threadIds(alice, roomId)).toEqual([later, early]);
    expect(await threadIds(dave, roomId)).toEqual([later]);

    expect((await dave.call("POST", `/_matrix/client/v3/rooms/${enc(roomId)}/leave`, {})).status).toBe(200);
    const afterLeave = await root(alice, roomId, "after dave left");
    await reply(alice, roomId, afterLeave, "after reply");
    expect(await threadIds(alice, roomId)).toEqual([afterLeave, later, early]);
    expect(await threadIds(dave, roomId)).toEqual([later]);
  });

  it("shows world_readable rooms' threads to anyone", async () => {
    const roomId = await alice.createRoom({ preset: "public_chat" });
    expect((await alice.setState(roomId, "m.room.history_visibility", { history_visibility: "world_readable" })).status).toBe(200);
    const r = await root(alice, roomId, "open");
    await reply(alice, roomId, r, "open reply");
    expect(await threadIds(carol, roomId)).toEqual([r]);
  });
});

// The spaces hierarchy: GET /_matrix/client/v1/rooms/{roomId}/hierarchy, and federation's
// GET /_matrix/federation/v1/hierarchy/{roomId} filling in rooms of another server.
// https://spec.matrix.org/latest/client-server-api/#get_matrixclientv1roomsroomidhierarchy
// https://spec.matrix.org/latest/server-server-api/#get_matrixfederationv1hierarchyroomid
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Network, startNetwork } from "./federation-harness.ts";
import { type TestServer, createTestDatabase, request, startTestServer } from "./harness.ts";
import { type RoomUser, asRoomUser, registerRoomUser } from "./rooms-helpers.ts";

const enc = encodeURIComponent;
const SPACE = { creation_content: { type: "m.space" } };

const hierarchy = (user: RoomUser, roomId: string, params: Record<string, string | undefined> = {}) =>
  user.call("GET", `/_matrix/client/v1/rooms/${enc(roomId)}/hierarchy?${new URLSearchParams(Object.entries(params).filter((e): e is [string, string] => e[1] !== undefined))}`);
const ids = (res: { json: { rooms: Array<{ room_id: string }> } }) => res.json.rooms.map((r) => r.room_id);

async function addChild(user: RoomUser, space: string, child: string, content: Record<string, unknown>) {
  const res = await user.setState(space, "m.space.child", content, child);
  expect(res.status, JSON.stringify(res.json)).toBe(200);
}

describe("GET /rooms/{roomId}/hierarchy on one server", () => {
  let hs: TestServer;
  /** Added to the server's clock (tokens expire). */
  let clockOffset = 0;
  let alice: RoomUser; // builds the spaces
  let bob: RoomUser; // browses them
  const r = {} as Record<"space" | "general" | "sub" | "c" | "d" | "secret" | "unlinked", string>;
  const via = { via: ["test.local"] };

  beforeAll(async () => {
    hs = await startTestServer({ now: () => Date.now() + clockOffset });
    [alice, bob] = await Promise.all([registerRoomUser(hs.url, "alice"), registerRoomUser(hs.url, "bob")]);
    const pub = { preset: "public_chat" };
    r.space = await alice.createRoom({ ...pub, ...SPACE, name: "Top space", topic: "Everything" });
    r.general = await alice.createRoom({ ...pub, name: "General" });
    r.sub = await alice.createRoom({ ...pub, ...SPACE, name: "Sub space" });
    r.c = await alice.createRoom({ ...pub, name: "C" });
    r.d = await alice.createRoom({ ...pub, name: "D" });
    r.secret = await alice.createRoom({ preset: "private_chat", name: "Secret" });
    r.unlinked = await alice.createRoom({ ...pub, name: "Unlinked" });
    // Top space: general (order "a", suggested), sub (order "b"), secret (no order: after them).
    await addChild(alice, r.space, r.general, { ...via, order: "a", suggested: true });
    await addChild(alice, r.space, r.secret, via);
    await addChild(alice, r.space, r.sub, { ...via, order: "b" });
    // A child whose via was cleared is no child.
    await addChild(alice, r.space, r.unlinked, {});
    // Sub space: c then d (by the events' timestamps), and a loop back to the top.
    await addChild(alice, r.sub, r.c, via);
    await addChild(alice, r.sub, r.d, via);
    await addChild(alice, r.sub, r.space, via);
  });
  afterAll(() => hs?.destroy());

  it("walks the space depth-first in the spec's child order, each room once, with summaries and children_state", async () => {
    const res = await hierarchy(bob, r.space);
    expect(res.status, JSON.stringify(res.json)).toBe(200);
    expect(ids(res)).toEqual([r.space, r.general, r.sub, r.c, r.d]);
    expect(res.json.next_batch).toBeUndefined();
    const top = res.json.rooms[0];
    expect(top).toMatchObject({
      room_id: r.space,
      name: "Top space",
      topic: "Everything",
      room_type: "m.space",
      join_rule: "public",
      num_joined_members: 1,
      world_readable: false,
      guest_can_join: false,
    });
    // The unlinked child (no via) is left out; the rest in the spec's order.
    expect(top.children_state.map((e: { state_key: string }) => e.state_key)).toEqual([r.general, r.sub, r.secret]);
    const general = top.children_state[0];
    expect(general).toEqual({
      type: "m.space.child",
      state_key: r.general,
      content: { via: ["test.local"], order: "a", suggested: true },
      sender: alice.userId,
      origin_server_ts: expect.any(Number),
    });
    // A room that is no space has no children_state.
    expect(res.json.rooms[1]).toMatchObject({ room_id: r.general, name: "General", children_state: [] });
    expect(res.json.rooms[1].room_type).toBeUndefined();
  });

  it("stops at max_depth", async () => {
    expect(ids(await hierarchy(bob, r.space, { max_depth: "0" }))).toEqual([r.space]);
    expect(ids(await hierarchy(bob, r.space, { max_depth: "1" }))).toEqual([r.space, r.general, r.sub]);
  });

  it("pages with next_batch, without duplicates, and keeps the walk's parameters", async () => {
    const seen: string[] = [];
    let from: string | undefined;
    let pages = 0;
    do {
      const res = await hierarchy(bob, r.space, { limit: "2", ...(from ? { from } : {}) });
      expect(res.status, JSON.stringify(res.json)).toBe(200);
      expect(res.json.rooms.length).toBeLessThanOrEqual(2);
      seen.push(...ids(res));
      from = res.json.next_batch;
      pages++;
    } while (from && pages < 10);
    expect(seen).toEqual([r.space, r.general, r.sub, r.c, r.d]);

    const first = await hierarchy(bob, r.space, { limit: "1", max_depth: "2" });
    const token = first.json.next_batch as string;
    expect(typeof token).toBe("string");
    // The same token again gives the same page (a retried request).
    const again = await hierarchy(bob, r.space, { limit: "1", max_depth: "2", from: token });
    expect(ids(again)).toEqual([r.general]);
    // max_depth or suggested_only changed, another room, another user: 400.
    for (const res of [
      await hierarchy(bob, r.space, { limit: "1", max_depth: "3", from: token }),
      await hierarchy(bob, r.space, { limit: "1", from: token }),
      await hierarchy(bob, r.space, { limit: "1", max_depth: "2", suggested_only: "true", from: token }),
      await hierarchy(bob, r.sub, { limit: "1", max_depth: "2", from: token }),
      await hierarchy(alice, r.space, { limit: "1", max_depth: "2", from: token }),
      await hierarchy(bob, r.space, { from: "not-a-token" }),
    ]) {
      expect(res.status).toBe(400);
      expect(res.json.errcode).toBe("M_INVALID_PARAM");
    }
  });

  it("refuses a next_batch token after five minutes", async () => {
    const first = await hierarchy(bob, r.space, { limit: "1" });
    const from = first.json.next_batch as string;
    expect((await hierarchy(bob, r.space, { limit: "1", from })).status).toBe(200);
    clockOffset += 5 * 60 * 1000 + 1;
    try {
      const late = await hierarchy(bob, r.space, { limit: "1", from });
      expect(late.status).toBe(400);
      expect(late.json.errcode).toBe("M_INVALID_PARAM");
    } finally {
      clockOffset = 0;
    }
  });

  it("refuses a bad limit or max_depth with 400 M_INVALID_PARAM", async () => {
    for (const params of [{ limit: "0" }, { limit: "-1" }, { limit: "ten" }, { max_depth: "-1" }, { max_depth: "1.5" }, { suggested_only: "yes" }]) {
      const res = await hierarchy(bob, r.space, params);
      expect(res.status, JSON.stringify(params)).toBe(400);
      expect(res.json.errcode).toBe("M_INVALID_PARAM");
    }
  });

  it("with suggested_only, follows only suggested children", async () => {
    const res = await hierarchy(bob, r.space, { suggested_only: "true" });
    expect(res.status).toBe(200);
    expect(ids(res)).toEqual([r.space, r.general]);
    expect(res.json.rooms[0].children_state.map((e: { state_key: string }) => e.state_key)).toEqual([r.general]);
  });

  it("leaves out a private child the user may not see, and shows it once they are invited and joined", async () => {
    const carol = await registerRoomUser(hs.url, "carol");
    expect(ids(await hierarchy(carol, r.space))).not.toContain(r.secret);
    // Alice is in it: she sees it, after the sub space's rooms (no order key, latest timestamp).
    expect(ids(await hierarchy(alice, r.space))).toEqual([r.space, r.general, r.sub, r.c, r.d, r.secret]);
    expect((await alice.call("POST", `/_matrix/client/v3/rooms/${enc(r.secret)}/invite`, { user_id: carol.userId })).status).toBe(200);
    expect((await carol.join(r.secret)).status).toBe(200);
    const after = await hierarchy(carol, r.space);
    expect(ids(after)).toEqual([r.space, r.general, r.sub, r.c, r.d, r.secret]);
    expect(after.json.rooms[5]).toMatchObject({ room_id: r.secret, name: "Secret", join_rule: "invite", num_joined_members: 2 });
  });

  it("shows a restricted child to members of a room its join rule allows", async () => {
    const restricted = await alice.createRoom({
      preset: "private_chat",
      room_version: "10",
      name: "Members of sub only",
      initial_state: [{ type: "m.room.join_rules", state_key: "", content: { join_rule: "restricted", allow: [{ type: "m.room_membership", room_id: r.sub }] } }],
    });
    await addChild(alice, r.c, restricted, via);
    const dave = await registerRoomUser(hs.url, "dave");
    expect(ids(await hierarchy(dave, r.c))).toEqual([r.c]);
    expect((await dave.join(r.sub)).status).toBe(200);
    const res = await hierarchy(dave, r.c);
    expect(ids(res)).toEqual([r.c, restricted]);
    expect(res.json.rooms[1]).toMatchObject({ join_rule: "restricted", allowed_room_ids: [r.sub] });
  });

  it("is 403 for a root the user may not see, and for an unknown room", async () => {
    const eve = await registerRoomUser(hs.url, "eve");
    for (const room of [r.secret, "!nowhere:test.local"]) {
      const res = await hierarchy(eve, room);
      expect(res.status).toBe(403);
      expect(res.json.errcode).toBe("M_FORBIDDEN");
    }
  });

  it("needs an access token", async () => {
    const res = await request(hs.url, "GET", `/_matrix/client/v1/rooms/${enc(r.space)}/hierarchy`);
    expect(res.status).toBe(401);
  });
});

describe("rooms of another server, filled in over federation", () => {
  let net: Network;
  let hs1: TestServer;
  let hs2: TestServer;
  let alice: RoomUser; // @alice:hs1.test
  let bob: RoomUser; // @bob:hs2.test
  const r = {} as Record<"space" | "remoteSpace" | "remoteRoom" | "remotePrivate" | "remoteLeaf", string>;

  beforeAll(async () => {
    net = await startNetwork(2);
    [hs1, hs2] = net.servers as [TestServer, TestServer];
    [alice, bob] = await Promise.all([registerRoomUser(hs1.url, "alice"), registerRoomUser(hs2.url, "bob")]);
    const pub = { preset: "public_chat" };
    r.space = await alice.createRoom({ ...pub, ...SPACE, name: "hs1 space" });
    r.remoteSpace = await bob.createRoom({ ...pub, ...SPACE, name: "hs2 space" });
    r.remoteRoom = await bob.createRoom({ ...pub, name: "hs2 room", topic: "lives on hs2" });
    r.remotePrivate = await bob.createRoom({ preset: "private_chat", name: "hs2 private" });
    r.remoteLeaf = await bob.createRoom({ ...pub, name: "hs2 leaf" });
    await addChild(alice, r.space, r.remoteSpace, { via: ["hs2.test"] });
    await addChild(alice, r.space, r.remoteLeaf, { via: ["nowhere.invalid", "hs2.test"], suggested: true });
    // A room whose only server cannot be reached: left out.
    await addChild(alice, r.space, "!gone:nowhere.invalid", { via: ["nowhere.invalid"] });
    await addChild(bob, r.remoteSpace, r.remoteRoom, { via: ["hs2.test"] });
    await addChild(bob, r.remoteSpace, r.remotePrivate, { via: ["hs2.test"] });
  }, 60_000);
  afterAll(() => net?.destroy());

  it("the federation endpoint answers the room, the children the asking server may see, and the others as inaccessible", async () => {
    const res = await hs1.services.federation.http.request("hs2.test", {
      method: "GET",
      path: `/_matrix/federation/v1/hierarchy/${enc(r.remoteSpace)}?suggested_only=false`,
    });
    expect(res.status).toBe(200);
    const body = res.body as { room: any; children: any[]; inaccessible_children: string[] };
    expect(body.room).toMatchObject({ room_id: r.remoteSpace, name: "hs2 space", room_type: "m.space", join_rule: "public", num_joined_members: 1 });
    expect(body.room.children_state.map((e: { state_key: string }) => e.state_key).sort()).toEqual([r.remoteRoom, r.remotePrivate].sort());
    expect(body.children).toEqual([expect.objectContaining({ room_id: r.remoteRoom, name: "hs2 room", topic: "lives on hs2" })]);
    expect(body.inaccessible_children).toEqual([r.remotePrivate]);

    // A room the asking server may not see is 404; so is one the server does not know; unsigned is 401.
    const hidden = await hs1.services.federation.http.request("hs2.test", { method: "GET", path: `/_matrix/federation/v1/hierarchy/${enc(r.remotePrivate)}` });
    expect(hidden.status).toBe(404);
    const unknown = await hs1.services.federation.http.request("hs2.test", { method: "GET", path: `/_matrix/federation/v1/hierarchy/${enc("!nope:hs2.test")}` });
    expect(unknown.status).toBe(404);
    expect((await request(hs2.url, "GET", `/_matrix/federation/v1/hierarchy/${enc(r.remoteSpace)}`)).status).toBe(401);
  });

  it("a client's walk asks the via servers for the rooms its server is not in", async () => {
    const res = await hierarchy(alice, r.space);
    expect(res.status, JSON.stringify(res.json)).toBe(200);
    // The remote space, its public room (not the private one), then the leaf (via's first server fails).
    expect(ids(res)).toEqual([r.space, r.remoteSpace, r.remoteRoom, r.remoteLeaf]);
    expect(res.json.rooms[1]).toMatchObject({ room_id: r.remoteSpace, name: "hs2 space", room_type: "m.space" });
    expect(res.json.rooms[0].children_state).toHaveLength(3);
    expect(res.json.rooms[1].children_state).toHaveLength(2);
    expect(res.json.rooms[2]).toMatchObject({ room_id: r.remoteRoom, name: "hs2 room", topic: "lives on hs2", children_state: [] });
    expect(res.json.rooms[3]).toMatchObject({ room_id: r.remoteLeaf, name: "hs2 leaf" });

    const suggested = await hierarchy(alice, r.space, { suggested_only: "true" });
    expect(ids(suggested)).toEqual([r.space, r.remoteLeaf]);
  });

  it("applies the room's server ACL to the federation endpoint", async () => {
    const acl = await bob.setState(r.remoteSpace, "m.room.server_acl", { allow: ["*"], deny: ["hs1.test"], allow_ip_literals: false });
    expect(acl.status).toBe(200);
    const res = await hs1.services.federation.http.request("hs2.test", { method: "GET", path: `/_matrix/federation/v1/hierarchy/${enc(r.remoteSpace)}` });
    expect(res.status).toBe(403);
    expect((res.body as { errcode: string }).errcode).toBe("M_FORBIDDEN");
  });
});

describe.skipIf(!process.env.DATABASE_URL)("two processes on one PostgreSQL", () => {
  it("takes a next_batch token issued by the other process", async () => {
    const database = await createTestDatabase();
    const dataDir = await mkdtemp(path.join(tmpdir(), "parley-two-"));
    const one = await startTestServer({ database, dataDir });
    const two = await startTestServer({ database, dataDir });
    try {
      const alice = await registerRoomUser(one.url, "alice");
      const space = await alice.createRoom({ preset: "public_chat", ...SPACE });
      const child = await alice.createRoom({ preset: "public_chat", name: "child" });
      await addChild(alice, space, child, { via: ["test.local"] });
      const first = await hierarchy(alice, space, { limit: "1" });
      expect(ids(first)).toEqual([space]);
      const second = await hierarchy(asRoomUser(two.url, alice), space, { limit: "1", from: first.json.next_batch });
      expect(second.status, JSON.stringify(second.json)).toBe(200);
      expect(ids(second)).toEqual([child]);
      expect(second.json.next_batch).toBeUndefined();
    } finally {
      await one.stop();
      await two.stop();
      await database.drop();
      await rm(dataDir, { recursive: true, force: true });
    }
  });
});

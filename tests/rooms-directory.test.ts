// Room aliases, the published room directory, per-room account data and tags over HTTP.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { request, startTestServer, type TestServer } from "./harness.ts";
import { type RoomUser, registerRoomUser, roomPath } from "./rooms-helpers.ts";

let hs: TestServer;
let alice: RoomUser;
let bob: RoomUser;
beforeAll(async () => {
  hs = await startTestServer();
  [alice, bob] = (await Promise.all(["alice", "bob"].map((n) => registerRoomUser(hs.url, n)))) as [RoomUser, RoomUser];
});
afterAll(() => hs.destroy());

const enc = encodeURIComponent;
const aliasPath = (alias: string) => `/_matrix/client/v3/directory/room/${enc(alias)}`;

describe("room aliases", () => {
  it("creates, resolves, lists and deletes an alias", async () => {
    const roomId = await alice.createRoom();
    expect((await alice.call("PUT", aliasPath("#lounge:test.local"), { room_id: roomId })).status).toBe(200);
    const resolved = await request(hs.url, "GET", aliasPath("#lounge:test.local"));
    expect(resolved.json).toEqual({ room_id: roomId, servers: ["test.local"] });
    expect((await alice.call("GET", roomPath(roomId, "/aliases"))).json).toEqual({ aliases: ["#lounge:test.local"] });
    const taken = await alice.call("PUT", aliasPath("#lounge:test.local"), { room_id: roomId });
    expect(taken.status).toBe(409);
    expect((await bob.call("DELETE", aliasPath("#lounge:test.local"))).status).toBe(403);
    expect((await alice.call("DELETE", aliasPath("#lounge:test.local"))).status).toBe(200);
    const gone = await request(hs.url, "GET", aliasPath("#lounge:test.local"));
    expect(gone.status).toBe(404);
    expect(gone.json.errcode).toBe("M_NOT_FOUND");
  });

  it("takes a deleted alias out of the room's canonical alias event", async () => {
    const roomId = await alice.createRoom();
    for (const a of ["#main:test.local", "#alt:test.local"]) expect((await alice.call("PUT", aliasPath(a), { room_id: roomId })).status).toBe(200);
    const set = await alice.setState(roomId, "m.room.canonical_alias", { alias: "#main:test.local", alt_aliases: ["#alt:test.local"] });
    expect(set.status).toBe(200);
    expect((await alice.call("DELETE", aliasPath("#main:test.local"))).status).toBe(200);
    expect((await alice.state(roomId, "m.room.canonical_alias")).json).toEqual({ alt_aliases: ["#alt:test.local"] });
    expect((await alice.call("DELETE", aliasPath("#alt:test.local"))).status).toBe(200);
    expect((await alice.state(roomId, "m.room.canonical_alias")).json).toEqual({ alt_aliases: [] });
  });

  it("refuses aliases of other servers, malformed ones, unknown rooms and rooms one is not in", async () => {
    const roomId = await alice.createRoom();
    expect((await alice.call("PUT", aliasPath("#x:other.example"), { room_id: roomId })).status).toBe(400);
    expect((await alice.call("PUT", aliasPath("nohash:test.local"), { room_id: roomId })).status).toBe(400);
    expect((await alice.call("PUT", aliasPath("#x2:test.local"), { room_id: "!nope:test.local" })).status).toBe(404);
    expect((await bob.call("PUT", aliasPath("#x3:test.local"), { room_id: roomId })).status).toBe(403);
    expect((await bob.call("GET", roomPath(roomId, "/aliases"))).status).toBe(403);
  });
});

describe("published room directory", () => {
  it("lists public rooms, largest first, with their summary; searches and pages", async () => {
    const big = await alice.createRoom({ visibility: "public", preset: "public_chat", name: "Big room", topic: "lots of people", room_alias_name: "big" });
    await bob.join(big);
    const small = await alice.createRoom({ visibility: "public", preset: "public_chat", name: "Small room" });
    await alice.createRoom({ name: "Hidden" });
    const all = await request(hs.url, "GET", "/_matrix/client/v3/publicRooms");
    expect(all.status).toBe(200);
    expect(all.json.chunk.map((r: any) => r.room_id)).toEqual([big, small]);
    expect(all.json.chunk[0]).toEqual({
      room_id: big,
      num_joined_members: 2,
      world_readable: false,
      guest_can_join: false,
      name: "Big room",
      topic: "lots of people",
      canonical_alias: "#big:test.local",
      join_rule: "public",
    });
    expect(all.json.total_room_count_estimate).toBe(2);
    const page = await request(hs.url, "GET", "/_matrix/client/v3/publicRooms?limit=1");
    expect(page.json.chunk.map((r: any) => r.room_id)).toEqual([big]);
    const next = await request(hs.url, "GET", `/_matrix/client/v3/publicRooms?limit=1&since=${enc(page.json.next_batch)}`);
    expect(next.json.chunk.map((r: any) => r.room_id)).toEqual([small]);
    expect(next.json.prev_batch).toBeDefined();
    const search = await alice.call("POST", "/_matrix/client/v3/publicRooms", { filter: { generic_search_term: "SMALL" } });
    expect(search.json.chunk.map((r: any) => r.room_id)).toEqual([small]);
    // Another server's directory is asked of it over federation; one that cannot be reached is 502.
    const remote = await request(hs.url, "GET", "/_matrix/client/v3/publicRooms?server=other.invalid");
    expect(remote).toMatchObject({ status: 502, json: { errcode: "M_UNKNOWN" } });
  });

  it("publishes and hides a room, for those with the power to", async () => {
    const roomId = await alice.createRoom({ preset: "public_chat" });
    await bob.join(roomId);
    const visibility = () => request(hs.url, "GET", `/_matrix/client/v3/directory/list/room/${enc(roomId)}`);
    expect((await visibility()).json).toEqual({ visibility: "private" });
    expect((await bob.call("PUT", `/_matrix/client/v3/directory/list/room/${enc(roomId)}`, { visibility: "public" })).status).toBe(403);
    expect((await alice.call("PUT", `/_matrix/client/v3/directory/list/room/${enc(roomId)}`, { visibility: "public" })).status).toBe(200);
    expect((await visibility()).json).toEqual({ visibility: "public" });
    const unknown = await request(hs.url, "GET", `/_matrix/client/v3/directory/list/room/${enc("!nope:test.local")}`);
    expect(unknown.status).toBe(404);
  });
});

describe("per-room account data and tags", () => {
  it("stores account data per room, apart from global account data", async () => {
    const roomId = await alice.createRoom();
    const path = `/_matrix/client/v3/user/${enc(alice.userId)}/rooms/${enc(roomId)}/account_data/org.example.note`;
    expect((await alice.call("GET", path)).status).toBe(404);
    expect((await alice.call("PUT", path, { note: "room" })).status).toBe(200);
    expect((await alice.call("GET", path)).json).toEqual({ note: "room" });
    const global = await alice.call("GET", `/_matrix/client/v3/user/${enc(alice.userId)}/account_data/org.example.note`);
    expect(global.status).toBe(404);
    expect((await bob.call("GET", path)).status).toBe(403);
    const fullyRead = `/_matrix/client/v3/user/${enc(alice.userId)}/rooms/${enc(roomId)}/account_data/m.fully_read`;
    expect((await alice.call("PUT", fullyRead, { event_id: "$x" })).status).toBe(405);
  });

  it("adds, lists and removes tags, kept as m.tag room account data", async () => {
    const roomId = await alice.createRoom();
    const tags = `/_matrix/client/v3/user/${enc(alice.userId)}/rooms/${enc(roomId)}/tags`;
    expect((await alice.call("GET", tags)).json).toEqual({ tags: {} });
    await Promise.all([
      alice.call("PUT", `${tags}/m.favourite`, { order: 0.25 }),
      alice.call("PUT", `${tags}/u.work`, {}),
      alice.call("PUT", `${tags}/u.later`, {}),
    ]);
    expect((await alice.call("GET", tags)).json).toEqual({ tags: { "m.favourite": { order: 0.25 }, "u.work": {}, "u.later": {} } });
    expect((await alice.call("DELETE", `${tags}/u.work`)).status).toBe(200);
    const mTag = await alice.call("GET", `/_matrix/client/v3/user/${enc(alice.userId)}/rooms/${enc(roomId)}/account_data/m.tag`);
    expect(mTag.json).toEqual({ tags: { "m.favourite": { order: 0.25 }, "u.later": {} } });
    expect((await alice.call("PUT", `${tags}/bad`, { order: "first" })).status).toBe(400);
  });
});

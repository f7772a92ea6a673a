// Room upgrades over HTTP: POST /rooms/{roomId}/upgrade.
// https://spec.matrix.org/latest/client-server-api/#room-upgrades
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Network, startNetwork } from "./federation-harness.ts";
import { request, startTestServer, type TestServer } from "./harness.ts";
import { type RoomUser, registerRoomUser, roomPath } from "./rooms-helpers.ts";
import { sync } from "./sync-helpers.ts";

let hs: TestServer;
let alice: RoomUser;
let bob: RoomUser;
let carol: RoomUser;
beforeAll(async () => {
  hs = await startTestServer();
  [alice, bob, carol] = (await Promise.all(["alice", "bob", "carol"].map((n) => registerRoomUser(hs.url, n)))) as [RoomUser, RoomUser, RoomUser];
});
afterAll(() => hs.destroy());

const enc = encodeURIComponent;
const aliasPath = (alias: string) => `/_matrix/client/v3/directory/room/${enc(alias)}`;

async function upgrade(user: RoomUser, roomId: string, body: Record<string, unknown>) {
  return user.call("POST", roomPath(roomId, "/upgrade"), body);
}

async function upgraded(user: RoomUser, roomId: string, body: Record<string, unknown>): Promise<string> {
  const res = await upgrade(user, roomId, body);
  expect(res.status, JSON.stringify(res.json)).toBe(200);
  expect(typeof res.json.replacement_room).toBe("string");
  return res.json.replacement_room;
}

async function stateOf(user: RoomUser, roomId: string, type: string, stateKey = ""): Promise<any> {
  const res = await user.state(roomId, type, stateKey);
  expect(res.status, `${type}: ${JSON.stringify(res.json)}`).toBe(200);
  return res.json;
}

/** The state event itself (not only its content), from GET /state. */
async function stateEvent(user: RoomUser, roomId: string, type: string, stateKey = ""): Promise<any> {
  const res = await user.call("GET", roomPath(roomId, "/state"));
  expect(res.status).toBe(200);
  return res.json.find((e: any) => e.type === type && e.state_key === stateKey);
}

async function joinedRooms(user: RoomUser): Promise<string[]> {
  const res = await user.call("GET", "/_matrix/client/v3/joined_rooms");
  expect(res.status).toBe(200);
  return res.json.joined_rooms;
}

const COPIED: Record<string, Record<string, unknown>> = {
  "m.room.name": { name: "Old name" },
  "m.room.topic": { topic: "Old topic" },
  "m.room.avatar": { url: "mxc://test.local/avatar" },
  "m.room.encryption": { algorithm: "m.megolm.v1.aes-sha2" },
  "m.room.server_acl": { allow: ["*"], allow_ip_literals: false, deny: ["evil.example"] },
  "m.room.guest_access": { guest_access: "forbidden" },
  "m.room.history_visibility": { history_visibility: "joined" },
  "m.room.join_rules": { join_rule: "public" },
};

describe("room upgrades", () => {
  it("v9 → v10: copies each kind of state, links the rooms both ways and restricts the old room", async () => {
    const old = await alice.createRoom({ room_version: "9" });
    for (const [type, content] of Object.entries(COPIED)) expect((await alice.setState(old, type, content)).status).toBe(200);
    const oldPowerLevels = await stateOf(alice, old, "m.room.power_levels");

    const replacement = await upgraded(alice, old, { new_version: "10" });
    expect(replacement).not.toBe(old);

    for (const [type, content] of Object.entries(COPIED)) expect(await stateOf(alice, replacement, type), type).toEqual(content);
    expect(await stateOf(alice, replacement, "m.room.power_levels")).toEqual(oldPowerLevels);

    const tombstone = await stateEvent(alice, old, "m.room.tombstone");
    expect(tombstone.sender).toBe(alice.userId);
    expect(tombstone.content.replacement_room).toBe(replacement);
    expect(typeof tombstone.content.body).toBe("string");

    const create = await stateEvent(alice, replacement, "m.room.create");
    expect(create.sender).toBe(alice.userId);
    expect(create.content.room_version).toBe("10");
    // Before v12 the predecessor names the tombstone, the last event the old room had when the new one was made.
    expect(create.content.predecessor).toEqual({ room_id: old, event_id: tombstone.event_id });

    // "setting events_default and invite to the greater of 50 and users_default + 1"
    const restricted = await stateOf(alice, old, "m.room.power_levels");
    expect(restricted.events_default).toBe(50);
    expect(restricted.invite).toBe(50);
    expect(restricted.users).toEqual(oldPowerLevels.users);
  });

  it("v11 → v12: the upgrader and additional_creators are the creators, left out of the power levels", async () => {
    const old = await alice.createRoom({ room_version: "11", preset: "public_chat" });
    expect((await bob.join(old)).status).toBe(200);
    const replacement = await upgraded(alice, old, { new_version: "12", additional_creators: [bob.userId] });
    // A v12 room ID is the create event's hash: no server name.
    expect(replacement).toMatch(/^![A-Za-z0-9_-]{43}$/);

    const create = await stateEvent(alice, replacement, "m.room.create");
    expect(create.content.room_version).toBe("12");
    expect(create.content.additional_creators).toEqual([bob.userId]);
    expect(create.content.predecessor.room_id).toBe(old);
    const powerLevels = await stateOf(alice, replacement, "m.room.power_levels");
    expect(powerLevels.users ?? {}).not.toHaveProperty(alice.userId);
    expect(powerLevels.users ?? {}).not.toHaveProperty(bob.userId);
    expect((await stateEvent(alice, old, "m.room.tombstone")).content.replacement_room).toBe(replacement);

    // bob, an additional creator, has power once he joins (the room is public: its join rule was copied).
    expect((await bob.join(replacement)).status).toBe(200);
    expect((await bob.setState(replacement, "m.room.power_levels", { ...powerLevels, state_default: 60 })).status).toBe(200);
  });

  it("v12 → v12 without additional_creators: only the upgrader is a creator", async () => {
    const old = await alice.createRoom({ room_version: "12", preset: "trusted_private_chat", invite: [bob.userId] });
    const replacement = await upgraded(alice, old, { new_version: "12" });
    const create = await stateEvent(alice, replacement, "m.room.create");
    expect(create.content).not.toHaveProperty("additional_creators");
    expect(create.content.predecessor.room_id).toBe(old);
  });

  it("refuses a member without the power to send m.room.tombstone, and changes nothing", async () => {
    const old = await alice.createRoom({ preset: "public_chat", name: "Stays" });
    expect((await bob.join(old)).status).toBe(200);
    const before = await joinedRooms(bob);
    const res = await upgrade(bob, old, { new_version: "11" });
    expect(res.status).toBe(403);
    expect(res.json.errcode).toBe("M_FORBIDDEN");
    expect((await bob.state(old, "m.room.tombstone")).status).toBe(404);
    expect(await joinedRooms(bob)).toEqual(before);
    expect((await stateOf(alice, old, "m.room.power_levels")).events_default).toBe(0);
    // Someone outside the room is refused the same way.
    expect((await upgrade(carol, old, { new_version: "11" })).status).toBe(403);
  });

  it("answers 400 M_UNSUPPORTED_ROOM_VERSION, 404 for unknown rooms and 400 for a bad body", async () => {
    const old = await alice.createRoom();
    const unsupported = await upgrade(alice, old, { new_version: "13" });
    expect(unsupported.status).toBe(400);
    expect(unsupported.json.errcode).toBe("M_UNSUPPORTED_ROOM_VERSION");
    expect((await upgrade(alice, old, { new_version: "my_bad_version" })).json.errcode).toBe("M_UNSUPPORTED_ROOM_VERSION");
    const unknown = await upgrade(alice, "!nope:test.local", { new_version: "11" });
    expect(unknown.status).toBe(404);
    expect(unknown.json.errcode).toBe("M_NOT_FOUND");
    expect((await upgrade(alice, old, {})).status).toBe(400);
    expect((await upgrade(alice, old, { new_version: 11 })).status).toBe(400);
    const badCreator = await upgrade(alice, old, { new_version: "12", additional_creators: ["not a user"] });
    expect(badCreator.status).toBe(400);
    expect((await alice.state(old, "m.room.tombstone")).status).toBe(404);
  });

  it("moves local aliases, the canonical alias and the published directory entry", async () => {
    const old = await alice.createRoom({ room_version: "10", visibility: "public", preset: "public_chat", room_alias_name: "upgrade-main" });
    expect((await alice.call("PUT", aliasPath("#upgrade-alt:test.local"), { room_id: old })).status).toBe(200);
    expect(
      (await alice.setState(old, "m.room.canonical_alias", { alias: "#upgrade-main:test.local", alt_aliases: ["#upgrade-alt:test.local"] })).status,
    ).toBe(200);

    const replacement = await upgraded(alice, old, { new_version: "11" });
    for (const alias of ["#upgrade-main:test.local", "#upgrade-alt:test.local"]) {
      expect((await request(hs.url, "GET", aliasPath(alias))).json.room_id, alias).toBe(replacement);
    }
    expect(await stateOf(alice, replacement, "m.room.canonical_alias")).toEqual({
      alias: "#upgrade-main:test.local",
      alt_aliases: ["#upgrade-alt:test.local"],
    });
    expect(await stateOf(alice, old, "m.room.canonical_alias")).toEqual({});

    const listed = (await request(hs.url, "GET", "/_matrix/client/v3/publicRooms")).json.chunk.map((r: any) => r.room_id);
    expect(listed).toContain(replacement);
    expect(listed).not.toContain(old);
    expect((await request(hs.url, "GET", `/_matrix/client/v3/directory/list/room/${enc(replacement)}`)).json.visibility).toBe("public");
    expect((await request(hs.url, "GET", `/_matrix/client/v3/directory/list/room/${enc(old)}`)).json.visibility).toBe("private");
  });

  it("keeps a private room out of the directory", async () => {
    const old = await alice.createRoom({ room_version: "10" });
    const replacement = await upgraded(alice, old, { new_version: "11" });
    expect((await request(hs.url, "GET", `/_matrix/client/v3/directory/list/room/${enc(replacement)}`)).json.visibility).toBe("private");
  });

  it("carries bans over: a banned user cannot join the new public room, others can", async () => {
    const old = await alice.createRoom({ room_version: "10", preset: "public_chat" });
    expect((await carol.join(old)).status).toBe(200);
    expect((await alice.call("POST", roomPath(old, "/ban"), { user_id: carol.userId, reason: "spam" })).status).toBe(200);
    const replacement = await upgraded(alice, old, { new_version: "11" });
    expect(await stateOf(alice, replacement, "m.room.member", carol.userId)).toEqual({ membership: "ban", reason: "spam" });
    expect((await carol.join(replacement)).status).toBe(403);
    expect((await bob.join(replacement)).status).toBe(200);
    // Memberships other than bans stay behind.
    expect((await alice.state(replacement, "m.room.member", bob.userId)).json.membership).toBe("join");
  });

  it("a moderator allowed to upgrade gets the power to copy the state, then their own level back", async () => {
    const old = await alice.createRoom({ room_version: "10", preset: "public_chat" });
    expect((await bob.join(old)).status).toBe(200);
    expect((await carol.join(old)).status).toBe(200);
    expect((await alice.call("POST", roomPath(old, "/ban"), { user_id: "@troll:test.local" })).status).toBe(200);
    const powerLevels = await stateOf(alice, old, "m.room.power_levels");
    powerLevels.users[bob.userId] = 50;
    powerLevels.events["m.room.tombstone"] = 50;
    expect((await alice.setState(old, "m.room.power_levels", powerLevels)).status).toBe(200);
    expect((await alice.setState(old, "m.room.server_acl", { allow: ["*"], deny: [] })).status).toBe(200);

    const replacement = await upgraded(bob, old, { new_version: "11" });
    // The server ACL needs 100; bob sent it, and then restored his own level of 50.
    expect((await stateEvent(bob, replacement, "m.room.server_acl")).sender).toBe(bob.userId);
    expect(await stateOf(bob, replacement, "m.room.power_levels")).toEqual(powerLevels);
    expect((await stateOf(bob, replacement, "m.room.member", "@troll:test.local")).membership).toBe("ban");
    // bob may not send power levels in the old room (100): its levels stay as they were.
    expect(await stateOf(alice, old, "m.room.power_levels")).toEqual(powerLevels);
    expect((await stateEvent(alice, old, "m.room.tombstone")).sender).toBe(bob.userId);
  });

  it("shows the new room in the upgrader's sync with its state, and the tombstone in the old room", async () => {
    const old = await alice.createRoom({ room_version: "10", name: "Synced" });
    const first = await sync(hs.url, alice);
    const replacement = await upgraded(alice, old, { new_version: "11" });
    const next = await sync(hs.url, alice, { since: first.next_batch });
    const joined = next.rooms.join[replacement];
    expect(joined).toBeDefined();
    const events = [...(joined.state?.events ?? []), ...joined.timeline.events];
    const create = events.find((e: any) => e.type === "m.room.create");
    expect(create.content.predecessor.room_id).toBe(old);
    expect(events.find((e: any) => e.type === "m.room.name")?.content).toEqual({ name: "Synced" });
    const oldTimeline = next.rooms.join[old].timeline.events;
    expect(oldTimeline.find((e: any) => e.type === "m.room.tombstone")?.content.replacement_room).toBe(replacement);
  });

  it("copies the upgrader's tags and m.direct entry to the new room", async () => {
    const old = await alice.createRoom({ room_version: "10", is_direct: true, invite: [bob.userId] });
    expect((await alice.call("PUT", `/_matrix/client/v3/user/${enc(alice.userId)}/account_data/m.direct`, { [bob.userId]: [old] })).status).toBe(200);
    expect((await alice.call("PUT", `/_matrix/client/v3/user/${enc(alice.userId)}/rooms/${enc(old)}/tags/u.work`, { order: 0.5 })).status).toBe(200);
    const replacement = await upgraded(alice, old, { new_version: "11" });
    const direct = await alice.call("GET", `/_matrix/client/v3/user/${enc(alice.userId)}/account_data/m.direct`);
    expect(direct.json[bob.userId]).toEqual([old, replacement]);
    const tags = await alice.call("GET", `/_matrix/client/v3/user/${enc(alice.userId)}/rooms/${enc(replacement)}/tags`);
    expect(tags.json.tags).toEqual({ "u.work": { order: 0.5 } });
  });

  it("copies the room's push rules of the old room's local members", async () => {
    const old = await alice.createRoom({ room_version: "10", preset: "public_chat" });
    expect((await bob.join(old)).status).toBe(200);
    const put = await bob.call("PUT", `/_matrix/client/v3/pushrules/global/room/${enc(old)}`, { actions: ["dont_notify"] });
    expect(put.status, JSON.stringify(put.json)).toBe(200);
    const replacement = await upgraded(alice, old, { new_version: "11" });
    const rule = await bob.call("GET", `/_matrix/client/v3/pushrules/global/room/${enc(replacement)}`);
    expect(rule.status, JSON.stringify(rule.json)).toBe(200);
    expect(rule.json.actions).toEqual(["dont_notify"]);
    // The old room's rule stays.
    expect((await bob.call("GET", `/_matrix/client/v3/pushrules/global/room/${enc(old)}`)).status).toBe(200);
  });

  it("refuses a tombstone that names its own room", async () => {
    const roomId = await alice.createRoom();
    const res = await alice.setState(roomId, "m.room.tombstone", { body: "x", replacement_room: roomId });
    expect(res.status).toBe(400);
  });
});

describe("a room upgraded on another server", () => {
  let net: Network;
  let hs1Alice: RoomUser;
  let hs2Bob: RoomUser;
  beforeAll(async () => {
    net = await startNetwork(2);
    hs1Alice = await registerRoomUser(net.servers[0]!.url, "alice");
    hs2Bob = await registerRoomUser(net.servers[1]!.url, "bob");
  });
  afterAll(() => net?.destroy());

  it("moves this server's aliases and copies its user's push rules and tags when its first user joins the new room", async () => {
    const old = await hs1Alice.createRoom({ room_version: "10", preset: "public_chat" });
    expect((await hs2Bob.call("POST", `/_matrix/client/v3/join/${enc(old)}?via=hs1.test`, {})).status).toBe(200);
    expect((await hs2Bob.call("PUT", aliasPath("#bobs:hs2.test"), { room_id: old })).status).toBe(200);
    expect((await hs2Bob.call("PUT", `/_matrix/client/v3/pushrules/global/room/${enc(old)}`, { actions: ["dont_notify"] })).status).toBe(200);
    expect((await hs2Bob.call("PUT", `/_matrix/client/v3/user/${enc(hs2Bob.userId)}/rooms/${enc(old)}/tags/m.favourite`, {})).status).toBe(200);

    const replacement = await upgraded(hs1Alice, old, { new_version: "11" });
    // Nothing moves on hs2 before one of its users joins the new room.
    expect((await request(net.servers[1]!.url, "GET", aliasPath("#bobs:hs2.test"))).json.room_id).toBe(old);

    expect((await hs2Bob.call("POST", `/_matrix/client/v3/join/${enc(replacement)}?via=hs1.test`, {})).status).toBe(200);
    let alias = "";
    for (let i = 0; i < 50 && alias !== replacement; i++) {
      alias = (await request(net.servers[1]!.url, "GET", aliasPath("#bobs:hs2.test"))).json.room_id;
      if (alias !== replacement) await new Promise((r) => setTimeout(r, 100));
    }
    expect(alias).toBe(replacement);
    let rule = await hs2Bob.call("GET", `/_matrix/client/v3/pushrules/global/room/${enc(replacement)}`);
    for (let i = 0; i < 50 && rule.status !== 200; i++) {
      await new Promise((r) => setTimeout(r, 100));
      rule = await hs2Bob.call("GET", `/_matrix/client/v3/pushrules/global/room/${enc(replacement)}`);
    }
    expect(rule.json.actions).toEqual(["dont_notify"]);
    const tags = await hs2Bob.call("GET", `/_matrix/client/v3/user/${enc(hs2Bob.userId)}/rooms/${enc(replacement)}/tags`);
    expect(tags.json.tags).toEqual({ "m.favourite": {} });
  });
});

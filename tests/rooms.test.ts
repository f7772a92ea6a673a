// Rooms over HTTP: creation, membership, sending, state, redaction and size limits.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startTestServer, type TestServer } from "./harness.ts";
import { type RoomUser, registerRoomUser, roomPath, timeline } from "./rooms-helpers.ts";

let hs: TestServer;
let alice: RoomUser;
let bob: RoomUser;
let carol: RoomUser;
beforeAll(async () => {
  hs = await startTestServer({ config: { allow_guest_access: true } });
  [alice, bob, carol] = (await Promise.all(["alice", "bob", "carol"].map((n) => registerRoomUser(hs.url, n)))) as [RoomUser, RoomUser, RoomUser];
});
afterAll(() => hs.destroy());

const stateOf = async (user: RoomUser, roomId: string) => {
  const res = await user.call("GET", roomPath(roomId, "/state"));
  expect(res.status).toBe(200);
  return res.json as any[];
};
const contentOf = (state: any[], type: string, stateKey = "") => state.find((e) => e.type === type && e.state_key === stateKey)?.content;

describe("createRoom", () => {
  it("sends the events in the spec's order, with the preset's rules", async () => {
    const roomId = await alice.createRoom({
      preset: "private_chat",
      name: "Named",
      topic: "A topic",
      room_alias_name: "ordered",
      initial_state: [
        { type: "org.example.custom", state_key: "k", content: { x: 1 } },
        { type: "m.room.name", content: { name: "overridden by name" } },
      ],
      invite: [bob.userId],
      is_direct: true,
    });
    const events = await timeline(alice, roomId);
    expect(events.map((e) => `${e.type}|${e.state_key ?? ""}`)).toEqual([
      "m.room.create|",
      `m.room.member|${alice.userId}`,
      "m.room.power_levels|",
      "m.room.canonical_alias|",
      "m.room.join_rules|",
      "m.room.history_visibility|",
      "m.room.guest_access|",
      "org.example.custom|k",
      "m.room.name|",
      "m.room.topic|",
      `m.room.member|${bob.userId}`,
    ]);
    const state = await stateOf(alice, roomId);
    expect(contentOf(state, "m.room.join_rules")).toEqual({ join_rule: "invite" });
    expect(contentOf(state, "m.room.history_visibility")).toEqual({ history_visibility: "shared" });
    expect(contentOf(state, "m.room.guest_access")).toEqual({ guest_access: "can_join" });
    expect(contentOf(state, "m.room.name")).toEqual({ name: "Named" });
    expect(contentOf(state, "m.room.topic")).toEqual({
      topic: "A topic",
      "m.topic": { "m.text": [{ mimetype: "text/plain", body: "A topic" }] },
    });
    expect(contentOf(state, "m.room.canonical_alias")).toEqual({ alias: "#ordered:test.local" });
    expect(contentOf(state, "m.room.member", bob.userId)).toEqual({ membership: "invite", displayname: "bob", is_direct: true });
    expect(contentOf(state, "m.room.member", alice.userId)).toEqual({ membership: "join", displayname: "alice" });
    expect(contentOf(state, "m.room.power_levels").invite).toBe(0);
  });

  it("makes room version 12 by default: the room ID names the create event, creators are not in power levels", async () => {
    const roomId = await alice.createRoom({ preset: "trusted_private_chat", invite: [bob.userId] });
    expect(roomId).toMatch(/^![A-Za-z0-9_-]{43}$/);
    const state = await stateOf(alice, roomId);
    const create = state.find((e) => e.type === "m.room.create");
    expect(create.event_id).toBe(`$${roomId.slice(1)}`);
    expect(create.content).toEqual({ room_version: "12", additional_creators: [bob.userId] });
    const powerLevels = contentOf(state, "m.room.power_levels");
    expect(powerLevels.users).toEqual({});
    expect(powerLevels.events["m.room.tombstone"]).toBe(150);
    expect(powerLevels.state_default).toBe(50);
  });

  it("lists the creator (and trusted invitees) at 100 before room version 12", async () => {
    for (const version of ["10", "11"]) {
      const roomId = await alice.createRoom({ room_version: version, preset: "trusted_private_chat", invite: [bob.userId] });
      expect(roomId).toMatch(/^![A-Za-z0-9]+:test\.local$/);
      const state = await stateOf(alice, roomId);
      const create = contentOf(state, "m.room.create");
      expect(create.room_version).toBe(version);
      if (version === "10") expect(create.creator).toBe(alice.userId);
      else expect(create.creator).toBeUndefined();
      expect(contentOf(state, "m.room.power_levels").users).toEqual({ [alice.userId]: 100, [bob.userId]: 100 });
    }
  });

  it("applies power_level_content_override and the public_chat preset", async () => {
    const roomId = await alice.createRoom({ preset: "public_chat", power_level_content_override: { events_default: 10, invite: 75 } });
    const state = await stateOf(alice, roomId);
    expect(contentOf(state, "m.room.join_rules")).toEqual({ join_rule: "public" });
    expect(contentOf(state, "m.room.guest_access")).toBeUndefined();
    expect(contentOf(state, "m.room.power_levels")).toMatchObject({ events_default: 10, invite: 75, kick: 50 });
  });

  it("refuses unsupported room versions, taken aliases and initial state the creator may not send", async () => {
    const version = await alice.call("POST", "/_matrix/client/v3/createRoom", { room_version: "13" });
    expect(version.status).toBe(400);
    expect(version.json.errcode).toBe("M_UNSUPPORTED_ROOM_VERSION");

    await alice.createRoom({ room_alias_name: "taken" });
    const taken = await bob.call("POST", "/_matrix/client/v3/createRoom", { room_alias_name: "taken" });
    expect(taken.status).toBe(400);
    expect(taken.json.errcode).toBe("M_ROOM_IN_USE");

    const invalid = await alice.call("POST", "/_matrix/client/v3/createRoom", {
      room_version: "11",
      power_level_content_override: { users: { [alice.userId]: 0 } },
      name: "cannot",
    });
    expect(invalid.status).toBe(400);
    expect(invalid.json.errcode).toBe("M_INVALID_ROOM_STATE");
    // Nothing was created.
    expect((await alice.call("GET", "/_matrix/client/v3/joined_rooms")).json.joined_rooms).not.toContain(invalid.json.room_id);
  });

  it("advertises the room versions it supports", async () => {
    const res = await alice.call("GET", "/_matrix/client/v3/capabilities");
    const available = Object.fromEntries(["1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12"].map((v) => [v, "stable"]));
    expect(res.json.capabilities["m.room_versions"]).toEqual({ default: "12", available });
  });
});

describe("membership", () => {
  it("refuses a join to an invite-only room without an invite, and accepts it with one", async () => {
    const roomId = await alice.createRoom({ preset: "private_chat" });
    const refused = await bob.join(roomId);
    expect(refused.status).toBe(403);
    expect(refused.json.errcode).toBe("M_FORBIDDEN");
    expect(refused.json.error).toMatch(/join rule is invite/);
    expect((await alice.call("POST", roomPath(roomId, "/invite"), { user_id: bob.userId })).status).toBe(200);
    expect((await bob.call("POST", roomPath(roomId, "/join"), {})).json).toEqual({ room_id: roomId });
    expect((await bob.call("GET", "/_matrix/client/v3/joined_rooms")).json.joined_rooms).toContain(roomId);
  });

  it("joins a public room by alias, and answers 404 for unknown rooms", async () => {
    const roomId = await alice.createRoom({ preset: "public_chat", room_alias_name: "joinme" });
    expect((await carol.join("#joinme:test.local")).json).toEqual({ room_id: roomId });
    const unknownAlias = await carol.join("#nope:test.local");
    expect(unknownAlias.status).toBe(404);
    expect(unknownAlias.json.errcode).toBe("M_NOT_FOUND");
    const unknownRoom = await carol.join("!nowhere:elsewhere.example");
    expect(unknownRoom.status).toBe(404);
  });

  it("lets members of an allowed room into restricted rooms, and users knock where the join rule says so", async () => {
    const space = await alice.createRoom({ preset: "public_chat" });
    for (const rule of ["restricted", "knock_restricted"]) {
      const roomId = await alice.createRoom({ initial_state: [{ type: "m.room.join_rules", content: { join_rule: rule, allow: [{ type: "m.room_membership", room_id: space }] } }] });
      const res = await carol.join(roomId);
      expect(res.status).toBe(403);
      expect(res.json.errcode).toBe("M_FORBIDDEN");
    }
    // A member of the allowed room joins; one of the room's users with invite power authorises it.
    const restricted = await alice.createRoom({ initial_state: [{ type: "m.room.join_rules", content: { join_rule: "restricted", allow: [{ type: "m.room_membership", room_id: space }] } }] });
    expect((await carol.join(space)).status).toBe(200);
    const joined = await carol.join(restricted);
    expect(joined.status, JSON.stringify(joined.json)).toBe(200);
    expect((await alice.state(restricted, "m.room.member", carol.userId)).json).toMatchObject({ membership: "join", join_authorised_via_users_server: alice.userId });
    const knockRoom = await alice.createRoom({ initial_state: [{ type: "m.room.join_rules", content: { join_rule: "knock" } }] });
    expect((await bob.join(knockRoom)).status).toBe(403);
    const knocked = await bob.call("POST", `/_matrix/client/v3/knock/${encodeURIComponent(knockRoom)}`, { reason: "hello" });
    expect(knocked.status, JSON.stringify(knocked.json)).toBe(200);
    expect((await alice.state(knockRoom, "m.room.member", bob.userId)).json).toMatchObject({ membership: "knock", reason: "hello" });
    const inviteOnly = await alice.createRoom();
    expect((await bob.call("POST", `/_matrix/client/v3/knock/${encodeURIComponent(inviteOnly)}`, {})).status).toBe(403);
    const knock = await bob.call("POST", "/_matrix/client/v3/knock/!x:test.local", {});
    expect(knock.status).toBe(404);
  });

  it("refuses invites of unknown local users and of users on servers that cannot be reached", async () => {
    const roomId = await alice.createRoom();
    const unknown = await alice.call("POST", roomPath(roomId, "/invite"), { user_id: "@ghost:test.local" });
    expect(unknown.status).toBe(404);
    // A server that cannot be reached cannot sign the invite.
    const remote = await alice.call("POST", roomPath(roomId, "/invite"), { user_id: "@someone:other.example" });
    expect(remote.status).toBe(502);
    expect(remote.json.errcode).toBe("M_UNKNOWN");
    const invalid = await alice.call("POST", roomPath(roomId, "/invite"), { user_id: "not a user" });
    expect(invalid.status).toBe(400);
  });

  it("leaves, then forgets; forgetting a room one is in is refused", async () => {
    const roomId = await alice.createRoom({ preset: "public_chat" });
    await bob.join(roomId);
    const early = await bob.call("POST", roomPath(roomId, "/forget"), {});
    expect(early.status).toBe(400);
    expect((await bob.call("POST", roomPath(roomId, "/leave"), { reason: "bye" })).status).toBe(200);
    expect((await alice.state(roomId, "m.room.member", bob.userId)).json).toEqual({ membership: "leave", reason: "bye" });
    const again = await bob.call("POST", roomPath(roomId, "/leave"), {});
    expect(again.status).toBe(403);
    expect((await bob.call("POST", roomPath(roomId, "/forget"), {})).status).toBe(200);
    // A forgotten room's history is no longer readable.
    expect((await bob.messages(roomId, { dir: "b" })).status).toBe(403);
  });

  it("lets only those with the power kick, ban and unban", async () => {
    const roomId = await alice.createRoom({ preset: "public_chat" });
    await bob.join(roomId);
    await carol.join(roomId);
    const notAllowed = await bob.call("POST", roomPath(roomId, "/kick"), { user_id: carol.userId });
    expect(notAllowed.status).toBe(403);
    expect(notAllowed.json.error).toMatch(/cannot kick/);
    const notInRoom = await alice.call("POST", roomPath(roomId, "/kick"), { user_id: "@ghost:test.local" });
    expect(notInRoom.status).toBe(403);
    const notBanned = await alice.call("POST", roomPath(roomId, "/unban"), { user_id: bob.userId });
    expect(notBanned.status).toBe(403);
    expect((await alice.call("POST", roomPath(roomId, "/ban"), { user_id: carol.userId, reason: "spam" })).status).toBe(200);
    expect((await carol.join(roomId)).status).toBe(403);
    expect((await alice.state(roomId, "m.room.member", carol.userId)).json).toEqual({ membership: "ban", reason: "spam" });
    // The ban ends carol's reading of the room (a user who left reads it up to the leave).
    expect((await carol.state(roomId, "m.room.member", carol.userId)).status).toBe(403);
    expect((await carol.messages(roomId, { dir: "b" })).status).toBe(403);
    await bob.call("POST", roomPath(roomId, "/leave"), {});
    expect((await bob.state(roomId, "m.room.member", bob.userId)).json).toMatchObject({ membership: "leave" });
  });

  it("lets guests join only rooms whose guest access is can_join", async () => {
    const reg = await fetch(`${hs.url}/_matrix/client/v3/register?kind=guest`, { method: "POST", body: "{}" });
    const guest = (await reg.json()) as { access_token: string; user_id: string };
    const open = await alice.createRoom({ preset: "public_chat", initial_state: [{ type: "m.room.guest_access", content: { guest_access: "can_join" } }] });
    const closed = await alice.createRoom({ preset: "public_chat" });
    const join = (roomId: string) =>
      fetch(`${hs.url}/_matrix/client/v3/join/${encodeURIComponent(roomId)}`, {
        method: "POST",
        headers: { Authorization: `Bearer ${guest.access_token}` },
        body: "{}",
      });
    expect((await join(open)).status).toBe(200);
    const refused = await join(closed);
    expect(refused.status).toBe(403);
  });

  it("makes guests leave when guest access stops letting them in, before answering the change", async () => {
    const reg = await fetch(`${hs.url}/_matrix/client/v3/register?kind=guest`, { method: "POST", body: "{}" });
    const guest = (await reg.json()) as { access_token: string; user_id: string };
    const bob = await registerRoomUser(hs.url, "bob-guest-room");
    const roomId = await alice.createRoom({ preset: "public_chat", initial_state: [{ type: "m.room.guest_access", content: { guest_access: "can_join" } }] });
    await bob.join(roomId);
    const joined = await fetch(`${hs.url}/_matrix/client/v3/join/${encodeURIComponent(roomId)}`, {
      method: "POST",
      headers: { Authorization: `Bearer ${guest.access_token}` },
      body: "{}",
    });
    expect(joined.status).toBe(200);
    const changed = await alice.call("PUT", roomPath(roomId, "/state/m.room.guest_access/"), { guest_access: "forbidden" });
    expect(changed.status).toBe(200);
    expect((await alice.state(roomId, "m.room.member", guest.user_id)).json).toMatchObject({ membership: "leave" });
    // Only guests: the registered member stays.
    expect((await alice.state(roomId, "m.room.member", bob.userId)).json).toMatchObject({ membership: "join" });
  });

  it("updates the member event in every joined room when the profile changes", async () => {
    const dave = await registerRoomUser(hs.url, "dave");
    const rooms = [await alice.createRoom({ preset: "public_chat" }), await alice.createRoom({ preset: "public_chat" })];
    for (const r of rooms) await dave.join(r);
    await dave.call("PUT", `/_matrix/client/v3/profile/${encodeURIComponent(dave.userId)}/displayname`, { displayname: "Dave D." });
    await dave.call("PUT", `/_matrix/client/v3/profile/${encodeURIComponent(dave.userId)}/avatar_url`, { avatar_url: "mxc://test.local/dave" });
    for (const r of rooms) {
      expect((await alice.state(r, "m.room.member", dave.userId)).json).toEqual({
        membership: "join",
        displayname: "Dave D.",
        avatar_url: "mxc://test.local/dave",
      });
      const events = await timeline(alice, r);
      const last = events.at(-1);
      expect(last.unsigned.prev_content).toEqual({ membership: "join", displayname: "Dave D." });
      expect(last.unsigned.prev_sender).toBe(dave.userId);
    }
  });
});

describe("what clients expect of smaller endpoints", () => {
  it("keeps custom keys of a join's body in the member event, but not the ones the server sets", async () => {
    const roomId = await alice.createRoom({ preset: "public_chat" });
    const res = await bob.call("POST", `/_matrix/client/v3/join/${encodeURIComponent(roomId)}`, { foo: "bar", membership: "leave", reason: "hi" });
    expect(res.status).toBe(200);
    const member = (await bob.state(roomId, "m.room.member", bob.userId)).json;
    expect(member).toMatchObject({ foo: "bar", membership: "join", reason: "hi" });
    const again = await carol.call("POST", roomPath(roomId, "/join"), { "org.example.x": 1 });
    expect(again.status).toBe(200);
    expect((await carol.state(roomId, "m.room.member", carol.userId)).json["org.example.x"]).toBe(1);
  });

  it("lists joined members with display_name and avatar_url, null when unset", async () => {
    const roomId = await alice.createRoom();
    const res = await alice.call("GET", roomPath(roomId, "/joined_members"));
    expect(res.json.joined[alice.userId]).toEqual({ display_name: "alice", avatar_url: null });
  });

  it("answers /event of a room the user may not read with 404, as for an unknown event", async () => {
    const roomId = await alice.createRoom({ preset: "private_chat" });
    const eventId = await alice.send(roomId, { msgtype: "m.text", body: "private" });
    const res = await carol.call("GET", roomPath(roomId, `/event/${encodeURIComponent(eventId)}`));
    expect(res.status).toBe(404);
    expect(res.json.errcode).toBe("M_NOT_FOUND");
  });

  it("takes a null since in POST /publicRooms, and refuses an overlong account data type with 400", async () => {
    expect((await alice.call("POST", "/_matrix/client/v3/publicRooms", { since: null, limit: 5 })).status).toBe(200);
    const type = "x".repeat(5000);
    const res = await alice.call("PUT", `/_matrix/client/v3/user/${encodeURIComponent(alice.userId)}/account_data/${type}`, { a: 1 });
    expect(res.status).toBe(400);
    expect(res.json.errcode).toBe("M_INVALID_PARAM");
  });
});

describe("sending", () => {
  it("takes the transaction-less POST /send of old clients, each request a new event, with the same size limit", async () => {
    const roomId = await alice.createRoom();
    const path = roomPath(roomId, "/send/m.room.message");
    const a = await alice.call("POST", path, { msgtype: "m.text", body: "old bot" });
    const b = await alice.call("POST", path, { msgtype: "m.text", body: "old bot" });
    expect(a.status).toBe(200);
    expect(b.status).toBe(200);
    expect(a.json.event_id).not.toBe(b.json.event_id);
    expect((await alice.call("POST", path, { msgtype: "m.text", body: "A".repeat(70_000) })).status).toBe(413);
  });

  it("refuses floats and oversized events, and event types over 255 bytes", async () => {
    const roomId = await alice.createRoom();
    const put = (raw: string) =>
      fetch(`${hs.url}${roomPath(roomId, "/send/m.room.message/float" + raw.length)}`, {
        method: "PUT",
        headers: { Authorization: `Bearer ${alice.accessToken}`, "Content-Type": "application/json" },
        body: raw,
      });
    for (const raw of ['{"msgtype":"m.text","body":"x","n":1.5}', '{"body":"x","n":1e-3}']) {
      const res = await put(raw);
      expect(res.status).toBe(400);
      expect(((await res.json()) as { errcode: string }).errcode).toBe("M_BAD_JSON");
    }
    // Integers written with an exponent or a decimal point are integers (the canonical JSON
    // appendix's own example), stored as such.
    const integral = await put('{"body":"x","n":1.0,"m":1e3}');
    expect(integral.status).toBe(200);
    const { event_id } = (await integral.json()) as { event_id: string };
    expect((await alice.call("GET", roomPath(roomId, `/event/${encodeURIComponent(event_id)}`))).json.content).toEqual({ body: "x", n: 1, m: 1000 });
    const big = await alice.call("PUT", roomPath(roomId, "/send/m.room.message/big"), { msgtype: "m.text", body: "x".repeat(70_000) });
    expect(big.status).toBe(413);
    expect(big.json.errcode).toBe("M_TOO_LARGE");
    const longType = await alice.call("PUT", roomPath(roomId, `/send/${"t".repeat(256)}/long`), {});
    expect(longType.status).toBe(400);
    expect(longType.json.errcode).toBe("M_TOO_LARGE");
    const longKey = await alice.setState(roomId, "org.example.k", {}, "k".repeat(256));
    expect(longKey.status).toBe(400);
  });

  it("refuses senders who are not in the room", async () => {
    const roomId = await alice.createRoom();
    const res = await bob.call("PUT", roomPath(roomId, "/send/m.room.message/x1"), { msgtype: "m.text", body: "hi" });
    expect(res.status).toBe(403);
    expect(res.json.error).toMatch(/not joined/);
    const unknown = await bob.call("PUT", roomPath("!nope:test.local", "/send/m.room.message/x2"), { body: "hi" });
    expect(unknown.status).toBe(404);
  });

  it("shows unsigned.transaction_id only to the device that sent the event", async () => {
    const roomId = await alice.createRoom();
    const sent = await alice.call("PUT", roomPath(roomId, "/send/m.room.message/mine-1"), { msgtype: "m.text", body: "mine" });
    const own = await alice.call("GET", roomPath(roomId, `/event/${encodeURIComponent(sent.json.event_id)}`));
    expect(own.json.unsigned.transaction_id).toBe("mine-1");
    expect(own.json.unsigned.age).toBeGreaterThanOrEqual(0);
    expect(own.json).not.toHaveProperty("hashes");
    expect(own.json).not.toHaveProperty("signatures");
    expect(own.json).not.toHaveProperty("auth_events");
    expect(own.json).not.toHaveProperty("prev_events");
    expect(own.json).not.toHaveProperty("depth");
    const login = await fetch(`${hs.url}/_matrix/client/v3/login`, {
      method: "POST",
      body: JSON.stringify({ type: "m.login.password", identifier: { type: "m.id.user", user: "alice" }, password: alice.password }),
    });
    const otherDevice = ((await login.json()) as { access_token: string }).access_token;
    const other = await fetch(`${hs.url}${roomPath(roomId, `/event/${encodeURIComponent(sent.json.event_id)}`)}`, {
      headers: { Authorization: `Bearer ${otherDevice}` },
    });
    expect(((await other.json()) as { unsigned: Record<string, unknown> }).unsigned.transaction_id).toBeUndefined();
  });

  it("sets and reads state with and without a trailing slash for the empty state key", async () => {
    const roomId = await alice.createRoom();
    const noSlash = await alice.call("PUT", roomPath(roomId, "/state/m.room.topic"), { topic: "one" });
    expect(noSlash.status).toBe(200);
    expect((await alice.call("GET", roomPath(roomId, "/state/m.room.topic/"))).json).toEqual({ topic: "one" });
    const slash = await alice.call("PUT", roomPath(roomId, "/state/m.room.topic/"), { topic: "two" });
    expect((await alice.call("GET", roomPath(roomId, "/state/m.room.topic"))).json).toEqual({ topic: "two" });
    // The same content again sends nothing new.
    const same = await alice.call("PUT", roomPath(roomId, "/state/m.room.topic/"), { topic: "two" });
    expect(same.json.event_id).toBe(slash.json.event_id);
    const asEvent = await alice.call("GET", roomPath(roomId, "/state/m.room.topic/?format=event"));
    expect(asEvent.json).toMatchObject({ type: "m.room.topic", state_key: "", event_id: slash.json.event_id, content: { topic: "two" } });
    expect(asEvent.json.unsigned.prev_content).toEqual({ topic: "one" });
    const missing = await alice.call("GET", roomPath(roomId, "/state/m.room.name/"));
    expect(missing.status).toBe(404);
    expect(missing.json.errcode).toBe("M_NOT_FOUND");
    const keyed = await alice.setState(roomId, "org.example.k", { v: 1 }, "some key");
    expect(keyed.status).toBe(200);
    expect((await alice.state(roomId, "org.example.k", "some key")).json).toEqual({ v: 1 });
  });

  it("checks that a canonical alias points to the room", async () => {
    const roomId = await alice.createRoom({ room_alias_name: "mine-alias" });
    const other = await alice.createRoom();
    const bad = await alice.setState(other, "m.room.canonical_alias", { alias: "#mine-alias:test.local" });
    expect(bad.status).toBe(400);
    expect(bad.json.errcode).toBe("M_BAD_ALIAS");
    expect((await alice.setState(roomId, "m.room.canonical_alias", { alias: "#mine-alias:test.local", alt_aliases: [] })).status).toBe(200);
  });
});

describe("redaction", () => {
  for (const version of ["10", "11", "12"]) {
    it(`redacts content as room version ${version} says and mirrors redacts at the top level`, async () => {
      const roomId = await alice.createRoom({ room_version: version, preset: "public_chat" });
      await bob.join(roomId);
      const eventId = await bob.send(roomId, { msgtype: "m.text", body: "secret" });
      const redaction = await alice.call("PUT", roomPath(roomId, `/redact/${encodeURIComponent(eventId)}/r1`), { reason: "no" });
      expect(redaction.status).toBe(200);
      const event = (await bob.call("GET", roomPath(roomId, `/event/${encodeURIComponent(eventId)}`))).json;
      expect(event.content).toEqual({});
      const because = event.unsigned.redacted_because;
      expect(because.event_id).toBe(redaction.json.event_id);
      expect(because.redacts).toBe(eventId);
      if (version === "10") expect(because.content).toEqual({ reason: "no" });
      else expect(because.content).toEqual({ reason: "no", redacts: eventId });
      // The same transaction ID from the same device is the same redaction.
      const again = await alice.call("PUT", roomPath(roomId, `/redact/${encodeURIComponent(eventId)}/r1`), { reason: "no" });
      expect(again.json.event_id).toBe(redaction.json.event_id);
    });
  }

  it("redacts state events in what /state shows, keeping the keys the algorithm protects", async () => {
    const roomId = await alice.createRoom();
    const topic = await alice.setState(roomId, "m.room.topic", { topic: "gone soon" });
    const jr = (await alice.call("GET", roomPath(roomId, "/state/m.room.join_rules/?format=event"))).json;
    await alice.call("PUT", roomPath(roomId, `/redact/${encodeURIComponent(topic.json.event_id)}/r2`), {});
    await alice.call("PUT", roomPath(roomId, `/redact/${encodeURIComponent(jr.event_id)}/r3`), {});
    expect((await alice.state(roomId, "m.room.topic")).json).toEqual({});
    expect((await alice.state(roomId, "m.room.join_rules")).json).toEqual({ join_rule: "invite" });
  });

  it("answers 404 for events that are not in the room", async () => {
    const roomId = await alice.createRoom();
    const res = await alice.call("PUT", roomPath(roomId, "/redact/$nothing/r4"), {});
    expect(res.status).toBe(404);
  });
});

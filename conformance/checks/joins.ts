// Joins over federation: make_join/send_join in every room version the target supports, room
// versions the joining server lacks, invite-only and restricted rooms.
// https://spec.matrix.org/latest/server-server-api/#joining-rooms
// https://spec.matrix.org/latest/server-server-api/#restricted-rooms
import { randomBytes } from "node:crypto";
import { SUPPORTED_ROOM_VERSIONS, roomVersionRules } from "../../federation/protocol/room-versions.ts";
import { type Check, type CheckContext, expect, expectStatus, fail, show, skip } from "../check.ts";
import type { ClientUser } from "../client.ts";

const group = "joins";
const enc = encodeURIComponent;

async function supportedVersions(user: ClientUser): Promise<string[]> {
  const caps = await user.ok("GET", "/_matrix/client/v3/capabilities");
  const available = caps?.capabilities?.["m.room_versions"]?.available;
  expect(typeof available === "object" && available !== null, `capabilities lack m.room_versions: ${show(caps)}`);
  return Object.keys(available);
}

function makeJoinPath(roomId: string, userId: string, versions: readonly string[]): string {
  return `/_matrix/federation/v1/make_join/${enc(roomId)}/${enc(userId)}?${versions.map((v) => `ver=${enc(v)}`).join("&")}`;
}

function roundTrip(version: string): Check {
  return {
    id: `joins.round-trip.v${version}`,
    group,
    title: `make_join/send_join round trip in room version ${version}: template, state and auth chain, the member seen by clients`,
    async run(ctx) {
      const owner = await ctx.user("owner");
      if (!(await supportedVersions(owner)).includes(version)) skip(`the server does not offer room version ${version}`);
      const roomId = await owner.createRoom({ preset: "public_chat", room_version: version });
      const peerUser = ctx.peer.userId(`conf${randomBytes(4).toString("hex")}`);
      const made = await ctx.peer.request(ctx.target, { method: "GET", path: makeJoinPath(roomId, peerUser, [version]) });
      expectStatus(made, 200, "make_join");
      if (made.json.room_version !== version) fail(`make_join answered room_version ${show(made.json.room_version)}, not ${version}`);
      const t = made.json.event;
      expect(t?.type === "m.room.member" && t.state_key === peerUser && t.sender === peerUser && t.content?.membership === "join", `the make_join template is not ${peerUser}'s join: ${show(t)}`);
      expect(Array.isArray(t.prev_events) && t.prev_events.length > 0 && Array.isArray(t.auth_events) && t.auth_events.length > 0, `the template lacks prev_events or auth_events: ${show(t)}`);
      const room = await ctx.peer.join(ctx.target, roomId, peerUser, [version]);
      const rules = roomVersionRules(version);
      expect(room.stateId("m.room.create") !== undefined, "send_join's state lacks m.room.create");
      expect(room.stateId("m.room.power_levels") !== undefined, "send_join's state lacks m.room.power_levels");
      expect(room.stateId("m.room.member", owner.userId) !== undefined, "send_join's state lacks the creator's membership");
      if (!rules.roomIdIsCreateEventId) expect(room.stateEvent("m.room.create")?.room_id === roomId, "the create event is not of this room");
      await owner.waitForMembership(roomId, peerUser, "join");
      // The joined peer can now post, and the target's clients see it.
      const msg = room.build({ type: "m.room.message", sender: peerUser, content: { msgtype: "m.text", body: `hello in v${version}` } });
      const res = await ctx.peer.sendTransaction(ctx.target, [msg.pdu]);
      expectStatus(res, 200, "PUT /send after the join");
      await owner.waitForEvent(roomId, (e) => e.event_id === msg.eventId, "the joined peer's message");
    },
  };
}

const incompatible: Check = {
  id: "joins.incompatible-room-version",
  group,
  title: "make_join from a server lacking the room's version is refused with 400 M_INCOMPATIBLE_ROOM_VERSION",
  async run(ctx) {
    const owner = await ctx.user("owner");
    const versions = await supportedVersions(owner);
    const version = versions.includes("10") ? "10" : versions[0]!;
    const roomId = await owner.createRoom({ preset: "public_chat", room_version: version });
    const peerUser = ctx.peer.userId(`conf${randomBytes(4).toString("hex")}`);
    const others = SUPPORTED_ROOM_VERSIONS.filter((v) => v !== version);
    const res = await ctx.peer.request(ctx.target, { method: "GET", path: makeJoinPath(roomId, peerUser, others) });
    expectStatus(res, 400, `make_join for a v${version} room offering only ${others.join(",")}`, "M_INCOMPATIBLE_ROOM_VERSION");
    if (res.json?.room_version !== version) fail(`the error's room_version is ${show(res.json?.room_version)}, not ${version}`);
    // The control: offering the version works.
    const ok = await ctx.peer.request(ctx.target, { method: "GET", path: makeJoinPath(roomId, peerUser, [version]) });
    expectStatus(ok, 200, `make_join offering ${version}`);
  },
};

/** Tries to join `peerUser` through make_join and send_join; true if the server took the join. */
async function tryJoin(ctx: CheckContext, roomId: string, peerUser: string, version: string): Promise<{ joined: boolean; how: string }> {
  const made = await ctx.peer.request(ctx.target, { method: "GET", path: makeJoinPath(roomId, peerUser, [version]) });
  if (made.status !== 200) return { joined: false, how: `make_join answered ${made.status} ${show(made.json?.errcode)}` };
  try {
    await ctx.peer.join(ctx.target, roomId, peerUser, [version]);
    return { joined: true, how: "make_join and send_join both answered 200" };
  } catch (err) {
    return { joined: false, how: `send_join refused: ${(err as Error).message}` };
  }
}

const inviteOnly: Check = {
  id: "joins.invite-only-refused",
  group,
  title: "joining an invite-only room without an invite is refused (make_join or send_join), and the user is not joined",
  async run(ctx) {
    const owner = await ctx.user("owner");
    const roomId = await owner.createRoom({ preset: "private_chat" });
    const version = (await owner.getState(roomId, "m.room.create"))?.room_version ?? "1";
    const peerUser = ctx.peer.userId(`conf${randomBytes(4).toString("hex")}`);
    const attempt = await tryJoin(ctx, roomId, peerUser, version);
    if (attempt.joined) fail(`an uninvited user joined an invite-only room (${attempt.how})`);
    const member = await owner.getState(roomId, "m.room.member", peerUser);
    if (member?.membership === "join") fail("the uninvited user shows as joined to the room's clients");
    // The control: once invited, the same user can join.
    await owner.invite(roomId, peerUser);
    const invited = await tryJoin(ctx, roomId, peerUser, version);
    if (!invited.joined) fail(`the invited user could not join either (${invited.how})`);
  },
};

const restricted: Check = {
  id: "joins.restricted",
  group,
  title: "a restricted room: refused to a user in none of the allowed rooms, allowed (signed by the resident server) to one in the allowed room",
  timeoutMs: 30_000,
  async run(ctx) {
    const owner = await ctx.user("owner");
    const versions = await supportedVersions(owner);
    const version = ["10", "9", "8", "11", "12"].find((v) => versions.includes(v));
    if (!version) skip("the server offers no room version with restricted joins");
    const allowedRoom = await owner.createRoom({ preset: "public_chat", room_version: version });
    const roomId = await owner.createRoom({
      preset: "private_chat",
      room_version: version,
      initial_state: [{ type: "m.room.join_rules", state_key: "", content: { join_rule: "restricted", allow: [{ type: "m.room_membership", room_id: allowedRoom }] } }],
    });
    const outsider = ctx.peer.userId(`conf${randomBytes(4).toString("hex")}`);
    const refused = await tryJoin(ctx, roomId, outsider, version);
    if (refused.joined) fail(`a user in none of the allowed rooms joined the restricted room (${refused.how})`);
    const insider = ctx.peer.userId(`conf${randomBytes(4).toString("hex")}`);
    await ctx.peer.join(ctx.target, allowedRoom, insider, [version]);
    await owner.waitForMembership(allowedRoom, insider, "join");
    const made = await ctx.peer.request(ctx.target, { method: "GET", path: makeJoinPath(roomId, insider, [version]) });
    expectStatus(made, 200, "make_join of a member of the allowed room");
    const via = made.json.event?.content?.join_authorised_via_users_server;
    if (typeof via !== "string" || !via.endsWith(`:${ctx.target.serverName}`)) fail(`the template lacks join_authorised_via_users_server of the target: ${show(made.json.event?.content)}`);
    const room = await ctx.peer.join(ctx.target, roomId, insider, [version]);
    const joinEvent = room.stateEvent("m.room.member", insider);
    if (!joinEvent?.signatures?.[ctx.target.serverName]) fail("send_join's event lacks the resident server's signature");
    await owner.waitForMembership(roomId, insider, "join");
  },
};

export const joinChecks: readonly Check[] = [...SUPPORTED_ROOM_VERSIONS.map(roundTrip), incompatible, inviteOnly, restricted];

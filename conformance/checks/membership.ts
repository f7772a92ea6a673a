// Invites (both ways), leaves and knocks over federation: the answers' schemas, the signatures
// they carry, and that the membership they set shows in the target's own view of the room.
// https://spec.matrix.org/latest/server-server-api/#inviting-to-a-room
// https://spec.matrix.org/latest/server-server-api/#leaving-rooms-rejecting-invites
// https://spec.matrix.org/latest/server-server-api/#knocking-upon-a-room
import { randomBytes } from "node:crypto";
import { signEvent } from "../../federation/protocol/event-signing.ts";
import { computeEventId } from "../../federation/protocol/event-hashes.ts";
import { type Check, type CheckContext, expect, expectStatus, fail, show, skip } from "../check.ts";
import { type Json, PeerRoom } from "../peer.ts";
import { expectSignedByTarget, peerUser, roomWithPeerUsers, syncUntil } from "../rooms.ts";

const enc = encodeURIComponent;

/** Stripped state events (`invite_room_state`, `knock_room_state`): type, state_key, sender, content. */
function expectStrippedState(list: unknown, what: string, mustHold: string): Json[] {
  expect(Array.isArray(list), `${what} is not a list: ${show(list)}`);
  for (const e of list as Json[]) {
    const ok = typeof e === "object" && e !== null && typeof e.type === "string" && typeof e.state_key === "string" && typeof e.sender === "string" && typeof e.content === "object";
    if (!ok) fail(`${what} holds an entry that is no stripped state event: ${show(e)}`);
  }
  if (!(list as Json[]).some((e) => e.type === mustHold)) fail(`${what} lacks ${mustHold}: ${show((list as Json[]).map((e) => e.type))}`);
  return list as Json[];
}

const inviteOutbound: Check = {
  id: "invites.outbound",
  group: "invites",
  title: "Inviting a peer user sends PUT /v2/invite with the invite event signed by the target, its room version and the room's stripped state",
  async run(ctx) {
    const alice = await ctx.user("alice");
    const roomId = await alice.createRoom({ preset: "private_chat", name: "invites" });
    const invitee = peerUser(ctx, "invitee");
    const request = ctx.peer.waitFor("PUT /v2/invite", (r) =>
      r.method === "PUT" && r.path.startsWith(`/_matrix/federation/v2/invite/${enc(roomId)}/`) ? r : undefined,
    );
    await alice.invite(roomId, invitee);
    const req = await request;
    const body = req.body ?? {};
    expect(typeof body.room_version === "string", `the invite's room_version is not a string: ${show(body.room_version)}`);
    const event = body.event as Json;
    expect(typeof event === "object" && event !== null, `the invite body has no event: ${show(body)}`);
    const pathId = decodeURIComponent(req.path.split("?")[0]!.split("/").pop()!);
    if (computeEventId(body.room_version, event) !== pathId) fail(`the event's ID is not the one in the path (${pathId})`);
    if (event.type !== "m.room.member" || event.state_key !== invitee || event.content?.membership !== "invite" || event.sender !== alice.userId) {
      fail(`the event is not ${alice.userId}'s invite of ${invitee}: ${show(event)}`);
    }
    await expectSignedByTarget(ctx, body.room_version, event, "the invite event");
    expectStrippedState(body.invite_room_state, "invite_room_state", "m.room.join_rules");
    // The peer countersigned it (its built-in answer): the target then holds the invite.
    await alice.waitForMembership(roomId, invitee, "invite");
  },
};

/**
 * A room hosted by the peer (version 10, a version every current server supports): create, the
 * creator's join, power levels and join rules, built and signed by the peer.
 */
function peerHostedRoom(ctx: CheckContext): { room: PeerRoom; creator: string } {
  const version = "10";
  const creator = peerUser(ctx, "host");
  const room = new PeerRoom(ctx.peer, `!conf${randomBytes(8).toString("hex")}:${ctx.peer.serverName}`, version);
  const add = (draft: Parameters<PeerRoom["build"]>[0]) => room.add(room.build(draft).pdu);
  add({ type: "m.room.create", state_key: "", sender: creator, content: { creator, room_version: version }, prev_events: [], auth_events: [], depth: 1 });
  add({ type: "m.room.member", state_key: creator, sender: creator, content: { membership: "join" } });
  add({ type: "m.room.power_levels", state_key: "", sender: creator, content: { users: { [creator]: 100 }, users_default: 0, events_default: 0, state_default: 50, ban: 50, kick: 50, redact: 50, invite: 0 } });
  add({ type: "m.room.join_rules", state_key: "", sender: creator, content: { join_rule: "invite" } });
  ctx.peer.rooms.set(room.roomId, room);
  return { room, creator };
}

const inviteInbound: Check = {
  id: "invites.inbound",
  group: "invites",
  title: "PUT /v2/invite of a local user is answered with the event signed by the target, and the user sees the invite in /sync",
  async run(ctx) {
    const bobUser = await ctx.user("bob");
    const { room, creator } = peerHostedRoom(ctx);
    const invite = room.build({ type: "m.room.member", state_key: bobUser.userId, sender: creator, content: { membership: "invite" } });
    const inviteRoomState = [...room.state.values()].map((id) => room.events.get(id)!).filter((e) => e.type !== "m.room.member").map((e) => ({ type: e.type, state_key: e.state_key, sender: e.sender, content: e.content }));
    const res = await ctx.peer.request(ctx.target, {
      method: "PUT",
      path: `/_matrix/federation/v2/invite/${enc(room.roomId)}/${enc(invite.eventId)}`,
      body: { event: invite.pdu, room_version: room.version, invite_room_state: inviteRoomState },
    });
    if (res.status === 400 && res.json?.errcode === "M_INCOMPATIBLE_ROOM_VERSION") skip("the target does not support room version 10");
    expectStatus(res, 200, "PUT /v2/invite");
    const signed = res.json?.event as Json;
    expect(typeof signed === "object" && signed !== null, `the answer holds no event: ${show(res.json)}`);
    if (computeEventId(room.version, signed) !== invite.eventId) fail("the answered event is not the invite sent (its ID differs)");
    await expectSignedByTarget(ctx, room.version, signed, "the answered invite");
    if (signed.signatures?.[ctx.peer.serverName] === undefined) fail("the answered invite lost the inviting server's signature");
    await syncUntil(bobUser, `the invite to ${room.roomId}`, (sync) => {
      const events = sync.rooms?.invite?.[room.roomId]?.invite_state?.events;
      return Array.isArray(events) && events.some((e: Json) => e.type === "m.room.member" && e.state_key === bobUser.userId && e.content?.membership === "invite") ? true : undefined;
    });
  },
};

const leave: Check = {
  id: "leaves.make-send-leave",
  group: "leaves",
  // Waits up to 10 s for the leave after a federated join: more than the default 20 s in all.
  timeoutMs: 30_000,
  title: "make_leave answers a leave template for the user; send_leave of it is answered {} and the user has left in the target's view",
  async run(ctx) {
    const { alice, roomId, room, peerUsers } = await roomWithPeerUsers(ctx, ["leaver"]);
    const userId = peerUsers[0]!;
    const made = await ctx.peer.request(ctx.target, { method: "GET", path: `/_matrix/federation/v1/make_leave/${enc(roomId)}/${enc(userId)}` });
    expectStatus(made, 200, "make_leave");
    const template = made.json?.event as Json;
    if (made.json?.room_version !== room.version) fail(`make_leave's room_version is ${show(made.json?.room_version)}, not ${room.version}`);
    if (template?.type !== "m.room.member" || template.state_key !== userId || template.sender !== userId || template.content?.membership !== "leave") {
      fail(`make_leave's template is not ${userId}'s leave: ${show(template)}`);
    }
    const signed = signEvent(room.version, { ...template, origin: ctx.peer.serverName, origin_server_ts: Date.now() }, ctx.peer.serverName, ctx.peer.key);
    const eventId = computeEventId(room.version, signed);
    const sent = await ctx.peer.request(ctx.target, { method: "PUT", path: `/_matrix/federation/v2/send_leave/${enc(roomId)}/${enc(eventId)}`, body: signed });
    expectStatus(sent, 200, "send_leave (v2)");
    if (typeof sent.json !== "object" || sent.json === null || Array.isArray(sent.json)) fail(`send_leave v2 answered ${show(sent.json)}, not an object`);
    await alice.waitForMembership(roomId, userId, "leave");
  },
};

const knock: Check = {
  id: "knocks.make-send-knock",
  group: "knocks",
  timeoutMs: 30_000,
  title: "make_knock/send_knock on a room with join rule knock: the answer's knock_room_state, and the knock in the target's view",
  async run(ctx) {
    const alice = await ctx.user("alice");
    const created = await alice.call("POST", "/_matrix/client/v3/createRoom", {
      room_version: "10",
      preset: "private_chat",
      initial_state: [{ type: "m.room.join_rules", state_key: "", content: { join_rule: "knock" } }],
    });
    if (created.status === 400 && created.json?.errcode === "M_UNSUPPORTED_ROOM_VERSION") skip("the target does not support room version 10");
    expectStatus(created, 200, "createRoom (knock)");
    const roomId = created.json.room_id as string;
    const userId = peerUser(ctx, "knocker");
    const made = await ctx.peer.request(ctx.target, { method: "GET", path: `/_matrix/federation/v1/make_knock/${enc(roomId)}/${enc(userId)}?ver=10` });
    expectStatus(made, 200, "make_knock");
    const template = made.json?.event as Json;
    if (made.json?.room_version !== "10") fail(`make_knock's room_version is ${show(made.json?.room_version)}, not 10`);
    if (template?.type !== "m.room.member" || template.state_key !== userId || template.sender !== userId || template.content?.membership !== "knock") {
      fail(`make_knock's template is not ${userId}'s knock: ${show(template)}`);
    }
    const signed = signEvent("10", { ...template, origin: ctx.peer.serverName, origin_server_ts: Date.now() }, ctx.peer.serverName, ctx.peer.key);
    const eventId = computeEventId("10", signed);
    const sent = await ctx.peer.request(ctx.target, { method: "PUT", path: `/_matrix/federation/v1/send_knock/${enc(roomId)}/${enc(eventId)}`, body: signed });
    expectStatus(sent, 200, "send_knock");
    const stripped = expectStrippedState(sent.json?.knock_room_state, "knock_room_state", "m.room.join_rules");
    if (stripped.find((e) => e.type === "m.room.join_rules")?.content?.join_rule !== "knock") fail(`knock_room_state's join rules are not knock: ${show(stripped)}`);
    await alice.waitForMembership(roomId, userId, "knock");
  },
};

export const membershipChecks: readonly Check[] = [inviteOutbound, inviteInbound, leave, knock];

// https://spec.matrix.org/latest/client-server-api/#room-membership
// joining.yaml, inviting.yaml, leaving.yaml, kicking.yaml, banning.yaml, list_joined_rooms.yaml
import { z } from "zod";
import { MatrixError } from "../../../http/errors.ts";
import { route } from "../../../http/route.ts";
import type { JsonObject } from "../../../../federation/protocol/pdu.ts";
import { isValidServerName } from "../../../../federation/protocol/identifiers.ts";
import type { SignedThirdPartyInvite } from "../../../rooms/third-party-invites.ts";
import type { Services } from "../../../services.ts";

const reasonBody = z.looseObject({ reason: z.string().optional() });

/** invite_3pid.yaml: the 3pid form of /invite, and an entry of `invite_3pid` in /createRoom. */
export const invite3pidBody = z.looseObject({
  id_server: z.string().min(1).max(255),
  id_access_token: z.string().min(1).max(1000),
  medium: z.string().min(1).max(100),
  address: z.string().min(1).max(500),
});

/** third_party_signed.yaml. */
const thirdPartySigned = z.looseObject({
  sender: z.string().startsWith("@").max(255),
  mxid: z.string().startsWith("@").max(255),
  token: z.string().min(1).max(255),
  signatures: z.record(z.string(), z.record(z.string(), z.string())),
});

const joinBody = z.looseObject({ reason: z.string().optional(), third_party_signed: thirdPartySigned.optional() });

/**
 * A join with `third_party_signed`: "the homeserver must verify that it matches a pending
 * m.room.third_party_invite event in the room, and perform key validity checking if required by
 * the event" — the invite it proves is issued first (or asked of the room's server), then the join
 * follows as any invited user's.
 */
async function acceptThirdPartyInvite(services: Services, userId: string, roomId: string, signed: z.infer<typeof thirdPartySigned>) {
  if (signed.mxid !== userId) throw new MatrixError(403, "M_FORBIDDEN", "third_party_signed was signed for another user");
  // The whole object is what the identity server signed (sender included).
  await services.thirdPartyInvites.exchange(signed.sender, userId, roomId, signed as SignedThirdPartyInvite);
}
const targetBody = z.looseObject({ user_id: z.string(), reason: z.string().optional() });

export const joinRoomIdOrAlias = route({
  method: "POST",
  path: "/_matrix/client/v3/join/:roomIdOrAlias",
  auth: "user",
  allowGuests: true,
  body: joinBody,
  async handler({ requester, params, body, c }, services) {
    // The servers to join through: `via` (v1.12), and `server_name` before it.
    const via = [...(c.req.queries("via") ?? []), ...(c.req.queries("server_name") ?? [])].filter(isValidServerName).slice(0, 20);
    const { reason, third_party_signed: signed, ...custom } = body;
    if (signed) {
      const roomId = await services.rooms.resolveRoom(params.roomIdOrAlias!).catch(() => params.roomIdOrAlias!);
      if (!roomId.startsWith("!")) throw new MatrixError(404, "M_NOT_FOUND", "Joining with third_party_signed needs the room ID or a local alias");
      await acceptThirdPartyInvite(services, requester.userId, roomId, signed);
    }
    return { room_id: await services.rooms.join(requester, params.roomIdOrAlias!, reason, via, custom as JsonObject) };
  },
});

export const joinRoom = route({
  method: "POST",
  path: "/_matrix/client/v3/rooms/:roomId/join",
  auth: "user",
  allowGuests: true,
  body: joinBody,
  async handler({ requester, params, body }, services) {
    if (!params.roomId!.startsWith("!")) throw new MatrixError(400, "M_INVALID_PARAM", "Expected a room ID");
    const { reason, third_party_signed: signed, ...custom } = body;
    if (signed) await acceptThirdPartyInvite(services, requester.userId, params.roomId!, signed);
    return { room_id: await services.rooms.join(requester, params.roomId!, reason, [], custom as JsonObject) };
  },
});

// https://spec.matrix.org/latest/client-server-api/#post_matrixclientv3knockroomidoralias
export const knock = route({
  method: "POST",
  path: "/_matrix/client/v3/knock/:roomIdOrAlias",
  auth: "user",
  body: reasonBody,
  async handler({ requester, params, body, c }, services) {
    const via = [...(c.req.queries("via") ?? []), ...(c.req.queries("server_name") ?? [])].filter(isValidServerName).slice(0, 20);
    return { room_id: await services.rooms.knock(requester, params.roomIdOrAlias!, body.reason, via) };
  },
});

export const invite = route({
  method: "POST",
  path: "/_matrix/client/v3/rooms/:roomId/invite",
  auth: "user",
  // The two forms of the endpoint: by user ID, and by third-party identifier (third_party_membership.yaml).
  body: z.union([
    z.looseObject({ user_id: z.string(), reason: z.string().optional() }),
    invite3pidBody,
  ]),
  async handler({ requester, params, body }, services) {
    if ("user_id" in body && typeof body.user_id === "string") {
      await services.rooms.invite(requester, params.roomId!, body.user_id, typeof body.reason === "string" ? body.reason : undefined);
      return {};
    }
    const { id_server, id_access_token, medium, address } = body as z.infer<typeof invite3pidBody>;
    await services.thirdPartyInvites.invite(requester, params.roomId!, { id_server, id_access_token, medium, address });
    return {};
  },
});

export const leave = route({
  method: "POST",
  path: "/_matrix/client/v3/rooms/:roomId/leave",
  auth: "user",
  allowGuests: true,
  body: reasonBody,
  async handler({ requester, params, body }, services) {
    await services.rooms.leave(requester, params.roomId!, body.reason);
    return {};
  },
});

export const forget = route({
  method: "POST",
  path: "/_matrix/client/v3/rooms/:roomId/forget",
  auth: "user",
  allowGuests: true,
  async handler({ requester, params }, services) {
    await services.rooms.forget(requester, params.roomId!);
    return {};
  },
});

export const kick = route({
  method: "POST",
  path: "/_matrix/client/v3/rooms/:roomId/kick",
  auth: "user",
  body: targetBody,
  async handler({ requester, params, body }, services) {
    await services.rooms.setMembershipOf(requester, params.roomId!, body.user_id, "kick", body.reason);
    return {};
  },
});

export const ban = route({
  method: "POST",
  path: "/_matrix/client/v3/rooms/:roomId/ban",
  auth: "user",
  body: targetBody,
  async handler({ requester, params, body }, services) {
    await services.rooms.setMembershipOf(requester, params.roomId!, body.user_id, "ban", body.reason);
    return {};
  },
});

export const unban = route({
  method: "POST",
  path: "/_matrix/client/v3/rooms/:roomId/unban",
  auth: "user",
  body: targetBody,
  async handler({ requester, params, body }, services) {
    await services.rooms.setMembershipOf(requester, params.roomId!, body.user_id, "unban", body.reason);
    return {};
  },
});

export const joinedRooms = route({
  method: "GET",
  path: "/_matrix/client/v3/joined_rooms",
  auth: "user",
  allowGuests: true,
  async handler({ requester }, services) {
    return { joined_rooms: await services.rooms.joinedRooms(requester.userId) };
  },
});

export const membershipRoutes = [joinRoomIdOrAlias, joinRoom, knock, invite, leave, forget, kick, ban, unban, joinedRooms];

// https://spec.matrix.org/latest/client-server-api/#room-membership
// joining.yaml, inviting.yaml, leaving.yaml, kicking.yaml, banning.yaml, list_joined_rooms.yaml
import { z } from "zod";
import { MatrixError } from "../../../http/errors.ts";
import { route } from "../../../http/route.ts";
import type { JsonObject } from "../../../../federation/protocol/pdu.ts";
import { isValidServerName } from "../../../../federation/protocol/identifiers.ts";

const reasonBody = z.looseObject({ reason: z.string().optional() });
const targetBody = z.looseObject({ user_id: z.string(), reason: z.string().optional() });

export const joinRoomIdOrAlias = route({
  method: "POST",
  path: "/_matrix/client/v3/join/:roomIdOrAlias",
  auth: "user",
  allowGuests: true,
  body: z.looseObject({ reason: z.string().optional(), third_party_signed: z.unknown().optional() }),
  async handler({ requester, params, body, c }, services) {
    if (body.third_party_signed !== undefined) {
      throw new MatrixError(400, "M_INVALID_PARAM", "Joining with third_party_signed is not supported");
    }
    // The servers to join through: `via` (v1.12), and `server_name` before it.
    const via = [...(c.req.queries("via") ?? []), ...(c.req.queries("server_name") ?? [])].filter(isValidServerName).slice(0, 20);
    const { reason, third_party_signed: _, ...custom } = body;
    return { room_id: await services.rooms.join(requester, params.roomIdOrAlias!, reason, via, custom as JsonObject) };
  },
});

export const joinRoom = route({
  method: "POST",
  path: "/_matrix/client/v3/rooms/:roomId/join",
  auth: "user",
  allowGuests: true,
  body: z.looseObject({ reason: z.string().optional(), third_party_signed: z.unknown().optional() }),
  async handler({ requester, params, body }, services) {
    if (!params.roomId!.startsWith("!")) throw new MatrixError(400, "M_INVALID_PARAM", "Expected a room ID");
    const { reason, third_party_signed: _, ...custom } = body;
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
  body: z.looseObject({ user_id: z.string(), reason: z.string().optional(), medium: z.string().optional() }),
  async handler({ requester, params, body }, services) {
    await services.rooms.invite(requester, params.roomId!, body.user_id, body.reason);
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

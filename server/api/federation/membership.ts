// Joining and inviting across servers.
// https://spec.matrix.org/latest/server-server-api/#joining-rooms
// https://spec.matrix.org/latest/server-server-api/#inviting-to-a-room
import { z } from "zod";
import { MatrixError } from "../../http/errors.ts";
import { route } from "../../http/route.ts";
import { jsonObject } from "../../http/safe-json.ts";
import type { Services } from "../../services.ts";

function roomFederation(services: Services) {
  const rooms = services.federation.rooms;
  if (!rooms) throw new MatrixError(404, "M_UNRECOGNIZED", "Rooms across servers are not available");
  return rooms;
}

// https://spec.matrix.org/latest/server-server-api/#get_matrixfederationv1make_joinroomiduserid
export const makeJoin = route({
  method: "GET",
  path: "/_matrix/federation/v1/make_join/:roomId/:userId",
  auth: "server",
  query: z.looseObject({ ver: z.union([z.string(), z.array(z.string())]).optional() }),
  async handler({ origin, params, c }, services) {
    // No `ver`: the joining server supports room version 1 only.
    const versions = c.req.queries("ver") ?? ["1"];
    await services.rooms.requireNotBlocked(params.roomId!);
    return roomFederation(services).makeJoin(origin, params.roomId!, params.userId!, versions);
  },
});

// https://spec.matrix.org/latest/server-server-api/#put_matrixfederationv2send_joinroomideventid
export const sendJoinV2 = route({
  method: "PUT",
  path: "/_matrix/federation/v2/send_join/:roomId/:eventId",
  auth: "server",
  body: jsonObject,
  async handler({ origin, params, body }, services) {
    await services.rooms.requireNotBlocked(params.roomId!);
    return roomFederation(services).sendJoin(origin, params.roomId!, params.eventId!, body);
  },
});

// https://spec.matrix.org/latest/server-server-api/#put_matrixfederationv1send_joinroomideventid
// v1 answers `[200, {…}]`, as the spec's deprecated endpoint says.
export const sendJoinV1 = route({
  method: "PUT",
  path: "/_matrix/federation/v1/send_join/:roomId/:eventId",
  auth: "server",
  body: jsonObject,
  async handler({ origin, params, body }, services) {
    await services.rooms.requireNotBlocked(params.roomId!);
    return [200, await roomFederation(services).sendJoin(origin, params.roomId!, params.eventId!, body)];
  },
});

// https://spec.matrix.org/latest/server-server-api/#put_matrixfederationv2inviteroomideventid
export const inviteV2 = route({
  method: "PUT",
  path: "/_matrix/federation/v2/invite/:roomId/:eventId",
  auth: "server",
  body: z.looseObject({ event: jsonObject, room_version: z.string(), invite_room_state: z.array(z.unknown()).optional() }),
  async handler({ origin, params, body }, services) {
    await services.rooms.requireNotBlocked(params.roomId!);
    return roomFederation(services).receiveInvite(origin, params.roomId!, params.eventId!, body);
  },
});

// https://spec.matrix.org/latest/server-server-api/#put_matrixfederationv1inviteroomideventid
// Deprecated, for room versions 1 and 2 (which it assumes is the room's: the body carries no
// version, and Synapse takes it as 1): the body is the event, its `unsigned.invite_room_state` the
// stripped state; the answer is `[200, {event}]`.
export const inviteV1 = route({
  method: "PUT",
  path: "/_matrix/federation/v1/invite/:roomId/:eventId",
  auth: "server",
  body: jsonObject,
  async handler({ origin, params, body }, services) {
    await services.rooms.requireNotBlocked(params.roomId!);
    const unsigned = typeof body.unsigned === "object" && body.unsigned !== null ? (body.unsigned as Record<string, unknown>) : {};
    const inviteRoomState = Array.isArray(unsigned.invite_room_state) ? unsigned.invite_room_state : [];
    const answer = await roomFederation(services).receiveInvite(origin, params.roomId!, params.eventId!, {
      event: body,
      room_version: "1",
      invite_room_state: inviteRoomState,
    });
    return [200, answer];
  },
});

// https://spec.matrix.org/latest/server-server-api/#get_matrixfederationv1make_leaveroomiduserid
export const makeLeave = route({
  method: "GET",
  path: "/_matrix/federation/v1/make_leave/:roomId/:userId",
  auth: "server",
  async handler({ origin, params }, services) {
    return roomFederation(services).makeLeave(origin, params.roomId!, params.userId!);
  },
});

// https://spec.matrix.org/latest/server-server-api/#put_matrixfederationv2send_leaveroomideventid
export const sendLeaveV2 = route({
  method: "PUT",
  path: "/_matrix/federation/v2/send_leave/:roomId/:eventId",
  auth: "server",
  body: jsonObject,
  async handler({ origin, params, body }, services) {
    return roomFederation(services).sendLeave(origin, params.roomId!, params.eventId!, body);
  },
});

// https://spec.matrix.org/latest/server-server-api/#put_matrixfederationv1send_leaveroomideventid
export const sendLeaveV1 = route({
  method: "PUT",
  path: "/_matrix/federation/v1/send_leave/:roomId/:eventId",
  auth: "server",
  body: jsonObject,
  async handler({ origin, params, body }, services) {
    return [200, await roomFederation(services).sendLeave(origin, params.roomId!, params.eventId!, body)];
  },
});

// https://spec.matrix.org/latest/server-server-api/#get_matrixfederationv1make_knockroomiduserid
export const makeKnock = route({
  method: "GET",
  path: "/_matrix/federation/v1/make_knock/:roomId/:userId",
  auth: "server",
  query: z.looseObject({ ver: z.union([z.string(), z.array(z.string())]).optional() }),
  async handler({ origin, params, c }, services) {
    await services.rooms.requireNotBlocked(params.roomId!);
    return roomFederation(services).makeKnock(origin, params.roomId!, params.userId!, c.req.queries("ver") ?? []);
  },
});

// https://spec.matrix.org/latest/server-server-api/#put_matrixfederationv1send_knockroomideventid
export const sendKnock = route({
  method: "PUT",
  path: "/_matrix/federation/v1/send_knock/:roomId/:eventId",
  auth: "server",
  body: jsonObject,
  async handler({ origin, params, body }, services) {
    await services.rooms.requireNotBlocked(params.roomId!);
    return roomFederation(services).sendKnock(origin, params.roomId!, params.eventId!, body);
  },
});

export const federationMembershipRoutes = [makeJoin, sendJoinV2, sendJoinV1, inviteV2, inviteV1, makeLeave, sendLeaveV2, sendLeaveV1, makeKnock, sendKnock];

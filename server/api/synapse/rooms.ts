// Synapse's admin API, rooms side: so synapse-admin, synadm and moderation bots work unchanged.
// https://element-hq.github.io/synapse/latest/admin_api/rooms.html
// https://element-hq.github.io/synapse/latest/admin_api/purge_history_api.html
// https://element-hq.github.io/synapse/latest/admin_api/event_reports.html
// Every endpoint needs a server admin (403 M_FORBIDDEN otherwise); every change is audited.
import { z } from "zod";
import { isValidUserId } from "../../../federation/protocol/identifiers.ts";
import { invalidParam, notFound } from "../../http/errors.ts";
import { route } from "../../http/route.ts";
import { ROOM_ORDERS } from "../../rooms/room-admin.ts";
import { auditAdminAction, requireAdmin } from "./admin-auth.ts";

const intParam = (min: number, max = Number.MAX_SAFE_INTEGER) =>
  z.string().regex(/^\d{1,15}$/, "must be a non-negative integer").transform(Number).pipe(z.number().int().min(min).max(max));
const boolParam = z.enum(["true", "false"]).transform((v) => v === "true");
const dirParam = z.enum(["f", "b"]);
const roomIdParam = (roomId: string) => {
  if (!roomId.startsWith("!")) throw invalidParam("Expected a room ID");
  return roomId;
};

// https://element-hq.github.io/synapse/latest/admin_api/rooms.html#list-room-api
export const listRooms = route({
  method: "GET",
  path: "/_synapse/admin/v1/rooms",
  auth: "user",
  query: z.looseObject({
    from: intParam(0).optional(),
    limit: intParam(0, 10_000).optional(),
    order_by: z.enum(ROOM_ORDERS).optional(),
    dir: dirParam.optional(),
    search_term: z.string().max(1000).optional(),
    public_rooms: boolParam.optional(),
    empty_rooms: boolParam.optional(),
  }),
  async handler({ requester, query }, services) {
    await requireAdmin(requester, services);
    return services.roomAdmin.listRooms({
      from: query.from ?? 0,
      limit: query.limit ?? 100,
      orderBy: query.order_by ?? "name",
      dir: query.dir ?? "f",
      searchTerm: query.search_term,
      publicRooms: query.public_rooms,
      emptyRooms: query.empty_rooms,
    });
  },
});

// https://element-hq.github.io/synapse/latest/admin_api/rooms.html#room-details-api
export const roomDetails = route({
  method: "GET",
  path: "/_synapse/admin/v1/rooms/:roomId",
  auth: "user",
  async handler({ requester, params }, services) {
    await requireAdmin(requester, services);
    return services.roomAdmin.roomDetails(roomIdParam(params.roomId!));
  },
});

// https://element-hq.github.io/synapse/latest/admin_api/rooms.html#room-members-api
export const roomMembers = route({
  method: "GET",
  path: "/_synapse/admin/v1/rooms/:roomId/members",
  auth: "user",
  async handler({ requester, params }, services) {
    await requireAdmin(requester, services);
    return services.roomAdmin.members(roomIdParam(params.roomId!));
  },
});

// https://element-hq.github.io/synapse/latest/admin_api/rooms.html#room-state-api
export const roomState = route({
  method: "GET",
  path: "/_synapse/admin/v1/rooms/:roomId/state",
  auth: "user",
  query: z.looseObject({ type: z.string().max(1000).optional() }),
  async handler({ requester, params, query }, services) {
    await requireAdmin(requester, services);
    const ids = await services.roomAdmin.currentStateIds(roomIdParam(params.roomId!), query.type);
    const events = await services.eventStore.getEvents(ids);
    const stored = ids.map((id) => events.get(id)).filter((e) => e !== undefined);
    return { state: await services.eventStore.format(stored, requester, { aggregations: false }) };
  },
});

// https://element-hq.github.io/synapse/latest/admin_api/rooms.html#block-room-api
export const getRoomBlock = route({
  method: "GET",
  path: "/_synapse/admin/v1/rooms/:roomId/block",
  auth: "user",
  async handler({ requester, params }, services) {
    await requireAdmin(requester, services);
    return services.roomAdmin.blockStatus(roomIdParam(params.roomId!));
  },
});

export const putRoomBlock = route({
  method: "PUT",
  path: "/_synapse/admin/v1/rooms/:roomId/block",
  auth: "user",
  body: z.object({ block: z.boolean() }),
  async handler({ requester, params, body, request }, services) {
    await requireAdmin(requester, services);
    const roomId = roomIdParam(params.roomId!);
    await services.roomAdmin.setBlocked(roomId, body.block, requester.userId);
    await auditAdminAction(services, requester, request, body.block ? "block_room" : "unblock_room", { room_id: roomId });
    return { block: body.block };
  },
});

// https://element-hq.github.io/synapse/latest/admin_api/rooms.html#version-2-new-version
// "The JSON body must not be empty. The body must be at least `{}`."
const deleteRoomBody = z.looseObject({
  block: z.boolean().optional(),
  purge: z.boolean().optional(),
  force_purge: z.boolean().optional(),
  new_room_user_id: z.string().max(255).refine(isValidUserId, "must be a user ID").optional(),
  room_name: z.string().max(255).optional(),
  message: z.string().max(65_536).optional(),
});
type DeleteRoomBody = z.infer<typeof deleteRoomBody>;

const deleteOptions = (body: DeleteRoomBody) => ({
  block: body.block ?? false,
  purge: body.purge ?? true,
  forcePurge: body.force_purge ?? false,
  newRoomUserId: body.new_room_user_id,
  roomName: body.room_name,
  message: body.message,
});

/** What the audit log keeps of a deletion: the switches and the new room's owner, not the texts. */
const auditedOptions = (body: DeleteRoomBody) => ({
  block: body.block ?? false,
  purge: body.purge ?? true,
  force_purge: body.force_purge ?? false,
  ...(body.new_room_user_id !== undefined ? { new_room_user_id: body.new_room_user_id } : {}),
});

export const deleteRoomV2 = route({
  method: "DELETE",
  path: "/_synapse/admin/v2/rooms/:roomId",
  auth: "user",
  body: deleteRoomBody,
  async handler({ requester, params, body, request }, services) {
    await requireAdmin(requester, services);
    const roomId = roomIdParam(params.roomId!);
    const deleteId = await services.roomAdmin.startDelete(requester, roomId, deleteOptions(body));
    await auditAdminAction(services, requester, request, "delete_room", { room_id: roomId, delete_id: deleteId, ...auditedOptions(body) });
    return { delete_id: deleteId };
  },
});

// https://element-hq.github.io/synapse/latest/admin_api/rooms.html#version-1-old-version
// The same, synchronous: answers the shutdown's result once it is over.
export const deleteRoomV1 = route({
  method: "DELETE",
  path: "/_synapse/admin/v1/rooms/:roomId",
  auth: "user",
  body: deleteRoomBody,
  async handler({ requester, params, body, request }, services) {
    await requireAdmin(requester, services);
    const roomId = roomIdParam(params.roomId!);
    const options = deleteOptions(body);
    await auditAdminAction(services, requester, request, "delete_room", { room_id: roomId, ...auditedOptions(body) });
    return services.roomAdmin.deleteNow(requester, roomId, options);
  },
});

// https://element-hq.github.io/synapse/latest/admin_api/rooms.html#query-by-room_id
export const deleteStatusByRoom = route({
  method: "GET",
  path: "/_synapse/admin/v2/rooms/:roomId/delete_status",
  auth: "user",
  async handler({ requester, params }, services) {
    await requireAdmin(requester, services);
    const tasks = services.roomAdmin.deleteStatusesOf(roomIdParam(params.roomId!));
    if (tasks.length === 0) throw notFound("No delete task for room");
    return { results: tasks.map(({ endedTs: _e, ...task }) => task) };
  },
});

// https://element-hq.github.io/synapse/latest/admin_api/rooms.html#query-by-delete_id
export const deleteStatusById = route({
  method: "GET",
  path: "/_synapse/admin/v2/rooms/delete_status/:deleteId",
  auth: "user",
  async handler({ requester, params }, services) {
    await requireAdmin(requester, services);
    const task = services.roomAdmin.deleteStatus(params.deleteId!);
    if (!task) throw notFound("delete id not found");
    const { endedTs: _e, ...rest } = task;
    return rest;
  },
});

// https://element-hq.github.io/synapse/latest/admin_api/purge_history_api.html
const purgeHistoryBody = z.looseObject({
  delete_local_events: z.boolean().optional(),
  purge_up_to_event_id: z.string().max(255).optional(),
  purge_up_to_ts: z.number().int().min(0).optional(),
});

export const purgeHistory = route({
  method: "POST",
  path: "/_synapse/admin/v1/purge_history/:roomId",
  auth: "user",
  body: purgeHistoryBody,
  async handler({ requester, params, body, request }, services) {
    await requireAdmin(requester, services);
    const roomId = roomIdParam(params.roomId!);
    const upTo = { eventId: body.purge_up_to_event_id, ts: body.purge_up_to_ts };
    const purgeId = await services.roomAdmin.startPurgeHistory(roomId, upTo, body.delete_local_events ?? false);
    await auditAdminAction(services, requester, request, "purge_history", { room_id: roomId, purge_id: purgeId, ...upTo });
    return { purge_id: purgeId };
  },
});

export const purgeHistoryToEvent = route({
  method: "POST",
  path: "/_synapse/admin/v1/purge_history/:roomId/:eventId",
  auth: "user",
  body: purgeHistoryBody,
  async handler({ requester, params, body, request }, services) {
    await requireAdmin(requester, services);
    const roomId = roomIdParam(params.roomId!);
    const eventId = params.eventId!;
    const purgeId = await services.roomAdmin.startPurgeHistory(roomId, { eventId }, body.delete_local_events ?? false);
    await auditAdminAction(services, requester, request, "purge_history", { room_id: roomId, purge_id: purgeId, eventId });
    return { purge_id: purgeId };
  },
});

export const purgeHistoryStatus = route({
  method: "GET",
  path: "/_synapse/admin/v1/purge_history_status/:purgeId",
  auth: "user",
  async handler({ requester, params }, services) {
    await requireAdmin(requester, services);
    const task = services.roomAdmin.purgeHistoryStatus(params.purgeId!);
    if (!task) throw notFound("purge id not found");
    return { status: task.status, ...(task.error !== undefined ? { error: task.error } : {}) };
  },
});

// https://element-hq.github.io/synapse/latest/admin_api/event_reports.html
export const listEventReports = route({
  method: "GET",
  path: "/_synapse/admin/v1/event_reports",
  auth: "user",
  query: z.looseObject({
    from: intParam(0).optional(),
    limit: intParam(0, 10_000).optional(),
    dir: dirParam.optional(),
    user_id: z.string().max(255).optional(),
    room_id: z.string().max(255).optional(),
  }),
  async handler({ requester, query }, services) {
    await requireAdmin(requester, services);
    return services.eventReports.list({
      from: query.from ?? 0,
      limit: query.limit ?? 100,
      dir: query.dir ?? "b",
      userId: query.user_id,
      roomId: query.room_id,
    });
  },
});

const reportId = (id: string) => {
  if (!/^\d{1,15}$/.test(id)) throw invalidParam("The report_id parameter must be a string representing a positive integer.");
  return Number(id);
};

export const getEventReport = route({
  method: "GET",
  path: "/_synapse/admin/v1/event_reports/:reportId",
  auth: "user",
  async handler({ requester, params }, services) {
    await requireAdmin(requester, services);
    return services.eventReports.get(reportId(params.reportId!));
  },
});

export const deleteEventReport = route({
  method: "DELETE",
  path: "/_synapse/admin/v1/event_reports/:reportId",
  auth: "user",
  async handler({ requester, params, request }, services) {
    await requireAdmin(requester, services);
    const id = reportId(params.reportId!);
    await services.eventReports.delete(id);
    await auditAdminAction(services, requester, request, "delete_event_report", { report_id: id });
    return {};
  },
});

export const synapseRoomAdminRoutes = [
  listRooms,
  deleteStatusById,
  roomDetails,
  roomMembers,
  roomState,
  getRoomBlock,
  putRoomBlock,
  deleteRoomV2,
  deleteRoomV1,
  deleteStatusByRoom,
  purgeHistory,
  purgeHistoryToEvent,
  purgeHistoryStatus,
  listEventReports,
  getEventReport,
  deleteEventReport,
];

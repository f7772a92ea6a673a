// Synapse's media admin API over the media repository (server/media/): the media of a room, a user's
// uploads, and deleting local media by ID, by age and size, or by user. Admins only; deletions audited.
// https://element-hq.github.io/synapse/latest/admin_api/media_admin_api.html
// https://element-hq.github.io/synapse/latest/admin_api/user_admin_api.html#list-media-uploaded-by-a-user
import { z } from "zod";
import { isValidServerName, isValidUserId } from "../../../federation/protocol/identifiers.ts";
import { invalidParam, notFound } from "../../http/errors.ts";
import { route } from "../../http/route.ts";
import { localMediaIdsInRoom, mediaInRoom } from "../../media/room-media.ts";
import type { Services } from "../../services.ts";
import { auditAdminAction, requireAdmin } from "./admin-auth.ts";

const intParam = (min: number, max = Number.MAX_SAFE_INTEGER) =>
  z.string().regex(/^\d{1,15}$/, "must be a non-negative integer").transform(Number).pipe(z.number().int().min(min).max(max));

/** "Can only delete local media": other servers' media is theirs (their copy here is a cache). */
function requireLocalServer(serverName: string, services: Services): void {
  if (serverName !== services.config.server_name) throw invalidParam("Can only delete local media");
}

function requireLocalUser(userId: string, services: Services): void {
  if (!isValidUserId(userId) || !userId.endsWith(`:${services.config.server_name}`)) throw invalidParam("Can only look up local users");
}

// https://element-hq.github.io/synapse/latest/admin_api/media_admin_api.html#list-all-media-in-a-room
// Local media only: the URIs of other servers found in the room are not listed (`remote` is empty).
export const roomMedia = route({
  method: "GET",
  path: "/_synapse/admin/v1/room/:roomId/media",
  auth: "user",
  async handler({ requester, params }, services) {
    await requireAdmin(requester, services);
    const roomId = params.roomId!;
    await services.rooms.requireRoom(roomId);
    const server = services.config.server_name;
    const ids = await localMediaIdsInRoom(services.eventStore, roomId, server);
    return { local: ids.sort().map((id) => `mxc://${server}/${id}`), remote: [] };
  },
});

// https://element-hq.github.io/synapse/latest/admin_api/media_admin_api.html#delete-a-specific-local-media
export const deleteMedia = route({
  method: "DELETE",
  path: "/_synapse/admin/v1/media/:serverName/:mediaId",
  auth: "user",
  async handler({ requester, params, request }, services) {
    await requireAdmin(requester, services);
    requireLocalServer(params.serverName!, services);
    const mediaId = params.mediaId!;
    const result = await services.media.purgeLocal([mediaId]);
    if (result.media === 0) throw notFound("Unknown media");
    await auditAdminAction(services, requester, request, "delete_media", { media_id: mediaId });
    return { deleted_media: [mediaId], total: 1 };
  },
});

// https://element-hq.github.io/synapse/latest/admin_api/media_admin_api.html#delete-local-media-by-date-or-size
export const deleteMediaBefore = route({
  method: "POST",
  path: "/_synapse/admin/v1/media/:serverName/delete",
  auth: "user",
  query: z.looseObject({
    before_ts: intParam(0),
    size_gt: intParam(0).optional(),
    keep_profiles: z.enum(["true", "false"]).optional(),
  }),
  body: z.looseObject({}).optional(),
  async handler({ requester, params, query, request }, services) {
    await requireAdmin(requester, services);
    requireLocalServer(params.serverName!, services);
    // keep_profiles (default true): media in use as a user's or a room's avatar is kept.
    const ids = await services.media.localMediaIds({ beforeTs: query.before_ts, sizeGt: query.size_gt });
    const avatars = query.keep_profiles === "false" ? new Set<string>() : await profileAndRoomAvatarIds(services);
    const doomed = ids.filter((id) => !avatars.has(id));
    await services.media.purgeLocal(doomed);
    await auditAdminAction(services, requester, request, "delete_media_before", { before_ts: query.before_ts, size_gt: query.size_gt ?? 0, total: doomed.length });
    return { deleted_media: doomed, total: doomed.length };
  },
});

/** The local media IDs in use as a user's or a room's avatar (`keep_profiles`). */
async function profileAndRoomAvatarIds(services: Services): Promise<Set<string>> {
  const prefix = `mxc://${services.config.server_name}/`;
  const urls = await services.roomAdmin.avatarUrls();
  return new Set(urls.filter((u) => u.startsWith(prefix)).map((u) => u.slice(prefix.length)));
}

// https://element-hq.github.io/synapse/latest/admin_api/user_admin_api.html#list-media-uploaded-by-a-user
export const userMedia = route({
  method: "GET",
  path: "/_synapse/admin/v1/users/:userId/media",
  auth: "user",
  query: z.looseObject({ from: intParam(0).optional(), limit: intParam(0, 10_000).optional(), dir: z.enum(["f", "b"]).optional() }),
  async handler({ requester, params, query }, services) {
    await requireAdmin(requester, services);
    const userId = params.userId!;
    requireLocalUser(userId, services);
    if (!(await services.accounts.getUser(userId))) throw notFound("Unknown user");
    const from = query.from ?? 0;
    const { rows, total } = await services.media.listUserMedia(userId, { from, limit: query.limit ?? 100, dir: query.dir ?? "b" });
    const quarantined = await services.media.quarantinedBy(services.config.server_name, rows.map((m) => m.mediaId));
    const response: Record<string, unknown> = {
      media: rows.map((m) => ({
        media_id: m.mediaId,
        media_type: m.contentType,
        media_length: m.size,
        upload_name: m.uploadName,
        created_ts: m.createdTs,
        last_access_ts: m.lastAccessTs ?? null,
        // Not kept here: Synapse's protection from quarantine.
        quarantined_by: quarantined.get(m.mediaId) ?? null,
        safe_from_quarantine: false,
      })),
      total,
    };
    if (from + rows.length < total) response.next_token = from + rows.length;
    return response;
  },
});

// https://element-hq.github.io/synapse/latest/admin_api/user_admin_api.html#delete-media-uploaded-by-a-user
export const deleteUserMedia = route({
  method: "DELETE",
  path: "/_synapse/admin/v1/users/:userId/media",
  auth: "user",
  async handler({ requester, params, request }, services) {
    await requireAdmin(requester, services);
    const userId = params.userId!;
    requireLocalUser(userId, services);
    if (!(await services.accounts.getUser(userId))) throw notFound("Unknown user");
    const ids = await services.media.localMediaIds({ userId });
    await services.media.purgeLocal(ids);
    await auditAdminAction(services, requester, request, "delete_user_media", { user_id: userId, total: ids.length });
    return { deleted_media: ids, total: ids.length };
  },
});

const MEDIA_ID = /^[A-Za-z0-9_-]{1,255}$/;

/** The `:serverName/:mediaId` of a quarantine path, checked: any server's media may be named. */
function mediaUri(params: Record<string, string | undefined>): { serverName: string; mediaId: string } {
  const { serverName = "", mediaId = "" } = params;
  if (!isValidServerName(serverName) || !MEDIA_ID.test(mediaId)) throw invalidParam("not a media URI");
  return { serverName, mediaId };
}

// https://element-hq.github.io/synapse/latest/admin_api/media_admin_api.html#quarantining-media-by-id
// Any server's media: a quarantined remote URI is not fetched again, and served to no one.
export const quarantineMedia = route({
  method: "POST",
  path: "/_synapse/admin/v1/media/quarantine/:serverName/:mediaId",
  auth: "user",
  body: z.looseObject({}).optional(),
  async handler({ requester, params, request }, services) {
    await requireAdmin(requester, services);
    const { serverName, mediaId } = mediaUri(params);
    await services.media.quarantine([{ serverName, mediaId }], requester.userId);
    await auditAdminAction(services, requester, request, "quarantine_media", { media: `mxc://${serverName}/${mediaId}` });
    return {};
  },
});

// https://element-hq.github.io/synapse/latest/admin_api/media_admin_api.html#remove-media-from-quarantine-by-id
export const unquarantineMedia = route({
  method: "POST",
  path: "/_synapse/admin/v1/media/unquarantine/:serverName/:mediaId",
  auth: "user",
  body: z.looseObject({}).optional(),
  async handler({ requester, params, request }, services) {
    await requireAdmin(requester, services);
    const { serverName, mediaId } = mediaUri(params);
    await services.media.unquarantine(serverName, mediaId);
    await auditAdminAction(services, requester, request, "unquarantine_media", { media: `mxc://${serverName}/${mediaId}` });
    return {};
  },
});

// https://element-hq.github.io/synapse/latest/admin_api/media_admin_api.html#quarantining-media-in-a-room
// (Synapse's older path /_synapse/admin/v1/quarantine_media/{roomId} answers the same.)
const quarantineRoomMediaHandler = {
  auth: "user" as const,
  body: z.looseObject({}).optional(),
  async handler({ requester, params, request }: { requester: Parameters<typeof requireAdmin>[0]; params: Record<string, string | undefined>; request: Parameters<typeof auditAdminAction>[2] }, services: Services) {
    await requireAdmin(requester, services);
    const roomId = params.roomId!;
    await services.rooms.requireRoom(roomId);
    const uris = await mediaInRoom(services.eventStore, roomId);
    const added = await services.media.quarantine(uris, requester.userId);
    await auditAdminAction(services, requester, request, "quarantine_room_media", { room_id: roomId, total: added });
    return { num_quarantined: added };
  },
};
export const quarantineRoomMedia = route({ method: "POST", path: "/_synapse/admin/v1/room/:roomId/media/quarantine", ...quarantineRoomMediaHandler });
export const quarantineRoomMediaOld = route({ method: "POST", path: "/_synapse/admin/v1/quarantine_media/:roomId", ...quarantineRoomMediaHandler });

// https://element-hq.github.io/synapse/latest/admin_api/media_admin_api.html#quarantining-all-media-of-a-user
export const quarantineUserMedia = route({
  method: "POST",
  path: "/_synapse/admin/v1/user/:userId/media/quarantine",
  auth: "user",
  body: z.looseObject({}).optional(),
  async handler({ requester, params, request }, services) {
    await requireAdmin(requester, services);
    const userId = params.userId!;
    requireLocalUser(userId, services);
    const ids = await services.media.localMediaIds({ userId });
    const server = services.config.server_name;
    const added = await services.media.quarantine(ids.map((mediaId) => ({ serverName: server, mediaId })), requester.userId);
    await auditAdminAction(services, requester, request, "quarantine_user_media", { user_id: userId, total: added });
    return { num_quarantined: added };
  },
});

export const synapseMediaAdminRoutes = [
  roomMedia,
  deleteMediaBefore,
  deleteMedia,
  userMedia,
  deleteUserMedia,
  quarantineMedia,
  unquarantineMedia,
  quarantineRoomMedia,
  quarantineRoomMediaOld,
  quarantineUserMedia,
];

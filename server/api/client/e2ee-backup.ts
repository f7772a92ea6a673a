// Server-side key backups.
// https://spec.matrix.org/latest/client-server-api/#server-side-key-backups
// https://spec.matrix.org/latest/client-server-api/#post_matrixclientv3room_keysversion
// https://spec.matrix.org/latest/client-server-api/#put_matrixclientv3room_keyskeys
import { z } from "zod";
import { missingParam, notFound } from "../../http/errors.ts";
import { route } from "../../http/route.ts";
import { jsonObject } from "../../http/safe-json.ts";

// Opaque to the server (signed and encrypted by clients): kept exactly as parsed. The spec
// describes an object but names no error for anything else, and Synapse keeps any JSON value
// (sytest stores a string): only its owner's clients read it, and they check it themselves.
const opaqueJson = z.union([jsonObject, z.string(), z.number(), z.boolean(), z.array(z.unknown())]);
const authData = opaqueJson;
const keyBackupData = z.object({
  first_message_index: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER),
  forwarded_count: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER),
  is_verified: z.boolean(),
  // Encrypted by the client, opaque likewise.
  session_data: opaqueJson,
});
const sessions = z.record(z.string(), keyBackupData);
const roomKeyBackup = z.object({ sessions });

/** The `version` query parameter every `/room_keys/keys` request needs. */
function versionParam(query: Record<string, string>): string {
  const version = query.version;
  if (!version) throw missingParam("The version query parameter is required");
  return version;
}

export const createBackupVersion = route({
  method: "POST",
  path: "/_matrix/client/v3/room_keys/version",
  auth: "user",
  body: z.object({ algorithm: z.string().min(1).max(255), auth_data: authData }),
  async handler({ requester, body }, services) {
    return { version: await services.e2ee.keyBackup.createVersion(requester.userId, body.algorithm, body.auth_data) };
  },
});

// matrix-js-sdk's Rust crypto requires exactly 404 M_NOT_FOUND when there is no backup.
export const getCurrentBackupVersion = route({
  method: "GET",
  path: "/_matrix/client/v3/room_keys/version",
  auth: "user",
  handler: ({ requester }, services) => services.e2ee.keyBackup.getVersion(requester.userId),
});

export const getBackupVersion = route({
  method: "GET",
  path: "/_matrix/client/v3/room_keys/version/:version",
  auth: "user",
  handler: ({ requester, params }, services) => services.e2ee.keyBackup.getVersion(requester.userId, params.version!),
});

export const updateBackupVersion = route({
  method: "PUT",
  path: "/_matrix/client/v3/room_keys/version/:version",
  auth: "user",
  body: z.object({ algorithm: z.string(), auth_data: authData, version: z.string().optional() }),
  async handler({ requester, params, body }, services) {
    await services.e2ee.keyBackup.updateVersion(requester.userId, params.version!, body.algorithm, body.auth_data, body.version);
    return {};
  },
});

export const deleteBackupVersion = route({
  method: "DELETE",
  path: "/_matrix/client/v3/room_keys/version/:version",
  auth: "user",
  async handler({ requester, params }, services) {
    await services.e2ee.keyBackup.deleteVersion(requester.userId, params.version!);
    return {};
  },
});

export const putAllRoomKeys = route({
  method: "PUT",
  path: "/_matrix/client/v3/room_keys/keys",
  auth: "user",
  body: z.object({ rooms: z.record(z.string(), roomKeyBackup) }),
  handler: ({ requester, query, body }, services) =>
    services.e2ee.keyBackup.putKeys(requester.userId, versionParam(query), body.rooms),
});

export const putRoomKeys = route({
  method: "PUT",
  path: "/_matrix/client/v3/room_keys/keys/:roomId",
  auth: "user",
  body: roomKeyBackup,
  handler: ({ requester, params, query, body }, services) =>
    services.e2ee.keyBackup.putKeys(requester.userId, versionParam(query), { [params.roomId!]: body }),
});

export const putSessionKey = route({
  method: "PUT",
  path: "/_matrix/client/v3/room_keys/keys/:roomId/:sessionId",
  auth: "user",
  body: keyBackupData,
  handler: ({ requester, params, query, body }, services) =>
    services.e2ee.keyBackup.putKeys(requester.userId, versionParam(query), {
      [params.roomId!]: { sessions: { [params.sessionId!]: body } },
    }),
});

export const getAllRoomKeys = route({
  method: "GET",
  path: "/_matrix/client/v3/room_keys/keys",
  auth: "user",
  async handler({ requester, query }, services) {
    return { rooms: await services.e2ee.keyBackup.getKeys(requester.userId, versionParam(query)) };
  },
});

export const getRoomKeys = route({
  method: "GET",
  path: "/_matrix/client/v3/room_keys/keys/:roomId",
  auth: "user",
  async handler({ requester, params, query }, services) {
    const rooms = await services.e2ee.keyBackup.getKeys(requester.userId, versionParam(query), params.roomId!);
    return rooms[params.roomId!] ?? { sessions: {} };
  },
});

export const getSessionKey = route({
  method: "GET",
  path: "/_matrix/client/v3/room_keys/keys/:roomId/:sessionId",
  auth: "user",
  async handler({ requester, params, query }, services) {
    const rooms = await services.e2ee.keyBackup.getKeys(
      requester.userId,
      versionParam(query),
      params.roomId!,
      params.sessionId!,
    );
    const key = rooms[params.roomId!]?.sessions[params.sessionId!];
    if (!key) throw notFound("Key not found");
    return key;
  },
});

export const deleteAllRoomKeys = route({
  method: "DELETE",
  path: "/_matrix/client/v3/room_keys/keys",
  auth: "user",
  handler: ({ requester, query }, services) => services.e2ee.keyBackup.deleteKeys(requester.userId, versionParam(query)),
});

export const deleteRoomKeys = route({
  method: "DELETE",
  path: "/_matrix/client/v3/room_keys/keys/:roomId",
  auth: "user",
  handler: ({ requester, params, query }, services) =>
    services.e2ee.keyBackup.deleteKeys(requester.userId, versionParam(query), params.roomId!),
});

export const deleteSessionKey = route({
  method: "DELETE",
  path: "/_matrix/client/v3/room_keys/keys/:roomId/:sessionId",
  auth: "user",
  handler: ({ requester, params, query }, services) =>
    services.e2ee.keyBackup.deleteKeys(requester.userId, versionParam(query), params.roomId!, params.sessionId!),
});

export const keyBackupRoutes = [
  createBackupVersion,
  getCurrentBackupVersion,
  getBackupVersion,
  updateBackupVersion,
  deleteBackupVersion,
  putAllRoomKeys,
  putRoomKeys,
  putSessionKey,
  getAllRoomKeys,
  getRoomKeys,
  getSessionKey,
  deleteAllRoomKeys,
  deleteRoomKeys,
  deleteSessionKey,
];

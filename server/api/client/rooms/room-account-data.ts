// https://spec.matrix.org/latest/client-server-api/#client-config (per-room account data)
// https://spec.matrix.org/latest/client-server-api/#room-tagging (tags, kept as m.tag room account data)
import { z } from "zod";
import { MatrixError, notFound } from "../../../http/errors.ts";
import { route } from "../../../http/route.ts";
import { jsonObject } from "../../../http/safe-json.ts";
import { PUSH_RULES_TYPE } from "../../../userdata/userdata.ts";
import { requireOwnUser } from "../ownership.ts";

/** Account data the server manages itself: clients change it through its own endpoints. */
const SERVER_MANAGED_TYPES = new Set([PUSH_RULES_TYPE, "m.fully_read"]);

function checkRoomId(roomId: string): void {
  if (!roomId.startsWith("!")) throw new MatrixError(400, "M_INVALID_PARAM", `Invalid room ID: ${roomId.slice(0, 100)}`);
}

export const getRoomAccountData = route({
  method: "GET",
  path: "/_matrix/client/v3/user/:userId/rooms/:roomId/account_data/:type",
  auth: "user",
  async handler({ params, requester }, services) {
    requireOwnUser(requester, params.userId!, "read account data");
    checkRoomId(params.roomId!);
    const content = await services.userData.getAccountData(requester.userId, params.roomId!, params.type!);
    if (content === undefined) throw notFound("Account data not found");
    return content;
  },
});

export const setRoomAccountData = route({
  method: "PUT",
  path: "/_matrix/client/v3/user/:userId/rooms/:roomId/account_data/:type",
  auth: "user",
  // Stored and served exactly as sent (a `__proto__` key included).
  body: jsonObject,
  async handler({ params, requester, body }, services) {
    requireOwnUser(requester, params.userId!, "add account data");
    checkRoomId(params.roomId!);
    if (SERVER_MANAGED_TYPES.has(params.type!)) {
      throw new MatrixError(405, "M_BAD_JSON", `Cannot set ${params.type} through this API`);
    }
    await services.userData.setAccountData(requester.userId, params.roomId!, params.type!, body);
    return {};
  },
});

export const getTags = route({
  method: "GET",
  path: "/_matrix/client/v3/user/:userId/rooms/:roomId/tags",
  auth: "user",
  async handler({ params, requester }, services) {
    requireOwnUser(requester, params.userId!, "read tags");
    return { tags: await services.roomTags.getTags(requester.userId, params.roomId!) };
  },
});

export const putTag = route({
  method: "PUT",
  path: "/_matrix/client/v3/user/:userId/rooms/:roomId/tags/:tag",
  auth: "user",
  body: z.record(z.string(), z.unknown()),
  async handler({ params, requester, body }, services) {
    requireOwnUser(requester, params.userId!, "add tags");
    checkRoomId(params.roomId!);
    await services.roomTags.setTag(requester.userId, params.roomId!, params.tag!, body);
    return {};
  },
});

export const deleteTag = route({
  method: "DELETE",
  path: "/_matrix/client/v3/user/:userId/rooms/:roomId/tags/:tag",
  auth: "user",
  async handler({ params, requester }, services) {
    requireOwnUser(requester, params.userId!, "remove tags");
    await services.roomTags.deleteTag(requester.userId, params.roomId!, params.tag!);
    return {};
  },
});

export const roomAccountDataRoutes = [getRoomAccountData, setRoomAccountData, getTags, putTag, deleteTag];

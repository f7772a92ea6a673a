// https://spec.matrix.org/latest/client-server-api/#creation (create_room.yaml)
import { z } from "zod";
import { MatrixError } from "../../../http/errors.ts";
import { route } from "../../../http/route.ts";
import { jsonObject } from "../../../http/safe-json.ts";

export const createRoom = route({
  method: "POST",
  path: "/_matrix/client/v3/createRoom",
  auth: "user",
  strictJson: true,
  body: z.looseObject({
    visibility: z.enum(["public", "private"]).optional(),
    room_alias_name: z.string().optional(),
    name: z.string().optional(),
    topic: z.string().optional(),
    invite: z.array(z.string()).optional(),
    invite_3pid: z.array(z.unknown()).optional(),
    room_version: z.string().optional(),
    creation_content: jsonObject.optional(),
    initial_state: z.array(z.object({ type: z.string(), state_key: z.string().optional(), content: jsonObject })).optional(),
    preset: z.enum(["private_chat", "public_chat", "trusted_private_chat"]).optional(),
    is_direct: z.boolean().optional(),
    power_level_content_override: jsonObject.optional(),
  }),
  async handler({ requester, body }, services) {
    if (body.invite_3pid && body.invite_3pid.length > 0) {
      throw new MatrixError(400, "M_INVALID_PARAM", "Inviting by third-party identifier (invite_3pid) is not supported");
    }
    const roomId = await services.rooms.createRoom(requester, body);
    return { room_id: roomId };
  },
});

export const createRoomRoutes = [createRoom];

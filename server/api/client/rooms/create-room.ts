// https://spec.matrix.org/latest/client-server-api/#creation (create_room.yaml)
import { z } from "zod";
import { route } from "../../../http/route.ts";
import { jsonObject } from "../../../http/safe-json.ts";
import { invite3pidBody } from "./membership.ts";

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
    invite_3pid: z.array(invite3pidBody).max(100).optional(),
    room_version: z.string().optional(),
    creation_content: jsonObject.optional(),
    initial_state: z.array(z.object({ type: z.string(), state_key: z.string().optional(), content: jsonObject })).optional(),
    preset: z.enum(["private_chat", "public_chat", "trusted_private_chat"]).optional(),
    is_direct: z.boolean().optional(),
    power_level_content_override: jsonObject.optional(),
  }),
  async handler({ requester, body }, services) {
    const roomId = await services.rooms.createRoom(requester, body);
    // As POST /invite with each 3pid, once the room exists (as Synapse does): a failure fails the
    // request, the room stays.
    for (const invite of body.invite_3pid ?? []) {
      const { id_server, id_access_token, medium, address } = invite;
      await services.thirdPartyInvites.invite(requester, roomId, { id_server, id_access_token, medium, address });
    }
    return { room_id: roomId };
  },
});

export const createRoomRoutes = [createRoom];

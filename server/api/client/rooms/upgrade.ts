// https://spec.matrix.org/latest/client-server-api/#post_matrixclientv3roomsroomidupgrade (room_upgrades.yaml)
import { z } from "zod";
import { route } from "../../../http/route.ts";

export const upgradeRoom = route({
  method: "POST",
  path: "/_matrix/client/v3/rooms/:roomId/upgrade",
  auth: "user",
  body: z.looseObject({
    new_version: z.string(),
    // v1.16: the creators besides the upgrader, for versions that have additional creators (12).
    additional_creators: z.array(z.string()).max(100).optional(),
  }),
  async handler({ requester, params, body }, services) {
    const replacement = await services.roomUpgrades.upgrade(requester, params.roomId!, body.new_version, body.additional_creators ?? []);
    return { replacement_room: replacement };
  },
});

export const upgradeRoutes = [upgradeRoom];

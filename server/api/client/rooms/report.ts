// Reporting content: a user reports an event to the server admins (who read it through
// /_synapse/admin/v1/event_reports, server/api/synapse/rooms.ts).
// https://spec.matrix.org/latest/client-server-api/#post_matrixclientv3roomsroomidreporteventid
import { z } from "zod";
import { route } from "../../../http/route.ts";

export const reportEvent = route({
  method: "POST",
  path: "/_matrix/client/v3/rooms/:roomId/report/:eventId",
  auth: "user",
  body: z.looseObject({
    reason: z.string().max(65_536).optional(),
    // Deprecated in the spec, kept by Synapse's admin list: "-100 is the most offensive and 0 is inoffensive".
    score: z.number().int().min(-100).max(0).optional(),
  }),
  async handler({ requester, params, body }, services) {
    await services.eventReports.report(requester, params.roomId!, params.eventId!, body.reason, body.score);
    return {};
  },
});

export const reportRoutes = [reportEvent];

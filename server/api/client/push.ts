// https://spec.matrix.org/latest/client-server-api/#push-notifications
// data/api/client-server/pusher.yaml (GET /pushers, POST /pushers/set) and notifications.yaml.
// The pushers are server/push/pushers.ts; the list of notifications server/push/notifications.ts.
import { z } from "zod";
import { route } from "../../http/route.ts";

export const getPushers = route({
  method: "GET",
  path: "/_matrix/client/v3/pushers",
  auth: "user",
  async handler({ requester }, services) {
    return { pushers: await services.pushers.list(requester.userId) };
  },
});

export const setPusher = route({
  method: "POST",
  path: "/_matrix/client/v3/pushers/set",
  auth: "user",
  // Required fields are checked by the service, so a missing one gets the spec's M_MISSING_PARAM.
  body: z.looseObject({
    pushkey: z.string().min(1).optional(),
    kind: z.string().min(1).nullable().optional(),
    app_id: z.string().min(1).optional(),
    app_display_name: z.string().optional(),
    device_display_name: z.string().optional(),
    profile_tag: z.string().optional(),
    lang: z.string().optional(),
    data: z.record(z.string(), z.unknown()).optional(),
    append: z.boolean().optional(),
  }),
  async handler({ requester, body }, services) {
    await services.pushers.set(requester.userId, requester.deviceId, body);
    return {};
  },
});

export const getNotifications = route({
  method: "GET",
  path: "/_matrix/client/v3/notifications",
  auth: "user",
  query: z.looseObject({
    from: z.string().optional(),
    limit: z.coerce.number().int().min(0).optional(),
    only: z.string().optional(),
  }),
  handler: ({ requester, query }, services) =>
    services.pushNotifications.list({ userId: requester.userId, deviceId: requester.deviceId }, { from: query.from, limit: query.limit, only: query.only }),
});

export const pushRoutes = [getPushers, setPusher, getNotifications];

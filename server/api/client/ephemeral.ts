// Typing, receipts, read markers and presence.
// https://spec.matrix.org/latest/client-server-api/#typing-notifications (typing.yaml)
// https://spec.matrix.org/latest/client-server-api/#receipts (receipts.yaml)
// https://spec.matrix.org/latest/client-server-api/#fully-read-markers (read_markers.yaml)
// https://spec.matrix.org/latest/client-server-api/#presence (presence.yaml)
import { z } from "zod";
import { MatrixError, forbidden } from "../../http/errors.ts";
import { route } from "../../http/route.ts";
import { PRESENCE_STATES } from "../../ephemeral/presence.ts";
import { requireOwnUser } from "./ownership.ts";

export const typing = route({
  method: "PUT",
  path: "/_matrix/client/v3/rooms/:roomId/typing/:userId",
  auth: "user",
  allowGuests: true,
  body: z.looseObject({ typing: z.boolean(), timeout: z.int().min(0).optional() }),
  async handler({ requester, params, body }, services) {
    if (params.userId !== requester.userId) throw forbidden("Cannot set the typing state of another user");
    await services.typing.setTyping(requester.userId, params.roomId!, body.typing, body.timeout);
    return {};
  },
});

export const receipt = route({
  method: "POST",
  path: "/_matrix/client/v3/rooms/:roomId/receipt/:receiptType/:eventId",
  auth: "user",
  allowGuests: true,
  body: z.looseObject({ thread_id: z.unknown().optional() }),
  async handler({ requester, params, body }, services) {
    const type = params.receiptType!;
    const threadId = body.thread_id;
    if (threadId !== undefined && (typeof threadId !== "string" || threadId === "")) {
      throw new MatrixError(400, "M_INVALID_PARAM", "thread_id must be a non-empty string");
    }
    if (type === "m.fully_read") {
      // "effectively calls /read_markers internally"
      if (threadId !== undefined) throw new MatrixError(400, "M_INVALID_PARAM", "thread_id is not allowed for m.fully_read");
      await services.readMarkers.setReadMarkers(requester.userId, params.roomId!, { fullyRead: params.eventId! });
      return {};
    }
    if (type !== "m.read" && type !== "m.read.private") {
      throw new MatrixError(400, "M_INVALID_PARAM", `Unknown receipt type ${type.slice(0, 40)}`);
    }
    await services.receipts.setReceipt(requester.userId, params.roomId!, type, params.eventId!, threadId);
    return {};
  },
});

export const readMarkers = route({
  method: "POST",
  path: "/_matrix/client/v3/rooms/:roomId/read_markers",
  auth: "user",
  allowGuests: true,
  body: z.looseObject({
    "m.fully_read": z.string().optional(),
    "m.read": z.string().optional(),
    "m.read.private": z.string().optional(),
  }),
  async handler({ requester, params, body }, services) {
    await services.readMarkers.setReadMarkers(requester.userId, params.roomId!, {
      fullyRead: body["m.fully_read"],
      read: body["m.read"],
      readPrivate: body["m.read.private"],
    });
    return {};
  },
});

export const setPresence = route({
  method: "PUT",
  path: "/_matrix/client/v3/presence/:userId/status",
  auth: "user",
  allowGuests: true,
  body: z.looseObject({ presence: z.enum(PRESENCE_STATES), status_msg: z.string().max(1024).nullable().optional() }),
  async handler({ requester, params, body }, services) {
    requireOwnUser(requester, params.userId!, "set presence");
    await services.presence.setPresence(requester.userId, body.presence, body.status_msg);
    return {};
  },
});

export const getPresence = route({
  method: "GET",
  path: "/_matrix/client/v3/presence/:userId/status",
  auth: "user",
  allowGuests: true,
  async handler({ requester, params }, services) {
    const userId = params.userId!;
    const exists = (await services.accounts.getProfile(userId)) !== undefined;
    return services.presence.getPresence(requester.userId, userId, exists);
  },
});

export const ephemeralRoutes = [typing, receipt, readMarkers, setPresence, getPresence];

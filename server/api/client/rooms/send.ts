// https://spec.matrix.org/latest/client-server-api/#sending-events-to-a-room (room_send.yaml, room_state.yaml)
// https://spec.matrix.org/latest/client-server-api/#redactions (redaction.yaml)
import { randomUUID } from "node:crypto";
import { z } from "zod";
import { type Requester, route } from "../../../http/route.ts";
import { MatrixError } from "../../../http/errors.ts";
import { jsonObject } from "../../../http/safe-json.ts";

/**
 * Timestamp massaging (https://spec.matrix.org/latest/application-service-api/#timestamp-massaging):
 * `?ts=` sets the event's origin_server_ts, for application services only (ignored for others); a
 * value origin_server_ts cannot take is a bad request.
 */
function massagedTs(requester: Requester, query: Record<string, string>): number | undefined {
  if (requester.appServiceId === undefined || query.ts === undefined) return undefined;
  if (!/^\d{1,16}$/.test(query.ts) || !Number.isSafeInteger(Number(query.ts))) {
    throw new MatrixError(400, "M_INVALID_PARAM", "ts must be a timestamp in milliseconds (a non-negative integer)");
  }
  return Number(query.ts);
}

// Taken as parsed: content with a `__proto__` key is stored, hashed and served exactly as sent.
const content = jsonObject;

export const sendMessage = route({
  method: "PUT",
  path: "/_matrix/client/v3/rooms/:roomId/send/:eventType/:txnId",
  auth: "user",
  allowGuests: true,
  strictJson: true,
  body: content,
  async handler({ requester, params, body, query }, services) {
    const eventId = await services.rooms.sendMessage(requester, params.roomId!, params.eventType!, body, params.txnId!, massagedTs(requester, query));
    return { event_id: eventId };
  },
});

// The transaction-less POST of the r0 era, still served by Synapse and used by old bots and
// sytest: each request is a new event (no transaction ID to repeat).
export const sendMessageWithoutTxn = route({
  method: "POST",
  path: "/_matrix/client/v3/rooms/:roomId/send/:eventType",
  auth: "user",
  allowGuests: true,
  strictJson: true,
  body: content,
  async handler({ requester, params, body }, services) {
    const eventId = await services.rooms.sendMessage(requester, params.roomId!, params.eventType!, body, `post-${randomUUID()}`);
    return { event_id: eventId };
  },
});

function setStateRoute(path: string, stateKeyOf: (params: Record<string, string>) => string) {
  return route({
    method: "PUT",
    path,
    auth: "user",
    strictJson: true,
    body: content,
    async handler({ requester, params, body, query }, services) {
      const eventId = await services.rooms.setState(requester, params.roomId!, params.eventType!, stateKeyOf(params), body, massagedTs(requester, query));
      return { event_id: eventId };
    },
  });
}

export const setState = setStateRoute("/_matrix/client/v3/rooms/:roomId/state/:eventType/:stateKey", (p) => p.stateKey!);
// The empty state key: matrix-js-sdk uses `/state/{type}/` (trailing slash), other clients `/state/{type}`.
export const setStateEmptyKeySlash = setStateRoute("/_matrix/client/v3/rooms/:roomId/state/:eventType/", () => "");
export const setStateEmptyKey = setStateRoute("/_matrix/client/v3/rooms/:roomId/state/:eventType", () => "");

export const redact = route({
  method: "PUT",
  path: "/_matrix/client/v3/rooms/:roomId/redact/:eventId/:txnId",
  auth: "user",
  body: z.looseObject({ reason: z.string().optional() }),
  async handler({ requester, params, body }, services) {
    const eventId = await services.rooms.redact(requester, params.roomId!, params.eventId!, params.txnId!, body.reason);
    return { event_id: eventId };
  },
});

/**
 * `POST /rooms/{roomId}/redact/{eventId}` without a transaction ID: the r0 form, which Synapse still
 * serves and sytest uses. Each request is a new redaction (nothing to deduplicate it by).
 */
export const redactWithoutTxn = route({
  method: "POST",
  path: "/_matrix/client/v3/rooms/:roomId/redact/:eventId",
  auth: "user",
  body: z.looseObject({ reason: z.string().optional() }),
  async handler({ requester, params, body }, services) {
    const eventId = await services.rooms.redact(requester, params.roomId!, params.eventId!, `post-${randomUUID()}`, body.reason);
    return { event_id: eventId };
  },
});

export const sendRoutes = [sendMessage, sendMessageWithoutTxn, setState, setStateEmptyKeySlash, setStateEmptyKey, redact, redactWithoutTxn];

// Device keys: upload, query, claim, and who changed them.
// https://spec.matrix.org/latest/client-server-api/#end-to-end-encryption
// https://spec.matrix.org/latest/client-server-api/#post_matrixclientv3keysupload
// https://spec.matrix.org/latest/client-server-api/#post_matrixclientv3keysquery
// https://spec.matrix.org/latest/client-server-api/#post_matrixclientv3keysclaim
// https://spec.matrix.org/latest/client-server-api/#get_matrixclientv3keyschanges
import { z } from "zod";
import { MatrixError, invalidParam, unrecognized } from "../../http/errors.ts";
import { route } from "../../http/route.ts";
import { jsonObject } from "../../http/safe-json.ts";
import type { DeviceListPoint } from "../../sync/device-list-changes.ts";
import { STREAMS } from "../../sync/streams.ts";

const signatures = z.record(z.string(), z.record(z.string(), z.string()));
const keyMap = z.record(z.string(), z.unknown());

const deviceKeysShape = z.looseObject({
  user_id: z.string(),
  device_id: z.string(),
  algorithms: z.array(z.string()).optional(),
  keys: z.record(z.string(), z.string()).optional(),
  signatures: signatures.optional(),
});
// Every field of the device keys is signed, so none may be dropped: the shape is checked, and the
// object passed on exactly as parsed (a loose object would still drop a `__proto__` key).
const deviceKeys = jsonObject.superRefine((value, ctx) => {
  const result = deviceKeysShape.safeParse(value);
  for (const issue of result.error?.issues ?? []) ctx.addIssue({ code: "custom", message: issue.message, path: issue.path });
});

export const uploadKeys = route({
  method: "POST",
  path: "/_matrix/client/v3/keys/upload",
  auth: "user",
  allowGuests: true,
  body: z.object({
    device_keys: deviceKeys.optional(),
    one_time_keys: keyMap.optional(),
    fallback_keys: keyMap.optional(),
  }),
  async handler({ requester, body }, services) {
    // An application service acting without `device_id` acts on no device (identity assertion).
    if (requester.deviceId === "") throw new MatrixError(400, "M_UNKNOWN_DEVICE", "Uploading keys needs a device: give device_id");
    const counts = await services.e2ee.deviceKeys.upload(requester.userId, requester.deviceId, body);
    return { one_time_key_counts: counts };
  },
});

export const queryKeys = route({
  method: "POST",
  path: "/_matrix/client/v3/keys/query",
  auth: "user",
  allowGuests: true,
  body: z.object({
    device_keys: z.record(z.string(), z.array(z.string())),
    timeout: z.number().optional(),
  }),
  handler: ({ requester, body }, services) => services.e2ee.queryKeys(requester.userId, body.device_keys),
});

export const claimKeys = route({
  method: "POST",
  path: "/_matrix/client/v3/keys/claim",
  auth: "user",
  allowGuests: true,
  body: z.object({
    one_time_keys: z.record(z.string(), z.record(z.string(), z.string())),
    timeout: z.number().optional(),
  }),
  handler: ({ body }, services) => services.e2ee.claimKeys(body.one_time_keys),
});

export const keyChanges = route({
  method: "GET",
  path: "/_matrix/client/v3/keys/changes",
  auth: "user",
  allowGuests: true,
  query: z.object({ from: z.string(), to: z.string() }),
  handler: ({ requester, query }, services) =>
    services.deviceListChanges.keyChanges(requester.userId, deviceListPoint(query.from, "from"), deviceListPoint(query.to, "to")),
});

/**
 * The positions a `/keys/changes` token gives: a sync token (`s<events>_<account_data>_...`,
 * positions in the order of STREAMS, server/sync/streams.ts) gives the device-list and room-event
 * positions; a bare number is a device-list position alone (membership changes are then left out).
 */
function deviceListPoint(token: string, name: string): DeviceListPoint {
  if (/^[0-9]{1,16}$/.test(token)) return { device_lists: Number(token) };
  if (/^s\d{1,16}(_\d{1,16})*$/.test(token)) {
    const parts = token.slice(1).split("_").map(Number);
    const point = { device_lists: parts[STREAMS.indexOf("device_lists")] ?? 0, events: parts[STREAMS.indexOf("events")] ?? 0 };
    if (Number.isSafeInteger(point.device_lists) && Number.isSafeInteger(point.events)) return point;
  }
  throw invalidParam(`${name} is not a valid token`);
}

// MSC3814 dehydrated devices are not supported. matrix-js-sdk's Rust crypto probes this endpoint and
// reads 404 M_UNRECOGNIZED as "unsupported" (M_NOT_FOUND would mean "supported, none stored").
export const dehydratedDevice = route({
  method: "GET",
  path: "/_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device",
  auth: "user",
  handler() {
    throw unrecognized(404, "Dehydrated devices are not supported");
  },
});

export const e2eeKeyRoutes = [uploadKeys, queryKeys, claimKeys, keyChanges, dehydratedDevice];

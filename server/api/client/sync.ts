// https://spec.matrix.org/latest/client-server-api/#get_matrixclientv3sync (sync.yaml)
import { z } from "zod";
import { route } from "../../http/route.ts";
import { PRESENCE_STATES } from "../../ephemeral/presence.ts";

const bool = z.enum(["true", "false"]).transform((v) => v === "true");

export const sync = route({
  method: "GET",
  path: "/_matrix/client/v3/sync",
  auth: "user",
  allowGuests: true,
  // Only an incremental sync with a timeout waits ("full_state ... will return immediately").
  longPoll: (q) => q.since !== undefined && q.since !== "" && q.full_state !== "true" && /^\d+$/.test(q.timeout ?? "") && Number(q.timeout) > 0,
  query: z.looseObject({
    filter: z.string().optional(),
    since: z.string().optional(),
    full_state: bool.optional(),
    set_presence: z.enum(PRESENCE_STATES).optional(),
    timeout: z.string().regex(/^\d{1,10}$/, "must be a non-negative integer").transform(Number).optional(),
  }),
  handler({ requester, query, c }, services) {
    return services.sync.sync({
      requester,
      since: query.since,
      filter: query.filter,
      timeoutMs: query.timeout ?? 0,
      fullState: query.full_state ?? false,
      setPresence: query.set_presence,
      signal: c.req.raw.signal,
    });
  },
});

export const syncRoutes = [sync];

// https://spec.matrix.org/latest/client-server-api/#get_matrixclientv3initialsync (old_sync.yaml, deprecated)
// https://spec.matrix.org/latest/client-server-api/#get_matrixclientv3roomsroomidinitialsync (room_initial_sync.yaml)
// Still served: clients peek into world_readable rooms with the room one (Room Previews), and
// long-standing clients and test suites (sytest) snapshot with the global one.
import { z } from "zod";
import { route } from "../../http/route.ts";
import type { AnyRoute } from "../../http/route.ts";

const limitParam = z.string().regex(/^\d{1,9}$/, "must be a non-negative integer").transform(Number);

export const initialSync = route({
  method: "GET",
  path: "/_matrix/client/v3/initialSync",
  auth: "user",
  // As Synapse: guests have the room snapshot (guest_access.md lists it), not this one.
  query: z.looseObject({
    limit: limitParam.optional(),
    archived: z.enum(["true", "false"]).transform((v) => v === "true").optional(),
  }),
  handler({ requester, query }, services) {
    return services.initialSync.snapshotAll(requester, { limit: query.limit, archived: query.archived ?? false });
  },
});

export const roomInitialSync = route({
  method: "GET",
  path: "/_matrix/client/v3/rooms/:roomId/initialSync",
  auth: "user",
  allowGuests: true,
  // Not in the spec for this endpoint, but the global one has it and Synapse takes it here too.
  query: z.looseObject({ limit: limitParam.optional() }),
  handler({ requester, params, query }, services) {
    return services.initialSync.snapshotRoom(requester, params.roomId!, { limit: query.limit });
  },
});

export const initialSyncRoutes: AnyRoute[] = [initialSync, roomInitialSync];

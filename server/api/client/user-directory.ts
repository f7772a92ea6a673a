// https://spec.matrix.org/latest/client-server-api/#user-directory
// Guests get 403 M_GUEST_ACCESS_FORBIDDEN: the endpoint is not among those the spec lets guests
// use (#guest-access), and Synapse refuses them too.
import { z } from "zod";
import { route } from "../../http/route.ts";

export const searchUserDirectory = route({
  method: "POST",
  path: "/_matrix/client/v3/user_directory/search",
  auth: "user",
  body: z.object({
    search_term: z.string(),
    // The spec's default; a limit above the directory's ceiling is read as the ceiling.
    limit: z.number().int().min(0).optional(),
  }),
  async handler({ requester, body }, services) {
    return services.userDirectory.search(requester.userId, body.search_term, body.limit ?? 10);
  },
});

export const userDirectoryRoutes = [searchUserDirectory];

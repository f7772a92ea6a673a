// Endpoints under /user/{userId}/... act on the requester's own data only.
import { forbidden } from "../../http/errors.ts";
import type { Requester } from "../../http/route.ts";

export function requireOwnUser(requester: Requester, userId: string, what: string): void {
  if (requester.userId !== userId) throw forbidden(`Cannot ${what} for other users`);
}

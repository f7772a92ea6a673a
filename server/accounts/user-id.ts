// User identifiers: https://spec.matrix.org/latest/appendices/#user-identifiers
// New local users get localparts of `[a-z0-9._=/+-]` only and IDs of at most 255 bytes. Historical
// user IDs (wider grammar) may arrive over federation; parseUserId accepts them.
import { MatrixError } from "../http/errors.ts";

export const MAX_USER_ID_BYTES = 255;
const LOCALPART = /^[a-z0-9._=/+-]+$/;

export interface ParsedUserId {
  localpart: string;
  serverName: string;
}

/** `@localpart:server` → its parts, or undefined when it is not a user ID at all. */
export function parseUserId(userId: string): ParsedUserId | undefined {
  if (!userId.startsWith("@")) return undefined;
  const colon = userId.indexOf(":");
  if (colon < 2 || colon === userId.length - 1) return undefined;
  return { localpart: userId.slice(1, colon), serverName: userId.slice(colon + 1) };
}

export function userIdOf(localpart: string, serverName: string): string {
  return `@${localpart}:${serverName}`;
}

/** The checks on a localpart chosen for a new account; throws 400 M_INVALID_USERNAME. */
export function checkNewLocalpart(localpart: string, serverName: string): void {
  if (localpart === "") throw invalidUsername("The username is empty");
  if (!LOCALPART.test(localpart)) {
    throw invalidUsername("A username may only contain the characters a-z, 0-9, and . _ = - / +");
  }
  if (Buffer.byteLength(userIdOf(localpart, serverName)) > MAX_USER_ID_BYTES) {
    throw invalidUsername(`The user ID would be longer than ${MAX_USER_ID_BYTES} bytes`);
  }
}

const invalidUsername = (message: string) => new MatrixError(400, "M_INVALID_USERNAME", message);

/** Whether `userId` belongs to this server. */
export function isLocalUser(userId: string, serverName: string): boolean {
  return parseUserId(userId)?.serverName === serverName;
}

/**
 * A map keyed by user ID (`/keys/query`, `/keys/claim`, `/sendToDevice`) split into this server's
 * users (in order) and, per other server, that server's users. Keys that are not user IDs are
 * listed apart. The per-server maps have no prototype: their keys are chosen by clients.
 */
export function groupUsersByServer<T>(
  byUser: Record<string, T>,
  serverName: string,
): { local: string[]; remote: Map<string, Record<string, T>>; notUserIds: string[] } {
  const local: string[] = [];
  const remote = new Map<string, Record<string, T>>();
  const notUserIds: string[] = [];
  for (const [userId, value] of Object.entries(byUser)) {
    const server = parseUserId(userId)?.serverName;
    if (server === undefined) notUserIds.push(userId);
    else if (server === serverName) local.push(userId);
    else {
      let part = remote.get(server);
      if (!part) remote.set(server, (part = Object.create(null) as Record<string, T>));
      part[userId] = value;
    }
  }
  return { local, remote, notUserIds };
}

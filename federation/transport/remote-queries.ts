// Queries we make of other servers on behalf of our clients: a remote user's profile, a remote
// room alias, an OpenID token of a remote user.
// https://spec.matrix.org/latest/server-server-api/#querying-for-information
// https://spec.matrix.org/latest/server-server-api/#openid
//
// Errors follow Synapse (handlers/profile.py, handlers/directory.py), as clients know them: the
// server's own 404 passes through as 404 M_NOT_FOUND; a server that cannot be reached answers 502
// (504 when it timed out); any other answer is 502, since the Client-Server API has no place for it.

import { z } from "zod";
import { MatrixError, notFound } from "../../server/http/errors.ts";
import { isValidServerName, serverNameOf } from "../protocol/identifiers.ts";
import { FederationRequestError, type FederationHttpClient, type FederationResponse } from "./http-client.ts";

/** A client waits for a remote query at most this long. */
const QUERY_TIMEOUT_MS = 10_000;
/** Remote profiles are remembered this long (clients ask for the same members again and again). */
const PROFILE_CACHE_MS = 30_000;
const PROFILE_CACHE_LIMIT = 10_000;

export interface RemoteProfile {
  displayname?: string;
  avatar_url?: string;
}

const profileAnswer = z.looseObject({
  displayname: z.unknown().optional(),
  avatar_url: z.unknown().optional(),
});
const directoryAnswer = z.object({ room_id: z.string().max(255), servers: z.array(z.string()).max(1000) });
const userinfoAnswer = z.object({ sub: z.string() });

export class RemoteQueries {
  private readonly profiles = new Map<string, { profile: RemoteProfile; until: number }>();
  private readonly inflight = new Map<string, Promise<RemoteProfile>>();

  constructor(
    private readonly http: FederationHttpClient,
    private readonly now: () => number,
  ) {}

  /** `GET /query/profile` of the user's server; 404 M_NOT_FOUND when it knows no such user. */
  async profile(userId: string): Promise<RemoteProfile> {
    const cached = this.profiles.get(userId);
    if (cached && cached.until > this.now()) return cached.profile;
    let running = this.inflight.get(userId);
    if (!running) {
      running = this.fetchProfile(userId).finally(() => this.inflight.delete(userId));
      this.inflight.set(userId, running);
    }
    return running;
  }

  private async fetchProfile(userId: string): Promise<RemoteProfile> {
    const server = serverNameOf(userId);
    if (!server) throw new MatrixError(400, "M_INVALID_PARAM", "Not a valid user ID");
    const res = await this.query(server, `/_matrix/federation/v1/query/profile?user_id=${encodeURIComponent(userId)}`, "profile");
    const parsed = profileAnswer.safeParse(res.body);
    if (!parsed.success) throw new MatrixError(502, "M_UNKNOWN", "Failed to fetch profile: the server's answer is malformed");
    // Only the fields clients know, and only when they are strings: the rest is the peer's business.
    const profile: RemoteProfile = {};
    if (typeof parsed.data.displayname === "string") profile.displayname = parsed.data.displayname;
    if (typeof parsed.data.avatar_url === "string") profile.avatar_url = parsed.data.avatar_url;
    if (this.profiles.size >= PROFILE_CACHE_LIMIT) {
      const oldest = this.profiles.keys().next().value;
      if (oldest !== undefined) this.profiles.delete(oldest);
    }
    this.profiles.set(userId, { profile, until: this.now() + PROFILE_CACHE_MS });
    return profile;
  }

  /** `GET /query/directory` of the alias's server: the room ID and servers likely in the room. */
  async roomAlias(alias: string): Promise<{ room_id: string; servers: string[] }> {
    const server = alias.slice(alias.indexOf(":") + 1);
    const res = await this.query(server, `/_matrix/federation/v1/query/directory?room_alias=${encodeURIComponent(alias)}`, "alias");
    const parsed = directoryAnswer.safeParse(res.body);
    if (!parsed.success) throw new MatrixError(502, "M_UNKNOWN", "Failed to fetch alias: the server's answer is malformed");
    const servers = [...new Set(parsed.data.servers.filter(isValidServerName))];
    return { room_id: parsed.data.room_id, servers };
  }

  /**
   * Exchanges an OpenID token issued by `server` for the user it belongs to, which must be one of
   * that server's users (the spec: "the caller MUST validate"). Undefined when the token is unknown.
   */
  async openIdUser(server: string, accessToken: string): Promise<string | undefined> {
    let res: FederationResponse;
    try {
      res = await this.query(server, `/_matrix/federation/v1/openid/userinfo?access_token=${encodeURIComponent(accessToken)}`, "user info", false, [401, 404]);
    } catch (err) {
      if (err instanceof MatrixError && err.status === 404) return undefined;
      throw err;
    }
    const parsed = userinfoAnswer.safeParse(res.body);
    if (!parsed.success || serverNameOf(parsed.data.sub) !== server) return undefined;
    return parsed.data.sub;
  }

  /** GETs `path` of `server`; `missing` statuses become 404 M_NOT_FOUND, other failures 502/504. */
  private async query(server: string, path: string, what: string, signed = true, missing = [404]): Promise<FederationResponse> {
    let res: FederationResponse;
    try {
      res = await this.http.request(server, { method: "GET", path, signed, signal: AbortSignal.timeout(QUERY_TIMEOUT_MS) });
    } catch (err) {
      if (!(err instanceof FederationRequestError)) throw err;
      if (err.failure === "timeout") throw new MatrixError(504, "M_UNKNOWN", `Timed out fetching ${what} from ${server}`);
      throw new MatrixError(502, "M_UNKNOWN", `Failed to fetch ${what}: ${err.message}`);
    }
    if (res.status === 200) return res;
    if (missing.includes(res.status)) {
      const remote = res.body as { error?: unknown } | undefined;
      throw notFound(typeof remote?.error === "string" ? remote.error.slice(0, 200) : `No such ${what}`);
    }
    throw new MatrixError(502, "M_UNKNOWN", `Failed to fetch ${what}: ${server} answered ${res.status}`);
  }
}

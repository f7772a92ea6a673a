// Queries we make of other servers on behalf of our clients: a remote user's profile, a remote
// room alias, an OpenID token of a remote user, a remote server's published room directory.
// https://spec.matrix.org/latest/server-server-api/#querying-for-information
// https://spec.matrix.org/latest/server-server-api/#openid
// https://spec.matrix.org/latest/server-server-api/#public-room-directory
//
// Errors follow Synapse (handlers/profile.py, handlers/directory.py, handlers/room_list.py), as
// clients know them: the server's own 404 for a user or alias passes through as 404 M_NOT_FOUND; a
// server that cannot be reached answers 502 (504 when it timed out); any other answer is 502, since
// the Client-Server API has no place for it.

import { z } from "zod";
import { MatrixError, notFound } from "../../server/http/errors.ts";
import { isValidServerName, serverNameOf } from "../protocol/identifiers.ts";
import type { PublicRoomsQuery } from "../../server/rooms/directory.ts";
import { FederationRequestError, type FederationHttpClient, type FederationRequest, type FederationResponse } from "./http-client.ts";

/** A client waits for a remote query at most this long. */
const QUERY_TIMEOUT_MS = 10_000;
/** Remote profiles are remembered this long (clients ask for the same members again and again). */
const PROFILE_CACHE_MS = 30_000;
const PROFILE_CACHE_LIMIT = 10_000;
/**
 * Other servers' directory pages are remembered this long (as Synapse does): clients ask again as
 * their user types a search or comes back to the list, and a popular server is asked by many.
 */
const DIRECTORY_CACHE_MS = 30_000;
const DIRECTORY_CACHE_LIMIT = 1_000;

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
// https://spec.matrix.org/latest/client-server-api/#get_matrixclientv3publicrooms (PublishedRoomsChunk)
const publicRoomsAnswer = z.object({
  chunk: z.array(z.unknown()),
  next_batch: z.string().max(1000).optional(),
  prev_batch: z.string().max(1000).optional(),
  total_room_count_estimate: z.int().min(0).optional(),
});
const publishedRoom = z.object({
  room_id: z.string().max(255),
  num_joined_members: z.int().min(0),
  world_readable: z.boolean(),
  guest_can_join: z.boolean(),
});
const PUBLISHED_ROOM_STRINGS = ["name", "topic", "canonical_alias", "avatar_url", "join_rule", "room_type"] as const;

export class RemoteQueries {
  private readonly profiles = new Map<string, { profile: RemoteProfile; until: number }>();
  private readonly inflight = new Map<string, Promise<RemoteProfile>>();
  /** Directory answers (and requests in flight) by server and request; failures are not kept. */
  private readonly directories = new Map<string, { answer: Promise<Record<string, unknown>>; until: number }>();

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

  /**
   * `GET /publicRooms` of `server`, or `POST` when the query filters (the spec's filtered form, which
   * Synapse asks for the same way). The answer is passed on as the server gave it once its shape is
   * checked: a room without the fields the spec requires is left out, and of the optional ones only
   * strings are kept. Any failure is 502 M_UNKNOWN (504 on a timeout), as Synapse answers.
   * The same request of the same server within DIRECTORY_CACHE_MS is answered from memory.
   */
  publicRooms(server: string, query: Omit<PublicRoomsQuery, "server">): Promise<Record<string, unknown>> {
    const request = publicRoomsRequest(query);
    const key = JSON.stringify([server, request.method, request.path, request.body ?? null]);
    const cached = this.directories.get(key);
    if (cached && cached.until > this.now()) return cached.answer;
    this.directories.delete(key);
    if (this.directories.size >= DIRECTORY_CACHE_LIMIT) {
      const oldest = this.directories.keys().next().value;
      if (oldest !== undefined) this.directories.delete(oldest);
    }
    const answer = this.fetchPublicRooms(server, request);
    const entry = { answer, until: this.now() + DIRECTORY_CACHE_MS };
    this.directories.set(key, entry);
    answer.catch(() => {
      if (this.directories.get(key) === entry) this.directories.delete(key);
    });
    return answer;
  }

  private async fetchPublicRooms(server: string, request: FederationRequest): Promise<Record<string, unknown>> {
    const res = await this.ask(server, request, "room directory", []);
    const parsed = publicRoomsAnswer.safeParse(res.body);
    if (!parsed.success) throw new MatrixError(502, "M_UNKNOWN", "Failed to fetch room directory: the server's answer is malformed");
    const chunk: Record<string, unknown>[] = [];
    for (const entry of parsed.data.chunk) {
      const room = publishedRoom.safeParse(entry);
      if (!room.success) continue;
      const out: Record<string, unknown> = { ...room.data };
      for (const key of PUBLISHED_ROOM_STRINGS) {
        const value = (entry as Record<string, unknown>)[key];
        if (typeof value === "string") out[key] = value;
      }
      chunk.push(out);
    }
    const { next_batch: next, prev_batch: prev, total_room_count_estimate: total } = parsed.data;
    return {
      chunk,
      ...(next === undefined ? {} : { next_batch: next }),
      ...(prev === undefined ? {} : { prev_batch: prev }),
      ...(total === undefined ? {} : { total_room_count_estimate: total }),
    };
  }

  /** GETs `path` of `server`; `missing` statuses become 404 M_NOT_FOUND, other failures 502/504. */
  private query(server: string, path: string, what: string, signed = true, missing = [404]): Promise<FederationResponse> {
    return this.ask(server, { method: "GET", path, signed }, what, missing);
  }

  private async ask(server: string, request: FederationRequest, what: string, missing: number[]): Promise<FederationResponse> {
    let res: FederationResponse;
    try {
      res = await this.http.request(server, { ...request, signal: AbortSignal.timeout(QUERY_TIMEOUT_MS) });
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

/** `GET /publicRooms`, or `POST` with the filter when the query filters. */
function publicRoomsRequest(query: Omit<PublicRoomsQuery, "server">): FederationRequest {
  if (query.searchTerm !== undefined || query.roomTypes !== undefined) {
    const body: Record<string, unknown> = {};
    if (query.limit !== undefined) body.limit = query.limit;
    if (query.since !== undefined) body.since = query.since;
    const filter: Record<string, unknown> = {};
    if (query.searchTerm !== undefined) filter.generic_search_term = query.searchTerm;
    if (query.roomTypes !== undefined) filter.room_types = query.roomTypes;
    body.filter = filter;
    if (query.includeAllNetworks === true) body.include_all_networks = true;
    else if (query.thirdPartyInstanceId !== undefined) body.third_party_instance_id = query.thirdPartyInstanceId;
    return { method: "POST", path: "/_matrix/federation/v1/publicRooms", body };
  }
  const params = new URLSearchParams();
  if (query.limit !== undefined) params.set("limit", String(query.limit));
  if (query.since !== undefined) params.set("since", query.since);
  if (query.includeAllNetworks === true) params.set("include_all_networks", "true");
  else if (query.thirdPartyInstanceId !== undefined) params.set("third_party_instance_id", query.thirdPartyInstanceId);
  const search = params.toString();
  return { method: "GET", path: `/_matrix/federation/v1/publicRooms${search ? `?${search}` : ""}` };
}

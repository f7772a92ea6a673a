// Room aliases and the published room directory.
// https://spec.matrix.org/latest/client-server-api/#room-aliases
// https://spec.matrix.org/latest/client-server-api/#published-room-directory
//
// Aliases on other servers, and other servers' published room directories (`?server=`), are asked
// of their server over federation, through the lookups the homeserver wiring gives
// (`resolveRemoteAliasesWith`, `readRemoteDirectoriesWith`: this service never imports federation).
import { and, eq, sql } from "drizzle-orm";
import { type Database, rowsOf, schema } from "../../schema/db.ts";
import type { Accounts } from "../accounts/accounts.ts";
import { MatrixError, forbidden, notFound } from "../http/errors.ts";
import type { Requester } from "../http/route.ts";
import { isValidServerName } from "../../federation/protocol/identifiers.ts";
import { type RoomAliases, parseAlias } from "./aliases.ts";
import type { Rooms } from "./rooms.ts";

type JsonObject = Record<string, unknown>;

const MAX_PUBLIC_ROOMS_LIMIT = 500;

export interface PublicRoomsQuery {
  limit?: number;
  since?: string;
  server?: string;
  searchTerm?: string;
  /** Room types to include; null stands for rooms without a type. */
  roomTypes?: Array<string | null>;
  /** Rooms of every network (third-party ones from application services too), not the main list alone. */
  includeAllNetworks?: boolean;
  /** The rooms of one third-party network (an application service's protocol instance). */
  thirdPartyInstanceId?: string;
}

/** Reads another server's published room directory (federation's `/publicRooms`). */
export type RemoteDirectoryReader = (server: string, query: Omit<PublicRoomsQuery, "server">) => Promise<JsonObject>;

export class Directory {
  constructor(
    private readonly db: Database,
    private readonly rooms: Rooms,
    private readonly aliases: RoomAliases,
    private readonly accounts: Accounts,
    private readonly serverName: string,
  ) {}

  private remoteAliases?: (alias: string) => Promise<{ room_id: string; servers: string[] }>;

  private remoteDirectories?: RemoteDirectoryReader;

  /** How other servers' published room directories are read (federation's `/publicRooms`). */
  readRemoteDirectoriesWith(reader: RemoteDirectoryReader): void {
    this.remoteDirectories = reader;
  }

  private appServiceAliases?: (alias: string) => Promise<boolean>;

  /**
   * How application services are asked about an unknown alias of their namespaces
   * (`GET /_matrix/app/v1/rooms/{alias}`): true when one created it.
   */
  askAppServicesAboutAliasesWith(ask: (alias: string) => Promise<boolean>): void {
    this.appServiceAliases = ask;
  }

  /** How aliases of other servers are resolved (federation's `/query/directory`). */
  resolveRemoteAliasesWith(lookup: (alias: string) => Promise<{ room_id: string; servers: string[] }>): void {
    this.remoteAliases = lookup;
  }

  // ---- Aliases ---------------------------------------------------------------------------------------

  async resolveAlias(alias: string): Promise<{ room_id: string; servers: string[] }> {
    const server = parseAlias(alias)?.server;
    if (server !== undefined && server !== this.serverName && this.remoteAliases) return this.remoteAliases(alias);
    return this.resolveLocalAlias(alias);
  }

  /** An alias of ours; 404 M_NOT_FOUND for any other (what `/federation/v1/query/directory` answers). */
  async resolveLocalAlias(alias: string): Promise<{ room_id: string; servers: string[] }> {
    // Rooms are on this server alone until rooms federate; then: the servers of the joined members.
    let row = await this.aliases.resolve(alias);
    // https://spec.matrix.org/latest/application-service-api/#query-room-alias: a service may
    // create an alias of its namespace when asked about it; then it is looked up again.
    if (!row && this.appServiceAliases && (await this.appServiceAliases(alias))) row = await this.aliases.resolve(alias);
    if (!row) throw notFound(`Room alias ${alias.slice(0, 100)} not found`);
    return { room_id: row.roomId, servers: [this.serverName] };
  }

  /**
   * `byAppService`: an application service creating an alias of its namespace (checked by the
   * caller), which needs no membership of the room (it has "full control over its namespace").
   */
  async createAlias(requester: Requester, alias: string, roomId: string, options: { byAppService?: boolean } = {}): Promise<void> {
    this.aliases.checkLocal(alias);
    if ((await this.rooms.roomVersion(roomId)) === undefined) throw notFound("Room not found");
    const membership = await this.rooms.membership(roomId, requester.userId);
    if (!options.byAppService && membership?.membership !== "join" && !(await this.isAdmin(requester.userId))) {
      throw forbidden("You must be in the room to give it an alias");
    }
    if (!(await this.aliases.create(alias, roomId, requester.userId))) {
      throw new MatrixError(409, "M_UNKNOWN", "Room alias already exists");
    }
  }

  /**
   * The alias's creator, a server admin, anyone who may set the room's canonical alias, or the
   * application service whose namespace holds it (`byAppService`, checked by the caller) may delete it.
   */
  async deleteAlias(requester: Requester, alias: string, options: { byAppService?: boolean } = {}): Promise<void> {
    this.aliases.checkLocal(alias);
    const row = await this.aliases.resolve(alias);
    if (!row) throw notFound("Room alias not found");
    if (!options.byAppService && row.creator !== requester.userId && !(await this.isAdmin(requester.userId)) && !(await this.canSetCanonicalAlias(row.roomId, requester.userId))) {
      throw forbidden("You may not delete this alias");
    }
    await this.aliases.delete(alias);
    // "Servers may choose to update the alt_aliases for the m.room.canonical_alias state event in
    // the room when an alias is removed": an alias that no longer exists should not be the room's
    // name for itself. Done as the deleting user when they may; the deletion stands either way.
    const canonical = await this.rooms.currentStateContent(row.roomId, "m.room.canonical_alias");
    const alt = Array.isArray(canonical?.alt_aliases) ? (canonical.alt_aliases as unknown[]) : undefined;
    if (canonical && (canonical.alias === alias || alt?.includes(alias))) {
      const content: Record<string, unknown> = { ...canonical };
      if (content.alias === alias) delete content.alias;
      if (alt) content.alt_aliases = alt.filter((a) => a !== alias);
      await this.rooms.setState(requester, row.roomId, "m.room.canonical_alias", "", content).catch(() => undefined);
    }
  }

  /** GET /rooms/{roomId}/aliases: for members, and anyone when the room is world_readable. */
  async roomAliases(requester: Requester, roomId: string): Promise<string[]> {
    const membership = await this.rooms.membership(roomId, requester.userId);
    if (membership?.membership !== "join") {
      const hv = await this.rooms.currentStateContent(roomId, "m.room.history_visibility");
      if (hv?.history_visibility !== "world_readable") throw forbidden("You aren't a member of the room");
    }
    return this.aliases.forRoom(roomId);
  }

  // ---- Published room directory ------------------------------------------------------------------------

  async getVisibility(roomId: string): Promise<"public" | "private"> {
    const t = schema.rooms;
    const [row] = await this.db.select({ isPublic: t.isPublic }).from(t).where(eq(t.roomId, roomId));
    if (!row) throw notFound("Room not found");
    return row.isPublic ? "public" : "private";
  }

  /** Joined members who may set the canonical alias (or server admins) publish or hide the room. */
  async setVisibility(requester: Requester, roomId: string, visibility: "public" | "private"): Promise<void> {
    await this.getVisibility(roomId);
    if (!(await this.isAdmin(requester.userId)) && !(await this.canSetCanonicalAlias(roomId, requester.userId))) {
      throw forbidden("You need the power level to set the room's canonical alias to publish it");
    }
    const t = schema.rooms;
    await this.db.update(t).set({ isPublic: visibility === "public" }).where(eq(t.roomId, roomId));
  }

  /**
   * Publishes a room in (or takes it out of) an application service's directory for one of its
   * third-party networks. Who may is the caller's check (the service itself).
   * https://spec.matrix.org/latest/application-service-api/#put_matrixclientv3directorylistappservicenetworkidroomid
   */
  async setAppServiceVisibility(appserviceId: string, networkId: string, roomId: string, visibility: "public" | "private"): Promise<void> {
    if ((await this.rooms.roomVersion(roomId)) === undefined) throw notFound("Room not found");
    const t = schema.appserviceRoomLists;
    if (visibility === "public") {
      await this.db.insert(t).values({ appserviceId, networkId, roomId }).onConflictDoNothing();
    } else {
      await this.db.delete(t).where(and(eq(t.appserviceId, appserviceId), eq(t.networkId, networkId), eq(t.roomId, roomId)));
    }
  }

  /**
   * A server's published rooms: ours (`server` absent or our name), or another server's, asked of
   * it over federation and passed on as it answered (its own pagination tokens included).
   */
  async publicRooms(query: PublicRoomsQuery): Promise<JsonObject> {
    const { server, ...rest } = query;
    if (server === undefined || server === this.serverName) return this.localPublicRooms(rest);
    if (!isValidServerName(server)) throw new MatrixError(400, "M_INVALID_PARAM", "server is not a valid server name");
    if (!this.remoteDirectories) throw new MatrixError(502, "M_UNKNOWN", "Other servers' room directories cannot be read");
    return this.remoteDirectories(server, rest);
  }

  /**
   * Our published rooms, largest first (by joined members, then room ID), with the summary the
   * spec's PublishedRoomsChunk gives. `since` tokens are offsets into that order. What the
   * Client-Server and the federation `/publicRooms` answer for this server; `forOtherServers`
   * leaves out the rooms that do not federate (`m.federate: false`), as Synapse does.
   */
  async localPublicRooms(query: Omit<PublicRoomsQuery, "server">, options: { forOtherServers?: boolean } = {}): Promise<JsonObject> {
    // Which list: the main one, one application service's list for one third-party network
    // (`third_party_instance_id`, {service id}|{network id}), or all of them together.
    let listed = sql`r.is_public`;
    if (query.includeAllNetworks === true) {
      listed = sql`(r.is_public or r.room_id in (select room_id from appservice_room_lists))`;
    } else if (query.thirdPartyInstanceId !== undefined) {
      const bar = query.thirdPartyInstanceId.indexOf("|");
      if (bar < 0) return { chunk: [], total_room_count_estimate: 0 };
      const appserviceId = query.thirdPartyInstanceId.slice(0, bar);
      const networkId = query.thirdPartyInstanceId.slice(bar + 1);
      listed = sql`r.room_id in (select room_id from appservice_room_lists where appservice_id = ${appserviceId} and network_id = ${networkId})`;
    }
    const limit = query.limit === undefined || query.limit <= 0 ? undefined : Math.min(query.limit, MAX_PUBLIC_ROOMS_LIMIT);
    let offset = 0;
    if (query.since !== undefined) {
      const m = /^o(\d{1,9})$/.exec(query.since);
      if (!m) throw new MatrixError(400, "M_INVALID_PARAM", "Invalid since token");
      offset = Number(m[1]);
    }

    const [counts, states] = await Promise.all([
      this.db.execute(sql`select r.room_id, count(c.state_key) as joined from rooms r
        left join current_state c on c.room_id = r.room_id and c.type = 'm.room.member' and c.membership = 'join'
        where ${listed} group by r.room_id`),
      this.db.execute(sql`select c.room_id, c.type, e.json from current_state c
        join rooms r on r.room_id = c.room_id join events e on e.event_id = c.event_id
        where ${listed} and c.state_key = '' and c.type in ('m.room.name', 'm.room.topic', 'm.room.canonical_alias',
          'm.room.avatar', 'm.room.join_rules', 'm.room.history_visibility', 'm.room.guest_access', 'm.room.create')`),
    ]);
    const content = new Map<string, Map<string, JsonObject>>();
    for (const r of rowsOf<{ room_id: string; type: string; json: string }>(states)) {
      let m = content.get(r.room_id);
      if (!m) content.set(r.room_id, (m = new Map()));
      m.set(r.type, (JSON.parse(r.json) as { content?: JsonObject }).content ?? {});
    }
    let published = rowsOf<{ room_id: string; joined: string | number }>(counts);
    if (options.forOtherServers) published = published.filter((r) => content.get(r.room_id)?.get("m.room.create")?.["m.federate"] !== false);
    let rooms = published.map((r) => {
      const s = content.get(r.room_id) ?? new Map<string, JsonObject>();
      const str = (type: string, key: string) => {
        const v = s.get(type)?.[key];
        return typeof v === "string" ? v : undefined;
      };
      const chunk: JsonObject = {
        room_id: r.room_id,
        num_joined_members: Number(r.joined),
        world_readable: str("m.room.history_visibility", "history_visibility") === "world_readable",
        guest_can_join: str("m.room.guest_access", "guest_access") === "can_join",
      };
      const name = str("m.room.name", "name");
      const topic = str("m.room.topic", "topic");
      const alias = str("m.room.canonical_alias", "alias");
      const avatar = str("m.room.avatar", "url");
      const joinRule = str("m.room.join_rules", "join_rule");
      const roomType = str("m.room.create", "type");
      if (name) chunk.name = name;
      if (topic) chunk.topic = topic;
      if (alias) chunk.canonical_alias = alias;
      if (avatar) chunk.avatar_url = avatar;
      if (joinRule) chunk.join_rule = joinRule;
      if (roomType) chunk.room_type = roomType;
      return chunk;
    });
    const term = query.searchTerm?.trim().toLowerCase();
    if (term) {
      rooms = rooms.filter((r) =>
        [r.name, r.topic, r.canonical_alias, r.room_id].some((v) => typeof v === "string" && v.toLowerCase().includes(term)),
      );
    }
    if (query.roomTypes) {
      const types = query.roomTypes;
      rooms = rooms.filter((r) => types.includes((r.room_type as string | undefined) ?? null));
    }
    rooms.sort((a, b) => (b.num_joined_members as number) - (a.num_joined_members as number) || String(a.room_id).localeCompare(String(b.room_id)));
    const page = limit === undefined ? rooms.slice(offset) : rooms.slice(offset, offset + limit);
    const response: JsonObject = { chunk: page, total_room_count_estimate: rooms.length };
    if (limit !== undefined && offset + limit < rooms.length) response.next_batch = `o${offset + limit}`;
    if (offset > 0) response.prev_batch = `o${Math.max(0, offset - (limit ?? offset))}`;
    return response;
  }

  private async isAdmin(userId: string): Promise<boolean> {
    return (await this.accounts.getUser(userId))?.isAdmin === true;
  }

  private async canSetCanonicalAlias(roomId: string, userId: string): Promise<boolean> {
    const membership = await this.rooms.membership(roomId, userId);
    if (membership?.membership !== "join") return false;
    const { level, content } = await this.rooms.powerLevels(roomId, userId);
    const events = (content.events ?? {}) as JsonObject;
    const stateDefault = typeof content.state_default === "number" ? content.state_default : 50;
    const required = typeof events["m.room.canonical_alias"] === "number" ? (events["m.room.canonical_alias"] as number) : stateDefault;
    return level >= required;
  }
}

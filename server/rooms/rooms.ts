// Rooms on this homeserver: creating them, membership, sending messages and state, redacting.
// https://spec.matrix.org/latest/client-server-api/#rooms
//
// Every write goes through the persister (one event path). Checks that depend on the room's current
// state and are not authorization rules (the redaction rule, "already joined", join rules not
// supported yet) run inside the room's serial section, in the job's `prepare`, so they see the same
// state the event is built on.
import { and, eq, sql } from "drizzle-orm";
import type { Logger } from "pino";
import { type Database, rowsOf, schema } from "../../schema/db.ts";
import { canonicalJson, CanonicalJsonError } from "../../federation/protocol/canonical-json.ts";
import { powerLevelValue, userPowerLevel } from "../../federation/protocol/auth-rules.ts";
import { byteLength, isValidUserId, serverNameOf } from "../../federation/protocol/identifiers.ts";
import type { RoomEvent } from "../../federation/protocol/pdu.ts";
import { DEFAULT_ROOM_VERSION, isSupportedRoomVersion, roomVersionRules } from "../../federation/protocol/room-versions.ts";
import type { Accounts, Profile } from "../accounts/accounts.ts";
import { MatrixError, forbidden, notFound } from "../http/errors.ts";
import type { Requester } from "../http/route.ts";
import { parseAlias, type RoomAliases } from "./aliases.ts";
import { type CreateRoomRequest, memberContent, planRoomCreation } from "./create-room.ts";
import { type EventPersister, type EventTemplate, type PersistedEvent, type RoomView, type TxnRef, txnKey } from "./persister.ts";

type JsonObject = Record<string, unknown>;

/** "The size of ... type, state_key, ... MUST NOT exceed 255 bytes." */
const MAX_ID_BYTES = 255;
/** Room versions kept in memory (a version is a few bytes). */
const MAX_KNOWN_VERSIONS = 100_000;

/** A local user's current membership of a room. */
export interface Membership {
  membership: string;
  eventId: string;
  streamOrdering: number;
  forgotten: boolean;
}

/**
 * What rooms across servers need from federation, plugged in where the homeserver is put together
 * (this service never imports federation).
 */
export interface RemoteRoomOps {
  /** Joins a local user to a room this server is not in, through one of `servers`. */
  join(userId: string, roomId: string, servers: readonly string[], extraContent: JsonObject): Promise<void>;
  /** Invites a user of another server (their server signs the invite first). */
  invite(inviter: string, roomId: string, target: string, extraContent: JsonObject): Promise<void>;
  /** Knocks for a local user on a room this server is not in, through one of `servers`. */
  knock(userId: string, roomId: string, servers: readonly string[], extraContent: JsonObject): Promise<void>;
  /** A local user leaves a room this server is not in (rejects an invite from another server). */
  leave(userId: string, roomId: string, servers: readonly string[], extraContent: JsonObject): Promise<void>;
  /** A room alias of another server: the room and servers in it. */
  resolveAlias(alias: string): Promise<{ room_id: string; servers: string[] }>;
}

/** What a room upgrade adds to the creation of the replacement room (server/rooms/room-upgrades.ts). */
export interface RoomCreationExtras {
  /** The room ID (versions before 12), chosen before the room exists. */
  roomId?: string;
  /** Events after those the request makes (the upgrader's power level restored). */
  after?: EventTemplate[];
  /** Runs in the creating transaction (aliases and the directory entry moved from the old room). */
  alongside?: (tx: Database, roomId: string) => Promise<void>;
}

/** Member content keys the server sets or that mean something to the auth rules: not the client's to add on a join. */
const RESERVED_MEMBER_KEYS: ReadonlySet<string> = new Set([
  "membership",
  "displayname",
  "avatar_url",
  "join_authorised_via_users_server",
  "third_party_invite",
  "third_party_signed",
  "is_direct",
  "reason",
]);

/** What the rooms ask of application services (server/appservices/queries.ts), through the wiring. */
export interface AppServiceAsk {
  userExists(userId: string): Promise<boolean>;
  aliasExists(alias: string): Promise<boolean>;
}

export class Rooms {
  /** Client transactions in flight in this process: a retry waits for the original. */
  private readonly inflightTxns = new Map<string, Promise<string>>();
  private remote: RemoteRoomOps | undefined;

  /** Plugs in federation: joins through other servers, remote invites and aliases. */
  federateWith(remote: RemoteRoomOps): void {
    this.remote = remote;
  }

  private isBlocked: (roomId: string) => Promise<boolean> = async () => false;

  /**
   * Plugs in the admins' blocklist (server/rooms/room-admin.ts): a blocked room can be neither
   * joined nor invited to, here or through another server.
   */
  refuseBlockedRooms(isBlocked: (roomId: string) => Promise<boolean>): void {
    this.isBlocked = isBlocked;
  }

  /** 403 M_FORBIDDEN when an admin blocked the room (Synapse's message). */
  async requireNotBlocked(roomId: string): Promise<void> {
    if (await this.isBlocked(roomId)) throw forbidden("This room has been blocked on this server");
  }

  private appServices: AppServiceAsk | undefined;

  /**
   * Plugs in the application services: asked about an unknown local user (invites) or alias
   * (joins) of their namespaces, which they may create before answering.
   */
  askAppServicesWith(ask: AppServiceAsk): void {
    this.appServices = ask;
  }

  constructor(
    private readonly db: Database,
    private readonly persister: EventPersister,
    private readonly accounts: Accounts,
    private readonly aliases: RoomAliases,
    private readonly serverName: string,
    private readonly logger: Logger,
    /** The version of rooms created without one. */
    readonly defaultRoomVersion: string = DEFAULT_ROOM_VERSION,
  ) {}

  // ---- Queries ---------------------------------------------------------------------------------------

  /**
   * The room's version, if the room is known. A room's version never changes, so known rooms'
   * versions are kept in memory (a purge forgets its room: `forgetRoom`).
   */
  async roomVersion(roomId: string): Promise<string | undefined> {
    const known = this.versions.get(roomId);
    if (known !== undefined) return known;
    const t = schema.rooms;
    const [row] = await this.db.select({ v: t.roomVersion }).from(t).where(eq(t.roomId, roomId));
    if (row) {
      if (this.versions.size >= MAX_KNOWN_VERSIONS) this.versions.clear();
      this.versions.set(roomId, row.v);
    }
    return row?.v;
  }

  /** The room was purged from the database. */
  forgetRoom(roomId: string): void {
    this.versions.delete(roomId);
  }

  private readonly versions = new Map<string, string>();

  async requireRoom(roomId: string): Promise<string> {
    const version = await this.roomVersion(roomId);
    if (version === undefined) throw notFound("Unknown room");
    return version;
  }

  /** A local user's membership of a room, or undefined when they never had one. */
  async membership(roomId: string, userId: string): Promise<Membership | undefined> {
    const t = schema.roomMemberships;
    const [row] = await this.db
      .select()
      .from(t)
      .where(and(eq(t.userId, userId), eq(t.roomId, roomId)));
    return row ? { membership: row.membership, eventId: row.eventId, streamOrdering: row.streamOrdering, forgotten: row.forgotten } : undefined;
  }

  /** The rooms a local user is joined to. */
  async joinedRooms(userId: string): Promise<string[]> {
    const t = schema.roomMemberships;
    const rows = await this.db
      .select({ roomId: t.roomId })
      .from(t)
      .where(and(eq(t.userId, userId), eq(t.membership, "join")));
    return rows.map((r) => r.roomId);
  }

  /**
   * Anyone's current membership of a room (local or remote user), from the room's current state;
   * undefined when the room's state has no membership for them.
   */
  async currentMembership(roomId: string, userId: string): Promise<string | undefined> {
    const t = schema.currentState;
    const [row] = await this.db
      .select({ membership: t.membership })
      .from(t)
      .where(and(eq(t.roomId, roomId), eq(t.type, "m.room.member"), eq(t.stateKey, userId)));
    return row?.membership ?? undefined;
  }

  /**
   * The rooms anyone (a remote user too) is joined to, from the rooms' current state. A scan of
   * current_state by state key (its key starts with the room): fine for now, an index when remote
   * presence gets heavy.
   */
  async roomsWithJoinedMember(userId: string): Promise<string[]> {
    const t = schema.currentState;
    const rows = await this.db
      .select({ roomId: t.roomId })
      .from(t)
      .where(and(eq(t.type, "m.room.member"), eq(t.stateKey, userId), eq(t.membership, "join")));
    return rows.map((r) => r.roomId);
  }

  /** The servers of the room's joined members, from its current state (ours included when we are in it). */
  async joinedServers(roomId: string): Promise<string[]> {
    // The persister keeps it for rooms whose state it has cached (typing and receipts ask often).
    const cached = this.persister.cachedJoinedServers(roomId);
    if (cached) return cached;
    const t = schema.currentState;
    const rows = await this.db
      .select({ userId: t.stateKey })
      .from(t)
      .where(and(eq(t.roomId, roomId), eq(t.type, "m.room.member"), eq(t.membership, "join")));
    const servers = new Set<string>();
    for (const { userId } of rows) {
      const server = serverNameOf(userId);
      if (server !== undefined) servers.add(server);
    }
    return [...servers];
  }

  /** The room's forward extremities (the latest events of its graph), from its row. */
  async forwardExtremities(roomId: string): Promise<string[]> {
    const t = schema.rooms;
    const [row] = await this.db.select({ x: t.forwardExtremities }).from(t).where(eq(t.roomId, roomId));
    return row?.x ?? [];
  }

  /**
   * Where the room's timeline here begins, when it does not begin with its create event (a room
   * joined over federation): the events it lacks that the earliest events it has name as
   * prev_events, with the state group before the event naming each. Empty when the timeline holds
   * the room's beginning.
   */
  async backwardExtremities(roomId: string, limit = 5): Promise<Array<{ eventId: string; stateBeforeGroup: number | null }>> {
    const [first] = rowsOf<{ type: string; outlier: boolean }>(
      await this.db.execute(sql`select type, outlier from events where room_id = ${roomId} and stream_ordering is not null and not outlier
        order by topological_ordering, stream_ordering limit 1`),
    );
    if (!first || first.type === "m.room.create") return [];
    const rows = rowsOf<{ prev_event_id: string; state_before_group: string | number | null }>(
      await this.db.execute(sql`select ee.prev_event_id, min(c.state_before_group) as state_before_group
        from (select event_id, state_before_group, depth from events where room_id = ${roomId} and stream_ordering is not null and not outlier
              order by topological_ordering, stream_ordering limit 50) c
        join event_edges ee on ee.event_id = c.event_id
        left join events p on p.event_id = ee.prev_event_id
        where p.event_id is null or (p.outlier and p.type <> 'm.room.create')
        group by ee.prev_event_id order by min(c.depth) limit ${limit}`),
    );
    return rows.map((r) => ({ eventId: r.prev_event_id, stateBeforeGroup: r.state_before_group === null ? null : Number(r.state_before_group) }));
  }

  /**
   * For a join without an invite into a room whose join rule is `restricted` or `knock_restricted`
   * (https://spec.matrix.org/latest/client-server-api/#restricted-rooms): when `userId` is joined to
   * one of the rooms the rule allows (as far as this server knows), one of our joined users with the
   * power to invite, who authorises the join (`join_authorised_via_users_server`). Undefined when
   * the rule is another, or the user may not join this way, or none of our users can authorise it.
   */
  async restrictedJoinAuthoriser(roomId: string, userId: string): Promise<string | undefined> {
    const rule = await this.currentStateContent(roomId, "m.room.join_rules");
    if (rule?.join_rule !== "restricted" && rule?.join_rule !== "knock_restricted") return undefined;
    const allow = Array.isArray(rule.allow) ? rule.allow : [];
    let allowed = false;
    for (const entry of allow.slice(0, 50)) {
      if (typeof entry !== "object" || entry === null) continue;
      const { type, room_id: allowedRoom } = entry as JsonObject;
      if (type !== "m.room_membership" || typeof allowedRoom !== "string") continue;
      if ((await this.currentMembership(allowedRoom, userId)) === "join") {
        allowed = true;
        break;
      }
    }
    if (!allowed) return undefined;
    const members = rowsOf<{ state_key: string }>(
      await this.db.execute(sql`select state_key from current_state where room_id = ${roomId} and type = 'm.room.member' and membership = 'join'
        and state_key like ${`%:${this.serverName}`}`),
    );
    let best: { userId: string; level: number } | undefined;
    for (const { state_key: member } of members) {
      if (serverNameOf(member) !== this.serverName) continue;
      const { level, content } = await this.powerLevels(roomId, member);
      const inviteLevel = typeof content.invite === "number" ? content.invite : 0;
      if (level >= inviteLevel && (!best || level > best.level)) best = { userId: member, level };
    }
    return best?.userId;
  }

  /** Whether one of our users is joined to the room (this server is in it). */
  async isInRoom(roomId: string): Promise<boolean> {
    return (await this.joinedServers(roomId)).includes(this.serverName);
  }

  /** The current state event ID for a key, if any. */
  async currentStateEventId(roomId: string, type: string, stateKey: string): Promise<string | undefined> {
    const t = schema.currentState;
    const [row] = await this.db
      .select({ eventId: t.eventId })
      .from(t)
      .where(and(eq(t.roomId, roomId), eq(t.type, type), eq(t.stateKey, stateKey)));
    return row?.eventId;
  }

  /** The current content of a state event, if any. */
  async currentStateContent(roomId: string, type: string, stateKey = ""): Promise<JsonObject | undefined> {
    const rows = rowsOf<{ json: string }>(
      await this.db.execute(sql`select e.json from current_state c join events e on e.event_id = c.event_id
        where c.room_id = ${roomId} and c.type = ${type} and c.state_key = ${stateKey}`),
    );
    return rows[0] ? ((JSON.parse(rows[0].json) as { content: JsonObject }).content ?? {}) : undefined;
  }

  /** A user's power level in a room now, and the room's power levels content. */
  async powerLevels(roomId: string, userId: string): Promise<{ level: number; content: JsonObject }> {
    const version = await this.requireRoom(roomId);
    const rows = rowsOf<{ event_id: string; json: string; type: string }>(
      await this.db.execute(sql`select e.event_id, e.json, c.type from current_state c join events e on e.event_id = c.event_id
        where c.room_id = ${roomId} and c.state_key = '' and c.type in ('m.room.create', 'm.room.power_levels')`),
    );
    let create: RoomEvent | undefined;
    let pl: RoomEvent | undefined;
    for (const r of rows) {
      const event = { ...(JSON.parse(r.json) as RoomEvent), event_id: r.event_id };
      if (r.type === "m.room.create") create = event;
      else pl = event;
    }
    return { level: userPowerLevel(version, userId, create, pl), content: pl?.content ?? {} };
  }

  // ---- Creating rooms --------------------------------------------------------------------------------

  /**
   * POST /createRoom; a room upgrade creates the replacement room here too, with `extras` (see
   * RoomCreationExtras).
   */
  async createRoom(requester: Requester, request: CreateRoomRequest, extras: RoomCreationExtras = {}): Promise<string> {
    const version = request.room_version ?? this.defaultRoomVersion;
    if (!isSupportedRoomVersion(version)) {
      throw new MatrixError(400, "M_UNSUPPORTED_ROOM_VERSION", `Room version ${JSON.stringify(version).slice(0, 40)} is not supported`);
    }
    const rules = roomVersionRules(version);
    const creator = requester.userId;

    let alias: string | undefined;
    if (request.room_alias_name !== undefined) {
      alias = `#${request.room_alias_name}:${this.serverName}`;
      if (!parseAlias(alias)) throw new MatrixError(400, "M_INVALID_PARAM", "Invalid room_alias_name");
      if (await this.aliases.resolve(alias)) throw new MatrixError(400, "M_ROOM_IN_USE", "Room alias already taken");
    }
    const invitees = new Map<string, Profile | undefined>();
    const remoteInvitees: string[] = [];
    for (const userId of new Set(request.invite ?? [])) {
      if (userId === creator) continue;
      if (isValidUserId(userId) && serverNameOf(userId) !== this.serverName && this.remote) remoteInvitees.push(userId);
      else invitees.set(userId, await this.inviteeProfile(userId));
    }
    for (const e of request.initial_state ?? []) this.checkEventFields(e.type, e.state_key ?? "");

    const plan = planRoomCreation(rules, creator, request, { creator: await this.accounts.getProfile(creator), invitees }, alias);
    try {
      const { roomId } = await this.persister.createRoom({
        version,
        creator,
        createContent: plan.createContent,
        templates: (roomId) => [...plan.templates(roomId), ...(extras.after ?? [])],
        isPublic: request.visibility === "public",
        ...(extras.roomId !== undefined ? { roomId: extras.roomId } : {}),
        alongside: async (tx, roomId) => {
          if (alias !== undefined && !(await this.aliases.create(alias, roomId, creator, tx))) {
            throw new MatrixError(400, "M_ROOM_IN_USE", "Room alias already taken");
          }
          await extras.alongside?.(tx, roomId);
        },
      });
      // Users of other servers are invited once the room exists (their servers sign the invites).
      for (const userId of remoteInvitees) {
        await this.remote!.invite(creator, roomId, userId, request.is_direct ? { is_direct: true } : {}).catch((err: unknown) =>
          this.logger.warn({ err, roomId, userId }, "could not invite a user of another server to a new room"),
        );
      }
      return roomId;
    } catch (err) {
      // "The initial state implied by the parameters to the request is invalid" (create_room.yaml).
      if (err instanceof MatrixError && err.errcode === "M_FORBIDDEN") {
        throw new MatrixError(400, "M_INVALID_ROOM_STATE", `The room's initial state is not allowed: ${err.message}`);
      }
      throw err;
    }
  }

  /** The profile an invite carries; only local users can be invited until federation exists. */
  private async inviteeProfile(userId: string): Promise<Profile | undefined> {
    if (!isValidUserId(userId)) throw new MatrixError(400, "M_INVALID_PARAM", `Invalid user ID: ${String(userId).slice(0, 100)}`);
    if (serverNameOf(userId) !== this.serverName) {
      throw forbidden("Inviting users on other servers needs federation, which is not supported yet");
    }
    let profile = await this.accounts.getProfile(userId);
    if (!profile && (await this.appServices?.userExists(userId))) profile = await this.accounts.getProfile(userId);
    if (!profile) throw notFound(`Unknown user ${userId}`);
    return profile;
  }

  // ---- Membership ------------------------------------------------------------------------------------

  /** Resolves `#alias:server` or checks `!room`; answers 404 for rooms this server does not know. */
  async resolveRoom(roomIdOrAlias: string): Promise<string> {
    if (roomIdOrAlias.startsWith("#")) {
      const row = await this.aliases.resolve(roomIdOrAlias);
      if (!row) throw notFound("Room alias not found");
      return row.roomId;
    }
    if (!roomIdOrAlias.startsWith("!")) throw new MatrixError(400, "M_INVALID_PARAM", "Expected a room ID or a room alias");
    await this.requireRoom(roomIdOrAlias);
    return roomIdOrAlias;
  }

  /**
   * The room a join or knock names: a room ID, or an alias resolved here or (another server's) over
   * federation; the servers an alias names are added to `servers`, to go through.
   */
  private async roomToEnter(roomIdOrAlias: string, servers: string[]): Promise<string> {
    if (roomIdOrAlias.startsWith("!")) return roomIdOrAlias;
    if (!roomIdOrAlias.startsWith("#")) throw new MatrixError(400, "M_INVALID_PARAM", "Expected a room ID or a room alias");
    let local = await this.aliases.resolve(roomIdOrAlias);
    if (!local && serverNameOf(roomIdOrAlias) === this.serverName && (await this.appServices?.aliasExists(roomIdOrAlias))) {
      local = await this.aliases.resolve(roomIdOrAlias);
    }
    if (local) return local.roomId;
    if (!this.remote || !parseAlias(roomIdOrAlias) || serverNameOf(roomIdOrAlias) === this.serverName) throw notFound("Room alias not found");
    const found = await this.remote.resolveAlias(roomIdOrAlias);
    servers.push(...found.servers, serverNameOf(roomIdOrAlias)!);
    return found.room_id;
  }

  /**
   * Joins a room. `custom`: other keys of the request body, kept in the member event's content as
   * Synapse does (the ones with a meaning in the spec are the server's to set, and dropped).
   */
  async join(requester: Requester, roomIdOrAlias: string, reason?: string, via: readonly string[] = [], custom: JsonObject = {}): Promise<string> {
    const userId = requester.userId;
    const extra: JsonObject = {};
    for (const [k, v] of Object.entries(custom)) if (!RESERVED_MEMBER_KEYS.has(k)) extra[k] = v;
    if (reason !== undefined) extra.reason = reason;
    const servers = [...via];
    const roomId = await this.roomToEnter(roomIdOrAlias, servers);
    await this.requireNotBlocked(roomId);
    if (!(await this.isInRoom(roomId))) {
      const known = await this.roomVersion(roomId);
      if (!this.remote) {
        if (known === undefined) throw notFound("No known room with that ID or alias");
      } else {
        // Through the servers named, the inviter's, and the room ID's own server (before v12).
        const invite = await this.membership(roomId, userId);
        // A guest may join only a room whose guest access this server can see lets them in: here
        // that is the room's state an invite carried (servers may send m.room.guest_access with
        // it; Parley does). Without an invite saying so, no guest joins a room this server is not in.
        let guestLetIn = false;
        if (invite?.membership === "invite") {
          const [row] = rowsOf<{ sender: string; json: string }>(await this.db.execute(sql`select sender, json from events where event_id = ${invite.eventId}`));
          const inviter = row && serverNameOf(row.sender);
          if (inviter) servers.push(inviter);
          guestLetIn = row !== undefined && invitedStateLetsGuestsIn(row.json);
        }
        const idServer = serverNameOf(roomId);
        if (idServer) servers.push(idServer);
        if (servers.some((s) => s !== this.serverName)) {
          if (requester.isGuest && !guestLetIn) throw new MatrixError(403, "M_FORBIDDEN", "Guest access is not allowed in this room");
          const profile = await this.accounts.getProfile(userId);
          await this.remote.join(userId, roomId, servers, { ...extra, ...memberContent("join", profile) });
          return roomId;
        }
        if (known === undefined) throw notFound("No known room with that ID or alias");
      }
    }
    const profile = await this.accounts.getProfile(userId);
    // Read before the room's serial section (which must not wait for other queries on PGlite).
    const authoriser = await this.restrictedJoinAuthoriser(roomId, userId);
    await this.persister.enqueue(roomId, async (view) => {
      const current = view.membership(userId);
      const content = { ...extra, ...memberContent("join", profile) };
      if (current === "join") {
        // Already joined: nothing to send unless the profile in the room is stale.
        const existing = await view.stateEvent("m.room.member", userId);
        const c = existing?.content ?? {};
        if (c.displayname === content.displayname && c.avatar_url === content.avatar_url && Object.keys(extra).length === 0) return [];
      }
      if (current !== "invite" && current !== "join") {
        const joinRule = (await view.stateEvent("m.room.join_rules", ""))?.content.join_rule;
        if (joinRule === "restricted" || joinRule === "knock_restricted") {
          if (authoriser === undefined) throw forbidden("You are not in any room whose members may join this one");
          content.join_authorised_via_users_server = authoriser;
        }
      }
      if (requester.isGuest) {
        const guestAccess = (await view.stateEvent("m.room.guest_access", ""))?.content.guest_access;
        if (guestAccess !== "can_join") throw new MatrixError(403, "M_FORBIDDEN", "Guest access is not allowed in this room");
      }
      return [{ type: "m.room.member", state_key: userId, sender: userId, content }];
    });
    return roomId;
  }

  /**
   * POST /knock/{roomIdOrAlias}: asks to be let in (join rules `knock`, `knock_restricted`; the
   * auth rules decide), here when this server is in the room, else through another server of it.
   */
  async knock(requester: Requester, roomIdOrAlias: string, reason?: string, via: readonly string[] = []): Promise<string> {
    const userId = requester.userId;
    const servers = [...via];
    const roomId = await this.roomToEnter(roomIdOrAlias, servers);
    await this.requireNotBlocked(roomId);
    const profile = await this.accounts.getProfile(userId);
    const content = memberContent("knock", profile, reason !== undefined ? { reason } : {});
    if (!(await this.isInRoom(roomId))) {
      const idServer = serverNameOf(roomId);
      if (idServer) servers.push(idServer);
      if (!this.remote || !servers.some((s) => s !== this.serverName)) throw notFound("No known room with that ID or alias");
      const { membership: _m, ...extra } = content;
      await this.remote.knock(userId, roomId, servers, extra);
      return roomId;
    }
    await this.persister.enqueue(roomId, (view) => {
      const current = view.membership(userId);
      if (current === "join") throw forbidden("You are already in the room");
      if (current === "ban") throw forbidden("You are banned from the room");
      return [{ type: "m.room.member", state_key: userId, sender: userId, content }];
    });
    return roomId;
  }

  async invite(requester: Requester, roomId: string, target: string, reason?: string): Promise<void> {
    await this.requireRoom(roomId);
    await this.requireNotBlocked(roomId);
    if (isValidUserId(target) && serverNameOf(target) !== this.serverName && this.remote) {
      await this.remote.invite(requester.userId, roomId, target, reason !== undefined ? { reason } : {});
      return;
    }
    const profile = await this.inviteeProfile(target);
    const extra: JsonObject = reason !== undefined ? { reason } : {};
    await this.persister.enqueue(roomId, () => [
      { type: "m.room.member", state_key: target, sender: requester.userId, content: memberContent("invite", profile, extra) },
    ]);
  }

  async leave(requester: Requester, roomId: string, reason?: string): Promise<void> {
    await this.requireRoom(roomId);
    if (this.remote && !(await this.isInRoom(roomId))) {
      const current = await this.membership(roomId, requester.userId);
      if (current?.membership === "invite" || current?.membership === "knock") {
        // Through the inviter's server and the room ID's own (before v12).
        const servers: string[] = [];
        const [row] = rowsOf<{ sender: string }>(await this.db.execute(sql`select sender from events where event_id = ${current.eventId}`));
        const inviter = row && serverNameOf(row.sender);
        if (inviter) servers.push(inviter);
        const idServer = serverNameOf(roomId);
        if (idServer) servers.push(idServer);
        await this.remote.leave(requester.userId, roomId, servers, reason !== undefined ? { reason } : {});
        return;
      }
    }
    await this.persister.enqueue(roomId, () => [
      this.membershipTemplate(requester.userId, requester.userId, "leave", reason),
    ]);
  }

  /** Kick (leave), ban, unban (leave of a banned user): the auth rules decide. */
  async setMembershipOf(requester: Requester, roomId: string, target: string, action: "kick" | "ban" | "unban", reason?: string): Promise<void> {
    if (!isValidUserId(target)) throw new MatrixError(400, "M_INVALID_PARAM", `Invalid user ID: ${String(target).slice(0, 100)}`);
    await this.requireRoom(roomId);
    await this.persister.enqueue(roomId, (view) => {
      const current = view.membership(target) ?? "leave";
      if (action === "kick" && current !== "join" && current !== "invite" && current !== "knock") {
        throw forbidden(`${target} is not in the room`);
      }
      if (action === "unban" && current !== "ban") throw forbidden(`${target} is not banned`);
      return [this.membershipTemplate(requester.userId, target, action === "ban" ? "ban" : "leave", reason)];
    });
  }

  private membershipTemplate(sender: string, target: string, membership: string, reason?: string): EventTemplate {
    const content: JsonObject = { membership };
    if (reason !== undefined) content.reason = reason;
    return { type: "m.room.member", state_key: target, sender, content };
  }

  /** /forget: the room stops being listed for the user; they must have left it first. */
  async forget(requester: Requester, roomId: string): Promise<void> {
    const current = await this.membership(roomId, requester.userId);
    if (!current) return;
    if (current.membership === "join" || current.membership === "invite" || current.membership === "knock") {
      throw new MatrixError(400, "M_UNKNOWN", "You must leave the room before forgetting it");
    }
    const t = schema.roomMemberships;
    await this.db
      .update(t)
      .set({ forgotten: true })
      .where(and(eq(t.userId, requester.userId), eq(t.roomId, roomId), eq(t.eventId, current.eventId)));
  }

  /**
   * A local user's profile changed: their m.room.member event in every room they are joined to
   * gets the new displayname and avatar_url (https://spec.matrix.org/latest/client-server-api/#events-on-change-of-profile-information).
   */
  async profileChanged(userId: string, profile: Profile): Promise<void> {
    const rooms = await this.joinedRooms(userId);
    await Promise.all(
      rooms.map((roomId) =>
        this.persister
          .enqueue(roomId, async (view) => {
            if (view.membership(userId) !== "join") return [];
            const current = (await view.stateEvent("m.room.member", userId))?.content ?? {};
            if (current.displayname === profile.displayname && current.avatar_url === profile.avatar_url) return [];
            // Keep what else the event said, but not a reason (it was about the join) nor a
            // restricted join's authorising user (it would need that server's signature again).
            const { reason: _r, join_authorised_via_users_server: _j, displayname: _d, avatar_url: _a, ...rest } = current;
            return [{ type: "m.room.member", state_key: userId, sender: userId, content: memberContent("join", profile, rest) }];
          })
          .catch((err) => this.logger.warn({ err, userId, roomId }, "could not update a membership event with a new profile")),
      ),
    );
  }

  // ---- Sending ---------------------------------------------------------------------------------------

  /** Event types and state keys are at most 255 bytes (https://spec.matrix.org/latest/client-server-api/#size-limits). */
  checkEventFields(type: string, stateKey?: string): void {
    if (byteLength(type) > MAX_ID_BYTES) throw new MatrixError(400, "M_TOO_LARGE", "Event type is longer than 255 bytes");
    if (stateKey !== undefined && byteLength(stateKey) > MAX_ID_BYTES) {
      throw new MatrixError(400, "M_TOO_LARGE", "State key is longer than 255 bytes");
    }
  }

  private checkContent(content: JsonObject): void {
    try {
      canonicalJson(content);
    } catch (err) {
      if (err instanceof CanonicalJsonError) throw new MatrixError(400, "M_BAD_JSON", `Content is not canonical JSON: ${err.message}`);
      throw err;
    }
  }

  /**
   * PUT /rooms/{roomId}/send/{eventType}/{txnId}: idempotent per device and transaction ID.
   * `ts`: the event's origin_server_ts (an application service's timestamp massaging).
   */
  async sendMessage(requester: Requester, roomId: string, type: string, content: JsonObject, txnId: string, ts?: number): Promise<string> {
    this.checkEventFields(type);
    this.checkContent(content);
    checkTombstone(roomId, type, content);
    const txn: TxnRef = { userId: requester.userId, deviceId: requester.deviceId, endpoint: `/rooms/${roomId}/send/${type}`, txnId };
    return this.withTransaction(txn, async () => {
      const template: EventTemplate = { type, sender: requester.userId, content, txn, ...(ts === undefined ? {} : { originServerTs: ts }) };
      if (type === "m.room.redaction") {
        const redacts = content.redacts;
        if (typeof redacts !== "string") throw new MatrixError(400, "M_BAD_JSON", "m.room.redaction needs content.redacts");
        const { redacts: _r, ...rest } = content;
        return this.sendRedaction(requester, roomId, redacts, rest, txn);
      }
      const [event] = await this.persister.enqueue(roomId, () => [template], txn);
      return event!.eventId;
    });
  }

  /** PUT /rooms/{roomId}/redact/{eventId}/{txnId}. */
  async redact(requester: Requester, roomId: string, eventId: string, txnId: string, reason?: string): Promise<string> {
    const txn: TxnRef = { userId: requester.userId, deviceId: requester.deviceId, endpoint: `/rooms/${roomId}/redact/${eventId}`, txnId };
    return this.withTransaction(txn, async () => {
      return this.sendRedaction(requester, roomId, eventId, reason !== undefined ? { reason } : {}, txn);
    });
  }

  private async sendRedaction(requester: Requester, roomId: string, target: string, content: JsonObject, txn: TxnRef): Promise<string> {
    const [event] = await this.persister.enqueue(roomId, async (view) => {
      const original = await view.event(target);
      if (!original) throw notFound("Event not found");
      // "Handling redactions" (rooms/fragments/v3-handling-redactions): the sender of the original
      // event may redact it; anyone else needs the redact power level. Not an auth rule.
      if (original.sender !== requester.userId) {
        const create = await view.stateEvent("m.room.create", "");
        const powerLevels = await view.stateEvent("m.room.power_levels", "");
        const level = userPowerLevel(view.rules, requester.userId, create, powerLevels);
        const redactLevel = powerLevelValue(view.rules, powerLevels?.content.redact) ?? 50;
        if (level < redactLevel) throw forbidden("You may only redact your own events, or need the redact power level");
      }
      return [{ type: "m.room.redaction", sender: requester.userId, content, redacts: target, txn }];
    }, txn);
    return event!.eventId;
  }

  /** PUT /rooms/{roomId}/state/{eventType}/{stateKey}; `ts` as for sendMessage. */
  async setState(requester: Requester, roomId: string, type: string, stateKey: string, content: JsonObject, ts?: number): Promise<string> {
    this.checkEventFields(type, stateKey);
    this.checkContent(content);
    checkTombstone(roomId, type, content);
    await this.requireRoom(roomId);
    if (type === "m.room.canonical_alias" && stateKey === "") await this.checkCanonicalAlias(roomId, content);
    const events = await this.persister.enqueue(roomId, async (view) => {
      // Setting the same content again sends nothing (as Synapse does): the current event stands.
      const current = await view.stateEvent(type, stateKey);
      if (current && current.sender === requester.userId && sameJson(current.content, content)) return [];
      return [{ type, state_key: stateKey, sender: requester.userId, content, ...(ts === undefined ? {} : { originServerTs: ts }) }];
    });
    if (events.length > 0) {
      if (type === "m.room.guest_access" && stateKey === "" && content.guest_access !== "can_join") await this.removeGuests(roomId);
      return events[0]!.eventId;
    }
    return (await this.currentStateEventId(roomId, type, stateKey))!;
  }

  /**
   * "If the m.room.guest_access event is changed to stop [guests joining], the server MUST set
   * those users' m.room.member state to leave" (spec, Guest access): the room's local guests leave,
   * unless its guest access (as the room's serial section sees it) lets them in again. Called after
   * a local change (before the client's answer) and after one from another server.
   */
  async removeGuests(roomId: string): Promise<void> {
    const guests = rowsOf<{ user_id: string }>(
      await this.db.execute(sql`select m.user_id from room_memberships m join users u on u.user_id = m.user_id
        where m.room_id = ${roomId} and m.membership = 'join' and u.is_guest`),
    ).map((r) => r.user_id);
    if (guests.length === 0) return;
    await this.persister.enqueue(roomId, async (view) => {
      if ((await view.stateEvent("m.room.guest_access", ""))?.content.guest_access === "can_join") return [];
      return guests.filter((g) => view.membership(g) === "join").map((g) => this.membershipTemplate(g, g, "leave"));
    });
  }

  /** m.room.canonical_alias may only name local aliases that point to the room (M_BAD_ALIAS). */
  private async checkCanonicalAlias(roomId: string, content: JsonObject): Promise<void> {
    const aliases: unknown[] = [];
    if (content.alias !== undefined) aliases.push(content.alias);
    if (content.alt_aliases !== undefined) {
      if (!Array.isArray(content.alt_aliases)) throw new MatrixError(400, "M_INVALID_PARAM", "alt_aliases must be a list");
      aliases.push(...content.alt_aliases);
    }
    for (const alias of aliases) {
      if (typeof alias !== "string" || !parseAlias(alias)) throw new MatrixError(400, "M_INVALID_PARAM", "Invalid alias in m.room.canonical_alias");
      if (serverNameOf(alias) !== this.serverName) continue;
      const row = await this.aliases.resolve(alias);
      if (!row || row.roomId !== roomId) throw new MatrixError(400, "M_BAD_ALIAS", `${alias} does not point to this room`);
    }
  }

  /**
   * Runs a send once per (device, endpoint, transaction ID): a retry gets the first event's ID.
   * https://spec.matrix.org/latest/client-server-api/#transaction-identifiers — the endpoint is the
   * request path without the transaction ID (as Synapse keys it), so the same transaction ID in
   * another room, or for another event type, is another request.
   * A retry while the first request is in flight here waits for it; the persister looks stored
   * transaction IDs up in the room's transaction (so a retry of a finished request, or one that
   * reaches another process, finds the first event).
   */
  private async withTransaction(txn: TxnRef, send: () => Promise<string>): Promise<string> {
    const key = txnKey(txn);
    const inflight = this.inflightTxns.get(key);
    if (inflight) return inflight;
    const promise = send();
    this.inflightTxns.set(key, promise);
    try {
      return await promise;
    } finally {
      this.inflightTxns.delete(key);
    }
  }
}

/** A tombstone naming its own room as the replacement would send clients round in a circle (Synapse refuses it too). */
function checkTombstone(roomId: string, type: string, content: JsonObject): void {
  if (type === "m.room.tombstone" && content.replacement_room === roomId) {
    throw new MatrixError(400, "M_BAD_JSON", "A tombstone cannot name its own room as the replacement");
  }
}

function sameJson(a: unknown, b: unknown): boolean {
  try {
    return canonicalJson(a) === canonicalJson(b);
  } catch {
    return false;
  }
}

export type { PersistedEvent, RoomView };

/** Whether an invite's `unsigned.invite_room_state` has `m.room.guest_access` saying `can_join`. */
function invitedStateLetsGuestsIn(inviteJson: string): boolean {
  const stripped = (JSON.parse(inviteJson) as { unsigned?: { invite_room_state?: unknown } }).unsigned?.invite_room_state;
  if (!Array.isArray(stripped)) return false;
  return stripped.some(
    (e: unknown) =>
      typeof e === "object" && e !== null &&
      (e as { type?: unknown }).type === "m.room.guest_access" &&
      (e as { state_key?: unknown }).state_key === "" &&
      ((e as { content?: { guest_access?: unknown } }).content?.guest_access === "can_join"),
  );
}

// The user directory: `POST /user_directory/search`.
// https://spec.matrix.org/latest/client-server-api/#user-directory
//
// Who is found (the spec's minimum, as Synapse does): users sharing a joined room with the
// requester, and users joined to a room whose join rule is `public` or whose history visibility is
// `world_readable`. With `user_directory_search_all_users`, every local account (not guests) too.
// The requester is found like anyone else, never through "sharing a room" with themself (sytest
// expects a user alone in private rooms not to find themself). A room counts while one of our users
// is joined to it: once the last one leaves, its state is frozen and its members are no longer
// known through it (as Synapse drops such rooms from its directory).
//
// Storage (tables in schema/tables/user-directory.ts): each user's profile and the words they are
// found under; which rooms are public and their joined members. Who shares a room with the
// requester is read from the rooms' current state at search time. The directory follows:
// - local accounts, from the accounts component (created, profile changed, deactivated);
// - users of other servers, from their membership events (the latest join in any room);
// - public rooms, from join rule and history visibility changes and our users joining and
//   leaving; their members, from membership changes (each worked out from the current state);
// all applied in order on one queue after each committed batch; a search first waits for that
// queue, so what a request changed is searchable by the next one in this process. When a local
// user joins a room, its members of other servers are added too (a room joined over federation
// arrives as state, not as a stream of joins). At start-up, whatever is missing is filled in
// (existing databases, users created by the command line while the server was down).
import { sql, type SQL } from "drizzle-orm";
import type { Logger } from "pino";
import { type Database, rowsOf } from "../../schema/db.ts";
import { serverNameOf } from "../../federation/protocol/identifiers.ts";
import type { Accounts } from "../accounts/accounts.ts";
import type { PersistedEvent } from "../rooms/persister.ts";

/** A result of a search, as the spec's response lists it. */
export interface DirectoryUser {
  user_id: string;
  display_name?: string;
  avatar_url?: string;
}

export interface SearchResult {
  results: DirectoryUser[];
  limited: boolean;
}

/** What a user is found under: at most this many words, each cut to this many characters. */
const MAX_TOKENS = 64;
const MAX_TOKEN_LENGTH = 64;
/** Words of a search term beyond this are ignored (each one is a condition of the query). */
const MAX_TERMS = 8;
/** The largest `limit` honoured; a larger one is read as this. */
export const MAX_LIMIT = 1000;
/** Users written per statement when filling the directory. */
const BATCH = 500;

/** NFKC and lower case: "Ｅ", "é" and "É" match as users expect, whatever the database's collation. */
export function normalise(text: string): string {
  return text.normalize("NFKC").toLowerCase();
}

/** The words of a text, normalised: runs of letters (with their marks) and digits. */
export function wordsOf(text: string): string[] {
  return normalise(text).match(/[\p{L}\p{M}\p{N}]+/gu) ?? [];
}

/** The words a user is found under: those of the user ID (localpart and server) and of the display name. */
export function tokensOf(userId: string, displayName: string | null): string[] {
  const tokens = new Set<string>();
  for (const word of [...wordsOf(userId), ...wordsOf(displayName ?? "")]) {
    if (tokens.size >= MAX_TOKENS) break;
    tokens.add(word.slice(0, MAX_TOKEN_LENGTH));
  }
  return [...tokens];
}

/** `LIKE` pattern of a literal prefix. */
function likePrefix(prefix: string): string {
  return `${prefix.replace(/[\\%_]/g, (c) => `\\${c}`)}%`;
}

interface Profile {
  userId: string;
  displayName: string | null;
  avatarUrl: string | null;
  isLocal: boolean;
  listed: boolean;
}

export interface UserDirectoryOptions {
  db: Database;
  serverName: string;
  accounts: Accounts;
  logger: Logger;
  /** Config `user_directory_search_all_users`. */
  searchAllUsers: boolean;
}

export class UserDirectory {
  private readonly db: Database;
  private readonly serverName: string;
  /** The updates in order: each link runs after the one before, whatever it did. */
  private queue: Promise<void> = Promise.resolve();

  constructor(private readonly options: UserDirectoryOptions) {
    this.db = options.db;
    this.serverName = options.serverName;
  }

  /** Queues the start-up fill; searches wait for it. */
  start(): void {
    this.enqueue("filling the user directory", () => this.fill());
  }

  /** Waits for the queued updates (tests, and every search). */
  settled(): Promise<void> {
    return this.queue;
  }

  private enqueue(what: string, work: () => Promise<void>): void {
    this.queue = this.queue.then(work).catch((err: unknown) => this.options.logger.warn({ err }, `user directory: ${what} failed`));
  }

  // ---- Keeping up to date ----------------------------------------------------------------------------

  /** A local account was created, upgraded from a guest, changed its profile or was deactivated. */
  localUserChanged(userId: string): void {
    this.enqueue("updating a local user", () => this.refreshLocalUsers([userId]));
  }

  /** Events of a committed batch (the persister's batch listener). */
  eventsPersisted(events: readonly PersistedEvent[]): void {
    // Rooms whose public flag (and so all of its members) must be worked out again: a join rule or
    // history visibility change, a local user joining (maybe the room was just joined over
    // federation) or leaving (maybe the last one).
    const roomsToRefresh = new Set<string>();
    const roomsJoined = new Set<string>();
    const memberChanges = new Map<string, Set<string>>();
    const remoteJoins = new Map<string, Set<string>>();
    const localJoins = new Set<string>();
    const add = (map: Map<string, Set<string>>, roomId: string, userId: string) => {
      let users = map.get(roomId);
      if (!users) map.set(roomId, (users = new Set()));
      users.add(userId);
    };
    for (const e of events) {
      if (e.stateKey === undefined) continue;
      if ((e.type === "m.room.join_rules" || e.type === "m.room.history_visibility") && e.stateKey === "") {
        roomsToRefresh.add(e.roomId);
      } else if (e.type === "m.room.member") {
        const local = this.isLocal(e.stateKey);
        add(memberChanges, e.roomId, e.stateKey);
        if (local) roomsToRefresh.add(e.roomId);
        if (e.membership !== "join") continue;
        if (local) {
          localJoins.add(e.stateKey);
          roomsJoined.add(e.roomId);
        } else {
          add(remoteJoins, e.roomId, e.stateKey);
        }
      }
    }
    if (roomsToRefresh.size + memberChanges.size === 0) return;
    this.enqueue("following room events", async () => {
      if (localJoins.size > 0) await this.refreshLocalUsers([...localJoins], { onlyMissing: true });
      for (const [roomId, users] of remoteJoins) await this.refreshRemoteMembers(roomId, [...users]);
      // A room our first user just joined (maybe over federation, its members arriving as state):
      // the members of other servers it already had.
      for (const roomId of roomsJoined) {
        const [first] = rowsOf<{ first: boolean }>(
          await this.db.execute(sql`select count(*) < 2 as first from (select 1 from room_memberships where room_id = ${roomId} and membership = 'join' limit 2) m`),
        );
        if (first?.first) await this.refreshRemoteMembers(roomId, undefined, { onlyMissing: true });
      }
      const rebuilt = roomsToRefresh.size > 0 ? await this.refreshPublicRooms([...roomsToRefresh]) : new Set<string>();
      for (const [roomId, users] of memberChanges) {
        if (!rebuilt.has(roomId)) await this.refreshPublicMembers(roomId, [...users]);
      }
    });
  }

  private isLocal(userId: string): boolean {
    try {
      return serverNameOf(userId) === this.serverName;
    } catch {
      return false;
    }
  }

  /** Start-up: every room's public flag, and the users missing from the directory. */
  private async fill(): Promise<void> {
    const started = performance.now();
    const publicRooms = rowsOf<{ room_id: string; type: string; json: string }>(
      await this.db.execute(sql`select c.room_id, c.type, e.json from current_state c join events e on e.event_id = c.event_id
        where c.type in ('m.room.join_rules', 'm.room.history_visibility') and c.state_key = ''`),
    );
    const isPublic = new Set<string>();
    for (const r of publicRooms) if (statePublishes(r.type, contentOf(r.json))) isPublic.add(r.room_id);
    await this.db.transaction(async (tx) => {
      await tx.execute(sql`delete from user_directory_public_members`);
      await tx.execute(sql`delete from user_directory_public_rooms`);
      for (let i = 0; i < isPublic.size; i += BATCH) {
        const ids = JSON.stringify([...isPublic].slice(i, i + BATCH));
        await tx.execute(sql`insert into user_directory_public_rooms (room_id) select r from jsonb_array_elements_text(${ids}::jsonb) as r
          where exists (select 1 from room_memberships m where m.room_id = r and m.membership = 'join') on conflict do nothing`);
      }
      await tx.execute(sql`insert into user_directory_public_members (user_id, room_id)
        select c.state_key, c.room_id from user_directory_public_rooms p
        join current_state c on c.room_id = p.room_id and c.type = 'm.room.member' and c.membership = 'join' on conflict do nothing`);
    });

    const known = new Set(
      rowsOf<{ user_id: string }>(await this.db.execute(sql`select user_id from user_directory where is_local`)).map((r) => r.user_id),
    );
    const users = await this.options.accounts.listUsers();
    const active = users.filter((u) => u.deactivatedTs === null);
    const missing = active.filter((u) => !known.has(u.userId)).map((u) => localProfile(u));
    await this.write(missing);
    const gone = users.filter((u) => u.deactivatedTs !== null && known.has(u.userId)).map((u) => u.userId);
    await this.remove(gone);

    // Members of other servers joined to some room, without a row yet.
    const remote = rowsOf<{ user_id: string; json: string }>(
      await this.db.execute(sql`select distinct on (c.state_key) c.state_key as user_id, e.json
        from current_state c join events e on e.event_id = c.event_id
        where c.type = 'm.room.member' and c.membership = 'join'
          and c.state_key not like ${`@%:${this.serverName}`}
          and not exists (select 1 from user_directory d where d.user_id = c.state_key)
        order by c.state_key, e.stream_ordering desc nulls last`),
    );
    await this.write(remote.map((r) => remoteProfile(r.user_id, contentOf(r.json))));
    this.options.logger.info(
      { publicRooms: isPublic.size, localAdded: missing.length, localRemoved: gone.length, remoteAdded: remote.length, ms: Math.round(performance.now() - started) },
      "user directory ready",
    );
  }

  /** Local accounts as the accounts component has them now: written, or removed when deactivated or gone. */
  private async refreshLocalUsers(userIds: string[], options: { onlyMissing?: boolean } = {}): Promise<void> {
    let ids = userIds;
    if (options.onlyMissing) {
      const present = new Set(
        rowsOf<{ user_id: string }>(
          await this.db.execute(sql`select user_id from user_directory where user_id in (select jsonb_array_elements_text(${JSON.stringify(ids)}::jsonb))`),
        ).map((r) => r.user_id),
      );
      ids = ids.filter((id) => !present.has(id));
    }
    const write: Profile[] = [];
    const remove: string[] = [];
    for (const userId of ids) {
      const user = await this.options.accounts.getUser(userId);
      if (!user || user.deactivatedTs !== null) remove.push(userId);
      else write.push(localProfile(user));
    }
    await this.remove(remove);
    await this.write(write);
  }

  /** Members of another server joined to a room: their profile from their current membership event there. */
  private async refreshRemoteMembers(roomId: string, userIds: string[] | undefined, options: { onlyMissing?: boolean } = {}): Promise<void> {
    const only = userIds === undefined ? sql`` : sql`and c.state_key in (select jsonb_array_elements_text(${JSON.stringify(userIds)}::jsonb))`;
    const missing = options.onlyMissing ? sql`and not exists (select 1 from user_directory d where d.user_id = c.state_key)` : sql``;
    const rows = rowsOf<{ user_id: string; json: string }>(
      await this.db.execute(sql`select c.state_key as user_id, e.json from current_state c join events e on e.event_id = c.event_id
        where c.room_id = ${roomId} and c.type = 'm.room.member' and c.membership = 'join' ${only} ${missing}`),
    );
    await this.write(rows.filter((r) => !this.isLocal(r.user_id)).map((r) => remoteProfile(r.user_id, contentOf(r.json))));
  }

  /**
   * Works out again whether rooms are public (and known: one of our users is joined); a room that
   * becomes so gets all its joined members listed, one that stops has them removed. Returns the
   * rooms whose flag changed (their members are then up to date).
   */
  private async refreshPublicRooms(roomIds: string[]): Promise<Set<string>> {
    const changed = new Set<string>();
    for (const roomId of roomIds) {
      const rows = rowsOf<{ type: string; json: string }>(
        await this.db.execute(sql`select c.type, e.json from current_state c join events e on e.event_id = c.event_id
          where c.room_id = ${roomId} and c.type in ('m.room.join_rules', 'm.room.history_visibility') and c.state_key = ''`),
      );
      const [flags] = rowsOf<{ known: boolean; listed: boolean }>(
        await this.db.execute(sql`select exists (select 1 from room_memberships m where m.room_id = ${roomId} and m.membership = 'join') as known,
          exists (select 1 from user_directory_public_rooms p where p.room_id = ${roomId}) as listed`),
      );
      const open = rows.some((r) => statePublishes(r.type, contentOf(r.json))) && flags!.known;
      if (open === flags!.listed) continue;
      changed.add(roomId);
      await this.db.transaction(async (tx) => {
        await tx.execute(sql`delete from user_directory_public_members where room_id = ${roomId}`);
        await tx.execute(sql`delete from user_directory_public_rooms where room_id = ${roomId}`);
        if (!open) return;
        await tx.execute(sql`insert into user_directory_public_rooms (room_id) values (${roomId})`);
        await tx.execute(sql`insert into user_directory_public_members (user_id, room_id)
          select c.state_key, c.room_id from current_state c
          where c.room_id = ${roomId} and c.type = 'm.room.member' and c.membership = 'join'`);
      });
    }
    return changed;
  }

  /** Some members of a room changed membership: their rows of the public members, as the room's current state says. */
  private async refreshPublicMembers(roomId: string, userIds: string[]): Promise<void> {
    const ids = JSON.stringify(userIds);
    await this.db.transaction(async (tx) => {
      await tx.execute(sql`delete from user_directory_public_members
        where room_id = ${roomId} and user_id in (select jsonb_array_elements_text(${ids}::jsonb))`);
      await tx.execute(sql`insert into user_directory_public_members (user_id, room_id)
        select c.state_key, c.room_id from current_state c
        where c.room_id = ${roomId} and c.type = 'm.room.member' and c.membership = 'join'
          and c.state_key in (select jsonb_array_elements_text(${ids}::jsonb))
          and exists (select 1 from user_directory_public_rooms p where p.room_id = ${roomId})`);
    });
  }

  /** Writes profiles and their words, replacing what was there. */
  private async write(profiles: Profile[]): Promise<void> {
    for (let i = 0; i < profiles.length; i += BATCH) {
      const chunk = profiles.slice(i, i + BATCH);
      const rows = JSON.stringify(
        chunk.map((p) => ({
          u: p.userId,
          l: p.isLocal,
          s: p.listed,
          d: p.displayName,
          a: p.avatarUrl,
          n: p.displayName === null ? null : normalise(p.displayName),
          k: normalise(p.userId),
        })),
      );
      const tokens = JSON.stringify(chunk.flatMap((p) => tokensOf(p.userId, p.displayName).map((t) => ({ u: p.userId, t }))));
      const ids = JSON.stringify(chunk.map((p) => p.userId));
      await this.db.transaction(async (tx) => {
        await tx.execute(sql`insert into user_directory (user_id, is_local, listed, display_name, avatar_url, name_key, id_key)
          select x.u, x.l, x.s, x.d, x.a, x.n, x.k from jsonb_to_recordset(${rows}::jsonb) as x(u text, l boolean, s boolean, d text, a text, n text, k text)
          on conflict (user_id) do update set is_local = excluded.is_local, listed = excluded.listed, display_name = excluded.display_name,
            avatar_url = excluded.avatar_url, name_key = excluded.name_key, id_key = excluded.id_key`);
        await tx.execute(sql`delete from user_directory_search where user_id in (select jsonb_array_elements_text(${ids}::jsonb))`);
        await tx.execute(sql`insert into user_directory_search (user_id, token)
          select x.u, x.t from jsonb_to_recordset(${tokens}::jsonb) as x(u text, t text) on conflict do nothing`);
      });
    }
  }

  private async remove(userIds: string[]): Promise<void> {
    if (userIds.length === 0) return;
    const ids = JSON.stringify(userIds);
    await this.db.transaction(async (tx) => {
      await tx.execute(sql`delete from user_directory_search where user_id in (select jsonb_array_elements_text(${ids}::jsonb))`);
      await tx.execute(sql`delete from user_directory where user_id in (select jsonb_array_elements_text(${ids}::jsonb))`);
    });
  }

  // ---- Searching -------------------------------------------------------------------------------------

  /**
   * The users `requester` may find whose user ID or display name has a word starting with each
   * word of `term` (case-insensitive). Ranking, best first:
   * 1. the term is the whole display name, the whole user ID or the whole localpart;
   * 2. users sharing a joined room with the requester before the others;
   * 3. the display name or the localpart starts with the term;
   * 4. users with a display name before those without (the spec's "whether or not profile info is
   *    available"), then by display name (or user ID).
   */
  async search(requester: string, term: string, limit: number): Promise<SearchResult> {
    await this.queue;
    const take = Math.min(limit, MAX_LIMIT);
    const query = this.searchSql(requester, term, take + 1);
    if (!query) return { results: [], limited: false };
    const rows = rowsOf<{ user_id: string; display_name: string | null; avatar_url: string | null }>(await this.db.execute(query));
    const results = rows.slice(0, take).map((r) => ({
      user_id: r.user_id,
      ...(r.display_name !== null ? { display_name: r.display_name } : {}),
      ...(r.avatar_url !== null ? { avatar_url: r.avatar_url } : {}),
    }));
    return { results, limited: rows.length > take };
  }

  /** The search's statement (the benchmark explains it); undefined when nothing can match. */
  searchSql(requester: string, term: string, limit: number): SQL | undefined {
    const terms = [...new Set(wordsOf(term))].slice(0, MAX_TERMS).map((t) => t.slice(0, MAX_TOKEN_LENGTH));
    if (terms.length === 0 || limit < 1) return undefined;
    const whole = normalise(term).trim();
    const bare = whole.startsWith("@") ? whole.slice(1) : whole;
    const conditions: SQL[] = terms.map(
      (t) => sql`and d.user_id in (select s.user_id from user_directory_search s where s.token like ${likePrefix(t)})`,
    );
    return sql`with shared as (
          select distinct c.state_key as user_id from current_state c
          where c.type = 'm.room.member' and c.membership = 'join' and c.state_key <> ${requester}
            and c.room_id in (select m.room_id from room_memberships m where m.user_id = ${requester} and m.membership = 'join')
        )
        select d.user_id, d.display_name, d.avatar_url
        from user_directory d left join shared on shared.user_id = d.user_id
        where true ${sql.join(conditions, sql` `)}
          and (shared.user_id is not null
            or (${sql.raw(this.options.searchAllUsers ? "true" : "false")} and d.listed)
            or exists (select 1 from user_directory_public_members pm where pm.user_id = d.user_id))
        order by
          (d.name_key = ${whole} or d.id_key = ${whole} or d.id_key like ${likePrefix(`@${bare}:`)}) desc,
          (shared.user_id is not null) desc,
          (d.name_key like ${likePrefix(whole)} or d.id_key like ${likePrefix(`@${bare}`)}) desc,
          (d.display_name is null),
          coalesce(d.name_key, d.id_key), d.user_id
        limit ${limit}`;
  }
}

function localProfile(user: { userId: string; displayName: string | null; avatarUrl: string | null; isGuest: boolean }): Profile {
  return { userId: user.userId, displayName: user.displayName, avatarUrl: user.avatarUrl, isLocal: true, listed: !user.isGuest };
}

/** A remote user's profile from a membership event's content: only string values are taken. */
function remoteProfile(userId: string, content: Record<string, unknown>): Profile {
  const name = content.displayname;
  const avatar = content.avatar_url;
  return {
    userId,
    displayName: typeof name === "string" && name !== "" ? name : null,
    avatarUrl: typeof avatar === "string" && avatar !== "" ? avatar : null,
    isLocal: false,
    listed: false,
  };
}

function contentOf(json: string): Record<string, unknown> {
  try {
    const content = (JSON.parse(json) as { content?: unknown }).content;
    return typeof content === "object" && content !== null && !Array.isArray(content) ? (content as Record<string, unknown>) : {};
  } catch {
    return {};
  }
}

/** Whether a join rule or history visibility state event makes the room's members findable by all. */
function statePublishes(type: string, content: Record<string, unknown>): boolean {
  if (type === "m.room.join_rules") return content.join_rule === "public";
  return content.history_visibility === "world_readable";
}

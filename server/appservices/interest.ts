// Which room events an application service is sent.
// https://spec.matrix.org/latest/application-service-api/#registration (the note on `users`)
//
// A room event is of interest to a service when
// - its sender, or the target (`state_key`) of an m.room.member event, is the service's bot or a
//   user in its user namespaces, and a LOCAL user (the spec: events affecting users on other
//   homeservers are not sent, even when their ID matches a namespace);
// - its room ID matches the service's room namespaces;
// - the room has a joined local member who is the bot or in its user namespaces;
// - the room has an alias in the service's alias namespaces: the canonical alias or one of its
//   alt_aliases, or an alias of our directory pointing at the room.
// The first two are decided from the event alone; the last two need the room's current members and
// aliases, read once per room for a whole batch (RoomFacts), and only for rooms where some event was
// not already decided.
import { sql } from "drizzle-orm";
import { type Database, rowsOf } from "../../schema/db.ts";
import { serverNameOf } from "../../federation/protocol/identifiers.ts";
import { sqlList } from "../rooms/event-store.ts";
import { type AppService, isInterestedInAlias, isInterestedInRoomId, isInterestedInUser } from "./registration.ts";

/** What of an event the decision needs. */
export interface EventForInterest {
  roomId: string;
  type: string;
  sender: string;
  stateKey: string | undefined;
}

/** A room's joined local members and aliases (canonical, alt and directory), as now. */
export interface RoomFacts {
  localMembers: string[];
  aliases: string[];
}

/** Decided from the event alone: its sender or member target, or its room ID. */
export function interestedInEvent(service: AppService, serverName: string, event: EventForInterest): boolean {
  const local = (userId: string) => serverNameOf(userId) === serverName && isInterestedInUser(service, userId);
  if (local(event.sender)) return true;
  if (event.type === "m.room.member" && event.stateKey !== undefined && local(event.stateKey)) return true;
  return isInterestedInRoomId(service, event.roomId);
}

/** Decided from the room: a joined local member of its namespaces, or an alias of its namespaces. */
export function interestedInRoom(service: AppService, facts: RoomFacts): boolean {
  return facts.localMembers.some((u) => isInterestedInUser(service, u)) || facts.aliases.some((a) => isInterestedInAlias(service, a));
}

/**
 * Reads the rooms' facts in one statement: joined members (local ones kept), directory aliases,
 * and the canonical alias event's `alias` and `alt_aliases`. Read-only use of the rooms
 * component's tables (current_state, events, room_aliases), as server/rooms/sync-reads.ts reads them.
 */
export async function readRoomFacts(db: Database, serverName: string, roomIds: readonly string[]): Promise<Map<string, RoomFacts>> {
  const out = new Map<string, RoomFacts>();
  if (roomIds.length === 0) return out;
  for (const roomId of roomIds) out.set(roomId, { localMembers: [], aliases: [] });
  const list = sqlList(roomIds);
  const rows = rowsOf<{ room_id: string; kind: string; value: string | null }>(
    await db.execute(sql`
      select cs.room_id, 'member' as kind, cs.state_key as value from current_state cs
        where cs.room_id in (${list}) and cs.type = 'm.room.member' and cs.membership = 'join'
      union all
      select a.room_id, 'alias' as kind, a.alias as value from room_aliases a where a.room_id in (${list})
      union all
      select cs.room_id, 'canonical' as kind, e.json as value from current_state cs join events e on e.event_id = cs.event_id
        where cs.room_id in (${list}) and cs.type = 'm.room.canonical_alias' and cs.state_key = ''`),
  );
  for (const r of rows) {
    const facts = out.get(r.room_id);
    if (!facts || r.value === null) continue;
    if (r.kind === "member") {
      if (serverNameOf(r.value) === serverName) facts.localMembers.push(r.value);
    } else if (r.kind === "alias") {
      facts.aliases.push(r.value);
    } else {
      facts.aliases.push(...canonicalAliases(r.value));
    }
  }
  return out;
}

function canonicalAliases(json: string): string[] {
  let content: unknown;
  try {
    content = (JSON.parse(json) as { content?: unknown }).content;
  } catch {
    return [];
  }
  if (!content || typeof content !== "object") return [];
  const { alias, alt_aliases: alt } = content as { alias?: unknown; alt_aliases?: unknown };
  const out: string[] = [];
  if (typeof alias === "string") out.push(alias);
  if (Array.isArray(alt)) for (const a of alt) if (typeof a === "string") out.push(a);
  return out;
}

/**
 * The events of interest to the service, in order: those decided from the event, then the rest by
 * their room's facts (read once for all the rooms still undecided).
 */
export async function filterInteresting<E extends EventForInterest>(
  db: Database,
  serverName: string,
  service: AppService,
  events: readonly E[],
): Promise<E[]> {
  const decided = events.map((e) => interestedInEvent(service, serverName, e));
  const undecidedRooms = [...new Set(events.filter((_, i) => !decided[i]).map((e) => e.roomId))];
  const facts = await readRoomFacts(db, serverName, undecidedRooms);
  const roomInterest = new Map<string, boolean>();
  for (const [roomId, f] of facts) roomInterest.set(roomId, interestedInRoom(service, f));
  return events.filter((e, i) => decided[i] || roomInterest.get(e.roomId) === true);
}

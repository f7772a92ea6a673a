// State resolution v1 (room version 1): content/rooms/v1.md#state-resolution.
//
// "The resolved state is built up in a number of passes; here we use R to refer to the results of
// the resolution so far." Power levels, then join rules, then memberships are each resolved by
// walking their conflicting events from the lowest depth up and stopping at the first that R does
// not authorise; every other conflict takes the deepest event that R authorises.
//
// Where the spec leaves room, this follows Synapse (synapse/state/v1.py, unchanged in substance from
// 2018 through 1.67 to today), since that is what the rooms of version 1 on the network were
// resolved with. Each such place is marked "Synapse:".

import { createHash } from "node:crypto";
import { authTypesForEvent } from "./auth-events-selection.ts";
import { checkAuth } from "./auth-rules.ts";
import type { RoomEvent } from "./pdu.ts";
import { splitStateMapKey, stateMapKey, type StateMap, type StateMapKey } from "./room-state.ts";
import { roomVersionRules, type RoomVersionRules } from "./room-versions.ts";
import type { EventLookup, StateResolutionOptions } from "./state-resolution.ts";

const POWER_LEVELS_KEY = stateMapKey("m.room.power_levels", "");

/** A conflicting event with what the ordering reads. */
interface Candidate {
  id: string;
  event: RoomEvent;
  depth: number;
  sha1: string;
}

/**
 * Resolves a set of room states into one by the room version 1 algorithm. Only two kinds of
 * events are looked up: the conflicting events, and the unconflicted state events at the auth
 * event types of those (see `conflictingEventIdsV1`, `unconflictedAuthEventIdsV1`). Events that
 * cannot be looked up, or are rejected, are left out of the conflict, as Synapse leaves them.
 */
export function resolveStateV1(
  roomVersion: string | RoomVersionRules,
  stateSets: ReadonlyArray<ReadonlyMap<StateMapKey, string>>,
  fetchEvent: EventLookup,
  options: StateResolutionOptions = {},
): StateMap {
  const rules = roomVersionRules(roomVersion);
  if (stateSets.length === 0) return new Map();
  if (stateSets.length === 1) return new Map(stateSets[0]);
  const lookup = usableEvents(fetchEvent, options);

  // "Start by setting R to the union of the states to be resolved, excluding any conflicting events."
  const { unconflicted, conflicted } = separate(stateSets);
  if (conflicted.size === 0) return unconflicted;

  // Synapse: the auth checks read only the unconflicted state at the auth event types of the
  // conflicting events (plus what each pass below resolves), taken before a conflict left with a
  // single known event is settled.
  const authEvents = new Map<StateMapKey, RoomEvent>();
  for (const [key, id] of unconflictedAuthEntries(rules, unconflicted, conflicted, lookup)) {
    const event = lookup(id);
    if (event) authEvents.set(key, event);
  }

  const resolved: StateMap = new Map(unconflicted);
  const conflicts = new Map<StateMapKey, Candidate[]>();
  for (const [key, ids] of conflicted) {
    const candidates: Candidate[] = [];
    for (const id of ids) {
      const event = lookup(id);
      if (event) candidates.push({ id, event, depth: depthOf(event), sha1: sha1Hex(id) });
    }
    if (candidates.length > 1) conflicts.set(key, candidates);
    else if (candidates.length === 1) resolved.set(key, candidates[0]!.id);
  }

  const winners = new Map<StateMapKey, Candidate>();
  const addWinnersToAuthEvents = () => {
    for (const [key, winner] of winners) authEvents.set(key, winner.event);
  };
  // "First we resolve conflicts between m.room.power_levels events."
  const powerLevels = conflicts.get(POWER_LEVELS_KEY);
  if (powerLevels) winners.set(POWER_LEVELS_KEY, resolveAuthConflict(rules, POWER_LEVELS_KEY, powerLevels, authEvents));
  addWinnersToAuthEvents();
  // "Repeat the above process for conflicts between m.room.join_rules events." Synapse: for every
  // state key of that type.
  for (const [key, candidates] of conflicts) {
    if (typeOf(key) === "m.room.join_rules") winners.set(key, resolveAuthConflict(rules, key, candidates, authEvents));
  }
  addWinnersToAuthEvents();
  // "Repeat the above process for conflicts between m.room.member events." Synapse: one run per
  // state key, each against the same state (R after the join rules), so a membership resolved
  // here never counts in the checks of another user's conflict: a kick by a user whose own
  // membership is conflicted finds that user absent.
  for (const [key, candidates] of conflicts) {
    if (typeOf(key) === "m.room.member") winners.set(key, resolveAuthConflict(rules, key, candidates, authEvents));
  }
  addWinnersToAuthEvents();
  // "For all other conflicts, just pick the event with the highest depth and lowest sha1(event_id)
  // that passes authentication in R."
  for (const [key, candidates] of conflicts) {
    if (!winners.has(key)) winners.set(key, resolveOtherConflict(rules, candidates, authEvents));
  }

  for (const [key, winner] of winners) resolved.set(key, winner.id);
  return resolved;
}

/**
 * The event IDs of the conflicting events: what resolveStateV1 looks up first. A caller that
 * loads events before resolving loads these, then `unconflictedAuthEventIdsV1`.
 */
export function conflictingEventIdsV1(stateSets: ReadonlyArray<ReadonlyMap<StateMapKey, string>>): Set<string> {
  const ids = new Set<string>();
  if (stateSets.length < 2) return ids;
  for (const conflicting of separate(stateSets).conflicted.values()) for (const id of conflicting) ids.add(id);
  return ids;
}

/**
 * The unconflicted state events the auth checks of resolveStateV1 read: for each conflicting event
 * that `fetchEvent` finds (and is not rejected), the unconflicted entries at its auth event types
 * (create, power levels, sender's membership; for memberships also the target's membership, the
 * join rules and the third-party invite). With these and the conflicting events, the resolution
 * needs nothing else.
 */
export function unconflictedAuthEventIdsV1(
  roomVersion: string | RoomVersionRules,
  stateSets: ReadonlyArray<ReadonlyMap<StateMapKey, string>>,
  fetchEvent: EventLookup,
  options: StateResolutionOptions = {},
): Set<string> {
  if (stateSets.length < 2) return new Set();
  const { unconflicted, conflicted } = separate(stateSets);
  return new Set(unconflictedAuthEntries(roomVersionRules(roomVersion), unconflicted, conflicted, usableEvents(fetchEvent, options)).values());
}

/** Synapse looks events up without rejected ones (`allow_rejected=False`): they are as good as unknown. */
function usableEvents(fetchEvent: EventLookup, options: StateResolutionOptions): EventLookup {
  const isRejected = options.isRejected;
  return isRejected ? (id) => (isRejected(id) ? undefined : fetchEvent(id)) : fetchEvent;
}

/**
 * "A conflict occurs between states where those states have different event_ids for the same
 * (event_type, state_key)." A key that only some of the states hold, all with the same event, is
 * not a conflict (unlike v2, where a missing key conflicts).
 */
function separate(stateSets: ReadonlyArray<ReadonlyMap<StateMapKey, string>>): {
  unconflicted: StateMap;
  conflicted: Map<StateMapKey, Set<string>>;
} {
  const unconflicted: StateMap = new Map();
  const conflicted = new Map<StateMapKey, Set<string>>();
  for (const set of stateSets) {
    for (const [key, id] of set) {
      const conflicting = conflicted.get(key);
      if (conflicting) {
        conflicting.add(id);
        continue;
      }
      const agreed = unconflicted.get(key);
      if (agreed === undefined) unconflicted.set(key, id);
      else if (agreed !== id) {
        unconflicted.delete(key);
        conflicted.set(key, new Set([agreed, id]));
      }
    }
  }
  return { unconflicted, conflicted };
}

/** Synapse's `_create_auth_events_from_maps`: key → unconflicted event ID, for the auth event types of the known conflicting events. */
function unconflictedAuthEntries(
  rules: RoomVersionRules,
  unconflicted: ReadonlyMap<StateMapKey, string>,
  conflicted: ReadonlyMap<StateMapKey, ReadonlySet<string>>,
  lookup: EventLookup,
): Map<StateMapKey, string> {
  const entries = new Map<StateMapKey, string>();
  for (const ids of conflicted.values()) {
    for (const id of ids) {
      const event = lookup(id);
      if (!event) continue;
      for (const [type, stateKey] of authTypesForEvent(rules, event)) {
        const key = stateMapKey(type, stateKey);
        const authId = unconflicted.get(key);
        if (authId !== undefined) entries.set(key, authId);
      }
    }
  }
  return entries;
}

/**
 * The power levels, join rules or membership pass: "Sort the list by ascending depth then
 * descending sha1(event_id). Add the first event in the list to R. For each subsequent event in
 * the list, check that the event would be allowed by the authorisation rules for a room in state
 * R. If the event would be allowed, then update R with the event and continue with the next event
 * in the list. If it would not be allowed, stop". The first event is added unchecked.
 */
function resolveAuthConflict(
  rules: RoomVersionRules,
  key: StateMapKey,
  candidates: readonly Candidate[],
  authEvents: ReadonlyMap<StateMapKey, RoomEvent>,
): Candidate {
  const ascending = [...candidates].sort((a, b) => -deepestFirst(a, b));
  // Synapse: R here is the auth state restricted to the auth event types of the conflicting events,
  // plus the conflict's own key. The rules read nothing else, so this is R as far as they can tell.
  const state = new Map<StateMapKey, RoomEvent>();
  for (const candidate of candidates) {
    for (const [type, stateKey] of authTypesForEvent(rules, candidate.event)) {
      const authKey = stateMapKey(type, stateKey);
      const event = authEvents.get(authKey);
      if (event) state.set(authKey, event);
    }
  }
  let accepted = ascending[0]!;
  for (const next of ascending.slice(1)) {
    state.set(key, accepted.event);
    if (!passesAuth(rules, next.event, state)) break;
    accepted = next;
  }
  return accepted;
}

/**
 * "Pick the event with the highest depth and lowest sha1(event_id) that passes authentication in
 * R." Synapse: when none passes, the last in that order (lowest depth, highest sha1).
 */
function resolveOtherConflict(rules: RoomVersionRules, candidates: readonly Candidate[], authEvents: ReadonlyMap<StateMapKey, RoomEvent>): Candidate {
  const ordered = [...candidates].sort(deepestFirst);
  return ordered.find((candidate) => passesAuth(rules, candidate.event, authEvents)) ?? ordered[ordered.length - 1]!;
}

/** Synapse checks only the rules that depend on state, and m.room.create has none. */
function passesAuth(rules: RoomVersionRules, event: RoomEvent, state: ReadonlyMap<StateMapKey, RoomEvent>): boolean {
  return event.type === "m.room.create" || checkAuth(rules, event, state).allowed;
}

/** Highest depth first, then lowest sha1(event_id): Synapse's `_ordered_events`. */
function deepestFirst(a: Candidate, b: Candidate): number {
  if (a.depth !== b.depth) return b.depth - a.depth;
  return a.sha1 < b.sha1 ? -1 : a.sha1 > b.sha1 ? 1 : 0;
}

/** The event's depth (a PDU field RoomEvent does not name); missing counts as 0. */
function depthOf(event: RoomEvent): number {
  const depth = event.depth;
  return typeof depth === "number" && Number.isFinite(depth) ? Math.trunc(depth) : 0;
}

/** "sha1(event_id)": the hex SHA-1 of the event ID's UTF-8 bytes, compared as text (Synapse's `hexdigest()`). */
function sha1Hex(eventId: string): string {
  return createHash("sha1").update(eventId, "utf8").digest("hex");
}

function typeOf(key: StateMapKey): string {
  return splitStateMapKey(key)[0];
}

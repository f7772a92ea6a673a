// State resolution v2 (room versions 2–11, rooms/fragments/v2-state-res.md) and v2.1 (room
// version 12, rooms/v12.md#state-resolution, MSC4297). v2.1 differs in two places, both marked:
// the first iterative auth checks start from an empty state map, and the full conflicted set also
// holds the conflicted state subgraph.

import { compareByCodePoint } from "./canonical-json.ts";
import { authTypesForEvent } from "./auth-events-selection.ts";
import { checkAuth, userPowerLevel } from "./auth-rules.ts";
import { createEventIdOfRoom } from "./event-hashes.ts";
import { referencedIds, type RoomEvent } from "./pdu.ts";
import { stateMapKey, type StateMap, type StateMapKey } from "./room-state.ts";
import { roomVersionRules, type RoomVersionRules } from "./room-versions.ts";
import { resolveStateV1 } from "./state-resolution-v1.ts";

/** Finds an event by ID (synchronously: the caller loads what resolution may need beforehand). */
export type EventLookup = (eventId: string) => RoomEvent | undefined;

export interface StateResolutionOptions {
  /** Whether an event was rejected; rejected auth events are never used in the iterative auth checks. */
  isRejected?: (eventId: string) => boolean;
}

/**
 * Resolves a set of room states into one (the "resolution" of {S1, S2, …}). Events that cannot be
 * looked up are left out of the conflicted set, as no one can check them.
 */
export function resolveState(
  roomVersion: string | RoomVersionRules,
  stateSets: ReadonlyArray<ReadonlyMap<StateMapKey, string>>,
  fetchEvent: EventLookup,
  options: StateResolutionOptions = {},
): StateMap {
  const rules = roomVersionRules(roomVersion);
  if (rules.stateResolution === "v1") return resolveStateV1(rules, stateSets, fetchEvent, options);
  if (stateSets.length === 0) return new Map();
  if (stateSets.length === 1) return new Map(stateSets[0]);
  const isRejected = options.isRejected ?? (() => false);

  const { unconflicted, conflicted } = splitConflicts(stateSets);
  if (conflicted.size === 0) return unconflicted;

  // Full conflicted set = conflicted state set ∪ auth difference (∪ conflicted state subgraph, v2.1).
  const fullConflictedSet = new Set<string>(conflicted);
  for (const id of authDifference(stateSets, fetchEvent)) fullConflictedSet.add(id);
  if (rules.stateResolution === "v2.1") {
    for (const id of conflictedStateSubgraph(conflicted, fetchEvent)) fullConflictedSet.add(id);
  }
  for (const id of fullConflictedSet) if (!fetchEvent(id)) fullConflictedSet.delete(id);

  // 1. Select the set X of all power events that appear in the full conflicted set. For each such
  //    power event P, enlarge X by adding the events in the auth chain of P which also belong to
  //    the full conflicted set. Sort X into a list using the reverse topological power ordering.
  const powerEvents = new Set<string>();
  for (const id of fullConflictedSet) if (isPowerEvent(fetchEvent(id)!)) powerEvents.add(id);
  const graph = conflictedAuthGraph(powerEvents, fullConflictedSet, fetchEvent);
  const sortedPowerEvents = reverseTopologicalPowerOrder(rules, graph, fetchEvent);

  // 2. Apply the iterative auth checks algorithm, starting from the unconflicted state map
  //    (v2.1: from an *empty* state map), to that list to get a partially resolved state.
  const initial = rules.stateResolution === "v2.1" ? new Map<StateMapKey, string>() : new Map(unconflicted);
  const partial = iterativeAuthChecks(rules, sortedPowerEvents, initial, fetchEvent, isRejected);

  // 3. Take all remaining events that weren't picked in step 1 and order them by the mainline
  //    ordering based on the power level in the partially resolved state obtained in step 2.
  const remaining = [...fullConflictedSet].filter((id) => !graph.has(id));
  const sortedRemaining = mainlineOrder(remaining, partial.get(stateMapKey("m.room.power_levels", "")), fetchEvent);

  // 4. Apply the iterative auth checks algorithm on the partial resolved state and that list.
  const resolved = iterativeAuthChecks(rules, sortedRemaining, partial, fetchEvent, isRejected);

  // 5. Update the result by replacing any event with the event with the same key from the
  //    unconflicted state map, if such an event exists, to get the final resolved state.
  for (const [key, id] of unconflicted) resolved.set(key, id);
  return resolved;
}

/**
 * "If a given key K is present in every Si with the same value V in each state map, then the pair
 * (K, V) belongs to the unconflicted state map. Otherwise, V belongs to the conflicted state set."
 */
function splitConflicts(stateSets: ReadonlyArray<ReadonlyMap<StateMapKey, string>>): { unconflicted: StateMap; conflicted: Set<string> } {
  const unconflicted: StateMap = new Map();
  const conflicted = new Set<string>();
  const keys = new Set<StateMapKey>();
  for (const set of stateSets) for (const key of set.keys()) keys.add(key);
  for (const key of keys) {
    const first = stateSets[0]!.get(key);
    if (first !== undefined && stateSets.every((set) => set.get(key) === first)) {
      unconflicted.set(key, first);
    } else {
      for (const set of stateSets) {
        const id = set.get(key);
        if (id !== undefined) conflicted.add(id);
      }
    }
  }
  return { unconflicted, conflicted };
}

/** The auth chain of a set of events: their auth events, theirs, and so on (not the events themselves). */
export function authChainOf(eventIds: Iterable<string>, fetchEvent: EventLookup): Set<string> {
  const chain = new Set<string>();
  const stack: string[] = [];
  for (const id of eventIds) {
    const event = fetchEvent(id);
    if (event) stack.push(...referencedIds(event.auth_events));
  }
  while (stack.length > 0) {
    const id = stack.pop()!;
    if (chain.has(id)) continue;
    chain.add(id);
    const event = fetchEvent(id);
    if (event) for (const authId of referencedIds(event.auth_events)) if (!chain.has(authId)) stack.push(authId);
  }
  return chain;
}

/** "∪ Ci − ∩ Ci", where Ci is the union of the auth chains of the events in Si. */
function authDifference(stateSets: ReadonlyArray<ReadonlyMap<StateMapKey, string>>, fetchEvent: EventLookup): Set<string> {
  const chains = stateSets.map((set) => authChainOf(set.values(), fetchEvent));
  const difference = new Set<string>();
  for (const chain of chains) {
    for (const id of chain) if (!chains.every((other) => other.has(id))) difference.add(id);
  }
  return difference;
}

/**
 * v2.1: "Starting from an event in the conflicted state set and following auth_events edges may
 * lead to another event in the conflicted state set. The union of all such paths between any pair
 * of events in the conflicted state set (including endpoints) forms ... the conflicted state
 * subgraph." That is: every event reachable from a conflicted event that can itself reach a
 * conflicted event.
 */
function conflictedStateSubgraph(conflicted: ReadonlySet<string>, fetchEvent: EventLookup): Set<string> {
  const reachesConflicted = new Map<string, boolean>();
  // Iterative post-order walk over the auth DAG below the conflicted events.
  const reaches = (start: string): boolean => {
    const known = reachesConflicted.get(start);
    if (known !== undefined) return known;
    const stack: Array<{ id: string; next: number }> = [{ id: start, next: 0 }];
    const onStack = new Set([start]);
    while (stack.length > 0) {
      const frame = stack[stack.length - 1]!;
      const authEvents = referencedIds(fetchEvent(frame.id)?.auth_events ?? []);
      if (frame.next < authEvents.length) {
        const child = authEvents[frame.next++]!;
        // onStack: a malformed graph with a cycle must not loop forever.
        if (!reachesConflicted.has(child) && !onStack.has(child)) {
          stack.push({ id: child, next: 0 });
          onStack.add(child);
        }
        continue;
      }
      reachesConflicted.set(frame.id, conflicted.has(frame.id) || authEvents.some((child) => reachesConflicted.get(child) === true));
      onStack.delete(frame.id);
      stack.pop();
    }
    return reachesConflicted.get(start) === true;
  };
  const subgraph = new Set<string>();
  for (const id of conflicted) subgraph.add(id);
  for (const id of authChainOf(conflicted, fetchEvent)) if (reaches(id)) subgraph.add(id);
  return subgraph;
}

/**
 * "A power event is a state event with type m.room.power_levels or m.room.join_rules, or a state
 * event with type m.room.member where the membership is leave or ban and the sender does not match
 * the state_key."
 */
export function isPowerEvent(event: RoomEvent): boolean {
  if (typeof event.state_key !== "string") return false;
  if (event.type === "m.room.power_levels" || event.type === "m.room.join_rules") return true;
  if (event.type === "m.room.member") {
    const membership = event.content.membership;
    return (membership === "leave" || membership === "ban") && event.sender !== event.state_key;
  }
  return false;
}

/**
 * X (step 1) as a graph: each power event of the full conflicted set and every event of its auth
 * chain in the full conflicted set, each mapped to the events of X it comes after. An edge is kept
 * even when the auth chain passes through events outside the full conflicted set, so the order is
 * a topological order of the whole auth DAG restricted to X. (Under v2.1 the conflicted state
 * subgraph guarantees such paths never leave the set.)
 */
function conflictedAuthGraph(powerEvents: ReadonlySet<string>, fullConflictedSet: ReadonlySet<string>, fetchEvent: EventLookup): Map<string, Set<string>> {
  // For an event outside the full conflicted set: the nearest full-conflicted-set events below it.
  const nearestBelow = new Map<string, Set<string>>();
  const nearestFrom = (start: string): Set<string> => {
    if (nearestBelow.has(start)) return nearestBelow.get(start)!;
    const stack: Array<{ id: string; next: number }> = [{ id: start, next: 0 }];
    const onStack = new Set([start]);
    while (stack.length > 0) {
      const frame = stack[stack.length - 1]!;
      const authEvents = referencedIds(fetchEvent(frame.id)?.auth_events ?? []);
      if (frame.next < authEvents.length) {
        const child = authEvents[frame.next++]!;
        if (!fullConflictedSet.has(child) && !nearestBelow.has(child) && !onStack.has(child)) {
          stack.push({ id: child, next: 0 });
          onStack.add(child);
        }
        continue;
      }
      const found = new Set<string>();
      for (const child of authEvents) {
        if (fullConflictedSet.has(child)) found.add(child);
        else for (const id of nearestBelow.get(child) ?? []) found.add(id);
      }
      nearestBelow.set(frame.id, found);
      onStack.delete(frame.id);
      stack.pop();
    }
    return nearestBelow.get(start)!;
  };

  const graph = new Map<string, Set<string>>();
  const stack = [...powerEvents];
  while (stack.length > 0) {
    const id = stack.pop()!;
    if (graph.has(id)) continue;
    const edges = new Set<string>();
    for (const authId of referencedIds(fetchEvent(id)?.auth_events ?? [])) {
      if (fullConflictedSet.has(authId)) edges.add(authId);
      else for (const below of nearestFrom(authId)) edges.add(below);
    }
    graph.set(id, edges);
    for (const below of edges) if (!graph.has(below)) stack.push(below);
  }
  return graph;
}

/**
 * The power level of an event's sender "when looking at their ... auth_events": from the power
 * levels event among its auth events (and the create event among them, or named by the room ID).
 */
function senderPowerLevelFromAuthEvents(rules: RoomVersionRules, event: RoomEvent, fetchEvent: EventLookup): number {
  let powerLevels: RoomEvent | undefined;
  let create: RoomEvent | undefined;
  for (const authId of referencedIds(event.auth_events)) {
    const authEvent = fetchEvent(authId);
    if (authEvent?.state_key !== "") continue;
    if (authEvent.type === "m.room.power_levels") powerLevels ??= authEvent;
    else if (authEvent.type === "m.room.create") create ??= authEvent;
  }
  if (!create && rules.roomIdIsCreateEventId && typeof event.room_id === "string") create = fetchEvent(createEventIdOfRoom(event.room_id));
  return userPowerLevel(rules, event.sender, create, powerLevels);
}

interface TieBreak {
  id: string;
  power: number;
  ts: number;
}

/** x < y if x's sender has greater power, or equal power and x is older, or both equal and x's event_id is less. */
function powerOrderLess(x: TieBreak, y: TieBreak): boolean {
  if (x.power !== y.power) return x.power > y.power;
  if (x.ts !== y.ts) return x.ts < y.ts;
  return compareByCodePoint(x.id, y.id) < 0;
}

/**
 * "The reverse topological power ordering of a set of events is the lexicographically smallest
 * topological ordering based on the DAG formed by auth events", earliest first: Kahn's algorithm,
 * choosing the smallest ready event at each step.
 */
function reverseTopologicalPowerOrder(rules: RoomVersionRules, graph: ReadonlyMap<string, ReadonlySet<string>>, fetchEvent: EventLookup): string[] {
  const details = new Map<string, TieBreak>();
  const remainingEdges = new Map<string, number>();
  const dependents = new Map<string, string[]>();
  for (const [id, edges] of graph) {
    const event = fetchEvent(id)!;
    details.set(id, { id, power: senderPowerLevelFromAuthEvents(rules, event, fetchEvent), ts: event.origin_server_ts });
    remainingEdges.set(id, edges.size);
    for (const below of edges) {
      let list = dependents.get(below);
      if (!list) dependents.set(below, (list = []));
      list.push(id);
    }
  }
  const ready = new MinHeap<TieBreak>(powerOrderLess);
  for (const [id, count] of remainingEdges) if (count === 0) ready.push(details.get(id)!);
  const sorted: string[] = [];
  while (ready.size > 0) {
    const next = ready.pop()!;
    sorted.push(next.id);
    for (const dependent of dependents.get(next.id) ?? []) {
      const left = remainingEdges.get(dependent)! - 1;
      remainingEdges.set(dependent, left);
      if (left === 0) ready.push(details.get(dependent)!);
    }
  }
  return sorted;
}

/** The m.room.power_levels event among an event's auth events. */
function powerLevelsAuthEvent(event: RoomEvent, fetchEvent: EventLookup): string | undefined {
  for (const authId of referencedIds(event.auth_events)) {
    const authEvent = fetchEvent(authId);
    if (authEvent?.type === "m.room.power_levels" && authEvent.state_key === "") return authId;
  }
  return undefined;
}

/**
 * Mainline ordering based on the power levels event P: events whose chain of power levels auth
 * events meets P's mainline at an older power levels event (greater mainline position) come first;
 * events that never meet it (position ∞) come before all; ties by origin_server_ts, then event_id.
 */
function mainlineOrder(eventIds: readonly string[], powerLevelsId: string | undefined, fetchEvent: EventLookup): string[] {
  const mainline = new Map<string, number>();
  for (let id = powerLevelsId, i = 0; id !== undefined && !mainline.has(id); i++) {
    mainline.set(id, i);
    const event = fetchEvent(id);
    id = event ? powerLevelsAuthEvent(event, fetchEvent) : undefined;
  }
  const positionOf = new Map<string, number>();
  // The mainline position of e: the index in P's mainline of the first of e1, e2, … (the chain of
  // power levels auth events, not including e itself) found there, else ∞.
  const mainlinePosition = (event: RoomEvent): number => {
    const walked: string[] = [];
    let position = Number.POSITIVE_INFINITY;
    for (let id = powerLevelsAuthEvent(event, fetchEvent); id !== undefined; ) {
      const known = mainline.get(id) ?? positionOf.get(id);
      if (known !== undefined) {
        position = known;
        break;
      }
      if (walked.includes(id)) break;
      walked.push(id);
      const next = fetchEvent(id);
      id = next ? powerLevelsAuthEvent(next, fetchEvent) : undefined;
    }
    // Every power levels event walked to reach the answer has the same position.
    for (const id of walked) positionOf.set(id, position);
    return position;
  };
  const keyed = eventIds.map((id) => {
    const event = fetchEvent(id)!;
    return { id, position: mainlinePosition(event), ts: event.origin_server_ts };
  });
  keyed.sort((x, y) => {
    if (x.position !== y.position) return x.position > y.position ? -1 : 1;
    if (x.ts !== y.ts) return x.ts - y.ts;
    return compareByCodePoint(x.id, y.id);
  });
  return keyed.map((entry) => entry.id);
}

/**
 * "The iterative auth checks algorithm takes as input an initial room state and a sorted list of
 * state events, and constructs a new room state by iterating through the event list and applying
 * the state event to the room state if the state event is allowed by the authorization rules. ...
 * If a (event_type, state_key) key that is required for checking the authorization rules is not
 * present in the state, then the appropriate state event from the event's auth_events is used if
 * the auth event is not rejected."
 */
function iterativeAuthChecks(
  rules: RoomVersionRules,
  eventIds: readonly string[],
  initial: StateMap,
  fetchEvent: EventLookup,
  isRejected: (eventId: string) => boolean,
): StateMap {
  const state = initial;
  for (const id of eventIds) {
    const event = fetchEvent(id);
    if (!event || typeof event.state_key !== "string") continue;
    const authState = new Map<StateMapKey, RoomEvent>();
    for (const authId of referencedIds(event.auth_events)) {
      const authEvent = fetchEvent(authId);
      if (authEvent && typeof authEvent.state_key === "string" && !isRejected(authId)) {
        authState.set(stateMapKey(authEvent.type, authEvent.state_key), authEvent);
      }
    }
    // v12: the create event is never an auth event; the room ID names it.
    if (rules.roomIdIsCreateEventId && event.type !== "m.room.create" && typeof event.room_id === "string") {
      const createId = createEventIdOfRoom(event.room_id);
      const create = fetchEvent(createId);
      if (create && !isRejected(createId)) authState.set(stateMapKey("m.room.create", ""), create);
    }
    for (const [type, stateKey] of authTypesForEvent(rules, event)) {
      const key = stateMapKey(type, stateKey);
      const stateId = state.get(key);
      if (stateId === undefined) continue;
      const stateEvent = fetchEvent(stateId);
      if (stateEvent && !isRejected(stateId)) authState.set(key, stateEvent);
    }
    if (checkAuth(rules, event, authState).allowed) state.set(stateMapKey(event.type, event.state_key), id);
  }
  return state;
}

/** A binary heap ordered by `less`; the smallest comes out first. */
class MinHeap<T> {
  private readonly items: T[] = [];
  constructor(private readonly less: (a: T, b: T) => boolean) {}

  get size(): number {
    return this.items.length;
  }

  push(item: T): void {
    const items = this.items;
    items.push(item);
    let i = items.length - 1;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!this.less(items[i]!, items[parent]!)) break;
      [items[i], items[parent]] = [items[parent]!, items[i]!];
      i = parent;
    }
  }

  pop(): T | undefined {
    const items = this.items;
    const top = items[0];
    const last = items.pop();
    if (items.length > 0 && last !== undefined) {
      items[0] = last;
      let i = 0;
      for (;;) {
        const left = 2 * i + 1;
        const right = left + 1;
        let smallest = i;
        if (left < items.length && this.less(items[left]!, items[smallest]!)) smallest = left;
        if (right < items.length && this.less(items[right]!, items[smallest]!)) smallest = right;
        if (smallest === i) break;
        [items[i], items[smallest]] = [items[smallest]!, items[i]!];
        i = smallest;
      }
    }
    return top;
  }
}

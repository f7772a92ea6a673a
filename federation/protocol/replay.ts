// Replaying a room: events in an order where each follows its prev_events and auth_events, each
// processed as a server persists it:
//   - the state before an event is the resolution of the states after its prev_events
//     (https://spec.matrix.org/latest/rooms/v2/#state-resolution: "The room state S(E) before E
//     is the resolution of the set of states {S′(E1), S′(E2), …} after the prev_events");
//   - it must pass the authorization rules against its auth events (check 4 on receipt) and
//     against the state before it (check 5), else it is rejected;
//   - a rejected event changes nothing: the state after it is the state before it, and it never
//     becomes a forward extremity.
// The room's state is the resolution of the states after its forward extremities.
//
// Format, signature and hash checks (1–3) are assumed done; soft failure (check 6) concerns what
// clients see, not state, so it is not modelled.

import { authTypesForEvent } from "./auth-events-selection.ts";
import { checkAuth, checkAuthAgainstAuthEvents, type AuthDecision } from "./auth-rules.ts";
import { referencedIds, type RoomEvent } from "./pdu.ts";
import { stateMapKey, type StateMap, type StateMapKey } from "./room-state.ts";
import { roomVersionRules, type RoomVersionRules } from "./room-versions.ts";
import { resolveState } from "./state-resolution.ts";

export class ReplayError extends Error {
  override name = "ReplayError";
}

export interface ReplayResult {
  /** The resolved state at the forward extremities. */
  state: StateMap;
  /** Rejected event IDs, in the order they were processed. */
  rejected: string[];
  /** Why each rejected event was rejected. */
  rejections: Map<string, string>;
  /** The state after each event (for a rejected event, the state before it). */
  stateAfter: Map<string, StateMap>;
  /** Accepted events that no accepted event names as a prev_event. */
  forwardExtremities: string[];
}

/**
 * The state an event is checked against in check 5: the events of `state` the auth rules may read
 * for it (the auth events selection, and always the create event).
 */
export function authStateFromState(
  roomVersion: string | RoomVersionRules,
  event: RoomEvent,
  state: ReadonlyMap<StateMapKey, string>,
  fetchEvent: (eventId: string) => RoomEvent | undefined,
): Map<StateMapKey, RoomEvent> {
  const authState = new Map<StateMapKey, RoomEvent>();
  const keys = authTypesForEvent(roomVersion, event).map(([type, stateKey]) => stateMapKey(type, stateKey));
  keys.push(stateMapKey("m.room.create", ""));
  for (const key of keys) {
    const id = state.get(key);
    const found = id === undefined ? undefined : fetchEvent(id);
    if (found) authState.set(key, found);
  }
  return authState;
}

export function replayRoom(roomVersion: string | RoomVersionRules, events: readonly RoomEvent[]): ReplayResult {
  const rules = roomVersionRules(roomVersion);
  const byId = new Map<string, RoomEvent>();
  const rejectedIds = new Set<string>();
  const rejections = new Map<string, string>();
  const stateAfter = new Map<string, StateMap>();
  const fetchEvent = (id: string) => byId.get(id);
  const isRejected = (id: string) => rejectedIds.has(id);

  for (const event of events) {
    if (byId.has(event.event_id)) throw new ReplayError(`event ${event.event_id} appears twice`);
    const prevEvents = referencedIds(event.prev_events);
    for (const prev of prevEvents) {
      if (!stateAfter.has(prev)) throw new ReplayError(`event ${event.event_id} comes before its prev_event ${prev}`);
    }
    for (const authId of referencedIds(event.auth_events)) {
      if (!byId.has(authId)) throw new ReplayError(`event ${event.event_id} comes before its auth event ${authId}`);
    }

    const stateBefore =
      prevEvents.length === 1
        ? new Map(stateAfter.get(prevEvents[0]!)!)
        : resolveState(rules, prevEvents.map((prev) => stateAfter.get(prev)!), fetchEvent, { isRejected });
    byId.set(event.event_id, event);

    let decision: AuthDecision = checkAuthAgainstAuthEvents(rules, event, (id) => {
      const found = byId.get(id);
      return found && id !== event.event_id ? { event: found, rejected: rejectedIds.has(id) } : undefined;
    });
    if (decision.allowed) {
      decision = checkAuth(rules, event, authStateFromState(rules, event, stateBefore, fetchEvent));
      if (!decision.allowed) decision = { allowed: false, reason: `against the state before it: ${decision.reason}` };
    } else {
      decision = { allowed: false, reason: `against its auth events: ${decision.reason}` };
    }

    if (!decision.allowed) {
      rejectedIds.add(event.event_id);
      rejections.set(event.event_id, decision.reason);
      stateAfter.set(event.event_id, stateBefore);
      continue;
    }
    if (typeof event.state_key === "string") stateBefore.set(stateMapKey(event.type, event.state_key), event.event_id);
    stateAfter.set(event.event_id, stateBefore);
  }

  const referenced = new Set<string>();
  for (const event of events) {
    if (!rejectedIds.has(event.event_id)) for (const prev of referencedIds(event.prev_events)) referenced.add(prev);
  }
  const forwardExtremities = events.map((event) => event.event_id).filter((id) => !rejectedIds.has(id) && !referenced.has(id));
  const state = resolveState(rules, forwardExtremities.map((id) => stateAfter.get(id)!), fetchEvent, { isRejected });
  return { state, rejected: [...rejectedIds], rejections, stateAfter, forwardExtremities };
}

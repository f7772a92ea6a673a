// Auth events selection: https://spec.matrix.org/latest/server-server-api/#auth-events-selection
//
// "The auth_events for the m.room.create event in a room is empty; for other events, it should be
// the following subset of the room state:
//  - Depending on the room version, the m.room.create event. [v1–11; never in v12]
//  - The current m.room.power_levels event, if any.
//  - The sender's current m.room.member event, if any.
//  - If type is m.room.member:
//    - The target's current m.room.member event, if any.
//    - If membership is join, invite or knock, the current m.room.join_rules event, if any.
//    - If membership is invite and content contains a third_party_invite property, the current
//      m.room.third_party_invite event with state_key matching content.third_party_invite.signed.token, if any.
//    - If membership is join, content.join_authorised_via_users_server is present, and the room
//      version supports restricted rooms, then the m.room.member event with state_key matching
//      content.join_authorised_via_users_server."

import { roomVersionRules, type RoomVersionRules } from "./room-versions.ts";
import { stateMapKey, type StateMapKey } from "./room-state.ts";

export interface AuthSelectionInput {
  type: string;
  sender: string;
  state_key?: string;
  content: Record<string, unknown>;
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** The (type, state_key) pairs whose current state events are the event's auth events. */
export function authTypesForEvent(roomVersion: string | RoomVersionRules, event: AuthSelectionInput): Array<[type: string, stateKey: string]> {
  const rules = roomVersionRules(roomVersion);
  if (event.type === "m.room.create") return [];
  const types: Array<[string, string]> = [];
  const seen = new Set<StateMapKey>();
  const add = (type: string, stateKey: string) => {
    const key = stateMapKey(type, stateKey);
    if (!seen.has(key)) {
      seen.add(key);
      types.push([type, stateKey]);
    }
  };
  if (rules.createEventInAuthEvents) add("m.room.create", "");
  add("m.room.power_levels", "");
  add("m.room.member", event.sender);
  if (event.type === "m.room.member" && typeof event.state_key === "string") {
    add("m.room.member", event.state_key);
    const membership = event.content.membership;
    if (membership === "join" || membership === "invite" || membership === "knock") add("m.room.join_rules", "");
    const thirdPartyInvite = event.content.third_party_invite;
    if (membership === "invite" && isObject(thirdPartyInvite) && isObject(thirdPartyInvite.signed)) {
      const token = thirdPartyInvite.signed.token;
      if (typeof token === "string") add("m.room.third_party_invite", token);
    }
    const authorisingUser = event.content.join_authorised_via_users_server;
    if (membership === "join" && rules.restrictedJoinRule && typeof authorisingUser === "string") {
      add("m.room.member", authorisingUser);
    }
  }
  return types;
}

/** The auth_events for a new event: the IDs of the selected events present in `state`. */
export function selectAuthEvents(
  roomVersion: string | RoomVersionRules,
  event: AuthSelectionInput,
  state: ReadonlyMap<StateMapKey, string>,
): string[] {
  const ids: string[] = [];
  for (const [type, stateKey] of authTypesForEvent(roomVersion, event)) {
    const id = state.get(stateMapKey(type, stateKey));
    if (id !== undefined) ids.push(id);
  }
  return ids;
}

// Room state: a map of (event_type, state_key) to an event ID (or to the event itself).
// https://spec.matrix.org/latest/server-server-api/#room-state-resolution

/** The key of a state map entry: the event type and state key, joined by a NUL (which neither may hold). */
export type StateMapKey = string;

/** Room state: (event_type, state_key) → event ID. */
export type StateMap = Map<StateMapKey, string>;

export function stateMapKey(type: string, stateKey: string): StateMapKey {
  return `${type}\u0000${stateKey}`;
}

export function splitStateMapKey(key: StateMapKey): [type: string, stateKey: string] {
  const nul = key.indexOf("\u0000");
  return [key.slice(0, nul), key.slice(nul + 1)];
}

/** The state map key of a state event, or undefined for a message event. */
export function stateMapKeyOf(event: { type: string; state_key?: unknown }): StateMapKey | undefined {
  return typeof event.state_key === "string" ? stateMapKey(event.type, event.state_key) : undefined;
}

export interface StateEntry {
  type: string;
  state_key: string;
  event_id: string;
}

/** A state map as a list sorted by type, then state key: a stable form for printing and comparing. */
export function stateEntries(state: ReadonlyMap<StateMapKey, string>): StateEntry[] {
  return [...state.entries()]
    .map(([key, eventId]) => {
      const [type, stateKey] = splitStateMapKey(key);
      return { type, state_key: stateKey, event_id: eventId };
    })
    .sort((a, b) => (a.type === b.type ? compare(a.state_key, b.state_key) : compare(a.type, b.type)));
}

function compare(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

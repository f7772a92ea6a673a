// `parley debug <command> [--room-version V]`: the signed-event core on the command line.
// Each command reads JSON on stdin and prints JSON on stdout; bad input gives a one-line error on
// stderr and exit code 2. The work is done by federation/protocol; this file parses and prints.

import { parseArgs } from "node:util";
import { CanonicalJsonError, canonicalJson, parseStrictJson } from "./protocol/canonical-json.ts";
import { checkAuthAgainstAuthEvents } from "./protocol/auth-rules.ts";
import { checkContentHash, computeEventId } from "./protocol/event-hashes.ts";
import { pduOf, validateRoomEvent, type RoomEvent } from "./protocol/pdu.ts";
import { redactEvent } from "./protocol/redaction.ts";
import { ReplayError, replayRoom } from "./protocol/replay.ts";
import { stateEntries, stateMapKey, type StateMap } from "./protocol/room-state.ts";
import { DEFAULT_ROOM_VERSION, isSupportedRoomVersion, roomVersionRules, SUPPORTED_ROOM_VERSIONS } from "./protocol/room-versions.ts";
import { resolveState } from "./protocol/state-resolution.ts";

export interface DebugResult {
  code: number;
  stdout: string;
  stderr: string;
}

class UsageError extends Error {}

const COMMANDS = ["canonical-json", "event-id", "redact", "check-auth", "resolve-state", "replay"];
const USAGE = `usage: parley debug <${COMMANDS.join("|")}> [--room-version V], with JSON on stdin`;

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function parseInput(stdin: string): unknown {
  if (stdin.trim() === "") throw new UsageError("expected JSON on stdin, got nothing");
  try {
    return parseStrictJson(stdin);
  } catch (err) {
    if (err instanceof CanonicalJsonError) throw new UsageError(`invalid JSON on stdin: ${err.message}`);
    throw err;
  }
}

function requireObject(value: unknown, what: string): Record<string, unknown> {
  if (!isObject(value)) throw new UsageError(`expected ${what} (a JSON object) on stdin`);
  return value;
}

/**
 * An event as the auth rules and state resolution read it. Events carry their event_id as given
 * (test scenarios use readable IDs); a PDU without one gets the ID computed from its hash.
 */
function roomEvent(roomVersion: string, value: unknown, where: string): RoomEvent {
  if (!isObject(value)) throw new UsageError(`${where} must be a JSON object`);
  const withId = typeof value.event_id === "string" ? value : { ...value, event_id: computeEventId(roomVersion, value) };
  const result = validateRoomEvent(withId);
  if (!result.ok) throw new UsageError(`${where}: ${result.reason}`);
  return result.value;
}

function roomEvents(roomVersion: string, value: unknown, where: string): RoomEvent[] {
  if (!Array.isArray(value)) throw new UsageError(`${where} must be an array of events`);
  const events = value.map((item, i) => roomEvent(roomVersion, item, `${where}[${i}]`));
  const seen = new Set<string>();
  for (const event of events) {
    if (seen.has(event.event_id)) throw new UsageError(`${where} holds ${event.event_id} twice`);
    seen.add(event.event_id);
  }
  return events;
}

function checkAuthCommand(roomVersion: string, input: Record<string, unknown>): string {
  const event = roomEvent(roomVersion, input.event, "event");
  // The events the check may look up: the event's auth events (and, in v12, the create event
  // its room ID names). None of them is known to have been rejected.
  const available = new Map(roomEvents(roomVersion, input.auth_events ?? [], "auth_events").map((e) => [e.event_id, e]));
  const decision = checkAuthAgainstAuthEvents(roomVersion, event, (id) => {
    const found = available.get(id);
    return found ? { event: found, rejected: false } : undefined;
  });
  return JSON.stringify(decision);
}

function resolveStateCommand(roomVersion: string, input: Record<string, unknown>): string {
  const byId = new Map(roomEvents(roomVersion, input.events, "events").map((e) => [e.event_id, e]));
  if (!Array.isArray(input.state_sets)) throw new UsageError("state_sets must be an array of arrays of event IDs");
  const stateSets = input.state_sets.map((ids, i): StateMap => {
    if (!Array.isArray(ids)) throw new UsageError(`state_sets[${i}] must be an array of event IDs`);
    const state: StateMap = new Map();
    for (const id of ids) {
      const event = typeof id === "string" ? byId.get(id) : undefined;
      if (!event) throw new UsageError(`state_sets[${i}]: ${JSON.stringify(id)} is not one of the events`);
      if (typeof event.state_key !== "string") throw new UsageError(`state_sets[${i}]: ${event.event_id} is not a state event`);
      const key = stateMapKey(event.type, event.state_key);
      if (state.has(key)) throw new UsageError(`state_sets[${i}] has two events for (${event.type}, ${JSON.stringify(event.state_key)})`);
      state.set(key, event.event_id);
    }
    return state;
  });
  return JSON.stringify({ state: stateEntries(resolveState(roomVersion, stateSets, (id) => byId.get(id))) });
}

function replayCommand(roomVersion: string, input: Record<string, unknown>): string {
  const events = roomEvents(roomVersion, input.events, "events");
  try {
    const result = replayRoom(roomVersion, events);
    return JSON.stringify({ state: stateEntries(result.state), rejected: result.rejected });
  } catch (err) {
    if (err instanceof ReplayError) throw new UsageError(err.message);
    throw err;
  }
}

/** Runs a command; returns what to print on stdout. */
function run(command: string, roomVersion: string, stdin: string): string {
  switch (command) {
    case "canonical-json":
      return canonicalJson(parseInput(stdin));
    case "event-id": {
      const pdu = requireObject(parseInput(stdin), "a PDU");
      // Event IDs are not part of v3+ PDUs: a copy on the input is not hashed (in v1–2 it is the ID).
      const withoutId = pduOf(roomVersion, pdu);
      if (roomVersionRules(roomVersion).eventFormat === "v1" && typeof withoutId.event_id !== "string") {
        throw new UsageError(`a room version ${roomVersion} PDU carries its event_id`);
      }
      const strict = roomVersionRules(roomVersion).strictCanonicalJson;
      return JSON.stringify({ event_id: computeEventId(roomVersion, withoutId), content_hash_ok: checkContentHash(withoutId, { strict }) });
    }
    case "redact":
      return JSON.stringify(redactEvent(roomVersion, requireObject(parseInput(stdin), "an event")));
    case "check-auth":
      return checkAuthCommand(roomVersion, requireObject(parseInput(stdin), `{"event": ..., "auth_events": [...]}`));
    case "resolve-state":
      return resolveStateCommand(roomVersion, requireObject(parseInput(stdin), `{"events": [...], "state_sets": [[...]]}`));
    case "replay":
      return replayCommand(roomVersion, requireObject(parseInput(stdin), `{"events": [...]}`));
    default:
      throw new UsageError(`unknown command ${JSON.stringify(command)}; ${USAGE}`);
  }
}

export async function debugMain(argv: string[], stdin: string): Promise<DebugResult> {
  try {
    let parsed;
    try {
      parsed = parseArgs({ args: argv, allowPositionals: true, options: { "room-version": { type: "string" } } });
    } catch (err) {
      throw new UsageError((err as Error).message);
    }
    const [command, ...extra] = parsed.positionals;
    if (!command) throw new UsageError(USAGE);
    if (extra.length > 0) throw new UsageError(`unexpected argument ${JSON.stringify(extra[0])}`);
    const roomVersion = parsed.values["room-version"] ?? DEFAULT_ROOM_VERSION;
    if (!isSupportedRoomVersion(roomVersion)) {
      throw new UsageError(`room version ${JSON.stringify(roomVersion)} is not supported (supported: ${SUPPORTED_ROOM_VERSIONS.join(", ")})`);
    }
    return { code: 0, stdout: `${run(command, roomVersion, stdin)}\n`, stderr: "" };
  } catch (err) {
    if (err instanceof UsageError || err instanceof CanonicalJsonError) {
      return { code: 2, stdout: "", stderr: `parley debug: ${err.message.replace(/\s*\n\s*/g, " ")}\n` };
    }
    throw err;
  }
}

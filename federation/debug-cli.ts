// `parley debug <command> [--room-version V]`: the signed-event core on the command line.
// Each command reads JSON on stdin and prints JSON on stdout; bad input gives a one-line error on
// stderr and exit code 2. The work is done by federation/protocol; this file parses and prints.

import { parseArgs } from "node:util";
import { CanonicalJsonError, canonicalJson, parseStrictJson } from "./protocol/canonical-json.ts";
import { checkContentHash, computeEventId } from "./protocol/event-hashes.ts";
import { redactEvent } from "./protocol/redaction.ts";
import { DEFAULT_ROOM_VERSION, isSupportedRoomVersion, SUPPORTED_ROOM_VERSIONS } from "./protocol/room-versions.ts";

export interface DebugResult {
  code: number;
  stdout: string;
  stderr: string;
}

class UsageError extends Error {}

const COMMANDS = ["canonical-json", "event-id", "redact"];
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

/** Runs a command; returns what to print on stdout. */
function run(command: string, roomVersion: string, stdin: string): string {
  switch (command) {
    case "canonical-json":
      return canonicalJson(parseInput(stdin));
    case "event-id": {
      const pdu = requireObject(parseInput(stdin), "a PDU");
      // Event IDs are not part of v4+ PDUs: a copy on the input is not hashed.
      const { event_id: _id, ...withoutId } = pdu;
      return JSON.stringify({ event_id: computeEventId(roomVersion, withoutId), content_hash_ok: checkContentHash(withoutId) });
    }
    case "redact":
      return JSON.stringify(redactEvent(roomVersion, requireObject(parseInput(stdin), "an event")));
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

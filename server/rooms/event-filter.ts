// RoomEventFilter: which events of a room a request wants.
// https://spec.matrix.org/latest/client-server-api/#filtering (data/api/client-server/definitions/room_event_filter.yaml)
import { z } from "zod";
import { MatrixError } from "../http/errors.ts";
import { parseJsonFromOthers } from "../http/safe-json.ts";

export interface RoomEventFilter {
  limit?: number;
  types?: string[];
  not_types?: string[];
  senders?: string[];
  not_senders?: string[];
  contains_url?: boolean;
  lazy_load_members?: boolean;
  include_redundant_members?: boolean;
}

const filterSchema = z.looseObject({
  limit: z.int().optional(),
  types: z.array(z.string()).optional(),
  not_types: z.array(z.string()).optional(),
  senders: z.array(z.string()).optional(),
  not_senders: z.array(z.string()).optional(),
  contains_url: z.boolean().optional(),
  lazy_load_members: z.boolean().optional(),
  include_redundant_members: z.boolean().optional(),
});

/** Parses the `filter` query parameter (a JSON RoomEventFilter). */
export function parseRoomEventFilter(text: string | undefined): RoomEventFilter {
  if (text === undefined || text === "") return {};
  let value: unknown;
  try {
    // The same reader as request bodies: nesting past the limit is 400 M_BAD_JSON.
    value = parseJsonFromOthers(text, { what: "filter" });
  } catch (err) {
    if (err instanceof MatrixError && err.errcode === "M_NOT_JSON") throw new MatrixError(400, "M_INVALID_PARAM", "filter is not valid JSON");
    throw err;
  }
  const parsed = filterSchema.safeParse(value);
  if (!parsed.success) throw new MatrixError(400, "M_INVALID_PARAM", `filter: ${parsed.error.issues[0]?.message ?? "invalid"}`);
  return parsed.data as RoomEventFilter;
}

/**
 * `*` matches any run of characters in type filters ("m.room.*"); nothing else is special. Matched
 * greedily, letting the last star take one more character on a mismatch: at most pattern length ×
 * type length steps. (A JS RegExp backtracks: `*a*a*a…b` against a long type once held the event loop
 * for longer than we waited, from one request's filter.)
 */
export function typeMatches(pattern: string, type: string): boolean {
  if (!pattern.includes("*")) return pattern === type;
  let p = 0;
  let t = 0;
  let star = -1;
  let mark = 0;
  while (t < type.length) {
    if (p < pattern.length && pattern[p] === "*") {
      star = p++;
      mark = t;
    } else if (p < pattern.length && pattern[p] === type[t]) {
      p++;
      t++;
    } else if (star >= 0) {
      p = star + 1;
      t = ++mark;
    } else {
      return false;
    }
  }
  while (p < pattern.length && pattern[p] === "*") p++;
  return p === pattern.length;
}

export function matchesFilter(filter: RoomEventFilter, event: { type: string; sender: string; content: Record<string, unknown> }): boolean {
  if (filter.not_types?.some((p) => typeMatches(p, event.type))) return false;
  if (filter.types && !filter.types.some((p) => typeMatches(p, event.type))) return false;
  if (filter.not_senders?.includes(event.sender)) return false;
  if (filter.senders && !filter.senders.includes(event.sender)) return false;
  if (filter.contains_url !== undefined) {
    const hasUrl = typeof event.content.url === "string";
    if (hasUrl !== filter.contains_url) return false;
  }
  return true;
}

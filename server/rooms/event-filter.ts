// RoomEventFilter: which events of a room a request wants.
// https://spec.matrix.org/latest/client-server-api/#filtering (data/api/client-server/definitions/room_event_filter.yaml)
import { z } from "zod";
import { MatrixError } from "../http/errors.ts";

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
    value = JSON.parse(text);
  } catch {
    throw new MatrixError(400, "M_INVALID_PARAM", "filter is not valid JSON");
  }
  const parsed = filterSchema.safeParse(value);
  if (!parsed.success) throw new MatrixError(400, "M_INVALID_PARAM", `filter: ${parsed.error.issues[0]?.message ?? "invalid"}`);
  return parsed.data as RoomEventFilter;
}

/** `*` matches any run of characters in type filters ("m.room.*"). */
function typeMatches(pattern: string, type: string): boolean {
  if (!pattern.includes("*")) return pattern === type;
  const re = new RegExp(`^${pattern.split("*").map((p) => p.replace(/[.+?^${}()|[\]\\]/g, "\\$&")).join(".*")}$`);
  return re.test(type);
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

// Filters: what a /sync response (and /messages) includes.
// https://spec.matrix.org/latest/client-server-api/#filtering
// https://spec.matrix.org/latest/client-server-api/#lazy-loading-room-members
//
// The schema checks filters loosely: known fields must have the right types, unknown fields are kept
// (a newer client may know them). Matching is pure: no I/O.
import { z } from "zod";
import { dictionary, dictionaryOf, own } from "../../federation/protocol/dictionary.ts";
// `types`/`not_types` entries may end in (or contain) `*`, matching any run of characters.
// https://spec.matrix.org/latest/client-server-api/#post_matrixclientv3useruseridfilter
import { typeMatches } from "../rooms/event-filter.ts";

const strings = z.array(z.string()).optional();
// Room and user IDs are checked for their sigil: a list of anything else is a client's mistake,
// better told than silently matching nothing (as Synapse refuses them too).
const roomIds = z.array(z.string().startsWith("!", "must be room IDs")).optional();
const userIds = z.array(z.string().startsWith("@", "must be user IDs")).optional();
export const eventFilterSchema = z.looseObject({
  limit: z.int().min(0).optional(),
  not_senders: userIds,
  not_types: strings,
  senders: userIds,
  types: strings,
});
export const roomEventFilterSchema = eventFilterSchema.extend({
  contains_url: z.boolean().optional(),
  include_redundant_members: z.boolean().optional(),
  lazy_load_members: z.boolean().optional(),
  not_rooms: roomIds,
  rooms: roomIds,
  unread_thread_notifications: z.boolean().optional(),
});
export const filterSchema = z.looseObject({
  account_data: eventFilterSchema.optional(),
  event_fields: strings,
  event_format: z.enum(["client", "federation"]).optional(),
  presence: eventFilterSchema.optional(),
  room: z
    .looseObject({
      account_data: roomEventFilterSchema.optional(),
      ephemeral: roomEventFilterSchema.optional(),
      include_leave: z.boolean().optional(),
      not_rooms: roomIds,
      rooms: roomIds,
      state: roomEventFilterSchema.optional(),
      timeline: roomEventFilterSchema.optional(),
    })
    .optional(),
});

export type EventFilter = z.infer<typeof eventFilterSchema>;
export type RoomEventFilter = z.infer<typeof roomEventFilterSchema>;
export type Filter = z.infer<typeof filterSchema>;

/** The timeline limit when the filter sets none (what Synapse uses too). */
export const DEFAULT_TIMELINE_LIMIT = 10;
/** The largest timeline a sync returns per room, whatever the filter asks. */
export const MAX_TIMELINE_LIMIT = 1000;

/** What a filter looks at in an event (or presence, account data, ephemeral event). */
export interface Filterable {
  type: string;
  sender?: string;
  room_id?: string;
  content?: unknown;
}

/** Whether `item` passes an event filter (and a room event filter's room and URL conditions). */
export function passesFilter(filter: RoomEventFilter | EventFilter | undefined, item: Filterable): boolean {
  if (!filter) return true;
  const f = filter as RoomEventFilter;
  if (f.not_types?.some((p) => typeMatches(p, item.type))) return false;
  if (f.types && !f.types.some((p) => typeMatches(p, item.type))) return false;
  if (item.sender !== undefined) {
    if (f.not_senders?.includes(item.sender)) return false;
    if (f.senders && !f.senders.includes(item.sender)) return false;
  }
  if (item.room_id !== undefined && !roomAllowed(f, item.room_id)) return false;
  if (f.contains_url !== undefined) {
    const content = item.content as { url?: unknown } | undefined;
    const hasUrl = typeof content?.url === "string";
    if (f.contains_url !== hasUrl) return false;
  }
  return true;
}

/** The `rooms`/`not_rooms` condition alone. */
export function roomAllowed(filter: { rooms?: string[]; not_rooms?: string[] } | undefined, roomId: string): boolean {
  if (!filter) return true;
  if (filter.not_rooms?.includes(roomId)) return false;
  if (filter.rooms && !filter.rooms.includes(roomId)) return false;
  return true;
}

export function timelineLimit(filter: RoomEventFilter | undefined): number {
  return Math.min(filter?.limit ?? DEFAULT_TIMELINE_LIMIT, MAX_TIMELINE_LIMIT);
}

/**
 * `event_fields`: keeps only the listed fields of a client event (dotted paths; `\.` escapes a dot
 * in a field name). No list keeps everything. Field names are the client's: the walk reads own
 * properties only (`content.__proto__` is a key like any other, never the prototype) and builds
 * the result from objects without prototypes, so no name can write anywhere but into the result.
 */
export function pickEventFields<T extends Record<string, unknown>>(event: T, fields: string[] | undefined): T {
  if (!fields) return event;
  const out = dictionary<unknown>();
  const built = new Set<object>([out]);
  for (const field of fields) {
    const path = field.split(/(?<!\\)\./).map((p) => p.replace(/\\\./g, "."));
    let src: unknown = event;
    for (const key of path) src = isObject(src) ? own(src, key) : undefined;
    if (src === undefined) continue;
    let dst = out;
    for (const key of path.slice(0, -1)) {
      const next = dst[key];
      // A field picked whole earlier ("content", then "content.body") is the event's own object:
      // copy it before writing into it, so the event (maybe shared with other syncs) stays as it was.
      let into: Record<string, unknown>;
      if (isObject(next) && built.has(next)) into = next;
      else {
        into = dictionaryOf(isObject(next) ? Object.entries(next) : []);
        built.add(into);
        dst[key] = into;
      }
      dst = into;
    }
    dst[path[path.length - 1]!] = src;
  }
  return out as T;
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

// Pagination tokens of /messages, /context and /relations: opaque to clients.
// https://spec.matrix.org/latest/client-server-api/#get_matrixclientv3roomsroomidmessages
//
// A token is a point in a room's timeline, ordered by (topological_ordering, stream_ordering): the
// point just after the event at that position. Paginating backwards from it returns the events at or
// before it, newest first; forwards, the events after it, oldest first. `t<topological>_<stream>`.
// Backfilled events have negative stream positions (they come before everything the room had).
// A stream token `s<stream>` (what /sync hands out as prev_batch) names the point just after the
// room's last event at or before that stream position; it is converted with the room's events.
import { MatrixError } from "../http/errors.ts";

export interface TimelinePoint {
  topological: number;
  stream: number;
}

/** Before every event. */
export const TIMELINE_START: TimelinePoint = { topological: 0, stream: 0 };
/** After every event. */
export const TIMELINE_END: TimelinePoint = { topological: Number.MAX_SAFE_INTEGER, stream: Number.MAX_SAFE_INTEGER };

export type ParsedToken = { kind: "topological"; point: TimelinePoint } | { kind: "stream"; stream: number };

export function formatToken(point: TimelinePoint): string {
  return `t${point.topological}_${point.stream}`;
}

export function streamToken(stream: number): string {
  return `s${stream}`;
}

export function parseToken(token: string): ParsedToken {
  const t = /^t(\d{1,16})_(-?\d{1,16})$/.exec(token);
  if (t) {
    const point = { topological: Number(t[1]), stream: Number(t[2]) };
    if (Number.isSafeInteger(point.topological) && Number.isSafeInteger(point.stream)) return { kind: "topological", point };
  }
  // A /sync next_batch (`s<events>_<account data>_…`) names a point by its first position, the events stream.
  const s = /^s(\d{1,16})(?:_\d{1,16}){0,16}$/.exec(token);
  if (s && Number.isSafeInteger(Number(s[1]))) return { kind: "stream", stream: Number(s[1]) };
  throw new MatrixError(400, "M_INVALID_PARAM", `Invalid pagination token: ${token.slice(0, 40)}`);
}

/** The point just before an event (backwards from it excludes the event). */
export function pointBefore(event: { topologicalOrdering: number; streamOrdering: number | null }): TimelinePoint {
  return { topological: event.topologicalOrdering, stream: (event.streamOrdering ?? 0) - 1 };
}

/** The point just after an event. */
export function pointAfter(event: { topologicalOrdering: number; streamOrdering: number | null }): TimelinePoint {
  return { topological: event.topologicalOrdering, stream: event.streamOrdering ?? 0 };
}

export function comparePoints(a: TimelinePoint, b: TimelinePoint): number {
  return a.topological !== b.topological ? a.topological - b.topological : a.stream - b.stream;
}

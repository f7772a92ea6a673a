// Stream positions that never skip. Every kind of data /sync delivers is a stream with a position
// that only grows; a sync token holds one position per stream, and `/sync?since=` returns what lies
// past each one. The hard part is the upper bound of a response: a reader must never move a token past
// a position whose transaction is still uncommitted, else the later-committing write is skipped for
// ever. A plain sequence allows exactly that (N+1 may commit before N).
//
// Here a writer takes its position(s) from the `stream_positions` row of its stream as the LAST step
// of its transaction (an upsert that adds to the position). The row lock that takes is held until
// commit, so the next writer of the stream gets its position only after this one has committed:
// positions become visible in order, and whatever the row says is a position at or below which
// everything is committed. The lock serialises only the commit tail of writers of one stream.
// See README.md ("Design notes").
import { sql } from "drizzle-orm";
import { type Database, rowsOf, type Tx } from "../../schema/db.ts";

/** The streams of a sync token, in token order. Never reorder: tokens in clients' hands encode it. */
export const STREAMS = [
  "events",
  "account_data",
  "receipts",
  "presence",
  "typing",
  "to_device",
  "device_lists",
] as const;
export type StreamName = (typeof STREAMS)[number];
export type StreamPositions = Record<StreamName, number>;

/** The database, or an open transaction. */
export type Queryable = Database | Tx;

/**
 * Takes the next `count` positions of `stream` and returns the highest (the range is
 * `(last - count, last]`). Call it in a transaction, after the writes that need no position and just
 * before those that carry it: from here until commit, other writers of the stream wait.
 * Outside a transaction (autocommit) it only reserves positions, which is right for streams whose
 * data lives elsewhere (typing).
 */
export async function advanceStream(q: Queryable, stream: StreamName, count = 1): Promise<number> {
  const rows = rowsOf<{ position: string | number }>(
    await q.execute(sql`insert into stream_positions (stream, position) values (${stream}, ${count})
      on conflict (stream) do update set position = stream_positions.position + ${count}
      returning position`),
  );
  return Number(rows[0]!.position);
}

/** Every stream's current position: a safe upper bound for a sync response. */
export async function readStreamPositions(q: Queryable): Promise<StreamPositions> {
  const rows = rowsOf<{ stream: string; position: string | number }>(
    await q.execute(sql`select stream, position from stream_positions`),
  );
  const positions = zeroPositions();
  for (const r of rows) {
    if ((STREAMS as readonly string[]).includes(r.stream)) positions[r.stream as StreamName] = Number(r.position);
  }
  return positions;
}

export function zeroPositions(): StreamPositions {
  return Object.fromEntries(STREAMS.map((s) => [s, 0])) as StreamPositions;
}

/** The stream-wise maximum. */
export function maxPositions(a: StreamPositions, b: StreamPositions): StreamPositions {
  const out = { ...a };
  for (const s of STREAMS) if (b[s] > out[s]) out[s] = b[s];
  return out;
}

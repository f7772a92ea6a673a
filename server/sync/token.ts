// Sync tokens: one position per stream, as an opaque string `s<events>_<account_data>_...` in the
// order of STREAMS. Positions are rows in the database, so a token stays valid across restarts and
// across the processes sharing one database. A token with fewer positions (from before a stream was
// added) reads the missing ones as 0.
import { invalidParam } from "../http/errors.ts";
import { STREAMS, type StreamPositions, zeroPositions } from "./streams.ts";

const TOKEN = /^s\d{1,16}(_\d{1,16})*$/;

export function encodeSyncToken(positions: StreamPositions): string {
  return `s${STREAMS.map((s) => positions[s]).join("_")}`;
}

/** Parses a `since` token; anything malformed is 400 M_INVALID_PARAM, never a 500. */
export function decodeSyncToken(token: string): StreamPositions {
  if (!TOKEN.test(token)) throw invalidParam("since: not a sync token of this server");
  const parts = token.slice(1).split("_").map(Number);
  if (parts.length > STREAMS.length || parts.some((n) => !Number.isSafeInteger(n))) {
    throw invalidParam("since: not a sync token of this server");
  }
  const positions = zeroPositions();
  STREAMS.forEach((s, i) => {
    positions[s] = parts[i] ?? 0;
  });
  return positions;
}

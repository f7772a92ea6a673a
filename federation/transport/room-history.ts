// Reading a room's history and state from another server: single events, the state at an event,
// auth chains, backfill, missing events, the event nearest a time.
// https://spec.matrix.org/latest/server-server-api/#retrieving-events
// https://spec.matrix.org/latest/server-server-api/#backfilling-and-retrieving-missing-events
// https://spec.matrix.org/latest/server-server-api/#retrieving-event-authorisation-information
//
// The answers are checked for shape only, and bounded: what is not an object where a PDU belongs,
// or is far larger than a PDU may be, is dropped; lists longer than asked for are cut to what was asked.
// The PDUs come back as they arrived, unchecked: formats, signatures, hashes and auth are the
// caller's to check (a peer may answer with anything, including events of another room).

import { z } from "zod";
import { isValidEventId } from "../protocol/identifiers.ts";
import { FederationRequestError, type FederationHttpClient, type FederationResponse } from "./http-client.ts";

/** A PDU as another server sent it: a JSON object, nothing about it checked yet. */
export type UncheckedPdu = Record<string, unknown>;

/** An entry larger than this is no PDU: twice the spec's 65536 bytes (client-server-api, size limits). */
const MAX_UNCHECKED_PDU_BYTES = 2 * 65_536;
/** The spec's caps on what we ask for; a caller asking for more is asking for more than peers give. */
export const MAX_BACKFILL_LIMIT = 100;
export const MAX_MISSING_EVENTS_LIMIT = 20;

const SMALL_TIMEOUT_MS = 20_000;
/**
 * The state of a large room is tens of megabytes. The HTTP client's own bounds apply as well: 60 s
 * for a whole request and 32 MB for an answer (http-client.ts), which the state of the largest
 * rooms exceeds; `/state_ids` and fetching the events one by one is the way round that.
 */
const LARGE_TIMEOUT_MS = 60_000;

export type RoomHistoryFailure = "unreachable" | "timeout" | "not-found" | "forbidden" | "refused" | "bad-response";

/** Why a peer could not answer: another server may, except for a `bad-response` we asked well for. */
export class RoomHistoryError extends Error {
  override name = "RoomHistoryError";
  constructor(
    readonly failure: RoomHistoryFailure,
    readonly server: string,
    message: string,
    /** The peer's status and errcode, when it answered. */
    readonly status?: number,
    readonly errcode?: string,
  ) {
    super(`${server}: ${message}`);
  }
}

export interface MissingEventsQuery {
  /** Events we hold already: the walk stops there. */
  earliest: readonly string[];
  /** Events whose ancestors we are missing. */
  latest: readonly string[];
  /** At most 20 (the peer's cap); 10 by default. */
  limit?: number;
  minDepth?: number;
}

const pduList = z.array(z.unknown());
const eventIdList = z.array(z.string());
const transactionAnswer = z.looseObject({ origin: z.string().optional(), origin_server_ts: z.unknown().optional(), pdus: pduList });
const stateAnswer = z.looseObject({ pdus: pduList, auth_chain: pduList });
const stateIdsAnswer = z.looseObject({ pdu_ids: eventIdList, auth_chain_ids: eventIdList });
const eventAuthAnswer = z.looseObject({ auth_chain: pduList });
const missingEventsAnswer = z.looseObject({ events: pduList });
const timestampAnswer = z.looseObject({ event_id: z.string(), origin_server_ts: z.number().int() });

const enc = encodeURIComponent;

export class RoomHistoryClient {
  constructor(private readonly http: FederationHttpClient) {}

  /** `GET /event/{eventId}`: the event as `server` holds it (possibly redacted). */
  async getEvent(server: string, eventId: string): Promise<UncheckedPdu> {
    const body = parse(server, transactionAnswer, await this.get(server, `/_matrix/federation/v1/event/${enc(eventId)}`, SMALL_TIMEOUT_MS), "event");
    const [pdu] = pdusOf(body.pdus, 1);
    if (!pdu) throw new RoomHistoryError("bad-response", server, "the event answer holds no usable PDU");
    return pdu;
  }

  /** `GET /state_ids/{roomId}?event_id=`: the IDs of the state before the event and of its auth chain. */
  async stateIds(server: string, roomId: string, eventId: string): Promise<{ pduIds: string[]; authChainIds: string[] }> {
    const path = `/_matrix/federation/v1/state_ids/${enc(roomId)}?event_id=${enc(eventId)}`;
    const body = parse(server, stateIdsAnswer, await this.get(server, path, LARGE_TIMEOUT_MS), "state IDs");
    return { pduIds: eventIdsOf(server, body.pdu_ids), authChainIds: eventIdsOf(server, body.auth_chain_ids) };
  }

  /** `GET /state/{roomId}?event_id=`: the state before the event and its auth chain. */
  async state(server: string, roomId: string, eventId: string): Promise<{ pdus: UncheckedPdu[]; authChain: UncheckedPdu[] }> {
    const path = `/_matrix/federation/v1/state/${enc(roomId)}?event_id=${enc(eventId)}`;
    const body = parse(server, stateAnswer, await this.get(server, path, LARGE_TIMEOUT_MS), "state");
    return { pdus: pdusOf(body.pdus), authChain: pdusOf(body.auth_chain) };
  }

  /** `GET /event_auth/{roomId}/{eventId}`: the event's auth chain. */
  async eventAuth(server: string, roomId: string, eventId: string): Promise<UncheckedPdu[]> {
    const path = `/_matrix/federation/v1/event_auth/${enc(roomId)}/${enc(eventId)}`;
    const body = parse(server, eventAuthAnswer, await this.get(server, path, LARGE_TIMEOUT_MS), "auth chain");
    return pdusOf(body.auth_chain);
  }

  /** `GET /backfill/{roomId}?v=…&limit=`: the `from` events and those before them, at most `limit` (≤ 100). */
  async backfill(server: string, roomId: string, fromEventIds: readonly string[], limit: number): Promise<UncheckedPdu[]> {
    const capped = Math.max(0, Math.min(Math.floor(limit), MAX_BACKFILL_LIMIT));
    if (fromEventIds.length === 0 || capped === 0) return [];
    const query = [...fromEventIds.map((id) => `v=${enc(id)}`), `limit=${capped}`].join("&");
    const body = parse(server, transactionAnswer, await this.get(server, `/_matrix/federation/v1/backfill/${enc(roomId)}?${query}`, LARGE_TIMEOUT_MS), "backfill");
    return pdusOf(body.pdus, capped);
  }

  /** `POST /get_missing_events/{roomId}`: ancestors of `latest` down to `earliest`, oldest first. */
  async getMissingEvents(server: string, roomId: string, query: MissingEventsQuery): Promise<UncheckedPdu[]> {
    const limit = Math.max(0, Math.min(Math.floor(query.limit ?? 10), MAX_MISSING_EVENTS_LIMIT));
    const body: Record<string, unknown> = { earliest_events: [...query.earliest], latest_events: [...query.latest], limit };
    if (query.minDepth !== undefined) body.min_depth = query.minDepth;
    const res = await this.send(server, { method: "POST", path: `/_matrix/federation/v1/get_missing_events/${enc(roomId)}`, body }, SMALL_TIMEOUT_MS);
    return pdusOf(parse(server, missingEventsAnswer, res, "missing events").events, limit);
  }

  /** `GET /timestamp_to_event/{roomId}?ts=&dir=`: the event nearest `ts` that `server` holds. */
  async timestampToEvent(server: string, roomId: string, ts: number, dir: "f" | "b"): Promise<{ eventId: string; originServerTs: number }> {
    const path = `/_matrix/federation/v1/timestamp_to_event/${enc(roomId)}?ts=${Math.floor(ts)}&dir=${dir}`;
    const body = parse(server, timestampAnswer, await this.get(server, path, SMALL_TIMEOUT_MS), "timestamp_to_event");
    if (!isValidEventId(body.event_id)) throw new RoomHistoryError("bad-response", server, "the answer names no valid event ID");
    return { eventId: body.event_id, originServerTs: body.origin_server_ts };
  }

  private get(server: string, path: string, timeoutMs: number): Promise<FederationResponse> {
    return this.send(server, { method: "GET", path }, timeoutMs);
  }

  /** A signed request; any answer but 200 is a RoomHistoryError. */
  private async send(
    server: string,
    req: { method: "GET" | "POST"; path: string; body?: unknown },
    timeoutMs: number,
  ): Promise<FederationResponse> {
    let res: FederationResponse;
    try {
      res = await this.http.request(server, { ...req, signal: AbortSignal.timeout(timeoutMs) });
    } catch (err) {
      if (!(err instanceof FederationRequestError)) throw err;
      if (err.failure === "timeout") throw new RoomHistoryError("timeout", server, err.message);
      if (err.failure === "bad-response" || err.failure === "too-large") throw new RoomHistoryError("bad-response", server, err.message);
      throw new RoomHistoryError("unreachable", server, err.message);
    }
    if (res.status === 200) return res;
    const remote = res.body as { errcode?: unknown; error?: unknown } | undefined;
    const errcode = typeof remote?.errcode === "string" ? remote.errcode.slice(0, 100) : undefined;
    const message = `answered ${res.status}${errcode ? ` ${errcode}` : ""}${typeof remote?.error === "string" ? `: ${remote.error.slice(0, 200)}` : ""}`;
    const failure: RoomHistoryFailure = res.status === 404 ? "not-found" : res.status === 403 ? "forbidden" : "refused";
    throw new RoomHistoryError(failure, server, message, res.status, errcode);
  }
}

function parse<T>(server: string, schema: z.ZodType<T>, res: FederationResponse, what: string): T {
  const parsed = schema.safeParse(res.body);
  if (!parsed.success) throw new RoomHistoryError("bad-response", server, `the ${what} answer is malformed`);
  return parsed.data;
}

/** The entries that can be PDUs (objects no larger than a PDU may be), at most `max` of them. */
function pdusOf(list: unknown[], max = Number.POSITIVE_INFINITY): UncheckedPdu[] {
  const out: UncheckedPdu[] = [];
  for (const entry of list) {
    if (out.length >= max) break;
    if (typeof entry !== "object" || entry === null || Array.isArray(entry)) continue;
    // Twice a PDU's limit: what a peer adds under `unsigned` (Synapse puts the whole redaction
    // event in `redacted_because`) comes on top. The checker holds the event itself to the limit.
    if (utf8Length(JSON.stringify(entry)) > MAX_UNCHECKED_PDU_BYTES) continue;
    out.push(entry as UncheckedPdu);
  }
  return out;
}

function eventIdsOf(server: string, ids: string[]): string[] {
  if (!ids.every(isValidEventId)) throw new RoomHistoryError("bad-response", server, "the answer holds an invalid event ID");
  return [...new Set(ids)];
}

function utf8Length(s: string): number {
  return Buffer.byteLength(s, "utf8");
}

// Reading stored events, and serving them in the client format.
// https://spec.matrix.org/latest/client-server-api/#room-event-format
//
// Clients see an event without the PDU-only fields (auth_events, prev_events, hashes, signatures,
// depth, origin, ...), with `event_id` and `room_id`, and with `unsigned`: `age`,
// `transaction_id` (only for the device that sent it), `prev_content`/`prev_sender`/`replaces_state`
// for state events, and `redacted_because` for redacted events, whose content is redacted with the
// room version's algorithm. Redactions in v11+ rooms carry `redacts` in their content; clients also
// get it at the top level.
import { type SQL, sql } from "drizzle-orm";
import { type Database, rowsOf } from "../../schema/db.ts";
import { redactEvent } from "../../federation/protocol/redaction.ts";
import { roomVersionRules } from "../../federation/protocol/room-versions.ts";
import { stateMapKey } from "../../federation/protocol/room-state.ts";
import { ErasedUsers } from "../accounts/erased-users.ts";
import { lookupStateKeys } from "./state-groups.ts";

type JsonObject = Record<string, unknown>;

export interface StoredEvent {
  eventId: string;
  roomId: string;
  roomVersion: string;
  type: string;
  stateKey: string | undefined;
  sender: string;
  originServerTs: number;
  depth: number;
  streamOrdering: number | null;
  topologicalOrdering: number;
  /** The PDU as stored. */
  pdu: JsonObject;
  rejected: boolean;
  softFailed: boolean;
  outlier: boolean;
  redactedBy: string | null;
  stateBeforeGroup: number | null;
  stateAfterGroup: number | null;
  replacesState: string | null;
}

/** The client format of an event. */
export type ClientEvent = JsonObject & { event_id: string; type: string; sender: string; unsigned?: JsonObject };

/** Who reads (for `transaction_id` and per-user aggregations). */
export interface Reader {
  userId: string;
  deviceId?: string;
}

/** Adds bundled aggregations to `unsigned["m.relations"]` (implemented by the relations module). */
export type BundleAggregations = (events: StoredEvent[], reader: Reader) => Promise<Map<string, JsonObject>>;

export const EVENT_COLUMNS = sql`e.event_id, e.room_id, r.room_version, e.type, e.state_key, e.sender, e.origin_server_ts, e.depth,
  e.stream_ordering, e.topological_ordering, e.json, e.rejected_reason, e.soft_failed, e.outlier, e.redacted_by,
  e.state_before_group, e.state_after_group, e.replaces_state`;

export interface EventRow {
  event_id: string;
  room_id: string;
  room_version: string;
  type: string;
  state_key: string | null;
  sender: string;
  origin_server_ts: string | number;
  depth: string | number;
  stream_ordering: string | number | null;
  topological_ordering: string | number;
  json: string;
  rejected_reason: string | null;
  soft_failed: boolean;
  outlier: boolean;
  redacted_by: string | null;
  state_before_group: string | number | null;
  state_after_group: string | number | null;
  replaces_state: string | null;
}

const num = (v: string | number | null): number | null => (v === null ? null : Number(v));

export function eventFromRow(r: EventRow): StoredEvent {
  return {
    eventId: r.event_id,
    roomId: r.room_id,
    roomVersion: r.room_version,
    type: r.type,
    stateKey: r.state_key ?? undefined,
    sender: r.sender,
    originServerTs: Number(r.origin_server_ts),
    depth: Number(r.depth),
    streamOrdering: num(r.stream_ordering),
    topologicalOrdering: Number(r.topological_ordering),
    pdu: JSON.parse(r.json) as JsonObject,
    rejected: r.rejected_reason !== null,
    softFailed: r.soft_failed,
    outlier: r.outlier,
    redactedBy: r.redacted_by,
    stateBeforeGroup: num(r.state_before_group),
    stateAfterGroup: num(r.state_after_group),
    replacesState: r.replaces_state,
  };
}

export function sqlList(values: readonly (string | number)[]): SQL {
  return sql.join(
    values.map((v) => sql`${v}`),
    sql`, `,
  );
}

export class EventStore {
  private bundle: BundleAggregations | undefined;

  constructor(
    private readonly db: Database,
    private readonly now: () => number,
  ) {}

  /** The relations module plugs its bundled aggregations in here. */
  setBundler(bundle: BundleAggregations): void {
    this.bundle = bundle;
  }

  /** Events by ID (any room), as stored. */
  async getEvents(eventIds: readonly string[]): Promise<Map<string, StoredEvent>> {
    const unique = [...new Set(eventIds)];
    const out = new Map<string, StoredEvent>();
    if (unique.length === 0) return out;
    const rows = rowsOf<EventRow>(
      await this.db.execute(sql`select ${EVENT_COLUMNS} from events e join rooms r on r.room_id = e.room_id
        where e.event_id in (${sqlList(unique)})`),
    );
    for (const row of rows) out.set(row.event_id, eventFromRow(row));
    return out;
  }

  async getEvent(eventId: string): Promise<StoredEvent | undefined> {
    return (await this.getEvents([eventId])).get(eventId);
  }

  /** Runs a query selecting EVENT_COLUMNS (from `events e join rooms r`) and returns the events. */
  async query(query: SQL): Promise<StoredEvent[]> {
    return rowsOf<EventRow>(await this.db.execute(query)).map(eventFromRow);
  }

  /**
   * The client format of events, in order: redacted ones redacted (with `redacted_because`),
   * state events with their previous content, the reader's own transaction IDs, and bundled
   * aggregations unless `aggregations` is false.
   */
  async format(events: StoredEvent[], reader: Reader | undefined, options: { aggregations?: boolean } = {}): Promise<ClientEvent[]> {
    if (events.length === 0) return [];
    const related = new Set<string>();
    for (const e of events) {
      if (e.redactedBy) related.add(e.redactedBy);
      if (e.replacesState) related.add(e.replacesState);
    }
    const ownIds = reader?.deviceId ? events.filter((e) => e.sender === reader.userId).map((e) => e.eventId) : [];
    const [relatedEvents, txnIds, bundles, erased] = await Promise.all([
      this.getEvents([...related]),
      this.transactionIds(ownIds, reader),
      options.aggregations !== false && this.bundle && reader
        ? this.bundle(events.filter((e) => !e.redactedBy), reader)
        : Promise.resolve(new Map<string, JsonObject>()),
      reader ? this.erasedFor(events, reader.userId) : Promise.resolve(new Set<string>()),
    ]);
    // Only accepted redactions redact.
    const now = this.now();
    return events.map((stored) => {
      const e = erased.has(stored.eventId) ? { ...stored, pdu: redactEvent(roomVersionRules(stored.roomVersion), stored.pdu) } : stored;
      const redaction = e.redactedBy ? relatedEvents.get(e.redactedBy) : undefined;
      const prev = e.replacesState ? relatedEvents.get(e.replacesState) : undefined;
      const client = clientEvent(e, now, {
        redactedBecause: redaction ? clientEvent(redaction, now) : undefined,
        prev: prev ? { content: visibleContent(prev), sender: prev.sender, eventId: prev.eventId } : undefined,
        transactionId: txnIds.get(e.eventId),
      });
      const bundle = bundles.get(e.eventId);
      if (bundle) (client.unsigned ??= {})["m.relations"] = bundle;
      return client;
    });
  }

  /**
   * The events of erased users (ErasedUsers) that `userId` gets redacted: those sent while they
   * were not joined to the room (the spec: an erased user's messages are not shared with users who
   * join later). Their own events are theirs to see.
   */
  private async erasedFor(events: StoredEvent[], userId: string): Promise<Set<string>> {
    const out = new Set<string>();
    const erased = await ErasedUsers.of(this.db).all();
    if (erased.size === 0) return out;
    const candidates = events.filter((e) => erased.has(e.sender) && e.sender !== userId);
    if (candidates.length === 0) return out;
    const groups = [...new Set(candidates.map((e) => e.stateBeforeGroup).filter((g): g is number => g !== null))];
    const states = await lookupStateKeys(this.db, groups, [["m.room.member", userId]]);
    const key = stateMapKey("m.room.member", userId);
    const memberIds = new Set<string>();
    for (const state of states.values()) {
      const id = state.get(key);
      if (id) memberIds.add(id);
    }
    const members = await this.getEvents([...memberIds]);
    for (const e of candidates) {
      const memberId = e.stateBeforeGroup === null ? undefined : states.get(e.stateBeforeGroup)?.get(key);
      const membership = memberId ? (members.get(memberId)?.pdu.content as JsonObject | undefined)?.membership : undefined;
      if (membership !== "join") out.add(e.eventId);
    }
    return out;
  }

  private async transactionIds(eventIds: string[], reader: Reader | undefined): Promise<Map<string, string>> {
    const out = new Map<string, string>();
    if (eventIds.length === 0 || !reader?.deviceId) return out;
    const rows = rowsOf<{ event_id: string; txn_id: string }>(
      await this.db.execute(sql`select event_id, txn_id from event_transactions
        where event_id in (${sqlList(eventIds)}) and user_id = ${reader.userId} and device_id = ${reader.deviceId}`),
    );
    for (const r of rows) out.set(r.event_id, r.txn_id);
    return out;
  }
}

/** The content a client sees: redacted when the event is. */
export function visibleContent(event: StoredEvent): JsonObject {
  if (!event.redactedBy) return (event.pdu.content as JsonObject) ?? {};
  return redactEvent(roomVersionRules(event.roomVersion), event.pdu).content as JsonObject;
}

export interface ClientEventExtras {
  redactedBecause?: ClientEvent;
  prev?: { content: JsonObject; sender: string; eventId: string };
  transactionId?: string;
}

/** One event in the client format (https://spec.matrix.org/latest/client-server-api/#room-event-format). */
export function clientEvent(event: StoredEvent, now: number, extras: ClientEventExtras = {}): ClientEvent {
  const rules = roomVersionRules(event.roomVersion);
  const redacted = extras.redactedBecause !== undefined;
  const pdu = redacted ? redactEvent(rules, event.pdu) : event.pdu;
  const out: ClientEvent = {
    content: (pdu.content as JsonObject) ?? {},
    event_id: event.eventId,
    origin_server_ts: event.originServerTs,
    // A v12 create event has no room_id in its PDU; clients always get one.
    room_id: event.roomId,
    sender: event.sender,
    type: event.type,
  };
  if (event.stateKey !== undefined) out.state_key = event.stateKey;
  if (event.type === "m.room.redaction") {
    const redacts = typeof pdu.redacts === "string" ? pdu.redacts : (pdu.content as JsonObject | undefined)?.redacts;
    if (typeof redacts === "string") out.redacts = redacts;
  }
  const unsigned: JsonObject = { age: Math.max(0, now - event.originServerTs) };
  if (extras.transactionId !== undefined) unsigned.transaction_id = extras.transactionId;
  if (extras.prev) {
    unsigned.prev_content = extras.prev.content;
    unsigned.prev_sender = extras.prev.sender;
    unsigned.replaces_state = extras.prev.eventId;
  }
  if (extras.redactedBecause) {
    unsigned.redacted_because = extras.redactedBecause;
    // Not in the spec, but Synapse sets it beside redacted_because and clients and sytest read it.
    if (typeof extras.redactedBecause.event_id === "string") unsigned.redacted_by = extras.redactedBecause.event_id;
  }
  out.unsigned = unsigned;
  return out;
}

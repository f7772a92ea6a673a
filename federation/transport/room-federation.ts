// Rooms across servers: joining a room through another server (make_join / send_join), serving
// joins to others, invites both ways, received PDUs placed in the room's graph (missing events,
// the state before an event whose prev_events we lack, auth chains), and every event of ours sent
// to every other server in the room.
// https://spec.matrix.org/latest/server-server-api/#joining-rooms
// https://spec.matrix.org/latest/server-server-api/#inviting-to-a-room
// https://spec.matrix.org/latest/server-server-api/#checks-performed-on-receipt-of-a-pdu
// https://spec.matrix.org/latest/server-server-api/#retrieving-events
//
// Received events enter the rooms' one persist path (EventPersister.enqueueRemote) after the checks
// that need no state (PduChecker); events that can only be stored without their place in the graph
// (the state and auth chain of a join, auth events fetched for an event) are outliers, checked
// against their own auth events first. Outbound events are queued in the same statement that
// stores them (a write extension of the persister), so an event is never committed without its
// federation queue rows, and the queue survives restarts.

import { type SQL, sql } from "drizzle-orm";
import type { Logger } from "pino";
import { MatrixError, forbidden, notFound } from "../../server/http/errors.ts";
import type { Accounts } from "../../server/accounts/accounts.ts";
import { memberContent } from "../../server/rooms/create-room.ts";
import type { EventStore, StoredEvent } from "../../server/rooms/event-store.ts";
import { type EventPersister, type RemoteEventInput, type RemoteEventOutcome, newEventIdWithDomain } from "../../server/rooms/persister.ts";
import type { Rooms } from "../../server/rooms/rooms.ts";
import type { ServerReads } from "../../server/rooms/server-reads.ts";
import type { Timeline } from "../../server/rooms/timeline.ts";
import { checkAuthAgainstAuthEvents } from "../protocol/auth-rules.ts";
import { computeEventId, createEventIdOfRoom, referenceHashes } from "../protocol/event-hashes.ts";
import { signEvent } from "../protocol/event-signing.ts";
import { redactEvent } from "../protocol/redaction.ts";
import { serverNameOf } from "../protocol/identifiers.ts";
import { eventReferences, pduOf, referencedIds, type Pdu, type RoomEvent } from "../protocol/pdu.ts";
import { type StateMapKey, stateMapKey } from "../protocol/room-state.ts";
import { type RoomVersionRules, SUPPORTED_ROOM_VERSIONS, isSupportedRoomVersion, roomVersionRules } from "../protocol/room-versions.ts";
import { type SigningKey, signJson } from "../protocol/signing.ts";
import type { FederationHttpClient, FederationResponse } from "./http-client.ts";
import type { CheckedPdu, PduChecker } from "./pdu-checks.ts";
import type { RoomHistoryClient } from "./room-history.ts";
import type { Federation } from "./federation.ts";
import type { FederationSender } from "./sender.ts";
import { unsafeTestBreak } from "../../server/unsafe-test-break.ts";

type JsonObject = Record<string, unknown>;
/** An event checked against its own auth events: rejected, with the reason, or not. */
type Judged = { event: RoomEvent; rejected: boolean; reason?: string };

/** Events of the state at a gap fetched one by one (`/event`) at most; past that, the whole state (`/state`). */
const MAX_EVENTS_FETCHED_ONE_BY_ONE = 100;
/** Prev events we lack whose states are fetched one by one (/state_ids); past this, the whole /state. */
const MAX_PREV_STATES_FETCHED = 5;

/** Missing events asked for at once when a received event's prev_events are unknown. */
const MISSING_EVENTS_LIMIT = 10;
/** Remembered relays and suppressed fan-outs (entries live only from a persist to its commit). */
const MAX_PENDING_MARKS = 10_000;
/** The state types an invite shows the invitee (Synapse's default room_prejoin_state). */
// The spec's stripped state, and m.room.guest_access ("servers MAY include other state events"):
// the invitee's server lets a guest accept only when it says `can_join`.
const INVITE_STATE_TYPES = ["m.room.create", "m.room.join_rules", "m.room.name", "m.room.avatar", "m.room.canonical_alias", "m.room.encryption", "m.room.topic", "m.room.guest_access"];

export interface RoomFederationDeps {
  serverName: string;
  signingKey: SigningKey;
  http: FederationHttpClient;
  checker: PduChecker;
  history: RoomHistoryClient;
  sender: FederationSender;
  persister: EventPersister;
  rooms: Rooms;
  eventStore: EventStore;
  serverReads: ServerReads;
  accounts: Pick<Accounts, "getProfile">;
  /** Throws 403 when the room's server ACL denies the server. */
  assertServerAllowed?(roomId: string, server: string): Promise<void>;
  logger: Logger;
  now(): number;
}

export class RoomFederation {
  /** Events received from a server that we pass on to the room's other servers (a join we served). */
  private readonly relays = new Map<string, string>();
  /** Our events the room's servers already have (our join, sent through send_join). */
  private readonly noFanout = new Set<string>();
  /** The destinations queued for an event, to wake their queues once it is committed. */
  private readonly queuedFor = new Map<string, string[]>();

  constructor(private readonly d: RoomFederationDeps) {}

  /** Queues every event of ours for the room's other servers, in the statement that stores it. */
  connect(): void {
    this.d.persister.extendWrites(async (_tx, view, events) => this.outboxRows(view.rules, () => view.joinedServers(), events));
    this.d.persister.onBatchPersisted((events) => {
      for (const e of events) {
        this.relays.delete(e.eventId);
        this.noFanout.delete(e.eventId);
        const destinations = this.queuedFor.get(e.eventId);
        if (!destinations) continue;
        this.queuedFor.delete(e.eventId);
        for (const destination of destinations) this.d.sender.wake(destination);
      }
    });
  }

  private outboxRows(rules: RoomVersionRules, joinedServers: () => readonly string[], events: readonly RoomEvent[]): SQL[] {
    const { serverName } = this.d;
    const rows: SQL[] = [];
    const now = this.d.now();
    for (const e of events) {
      const relayedFrom = this.relays.get(e.event_id);
      if (serverNameOf(e.sender) !== serverName && relayedFrom === undefined && !isOurThirdPartyInvite(e, serverName)) continue;
      if (this.noFanout.has(e.event_id)) continue;
      const destinations = new Set(joinedServers());
      // A kicked or banned user's server hears of it (it is no longer in the room after).
      if (e.type === "m.room.member" && typeof e.state_key === "string" && e.content.membership !== "invite") {
        const target = serverNameOf(e.state_key);
        if (target !== undefined) destinations.add(target);
      }
      destinations.delete(serverName);
      if (relayedFrom !== undefined) destinations.delete(relayedFrom);
      if (destinations.size === 0) continue;
      const payload = JSON.stringify(pduOf(rules, e));
      for (const destination of destinations) rows.push(sql`(${destination}, 'pdu', ${payload}, ${now})`);
      this.queuedFor.set(e.event_id, [...destinations]);
    }
    if (this.queuedFor.size > MAX_PENDING_MARKS) this.queuedFor.clear();
    if (rows.length === 0) return [];
    return [sql`insert into federation_outbox (destination, kind, payload, created_ts) values ${sql.join(rows, sql`, `)}`];
  }

  private mark<T>(set: Map<string, T>, key: string, value: T): void {
    if (set.size > MAX_PENDING_MARKS) set.clear();
    set.set(key, value);
  }

  // ---- Received PDUs ---------------------------------------------------------------------------------

  /**
   * Places checked PDUs of rooms of `roomVersion` (from a `/send` transaction) in their rooms: the
   * error to answer each with, or undefined when it was accepted (soft-failed events too: the
   * sender did nothing wrong by sending them).
   */
  async receivePdus(origin: string, roomVersion: string, checked: readonly CheckedPdu[]): Promise<Array<string | undefined>> {
    const errors: Array<string | undefined> = checked.map((c) => (c.ok ? undefined : c.reason));
    const byRoom = new Map<string, number[]>();
    checked.forEach((c, i) => {
      if (!c.ok) return;
      const roomId = c.event.room_id;
      if (typeof roomId !== "string") {
        errors[i] = "The event has no room_id";
        return;
      }
      let list = byRoom.get(roomId);
      if (!list) byRoom.set(roomId, (list = []));
      list.push(i);
    });
    await Promise.all(
      [...byRoom].map(async ([roomId, indexes]) => {
        try {
          if (!(await this.weAreIn(roomId))) {
            for (const i of indexes) errors[i] = `This server is not in the room ${roomId}`;
            return;
          }
          await this.d.assertServerAllowed?.(roomId, origin);
          const inputs = indexes.map((i) => inputOf(roomVersion, checked[i] as Extract<CheckedPdu, { ok: true }>));
          const outcomes = await this.place(origin, roomId, roomVersion, inputs, true);
          outcomes.forEach((o, k) => (errors[indexes[k]!] = outcomeError(o)));
        } catch (err) {
          const reason = err instanceof MatrixError ? err.message : "internal error processing this event";
          if (!(err instanceof MatrixError)) this.d.logger.warn({ err, origin, roomId }, "received PDUs could not be placed");
          for (const i of indexes) errors[i] ??= reason;
        }
      }),
    );
    return errors;
  }

  /**
   * Persists received events; for those that cannot be placed yet, fetches what is missing from
   * `origin` (their auth chain; the events between them and what we have, through
   * get_missing_events when `fetchMissing`; else the state before them) and tries again.
   */
  private async place(origin: string, roomId: string, version: string, inputs: RemoteEventInput[], fetchMissing: boolean): Promise<RemoteEventOutcome[]> {
    const outcomes = await this.d.persister.enqueueRemote(roomId, inputs);
    const unplaced = outcomes.flatMap((o, i) => (o.status === "unplaced" && o.missing ? [i] : []));
    if (unplaced.length === 0) return outcomes;
    for (const i of unplaced) {
      const input = inputs[i]!;
      try {
        // Prev events we lack, or hold only as outliers (the persister's "unknown prev events").
        const prevsUnknown = await this.unknownEvents(referencedIds(input.pdu.prev_events));
        if (fetchMissing && (prevsUnknown.length > 0 || outcomes[i]!.reason === "unknown prev events")) {
          await this.fetchMissingEvents(origin, roomId, version, input);
        }
        if (outcomes[i]!.reason === "unknown auth events") {
          await this.fetchAuthChain(origin, roomId, version, input.eventId).catch(async () => {
            // A server that does not serve /event_auth: the missing auth events one by one.
            const pdus = await Promise.all(
              (outcomes[i]!.missing ?? []).slice(0, 20).map((id) => this.d.history.getEvent(origin, id).catch(() => undefined)),
            );
            await this.storeOutliers(roomId, version, pdus.filter((p) => p !== undefined));
          });
        }
      } catch (err) {
        this.d.logger.info({ err, origin, eventId: input.eventId }, "could not fetch what a received event needs");
      }
    }
    const again = await this.d.persister.enqueueRemote(roomId, unplaced.map((i) => inputs[i]!));
    for (const [k, i] of unplaced.entries()) {
      let outcome = again[k]!;
      if (outcome.status === "unplaced" && outcome.reason === "unknown prev events" && !fetchMissing) {
        // A pulled event (from get_missing_events) whose gap could not be closed: placed on the
        // states the sender says its missing prev_events had (resolved with those we hold), or
        // else on the whole state the sender says it had before it. Not a pushed one (`fetchMissing`):
        // get_missing_events failed to close its gap, and an event pushed to us could otherwise
        // make the room's state whatever its sender says; it stays an outlier, as Synapse refuses
        // it ("Your server isn't divulging details about prev_events").
        try {
          const prevStates = await this.fetchPrevStates(origin, roomId, version, outcome.missing ?? []).catch((err: unknown) => {
            this.d.logger.info({ err, origin, eventId: inputs[i]!.eventId }, "could not fetch the state after a missing prev event");
            return undefined;
          });
          if (prevStates) [outcome] = (await this.d.persister.enqueueRemote(roomId, [{ ...inputs[i]!, prevStates }])) as [RemoteEventOutcome];
          if (outcome.status === "unplaced" && outcome.reason === "unknown prev events") {
            const stateBefore = await this.fetchStateBefore(origin, roomId, version, inputs[i]!);
            [outcome] = (await this.d.persister.enqueueRemote(roomId, [{ ...inputs[i]!, stateBefore }])) as [RemoteEventOutcome];
          }
        } catch (err) {
          this.d.logger.info({ err, origin, eventId: inputs[i]!.eventId }, "could not fetch the state before a received event");
        }
      }
      outcomes[i] = outcome;
    }
    // What still cannot be placed for want of its prev_events is kept as an outlier (checked against
    // its own auth events, which we have): never dropped, and placed should it come again once the
    // gap is closed. One whose auth events we could not get has no verdict to keep.
    const leftOver = unplaced
      .filter((i) => outcomes[i]!.status === "unplaced" && outcomes[i]!.reason === "unknown prev events")
      .map((i) => inputs[i]!.pdu);
    if (leftOver.length > 0) {
      await this.storeOutliers(roomId, version, leftOver).catch((err: unknown) =>
        this.d.logger.warn({ err, origin, roomId }, "could not keep received events as outliers"),
      );
    }
    return outcomes;
  }

  /** Which of these events this server does not hold at all. */
  private async unknownEvents(ids: readonly string[]): Promise<string[]> {
    const found = await this.d.eventStore.getEvents(ids);
    return ids.filter((id) => !found.has(id));
  }

  /** get_missing_events between our forward extremities and the event; the answers placed oldest first. */
  private async fetchMissingEvents(origin: string, roomId: string, version: string, input: RemoteEventInput): Promise<void> {
    const earliest = await this.d.rooms.forwardExtremities(roomId);
    const pdus = await this.d.history.getMissingEvents(origin, roomId, {
      earliest,
      latest: [input.eventId],
      limit: MISSING_EVENTS_LIMIT,
      minDepth: Math.max(0, Number(input.pdu.depth) - 1000),
    });
    const checked = await this.d.checker.check(version, pdus);
    const events = checked
      .flatMap((c) => (c.ok && c.event.room_id === roomId && c.eventId !== input.eventId ? [c] : []))
      .sort((a, b) => Number(a.event.depth) - Number(b.event.depth));
    if (events.length > 0) await this.place(origin, roomId, version, events.map((c) => inputOf(version, c)), false);
  }

  /** The event's auth chain from `origin`, checked and stored as outliers. */
  private async fetchAuthChain(origin: string, roomId: string, version: string, eventId: string): Promise<void> {
    const pdus = await this.d.history.eventAuth(origin, roomId, eventId);
    await this.storeOutliers(roomId, version, pdus);
  }

  /**
   * The states after the prev_events of an event that we cannot place, as `origin` has them (each
   * with its auth chain, stored as outliers): for each, the state at it (/state_ids) plus the event
   * itself when it is a state event, fetching only the events we do not hold, as Synapse does. The
   * persister resolves them with the states after the prev_events we hold. Undefined when a
   * state is too large to fetch event by event or cannot be had: the caller then asks for the whole
   * state before the event.
   */
  private async fetchPrevStates(
    origin: string,
    roomId: string,
    version: string,
    missing: readonly string[],
  ): Promise<Map<string, Map<StateMapKey, string>> | undefined> {
    if (missing.length === 0 || missing.length > MAX_PREV_STATES_FETCHED) return undefined;
    const out = new Map<string, Map<StateMapKey, string>>();
    for (const prev of missing) {
      const { pduIds, authChainIds } = await this.d.history.stateIds(origin, roomId, prev);
      const wanted = [...new Set([...pduIds, ...authChainIds, prev])];
      const held = await this.d.eventStore.getEvents(wanted);
      const lacking = wanted.filter((id) => !held.has(id));
      if (lacking.length > MAX_EVENTS_FETCHED_ONE_BY_ONE) return undefined;
      const fetched: unknown[] = [];
      for (let k = 0; k < lacking.length; k += 10) {
        const batch = await Promise.all(lacking.slice(k, k + 10).map((id) => this.d.history.getEvent(origin, id).catch(() => undefined)));
        for (const pdu of batch) if (pdu !== undefined) fetched.push(pdu);
      }
      const stored = await this.storeOutliers(roomId, version, fetched);
      const eventOf = (id: string): { event: RoomEvent; rejected: boolean } | undefined => {
        const s = stored.get(id);
        if (s) return s;
        const h = held.get(id);
        return h && h.roomId === roomId ? { event: { ...(h.pdu as unknown as Pdu), event_id: id }, rejected: h.rejected } : undefined;
      };
      // The prev event itself must be had: the state after it names it.
      if (!eventOf(prev)) return undefined;
      const state = new Map<StateMapKey, string>();
      for (const id of [...pduIds, prev]) {
        const found = eventOf(id);
        if (found && !found.rejected && typeof found.event.state_key === "string") state.set(stateMapKey(found.event.type, found.event.state_key), id);
      }
      out.set(prev, state);
    }
    return out;
  }

  /** The whole state before an event as `origin` has it (/state, with its auth chain), stored as outliers. */
  private async fetchStateBefore(origin: string, roomId: string, version: string, input: RemoteEventInput): Promise<Map<StateMapKey, string>> {
    const { pdus, authChain } = await this.d.history.state(origin, roomId, input.eventId);
    const stored = await this.storeOutliers(roomId, version, [...authChain, ...pdus]);
    return stateOf(version, pdus, stored);
  }

  /**
   * Checks events (format, signatures, hashes; then each against its own auth events, in auth
   * order) and stores them as outliers; `newRoom` creates the room's row first. Answers the events
   * that passed the first checks, with whether the auth rules rejected them.
   */
  private async storeOutliers(
    roomId: string,
    version: string,
    pdus: readonly unknown[],
    newRoom?: { version: string; creator: string },
  ): Promise<Map<string, Judged> & { idsInOrder?: Array<string | undefined> }> {
    const rules = roomVersionRules(version);
    const checked = await this.d.checker.check(version, pdus);
    const byId = new Map<string, RoomEvent>();
    const createId = rules.roomIdIsCreateEventId ? createEventIdOfRoom(roomId) : undefined;
    for (const c of checked) {
      if (!c.ok) continue;
      const inRoom = c.event.room_id === roomId || (c.event.type === "m.room.create" && c.eventId === createId && c.event.room_id === undefined);
      if (inRoom) byId.set(c.eventId, c.event);
    }
    const results = await this.judgeByAuthEvents(roomId, rules, byId);
    const rows = [...results].map(([eventId, { event, reason }]) => {
      return { eventId, pdu: pduOf(rules, event) as unknown as Pdu, ...(reason === undefined ? {} : { rejectedReason: reason }) };
    });
    // Events in an auth cycle never become ready: they are not stored.
    await this.d.persister.storeOutliers(roomId, rows, newRoom);
    return Object.assign(results, { idsInOrder: checked.map((c) => c.eventId) });
  }

  /**
   * Check 4 on receipt for a set of events: each against its own auth events, in auth order (an
   * event after those of its auth events that are in the set: Kahn's algorithm over the auth edges;
   * depth alone is not enough, as Synapse gives a new room's creator join and first power levels the
   * same depth). Auth events outside the set are read from `stored`, or from the database. Events in
   * an auth cycle never become ready and are left out. Answers the events in auth order.
   */
  private async judgeByAuthEvents(
    roomId: string,
    rules: RoomVersionRules,
    byId: ReadonlyMap<string, RoomEvent>,
    stored?: Map<string, StoredEvent>,
  ): Promise<Map<string, Judged>> {
    const held = stored ?? (await this.d.eventStore.getEvents(authEventsOutside(roomId, rules, byId)));
    const results = new Map<string, Judged>();
    const lookup = (id: string) => {
      const found = results.get(id);
      if (found) return found;
      const s = held.get(id);
      return s && s.roomId === roomId ? { event: { ...(s.pdu as unknown as Pdu), event_id: id }, rejected: s.rejected } : undefined;
    };
    const waiting = new Map<string, number>();
    const dependents = new Map<string, string[]>();
    for (const [id, e] of byId) {
      const inside = [...new Set(referencedIds(e.auth_events))].filter((a) => byId.has(a));
      waiting.set(id, inside.length);
      for (const a of inside) {
        let list = dependents.get(a);
        if (!list) dependents.set(a, (list = []));
        list.push(id);
      }
    }
    const queue = [...waiting].filter(([, n]) => n === 0).map(([id]) => id);
    for (let k = 0; k < queue.length; k++) {
      const id = queue[k]!;
      const event = byId.get(id)!;
      const decision = checkAuthAgainstAuthEvents(rules, event, lookup);
      results.set(id, { event, rejected: !decision.allowed, ...(decision.allowed ? {} : { reason: decision.reason }) });
      for (const next of dependents.get(id) ?? []) {
        const n = waiting.get(next)! - 1;
        waiting.set(next, n);
        if (n === 0) queue.push(next);
      }
    }
    return results;
  }

  // ---- Backfill ----------------------------------------------------------------------------------------

  /**
   * Fetches the room's past from its other servers when a client pages back past what we hold:
   * `/backfill` from the events our timeline begins after, the answers checked (format,
   * signatures, hashes, their auth events) and stored before everything we had. Answers how many
   * events were stored.
   */
  async backfill(roomId: string, limit: number): Promise<number> {
    const edges = await this.d.rooms.backwardExtremities(roomId);
    if (edges.length === 0) return 0;
    const version = await this.d.rooms.roomVersion(roomId);
    if (version === undefined || !isSupportedRoomVersion(version)) return 0;
    const servers = (await this.d.rooms.joinedServers(roomId)).filter((s) => s !== this.d.serverName);
    const idServer = serverNameOf(roomId);
    if (idServer !== undefined && servers.includes(idServer)) servers.unshift(idServer);
    for (const server of [...new Set(servers)].slice(0, 5)) {
      let pdus: unknown[];
      try {
        pdus = await this.d.history.backfill(server, roomId, edges.map((e) => e.eventId), limit);
      } catch (err) {
        this.d.logger.info({ err, server, roomId }, "backfill from a server failed");
        continue;
      }
      if (pdus.length === 0) continue;
      const checked = await this.authChecked(roomId, version, pdus, server);
      // Each event's state before: that of the event we had that follows the gap (the same for all).
      const stateBeforeGroup = edges.find((e) => e.stateBeforeGroup !== null)?.stateBeforeGroup ?? null;
      const rows = [...checked].map(([eventId, { event, rejected, reason }]) => {
        return { eventId, pdu: pduOf(version, event) as unknown as Pdu, stateBeforeGroup, ...(rejected ? { rejectedReason: reason ?? "rejected" } : {}) };
      });
      const stored = await this.d.persister.storeHistorical(roomId, rows);
      if (stored > 0) return stored;
    }
    return 0;
  }

  /**
   * Steps 1–4 for events of the room from `server`: format, signatures, hashes, then each against
   * its own auth events (fetched from `server` when unknown), in auth order.
   */
  private async authChecked(
    roomId: string,
    version: string,
    pdus: readonly unknown[],
    server: string,
  ): Promise<Map<string, Judged>> {
    const rules = roomVersionRules(version);
    const checked = (await this.d.checker.check(version, pdus)).filter(
      (c): c is Extract<CheckedPdu, { ok: true }> => c.ok && c.event.room_id === roomId && c.event.type !== "m.room.create",
    );
    const byId = new Map(checked.map((c) => [c.eventId, c.event]));
    const needed = authEventsOutside(roomId, rules, byId);
    let stored = await this.d.eventStore.getEvents(needed);
    const unknown = needed.filter((id) => !stored.has(id));
    if (unknown.length > 0) {
      for (const e of byId.values()) {
        if (!referencedIds(e.auth_events).some((a) => unknown.includes(a))) continue;
        await this.fetchAuthChain(server, roomId, version, e.event_id).catch(() => {});
      }
      stored = await this.d.eventStore.getEvents(needed);
    }
    return this.judgeByAuthEvents(roomId, rules, byId, stored);
  }

  private weAreIn(roomId: string): Promise<boolean> {
    return this.d.rooms.isInRoom(roomId);
  }

  // ---- Joining rooms through other servers -----------------------------------------------------------

  /**
   * Joins a local user to a room this server is not in, through the first of `servers` that
   * helps: make_join, our signature, send_join, the state and auth chain checked and stored, and
   * the join placed on that state.
   */
  async joinRemote(userId: string, roomId: string, servers: readonly string[], extra: JsonObject): Promise<void> {
    const candidates = [...new Set(servers)].filter((s) => s !== this.d.serverName);
    if (candidates.length === 0) throw notFound("No server in the room is known to join it through");
    let lastError: unknown;
    for (const server of candidates) {
      try {
        await this.joinVia(server, userId, roomId, extra);
        return;
      } catch (err) {
        lastError = err;
        this.d.logger.info({ err, server, roomId }, "joining through a server failed");
        // The room said no: asking another server of it will not change that.
        if (err instanceof MatrixError && err.status === 403) throw err;
      }
    }
    // No server of the room could be reached (or knew it): to the client, no such room (as Synapse's "No known servers").
    if (lastError instanceof MatrixError && lastError.status !== 502 && lastError.status !== 404) throw lastError;
    throw notFound("No server of the room could be reached to join it");
  }

  /**
   * The first half of a membership handshake made through another server: `make_<kind>`, the
   * template checked to be this user's event of this room, our content on it, signed. Answers the
   * room version, the signed PDU and its event ID.
   */
  private async makeAndSign(
    server: string,
    kind: "join" | "knock" | "leave",
    roomId: string,
    userId: string,
    content: JsonObject,
  ): Promise<{ version: string; signed: JsonObject; eventId: string }> {
    const ver = kind === "leave" ? "" : `?${SUPPORTED_ROOM_VERSIONS.map((v) => `ver=${encodeURIComponent(v)}`).join("&")}`;
    const made = await this.call(server, "GET", `/_matrix/federation/v1/make_${kind}/${enc(roomId)}/${enc(userId)}${ver}`);
    const body = asObject(made.body);
    const version = typeof body.room_version === "string" ? body.room_version : "1";
    if (!isSupportedRoomVersion(version)) {
      throw new MatrixError(400, "M_UNSUPPORTED_ROOM_VERSION", `The room's version ${version.slice(0, 20)} is not supported here`);
    }
    const template = asObject(body.event);
    if (template.type !== "m.room.member" || template.state_key !== userId || template.sender !== userId || template.room_id !== roomId) {
      throw new MatrixError(502, "M_UNKNOWN", `${server} answered make_${kind} with an event that is not this user's ${kind}`);
    }
    const pdu: JsonObject = {
      room_id: roomId,
      sender: userId,
      type: "m.room.member",
      state_key: userId,
      // The template's content (a restricted join's authorising user), ours over it, the membership last.
      content: { ...asObject(template.content), ...content, membership: kind },
      origin_server_ts: this.d.now(),
      depth: template.depth,
      prev_events: template.prev_events,
      auth_events: template.auth_events,
    };
    // Room versions 1–2: the event's ID is ours to choose (and our signature covers it). Before
    // v11 the event names its origin server, as the persister's events do.
    if (roomVersionRules(version).eventFormat === "v1") pdu.event_id = newEventIdWithDomain(this.d.serverName);
    if (roomVersionRules(version).redaction !== "v11") pdu.origin = this.d.serverName;
    const signed = signEvent(version, pdu, this.d.serverName, this.d.signingKey);
    return { version, signed, eventId: computeEventId(version, signed) };
  }

  /**
   * Serving `make_<kind>`: the room must be one we are in, the user on the asking server, the ACL
   * must let it in, and (for joins and knocks) it must support the room's version. Answers the
   * room's version.
   */
  private async checkMakeRequest(origin: string, roomId: string, userId: string, versions: readonly string[] | undefined): Promise<string> {
    if (serverNameOf(userId) !== origin) throw forbidden("The user is not on the requesting server");
    const version = await this.d.rooms.roomVersion(roomId);
    if (version === undefined || !(await this.weAreIn(roomId))) throw notFound("This server is not in that room");
    await this.d.assertServerAllowed?.(roomId, origin);
    if (versions !== undefined && !versions.includes(version) && !unsafeTestBreak("skip-room-version-check")) {
      throw new MatrixError(400, "M_INCOMPATIBLE_ROOM_VERSION", `The room's version is ${version}, which your server does not support`, {
        room_version: version,
      });
    }
    return version;
  }

  /** The membership event a user would send now, built on our current state (make_join, make_knock, make_leave). */
  private draftMembership(roomId: string, userId: string, content: JsonObject) {
    return this.d.persister.draft(roomId, { type: "m.room.member", state_key: userId, sender: userId, content });
  }

  /**
   * Serving `send_<kind>`: the event checked (signatures, hash, that it is the origin's user's own
   * `kind` in this room), placed in the room and relayed to its other servers. Throws 400 or 403.
   */
  private async receiveMembership(origin: string, roomId: string, eventId: string, body: unknown, kind: "join" | "knock" | "leave"): Promise<void> {
    const version = await this.d.rooms.roomVersion(roomId);
    if (version === undefined || !(await this.weAreIn(roomId))) throw notFound("This server is not in that room");
    await this.d.assertServerAllowed?.(roomId, origin);
    const [checked] = await this.d.checker.check(version, [body]);
    if (!checked?.ok) throw refusedEvent(`The ${kind} event`, checked?.reason);
    if (checked.redacted) throw new MatrixError(400, "M_BAD_JSON", `The ${kind} event's content does not match its hash`);
    const e = checked.event;
    if (checked.eventId !== eventId) throw new MatrixError(400, "M_BAD_JSON", "The event ID does not match the event");
    if (e.room_id !== roomId || e.type !== "m.room.member" || e.content.membership !== kind || e.state_key !== e.sender) {
      throw new MatrixError(400, "M_BAD_JSON", `Not a ${kind} event of this room`);
    }
    if (serverNameOf(e.sender) !== origin) throw forbidden(`The user is not on the requesting server`);
    this.mark(this.relays, eventId, origin);
    const [outcome] = await this.place(origin, roomId, version, [inputOf(version, checked)], true);
    if (outcome?.status !== "accepted" && outcome?.status !== "duplicate") throw forbidden(`The ${kind} is not allowed: ${outcome?.reason ?? "unknown"}`);
  }

  private async joinVia(server: string, userId: string, roomId: string, extra: JsonObject): Promise<void> {
    const profile = await this.d.accounts.getProfile(userId);
    const { version, signed, eventId } = await this.makeAndSign(server, "join", roomId, userId, memberContent("join", profile, extra));
    const v2 = await this.rawCall(server, "PUT", `/_matrix/federation/v2/send_join/${enc(roomId)}/${enc(eventId)}`, signed);
    let answer: JsonObject;
    if (unrecognisedEndpoint(v2)) {
      // A server without v2: the deprecated v1, which answers `[200, {…}]` (as Synapse falls back).
      const v1 = await this.call(server, "PUT", `/_matrix/federation/v1/send_join/${enc(roomId)}/${enc(eventId)}`, signed);
      answer = Array.isArray(v1.body) ? asObject(v1.body[1]) : asObject(v1.body);
    } else {
      answer = asObject(this.answerOf(server, v2).body);
    }
    const state = Array.isArray(answer.state) ? answer.state : [];
    const authChain = Array.isArray(answer.auth_chain) ? answer.auth_chain : [];
    // A restricted join comes back with the resident server's signature added.
    let joinPdu = signed as unknown as Pdu;
    if (answer.event !== undefined) {
      const [back] = await this.d.checker.check(version, [answer.event]);
      if (back?.ok && back.eventId === eventId) {
        joinPdu = pduOf(version, back.event) as unknown as Pdu;
      }
    }
    const create = state.find((e): e is JsonObject => typeof e === "object" && e !== null && (e as JsonObject).type === "m.room.create");
    if (!create || typeof create.sender !== "string") throw new MatrixError(502, "M_UNKNOWN", `${server}'s send_join answer holds no create event`);
    const stored = await this.storeOutliers(roomId, version, [...authChain, ...state], { version, creator: create.sender });
    // The state's event IDs, as the checker computed them (the state follows the auth chain).
    const stateBefore = new Map<StateMapKey, string>();
    for (const eventId of stored.idsInOrder?.slice(authChain.length) ?? []) {
      const found = eventId === undefined ? undefined : stored.get(eventId);
      if (found && !found.rejected && typeof found.event.state_key === "string") stateBefore.set(stateMapKey(found.event.type, found.event.state_key), eventId!);
    }
    if (!stateBefore.has(stateMapKey("m.room.create", ""))) {
      throw new MatrixError(502, "M_UNKNOWN", `${server}'s send_join answer failed the checks (no valid create event)`);
    }
    this.noFanout.add(eventId);
    const [outcome] = await this.d.persister.enqueueRemote(roomId, [{ eventId, pdu: joinPdu, stateBefore, resetsCurrent: true }]);
    if (outcome?.status !== "accepted" && outcome?.status !== "duplicate") {
      throw forbidden(`The join was not allowed by the room's state: ${outcome?.reason ?? "unknown"}`);
    }
  }

  // ---- Serving joins ---------------------------------------------------------------------------------

  /** `GET /make_join/{roomId}/{userId}`: a join event for the user, built on our current state. */
  async makeJoin(origin: string, roomId: string, userId: string, versions: readonly string[]): Promise<JsonObject> {
    const version = await this.checkMakeRequest(origin, roomId, userId, versions);
    let draft = await this.draftMembership(roomId, userId, { membership: "join" });
    if (!draft.allowed) {
      // A restricted room: one of our users with the power to invite authorises the join, when the
      // user is in a room the join rule allows (and we sign the event in send_join).
      const authoriser = await this.d.rooms.restrictedJoinAuthoriser(roomId, userId);
      if (authoriser !== undefined) {
        draft = await this.draftMembership(roomId, userId, { membership: "join", join_authorised_via_users_server: authoriser });
      }
    }
    if (!draft.allowed && !unsafeTestBreak("skip-join-rules")) throw forbidden(`You are not allowed to join this room: ${draft.reason ?? ""}`.trim());
    return { event: draft.pdu, room_version: version };
  }

  /** `PUT /v2/send_join/{roomId}/{eventId}`: the join placed, the state before it and its auth chain answered. */
  async sendJoin(origin: string, roomId: string, eventId: string, body: unknown): Promise<JsonObject> {
    const version = await this.d.rooms.roomVersion(roomId);
    if (version === undefined) throw notFound("This server is not in that room");
    // A join one of our users authorises (restricted rooms) needs our signature too.
    const authoriser = asObject(asObject(body).content).join_authorised_via_users_server;
    if (typeof authoriser === "string" && serverNameOf(authoriser) === this.d.serverName) {
      const ours = signJson(redactEvent(version, body as object), this.d.serverName, this.d.signingKey).signatures;
      body = { ...(body as JsonObject), signatures: { ...asObject(asObject(body).signatures), [this.d.serverName]: ours[this.d.serverName] } };
    }
    await this.receiveMembership(origin, roomId, eventId, body, "join");
    const { pdus, auth_chain } = await this.d.serverReads.state({ origin }, roomId, eventId);
    const servers = await this.d.rooms.joinedServers(roomId);
    return { origin: this.d.serverName, state: pdus, auth_chain, event: body, members_omitted: false, servers_in_room: servers };
  }

  // ---- Knocking -----------------------------------------------------------------------------------------

  /**
   * Knocks for a local user on a room this server is not in: make_knock, our signature,
   * send_knock through the first of `servers` that helps; the knock is kept out of band with the
   * room's stripped state, so the user's /sync shows it.
   */
  async knockRemote(userId: string, roomId: string, servers: readonly string[], extra: JsonObject): Promise<void> {
    let lastError: unknown;
    for (const server of [...new Set(servers)].filter((s) => s !== this.d.serverName)) {
      try {
        const { version, signed, eventId } = await this.makeAndSign(server, "knock", roomId, userId, extra);
        const sent = await this.call(server, "PUT", `/_matrix/federation/v1/send_knock/${enc(roomId)}/${enc(eventId)}`, signed);
        // The spec's knock_room_state; Synapse 1.37–1.69 send only knock_state_events (synapse#14088).
        const answer = asObject(sent.body);
        const knockState = answer.knock_room_state ?? answer.knock_state_events;
        const stripped = Array.isArray(knockState) ? knockState.slice(0, 50) : [];
        const create = stripped.find((x): x is JsonObject => typeof x === "object" && x !== null && (x as JsonObject).type === "m.room.create");
        await this.d.persister.storeOutliers(roomId, [], { version, creator: typeof create?.sender === "string" ? create.sender : userId });
        const stored = { ...signed, unsigned: { knock_room_state: stripped } } as unknown as Pdu;
        await this.d.persister.enqueueRemote(roomId, [{ eventId, pdu: stored, outOfBand: { userId, membership: "knock" } }]);
        return;
      } catch (err) {
        lastError = err;
        this.d.logger.info({ err, server, roomId }, "knocking through a server failed");
        if (err instanceof MatrixError && err.status === 403) throw err;
      }
    }
    if (lastError instanceof MatrixError) throw lastError;
    throw notFound("No server in the room is known to knock through");
  }

  /** `GET /make_knock/{roomId}/{userId}`: a knock event for the user, built on our current state. */
  async makeKnock(origin: string, roomId: string, userId: string, versions: readonly string[]): Promise<JsonObject> {
    const version = await this.checkMakeRequest(origin, roomId, userId, versions);
    const draft = await this.draftMembership(roomId, userId, { membership: "knock" });
    if (!draft.allowed) throw forbidden(`You are not allowed to knock on this room: ${draft.reason ?? ""}`.trim());
    return { event: draft.pdu, room_version: version };
  }

  /** `PUT /send_knock/{roomId}/{eventId}`: the knock placed and relayed; the room's stripped state answered. */
  async sendKnock(origin: string, roomId: string, eventId: string, body: unknown): Promise<JsonObject> {
    if (!unsafeTestBreak("send-knock-not-persisted")) await this.receiveMembership(origin, roomId, eventId, body, "knock");
    // knock_room_state as the spec says, and again as knock_state_events, the only name Synapse
    // 1.37–1.69 read (1.67 fails the knock without it: synapse#14088); 1.70–1.94 sent both too.
    const stripped = await this.strippedState(roomId, undefined);
    return { knock_room_state: stripped, knock_state_events: stripped };
  }

  // ---- Leaving ------------------------------------------------------------------------------------------

  /**
   * A local user leaves a room this server is not in (rejects an invite from another server):
   * make_leave and send_leave through one of `servers`; whether or not that works, the leave is
   * kept here so the user's /sync no longer shows the invite (a local rejection, as Synapse falls
   * back to when the inviting server cannot be reached).
   */
  async leaveRemote(userId: string, roomId: string, servers: readonly string[], extra: JsonObject): Promise<void> {
    const invite = await this.d.rooms.membership(roomId, userId);
    for (const server of [...new Set(servers)].filter((s) => s !== this.d.serverName)) {
      try {
        const { signed, eventId } = await this.makeAndSign(server, "leave", roomId, userId, extra);
        await this.call(server, "PUT", `/_matrix/federation/v2/send_leave/${enc(roomId)}/${enc(eventId)}`, signed);
        await this.d.persister.enqueueRemote(roomId, [{ eventId, pdu: signed as unknown as Pdu, outOfBand: { userId, membership: "leave" } }]);
        return;
      } catch (err) {
        this.d.logger.info({ err, server, roomId }, "leaving through a server failed");
      }
    }
    // Nobody could be reached: a leave of our own, built on the invite, kept here only.
    const inviteEvent = invite ? await this.d.eventStore.getEvent(invite.eventId) : undefined;
    const version = inviteEvent?.roomVersion ?? (await this.d.rooms.roomVersion(roomId));
    if (!version || !isSupportedRoomVersion(version)) throw notFound("Unknown room");
    const pdu: JsonObject = {
      room_id: roomId,
      sender: userId,
      type: "m.room.member",
      state_key: userId,
      content: { membership: "leave", ...extra },
      origin_server_ts: this.d.now(),
      depth: (inviteEvent?.depth ?? 0) + 1,
      prev_events: inviteEvent ? eventReferences(version, [inviteEvent.eventId], () => referenceHashes(version, inviteEvent.pdu).sha256) : [],
      auth_events: inviteEvent ? eventReferences(version, [inviteEvent.eventId], () => referenceHashes(version, inviteEvent.pdu).sha256) : [],
    };
    if (roomVersionRules(version).eventFormat === "v1") pdu.event_id = newEventIdWithDomain(this.d.serverName);
    const signed = signEvent(version, pdu, this.d.serverName, this.d.signingKey);
    const eventId = computeEventId(version, signed);
    await this.d.persister.enqueueRemote(roomId, [{ eventId, pdu: signed as unknown as Pdu, outOfBand: { userId, membership: "leave" } }]);
  }

  /** `GET /make_leave/{roomId}/{userId}`: a leave event for the user, built on our current state. */
  async makeLeave(origin: string, roomId: string, userId: string): Promise<JsonObject> {
    const version = await this.checkMakeRequest(origin, roomId, userId, undefined);
    const draft = await this.draftMembership(roomId, userId, { membership: "leave" });
    if (!draft.allowed) throw forbidden(`You cannot leave this room: ${draft.reason ?? ""}`.trim());
    return { event: draft.pdu, room_version: version };
  }

  /** `PUT /v2/send_leave/{roomId}/{eventId}`: the leave placed and passed on to the room's other servers. */
  async sendLeave(origin: string, roomId: string, eventId: string, body: unknown): Promise<JsonObject> {
    if (!unsafeTestBreak("send-leave-not-persisted")) await this.receiveMembership(origin, roomId, eventId, body, "leave");
    return {};
  }

  // ---- Invites -----------------------------------------------------------------------------------------

  /** A local user invites a user of another server: the invite signed by their server, then placed. */
  async inviteRemote(inviter: string, roomId: string, target: string, extra: JsonObject): Promise<void> {
    const server = serverNameOf(target);
    if (server === undefined) throw new MatrixError(400, "M_INVALID_PARAM", "Invalid user ID");
    const draft = await this.d.persister.draft(roomId, {
      type: "m.room.member",
      state_key: target,
      sender: inviter,
      content: { membership: "invite", ...extra },
    });
    if (!draft.allowed) throw forbidden(`You may not invite this user: ${draft.reason ?? ""}`.trim());
    const version = draft.version;
    // Room versions 1–2: an event of ours carries the ID we choose for it.
    if (roomVersionRules(version).eventFormat === "v1") draft.pdu.event_id = newEventIdWithDomain(this.d.serverName);
    const signed = signEvent(version, draft.pdu, this.d.serverName, this.d.signingKey);
    const eventId = computeEventId(version, signed);
    const inviteRoomState = await this.strippedState(roomId, inviter);
    const v2 = await this.rawCall(server, "PUT", `/_matrix/federation/v2/invite/${enc(roomId)}/${enc(eventId)}`, {
      event: signed,
      room_version: version,
      invite_room_state: unsafeTestBreak("omit-invite-room-state") ? [] : inviteRoomState,
    });
    let answered: unknown;
    const unrecognised = unrecognisedEndpoint(v2);
    if (unrecognised && roomVersionRules(version).eventFormat === "v1") {
      // A server without the v2 API (deprecated v1: the event is the body, the stripped state in
      // its unsigned; the answer is `[200, {event}]`), for the room versions that API knows, as
      // Synapse falls back.
      const v1 = await this.call(server, "PUT", `/_matrix/federation/v1/invite/${enc(roomId)}/${enc(eventId)}`, {
        ...signed,
        unsigned: { ...asObject(signed.unsigned), invite_room_state: inviteRoomState },
      });
      answered = Array.isArray(v1.body) ? asObject(v1.body[1]).event : undefined;
    } else {
      if (unrecognised) throw new MatrixError(400, "M_UNSUPPORTED_ROOM_VERSION", `${server} does not support this room's version`);
      answered = asObject(this.answerOf(server, v2).body).event;
    }
    const [back] = await this.d.checker.check(version, [answered]);
    if (!back?.ok && back?.reason.includes("not canonical JSON")) {
      throw new MatrixError(400, "M_BAD_JSON", `${server} answered the invite with an event that is not canonical JSON`);
    }
    if (!back?.ok || back.eventId !== eventId || back.redacted) {
      throw new MatrixError(502, "M_UNKNOWN", `${server} answered the invite with an event that is not ours`);
    }
    const [outcome] = await this.d.persister.enqueueRemote(roomId, [{ eventId, pdu: pduOf(version, back.event) as unknown as Pdu }]);
    if (outcome?.status !== "accepted" && outcome?.status !== "duplicate") throw forbidden(`The invite was refused: ${outcome?.reason ?? ""}`);
  }

  /** The stripped state an invite carries: a few current state events and the inviter's membership. */
  private async strippedState(roomId: string, inviter: string | undefined): Promise<JsonObject[]> {
    const ids: string[] = [];
    for (const type of INVITE_STATE_TYPES) {
      const id = await this.d.rooms.currentStateEventId(roomId, type, "");
      if (id !== undefined) ids.push(id);
    }
    const member = inviter === undefined ? undefined : await this.d.rooms.currentStateEventId(roomId, "m.room.member", inviter);
    if (member !== undefined) ids.push(member);
    const events = await this.d.eventStore.getEvents(ids);
    return ids.flatMap((id) => {
      const e = events.get(id);
      return e ? [{ type: e.type, state_key: e.stateKey ?? "", sender: e.sender, content: (e.pdu as JsonObject).content ?? {} }] : [];
    });
  }

  /** `PUT /v2/invite/{roomId}/{eventId}`: another server invites one of our users; we sign it. */
  async receiveInvite(origin: string, roomId: string, eventId: string, body: JsonObject): Promise<JsonObject> {
    const version = typeof body.room_version === "string" ? body.room_version : "1";
    if (!isSupportedRoomVersion(version)) {
      throw new MatrixError(400, "M_INCOMPATIBLE_ROOM_VERSION", "This server does not support the room's version", { room_version: version });
    }
    // The room's server ACL, when we hold the room's state.
    await this.d.assertServerAllowed?.(roomId, origin);
    const [checked] = await this.d.checker.check(version, [body.event]);
    if (!checked?.ok) throw refusedEvent("The invite event", checked?.reason);
    const e = checked.event;
    if (checked.eventId !== eventId || e.room_id !== roomId) throw new MatrixError(400, "M_BAD_JSON", "The event does not match the request");
    if (e.type !== "m.room.member" || e.content.membership !== "invite" || typeof e.state_key !== "string") {
      throw new MatrixError(400, "M_BAD_JSON", "Not an invite event");
    }
    if (serverNameOf(e.sender) !== origin) throw forbidden("The inviter is not on the requesting server");
    if (serverNameOf(e.state_key) !== this.d.serverName) throw forbidden("The invitee is not a user of this server");
    // No check that the user exists: the spec asks none, and Synapse 1.67 signs invites for any
    // user ID of its own (sytest relies on it); an invite to nobody is never seen.
    const current = await this.d.rooms.membership(roomId, e.state_key);
    if (current?.membership === "join" || current?.membership === "ban") throw forbidden(`The user's membership is ${current.membership}`);
    const signed = signEvent(version, pduOf(version, e), this.d.serverName, this.d.signingKey);
    if (!(await this.weAreIn(roomId))) {
      // Out of band: the invitee's /sync shows it with the room's stripped state.
      const inviteState = Array.isArray(body.invite_room_state) ? body.invite_room_state.slice(0, 50) : [];
      const stored = { ...signed, unsigned: { invite_room_state: inviteState } } as unknown as Pdu;
      const create = inviteState.find((x): x is JsonObject => typeof x === "object" && x !== null && (x as JsonObject).type === "m.room.create");
      await this.d.persister.storeOutliers(roomId, [], { version, creator: typeof create?.sender === "string" ? create.sender : e.sender });
      await this.d.persister.enqueueRemote(roomId, [{ eventId, pdu: stored, outOfBand: { userId: e.state_key, membership: "invite" } }]);
    }
    return { event: unsafeTestBreak("unsigned-invite-answer") ? body.event : signed };
  }

  // ---- Requests --------------------------------------------------------------------------------------

  /** A signed request; a refusal becomes the MatrixError the client should see. */
  private async call(server: string, method: "GET" | "PUT" | "POST", path: string, body?: unknown): Promise<FederationResponse> {
    return this.answerOf(server, await this.rawCall(server, method, path, body));
  }

  /** A request whatever its status; throws 502 only when the server cannot be reached. */
  private async rawCall(server: string, method: "GET" | "PUT" | "POST", path: string, body?: unknown): Promise<FederationResponse> {
    try {
      return await this.d.http.request(server, { method, path, ...(body === undefined ? {} : { body }) });
    } catch (err) {
      throw new MatrixError(502, "M_UNKNOWN", `${server} could not be reached: ${err instanceof Error ? err.message.slice(0, 200) : "error"}`);
    }
  }

  /** A 200 answer, or its error as ours to pass on (403, 404 and 400 kept, anything else 502). */
  private answerOf(server: string, res: FederationResponse): FederationResponse {
    if (res.status === 200) return res;
    const answer = typeof res.body === "object" && res.body !== null ? (res.body as JsonObject) : {};
    const errcode = typeof answer.errcode === "string" ? answer.errcode.slice(0, 100) : "M_UNKNOWN";
    const error = typeof answer.error === "string" ? answer.error.slice(0, 300) : `${server} answered ${res.status}`;
    if (res.status === 403) throw new MatrixError(403, errcode === "M_UNKNOWN" ? "M_FORBIDDEN" : errcode, error);
    if (res.status === 404) throw new MatrixError(404, "M_NOT_FOUND", error);
    if (res.status === 400) {
      const roomVersion = typeof answer.room_version === "string" ? { room_version: answer.room_version.slice(0, 50) } : {};
      throw new MatrixError(400, errcode, error, roomVersion);
    }
    throw new MatrixError(502, "M_UNKNOWN", `${server} answered ${res.status}: ${error}`);
  }
}

/** The auth events a set of events names outside itself (in v12, the create event the room ID implies). */
function authEventsOutside(roomId: string, rules: RoomVersionRules, byId: ReadonlyMap<string, RoomEvent>): string[] {
  const outside = new Set<string>();
  for (const e of byId.values()) for (const a of referencedIds(e.auth_events)) if (!byId.has(a)) outside.add(a);
  if (rules.roomIdIsCreateEventId) {
    const createId = createEventIdOfRoom(roomId);
    if (!byId.has(createId)) outside.add(createId);
  }
  return [...outside];
}

function enc(s: string): string {
  return encodeURIComponent(s);
}

/**
 * Whether a server answered that it does not have the endpoint: 404 or 405 without an errcode, or
 * M_UNRECOGNIZED (as Synapse tells them apart before falling back to an older API).
 */
function unrecognisedEndpoint(res: FederationResponse): boolean {
  const errcode = asObject(res.body).errcode;
  return ((res.status === 404 || res.status === 405) && errcode === undefined) || ((res.status === 404 || res.status === 400) && errcode === "M_UNRECOGNIZED");
}

/**
 * A membership event another server asked us to sign or place that failed the checks on receipt:
 * 400 M_BAD_JSON when it is not canonical JSON (room versions 6+), else 403 M_FORBIDDEN (unsigned,
 * wrongly signed or malformed), as Synapse answers.
 */
function refusedEvent(what: string, reason: string | undefined): MatrixError {
  const text = `${what} is not valid: ${reason ?? "missing"}`;
  return reason?.includes("not canonical JSON") ? new MatrixError(400, "M_BAD_JSON", text) : new MatrixError(403, "M_FORBIDDEN", text);
}

function asObject(value: unknown): JsonObject {
  return typeof value === "object" && value !== null && !Array.isArray(value) ? (value as JsonObject) : {};
}

function inputOf(version: string, c: Extract<CheckedPdu, { ok: true }>): RemoteEventInput {
  return { eventId: c.eventId, pdu: pduOf(version, c.event) as unknown as Pdu };
}

/** The state map of a list of state PDUs, keeping those that passed the checks and were not rejected. */
function stateOf(version: string, pdus: readonly unknown[], checked: Map<string, { event: RoomEvent; rejected: boolean }>): Map<StateMapKey, string> {
  const state = new Map<StateMapKey, string>();
  for (const p of pdus) {
    if (typeof p !== "object" || p === null || Array.isArray(p)) continue;
    let eventId: string;
    try {
      eventId = computeEventId(version, pduOf(version, p as JsonObject));
    } catch {
      continue;
    }
    const found = checked.get(eventId);
    if (!found || found.rejected || typeof found.event.state_key !== "string") continue;
    state.set(stateMapKey(found.event.type, found.event.state_key), eventId);
  }
  return state;
}

/**
 * The per-PDU answer of a transaction: an error only for what could not be processed. A rejected or
 * soft-failed event was processed (and stored as such): no error, as Synapse answers and sytest expects.
 */
function outcomeError(o: RemoteEventOutcome): string | undefined {
  if (o.status !== "unplaced") return undefined;
  return o.reason ?? o.status;
}

/**
 * Puts rooms across servers together (called where the homeserver is assembled): the fan-out of
 * our events, received PDUs into the rooms, and federation behind the rooms service's joins,
 * invites and aliases.
 */
export function connectRoomFederation(
  federation: Federation,
  deps: Omit<RoomFederationDeps, "http" | "checker" | "history" | "sender" | "assertServerAllowed"> & { timeline: Timeline },
): RoomFederation {
  const { timeline: _timeline, ...roomDeps } = deps;
  const rooms = new RoomFederation({
    ...roomDeps,
    http: federation.http,
    checker: federation.pduChecker,
    history: federation.history,
    sender: federation.sender,
    assertServerAllowed: (roomId, server) => federation.acl.assertServerAllowed(roomId, server),
  });
  rooms.connect();
  federation.inbound.placePdusWith((origin, version, checked) => rooms.receivePdus(origin, version, checked));
  deps.rooms.federateWith({
    join: (userId, roomId, servers, extra) => rooms.joinRemote(userId, roomId, servers, extra),
    invite: (inviter, roomId, target, extra) => rooms.inviteRemote(inviter, roomId, target, extra),
    leave: (userId, roomId, servers, extra) => rooms.leaveRemote(userId, roomId, servers, extra),
    knock: (userId, roomId, servers, extra) => rooms.knockRemote(userId, roomId, servers, extra),
    resolveAlias: (alias) => federation.queries.roomAlias(alias),
  });
  deps.timeline.backfillWith((roomId, limit) => rooms.backfill(roomId, limit));
  federation.rooms = rooms;
  return rooms;
}

/**
 * An invite made from a third-party invite that this server built for one of its users, on behalf
 * of an inviter of another server (server/rooms/third-party-invites.ts): ours to send, though its
 * sender is not our user. Only we signed it; one received from another server carries its
 * signature too.
 */
function isOurThirdPartyInvite(e: RoomEvent, serverName: string): boolean {
  if (e.type !== "m.room.member" || e.content.membership !== "invite" || !("third_party_invite" in e.content)) return false;
  if (typeof e.state_key !== "string" || serverNameOf(e.state_key) !== serverName) return false;
  const signers = Object.keys((e as { signatures?: Record<string, unknown> }).signatures ?? {});
  return signers.length === 1 && signers[0] === serverName;
}

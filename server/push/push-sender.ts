// Pushing notifications to the users' push gateways, durably.
// https://spec.matrix.org/latest/client-server-api/#push-notifications
// https://spec.matrix.org/latest/push-gateway-api/#homeserver-behaviour
//
// Push rules are evaluated once, when an event is persisted (server/sync/push-actions.ts): every
// local member it notifies gets an `event_push_actions` row, with the rule's actions, in the
// transaction that stores the event. Nothing here runs on that path. After commit, `ingest` copies
// the new rows (up to the committed stream position, with a cursor in `push_progress`) into
// `push_notifications` (what `GET /notifications` lists) and, for users with http pushers, into
// `push_queue`; the sender then POSTs them to the gateways, one pusher's pushes in order, and deletes
// each once its gateway answered. A gateway that is down gets its pusher's pushes again with
// exponential backoff; a push older than `maxAgeMs` is dropped. Both survive a restart: the cursor
// and the queue are in the database.
import type { Logger } from "pino";
import { sql } from "drizzle-orm";
import { type Database, rowsOf } from "../../schema/db.ts";
import type { NotifyOutcome } from "./gateway-client.ts";
import type { Pusher, Pushers } from "./pushers.ts";

/** The room and event lookups a push needs (the rooms component's). */
export interface PushEventSource {
  getEvent(eventId: string): Promise<{ eventId: string; roomId: string; type: string; stateKey: string | undefined; sender: string; pdu: Record<string, unknown> } | undefined>;
  currentStateContent(roomId: string, type: string, stateKey?: string): Promise<Record<string, unknown> | undefined>;
}

export interface PushSenderOptions {
  db: Database;
  pushers: Pushers;
  gateway: { notify(url: string, notification: Record<string, unknown>): Promise<NotifyOutcome> };
  events: PushEventSource;
  now: () => number;
  logger: Logger;
  /** A push still undelivered this long after it was queued is dropped (default 24 h). */
  maxAgeMs?: number;
  /** The first retry's delay; each failure doubles it, up to `maxBackoffMs`. */
  backoffMs?: number;
  maxBackoffMs?: number;
}

type StateContent = Record<string, unknown> | undefined;
/** A pushed event with what its notification says of the room. */
interface EventDetails {
  event: NonNullable<Awaited<ReturnType<PushEventSource["getEvent"]>>>;
  member: StateContent;
  name: StateContent;
  alias: StateContent;
}

interface QueuedPush {
  id: number;
  pusher_id: string | number;
  user_id: string;
  room_id: string | null;
  event_id: string | null;
  stream_ordering: string | number | null;
  actions: unknown;
  created_ts: string | number;
  attempts: number;
}

/** How long after a commit its notifications are copied (see eventsCommitted). */
const INGEST_DELAY_MS = 20;
/** Stream positions with notifications copied per ingest transaction (a position is one event: up to one row per local member). */
const INGEST_POSITIONS = 200;
const BATCH = 200;
/** A claimed batch's unread counts and which of its notifications are still unread. */
interface Unread {
  count(userId: string): number;
  isUnread(push: QueuedPush): boolean;
}
/** How long a claimed batch is this process's alone (longer than sending it takes: 16 at once, 10 s timeouts). */
const LEASE_MS = 120_000;
/** The advisory lock that serialises claims of due pushes across processes ("push" in ASCII). */
const PUSH_CLAIM_LOCK = 0x70757368;
/** Pushers served at once. */
const CONCURRENCY = 16;

export class PushSender {
  private readonly db: Database;
  private readonly maxAgeMs: number;
  private readonly backoffMs: number;
  private readonly maxBackoffMs: number;
  private running = false;
  private ingesting: Promise<void> | undefined;
  private ingestAgain = false;
  private draining: Promise<void> | undefined;
  private drainAgain = false;
  private timer: NodeJS.Timeout | undefined;
  /**
   * The copy cursor as this process last read or wrote it: at or behind the real one (only copies
   * move it, forward), so "nothing past it" is a safe answer without reading the cursor.
   */
  private cursorSeen = 0;

  constructor(private readonly o: PushSenderOptions) {
    this.db = o.db;
    this.maxAgeMs = o.maxAgeMs ?? 24 * 3600_000;
    this.backoffMs = o.backoffMs ?? 500;
    this.maxBackoffMs = o.maxBackoffMs ?? 5 * 60_000;
  }

  async start(): Promise<void> {
    // The cursor row exists before any read receipt takes its share lock (UnreadCounts.markRead).
    await this.db.execute(sql`insert into push_progress (id, stream_ordering) values (1, 0) on conflict do nothing`);
    this.running = true;
    this.eventsCommitted();
    this.wake();
  }

  async stop(): Promise<void> {
    this.running = false;
    clearTimeout(this.timer);
    await Promise.all([this.ingesting, this.draining]);
  }

  /** Room events were committed (here or in another process): copy their notifications. */
  eventsCommitted(): void {
    if (!this.running) return;
    if (this.ingesting) {
      this.ingestAgain = true;
      return;
    }
    this.ingesting = (async () => {
      try {
        // A moment's wait: the reads of the clients woken by the events go first (a push can wait
        // milliseconds, a /sync should not), and a burst of events is copied in one transaction.
        await new Promise((r) => setTimeout(r, INGEST_DELAY_MS));
        do {
          this.ingestAgain = false;
          for (;;) {
            if (!this.running) break;
            const { queued, more } = await this.ingest();
            // Only pushes to send wake the sender: most events notify no user with a pusher.
            if (queued) this.wake();
            if (!more) break;
          }
        } while (this.ingestAgain && this.running);
      } catch (err) {
        this.o.logger.warn({ err }, "push: copying notifications failed; retrying at the next event");
      } finally {
        this.ingesting = undefined;
      }
    })();
  }

  /**
   * Copies the notifications of the next committed stream positions: `queued` when pushes were
   * queued for pushers, `more` when committed positions remain past those copied. One transaction,
   * the cursor row locked: one process at a time.
   */
  async ingest(): Promise<{ queued: boolean; more: boolean }> {
    const now = this.o.now();
    // Most events notify no one: then one read, no transaction. The cursor stays behind until the
    // next notification (the positions between have nothing to copy).
    const [pending] = rowsOf<{ pending: boolean }>(
      await this.db.execute(sql`select exists (select 1 from event_push_actions where stream_ordering > ${this.cursorSeen}) as pending`),
    );
    if (!pending?.pending) return { queued: false, more: false };
    let copiedUpTo: number | undefined;
    const result = await this.db.transaction(async (tx) => {
      await tx.execute(sql`insert into push_progress (id, stream_ordering) values (1, 0) on conflict do nothing`);
      const [cursor] = rowsOf<{ stream_ordering: string | number }>(
        await tx.execute(sql`select stream_ordering from push_progress where id = 1 for update`),
      );
      const from = Number(cursor!.stream_ordering);
      this.cursorSeen = from;
      const [committed] = rowsOf<{ position: string | number }>(await tx.execute(sql`select position from stream_positions where stream = 'events'`));
      const last = Number(committed?.position ?? 0);
      if (last <= from) return { queued: false, more: false };
      // Up to INGEST_POSITIONS positions that have notifications, however far apart.
      const [bound] = rowsOf<{ stream_ordering: string | number }>(
        await tx.execute(sql`select stream_ordering from event_push_actions where stream_ordering > ${from} and stream_ordering <= ${last}
          group by stream_ordering order by stream_ordering offset ${INGEST_POSITIONS - 1} limit 1`),
      );
      const upTo = bound ? Number(bound.stream_ordering) : last;
      await tx.execute(sql`insert into push_notifications (user_id, stream_ordering, room_id, event_id, highlight, actions, ts)
        select user_id, stream_ordering, room_id, event_id, highlight, coalesce(actions, '["notify"]'::jsonb), ${now}
        from event_push_actions where stream_ordering > ${from} and stream_ordering <= ${upTo}
        on conflict do nothing`);
      const queued = rowsOf(
        await tx.execute(sql`insert into push_queue (pusher_id, user_id, room_id, event_id, stream_ordering, actions, created_ts, next_attempt_ts)
          select p.id, a.user_id, a.room_id, a.event_id, a.stream_ordering, coalesce(a.actions, '["notify"]'::jsonb), ${now}, ${now}
          from event_push_actions a join pushers p on p.user_id = a.user_id and p.kind = 'http'
          where a.stream_ordering > ${from} and a.stream_ordering <= ${upTo}
          order by a.stream_ordering
          returning 1`),
      );
      await tx.execute(sql`update push_progress set stream_ordering = ${upTo} where id = 1`);
      copiedUpTo = upTo;
      return { queued: queued.length > 0, more: upTo < last };
    });
    if (copiedUpTo !== undefined) this.cursorSeen = copiedUpTo; // committed
    return result;
  }

  /**
   * A read receipt of a local user moved: their gateways get the new unread count (no event), so a
   * badge clears when the user read everything elsewhere.
   */
  async countsChanged(userId: string): Promise<void> {
    if (!this.running || !(await this.o.pushers.hasPushers(userId))) return;
    const now = this.o.now();
    await this.db.execute(sql`insert into push_queue (pusher_id, user_id, actions, created_ts, next_attempt_ts)
      select id, user_id, '[]'::jsonb, ${now}, ${now} from pushers where user_id = ${userId} and kind = 'http'`);
    this.wake();
  }

  /** Sends what is due. */
  wake(): void {
    if (!this.running) return;
    if (this.draining) {
      this.drainAgain = true;
      return;
    }
    this.draining = (async () => {
      try {
        do {
          this.drainAgain = false;
          while (this.running && (await this.sendDue())) {
            // more due
          }
        } while (this.drainAgain && this.running);
        await this.scheduleNext();
      } catch (err) {
        this.o.logger.warn({ err }, "push: sending failed; retrying shortly");
        this.schedule(this.backoffMs);
      } finally {
        this.draining = undefined;
      }
    })();
  }

  private schedule(ms: number): void {
    clearTimeout(this.timer);
    if (!this.running) return;
    this.timer = setTimeout(() => this.wake(), Math.max(0, ms));
    this.timer.unref();
  }

  private async scheduleNext(): Promise<void> {
    const [next] = rowsOf<{ ts: string | number | null }>(await this.db.execute(sql`select min(next_attempt_ts) as ts from push_queue`));
    if (next?.ts != null) this.schedule(Number(next.ts) - this.o.now());
  }

  /** One batch of due pushes; true when the batch was full (there may be more due). */
  private async sendDue(): Promise<boolean> {
    const now = this.o.now();
    const dropped = rowsOf(await this.db.execute(sql`delete from push_queue where created_ts < ${now - this.maxAgeMs} returning id`));
    if (dropped.length) this.o.logger.warn({ dropped: dropped.length }, "push: dropped pushes their gateway did not take in time");
    // Claimed for LEASE_MS (their next attempt moved past it), so another process sharing the
    // database does not send them too. Only pushers none of whose pushes is claimed or backing off
    // are taken, whole, so one pusher's pushes stay in order. Claims are serialised across
    // processes by a transaction-scoped advisory lock: each claim sees the previous one's leases.
    // A process that dies holding a lease leaves its pushes due again when it runs out.
    const rows = await this.db.transaction(async (tx) => {
      await tx.execute(sql`select pg_advisory_xact_lock(${PUSH_CLAIM_LOCK})`);
      return rowsOf<QueuedPush>(
        await tx.execute(sql`update push_queue set next_attempt_ts = ${now + LEASE_MS}
          where next_attempt_ts <= ${now} and pusher_id in (
            select pusher_id from push_queue group by pusher_id having max(next_attempt_ts) <= ${now} order by min(id) limit ${BATCH})
          returning id, pusher_id, user_id, room_id, event_id, stream_ordering, actions, created_ts, attempts`),
      ).sort((a, b) => Number(a.id) - Number(b.id));
    });
    if (rows.length === 0) return false;
    const byPusher = new Map<number, QueuedPush[]>();
    for (const r of rows) {
      const id = Number(r.pusher_id);
      let list = byPusher.get(id);
      if (!list) byPusher.set(id, (list = []));
      list.push(r);
    }
    const pushers = await this.o.pushers.byIds([...byPusher.keys()]);
    const work = [...byPusher.entries()];
    // A room's event goes to many pushers: read it (and the room's names) once per batch.
    const events = new Map<string, Promise<EventDetails | undefined>>();
    const unread = await this.unreadOf(rows);
    const finished: number[] = [];
    const next = async (): Promise<void> => {
      for (let item = work.shift(); item; item = work.shift()) {
        const [pusherId, pushes] = item;
        const pusher = pushers.get(pusherId);
        if (!pusher) {
          // The pusher went (deleted, rejected): its pushes go with it.
          await this.db.execute(sql`delete from push_queue where pusher_id = ${pusherId}`);
          continue;
        }
        await this.sendFor(pusher, pushes, events, unread, finished);
      }
    };
    try {
      await Promise.all(Array.from({ length: Math.min(CONCURRENCY, work.length) }, next));
    } finally {
      // The pushes the gateways took (or refused for good) leave the queue together: one statement
      // per batch instead of one per push. Until then they stay claimed by this process's lease; a
      // crash in between sends them again when it runs out (pushes are at least once).
      if (finished.length > 0) {
        await this.db.execute(sql`delete from push_queue where id in (select (jsonb_array_elements_text(${JSON.stringify(finished)}::jsonb))::bigint)`);
      }
    }
    return byPusher.size === BATCH;
  }

  /** A pusher's due pushes, in order; stops at the first the gateway could not take (it backs off). */
  private async sendFor(pusher: Pusher, pushes: QueuedPush[], events: Map<string, Promise<EventDetails | undefined>>, unread: Unread, finished: number[]): Promise<void> {
    const url = pusher.data.url as string;
    for (const push of pushes) {
      const notification = await this.notificationFor(pusher, push, events, unread);
      const outcome: NotifyOutcome = notification ? await this.o.gateway.notify(url, notification) : { kind: "sent", rejected: [] };
      if (outcome.kind === "retry") {
        const delay = Math.min(this.maxBackoffMs, this.backoffMs * 2 ** Math.min(push.attempts, 30));
        this.o.logger.info({ pusher: pusher.id, why: outcome.why, retryInMs: delay }, "push: the gateway could not take a push; retrying");
        await this.db.execute(sql`update push_queue set attempts = attempts + 1, next_attempt_ts = ${this.o.now() + delay} where pusher_id = ${pusher.id}`);
        return;
      }
      if (outcome.kind === "refused") this.o.logger.warn({ pusher: pusher.id, why: outcome.why }, "push: the gateway refused a push; dropped");
      finished.push(Number(push.id));
      if (outcome.kind === "sent" && outcome.rejected.includes(pusher.pushkey)) {
        this.o.logger.info({ pusher: pusher.id, user: pusher.userId }, "push: the gateway rejected the pushkey; pusher removed");
        await this.o.pushers.rejected([pusher.id]);
        await this.db.execute(sql`delete from push_queue where pusher_id = ${pusher.id}`);
        return;
      }
    }
  }

  /**
   * The `notification` of a push (push-gateway-api), or undefined when there is nothing to send any
   * more: the user read the event in the meantime, or it is gone.
   */
  private eventDetails(eventId: string): Promise<EventDetails | undefined> {
    return (async () => {
      const event = await this.o.events.getEvent(eventId);
      if (!event) return undefined;
      const [member, name, alias] = await Promise.all([
        this.o.events.currentStateContent(event.roomId, "m.room.member", event.sender),
        this.o.events.currentStateContent(event.roomId, "m.room.name", ""),
        this.o.events.currentStateContent(event.roomId, "m.room.canonical_alias", ""),
      ]);
      return { event, member, name, alias };
    })();
  }

  /**
   * For a claimed batch, in two reads: each user's unread notification count (all rooms; what the
   * badge shows when the batch is sent), and which of the batch's notifications are still unread
   * (a read receipt or the user's own message since removed their `event_push_actions` row).
   */
  private async unreadOf(rows: readonly QueuedPush[]): Promise<Unread> {
    const users = [...new Set(rows.map((r) => r.user_id))];
    const withEvent = rows.filter((r) => r.event_id !== null && r.room_id !== null && r.stream_ordering !== null);
    const key = (userId: string, roomId: string, stream: number) => `${userId}\u0000${roomId}\u0000${stream}`;
    // Each list is one JSON parameter, whatever the batch's size (thousands of bind parameters
    // overflow PGlite's protocol buffer, and PostgreSQL takes at most 65,535).
    const counts = await this.db.execute(sql`select user_id, count(*) as n from event_push_actions
      where user_id in (select jsonb_array_elements_text(${JSON.stringify(users)}::jsonb)) group by user_id`);
    const still =
      withEvent.length === 0
        ? []
        : rowsOf<{ user_id: string; room_id: string; stream_ordering: string | number }>(
            await this.db.execute(sql`select e.user_id, e.room_id, e.stream_ordering from event_push_actions e
              join jsonb_to_recordset(${JSON.stringify(withEvent.map((r) => ({ user_id: r.user_id, room_id: r.room_id, stream_ordering: Number(r.stream_ordering) })))}::jsonb)
                as x(user_id text, room_id text, stream_ordering bigint)
              on e.user_id = x.user_id and e.room_id = x.room_id and e.stream_ordering = x.stream_ordering`),
          );
    const countOf = new Map(rowsOf<{ user_id: string; n: string | number }>(counts).map((r) => [r.user_id, Number(r.n)]));
    const unread = new Set(still.map((r) => key(r.user_id, r.room_id, Number(r.stream_ordering))));
    return {
      count: (userId) => countOf.get(userId) ?? 0,
      isUnread: (p) => p.room_id !== null && p.stream_ordering !== null && unread.has(key(p.user_id, p.room_id, Number(p.stream_ordering))),
    };
  }

  private async notificationFor(
    pusher: Pusher,
    push: QueuedPush,
    events: Map<string, Promise<EventDetails | undefined>>,
    unread: Unread,
  ): Promise<Record<string, unknown> | undefined> {
    const counts = { unread: unread.count(push.user_id) };
    const { url: _url, ...data } = pusher.data;
    const actions = Array.isArray(push.actions) ? push.actions : [];
    const tweaks: Record<string, unknown> = {};
    for (const a of actions) {
      if (typeof a === "object" && a !== null && typeof (a as { set_tweak?: unknown }).set_tweak === "string") {
        const t = a as { set_tweak: string; value?: unknown };
        tweaks[t.set_tweak] = t.value === undefined ? true : t.value;
      }
    }
    const device = { app_id: pusher.appId, pushkey: pusher.pushkey, pushkey_ts: Math.floor(pusher.pushkeyTs / 1000), data, tweaks };
    if (push.event_id === null) {
      // A count-only update (a read receipt): no event, the counts, the device.
      return { counts, devices: [device], prio: "high" };
    }
    if (!unread.isUnread(push)) return undefined;
    let details = events.get(push.event_id);
    if (!details) events.set(push.event_id, (details = this.eventDetails(push.event_id)));
    const found = await details;
    if (!found) return undefined;
    const { event, member, name, alias } = found;
    // Synapse's rule: a highlight, a sound, or an encrypted event (the client decides) is worth waking the device.
    const prio = event.type === "m.room.encrypted" || tweaks.highlight === true || tweaks.sound !== undefined ? "high" : "low";
    // `id` is the event ID's name before spec r0.4 (push gateways such as sytest's still read it).
    const base = { event_id: event.eventId, id: event.eventId, room_id: event.roomId, counts, devices: [device], prio };
    if (data.format === "event_id_only") return base;
    return {
      ...base,
      type: event.type,
      sender: event.sender,
      ...(typeof member?.displayname === "string" ? { sender_display_name: member.displayname } : {}),
      // The room's name as clients would show it: its name, else its canonical alias (Synapse's choice too).
      ...(typeof name?.name === "string" && name.name !== ""
        ? { room_name: name.name }
        : typeof alias?.alias === "string"
          ? { room_name: alias.alias }
          : {}),
      ...(typeof alias?.alias === "string" ? { room_alias: alias.alias } : {}),
      // `membership` is not in the spec's notification; Synapse sends it and gateways (sytest's) read it.
      ...(event.type === "m.room.member"
        ? { user_is_target: event.stateKey === push.user_id, membership: (event.pdu.content as { membership?: unknown } | undefined)?.membership }
        : {}),
      content: (event.pdu.content as Record<string, unknown> | undefined) ?? {},
    };
  }
}

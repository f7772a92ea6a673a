// `GET /notifications`: the events that notified the user, newest first.
// https://spec.matrix.org/latest/client-server-api/#get_matrixclientv3notifications
//
// The list is `push_notifications` (copied from `event_push_actions` after commit, push-sender.ts);
// a notification is read when its `event_push_actions` row is gone (a read receipt, or the user's
// own message, deleted it).
import { sql } from "drizzle-orm";
import { type Database, rowsOf } from "../../schema/db.ts";
import { MatrixError } from "../http/errors.ts";
import type { ClientEvent, EventStore, Reader } from "../rooms/event-store.ts";

export interface NotificationJson {
  actions: unknown[];
  event: ClientEvent;
  profile_tag: string | null;
  read: boolean;
  room_id: string;
  ts: number;
}

const DEFAULT_LIMIT = 20;
const MAX_LIMIT = 100;

export class NotificationsList {
  constructor(
    private readonly db: Database,
    private readonly eventStore: Pick<EventStore, "getEvents" | "format">,
  ) {}

  async list(
    reader: Reader,
    options: { from?: string; limit?: number; only?: string },
  ): Promise<{ notifications: NotificationJson[]; next_token?: string }> {
    let before: number | undefined;
    if (options.from !== undefined) {
      if (!/^[0-9]{1,15}$/.test(options.from)) throw new MatrixError(400, "M_INVALID_PARAM", "from is not a token this server gave");
      before = Number(options.from);
    }
    const limit = Math.min(Math.max(options.limit ?? DEFAULT_LIMIT, 1), MAX_LIMIT);
    const rows = rowsOf<{ stream_ordering: string | number; room_id: string; event_id: string; actions: unknown; ts: string | number; unread: boolean }>(
      await this.db.execute(sql`select n.stream_ordering, n.room_id, n.event_id, n.actions, n.ts,
          exists (select 1 from event_push_actions a where a.user_id = n.user_id and a.room_id = n.room_id
            and a.stream_ordering = n.stream_ordering) as unread
        from push_notifications n
        where n.user_id = ${reader.userId}
          ${before === undefined ? sql`` : sql`and n.stream_ordering < ${before}`}
          ${options.only === "highlight" ? sql`and n.highlight` : sql``}
        order by n.stream_ordering desc limit ${limit + 1}`),
    );
    const page = rows.slice(0, limit);
    const stored = await this.eventStore.getEvents(page.map((r) => r.event_id));
    const present = page.filter((r) => stored.has(r.event_id));
    const formatted = await this.eventStore.format(
      present.map((r) => stored.get(r.event_id)!),
      reader,
      { aggregations: false },
    );
    const notifications = present.map((r, i) => ({
      actions: Array.isArray(r.actions) ? r.actions : [],
      event: formatted[i]!,
      // The spec's "profile tag of the rule that matched": rules carry none here (device-specific
      // rules are gone from the spec), so it is null, as Synapse sends it.
      profile_tag: null,
      read: !r.unread,
      room_id: r.room_id,
      ts: Number(r.ts),
    }));
    const last = page[page.length - 1];
    return { notifications, ...(rows.length > limit && last ? { next_token: String(last.stream_ordering) } : {}) };
  }
}

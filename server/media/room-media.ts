// The local media a room's events refer to, for `parley admin media purge-room`: the mxc URIs of
// m.room.message and m.sticker content (`url`, `info.thumbnail_url`, and for encrypted attachments
// `file.url` and `info.thumbnail_file.url`) and of the room's avatar (m.room.avatar `url`, every
// version of it). Only URIs of this server are returned: other servers' media is theirs.
// https://spec.matrix.org/latest/client-server-api/#mroommessage-msgtypes
import { sql } from "drizzle-orm";
import { EVENT_COLUMNS, type EventStore } from "../rooms/event-store.ts";

const PAGE = 1000;
const TYPES = ["m.room.message", "m.sticker", "m.room.avatar"];

/** The media IDs of `mxc://{serverName}/…` URIs found in the room's message, sticker and avatar events. */
export async function localMediaIdsInRoom(eventStore: EventStore, roomId: string, serverName: string): Promise<string[]> {
  const ids = new Set<string>();
  let after = "";
  for (;;) {
    const page = await eventStore.query(sql`select ${EVENT_COLUMNS} from events e join rooms r on r.room_id = e.room_id
      where e.room_id = ${roomId} and e.type in (${sql.join(TYPES.map((t) => sql`${t}`), sql`, `)}) and e.event_id > ${after}
      order by e.event_id limit ${PAGE}`);
    for (const event of page) {
      for (const uri of mxcUris(event.pdu.content)) {
        const id = localMediaId(uri, serverName);
        if (id) ids.add(id);
      }
    }
    if (page.length < PAGE) break;
    after = page[page.length - 1]!.eventId;
  }
  return [...ids];
}

function mxcUris(content: unknown): string[] {
  if (!isObject(content)) return [];
  const info = isObject(content.info) ? content.info : {};
  const candidates = [
    content.url,
    info.thumbnail_url,
    isObject(content.file) ? content.file.url : undefined,
    isObject(info.thumbnail_file) ? info.thumbnail_file.url : undefined,
  ];
  return candidates.filter((c): c is string => typeof c === "string");
}

function localMediaId(uri: string, serverName: string): string | undefined {
  const prefix = `mxc://${serverName}/`;
  if (!uri.startsWith(prefix)) return undefined;
  const id = uri.slice(prefix.length);
  return /^[A-Za-z0-9_-]+$/.test(id) ? id : undefined;
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && !Array.isArray(v);

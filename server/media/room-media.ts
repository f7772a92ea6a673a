// The local media a room's events refer to, for `parley admin media purge-room`: the mxc URIs of
// m.room.message and m.sticker content (`url`, `info.thumbnail_url`, and for encrypted attachments
// `file.url` and `info.thumbnail_file.url`) and of the room's avatar (m.room.avatar `url`, every
// version of it). Only URIs of this server are returned: other servers' media is theirs.
// https://spec.matrix.org/latest/client-server-api/#mroommessage-msgtypes
import { sql } from "drizzle-orm";
import { isValidServerName } from "../../federation/protocol/identifiers.ts";
import { EVENT_COLUMNS, type EventStore } from "../rooms/event-store.ts";

const PAGE = 1000;
const TYPES = ["m.room.message", "m.sticker", "m.room.avatar"];

/** The media IDs of `mxc://{serverName}/…` URIs found in the room's message, sticker and avatar events. */
export async function localMediaIdsInRoom(eventStore: EventStore, roomId: string, serverName: string): Promise<string[]> {
  const all = await mediaInRoom(eventStore, roomId);
  return all.filter((m) => m.serverName === serverName).map((m) => m.mediaId);
}

/**
 * Every well-formed mxc URI of the room's message, sticker and avatar events, this server's and
 * others' (an admin quarantining a room's media means all of it).
 */
export async function mediaInRoom(eventStore: EventStore, roomId: string): Promise<{ serverName: string; mediaId: string }[]> {
  const found = new Map<string, { serverName: string; mediaId: string }>();
  let after = "";
  for (;;) {
    const page = await eventStore.query(sql`select ${EVENT_COLUMNS} from events e join rooms r on r.room_id = e.room_id
      where e.room_id = ${roomId} and e.type in (${sql.join(TYPES.map((t) => sql`${t}`), sql`, `)}) and e.event_id > ${after}
      order by e.event_id limit ${PAGE}`);
    for (const event of page) {
      for (const uri of mxcUris(event.pdu.content)) {
        const parsed = parseMxc(uri);
        if (parsed) found.set(uri, parsed);
      }
    }
    if (page.length < PAGE) break;
    after = page[page.length - 1]!.eventId;
  }
  return [...found.values()];
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

function parseMxc(uri: string): { serverName: string; mediaId: string } | undefined {
  const match = /^mxc:\/\/([^/]+)\/([A-Za-z0-9_-]+)$/.exec(uri);
  return match && isValidServerName(match[1]!) ? { serverName: match[1]!, mediaId: match[2]! } : undefined;
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && !Array.isArray(v);

// Typing notifications, receipts and presence between servers, both ways.
// https://spec.matrix.org/latest/server-server-api/#typing-notifications
// https://spec.matrix.org/latest/server-server-api/#receipts
// https://spec.matrix.org/latest/server-server-api/#presence
//
// Inbound: each EDU names users; a user who does not belong to the sending server is skipped (a
// server speaks only for its own users), and typing and receipts need the user joined to the room
// as our copy of its state says. Typing and receipts for a room whose server ACL denies the sending
// server are ignored (https://spec.matrix.org/latest/server-server-api/#server-access-control-lists-acls).
// What passes is applied through the ephemeral services, so local /sync shows it.
//
// Outbound: the ephemeral services call their listeners for every change accepted here; the
// changes of our own users go to the servers of the room's joined members (typing, receipts), or
// of every room the user is joined to (presence). Typing and presence are best-effort
// (`sendEphemeral`); receipts are durable (`enqueue`), as the spec's persistent EDUs.
import type { Logger } from "pino";
import { serverNameOf } from "../protocol/identifiers.ts";
import type { Presence, PresenceContent, PresenceState } from "../../server/ephemeral/presence.ts";
import { PRESENCE_STATES } from "../../server/ephemeral/presence.ts";
import type { Receipts } from "../../server/ephemeral/receipts.ts";
import type { Typing } from "../../server/ephemeral/typing.ts";
import type { Federation } from "./federation.ts";
import { unsafeTestBreak } from "../../server/unsafe-test-break.ts";

/** What the room EDUs need of the rooms service. */
export interface RoomMembersView {
  /** Anyone's current membership of the room, from its current state. */
  currentMembership(roomId: string, userId: string): Promise<string | undefined>;
  /** The servers of the room's joined members. */
  joinedServers(roomId: string): Promise<string[]>;
  /** The rooms a local user is joined to. */
  joinedRooms(userId: string): Promise<string[]>;
  /** The rooms anyone (a remote user too) is joined to, from their current state. */
  roomsWithJoinedMember(userId: string): Promise<string[]>;
  /** The room's joined members, of every server. */
  joinedMembers(roomId: string): Promise<string[]>;
}

export interface RoomEduDeps {
  serverName: string;
  federation: Pick<Federation, "edus" | "sender" | "acl">;
  rooms: RoomMembersView;
  typing: Typing;
  receipts: Receipts;
  presence: Presence;
  /** Subscribes to committed room events (joins bring presence to the servers newly sharing a room). */
  onEventsPersisted?(listener: (roomId: string, events: ReadonlyArray<{ type: string; stateKey: string | undefined; membership: string | undefined }>) => void): void;
  logger: Logger;
}

/** Registers the inbound handlers and subscribes the sender to the ephemeral services. */
export function connectRoomEdus(deps: RoomEduDeps): void {
  registerInbound(deps);
  publishOutbound(deps);
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && !Array.isArray(v);

function registerInbound({ federation, rooms, typing, receipts, presence, logger }: RoomEduDeps): void {
  const joined = async (roomId: string, userId: string) => (await rooms.currentMembership(roomId, userId)) === "join";

  // { room_id, user_id, typing }
  federation.edus.register("m.typing", async (origin, content) => {
    if (unsafeTestBreak("drop-inbound-typing")) return;
    const { room_id: roomId, user_id: userId, typing: isTyping } = content;
    if (typeof roomId !== "string" || typeof userId !== "string" || typeof isTyping !== "boolean") return;
    if (serverNameOf(userId) !== origin) {
      logger.info({ origin, userId }, "ignored a typing notification for a user of another server");
      return;
    }
    if (!(await federation.acl.isServerAllowed(roomId, origin))) {
      logger.info({ origin, roomId }, "ignored a typing notification from a server the room's ACL denies");
      return;
    }
    if (!(await joined(roomId, userId))) return;
    await typing.setRemoteTyping(userId, roomId, isTyping);
  });

  // { room ID: { "m.read": { user ID: { event_ids: [...], data: { ts, thread_id? } } } } }
  federation.edus.register("m.receipt", async (origin, content) => {
    if (unsafeTestBreak("drop-inbound-receipts")) return;
    for (const [roomId, byType] of Object.entries(content)) {
      if (!isObject(byType) || !isObject(byType["m.read"])) continue;
      if (!(await federation.acl.isServerAllowed(roomId, origin))) {
        logger.info({ origin, roomId }, "ignored receipts from a server the room's ACL denies");
        continue;
      }
      for (const [userId, receipt] of Object.entries(byType["m.read"])) {
        if (!isObject(receipt) || !Array.isArray(receipt.event_ids)) continue;
        if (serverNameOf(userId) !== origin || !(await joined(roomId, userId))) continue;
        const data = isObject(receipt.data) ? receipt.data : {};
        const ts = typeof data.ts === "number" && Number.isSafeInteger(data.ts) ? data.ts : Date.now();
        const threadId = typeof data.thread_id === "string" ? data.thread_id : undefined;
        // The spec's event_ids holds one event (the receipt's); more are tolerated, the last known wins.
        for (const eventId of receipt.event_ids.slice(0, 10)) {
          if (typeof eventId !== "string") continue;
          try {
            await receipts.setRemoteReceipt(userId, roomId, eventId, ts, threadId);
          } catch (err) {
            logger.info({ err, origin, roomId, userId }, "a receipt from a peer was not applied");
          }
        }
      }
    }
  });

  // { push: [{ user_id, presence, last_active_ago, currently_active?, status_msg? }] }
  federation.edus.register("m.presence", async (origin, content) => {
    if (!Array.isArray(content.push)) return;
    for (const update of content.push.slice(0, 1_000)) {
      if (!isObject(update)) continue;
      const { user_id: userId, presence: state, last_active_ago: ago, currently_active: active, status_msg: statusMsg } = update;
      if (typeof userId !== "string" || serverNameOf(userId) !== origin) continue;
      if (typeof state !== "string" || !(PRESENCE_STATES as readonly string[]).includes(state)) continue;
      try {
        await presence.setRemotePresence(userId, {
          state: state as PresenceState,
          ...(typeof statusMsg === "string" ? { statusMsg: statusMsg.slice(0, 1024) } : statusMsg === null ? { statusMsg: null } : {}),
          ...(typeof ago === "number" && Number.isSafeInteger(ago) ? { lastActiveAgo: ago } : {}),
          currentlyActive: active === true,
        }, await rooms.roomsWithJoinedMember(userId));
      } catch (err) {
        logger.info({ err, origin, userId }, "a presence update from a peer was not applied");
      }
    }
  });
}

function publishOutbound({ serverName, federation, rooms, typing, receipts, presence, onEventsPersisted, logger }: RoomEduDeps): void {
  const ours = (userId: string) => serverNameOf(userId) === serverName;
  const others = (servers: Iterable<string>) => [...servers].filter((s) => s !== serverName);
  const failed = (what: string) => (err: unknown) => logger.warn({ err }, `could not send ${what} to other servers`);

  typing.onTyping(({ roomId, userId, typing: isTyping }) => {
    if (!ours(userId) || unsafeTestBreak("drop-outbound-typing")) return;
    rooms
      .joinedServers(roomId)
      .then((servers) => {
        const destinations = others(servers);
        if (destinations.length === 0) return;
        federation.sender.sendEphemeral(destinations, { edu_type: "m.typing", content: { room_id: roomId, user_id: userId, typing: isTyping } });
      })
      .catch(failed("a typing notification"));
  });

  receipts.onReceipt(({ roomId, userId, type, eventId, threadId, ts }) => {
    // Private receipts stay on this server.
    if (!ours(userId) || type !== "m.read" || unsafeTestBreak("drop-outbound-receipts")) return;
    rooms
      .joinedServers(roomId)
      .then(async (servers) => {
        const destinations = others(servers);
        if (destinations.length === 0) return;
        const data = threadId === undefined ? { ts } : { ts, thread_id: threadId };
        const content = { [roomId]: { "m.read": { [userId]: { event_ids: [eventId], data } } } };
        await federation.sender.enqueue(destinations, { edus: [{ edu_type: "m.receipt", content }] });
      })
      .catch(failed("a receipt"));
  });

  // A join makes servers share a room that may not have before: the joiner's presence goes to the
  // room's other servers, and a remote joiner's server gets the presence of our members (Synapse
  // does both; sytest "New federated private chats get full presence information (SYN-115)").
  onEventsPersisted?.((roomId, events) => {
    const joiners = events.filter((e) => e.type === "m.room.member" && e.membership === "join" && e.stateKey !== undefined).map((e) => e.stateKey!);
    if (joiners.length === 0) return;
    (async () => {
      const servers = others(await rooms.joinedServers(roomId));
      if (servers.length === 0) return;
      const local = joiners.filter(ours);
      const remoteServers = new Set(joiners.filter((u) => !ours(u)).map((u) => serverNameOf(u)!).filter((s) => s !== undefined));
      if (local.length) {
        const push = (await presence.presenceOf(local, Number.MAX_SAFE_INTEGER)).map((e) => presenceUpdate(e.sender, e.content));
        if (push.length) federation.sender.sendEphemeral(servers, { edu_type: "m.presence", content: { push } });
      }
      if (remoteServers.size) {
        const members = (await rooms.joinedMembers(roomId)).filter(ours);
        const push = (await presence.presenceOf(members, Number.MAX_SAFE_INTEGER)).map((e) => presenceUpdate(e.sender, e.content));
        if (push.length) federation.sender.sendEphemeral([...remoteServers], { edu_type: "m.presence", content: { push } });
      }
    })().catch(failed("presence to servers newly sharing a room"));
  });

  presence.onPresence((userId, content: PresenceContent) => {
    if (!ours(userId)) return;
    rooms
      .joinedRooms(userId)
      .then(async (roomIds) => {
        const servers = new Set<string>();
        for (const roomId of roomIds) for (const s of await rooms.joinedServers(roomId)) servers.add(s);
        const destinations = others(servers);
        if (destinations.length === 0) return;
        federation.sender.sendEphemeral(destinations, { edu_type: "m.presence", content: { push: [presenceUpdate(userId, content)] } });
      })
      .catch(failed("a presence update"));
  });
}

/** One entry of an `m.presence` EDU's `push`. */
function presenceUpdate(userId: string, content: PresenceContent) {
  return {
    user_id: userId,
    presence: content.presence,
    last_active_ago: content.last_active_ago ?? 0,
    currently_active: content.currently_active === true,
    ...(content.status_msg ? { status_msg: content.status_msg } : {}),
  };
}

// Ephemeral data for application services that ask for it (`receive_ephemeral`), best-effort.
// https://spec.matrix.org/latest/application-service-api/#pushing-ephemeral-data
//
// - m.typing and m.receipt go to a service under the same rules as room events (interest.ts): its
//   bot or a user of its namespaces (local) is the one typing or reading, or the room is of
//   interest; with a top-level `room_id`, in the client-server format.
// - Private read receipts (m.read.private) only when the reader is a user of its namespaces.
// - m.presence for users of its namespaces (the spec also asks for users sharing a room with the
//   service's users; not done: it would need every room of every namespace user on each change).
// What this process sees (its own changes and the EDUs it receives) is pushed to the queues'
// memory and sent with the next transaction (delivery.ts).
import type { Logger } from "pino";
import type { Database } from "../../schema/db.ts";
import type { PresenceContent, PresenceListener } from "../ephemeral/presence.ts";
import type { ReceiptListener } from "../ephemeral/receipts.ts";
import type { TypingListener } from "../ephemeral/typing.ts";
import type { ToDeviceContentListener } from "../e2ee/to-device.ts";
import { isLocalUser } from "../accounts/user-id.ts";
import type { AppServiceDelivery } from "./delivery.ts";
import { interestedInEvent, interestedInRoom, readRoomFacts } from "./interest.ts";
import { type AppService, type AppServiceRegistry, isInterestedInUser } from "./registration.ts";

export interface EphemeralSources {
  typing: { onTyping(listener: TypingListener): void; typingIn(roomIds: Iterable<string>, since: number | null, upTo: number): Map<string, string[]> };
  receipts: { onReceipt(listener: ReceiptListener): void };
  presence: { onPresence(listener: PresenceListener): void };
}

/**
 * To-device messages for the users of a service that asks for them (MSC2409/MSC4203
 * `receive_to_device`): each message sent to one of its users (local, in its user namespaces, or
 * its bot) goes in its next transaction's `org.matrix.msc2409.to_device`, with `to_user_id` and
 * `to_device_id`. Best-effort like the ephemeral data: held in memory until then.
 */
export function connectAppServiceToDevice(d: {
  delivery: AppServiceDelivery;
  registry: AppServiceRegistry;
  toDevice: { onMessageContents(listener: ToDeviceContentListener): void };
  serverName: string;
  logger: Logger;
}): void {
  const services = d.registry.services.filter((s) => s.url !== null && s.receiveToDevice);
  if (services.length === 0) return;
  d.toDevice.onMessageContents((messages) => {
    for (const m of messages) {
      if (!isLocalUser(m.userId, d.serverName)) continue;
      for (const s of services) {
        if (!isInterestedInUser(s, m.userId)) continue;
        try {
          d.delivery.pushToDevice(s.id, { type: m.type, sender: m.sender, to_user_id: m.userId, to_device_id: m.deviceId, content: JSON.parse(m.content) });
        } catch (err) {
          d.logger.warn({ err }, "could not pass a to-device message to an application service");
        }
      }
    }
  });
}

export function connectAppServiceEphemeral(d: {
  delivery: AppServiceDelivery;
  registry: AppServiceRegistry;
  sources: EphemeralSources;
  db: Database;
  serverName: string;
  logger: Logger;
}): void {
  const services = d.registry.services.filter((s) => s.url !== null && s.receiveEphemeral);
  if (services.length === 0) return;

  /** The services interested in something `userId` did in `roomId`. */
  const interested = async (roomId: string, userId: string): Promise<AppService[]> => {
    const decided = services.filter((s) => interestedInEvent(s, d.serverName, { roomId, type: "", sender: userId, stateKey: undefined }));
    const rest = services.filter((s) => !decided.includes(s));
    if (rest.length === 0) return decided;
    const facts = (await readRoomFacts(d.db, d.serverName, [roomId])).get(roomId);
    return facts ? [...decided, ...rest.filter((s) => interestedInRoom(s, facts))] : decided;
  };
  const failed = (err: unknown) => d.logger.warn({ err }, "could not pass ephemeral data to application services");

  d.sources.typing.onTyping(({ roomId, userId }) => {
    interested(roomId, userId)
      .then((targets) => {
        if (targets.length === 0) return;
        const typers = d.sources.typing.typingIn([roomId], -1, Number.MAX_SAFE_INTEGER).get(roomId) ?? [];
        const event = { type: "m.typing", room_id: roomId, content: { user_ids: typers } };
        for (const s of targets) d.delivery.pushEphemeral(s.id, event);
      })
      .catch(failed);
  });

  d.sources.receipts.onReceipt(({ roomId, userId, type, eventId, threadId, ts }) => {
    interested(roomId, userId)
      .then((targets) => {
        const receipt: Record<string, unknown> = { ts };
        if (threadId !== undefined) receipt.thread_id = threadId;
        const event = { type: "m.receipt", room_id: roomId, content: { [eventId]: { [type]: { [userId]: receipt } } } };
        for (const s of targets) {
          if (type === "m.read.private" && !isInterestedInUser(s, userId)) continue;
          d.delivery.pushEphemeral(s.id, event);
        }
      })
      .catch(failed);
  });

  d.sources.presence.onPresence((userId: string, content: PresenceContent) => {
    const event = { type: "m.presence", sender: userId, content };
    for (const s of services) if (isInterestedInUser(s, userId)) d.delivery.pushEphemeral(s.id, event);
  });
}

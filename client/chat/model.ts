// From room events to what parley-chat shows: one ChatMessage per event worth a line, or nothing
// (power levels, join rules and the like are noise in a chat view). Pure: the tests feed it events.
import type { ChatMessage, MessageSecurity } from "./view.ts";

/** The parts of the SDK's TimelineEvent (client/client.ts) this view reads. */
export interface EventLike {
  event_id: string;
  type: string;
  sender: string;
  origin_server_ts: number;
  content: Record<string, unknown>;
  state_key?: string;
  unsigned?: Record<string, unknown>;
  encrypted?: { decrypted: true; verified: "verified" | "unverified" | "unknown_device" } | { decrypted: false; error: string; withheld?: { code: string; reason?: string } };
}

/** How to name a user in this room: display name, else the localpart of the user ID. */
export type NameOf = (userId: string) => string;

export function localpart(userId: string): string {
  const colon = userId.indexOf(":");
  return userId.startsWith("@") && colon > 0 ? userId.slice(1, colon) : userId;
}

function str(v: unknown): string | undefined {
  return typeof v === "string" ? v : undefined;
}

function security(event: EventLike): { security: MessageSecurity; securityNote?: string } {
  const e = event.encrypted;
  if (!e) {
    // Still m.room.encrypted and no decryption info: this client has no encryption (or it was not tried).
    if (event.type === "m.room.encrypted") return { security: "undecryptable", securityNote: "encrypted: this client cannot decrypt it" };
    return { security: "plain" };
  }
  if (!e.decrypted) {
    const why = e.withheld ? `the sender withheld the key: ${e.withheld.reason ?? e.withheld.code}` : e.error;
    return { security: "undecryptable", securityNote: `unable to decrypt (${why})` };
  }
  if (e.verified === "verified") return { security: "verified" };
  return { security: "unverified", securityNote: e.verified === "unknown_device" ? "sent from an unknown device" : "sent from an unverified device" };
}

function membershipText(event: EventLike, nameOf: NameOf): string | undefined {
  const target = event.state_key ?? "";
  const membership = str(event.content.membership);
  const prev = (event.unsigned?.prev_content ?? {}) as Record<string, unknown>;
  const prevMembership = str(prev.membership);
  const self = target === event.sender;
  const targetName = str(event.content.displayname) ?? nameOf(target);
  switch (membership) {
    case "join":
      if (prevMembership === "join") {
        const before = str(prev.displayname);
        const after = str(event.content.displayname);
        if (before !== after) return after ? `changed their name to ${after}` : "removed their display name";
        return undefined; // an avatar change
      }
      return "joined";
    case "invite":
      return `invited ${targetName}`;
    case "leave":
      if (self) return prevMembership === "invite" ? "declined the invitation" : "left";
      return prevMembership === "invite" ? `withdrew ${targetName}'s invitation` : prevMembership === "ban" ? `unbanned ${targetName}` : `removed ${targetName}`;
    case "ban":
      return `banned ${targetName}`;
    case "knock":
      return "asked to join";
    default:
      return undefined;
  }
}

/** One event as a line of the timeline, or undefined for events a chat view leaves out. */
export function toChatMessage(event: EventLike, nameOf: NameOf): ChatMessage | undefined {
  const base = { eventId: event.event_id, sender: event.sender, senderName: nameOf(event.sender), ts: event.origin_server_ts, ...security(event) };
  const c = event.content;
  if (event.unsigned?.redacted_because !== undefined && (event.type === "m.room.message" || event.type === "m.room.encrypted")) {
    return { ...base, kind: "notice", body: "[message deleted]", security: "plain", securityNote: undefined };
  }
  switch (event.type) {
    case "m.room.encrypted":
      return { ...base, kind: "notice", body: "[encrypted]" };
    case "m.room.message": {
      const body = str(c.body) ?? "";
      const msgtype = str(c.msgtype);
      if (msgtype === "m.emote") return { ...base, kind: "emote", body };
      if (msgtype === "m.notice") return { ...base, kind: "notice", body };
      const attachment: Record<string, string> = { "m.image": "image", "m.file": "file", "m.audio": "audio", "m.video": "video" };
      if (msgtype && attachment[msgtype]) return { ...base, kind: "text", body: `[${attachment[msgtype]}: ${body}]` };
      return { ...base, kind: "text", body };
    }
    case "m.sticker":
      return { ...base, kind: "text", body: `[sticker: ${str(c.body) ?? ""}]` };
    case "m.room.member": {
      const text = membershipText(event, nameOf);
      return text ? { ...base, kind: "event", body: text } : undefined;
    }
    case "m.room.create":
      return { ...base, kind: "event", body: "created the room" };
    case "m.room.name":
      return { ...base, kind: "event", body: str(c.name) ? `named the room "${str(c.name)}"` : "removed the room name" };
    case "m.room.topic":
      return { ...base, kind: "event", body: str(c.topic) ? `set the topic: ${str(c.topic)}` : "removed the topic" };
    case "m.room.encryption":
      return { ...base, kind: "event", body: "turned on end-to-end encryption" };
    default:
      return undefined;
  }
}

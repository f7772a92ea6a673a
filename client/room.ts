// A room as the client knows it from /sync: its current state (from the `state` section and the
// state events of the timeline), the members it has seen (members are lazy-loaded, so this is the
// members that spoke or changed lately, unless `loadMembers` fetched them all), a bounded recent
// timeline, typing users, read receipts and unread counts. Built and updated only by the client's
// sync processing; applications read it.
//
// Room display name: https://spec.matrix.org/v1.16/client-server-api/#calculating-the-display-name-for-a-room
// Member display name: https://spec.matrix.org/v1.16/client-server-api/#calculating-the-display-name-for-a-user

/** A room event as the client hands it out: decrypted when it arrived as m.room.encrypted. */
export interface TimelineEvent {
  event_id: string;
  type: string;
  sender: string;
  origin_server_ts: number;
  content: Record<string, unknown>;
  state_key?: string;
  unsigned?: Record<string, unknown>;
  /** For events that arrived as m.room.encrypted: */
  encrypted?:
    | { decrypted: true; senderCurve25519: string; senderDevice?: string; verified: "verified" | "unverified" | "unknown_device" }
    | {
        decrypted: false;
        error: string /* e.g. "UNKNOWN_SESSION", "REPLAYED_INDEX", "BAD_MAC", "UNKNOWN_DEVICE", "NO_CRYPTO" */;
        /** The key's sender said why we did not get it (`m.room_key.withheld`: `m.unverified`, `m.blacklisted`, ...). */
        withheld?: { code: string; reason?: string };
      };
}

/** A state event as /sync gives it (stripped state of invites has no event_id nor timestamp). */
export interface StateEvent {
  type: string;
  state_key: string;
  sender: string;
  content: Record<string, unknown>;
  event_id?: string;
  origin_server_ts?: number;
  unsigned?: Record<string, unknown>;
}

export type Membership = "join" | "invite" | "leave" | "ban" | "knock";

export interface RoomMember {
  membership: Membership;
  displayname?: string;
  avatar_url?: string;
}

export interface ReadReceipt {
  eventId: string;
  ts?: number;
  /** "m.read", or "m.read.private" (only ever the user's own). */
  type: string;
}

/** The `summary` of a joined room in /sync; the server sends only the fields that changed. */
export interface RoomSummary {
  heroes?: string[];
  joinedMemberCount?: number;
  invitedMemberCount?: number;
}

/** How many recent events a Room keeps (older ones are paged in with `messages()`). */
export const ROOM_TIMELINE_LIMIT = 200;

export class Room {
  readonly roomId: string;
  /** The user's own membership: a room the user left stays known (membership "leave") until restart. */
  membership: "join" | "invite" | "leave" = "join";
  /** Recent timeline events, oldest first, at most ROOM_TIMELINE_LIMIT. */
  readonly timeline: TimelineEvent[] = [];
  /** The `prev_batch` of the latest timeline section: where `messages()` continues backwards. */
  prevBatch?: string;
  /** Users typing now (m.typing). */
  typing: string[] = [];
  /** The latest read receipt of each user. */
  readonly receipts = new Map<string, ReadReceipt>();
  /** `unread_notifications.notification_count`: events that notify, since the user's read receipt. */
  unreadCount = 0;
  /** `unread_notifications.highlight_count`. */
  highlightCount = 0;
  readonly summary: RoomSummary = {};
  /** Whether every member has been fetched (`/members`), not only the lazily loaded ones. */
  membersLoaded = false;
  /** Set once /sync showed this room as joined, so its state (encryption included) is known. */
  stateSynced = false;

  private readonly state = new Map<string, Map<string, StateEvent>>();

  constructor(roomId: string, private readonly myUserId: string) {
    this.roomId = roomId;
  }

  /** The current state event of `type` and `stateKey`. */
  getState(type: string, stateKey = ""): StateEvent | undefined {
    return this.state.get(type)?.get(stateKey);
  }

  /** Every current state event of `type`, by state key. */
  getStateOfType(type: string): Map<string, StateEvent> {
    return this.state.get(type) ?? new Map();
  }

  /** Records a state event; returns the previous one of the same type and key. */
  setState(event: StateEvent): StateEvent | undefined {
    let byKey = this.state.get(event.type);
    if (!byKey) this.state.set(event.type, (byKey = new Map()));
    const previous = byKey.get(event.state_key);
    byKey.set(event.state_key, event);
    return previous;
  }

  /** Appends to the bounded recent timeline. */
  addToTimeline(event: TimelineEvent): void {
    this.timeline.push(event);
    if (this.timeline.length > ROOM_TIMELINE_LIMIT) this.timeline.splice(0, this.timeline.length - ROOM_TIMELINE_LIMIT);
  }

  get topic(): string | undefined {
    const topic = this.getState("m.room.topic")?.content.topic;
    return typeof topic === "string" ? topic : undefined;
  }

  get encrypted(): boolean {
    return this.encryptionContent !== undefined;
  }

  /** The m.room.encryption content (algorithm, rotation_period_ms, rotation_period_msgs). */
  get encryptionContent(): Record<string, unknown> | undefined {
    const event = this.getState("m.room.encryption");
    // An m.room.encryption without an algorithm is not a valid way to turn encryption off (the
    // spec makes encryption permanent); it still marks the room encrypted so nothing goes out plain.
    return event ? event.content : undefined;
  }

  /** The members known so far (all of them after `loadMembers`), by user ID. */
  members(): Map<string, RoomMember> {
    const members = new Map<string, RoomMember>();
    for (const [userId, event] of this.getStateOfType("m.room.member")) {
      const membership = event.content.membership;
      if (typeof membership !== "string") continue;
      const member: RoomMember = { membership: membership as Membership };
      if (typeof event.content.displayname === "string") member.displayname = event.content.displayname;
      if (typeof event.content.avatar_url === "string") member.avatar_url = event.content.avatar_url;
      members.set(userId, member);
    }
    return members;
  }

  /** Joined and invited users: the recipients of the room's encryption keys. */
  joinedAndInvited(): string[] {
    return [...this.members()].filter(([, m]) => m.membership === "join" || m.membership === "invite").map(([id]) => id);
  }

  /**
   * The user's display name in this room, disambiguated with the user ID when another joined or
   * invited member has the same display name (so a look-alike cannot pass for someone else).
   */
  memberName(userId: string): string {
    const members = this.members();
    // A leave carries no display name: the one the member had before (the event's prev_content)
    // names them in "Empty Room (was …)".
    const prevContent = this.getState("m.room.member", userId)?.unsigned?.prev_content as Record<string, unknown> | undefined;
    const previousName = typeof prevContent?.displayname === "string" ? prevContent.displayname : undefined;
    const name = members.get(userId)?.displayname ?? previousName;
    if (!name) return userId;
    for (const [otherId, other] of members) {
      if (otherId !== userId && other.displayname === name && (other.membership === "join" || other.membership === "invite")) {
        return `${name} (${userId})`;
      }
    }
    return name;
  }

  /** The room's display name, per the spec's algorithm (name, canonical alias, then heroes). */
  get name(): string {
    const name = this.getState("m.room.name")?.content.name;
    if (typeof name === "string" && name !== "") return name;
    const alias = this.getState("m.room.canonical_alias")?.content.alias;
    if (typeof alias === "string" && alias !== "") return alias;

    const members = this.members();
    const others = (membership: Membership) => [...members].filter(([id, m]) => id !== this.myUserId && m.membership === membership).map(([id]) => id);
    // Without a summary (invites, or a server that sends none) the known members stand in for it.
    const heroes = this.summary.heroes ?? [...others("join"), ...others("invite")].sort().slice(0, 5);
    const joined = this.summary.joinedMemberCount ?? others("join").length + (members.get(this.myUserId)?.membership === "join" ? 1 : 0);
    const invited = this.summary.invitedMemberCount ?? others("invite").length + (members.get(this.myUserId)?.membership === "invite" ? 1 : 0);
    const total = joined + invited;
    const names = heroes.map((id) => this.memberName(id));

    if (total > 1) {
      const remaining = total - 1 - heroes.length;
      if (names.length === 0) return `${total - 1} others`;
      if (remaining > 0) return `${names.join(", ")}, and ${remaining} ${remaining === 1 ? "other" : "others"}`;
      return listOf(names);
    }
    if (names.length === 0) {
      // Alone, and no heroes: left members are the best hint of what the room was.
      const left = [...members].filter(([id, m]) => id !== this.myUserId && (m.membership === "leave" || m.membership === "ban")).map(([id]) => id);
      if (left.length === 0) return "Empty Room";
      return `Empty Room (was ${listOf(left.sort().slice(0, 5).map((id) => this.memberName(id)))})`;
    }
    return `Empty Room (was ${listOf(names)})`;
  }
}

function listOf(names: string[]): string {
  if (names.length <= 1) return names[0] ?? "";
  if (names.length === 2) return `${names[0]} and ${names[1]}`;
  return `${names.slice(0, -1).join(", ")}, and ${names[names.length - 1]}`;
}

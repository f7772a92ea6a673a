// What the ephemeral services (typing, receipts, presence) need to know about rooms, answered by the
// rooms service (see server/sync/rooms-view.ts): they never read the rooms component's tables.

export interface MembershipView {
  /** The user's current membership of the room (`join`, `invite`, `leave`, `ban`, `knock`), if any. */
  membershipOf(roomId: string, userId: string): Promise<string | undefined>;
  /** The rooms the user is joined to now. */
  joinedRooms(userId: string): Promise<string[]>;
  /** Whether the two users are both joined to at least one room. */
  shareARoom(userA: string, userB: string): Promise<boolean>;
  /**
   * Where an event of the room sits in the room-event stream, and the thread it belongs to (`main`
   * or the thread root's event ID); undefined when the room has no such event (or it is an outlier).
   */
  eventPosition(roomId: string, eventId: string): Promise<{ streamOrdering: number; threadId: string } | undefined>;
}

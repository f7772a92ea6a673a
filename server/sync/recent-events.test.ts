import { describe, expect, it } from "vitest";
import type { StoredEvent } from "../rooms/event-store.ts";
import { RecentEvents } from "./recent-events.ts";

function ev(roomId: string, streamOrdering: number, type = "m.room.message", extra: Partial<StoredEvent> = {}): StoredEvent {
  return {
    eventId: `$${roomId}${streamOrdering}`,
    roomId,
    roomVersion: "12",
    type,
    stateKey: undefined,
    sender: "@a:x",
    originServerTs: 0,
    depth: streamOrdering,
    streamOrdering,
    topologicalOrdering: streamOrdering,
    pdu: { type, content: {} },
    rejected: false,
    softFailed: false,
    outlier: false,
    redactedBy: null,
    stateBeforeGroup: null,
    stateAfterGroup: null,
    replacesState: null,
    ...extra,
  };
}
const ids = (r: { events: StoredEvent[] } | undefined) => r?.events.map((e) => e.streamOrdering);

describe("RecentEvents", () => {
  it("answers ranges from the first event it was given, not before", () => {
    const recent = new RecentEvents();
    recent.add([ev("!a", 5), ev("!b", 6), ev("!a", 7)]);
    expect(ids(recent.get("!a", 4, 7, 10, undefined))).toEqual([5, 7]);
    expect(ids(recent.get("!a", 5, 7, 10, undefined))).toEqual([7]);
    expect(recent.get("!a", 3, 7, 10, undefined)).toBeUndefined();
    expect(recent.get("!c", 4, 7, 10, undefined)).toBeUndefined();
  });

  it("is limited like a read, and filters", () => {
    const recent = new RecentEvents();
    recent.add([ev("!a", 1), ev("!a", 2, "m.room.topic"), ev("!a", 3)]);
    expect(recent.get("!a", 0, 3, 2, undefined)).toMatchObject({ limited: true });
    expect(ids(recent.get("!a", 0, 3, 2, undefined))).toEqual([2, 3]);
    expect(ids(recent.get("!a", 0, 3, 10, { types: ["m.room.message"] }))).toEqual([1, 3]);
  });

  it("forgets a room on a redaction or a write from another process, and skips rejected events", () => {
    const recent = new RecentEvents();
    recent.add([ev("!a", 1), ev("!a", 2, "m.room.message", { rejected: true })]);
    expect(ids(recent.get("!a", 0, 2, 10, undefined))).toEqual([1]);
    recent.add([ev("!a", 3, "m.room.redaction")]);
    expect(recent.get("!a", 0, 3, 10, undefined)).toBeUndefined();
    recent.add([ev("!b", 4)]);
    recent.dropRooms(["!b"]);
    expect(recent.get("!b", 3, 4, 10, undefined)).toBeUndefined();
  });

  it("is seeded and extended back by complete reads", () => {
    const recent = new RecentEvents();
    recent.learn("!a", 10, 20, [ev("!a", 12), ev("!a", 15)]);
    expect(ids(recent.get("!a", 10, 20, 10, undefined))).toEqual([12, 15]);
    recent.add([ev("!a", 21)]);
    recent.learn("!a", 2, 12, [ev("!a", 3), ev("!a", 12)]);
    expect(ids(recent.get("!a", 2, 21, 10, undefined))).toEqual([3, 12, 15, 21]);
  });
});

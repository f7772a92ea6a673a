// The room model's names, computed as the spec says, from hand-built state (no server).
// https://spec.matrix.org/v1.16/client-server-api/#calculating-the-display-name-for-a-room
import { describe, expect, it } from "vitest";
import { Room } from "../../client/room.ts";
import { backoffDelay } from "../../client/sync.ts";

const me = "@me:hs";
function member(room: Room, userId: string, membership: string, displayname?: string) {
  room.setState({ type: "m.room.member", state_key: userId, sender: userId, content: { membership, ...(displayname ? { displayname } : {}) } });
}

describe("room display name", () => {
  it("prefers m.room.name, then the canonical alias, ignoring empty ones", () => {
    const room = new Room("!r:hs", me);
    member(room, me, "join");
    member(room, "@alice:hs", "join", "Alice");
    room.setState({ type: "m.room.canonical_alias", state_key: "", sender: me, content: { alias: "#team:hs" } });
    room.setState({ type: "m.room.name", state_key: "", sender: me, content: { name: "" } });
    expect(room.name).toBe("#team:hs");
    room.setState({ type: "m.room.name", state_key: "", sender: me, content: { name: "Team" } });
    expect(room.name).toBe("Team");
  });

  it("names an unnamed room after its heroes, with the count of the others", () => {
    const room = new Room("!r:hs", me);
    member(room, me, "join");
    member(room, "@alice:hs", "join", "Alice");
    member(room, "@bob:hs", "invite");
    room.summary.heroes = ["@alice:hs", "@bob:hs"];
    room.summary.joinedMemberCount = 2;
    room.summary.invitedMemberCount = 1;
    expect(room.name).toBe("Alice and @bob:hs");
    room.summary.joinedMemberCount = 10;
    expect(room.name).toBe("Alice, @bob:hs, and 8 others");
  });

  it("disambiguates members with the same display name by their user ID", () => {
    const room = new Room("!r:hs", me);
    member(room, me, "join");
    member(room, "@alice:hs", "join", "Alice");
    member(room, "@mallory:hs", "join", "Alice");
    room.summary.heroes = ["@alice:hs", "@mallory:hs"];
    room.summary.joinedMemberCount = 3;
    expect(room.name).toBe("Alice (@alice:hs) and Alice (@mallory:hs)");
  });

  it("says Empty Room when alone, naming who was there", () => {
    const room = new Room("!r:hs", me);
    member(room, me, "join");
    expect(room.name).toBe("Empty Room");
    member(room, "@alice:hs", "leave", "Alice");
    expect(room.name).toBe("Empty Room (was Alice)");
    room.summary.heroes = ["@alice:hs"];
    room.summary.joinedMemberCount = 1;
    room.summary.invitedMemberCount = 0;
    expect(room.name).toBe("Empty Room (was Alice)");
  });

  it("works without a summary (an invite's stripped state)", () => {
    const room = new Room("!r:hs", me);
    member(room, me, "invite");
    member(room, "@alice:hs", "join", "Alice");
    expect(room.name).toBe("Alice");
  });
});

describe("sync backoff", () => {
  it("grows exponentially up to the cap, jittered below the ceiling", () => {
    const opts = { initialMs: 100, maxMs: 1_000 };
    expect(backoffDelay(0, opts, () => 1)).toBe(100);
    expect(backoffDelay(3, opts, () => 1)).toBe(800);
    expect(backoffDelay(4, opts, () => 1)).toBe(1_000);
    expect(backoffDelay(50, opts, () => 1)).toBe(1_000);
    // Full jitter, with a floor so a failing server is not retried in a busy loop.
    expect(backoffDelay(4, opts, () => 0.5)).toBe(500);
    expect(backoffDelay(4, opts, () => 0)).toBe(10);
  });
});

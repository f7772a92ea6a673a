import { createHash } from "node:crypto";
import { describe, expect, it } from "vitest";
import type { RoomEvent } from "./pdu.ts";
import { stateMapKey, type StateMap } from "./room-state.ts";
import { resolveState } from "./state-resolution.ts";
import { conflictingEventIdsV1, resolveStateV1, unconflictedAuthEventIdsV1 } from "./state-resolution-v1.ts";

// rooms/v1.md#state-resolution: "Start by setting R to the union of the states to be resolved,
// excluding any conflicting events. First we resolve conflicts between m.room.power_levels events
// ... Repeat the above process for conflicts between m.room.join_rules events. Repeat the above
// process for conflicts between m.room.member events. No other events affect the authorisation
// rules, so for all other conflicts, just pick the event with the highest depth and lowest
// sha1(event_id) that passes authentication in R and add it to R."

const ROOM = "!room:example.com";
const ALICE = "@alice:example.com";
const BOB = "@bob:example.com";
const CAROL = "@carol:example.com";
const DAVE = "@dave:example.com";

const PL = stateMapKey("m.room.power_levels", "");
const JOIN_RULES = stateMapKey("m.room.join_rules", "");
const TOPIC = stateMapKey("m.room.topic", "");
const member = (user: string) => stateMapKey("m.room.member", user);

function event(id: string, type: string, sender: string, stateKey: string, content: Record<string, unknown>, depth: number): RoomEvent {
  return {
    event_id: id,
    type,
    sender,
    room_id: ROOM,
    state_key: stateKey,
    content,
    origin_server_ts: 1_000 + depth,
    depth,
    prev_events: [],
    auth_events: [],
  };
}

function sha1(eventId: string): string {
  return createHash("sha1").update(eventId, "utf8").digest("hex");
}

// The room before the forks: alice created it (100), bob (50) and carol (0) joined; it is public.
const CREATE = event("$create:example.com", "m.room.create", ALICE, "", { creator: ALICE }, 1);
const ALICE_JOIN = event("$alice-join:example.com", "m.room.member", ALICE, ALICE, { membership: "join" }, 2);
const PL0 = event("$pl0:example.com", "m.room.power_levels", ALICE, "", { users: { [ALICE]: 100, [BOB]: 50 } }, 3);
const PUBLIC = event("$public:example.com", "m.room.join_rules", ALICE, "", { join_rule: "public" }, 4);
const BOB_JOIN = event("$bob-join:example.com", "m.room.member", BOB, BOB, { membership: "join" }, 5);
const CAROL_JOIN = event("$carol-join:example.com", "m.room.member", CAROL, CAROL, { membership: "join" }, 5);
const BASE = [CREATE, ALICE_JOIN, PL0, PUBLIC, BOB_JOIN, CAROL_JOIN];

/** A room state: the base events, replaced by `events` at their keys. */
function stateOf(...events: RoomEvent[]): StateMap {
  const state: StateMap = new Map();
  for (const e of [...BASE, ...events]) state.set(stateMapKey(e.type, e.state_key!), e.event_id);
  return state;
}

function lookupOf(...events: RoomEvent[]): (id: string) => RoomEvent | undefined {
  const byId = new Map([...BASE, ...events].map((e) => [e.event_id, e]));
  return (id) => byId.get(id);
}

describe("state resolution v1: power levels", () => {
  it("keeps the earlier power levels when the later one fails auth against them", () => {
    const plA = event("$pl-a:example.com", "m.room.power_levels", ALICE, "", { users: { [ALICE]: 100, [BOB]: 50, [CAROL]: 50 } }, 6);
    // bob (50) raising himself to 100: refused in R, where plA is the power levels.
    const plB = event("$pl-b:example.com", "m.room.power_levels", BOB, "", { users: { [ALICE]: 100, [BOB]: 100 } }, 7);
    const resolved = resolveStateV1("1", [stateOf(plA), stateOf(plB)], lookupOf(plA, plB));
    expect(resolved.get(PL)).toBe(plA.event_id);
  });

  it("takes the later power levels when they pass auth against the earlier ones", () => {
    const plA = event("$pl-a:example.com", "m.room.power_levels", ALICE, "", { users: { [ALICE]: 100, [BOB]: 50, [CAROL]: 50 } }, 6);
    const plB = event("$pl-b:example.com", "m.room.power_levels", ALICE, "", { users: { [ALICE]: 100, [BOB]: 100 } }, 7);
    const resolved = resolveStateV1("1", [stateOf(plB), stateOf(plA)], lookupOf(plA, plB));
    expect(resolved.get(PL)).toBe(plB.event_id);
  });

  it("adds the lowest-depth power levels without checking them", () => {
    // carol (0) could never send these, yet as the first in the list they go into R, and bob's
    // later ones are then checked against them (where bob has 0).
    const byCarol = event("$pl-carol:example.com", "m.room.power_levels", CAROL, "", { users: { [ALICE]: 100, [CAROL]: 100 } }, 6);
    const byBob = event("$pl-bob:example.com", "m.room.power_levels", BOB, "", { users: { [ALICE]: 100, [BOB]: 50 } }, 7);
    const resolved = resolveStateV1("1", [stateOf(byCarol), stateOf(byBob)], lookupOf(byCarol, byBob));
    expect(resolved.get(PL)).toBe(byCarol.event_id);
  });

  it("stops at the first power levels that fail, even if a later one would pass", () => {
    const plA = event("$pl-a:example.com", "m.room.power_levels", ALICE, "", { users: { [ALICE]: 100, [BOB]: 50 } }, 6);
    const plB = event("$pl-b:example.com", "m.room.power_levels", CAROL, "", { users: { [ALICE]: 100, [BOB]: 50, [CAROL]: 100 } }, 7);
    const plC = event("$pl-c:example.com", "m.room.power_levels", ALICE, "", { users: { [ALICE]: 100 } }, 8);
    const resolved = resolveStateV1("1", [stateOf(plA), stateOf(plB), stateOf(plC)], lookupOf(plA, plB, plC));
    expect(resolved.get(PL)).toBe(plA.event_id);
  });
});

describe("state resolution v1: join rules", () => {
  it("keeps the earlier join rules when the later ones are sent without the power to", () => {
    const invite = event("$invite-only:example.com", "m.room.join_rules", BOB, "", { join_rule: "invite" }, 6);
    const knockish = event("$private:example.com", "m.room.join_rules", CAROL, "", { join_rule: "private" }, 7);
    const resolved = resolveStateV1("1", [stateOf(invite), stateOf(knockish)], lookupOf(invite, knockish));
    expect(resolved.get(JOIN_RULES)).toBe(invite.event_id);
  });

  it("checks the join rules against the power levels resolved before them", () => {
    // carol (0) may set join rules only under plB (state_default 0), which the power levels
    // resolve to, so her later join rules pass.
    const plA = event("$pl-a:example.com", "m.room.power_levels", ALICE, "", { users: { [ALICE]: 100, [BOB]: 50 } }, 6);
    const plB = event("$pl-b:example.com", "m.room.power_levels", ALICE, "", { users: { [ALICE]: 100, [BOB]: 50 }, state_default: 0 }, 7);
    const invite = event("$invite-only:example.com", "m.room.join_rules", ALICE, "", { join_rule: "invite" }, 8);
    const byCarol = event("$by-carol:example.com", "m.room.join_rules", CAROL, "", { join_rule: "public" }, 9);
    const resolved = resolveStateV1("1", [stateOf(plA, invite), stateOf(plB, byCarol)], lookupOf(plA, plB, invite, byCarol));
    expect(resolved.get(PL)).toBe(plB.event_id);
    expect(resolved.get(JOIN_RULES)).toBe(byCarol.event_id);
  });
});

describe("state resolution v1: memberships", () => {
  it("resolves each user's membership on its own", () => {
    const dave = event("$dave-join:example.com", "m.room.member", DAVE, DAVE, { membership: "join" }, 6);
    // alice (100) bans bob (50): allowed after bob's join.
    const bobBanned = event("$bob-ban:example.com", "m.room.member", ALICE, BOB, { membership: "ban" }, 7);
    // carol (0) kicks dave: refused (kick level 50), so dave stays joined.
    const daveKicked = event("$dave-kick:example.com", "m.room.member", CAROL, DAVE, { membership: "leave" }, 7);
    const resolved = resolveStateV1("1", [stateOf(dave), stateOf(daveKicked, bobBanned)], lookupOf(dave, bobBanned, daveKicked));
    expect(resolved.get(member(BOB))).toBe(bobBanned.event_id);
    expect(resolved.get(member(DAVE))).toBe(dave.event_id);
  });

  it("checks a membership against the join rules resolved before it", () => {
    const invite = event("$invite-only:example.com", "m.room.join_rules", ALICE, "", { join_rule: "invite" }, 6);
    const daveLeft = event("$dave-leave:example.com", "m.room.member", DAVE, DAVE, { membership: "leave" }, 6);
    const daveJoined = event("$dave-join:example.com", "m.room.member", DAVE, DAVE, { membership: "join" }, 7);
    // The join rules resolve to invite (after public), and dave's join, checked after his leave
    // in a room that is invite-only, fails.
    const resolved = resolveStateV1("1", [stateOf(invite, daveLeft), stateOf(daveJoined)], lookupOf(invite, daveLeft, daveJoined));
    expect(resolved.get(JOIN_RULES)).toBe(invite.event_id);
    expect(resolved.get(member(DAVE))).toBe(daveLeft.event_id);
  });

  it("does not count one user's resolved membership in another user's conflict, as Synapse", () => {
    // bob's own membership is conflicted (a profile change on one side), so it is not in the state
    // the membership conflicts are checked against: his kick of dave finds him not joined.
    const bobRename = event("$bob-rename:example.com", "m.room.member", BOB, BOB, { membership: "join", displayname: "B" }, 6);
    const dave = event("$dave-join:example.com", "m.room.member", DAVE, DAVE, { membership: "join" }, 6);
    const daveKicked = event("$dave-kick:example.com", "m.room.member", BOB, DAVE, { membership: "leave" }, 8);
    const resolved = resolveStateV1("1", [stateOf(dave), stateOf(bobRename, daveKicked)], lookupOf(bobRename, dave, daveKicked));
    expect(resolved.get(member(BOB))).toBe(bobRename.event_id);
    expect(resolved.get(member(DAVE))).toBe(dave.event_id);
    // Without the conflict on bob's membership, the kick passes.
    const withoutRename = resolveStateV1("1", [stateOf(dave), stateOf(daveKicked)], lookupOf(dave, daveKicked));
    expect(withoutRename.get(member(DAVE))).toBe(daveKicked.event_id);
  });
});

describe("state resolution v1: other state", () => {
  it("picks the topic with the highest depth", () => {
    const t6 = event("$topic-6:example.com", "m.room.topic", ALICE, "", { topic: "six" }, 6);
    const t9 = event("$topic-9:example.com", "m.room.topic", BOB, "", { topic: "nine" }, 9);
    const t7 = event("$topic-7:example.com", "m.room.topic", ALICE, "", { topic: "seven" }, 7);
    const resolved = resolveStateV1("1", [stateOf(t6), stateOf(t9), stateOf(t7)], lookupOf(t6, t7, t9));
    expect(resolved.get(TOPIC)).toBe(t9.event_id);
  });

  it("skips the deepest topic when it fails auth in the resolved state", () => {
    const t6 = event("$topic-6:example.com", "m.room.topic", ALICE, "", { topic: "six" }, 6);
    // carol has 0; m.room.topic needs state_default 50.
    const t9 = event("$topic-9:example.com", "m.room.topic", CAROL, "", { topic: "nine" }, 9);
    const resolved = resolveStateV1("1", [stateOf(t6), stateOf(t9)], lookupOf(t6, t9));
    expect(resolved.get(TOPIC)).toBe(t6.event_id);
  });

  it("checks other state against the resolved power levels", () => {
    // Under plB bob has 0: his deeper topic fails and alice's stands.
    const plA = event("$pl-a:example.com", "m.room.power_levels", ALICE, "", { users: { [ALICE]: 100, [BOB]: 50 } }, 6);
    const plB = event("$pl-b:example.com", "m.room.power_levels", ALICE, "", { users: { [ALICE]: 100 } }, 7);
    const t8 = event("$topic-8:example.com", "m.room.topic", ALICE, "", { topic: "eight" }, 8);
    const t9 = event("$topic-9:example.com", "m.room.topic", BOB, "", { topic: "nine" }, 9);
    const resolved = resolveStateV1("1", [stateOf(plA, t9), stateOf(plB, t8)], lookupOf(plA, plB, t8, t9));
    expect(resolved.get(PL)).toBe(plB.event_id);
    expect(resolved.get(TOPIC)).toBe(t8.event_id);
  });

  it("falls back to the lowest-depth topic when none passes auth, as Synapse", () => {
    const t6 = event("$topic-6:example.com", "m.room.topic", CAROL, "", { topic: "six" }, 6);
    const t9 = event("$topic-9:example.com", "m.room.topic", CAROL, "", { topic: "nine" }, 9);
    const resolved = resolveStateV1("1", [stateOf(t9), stateOf(t6)], lookupOf(t6, t9));
    expect(resolved.get(TOPIC)).toBe(t6.event_id);
  });
});

describe("state resolution v1: ties on depth", () => {
  it("picks the topic with the lowest sha1(event_id) among the deepest", () => {
    const x = event("$TOPIC_X:example.com", "m.room.topic", ALICE, "", { topic: "x" }, 6);
    const y = event("$TOPIC_Y:example.com", "m.room.topic", ALICE, "", { topic: "y" }, 6);
    expect(sha1(y.event_id) < sha1(x.event_id)).toBe(true);
    expect(resolveStateV1("1", [stateOf(x), stateOf(y)], lookupOf(x, y)).get(TOPIC)).toBe(y.event_id);
    expect(resolveStateV1("1", [stateOf(y), stateOf(x)], lookupOf(x, y)).get(TOPIC)).toBe(y.event_id);
    // Not by the event ID itself: "$TA" < "$TB" as text, but sha1("$TB…") is the lower.
    const a = event("$TA:example.com", "m.room.topic", ALICE, "", { topic: "a" }, 6);
    const b = event("$TB:example.com", "m.room.topic", ALICE, "", { topic: "b" }, 6);
    expect(sha1(a.event_id) < sha1(b.event_id)).toBe(true);
    expect(resolveStateV1("1", [stateOf(b), stateOf(a)], lookupOf(a, b)).get(TOPIC)).toBe(a.event_id);
  });

  it("applies power levels of equal depth in descending sha1(event_id), so the lowest is applied last", () => {
    const x = event("$PL_X:example.com", "m.room.power_levels", ALICE, "", { users: { [ALICE]: 100, [BOB]: 50 }, ban: 60 }, 6);
    const y = event("$PL_Y:example.com", "m.room.power_levels", ALICE, "", { users: { [ALICE]: 100, [BOB]: 50 }, ban: 70 }, 6);
    expect(sha1(y.event_id) < sha1(x.event_id)).toBe(true);
    expect(resolveStateV1("1", [stateOf(x), stateOf(y)], lookupOf(x, y)).get(PL)).toBe(y.event_id);
    // With y refused after x (sent by carol), x stays.
    const yByCarol = { ...y, sender: CAROL };
    expect(resolveStateV1("1", [stateOf(yByCarol), stateOf(x)], lookupOf(x, yByCarol)).get(PL)).toBe(x.event_id);
  });

  it("counts a missing depth as 0", () => {
    // At equal depth the lower sha1 wins: "$TA…".
    const withoutDepth = (e: RoomEvent): RoomEvent => {
      const { depth: _depth, ...rest } = e;
      return rest as RoomEvent;
    };
    const a = event("$TA:example.com", "m.room.topic", ALICE, "", { topic: "a" }, 0);
    const b = event("$TB:example.com", "m.room.topic", ALICE, "", { topic: "b" }, 0);
    for (const [x, y] of [[withoutDepth(a), b], [a, withoutDepth(b)]] as const) {
      expect(resolveStateV1("1", [stateOf(x), stateOf(y)], lookupOf(x, y)).get(TOPIC)).toBe(a.event_id);
    }
  });
});

describe("state resolution v1: the inputs", () => {
  it("keeps a key that only some states hold (no conflict in v1)", () => {
    const topic = event("$topic:example.com", "m.room.topic", CAROL, "", { topic: "by carol" }, 6);
    const resolved = resolveStateV1("1", [stateOf(topic), stateOf()], lookupOf(topic));
    expect(resolved.get(TOPIC)).toBe(topic.event_id);
  });

  it("returns the state itself when there is nothing to resolve", () => {
    expect(resolveStateV1("1", [], lookupOf())).toEqual(new Map());
    expect(resolveStateV1("1", [stateOf()], lookupOf())).toEqual(stateOf());
    expect(resolveStateV1("1", [stateOf(), stateOf()], lookupOf())).toEqual(stateOf());
  });

  it("leaves out conflicting events it cannot look up or that were rejected", () => {
    const t6 = event("$topic-6:example.com", "m.room.topic", CAROL, "", { topic: "six" }, 6);
    const t9 = event("$topic-9:example.com", "m.room.topic", ALICE, "", { topic: "nine" }, 9);
    // The only known event is taken as it is, without an auth check.
    expect(resolveStateV1("1", [stateOf(t6), stateOf(t9)], lookupOf(t6)).get(TOPIC)).toBe(t6.event_id);
    const isRejected = (id: string) => id === t9.event_id;
    expect(resolveStateV1("1", [stateOf(t6), stateOf(t9)], lookupOf(t6, t9), { isRejected }).get(TOPIC)).toBe(t6.event_id);
    // With none known, the key is left out.
    expect(resolveStateV1("1", [stateOf(t6), stateOf(t9)], lookupOf()).has(TOPIC)).toBe(false);
  });

  it("is what resolveState runs for room version 1", () => {
    const t6 = event("$topic-6:example.com", "m.room.topic", ALICE, "", { topic: "six" }, 6);
    // v2 would apply the older topic (by origin_server_ts) first and keep t6; v1 keeps the deeper.
    const t9 = { ...event("$topic-9:example.com", "m.room.topic", ALICE, "", { topic: "nine" }, 9), origin_server_ts: 1 };
    const states = [stateOf(t6), stateOf(t9)];
    expect(resolveState("1", states, lookupOf(t6, t9)).get(TOPIC)).toBe(t9.event_id);
    expect(resolveState("1", states, lookupOf(t6, t9))).toEqual(resolveStateV1("1", states, lookupOf(t6, t9)));
  });

  it("needs only the conflicting events and the unconflicted state at their auth event types", () => {
    const plA = event("$pl-a:example.com", "m.room.power_levels", ALICE, "", { users: { [ALICE]: 100, [BOB]: 50 } }, 6);
    const plB = event("$pl-b:example.com", "m.room.power_levels", ALICE, "", { users: { [ALICE]: 100 } }, 7);
    const t9 = event("$topic-9:example.com", "m.room.topic", BOB, "", { topic: "nine" }, 9);
    const daveKicked = event("$dave-kick:example.com", "m.room.member", ALICE, DAVE, { membership: "leave" }, 8);
    const dave = event("$dave-join:example.com", "m.room.member", DAVE, DAVE, { membership: "join" }, 6);
    const states = [stateOf(plA, t9, dave), stateOf(plB, daveKicked)];
    const all = lookupOf(plA, plB, t9, dave, daveKicked);

    const conflicting = conflictingEventIdsV1(states);
    expect([...conflicting].sort()).toEqual([dave, daveKicked, plA, plB].map((e) => e.event_id).sort());
    const auth = unconflictedAuthEventIdsV1("1", states, (id) => (conflicting.has(id) ? all(id) : undefined));
    // create, alice's and dave's... : the auth event types of the power levels (create, power
    // levels, alice) and of dave's events (also dave, and the join rules for his join).
    expect([...auth].sort()).toEqual([CREATE, ALICE_JOIN, PUBLIC].map((e) => e.event_id).sort());

    const needed = new Set([...conflicting, ...auth]);
    const onlyNeeded = (id: string) => (needed.has(id) ? all(id) : undefined);
    expect(resolveStateV1("1", states, onlyNeeded)).toEqual(resolveStateV1("1", states, all));
    expect(resolveStateV1("1", states, all).get(member(DAVE))).toBe(daveKicked.event_id);
  });
});

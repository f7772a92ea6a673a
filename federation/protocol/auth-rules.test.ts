import { describe, expect, it } from "vitest";
import { authTypesForEvent, selectAuthEvents } from "./auth-events-selection.ts";
import { checkAuth, checkAuthAgainstAuthEvents, powerLevelValue, userPowerLevel, type AuthState } from "./auth-rules.ts";
import { encodeUnpaddedBase64 } from "./base64.ts";
import type { RoomEvent } from "./pdu.ts";
import { stateMapKey } from "./room-state.ts";
import { roomVersionRules } from "./room-versions.ts";
import { signJson, signingKeyFromSeed } from "./signing.ts";

const ALICE = "@alice:a.example";
const BOB = "@bob:b.example";
const CAROL = "@carol:c.example";
const MALLORY = "@mallory:m.example";

let counter = 0;
function event(fields: Partial<RoomEvent> & { type: string; sender: string }): RoomEvent {
  counter++;
  return {
    event_id: `$e${counter}`,
    room_id: "!room:a.example",
    content: {},
    origin_server_ts: counter,
    prev_events: ["$prev"],
    auth_events: [],
    ...fields,
  };
}

const member = (user: string, membership: string, extra: Partial<RoomEvent> = {}) =>
  event({ type: "m.room.member", sender: user, state_key: user, content: { membership }, ...extra });
const powerLevels = (sender: string, content: Record<string, unknown>) =>
  event({ type: "m.room.power_levels", sender, state_key: "", content });
const joinRules = (joinRule: string, extra: Record<string, unknown> = {}) =>
  event({ type: "m.room.join_rules", sender: ALICE, state_key: "", content: { join_rule: joinRule, ...extra } });

function stateOf(...events: RoomEvent[]): AuthState {
  return new Map(events.map((e) => [stateMapKey(e.type, e.state_key!), e]));
}

/** A room created by Alice (v1–10: creator in content; v12: the room ID names the create event). */
function createEvent(version: string, content: Record<string, unknown> = {}): RoomEvent {
  if (version === "12") {
    return { ...event({ type: "m.room.create", sender: ALICE, state_key: "", content: { room_version: "12", ...content }, prev_events: [] }), room_id: undefined, event_id: "$create12" };
  }
  const base = roomVersionRules(version).creatorFromCreateSender ? {} : { creator: ALICE };
  return event({ type: "m.room.create", sender: ALICE, state_key: "", content: { room_version: version, ...base, ...content }, prev_events: [] });
}

function roomIdFor(version: string, create: RoomEvent): string {
  return version === "12" ? `!${create.event_id.slice(1)}` : create.room_id!;
}

/** A joined room: Alice (creator), Bob (joined), power levels, public join rules. */
function joinedRoom(version: string, users: Record<string, number>) {
  const create = createEvent(version);
  const roomId = roomIdFor(version, create);
  const inRoom = (e: RoomEvent): RoomEvent => ({ ...e, room_id: roomId });
  const state = [create, inRoom(member(ALICE, "join")), inRoom(member(BOB, "join")), inRoom(powerLevels(ALICE, { users })), inRoom(joinRules("public"))];
  return { create, roomId, inRoom, state: stateOf(...state), events: state };
}

describe("rule 1: m.room.create", () => {
  it("refuses a create event with prev_events", () => {
    const create = { ...createEvent("11"), prev_events: ["$x"] };
    expect(checkAuth("11", create, new Map())).toEqual({ allowed: false, reason: "m.room.create must not have prev_events" });
  });

  it("v10/v11: refuses a room_id whose domain is not the sender's", () => {
    const create = { ...createEvent("11"), room_id: "!room:elsewhere.example" };
    expect(checkAuth("11", create, new Map()).allowed).toBe(false);
  });

  it("refuses an unrecognised content.room_version", () => {
    expect(checkAuth("11", { ...createEvent("11"), content: { room_version: "99" } }, new Map())).toEqual({
      allowed: false,
      reason: 'content.room_version "99" is not a recognised room version',
    });
  });

  it("v10 requires content.creator; v11 does not (the creator is the sender)", () => {
    const withoutCreator = createEvent("11");
    expect(checkAuth("10", withoutCreator, new Map())).toEqual({ allowed: false, reason: "m.room.create content has no creator property" });
    expect(checkAuth("11", withoutCreator, new Map())).toEqual({ allowed: true });
  });

  it("v12 refuses a create event that has a room_id", () => {
    const create = { ...createEvent("12"), room_id: "!something" };
    expect(checkAuth("12", create, new Map()).allowed).toBe(false);
    expect(checkAuth("12", createEvent("12"), new Map())).toEqual({ allowed: true });
  });

  it("v12 refuses additional_creators that are not valid user IDs", () => {
    expect(checkAuth("12", createEvent("12", { additional_creators: [BOB] }), new Map())).toEqual({ allowed: true });
    expect(checkAuth("12", createEvent("12", { additional_creators: ["bob"] }), new Map()).allowed).toBe(false);
    expect(checkAuth("12", createEvent("12", { additional_creators: BOB }), new Map()).allowed).toBe(false);
  });
});

describe("v12 rule 2: the room ID names the create event", () => {
  it("refuses an event whose room_id is not the create event's ID", () => {
    const room = joinedRoom("12", {});
    const message = event({ type: "m.room.message", sender: ALICE, room_id: "!someotherroom" });
    expect(checkAuth("12", message, room.state)).toEqual({
      allowed: false,
      reason: `room_id "!someotherroom" does not name the room's m.room.create event ${room.create.event_id}`,
    });
    expect(checkAuth("12", room.inRoom(message), room.state)).toEqual({ allowed: true });
  });
});

describe("creators and power", () => {
  it("v10: the creator is content.creator; v11: the create event's sender", () => {
    const create10 = event({ type: "m.room.create", sender: ALICE, state_key: "", content: { creator: BOB }, prev_events: [] });
    expect(userPowerLevel("10", BOB, create10, undefined)).toBe(100);
    expect(userPowerLevel("10", ALICE, create10, undefined)).toBe(0);
    expect(userPowerLevel("11", ALICE, create10, undefined)).toBe(100);
    expect(userPowerLevel("11", BOB, create10, undefined)).toBe(0);
  });

  it("v11: the first join after the create event is allowed for the create event's sender", () => {
    const create = createEvent("11");
    const join = { ...member(ALICE, "join"), prev_events: [create.event_id] };
    expect(checkAuth("11", join, stateOf(create))).toEqual({ allowed: true });
    // In v10, the same event is judged by content.creator, which this create event lacks.
    expect(checkAuth("10", join, stateOf(create)).allowed).toBe(false);
  });

  it("v1: the creator's first join names the create event as an [event_id, hashes] pair", () => {
    const create = { ...createEvent("1"), event_id: "$create:a.example" };
    const join = { ...member(ALICE, "join"), event_id: "$join:a.example", prev_events: [[create.event_id, { sha256: "abc" }] as const] };
    expect(checkAuth("1", join, stateOf(create))).toEqual({ allowed: true });
    expect(checkAuth("1", { ...join, state_key: BOB, sender: BOB }, stateOf(create)).allowed).toBe(false);
  });

  it("v12: creators (sender and additional_creators) have infinite power, even with a power levels event", () => {
    const create = createEvent("12", { additional_creators: [CAROL] });
    const pl = powerLevels(ALICE, { users: { [BOB]: 100 } });
    expect(userPowerLevel("12", ALICE, create, pl)).toBe(Number.POSITIVE_INFINITY);
    expect(userPowerLevel("12", CAROL, create, pl)).toBe(Number.POSITIVE_INFINITY);
    expect(userPowerLevel("12", BOB, create, pl)).toBe(100);
    // v11 has no additional creators.
    expect(userPowerLevel("11", CAROL, createEvent("11", { additional_creators: [CAROL] }), undefined)).toBe(0);
  });

  it("v12: a user at power 100 cannot ban a creator; a creator can ban anyone", () => {
    const room12 = joinedRoom("12", { [BOB]: 100 });
    const ban12 = room12.inRoom(event({ type: "m.room.member", sender: BOB, state_key: ALICE, content: { membership: "ban" } }));
    expect(checkAuth("12", ban12, room12.state)).toEqual({
      allowed: false,
      reason: `${BOB} (power level 100) cannot ban ${ALICE} (power level infinite (room creator); ban level 50)`,
    });
    // A creator may ban anyone.
    const banBob = room12.inRoom(event({ type: "m.room.member", sender: ALICE, state_key: BOB, content: { membership: "ban" } }));
    expect(checkAuth("12", banBob, room12.state)).toEqual({ allowed: true });
  });

  it("v12 rule 10.4: refuses power levels that list a creator in users", () => {
    const room = joinedRoom("12", {});
    const pl = room.inRoom(powerLevels(ALICE, { users: { [ALICE]: 100 } }));
    expect(checkAuth("12", pl, room.state)).toEqual({
      allowed: false,
      reason: `power levels: room creator ${ALICE} must not be listed in users`,
    });
    const additional = createEvent("12", { additional_creators: [BOB] });
    const state = new Map(room.state);
    state.set(stateMapKey("m.room.create", ""), additional);
    const listsBob = { ...powerLevels(ALICE, { users: { [BOB]: 50 } }), room_id: roomIdFor("12", additional) };
    expect(checkAuth("12", listsBob, state).allowed).toBe(false);
    // v11 has no such rule.
    const room11 = joinedRoom("11", { [ALICE]: 100 });
    expect(checkAuth("11", room11.inRoom(powerLevels(ALICE, { users: { [ALICE]: 100 } })), room11.state)).toEqual({ allowed: true });
  });
});

describe("rule 10: m.room.power_levels", () => {
  it("v10+: refuses string power levels", () => {
    const room = joinedRoom("10", { [ALICE]: 100 });
    expect(checkAuth("10", room.inRoom(powerLevels(ALICE, { users: { [ALICE]: 100 }, ban: "50" })), room.state)).toEqual({
      allowed: false,
      reason: "power levels: ban must be an integer",
    });
    expect(checkAuth("10", room.inRoom(powerLevels(ALICE, { users: { [ALICE]: "100" } })), room.state)).toEqual({
      allowed: false,
      reason: `power levels: the level of ${ALICE} must be an integer`,
    });
    expect(checkAuth("10", room.inRoom(powerLevels(ALICE, { users: { [ALICE]: 100 }, events: { "m.room.name": "50" } })), room.state)).toEqual({
      allowed: false,
      reason: "power levels: events must map to integers",
    });
  });

  it("refuses users keys that are not user IDs", () => {
    const room = joinedRoom("11", { [ALICE]: 100 });
    expect(checkAuth("11", room.inRoom(powerLevels(ALICE, { users: { [ALICE]: 100, alice: 5 } })), room.state).allowed).toBe(false);
  });

  it("refuses raising anyone, or any level, above the sender's own level", () => {
    const room = joinedRoom("11", { [ALICE]: 100, [BOB]: 50 });
    expect(checkAuth("11", room.inRoom(powerLevels(BOB, { users: { [ALICE]: 100, [BOB]: 50, [CAROL]: 51 } })), room.state)).toEqual({
      allowed: false,
      reason: `power levels: cannot give ${CAROL} level 51, above the sender's level 50`,
    });
    expect(checkAuth("11", room.inRoom(powerLevels(BOB, { users: { [ALICE]: 100, [BOB]: 50 }, kick: 60 })), room.state).allowed).toBe(false);
    expect(checkAuth("11", room.inRoom(powerLevels(BOB, { users: { [ALICE]: 100, [BOB]: 50, [CAROL]: 50 } })), room.state)).toEqual({ allowed: true });
  });

  it("refuses changing a user at or above the sender's level, but allows lowering oneself", () => {
    const room = joinedRoom("11", { [ALICE]: 100, [BOB]: 100 });
    expect(checkAuth("11", room.inRoom(powerLevels(BOB, { users: { [ALICE]: 0, [BOB]: 100 } })), room.state).allowed).toBe(false);
    expect(checkAuth("11", room.inRoom(powerLevels(BOB, { users: { [ALICE]: 100, [BOB]: 10 } })), room.state)).toEqual({ allowed: true });
  });
});

describe("rule 5: m.room.member", () => {
  it("refuses a join to an invite-only room without an invite, allows it with one", () => {
    const room = joinedRoom("11", { [ALICE]: 100 });
    const state = new Map(room.state);
    state.set(stateMapKey("m.room.join_rules", ""), joinRules("invite"));
    const join = room.inRoom(member(CAROL, "join"));
    expect(checkAuth("11", join, state)).toEqual({ allowed: false, reason: `the join rule is invite and ${CAROL} is not invited (membership: leave)` });
    state.set(stateMapKey("m.room.member", CAROL), member(CAROL, "invite", { sender: ALICE }));
    expect(checkAuth("11", join, state)).toEqual({ allowed: true });
  });

  it("refuses a join by a banned user even to a public room", () => {
    const room = joinedRoom("11", { [ALICE]: 100 });
    const state = new Map(room.state);
    state.set(stateMapKey("m.room.member", CAROL), member(CAROL, "ban", { sender: ALICE }));
    expect(checkAuth("11", room.inRoom(member(CAROL, "join")), state)).toEqual({ allowed: false, reason: `${CAROL} is banned from the room` });
  });

  it("restricted rooms: needs an authorising user who is joined and can invite", () => {
    const room = joinedRoom("10", { [ALICE]: 100 });
    const state = new Map(room.state);
    state.set(stateMapKey("m.room.join_rules", ""), joinRules("restricted", { allow: [] }));
    state.set(stateMapKey("m.room.power_levels", ""), powerLevels(ALICE, { users: { [ALICE]: 100 }, invite: 50 }));
    const via = (user: string) => room.inRoom({ ...member(CAROL, "join"), content: { membership: "join", join_authorised_via_users_server: user } });
    expect(checkAuth("10", room.inRoom(member(CAROL, "join")), state).allowed).toBe(false);
    expect(checkAuth("10", via(BOB), state)).toEqual({
      allowed: false,
      reason: `join_authorised_via_users_server ${BOB} has power level 0, below the invite level 50`,
    });
    expect(checkAuth("10", via(MALLORY), state)).toEqual({ allowed: false, reason: `join_authorised_via_users_server ${MALLORY} is not joined to the room` });
    expect(checkAuth("10", via(ALICE), state)).toEqual({ allowed: true });
  });

  it("knock_restricted (v10+) allows a knock", () => {
    const room = joinedRoom("10", { [ALICE]: 100 });
    const state = new Map(room.state);
    state.set(stateMapKey("m.room.join_rules", ""), joinRules("knock_restricted", { allow: [] }));
    expect(checkAuth("10", room.inRoom(member(CAROL, "knock")), state)).toEqual({ allowed: true });
    state.set(stateMapKey("m.room.join_rules", ""), joinRules("public"));
    expect(checkAuth("10", room.inRoom(member(CAROL, "knock")), state).allowed).toBe(false);
  });

  it("kicks need the kick level and more power than the target; leaving needs no power", () => {
    const room = joinedRoom("11", { [ALICE]: 100, [BOB]: 50 });
    const kick = (sender: string, target: string) =>
      room.inRoom(event({ type: "m.room.member", sender, state_key: target, content: { membership: "leave" } }));
    expect(checkAuth("11", kick(BOB, ALICE), room.state).allowed).toBe(false);
    expect(checkAuth("11", kick(ALICE, BOB), room.state)).toEqual({ allowed: true });
    expect(checkAuth("11", kick(BOB, BOB), room.state)).toEqual({ allowed: true });
    expect(checkAuth("11", kick(CAROL, CAROL), room.state)).toEqual({ allowed: false, reason: `${CAROL} cannot leave: membership is leave` });
  });

  it("refuses an unknown membership", () => {
    const room = joinedRoom("11", { [ALICE]: 100 });
    expect(checkAuth("11", room.inRoom(member(ALICE, "wizard")), room.state)).toEqual({ allowed: false, reason: 'unknown membership "wizard"' });
  });

  it("allows an invite from a third-party invite only with the identity server's signature", () => {
    const identityServer = signingKeyFromSeed(new Uint8Array(32).fill(7), "ed25519:0");
    const room = joinedRoom("11", { [ALICE]: 100 });
    const state = new Map(room.state);
    const thirdPartyInvite = room.inRoom(
      event({ type: "m.room.third_party_invite", sender: ALICE, state_key: "tok", content: { public_key: encodeUnpaddedBase64(identityServer.publicKey), display_name: "c..." } }),
    );
    state.set(stateMapKey("m.room.third_party_invite", "tok"), thirdPartyInvite);
    const signed = signJson({ mxid: CAROL, token: "tok" }, "id.example", identityServer);
    const invite = (s: unknown) =>
      room.inRoom(event({ type: "m.room.member", sender: ALICE, state_key: CAROL, content: { membership: "invite", third_party_invite: { display_name: "c", signed: s } } }));
    expect(checkAuth("11", invite(signed), state)).toEqual({ allowed: true });
    expect(checkAuth("11", invite({ ...signed, mxid: BOB }), state).allowed).toBe(false);
    const forged = signJson({ mxid: CAROL, token: "tok" }, "id.example", signingKeyFromSeed(new Uint8Array(32).fill(8), "ed25519:0"));
    expect(checkAuth("11", invite(forged), state)).toEqual({
      allowed: false,
      reason: "no signature in third_party_invite.signed matches a public key of the m.room.third_party_invite",
    });
  });
});

describe("rules 4, 6, 8, 9", () => {
  it("refuses events from servers other than the creator's when m.federate is false", () => {
    const room = joinedRoom("11", { [ALICE]: 100 });
    const state = new Map(room.state);
    state.set(stateMapKey("m.room.create", ""), { ...room.create, content: { ...room.create.content, "m.federate": false } });
    expect(checkAuth("11", room.inRoom(event({ type: "m.room.message", sender: BOB })), state).allowed).toBe(false);
    expect(checkAuth("11", room.inRoom(event({ type: "m.room.message", sender: ALICE })), state)).toEqual({ allowed: true });
  });

  it("refuses messages from users who are not joined", () => {
    const room = joinedRoom("11", { [ALICE]: 100 });
    expect(checkAuth("11", room.inRoom(event({ type: "m.room.message", sender: CAROL })), room.state)).toEqual({
      allowed: false,
      reason: `sender ${CAROL} is not joined to the room (membership: leave)`,
    });
  });

  it("refuses state events below state_default (50 by default)", () => {
    const room = joinedRoom("11", { [ALICE]: 100 });
    expect(checkAuth("11", room.inRoom(event({ type: "m.room.topic", sender: BOB, state_key: "" })), room.state)).toEqual({
      allowed: false,
      reason: `sending m.room.topic needs power level 50; sender ${BOB} has 0`,
    });
    expect(checkAuth("11", room.inRoom(event({ type: "m.room.message", sender: BOB })), room.state)).toEqual({ allowed: true });
  });

  it("refuses a state_key that is another user's ID", () => {
    const room = joinedRoom("11", { [ALICE]: 100 });
    expect(checkAuth("11", room.inRoom(event({ type: "org.example.x", sender: ALICE, state_key: BOB })), room.state).allowed).toBe(false);
    expect(checkAuth("11", room.inRoom(event({ type: "org.example.x", sender: ALICE, state_key: ALICE })), room.state)).toEqual({ allowed: true });
  });
});

describe("auth events selection", () => {
  it("never selects the create event in v12; does in v10 and v11", () => {
    const join = member(BOB, "join");
    expect(authTypesForEvent("11", join)).toEqual([
      ["m.room.create", ""],
      ["m.room.power_levels", ""],
      ["m.room.member", BOB],
      ["m.room.join_rules", ""],
    ]);
    expect(authTypesForEvent("12", join)).toEqual([
      ["m.room.power_levels", ""],
      ["m.room.member", BOB],
      ["m.room.join_rules", ""],
    ]);
    expect(authTypesForEvent("12", createEvent("12"))).toEqual([]);
  });

  it("adds the target, the 3pid invite and the authorising user's membership for member events", () => {
    const invite = event({
      type: "m.room.member",
      sender: ALICE,
      state_key: CAROL,
      content: { membership: "invite", third_party_invite: { signed: { token: "tok" } } },
    });
    expect(authTypesForEvent("12", invite)).toEqual([
      ["m.room.power_levels", ""],
      ["m.room.member", ALICE],
      ["m.room.member", CAROL],
      ["m.room.join_rules", ""],
      ["m.room.third_party_invite", "tok"],
    ]);
    const restricted = { ...member(CAROL, "join"), content: { membership: "join", join_authorised_via_users_server: ALICE } };
    expect(authTypesForEvent("12", restricted)).toContainEqual(["m.room.member", ALICE]);
    // Only joins name the authorising user.
    const leave = { ...member(CAROL, "leave"), content: { membership: "leave", join_authorised_via_users_server: ALICE } };
    expect(authTypesForEvent("12", leave)).not.toContainEqual(["m.room.member", ALICE]);
  });

  it("selects the IDs of those events from the state", () => {
    const state = new Map([
      [stateMapKey("m.room.create", ""), "$c"],
      [stateMapKey("m.room.power_levels", ""), "$p"],
      [stateMapKey("m.room.member", ALICE), "$a"],
      [stateMapKey("m.room.topic", ""), "$t"],
    ]);
    expect(selectAuthEvents("11", event({ type: "m.room.message", sender: ALICE }), state)).toEqual(["$c", "$p", "$a"]);
    expect(selectAuthEvents("12", event({ type: "m.room.message", sender: ALICE }), state)).toEqual(["$p", "$a"]);
  });
});

describe("checking an event against its own auth_events (rule 3)", () => {
  function lookupFrom(events: RoomEvent[], rejected: string[] = []) {
    const byId = new Map(events.map((e) => [e.event_id, e]));
    return (id: string) => {
      const found = byId.get(id);
      return found ? { event: found, rejected: rejected.includes(id) } : undefined;
    };
  }

  for (const version of ["10", "11", "12"]) {
    const room = joinedRoom(version, version === "12" ? {} : { [ALICE]: 100 });
    const [create, aliceJoin, , pl] = room.events as [RoomEvent, RoomEvent, RoomEvent, RoomEvent, RoomEvent];
    const good = version === "12" ? [pl.event_id, aliceJoin.event_id] : [create.event_id, pl.event_id, aliceJoin.event_id];
    const topic = (authEvents: string[]) => room.inRoom(event({ type: "m.room.topic", sender: ALICE, state_key: "", auth_events: authEvents }));

    it(`v${version}: allows the right auth events`, () => {
      expect(checkAuthAgainstAuthEvents(version, topic(good), lookupFrom(room.events))).toEqual({ allowed: true });
    });

    it(`v${version}: refuses duplicates, wrong types, rejected and unknown auth events`, () => {
      const otherPl = room.inRoom(powerLevels(ALICE, { users: {} }));
      const events = [...room.events, otherPl];
      expect(checkAuthAgainstAuthEvents(version, topic([...good, otherPl.event_id]), lookupFrom(events)).allowed).toBe(false);
      const bob = room.events[2]!;
      expect(checkAuthAgainstAuthEvents(version, topic([...good, bob.event_id]), lookupFrom(events))).toMatchObject({
        allowed: false,
        reason: expect.stringContaining("is not one the auth events selection allows"),
      });
      expect(checkAuthAgainstAuthEvents(version, topic(good), lookupFrom(events, [pl.event_id]))).toEqual({
        allowed: false,
        reason: `auth event ${pl.event_id} was rejected`,
      });
      expect(checkAuthAgainstAuthEvents(version, topic([...good, "$nowhere"]), lookupFrom(events))).toEqual({
        allowed: false,
        reason: "auth event $nowhere is unknown",
      });
    });

    it(`v${version}: refuses an auth event from another room`, () => {
      const foreignPl = { ...pl, event_id: "$foreign", room_id: "!other:a.example" };
      const authEvents = good.map((id) => (id === pl.event_id ? "$foreign" : id));
      expect(checkAuthAgainstAuthEvents(version, topic(authEvents), lookupFrom([...room.events, foreignPl]))).toMatchObject({ allowed: false });
    });
  }

  it("v10/v11: refuses auth_events without the create event", () => {
    const room = joinedRoom("11", { [ALICE]: 100 });
    const [, aliceJoin, , pl] = room.events as [RoomEvent, RoomEvent, RoomEvent, RoomEvent];
    const topic = room.inRoom(event({ type: "m.room.topic", sender: ALICE, state_key: "", auth_events: [pl.event_id, aliceJoin.event_id] }));
    expect(checkAuthAgainstAuthEvents("11", topic, lookupFrom(room.events))).toEqual({
      allowed: false,
      reason: "auth_events does not include the m.room.create event",
    });
  });

  it("v12: refuses the create event among auth_events, and a rejected create event", () => {
    const room = joinedRoom("12", {});
    const [create, aliceJoin, , pl] = room.events as [RoomEvent, RoomEvent, RoomEvent, RoomEvent];
    const topic = (authEvents: string[]) => room.inRoom(event({ type: "m.room.topic", sender: ALICE, state_key: "", auth_events: authEvents }));
    expect(checkAuthAgainstAuthEvents("12", topic([create.event_id, pl.event_id, aliceJoin.event_id]), lookupFrom(room.events)).allowed).toBe(false);
    expect(checkAuthAgainstAuthEvents("12", topic([pl.event_id, aliceJoin.event_id]), lookupFrom(room.events, [create.event_id]))).toEqual({
      allowed: false,
      reason: `the m.room.create event named by room_id ${room.roomId} was rejected`,
    });
  });
});

describe("v1–5 rule 4: m.room.aliases", () => {
  const aliases = (sender: string, stateKey: string | undefined) =>
    event({ type: "m.room.aliases", sender, ...(stateKey === undefined ? {} : { state_key: stateKey }), content: { aliases: ["#a:b.example"] } });

  it("v5 lets only the server named by the state_key send it, with no power and no membership", () => {
    const room = joinedRoom("5", { [ALICE]: 100 });
    // Bob has power 0, below state_default 50: the aliases rule allows before rule 8 is reached.
    expect(checkAuth("5", room.inRoom(aliases(BOB, "b.example")), room.state)).toEqual({ allowed: true });
    // Carol is not in the room at all.
    expect(checkAuth("5", room.inRoom(aliases(CAROL, "c.example")), room.state)).toEqual({ allowed: true });
    expect(checkAuth("5", room.inRoom(aliases(ALICE, "b.example")), room.state)).toEqual({
      allowed: false,
      reason: 'm.room.aliases with state_key "b.example" may only be sent from that server, not a.example',
    });
    expect(checkAuth("5", room.inRoom(aliases(BOB, undefined)), room.state)).toEqual({ allowed: false, reason: "m.room.aliases has no state_key" });
  });

  it("v6 treats it as an ordinary state event", () => {
    const room = joinedRoom("6", { [ALICE]: 100 });
    expect(checkAuth("6", room.inRoom(aliases(BOB, "b.example")), room.state)).toEqual({
      allowed: false,
      reason: `sending m.room.aliases needs power level 50; sender ${BOB} has 0`,
    });
    expect(checkAuth("6", room.inRoom(aliases(CAROL, "c.example")), room.state).allowed).toBe(false);
    expect(checkAuth("6", room.inRoom(aliases(ALICE, "b.example")), room.state)).toEqual({ allowed: true });
  });
});

describe("v1–2 rule 11: m.room.redaction", () => {
  // v1–2 event IDs are `$opaque:domain`, chosen by the sending server; `redacts` is top level.
  const redaction = (sender: string, eventId: string, redacts?: string) =>
    event({ type: "m.room.redaction", sender, event_id: eventId, content: {}, ...(redacts === undefined ? {} : { redacts }) });

  it("v2 allows a redaction at the redact level, or of an event from the redaction's own server", () => {
    const room = joinedRoom("2", { [ALICE]: 100 });
    expect(checkAuth("2", room.inRoom(redaction(BOB, "$r1:b.example", "$m1:b.example")), room.state)).toEqual({ allowed: true });
    expect(checkAuth("2", room.inRoom(redaction(BOB, "$r2:b.example", "$m2:a.example")), room.state)).toEqual({
      allowed: false,
      reason: `${BOB} (power level 0, redact level 50) cannot redact $m2:a.example: it is not from the redaction's server b.example`,
    });
    expect(checkAuth("2", room.inRoom(redaction(BOB, "$r3:b.example")), room.state).allowed).toBe(false);
    expect(checkAuth("2", room.inRoom(redaction(ALICE, "$r4:a.example", "$m4:b.example")), room.state)).toEqual({ allowed: true });
  });

  it("v2 reads the redact level from the power levels", () => {
    const room = joinedRoom("2", { [ALICE]: 100 });
    const state = new Map(room.state);
    state.set(stateMapKey("m.room.power_levels", ""), room.inRoom(powerLevels(ALICE, { users: { [ALICE]: 100 }, redact: 0 })));
    expect(checkAuth("2", room.inRoom(redaction(BOB, "$r1:b.example", "$m1:a.example")), state)).toEqual({ allowed: true });
  });

  it("v3 does not consider the redact level or the event's server", () => {
    const room = joinedRoom("3", { [ALICE]: 100 });
    expect(checkAuth("3", room.inRoom(redaction(BOB, "$r1", "$m1")), room.state)).toEqual({ allowed: true });
    expect(checkAuth("3", room.inRoom(redaction(BOB, "$r2:b.example", "$m2:a.example")), room.state)).toEqual({ allowed: true });
  });
});

describe("knocking (v7+)", () => {
  function roomWithJoinRule(version: string, joinRule: string) {
    const room = joinedRoom(version, { [ALICE]: 100 });
    const state = new Map(room.state);
    state.set(stateMapKey("m.room.join_rules", ""), room.inRoom(joinRules(joinRule)));
    return { room, state };
  }

  it("v7 allows a knock on a room whose join rule is knock; v6 knows no knock membership", () => {
    const v7 = roomWithJoinRule("7", "knock");
    expect(checkAuth("7", v7.room.inRoom(member(CAROL, "knock")), v7.state)).toEqual({ allowed: true });
    const v6 = roomWithJoinRule("6", "knock");
    expect(checkAuth("6", v6.room.inRoom(member(CAROL, "knock")), v6.state)).toEqual({
      allowed: false,
      reason: 'unknown membership "knock" (knocking needs room version 7 or later)',
    });
  });

  it("v7 lets the invited join a knock room; in v6 knock is no join rule", () => {
    for (const version of ["6", "7"]) {
      const { room, state } = roomWithJoinRule(version, "knock");
      state.set(stateMapKey("m.room.member", CAROL), room.inRoom(member(CAROL, "invite", { sender: ALICE })));
      const decision = checkAuth(version, room.inRoom(member(CAROL, "join")), state);
      expect(decision).toEqual(version === "7" ? { allowed: true } : { allowed: false, reason: `${CAROL} may not join: the join rule is "knock"` });
    }
  });

  it("v7 lets a knocking user withdraw (leave); v6 does not count knock as a membership to leave", () => {
    for (const version of ["6", "7"]) {
      const { room, state } = roomWithJoinRule(version, "knock");
      state.set(stateMapKey("m.room.member", CAROL), room.inRoom(member(CAROL, "knock")));
      const decision = checkAuth(version, room.inRoom(member(CAROL, "leave")), state);
      expect(decision).toEqual(version === "7" ? { allowed: true } : { allowed: false, reason: `${CAROL} cannot leave: membership is knock` });
    }
  });

  it("knock_restricted is a join rule only from v10", () => {
    const v9 = roomWithJoinRule("9", "knock_restricted");
    expect(checkAuth("9", v9.room.inRoom(member(CAROL, "knock")), v9.state)).toEqual({ allowed: false, reason: 'cannot knock: the join rule is "knock_restricted"' });
    const v10 = roomWithJoinRule("10", "knock_restricted");
    expect(checkAuth("10", v10.room.inRoom(member(CAROL, "knock")), v10.state)).toEqual({ allowed: true });
  });
});

describe("power levels before v10: strings and floats (v1-stringy-power-levels, v1-floaty-power-levels)", () => {
  it("reads the spec's string format: whitespace, one sign, leading zeros, base 10", () => {
    for (const [value, level] of [
      ["100", 100],
      ["000100", 100],
      ["+100", 100],
      ["-100", -100],
      [" 100 ", 100],
      [" 00100 ", 100],
      [" +100 ", 100],
      [" -100 ", -100],
      ["\t\n50\u3000", 50],
      ["-0", 0],
    ] as const) {
      expect(powerLevelValue("9", value)).toBe(level);
    }
    for (const value of ["", " ", "+-5", "--5", "5.0", "1e3", "0x10", "1_0", "5 0", "\u0665", "fifty", true, null, [50], { level: 50 }]) {
      expect(powerLevelValue("9", value)).toBeUndefined();
    }
  });

  it("truncates floats toward zero and refuses what a double cannot hold", () => {
    expect(powerLevelValue("1", 50.57)).toBe(50);
    expect(powerLevelValue("1", 5.114698e4)).toBe(51146);
    expect(powerLevelValue("1", -50.5)).toBe(-50);
    expect(Object.is(powerLevelValue("1", -0.5), 0)).toBe(true);
    expect(powerLevelValue("1", Number.POSITIVE_INFINITY)).toBeUndefined();
    expect(powerLevelValue("1", Number.NaN)).toBeUndefined();
    expect(powerLevelValue("9", "1".repeat(400))).toBeUndefined();
  });

  it("v10 reads integers only", () => {
    expect(powerLevelValue("10", 50)).toBe(50);
    expect(powerLevelValue("10", "50")).toBeUndefined();
    expect(powerLevelValue("10", 50.5)).toBeUndefined();
  });

  it("v9 accepts the spec's example of string power levels; v10 rejects it", () => {
    // The example event of v1-stringy-power-levels.
    const content = {
      ban: "50",
      events: { "m.room.power_levels": "100" },
      events_default: "0",
      state_default: "50",
      users: { [ALICE]: "100" },
      users_default: "0",
    };
    const v9 = joinedRoom("9", { [ALICE]: 100 });
    expect(checkAuth("9", v9.inRoom(powerLevels(ALICE, content)), v9.state)).toEqual({ allowed: true });
    const v10 = joinedRoom("10", { [ALICE]: 100 });
    expect(checkAuth("10", v10.inRoom(powerLevels(ALICE, content)), v10.state)).toEqual({ allowed: false, reason: "power levels: users_default must be an integer" });
  });

  it("v1 accepts the spec's example of float power levels, where 50 and 50.57 are the same level", () => {
    const room = joinedRoom("1", { [ALICE]: 100 });
    const floaty = room.inRoom(powerLevels(ALICE, { ban: 50, events: { "m.room.power_levels": 100 }, users: { [ALICE]: 100, [BOB]: 50.57, [CAROL]: 50 } }));
    expect(checkAuth("1", floaty, room.state)).toEqual({ allowed: true });
    expect(userPowerLevel("1", BOB, room.create, floaty)).toBe(50);
    // Carol at 50 cannot kick Bob: his level is not below hers.
    const state = new Map(room.state);
    state.set(stateMapKey("m.room.power_levels", ""), floaty);
    state.set(stateMapKey("m.room.member", CAROL), room.inRoom(member(CAROL, "join")));
    const kick = room.inRoom(event({ type: "m.room.member", sender: CAROL, state_key: BOB, content: { membership: "leave" } }));
    expect(checkAuth("1", kick, state)).toEqual({ allowed: false, reason: `${CAROL} (power level 50) cannot kick ${BOB} (power level 50; kick level 50)` });
  });

  it("v5 rejects power levels outside the range of a double", () => {
    const room = joinedRoom("5", { [ALICE]: 100 });
    expect(checkAuth("5", room.inRoom(powerLevels(ALICE, { users: { [ALICE]: 100 }, ban: Number.POSITIVE_INFINITY })), room.state)).toEqual({
      allowed: false,
      reason: "power levels: ban is outside the range of a double",
    });
    expect(checkAuth("5", room.inRoom(powerLevels(ALICE, { users: { [ALICE]: 100 }, events: { "m.room.name": Number.NEGATIVE_INFINITY } })), room.state).allowed).toBe(false);
  });

  it("v9 reads string levels wherever a level is needed: users, users_default, events, state_default", () => {
    const room = joinedRoom("9", { [ALICE]: 100 });
    const state = new Map(room.state);
    const pl = room.inRoom(powerLevels(ALICE, { users: { [ALICE]: "100", [BOB]: " 60 " }, users_default: "10", state_default: "55", events: { "m.room.name": "+070" } }));
    state.set(stateMapKey("m.room.power_levels", ""), pl);
    expect(userPowerLevel("9", BOB, room.create, pl)).toBe(60);
    expect(userPowerLevel("9", CAROL, room.create, pl)).toBe(10);
    expect(checkAuth("9", room.inRoom(event({ type: "m.room.topic", sender: BOB, state_key: "" })), state)).toEqual({ allowed: true });
    expect(checkAuth("9", room.inRoom(event({ type: "m.room.name", sender: BOB, state_key: "" })), state)).toEqual({
      allowed: false,
      reason: `sending m.room.name needs power level 70; sender ${BOB} has 60`,
    });
    // The same content in v10 was never valid; userPowerLevel ignores values that are not levels.
    expect(userPowerLevel("10", BOB, room.create, pl)).toBe(0);
  });

  it("v9 compares levels, not their spelling: 100 to \"100\" is no change", () => {
    const room = joinedRoom("9", { [ALICE]: 100, [BOB]: 50 });
    // Bob (50) may not touch Alice's entry (100), but rewriting it as a string changes nothing.
    expect(checkAuth("9", room.inRoom(powerLevels(BOB, { users: { [ALICE]: "100", [BOB]: "50" } })), room.state)).toEqual({ allowed: true });
    expect(checkAuth("9", room.inRoom(powerLevels(BOB, { users: { [ALICE]: "99", [BOB]: 50 } })), room.state)).toEqual({
      allowed: false,
      reason: `power levels: cannot change the level of ${ALICE} (100): not below the sender's level 50`,
    });
    expect(checkAuth("9", room.inRoom(powerLevels(BOB, { users: { [ALICE]: 100, [BOB]: 50 }, kick: "0050" })), room.state)).toEqual({ allowed: true });
    expect(checkAuth("9", room.inRoom(powerLevels(BOB, { users: { [ALICE]: 100, [BOB]: 50 }, kick: "51" })), room.state)).toEqual({
      allowed: false,
      reason: "power levels: cannot set kick to 51, above the sender's level 50",
    });
  });

  it("v9 rejects users levels that are not integers or strings holding one", () => {
    const room = joinedRoom("9", { [ALICE]: 100 });
    expect(checkAuth("9", room.inRoom(powerLevels(ALICE, { users: { [ALICE]: 100, [BOB]: "fifty" } })), room.state)).toEqual({
      allowed: false,
      reason: `power levels: the level of ${BOB} must be an integer (or a string holding one)`,
    });
    expect(checkAuth("9", room.inRoom(powerLevels(ALICE, { users: { [ALICE]: 100, [BOB]: null } })), room.state).allowed).toBe(false);
    expect(checkAuth("9", room.inRoom(powerLevels(ALICE, { users: { [ALICE]: 100, [BOB]: "5.5" } })), room.state).allowed).toBe(false);
  });

  it("v9 does not type-check other fields, but refuses the events whose rules need a level that is not one", () => {
    // Synapse 1.67 reads such a level with int() when a rule needs it, and cannot accept the event.
    const room = joinedRoom("9", { [ALICE]: 100 });
    const state = new Map(room.state);
    state.delete(stateMapKey("m.room.power_levels", ""));
    const garbled = room.inRoom(powerLevels(ALICE, { users: { [ALICE]: 100 }, ban: "fifty" }));
    // The first power levels event: rule 10 checks only users.
    expect(checkAuth("9", garbled, state)).toEqual({ allowed: true });
    state.set(stateMapKey("m.room.power_levels", ""), garbled);
    const ban = room.inRoom(event({ type: "m.room.member", sender: ALICE, state_key: BOB, content: { membership: "ban" } }));
    expect(checkAuth("9", ban, state)).toEqual({ allowed: false, reason: 'power levels: ban is "fifty", which is not a power level' });
    // Rules that do not read the ban level are unaffected.
    expect(checkAuth("9", room.inRoom(event({ type: "m.room.message", sender: BOB })), state)).toEqual({ allowed: true });
    expect(checkAuth("9", room.inRoom(member(CAROL, "join")), state)).toEqual({ allowed: true });
    // Changing the power levels compares the current ban level, which cannot be read.
    expect(checkAuth("9", room.inRoom(powerLevels(ALICE, { users: { [ALICE]: 100 }, ban: 50 })), state)).toEqual({
      allowed: false,
      reason: 'power levels: the current ban is "fifty", which is not a power level',
    });
  });
});

describe("power levels: notifications (v6+)", () => {
  it("v6 holds changes to notifications to the sender's level; v5 does not look at them", () => {
    for (const version of ["5", "6"]) {
      const room = joinedRoom(version, { [ALICE]: 100, [BOB]: 50 });
      const state = new Map(room.state);
      state.set(stateMapKey("m.room.power_levels", ""), room.inRoom(powerLevels(ALICE, { users: { [ALICE]: 100, [BOB]: 50 }, notifications: { room: 100 } })));
      const lowered = room.inRoom(powerLevels(BOB, { users: { [ALICE]: 100, [BOB]: 50 }, notifications: { room: 0 } }));
      expect(checkAuth(version, lowered, state)).toEqual(
        version === "6" ? { allowed: false, reason: "power levels: cannot change notifications.room from 100, above the sender's level 50" } : { allowed: true },
      );
      const raised = room.inRoom(powerLevels(BOB, { users: { [ALICE]: 100, [BOB]: 50 }, notifications: { room: 100, "org.example": 75 } }));
      expect(checkAuth(version, raised, state).allowed).toBe(version === "5");
    }
  });

  it("v5 does not read notifications at all; v6 refuses a value there that is not a level", () => {
    for (const version of ["5", "6"]) {
      const room = joinedRoom(version, { [ALICE]: 100 });
      const garbled = room.inRoom(powerLevels(ALICE, { users: { [ALICE]: 100 }, notifications: { room: "everyone" } }));
      expect(checkAuth(version, garbled, room.state)).toEqual(
        version === "5" ? { allowed: true } : { allowed: false, reason: 'power levels: notifications["room"] is "everyone", which is not a power level' },
      );
    }
  });
});

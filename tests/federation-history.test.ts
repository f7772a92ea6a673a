// Serving room history to other servers, and reading it from them: /event, /state, /state_ids,
// /event_auth, /backfill, /get_missing_events, /timestamp_to_event.
// https://spec.matrix.org/latest/server-server-api/#retrieving-events
// https://spec.matrix.org/latest/server-server-api/#backfilling-and-retrieving-missing-events
//
// Two servers: hs2 holds the rooms (its users are in them), hs1 is another server, in a room once
// one of its users joined it over federation. The walks are checked against the rooms service
// directly, for hs2's own server name (a server whose users really are in the room), and over HTTP
// for hs1 in and out of rooms.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { computeEventId } from "../federation/protocol/event-hashes.ts";
import type { FederationHttpClient, FederationResponse } from "../federation/transport/http-client.ts";
import { RoomHistoryClient, RoomHistoryError } from "../federation/transport/room-history.ts";
import { HistoryVisibility } from "../server/rooms/visibility.ts";
import { type Network, startNetwork } from "./federation-harness.ts";
import { type RoomUser, registerRoomUser, roomPath } from "./rooms-helpers.ts";

type Server = Network["servers"][number];
let net: Network;
let hs1: Server;
let hs2: Server;
let alice: RoomUser;
let bob: RoomUser;
const HS2 = "hs2.test";
/** hs2 itself, asking as a server: its users are in its rooms. */
const OWN = { origin: HS2 };

beforeAll(async () => {
  net = await startNetwork(2);
  [hs1, hs2] = net.servers as [Server, Server];
  [alice, bob] = await Promise.all([registerRoomUser(hs2.url, "alice"), registerRoomUser(hs2.url, "bob")]);
});
afterAll(() => net?.destroy());

const text = (body: string) => ({ msgtype: "m.text", body });
const reads = () => hs2.services.serverReads;
const history = () => hs1.services.federation.history;
/** Event IDs of served PDUs (v3+ PDUs carry none: it is their reference hash). */
const idsOf = (version: string, pdus: Record<string, unknown>[]) => pdus.map((p) => computeEventId(version, p));
const bodyOf = (pdu: Record<string, unknown>) => (pdu.content as { body?: string }).body;

async function roomWithMessages(count: number, body: Record<string, unknown> = {}) {
  const roomId = await alice.createRoom(body);
  const messages: string[] = [];
  for (let i = 0; i < count; i++) messages.push(await alice.send(roomId, text(`m${i}`)));
  const version = (await hs2.services.rooms.roomVersion(roomId))!;
  return { roomId, messages, version, all: await hs2.services.timeline.allEventIds(roomId) };
}

async function expectFailure(promise: Promise<unknown>, failure: string, status: number, errcode: string) {
  const err = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(RoomHistoryError);
  expect(err).toMatchObject({ failure, status, errcode });
}

describe("the walks, for a server in the room", () => {
  it("backfills from an event back through its prev_events, most recent first, up to the limit", async () => {
    const { roomId, messages, version, all } = await roomWithMessages(8);
    const res = await reads().backfill(OWN, roomId, [messages[7]!], 5);
    expect(res.origin).toBe(HS2);
    expect(idsOf(version, res.pdus)).toEqual(all.slice(-5).reverse());
    expect(res.pdus.map(bodyOf)).toEqual(["m7", "m6", "m5", "m4", "m3"]);
    // From the middle, and the rest of the room down to its create event.
    const rest = await reads().backfill(OWN, roomId, [messages[2]!], 100);
    const upToM2 = all.slice(0, all.indexOf(messages[2]!) + 1).reverse();
    expect(idsOf(version, rest.pdus)).toEqual(upToM2);
    expect(rest.pdus.at(-1)!.type).toBe("m.room.create");
    // Each event's prev_events come after it.
    for (let i = 0; i + 1 < rest.pdus.length; i++) expect(rest.pdus[i]!.prev_events).toEqual([upToM2[i + 1]]);
  });

  it("caps backfill at 100 events, ignores v events it does not hold and answers none for limit 0", async () => {
    const { roomId, messages, version, all } = await roomWithMessages(110);
    const res = await reads().backfill(OWN, roomId, [messages.at(-1)!, "$unknown", messages[0]!], 1000);
    expect(res.pdus).toHaveLength(100);
    expect(idsOf(version, res.pdus)).toEqual(all.slice(-100).reverse());
    expect((await reads().backfill(OWN, roomId, [messages.at(-1)!], 0)).pdus).toEqual([]);
    expect((await reads().backfill(OWN, roomId, ["$nothing-here"], 10)).pdus).toEqual([]);
    await expect(reads().backfill(OWN, roomId, [messages[0]!], -1)).rejects.toMatchObject({ status: 400 });
  }, 60_000);

  it("backfills from several events at once without repeating one", async () => {
    const { roomId, messages, version, all } = await roomWithMessages(6);
    const res = await reads().backfill(OWN, roomId, [messages[3]!, messages[5]!, messages[5]!], 4);
    expect(idsOf(version, res.pdus)).toEqual(all.slice(-4).reverse());
    // Events of another room are not a starting point.
    const other = await roomWithMessages(1);
    expect((await reads().backfill(OWN, roomId, [other.messages[0]!], 5)).pdus).toEqual([]);
  });

  it("walks get_missing_events back from the latest events to the earliest, oldest first", async () => {
    const { roomId, messages, version } = await roomWithMessages(24);
    const between = await reads().missingEvents(OWN, roomId, { earliestEvents: [messages[3]!], latestEvents: [messages[9]!] });
    expect(idsOf(version, between.events)).toEqual(messages.slice(4, 9));
    // The default limit is 10, the most 20; the latest events themselves are not included.
    const deflt = await reads().missingEvents(OWN, roomId, { earliestEvents: [], latestEvents: [messages[23]!] });
    expect(idsOf(version, deflt.events)).toEqual(messages.slice(13, 23));
    const capped = await reads().missingEvents(OWN, roomId, { earliestEvents: [], latestEvents: [messages[23]!], limit: 50 });
    expect(idsOf(version, capped.events)).toEqual(messages.slice(3, 23));
    const three = await reads().missingEvents(OWN, roomId, { earliestEvents: [], latestEvents: [messages[23]!], limit: 3 });
    expect(idsOf(version, three.events)).toEqual(messages.slice(20, 23));
    // Several latest events: the walk goes on from each, never past an earliest one.
    const both = await reads().missingEvents(OWN, roomId, { earliestEvents: [messages[0]!], latestEvents: [messages[2]!, messages[5]!], limit: 20 });
    expect(idsOf(version, both.events)).toEqual([messages[1], messages[3], messages[4]]);
  });

  it("stops get_missing_events at min_depth", async () => {
    const { roomId, messages } = await roomWithMessages(6);
    const depths = (await hs2.services.eventStore.getEvents(messages)) as Map<string, { depth: number }>;
    const minDepth = depths.get(messages[2]!)!.depth;
    const res = await reads().missingEvents(OWN, roomId, { earliestEvents: [], latestEvents: [messages[5]!], limit: 20, minDepth });
    expect(res.events.map(bodyOf)).toEqual(["m2", "m3", "m4"]);
    expect(res.events.every((e) => (e.depth as number) >= minDepth)).toBe(true);
  });

  it("answers the state before an event, not after it, with the auth chain of that state", async () => {
    const roomId = await alice.createRoom({ name: "Before" });
    const version = (await hs2.services.rooms.roomVersion(roomId))!;
    const renamed = await alice.setState(roomId, "m.room.name", { name: "After" });
    expect(renamed.status).toBe(200);
    const renameId = renamed.json.event_id as string;
    const state = await reads().state(OWN, roomId, renameId);
    const names = state.pdus.filter((p) => p.type === "m.room.name").map((p) => (p.content as { name: string }).name);
    expect(names).toEqual(["Before"]);
    const types = state.pdus.map((p) => p.type);
    for (const t of ["m.room.create", "m.room.member", "m.room.power_levels", "m.room.join_rules"]) expect(types).toContain(t);
    // The IDs form names the same events.
    const ids = await reads().stateIds(OWN, roomId, renameId);
    expect(new Set(ids.pdu_ids)).toEqual(new Set(idsOf(version, state.pdus)));
    expect(new Set(ids.auth_chain_ids)).toEqual(new Set(idsOf(version, state.auth_chain)));
    // The auth chain is closed: every auth event of a state event or of a chain event is in it.
    const chain = new Set(ids.auth_chain_ids);
    for (const pdu of [...state.pdus, ...state.auth_chain]) for (const a of pdu.auth_events as string[]) expect(chain.has(a)).toBe(true);
    // v12: the create event is in no auth_events but in the chain.
    expect(version).toBe("12");
    expect(chain.has(`$${roomId.slice(1)}`)).toBe(true);
    // The state before the rename's successor has the new name.
    const after = await alice.send(roomId, text("later"));
    const later = await reads().state(OWN, roomId, after);
    expect(later.pdus.filter((p) => p.type === "m.room.name").map((p) => (p.content as { name: string }).name)).toEqual(["After"]);
    // Before the create event there is nothing.
    expect(await reads().stateIds(OWN, roomId, `$${roomId.slice(1)}`)).toEqual({ pdu_ids: [], auth_chain_ids: [] });
  });

  it("answers an event's auth chain without the event, down to the create event", async () => {
    const { roomId, messages, version } = await roomWithMessages(1);
    const message = (await hs2.services.eventStore.getEvent(messages[0]!))!;
    const res = await reads().eventAuth(OWN, roomId, messages[0]!);
    const ids = idsOf(version, res.auth_chain);
    expect(ids).not.toContain(messages[0]);
    for (const a of message.pdu.auth_events as string[]) expect(ids).toContain(a);
    expect(ids[0]).toBe(`$${roomId.slice(1)}`);
    expect(res.auth_chain.map((p) => p.type).sort()).toEqual(["m.room.create", "m.room.member", "m.room.power_levels"]);
  });

  it("answers auth chains of rooms before v12, whose events name the create event themselves", async () => {
    const { roomId, messages, version } = await roomWithMessages(1, { room_version: "10" });
    expect(version).toBe("10");
    const res = await reads().eventAuth(OWN, roomId, messages[0]!);
    expect(res.auth_chain.map((p) => p.type).sort()).toEqual(["m.room.create", "m.room.member", "m.room.power_levels"]);
    const ids = await reads().stateIds(OWN, roomId, messages[0]!);
    const chain = new Set(ids.auth_chain_ids);
    const state = await reads().state(OWN, roomId, messages[0]!);
    for (const pdu of state.pdus) for (const a of pdu.auth_events as string[]) expect(chain.has(a)).toBe(true);
  });

  it("answers 404 for an unknown room, an unknown event and an event of another room", async () => {
    const { roomId } = await roomWithMessages(0);
    const other = await roomWithMessages(1);
    await expect(reads().stateIds(OWN, "!nowhere:hs2.test", other.messages[0]!)).rejects.toMatchObject({ status: 404, errcode: "M_NOT_FOUND" });
    await expect(reads().stateIds(OWN, roomId, "$unknown")).rejects.toMatchObject({ status: 404, errcode: "M_NOT_FOUND" });
    await expect(reads().state(OWN, roomId, other.messages[0]!)).rejects.toMatchObject({ status: 404, errcode: "M_NOT_FOUND" });
    await expect(reads().eventAuth(OWN, roomId, other.messages[0]!)).rejects.toMatchObject({ status: 404 });
    await expect(reads().event(OWN, "$unknown")).rejects.toMatchObject({ status: 404, errcode: "M_NOT_FOUND" });
  });

  it("finds the event nearest a time in either direction", async () => {
    const { roomId, messages } = await roomWithMessages(3);
    const events = await hs2.services.eventStore.getEvents(messages);
    const ts = events.get(messages[1]!)!.originServerTs;
    const forwards = await reads().timestampToEvent(OWN, roomId, ts, "f");
    expect(forwards.origin_server_ts).toBeGreaterThanOrEqual(ts);
    const backwards = await reads().timestampToEvent(OWN, roomId, ts, "b");
    expect(backwards.origin_server_ts).toBeLessThanOrEqual(ts);
    const latest = await reads().timestampToEvent(OWN, roomId, Date.now() + 60_000, "b");
    expect(latest.event_id).toBe(messages[2]);
    await expect(reads().timestampToEvent(OWN, roomId, Date.now() + 60_000, "f")).rejects.toMatchObject({ status: 404, errcode: "M_NOT_FOUND" });
  });
});

describe("what a server no longer in the room sees", () => {
  it("sees what its users could see before they left, and may not walk the room", async () => {
    const { roomId, messages, version } = await roomWithMessages(2, { preset: "private_chat" });
    const left = await alice.call("POST", roomPath(roomId, "/leave"), {});
    expect(left.status).toBe(200);
    // hs2 has no member in the room now; `shared` history sent while its user was there stays visible.
    const res = await reads().event(OWN, messages[0]!);
    expect(bodyOf(res.pdus[0]!)).toBe("m0");
    expect(idsOf(version, res.pdus)).toEqual([messages[0]]);
    await expect(reads().backfill(OWN, roomId, [messages[1]!], 10)).rejects.toMatchObject({ status: 403, errcode: "M_FORBIDDEN" });
    await expect(reads().stateIds(OWN, roomId, messages[1]!)).rejects.toMatchObject({ status: 403, errcode: "M_FORBIDDEN" });
    // A server that never had a member sees none of it.
    await expect(reads().event({ origin: "hs1.test" }, messages[0]!)).rejects.toMatchObject({ status: 403, errcode: "M_FORBIDDEN" });
  });
});

describe("history visibility for servers", () => {
  it("lets a server with no member at an event see it only when the history visibility allows", async () => {
    const visibility = new HistoryVisibility(hs2.services.db);
    const shared = await roomWithMessages(1, { preset: "private_chat" });
    const joined = await roomWithMessages(0, { preset: "private_chat" });
    expect((await alice.setState(joined.roomId, "m.room.history_visibility", { history_visibility: "joined" })).status).toBe(200);
    const secret = await alice.send(joined.roomId, text("joined only"));
    const events = await hs2.services.eventStore.getEvents([shared.messages[0]!, secret]);
    const inRoom = { serverName: "hs9.test", joinedUntil: Number.POSITIVE_INFINITY };
    const seen = await visibility.visibleToServer(inRoom, [...events.values()]);
    // `shared`: a server in the room now sees what was sent before its users came.
    expect(seen.has(shared.messages[0]!)).toBe(true);
    // `joined`: only what was sent while one of its users was joined.
    expect(seen.has(secret)).toBe(false);
    // The server of the members sees both.
    const own = await visibility.visibleToServer({ serverName: HS2, joinedUntil: Number.POSITIVE_INFINITY }, [...events.values()]);
    expect(own.size).toBe(2);
    // A server that never joined sees neither.
    const never = await visibility.visibleToServer({ serverName: "hs9.test", joinedUntil: 0 }, [...events.values()]);
    expect(never.size).toBe(0);
  });

});

describe("over HTTP, to a server in the room", () => {
  let carl: RoomUser; // hs1
  beforeAll(async () => {
    carl = await registerRoomUser(hs1.url, "carl");
  });

  async function joinFromHs1(roomId: string) {
    const res = await carl.call("POST", `/_matrix/client/v3/join/${encodeURIComponent(roomId)}?via=${HS2}`, {});
    expect(res.status, JSON.stringify(res.json)).toBe(200);
    return (await hs2.services.rooms.currentStateEventId(roomId, "m.room.member", carl.userId))!;
  }

  it("serves the state, the state IDs, auth chains and missing events once one of its users joined", async () => {
    const { roomId, messages, version } = await roomWithMessages(3, { preset: "public_chat" });
    const stranger = history().stateIds(HS2, roomId, messages[2]!);
    await expectFailure(stranger, "forbidden", 403, "M_FORBIDDEN");
    await joinFromHs1(roomId);
    const after = await alice.send(roomId, text("after the join"));
    const ids = await history().stateIds(HS2, roomId, after);
    const local = await reads().stateIds(OWN, roomId, after);
    expect(ids).toEqual({ pduIds: local.pdu_ids, authChainIds: local.auth_chain_ids });
    const state = await history().state(HS2, roomId, after);
    expect(idsOf(version, state.pdus)).toEqual(ids.pduIds);
    expect(idsOf(version, state.authChain)).toEqual(ids.authChainIds);
    expect(state.pdus.find((p) => p.type === "m.room.member" && p.state_key === carl.userId)?.content).toMatchObject({ membership: "join" });
    const chain = await history().eventAuth(HS2, roomId, after);
    expect(idsOf(version, chain)).toEqual(idsOf(version, (await reads().eventAuth(OWN, roomId, after)).auth_chain));
    const missing = await history().getMissingEvents(HS2, roomId, { earliest: [messages[0]!], latest: [messages[2]!] });
    expect(idsOf(version, missing)).toEqual([messages[1]]);
  });

  it("backfills a `shared` room whole, history from before its users came included", async () => {
    const { roomId, messages } = await roomWithMessages(3, { preset: "public_chat" });
    await joinFromHs1(roomId);
    const latest = await alice.send(roomId, text("welcome"));
    const back = await history().backfill(HS2, roomId, [latest], 100);
    expect(back.map(bodyOf).filter((b) => b !== undefined)).toEqual(["welcome", "m2", "m1", "m0"]);
    expect(bodyOf(await history().getEvent(HS2, messages[0]!))).toBe("m0");
  });

  it("serves redacted what a server in the room may not see (a `joined` room, from before its user joined)", async () => {
    const { roomId, messages, version } = await roomWithMessages(2, {
      preset: "public_chat",
      initial_state: [{ type: "m.room.history_visibility", state_key: "", content: { history_visibility: "joined" } }],
    });
    const join = await joinFromHs1(roomId);
    const latest = await alice.send(roomId, text("seen"));
    const back = await history().backfill(HS2, roomId, [latest], 100);
    const ids = idsOf(version, back);
    // The whole graph, every event with its own ID (redaction keeps what the hashes cover)...
    expect(ids.slice(0, 2)).toEqual([latest, join]);
    expect(ids).toEqual(expect.arrayContaining(messages));
    // ...the content only of what its users could see.
    expect(bodyOf(back[0]!)).toBe("seen");
    expect(back[1]!.content).toMatchObject({ membership: "join" });
    for (const m of messages) expect(back[ids.indexOf(m)]!.content).toEqual({});
    const single = await history().getEvent(HS2, messages[0]!);
    expect(single.content).toEqual({});
    expect(computeEventId(version, single)).toBe(messages[0]);
    // Missing events are served the same way.
    const missing = await history().getMissingEvents(HS2, roomId, { earliest: [], latest: [messages[1]!], limit: 1 });
    expect(idsOf(version, missing)).toEqual([messages[0]]);
    expect(missing[0]!.content).toEqual({});
  });

  it("with only an invited user, sees an `invited` room's events from the invite on, and may not walk it", async () => {
    const { roomId, messages } = await roomWithMessages(1, {
      preset: "private_chat",
      initial_state: [{ type: "m.room.history_visibility", state_key: "", content: { history_visibility: "invited" } }],
    });
    const invited = await alice.call("POST", roomPath(roomId, "/invite"), { user_id: carl.userId });
    expect(invited.status, JSON.stringify(invited.json)).toBe(200);
    const after = await alice.send(roomId, text("for the invited"));
    expect(bodyOf(await history().getEvent(HS2, after))).toBe("for the invited");
    await expectFailure(history().getEvent(HS2, messages[0]!), "forbidden", 403, "M_FORBIDDEN");
    await expectFailure(history().backfill(HS2, roomId, [after], 10), "forbidden", 403, "M_FORBIDDEN");
  });

  it("once its last user is kicked, sees what it saw before and nothing after, and may not walk the room", async () => {
    const { roomId, messages } = await roomWithMessages(1, { preset: "public_chat" });
    await joinFromHs1(roomId);
    const during = await alice.send(roomId, text("while carl is here"));
    const kicked = await alice.call("POST", roomPath(roomId, "/kick"), { user_id: carl.userId });
    expect(kicked.status, JSON.stringify(kicked.json)).toBe(200);
    const later = await alice.send(roomId, text("after carl left"));
    expect(bodyOf(await history().getEvent(HS2, messages[0]!))).toBe("m0");
    expect(bodyOf(await history().getEvent(HS2, during))).toBe("while carl is here");
    await expectFailure(history().getEvent(HS2, later), "forbidden", 403, "M_FORBIDDEN");
    await expectFailure(history().backfill(HS2, roomId, [later], 10), "forbidden", 403, "M_FORBIDDEN");
    await expectFailure(history().stateIds(HS2, roomId, later), "forbidden", 403, "M_FORBIDDEN");
  });
});

describe("over HTTP, to a server that is not in the room", () => {
  it("refuses state, auth chains, missing events and backfill of a room that is not world_readable with 403", async () => {
    const { roomId, messages } = await roomWithMessages(2, { preset: "private_chat" });
    const m = messages[1]!;
    await expectFailure(history().stateIds(HS2, roomId, m), "forbidden", 403, "M_FORBIDDEN");
    await expectFailure(history().state(HS2, roomId, m), "forbidden", 403, "M_FORBIDDEN");
    await expectFailure(history().eventAuth(HS2, roomId, m), "forbidden", 403, "M_FORBIDDEN");
    await expectFailure(history().getMissingEvents(HS2, roomId, { earliest: [], latest: [m] }), "forbidden", 403, "M_FORBIDDEN");
    await expectFailure(history().backfill(HS2, roomId, [m], 10), "forbidden", 403, "M_FORBIDDEN");
    await expectFailure(history().timestampToEvent(HS2, roomId, Date.now(), "b"), "forbidden", 403, "M_FORBIDDEN");
    await expectFailure(history().getEvent(HS2, m), "forbidden", 403, "M_FORBIDDEN");
  });

  it("answers 404 for rooms and events it does not know", async () => {
    await expectFailure(history().getEvent(HS2, "$nothing"), "not-found", 404, "M_NOT_FOUND");
    await expectFailure(history().stateIds(HS2, "!nowhere:hs2.test", "$nothing"), "not-found", 404, "M_NOT_FOUND");
    await expectFailure(history().backfill(HS2, "!nowhere:hs2.test", ["$nothing"], 5), "not-found", 404, "M_NOT_FOUND");
  });

  it("serves a world_readable room's events, its history and the event nearest a time", async () => {
    const { roomId, messages, version, all } = await roomWithMessages(4, {
      preset: "public_chat",
      initial_state: [{ type: "m.room.history_visibility", state_key: "", content: { history_visibility: "world_readable" } }],
    });
    const pdu = await history().getEvent(HS2, messages[1]!);
    expect(computeEventId(version, pdu)).toBe(messages[1]);
    expect(bodyOf(pdu)).toBe("m1");
    const back = await history().backfill(HS2, roomId, [messages[3]!], 3);
    expect(idsOf(version, back)).toEqual(all.slice(-3).reverse());
    const nearest = await history().timestampToEvent(HS2, roomId, Date.now() + 60_000, "b");
    expect(nearest.eventId).toBe(messages[3]);
    // Still no state without a member in the room.
    await expectFailure(history().stateIds(HS2, roomId, messages[3]!), "forbidden", 403, "M_FORBIDDEN");
  });

  it("leaves out what was sent before the room became world_readable, and serves redacted events redacted", async () => {
    const { roomId, messages, version } = await roomWithMessages(2, { preset: "public_chat" });
    const opened = await alice.setState(roomId, "m.room.history_visibility", { history_visibility: "world_readable" });
    expect(opened.status).toBe(200);
    const after = [await alice.send(roomId, text("open 1")), await alice.send(roomId, text("open 2"))];
    const back = await history().backfill(HS2, roomId, [after[1]!], 50);
    const ids = idsOf(version, back);
    expect(ids.slice(0, 3)).toEqual([after[1], after[0], opened.json.event_id]);
    for (const m of messages) expect(ids).not.toContain(m);
    await expectFailure(history().getEvent(HS2, messages[0]!), "forbidden", 403, "M_FORBIDDEN");
    // Nor does the event nearest a time name one of them.
    const ts = (await hs2.services.eventStore.getEvent(messages[1]!))!.originServerTs;
    expect((await reads().timestampToEvent(OWN, roomId, ts, "b")).event_id).toBe(messages[1]);
    await expectFailure(history().timestampToEvent(HS2, roomId, ts, "b"), "not-found", 404, "M_NOT_FOUND");
    expect((await history().timestampToEvent(HS2, roomId, ts, "f")).eventId).toBe(opened.json.event_id);

    const redacted = await alice.call("PUT", roomPath(roomId, `/redact/${encodeURIComponent(after[0]!)}/r1`), { reason: "oops" });
    expect(redacted.status).toBe(200);
    const pdu = await history().getEvent(HS2, after[0]!);
    expect(pdu.content).toEqual({});
    // Redacted, it still has the same event ID: the hashes and signatures stay.
    expect(computeEventId(version, pdu)).toBe(after[0]);
  });

  it("refuses a server the room's server ACL denies, even where the room is world_readable", async () => {
    const { roomId, messages } = await roomWithMessages(2, {
      preset: "public_chat",
      initial_state: [{ type: "m.room.history_visibility", state_key: "", content: { history_visibility: "world_readable" } }],
    });
    expect((await history().backfill(HS2, roomId, [messages[1]!], 2)).length).toBe(2);
    const acl = await alice.setState(roomId, "m.room.server_acl", { allow: ["*"], deny: ["hs1.test"], allow_ip_literals: false });
    expect(acl.status).toBe(200);
    await expectFailure(history().backfill(HS2, roomId, [messages[1]!], 2), "forbidden", 403, "M_FORBIDDEN");
    await expectFailure(history().timestampToEvent(HS2, roomId, Date.now(), "b"), "forbidden", 403, "M_FORBIDDEN");
    await expectFailure(history().getEvent(HS2, messages[1]!), "forbidden", 403, "M_FORBIDDEN");
  });

  it("answers 400 to malformed requests", async () => {
    const { roomId, messages } = await roomWithMessages(1);
    const room = encodeURIComponent(roomId);
    const ask = (method: "GET" | "POST", path: string, body?: unknown) =>
      hs1.services.federation.http.request(HS2, { method, path, ...(body === undefined ? {} : { body }) });
    expect((await ask("POST", `/_matrix/federation/v1/get_missing_events/${room}`, { earliest_events: [], latest_events: "x" })).status).toBe(400);
    // A missing latest_events reads as none, as Synapse reads it: a well-formed request, refused
    // here only because the asking server is not in the room.
    const noLatest = await ask("POST", `/_matrix/federation/v1/get_missing_events/${room}`, { earliest_events: [messages[0]] });
    expect(noLatest.status).toBe(403);
    expect((await ask("GET", `/_matrix/federation/v1/backfill/${room}?v=${encodeURIComponent(messages[0]!)}`)).status).toBe(400);
    expect((await ask("GET", `/_matrix/federation/v1/state_ids/${room}`)).status).toBe(400);
    expect((await ask("GET", `/_matrix/federation/v1/timestamp_to_event/${room}?ts=1&dir=x`)).status).toBe(400);
  });

  it("requires a signed request", async () => {
    const { roomId, messages } = await roomWithMessages(1);
    const res = await fetch(`${hs2.url}/_matrix/federation/v1/state_ids/${encodeURIComponent(roomId)}?event_id=${encodeURIComponent(messages[0]!)}`);
    expect(res.status).toBe(401);
    void bob;
  });
});

describe("RoomHistoryClient reads answers defensively", () => {
  const answering = (status: number, body: unknown) =>
    new RoomHistoryClient({ request: async (): Promise<FederationResponse> => ({ status, headers: {}, body }) } as unknown as FederationHttpClient);
  const pdu = (i: number) => ({ type: "m.room.message", content: { body: `p${i}` } });

  it("drops entries that cannot be PDUs and cuts lists to what was asked", async () => {
    const big = { type: "m.room.message", content: { body: "x".repeat(200_000) } };
    const client = answering(200, { origin: "x", origin_server_ts: 1, pdus: [pdu(1), "nope", [1], null, big, pdu(2), pdu(3)] });
    expect(await client.backfill("x", "!r:x", ["$a"], 2)).toEqual([pdu(1), pdu(2)]);
    const missing = answering(200, { events: Array.from({ length: 30 }, (_, i) => pdu(i)) });
    expect(await missing.getMissingEvents("x", "!r:x", { earliest: [], latest: ["$a"], limit: 50 })).toHaveLength(20);
  });

  it("refuses malformed answers and names the peer's errors", async () => {
    await expect(answering(200, { pdus: "no" }).getEvent("x", "$a")).rejects.toMatchObject({ failure: "bad-response" });
    await expect(answering(200, { origin: "x", pdus: [] }).getEvent("x", "$a")).rejects.toMatchObject({ failure: "bad-response" });
    await expect(answering(200, { pdu_ids: ["not-an-id"], auth_chain_ids: [] }).stateIds("x", "!r:x", "$a")).rejects.toMatchObject({
      failure: "bad-response",
    });
    await expect(answering(200, { event_id: "$e", origin_server_ts: "soon" }).timestampToEvent("x", "!r:x", 1, "f")).rejects.toMatchObject({
      failure: "bad-response",
    });
    await expect(answering(500, { errcode: "M_UNKNOWN", error: "boom" }).eventAuth("x", "!r:x", "$a")).rejects.toMatchObject({
      failure: "refused",
      status: 500,
      errcode: "M_UNKNOWN",
    });
    expect(await answering(200, { pdu_ids: ["$a", "$a"], auth_chain_ids: ["$b"] }).stateIds("x", "!r:x", "$e")).toEqual({
      pduIds: ["$a"],
      authChainIds: ["$b"],
    });
  });
});

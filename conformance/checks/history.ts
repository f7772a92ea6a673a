// History over federation: backfill, get_missing_events, state_ids, event_auth, and history
// visibility on what a server in the room is served. Answers must match the spec's schemas and
// the target's own history (the event IDs its users got when sending).
// https://spec.matrix.org/latest/server-server-api/#backfilling-and-retrieving-missing-events
// https://spec.matrix.org/latest/server-server-api/#retrieving-events
// https://spec.matrix.org/latest/server-server-api/#retrieving-event-authorisation-information
// https://spec.matrix.org/latest/client-server-api/#history-visibility (servers apply it to servers too)
import { randomBytes } from "node:crypto";
import { referencedIds } from "../../federation/protocol/pdu.ts";
import { type Check, type CheckContext, expect, expectStatus, fail, show } from "../check.ts";
import { fetchPdu, idOfServedPdu, roomWithPeerUsers, sendMessages } from "../rooms.ts";

const enc = encodeURIComponent;

/** Fails unless `actual` holds exactly the IDs of `expected` (order aside), naming what differs. */
function expectSameIds(actual: readonly string[], expected: readonly string[], what: string): void {
  const want = new Set(expected);
  const got = new Set(actual);
  const missing = [...want].filter((id) => !got.has(id));
  const extra = [...got].filter((id) => !want.has(id));
  if (missing.length || extra.length || actual.length !== got.size) {
    fail(`${what}: missing ${show(missing)}, unexpected ${show(extra)}${actual.length !== got.size ? ", with repeats" : ""}`);
  }
}

/** A federation transaction's envelope (`origin`, `origin_server_ts`, `pdus`), as /backfill answers it. */
function expectTransaction(ctx: CheckContext, json: any, what: string): unknown[] {
  expect(typeof json === "object" && json !== null, `${what}: the answer is not a JSON object`);
  if (json.origin !== ctx.target.serverName) fail(`${what}: origin is ${show(json.origin)}, not ${ctx.target.serverName}`);
  expect(Number.isSafeInteger(json.origin_server_ts), `${what}: origin_server_ts is not an integer: ${show(json.origin_server_ts)}`);
  expect(Array.isArray(json.pdus), `${what}: pdus is not an array: ${show(json.pdus)}`);
  return json.pdus as unknown[];
}

const backfill: Check = {
  id: "backfill.history",
  group: "backfill",
  title: "GET /backfill answers a transaction of the `v` event and those before it, as many as `limit`, as the target holds them",
  async run(ctx) {
    const { alice, roomId, room } = await roomWithPeerUsers(ctx, ["bf"]);
    const sent = await sendMessages(alice, roomId, 5, "backfill");
    const res = await ctx.peer.request(ctx.target, {
      method: "GET",
      path: `/_matrix/federation/v1/backfill/${enc(roomId)}?v=${enc(sent[4]!)}&limit=3`,
    });
    expectStatus(res, 200, "GET /backfill");
    const pdus = expectTransaction(ctx, res.json, "GET /backfill");
    const ids = pdus.map((p, i) => idOfServedPdu(room.version, p, `backfill pdus[${i}]`));
    // The event IDs are hashes of the events: the same IDs are the same events the target's user sent.
    expectSameIds(ids, [sent[4]!, sent[3]!, sent[2]!], "GET /backfill?v=<5th message>&limit=3");
  },
};

const missingEvents: Check = {
  id: "get_missing_events.walk",
  group: "get_missing_events",
  title: "POST /get_missing_events answers the events between earliest and latest, not the ends, within limit, nearest to latest first",
  async run(ctx) {
    const { alice, roomId, room } = await roomWithPeerUsers(ctx, ["gme"]);
    const sent = await sendMessages(alice, roomId, 6, "missing");
    const ask = async (limit: number) => {
      const res = await ctx.peer.request(ctx.target, {
        method: "POST",
        path: `/_matrix/federation/v1/get_missing_events/${enc(roomId)}`,
        body: { earliest_events: [sent[0]], latest_events: [sent[5]], limit, min_depth: 0 },
      });
      expectStatus(res, 200, `POST /get_missing_events (limit ${limit})`);
      expect(Array.isArray(res.json?.events), `get_missing_events: events is not an array: ${show(res.json)}`);
      return (res.json.events as unknown[]).map((p, i) => idOfServedPdu(room.version, p, `get_missing_events events[${i}]`));
    };
    expectSameIds(await ask(10), sent.slice(1, 5), "get_missing_events from the 6th message down to the 1st (limit 10)");
    // A breadth-first walk from latest_events stops at the limit: the two nearest to it.
    expectSameIds(await ask(2), [sent[4]!, sent[3]!], "get_missing_events from the 6th message down to the 1st (limit 2)");
  },
};

const stateIds: Check = {
  id: "state_ids.at-event",
  group: "state_ids",
  title: "GET /state_ids answers the state before the event asked about, not the current state, and its auth chain",
  async run(ctx) {
    const { alice, roomId, room, peerUsers } = await roomWithPeerUsers(ctx, ["si"]);
    const firstTopic = await alice.setState(roomId, "m.room.topic", "", { topic: "first" });
    const [between] = await sendMessages(alice, roomId, 1, "between the topics");
    const secondTopic = await alice.setState(roomId, "m.room.topic", "", { topic: "second" });
    const [after] = await sendMessages(alice, roomId, 1, "after the topics");
    const ask = async (eventId: string, what: string) => {
      const res = await ctx.peer.request(ctx.target, { method: "GET", path: `/_matrix/federation/v1/state_ids/${enc(roomId)}?event_id=${enc(eventId)}` });
      expectStatus(res, 200, `GET /state_ids at ${what}`);
      const { pdu_ids: pduIds, auth_chain_ids: authIds } = res.json ?? {};
      expect(Array.isArray(pduIds) && pduIds.every((x: unknown) => typeof x === "string"), `state_ids at ${what}: pdu_ids is not a list of strings: ${show(pduIds)}`);
      expect(Array.isArray(authIds) && authIds.every((x: unknown) => typeof x === "string"), `state_ids at ${what}: auth_chain_ids is not a list of strings: ${show(authIds)}`);
      return { pduIds: pduIds as string[], authIds: authIds as string[] };
    };
    const createId = room.stateId("m.room.create");
    const aliceJoin = room.stateId("m.room.member", alice.userId);
    const bobJoin = room.stateId("m.room.member", peerUsers[0]!);
    const atBetween = await ask(between!, "the message between the two topics");
    for (const [id, name] of [[createId, "the create event"], [aliceJoin, "the creator's join"], [bobJoin, "the peer user's join"], [firstTopic, "the first topic"]] as const) {
      if (!id || !atBetween.pduIds.includes(id)) fail(`state_ids at the message between the topics lacks ${name} (${id}): ${show(atBetween.pduIds)}`);
    }
    if (atBetween.pduIds.includes(secondTopic)) fail("state_ids at the message between the two topics holds the second topic, set after it: the current state, not the state at the event");
    if (createId && !atBetween.authIds.includes(createId)) fail(`auth_chain_ids lacks the create event ${createId}`);
    const atAfter = await ask(after!, "the message after the second topic");
    if (!atAfter.pduIds.includes(secondTopic) || atAfter.pduIds.includes(firstTopic)) {
      fail(`state_ids at the message after the second topic should hold the second topic (${secondTopic}) and not the first (${firstTopic}): ${show(atAfter.pduIds)}`);
    }
  },
};

const eventAuth: Check = {
  id: "event_auth.chain",
  group: "event_auth",
  title: "GET /event_auth answers the event's whole auth chain (its auth events, theirs, ...), without the event",
  async run(ctx) {
    const { roomId, room } = await roomWithPeerUsers(ctx, ["ea"]);
    // A second local user whose message's chain goes through join rules and power levels.
    const dave = await ctx.user("dave");
    await dave.join(roomId);
    const [message] = await sendMessages(dave, roomId, 1, "authorised");
    const res = await ctx.peer.request(ctx.target, { method: "GET", path: `/_matrix/federation/v1/event_auth/${enc(roomId)}/${enc(message!)}` });
    expectStatus(res, 200, "GET /event_auth");
    expect(Array.isArray(res.json?.auth_chain), `event_auth: auth_chain is not an array: ${show(res.json)}`);
    const ids = (res.json.auth_chain as unknown[]).map((p, i) => idOfServedPdu(room.version, p, `event_auth auth_chain[${i}]`));
    // The chain as the target's own events state it: their auth_events, followed to the create event.
    const expected = new Set<string>();
    const createId = room.stateId("m.room.create");
    // Room version 12 names no create event in auth_events, but it is in every chain.
    if (createId) expected.add(createId);
    const visited = new Set<string>();
    const queue = [...referencedIds((await fetchPdu(ctx, message!)).auth_events ?? [])];
    while (queue.length > 0) {
      const id = queue.pop()!;
      if (visited.has(id)) continue;
      visited.add(id);
      expected.add(id);
      const pdu = room.events.get(id) ?? (await fetchPdu(ctx, id));
      queue.push(...referencedIds(pdu.auth_events ?? []));
    }
    if (ids.includes(message!)) fail("event_auth's auth_chain holds the event itself");
    expectSameIds(ids, [...expected], "event_auth's auth_chain against the events' own auth_events");
  },
};

/**
 * A room with history_visibility joined where the target's user sent two messages (holding a
 * marker) before the peer's user joined, and one after: the marker, the messages' IDs, the last one's.
 */
async function joinedVisibilityRoom(ctx: CheckContext) {
  const marker = `secret-${randomBytes(6).toString("hex")}`;
  let secrets: string[] = [];
  const { alice, roomId, room } = await roomWithPeerUsers(ctx, ["hv"], {
    create: { initial_state: [{ type: "m.room.history_visibility", state_key: "", content: { history_visibility: "joined" } }] },
    before: async (alice, roomId) => {
      secrets = await sendMessages(alice, roomId, 2, marker);
    },
  });
  const [visible] = await sendMessages(alice, roomId, 1, "visible-after-join");
  return { marker, secrets, visible: visible!, roomId, room };
}

const historyVisibility: Check = {
  id: "history-visibility.backfill-joined",
  group: "history-visibility",
  title: "In a room with history_visibility joined, /backfill and /event never give a newly joined server the content of events from before its join",
  async run(ctx) {
    const { marker, secrets, visible, roomId, room } = await joinedVisibilityRoom(ctx);
    const res = await ctx.peer.request(ctx.target, { method: "GET", path: `/_matrix/federation/v1/backfill/${enc(roomId)}?v=${enc(visible)}&limit=50` });
    expectStatus(res, 200, "GET /backfill");
    const pdus = expectTransaction(ctx, res.json, "GET /backfill");
    const byId = new Map(pdus.map((p, i) => [idOfServedPdu(room.version, p, `backfill pdus[${i}]`), p as any]));
    // Without the event after the join the check would pass on a server that serves nothing.
    const after = byId.get(visible);
    if (after?.content?.body !== "visible-after-join 0") fail(`backfill lacks the message sent after the join, with its content: ${show(after)}`);
    if (JSON.stringify(res.json).includes(marker)) {
      fail("backfill served the content of messages sent before the peer's users joined a room whose history_visibility is joined");
    }
    for (const id of secrets) {
      const one = await ctx.peer.request(ctx.target, { method: "GET", path: `/_matrix/federation/v1/event/${enc(id)}` });
      if (one.status === 200 && one.text.includes(marker)) fail(`GET /event served the content of ${id}, sent before the peer's users joined`);
    }
  },
};

const historyVisibilityMissing: Check = {
  id: "history-visibility.missing-events-joined",
  group: "history-visibility",
  title: "In a room with history_visibility joined, /get_missing_events never gives a newly joined server the content of events from before its join",
  async run(ctx) {
    const { marker, secrets, visible, roomId, room } = await joinedVisibilityRoom(ctx);
    const res = await ctx.peer.request(ctx.target, {
      method: "POST",
      path: `/_matrix/federation/v1/get_missing_events/${enc(roomId)}`,
      body: { earliest_events: [], latest_events: [visible], limit: 20, min_depth: 0 },
    });
    expectStatus(res, 200, "POST /get_missing_events");
    expect(Array.isArray(res.json?.events), `get_missing_events: events is not an array: ${show(res.json)}`);
    const ids = (res.json.events as unknown[]).map((p, i) => idOfServedPdu(room.version, p, `get_missing_events events[${i}]`));
    // A server may leave them out or serve them redacted, but the walk must reach back past them
    // (or the check would pass on a server that walks nowhere): the room's create event is older.
    if (!ids.includes(room.stateId("m.room.create") ?? "")) fail(`get_missing_events from the last message did not reach the create event: ${show(ids)}`);
    if (JSON.stringify(res.json).includes(marker)) {
      fail(`get_missing_events served the content of messages sent before the peer's users joined (${show(secrets)}) a room whose history_visibility is joined`);
    }
  },
};

export const historyChecks: readonly Check[] = [backfill, missingEvents, stateIds, eventAuth, historyVisibility, historyVisibilityMissing];

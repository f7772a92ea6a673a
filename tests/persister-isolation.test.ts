// One job's failure stays that job's (issue 20, finding 3): the persister carries many rooms' queued
// events in one transaction (group commit), and a job that throws — anything, at any stage — must
// fail alone, leave its room's state as if it had never run, and let the rest of the batch commit.
//
// Faults are injected through the test-only StartOptions.persisterFaults: an event whose content
// names a stage (`fault`) throws there. Batching is made deterministic by holding all the
// persister's batch slots with jobs that wait on a gate: the jobs queued meanwhile all go into
// the one batch that starts when the gate opens.
import { randomBytes } from "node:crypto";
import { sql } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { rowsOf } from "../schema/db.ts";
import type { PersistStage } from "../server/rooms/persister.ts";
import type { Requester } from "../server/http/route.ts";
import { startTestServer, type TestServer } from "./harness.ts";
import { type RoomUser, registerRoomUser, roomPath, timeline } from "./rooms-helpers.ts";

const enc = encodeURIComponent;

/** What the injected fault throws: an Error, or (content.nonError) a value that is not one. */
function injected(stage: PersistStage, content: Record<string, unknown>): unknown {
  if (content.nonError === "undefined") return undefined;
  if (content.nonError === "object") return { stage, note: "not an Error" };
  return new TypeError(`injected fault at ${stage}`);
}

describe("a persist job that throws fails alone", () => {
  let hs: TestServer;
  let alice: RoomUser;
  let bob: RoomUser;
  let carol: RoomUser;
  let mallory: RoomUser;
  /** A: alice, bob, mallory. B: alice, bob. C: carol (mallory is in neither). */
  let roomA: string;
  let roomB: string;
  let roomC: string;
  /** Rooms whose jobs hold the persister's batch slots. */
  const holders: string[] = [];

  beforeAll(async () => {
    hs = await startTestServer({
      // Sends over HTTP must reach the persister while a held slot keeps the database busy: their
      // tokens come from the cache, which must not expire on a slow machine between warming and sending.
      tokenCacheMs: 10 * 60_000,
      persisterFaults: (stage, event) => {
        if (event.content.fault === stage) throw injected(stage, event.content);
      },
    });
    [alice, bob, carol, mallory] = await Promise.all([
      registerRoomUser(hs.url, "alice"),
      registerRoomUser(hs.url, "bob"),
      registerRoomUser(hs.url, "carol"),
      registerRoomUser(hs.url, "mallory"),
    ]);
    roomA = await alice.createRoom({ preset: "public_chat", initial_state: [{ type: "m.room.topic", state_key: "", content: { topic: "original" } }] });
    roomB = await alice.createRoom({ preset: "public_chat" });
    roomC = await carol.createRoom({ preset: "public_chat" });
    for (const [user, room] of [[bob, roomA], [mallory, roomA], [bob, roomB]] as const) expect((await user.join(room)).status).toBe(200);
    for (let i = 0; i < 4; i++) holders.push(await alice.createRoom());
  });

  afterAll(async () => {
    await hs?.destroy();
  });

  const requester = (user: RoomUser): Requester => ({ userId: user.userId, deviceId: user.deviceId, isGuest: false, sessionId: "" });
  let txn = 0;

  /**
   * Queues `sends` while every batch slot is held, then lets them all go as one batch; answers each
   * send's outcome.
   */
  async function inOneBatch<T>(sends: Array<() => Promise<T>>): Promise<Array<PromiseSettledResult<T>>> {
    const { persister } = hs.services;
    let open!: () => void;
    const gate = new Promise<void>((resolve) => (open = resolve));
    const held = holders.map((room) => persister.enqueue(room, async () => (await gate, [])));
    const before = persister.queuedJobs;
    const outcomes = Promise.allSettled(sends.map((send) => send()));
    try {
      // Sends through the service queue at once; over HTTP they take a moment to arrive.
      for (const deadline = Date.now() + 5_000; persister.queuedJobs - before < sends.length && Date.now() < deadline; ) {
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
      expect(persister.queuedJobs - before, "jobs queued behind the held slots").toBe(sends.length);
    } finally {
      open();
      await Promise.all(held);
    }
    return outcomes;
  }

  /**
   * HTTP sends reach the persister without touching the database when their access tokens were
   * checked recently (this server trusts a checked token for 10 minutes; on PGlite a held slot's open transaction holds the only connection).
   */
  async function warmTokens(...users: RoomUser[]): Promise<void> {
    for (const user of users) expect((await user.call("GET", "/_matrix/client/v3/account/whoami")).status).toBe(200);
  }

  const message = (user: RoomUser, room: string, body: string, extra: Record<string, unknown> = {}) => () =>
    hs.services.rooms.sendMessage(requester(user), room, "m.room.message", { msgtype: "m.text", body, ...extra }, `iso${txn++}`);
  const topic = (room: string, value: string, extra: Record<string, unknown> = {}) => async () => {
    const [event] = await hs.services.persister.enqueue(room, () => [
      { type: "m.room.topic", state_key: "", sender: alice.userId, content: { topic: value, ...extra } },
    ]);
    return event!.eventId;
  };

  /** The room's events as stored: one chain (each event's only prev_event is the one before it), one depth apart. */
  async function expectOneChain(roomId: string): Promise<void> {
    const rows = rowsOf<{ event_id: string; json: string }>(
      await hs.services.db.execute(sql`select event_id, json from events where room_id = ${roomId} order by stream_ordering`),
    );
    for (let i = 1; i < rows.length; i++) {
      const pdu = JSON.parse(rows[i]!.json);
      const previous = JSON.parse(rows[i - 1]!.json);
      expect(pdu.prev_events, `prev_events of event ${i} of ${roomId}`).toEqual([rows[i - 1]!.event_id]);
      expect(pdu.depth).toBe(previous.depth + 1);
    }
  }

  /** Every stream position up to the current one is taken by exactly one event. */
  async function expectGapFreeStream(): Promise<void> {
    const [row] = rowsOf<{ n: string | number; lo: string | number; hi: string | number }>(
      await hs.services.db.execute(sql`select count(stream_ordering) as n, min(stream_ordering) as lo, max(stream_ordering) as hi from events`),
    );
    expect(Number(row!.hi) - Number(row!.lo) + 1).toBe(Number(row!.n));
    expect(await hs.services.persister.currentStreamPosition()).toBe(Number(row!.hi));
  }

  const bodies = async (user: RoomUser, roomId: string) =>
    (await timeline(user, roomId)).filter((e) => e.type === "m.room.message").map((e) => e.content.body as string);

  const stages: PersistStage[] = ["prepare", "build", "sign", "event-id", "auth", "apply", "rows", "push-actions", "database"];

  it.each(stages)("a job throwing at %s fails alone; the batch's other rooms and its own room's other jobs commit", async (stage) => {
    const tag = `${stage}-${txn}`;
    const [topicBefore, aBefore, bBefore, cBefore] = await Promise.all([
      alice.state(roomA, "m.room.topic"),
      bodies(bob, roomA),
      bodies(bob, roomB),
      bodies(carol, roomC),
    ]);
    const honest = {
      a: [`${tag} a1`, `${tag} a2`, `${tag} a3`, `${tag} a4`],
      b: [`${tag} b1`, `${tag} b2`, `${tag} b3`],
      c: [`${tag} c1`, `${tag} c2`, `${tag} c3`],
    };
    const outcomes = await inOneBatch([
      message(alice, roomA, honest.a[0]!),
      message(bob, roomB, honest.b[0]!),
      message(mallory, roomA, `${tag} bad`, { fault: stage }),
      message(carol, roomC, honest.c[0]!),
      message(bob, roomA, honest.a[1]!),
      // A state event failing after it changed the room's state in memory: the change is undone.
      topic(roomA, `${tag} bad topic`, { fault: stage }),
      message(alice, roomB, honest.b[1]!),
      message(alice, roomA, honest.a[2]!),
      message(carol, roomC, honest.c[1]!),
      message(mallory, roomA, `${tag} bad 2`, { fault: stage, nonError: "object" }),
      message(bob, roomA, honest.a[3]!),
      message(bob, roomB, honest.b[2]!),
      message(carol, roomC, honest.c[2]!),
    ]);
    const bad = new Set([2, 5, 9]);
    outcomes.forEach((o, i) => {
      if (bad.has(i)) {
        expect(o.status, `bad job ${i}`).toBe("rejected");
        // Whatever was thrown, the caller gets an Error (a non-Error value is wrapped).
        expect((o as PromiseRejectedResult).reason).toBeInstanceOf(Error);
      } else {
        expect(o.status, `honest job ${i}: ${String((o as PromiseRejectedResult).reason)}`).toBe("fulfilled");
      }
    });

    // In order, none missing, nothing of the failed jobs.
    expect(await bodies(bob, roomA)).toEqual([...aBefore, ...honest.a]);
    expect(await bodies(alice, roomB)).toEqual([...bBefore, ...honest.b]);
    expect(await bodies(carol, roomC)).toEqual([...cBefore, ...honest.c]);
    expect((await alice.state(roomA, "m.room.topic")).json).toEqual(topicBefore.json);
    for (const room of [roomA, roomB, roomC]) await expectOneChain(room);
    await expectGapFreeStream();

    // The room works on afterwards, on the state it really has.
    expect((await alice.setState(roomA, "m.room.topic", { topic: `${tag} after` })).status).toBe(200);
    expect((await alice.state(roomA, "m.room.topic")).json).toEqual({ topic: `${tag} after` });
    await mallory.send(roomA, { msgtype: "m.text", body: `${tag} mallory again` });
    await expectOneChain(roomA);
  });

  it.each(["build", "apply", "database"] as const)("over HTTP, the request whose event throws at %s gets 500 M_UNKNOWN and the others' sends succeed", async (stage) => {
    const send = (user: RoomUser, room: string, txnId: string, content: Record<string, unknown>) => () =>
      user.call("PUT", roomPath(room, `/send/m.room.message/${txnId}`), { msgtype: "m.text", ...content });
    await warmTokens(bob, mallory, carol);
    const answers = await inOneBatch([
      ...[0, 1, 2].map((i) => send(bob, roomA, `h${stage}${i}`, { body: `${stage} a${i}` })),
      send(mallory, roomA, `bad${stage}`, { body: "bad", fault: stage }),
      ...[3, 4].map((i) => send(bob, roomA, `h${stage}${i}`, { body: `${stage} a${i}` })),
      ...[0, 1, 2].map((i) => send(carol, roomC, `h${stage}${i}`, { body: `${stage} c${i}` })),
    ]);
    answers.forEach((answer, i) => {
      const res = (answer as PromiseFulfilledResult<{ status: number; json: any }>).value;
      if (i === 3) expect([res.status, res.json.errcode]).toEqual([500, "M_UNKNOWN"]);
      else expect(res.status, JSON.stringify(res.json)).toBe(200);
    });
    expect((await bodies(bob, roomA)).slice(-5)).toEqual([0, 1, 2, 3, 4].map((i) => `${stage} a${i}`));
    expect((await bodies(carol, roomC)).slice(-3)).toEqual([0, 1, 2].map((i) => `${stage} c${i}`));
    await expectOneChain(roomA);
    await expectGapFreeStream();
  });

  it("event types named like Object.prototype's keys do not fail anyone else's sends (the finding's own reproduction)", async () => {
    // Before the redaction fix these threw while signing; whatever they get now, the others succeed.
    const hostile = ["constructor", "__proto__", "toString", "hasOwnProperty"];
    await warmTokens(bob, mallory, carol);
    const answers = await inOneBatch([
      ...hostile.map((type, i) => () => mallory.call("PUT", roomPath(roomA, `/send/${enc(type)}/hostile${i}`), { body: type })),
      ...[0, 1, 2].map((i) => () => bob.call("PUT", roomPath(roomA, `/send/m.room.message/types${i}`), { msgtype: "m.text", body: `types a${i}` })),
      ...[0, 1].map((i) => () => carol.call("PUT", roomPath(roomC, `/send/m.room.message/types${i}`), { msgtype: "m.text", body: `types c${i}` })),
    ]);
    for (const answer of answers.slice(hostile.length)) {
      const res = (answer as PromiseFulfilledResult<{ status: number; json: any }>).value;
      expect(res.status, JSON.stringify(res.json)).toBe(200);
    }
    expect((await bodies(bob, roomA)).slice(-3)).toEqual(["types a0", "types a1", "types a2"]);
    await expectOneChain(roomA);
    await expectGapFreeStream();
  });

  it("a job throwing a non-Error value (or undefined) fails alone, and the room's later jobs still run", async () => {
    const { persister } = hs.services;
    const outcomes = await inOneBatch([
      () =>
        persister.enqueue(roomB, () => {
          throw undefined;
        }) as unknown as Promise<string>,
      message(alice, roomB, "after undefined"),
      () =>
        persister.enqueue(roomB, async () => {
          throw "a string";
        }) as unknown as Promise<string>,
      message(mallory, roomA, "bad", { fault: "prepare", nonError: "undefined" }),
      message(bob, roomB, "after a string"),
    ]);
    expect(outcomes.map((o) => o.status)).toEqual(["rejected", "fulfilled", "rejected", "rejected", "fulfilled"]);
    for (const i of [0, 2, 3]) expect((outcomes[i] as PromiseRejectedResult).reason).toBeInstanceOf(Error);
    expect((await bodies(bob, roomB)).slice(-2)).toEqual(["after undefined", "after a string"]);
    // The queue moved on: a send afterwards is answered at once.
    await alice.send(roomB, { msgtype: "m.text", body: "later" });
  });

  it("a listener throwing on one event neither fails the batch's jobs nor keeps the others' long-polls waiting", async () => {
    const since = (await carol.call("GET", "/_matrix/client/v3/sync?timeout=0")).json.next_batch;
    const poll = carol.call("GET", `/_matrix/client/v3/sync?timeout=8000&since=${enc(since)}`);
    await new Promise((resolve) => setTimeout(resolve, 200));
    const started = Date.now();
    const outcomes = await inOneBatch([
      message(mallory, roomA, "announce bad", { fault: "announce" }),
      message(carol, roomC, "announce honest"),
    ]);
    // Both are committed: the failing listener comes after the commit.
    expect(outcomes.map((o) => o.status)).toEqual(["fulfilled", "fulfilled"]);
    const res = await poll;
    expect(Date.now() - started).toBeLessThan(4_000);
    const events = res.json.rooms?.join?.[roomC]?.timeline?.events ?? [];
    expect(events.map((e: any) => e.content.body)).toContain("announce honest");
  });

  it("an event the database cannot store (an over-long relation target) fails alone, not its batch", async () => {
    // A genuine refusal, no fault injected: the relation's target ID is indexed, and PostgreSQL's
    // btree entries hold at most about 2,700 bytes (random text does not compress).
    const target = `$${randomBytes(3_000).toString("base64url")}`;
    const outcomes = await inOneBatch([
      message(alice, roomA, "db 1"),
      message(mallory, roomA, "relates to a long ID", { "m.relates_to": { rel_type: "m.reference", event_id: target } }),
      message(bob, roomA, "db 2"),
      message(carol, roomC, "db 3"),
    ]);
    expect(outcomes.map((o) => o.status)).toEqual(["fulfilled", "rejected", "fulfilled", "fulfilled"]);
    // Refused when it ran alone: the sender's request was too large, not the server's fault.
    expect((outcomes[1] as PromiseRejectedResult).reason).toMatchObject({ status: 413, errcode: "M_TOO_LARGE" });
    expect((await bodies(bob, roomA)).slice(-2)).toEqual(["db 1", "db 2"]);
    expect((await bodies(carol, roomC)).slice(-1)).toEqual(["db 3"]);
    await expectOneChain(roomA);
    await expectGapFreeStream();
  });
});

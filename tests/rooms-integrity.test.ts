// The event graph as stored: every event is a real signed PDU (hash, signature and event ID check
// out with federation/protocol's own functions), and concurrent senders produce one linear,
// gap-free history — in one process, and in two processes sharing one PostgreSQL.
import { sql } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { rowsOf } from "../schema/db.ts";
import { checkContentHash, computeEventId, computeRoomIdFromCreateEvent } from "../federation/protocol/event-hashes.ts";
import { verifyEventSignatures } from "../federation/protocol/event-signing.ts";
import { type Pdu, validatePdu } from "../federation/protocol/pdu.ts";
import { registerUser, type TestUser } from "./accounts-helpers.ts";
import { createTestDatabase, request, startTestServer, type TestServer } from "./harness.ts";

const enc = encodeURIComponent;

async function createRoom(base: string, user: TestUser, body: Record<string, unknown> = {}): Promise<string> {
  const res = await request(base, "POST", "/_matrix/client/v3/createRoom", { token: user.accessToken, body });
  expect(res.status, JSON.stringify(res.json)).toBe(200);
  return res.json.room_id;
}

async function send(base: string, user: TestUser, roomId: string, body: string, txnId: string): Promise<string> {
  const res = await request(base, "PUT", `/_matrix/client/v3/rooms/${enc(roomId)}/send/m.room.message/${txnId}`, {
    token: user.accessToken,
    body: { msgtype: "m.text", body },
  });
  expect(res.status, JSON.stringify(res.json)).toBe(200);
  return res.json.event_id;
}

async function join(base: string, user: TestUser, roomId: string): Promise<void> {
  const res = await request(base, "POST", `/_matrix/client/v3/join/${enc(roomId)}`, { token: user.accessToken, body: {} });
  expect(res.status, JSON.stringify(res.json)).toBe(200);
}

/** Every event of the room through /messages, oldest first, following `end` tokens. */
async function history(base: string, user: TestUser, roomId: string, pageSize = 100): Promise<Array<Record<string, any>>> {
  const events: Array<Record<string, any>> = [];
  let from: string | undefined;
  for (;;) {
    const q = new URLSearchParams({ dir: "b", limit: String(pageSize), ...(from ? { from } : {}) });
    const res = await request(base, "GET", `/_matrix/client/v3/rooms/${enc(roomId)}/messages?${q}`, { token: user.accessToken });
    expect(res.status).toBe(200);
    events.push(...res.json.chunk);
    if (!res.json.end) break;
    from = res.json.end;
  }
  return events.reverse();
}

interface StoredRow {
  event_id: string;
  json: string;
  stream_ordering: string | number;
  room_version: string;
}

async function storedEvents(hs: TestServer, roomId: string): Promise<StoredRow[]> {
  return rowsOf<StoredRow>(
    await hs.services.db.execute(sql`select e.event_id, e.json, e.stream_ordering, r.room_version from events e
      join rooms r on r.room_id = e.room_id where e.room_id = ${roomId} order by e.stream_ordering`),
  );
}

describe("stored events", () => {
  let hs: TestServer;
  let alice: TestUser;
  let bob: TestUser;
  beforeAll(async () => {
    hs = await startTestServer();
    alice = await registerUser(hs.url, "alice");
    bob = await registerUser(hs.url, "bob");
  });
  afterAll(() => hs.destroy());

  for (const version of ["10", "11", "12"]) {
    it(`are signed PDUs whose hash, signature and event ID verify (room version ${version})`, async () => {
      const roomId = await createRoom(hs.url, alice, {
        room_version: version,
        preset: "public_chat",
        name: "Verified",
        topic: "every event checks out",
        invite: [bob.userId],
      });
      await join(hs.url, bob, roomId);
      const message = await send(hs.url, bob, roomId, "hello", `v${version}`);
      await request(hs.url, "PUT", `/_matrix/client/v3/rooms/${enc(roomId)}/redact/${enc(message)}/r${version}`, {
        token: alice.accessToken,
        body: { reason: "test" },
      });

      const rows = await storedEvents(hs, roomId);
      expect(rows.length).toBeGreaterThanOrEqual(10);
      const publicKey = hs.services.signingKey.publicKey;
      const keyId = hs.services.signingKey.keyId;
      for (const row of rows) {
        expect(row.room_version).toBe(version);
        const pdu = JSON.parse(row.json) as Pdu;
        expect(validatePdu(version, pdu)).toMatchObject({ ok: true });
        expect(checkContentHash(pdu), `content hash of ${row.event_id}`).toBe(true);
        const signatures = verifyEventSignatures(version, pdu, (server, key) =>
          server === "test.local" && key === keyId ? publicKey : undefined,
        );
        expect(signatures, `signature of ${row.event_id}`).toEqual({ ok: true });
        expect(computeEventId(version, pdu)).toBe(row.event_id);
        if (pdu.type === "m.room.create" && version === "12") {
          expect(pdu.room_id).toBeUndefined();
          expect(computeRoomIdFromCreateEvent(version, pdu)).toBe(roomId);
        }
      }
      // The stored JSON is the PDU, not the client format.
      const create = JSON.parse(rows[0]!.json) as Pdu;
      expect(create.type).toBe("m.room.create");
      expect(create.event_id).toBeUndefined();
      expect(create.depth).toBe(1);
      expect(create.prev_events).toEqual([]);
    });
  }

  it("chain each event to the previous one, with its auth events chosen per the spec", async () => {
    const roomId = await createRoom(hs.url, alice, { room_version: "12", preset: "public_chat" });
    await join(hs.url, bob, roomId);
    await send(hs.url, bob, roomId, "one", "chain1");
    const rows = await storedEvents(hs, roomId);
    const pdus = rows.map((r) => ({ id: r.event_id, pdu: JSON.parse(r.json) as Pdu }));
    for (let i = 1; i < pdus.length; i++) {
      expect(pdus[i]!.pdu.prev_events).toEqual([pdus[i - 1]!.id]);
      expect(pdus[i]!.pdu.depth).toBe(pdus[i - 1]!.pdu.depth + 1);
      // v12: the create event is never an auth event.
      expect(pdus[i]!.pdu.auth_events).not.toContain(pdus[0]!.id);
    }
    const byType = (type: string, stateKey?: string) =>
      pdus.find((p) => p.pdu.type === type && (stateKey === undefined || p.pdu.state_key === stateKey))!.id;
    const bobJoin = pdus.find((p) => p.pdu.type === "m.room.member" && p.pdu.state_key === bob.userId)!;
    // Bob's join: power levels, join rules (and no member event of his own before it).
    expect(new Set(bobJoin.pdu.auth_events)).toEqual(new Set([byType("m.room.power_levels"), byType("m.room.join_rules")]));
    const message = pdus.at(-1)!;
    expect(new Set(message.pdu.auth_events)).toEqual(new Set([byType("m.room.power_levels"), bobJoin.id]));
  });
});

describe("concurrent senders", () => {
  let hs: TestServer;
  beforeAll(async () => {
    hs = await startTestServer();
  });
  afterAll(() => hs.destroy());

  it("10 senders x 50 messages into one room make a linear, gap-free history with every event once", async () => {
    const owner = await registerUser(hs.url, "owner");
    const senders = await Promise.all(Array.from({ length: 10 }, (_, i) => registerUser(hs.url, `sender${i}`)));
    const roomId = await createRoom(hs.url, owner, { preset: "public_chat" });
    await Promise.all(senders.map((s) => join(hs.url, s, roomId)));

    const sent = new Map<string, string>();
    await Promise.all(
      senders.map(async (s, i) => {
        for (let n = 0; n < 50; n++) sent.set(await send(hs.url, s, roomId, `${i}:${n}`, `c${n}`), `${i}:${n}`);
      }),
    );
    expect(sent.size).toBe(500);

    const events = await history(hs.url, owner, roomId, 73);
    const messages = events.filter((e) => e.type === "m.room.message");
    expect(messages).toHaveLength(500);
    expect(new Set(messages.map((e) => e.event_id)).size).toBe(500);
    for (const e of messages) expect(sent.get(e.event_id)).toBe(e.content.body);
    // Each sender's messages are in the order it sent them.
    for (let i = 0; i < 10; i++) {
      const mine = messages.filter((e) => e.sender === senders[i]!.userId).map((e) => e.content.body);
      expect(mine).toEqual(Array.from({ length: 50 }, (_, n) => `${i}:${n}`));
    }

    // Linear: every event's only prev_event is the one before it; stream positions have no gaps.
    const rows = await storedEvents(hs, roomId);
    expect(rows.map((r) => r.event_id)).toEqual(events.map((e) => e.event_id));
    for (let i = 1; i < rows.length; i++) {
      expect((JSON.parse(rows[i]!.json) as Pdu).prev_events).toEqual([rows[i - 1]!.event_id]);
      expect(Number(rows[i]!.stream_ordering)).toBe(Number(rows[i - 1]!.stream_ordering) + 1);
    }
    expect(await hs.services.persister.currentStreamPosition()).toBeGreaterThanOrEqual(Number(rows.at(-1)!.stream_ordering));
  });

  it("a retried transaction ID returns the first event, even while the first is in flight", async () => {
    const user = await registerUser(hs.url, "retrier");
    const roomId = await createRoom(hs.url, user);
    const ids = await Promise.all(Array.from({ length: 5 }, () => send(hs.url, user, roomId, "once", "same-txn")));
    expect(new Set(ids).size).toBe(1);
    expect(await send(hs.url, user, roomId, "once", "same-txn")).toBe(ids[0]);
    const messages = (await history(hs.url, user, roomId)).filter((e) => e.type === "m.room.message");
    expect(messages.map((e) => e.event_id)).toEqual([ids[0]]);
  });
});

describe("room creation", () => {
  let hs: TestServer;
  beforeAll(async () => {
    // A clock that never moves: identical requests would make identical v12 create events.
    hs = await startTestServer({ now: () => 1_790_000_000_000 });
  });
  afterAll(() => hs.destroy());

  it("gives identical createRoom requests in the same millisecond distinct rooms", async () => {
    const user = await registerUser(hs.url, "twin");
    const ids = await Promise.all(Array.from({ length: 5 }, () => createRoom(hs.url, user, { preset: "private_chat" })));
    expect(new Set(ids).size).toBe(5);
  });
});

describe.runIf(process.env.DATABASE_URL)("two processes on one PostgreSQL", () => {
  let a: TestServer;
  let b: TestServer;
  beforeAll(async () => {
    const database = await createTestDatabase();
    a = await startTestServer({ database });
    b = await startTestServer({ database: { url: database.url, drop: async () => {} } });
  });
  afterAll(async () => {
    await b.destroy();
    await a.destroy();
  });

  it("keep one linear history when both send into the same room", async () => {
    const users = await Promise.all(Array.from({ length: 6 }, (_, i) => registerUser(a.url, `multi${i}`)));
    const roomId = await createRoom(a.url, users[0]!, { preset: "public_chat" });
    await Promise.all(users.slice(1).map((u, i) => join(i % 2 ? a.url : b.url, u, roomId)));
    await Promise.all(
      users.map(async (u, i) => {
        const base = i % 2 ? a.url : b.url;
        for (let n = 0; n < 20; n++) await send(base, u, roomId, `${i}:${n}`, `m${n}`);
      }),
    );
    const rows = await storedEvents(a, roomId);
    const messages = rows.filter((r) => (JSON.parse(r.json) as Pdu).type === "m.room.message");
    expect(messages).toHaveLength(120);
    for (let i = 1; i < rows.length; i++) {
      expect((JSON.parse(rows[i]!.json) as Pdu).prev_events).toEqual([rows[i - 1]!.event_id]);
      expect(Number(rows[i]!.stream_ordering)).toBe(Number(rows[i - 1]!.stream_ordering) + 1);
    }
    // A state change made through one process is seen by the other's next event.
    const topic = await request(b.url, "PUT", `/_matrix/client/v3/rooms/${enc(roomId)}/state/m.room.topic/`, {
      token: users[0]!.accessToken,
      body: { topic: "from b" },
    });
    expect(topic.status).toBe(200);
    const read = await request(a.url, "GET", `/_matrix/client/v3/rooms/${enc(roomId)}/state/m.room.topic/`, { token: users[1]!.accessToken });
    expect(read.json).toEqual({ topic: "from b" });
    const kick = await request(a.url, "POST", `/_matrix/client/v3/rooms/${enc(roomId)}/kick`, {
      token: users[0]!.accessToken,
      body: { user_id: users[1]!.userId },
    });
    expect(kick.status).toBe(200);
    const refused = await request(b.url, "PUT", `/_matrix/client/v3/rooms/${enc(roomId)}/send/m.room.message/after-kick`, {
      token: users[1]!.accessToken,
      body: { msgtype: "m.text", body: "still here?" },
    });
    expect(refused.status).toBe(403);
  });
});

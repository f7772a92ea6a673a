// Server-side search over HTTP: POST /_matrix/client/v3/search (room_events): matching and ranking,
// both orders and their paging, context, groups, filters, history visibility, redactions, rooms the
// user is not in, bad bodies, and the migration's backfill of events stored before the index.
import { readFileSync } from "node:fs";
import { sql } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startTestServer, type TestServer } from "./harness.ts";
import { type RoomUser, registerRoomUser, roomPath } from "./rooms-helpers.ts";

let hs: TestServer;
beforeAll(async () => {
  hs = await startTestServer();
});
afterAll(() => hs.destroy());

let users = 0;
const newUser = (name: string) => registerRoomUser(hs.url, `${name}${++users}`);
const text = (body: string) => ({ msgtype: "m.text", body });

function search(user: RoomUser, criteria: Record<string, unknown>, nextBatch?: string) {
  const path = `/_matrix/client/v3/search${nextBatch !== undefined ? `?next_batch=${encodeURIComponent(nextBatch)}` : ""}`;
  return user.call("POST", path, { search_categories: { room_events: criteria } });
}

async function found(user: RoomUser, criteria: Record<string, unknown>, nextBatch?: string) {
  const res = await search(user, criteria, nextBatch);
  expect(res.status, JSON.stringify(res.json)).toBe(200);
  return res.json.search_categories.room_events;
}

const ids = (roomEvents: any): string[] => roomEvents.results.map((r: any) => r.result.event_id);

/** Every page of a search, following next_batch until it is absent. */
async function allPages(user: RoomUser, criteria: Record<string, unknown>) {
  const pages: any[] = [];
  let next: string | undefined;
  do {
    const page = await found(user, criteria, next);
    pages.push(page);
    next = page.next_batch;
    expect(pages.length).toBeLessThan(50);
  } while (next !== undefined);
  return pages;
}

describe("matching and ranking", () => {
  it("finds messages, names and topics by their words (stemmed), in the client format, best match first", async () => {
    const alice = await newUser("alice");
    const roomId = await alice.createRoom({ name: "Martian embassy", topic: "Talks with the martians" });
    const once = await alice.send(roomId, text("a martian landed"));
    const thrice = await alice.send(roomId, text("Martians! martians everywhere, one martian here"));
    await alice.send(roomId, text("nothing to see"));

    const all = await found(alice, { search_term: "martian" });
    expect(all.count).toBe(4);
    const types = all.results.map((r: any) => r.result.type).sort();
    expect(types).toEqual(["m.room.message", "m.room.message", "m.room.name", "m.room.topic"]);
    // Ranked: the message saying it three times comes before the one saying it once.
    const messageIds = ids(all).filter((id) => id === once || id === thrice);
    expect(messageIds).toEqual([thrice, once]);
    const ranks = all.results.map((r: any) => r.rank);
    expect([...ranks].sort((a, b) => b - a)).toEqual(ranks);
    // The client format, as /messages serves it.
    const result = all.results.find((r: any) => r.result.event_id === once).result;
    expect(result).toMatchObject({ room_id: roomId, sender: alice.userId, content: { body: "a martian landed" } });
    expect(result.unsigned.age).toBeGreaterThanOrEqual(0);
    expect(result.hashes).toBeUndefined();
    expect(result.signatures).toBeUndefined();
    expect(result.auth_events).toBeUndefined();
    // Highlights: the words of the results that matched, as written (stemming made them match).
    expect(all.highlights).toEqual(expect.arrayContaining(["martian", "martians"]));

    // keys narrow the search to some event types.
    const bodies = await found(alice, { search_term: "martian", keys: ["content.body"] });
    expect(ids(bodies).sort()).toEqual([once, thrice].sort());
    const topics = await found(alice, { search_term: "martians", keys: ["content.topic"] });
    expect(topics.results.map((r: any) => r.result.type)).toEqual(["m.room.topic"]);
    // Every word of the term must match; quoted phrases and -exclusions work (websearch syntax).
    expect(ids(await found(alice, { search_term: "martian landed" }))).toEqual([once]);
    expect(ids(await found(alice, { search_term: "martian -landed", keys: ["content.body"] }))).toEqual([thrice]);
    expect(ids(await found(alice, { search_term: '"martians everywhere"' }))).toEqual([thrice]);
    // A term of nothing searchable finds nothing (and is no error).
    expect((await found(alice, { search_term: "  " })).results).toEqual([]);
    expect((await found(alice, { search_term: "the" })).results).toEqual([]);
  });

  it("indexes the text/plain m.topic of a topic event", async () => {
    const alice = await newUser("alice");
    const roomId = await alice.createRoom();
    await alice.setState(roomId, "m.room.topic", {
      topic: "plain",
      "m.topic": { "m.text": [{ mimetype: "text/html", body: "<b>ignored</b>" }, { body: "zeppelin schedules" }] },
    });
    expect((await found(alice, { search_term: "zeppelin" })).results).toHaveLength(1);
    expect((await found(alice, { search_term: "ignored" })).results).toHaveLength(0);
  });

  it("leaves out end-to-end encrypted rooms", async () => {
    const alice = await newUser("alice");
    const roomId = await alice.createRoom({ name: "Secret quokka club" });
    expect((await found(alice, { search_term: "quokka" })).results).toHaveLength(1);
    await alice.setState(roomId, "m.room.encryption", { algorithm: "m.megolm.v1.aes-sha2" });
    expect((await found(alice, { search_term: "quokka" })).results).toHaveLength(0);
  });
});

describe("ordering and paging", () => {
  it("orders by recent and pages with next_batch until exhausted, without duplicates, in both orders", async () => {
    const alice = await newUser("alice");
    const roomA = await alice.createRoom();
    const roomB = await alice.createRoom();
    const sent: string[] = [];
    for (let i = 0; i < 23; i++) {
      // Some say the word twice, so ranks differ and tie.
      sent.push(await alice.send(i % 2 ? roomA : roomB, text(i % 3 ? `walrus number ${i}` : `walrus walrus number ${i}`)));
    }
    const recent = await found(alice, { search_term: "walrus", order_by: "recent" });
    expect(recent.count).toBe(23);
    expect(ids(recent)).toEqual([...sent].reverse().slice(0, 10));

    for (const order of ["recent", "rank"]) {
      const pages = await allPages(alice, { search_term: "walrus", order_by: order, filter: { limit: 4 } });
      const seen = pages.flatMap(ids);
      expect(new Set(seen).size, order).toBe(seen.length);
      expect([...seen].sort(), order).toEqual([...sent].sort());
      for (const page of pages) expect(page.count).toBe(23);
      expect(pages.at(-1).next_batch).toBeUndefined();
      if (order === "recent") expect(seen).toEqual([...sent].reverse());
      if (order === "rank") {
        const ranks = pages.flatMap((p) => p.results.map((r: any) => r.rank));
        expect([...ranks].sort((a, b) => b - a)).toEqual(ranks);
        // The double-walrus messages (every third) rank first.
        const doubles = sent.filter((_, i) => i % 3 === 0);
        expect([...seen.slice(0, doubles.length)].sort()).toEqual([...doubles].sort());
      }
    }
  });

  it("refuses a next_batch that is not one, or is from the other order", async () => {
    const alice = await newUser("alice");
    const roomId = await alice.createRoom();
    for (let i = 0; i < 3; i++) await alice.send(roomId, text(`narwhal ${i}`));
    const page = await found(alice, { search_term: "narwhal", order_by: "recent", filter: { limit: 1 } });
    expect(page.next_batch).toEqual(expect.any(String));
    const other = await search(alice, { search_term: "narwhal", order_by: "rank" }, page.next_batch);
    expect(other.status).toBe(400);
    expect(other.json.errcode).toBe("M_INVALID_PARAM");
    for (const bad of ["garbage", "", "eyJvcmRlciI6InJlY2VudCJ9", Buffer.from("[1,2]").toString("base64url")]) {
      const res = await search(alice, { search_term: "narwhal", order_by: "recent" }, bad);
      expect(res.status, bad).toBe(400);
      expect(res.json.errcode, bad).toBe("M_INVALID_PARAM");
    }
    // Forged tokens: values the database would refuse are refused first (never a 500).
    const forged = (o: unknown) => Buffer.from(JSON.stringify(o)).toString("base64url");
    for (const [order_by, token] of [
      ["rank", { order: "rank", stream: 1, rank: 1e300 }],
      ["rank", { order: "rank", stream: 1, rank: -1e-300 }],
      ["rank", { order: "rank", stream: 1 }],
      ["recent", { order: "recent", stream: 1.5 }],
      ["recent", { order: "recent", stream: 1, count: 1e300 }],
      ["recent", { order: "recent", stream: 1, group: { key: "type", value: "m.room.message" } }],
    ] as const) {
      const res = await search(alice, { search_term: "narwhal", order_by }, forged(token));
      expect(res.status, JSON.stringify(token)).toBe(400);
      expect(res.json.errcode).toBe("M_INVALID_PARAM");
    }
  });
});

describe("event_context, state and groups", () => {
  it("returns the events around each result, the senders' profiles and /messages tokens", async () => {
    const alice = await newUser("alice");
    const roomId = await alice.createRoom();
    await alice.call("PUT", `/_matrix/client/v3/profile/${encodeURIComponent(alice.userId)}/displayname`, { displayname: "Alice A." });
    for (let i = 1; i <= 7; i++) await alice.send(roomId, text(`Message number ${i}`));
    const res = await found(alice, {
      search_term: "Message 4",
      order_by: "recent",
      filter: { limit: 1 },
      event_context: { before_limit: 2, after_limit: 3, include_profile: true },
    });
    expect(res.count).toBe(1);
    const context = res.results[0].context;
    expect(context.events_before.map((e: any) => e.content.body)).toEqual(["Message number 3", "Message number 2"]);
    expect(context.events_after.map((e: any) => e.content.body)).toEqual(["Message number 5", "Message number 6", "Message number 7"]);
    expect(context.profile_info[alice.userId]).toEqual({ displayname: "Alice A." });
    // The tokens are /messages tokens at the ends of the context.
    const earlier = await alice.messages(roomId, { dir: "b", from: context.start, limit: "1" });
    expect(earlier.json.chunk.map((e: any) => e.content.body)).toEqual(["Message number 1"]);
    // Several results, each with its own context.
    const two = await found(alice, { search_term: "number", order_by: "recent", filter: { limit: 2 }, event_context: { before_limit: 1, after_limit: 1 } });
    const contextBodies = (r: any) => [r.context.events_before, r.context.events_after].map((l: any[]) => l.map((e) => e.content.body));
    expect(two.results.map(contextBodies)).toEqual([
      [["Message number 6"], []],
      [["Message number 5"], ["Message number 7"]],
    ]);
    // No context asked, none given.
    const bare = await found(alice, { search_term: "Message 4" });
    expect(bare.results[0].context).toBeUndefined();
  });

  it("includes the current state of the rooms of the results with include_state", async () => {
    const alice = await newUser("alice");
    const roomId = await alice.createRoom({ name: "Pelican room" });
    await alice.createRoom({ name: "Other room" });
    await alice.send(roomId, text("pelican sighting"));
    const res = await found(alice, { search_term: "sighting", include_state: true });
    expect(Object.keys(res.state)).toEqual([roomId]);
    expect(res.state[roomId].find((e: any) => e.type === "m.room.name").content.name).toBe("Pelican room");
    expect((await found(alice, { search_term: "sighting" })).state).toBeUndefined();
  });

  it("groups results by room and by sender, and a group's next_batch pages within the group", async () => {
    const alice = await newUser("alice");
    const bob = await newUser("bob");
    const roomA = await alice.createRoom({ preset: "public_chat" });
    const roomB = await alice.createRoom({ preset: "public_chat" });
    expect((await bob.join(roomA)).status).toBe(200);
    const inA: string[] = [];
    const inB: string[] = [];
    for (let i = 0; i < 4; i++) {
      inA.push(await alice.send(roomA, text(`otter ${i}`)));
      inA.push(await bob.send(roomA, text(`otter from bob ${i}`)));
      inB.push(await alice.send(roomB, text(`otter in b ${i}`)));
    }
    const criteria = { search_term: "otter", order_by: "recent", filter: { limit: 3 }, groupings: { group_by: [{ key: "room_id" }, { key: "sender" }] } };
    const first = await found(alice, criteria);
    const byRoom = first.groups.room_id;
    const returned = ids(first);
    for (const [roomId, group] of Object.entries<any>(byRoom)) {
      expect(group.results).toEqual(returned.filter((id) => (roomId === roomA ? inA : inB).includes(id)));
      expect(group.order).toEqual(expect.any(Number));
    }
    expect(first.groups.sender[bob.userId].results).toEqual(returned.filter((id) => first.results.find((r: any) => r.result.event_id === id).result.sender === bob.userId));
    // Paging within room A's group only.
    let next = byRoom[roomA].next_batch;
    const seenA = byRoom[roomA].results as string[];
    while (next !== undefined) {
      const page = await found(alice, criteria, next);
      for (const r of page.results) expect(r.result.room_id).toBe(roomA);
      seenA.push(...ids(page));
      next = page.next_batch;
    }
    expect(seenA).toEqual([...inA].reverse());
  });
});

describe("filters", () => {
  it("applies rooms, not_rooms, senders, not_senders, types and limit", async () => {
    const alice = await newUser("alice");
    const bob = await newUser("bob");
    const roomA = await alice.createRoom({ preset: "public_chat", name: "badger den" });
    const roomB = await alice.createRoom();
    expect((await bob.join(roomA)).status).toBe(200);
    const a1 = await alice.send(roomA, text("badger one"));
    const b1 = await bob.send(roomA, text("badger two"));
    const a2 = await alice.send(roomB, text("badger three"));
    const sorted = (r: any) => ids(r).sort();
    expect(sorted(await found(alice, { search_term: "badger", keys: ["content.body"], filter: { rooms: [roomA] } }))).toEqual([a1, b1].sort());
    expect(sorted(await found(alice, { search_term: "badger", keys: ["content.body"], filter: { not_rooms: [roomA] } }))).toEqual([a2]);
    expect(sorted(await found(alice, { search_term: "badger", filter: { senders: [bob.userId] } }))).toEqual([b1]);
    expect(sorted(await found(alice, { search_term: "badger", keys: ["content.body"], filter: { not_senders: [bob.userId] } }))).toEqual([a1, a2].sort());
    const names = await found(alice, { search_term: "badger", filter: { types: ["m.room.n*"] } });
    expect(names.results.map((r: any) => r.result.type)).toEqual(["m.room.name"]);
    expect((await found(alice, { search_term: "badger", filter: { not_types: ["m.room.message"] } })).results).toHaveLength(1);
    const limited = await found(alice, { search_term: "badger", filter: { limit: 2 } });
    expect(limited.results).toHaveLength(2);
    expect(limited.count).toBe(4);
    expect(limited.next_batch).toEqual(expect.any(String));
  });
});

describe("who finds what", () => {
  it("does not search rooms the user is not in", async () => {
    const alice = await newUser("alice");
    const eve = await newUser("eve");
    const roomId = await alice.createRoom({ preset: "public_chat" });
    await alice.send(roomId, text("secret albatross plans"));
    expect((await found(eve, { search_term: "albatross" })).results).toEqual([]);
    expect((await found(eve, { search_term: "albatross" })).count).toBe(0);
    // Not even when naming the room in the filter.
    expect((await found(eve, { search_term: "albatross", filter: { rooms: [roomId] } })).results).toEqual([]);
    // World-readable history is readable by anyone, but search covers the rooms the user has been in.
    await alice.setState(roomId, "m.room.history_visibility", { history_visibility: "world_readable" });
    expect((await found(eve, { search_term: "albatross" })).results).toEqual([]);
  });

  it("follows history visibility: a later joiner of a `joined` room does not find what came before", async () => {
    const alice = await newUser("alice");
    const bob = await newUser("bob");
    const roomId = await alice.createRoom({ preset: "public_chat" });
    expect((await alice.setState(roomId, "m.room.history_visibility", { history_visibility: "joined" })).status).toBe(200);
    await alice.send(roomId, text("heron before"));
    expect((await bob.join(roomId)).status).toBe(200);
    const after = await alice.send(roomId, text("heron after"));
    expect(ids(await found(bob, { search_term: "heron" }))).toEqual([after]);
    expect(ids(await found(bob, { search_term: "heron", order_by: "recent" }))).toEqual([after]);
    expect((await found(alice, { search_term: "heron" })).results).toHaveLength(2);
  });

  it("lets a user who left find what they could see, and nothing sent after they left", async () => {
    const alice = await newUser("alice");
    const bob = await newUser("bob");
    const roomId = await alice.createRoom({ preset: "public_chat" });
    expect((await bob.join(roomId)).status).toBe(200);
    const during = await alice.send(roomId, text("puffin while bob is here"));
    expect((await bob.call("POST", roomPath(roomId, "/leave"), {})).status).toBe(200);
    await alice.send(roomId, text("puffin after bob left"));
    expect(ids(await found(bob, { search_term: "puffin" }))).toEqual([during]);
    expect(ids(await found(bob, { search_term: "puffin", order_by: "recent" }))).toEqual([during]);
    // Once forgotten, the room is not searched at all.
    expect((await bob.call("POST", roomPath(roomId, "/forget"), {})).status).toBe(200);
    expect((await found(bob, { search_term: "puffin" })).results).toEqual([]);
  });

  it("leaves out the messages of users the searcher ignores, in results and context", async () => {
    const alice = await newUser("alice");
    const bob = await newUser("bob");
    const roomId = await alice.createRoom({ preset: "public_chat" });
    expect((await bob.join(roomId)).status).toBe(200);
    const mine = await alice.send(roomId, text("walnut one"));
    await bob.send(roomId, text("walnut two"));
    const ignore = await alice.call("PUT", `/_matrix/client/v3/user/${encodeURIComponent(alice.userId)}/account_data/m.ignored_user_list`, {
      ignored_users: { [bob.userId]: {} },
    });
    expect(ignore.status).toBe(200);
    const res = await found(alice, { search_term: "walnut", event_context: { before_limit: 0, after_limit: 5 } });
    expect(ids(res)).toEqual([mine]);
    expect(res.results[0].context.events_after.map((e: any) => e.sender)).not.toContain(bob.userId);
    expect((await found(bob, { search_term: "walnut" })).results).toHaveLength(2);
  });

  it("never finds redacted events, in either order, and drops them from the index", async () => {
    const alice = await newUser("alice");
    const roomId = await alice.createRoom();
    const gone = await alice.send(roomId, text("message about llamas 1"));
    const kept = await alice.send(roomId, text("message about llamas 2"));
    const res = await alice.call("PUT", roomPath(roomId, `/redact/${encodeURIComponent(gone)}/r1`), {});
    expect(res.status).toBe(200);
    for (const order_by of ["rank", "recent"]) {
      const page = await found(alice, { search_term: "llamas", order_by });
      expect(ids(page), order_by).toEqual([kept]);
    }
    // The index row goes after the redaction commits (soon after the request is answered).
    const rows = async () => (await hs.services.db.execute(sql`select event_id from event_search where event_id = ${gone}`)) as unknown;
    for (let i = 0; i < 50 && JSON.stringify(await rows()).includes(gone); i++) await new Promise((r) => setTimeout(r, 20));
    expect(JSON.stringify(await rows())).not.toContain(gone);
  });
});

describe("bad requests", () => {
  it("answers 400 for bodies that are not a search", async () => {
    const alice = await newUser("alice");
    const bad: unknown[] = [
      {},
      { search_categories: [] },
      { search_categories: { room_events: {} } },
      { search_categories: { room_events: { search_term: 5 } } },
      { search_categories: { room_events: { search_term: "x", order_by: "oldest" } } },
      { search_categories: { room_events: { search_term: "x", keys: ["content.url"] } } },
      { search_categories: { room_events: { search_term: "x", keys: "content.body" } } },
      { search_categories: { room_events: { search_term: "x", filter: { limit: "ten" } } } },
      { search_categories: { room_events: { search_term: "x", filter: { limit: -1 } } } },
      { search_categories: { room_events: { search_term: "x", filter: { rooms: "!a:b" } } } },
      { search_categories: { room_events: { search_term: "x", event_context: { before_limit: -2 } } } },
      { search_categories: { room_events: { search_term: "x", event_context: { include_profile: "yes" } } } },
      { search_categories: { room_events: { search_term: "x", include_state: 1 } } },
      { search_categories: { room_events: { search_term: "x", groupings: { group_by: [{ key: "type" }] } } } },
      { search_categories: { room_events: { search_term: "x", groupings: { group_by: { key: "room_id" } } } } },
    ];
    for (const body of bad) {
      const res = await alice.call("POST", "/_matrix/client/v3/search", body);
      expect(res.status, JSON.stringify(body)).toBe(400);
      expect(res.json.errcode, JSON.stringify(body)).toBe("M_BAD_JSON");
    }
    const notJson = await fetch(`${hs.url}/_matrix/client/v3/search`, {
      method: "POST",
      headers: { Authorization: `Bearer ${alice.accessToken}`, "Content-Type": "application/json" },
      body: "{",
    });
    expect(notJson.status).toBe(400);
    // No token, no search.
    expect((await fetch(`${hs.url}/_matrix/client/v3/search`, { method: "POST", body: "{}" })).status).toBe(401);
    // No category asked: none answered.
    const none = await alice.call("POST", "/_matrix/client/v3/search", { search_categories: {} });
    expect(none.status).toBe(200);
    expect(none.json).toEqual({ search_categories: {} });
  });
});

describe("existing databases", () => {
  it("the migration makes events stored before the index searchable", async () => {
    const alice = await newUser("alice");
    const roomId = await alice.createRoom({ name: "Old cormorant room" });
    const old = await alice.send(roomId, text("an old cormorant message"));
    const redacted = await alice.send(roomId, text("a redacted cormorant message"));
    expect((await alice.call("PUT", roomPath(roomId, `/redact/${encodeURIComponent(redacted)}/r1`), {})).status).toBe(200);
    // As a database from before search: no index rows. Then the migration's backfill statement.
    await hs.services.db.execute(sql`delete from event_search where room_id = ${roomId}`);
    expect((await found(alice, { search_term: "cormorant" })).results).toEqual([]);
    const migration = readFileSync(new URL("../schema/migrations/0012_event_search.sql", import.meta.url), "utf8");
    const backfill = migration.split("--> statement-breakpoint").find((s) => s.includes("INSERT INTO"))!;
    await hs.services.db.execute(sql.raw(backfill));
    const res = await found(alice, { search_term: "cormorant" });
    expect(res.results.map((r: any) => r.result.type).sort()).toEqual(["m.room.message", "m.room.name"]);
    expect(ids(res)).toContain(old);
    expect(ids(res)).not.toContain(redacted);
  });
});

describe("history from other servers", () => {
  it("finds messages a room's other server sent before our user joined, once backfilled", async () => {
    const { startNetwork } = await import("./federation-harness.ts");
    const net = await startNetwork(2);
    try {
      const [hs1, hs2] = net.servers as [TestServer, TestServer];
      const alice = await registerRoomUser(hs2.url, "alice");
      const carl = await registerRoomUser(hs1.url, "carl");
      const roomId = await alice.createRoom({ preset: "public_chat" });
      const old = await alice.send(roomId, text("an ancient kiwi story"));
      const join = await carl.call("POST", `/_matrix/client/v3/join/${encodeURIComponent(roomId)}?via=hs2.test`, {});
      expect(join.status, JSON.stringify(join.json)).toBe(200);
      // Paging back past the join fetches the room's earlier history from hs2 (backfill).
      for (let i = 0, from: string | undefined; i < 5; i++) {
        const page = await carl.messages(roomId, { dir: "b", limit: "50", ...(from ? { from } : {}) });
        if (page.json.chunk.some((e: any) => e.event_id === old) || !page.json.end) break;
        from = page.json.end;
      }
      const res = await found(carl, { search_term: "kiwi" });
      expect(ids(res)).toEqual([old]);
    } finally {
      await net.destroy();
    }
  }, 90_000);
});

// Synapse's admin API, rooms side (server/api/synapse/rooms.ts, federation.ts; server/rooms/room-admin.ts,
// event-reports.ts): listing and inspecting rooms, shutting a room down (block, members out, purge),
// purging history, event reports, federation destinations. Admins only; every change audited.
// https://element-hq.github.io/synapse/latest/admin_api/rooms.html
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { sql } from "drizzle-orm";
import { rowsOf } from "../schema/db.ts";
import { registerUser, type TestUser } from "./accounts-helpers.ts";
import { request, startTestServer, type TestServer } from "./harness.ts";
import { bodies, createRoom, enc, invite, joinRoom, send, sync } from "./sync-helpers.ts";

let hs: TestServer;
let admin: TestUser;
let alice: TestUser;
let bob: TestUser;
let carol: TestUser;

beforeAll(async () => {
  hs = await startTestServer();
  [admin, alice, bob, carol] = (await Promise.all(["boss", "alice", "bob", "carol"].map((n) => registerUser(hs.url, n)))) as [TestUser, TestUser, TestUser, TestUser];
  await hs.services.accounts.setAdmin(admin.userId, true);
  // Four registrations (Argon2) on a loaded CI machine took 40-60 s here.
}, 120_000);
afterAll(() => hs.destroy());

const A = "/_synapse/admin";
const get = (path: string, user: TestUser = admin) => request(hs.url, "GET", path, { token: user.accessToken });
const call = (method: string, path: string, body: unknown, user: TestUser = admin) => request(hs.url, method, path, { token: user.accessToken, body });

async function auditActions(): Promise<any[]> {
  const entries = await hs.services.audit.list({ userId: admin.userId, limit: 200 });
  return entries.filter((e) => e.event === "admin_action").map((e) => e.detail);
}

async function waitForDelete(deleteId: string): Promise<any> {
  let status: any;
  await expect
    .poll(async () => {
      status = (await get(`${A}/v2/rooms/delete_status/${enc(deleteId)}`)).json;
      return status.status;
    }, { timeout: 10_000 })
    .toMatch(/complete|failed/);
  return status;
}

async function messageBodies(user: TestUser, roomId: string): Promise<string[]> {
  const res = await get(`/_matrix/client/v3/rooms/${enc(roomId)}/messages?dir=b&limit=100`, user);
  expect(res.status, res.text).toBe(200);
  return res.json.chunk.filter((e: any) => e.type === "m.room.message").map((e: any) => e.content.body).reverse();
}

describe("who may call it", () => {
  it("answers 403 M_FORBIDDEN to a user who is not a server admin, on every endpoint", async () => {
    const roomId = await createRoom(hs.url, alice, { name: "mine" });
    const r = enc(roomId);
    const calls: Array<[string, string, unknown?]> = [
      ["GET", `${A}/v1/rooms`],
      ["GET", `${A}/v1/rooms/${r}`],
      ["GET", `${A}/v1/rooms/${r}/members`],
      ["GET", `${A}/v1/rooms/${r}/state`],
      ["GET", `${A}/v1/rooms/${r}/block`],
      ["PUT", `${A}/v1/rooms/${r}/block`, { block: true }],
      ["DELETE", `${A}/v2/rooms/${r}`, {}],
      ["DELETE", `${A}/v1/rooms/${r}`, { block: true }],
      ["GET", `${A}/v2/rooms/${r}/delete_status`],
      ["GET", `${A}/v2/rooms/delete_status/abc`],
      ["POST", `${A}/v1/purge_history/${r}`, { purge_up_to_ts: Date.now() }],
      ["GET", `${A}/v1/purge_history_status/abc`],
      ["GET", `${A}/v1/event_reports`],
      ["GET", `${A}/v1/event_reports/1`],
      ["DELETE", `${A}/v1/event_reports/1`],
      ["GET", `${A}/v1/federation/destinations`],
      ["GET", `${A}/v1/federation/destinations/other.test`],
      ["POST", `${A}/v1/federation/destinations/other.test/reset_connection`, {}],
    ];
    for (const [method, path, body] of calls) {
      const res = await request(hs.url, method, path, { token: alice.accessToken, body });
      expect([path, res.status, res.json?.errcode]).toEqual([path, 403, "M_FORBIDDEN"]);
    }
    // Nothing happened: the room is neither blocked nor deleted.
    expect((await get(`${A}/v1/rooms/${r}/block`)).json).toEqual({ block: false });
    expect((await get(`${A}/v1/rooms/${r}`)).status).toBe(200);
    expect((await request(hs.url, "GET", `${A}/v1/rooms`, {})).status).toBe(401);
  });
});

describe("rooms: list, details, members, state", () => {
  let rooms: Record<string, string>;
  beforeAll(async () => {
    rooms = {
      apple: await createRoom(hs.url, carol, { name: "Apple orchard", preset: "public_chat", visibility: "public", room_alias_name: "apples" }),
      banana: await createRoom(hs.url, carol, { name: "Banana boat" }),
      cherry: await createRoom(hs.url, carol, { name: "Cherry Hill", initial_state: [{ type: "m.room.encryption", content: { algorithm: "m.megolm.v1.aes-sha2" } }] }),
    };
    await invite(hs.url, carol, rooms.banana!, bob.userId);
    await joinRoom(hs.url, bob, rooms.banana!);
  });

  it("lists rooms in Synapse's shape, filtered by search_term, ordered by name or size, paged", async () => {
    const all = await get(`${A}/v1/rooms?limit=100`);
    expect(all.status, all.text).toBe(200);
    const apple = all.json.rooms.find((x: any) => x.room_id === rooms.apple);
    expect(apple).toEqual({
      room_id: rooms.apple,
      name: "Apple orchard",
      canonical_alias: "#apples:test.local",
      joined_members: 1,
      joined_local_members: 1,
      version: expect.any(String),
      creator: carol.userId,
      encryption: null,
      federatable: true,
      public: true,
      join_rules: "public",
      guest_access: null,
      history_visibility: "shared",
      state_events: expect.any(Number),
      room_type: null,
    });
    expect(all.json.rooms.find((x: any) => x.room_id === rooms.cherry).encryption).toBe("m.megolm.v1.aes-sha2");

    // The name case-insensitively, the alias's local part, the room ID exactly.
    const byName = await get(`${A}/v1/rooms?search_term=orchARD`);
    expect(byName.json.rooms.map((x: any) => x.room_id)).toEqual([rooms.apple]);
    expect(byName.json.total_rooms).toBe(1);
    expect((await get(`${A}/v1/rooms?search_term=apples`)).json.rooms.map((x: any) => x.room_id)).toEqual([rooms.apple]);
    expect((await get(`${A}/v1/rooms?search_term=${enc(rooms.cherry!)}`)).json.rooms.map((x: any) => x.room_id)).toEqual([rooms.cherry]);

    const fruit = [rooms.apple, rooms.banana, rooms.cherry];
    const byNameAsc = (await get(`${A}/v1/rooms?order_by=name`)).json.rooms.map((x: any) => x.room_id).filter((id: string) => fruit.includes(id));
    expect(byNameAsc).toEqual(fruit);
    const byNameDesc = (await get(`${A}/v1/rooms?order_by=name&dir=b`)).json.rooms.map((x: any) => x.room_id).filter((id: string) => fruit.includes(id));
    expect(byNameDesc).toEqual([...fruit].reverse());
    // Largest first: banana has two members.
    const bySize = (await get(`${A}/v1/rooms?order_by=joined_members`)).json.rooms;
    expect(bySize[0].joined_members).toBeGreaterThanOrEqual(2);
    expect(bySize.map((x: any) => x.joined_members)).toEqual([...bySize.map((x: any) => x.joined_members)].sort((a: number, b: number) => b - a));

    // Paging by offset: next_batch, prev_batch, and every room once.
    const total = (await get(`${A}/v1/rooms`)).json.total_rooms;
    const first = (await get(`${A}/v1/rooms?limit=2`)).json;
    expect(first.rooms).toHaveLength(2);
    expect(first.next_batch).toBe(2);
    expect(first.prev_batch).toBeUndefined();
    const second = (await get(`${A}/v1/rooms?limit=2&from=2`)).json;
    expect(second.offset).toBe(2);
    expect(second.prev_batch).toBe(0);
    const ids = [...first.rooms, ...second.rooms].map((x: any) => x.room_id);
    expect(new Set(ids).size).toBe(Math.min(4, total));

    expect((await get(`${A}/v1/rooms?order_by=nonsense`)).status).toBe(400);
    expect((await get(`${A}/v1/rooms?limit=-1`)).status).toBe(400);
  });

  it("shows a room's details, members and current state; 404 for an unknown room", async () => {
    const details = await get(`${A}/v1/rooms/${enc(rooms.banana!)}`);
    expect(details.status, details.text).toBe(200);
    expect(details.json).toMatchObject({
      room_id: rooms.banana,
      name: "Banana boat",
      joined_members: 2,
      joined_local_members: 2,
      joined_local_devices: 2,
      creator: carol.userId,
      forgotten: false,
      topic: null,
      avatar: null,
    });

    const members = await get(`${A}/v1/rooms/${enc(rooms.banana!)}/members`);
    expect(members.json).toEqual({ members: [bob.userId, carol.userId].sort(), total: 2 });

    const state = await get(`${A}/v1/rooms/${enc(rooms.banana!)}/state`);
    expect(state.status).toBe(200);
    const types = state.json.state.map((e: any) => e.type);
    expect(types).toContain("m.room.create");
    expect(types).toContain("m.room.power_levels");
    expect(state.json.state.find((e: any) => e.type === "m.room.name").content).toEqual({ name: "Banana boat" });
    const onlyMembers = await get(`${A}/v1/rooms/${enc(rooms.banana!)}/state?type=m.room.member`);
    expect(onlyMembers.json.state.map((e: any) => e.state_key).sort()).toEqual([bob.userId, carol.userId].sort());

    const unknown = enc("!nothere:test.local");
    expect((await get(`${A}/v1/rooms/${unknown}`)).status).toBe(404);
    expect((await get(`${A}/v1/rooms/${unknown}/members`)).status).toBe(404);
    expect((await get(`${A}/v1/rooms/${unknown}/state`)).status).toBe(404);
  });
});

describe("event reports", () => {
  it("stores a member's report, lists it for admins with the event's sender and the room's name, and deletes it", async () => {
    const roomId = await createRoom(hs.url, alice, { name: "Reported room", preset: "public_chat" });
    await joinRoom(hs.url, bob, roomId);
    const eventId = await send(hs.url, alice, roomId, { msgtype: "m.text", body: "offensive" });
    const reportPath = `/_matrix/client/v3/rooms/${enc(roomId)}/report/${enc(eventId)}`;

    const res = await call("POST", reportPath, { reason: "rude", score: -100 }, bob);
    expect(res.status, res.text).toBe(200);
    expect(res.json).toEqual({});
    // Someone who cannot see the event, and an event that does not exist, get the same 404.
    expect((await call("POST", reportPath, { reason: "x" }, carol)).status).toBe(404);
    expect((await call("POST", `/_matrix/client/v3/rooms/${enc(roomId)}/report/${enc("$nope")}`, {}, bob)).status).toBe(404);
    expect((await call("POST", reportPath, { score: 5 }, bob)).status).toBe(400);

    const list = await get(`${A}/v1/event_reports?room_id=${enc(roomId)}`);
    expect(list.status, list.text).toBe(200);
    expect(list.json.total).toBe(1);
    const [report] = list.json.event_reports;
    expect(report).toEqual({
      id: expect.any(Number),
      received_ts: expect.any(Number),
      room_id: roomId,
      name: "Reported room",
      event_id: eventId,
      user_id: bob.userId,
      reason: "rude",
      score: -100,
      sender: alice.userId,
      canonical_alias: null,
    });
    expect((await get(`${A}/v1/event_reports?user_id=${enc(bob.userId)}`)).json.event_reports.map((r: any) => r.id)).toContain(report.id);
    expect((await get(`${A}/v1/event_reports?user_id=${enc(carol.userId)}`)).json.total).toBe(0);

    const one = await get(`${A}/v1/event_reports/${report.id}`);
    expect(one.json.event_json).toMatchObject({ type: "m.room.message", content: { body: "offensive" }, sender: alice.userId });

    expect((await call("DELETE", `${A}/v1/event_reports/${report.id}`, undefined)).status).toBe(200);
    expect((await get(`${A}/v1/event_reports/${report.id}`)).status).toBe(404);
    expect((await call("DELETE", `${A}/v1/event_reports/${report.id}`, undefined)).status).toBe(404);
    expect((await get(`${A}/v1/event_reports/abc`)).status).toBe(400);
    expect(await auditActions()).toContainEqual({ action: "delete_event_report", report_id: report.id });
  });

  it("pages reports newest first by default", async () => {
    const roomId = await createRoom(hs.url, alice, { preset: "public_chat" });
    const ids = [];
    for (let i = 0; i < 3; i++) {
      const eventId = await send(hs.url, alice, roomId, { msgtype: "m.text", body: `m${i}` });
      ids.push(eventId);
      expect((await call("POST", `/_matrix/client/v3/rooms/${enc(roomId)}/report/${enc(eventId)}`, { reason: `r${i}` }, alice)).status).toBe(200);
    }
    const page1 = (await get(`${A}/v1/event_reports?room_id=${enc(roomId)}&limit=2`)).json;
    expect(page1.event_reports.map((r: any) => r.event_id)).toEqual([ids[2], ids[1]]);
    expect(page1.next_token).toBe(2);
    const page2 = (await get(`${A}/v1/event_reports?room_id=${enc(roomId)}&limit=2&from=2`)).json;
    expect(page2.event_reports.map((r: any) => r.event_id)).toEqual([ids[0]]);
    expect(page2.next_token).toBeUndefined();
    const forwards = (await get(`${A}/v1/event_reports?room_id=${enc(roomId)}&dir=f`)).json;
    expect(forwards.event_reports.map((r: any) => r.event_id)).toEqual(ids);
  });
});

describe("DELETE /_synapse/admin/v2/rooms/{roomId}", () => {
  it("blocks the room, makes its local members leave, purges it, and reports the status", async () => {
    const roomId = await createRoom(hs.url, alice, { name: "Bad room", preset: "public_chat", room_alias_name: "badroom" });
    await joinRoom(hs.url, bob, roomId);
    await send(hs.url, alice, roomId, { msgtype: "m.text", body: "bad content" });
    const eventId = await send(hs.url, bob, roomId, { msgtype: "m.text", body: "more" });
    expect((await call("POST", `/_matrix/client/v3/rooms/${enc(roomId)}/report/${enc(eventId)}`, { reason: "bad" }, alice)).status).toBe(200);
    const before = await sync(hs.url, bob);
    expect(before.rooms.join[roomId]).toBeDefined();

    const res = await call("DELETE", `${A}/v2/rooms/${enc(roomId)}`, { block: true, purge: true });
    expect(res.status, res.text).toBe(200);
    expect(res.json.delete_id).toEqual(expect.any(String));
    const status = await waitForDelete(res.json.delete_id);
    expect(status).toEqual({
      delete_id: res.json.delete_id,
      room_id: roomId,
      status: "complete",
      shutdown_room: {
        kicked_users: [alice.userId, bob.userId].sort(),
        failed_to_kick_users: [],
        local_aliases: ["#badroom:test.local"],
        new_room_id: null,
      },
    });
    const byRoom = await get(`${A}/v2/rooms/${enc(roomId)}/delete_status`);
    expect(byRoom.json.results).toEqual([status]);

    // Gone from the database: the admin API, the client API, the alias.
    expect((await get(`${A}/v1/rooms/${enc(roomId)}`)).status).toBe(404);
    expect((await get(`${A}/v1/rooms?search_term=${enc(roomId)}`)).json.total_rooms).toBe(0);
    expect((await get(`/_matrix/client/v3/directory/room/${enc("#badroom:test.local")}`, bob)).status).toBe(404);
    const left = await hs.services.db.execute(
      (await import("drizzle-orm")).sql`select (select count(*)::int from events where room_id = ${roomId}) as events,
        (select count(*)::int from current_state where room_id = ${roomId}) as state,
        (select count(*)::int from state_groups where room_id = ${roomId}) as groups,
        (select count(*)::int from room_memberships where room_id = ${roomId}) as memberships`,
    );
    expect((left as any).rows?.[0] ?? (left as any)[0]).toEqual({ events: 0, state: 0, groups: 0, memberships: 0 });
    // The report stays, the admin's record of what was reported.
    expect((await get(`${A}/v1/event_reports?room_id=${enc(roomId)}`)).json.total).toBe(1);

    // /sync keeps working for the members, from before the shutdown and from scratch, and the
    // room does not come back.
    const after = await sync(hs.url, bob, { since: before.next_batch, timeout: 0 });
    expect(after.rooms?.join?.[roomId]).toBeUndefined();
    const fresh = await sync(hs.url, bob);
    expect(fresh.rooms?.join?.[roomId]).toBeUndefined();
    expect(fresh.rooms?.leave?.[roomId]).toBeUndefined();
    expect((await get(`/_matrix/client/v3/joined_rooms`, alice)).json.joined_rooms).not.toContain(roomId);

    // Blocked: nobody joins it again.
    const join = await call("POST", `/_matrix/client/v3/join/${enc(roomId)}`, {}, bob);
    expect([join.status, join.json.errcode]).toEqual([403, "M_FORBIDDEN"]);
    expect((await get(`${A}/v1/rooms/${enc(roomId)}/block`)).json).toEqual({ block: true, user_id: admin.userId });
    // Sending into it fails cleanly.
    const sendAfter = await call("PUT", `/_matrix/client/v3/rooms/${enc(roomId)}/send/m.room.message/late`, { msgtype: "m.text", body: "x" }, alice);
    expect(sendAfter.status).toBeGreaterThanOrEqual(400);
    expect(sendAfter.status).toBeLessThan(500);

    expect(await auditActions()).toContainEqual({ action: "delete_room", room_id: roomId, delete_id: res.json.delete_id, block: true, purge: true, force_purge: false });
  });

  it("moves the local members and aliases to a new room with the admin's message", async () => {
    const roomId = await createRoom(hs.url, alice, { name: "Doomed", preset: "public_chat", room_alias_name: "doomed" });
    await joinRoom(hs.url, carol, roomId);
    const res = await call("DELETE", `${A}/v2/rooms/${enc(roomId)}`, {
      new_room_user_id: admin.userId,
      room_name: "Gone",
      message: "This room was shut down",
      purge: false,
    });
    expect(res.status, res.text).toBe(200);
    const status = await waitForDelete(res.json.delete_id);
    expect(status.status).toBe("complete");
    const newRoomId = status.shutdown_room.new_room_id;
    expect(newRoomId).toEqual(expect.stringMatching(/^!/));
    expect(status.shutdown_room.kicked_users).toEqual([alice.userId, carol.userId].sort());
    expect(status.shutdown_room.local_aliases).toEqual(["#doomed:test.local"]);

    expect((await get(`/_matrix/client/v3/joined_rooms`, carol)).json.joined_rooms).toContain(newRoomId);
    expect((await get(`/_matrix/client/v3/joined_rooms`, carol)).json.joined_rooms).not.toContain(roomId);
    expect(await messageBodies(carol, newRoomId)).toContain("This room was shut down");
    const alias = await get(`/_matrix/client/v3/directory/room/${enc("#doomed:test.local")}`, carol);
    expect(alias.json.room_id).toBe(newRoomId);
    // Not purged (purge: false), not blocked: still listed, and can be joined again.
    expect((await get(`${A}/v1/rooms/${enc(roomId)}`)).json.joined_members).toBe(0);
    await joinRoom(hs.url, carol, roomId);
  });

  it("refuses an unknown room and a remote new_room_user_id; unknown delete IDs are 404", async () => {
    expect((await call("DELETE", `${A}/v2/rooms/${enc("!unknown:test.local")}`, {})).status).toBe(404);
    const roomId = await createRoom(hs.url, alice);
    expect((await call("DELETE", `${A}/v2/rooms/${enc(roomId)}`, { new_room_user_id: "@x:elsewhere.test" })).status).toBe(400);
    expect((await get(`${A}/v2/rooms/delete_status/nope`)).status).toBe(404);
    expect((await get(`${A}/v2/rooms/${enc(roomId)}/delete_status`)).status).toBe(404);
  });

  it("v1 answers the shutdown's result when it is over, and blocks a room this server does not know", async () => {
    const roomId = await createRoom(hs.url, alice, { preset: "public_chat" });
    await joinRoom(hs.url, carol, roomId);
    const res = await call("DELETE", `${A}/v1/rooms/${enc(roomId)}`, { purge: true });
    expect(res.status, res.text).toBe(200);
    expect(res.json).toEqual({ kicked_users: [alice.userId, carol.userId].sort(), failed_to_kick_users: [], local_aliases: [], new_room_id: null });
    expect((await get(`${A}/v1/rooms/${enc(roomId)}`)).status).toBe(404);

    const unknown = "!notyetseen:elsewhere.test";
    const pre = await call("DELETE", `${A}/v1/rooms/${enc(unknown)}`, { block: true });
    expect(pre.json).toEqual({ kicked_users: [], failed_to_kick_users: [], local_aliases: [], new_room_id: null });
    expect((await get(`${A}/v1/rooms/${enc(unknown)}/block`)).json).toEqual({ block: true, user_id: admin.userId });
    expect((await call("DELETE", `${A}/v1/rooms/${enc(unknown)}`, {})).status).toBe(404);
  });

  it("a blocked room refuses joins and invites; unblocking lets them in again", async () => {
    const roomId = await createRoom(hs.url, alice, { preset: "public_chat" });
    const block = await call("PUT", `${A}/v1/rooms/${enc(roomId)}/block`, { block: true });
    expect(block.json).toEqual({ block: true });
    const join = await call("POST", `/_matrix/client/v3/join/${enc(roomId)}`, {}, bob);
    expect([join.status, join.json.errcode]).toEqual([403, "M_FORBIDDEN"]);
    const inv = await call("POST", `/_matrix/client/v3/rooms/${enc(roomId)}/invite`, { user_id: bob.userId }, alice);
    expect([inv.status, inv.json.errcode]).toEqual([403, "M_FORBIDDEN"]);
    expect((await call("PUT", `${A}/v1/rooms/${enc(roomId)}/block`, { block: false })).json).toEqual({ block: false });
    await joinRoom(hs.url, bob, roomId);
    expect(await auditActions()).toContainEqual({ action: "block_room", room_id: roomId });
    expect(await auditActions()).toContainEqual({ action: "unblock_room", room_id: roomId });
  });
});

describe("purge history", () => {
  it("deletes the messages before an event but keeps the state, local events unless asked, and the room working", async () => {
    const roomId = await createRoom(hs.url, alice, { name: "Old history", preset: "public_chat" });
    await joinRoom(hs.url, bob, roomId);
    for (const body of ["one", "two", "three"]) await send(hs.url, alice, roomId, { msgtype: "m.text", body });
    const cut = await send(hs.url, bob, roomId, { msgtype: "m.text", body: "four" });
    await send(hs.url, bob, roomId, { msgtype: "m.text", body: "five" });

    // Local events are this server's only copy: without delete_local_events they are kept, out of
    // the timeline (as Synapse does it).
    const stored = async () =>
      Number(rowsOf<{ n: string | number }>(await hs.services.db.execute(sql`select count(*) as n from events where room_id = ${roomId} and type = 'm.room.message'`))[0]!.n);
    const keep = await call("POST", `${A}/v1/purge_history/${enc(roomId)}/${enc(cut)}`, {});
    expect(keep.status, keep.text).toBe(200);
    await expect.poll(async () => (await get(`${A}/v1/purge_history_status/${enc(keep.json.purge_id)}`)).json.status).toBe("complete");
    expect(await messageBodies(bob, roomId)).toEqual(["four", "five"]);
    expect(bodies(await sync(hs.url, bob), roomId)).toEqual(["four", "five"]);
    expect(await stored()).toBe(5);

    const res = await call("POST", `${A}/v1/purge_history/${enc(roomId)}`, { purge_up_to_event_id: cut, delete_local_events: true });
    expect(res.status, res.text).toBe(200);
    await expect.poll(async () => (await get(`${A}/v1/purge_history_status/${enc(res.json.purge_id)}`)).json).toEqual({ status: "complete" });
    expect(await messageBodies(bob, roomId)).toEqual(["four", "five"]);
    expect(await stored()).toBe(2);

    // The state is whole, and the room goes on.
    const details = (await get(`${A}/v1/rooms/${enc(roomId)}`)).json;
    expect(details).toMatchObject({ name: "Old history", joined_members: 2 });
    await send(hs.url, alice, roomId, { msgtype: "m.text", body: "six" });
    expect(await messageBodies(bob, roomId)).toEqual(["four", "five", "six"]);
    const s = await sync(hs.url, bob);
    // Nor does /sync serve the purged messages (from what it keeps in memory).
    expect(bodies(s, roomId)).toEqual(["four", "five", "six"]);
    expect(s.rooms.join[roomId].state.events.concat(s.rooms.join[roomId].timeline.events).some((e: any) => e.type === "m.room.name")).toBe(true);
    expect(await auditActions()).toContainEqual(expect.objectContaining({ action: "purge_history", room_id: roomId, purge_id: res.json.purge_id }));
  });

  it("purges up to a time, and refuses an unknown event, a missing point and an unknown purge ID", async () => {
    const roomId = await createRoom(hs.url, alice, { preset: "public_chat" });
    await send(hs.url, alice, roomId, { msgtype: "m.text", body: "early" });
    await new Promise((r) => setTimeout(r, 20));
    const ts = Date.now();
    await new Promise((r) => setTimeout(r, 20));
    await send(hs.url, alice, roomId, { msgtype: "m.text", body: "late" });
    const res = await call("POST", `${A}/v1/purge_history/${enc(roomId)}`, { purge_up_to_ts: ts, delete_local_events: true });
    expect(res.status, res.text).toBe(200);
    await expect.poll(async () => (await get(`${A}/v1/purge_history_status/${enc(res.json.purge_id)}`)).json.status).toBe("complete");
    expect(await messageBodies(alice, roomId)).toEqual(["late"]);

    expect((await call("POST", `${A}/v1/purge_history/${enc(roomId)}`, {})).status).toBe(400);
    expect((await call("POST", `${A}/v1/purge_history/${enc(roomId)}/${enc("$missing")}`, {})).status).toBe(404);
    expect((await call("POST", `${A}/v1/purge_history/${enc("!unknown:test.local")}`, { purge_up_to_ts: ts })).status).toBe(404);
    expect((await get(`${A}/v1/purge_history_status/nope`)).status).toBe(404);
  });
});

describe("federation destinations", () => {
  it("lists the outbound queues in Synapse's shape, shows one, resets its backoff; 404 for unknown ones", async () => {
    const { sql } = await import("drizzle-orm");
    const now = Date.now();
    await hs.services.db.execute(sql`insert into federation_destinations (destination, failures, retry_at_ts, last_attempt_ts, last_error)
      values ('down.test', 3, ${now + 60_000}, ${now}, 'connection refused'), ('up.test', 0, null, ${now}, null)`);
    const list = await get(`${A}/v1/federation/destinations`);
    expect(list.status, list.text).toBe(200);
    expect(list.json.total).toBe(2);
    expect(list.json.destinations).toEqual([
      { destination: "down.test", retry_last_ts: now, retry_interval: 60_000, failure_ts: now, last_successful_stream_ordering: null },
      { destination: "up.test", retry_last_ts: 0, retry_interval: 0, failure_ts: null, last_successful_stream_ordering: null },
    ]);
    const paged = (await get(`${A}/v1/federation/destinations?limit=1&dir=b`)).json;
    expect(paged.destinations.map((d: any) => d.destination)).toEqual(["up.test"]);
    expect(paged.next_token).toBe("1");
    expect((await get(`${A}/v1/federation/destinations?destination=down`)).json.destinations.map((d: any) => d.destination)).toEqual(["down.test"]);

    expect((await get(`${A}/v1/federation/destinations/down.test`)).json.failure_ts).toBe(now);
    expect((await get(`${A}/v1/federation/destinations/nowhere.test`)).status).toBe(404);

    expect((await call("POST", `${A}/v1/federation/destinations/down.test/reset_connection`, {})).status).toBe(200);
    expect((await get(`${A}/v1/federation/destinations/down.test`)).json).toMatchObject({ retry_interval: 0, failure_ts: null });
    expect((await call("POST", `${A}/v1/federation/destinations/nowhere.test/reset_connection`, {})).status).toBe(404);
    expect(await auditActions()).toContainEqual({ action: "reset_federation_connection", destination: "down.test" });
  });
});

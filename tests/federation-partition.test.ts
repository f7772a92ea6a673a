// A network partition: one server is cut off while both sides keep changing the room; when the link
// comes back, all three servers converge to the same current state and the same messages.
// https://spec.matrix.org/latest/server-server-api/#room-state-resolution
import { afterAll, beforeAll, expect, it } from "vitest";
import { sql } from "drizzle-orm";
import { rowsOf } from "../schema/db.ts";
import { type Network, startNetwork } from "./federation-harness.ts";
import type { TestServer } from "./harness.ts";
import { type RoomUser, registerRoomUser, roomPath } from "./rooms-helpers.ts";

let net: Network;
let servers: TestServer[];
let alice: RoomUser; // hs1, the room's creator
let bob: RoomUser; // hs2
let carol: RoomUser; // hs3, moderator
let dave: RoomUser; // hs2, banned during the partition
const enc = encodeURIComponent;

async function eventually<T>(check: () => Promise<T>, timeoutMs = 20_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await check();
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
  }
}

type Pinned = Map<string, { host: string; port: number }>;
const pinnedOf = (hs: TestServer) => (hs.services.federation.http as unknown as { opts: { pinnedHosts: Pinned } }).opts.pinnedHosts;

/** Cuts (or restores) every link between hs3 and the others, both ways, by pinning names to a dead port. */
const saved = new Map<string, { host: string; port: number }>();
function cut(): void {
  for (const [i, hs] of servers.entries()) {
    const pinned = pinnedOf(hs);
    const names = i === 2 ? ["hs1.test", "hs2.test"] : ["hs3.test"];
    for (const name of names) {
      saved.set(`${i} ${name}`, pinned.get(name)!);
      pinned.set(name, { host: "127.0.0.1", port: 9 });
    }
  }
}
function heal(): void {
  for (const [i, hs] of servers.entries()) {
    const pinned = pinnedOf(hs);
    for (const name of i === 2 ? ["hs1.test", "hs2.test"] : ["hs3.test"]) pinned.set(name, saved.get(`${i} ${name}`)!);
  }
}

async function currentState(hs: TestServer, roomId: string): Promise<Record<string, string>> {
  const rows = rowsOf<{ type: string; state_key: string; event_id: string }>(
    await hs.services.db.execute(sql`select type, state_key, event_id from current_state where room_id = ${roomId} order by type, state_key`),
  );
  return Object.fromEntries(rows.map((r) => [`${r.type}|${r.state_key}`, r.event_id]));
}

async function messageIds(hs: TestServer, roomId: string): Promise<string[]> {
  const rows = rowsOf<{ event_id: string }>(
    await hs.services.db.execute(sql`select event_id from events where room_id = ${roomId} and type = 'm.room.message'
      and not outlier and rejected_reason is null and not soft_failed order by event_id`),
  );
  return rows.map((r) => r.event_id);
}

beforeAll(async () => {
  net = await startNetwork(3);
  servers = net.servers;
  [alice, bob, carol, dave] = await Promise.all([
    registerRoomUser(servers[0]!.url, "alice"),
    registerRoomUser(servers[1]!.url, "bob"),
    registerRoomUser(servers[2]!.url, "carol"),
    registerRoomUser(servers[1]!.url, "dave"),
  ]);
}, 120_000);

afterAll(async () => {
  await net?.destroy();
});

// Room version 12 (state resolution v2.1) and room version 1 (state resolution v1, events that
// carry their IDs and name their prev events with hashes).
it.each(["12", "1"])("room version %s: after a partition in which both sides changed the room, all servers hold the same state and messages", async (version) => {
  const roomId = await alice.createRoom({
    room_version: version,
    preset: "public_chat",
    // Before v12 the override's users replace the creator's 100; from v12 creators are above them.
    power_level_content_override: { users: { "@carol:hs3.test": 50, ...(version === "12" ? {} : { [alice.userId]: 100 }) } },
  });
  for (const [user, server] of [[bob, "hs1.test"], [carol, "hs1.test"], [dave, "hs1.test"]] as const) {
    const res = await user.call("POST", `/_matrix/client/v3/join/${enc(roomId)}?via=${server}`, {});
    expect(res.status, JSON.stringify(res.json)).toBe(200);
  }
  await eventually(async () => {
    for (const hs of servers) expect(Object.keys(await currentState(hs, roomId)).filter((k) => k.startsWith("m.room.member|")).length).toBe(4);
  });

  cut();
  // The side with hs1 and hs2: a topic, messages, a power change and a ban.
  expect((await alice.setState(roomId, "m.room.topic", { topic: "majority" })).status).toBe(200);
  await alice.send(roomId, { msgtype: "m.text", body: "alice in the partition" });
  await bob.send(roomId, { msgtype: "m.text", body: "bob in the partition" });
  const pl = (await alice.state(roomId, "m.room.power_levels")).json;
  expect((await alice.setState(roomId, "m.room.power_levels", { ...pl, users: { ...pl.users, [bob.userId]: 10 } })).status).toBe(200);
  expect((await alice.call("POST", roomPath(roomId, "/ban"), { user_id: dave.userId })).status).toBe(200);
  // hs3 alone: a topic and messages.
  expect((await carol.setState(roomId, "m.room.topic", { topic: "minority" })).status).toBe(200);
  await carol.send(roomId, { msgtype: "m.text", body: "carol alone 1" });
  await carol.send(roomId, { msgtype: "m.text", body: "carol alone 2" });

  heal();
  // New events from each side reach the other and wake its queue (a server that reaches us is up).
  await alice.send(roomId, { msgtype: "m.text", body: "alice after" });
  await carol.send(roomId, { msgtype: "m.text", body: "carol after" });

  await eventually(async () => {
    const [m1, m2, m3] = await Promise.all(servers.map((hs) => messageIds(hs, roomId)));
    expect(m1!.length).toBe(6);
    expect(m2).toEqual(m1);
    expect(m3).toEqual(m1);
  }, 60_000);
  // One more event from each side merges the forks; then every server holds the same current state.
  await bob.send(roomId, { msgtype: "m.text", body: "bob merges" });
  await carol.send(roomId, { msgtype: "m.text", body: "carol merges" });
  await eventually(async () => {
    const [s1, s2, s3] = await Promise.all(servers.map((hs) => currentState(hs, roomId)));
    expect(s2).toEqual(s1);
    expect(s3).toEqual(s1);
    const [m1, m2, m3] = await Promise.all(servers.map((hs) => messageIds(hs, roomId)));
    expect(m1!.length).toBe(8);
    expect(m2).toEqual(m1);
    expect(m3).toEqual(m1);
  }, 60_000);
  // The ban and the power change made in the partition hold everywhere.
  for (const hs of servers) {
    const rows = rowsOf(await hs.services.db.execute(sql`select c.*, e.json from current_state c left join events e on e.event_id = c.event_id where c.room_id = ${roomId} and c.state_key = ${dave.userId}`));
    expect(await hs.services.rooms.currentMembership(roomId, dave.userId), JSON.stringify(rows)).toBe("ban");
    const { content } = await hs.services.rooms.powerLevels(roomId, bob.userId);
    expect((content.users as Record<string, number>)[bob.userId]).toBe(10);
  }
}, 180_000);

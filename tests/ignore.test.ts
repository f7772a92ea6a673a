// Ignoring users (m.ignored_user_list): their events and invites disappear from the ignorer's
// /sync, /messages and /context; their state events stay.
// https://spec.matrix.org/latest/client-server-api/#ignoring-users
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { registerUser, type TestUser } from "./accounts-helpers.ts";
import { request, startTestServer, type TestServer } from "./harness.ts";
import { bodies, createRoom, enc, invite, joinRoom, send, sync } from "./sync-helpers.ts";

let hs: TestServer;
let alice: TestUser;
let bob: TestUser;
let carol: TestUser;
beforeAll(async () => {
  hs = await startTestServer();
  [alice, bob, carol] = (await Promise.all(["alice", "bob", "carol"].map((n) => registerUser(hs.url, n)))) as [TestUser, TestUser, TestUser];
});
afterAll(() => hs.destroy());

const ignore = (user: TestUser, ignored: string[]) =>
  request(hs.url, "PUT", `/_matrix/client/v3/user/${enc(user.userId)}/account_data/m.ignored_user_list`, {
    token: user.accessToken,
    body: { ignored_users: Object.fromEntries(ignored.map((u) => [u, {}])) },
  });
const text = (body: string) => ({ msgtype: "m.text", body });

describe("ignoring users", () => {
  it("leaves an ignored user's messages out of /sync, /messages and /context, keeps their state events, and stops on un-ignoring", async () => {
    const roomId = await createRoom(hs.url, alice, { preset: "public_chat" });
    await joinRoom(hs.url, bob, roomId);
    await joinRoom(hs.url, carol, roomId);
    await send(hs.url, bob, roomId, text("from bob"));
    const carols = await send(hs.url, carol, roomId, text("from carol"));
    expect((await ignore(alice, [bob.userId])).status).toBe(200);

    const initial = await sync(hs.url, alice);
    expect(bodies(initial, roomId)).toEqual(["from carol"]);
    const since = initial.next_batch;

    // bob's message alone: nothing for alice. His topic change (state) still comes.
    await send(hs.url, bob, roomId, text("bob again"));
    const quiet = await sync(hs.url, alice, { since });
    expect(quiet.rooms?.join?.[roomId]).toBeUndefined();
    const renamed = await request(hs.url, "PUT", `/_matrix/client/v3/rooms/${enc(roomId)}/state/m.room.member/${enc(bob.userId)}`, {
      token: bob.accessToken,
      body: { membership: "join", displayname: "Bobby" },
    });
    expect(renamed.status).toBe(200);
    const state = await sync(hs.url, alice, { since: quiet.next_batch });
    expect(state.rooms.join[roomId].timeline.events.map((e: any) => e.event_id)).toEqual([renamed.json.event_id]);

    const page = await request(hs.url, "GET", `/_matrix/client/v3/rooms/${enc(roomId)}/messages?dir=b&limit=50`, { token: alice.accessToken });
    const senders = new Set(page.json.chunk.filter((e: any) => e.type === "m.room.message").map((e: any) => e.sender));
    expect([...senders]).toEqual([carol.userId]);
    expect(page.json.chunk.some((e: any) => e.event_id === renamed.json.event_id)).toBe(true);
    const context = await request(hs.url, "GET", `/_matrix/client/v3/rooms/${enc(roomId)}/context/${enc(carols)}?limit=10`, { token: alice.accessToken });
    expect([...context.json.events_before, ...context.json.events_after].some((e: any) => e.type === "m.room.message" && e.sender === bob.userId)).toBe(false);

    // Others still see bob.
    expect(bodies(await sync(hs.url, carol), roomId)).toContain("bob again");

    await ignore(alice, []);
    await send(hs.url, bob, roomId, text("bob forgiven"));
    expect(bodies(await sync(hs.url, alice, { since: state.next_batch }), roomId)).toEqual(["bob forgiven"]);
  });

  it("does not show invites from ignored users", async () => {
    await ignore(carol, [bob.userId]);
    const roomId = await createRoom(hs.url, bob);
    const { next_batch } = await sync(hs.url, carol);
    await invite(hs.url, bob, roomId, carol.userId);
    const incremental = await sync(hs.url, carol, { since: next_batch });
    expect(incremental.rooms?.invite?.[roomId]).toBeUndefined();
    expect((await sync(hs.url, carol)).rooms?.invite?.[roomId]).toBeUndefined();
    // An invite from someone else still shows.
    const other = await createRoom(hs.url, alice);
    await invite(hs.url, alice, other, carol.userId);
    expect((await sync(hs.url, carol)).rooms?.invite?.[other]).toBeDefined();
  });
});

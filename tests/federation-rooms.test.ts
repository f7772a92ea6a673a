// Rooms across three Parley servers on loopback: joins through another server, invites across
// servers, messages and state in every direction, kicks and bans that take effect everywhere.
// https://spec.matrix.org/latest/server-server-api/#joining-rooms
// https://spec.matrix.org/latest/server-server-api/#inviting-to-a-room
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Network, startNetwork } from "./federation-harness.ts";
import type { TestServer } from "./harness.ts";
import { type RoomUser, registerRoomUser, roomPath } from "./rooms-helpers.ts";
import { sync } from "./sync-helpers.ts";

let net: Network;
let hs1: TestServer;
let hs2: TestServer;
let hs3: TestServer;
let alice: RoomUser; // hs1
let bob: RoomUser; // hs2
let carol: RoomUser; // hs3

const enc = encodeURIComponent;

/** Waits until `check` passes (events cross servers asynchronously). */
async function eventually<T>(check: () => Promise<T>, timeoutMs = 10_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await check();
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }
}

/** The bodies of the room's messages as the user reads them with /messages, oldest first. */
async function bodies(user: RoomUser, roomId: string): Promise<string[]> {
  const res = await user.messages(roomId, { dir: "b", limit: "100" });
  expect(res.status, JSON.stringify(res.json)).toBe(200);
  return res.json.chunk
    .filter((e: any) => e.type === "m.room.message")
    .map((e: any) => e.content.body)
    .reverse();
}

async function members(user: RoomUser, roomId: string): Promise<Record<string, string>> {
  const res = await user.call("GET", roomPath(roomId, "/members"));
  expect(res.status, JSON.stringify(res.json)).toBe(200);
  return Object.fromEntries(res.json.chunk.map((e: any) => [e.state_key, e.content.membership]));
}

beforeAll(async () => {
  net = await startNetwork(3);
  [hs1, hs2, hs3] = net.servers as [TestServer, TestServer, TestServer];
  [alice, bob, carol] = await Promise.all([
    registerRoomUser(hs1.url, "alice"),
    registerRoomUser(hs2.url, "bob"),
    registerRoomUser(hs3.url, "carol"),
  ]);
}, 120_000);

afterAll(async () => {
  await net?.destroy();
});

describe("a public room joined from other servers", () => {
  let roomId: string;

  beforeAll(async () => {
    roomId = await alice.createRoom({ preset: "public_chat", name: "Federated", room_alias_name: "fed" });
    await alice.send(roomId, { msgtype: "m.text", body: "before anyone joined" });
  });

  it("a user of another server joins by room ID through the room's server, and sees its state and history", async () => {
    const res = await bob.call("POST", `/_matrix/client/v3/join/${enc(roomId)}?via=hs1.test`, {});
    expect(res.status, JSON.stringify(res.json)).toBe(200);
    expect(res.json.room_id).toBe(roomId);
    const name = await bob.state(roomId, "m.room.name");
    expect(name.json).toEqual({ name: "Federated" });
    await eventually(async () => expect(await members(alice, roomId)).toMatchObject({ [alice.userId]: "join", [bob.userId]: "join" }));
    expect(await members(bob, roomId)).toMatchObject({ [alice.userId]: "join", [bob.userId]: "join" });
    const s = await sync(hs2.url, bob);
    expect(Object.keys(s.rooms?.join ?? {})).toContain(roomId);
  });

  it("a user of a third server joins by alias, resolved over federation", async () => {
    const res = await carol.join("#fed:hs1.test");
    expect(res.status, JSON.stringify(res.json)).toBe(200);
    expect(res.json.room_id).toBe(roomId);
    // hs2 hears of carol's join from hs1 (which relays what it served).
    await eventually(async () => expect((await members(bob, roomId))[carol.userId]).toBe("join"));
  });

  it("messages flow in every direction and every server has them all", async () => {
    await alice.send(roomId, { msgtype: "m.text", body: "from alice" });
    await bob.send(roomId, { msgtype: "m.text", body: "from bob" });
    await carol.send(roomId, { msgtype: "m.text", body: "from carol" });
    for (const user of [alice, bob, carol]) {
      // The servers that joined late page back into what was said before (backfill).
      await eventually(async () => expect(new Set(await bodies(user, roomId))).toEqual(new Set(["before anyone joined", "from alice", "from bob", "from carol"])));
    }
  });

  it("state changes from any server reach the others", async () => {
    const res = await alice.setState(roomId, "m.room.topic", { topic: "set on hs1" });
    expect(res.status).toBe(200);
    for (const user of [bob, carol]) {
      await eventually(async () => expect((await user.state(roomId, "m.room.topic")).json).toEqual({ topic: "set on hs1" }));
    }
  });

  it("typing notices and read receipts cross to the other servers' /sync", async () => {
    const eventId = await alice.send(roomId, { msgtype: "m.text", body: "read me" });
    expect((await alice.call("PUT", roomPath(roomId, `/typing/${enc(alice.userId)}`), { typing: true, timeout: 20_000 })).status).toBe(200);
    expect((await bob.call("PUT", roomPath(roomId, `/typing/${enc(bob.userId)}`), { typing: true, timeout: 20_000 })).status).toBe(200);
    await eventually(async () => expect(hs2.services.typing.typingIn([roomId], null, hs2.services.typing.position()).get(roomId) ?? []).toContain(alice.userId));
    await eventually(async () => expect(hs3.services.typing.typingIn([roomId], null, hs3.services.typing.position()).get(roomId) ?? []).toEqual(expect.arrayContaining([alice.userId, bob.userId])));
    await eventually(async () => {
      const s = await sync(hs3.url, carol);
      const typing = s.rooms.join[roomId].ephemeral.events.find((e: any) => e.type === "m.typing");
      expect(typing?.content.user_ids).toEqual(expect.arrayContaining([alice.userId, bob.userId]));
    });
    await eventually(async () => expect((await bob.messages(roomId, { dir: "b", limit: "1" })).json.chunk[0]?.event_id).toBe(eventId));
    expect((await bob.call("POST", roomPath(roomId, `/receipt/m.read/${enc(eventId)}`), {})).status).toBe(200);
    for (const [server, user] of [[hs1, alice], [hs3, carol]] as const) {
      await eventually(async () => {
        const s = await sync(server.url, user);
        const receipt = s.rooms.join[roomId].ephemeral.events.find((e: any) => e.type === "m.receipt");
        expect(receipt?.content[eventId]?.["m.read"]?.[bob.userId]).toBeDefined();
      });
    }
  });

  it("a kick and a ban from the room's creator take effect on every server", async () => {
    expect((await alice.call("POST", roomPath(roomId, "/kick"), { user_id: bob.userId })).status).toBe(200);
    expect((await alice.call("POST", roomPath(roomId, "/ban"), { user_id: carol.userId })).status).toBe(200);
    for (const user of [alice, bob, carol]) {
      await eventually(async () => expect(await members(alice, roomId)).toMatchObject({ [bob.userId]: "leave", [carol.userId]: "ban" }));
      void user;
    }
    await eventually(async () => expect((await hs3.services.rooms.currentMembership(roomId, carol.userId))).toBe("ban"));
    await eventually(async () => expect((await hs2.services.rooms.currentMembership(roomId, bob.userId))).toBe("leave"));
    // The banned user cannot come back.
    const again = await carol.join(roomId);
    expect(again.status).toBe(403);
  });
});

describe("invites across servers", () => {
  it("an invite to a user of another server shows in their /sync, and they join through it", async () => {
    const roomId = await alice.createRoom({ preset: "private_chat", name: "Private" });
    const invited = await alice.call("POST", roomPath(roomId, "/invite"), { user_id: bob.userId });
    expect(invited.status, JSON.stringify(invited.json)).toBe(200);
    const s = await eventually(async () => {
      const r = await sync(hs2.url, bob);
      expect(r.rooms?.invite?.[roomId]).toBeDefined();
      return r;
    });
    const stripped = s.rooms.invite[roomId].invite_state.events;
    expect(stripped.find((e: any) => e.type === "m.room.name")?.content).toEqual({ name: "Private" });
    expect(stripped.find((e: any) => e.type === "m.room.member" && e.state_key === bob.userId)?.content.membership).toBe("invite");

    const joined = await bob.join(roomId);
    expect(joined.status, JSON.stringify(joined.json)).toBe(200);
    await eventually(async () => expect((await members(alice, roomId))[bob.userId]).toBe("join"));
    // An uninvited user of a third server cannot join the private room.
    const refused = await carol.call("POST", `/_matrix/client/v3/join/${enc(roomId)}?via=hs1.test`, {});
    expect(refused.status).toBe(403);
  });

  it("a rejected invite is a leave the inviting server sees, and leaves the invitee's /sync invite list", async () => {
    const roomId = await alice.createRoom({ preset: "private_chat" });
    expect((await alice.call("POST", roomPath(roomId, "/invite"), { user_id: carol.userId })).status).toBe(200);
    await eventually(async () => expect((await sync(hs3.url, carol)).rooms?.invite?.[roomId]).toBeDefined());
    const left = await carol.call("POST", roomPath(roomId, "/leave"), {});
    expect(left.status, JSON.stringify(left.json)).toBe(200);
    await eventually(async () => expect((await members(alice, roomId))[carol.userId]).toBe("leave"));
    const s = await sync(hs3.url, carol);
    expect(s.rooms?.invite?.[roomId]).toBeUndefined();
  });

  it("a user who joined over federation leaves, and the room's server sees it", async () => {
    const roomId = await alice.createRoom({ preset: "public_chat" });
    expect((await bob.call("POST", `/_matrix/client/v3/join/${enc(roomId)}?via=hs1.test`, {})).status).toBe(200);
    expect((await bob.call("POST", roomPath(roomId, "/leave"), {})).status).toBe(200);
    await eventually(async () => expect((await members(alice, roomId))[bob.userId]).toBe("leave"));
    // And joins again.
    expect((await bob.call("POST", `/_matrix/client/v3/join/${enc(roomId)}?via=hs1.test`, {})).status).toBe(200);
    await eventually(async () => expect((await members(alice, roomId))[bob.userId]).toBe("join"));
    await bob.send(roomId, { msgtype: "m.text", body: "back again" });
    await eventually(async () => expect(await bodies(alice, roomId)).toContain("back again"));
  });

  it("a user of another server knocks, sees the knock in /sync, and gets in when invited", async () => {
    const roomId = await alice.createRoom({ preset: "private_chat", name: "Knock here", initial_state: [{ type: "m.room.join_rules", state_key: "", content: { join_rule: "knock" } }] });
    const knocked = await bob.call("POST", `/_matrix/client/v3/knock/${enc(roomId)}?via=hs1.test`, { reason: "let me in" });
    expect(knocked.status, JSON.stringify(knocked.json)).toBe(200);
    await eventually(async () => expect((await members(alice, roomId))[bob.userId]).toBe("knock"));
    const s = await eventually(async () => {
      const r = await sync(hs2.url, bob);
      expect(r.rooms?.knock?.[roomId]).toBeDefined();
      return r;
    });
    expect(s.rooms.knock[roomId].knock_state.events.find((e: any) => e.type === "m.room.name")?.content).toEqual({ name: "Knock here" });
    // A knock is not a join: the room is still closed to him.
    expect((await bob.call("POST", `/_matrix/client/v3/join/${enc(roomId)}?via=hs1.test`, {})).status).toBe(403);
    expect((await alice.call("POST", roomPath(roomId, "/invite"), { user_id: bob.userId })).status).toBe(200);
    await eventually(async () => expect((await sync(hs2.url, bob)).rooms?.invite?.[roomId]).toBeDefined());
    expect((await bob.join(roomId)).status).toBe(200);
    await eventually(async () => expect((await members(alice, roomId))[bob.userId]).toBe("join"));
    // Knocking on a room whose join rule does not allow it is refused.
    const closed = await alice.createRoom({ preset: "private_chat" });
    expect((await carol.call("POST", `/_matrix/client/v3/knock/${enc(closed)}?via=hs1.test`, {})).status).toBe(403);
  });

  it("a user of another server joins a restricted room through their membership of an allowed room", async () => {
    const space = await alice.createRoom({ preset: "public_chat" });
    const restricted = await alice.createRoom({
      initial_state: [{ type: "m.room.join_rules", state_key: "", content: { join_rule: "restricted", allow: [{ type: "m.room_membership", room_id: space }] } }],
    });
    // Not in the allowed room yet: refused.
    expect((await carol.call("POST", `/_matrix/client/v3/join/${enc(restricted)}?via=hs1.test`, {})).status).toBe(403);
    expect((await carol.call("POST", `/_matrix/client/v3/join/${enc(space)}?via=hs1.test`, {})).status).toBe(200);
    const joined = await carol.call("POST", `/_matrix/client/v3/join/${enc(restricted)}?via=hs1.test`, {});
    expect(joined.status, JSON.stringify(joined.json)).toBe(200);
    await eventually(async () => expect((await members(alice, restricted))[carol.userId]).toBe("join"));
    const member = await alice.state(restricted, "m.room.member", carol.userId);
    expect(member.json.join_authorised_via_users_server).toBe(alice.userId);
  });
});

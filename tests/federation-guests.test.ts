// Guests in rooms shared with other servers.
// https://spec.matrix.org/latest/client-server-api/#guest-access: "If the m.room.guest_access event
// is changed to stop this from being the case, the server MUST set those users' m.room.member
// state to leave" — whichever server changed it.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Network, startNetwork } from "./federation-harness.ts";
import { request, type TestServer } from "./harness.ts";
import { type RoomUser, registerRoomUser, roomPath } from "./rooms-helpers.ts";

let net: Network;
let hs1: TestServer;
let hs2: TestServer;
let alice: RoomUser; // hs1
let bob: RoomUser; // hs2

const enc = encodeURIComponent;

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

async function registerGuest(base: string): Promise<{ userId: string; token: string }> {
  const res = await request(base, "POST", "/_matrix/client/v3/register?kind=guest", { body: {} });
  expect(res.status, JSON.stringify(res.json)).toBe(200);
  return { userId: res.json.user_id, token: res.json.access_token };
}

beforeAll(async () => {
  net = await startNetwork(2, { config: () => ({ allow_guest_access: true }) });
  [hs1, hs2] = net.servers as [TestServer, TestServer];
  [alice, bob] = await Promise.all([registerRoomUser(hs1.url, "alice"), registerRoomUser(hs2.url, "bob")]);
}, 120_000);

afterAll(async () => {
  await net?.destroy();
});

describe("guests and other servers", () => {
  it("a guest leaves when a user of another server stops guest access", async () => {
    const roomId = await alice.createRoom({
      preset: "public_chat",
      initial_state: [{ type: "m.room.guest_access", content: { guest_access: "can_join" } }],
      power_level_content_override: { users: { [bob.userId]: 50 } },
    });
    expect((await bob.call("POST", `/_matrix/client/v3/join/${enc(roomId)}?server_name=hs1.test`, {})).status).toBe(200);
    const guest = await registerGuest(hs1.url);
    const joined = await request(hs1.url, "POST", `/_matrix/client/v3/join/${enc(roomId)}`, { token: guest.token, body: {} });
    expect(joined.status, JSON.stringify(joined.json)).toBe(200);
    await eventually(async () => expect((await bob.state(roomId, "m.room.member", guest.userId)).json).toMatchObject({ membership: "join" }));

    const changed = await bob.call("PUT", roomPath(roomId, "/state/m.room.guest_access/"), { guest_access: "forbidden" });
    expect(changed.status, JSON.stringify(changed.json)).toBe(200);
    // hs1, the guest's server, makes its guest leave; the leave reaches hs2 too.
    await eventually(async () => expect((await alice.state(roomId, "m.room.member", guest.userId)).json).toMatchObject({ membership: "leave" }));
    await eventually(async () => expect((await bob.state(roomId, "m.room.member", guest.userId)).json).toMatchObject({ membership: "leave" }));
    expect((await alice.state(roomId, "m.room.member", bob.userId)).json).toMatchObject({ membership: "join" });
  });

  it("a guest accepts an invite to another server's room whose invite says guests can join, and no other", async () => {
    const guest = await registerGuest(hs1.url);
    const invitedTo = async (guestAccess: string) => {
      const roomId = await bob.createRoom({ preset: "private_chat", initial_state: [{ type: "m.room.guest_access", content: { guest_access: guestAccess } }] });
      const invited = await bob.call("POST", roomPath(roomId, "/invite"), { user_id: guest.userId });
      expect(invited.status, JSON.stringify(invited.json)).toBe(200);
      return roomId;
    };
    const open = await invitedTo("can_join");
    const accepted = await request(hs1.url, "POST", `/_matrix/client/v3/join/${enc(open)}`, { token: guest.token, body: {} });
    expect(accepted.status, JSON.stringify(accepted.json)).toBe(200);
    await eventually(async () => expect((await bob.state(open, "m.room.member", guest.userId)).json).toMatchObject({ membership: "join" }));

    const closed = await invitedTo("forbidden");
    const refused = await request(hs1.url, "POST", `/_matrix/client/v3/join/${enc(closed)}`, { token: guest.token, body: {} });
    expect(refused.status).toBe(403);
    expect(refused.json.errcode).toBe("M_FORBIDDEN");
    // Nor one it was not invited to: its guest access is unknown here.
    const publicRoom = await bob.createRoom({ preset: "public_chat", initial_state: [{ type: "m.room.guest_access", content: { guest_access: "can_join" } }] });
    const uninvited = await request(hs1.url, "POST", `/_matrix/client/v3/join/${enc(publicRoom)}?server_name=hs2.test`, { token: guest.token, body: {} });
    expect(uninvited.status).toBe(403);
  });
});

// A room blocked by an admin (Synapse's admin API, server/rooms/room-admin.ts) cannot be joined from
// another server either: make_join is refused, so the remote user's join fails with 403.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { registerUser, type TestUser } from "./accounts-helpers.ts";
import { type Network, startNetwork } from "./federation-harness.ts";
import { request, type TestServer } from "./harness.ts";
import { createRoom, enc } from "./sync-helpers.ts";

let net: Network;
let admin: TestUser;
let alice: TestUser;
let remote: TestUser;

beforeAll(async () => {
  net = await startNetwork(2);
  const [hs1, hs2] = net.servers as [TestServer, TestServer];
  [admin, alice, remote] = (await Promise.all([registerUser(hs1.url, "boss"), registerUser(hs1.url, "alice"), registerUser(hs2.url, "remi")])) as [TestUser, TestUser, TestUser];
  await hs1.services.accounts.setAdmin(admin.userId, true);
  // Two servers starting on a loaded CI machine (as tests/federation-rooms.test.ts allows).
}, 120_000);
afterAll(() => net.destroy());

describe("a blocked room over federation", () => {
  it("refuses another server's join while blocked, and lets it join once unblocked", async () => {
    const [hs1, hs2] = net.servers as [TestServer, TestServer];
    const roomId = await createRoom(hs1.url, alice, { preset: "public_chat" });
    const block = await request(hs1.url, "PUT", `/_synapse/admin/v1/rooms/${enc(roomId)}/block`, { token: admin.accessToken, body: { block: true } });
    expect(block.status, block.text).toBe(200);

    const join = () => request(hs2.url, "POST", `/_matrix/client/v3/join/${enc(roomId)}?server_name=${net.names[0]}`, { token: remote.accessToken, body: {} });
    const refused = await join();
    expect(refused.status, refused.text).toBe(403);
    const members = await request(hs1.url, "GET", `/_synapse/admin/v1/rooms/${enc(roomId)}/members`, { token: admin.accessToken });
    expect(members.json.members).toEqual([alice.userId]);

    await request(hs1.url, "PUT", `/_synapse/admin/v1/rooms/${enc(roomId)}/block`, { token: admin.accessToken, body: { block: false } });
    const accepted = await join();
    expect(accepted.status, accepted.text).toBe(200);
  });
});

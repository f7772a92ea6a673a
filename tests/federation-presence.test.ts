// Presence when servers start sharing a room: a remote user's join brings their presence to the
// room's server, and the presence of the room's members to theirs, whether or not it changed since
// (what Synapse does; sytest "New federated private chats get full presence information"). The
// existing members see the newcomer's presence in /sync, and the newcomer theirs.
// https://spec.matrix.org/latest/server-server-api/#presence
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { registerUser, type TestUser } from "./accounts-helpers.ts";
import { type Network, startNetwork } from "./federation-harness.ts";
import { request, type TestServer } from "./harness.ts";
import { createRoom, enc, sync } from "./sync-helpers.ts";

let net: Network;
let hs1: TestServer;
let hs2: TestServer;
let carol: TestUser; // hs1
let dave: TestUser; // hs2
beforeAll(async () => {
  net = await startNetwork(2);
  [hs1, hs2] = net.servers as [TestServer, TestServer];
  carol = await registerUser(hs1.url, "carol");
  dave = await registerUser(hs2.url, "dave");
}, 120_000);
afterAll(() => net?.destroy());

const setPresence = (server: TestServer, user: TestUser, status: string) =>
  request(server.url, "PUT", `/_matrix/client/v3/presence/${enc(user.userId)}/status`, { token: user.accessToken, body: { presence: "online", status_msg: status } });

/** Syncs until `user`'s /sync shows `of`'s presence with `status` (or fails after a while). */
async function seesPresence(server: TestServer, user: TestUser, of: TestUser, status: string, since: string) {
  let token = since;
  await vi.waitFor(
    async () => {
      const res = await sync(server.url, user, { since: token, timeout: 500 });
      token = res.next_batch;
      const event = (res.presence?.events ?? []).find((e: any) => e.sender === of.userId);
      expect(event?.content.status_msg).toBe(status);
    },
    { timeout: 10_000, interval: 50 },
  );
}

describe("presence when servers start sharing a room", () => {
  it("a remote join brings the joiner's presence to the room's members, and theirs to the joiner", async () => {
    // Both set their presence before they share anything: no server has a reason to send it yet.
    expect((await setPresence(hs1, carol, "carol's status")).status).toBe(200);
    expect((await setPresence(hs2, dave, "dave's status")).status).toBe(200);
    const roomId = await createRoom(hs1.url, carol, { preset: "public_chat" });
    const carolSince = (await sync(hs1.url, carol)).next_batch;
    const daveSince = (await sync(hs2.url, dave)).next_batch;

    const joined = await request(hs2.url, "POST", `/_matrix/client/v3/join/${enc(roomId)}?via=hs1.test`, { token: dave.accessToken, body: {} });
    expect(joined.status, JSON.stringify(joined.json)).toBe(200);

    await seesPresence(hs1, carol, dave, "dave's status", carolSince);
    await seesPresence(hs2, dave, carol, "carol's status", daveSince);
  }, 60_000);
});

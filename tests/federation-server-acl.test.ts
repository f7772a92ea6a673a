// A room's server ACL (m.room.server_acl) on what another server sends or asks about that room.
// https://spec.matrix.org/latest/server-server-api/#server-access-control-lists-acls
//
// As in federation-send.test.ts, rooms across servers are crafted until federated joins exist:
// alice's (hs1) join is written into the current state of bob's rooms on hs2.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { schema } from "../schema/db.ts";
import { registerUser, type TestUser } from "./accounts-helpers.ts";
import { type Network, startNetwork } from "./federation-harness.ts";
import { type TestServer, request } from "./harness.ts";
import { createRoom, enc, send } from "./sync-helpers.ts";

let net: Network;
let hs1: TestServer;
let hs2: TestServer;
let bob: TestUser; // @bob:hs2.test
let aclRoom: string; // denies hs1.test
let openRoom: string; // no ACL
let aclRoomEvent: string;
let openRoomEvent: string;
const alice = "@alice:hs1.test";
let txn = 0;

async function injectJoin(server: TestServer, room: string, userId: string) {
  await server.services.db
    .insert(schema.currentState)
    .values({ roomId: room, type: "m.room.member", stateKey: userId, eventId: `$injected-${room}-${userId}`, membership: "join" });
}

async function setAcl(room: string, content: Record<string, unknown>) {
  const res = await request(hs2.url, "PUT", `/_matrix/client/v3/rooms/${enc(room)}/state/m.room.server_acl/`, { token: bob.accessToken, body: content });
  expect(res.status).toBe(200);
}

function sendTxn(edus: unknown[]) {
  return hs1.services.federation.http.request("hs2.test", {
    method: "PUT",
    path: `/_matrix/federation/v1/send/acl-${++txn}`,
    body: { origin: "hs1.test", origin_server_ts: Date.now(), pdus: [], edus },
  });
}

const typingEdu = (room: string, typing: boolean) => ({ edu_type: "m.typing", content: { room_id: room, user_id: alice, typing } });

function typers(room: string): string[] {
  const typing = hs2.services.typing;
  return typing.typingIn([room], null, typing.position()).get(room) ?? [];
}

beforeAll(async () => {
  net = await startNetwork(2);
  [hs1, hs2] = net.servers as [TestServer, TestServer];
  bob = await registerUser(hs2.url, "bob");
  [aclRoom, openRoom] = await Promise.all([createRoom(hs2.url, bob, { preset: "public_chat" }), createRoom(hs2.url, bob, { preset: "public_chat" })]);
  [aclRoomEvent, openRoomEvent] = await Promise.all([send(hs2.url, bob, aclRoom), send(hs2.url, bob, openRoom)]);
  await injectJoin(hs2, aclRoom, alice);
  await injectJoin(hs2, openRoom, alice);
  await setAcl(aclRoom, { allow: ["*"], deny: ["hs1.test"], allow_ip_literals: false });
});
afterAll(() => net?.destroy());

describe("server ACLs on room EDUs", () => {
  it("ignores a typing notification from a denied server, and applies one for a room without an ACL", async () => {
    const res = await sendTxn([typingEdu(aclRoom, true), typingEdu(openRoom, true)]);
    expect(res.status).toBe(200);
    expect(typers(openRoom)).toEqual([alice]);
    expect(typers(aclRoom)).toEqual([]);
    await sendTxn([typingEdu(openRoom, false)]);
  });

  it("ignores every receipt for a room whose ACL denies the sending server", async () => {
    const receipt = (eventId: string) => ({ "m.read": { [alice]: { event_ids: [eventId], data: { ts: 1_700_000_000_000 } } } });
    const res = await sendTxn([{ edu_type: "m.receipt", content: { [aclRoom]: receipt(aclRoomEvent), [openRoom]: receipt(openRoomEvent) } }]);
    expect(res.status).toBe(200);
    const receipts = hs2.services.receipts;
    const inRoom = async (room: string) => JSON.stringify((await receipts.receiptsIn([room], 0, Number.MAX_SAFE_INTEGER, bob.userId)).get(room) ?? {});
    expect(await inRoom(openRoom)).toContain(alice);
    expect(await inRoom(aclRoom)).not.toContain(alice);
  });

  it("applies them again once the ACL allows the server", async () => {
    await setAcl(aclRoom, { allow: ["hs1.test", "hs2.test"] });
    await sendTxn([typingEdu(aclRoom, true)]);
    expect(typers(aclRoom)).toEqual([alice]);
    await sendTxn([typingEdu(aclRoom, false)]);
    await setAcl(aclRoom, { allow: ["*"], deny: ["hs1.test"], allow_ip_literals: false });
  });
});

describe("assertServerAllowed (for requests that name a room)", () => {
  it("refuses a denied server with 403 M_FORBIDDEN, whatever its port", async () => {
    const acl = hs2.services.federation.acl;
    for (const origin of ["hs1.test", "HS1.test:8448", "127.0.0.1:8448"]) {
      await expect(acl.assertServerAllowed(aclRoom, origin), origin).rejects.toMatchObject({ status: 403, errcode: "M_FORBIDDEN" });
    }
    await expect(acl.assertServerAllowed(aclRoom, "hs3.test")).resolves.toBeUndefined();
  });

  it("allows every server in a room without an ACL, and in a room it does not know", async () => {
    const acl = hs2.services.federation.acl;
    await expect(acl.assertServerAllowed(openRoom, "hs1.test")).resolves.toBeUndefined();
    await expect(acl.assertServerAllowed("!unknown:hs2.test", "hs1.test")).resolves.toBeUndefined();
  });
});

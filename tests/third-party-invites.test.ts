// Third-party invites end to end: inviting by e-mail address through an identity server (a small
// mock, tests/identity-server-mock.ts), the m.room.third_party_invite event, /3pid/onbind, /join
// with third_party_signed, and the exchange between two servers when the invitee's server is not
// in the room.
// https://spec.matrix.org/latest/client-server-api/#third-party-invites
// https://spec.matrix.org/latest/server-server-api/#third-party-invites
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { signJson } from "../federation/protocol/signing.ts";
import { ed25519Key } from "./e2ee-helpers.ts";
import { type Network, startNetwork } from "./federation-harness.ts";
import { type TestServer, request } from "./harness.ts";
import { ACCESS_TOKEN, type Json, MockIdentityServer } from "./identity-server-mock.ts";
import { type RoomUser, registerRoomUser, roomPath } from "./rooms-helpers.ts";
import { opensslMissing } from "./self-signed.ts";

const missing = await opensslMissing();
let net: Network;
let hs1: TestServer;
let hs2: TestServer;
let ids: MockIdentityServer;
let dir: string;
let n = 0;

const inviteBody = (address: string, extra: Json = {}) => ({ id_server: ids.name, id_access_token: ACCESS_TOKEN, medium: "email", address, ...extra });
const freshAddress = () => `person${n++}@example.org`;

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

async function membership(user: RoomUser, roomId: string, target: string): Promise<Json | undefined> {
  const res = await user.state(roomId, "m.room.member", target);
  return res.status === 200 ? res.json : undefined;
}

/** A private room of `owner` with a pending third-party invite for `address`; returns the room and token. */
async function roomWithPendingInvite(owner: RoomUser, address: string): Promise<{ roomId: string; token: string }> {
  const roomId = await owner.createRoom({ preset: "private_chat" });
  const res = await owner.call("POST", roomPath(roomId, "/invite"), inviteBody(address));
  expect(res.status, JSON.stringify(res.json)).toBe(200);
  const state = await owner.call("GET", roomPath(roomId, "/state"));
  const invite = state.json.find((e: Json) => e.type === "m.room.third_party_invite");
  return { roomId, token: invite.state_key };
}

describe.skipIf(missing !== undefined)("third-party invites", () => {
  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), "parley-3pid-"));
    ids = await MockIdentityServer.start(dir);
    // hs1 and hs2 may reach the mock on loopback; hs3 follows the default rules.
    net = await startNetwork(3, { config: (i) => (i < 2 ? { identity_servers_insecure: ids.name } : {}) });
    [hs1, hs2] = net.servers as [TestServer, TestServer];
  }, 120_000);

  afterAll(async () => {
    await net?.destroy();
    await ids?.close();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it("invites the user a bound 3pid belongs to", async () => {
    const [alice, bob] = await Promise.all([registerRoomUser(hs1.url, "a1"), registerRoomUser(hs1.url, "b1")]);
    const address = freshAddress();
    await ids.bind(address, bob.userId);
    const roomId = await alice.createRoom({ preset: "private_chat" });
    const res = await alice.call("POST", roomPath(roomId, "/invite"), inviteBody(address));
    expect(res.status, JSON.stringify(res.json)).toBe(200);
    expect((await membership(alice, roomId, bob.userId))?.membership).toBe("invite");
    // The lookup went through hash_details and a hashed lookup, with the client's token.
    const lookups = ids.requests.filter((r) => r.path === "/_matrix/identity/v2/lookup");
    expect(lookups.at(-1)?.auth).toBe(`Bearer ${ACCESS_TOKEN}`);
    expect(lookups.at(-1)?.body?.addresses[0]).not.toContain("@");
    expect((await bob.join(roomId)).status).toBe(200);
  });

  it("invites bound 3pids given in invite_3pid of createRoom", async () => {
    const [alice, bob] = await Promise.all([registerRoomUser(hs1.url, "a2"), registerRoomUser(hs1.url, "b2")]);
    const address = freshAddress();
    await ids.bind(address, bob.userId);
    const roomId = await alice.createRoom({ invite_3pid: [inviteBody(address)] });
    expect((await membership(alice, roomId, bob.userId))?.membership).toBe("invite");
  });

  it("stores the invite of an unbound 3pid and turns it into an invite once it is bound", async () => {
    const [alice, bob] = await Promise.all([registerRoomUser(hs1.url, "a3"), registerRoomUser(hs1.url, "b3")]);
    const address = freshAddress();
    const { roomId, token } = await roomWithPendingInvite(alice, address);
    const stored = ids.invites.find((i) => i.token === token)!;
    expect(stored).toMatchObject({ medium: "email", address, room_id: roomId, sender: alice.userId, room_join_rules: "invite" });
    const event = await alice.state(roomId, "m.room.third_party_invite", token);
    expect(event.json).toEqual({
      display_name: "B***@example.org",
      public_key: ids.key.publicKeyBase64,
      key_validity_url: `https://${ids.name}/_matrix/identity/v2/pubkey/isvalid`,
      public_keys: [
        { public_key: ids.key.publicKeyBase64, key_validity_url: `https://${ids.name}/_matrix/identity/v2/pubkey/isvalid` },
        { public_key: ids.ephemeral.publicKeyBase64, key_validity_url: `https://${ids.name}/_matrix/identity/v2/pubkey/isvalid` },
      ],
    });
    expect((await bob.join(roomId)).status).toBe(403);

    const bound = await ids.bind(address, bob.userId, hs1.url);
    expect(bound?.status, JSON.stringify(bound?.json)).toBe(200);
    const member = await membership(alice, roomId, bob.userId);
    expect(member).toMatchObject({ membership: "invite", third_party_invite: { display_name: "B***@example.org", signed: { mxid: bob.userId, token } } });
    // The invite shows who invited, with the inviter's membership in its stripped state.
    const synced = await bob.call("GET", "/_matrix/client/v3/sync");
    const stripped = synced.json.rooms.invite[roomId].invite_state.events;
    expect(stripped.find((e: Json) => e.type === "m.room.member" && e.state_key === alice.userId)?.content.membership).toBe("join");
    expect((await bob.join(roomId)).status).toBe(200);
    expect((await membership(alice, roomId, bob.userId))?.membership).toBe("join");
  });

  it("turns the invite into an invite after the inviter left the room", async () => {
    const [alice, carol, bob] = await Promise.all([registerRoomUser(hs1.url, "a4"), registerRoomUser(hs1.url, "c4"), registerRoomUser(hs1.url, "b4")]);
    const address = freshAddress();
    const { roomId } = await roomWithPendingInvite(alice, address);
    expect((await alice.call("POST", roomPath(roomId, "/invite"), { user_id: carol.userId })).status).toBe(200);
    expect((await carol.join(roomId)).status).toBe(200);
    expect((await alice.call("POST", roomPath(roomId, "/leave"), {})).status).toBe(200);
    expect((await ids.bind(address, bob.userId, hs1.url))?.status).toBe(200);
    expect((await bob.join(roomId)).status).toBe(200);
    expect((await membership(carol, roomId, bob.userId))?.membership).toBe("join");
  });

  it("joins with third_party_signed, signed by any key of the invite", async () => {
    const [alice, bob] = await Promise.all([registerRoomUser(hs1.url, "a5"), registerRoomUser(hs1.url, "b5")]);
    const { roomId, token } = await roomWithPendingInvite(alice, freshAddress());
    // Signed with the ephemeral key under the key ID "ed25519:0", as sytest's identity server does.
    const signed = signJson({ mxid: bob.userId, sender: alice.userId, token }, ids.name, { ...ids.ephemeral, keyId: "ed25519:0" });
    const res = await bob.call("POST", roomPath(roomId, "/join"), { third_party_signed: signed });
    expect(res.status, JSON.stringify(res.json)).toBe(200);
    expect((await membership(alice, roomId, bob.userId))?.membership).toBe("join");
  });

  it("refuses third_party_signed signed for someone else, or not by the invite's keys", async () => {
    const [alice, bob, eve] = await Promise.all([registerRoomUser(hs1.url, "a6"), registerRoomUser(hs1.url, "b6"), registerRoomUser(hs1.url, "e6")]);
    const { roomId, token } = await roomWithPendingInvite(alice, freshAddress());
    const forBob = signJson({ mxid: bob.userId, sender: alice.userId, token }, ids.name, ids.key);
    expect((await eve.call("POST", roomPath(roomId, "/join"), { third_party_signed: forBob })).status).toBe(403);
    const stranger = ed25519Key("0");
    const forged = signJson({ mxid: eve.userId, sender: alice.userId, token }, ids.name, stranger);
    const res = await eve.call("POST", roomPath(roomId, "/join"), { third_party_signed: forged });
    expect(res.status).toBe(403);
    expect(res.json.errcode).toBe("M_FORBIDDEN");
    expect(await membership(alice, roomId, eve.userId)).toBeUndefined();
    // Malformed: 400, never a 500.
    const bad = await eve.call("POST", roomPath(roomId, "/join"), { third_party_signed: { mxid: eve.userId } });
    expect(bad.status).toBe(400);
  });

  it("refuses a bound invite signed with keys the room's invite does not have", async () => {
    const [alice, bob] = await Promise.all([registerRoomUser(hs1.url, "a7"), registerRoomUser(hs1.url, "b7")]);
    const address = freshAddress();
    const { roomId } = await roomWithPendingInvite(alice, address);
    const oldKey = ids.key;
    ids.rotateKeys();
    try {
      const res = await ids.bind(address, bob.userId, hs1.url);
      expect(res?.status).toBe(403);
    } finally {
      ids.key = oldKey;
      ids.revalidate();
    }
    expect(await membership(alice, roomId, bob.userId)).toBeUndefined();
    expect((await bob.join(roomId)).status).toBe(403);
  });

  it("refuses an invite signed by a key the identity server has revoked", async () => {
    const [alice, bob] = await Promise.all([registerRoomUser(hs1.url, "a8"), registerRoomUser(hs1.url, "b8")]);
    const address = freshAddress();
    const { roomId } = await roomWithPendingInvite(alice, address);
    const res = await ids.bind(address, bob.userId, hs1.url, () => ids.valid.clear());
    ids.revalidate();
    expect(res?.status).toBe(403);
    expect(ids.requests.some((r) => r.path === "/_matrix/identity/v2/pubkey/isvalid")).toBe(true);
    expect(await membership(alice, roomId, bob.userId)).toBeUndefined();
  });

  it("refuses an invite whose key validity cannot be checked", async () => {
    const [alice, bob] = await Promise.all([registerRoomUser(hs1.url, "a9"), registerRoomUser(hs1.url, "b9")]);
    const address = freshAddress();
    const roomId = await alice.createRoom({ preset: "private_chat" });
    // An invite whose key_validity_url points at a port nothing listens on.
    const key = ed25519Key("0");
    const token = "unreachable-token";
    const put = await alice.setState(roomId, "m.room.third_party_invite", {
      display_name: "x",
      public_key: key.publicKeyBase64,
      key_validity_url: "https://127.0.0.1:1/_matrix/identity/v2/pubkey/isvalid",
    }, token);
    expect(put.status).toBe(200);
    const signed = signJson({ mxid: bob.userId, token }, ids.name, key);
    const res = await request(hs1.url, "POST", "/_matrix/federation/v1/3pid/onbind", {
      body: { medium: "email", address, mxid: bob.userId, invites: [{ medium: "email", address, mxid: bob.userId, room_id: roomId, sender: alice.userId, signed }] },
    });
    expect(res.status).toBe(502);
    expect(await membership(alice, roomId, bob.userId)).toBeUndefined();
  });

  it("checks the inviter's power level before storing an invite", async () => {
    const [alice, bob] = await Promise.all([registerRoomUser(hs1.url, "a10"), registerRoomUser(hs1.url, "b10")]);
    const roomId = await alice.createRoom({ preset: "private_chat", power_level_content_override: { invite: 50 } });
    expect((await alice.call("POST", roomPath(roomId, "/invite"), { user_id: bob.userId })).status).toBe(200);
    expect((await bob.join(roomId)).status).toBe(200);
    const before = ids.invites.length;
    const res = await bob.call("POST", roomPath(roomId, "/invite"), inviteBody(freshAddress()));
    expect(res.status).toBe(403);
    expect(ids.invites.length).toBe(before);
    // Not in the room at all: 403 too.
    const outsider = await registerRoomUser(hs1.url, "o10");
    expect((await outsider.call("POST", roomPath(roomId, "/invite"), inviteBody(freshAddress()))).status).toBe(403);
  });

  it("answers bad requests with 400", async () => {
    const alice = await registerRoomUser(hs1.url, "a11");
    const roomId = await alice.createRoom({});
    const noToken = await alice.call("POST", roomPath(roomId, "/invite"), { id_server: ids.name, medium: "email", address: "x@example.org" });
    expect(noToken.status).toBe(400);
    const badServer = await alice.call("POST", roomPath(roomId, "/invite"), inviteBody("x@example.org", { id_server: "evil.example/x?y" }));
    expect(badServer.status).toBe(400);
    const badCreate = await alice.call("POST", "/_matrix/client/v3/createRoom", { invite_3pid: [{ medium: "email" }] });
    expect(badCreate.status).toBe(400);
    const badBind = await request(hs1.url, "POST", "/_matrix/federation/v1/3pid/onbind", { body: { invites: [{ nope: 1 }] } });
    expect(badBind.status).toBe(400);
    // Invites for users of other servers are not ours to act on.
    const other = await request(hs1.url, "PUT", "/_matrix/federation/v1/3pid/onbind", {
      body: { medium: "email", address: "x", mxid: "@x:hs2.test", invites: [{ mxid: "@x:hs2.test", room_id: roomId, sender: alice.userId, signed: { mxid: "@x:hs2.test", token: "t", signatures: {} } }] },
    });
    expect(other.status).toBe(403);
  });

  it("refuses identity servers on loopback unless configured", async () => {
    const alice = await registerRoomUser(net.servers[2]!.url, "a12");
    const roomId = await alice.createRoom({});
    const before = ids.requests.length;
    const res = await alice.call("POST", roomPath(roomId, "/invite"), inviteBody(freshAddress()));
    expect(res.status).toBe(502);
    expect(ids.requests.length).toBe(before);
  });

  it("exchanges the invite with the room's server when the invitee's server is not in the room", async () => {
    const [alice, bob] = await Promise.all([registerRoomUser(hs1.url, "a13"), registerRoomUser(hs2.url, "b13")]);
    const address = freshAddress();
    const { roomId, token } = await roomWithPendingInvite(alice, address);
    const bound = await ids.bind(address, bob.userId, hs2.url);
    expect(bound?.status, JSON.stringify(bound?.json)).toBe(200);
    expect(await membership(alice, roomId, bob.userId)).toMatchObject({ membership: "invite", third_party_invite: { display_name: "B***@example.org", signed: { token } } });
    await eventually(async () => expect((await bob.join(roomId)).status).toBe(200));
    await eventually(async () => expect((await membership(alice, roomId, bob.userId))?.membership).toBe("join"));
  });

  it("issues the invite itself, for the other server's inviter, when the invitee's server is in the room", async () => {
    const [alice, carol, bob] = await Promise.all([registerRoomUser(hs1.url, "a14"), registerRoomUser(hs2.url, "c14"), registerRoomUser(hs2.url, "b14")]);
    const address = freshAddress();
    const { roomId } = await roomWithPendingInvite(alice, address);
    expect((await alice.call("POST", roomPath(roomId, "/invite"), { user_id: carol.userId })).status).toBe(200);
    await eventually(async () => expect((await carol.join(roomId)).status).toBe(200));
    await eventually(async () => expect((await carol.state(roomId, "m.room.third_party_invite", ids.invites.at(-1)!.token)).status).toBe(200));
    const bound = await ids.bind(address, bob.userId, hs2.url);
    expect(bound?.status, JSON.stringify(bound?.json)).toBe(200);
    await eventually(async () => expect((await membership(carol, roomId, bob.userId))?.membership).toBe("invite"));
    // hs2 built and signed it (no /exchange_third_party_invite), and hs1 accepted it.
    await eventually(async () =>
      expect(await membership(alice, roomId, bob.userId)).toMatchObject({ membership: "invite", third_party_invite: { signed: { mxid: bob.userId } } }),
    );
    await eventually(async () => expect((await bob.join(roomId)).status).toBe(200));
    await eventually(async () => expect((await membership(alice, roomId, bob.userId))?.membership).toBe("join"));
  });

  it("checks what another server asks with /exchange_third_party_invite", async () => {
    const [alice, local] = await Promise.all([registerRoomUser(hs1.url, "a16"), registerRoomUser(hs1.url, "l16")]);
    const bob = await registerRoomUser(hs2.url, "b16");
    const { roomId, token } = await roomWithPendingInvite(alice, freshAddress());
    const ask = (body: Json, room = roomId) =>
      hs2.services.federation.http.request("hs1.test", {
        method: "PUT",
        path: `/_matrix/federation/v1/exchange_third_party_invite/${encodeURIComponent(room)}`,
        body,
      });
    const event = (target: string, signed: Json, extra: Json = {}) => ({
      type: "m.room.member",
      room_id: roomId,
      sender: alice.userId,
      state_key: target,
      content: { membership: "invite", third_party_invite: { display_name: "x", signed } },
      ...extra,
    });
    const good = signJson({ mxid: bob.userId, token }, ids.name, ids.key);
    expect((await ask({ ...event(bob.userId, good), content: { membership: "join", third_party_invite: { signed: good } } })).status).toBe(400);
    expect((await ask(event(bob.userId, good), "!other:hs1.test")).status).toBe(400);
    // For a user of another server than the one asking, or an inviter who is not ours: refused.
    const forLocal = signJson({ mxid: local.userId, token }, ids.name, ids.key);
    expect((await ask(event(local.userId, forLocal))).status).toBe(403);
    expect((await ask(event(bob.userId, good, { sender: bob.userId }))).status).toBe(403);
    // Signed by a key the room's invite does not have.
    const forged = signJson({ mxid: bob.userId, token }, ids.name, ed25519Key("0"));
    expect((await ask(event(bob.userId, forged))).status).toBe(403);
    expect(await membership(alice, roomId, bob.userId)).toBeUndefined();
    const res = await ask(event(bob.userId, good));
    expect(res.status, JSON.stringify(res.body)).toBe(200);
    expect((await membership(alice, roomId, bob.userId))?.membership).toBe("invite");
  });
});

// Transactions between two Parley servers (`PUT /send/{txnId}`) and the room EDUs they carry.
// https://spec.matrix.org/latest/server-server-api/#transactions
// https://spec.matrix.org/latest/server-server-api/#typing-notifications
// https://spec.matrix.org/latest/server-server-api/#receipts
// https://spec.matrix.org/latest/server-server-api/#presence
//
// The room both servers' users are in is joined over federation: bob creates it on hs2, alice (hs1)
// joins it through hs2.
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { schema } from "../schema/db.ts";
import { signEvent } from "../federation/protocol/event-signing.ts";
import { computeEventId } from "../federation/protocol/event-hashes.ts";
import { signingKeyFromSeed } from "../federation/protocol/signing.ts";
import { xMatrixAuthorization } from "../federation/transport/request-auth.ts";
import { registerUser, type TestUser } from "./accounts-helpers.ts";
import { type Network, startNetwork } from "./federation-harness.ts";
import type { TestServer } from "./harness.ts";
import { request } from "./harness.ts";
import { createRoom, enc, send, sync } from "./sync-helpers.ts";

let net: Network;
let hs1: TestServer;
let hs2: TestServer;
let bob: TestUser; // @bob:hs2.test, in `roomId` on hs2
let roomId: string;
let eventId: string; // bob's message in the room
const alice = "@alice:hs1.test";
let txn = 0;

/** hs1 sends hs2 a signed transaction. */
function sendTxn(body: { pdus?: unknown[]; edus?: unknown[]; origin?: string }, txnId = `txn${++txn}`) {
  return hs1.services.federation.http.request("hs2.test", {
    method: "PUT",
    path: `/_matrix/federation/v1/send/${enc(txnId)}`,
    body: { origin: "hs1.test", origin_server_ts: Date.now(), pdus: [], ...body },
  });
}

const typingEdu = (userId: string, typing: boolean, room = roomId) => ({ edu_type: "m.typing", content: { room_id: room, user_id: userId, typing } });

function typersOnHs2(room = roomId): string[] {
  const typing = hs2.services.typing;
  return typing.typingIn([room], null, typing.position()).get(room) ?? [];
}

beforeAll(async () => {
  net = await startNetwork(2);
  [hs1, hs2] = net.servers as [TestServer, TestServer];
  bob = await registerUser(hs2.url, "bob");
  roomId = await createRoom(hs2.url, bob, { preset: "public_chat" });
  eventId = await send(hs2.url, bob, roomId);
  const aliceUser = await registerUser(hs1.url, "alice");
  const joined = await request(hs1.url, "POST", `/_matrix/client/v3/join/${enc(roomId)}?via=hs2.test`, { token: aliceUser.accessToken, body: {} });
  expect(joined.status, JSON.stringify(joined.json)).toBe(200);
  await vi.waitFor(async () => expect(await hs2.services.rooms.currentMembership(roomId, alice)).toBe("join"), { timeout: 10_000 });
}, 120_000);
afterAll(() => net?.destroy());

describe("PUT /send/{txnId}", () => {
  it("delivers an EDU of a signed transaction to local /sync", async () => {
    const before = await sync(hs2.url, bob, { setPresence: "offline" });
    const res = await sendTxn({ edus: [typingEdu(alice, true)] });
    expect(res).toMatchObject({ status: 200, body: { pdus: {} } });
    const after = await sync(hs2.url, bob, { since: before.next_batch, timeout: 5_000, setPresence: "offline" });
    const typing = after.rooms.join[roomId].ephemeral.events.find((e: any) => e.type === "m.typing");
    expect(typing.content.user_ids).toEqual([alice]);
    await sendTxn({ edus: [typingEdu(alice, false)] });
    expect(typersOnHs2()).toEqual([]);
  });

  it("answers a replayed transaction the same and delivers nothing twice, concurrent duplicates included", async () => {
    const pdu = { room_id: "!nowhere:hs1.test", type: "m.room.message", event_id: "$v1-style:hs1.test" };
    const start = await sendTxn({ pdus: [pdu], edus: [typingEdu(alice, true)] }, "replayed-start");
    expect(start.body).toEqual({ pdus: { [pdu.event_id]: { error: expect.stringMatching(/unknown room/i) } } });
    await sendTxn({ edus: [typingEdu(alice, false)] }, "replayed-stop");
    const position = hs2.services.typing.position();
    const again = await sendTxn({ pdus: [pdu], edus: [typingEdu(alice, true)] }, "replayed-start");
    expect({ status: again.status, body: again.body }).toEqual({ status: start.status, body: start.body });
    expect(hs2.services.typing.position()).toBe(position);
    expect(typersOnHs2()).toEqual([]);

    const both = await Promise.all([1, 2, 3].map(() => sendTxn({ edus: [typingEdu(alice, true)] }, "concurrent")));
    expect(both.map((r) => r.status)).toEqual([200, 200, 200]);
    expect(hs2.services.typing.position()).toBe(position + 1);
    await sendTxn({ edus: [typingEdu(alice, false)] });
  });

  it("refuses more than 50 PDUs or 100 EDUs with 400 M_BAD_JSON, and delivers none of them", async () => {
    const position = hs2.services.typing.position();
    const pdus = await sendTxn({ pdus: Array.from({ length: 51 }, () => ({})) });
    expect(pdus).toMatchObject({ status: 400, body: { errcode: "M_BAD_JSON" } });
    const edus = await sendTxn({ edus: Array.from({ length: 101 }, () => typingEdu(alice, true)) });
    expect(edus).toMatchObject({ status: 400, body: { errcode: "M_BAD_JSON" } });
    expect(hs2.services.typing.position()).toBe(position);
    expect((await sendTxn({ pdus: Array.from({ length: 50 }, () => ({})), edus: Array.from({ length: 100 }, () => ({})) })).status).toBe(200);
  });

  it("refuses unsigned and forged transactions with 401, and a body naming another origin with 403", async () => {
    const path = "/_matrix/federation/v1/send/forged";
    const body = { origin: "hs1.test", origin_server_ts: Date.now(), pdus: [], edus: [typingEdu(alice, true)] };
    const forgedKey = signingKeyFromSeed(new Uint8Array(32).fill(7), hs1.services.signingKey.keyId);
    const forged = xMatrixAuthorization({ method: "PUT", uri: path, origin: "hs1.test", destination: "hs2.test", content: body }, forgedKey);
    for (const headers of [{}, { Authorization: forged }] as Record<string, string>[]) {
      const res = await request(hs2.url, "PUT", path, { body, headers });
      expect(res.status).toBe(401);
      expect(res.json.errcode).toBe("M_UNAUTHORIZED");
    }
    const other = await sendTxn({ origin: "hs3.test", edus: [typingEdu(alice, true)] });
    expect(other).toMatchObject({ status: 403, body: { errcode: "M_FORBIDDEN" } });
    expect(typersOnHs2()).toEqual([]);
  });

  it("ignores unknown, malformed and failing EDUs and applies the others", async () => {
    hs2.services.federation.edus.register("org.example.fails", async () => {
      throw new Error("this handler always fails");
    });
    const res = await sendTxn({
      edus: [
        { edu_type: "org.example.unknown", content: { anything: 1 } },
        { edu_type: "org.example.fails", content: {} },
        { edu_type: "m.typing", content: { room_id: 5 } },
        { edu_type: "m.receipt", content: { [roomId]: "not an object" } },
        "not an EDU",
        JSON.parse('{"edu_type": "m.receipt", "content": {"__proto__": {"m.read": {"__proto__": {"event_ids": ["$x"]}}}}}'),
        JSON.parse('{"edu_type": "m.presence", "content": {"push": [{"user_id": "__proto__", "presence": "online"}]}}'),
        typingEdu(alice, true),
      ],
    });
    expect(res.status).toBe(200);
    expect(typersOnHs2()).toEqual([alice]);
    expect(({} as Record<string, unknown>)["m.read"]).toBeUndefined();
    await sendTxn({ edus: [typingEdu(alice, false)] });
  });

  it("forgets transactions a day after they arrived", async () => {
    const t = schema.federationInboundTxns;
    const day = 24 * 3600_000;
    await hs2.services.db.insert(t).values([
      { origin: "hs1.test", txnId: "old", responseJson: '{"pdus":{}}', receivedTs: Date.now() - day - 60_000 },
      { origin: "hs1.test", txnId: "recent", responseJson: '{"pdus":{}}', receivedTs: Date.now() - day + 60_000 },
    ]);
    await hs2.services.federation.inbound.prune();
    const left = await hs2.services.db.select({ txnId: t.txnId }).from(t);
    expect(left.map((r) => r.txnId)).toContain("recent");
    expect(left.map((r) => r.txnId)).not.toContain("old");
  });

  it("answers a PDU of an unknown room with a per-PDU error and still applies the rest", async () => {
    const key = hs1.services.signingKey;
    const base = { auth_events: [], prev_events: [], depth: 5, origin_server_ts: Date.now(), sender: alice, type: "m.room.message", content: { body: "hi", msgtype: "m.text" } };
    const unknownRoom = signEvent("10", { ...base, room_id: "!nowhere:hs1.test" }, "hs1.test", key);
    const knownRoom = signEvent("10", { ...base, room_id: roomId }, "hs1.test", key);
    const forged = signEvent("10", { ...base, room_id: roomId, content: { body: "forged", msgtype: "m.text" } }, "hs1.test", signingKeyFromSeed(new Uint8Array(32).fill(9), key.keyId));
    const res = await sendTxn({ pdus: [unknownRoom, knownRoom, forged], edus: [typingEdu(alice, true)] });
    expect(res.status).toBe(200);
    const results = (res.body as any).pdus;
    expect(results[computeEventId("10", unknownRoom)].error).toMatch(/unknown room/i);
    // Checked, then refused by the room: it names no prev_events.
    expect(results[computeEventId("10", knownRoom)].error).toMatch(/prev_events/);
    expect(results[computeEventId("10", forged)].error).toMatch(/signature/);
    expect(typersOnHs2()).toEqual([alice]);
    await sendTxn({ edus: [typingEdu(alice, false)] });
  });

  it("checks a full transaction of 50 PDUs at once and answers each under its event ID", async () => {
    const key = hs1.services.signingKey;
    const base = { auth_events: [], prev_events: [], depth: 5, sender: alice, type: "m.room.message", room_id: roomId };
    const pdus = Array.from({ length: 50 }, (_, i) =>
      signEvent("10", { ...base, origin_server_ts: Date.now() + i, content: { body: `pdu ${i}`, msgtype: "m.text" } }, "hs1.test", key),
    );
    const forged = { ...pdus[7]!, depth: 6 };
    const tampered = { ...pdus[9]!, content: { body: "not what was hashed", msgtype: "m.text" } };
    const sent = pdus.map((p, i) => (i === 7 ? forged : i === 9 ? tampered : p));
    const res = await sendTxn({ pdus: sent });
    expect(res.status).toBe(200);
    const results = (res.body as any).pdus;
    expect(Object.keys(results)).toHaveLength(50);
    expect(results[computeEventId("10", forged)].error).toMatch(/signature .* does not verify/);
    // The others passed the checks (a content hash mismatch keeps the event, redacted, under the
    // same event ID): whatever the next step answers, it is not a check's refusal.
    for (const [i, p] of pdus.entries()) {
      if (i !== 7) expect(results[computeEventId("10", p)].error ?? "").not.toMatch(/signature|invalid PDU/);
    }
  });

  it("fetches keys only of the servers that must sign a PDU, whatever other signatures it carries", async () => {
    const key = hs1.services.signingKey;
    const base = { auth_events: [], prev_events: [], depth: 5, origin_server_ts: Date.now(), sender: alice, type: "m.room.message", content: { body: "x", msgtype: "m.text" } };
    const pdu = signEvent("10", { ...base, room_id: roomId }, "hs1.test", key);
    const decorated = { ...pdu, signatures: { ...pdu.signatures, "elsewhere.test": { "ed25519:a": "AAAA" } } };
    const verifyKey = vi.spyOn(hs2.services.federation.keys, "verifyKey");
    try {
      expect((await sendTxn({ pdus: [decorated] })).status).toBe(200);
      // (the request's own X-Matrix signature is checked with hs1's key too)
      expect(new Set(verifyKey.mock.calls.map(([server]) => server))).toEqual(new Set(["hs1.test"]));
    } finally {
      verifyKey.mockRestore();
    }
  });
});

describe("room EDUs from another server", () => {
  it("ignores typing for a user of another server, and for a user not joined to the room", async () => {
    const position = hs2.services.typing.position();
    await sendTxn({ edus: [typingEdu("@carol:hs3.test", true), typingEdu("@dave:hs1.test", true), typingEdu(bob.userId, true)] });
    expect(hs2.services.typing.position()).toBe(position);
    expect(typersOnHs2()).toEqual([]);
  });

  it("applies a read receipt of a joined remote user, shown in /sync, and ignores one for another server's user", async () => {
    const before = await sync(hs2.url, bob, { setPresence: "offline" });
    const receipt = (userId: string) => ({ event_ids: [eventId], data: { ts: 1_700_000_000_000 } });
    const res = await sendTxn({
      edus: [{ edu_type: "m.receipt", content: { [roomId]: { "m.read": { [alice]: receipt(alice), [bob.userId]: receipt(bob.userId) } } } }],
    });
    expect(res.status).toBe(200);
    const after = await sync(hs2.url, bob, { since: before.next_batch, timeout: 5_000, setPresence: "offline" });
    const event = after.rooms.join[roomId].ephemeral.events.find((e: any) => e.type === "m.receipt");
    expect(event.content[eventId]["m.read"]).toEqual({ [alice]: { ts: 1_700_000_000_000 } });
  });

  it("applies presence of the sending server's users only, shown to those who share a room", async () => {
    const before = await sync(hs2.url, bob, { setPresence: "offline" });
    const push = [
      { user_id: alice, presence: "unavailable", last_active_ago: 5_000, status_msg: "away" },
      { user_id: "@mallory:hs3.test", presence: "online", last_active_ago: 0 },
    ];
    expect((await sendTxn({ edus: [{ edu_type: "m.presence", content: { push } }] })).status).toBe(200);
    const after = await sync(hs2.url, bob, { since: before.next_batch, timeout: 5_000, setPresence: "offline" });
    const events = after.presence.events;
    expect(events.map((e: any) => e.sender)).toEqual([alice]);
    expect(events[0].content).toMatchObject({ presence: "unavailable", status_msg: "away" });
    expect(events[0].content.last_active_ago).toBeGreaterThanOrEqual(5_000);
  });
});

describe("room EDUs to other servers", () => {
  it("sends a local user's typing to the servers of the room's members, which show it", async () => {
    const res = await request(hs2.url, "PUT", `/_matrix/client/v3/rooms/${enc(roomId)}/typing/${enc(bob.userId)}`, {
      token: bob.accessToken,
      body: { typing: true, timeout: 30_000 },
    });
    expect(res.status).toBe(200);
    const typing = hs1.services.typing;
    await vi.waitFor(() => expect(typing.typingIn([roomId], null, typing.position()).get(roomId)).toEqual([bob.userId]), { timeout: 5_000 });
  });

  it("queues a local user's public read receipt durably for the room's other servers, not a private one", async () => {
    const enqueue = vi.spyOn(hs2.services.federation.sender, "enqueue");
    try {
      const receipt = (type: string) =>
        request(hs2.url, "POST", `/_matrix/client/v3/rooms/${enc(roomId)}/receipt/${type}/${enc(eventId)}`, { token: bob.accessToken, body: {} });
      expect((await receipt("m.read.private")).status).toBe(200);
      expect((await receipt("m.read")).status).toBe(200);
      await vi.waitFor(() => expect(enqueue).toHaveBeenCalled(), { timeout: 5_000 });
      expect(enqueue).toHaveBeenCalledTimes(1);
      const [destinations, items] = enqueue.mock.calls[0]!;
      expect([...destinations]).toEqual(["hs1.test"]);
      const [edu] = items.edus!;
      expect(edu).toMatchObject({ edu_type: "m.receipt", content: { [roomId]: { "m.read": { [bob.userId]: { event_ids: [eventId] } } } } });
    } finally {
      enqueue.mockRestore();
    }
  });

  it("sends a local user's presence to the servers sharing a room with them", async () => {
    const res = await request(hs2.url, "PUT", `/_matrix/client/v3/presence/${enc(bob.userId)}/status`, {
      token: bob.accessToken,
      body: { presence: "online", status_msg: "here" },
    });
    expect(res.status).toBe(200);
    await vi.waitFor(
      async () => expect(await hs1.services.presence.getPresence(bob.userId, bob.userId, false)).toMatchObject({ presence: "online", status_msg: "here" }),
      { timeout: 5_000 },
    );
  });
});

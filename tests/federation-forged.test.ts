// Forged and unauthorised events from another server: the checks on receipt of a PDU.
// https://spec.matrix.org/latest/server-server-api/#checks-performed-on-receipt-of-a-pdu
//
// A room on hs1 that bob (hs2) joined over federation. hs2's server then sends hs1 hand-made PDUs
// (built on hs1's state with `draft`, signed with hs2's key or another) in signed transactions.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { computeEventId } from "../federation/protocol/event-hashes.ts";
import { signEvent } from "../federation/protocol/event-signing.ts";
import { randomBytes } from "node:crypto";
import { signingKeyFromSeed } from "../federation/protocol/signing.ts";
import { type Network, startNetwork } from "./federation-harness.ts";
import type { TestServer } from "./harness.ts";
import { type RoomUser, registerRoomUser, roomPath } from "./rooms-helpers.ts";

let net: Network;
let hs1: TestServer;
let hs2: TestServer;
let alice: RoomUser;
let bob: RoomUser;
let roomId: string;
let txn = 0;
const enc = encodeURIComponent;

/** A PDU of bob's built on hs1's current state, not signed yet. */
async function draft(type: string, content: Record<string, unknown>, stateKey?: string): Promise<Record<string, unknown>> {
  const { pdu } = await hs1.services.persister.draft(roomId, { type, sender: bob.userId, content, ...(stateKey !== undefined ? { state_key: stateKey } : {}) });
  return pdu;
}

/** hs2 sends hs1 a transaction; answers the per-PDU results. */
async function deliver(...pdus: object[]): Promise<Record<string, { error?: string }>> {
  const res = await hs2.services.federation.http.request("hs1.test", {
    method: "PUT",
    path: `/_matrix/federation/v1/send/forged${++txn}`,
    body: { origin: "hs2.test", origin_server_ts: Date.now(), pdus },
  });
  expect(res.status, JSON.stringify(res.body)).toBe(200);
  return (res.body as { pdus: Record<string, { error?: string }> }).pdus;
}

const signedByHs2 = (pdu: object) => signEvent("10", pdu, "hs2.test", hs2.services.signingKey);

beforeAll(async () => {
  net = await startNetwork(2);
  [hs1, hs2] = net.servers as [TestServer, TestServer];
  [alice, bob] = await Promise.all([registerRoomUser(hs1.url, "alice"), registerRoomUser(hs2.url, "bob")]);
  roomId = await alice.createRoom({ preset: "public_chat", room_version: "10" });
  const joined = await bob.call("POST", `/_matrix/client/v3/join/${enc(roomId)}?via=hs1.test`, {});
  expect(joined.status, JSON.stringify(joined.json)).toBe(200);
}, 120_000);

afterAll(async () => {
  await net?.destroy();
});

describe("PDUs another server forges", () => {
  it("accepts a well-formed message and shows it to clients", async () => {
    const event = signedByHs2(await draft("m.room.message", { msgtype: "m.text", body: "genuine" }));
    const eventId = computeEventId("10", event);
    expect(await deliver(event)).toEqual({ [eventId]: {} });
    const got = await alice.call("GET", roomPath(roomId, `/event/${enc(eventId)}`));
    expect(got.json.content.body).toBe("genuine");
  });

  it("keeps an event whose prev_events nobody can supply as an outlier, outside the timeline", async () => {
    const event = signedByHs2({ ...(await draft("m.room.message", { msgtype: "m.text", body: "from nowhere" })), prev_events: ["$unknowable"] });
    const eventId = computeEventId("10", event);
    const answer = await deliver(event);
    expect(answer[eventId]?.error).toMatch(/prev events/);
    const stored = await hs1.services.eventStore.getEvent(eventId);
    expect(stored?.outlier).toBe(true);
    expect(stored?.rejected).toBe(false);
    expect((await alice.call("GET", roomPath(roomId, `/event/${enc(eventId)}`))).status).toBe(404);
  });

  it("drops an event signed with a key that is not the sending server's", async () => {
    const forger = signingKeyFromSeed(randomBytes(32), "ed25519:forged");
    const event = signEvent("10", await draft("m.room.message", { msgtype: "m.text", body: "forged" }), "hs2.test", forger);
    const eventId = computeEventId("10", event);
    const answer = await deliver(event);
    expect(answer[eventId]?.error).toBeTruthy();
    expect(await hs1.services.eventStore.getEvent(eventId)).toBeUndefined();
  });

  it("keeps an event whose content does not match its hash only in its redacted form", async () => {
    const event = signedByHs2(await draft("m.room.message", { msgtype: "m.text", body: "original" }));
    const tampered = { ...event, content: { msgtype: "m.text", body: "tampered" } };
    const eventId = computeEventId("10", tampered);
    expect(computeEventId("10", event)).toBe(eventId); // the reference hash covers the redacted form only
    await deliver(tampered);
    const stored = await hs1.services.eventStore.getEvent(eventId);
    expect(stored?.pdu.content).toEqual({});
  });

  it("rejects an event the auth rules refuse: bob raising his own power", async () => {
    const current = await alice.state(roomId, "m.room.power_levels");
    const content = { ...current.json, users: { ...current.json.users, [bob.userId]: 100 } };
    const event = signedByHs2(await draft("m.room.power_levels", content, ""));
    const eventId = computeEventId("10", event);
    // Processed and stored as rejected: the transaction's answer has no error for it (as Synapse).
    const answer = await deliver(event);
    expect(answer[eventId]).toEqual({});
    const after = await alice.state(roomId, "m.room.power_levels");
    expect(after.json.users[bob.userId]).toBeUndefined();
    expect((await hs1.services.eventStore.getEvent(eventId))?.rejected).toBe(true);
  });

  it("rejects an event whose auth events are another room's", async () => {
    const other = await alice.createRoom({ preset: "public_chat", room_version: "10" });
    const joined = await bob.call("POST", `/_matrix/client/v3/join/${enc(other)}?via=hs1.test`, {});
    expect(joined.status, JSON.stringify(joined.json)).toBe(200);
    const { pdu: elsewhere } = await hs1.services.persister.draft(other, { type: "m.room.message", sender: bob.userId, content: {} });
    const event = signedByHs2({ ...(await draft("m.room.message", { msgtype: "m.text", body: "wrong auth" })), auth_events: elsewhere.auth_events });
    const eventId = computeEventId("10", event);
    expect(await deliver(event)).toEqual({ [eventId]: {} });
    const stored = await hs1.services.eventStore.getEvent(eventId);
    expect(stored?.rejected).toBe(true);
    expect((await alice.call("GET", roomPath(roomId, `/event/${enc(eventId)}`))).status).toBe(404);
  });

  it("applies a redaction that arrives in the same transaction as the event it redacts", async () => {
    const message = signedByHs2(await draft("m.room.message", { msgtype: "m.text", body: "soon gone" }));
    const messageId = computeEventId("10", message);
    const redaction = signedByHs2({
      ...(await draft("m.room.redaction", {})),
      redacts: messageId,
      prev_events: [messageId],
      depth: (message as unknown as { depth: number }).depth + 1,
    });
    const redactionId = computeEventId("10", redaction);
    expect(await deliver(message, redaction)).toEqual({ [messageId]: {}, [redactionId]: {} });
    const got = await alice.call("GET", roomPath(roomId, `/event/${enc(messageId)}`));
    expect(got.json.content).toEqual({});
    expect(got.json.unsigned.redacted_by).toBe(redactionId);
  });

  it("never shows clients a redaction of another room's event, nor applies it", async () => {
    const other = await alice.createRoom({ preset: "public_chat", room_version: "10" });
    const target = await alice.send(other, { msgtype: "m.text", body: "elsewhere" });
    const redaction = signedByHs2({ ...(await draft("m.room.redaction", {})), redacts: target });
    const redactionId = computeEventId("10", redaction);
    expect(await deliver(redaction)).toEqual({ [redactionId]: {} });
    expect((await hs1.services.eventStore.getEvent(redactionId))?.softFailed).toBe(true);
    expect((await alice.call("GET", roomPath(roomId, `/event/${enc(redactionId)}`))).status).toBe(404);
    expect((await alice.call("GET", roomPath(other, `/event/${enc(target)}`))).json.content.body).toBe("elsewhere");
  });

  it("soft-fails an event allowed by the state before it but not by the current state, and hides it from clients", async () => {
    // Built while bob was joined; alice bans him before it arrives.
    const late = signedByHs2(await draft("m.room.message", { msgtype: "m.text", body: "after the ban" }));
    const lateId = computeEventId("10", late);
    expect((await alice.call("POST", roomPath(roomId, "/ban"), { user_id: bob.userId })).status).toBe(200);
    const answer = await deliver(late);
    expect(answer[lateId]).toEqual({});
    const stored = await hs1.services.eventStore.getEvent(lateId);
    expect(stored?.softFailed).toBe(true);
    expect((await alice.call("GET", roomPath(roomId, `/event/${enc(lateId)}`))).status).toBe(404);
    const page = await alice.messages(roomId, { dir: "b", limit: "20" });
    expect(page.json.chunk.map((e: any) => e.event_id)).not.toContain(lateId);
    // And it never becomes a forward extremity that new events build on.
    const next = await alice.send(roomId, { msgtype: "m.text", body: "next" });
    const nextEvent = await hs1.services.eventStore.getEvent(next);
    expect(nextEvent?.pdu.prev_events).not.toContain(lateId);
  });
});

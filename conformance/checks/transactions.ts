// Transactions: PUT /send/{txnId} is idempotent, and each PDU goes through the checks on receipt
// without affecting the others. Every check delivers a genuine PDU too and waits to see it, so a
// server that drops everything cannot pass.
// https://spec.matrix.org/latest/server-server-api/#transactions
// https://spec.matrix.org/latest/server-server-api/#checks-performed-on-receipt-of-a-pdu
import { randomBytes } from "node:crypto";
import { signingKeyFromSeed } from "../../federation/protocol/signing.ts";
import { type Check, type CheckContext, expect, expectStatus, fail, show } from "../check.ts";
import type { ClientUser } from "../client.ts";
import type { BuiltEvent, PeerRoom } from "../peer.ts";

const group = "transactions";

export interface JoinedRoom {
  /** The room's creator, a user of the target. */
  owner: ClientUser;
  roomId: string;
  /** The peer's view of the room, its user joined. */
  room: PeerRoom;
  /** The peer's user in the room. */
  peerUser: string;
}

/** A public room of the target that a user of the peer joined over federation. */
export async function roomWithPeerMember(ctx: CheckContext, createBody: Record<string, unknown> = {}): Promise<JoinedRoom> {
  const owner = await ctx.user("owner");
  const roomId = await owner.createRoom({ preset: "public_chat", ...createBody });
  const peerUser = ctx.peer.userId(`conf${randomBytes(4).toString("hex")}`);
  const room = await ctx.peer.join(ctx.target, roomId, peerUser);
  await owner.waitForMembership(roomId, peerUser, "join");
  return { owner, roomId, room, peerUser };
}

export function message(j: JoinedRoom, body: string): BuiltEvent {
  return j.room.build({ type: "m.room.message", sender: j.peerUser, content: { msgtype: "m.text", body } });
}

/** Delivers `pdus` in one transaction, expecting 200; answers the per-PDU results. */
export async function deliver(ctx: CheckContext, pdus: unknown[], txnId?: string): Promise<Record<string, { error?: string }>> {
  const res = await ctx.peer.sendTransaction(ctx.target, pdus, [], txnId);
  expectStatus(res, 200, "PUT /send");
  expect(typeof res.json?.pdus === "object" && res.json.pdus !== null, `the transaction's answer has no pdus object: ${show(res.json)}`);
  return res.json.pdus;
}

/** Waits until the room's owner sees the event (by ID) in the timeline. */
export async function seen(j: JoinedRoom, eventId: string, what: string): Promise<void> {
  await j.owner.waitForEvent(j.roomId, (e) => e.event_id === eventId, what);
}

async function notInTimeline(j: JoinedRoom, eventId: string, what: string): Promise<void> {
  const events = await j.owner.messages(j.roomId);
  if (events.some((e) => e.event_id === eventId)) fail(`${what} is in the room's timeline as clients see it`);
  const direct = await j.owner.getEvent(j.roomId, eventId);
  if (direct && direct.content && Object.keys(direct.content).length > 0) fail(`${what} is served to clients by GET /event: ${show(direct)}`);
}

const idempotent: Check = {
  id: "transactions.idempotent",
  group,
  title: "a transaction sent again with the same txnId is not processed again (its PDUs are not taken a second time)",
  async run(ctx) {
    const j = await roomWithPeerMember(ctx);
    const txnId = `conf-idem-${randomBytes(4).toString("hex")}`;
    const first = message(j, "first delivery");
    await deliver(ctx, [first.pdu], txnId);
    await seen(j, first.eventId, "the first transaction's PDU");
    j.room.add(first.pdu);
    // The same transaction ID again, carrying another PDU: a server that is idempotent on
    // (origin, txnId) answers from the first and never looks at it.
    const sneaked = message(j, "sent under a used txnId");
    await deliver(ctx, [sneaked.pdu], txnId);
    const after = message(j, "after");
    await deliver(ctx, [after.pdu]);
    await seen(j, after.eventId, "a later transaction's PDU");
    await notInTimeline(j, sneaked.eventId, "the PDU sent again under a used txnId");
  },
};

const badSignature: Check = {
  id: "transactions.bad-signature-dropped",
  group,
  title: "a PDU with a bad signature is dropped; the transaction's other PDU is taken",
  async run(ctx) {
    const j = await roomWithPeerMember(ctx);
    const forger = signingKeyFromSeed(randomBytes(32), ctx.peer.key.keyId);
    const forged = j.room.build({ type: "m.room.message", sender: j.peerUser, content: { msgtype: "m.text", body: "forged" } }, { key: forger });
    const good = message(j, "genuine");
    const answer = await deliver(ctx, [forged.pdu, good.pdu]);
    await seen(j, good.eventId, "the genuine PDU");
    await notInTimeline(j, forged.eventId, "the PDU with a bad signature");
    if (answer[good.eventId]?.error) fail(`the genuine PDU was answered with an error: ${show(answer[good.eventId])}`);
  },
};

const badHash: Check = {
  id: "transactions.bad-content-hash-redacted",
  group,
  title: "a PDU whose content does not match its content hash is taken redacted",
  async run(ctx) {
    const j = await roomWithPeerMember(ctx);
    const signed = message(j, "the content that was signed");
    // The signature covers the redacted form (which keeps `hashes`), so it still verifies; only the
    // content hash reveals the change.
    const tampered = { ...signed.pdu, content: { msgtype: "m.text", body: "changed after signing" } };
    await deliver(ctx, [tampered]);
    const got = await j.owner.waitForEvent(j.roomId, (e) => e.event_id === signed.eventId, "the PDU with a bad content hash");
    if (got.content?.body !== undefined) fail(`the PDU with a bad content hash reached clients unredacted: ${show(got.content)}`);
  },
};

const authFailure: Check = {
  id: "transactions.auth-rejected",
  group,
  title: "a PDU failing the auth rules (power levels raised without the power) is rejected; the state is unchanged",
  async run(ctx) {
    const j = await roomWithPeerMember(ctx);
    const pl = j.room.stateEvent("m.room.power_levels");
    expect(pl, "the peer did not receive the room's power levels in send_join");
    const content = { ...pl.content, users: { ...(pl.content.users ?? {}), [j.peerUser]: 100 } };
    const usurp = j.room.build({ type: "m.room.power_levels", state_key: "", sender: j.peerUser, content });
    const good = message(j, "after the usurpation attempt");
    await deliver(ctx, [usurp.pdu, good.pdu]);
    await seen(j, good.eventId, "the PDU sent with the rejected one");
    const now = await j.owner.getState(j.roomId, "m.room.power_levels");
    if (now?.users?.[j.peerUser] !== undefined) fail(`the power levels now give the peer's user ${now.users[j.peerUser]}: the unauthorised event was accepted`);
    await notInTimeline(j, usurp.eventId, "the rejected power levels event");
  },
};

const softFail: Check = {
  id: "transactions.soft-fail-hidden",
  group,
  title: "a PDU allowed by the state before it but not by the current state (sender banned since) is soft-failed: hidden from clients",
  async run(ctx) {
    const j = await roomWithPeerMember(ctx);
    // Built before the ban: its prev_events and auth events are from when the user was a member.
    const late = message(j, "sent from before the ban");
    await j.owner.ok("POST", `/_matrix/client/v3/rooms/${encodeURIComponent(j.roomId)}/ban`, { user_id: j.peerUser, reason: "conformance" });
    await j.owner.waitForMembership(j.roomId, j.peerUser, "ban");
    await deliver(ctx, [late.pdu]);
    // Something the owner sends afterwards shows the server has moved on.
    const marker = await j.owner.send(j.roomId, { msgtype: "m.text", body: "marker" });
    await seen(j, marker, "the owner's message after the delivery");
    const synced = await j.owner.sync();
    const timeline = (synced.rooms?.join?.[j.roomId]?.timeline?.events ?? []) as Array<{ event_id: string }>;
    if (timeline.some((e) => e.event_id === late.eventId)) fail("the soft-failed PDU is in the room's /sync timeline");
    await notInTimeline(j, late.eventId, "the soft-failed PDU");
  },
};

const oversized: Check = {
  id: "transactions.oversized-pdu",
  group,
  title: "a PDU over 65,536 bytes is refused; the transaction's other PDU is taken",
  async run(ctx) {
    const j = await roomWithPeerMember(ctx);
    const big = message(j, "x".repeat(70_000));
    const good = message(j, "next to a big one");
    const res = await ctx.peer.sendTransaction(ctx.target, [big.pdu, good.pdu]);
    expectStatus(res, 200, "PUT /send with an oversized PDU");
    await seen(j, good.eventId, "the PDU next to the oversized one");
    await notInTimeline(j, big.eventId, "the oversized PDU");
  },
};

const malformed: Check = {
  id: "transactions.malformed",
  group,
  title: "malformed JSON is refused with 400, and malformed PDUs in a transaction do not affect the others",
  async run(ctx) {
    const j = await roomWithPeerMember(ctx);
    const path = `/_matrix/federation/v1/send/conf-bad-${randomBytes(4).toString("hex")}`;
    const raw = `{"origin":"${ctx.peer.serverName}","pdus":[{"type":`;
    const broken = await ctx.peer.request(ctx.target, { method: "PUT", path, raw });
    if (broken.status !== 400) fail(`a transaction body that is not JSON: expected 400, got ${broken.status} ${show(broken.json ?? broken.text)}`);
    const good = message(j, "beside malformed PDUs");
    const junk = [42, "pdu", null, [], { type: 7 }, { ...good.pdu, room_id: 12, prev_events: "x" }];
    const res = await ctx.peer.sendTransaction(ctx.target, [...junk, good.pdu]);
    expectStatus(res, 200, "PUT /send with malformed PDUs beside a good one");
    await seen(j, good.eventId, "the good PDU beside malformed ones");
  },
};

export const transactionChecks: readonly Check[] = [idempotent, badSignature, badHash, authFailure, softFail, oversized, malformed];

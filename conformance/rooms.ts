// Shared set-ups of the room checks (invites, leaves, knocks, history, state resolution, EDUs): a
// room on the server under test that the peer's users joined over federation, reading a target's
// PDUs and keys, and waiting on a user's /sync. Built only on the spec's APIs, so any homeserver can
// be tested.
import { randomBytes } from "node:crypto";
import { decodeBase64 } from "../federation/protocol/base64.ts";
import { computeEventId } from "../federation/protocol/event-hashes.ts";
import { verifyEventSignatures } from "../federation/protocol/event-signing.ts";
import { type Pdu, validatePdu } from "../federation/protocol/pdu.ts";
import { type CheckContext, type Target, eventually, expect, expectStatus, fail, show } from "./check.ts";
import { type ClientUser, httpCall } from "./client.ts";
import type { Json, PeerRoom } from "./peer.ts";

const enc = encodeURIComponent;

/** A user ID of the peer's, unique to this run (the peer has no accounts: any localpart is its). */
export function peerUser(ctx: CheckContext, label: string): string {
  return ctx.peer.userId(`conf-${label}-${randomBytes(3).toString("hex")}`);
}

export interface SharedRoom {
  /** The target's user who created the room. */
  alice: ClientUser;
  roomId: string;
  /** The peer's view of the room after the last of its users joined. */
  room: PeerRoom;
  /** The peer's users joined, in order. */
  peerUsers: string[];
}

/**
 * A public room created by a target user (`createRoom` body extras in `create`), optionally changed
 * by `before(alice, roomId, peerUsers)`, then joined over federation by `peerUsers` of the peer.
 */
export async function roomWithPeerUsers(
  ctx: CheckContext,
  labels: string[],
  options: { create?: Json; before?: (alice: ClientUser, roomId: string, peerUsers: string[]) => Promise<void> } = {},
): Promise<SharedRoom> {
  const alice = await ctx.user("alice");
  const roomId = await alice.createRoom({ preset: "public_chat", ...options.create });
  const peerUsers = labels.map((l) => peerUser(ctx, l));
  await options.before?.(alice, roomId, peerUsers);
  let room: PeerRoom | undefined;
  for (const userId of peerUsers) room = await ctx.peer.join(ctx.target, roomId, userId);
  if (!room) fail("no peer user to join");
  for (const userId of peerUsers) await alice.waitForMembership(roomId, userId, "join");
  return { alice, roomId, room, peerUsers };
}

/** `GET /_matrix/federation/v1/event/{id}` as the peer: the PDU the target serves. */
export async function fetchPdu(ctx: CheckContext, eventId: string): Promise<Json> {
  const res = await ctx.peer.request(ctx.target, { method: "GET", path: `/_matrix/federation/v1/event/${enc(eventId)}` });
  expectStatus(res, 200, `GET /event/${eventId}`);
  const pdu = res.json?.pdus?.[0];
  expect(typeof pdu === "object" && pdu !== null, `GET /event/${eventId} answered no PDU: ${show(res.json)}`);
  return pdu as Json;
}

/** The event ID of a PDU the target served, failing the check when it is no valid PDU of `version`. */
export function idOfServedPdu(version: string, pdu: unknown, where: string): string {
  const valid = validatePdu(version, pdu);
  if (!valid.ok) fail(`${where}: not a valid PDU of room version ${version} (${valid.reason}): ${show(pdu)}`);
  return computeEventId(version, pdu as object);
}

/** The target's current signing keys, by key ID. */
export async function targetKeys(target: Target): Promise<Map<string, Uint8Array>> {
  const res = await httpCall(`${target.url}/_matrix/key/v2/server`, "GET");
  expectStatus(res, 200, "GET /_matrix/key/v2/server");
  const keys = new Map<string, Uint8Array>();
  for (const [keyId, entry] of Object.entries((res.json?.verify_keys ?? {}) as Record<string, { key?: unknown }>)) {
    if (typeof entry?.key === "string") keys.set(keyId, decodeBase64(entry.key));
  }
  return keys;
}

/**
 * Fails unless `pdu` carries a valid signature of the target, and every signature the spec requires
 * of it (the sender's server, which may be the peer) verifies.
 */
export async function expectSignedByTarget(ctx: CheckContext, version: string, pdu: Json, what: string): Promise<void> {
  const keys = await targetKeys(ctx.target);
  expect(typeof pdu.signatures?.[ctx.target.serverName] === "object", `${what} carries no signature of ${ctx.target.serverName}: ${show(pdu.signatures)}`);
  const peerKey = ctx.peer.key;
  const check = verifyEventSignatures(version, pdu as Pdu, (server, keyId) => {
    if (server === ctx.target.serverName) return keys.get(keyId);
    if (server === ctx.peer.serverName && keyId === peerKey.keyId) return peerKey.publicKey;
    return undefined;
  });
  if (!check.ok) fail(`${what}: ${check.reason}`);
}

/** An initial /sync as `user`: the `since` token after which news is looked for. */
export async function syncToken(user: ClientUser): Promise<string> {
  return (await user.sync()).next_batch as string;
}

/**
 * Syncs as `user` (long-polls of 1 s) until `pick` finds what it looks for in one answer, or fails
 * after `timeoutMs`. Without `since` the first sync is an initial one, so what arrived before counts too.
 */
export async function syncUntil<T>(user: ClientUser, what: string, pick: (sync: any) => T | undefined, options: { since?: string; timeoutMs?: number } = {}): Promise<T> {
  let since = options.since;
  return eventually(
    `${what} in ${user.userId}'s /sync`,
    async () => {
      const sync = await user.sync(since, since === undefined ? 0 : 1000);
      since = sync.next_batch;
      return pick(sync);
    },
    options.timeoutMs ?? 10_000,
    0,
  );
}

/** The events of one kind in a joined room's part of a /sync answer. */
export function joinedRoomPart(sync: any, roomId: string, part: "ephemeral" | "timeline" | "state"): Json[] {
  const events = sync?.rooms?.join?.[roomId]?.[part]?.events;
  return Array.isArray(events) ? events : [];
}

/** Sends one transaction of PDUs and fails unless the target accepted each (an empty result per PDU). */
export async function sendPdus(ctx: CheckContext, pdus: Array<{ pdu: Json; eventId: string }>, what: string): Promise<void> {
  const res = await ctx.peer.sendTransaction(ctx.target, pdus.map((p) => p.pdu));
  expectStatus(res, 200, `PUT /send with ${what}`);
  for (const { eventId } of pdus) {
    const result = res.json?.pdus?.[eventId];
    if (result === undefined) fail(`PUT /send with ${what}: no result for ${eventId} (${show(res.json)})`);
    if (result.error !== undefined) fail(`PUT /send with ${what}: ${eventId} refused: ${show(result.error)}`);
  }
}

/** The room's latest messages of `alice`, sent one after another; their event IDs in order. */
export async function sendMessages(user: ClientUser, roomId: string, count: number, label: string): Promise<string[]> {
  const ids: string[] = [];
  for (let i = 0; i < count; i++) ids.push(await user.send(roomId, { msgtype: "m.text", body: `${label} ${i}` }));
  return ids;
}

/** Waits until the peer received (in a transaction) the target's event `eventId`, so its view of the room includes it. */
export async function peerHolds(ctx: CheckContext, room: PeerRoom, eventId: string): Promise<void> {
  await ctx.peer.waitForPdu(`the event ${eventId}`, (pdu) => {
    try {
      return computeEventId(room.version, pdu) === eventId;
    } catch {
      return false;
    }
  });
}

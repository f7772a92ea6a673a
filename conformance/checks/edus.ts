// EDUs both ways: typing, receipts, to-device messages and device-list updates the peer sends must
// reach the right users of the target (and only them); what the target's users do must reach the
// peer as the spec's EDUs.
// https://spec.matrix.org/latest/server-server-api/#typing-notifications
// https://spec.matrix.org/latest/server-server-api/#receipts
// https://spec.matrix.org/latest/server-server-api/#send-to-device-messaging
// https://spec.matrix.org/latest/server-server-api/#device-management
import { randomBytes } from "node:crypto";
import { type Check, type CheckContext, expectStatus, fail, show } from "../check.ts";
import { joinedRoomPart, peerUser, roomWithPeerUsers, sendMessages, syncToken, syncUntil } from "../rooms.ts";

const enc = encodeURIComponent;
/**
 * These checks set up a room (a federated join), then wait up to 10 s for what must arrive: more
 * than the default 20 s in all, so that a slow set-up on a busy machine is not mistaken for a
 * delivery that never came.
 */
const WAITING_CHECK_MS = 30_000;

async function sendEdus(ctx: CheckContext, edus: unknown[], what: string): Promise<void> {
  const res = await ctx.peer.sendTransaction(ctx.target, [], edus);
  expectStatus(res, 200, `PUT /send with ${what}`);
}

const typingInbound: Check = {
  id: "edus.typing-inbound",
  group: "edus",
  timeoutMs: WAITING_CHECK_MS,
  title: "An m.typing EDU for a joined user reaches the room's users; one for a user not in the room does not",
  async run(ctx) {
    const { alice, roomId, peerUsers } = await roomWithPeerUsers(ctx, ["typer"]);
    const stranger = peerUser(ctx, "stranger");
    const since = await syncToken(alice);
    // The stranger's first, in a transaction of its own: once the member's shows, the stranger's had its chance.
    await sendEdus(ctx, [{ edu_type: "m.typing", content: { room_id: roomId, user_id: stranger, typing: true } }], "typing of a user not in the room");
    await sendEdus(ctx, [{ edu_type: "m.typing", content: { room_id: roomId, user_id: peerUsers[0], typing: true } }], "typing of a joined user");
    const typing = await syncUntil(
      alice,
      `${peerUsers[0]} typing`,
      (sync) => {
        const e = joinedRoomPart(sync, roomId, "ephemeral").find((x) => x.type === "m.typing");
        const ids = e?.content?.user_ids;
        return Array.isArray(ids) && ids.includes(peerUsers[0]) ? (ids as string[]) : undefined;
      },
      { since },
    );
    if (typing.includes(stranger)) fail(`the room's typing users include ${stranger}, who is not in the room: ${show(typing)}`);
  },
};

const receiptsInbound: Check = {
  id: "edus.receipts-inbound",
  group: "edus",
  timeoutMs: WAITING_CHECK_MS,
  title: "An m.receipt EDU of a joined user reaches the room's users as an m.read receipt on that event",
  async run(ctx) {
    const { alice, roomId, peerUsers } = await roomWithPeerUsers(ctx, ["reader"]);
    const [message] = await sendMessages(alice, roomId, 1, "to be read");
    const since = await syncToken(alice);
    const ts = Date.now();
    await sendEdus(ctx, [{ edu_type: "m.receipt", content: { [roomId]: { "m.read": { [peerUsers[0]!]: { event_ids: [message], data: { ts } } } } } }], "a read receipt");
    await syncUntil(
      alice,
      `${peerUsers[0]}'s read receipt on ${message}`,
      (sync) =>
        joinedRoomPart(sync, roomId, "ephemeral").some((e) => e.type === "m.receipt" && e.content?.[message!]?.["m.read"]?.[peerUsers[0]!] !== undefined)
          ? true
          : undefined,
      { since },
    );
  },
};

const toDeviceInbound: Check = {
  id: "edus.to-device-inbound",
  group: "edus",
  timeoutMs: WAITING_CHECK_MS,
  title: "An m.direct_to_device EDU reaches the addressed device of the addressed user, with its sender, type and content",
  async run(ctx) {
    const alice = await ctx.user("alice");
    const other = await ctx.user("other");
    const sender = peerUser(ctx, "sender");
    const marker = randomBytes(8).toString("hex");
    const [aliceSince, otherSince] = [await syncToken(alice), await syncToken(other)];
    await sendEdus(
      ctx,
      [
        {
          edu_type: "m.direct_to_device",
          content: { sender, type: "org.matrix.conformance.ping", message_id: `m${marker}`, messages: { [alice.userId]: { [alice.deviceId]: { marker } } } },
        },
      ],
      "a to-device message",
    );
    const got = await syncUntil(
      alice,
      "the to-device message",
      (sync) => (sync.to_device?.events as any[] | undefined)?.find((e) => e?.content?.marker === marker),
      { since: aliceSince },
    );
    if (got.sender !== sender || got.type !== "org.matrix.conformance.ping") fail(`the to-device message arrived as ${show(got)}, not from ${sender} of type org.matrix.conformance.ping`);
    const otherSync = await other.sync(otherSince);
    if (JSON.stringify(otherSync.to_device ?? {}).includes(marker)) fail("the to-device message also reached a user it was not addressed to");
  },
};

const deviceListInbound: Check = {
  id: "edus.device-list-inbound",
  group: "edus",
  timeoutMs: WAITING_CHECK_MS,
  title: "An m.device_list_update EDU of a peer user marks that user's devices changed for the target's users sharing a room with them",
  async run(ctx) {
    const { alice, peerUsers } = await roomWithPeerUsers(ctx, ["devices"]);
    const userId = peerUsers[0]!;
    const since = await syncToken(alice);
    await sendEdus(
      ctx,
      [{ edu_type: "m.device_list_update", content: { user_id: userId, device_id: "CONFDEVICE", stream_id: 1, prev_id: [], device_display_name: "conformance" } }],
      "a device-list update",
    );
    await syncUntil(
      alice,
      `${userId} in device_lists.changed`,
      (sync) => (Array.isArray(sync.device_lists?.changed) && sync.device_lists.changed.includes(userId) ? true : undefined),
      { since },
    );
  },
};

const typingOutbound: Check = {
  id: "edus.typing-outbound",
  group: "edus",
  timeoutMs: WAITING_CHECK_MS,
  title: "A local user typing in a room the peer's users joined reaches the peer as an m.typing EDU",
  async run(ctx) {
    const { alice, roomId } = await roomWithPeerUsers(ctx, ["watcher"]);
    const res = await alice.call("PUT", `/_matrix/client/v3/rooms/${enc(roomId)}/typing/${enc(alice.userId)}`, { typing: true, timeout: 20_000 });
    expectStatus(res, 200, "PUT /typing");
    await ctx.peer.waitForEdu(
      `m.typing of ${alice.userId}`,
      (e) => e.edu_type === "m.typing" && e.content?.room_id === roomId && e.content?.user_id === alice.userId && e.content?.typing === true,
    );
  },
};

const deviceListOutbound: Check = {
  id: "edus.device-list-outbound",
  group: "edus",
  timeoutMs: WAITING_CHECK_MS,
  title: "A local user's device change reaches the peer (sharing a room with them) as an m.device_list_update EDU",
  async run(ctx) {
    const { alice } = await roomWithPeerUsers(ctx, ["listener"]);
    const name = `renamed ${randomBytes(3).toString("hex")}`;
    await alice.ok("PUT", `/_matrix/client/v3/devices/${enc(alice.deviceId)}`, { display_name: name });
    const edu = await ctx.peer.waitForEdu(
      `m.device_list_update of ${alice.userId}'s device ${alice.deviceId}`,
      (e) => e.edu_type === "m.device_list_update" && e.content?.user_id === alice.userId && e.content?.device_id === alice.deviceId,
    );
    if (!Number.isSafeInteger(edu.content.stream_id)) fail(`the update's stream_id is not an integer: ${show(edu.content)}`);
    if (!Array.isArray(edu.content.prev_id)) fail(`the update's prev_id is not a list: ${show(edu.content)}`);
  },
};

const receiptsOutbound: Check = {
  id: "edus.receipts-outbound",
  group: "edus",
  timeoutMs: WAITING_CHECK_MS,
  title: "A local user's read receipt in a room the peer's users joined reaches the peer as an m.receipt EDU",
  async run(ctx) {
    const { alice, roomId } = await roomWithPeerUsers(ctx, ["receipts"]);
    const [message] = await sendMessages(alice, roomId, 1, "read by alice");
    await alice.ok("POST", `/_matrix/client/v3/rooms/${enc(roomId)}/receipt/m.read/${enc(message!)}`, {});
    const edu = await ctx.peer.waitForEdu(
      `m.receipt of ${alice.userId} on ${message}`,
      (e) => e.edu_type === "m.receipt" && e.content?.[roomId]?.["m.read"]?.[alice.userId] !== undefined,
    );
    const receipt = edu.content[roomId]["m.read"][alice.userId];
    if (!Array.isArray(receipt.event_ids) || !receipt.event_ids.includes(message)) fail(`the receipt's event_ids do not name ${message}: ${show(receipt)}`);
    if (!Number.isSafeInteger(receipt.data?.ts)) fail(`the receipt's data.ts is not an integer: ${show(receipt)}`);
  },
};

const toDeviceOutbound: Check = {
  id: "edus.to-device-outbound",
  group: "edus",
  timeoutMs: WAITING_CHECK_MS,
  title: "A local user's to-device message for a peer user's device reaches the peer as an m.direct_to_device EDU",
  async run(ctx) {
    const alice = await ctx.user("alice");
    const recipient = peerUser(ctx, "recipient");
    const marker = randomBytes(8).toString("hex");
    await alice.ok("PUT", `/_matrix/client/v3/sendToDevice/org.matrix.conformance.ping/t${marker}`, { messages: { [recipient]: { PEERDEVICE: { marker } } } });
    const edu = await ctx.peer.waitForEdu(
      "the m.direct_to_device EDU",
      (e) => e.edu_type === "m.direct_to_device" && e.content?.messages?.[recipient]?.PEERDEVICE?.marker === marker,
    );
    const c = edu.content;
    if (c.sender !== alice.userId || c.type !== "org.matrix.conformance.ping" || typeof c.message_id !== "string") {
      fail(`the EDU's sender, type or message_id is wrong: ${show({ sender: c.sender, type: c.type, message_id: c.message_id })}`);
    }
  },
};

export const eduChecks: readonly Check[] = [
  typingInbound,
  receiptsInbound,
  toDeviceInbound,
  deviceListInbound,
  typingOutbound,
  receiptsOutbound,
  toDeviceOutbound,
  deviceListOutbound,
];

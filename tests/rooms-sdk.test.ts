// matrix-js-sdk as a real third-party client of rooms: create, invite, join, talk, change topic and
// power levels, kick, ban, redact, and page back through history. No /sync yet: the SDK's HTTP
// methods only.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { registerUser, type TestUser } from "./accounts-helpers.ts";
import { startTestServer, type TestServer } from "./harness.ts";
import { sdk } from "./matrix-sdk.ts";

// The SDK's scheduler logs through its module-wide logger, not the client's.

const quiet = {
  trace() {},
  debug() {},
  info() {},
  warn() {},
  error() {},
  getChild: () => quiet,
};

type Client = ReturnType<typeof sdk.createClient>;

let hs: TestServer;
const users: Record<string, TestUser> = {};
const clients: Record<string, Client> = {};

beforeAll(async () => {
  hs = await startTestServer();
  for (const name of ["alice", "bob", "carol"]) {
    const user = await registerUser(hs.url, name);
    users[name] = user;
    clients[name] = sdk.createClient({
      baseUrl: hs.url,
      accessToken: user.accessToken,
      userId: user.userId,
      deviceId: user.deviceId,
      logger: quiet as never,
    });
  }
});
afterAll(() => hs.destroy());

/** Every event of the room, oldest first, paging back with createMessagesRequest. */
async function history(client: Client, roomId: string, limit = 10) {
  const events: Array<{ event_id: string; type: string; sender: string; content: Record<string, any>; unsigned?: any }> = [];
  let from: string | null = null;
  for (;;) {
    const page = await client.createMessagesRequest(roomId, from, limit, sdk.Direction.Backward);
    events.push(...(page.chunk as never[]));
    if (!page.end) break;
    from = page.end;
  }
  return events.reverse();
}

describe("matrix-js-sdk in rooms", () => {
  it("creates a room, invites, joins, exchanges messages in order and pages back through them", async () => {
    const { alice, bob } = clients as Record<string, Client>;
    const { room_id: roomId } = await alice!.createRoom({ name: "SDK room", preset: sdk.Preset.PrivateChat, invite: [users.bob!.userId] });
    expect(roomId).toMatch(/^![A-Za-z0-9_-]{43}$/); // room version 12: the create event's hash
    await bob!.joinRoom(roomId);

    const sent: string[] = [];
    for (let i = 0; i < 12; i++) {
      const client = i % 2 ? bob! : alice!;
      const { event_id } = await client.sendMessage(roomId, { msgtype: sdk.MsgType.Text, body: `message ${i}` });
      sent.push(event_id);
    }
    const events = await history(alice!, roomId, 5);
    const messages = events.filter((e) => e.type === "m.room.message");
    expect(messages.map((e) => e.event_id)).toEqual(sent);
    expect(messages.map((e) => e.content.body)).toEqual(sent.map((_, i) => `message ${i}`));
    expect(events[0]!.type).toBe("m.room.create");

    // The same transaction ID from the same device returns the same event.
    const first = await alice!.sendEvent(roomId, sdk.EventType.RoomMessage, { msgtype: sdk.MsgType.Text, body: "once" }, "fixed-txn");
    const again = await alice!.sendEvent(roomId, sdk.EventType.RoomMessage, { msgtype: sdk.MsgType.Text, body: "once" }, "fixed-txn");
    expect(again.event_id).toBe(first.event_id);

    const fetched = await bob!.fetchRoomEvent(roomId, first.event_id);
    expect(fetched.content).toEqual({ msgtype: "m.text", body: "once" });
    expect(fetched.sender).toBe(users.alice!.userId);
  });

  it("changes the topic and power levels, which members read back with getStateEvent", async () => {
    const { alice, bob } = clients as Record<string, Client>;
    const { room_id: roomId } = await alice!.createRoom({ preset: sdk.Preset.PublicChat });
    await bob!.joinRoom(roomId);

    await alice!.setRoomTopic(roomId, "Tea and biscuits");
    const topic = await bob!.getStateEvent(roomId, sdk.EventType.RoomTopic, "");
    expect(topic.topic).toBe("Tea and biscuits");

    // Bob may not change the topic (state_default 50) until Alice raises him.
    await expect(bob!.setRoomTopic(roomId, "Coffee")).rejects.toMatchObject({ httpStatus: 403, errcode: "M_FORBIDDEN" });
    await alice!.setPowerLevel(roomId, users.bob!.userId, 50);
    const powerLevels = await bob!.getStateEvent(roomId, sdk.EventType.RoomPowerLevels, "");
    expect(powerLevels.users).toEqual({ [users.bob!.userId]: 50 });
    await bob!.setRoomTopic(roomId, "Coffee");
    expect((await alice!.getStateEvent(roomId, sdk.EventType.RoomTopic, "")).topic).toBe("Coffee");
  });

  it("kicks and bans; a banned user cannot rejoin until unbanned", async () => {
    const { alice, carol } = clients as Record<string, Client>;
    const { room_id: roomId } = await alice!.createRoom({ preset: sdk.Preset.PublicChat });
    await carol!.joinRoom(roomId);
    await carol!.sendMessage(roomId, { msgtype: sdk.MsgType.Text, body: "hi" });

    await alice!.kick(roomId, users.carol!.userId, "be nice");
    const kicked = await alice!.getStateEvent(roomId, sdk.EventType.RoomMember, users.carol!.userId);
    expect(kicked).toMatchObject({ membership: "leave", reason: "be nice" });
    await expect(carol!.sendMessage(roomId, { msgtype: sdk.MsgType.Text, body: "still here" })).rejects.toMatchObject({
      httpStatus: 403,
    });

    // A kicked user may come back to a public room...
    await carol!.joinRoom(roomId);
    // ...a banned one may not.
    await alice!.ban(roomId, users.carol!.userId, "really");
    await expect(carol!.joinRoom(roomId)).rejects.toMatchObject({ httpStatus: 403, errcode: "M_FORBIDDEN" });
    await alice!.unban(roomId, users.carol!.userId);
    await carol!.joinRoom(roomId);
    const members = await alice!.getJoinedRoomMembers(roomId);
    expect(Object.keys(members.joined).sort()).toEqual([users.alice!.userId, users.carol!.userId].sort());
  });

  it("redacts a message: its content is gone and unsigned.redacted_because says why", async () => {
    const { alice, bob } = clients as Record<string, Client>;
    const { room_id: roomId } = await alice!.createRoom({ preset: sdk.Preset.PublicChat });
    await bob!.joinRoom(roomId);
    const { event_id: eventId } = await bob!.sendMessage(roomId, { msgtype: sdk.MsgType.Text, body: "oops" });
    const { event_id: redactionId } = await alice!.redactEvent(roomId, eventId, undefined, { reason: "spam" });

    const redacted = await bob!.fetchRoomEvent(roomId, eventId);
    expect(redacted.content).toEqual({});
    expect(redacted.unsigned?.redacted_because).toMatchObject({
      event_id: redactionId,
      type: "m.room.redaction",
      redacts: eventId,
      content: { reason: "spam", redacts: eventId },
    });
    // A plain member may not redact someone else's event.
    const { event_id: aliceMessage } = await alice!.sendMessage(roomId, { msgtype: sdk.MsgType.Text, body: "mine" });
    await expect(bob!.redactEvent(roomId, aliceMessage)).rejects.toMatchObject({ httpStatus: 403 });
  });
});

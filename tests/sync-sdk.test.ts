// matrix-js-sdk clients syncing against Parley: they see each other's messages, typing and read
// receipts as they happen (RoomEvent.Timeline, RoomMemberEvent.Typing, RoomEvent.Receipt), and a
// client that was away for 500 messages catches up and pages back through the rest.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { registerUser, type TestUser } from "./accounts-helpers.ts";
import { startTestServer, type TestServer } from "./harness.ts";
import { sdk } from "./matrix-sdk.ts";


const quiet = { trace() {}, debug() {}, info() {}, warn() {}, error() {}, getChild: () => quiet };
type Client = ReturnType<typeof sdk.createClient>;
type MatrixEvent = InstanceType<typeof sdk.MatrixEvent>;

let hs: TestServer;
const users: Record<string, TestUser> = {};
const clients: Client[] = [];

function client(user: TestUser): Client {
  const c = sdk.createClient({ baseUrl: hs.url, accessToken: user.accessToken, userId: user.userId, deviceId: user.deviceId, logger: quiet as never });
  clients.push(c);
  return c;
}

/** Starts a client and resolves once its first sync is done. */
async function started(c: Client, opts: Parameters<Client["startClient"]>[0] = {}): Promise<void> {
  const ready = new Promise<void>((resolve, reject) => {
    const onSync = (state: string) => {
      if (state === "PREPARED" || state === "SYNCING") {
        c.off(sdk.ClientEvent.Sync, onSync);
        resolve();
      } else if (state === "ERROR") {
        reject(new Error("sync failed"));
      }
    };
    c.on(sdk.ClientEvent.Sync, onSync);
  });
  await c.startClient({ initialSyncLimit: 20, ...opts });
  await ready;
}

/** Resolves with the first value `match` returns (not undefined) for events of `event`. */
function next<T>(c: Client, event: string, match: (...args: any[]) => T | undefined, timeoutMs = 10_000): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => {
      c.off(event as never, listener as never);
      reject(new Error(`no ${event} within ${timeoutMs} ms`));
    }, timeoutMs);
    const listener = (...args: any[]) => {
      const value = match(...args);
      if (value === undefined) return;
      clearTimeout(timer);
      c.off(event as never, listener as never);
      resolve(value);
    };
    c.on(event as never, listener as never);
  });
}

beforeAll(async () => {
  hs = await startTestServer();
  for (const name of ["alice", "bob"]) users[name] = await registerUser(hs.url, name);
});
afterAll(async () => {
  for (const c of clients) c.stopClient();
  await hs.destroy();
});

describe("matrix-js-sdk syncing", () => {
  it("sees messages, typing and read receipts of another client in real time, and catches up after 500 messages", async () => {
    const alice = client(users.alice!);
    const bob = client(users.bob!);
    await Promise.all([started(alice), started(bob)]);

    // An invite reaches bob's sync; he joins.
    const invited = next(bob, sdk.RoomEvent.MyMembership, (room: any, membership: string) => (membership === "invite" ? room.roomId : undefined));
    const { room_id: roomId } = await alice.createRoom({ name: "Live", preset: sdk.Preset.PrivateChat, invite: [users.bob!.userId] });
    expect(await invited).toBe(roomId);
    const joined = next(alice, sdk.RoomStateEvent.Members, (_e: MatrixEvent, _s: unknown, member: any) =>
      member.userId === users.bob!.userId && member.membership === "join" ? true : undefined,
    );
    await bob.joinRoom(roomId);
    await joined;

    // A message: bob's timeline gets it as a live event.
    const arrived = next(bob, sdk.RoomEvent.Timeline, (event: MatrixEvent, room: any, toStart: boolean) =>
      room?.roomId === roomId && !toStart && event.getType() === "m.room.message" ? event : undefined,
    );
    const t0 = performance.now();
    const { event_id: messageId } = await alice.sendTextMessage(roomId, "hello bob");
    const received = await arrived;
    expect(received.getContent().body).toBe("hello bob");
    expect(received.getId()).toBe(messageId);
    expect(performance.now() - t0).toBeLessThan(2_000);

    // Typing.
    const typing = next(bob, sdk.RoomMemberEvent.Typing, (_e: MatrixEvent, member: any) =>
      member.userId === users.alice!.userId && member.typing ? member.roomId : undefined,
    );
    await alice.sendTyping(roomId, true, 20_000);
    expect(await typing).toBe(roomId);
    const stopped = next(bob, sdk.RoomMemberEvent.Typing, (_e: MatrixEvent, member: any) =>
      member.userId === users.alice!.userId && !member.typing ? true : undefined,
    );
    await alice.sendTyping(roomId, false, 0);
    expect(await stopped).toBe(true);

    // A read receipt from bob reaches alice.
    const receipt = next(alice, sdk.RoomEvent.Receipt, (event: MatrixEvent, room: any) => {
      const content = event.getContent() as Record<string, any>;
      return room.roomId === roomId && content[messageId]?.["m.read"]?.[users.bob!.userId] ? true : undefined;
    });
    await bob.sendReadReceipt(bob.getRoom(roomId)!.findEventById(messageId)!);
    expect(await receipt).toBe(true);
    expect(alice.getRoom(roomId)!.getEventReadUpTo(users.bob!.userId)).toBe(messageId);

    // Bob goes away; alice sends 500 messages; bob comes back with his last token.
    bob.stopClient();
    const sent: string[] = [];
    for (let i = 0; i < 500; i++) {
      sent.push(`away ${i}`);
      await alice.sendTextMessage(roomId, `away ${i}`);
    }
    const last = next(bob, sdk.RoomEvent.Timeline, (event: MatrixEvent, room: any) =>
      room?.roomId === roomId && event.getContent().body === "away 499" ? true : undefined,
    30_000);
    await started(bob);
    await last;
    const room = bob.getRoom(roomId)!;
    const live = room.getLiveTimeline();
    // The gap was too big for one response: the SDK got a limited timeline and reset it.
    const loaded = () => live.getEvents().filter((e) => e.getType() === "m.room.message").map((e) => e.getContent().body as string);
    expect(loaded().length).toBeLessThan(500);
    for (let page = 0; page < 30 && !loaded().includes("hello bob"); page++) {
      const more = await bob.paginateEventTimeline(live, { backwards: true, limit: 100 });
      if (!more) break;
    }
    const all = loaded();
    expect(all.slice(all.indexOf("hello bob") + 1)).toEqual(sent);
  }, 120_000);
});

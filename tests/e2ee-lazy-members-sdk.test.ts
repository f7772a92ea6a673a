// Element's configuration of matrix-js-sdk: lazy-loaded members (the SDK asks /members?at=<sync
// token> before it encrypts) and Rust crypto. Three users in an encrypted room each send and each
// decrypt the others' messages; a fourth joins later, decrypts what is sent after, and pages back
// through the history the room lets them see.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { registerUser, type TestUser } from "./accounts-helpers.ts";
import { startTestServer, type TestServer } from "./harness.ts";
import { elementClient, eventually as eventuallyWithin, sdk, type SdkClient } from "./matrix-sdk.ts";

await import("@matrix-org/matrix-sdk-crypto-wasm");

type Client = SdkClient;
const MEGOLM = "m.megolm.v1.aes-sha2";
const STEP_MS = 20_000;
const eventually = <T>(what: string, check: () => Promise<T | undefined> | T | undefined, ms = STEP_MS) => eventuallyWithin(what, check, ms);

let hs: TestServer;
const clients: Client[] = [];
beforeAll(async () => {
  hs = await startTestServer();
});
afterAll(async () => {
  for (const c of clients) c.stopClient();
  await hs.destroy();
});

/** A client as Element starts it: Rust crypto, lazy-loaded members. Answers once it has synced. */
const startElement = (user: TestUser) => elementClient(hs.url, user, clients);

/** The bodies this client has decrypted in the room's live timeline (decrypting what it can). */
async function decryptedBodies(client: Client, roomId: string): Promise<string[]> {
  const out: string[] = [];
  for (const event of client.getRoom(roomId)?.getLiveTimeline().getEvents() ?? []) {
    if (event.getWireType() !== "m.room.encrypted") continue;
    await client.decryptEventIfNeeded(event);
    if (!event.isDecryptionFailure() && typeof event.getClearContent()?.body === "string") out.push(event.getClearContent()!.body as string);
  }
  return out;
}

describe("matrix-js-sdk with lazy-loaded members (Element's default) and Rust crypto", () => {
  it("three members send and decrypt each other's messages; a late joiner decrypts what follows and pages back", async () => {
    const users = await Promise.all(["llalice", "llbob", "llcarol", "lldave"].map((n) => registerUser(hs.url, n)));
    const [alice, bob, carol] = await Promise.all(users.slice(0, 3).map(startElement));
    const daveUser = users[3]!;
    for (const u of users.slice(0, 3)) {
      await eventually(`${u.userId} uploads device keys`, async () => ((await hs.services.e2ee.deviceKeys.deviceKeysOf(u.userId)).has(u.deviceId) ? true : undefined));
    }
    const { room_id: roomId } = await alice!.createRoom({
      preset: sdk.Preset.PublicChat,
      initial_state: [
        { type: "m.room.encryption", state_key: "", content: { algorithm: MEGOLM } },
        { type: "m.room.history_visibility", state_key: "", content: { history_visibility: "shared" } },
      ],
    });
    await bob!.joinRoom(roomId);
    await carol!.joinRoom(roomId);
    for (const c of [alice!, bob!, carol!]) {
      await eventually("everyone sees three members", () => (c.getRoom(roomId)?.getJoinedMemberCount() === 3 ? true : undefined));
    }
    // Plenty of history first, so later clients have pages to go back through.
    for (let i = 0; i < 25; i++) await alice!.sendTextMessage(roomId, `filler ${i}`);

    // Each sends: the SDK loads the members (/members?at=<sync token>) to know whom to share keys with.
    const sent: string[] = [];
    for (const [name, c] of [["alice", alice!], ["bob", bob!], ["carol", carol!]] as const) {
      const body = `secret from ${name}`;
      await c.sendTextMessage(roomId, body);
      sent.push(body);
    }
    for (const [name, c] of [["alice", alice!], ["bob", bob!], ["carol", carol!]] as const) {
      const got = await eventually(`${name} decrypts every secret`, async () => {
        const bodies = await decryptedBodies(c, roomId);
        return sent.every((b) => bodies.includes(b)) ? bodies : undefined;
      });
      expect(got).toEqual(expect.arrayContaining(sent));
    }

    // Dave joins later: he decrypts what is sent after he joined, and pages back through history.
    const dave = await startElement(daveUser);
    await dave.joinRoom(roomId);
    await eventually("bob sees dave", () => (bob!.getRoom(roomId)?.getMember(daveUser.userId)?.membership === "join" ? true : undefined));
    await bob!.sendTextMessage(roomId, "welcome dave, secretly");
    await eventually("dave decrypts bob's welcome", async () => ((await decryptedBodies(dave, roomId)).includes("welcome dave, secretly") ? true : undefined));

    const room = dave.getRoom(roomId)!;
    const before = room.getLiveTimeline().getEvents().length;
    const hasCreate = () => room.getLiveTimeline().getEvents().some((e) => e.getType() === "m.room.create");
    for (let i = 0; i < 10 && !hasCreate(); i++) await dave.scrollback(room, 20);
    const events = room.getLiveTimeline().getEvents();
    expect(events.length).toBeGreaterThan(before);
    // The history goes back to the room's creation, with every earlier message there (encrypted
    // before dave had a device in the room: no keys for them, as Megolm intends).
    expect(events.some((e) => e.getType() === "m.room.create")).toBe(true);
    expect(events.filter((e) => e.getWireType() === "m.room.encrypted").length).toBeGreaterThanOrEqual(29);
    // Lazy loading: dave's client holds the members it needed, and learns the rest on demand.
    await room.loadMembersIfNeeded();
    expect(room.getJoinedMemberCount()).toBe(4);
  }, 120_000);
});

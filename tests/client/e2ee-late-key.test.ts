// An encrypted event that arrives before its room key (common over federation: the event and the
// to-device key travel separately) is decrypted once the key comes, without the application asking:
// the client replaces it in the room's timeline and emits "decrypted".
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ParleyClient } from "../../client/client.ts";
import { E2EE } from "../../client/crypto/e2ee.ts";
import { MemoryCryptoStore } from "../../client/crypto/store.ts";
import type { Room, TimelineEvent } from "../../client/room.ts";
import { startTestServer, type TestServer } from "../harness.ts";
import { type CryptoClient, memberJoined, registerCryptoClient, untilSynced } from "./e2ee-helpers.ts";

let hs: TestServer;
const clients: ParleyClient[] = [];
beforeAll(async () => {
  hs = await startTestServer();
});
afterAll(async () => {
  await Promise.all(clients.map((c) => c.stop()));
  await hs.destroy();
});

/** A fetch that, while `holding`, keeps the to-device events of /sync answers back, and hands them over once released. */
function toDeviceHolder() {
  const held: unknown[] = [];
  const state = { holding: false, held };
  const wrapped: typeof fetch = async (input, init) => {
    const response = await fetch(input, init);
    const url = typeof input === "string" ? input : input instanceof URL ? input.href : input.url;
    if (!url.includes("/_matrix/client/v3/sync") || response.status !== 200) return response;
    const body = (await response.json()) as { to_device?: { events?: unknown[] } };
    const events = body.to_device?.events ?? [];
    if (state.holding) held.push(...events.splice(0));
    else if (held.length > 0) events.unshift(...held.splice(0));
    body.to_device = { events };
    return new Response(JSON.stringify(body), { status: 200, headers: { "Content-Type": "application/json" } });
  };
  return { state, fetch: wrapped };
}

describe("a room key that arrives after its event", () => {
  it("decrypts the waiting event in the timeline and emits decrypted", async () => {
    const alice: CryptoClient = await registerCryptoClient(hs.url, "alice");
    clients.push(alice.client);
    const registered = await ParleyClient.register(hs.url, `bob${Date.now().toString(36)}`, "pw-bob-secret");
    const holder = toDeviceHolder();
    const bob = new ParleyClient({
      baseUrl: hs.url,
      accessToken: registered.http.accessToken!,
      userId: registered.userId,
      deviceId: registered.deviceId,
      fetch: holder.fetch,
      sync: { backoff: { initialMs: 50, maxMs: 400 }, pollTimeoutMs: 2_000 },
    });
    clients.push(bob);
    bob.setCrypto(await E2EE.create({ http: bob.http, userId: bob.userId, deviceId: bob.deviceId, store: new MemoryCryptoStore() }));
    await bob.start();

    const roomId = await alice.client.createRoom({ encrypted: true, invite: [bob.userId] });
    await untilSynced(bob, "bob is invited", () => bob.room(roomId)?.membership === "invite" || undefined);
    await bob.joinRoom(roomId);
    await memberJoined(alice, roomId, bob.userId);

    holder.state.holding = true;
    const decrypted: Array<{ room: Room; event: TimelineEvent }> = [];
    bob.on("decrypted", (room, event) => decrypted.push({ room, event }));
    const eventId = await alice.client.sendText(roomId, "the key comes later");
    const early = await untilSynced(bob, "bob receives the event", () => bob.room(roomId)?.timeline.find((e) => e.event_id === eventId));
    expect(early.encrypted).toMatchObject({ decrypted: false, error: "UNKNOWN_SESSION" });
    expect(holder.state.held.length).toBeGreaterThan(0);

    holder.state.holding = false;
    await untilSynced(bob, "bob decrypts the event once the key arrives", () => decrypted.length > 0 || undefined);
    expect(decrypted[0]!.event).toMatchObject({ event_id: eventId, type: "m.room.message", content: { body: "the key comes later" } });
    expect(decrypted[0]!.event.encrypted).toMatchObject({ decrypted: true, senderDevice: alice.client.deviceId });
    const inTimeline = bob.room(roomId)!.timeline.find((e) => e.event_id === eventId)!;
    expect(inTimeline.content.body).toBe("the key comes later");
  }, 30_000);
});

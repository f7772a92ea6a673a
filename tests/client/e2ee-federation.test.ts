// Two Parley clients (the E2EE machine on our Olm/Megolm) on two federating Parley servers chat in an
// encrypted room: device keys are queried and one-time keys claimed across servers, the room keys go
// over federation as to-device messages, and each client decrypts the other's messages (a room event
// may arrive before its key does: it is decrypted again once the key is there).
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Network, startNetwork } from "../federation-harness.ts";
import { type CryptoClient, decryptedEventually, memberJoined, registerCryptoClient, untilSynced } from "./e2ee-helpers.ts";

let net: Network;
const started: CryptoClient[] = [];
beforeAll(async () => {
  net = await startNetwork(2);
});
afterAll(async () => {
  await Promise.all(started.map((c) => c.client.stop()));
  await net.destroy();
});

describe("E2EE across two Parley servers", () => {
  it("a user on each server exchanges Megolm messages both ways", async () => {
    const [hs1, hs2] = net.servers as [Network["servers"][0], Network["servers"][0]];
    const alice = await registerCryptoClient(hs1.url, "fedalice");
    const bob = await registerCryptoClient(hs2.url, "fedbob");
    started.push(alice, bob);
    expect(alice.client.userId.endsWith(":hs1.test") && bob.client.userId.endsWith(":hs2.test")).toBe(true);

    const roomId = await alice.client.createRoom({ encrypted: true, invite: [bob.client.userId] });
    await untilSynced(bob.client, "bob's invite over federation", () => bob.client.room(roomId)?.membership === "invite");
    await bob.client.joinRoom(roomId, ["hs1.test"]);
    await memberJoined(alice, roomId, bob.client.userId);
    await untilSynced(bob.client, "bob sees the room encrypted", () => bob.client.room(roomId)?.encrypted);

    const fromAlice = await alice.client.sendText(roomId, "across servers, secretly");
    const got = await decryptedEventually(bob, roomId, fromAlice);
    expect(got.encrypted).toMatchObject({ decrypted: true, senderDevice: alice.client.deviceId, verified: "unverified" });
    expect(got.content.body).toBe("across servers, secretly");

    const fromBob = await bob.client.sendText(roomId, "and back");
    const back = await decryptedEventually(alice, roomId, fromBob);
    expect(back.encrypted).toMatchObject({ decrypted: true, senderDevice: bob.client.deviceId });
    expect(back.content.body).toBe("and back");
  }, 60_000);
});

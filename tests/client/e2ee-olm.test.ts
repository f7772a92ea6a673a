// The E2EE machine's Olm layer without a homeserver (the key and to-device endpoints in memory):
// the checks on a decrypted to-device payload (sender, recipient, recipient_keys, keys.ed25519) keep
// a room key whose payload lies out, and a session that no longer decrypts ("wedged") is replaced
// by a new one announced with m.dummy; device keys are taken only self-signed and filed under their
// own IDs, and a known device's Ed25519 key never changes.
import Olm from "@towns-protocol/olm";
import { beforeAll, describe, expect, it } from "vitest";
import { canonicalJson } from "../../federation/protocol/canonical-json.ts";
import { E2EE } from "../../client/crypto/e2ee.ts";
import { MemoryCryptoStore } from "../../client/crypto/store.ts";
import { KeyServer } from "./e2ee-helpers.ts";

let olm: Awaited<ReturnType<typeof Olm.initAsync>>;
beforeAll(async () => {
  olm = await Olm.initAsync();
});

const ROOM = "!room:x";

async function machine(server: KeyServer, userId: string, deviceId: string, store = new MemoryCryptoStore()): Promise<E2EE> {
  return E2EE.create({ http: server.httpFor(userId, deviceId), userId, deviceId, store });
}

/** A device driven by hand with libolm, its signed device keys published, so payloads can be forged. */
function handDevice(server: KeyServer, userId: string, deviceId: string) {
  const account = new olm.Account();
  account.create();
  const keys = JSON.parse(account.identity_keys()) as { curve25519: string; ed25519: string };
  const unsigned = {
    user_id: userId,
    device_id: deviceId,
    algorithms: ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
    keys: { [`curve25519:${deviceId}`]: keys.curve25519, [`ed25519:${deviceId}`]: keys.ed25519 },
  };
  const signed = { ...unsigned, signatures: { [userId]: { [`ed25519:${deviceId}`]: account.sign(canonicalJson(unsigned)) } } };
  server.handle(userId, deviceId, "/_matrix/client/v3/keys/upload", { device_keys: signed });
  return { account, keys };
}

describe("E2EE machine: Olm payloads and sessions", () => {
  it("takes a room key only when the Olm payload names the real sender, this recipient and the sending device's key", async () => {
    const server = new KeyServer();
    const bob = await machine(server, "@bob:x", "BOB");
    const mallory = handDevice(server, "@mallory:x", "MAL");
    await bob.devices.ensureUpToDate(["@mallory:x"]);
    const bobKeys = bob.identityKeys();
    const claimed = server.handle("@mallory:x", "MAL", "/_matrix/client/v3/keys/claim", { one_time_keys: { "@bob:x": { BOB: "signed_curve25519" } } });
    const otk = (Object.values(claimed.one_time_keys["@bob:x"].BOB)[0] as { key: string }).key;
    const session = new olm.Session();
    session.create_outbound(mallory.account, bobKeys.curve25519, otk);

    const group = new olm.OutboundGroupSession();
    group.create();
    const roomKey = { algorithm: "m.megolm.v1.aes-sha2", room_id: ROOM, session_id: group.session_id(), session_key: group.session_key() };
    const honest = { type: "m.room_key", content: roomKey, sender: "@mallory:x", recipient: "@bob:x", recipient_keys: { ed25519: bobKeys.ed25519 }, keys: { ed25519: mallory.keys.ed25519 } };
    const send = async (payload: Record<string, unknown>, sender = "@mallory:x") => {
      const message = session.encrypt(JSON.stringify(payload));
      const event = { type: "m.room.encrypted", sender, content: { algorithm: "m.olm.v1.curve25519-aes-sha2", sender_key: mallory.keys.curve25519, ciphertext: { [bobKeys.curve25519]: message } } };
      return bob.processSync({ to_device: { events: [event] } });
    };
    const roomEvent = () => ({
      event_id: `$e${Math.random()}`,
      type: "m.room.encrypted",
      sender: "@mallory:x",
      origin_server_ts: 1,
      content: { algorithm: "m.megolm.v1.aes-sha2", session_id: group.session_id(), ciphertext: group.encrypt(JSON.stringify({ type: "m.room.message", content: { body: "hi" }, room_id: ROOM })) },
    });

    // Each lie is refused: the event comes back undecrypted-as-consumed, and no session is taken.
    const lies: Array<[string, Record<string, unknown>, string?]> = [
      ["another recipient", { ...honest, recipient: "@carol:x" }],
      ["another recipient device", { ...honest, recipient_keys: { ed25519: mallory.keys.ed25519 } }],
      ["another sending device's key", { ...honest, keys: { ed25519: bobKeys.ed25519 } }],
      ["another sender than the event's", { ...honest, sender: "@alice:x" }],
    ];
    for (const [what, payload] of lies) {
      const returned = await send(payload);
      expect(returned, what).toEqual([expect.objectContaining({ decryption_error: "BAD_MESSAGE_FORMAT" })]);
      expect((await bob.decryptRoomEvent(ROOM, roomEvent())).encrypted, what).toEqual({ decrypted: false, error: "UNKNOWN_SESSION" });
    }

    // The honest payload: the key is taken, the room event decrypts and is attributed to mallory's device.
    expect(await send(honest)).toEqual([]);
    const decrypted = await bob.decryptRoomEvent(ROOM, roomEvent());
    expect(decrypted.content).toEqual({ body: "hi" });
    expect(decrypted.encrypted).toMatchObject({ decrypted: true, senderDevice: "MAL", senderCurve25519: mallory.keys.curve25519 });
  });

  it("replaces a wedged Olm session: a new session from a fresh one-time key, announced with m.dummy", async () => {
    const server = new KeyServer();
    const alice = await machine(server, "@alice:x", "ALICE");
    const bobStore = new MemoryCryptoStore();
    const bob = await machine(server, "@bob:x", "BOB", bobStore);
    const members = ["@alice:x", "@bob:x"];
    // Room keys both ways: both ends' sessions have received a message (later ones are not pre-key).
    await alice.encryptRoomEvent(ROOM, "m.room.message", { body: "1" }, members);
    await bob.processSync({ to_device: { events: server.take("@bob:x", "BOB") } });
    await bob.encryptRoomEvent(ROOM, "m.room.message", { body: "2" }, members);
    await alice.processSync({ to_device: { events: server.take("@alice:x", "ALICE") } });

    // Bob's device loses its Olm sessions (an old backup of the store, say).
    await bobStore.delete("olm_sessions", alice.identityKeys().curve25519);
    const bobAgain = await machine(server, "@bob:x", "BOB", bobStore);
    alice.onMembershipChange(ROOM, "@carol:x", "leave"); // a new room key, sent over the old session
    await alice.encryptRoomEvent(ROOM, "m.room.message", { body: "3" }, members);
    const [wedged] = server.take("@bob:x", "BOB");
    expect(wedged!.content.ciphertext[bobAgain.identityKeys().curve25519].type).toBe(1);
    const returned = await bobAgain.processSync({ to_device: { events: [wedged] } });
    expect(returned).toEqual([expect.objectContaining({ decryption_error: "BAD_MESSAGE_MAC" })]);

    // Bob made a new session and told alice with m.dummy (a pre-key message); alice takes it.
    const [dummy] = server.take("@alice:x", "ALICE");
    expect(dummy!.content.ciphertext[alice.identityKeys().curve25519].type).toBe(0);
    expect(await alice.processSync({ to_device: { events: [dummy] } })).toEqual([]);
    // Alice's next room key goes over the new session, and bob reads the room again.
    alice.onMembershipChange(ROOM, "@carol:x", "leave");
    const content = await alice.encryptRoomEvent(ROOM, "m.room.message", { body: "4" }, members);
    expect(await bobAgain.processSync({ to_device: { events: server.take("@bob:x", "BOB") } })).toEqual([]);
    const event = { event_id: "$4", type: "m.room.encrypted", sender: "@alice:x", origin_server_ts: 4, content };
    expect((await bobAgain.decryptRoomEvent(ROOM, event)).content).toEqual({ body: "4" });

    // A second failure within the hour does not drain another one-time key.
    const before = server.oneTimeKeys.get("@alice:x|ALICE")!.length;
    await bobAgain.processSync({ to_device: { events: [wedged] } });
    expect(server.oneTimeKeys.get("@alice:x|ALICE")!.length).toBe(before);
  });

  it("takes a device's keys only when self-signed, and never lets a known device's Ed25519 key change", async () => {
    const server = new KeyServer();
    const bob = await machine(server, "@bob:x", "BOB");
    const honest = handDevice(server, "@carol:x", "HONEST");
    // A device whose keys are signed by another key than its own.
    handDevice(server, "@carol:x", "FORGED");
    const forged = server.deviceKeys.get("@carol:x")!.get("FORGED")!;
    forged.signatures = { "@carol:x": { "ed25519:FORGED": honest.account.sign("something else") } };
    // A device filed under another device ID than the one its keys name.
    server.deviceKeys.get("@carol:x")!.set("MISFILED", server.deviceKeys.get("@carol:x")!.get("HONEST")!);
    await bob.devices.ensureUpToDate(["@carol:x"]);
    expect(bob.devices.devicesOf("@carol:x").map((d) => d.deviceId)).toEqual(["HONEST"]);

    // The server swaps HONEST's keys for another (validly self-signed) set: refused, the old keys stay.
    const refused: string[] = [];
    bob.devices.onKeyChangeRefused = (_user, deviceId) => refused.push(deviceId);
    const swapped = handDevice(server, "@mallory:x", "HONEST");
    const swappedKeys = server.deviceKeys.get("@mallory:x")!.get("HONEST")!;
    const resigned = { ...swappedKeys, user_id: "@carol:x", signatures: {} as Record<string, unknown> };
    const { signatures: _s, ...unsigned } = resigned;
    resigned.signatures = { "@carol:x": { "ed25519:HONEST": swapped.account.sign(canonicalJson(unsigned)) } };
    server.deviceKeys.get("@carol:x")!.set("HONEST", resigned);
    await bob.devices.refresh(["@carol:x"]);
    expect(refused).toEqual(["HONEST"]);
    expect(bob.devices.device("@carol:x", "HONEST")?.ed25519).toBe(honest.keys.ed25519);
  });
});

// Every room version, 1 to 12, across two Parley servers on loopback: a room of each version is
// created, joined from the other server, written to from both sides, its state changed, an event
// redacted and a member leaving, and both servers end with the same state and history.
// Versions 1–2 carry their event IDs ($opaque:server) and name prev/auth events with hashes; 3 uses
// standard base64 reference-hash IDs, 4+ URL-safe ones; knocking exists from 7.
// https://spec.matrix.org/latest/rooms/
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Network, startNetwork } from "./federation-harness.ts";
import { startTestServer, type TestServer } from "./harness.ts";
import { type RoomUser, registerRoomUser, roomPath, timeline } from "./rooms-helpers.ts";

let net: Network;
let hs1: TestServer;
let hs2: TestServer;
let alice: RoomUser; // hs1
let bob: RoomUser; // hs2

const enc = encodeURIComponent;
const VERSIONS = ["1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12"];

async function eventually<T>(check: () => Promise<T>, timeoutMs = 15_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await check();
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }
}

async function fullState(user: RoomUser, roomId: string): Promise<Record<string, string>> {
  const res = await user.call("GET", roomPath(roomId, "/state"));
  expect(res.status, JSON.stringify(res.json)).toBe(200);
  return Object.fromEntries(res.json.map((e: any) => [`${e.type}|${e.state_key}`, e.event_id]));
}

beforeAll(async () => {
  net = await startNetwork(2);
  [hs1, hs2] = net.servers as [TestServer, TestServer];
  [alice, bob] = await Promise.all([registerRoomUser(hs1.url, "alice"), registerRoomUser(hs2.url, "bob")]);
}, 120_000);

afterAll(async () => {
  await net?.destroy();
});

describe("capabilities", () => {
  it("advertise every room version 1–12 as stable, 12 the default", async () => {
    const res = await alice.call("GET", "/_matrix/client/v3/capabilities");
    expect(res.status).toBe(200);
    expect(res.json.capabilities["m.room_versions"]).toEqual({
      default: "12",
      available: Object.fromEntries(VERSIONS.map((v) => [v, "stable"])),
    });
  });
});

describe("default_room_version", () => {
  it("sets the version of rooms created without one and the advertised default", async () => {
    const hs = await startTestServer({ config: { default_room_version: "9" } });
    try {
      const carol = await registerRoomUser(hs.url, "carol");
      const caps = await carol.call("GET", "/_matrix/client/v3/capabilities");
      expect(caps.json.capabilities["m.room_versions"].default).toBe("9");
      const roomId = await carol.createRoom({});
      expect((await carol.state(roomId, "m.room.create")).json.room_version).toBe("9");
      const v12 = await carol.createRoom({ room_version: "12" });
      expect((await carol.state(v12, "m.room.create")).json.room_version).toBe("12");
    } finally {
      await hs.destroy();
    }
    await expect(startTestServer({ config: { default_room_version: "13" } })).rejects.toThrow(/default_room_version/);
  });
});

describe.each(VERSIONS)("room version %s", (version) => {
  let roomId: string;
  let aliceMessage: string;

  it("is created, joined from another server, and written to from both", async () => {
    roomId = await alice.createRoom({ room_version: version, preset: "public_chat", name: `v${version}` });
    const create = await alice.state(roomId, "m.room.create");
    expect(create.json.room_version).toBe(version);
    // Before v11 the create event names its creator.
    if (Number(version) <= 10) expect(create.json.creator).toBe(alice.userId);
    aliceMessage = await alice.send(roomId, { msgtype: "m.text", body: `hello from alice in v${version}` });

    const join = await bob.call("POST", `/_matrix/client/v3/join/${enc(roomId)}?via=${net.names[0]!}`, {});
    expect(join.status, JSON.stringify(join.json)).toBe(200);
    const bobMessage = await bob.send(roomId, { msgtype: "m.text", body: `hello from bob in v${version}` });

    // Event IDs per format.
    if (version === "1" || version === "2") {
      expect(aliceMessage).toMatch(new RegExp(`^\\$[^:]+:${net.names[0]!.replace(/\./g, "\\.")}$`));
      expect(bobMessage).toMatch(new RegExp(`^\\$[^:]+:${net.names[1]!.replace(/\./g, "\\.")}$`));
    } else if (version === "3") {
      expect(aliceMessage).toMatch(/^\$[A-Za-z0-9+/]{43}$/);
    } else {
      expect(aliceMessage).toMatch(/^\$[A-Za-z0-9_-]{43}$/);
    }

    await eventually(async () => {
      const bodies = (await timeline(alice, roomId)).filter((e) => e.type === "m.room.message").map((e) => e.content.body);
      expect(bodies).toEqual([`hello from alice in v${version}`, `hello from bob in v${version}`]);
    });
    const seenByBob = (await timeline(bob, roomId)).filter((e) => e.type === "m.room.message").map((e) => e.event_id);
    expect(seenByBob).toContain(aliceMessage);
    expect(seenByBob).toContain(bobMessage);
  });

  it("changes state and redacts across servers, and both servers agree on the state", async () => {
    const topic = await alice.setState(roomId, "m.room.topic", { topic: `topic v${version}` });
    expect(topic.status, JSON.stringify(topic.json)).toBe(200);
    await eventually(async () => expect((await bob.state(roomId, "m.room.topic")).json).toEqual({ topic: `topic v${version}` }));

    // Alice (power 100) redacts her own message; bob sees it redacted.
    const redaction = await alice.call("PUT", roomPath(roomId, `/redact/${enc(aliceMessage)}/r${version}`), { reason: "test" });
    expect(redaction.status, JSON.stringify(redaction.json)).toBe(200);
    await eventually(async () => {
      const res = await bob.call("GET", roomPath(roomId, `/event/${enc(aliceMessage)}`));
      expect(res.status, JSON.stringify(res.json)).toBe(200);
      expect(res.json.content).toEqual({});
      expect(res.json.unsigned.redacted_because.event_id).toBe(redaction.json.event_id);
      expect(res.json.unsigned.redacted_by).toBe(redaction.json.event_id);
    });

    // Bob (power 0) redacts his own message with the r0 form (no transaction ID): in v1–2 the auth
    // rules allow it because both event IDs name his server; from v3 the redaction is applied
    // because both events have the same sender's server.
    const bobMessage = await bob.send(roomId, { msgtype: "m.text", body: "to be redacted" });
    const own = await bob.call("POST", roomPath(roomId, `/redact/${enc(bobMessage)}`), {});
    expect(own.status, JSON.stringify(own.json)).toBe(200);
    await eventually(async () => {
      const res = await alice.call("GET", roomPath(roomId, `/event/${enc(bobMessage)}`));
      expect(res.status, JSON.stringify(res.json)).toBe(200);
      expect(res.json.content).toEqual({});
    });

    const leave = await bob.call("POST", roomPath(roomId, "/leave"), {});
    expect(leave.status, JSON.stringify(leave.json)).toBe(200);
    await eventually(async () => {
      const member = await alice.state(roomId, "m.room.member", bob.userId);
      expect(member.json.membership).toBe("leave");
    });
    // Bob is no longer in the room: compare the state both servers hold through alice and bob's
    // last view (the leave is the last event, so hs2 still has the current state as of it).
    const onHs1 = await fullState(alice, roomId);
    expect(onHs1[`m.room.member|${bob.userId}`]).toBeDefined();
    expect(onHs1["m.room.topic|"]).toBeDefined();
  });

  it("invites a user of another server, who rejects one invite and accepts another", async () => {
    const rejected = await alice.createRoom({ room_version: version, preset: "private_chat" });
    const invite1 = await alice.call("POST", roomPath(rejected, "/invite"), { user_id: bob.userId });
    expect(invite1.status, JSON.stringify(invite1.json)).toBe(200);
    const leave = await bob.call("POST", roomPath(rejected, "/leave"), {});
    expect(leave.status, JSON.stringify(leave.json)).toBe(200);
    await eventually(async () => expect((await alice.state(rejected, "m.room.member", bob.userId)).json.membership).toBe("leave"));

    const accepted = await alice.createRoom({ room_version: version, preset: "private_chat" });
    const invite2 = await alice.call("POST", roomPath(accepted, "/invite"), { user_id: bob.userId });
    expect(invite2.status, JSON.stringify(invite2.json)).toBe(200);
    const join = await bob.call("POST", `/_matrix/client/v3/join/${enc(accepted)}`, {});
    expect(join.status, JSON.stringify(join.json)).toBe(200);
    await eventually(async () => expect((await alice.state(accepted, "m.room.member", bob.userId)).json.membership).toBe("join"));
  });

  it(`knocking ${Number(version) >= 7 ? "works" : "is refused"}`, async () => {
    const knockRoom = await alice.createRoom({ room_version: version, preset: "private_chat" });
    const rule = await alice.setState(knockRoom, "m.room.join_rules", { join_rule: "knock" });
    if (Number(version) < 7) {
      // The knock join rule does not exist before v7: the rules allow the state event (it is an
      // ordinary string), but a knock is an unknown membership and is refused.
      expect(rule.status, JSON.stringify(rule.json)).toBe(200);
      const knock = await bob.call("POST", `/_matrix/client/v3/knock/${enc(knockRoom)}?via=${net.names[0]!}`, {});
      expect(knock.status, JSON.stringify(knock.json)).toBeGreaterThanOrEqual(400);
      return;
    }
    expect(rule.status, JSON.stringify(rule.json)).toBe(200);
    const knock = await bob.call("POST", `/_matrix/client/v3/knock/${enc(knockRoom)}?via=${net.names[0]!}`, {});
    expect(knock.status, JSON.stringify(knock.json)).toBe(200);
    await eventually(async () => expect((await alice.state(knockRoom, "m.room.member", bob.userId)).json.membership).toBe("knock"));
  });
});

// Every room version Synapse 1.67 knows (1 to 10) between Parley and the reference Synapse on
// loopback: a Synapse room of each version joined from Parley, a Parley room of each version joined
// from Synapse, messages both ways, a state change and a redaction crossing, and both sides agreeing
// on the room's state. Versions 1–2 carry server-chosen event IDs and hashed references, 3 has
// standard-base64 IDs, 1 resolves state with state resolution v1.
// Skipped (with the reason printed) when Synapse is not set up here: see tests/synapse-harness.ts.
// https://spec.matrix.org/latest/rooms/
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { registerUser } from "./accounts-helpers.ts";
import { type RoomUser, asRoomUser, roomPath, timeline } from "./rooms-helpers.ts";
import {
  type ParleyForSynapse,
  type RunningSynapse,
  type SynapseInstance,
  registerSynapseUser,
  startParleyForSynapse,
  startSynapse,
  synapseInteropMissing,
  synapseSetup,
} from "./synapse-harness.ts";

const setup = synapseSetup();
const missing = await synapseInteropMissing(setup);
if (missing) console.warn(`synapse-room-versions tests skipped: ${missing}`);

const enc = encodeURIComponent;
const VERSIONS = ["1", "2", "3", "4", "5", "6", "7", "8", "9", "10"];

async function eventually<T>(check: () => Promise<T>, timeoutMs = 20_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await check();
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await new Promise((resolve) => setTimeout(resolve, 250));
    }
  }
}

async function bodies(user: RoomUser, roomId: string): Promise<string[]> {
  return (await timeline(user, roomId)).filter((e) => e.type === "m.room.message" && e.content.body).map((e) => e.content.body);
}

async function stateIds(user: RoomUser, roomId: string): Promise<Record<string, string>> {
  const res = await user.call("GET", roomPath(roomId, "/state"));
  expect(res.status, JSON.stringify(res.json)).toBe(200);
  return Object.fromEntries(res.json.map((e: any) => [`${e.type}|${e.state_key}`, e.event_id]));
}

describe.skipIf(missing !== undefined)("room versions with Synapse", () => {
  let synapse: RunningSynapse;
  let hs1: SynapseInstance;
  let parley: ParleyForSynapse;
  let sam: RoomUser; // on Synapse
  let pat: RoomUser; // on Parley

  beforeAll(async () => {
    if (!setup.ready) return;
    synapse = await startSynapse(setup, setup.instances.slice(0, 1).map((i) => i.name));
    hs1 = synapse.instances[0]!;
    parley = await startParleyForSynapse(synapse.instances);
    sam = asRoomUser(hs1.clientUrl, await registerSynapseUser(hs1, "vsam"));
    pat = asRoomUser(parley.url, await registerUser(parley.url, "vpat"));
  }, 240_000);

  afterAll(async () => {
    await parley?.destroy();
    await synapse?.release();
  });

  it.each(VERSIONS)("room version %s on Synapse, joined from Parley", async (version) => {
    const roomId = await sam.createRoom({ preset: "public_chat", room_version: version });
    await sam.send(roomId, { msgtype: "m.text", body: `synapse first v${version}` });
    const join = await pat.call("POST", `/_matrix/client/v3/join/${enc(roomId)}?via=${enc(hs1.serverName)}`, {});
    expect(join.status, JSON.stringify(join.json)).toBe(200);
    expect((await pat.state(roomId, "m.room.create")).json.room_version).toBe(version);
    const patMessage = await pat.send(roomId, { msgtype: "m.text", body: `parley v${version}` });
    if (Number(version) <= 2) expect(patMessage).toMatch(/^\$[^:]+:/);
    await sam.send(roomId, { msgtype: "m.text", body: `synapse second v${version}` });
    await eventually(async () => expect((await bodies(sam, roomId)).sort()).toEqual([`parley v${version}`, `synapse first v${version}`, `synapse second v${version}`]));
    await eventually(async () => expect((await bodies(pat, roomId)).sort()).toEqual([`parley v${version}`, `synapse first v${version}`, `synapse second v${version}`]));
    // Synapse (power 100) redacts Parley's message; Parley applies it.
    const redaction = await sam.call("PUT", roomPath(roomId, `/redact/${enc(patMessage)}/r${version}`), {});
    expect(redaction.status, JSON.stringify(redaction.json)).toBe(200);
    await eventually(async () => expect((await pat.call("GET", roomPath(roomId, `/event/${enc(patMessage)}`))).json.content).toEqual({}));
    // Synapse's state change reaches Parley, and both hold the same state.
    expect((await sam.setState(roomId, "m.room.topic", { topic: `v${version}` })).status).toBe(200);
    await eventually(async () => expect((await pat.state(roomId, "m.room.topic")).json).toEqual({ topic: `v${version}` }));
    await eventually(async () => expect(await stateIds(pat, roomId)).toEqual(await stateIds(sam, roomId)));
  });

  it.each(VERSIONS)("room version %s on Parley, joined from Synapse", async (version) => {
    const roomId = await pat.createRoom({ preset: "public_chat", room_version: version });
    await pat.send(roomId, { msgtype: "m.text", body: `parley first v${version}` });
    const join = await sam.call("POST", `/_matrix/client/v3/join/${enc(roomId)}?server_name=${enc(parley.serverName)}`, {});
    expect(join.status, JSON.stringify(join.json)).toBe(200);
    const samMessage = await sam.send(roomId, { msgtype: "m.text", body: `synapse v${version}` });
    await pat.send(roomId, { msgtype: "m.text", body: `parley second v${version}` });
    await eventually(async () => expect((await bodies(pat, roomId)).sort()).toEqual([`parley first v${version}`, `parley second v${version}`, `synapse v${version}`]));
    await eventually(async () => expect((await bodies(sam, roomId)).sort()).toEqual([`parley first v${version}`, `parley second v${version}`, `synapse v${version}`]));
    // Synapse's user (power 0) redacts his own message; both servers apply it.
    const redaction = await sam.call("PUT", roomPath(roomId, `/redact/${enc(samMessage)}/r${version}`), {});
    expect(redaction.status, JSON.stringify(redaction.json)).toBe(200);
    await eventually(async () => expect((await pat.call("GET", roomPath(roomId, `/event/${enc(samMessage)}`))).json.content).toEqual({}));
    expect((await pat.setState(roomId, "m.room.topic", { topic: `v${version}` })).status).toBe(200);
    await eventually(async () => expect((await sam.state(roomId, "m.room.topic")).json).toEqual({ topic: `v${version}` }));
    await eventually(async () => expect(await stateIds(sam, roomId)).toEqual(await stateIds(pat, roomId)));
  });
});

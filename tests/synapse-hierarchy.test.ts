// The spaces hierarchy between Parley and the reference Synapse 1.67 on loopback: a Synapse client's
// walk of a Synapse space fills in a child room that lives on Parley (Synapse asks our federation
// /hierarchy), and a Parley client's walk of a Parley space fills in a Synapse space and its rooms
// (we ask Synapse's). Skipped (with the reason printed) when Synapse is not set up here: see
// tests/synapse-harness.ts.
// https://spec.matrix.org/latest/server-server-api/#get_matrixfederationv1hierarchyroomid
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { registerUser, type TestUser } from "./accounts-helpers.ts";
import { request } from "./harness.ts";
import {
  type ParleyForSynapse,
  type RunningSynapse,
  type SynapseInstance,
  type SynapseUser,
  registerSynapseUser,
  startParleyForSynapse,
  startSynapse,
  synapseInteropMissing,
  synapseSetup,
} from "./synapse-harness.ts";
import { createRoom } from "./sync-helpers.ts";

const setup = synapseSetup();
const missing = await synapseInteropMissing(setup);
if (missing) console.warn(`synapse-hierarchy tests skipped: ${missing}`);

const enc = encodeURIComponent;
const SPACE = { creation_content: { type: "m.space" } };

describe.skipIf(missing !== undefined)("the spaces hierarchy with Synapse", () => {
  let synapse: RunningSynapse;
  let hs1: SynapseInstance;
  let parley: ParleyForSynapse;
  let sam: SynapseUser;
  let pat: TestUser;

  const synapseCall = async (method: string, path: string, body?: unknown) => {
    const res = await fetch(`${hs1.clientUrl}${path}`, {
      method,
      headers: { Authorization: `Bearer ${sam.accessToken}`, ...(body === undefined ? {} : { "Content-Type": "application/json" }) },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    });
    return { status: res.status, json: (await res.json()) as any };
  };
  const synapseRoom = async (body: Record<string, unknown>) => {
    const res = await synapseCall("POST", "/_matrix/client/v3/createRoom", body);
    expect(res.status, JSON.stringify(res.json)).toBe(200);
    return res.json.room_id as string;
  };
  const setChild = async (base: "synapse" | "parley", space: string, child: string, via: string[]) => {
    const path = `/_matrix/client/v3/rooms/${enc(space)}/state/m.space.child/${enc(child)}`;
    const res = base === "synapse" ? await synapseCall("PUT", path, { via }) : await request(parley.url, "PUT", path, { token: pat.accessToken, body: { via } });
    expect(res.status, JSON.stringify(res.json)).toBe(200);
  };

  beforeAll(async () => {
    if (!setup.ready) return;
    synapse = await startSynapse(setup, [setup.instances[0]!.name]);
    hs1 = synapse.instances[0]!;
    parley = await startParleyForSynapse(synapse.instances);
    sam = await registerSynapseUser(hs1, "sam");
    pat = await registerUser(parley.url, "pat");
  }, 240_000);

  afterAll(async () => {
    await parley?.destroy();
    await synapse?.release();
  });

  it("a Synapse client's walk fills in a room that lives on Parley", async () => {
    const space = await synapseRoom({ preset: "public_chat", name: "Synapse space", ...SPACE });
    const parleyRoom = await createRoom(parley.url, pat, { preset: "public_chat", name: "Parley room", topic: "from Parley" });
    const parleyPrivate = await createRoom(parley.url, pat, { preset: "private_chat", name: "Parley private" });
    await setChild("synapse", space, parleyRoom, [parley.serverName]);
    await setChild("synapse", space, parleyPrivate, [parley.serverName]);
    const res = await synapseCall("GET", `/_matrix/client/v1/rooms/${enc(space)}/hierarchy`);
    expect(res.status, JSON.stringify(res.json)).toBe(200);
    const rooms = res.json.rooms as Array<{ room_id: string; name?: string; topic?: string }>;
    expect(rooms.map((r) => r.room_id)).toEqual([space, parleyRoom]);
    expect(rooms[1]).toMatchObject({ name: "Parley room", topic: "from Parley", join_rule: "public", num_joined_members: 1 });
  });

  it("a Parley client's walk fills in a Synapse space and its rooms", async () => {
    const synapseSpace = await synapseRoom({ preset: "public_chat", name: "Synapse sub space", ...SPACE });
    const synapseRoomId = await synapseRoom({ preset: "public_chat", name: "Synapse room" });
    const synapsePrivate = await synapseRoom({ preset: "private_chat", name: "Synapse private" });
    await setChild("synapse", synapseSpace, synapseRoomId, [hs1.serverName]);
    await setChild("synapse", synapseSpace, synapsePrivate, [hs1.serverName]);
    const space = await createRoom(parley.url, pat, { preset: "public_chat", name: "Parley space", ...SPACE });
    await setChild("parley", space, synapseSpace, [hs1.serverName]);
    const res = await request(parley.url, "GET", `/_matrix/client/v1/rooms/${enc(space)}/hierarchy`, { token: pat.accessToken });
    expect(res.status, JSON.stringify(res.json)).toBe(200);
    const rooms = res.json.rooms as Array<{ room_id: string; name?: string; children_state: unknown[] }>;
    expect(rooms.map((r) => r.room_id)).toEqual([space, synapseSpace, synapseRoomId]);
    expect(rooms[1]).toMatchObject({ name: "Synapse sub space", room_type: "m.space" });
    expect(rooms[1]!.children_state).toHaveLength(2);
    expect(rooms[2]).toMatchObject({ name: "Synapse room", join_rule: "public" });
  });
});

// The published room directory between Parley and the reference Synapse 1.67 on loopback: a
// Synapse client lists and searches Parley's directory (Synapse asks our federation /publicRooms,
// and POSTs include_all_networks as a string); a Parley client asking for Synapse's directory gets
// what Synapse answers by default (it does not serve its directory over federation: 502). Skipped
// (with the reason printed) when Synapse is not set up here: see tests/synapse-harness.ts.
// https://spec.matrix.org/latest/server-server-api/#public-room-directory
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
if (missing) console.warn(`synapse-directory tests skipped: ${missing}`);

const enc = encodeURIComponent;

describe.skipIf(missing !== undefined)("the room directory with Synapse", () => {
  let synapse: RunningSynapse;
  let hs1: SynapseInstance;
  let parley: ParleyForSynapse;
  let sam: SynapseUser;
  let pat: TestUser;
  const rooms: string[] = [];

  beforeAll(async () => {
    if (!setup.ready) return;
    synapse = await startSynapse(setup, [setup.instances[0]!.name]);
    hs1 = synapse.instances[0]!;
    parley = await startParleyForSynapse(synapse.instances);
    sam = await registerSynapseUser(hs1, "sam");
    pat = await registerUser(parley.url, "pat");
    const published = { visibility: "public", preset: "public_chat" };
    rooms.push(await createRoom(parley.url, pat, { ...published, name: "Parley cheese", topic: "from Parley" }));
    rooms.push(await createRoom(parley.url, pat, { ...published, name: "Parley wine" }));
  }, 240_000);

  afterAll(async () => {
    await parley?.destroy();
    await synapse?.release();
  });

  const synapseClient = (method: "GET" | "POST", query: string, body?: unknown) =>
    fetch(`${hs1.clientUrl}/_matrix/client/v3/publicRooms?server=${enc(parley.serverName)}${query}`, {
      method,
      headers: { Authorization: `Bearer ${sam.accessToken}`, ...(body === undefined ? {} : { "Content-Type": "application/json" }) },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    });

  it("a Synapse client lists Parley's published rooms, a page at a time", async () => {
    const all = await synapseClient("GET", "");
    expect(all.status, await all.clone().text()).toBe(200);
    const listed = (await all.json()) as { chunk: Array<{ room_id: string; name?: string }> };
    expect(new Set(listed.chunk.map((r) => r.room_id))).toEqual(new Set(rooms));

    const first = await synapseClient("GET", "&limit=1");
    expect(first.status, await first.clone().text()).toBe(200);
    const page = (await first.json()) as { chunk: Array<{ room_id: string }>; next_batch?: string };
    expect(page.chunk).toHaveLength(1);
    expect(page.next_batch).toBeDefined();
    const second = await synapseClient("GET", `&limit=1&since=${enc(page.next_batch!)}`);
    expect(second.status, await second.clone().text()).toBe(200);
    const rest = (await second.json()) as { chunk: Array<{ room_id: string }> };
    expect(new Set([...page.chunk, ...rest.chunk].map((r) => r.room_id))).toEqual(new Set(rooms));
  });

  it("a Synapse client searches Parley's directory", async () => {
    const res = await synapseClient("POST", "", { filter: { generic_search_term: "cheese" } });
    expect(res.status, await res.clone().text()).toBe(200);
    const found = (await res.json()) as { chunk: Array<{ room_id: string; topic?: string }> };
    expect(found.chunk.map((r) => r.room_id)).toEqual([rooms[0]]);
    expect(found.chunk[0]!.topic).toBe("from Parley");
  });

  it("a Parley client asking for Synapse's directory gets 502 (Synapse does not serve it over federation by default)", async () => {
    const res = await request(parley.url, "GET", `/_matrix/client/v3/publicRooms?server=${enc(hs1.serverName)}`, { token: pat.accessToken });
    expect(res).toMatchObject({ status: 502, json: { errcode: "M_UNKNOWN" } });
  });
});

// Remote queries against the reference Synapse 1.67 on loopback: each side's clients read the
// other's users' profiles and resolve its room aliases. Skipped (with the reason printed) when
// Synapse is not set up here: see tests/synapse-harness.ts.
// https://spec.matrix.org/latest/server-server-api/#querying-for-information
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
if (missing) console.warn(`synapse-queries tests skipped: ${missing}`);

const enc = encodeURIComponent;

describe.skipIf(missing !== undefined)("remote queries with Synapse", () => {
  let synapse: RunningSynapse;
  let hs1: SynapseInstance;
  let parley: ParleyForSynapse;
  let sam: SynapseUser;
  let pat: TestUser;

  beforeAll(async () => {
    if (!setup.ready) return;
    synapse = await startSynapse(setup, [setup.instances[0]!.name]);
    hs1 = synapse.instances[0]!;
    parley = await startParleyForSynapse(synapse.instances);
    sam = await registerSynapseUser(hs1, "sam");
    pat = await registerUser(parley.url, "pat");
    const named = await fetch(`${hs1.clientUrl}/_matrix/client/v3/profile/${enc(sam.userId)}/displayname`, {
      method: "PUT",
      headers: { Authorization: `Bearer ${sam.accessToken}`, "Content-Type": "application/json" },
      body: JSON.stringify({ displayname: "Sam on Synapse" }),
    });
    expect(named.status).toBe(200);
    const patNamed = await request(parley.url, "PUT", `/_matrix/client/v3/profile/${enc(pat.userId)}/displayname`, {
      token: pat.accessToken,
      body: { displayname: "Pat on Parley" },
    });
    expect(patNamed.status).toBe(200);
  }, 240_000);

  afterAll(async () => {
    await parley?.destroy();
    await synapse?.release();
  });

  it("a Parley client reads a Synapse user's profile", async () => {
    const profile = await request(parley.url, "GET", `/_matrix/client/v3/profile/${enc(sam.userId)}`);
    expect(profile).toMatchObject({ status: 200, json: { displayname: "Sam on Synapse" } });
    const nobody = await request(parley.url, "GET", `/_matrix/client/v3/profile/${enc(`@nobody-here:${hs1.serverName}`)}`);
    expect(nobody.status).toBe(404);
  });

  it("a Synapse client reads a Parley user's profile", async () => {
    const res = await fetch(`${hs1.clientUrl}/_matrix/client/v3/profile/${enc(pat.userId)}`, {
      headers: { Authorization: `Bearer ${sam.accessToken}` },
    });
    expect(res.status, await res.clone().text()).toBe(200);
    expect(await res.json()).toMatchObject({ displayname: "Pat on Parley" });
  });

  it("each resolves the other's room aliases", async () => {
    const localpart = `parley-${Date.now()}`;
    const roomId = await createRoom(parley.url, pat, { room_alias_name: localpart });
    const bySynapse = await fetch(`${hs1.clientUrl}/_matrix/client/v3/directory/room/${enc(`#${localpart}:${parley.serverName}`)}`, {
      headers: { Authorization: `Bearer ${sam.accessToken}` },
    });
    expect(bySynapse.status, await bySynapse.clone().text()).toBe(200);
    expect(await bySynapse.json()).toMatchObject({ room_id: roomId, servers: [parley.serverName] });

    const synapseAlias = `synapse-${Date.now()}`;
    const created = await fetch(`${hs1.clientUrl}/_matrix/client/v3/createRoom`, {
      method: "POST",
      headers: { Authorization: `Bearer ${sam.accessToken}`, "Content-Type": "application/json" },
      body: JSON.stringify({ room_alias_name: synapseAlias }),
    });
    const { room_id: synapseRoom } = (await created.json()) as { room_id: string };
    const byParley = await request(parley.url, "GET", `/_matrix/client/v3/directory/room/${enc(`#${synapseAlias}:${hs1.serverName}`)}`);
    expect(byParley).toMatchObject({ status: 200, json: { room_id: synapseRoom } });
    expect(byParley.json.servers).toContain(hs1.serverName);
  });
});

// Two Parley servers: a client of one reads the published room directory of the other.
// https://spec.matrix.org/latest/server-server-api/#public-room-directory
// https://spec.matrix.org/latest/client-server-api/#get_matrixclientv3publicrooms (`server=`)
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { registerUser, type TestUser } from "./accounts-helpers.ts";
import { type Network, startNetwork } from "./federation-harness.ts";
import { type TestServer, request } from "./harness.ts";
import { createRoom } from "./sync-helpers.ts";

let net: Network;
let hs1: TestServer;
let hs2: TestServer;
let alice: TestUser; // @alice:hs1.test, publishes rooms on hs1
let bob: TestUser; // @bob:hs2.test, reads them through hs2
const rooms: Record<string, string> = {};

const publicRooms = (server: string, params = "") => request(hs2.url, "GET", `/_matrix/client/v3/publicRooms?server=${encodeURIComponent(server)}${params}`, { token: bob.accessToken });
const searchRooms = (server: string, body: Record<string, unknown>) =>
  request(hs2.url, "POST", `/_matrix/client/v3/publicRooms?server=${encodeURIComponent(server)}`, { token: bob.accessToken, body });
const ids = (res: { json: { chunk: Array<{ room_id: string }> } }) => res.json.chunk.map((r) => r.room_id);

beforeAll(async () => {
  net = await startNetwork(2);
  [hs1, hs2] = net.servers as [TestServer, TestServer];
  [alice, bob] = await Promise.all([registerUser(hs1.url, "alice"), registerUser(hs2.url, "bob")]);
  const published = { visibility: "public", preset: "public_chat" };
  rooms.cheese = await createRoom(hs1.url, alice, { ...published, name: "Cheese lovers", topic: "Tasty tasty cheese", room_alias_name: "cheese" });
  rooms.wine = await createRoom(hs1.url, alice, { ...published, name: "Wine club" });
  rooms.bread = await createRoom(hs1.url, alice, { ...published, name: "Bread", topic: "sourdough and rye" });
  rooms.space = await createRoom(hs1.url, alice, { ...published, name: "Food space", creation_content: { type: "m.space" } });
  rooms.hidden = await createRoom(hs1.url, alice, { preset: "public_chat", name: "Not published cheese" });
  rooms.local = await createRoom(hs1.url, alice, { ...published, name: "Local cheese", creation_content: { "m.federate": false } });
  rooms.bobs = await createRoom(hs2.url, bob, { ...published, name: "Bob's room" });
});
afterAll(() => net?.destroy());

describe("GET/POST /publicRooms?server= another server", () => {
  it("lists the rooms published on the other server, with their summaries, and not its unpublished or non-federating ones", async () => {
    const res = await publicRooms("hs1.test");
    expect(res.status).toBe(200);
    expect(new Set(ids(res))).toEqual(new Set([rooms.cheese, rooms.wine, rooms.bread, rooms.space]));
    expect(res.json.chunk.find((r: { room_id: string }) => r.room_id === rooms.cheese)).toEqual({
      room_id: rooms.cheese,
      name: "Cheese lovers",
      topic: "Tasty tasty cheese",
      canonical_alias: "#cheese:hs1.test",
      num_joined_members: 1,
      world_readable: false,
      guest_can_join: false,
      join_rule: "public",
    });
    expect(res.json.chunk.find((r: { room_id: string }) => r.room_id === rooms.space).room_type).toBe("m.space");
    expect(res.json.total_room_count_estimate).toBe(4);
  });

  it("is open to clients without an access token, as the local directory is", async () => {
    const res = await request(hs2.url, "GET", "/_matrix/client/v3/publicRooms?server=hs1.test");
    expect(res.status).toBe(200);
    expect(ids(res)).toHaveLength(4);
  });

  it("searches the other server's directory (the filter is applied there)", async () => {
    const res = await searchRooms("hs1.test", { filter: { generic_search_term: "CHEESE" } });
    expect(res.status).toBe(200);
    expect(ids(res)).toEqual([rooms.cheese]);
    const byTopic = await searchRooms("hs1.test", { filter: { generic_search_term: "sourdough" } });
    expect(ids(byTopic)).toEqual([rooms.bread]);
    const spaces = await searchRooms("hs1.test", { filter: { room_types: ["m.space"] } });
    expect(ids(spaces)).toEqual([rooms.space]);
  });

  it("pages through the other server's directory with its own tokens, GET and POST alike", async () => {
    const first = await publicRooms("hs1.test", "&limit=3");
    expect(first.status).toBe(200);
    expect(ids(first)).toHaveLength(3);
    expect(first.json.prev_batch).toBeUndefined();
    expect(typeof first.json.next_batch).toBe("string");
    const second = await publicRooms("hs1.test", `&limit=3&since=${encodeURIComponent(first.json.next_batch)}`);
    expect(second.status).toBe(200);
    expect(ids(second)).toHaveLength(1);
    expect(second.json.next_batch).toBeUndefined();
    expect(typeof second.json.prev_batch).toBe("string");
    expect(new Set([...ids(first), ...ids(second)])).toEqual(new Set([rooms.cheese, rooms.wine, rooms.bread, rooms.space]));

    const posted = await searchRooms("hs1.test", { limit: 3, since: first.json.next_batch });
    expect(ids(posted)).toEqual(ids(second));
    const searched = await searchRooms("hs1.test", { limit: 1, filter: { generic_search_term: "e" } });
    expect(ids(searched)).toHaveLength(1);
    expect(typeof searched.json.next_batch).toBe("string");
  });

  it("answers for itself when server= names it", async () => {
    const res = await publicRooms("hs2.test");
    expect(res.status).toBe(200);
    expect(ids(res)).toEqual([rooms.bobs]);
  });

  it("answers 502 when the other server cannot be reached or refuses the query, never 500", async () => {
    // An address federation may not reach (loopback, not pinned) is as good as a dead server.
    const unreachable = await publicRooms("127.0.0.1:9");
    expect(unreachable.status).toBe(502);
    expect(unreachable.json.errcode).toBe("M_UNKNOWN");
    const nowhere = await searchRooms("nowhere.invalid", { filter: { generic_search_term: "x" } });
    expect(nowhere.status).toBe(502);
    expect(nowhere.json.errcode).toBe("M_UNKNOWN");
    // hs1 refuses a token it did not issue (400); that is hs2's failure to answer, not the client's.
    const refused = await publicRooms("hs1.test", "&since=not-a-token");
    expect(refused.status).toBe(502);
    expect(refused.json.errcode).toBe("M_UNKNOWN");
  });

  it("refuses a server= that is not a server name with 400", async () => {
    const res = await publicRooms("not a server/name");
    expect(res.status).toBe(400);
    expect(res.json.errcode).toBe("M_INVALID_PARAM");
  });
});

describe("GET/POST /_matrix/federation/v1/publicRooms", () => {
  const ask = (method: "GET" | "POST", path: string, body?: unknown) =>
    hs2.services.federation.http.request("hs1.test", { method, path: `/_matrix/federation/v1/publicRooms${path}`, ...(body === undefined ? {} : { body }) });

  it("answers a signed request with the same chunk and tokens as the client API", async () => {
    const [federation, client] = await Promise.all([ask("GET", "?limit=2"), request(hs1.url, "GET", "/_matrix/client/v3/publicRooms?limit=2")]);
    expect(federation.status).toBe(200);
    // Same tokens (offsets into the same order); the client API lists the non-federating room too.
    expect((federation.body as { chunk: unknown[] }).chunk).toHaveLength(2);
    expect(typeof (federation.body as { next_batch?: string }).next_batch).toBe("string");
    expect(client.json.next_batch).toBe((federation.body as { next_batch?: string }).next_batch);
  });

  it("takes Synapse's include_all_networks as a string, and lists no rooms for a third-party network", async () => {
    const all = await ask("POST", "", { include_all_networks: "false", filter: { generic_search_term: "wine" } });
    expect(all).toMatchObject({ status: 200, body: { chunk: [{ room_id: rooms.wine }] } });
    const allNetworks = await ask("GET", "?include_all_networks=true");
    expect((allNetworks.body as { chunk: unknown[] }).chunk).toHaveLength(4);
    const network = await ask("GET", "?third_party_instance_id=irc-freenode");
    expect(network).toMatchObject({ status: 200, body: { chunk: [] } });
  });

  it("refuses a request without a server's signature with 401", async () => {
    const res = await request(hs1.url, "GET", "/_matrix/federation/v1/publicRooms");
    expect(res.status).toBe(401);
  });

  it("refuses malformed parameters with 400", async () => {
    expect((await ask("GET", "?limit=-1")).status).toBe(400);
    expect((await ask("POST", "", { limit: "ten" })).status).toBe(400);
    expect((await ask("GET", "?since=o-1")).status).toBe(400);
  });
});

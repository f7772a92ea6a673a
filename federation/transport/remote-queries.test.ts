// RemoteQueries.publicRooms against a stand-in for another server: what is asked, and what of the
// answer reaches our client. (tests/federation-directory.test.ts covers two real servers.)
import { describe, expect, it } from "vitest";
import { type FederationHttpClient, type FederationRequest, FederationRequestError } from "./http-client.ts";
import { RemoteQueries } from "./remote-queries.ts";

function peer(answer: (req: FederationRequest) => { status: number; body: unknown } | Promise<never>, now: () => number = Date.now) {
  const asked: FederationRequest[] = [];
  const http = {
    async request(_destination: string, req: FederationRequest) {
      asked.push(req);
      return { headers: {}, ...(await answer(req)) };
    },
  } as unknown as FederationHttpClient;
  return { queries: new RemoteQueries(http, now), asked };
}

const room = { room_id: "!a:remote.org", num_joined_members: 3, world_readable: false, guest_can_join: true };

describe("RemoteQueries.publicRooms", () => {
  it("GETs the directory with the paging parameters, and POSTs it when the query filters", async () => {
    const { queries, asked } = peer(() => ({ status: 200, body: { chunk: [] } }));
    await queries.publicRooms("remote.org", { limit: 5, since: "tok en" });
    await queries.publicRooms("remote.org", { includeAllNetworks: true, thirdPartyInstanceId: "ignored" });
    await queries.publicRooms("remote.org", { thirdPartyInstanceId: "irc" });
    await queries.publicRooms("remote.org", { limit: 2, searchTerm: "cheese", roomTypes: [null, "m.space"] });
    expect(asked.map(({ method, path, body }) => ({ method, path, body }))).toEqual([
      { method: "GET", path: "/_matrix/federation/v1/publicRooms?limit=5&since=tok+en", body: undefined },
      { method: "GET", path: "/_matrix/federation/v1/publicRooms?include_all_networks=true", body: undefined },
      { method: "GET", path: "/_matrix/federation/v1/publicRooms?third_party_instance_id=irc", body: undefined },
      {
        method: "POST",
        path: "/_matrix/federation/v1/publicRooms",
        body: { limit: 2, filter: { generic_search_term: "cheese", room_types: [null, "m.space"] } },
      },
    ]);
  });

  it("passes the answer on, tokens included, keeping the spec's fields of each room", async () => {
    const body = {
      chunk: [{ ...room, name: "A", topic: "t", canonical_alias: "#a:remote.org", avatar_url: "mxc://x/y", join_rule: "public", room_type: "m.space", extra: 1 }],
      next_batch: "n",
      prev_batch: "p",
      total_room_count_estimate: 10,
      unknown: "dropped",
    };
    const { queries } = peer(() => ({ status: 200, body }));
    const { extra: _, ...kept } = body.chunk[0]!;
    expect(await queries.publicRooms("remote.org", {})).toEqual({ chunk: [kept], next_batch: "n", prev_batch: "p", total_room_count_estimate: 10 });
  });

  it("leaves out rooms without the required fields, and optional fields that are not strings", async () => {
    const chunk = [room, { room_id: "!b:remote.org" }, "not a room", null, { ...room, num_joined_members: -1 }, { ...room, room_id: "!c:remote.org", name: 5, topic: null }];
    const { queries } = peer(() => ({ status: 200, body: { chunk } }));
    expect(await queries.publicRooms("remote.org", {})).toEqual({ chunk: [room, { ...room, room_id: "!c:remote.org" }] });
  });

  it("remembers an answer for 30 seconds, per server and request, and asks once for concurrent requests", async () => {
    let clock = 1_000_000;
    const { queries, asked } = peer(() => ({ status: 200, body: { chunk: [room] } }), () => clock);
    await Promise.all([queries.publicRooms("remote.org", { limit: 5 }), queries.publicRooms("remote.org", { limit: 5 })]);
    await queries.publicRooms("remote.org", { limit: 5 });
    expect(asked).toHaveLength(1);
    await queries.publicRooms("remote.org", { limit: 6 });
    await queries.publicRooms("other.org", { limit: 5 });
    await queries.publicRooms("remote.org", { limit: 5, searchTerm: "x" });
    expect(asked).toHaveLength(4);
    clock += 30_001;
    await queries.publicRooms("remote.org", { limit: 5 });
    expect(asked).toHaveLength(5);
  });

  it("does not remember a failure", async () => {
    let fail = true;
    const { queries, asked } = peer(() => (fail ? { status: 500, body: {} } : { status: 200, body: { chunk: [] } }));
    await expect(queries.publicRooms("remote.org", {})).rejects.toMatchObject({ status: 502 });
    fail = false;
    await expect(queries.publicRooms("remote.org", {})).resolves.toEqual({ chunk: [] });
    expect(asked).toHaveLength(2);
  });

  it("answers 502 M_UNKNOWN for a malformed answer, any error status, and a server it cannot reach", async () => {
    for (const answer of [{ status: 200, body: { rooms: [] } }, { status: 200, body: { chunk: [], next_batch: 5 } }, { status: 200, body: undefined }, { status: 404, body: { errcode: "M_UNRECOGNIZED" } }, { status: 403, body: {} }, { status: 500, body: {} }]) {
      const { queries } = peer(() => answer);
      await expect(queries.publicRooms("remote.org", {}), JSON.stringify(answer)).rejects.toMatchObject({ status: 502, errcode: "M_UNKNOWN" });
    }
    const unreachable = peer(() => Promise.reject(new FederationRequestError("unreachable", "remote.org", "connection refused")));
    await expect(unreachable.queries.publicRooms("remote.org", {})).rejects.toMatchObject({ status: 502, errcode: "M_UNKNOWN" });
    const slow = peer(() => Promise.reject(new FederationRequestError("timeout", "remote.org", "timed out")));
    await expect(slow.queries.publicRooms("remote.org", {})).rejects.toMatchObject({ status: 504, errcode: "M_UNKNOWN" });
  });
});

// The user directory, `POST /_matrix/client/v3/user_directory/search`, over HTTP.
// https://spec.matrix.org/latest/client-server-api/#user-directory
import { sql } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { UserDirectory } from "../server/userdirectory/user-directory.ts";
import { passwordAuth } from "./accounts-helpers.ts";
import { startNetwork, type Network } from "./federation-harness.ts";
import { request, startTestServer, type TestServer } from "./harness.ts";
import { type RoomUser, asRoomUser, registerRoomUser, roomPath } from "./rooms-helpers.ts";

const SEARCH = "/_matrix/client/v3/user_directory/search";
const enc = encodeURIComponent;

let hs: TestServer;
let n = 0;
/** A fresh user with a display name no other test uses. */
async function user(base: string, displayName: string): Promise<RoomUser> {
  const u = await registerRoomUser(base, `u${++n}x${Math.random().toString(36).slice(2, 8)}`);
  const res = await u.call("PUT", `/_matrix/client/v3/profile/${enc(u.userId)}/displayname`, { displayname: displayName });
  expect(res.status).toBe(200);
  return u;
}
async function search(who: RoomUser, term: string, limit?: number) {
  const res = await who.call("POST", SEARCH, { search_term: term, ...(limit !== undefined ? { limit } : {}) });
  expect(res.status, JSON.stringify(res.json)).toBe(200);
  return res.json as { results: Array<{ user_id: string; display_name?: string; avatar_url?: string }>; limited: boolean };
}
const ids = (r: { results: Array<{ user_id: string }> }) => r.results.map((u) => u.user_id);
/** A word no other test's names contain. */
const unique = (prefix: string) => `${prefix}${Math.random().toString(36).slice(2, 10)}`;

beforeAll(async () => {
  hs = await startTestServer({ config: { allow_guest_access: true } });
});
afterAll(() => hs?.destroy());

describe("who is found", () => {
  it("finds a user sharing a private room once joined, and no longer after either leaves", async () => {
    const name = unique("Priv");
    const [alice, bob] = await Promise.all([user(hs.url, `${name} Alice`), user(hs.url, unique("Searcher"))]);
    const roomId = await alice.createRoom({ preset: "private_chat", invite: [bob.userId] });
    expect(ids(await search(bob, name))).toEqual([]); // invited is not joined
    expect((await bob.join(roomId)).status).toBe(200);
    const found = await search(bob, name);
    expect(found.results).toEqual([{ user_id: alice.userId, display_name: `${name} Alice` }]);
    expect(found.limited).toBe(false);
    expect((await bob.call("POST", roomPath(roomId, "/leave"), {})).status).toBe(200);
    expect(ids(await search(bob, name))).toEqual([]);
    // Joined again, then the found user leaves.
    expect((await alice.call("POST", roomPath(roomId, "/invite"), { user_id: bob.userId })).status).toBe(200);
    expect((await bob.join(roomId)).status).toBe(200);
    expect(ids(await search(bob, name))).toEqual([alice.userId]);
    expect((await alice.call("POST", roomPath(roomId, "/leave"), {})).status).toBe(200);
    expect(ids(await search(bob, name))).toEqual([]);
  });

  it("does not find a user in private rooms only, nor oneself through a private room", async () => {
    const name = unique("Hidden");
    const [alice, stranger] = await Promise.all([user(hs.url, `${name} Alice`), user(hs.url, unique("Stranger"))]);
    await alice.createRoom({ preset: "private_chat" });
    expect(ids(await search(stranger, name))).toEqual([]);
    expect(ids(await search(alice, name))).toEqual([]);
  });

  it("finds members of a room with join rule public, until it is made invite-only", async () => {
    const name = unique("Pub");
    const [alice, member, stranger] = await Promise.all([user(hs.url, `${name} Creator`), user(hs.url, `${name} Member`), user(hs.url, unique("Stranger"))]);
    const roomId = await alice.createRoom({ preset: "public_chat" });
    expect((await member.join(roomId)).status).toBe(200);
    expect(ids(await search(stranger, name)).sort()).toEqual([alice.userId, member.userId].sort());
    expect(ids(await search(member, `${name} Member`))).toEqual([member.userId]); // oneself, through the public room
    expect((await alice.setState(roomId, "m.room.join_rules", { join_rule: "invite" })).status).toBe(200);
    expect(ids(await search(stranger, name))).toEqual([]);
    expect((await alice.setState(roomId, "m.room.join_rules", { join_rule: "public" })).status).toBe(200);
    expect(ids(await search(stranger, name))).toHaveLength(2);
    expect((await member.call("POST", roomPath(roomId, "/leave"), {})).status).toBe(200);
    expect(ids(await search(stranger, name))).toEqual([alice.userId]);
  });

  it("finds members of a world_readable room, until its history visibility is shared", async () => {
    const name = unique("World");
    const [alice, stranger] = await Promise.all([user(hs.url, `${name} Creator`), user(hs.url, unique("Stranger"))]);
    const roomId = await alice.createRoom({ preset: "private_chat" });
    expect(ids(await search(stranger, name))).toEqual([]);
    expect((await alice.setState(roomId, "m.room.history_visibility", { history_visibility: "world_readable" })).status).toBe(200);
    expect(ids(await search(stranger, name))).toEqual([alice.userId]);
    expect((await alice.setState(roomId, "m.room.history_visibility", { history_visibility: "shared" })).status).toBe(200);
    expect(ids(await search(stranger, name))).toEqual([]);
  });

  it("finds a user under a new display name and avatar, and no longer under the old name", async () => {
    const [oldName, newName] = [unique("Before"), unique("After")];
    const [alice, bob] = await Promise.all([user(hs.url, oldName), user(hs.url, unique("Searcher"))]);
    const roomId = await alice.createRoom({ preset: "public_chat" });
    expect((await bob.join(roomId)).status).toBe(200);
    expect(ids(await search(bob, oldName))).toEqual([alice.userId]);
    expect((await alice.call("PUT", `/_matrix/client/v3/profile/${enc(alice.userId)}/displayname`, { displayname: newName })).status).toBe(200);
    expect((await alice.call("PUT", `/_matrix/client/v3/profile/${enc(alice.userId)}/avatar_url`, { avatar_url: "mxc://test.local/face" })).status).toBe(200);
    expect(ids(await search(bob, oldName))).toEqual([]);
    expect((await search(bob, newName)).results).toEqual([{ user_id: alice.userId, display_name: newName, avatar_url: "mxc://test.local/face" }]);
  });

  it("never finds a deactivated user", async () => {
    const name = unique("Gone");
    const [alice, bob] = await Promise.all([user(hs.url, name), user(hs.url, unique("Searcher"))]);
    const roomId = await bob.createRoom({ preset: "public_chat" });
    expect((await alice.join(roomId)).status).toBe(200);
    expect(ids(await search(bob, name))).toEqual([alice.userId]);
    const localpart = alice.userId.slice(1).split(":")[0]!;
    expect(ids(await search(bob, localpart))).toEqual([alice.userId]);
    const res = await alice.call("POST", "/_matrix/client/v3/account/deactivate", { auth: passwordAuth(alice) });
    expect(res.status).toBe(200);
    expect(ids(await search(bob, name))).toEqual([]);
    expect(ids(await search(bob, localpart))).toEqual([]);
  });
});

describe("matching and ranking", () => {
  it("matches word prefixes of the display name, the localpart and the full user ID, case-insensitively; every word must match", async () => {
    const word = unique("zq");
    const searcher = await user(hs.url, unique("Searcher"));
    const alice = await user(hs.url, `Ålice ${word} Smith`);
    const roomId = await alice.createRoom({ preset: "public_chat" });
    expect((await searcher.join(roomId)).status).toBe(200);
    for (const term of [word.slice(0, 4), word.toUpperCase(), "ålice " + word, `${word.slice(0, 3)} smi`, `SMITH ${word}`]) {
      expect(ids(await search(searcher, term)), term).toContain(alice.userId);
    }
    expect(ids(await search(searcher, `${word} jones`))).toEqual([]);
    expect(ids(await search(searcher, `mith ${word}`))).toEqual([]); // a word's middle is no prefix
    const localpart = alice.userId.slice(1).split(":")[0]!;
    expect(ids(await search(searcher, localpart.slice(0, 4)))).toContain(alice.userId);
    expect(ids(await search(searcher, alice.userId))).toEqual([alice.userId]);
    expect(ids(await search(searcher, `@${localpart}`))).toEqual([alice.userId]);
    // Only punctuation: no word to match.
    expect(await search(searcher, "@:!")).toEqual({ results: [], limited: false });
    // Characters LIKE treats specially are matched literally.
    expect(ids(await search(searcher, `${word.slice(0, 2)}%`))).toContain(alice.userId);
    expect(ids(await search(searcher, "_%_"))).toEqual([]);
  });

  it("ranks a whole-name match first, then users sharing a room, then names starting with the term", async () => {
    const word = unique("rk");
    const searcher = await user(hs.url, unique("Searcher"));
    const [exact, sharedWordPrefix, startsWith, plain] = await Promise.all([
      user(hs.url, word),
      user(hs.url, `Ann ${word}x`),
      user(hs.url, `${word}ington`),
      user(hs.url, `Bea ${word}y`),
    ]);
    // A public room the searcher is not in: its members are strangers found through it.
    const publicRoom = await exact.createRoom({ preset: "public_chat" });
    for (const u of [startsWith, plain]) expect((await u.join(publicRoom)).status).toBe(200);
    const privateRoom = await sharedWordPrefix.createRoom({ preset: "private_chat", invite: [searcher.userId] });
    const joined = await searcher.join(privateRoom);
    expect(joined.status, JSON.stringify(joined.json)).toBe(200);
    const found = await search(searcher, word);
    expect(ids(found)).toEqual([exact.userId, sharedWordPrefix.userId, startsWith.userId, plain.userId]);
  });

  it("returns at most `limit` results (default 10) and says when it cut the list", async () => {
    const word = unique("lim");
    const searcher = await user(hs.url, unique("Searcher"));
    const roomId = await searcher.createRoom({ preset: "public_chat" });
    const users = await Promise.all(Array.from({ length: 12 }, (_, i) => user(hs.url, `${word} ${i}`)));
    for (const u of users) expect((await u.join(roomId)).status).toBe(200);
    const byDefault = await search(searcher, word);
    expect(byDefault.results).toHaveLength(10);
    expect(byDefault.limited).toBe(true);
    const two = await search(searcher, word, 2);
    expect(two.results).toHaveLength(2);
    expect(two.limited).toBe(true);
    const all = await search(searcher, word, 12);
    expect(all.results).toHaveLength(12);
    expect(all.limited).toBe(false);
    expect(new Set(ids(all))).toEqual(new Set(users.map((u) => u.userId)));
    // limit 0: nothing listed, but the list was cut (as Synapse answers).
    expect(await search(searcher, word, 0)).toEqual({ results: [], limited: true });
    expect(await search(searcher, unique("nobody"), 0)).toEqual({ results: [], limited: false });
  });
});

describe("requests", () => {
  it("answers a bad body with 400 M_BAD_JSON", async () => {
    const searcher = await user(hs.url, unique("Searcher"));
    for (const body of [{}, { search_term: 5 }, { search_term: "a", limit: "ten" }, { search_term: "a", limit: 1.5 }, { search_term: "a", limit: -1 }, []]) {
      const res = await searcher.call("POST", SEARCH, body);
      expect(res.status, JSON.stringify(body)).toBe(400);
      expect(res.json.errcode).toBe("M_BAD_JSON");
    }
  });

  it("requires an access token, and refuses guests (not an endpoint the spec opens to them)", async () => {
    const anonymous = await request(hs.url, "POST", SEARCH, { body: { search_term: "a" } });
    expect(anonymous.status).toBe(401);
    expect(anonymous.json.errcode).toBe("M_MISSING_TOKEN");
    const guest = await request(hs.url, "POST", "/_matrix/client/v3/register?kind=guest", { body: {} });
    expect(guest.status).toBe(200);
    const res = await request(hs.url, "POST", SEARCH, { token: guest.json.access_token, body: { search_term: "a" } });
    expect(res.status).toBe(403);
    expect(res.json.errcode).toBe("M_GUEST_ACCESS_FORBIDDEN");
  });
});

describe("start-up", () => {
  it("fills itself from the accounts and rooms already there (a database from before the directory)", async () => {
    const name = unique("Older");
    const [alice, bob] = await Promise.all([user(hs.url, name), user(hs.url, unique("Searcher"))]);
    const roomId = await alice.createRoom({ preset: "public_chat" });
    expect((await bob.join(roomId)).status).toBe(200);
    const db = hs.services.db;
    await hs.services.userDirectory.settled();
    await db.execute(sql`delete from user_directory_search`);
    await db.execute(sql`delete from user_directory`);
    await db.execute(sql`delete from user_directory_public_members`);
    await db.execute(sql`delete from user_directory_public_rooms`);
    expect(ids(await search(bob, name))).toEqual([]);
    const again = new UserDirectory({ db, serverName: "test.local", accounts: hs.services.accounts, logger: hs.services.logger, searchAllUsers: false });
    again.start();
    await again.settled();
    expect((await search(bob, name)).results).toEqual([{ user_id: alice.userId, display_name: name }]);
  });
});

describe("user_directory_search_all_users", () => {
  let all: TestServer;
  beforeAll(async () => {
    all = await startTestServer({ config: { user_directory_search_all_users: true, allow_guest_access: true } });
  });
  afterAll(() => all?.destroy());

  it("finds every local account, in a room or not, but not guests nor deactivated users", async () => {
    const name = unique("Lonely");
    const [alice, stranger] = await Promise.all([user(all.url, name), user(all.url, unique("Stranger"))]);
    expect(ids(await search(stranger, name))).toEqual([alice.userId]);
    expect(ids(await search(alice, name))).toEqual([alice.userId]);
    const guest = await request(all.url, "POST", "/_matrix/client/v3/register?kind=guest", { body: {} });
    const guestUser = asRoomUser(all.url, { userId: guest.json.user_id, accessToken: guest.json.access_token, deviceId: guest.json.device_id, password: "" });
    const guestName = unique("Guesty");
    expect((await guestUser.call("PUT", `/_matrix/client/v3/profile/${enc(guestUser.userId)}/displayname`, { displayname: guestName })).status).toBe(200);
    expect(ids(await search(stranger, guestName))).toEqual([]);
    expect((await alice.call("POST", "/_matrix/client/v3/account/deactivate", { auth: passwordAuth(alice) })).status).toBe(200);
    expect(ids(await search(stranger, name))).toEqual([]);
  });

  it("is off by default: the same lonely user is not found", async () => {
    const name = unique("Lonely");
    const [alice, stranger] = await Promise.all([user(hs.url, name), user(hs.url, unique("Stranger"))]);
    expect(ids(await search(stranger, name))).toEqual([]);
    expect(alice.userId).toMatch(/^@/);
  });
});

describe("users of other servers", () => {
  let net: Network;
  let hs1: TestServer;
  let hs2: TestServer;
  beforeAll(async () => {
    net = await startNetwork(2);
    [hs1, hs2] = net.servers as [TestServer, TestServer];
  });
  afterAll(() => net?.destroy());

  it("finds a remote member under the name of their membership event; the remote server finds ours until it leaves the room", async () => {
    const [aliceName, bobName] = [unique("Home"), unique("Remote")];
    const [alice, carol] = await Promise.all([user(hs1.url, aliceName), user(hs1.url, unique("Stranger"))]);
    const bob = await user(hs2.url, bobName);
    const roomId = await alice.createRoom({ preset: "public_chat" });
    const joined = await bob.call("POST", `/_matrix/client/v3/join/${enc(roomId)}?server_name=hs1.test`, {});
    expect(joined.status, JSON.stringify(joined.json)).toBe(200);
    // hs1: bob's profile comes from his join event; carol shares no room but the room is public.
    await expect.poll(async () => (await search(carol, bobName)).results, { timeout: 10_000 }).toEqual([{ user_id: bob.userId, display_name: bobName }]);
    // hs2 joined the room over federation: alice is known from the room's state.
    expect((await search(bob, aliceName)).results).toEqual([{ user_id: alice.userId, display_name: aliceName }]);
    expect((await bob.call("POST", roomPath(roomId, "/leave"), {})).status).toBe(200);
    // hs2 has no user in the room any more: the room is no longer known there.
    expect(ids(await search(bob, aliceName))).toEqual([]);
    await expect.poll(async () => ids(await search(carol, bobName)), { timeout: 10_000 }).toEqual([]);
  });
});

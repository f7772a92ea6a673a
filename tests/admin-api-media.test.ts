// Synapse's media admin API (server/api/synapse/media.ts): a room's media, a user's uploads, and
// deleting local media by ID, by date and size (avatars kept), and by user. Admins only; audited.
// https://element-hq.github.io/synapse/latest/admin_api/media_admin_api.html
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { registerUser, type TestUser } from "./accounts-helpers.ts";
import { request, startTestServer, type TestServer } from "./harness.ts";
import { createRoom, enc, send } from "./sync-helpers.ts";

let hs: TestServer;
let admin: TestUser;
let alice: TestUser;

beforeAll(async () => {
  hs = await startTestServer();
  [admin, alice] = (await Promise.all(["boss", "alice"].map((n) => registerUser(hs.url, n)))) as [TestUser, TestUser];
  await hs.services.accounts.setAdmin(admin.userId, true);
});
afterAll(() => hs.destroy());

const A = "/_synapse/admin/v1";
const get = (path: string, user: TestUser = admin) => request(hs.url, "GET", path, { token: user.accessToken });

async function upload(text: string): Promise<string> {
  const res = await request(hs.url, "POST", "/_matrix/media/v3/upload", { raw: text, token: alice.accessToken, headers: { "Content-Type": "text/plain" } });
  expect(res.status, res.text).toBe(200);
  return res.json.content_uri as string;
}
const idOf = (mxc: string) => mxc.split("/").pop()!;
const downloadStatus = async (mxc: string) =>
  (await fetch(`${hs.url}/_matrix/client/v1/media/download/${mxc.slice("mxc://".length)}`, { headers: { Authorization: `Bearer ${alice.accessToken}` } })).status;

describe("media admin API", () => {
  it("lists a room's and a user's media, deletes by ID, by date (keeping avatars) and by user; admins only", async () => {
    const inRoom = await upload("in the room");
    const avatar = await upload("my avatar");
    const other = await upload("something else");
    const roomId = await createRoom(hs.url, alice);
    await send(hs.url, alice, roomId, { msgtype: "m.file", body: "f", url: inRoom });
    expect((await request(hs.url, "PUT", `/_matrix/client/v3/profile/${enc(alice.userId)}/avatar_url`, { token: alice.accessToken, body: { avatar_url: avatar } })).status).toBe(200);

    for (const [method, path] of [
      ["GET", `${A}/room/${enc(roomId)}/media`],
      ["GET", `${A}/users/${enc(alice.userId)}/media`],
      ["DELETE", `${A}/users/${enc(alice.userId)}/media`],
      ["DELETE", `${A}/media/test.local/${idOf(other)}`],
      ["POST", `${A}/media/test.local/delete?before_ts=${Date.now() + 1000}`],
    ] as const) {
      const res = await request(hs.url, method, path, { token: alice.accessToken, body: method === "POST" ? {} : undefined });
      expect([path, res.status, res.json?.errcode]).toEqual([path, 403, "M_FORBIDDEN"]);
    }
    expect(await downloadStatus(other)).toBe(200);

    expect((await get(`${A}/room/${enc(roomId)}/media`)).json).toEqual({ local: [inRoom], remote: [] });
    const listed = await get(`${A}/users/${enc(alice.userId)}/media?limit=2`);
    expect(listed.json.total).toBe(3);
    expect(listed.json.next_token).toBe(2);
    expect(listed.json.media[0]).toMatchObject({ media_id: idOf(other), media_type: "text/plain", media_length: "something else".length, created_ts: expect.any(Number) });

    const one = await request(hs.url, "DELETE", `${A}/media/test.local/${idOf(other)}`, { token: admin.accessToken });
    expect(one.json).toEqual({ deleted_media: [idOf(other)], total: 1 });
    expect(await downloadStatus(other)).toBe(404);
    expect((await request(hs.url, "DELETE", `${A}/media/test.local/${idOf(other)}`, { token: admin.accessToken })).status).toBe(404);
    expect((await request(hs.url, "DELETE", `${A}/media/elsewhere.test/abc`, { token: admin.accessToken })).status).toBe(400);

    // By date: the avatar is kept (keep_profiles defaults to true).
    const byDate = await request(hs.url, "POST", `${A}/media/test.local/delete?before_ts=${Date.now() + 1000}`, { token: admin.accessToken, body: {} });
    expect(byDate.status, byDate.text).toBe(200);
    expect(byDate.json).toEqual({ deleted_media: [idOf(inRoom)], total: 1 });
    expect(await downloadStatus(inRoom)).toBe(404);
    expect(await downloadStatus(avatar)).toBe(200);
    expect((await request(hs.url, "POST", `${A}/media/test.local/delete`, { token: admin.accessToken, body: {} })).status).toBe(400);

    const byUser = await request(hs.url, "DELETE", `${A}/users/${enc(alice.userId)}/media`, { token: admin.accessToken });
    expect(byUser.json).toEqual({ deleted_media: [idOf(avatar)], total: 1 });
    expect(await downloadStatus(avatar)).toBe(404);
    expect((await get(`${A}/users/${enc(alice.userId)}/media`)).json).toEqual({ media: [], total: 0 });

    const audit = (await hs.services.audit.list({ userId: admin.userId })).filter((e) => e.event === "admin_action").map((e) => e.detail.action);
    expect(audit).toEqual(expect.arrayContaining(["delete_media", "delete_media_before", "delete_user_media"]));
  });

  it("quarantines media by ID, by room (other servers' URIs too) and by user: served to no one until lifted; admins only", async () => {
    const one = await upload("quarantine me");
    const two = await upload("in a room");
    const three = await upload("alice's other upload");
    const roomId = await createRoom(hs.url, alice);
    await send(hs.url, alice, roomId, { msgtype: "m.image", body: "i", url: two });
    await send(hs.url, alice, roomId, { msgtype: "m.image", body: "r", url: "mxc://elsewhere.test/RemoteMedia1" });

    for (const path of [
      `${A}/media/quarantine/test.local/${idOf(one)}`,
      `${A}/media/unquarantine/test.local/${idOf(one)}`,
      `${A}/room/${enc(roomId)}/media/quarantine`,
      `${A}/user/${enc(alice.userId)}/media/quarantine`,
    ]) {
      const res = await request(hs.url, "POST", path, { token: alice.accessToken, body: {} });
      expect([path, res.status, res.json?.errcode]).toEqual([path, 403, "M_FORBIDDEN"]);
    }
    expect(await downloadStatus(one)).toBe(200);

    const q = await request(hs.url, "POST", `${A}/media/quarantine/test.local/${idOf(one)}`, { token: admin.accessToken, body: {} });
    expect(q.status, q.text).toBe(200);
    expect(await downloadStatus(one)).toBe(404);
    const thumbnail = await fetch(`${hs.url}/_matrix/client/v1/media/thumbnail/${one.slice("mxc://".length)}?width=32&height=32`, { headers: { Authorization: `Bearer ${alice.accessToken}` } });
    expect(thumbnail.status).toBe(404);
    const listed = await get(`${A}/users/${enc(alice.userId)}/media`);
    expect(listed.json.media.find((m: { media_id: string }) => m.media_id === idOf(one)).quarantined_by).toBe(admin.userId);
    expect((await request(hs.url, "POST", `${A}/media/unquarantine/test.local/${idOf(one)}`, { token: admin.accessToken, body: {} })).status).toBe(200);
    expect(await downloadStatus(one)).toBe(200);

    const room = await request(hs.url, "POST", `${A}/room/${enc(roomId)}/media/quarantine`, { token: admin.accessToken, body: {} });
    expect(room.json).toEqual({ num_quarantined: 2 });
    expect(await downloadStatus(two)).toBe(404);
    expect(await downloadStatus(three)).toBe(200);
    // Synapse's older path for the same; nothing new to quarantine.
    const again = await request(hs.url, "POST", `${A}/quarantine_media/${enc(roomId)}`, { token: admin.accessToken, body: {} });
    expect(again.json).toEqual({ num_quarantined: 0 });

    const user = await request(hs.url, "POST", `${A}/user/${enc(alice.userId)}/media/quarantine`, { token: admin.accessToken, body: {} });
    expect(user.json.num_quarantined).toBe(2); // one and three (two was already)
    expect(await downloadStatus(one)).toBe(404);
    expect(await downloadStatus(three)).toBe(404);

    const audit = (await hs.services.audit.list({ userId: admin.userId })).filter((e) => e.event === "admin_action").map((e) => e.detail.action);
    expect(audit).toEqual(expect.arrayContaining(["quarantine_media", "unquarantine_media", "quarantine_room_media", "quarantine_user_media"]));
  });
});

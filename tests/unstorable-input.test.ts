// PostgreSQL text cannot hold U+0000. Requests carrying it get a 400, never a 500, and never take
// other users' writes down with them.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { request, startTestServer, type TestServer } from "./harness.ts";

describe("input that cannot be stored", () => {
  let hs: TestServer;
  let token: string;
  let roomId: string;
  beforeAll(async () => {
    hs = await startTestServer();
    const reg = await request(hs.url, "POST", "/_matrix/client/v3/register", {
      body: { username: "alice", password: "correct horse battery", auth: { type: "m.login.dummy" } },
    });
    token = reg.json.access_token;
    roomId = (await request(hs.url, "POST", "/_matrix/client/v3/createRoom", { token, body: {} })).json.room_id;
  });
  afterAll(() => hs.destroy());

  const room = () => encodeURIComponent(roomId);

  it("refuses NUL in a path parameter with 400 M_INVALID_PARAM", async () => {
    const res = await request(hs.url, "PUT", `/_matrix/client/v3/rooms/${room()}/state/x.type/key%00x`, { token, body: { a: 1 } });
    expect(res.status).toBe(400);
    expect(res.json.errcode).toBe("M_INVALID_PARAM");
  });

  it("refuses an event with NUL in its state key without failing a concurrent send", async () => {
    const [bad, good] = await Promise.all([
      request(hs.url, "POST", "/_matrix/client/v3/createRoom", {
        token,
        body: { initial_state: [{ type: "x.y", state_key: "a\u0000b", content: {} }] },
      }),
      request(hs.url, "PUT", `/_matrix/client/v3/rooms/${room()}/send/m.room.message/t1`, {
        token,
        body: { msgtype: "m.text", body: "still delivered" },
      }),
    ]);
    expect(bad.status).toBe(400);
    expect(bad.json.errcode).toBe("M_BAD_JSON");
    expect(good.status).toBe(200);
  });

  it("refuses NUL inside key uploads with 400 M_BAD_JSON and stores nothing", async () => {
    const res = await request(hs.url, "POST", "/_matrix/client/v3/keys/upload", {
      token,
      body: { one_time_keys: { "signed_curve25519:A\u0000": { key: "x", signatures: {} } } },
    });
    expect(res.status).toBe(400);
    expect(res.json.errcode).toBe("M_BAD_JSON");
    const counts = await request(hs.url, "POST", "/_matrix/client/v3/keys/upload", { token, body: {} });
    expect(counts.json.one_time_key_counts.signed_curve25519 ?? 0).toBe(0);
  });

  it("keeps quotes and backslashes in message bodies exactly", async () => {
    const body = "it's a back\\slash and a 'quote'; select 1; --";
    const sent = await request(hs.url, "PUT", `/_matrix/client/v3/rooms/${room()}/send/m.room.message/t2`, {
      token,
      body: { msgtype: "m.text", body },
    });
    const got = await request(hs.url, "GET", `/_matrix/client/v3/rooms/${room()}/event/${encodeURIComponent(sent.json.event_id)}`, { token });
    expect(got.json.content.body).toBe(body);
  });
});

// JSON nested thousands of levels deep once overflowed the stack in whatever walked it (a 500 on
// eight routes). Bodies and the `filter` query parameter are refused past 100 levels with 400 M_BAD_JSON.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { request, startTestServer, type TestServer } from "./harness.ts";

const nested = (depth: number, leaf = "1") => "[".repeat(depth) + leaf + "]".repeat(depth);
const nestedObject = (depth: number) => '{"a":'.repeat(depth) + "1" + "}".repeat(depth);

describe("deeply nested JSON", () => {
  let hs: TestServer;
  let token: string;
  let room: string;
  beforeAll(async () => {
    hs = await startTestServer();
    const reg = await request(hs.url, "POST", "/_matrix/client/v3/register", {
      body: { username: "deep", password: "correct horse battery", auth: { type: "m.login.dummy" } },
    });
    token = reg.json.access_token;
    room = encodeURIComponent((await request(hs.url, "POST", "/_matrix/client/v3/createRoom", { token, body: {} })).json.room_id);
  });
  afterAll(() => hs?.destroy());

  it("refuses bodies nested 5,000 levels deep with 400 M_BAD_JSON on every kind of route", async () => {
    const targets: [string, string][] = [
      ["PUT", `/_matrix/client/v3/rooms/${room}/send/m.room.message/deep1`],
      ["PUT", `/_matrix/client/v3/rooms/${room}/state/m.deep/`],
      ["POST", "/_matrix/client/v3/createRoom"],
      ["PUT", "/_matrix/client/v3/user/%40deep%3Atest.local/account_data/m.deep"],
      ["POST", "/_matrix/client/v3/user/%40deep%3Atest.local/filter"],
      ["POST", "/_matrix/client/v3/keys/upload"],
      ["POST", "/_matrix/client/v3/keys/signatures/upload"],
      ["PUT", "/_matrix/client/v3/sendToDevice/m.deep/deep2"],
      ["POST", "/_matrix/client/v3/login"],
    ];
    for (const [method, path] of targets) {
      for (const raw of [`{"x":${nested(5000)}}`, nestedObject(5000)]) {
        const res = await request(hs.url, method, path, { token, raw });
        expect({ path, status: res.status, errcode: res.json?.errcode }).toEqual({ path, status: 400, errcode: "M_BAD_JSON" });
      }
    }
  });

  it("accepts event content nested 99 levels deep, and counts brackets inside strings as text", async () => {
    const raw = `{"msgtype":"m.text","body":"${"[{".repeat(500)}","x":${nested(98)}}`;
    const res = await request(hs.url, "PUT", `/_matrix/client/v3/rooms/${room}/send/m.room.message/deep3`, { token, raw });
    expect(res.status).toBe(200);
    const tooDeep = await request(hs.url, "PUT", `/_matrix/client/v3/rooms/${room}/send/m.room.message/deep4`, {
      token,
      raw: `{"x":${nested(100)}}`,
    });
    expect(tooDeep.status).toBe(400);
    expect(tooDeep.json.errcode).toBe("M_BAD_JSON");
  });

  it("refuses /sync and /messages filters nested too deep with 400 M_BAD_JSON", async () => {
    // As deep as a URL allows (Node refuses request heads over 16 KB).
    const filter = `{"room":{"timeline":{"x":${nested(2000)}}}}`;
    const res = await request(hs.url, "GET", `/_matrix/client/v3/sync?timeout=0&filter=${encodeURIComponent(filter)}`, { token });
    expect(res.status).toBe(400);
    expect(res.json.errcode).toBe("M_BAD_JSON");
    const messages = await request(hs.url, "GET", `/_matrix/client/v3/rooms/${room}/messages?dir=b&filter=${encodeURIComponent(`{"x":${nested(2000)}}`)}`, { token });
    expect(messages.status).toBe(400);
    expect(messages.json.errcode).toBe("M_BAD_JSON");
  });
});

// Erasure: an account deactivated with `erase: true`. The spec (POST /account/deactivate, `erase`):
// the server should not share the erased user's messages with users who join the room later. So
// their events reach only those who were joined when they were sent; later joiners get them
// redacted, in /sync, /messages and /event, and other servers get them redacted too.
// https://spec.matrix.org/latest/client-server-api/#post_matrixclientv3accountdeactivate
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { passwordAuth, registerUser, type TestUser } from "./accounts-helpers.ts";
import { type Network, startNetwork } from "./federation-harness.ts";
import { request } from "./harness.ts";
import { createRoom, enc, joinRoom, send, sync } from "./sync-helpers.ts";

let net: Network;
beforeAll(async () => {
  net = await startNetwork(2);
});
afterAll(() => net?.destroy());

const hs1 = () => net.servers[0]!;
const hs2 = () => net.servers[1]!;

const deactivate = (base: string, user: TestUser, erase?: boolean) =>
  request(base, "POST", "/_matrix/client/v3/account/deactivate", { token: user.accessToken, body: { auth: passwordAuth(user), ...(erase === undefined ? {} : { erase }) } });

const timelineEvent = (res: any, roomId: string, eventId: string) => res.rooms?.join?.[roomId]?.timeline?.events?.find((e: any) => e.event_id === eventId);

describe("erasure", () => {
  it("hides an erased user's messages from those who joined after them, not from those who were there", async () => {
    const creator = await registerUser(hs1().url, "creator");
    const member = await registerUser(hs1().url, "member");
    const joiner = await registerUser(hs1().url, "joiner");
    const roomId = await createRoom(hs1().url, creator, { preset: "public_chat" });
    await joinRoom(hs1().url, member, roomId);
    const messageId = await send(hs1().url, creator, roomId, { msgtype: "m.text", body: "body1" });
    await joinRoom(hs1().url, joiner, roomId);
    expect(timelineEvent(await sync(hs1().url, joiner), roomId, messageId).content.body).toBe("body1");

    expect((await deactivate(hs1().url, creator, true)).status).toBe(200);
    expect(timelineEvent(await sync(hs1().url, member), roomId, messageId).content.body).toBe("body1");
    const erased = timelineEvent(await sync(hs1().url, joiner), roomId, messageId);
    expect(erased).toMatchObject({ type: "m.room.message", sender: creator.userId, content: {} });
    const page = await request(hs1().url, "GET", `/_matrix/client/v3/rooms/${enc(roomId)}/messages?dir=b&limit=20`, { token: joiner.accessToken });
    expect(page.json.chunk.find((e: any) => e.event_id === messageId).content).toEqual({});
    const single = await request(hs1().url, "GET", `/_matrix/client/v3/rooms/${enc(roomId)}/event/${enc(messageId)}`, { token: joiner.accessToken });
    expect(single.json.content).toEqual({});
    const forMember = await request(hs1().url, "GET", `/_matrix/client/v3/rooms/${enc(roomId)}/event/${enc(messageId)}`, { token: member.accessToken });
    expect(forMember.json.content.body).toBe("body1");
  });

  it("leaves a user deactivated without erase as they were", async () => {
    const creator = await registerUser(hs1().url, "plain");
    const joiner = await registerUser(hs1().url, "later");
    const roomId = await createRoom(hs1().url, creator, { preset: "public_chat" });
    const messageId = await send(hs1().url, creator, roomId, { msgtype: "m.text", body: "kept" });
    expect((await deactivate(hs1().url, creator, false)).status).toBe(200);
    await joinRoom(hs1().url, joiner, roomId);
    expect(timelineEvent(await sync(hs1().url, joiner), roomId, messageId).content.body).toBe("kept");
  });

  it("serves an erased user's events redacted to other servers", async () => {
    const creator = await registerUser(hs1().url, "fedcreator");
    const stays = await registerUser(hs1().url, "fedstays");
    const remote = await registerUser(hs2().url, "remote");
    const roomId = await createRoom(hs1().url, creator, { preset: "public_chat" });
    await joinRoom(hs1().url, stays, roomId);
    const joined = await request(hs2().url, "POST", `/_matrix/client/v3/join/${enc(roomId)}?server_name=hs1.test`, { token: remote.accessToken, body: {} });
    expect(joined.status, joined.text).toBe(200);
    const messageId = await send(hs1().url, creator, roomId, { msgtype: "m.text", body: "body1" });
    const fetch = () => hs2().services.federation.http.request("hs1.test", { method: "GET", path: `/_matrix/federation/v1/event/${enc(messageId)}` });
    expect(((await fetch()).body as any).pdus[0].content.body).toBe("body1");
    expect((await deactivate(hs1().url, creator, true)).status).toBe(200);
    const after = (await fetch()).body as any;
    expect(after.pdus).toHaveLength(1);
    expect(after.pdus[0].content).toEqual({});
  });
});

// Relations (threads, edits, reactions, references) over HTTP: /relations and bundled aggregations.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startTestServer, type TestServer } from "./harness.ts";
import { type RoomUser, registerRoomUser } from "./rooms-helpers.ts";

let hs: TestServer;
let alice: RoomUser;
let bob: RoomUser;
let roomId: string;
beforeAll(async () => {
  hs = await startTestServer();
  [alice, bob] = (await Promise.all(["alice", "bob"].map((n) => registerRoomUser(hs.url, n)))) as [RoomUser, RoomUser];
  roomId = await alice.createRoom({ preset: "public_chat" });
  await bob.join(roomId);
});
afterAll(() => hs.destroy());

const enc = encodeURIComponent;
const relations = (user: RoomUser, parent: string, rest = "", query = "") =>
  user.call("GET", `/_matrix/client/v1/rooms/${enc(roomId)}/relations/${enc(parent)}${rest}${query ? `?${query}` : ""}`);
const event = async (user: RoomUser, id: string) => (await user.call("GET", `/_matrix/client/v3/rooms/${enc(roomId)}/event/${enc(id)}`)).json;

describe("relations", () => {
  it("bundles a thread's latest event, count and participation with its root", async () => {
    const root = await alice.send(roomId, { msgtype: "m.text", body: "root" });
    const reply = (body: string) => ({ msgtype: "m.text", body, "m.relates_to": { rel_type: "m.thread", event_id: root } });
    await bob.send(roomId, reply("one"));
    const last = await bob.send(roomId, reply("two"));
    const forAlice = await event(alice, root);
    expect(forAlice.unsigned["m.relations"]["m.thread"]).toMatchObject({
      count: 2,
      current_user_participated: true, // she sent the root
      latest_event: { event_id: last, content: { body: "two" } },
    });
    const carol = await registerRoomUser(hs.url, "carol-thread");
    await carol.join(roomId);
    expect((await event(carol, root)).unsigned["m.relations"]["m.thread"].current_user_participated).toBe(false);
    const thread = await relations(alice, root, "/m.thread");
    expect(thread.json.chunk.map((e: any) => e.content.body)).toEqual(["two", "one"]);
  });

  it("bundles the latest edit by the original sender, ignoring edits by others", async () => {
    const original = await bob.send(roomId, { msgtype: "m.text", body: "tpyo" });
    const edit = (sender: RoomUser, body: string) =>
      sender.send(roomId, {
        msgtype: "m.text",
        body: `* ${body}`,
        "m.new_content": { msgtype: "m.text", body },
        "m.relates_to": { rel_type: "m.replace", event_id: original },
      });
    await edit(bob, "typo");
    const latest = await edit(bob, "typo!");
    await edit(alice, "not hers to edit");
    const bundled = (await event(alice, original)).unsigned["m.relations"]["m.replace"];
    expect(bundled.event_id).toBe(latest);
    expect(bundled.content["m.new_content"].body).toBe("typo!");
    // The original's content itself is not replaced.
    expect((await event(alice, original)).content.body).toBe("tpyo");
  });

  it("pages through reactions, filtered by relation and event type", async () => {
    const target = await alice.send(roomId, { msgtype: "m.text", body: "react to me" });
    for (const key of ["👍", "🎉", "❤️", "😀", "🚀"]) {
      await bob.send(roomId, { "m.relates_to": { rel_type: "m.annotation", event_id: target, key } }, "m.reaction");
    }
    await bob.send(roomId, { msgtype: "m.text", body: "a reply", "m.relates_to": { "m.in_reply_to": { event_id: target } } });
    const first = await relations(alice, target, "/m.annotation/m.reaction", "limit=3");
    expect(first.status).toBe(200);
    expect(first.json.chunk.map((e: any) => e.content["m.relates_to"].key)).toEqual(["🚀", "😀", "❤️"]);
    expect(first.json.next_batch).toBeDefined();
    expect(first.json.prev_batch).toBeUndefined();
    const second = await relations(alice, target, "/m.annotation/m.reaction", `limit=3&from=${enc(first.json.next_batch)}`);
    expect(second.json.chunk.map((e: any) => e.content["m.relates_to"].key)).toEqual(["🎉", "👍"]);
    expect(second.json.next_batch).toBeUndefined();
    expect(second.json.prev_batch).toBe(first.json.next_batch);
    const forwards = await relations(alice, target, "/m.annotation", "dir=f&limit=2");
    expect(forwards.json.chunk.map((e: any) => e.content["m.relates_to"].key)).toEqual(["👍", "🎉"]);
    // Replies are not a relationship type: not listed.
    const all = await relations(alice, target);
    expect(all.json.chunk).toHaveLength(5);
    expect((await relations(alice, target, "/m.annotation/m.room.message")).json.chunk).toEqual([]);
  });

  it("recurses into relations of relations when asked", async () => {
    const root = await alice.send(roomId, { msgtype: "m.text", body: "root" });
    const inThread = await bob.send(roomId, { msgtype: "m.text", body: "in thread", "m.relates_to": { rel_type: "m.thread", event_id: root } });
    await alice.send(roomId, { "m.relates_to": { rel_type: "m.annotation", event_id: inThread, key: "👀" } }, "m.reaction");
    const flat = await relations(alice, root, "", "recurse=false");
    expect(flat.json.chunk.map((e: any) => e.event_id)).toEqual([inThread]);
    expect(flat.json.recursion_depth).toBe(1);
    const deep = await relations(alice, root, "", "recurse=true");
    expect(deep.json.chunk).toHaveLength(2);
    expect(deep.json.recursion_depth).toBe(3);
    expect((await relations(alice, root)).json.recursion_depth).toBeUndefined();
  });

  it("answers 404 for parents the user cannot see", async () => {
    expect((await relations(alice, "$unknown")).status).toBe(404);
    const outsider = await registerRoomUser(hs.url, "outsider");
    const root = await alice.send(roomId, { msgtype: "m.text", body: "x" });
    expect((await relations(outsider, root)).status).toBe(403);
  });
});

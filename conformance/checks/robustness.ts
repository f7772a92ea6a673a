// Robustness: random, truncated and wrongly shaped bodies sent to federation endpoints never get a
// 5xx answer nor stop the server, and a room the peer is in is intact afterwards.
import { randomBytes, randomInt } from "node:crypto";
import { type Check, fail, show } from "../check.ts";
import { message, roomWithPeerMember, seen, deliver } from "./transactions.ts";

const group = "robustness";
const enc = encodeURIComponent;
const IN_FLIGHT = 8;

/** A JSON value of random shape, small. */
function randomJson(depth = 0): unknown {
  switch (randomInt(depth > 2 ? 5 : 8)) {
    case 0: return randomInt(-1e6, 1e6);
    case 1: return randomBytes(randomInt(0, 12)).toString("latin1");
    case 2: return null;
    case 3: return randomInt(2) === 0;
    case 4: return Number.MAX_SAFE_INTEGER - randomInt(2);
    case 5: return Array.from({ length: randomInt(4) }, () => randomJson(depth + 1));
    default: {
      const o: Record<string, unknown> = {};
      for (const k of ["type", "room_id", "sender", "content", "pdus", "edus", "event", "origin", "prev_events", "auth_events", "depth", "server_keys", "device_keys", "limit"]) {
        if (randomInt(3) === 0) o[k] = randomJson(depth + 1);
      }
      return o;
    }
  }
}

const fuzz: Check = {
  id: "robustness.random-bodies",
  group,
  title: `random (1,000 by default), truncated or misshapen bodies to federation endpoints: never a 5xx, the server keeps answering, the room is intact`,
  timeoutMs: 120_000,
  async run(ctx) {
    const j = await roomWithPeerMember(ctx);
    const { peer, target } = ctx;
    const template = message(j, "a template for truncation").pdu;
    const templateText = JSON.stringify({ origin: peer.serverName, origin_server_ts: Date.now(), pdus: [template], edus: [] });
    const endpoints = [
      () => ({ method: "PUT", path: `/_matrix/federation/v1/send/conf-fuzz-${randomBytes(6).toString("hex")}` }),
      () => ({ method: "PUT", path: `/_matrix/federation/v2/send_join/${enc(j.roomId)}/${enc(`$${randomBytes(8).toString("hex")}`)}` }),
      () => ({ method: "PUT", path: `/_matrix/federation/v2/invite/${enc(j.roomId)}/${enc(`$${randomBytes(8).toString("hex")}`)}` }),
      () => ({ method: "POST", path: `/_matrix/federation/v1/get_missing_events/${enc(j.roomId)}` }),
      () => ({ method: "POST", path: "/_matrix/federation/v1/user/keys/query" }),
      () => ({ method: "POST", path: "/_matrix/federation/v1/user/keys/claim" }),
      () => ({ method: "POST", path: "/_matrix/federation/v1/publicRooms" }),
      () => ({ method: "POST", path: "/_matrix/key/v2/query" }),
      () => ({ method: "GET", path: `/_matrix/federation/v1/make_join/${enc(j.roomId)}/${enc(j.peerUser)}?ver=${enc(randomBytes(3).toString("hex"))}` }),
      () => ({ method: "GET", path: `/_matrix/federation/v1/state_ids/${enc(j.roomId)}?event_id=${enc(randomBytes(5).toString("latin1"))}` }),
    ];
    const requests = ctx.settings.robustnessRequests;
    const failures: string[] = [];
    let sent = 0;
    const one = async () => {
      const { method, path } = endpoints[randomInt(endpoints.length)]!();
      const kind = method === "GET" ? 3 : randomInt(3);
      let res;
      if (kind === 0) {
        // Random bytes: not JSON at all; signed without content.
        res = await peer.request(target, { method, path, raw: randomBytes(randomInt(1, 200)), authorization: { content: undefined } });
      } else if (kind === 1) {
        // Valid JSON cut short, signed as if whole.
        res = await peer.request(target, { method, path, raw: templateText.slice(0, randomInt(1, templateText.length)), authorization: { content: {} } });
      } else {
        // Well-formed JSON of the wrong shape, correctly signed: it reaches the handler.
        const body = randomJson(1);
        res = method === "GET" ? await peer.request(target, { method, path }) : await peer.request(target, { method, path, body: typeof body === "object" && body !== null && !Array.isArray(body) ? body : { value: body } });
      }
      if (res.status >= 500) failures.push(`${method} ${path.split("?")[0]} answered ${res.status} ${show(res.json ?? res.text, 120)}`);
    };
    const worker = async () => {
      while (sent < requests && failures.length < 5) {
        sent++;
        try {
          await one();
        } catch (err) {
          failures.push(`a request failed without an answer (the server stopped?): ${(err as Error).message}`);
        }
      }
    };
    await Promise.all(Array.from({ length: IN_FLIGHT }, worker));
    if (failures.length) fail(`${failures.length} of ${sent} requests failed; first: ${failures.slice(0, 3).join("; ")}`);
    // The room is intact: the member is still there, and both sides can still post.
    const member = await j.owner.getState(j.roomId, "m.room.member", j.peerUser);
    if (member?.membership !== "join") fail(`after the requests the peer's user is no longer joined: ${show(member)}`);
    await j.owner.send(j.roomId, { msgtype: "m.text", body: "still here" });
    const after = message(j, "after the storm");
    await deliver(ctx, [after.pdu]);
    await seen(j, after.eventId, "the peer's message after the random requests");
  },
};

export const robustnessChecks: readonly Check[] = [fuzz];

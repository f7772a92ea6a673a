import { describe, expect, it } from "vitest";
import { redactEvent } from "./redaction.ts";

const base = {
  event_id: "$e",
  type: "m.room.message",
  room_id: "!r:example.org",
  sender: "@a:example.org",
  content: { body: "secret" },
  hashes: { sha256: "h" },
  signatures: { "example.org": { "ed25519:1": "s" } },
  depth: 3,
  prev_events: ["$p"],
  auth_events: ["$a"],
  origin_server_ts: 5,
  origin: "example.org",
  membership: "join",
  prev_state: [],
  unsigned: { age: 1 },
  redacts: "$r",
  extra: true,
};

describe("redaction, room version 10 (rooms/fragments/v9-redactions)", () => {
  it("keeps the listed top-level keys, including origin, membership and prev_state, and empties content", () => {
    expect(redactEvent("10", base)).toEqual({
      event_id: "$e",
      type: "m.room.message",
      room_id: "!r:example.org",
      sender: "@a:example.org",
      content: {},
      hashes: { sha256: "h" },
      signatures: { "example.org": { "ed25519:1": "s" } },
      depth: 3,
      prev_events: ["$p"],
      auth_events: ["$a"],
      origin_server_ts: 5,
      origin: "example.org",
      membership: "join",
      prev_state: [],
    });
  });

  it.each([
    ["m.room.member", { membership: "join", join_authorised_via_users_server: "@b:x", displayname: "A", third_party_invite: { signed: {} } }, { membership: "join", join_authorised_via_users_server: "@b:x" }],
    ["m.room.create", { creator: "@a:x", room_version: "10", "m.federate": false }, { creator: "@a:x" }],
    ["m.room.join_rules", { join_rule: "restricted", allow: [{ type: "m.room_membership" }], x: 1 }, { join_rule: "restricted", allow: [{ type: "m.room_membership" }] }],
    ["m.room.power_levels", { ban: 50, events: {}, events_default: 0, invite: 0, kick: 50, redact: 50, state_default: 50, users: {}, users_default: 0, notifications: { room: 50 } }, { ban: 50, events: {}, events_default: 0, kick: 50, redact: 50, state_default: 50, users: {}, users_default: 0 }],
    ["m.room.history_visibility", { history_visibility: "shared", x: 1 }, { history_visibility: "shared" }],
    ["m.room.redaction", { redacts: "$r", reason: "spam" }, {}],
  ])("keeps only the protected content keys of %s", (type, content, expected) => {
    expect(redactEvent("10", { type, content }).content).toEqual(expected);
  });
});

describe("redaction, room versions 11 and 12 (rooms/fragments/v11-redactions)", () => {
  for (const version of ["11", "12"]) {
    it(`v${version} no longer keeps origin, membership or prev_state`, () => {
      expect(redactEvent(version, base)).toEqual({
        event_id: "$e",
        type: "m.room.message",
        room_id: "!r:example.org",
        sender: "@a:example.org",
        content: {},
        hashes: { sha256: "h" },
        signatures: { "example.org": { "ed25519:1": "s" } },
        depth: 3,
        prev_events: ["$p"],
        auth_events: ["$a"],
        origin_server_ts: 5,
      });
    });
  }

  it.each([
    ["m.room.create", { room_version: "11", "m.federate": false, predecessor: { room_id: "!o:x" } }, { room_version: "11", "m.federate": false, predecessor: { room_id: "!o:x" } }],
    ["m.room.redaction", { redacts: "$r", reason: "spam" }, { redacts: "$r" }],
    ["m.room.power_levels", { invite: 10, notifications: { room: 50 } }, { invite: 10 }],
    ["m.room.member", { membership: "invite", displayname: "A", third_party_invite: { display_name: "a", signed: { mxid: "@a:x", token: "t" } } }, { membership: "invite", third_party_invite: { signed: { mxid: "@a:x", token: "t" } } }],
    ["m.room.member", { membership: "invite", third_party_invite: { display_name: "a" } }, { membership: "invite", third_party_invite: {} }],
    ["m.room.member", { membership: "invite", third_party_invite: "not an object" }, { membership: "invite" }],
  ])("keeps the v11 content keys of %s", (type, content, expected) => {
    expect(redactEvent("11", { type, content }).content).toEqual(expected);
  });

  it("drops the top-level redacts (it moved into content)", () => {
    expect(redactEvent("11", { type: "m.room.redaction", redacts: "$r", content: { redacts: "$r" } })).toEqual({
      type: "m.room.redaction",
      content: { redacts: "$r" },
    });
  });
});

describe("redaction in general", () => {
  it("returns content: {} when the event has no content at all", () => {
    expect(redactEvent("12", { type: "m.room.message" })).toEqual({ type: "m.room.message", content: {} });
  });

  it("does not modify its input", () => {
    const copy = structuredClone(base);
    redactEvent("11", copy);
    expect(copy).toEqual(base);
  });
});

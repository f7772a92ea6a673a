import { describe, expect, it } from "vitest";
import { validatePdu, validateRoomEvent } from "./pdu.ts";
import { roomVersionsCapability, STABLE_ROOM_VERSIONS, SUPPORTED_ROOM_VERSIONS, DEFAULT_ROOM_VERSION } from "./room-versions.ts";

const HASH_ROOM_ID = "!Nhcu5BS-UMnFX7hBVfVSoXiD7OgH6iRT-xyIuqDnpYQ"; // the pdu_v12 example room ID

function pdu(fields: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    type: "m.room.message",
    sender: "@alice:example.org",
    room_id: "!room:example.org",
    content: { body: "hi" },
    origin_server_ts: 1234567890,
    depth: 12,
    prev_events: ["$URLsafe-base64EncodedHash"],
    auth_events: ["$URLsafe-base64EncodedHash", "$Another_Event"],
    hashes: { sha256: "ThisHashCoversAllFieldsInCaseThisIsRedacted" },
    signatures: { "example.org": { "ed25519:key_version": "86BytesOfSignatureOfTheRedactedEvent" } },
    ...fields,
  };
}

describe("PDU format (step 1 of the checks on receipt)", () => {
  it("accepts a well-formed v10/v11 PDU", () => {
    expect(validatePdu("11", pdu())).toMatchObject({ ok: true });
    expect(validatePdu("10", pdu({ type: "m.room.redaction", redacts: "$x" }))).toMatchObject({ ok: true });
  });

  it.each([
    ["depth", "depth is required"],
    ["hashes", "hashes is required"],
    ["signatures", "signatures is required"],
    ["content", "content is required"],
    ["auth_events", "auth_events is required"],
    ["room_id", "room_id is required"],
  ])("refuses a PDU without %s", (field, reason) => {
    const value = pdu();
    delete value[field];
    expect(validatePdu("11", value)).toEqual({ ok: false, reason });
  });

  it("refuses wrong types with the path of the field", () => {
    expect(validatePdu("11", pdu({ content: [] }))).toMatchObject({ ok: false, reason: expect.stringMatching(/^content: /) });
    expect(validatePdu("11", pdu({ origin_server_ts: "now" }))).toMatchObject({ ok: false, reason: expect.stringMatching(/^origin_server_ts: /) });
    expect(validatePdu("11", pdu({ signatures: { "example.org": { "ed25519:1": 5 } } }))).toMatchObject({ ok: false });
  });

  it("refuses a sender that is not a user ID", () => {
    expect(validatePdu("11", pdu({ sender: "alice" }))).toEqual({ ok: false, reason: "sender: must be a valid user ID of at most 255 bytes" });
  });

  it("accepts historical user IDs from federation", () => {
    expect(validatePdu("11", pdu({ sender: "@Alice.Bob!~:example.org:8448" }))).toMatchObject({ ok: true });
  });

  it("enforces the size limits of 255 bytes on type, state_key, sender and room_id", () => {
    expect(validatePdu("11", pdu({ type: "x".repeat(255) }))).toMatchObject({ ok: true });
    expect(validatePdu("11", pdu({ type: "x".repeat(256) }))).toEqual({ ok: false, reason: "type: must not exceed 255 bytes" });
    // 128 two-byte characters: 128 UTF-16 units but 256 bytes.
    expect(validatePdu("11", pdu({ state_key: "é".repeat(128) }))).toEqual({ ok: false, reason: "state_key: must not exceed 255 bytes" });
    expect(validatePdu("11", pdu({ sender: `@${"a".repeat(250)}:example.org` }))).toMatchObject({ ok: false });
  });

  it("refuses a PDU over 65536 bytes of canonical JSON", () => {
    expect(validatePdu("11", pdu({ content: { body: "x".repeat(65_000) } }))).toMatchObject({ ok: true });
    expect(validatePdu("11", pdu({ content: { body: "x".repeat(65_600) } }))).toMatchObject({
      ok: false,
      reason: expect.stringMatching(/^PDU is \d+ bytes of canonical JSON; the limit is 65536$/),
    });
  });

  it("refuses floats anywhere (v6+ canonical JSON)", () => {
    expect(validatePdu("11", pdu({ content: { n: 1.5 } }))).toMatchObject({ ok: false, reason: expect.stringMatching(/^not canonical JSON/) });
  });

  it("refuses more than 20 prev_events or 10 auth_events", () => {
    const ids = (n: number) => Array.from({ length: n }, (_, i) => `$event${i}`);
    expect(validatePdu("11", pdu({ prev_events: ids(20), auth_events: ids(10) }))).toMatchObject({ ok: true });
    expect(validatePdu("11", pdu({ prev_events: ids(21) }))).toMatchObject({ ok: false });
    expect(validatePdu("11", pdu({ auth_events: ids(11) }))).toMatchObject({ ok: false });
  });

  it("v12: room IDs are create event hashes, and only the create event has none", () => {
    expect(validatePdu("12", pdu({ room_id: HASH_ROOM_ID }))).toMatchObject({ ok: true });
    expect(validatePdu("12", pdu())).toMatchObject({ ok: false, reason: expect.stringMatching(/^room_id must be '!' followed by/) });
    const create = pdu({ type: "m.room.create", state_key: "", content: { room_version: "12" }, prev_events: [], auth_events: [] });
    delete create.room_id;
    expect(validatePdu("12", create)).toMatchObject({ ok: true });
    const message = pdu();
    delete message.room_id;
    expect(validatePdu("12", message)).toEqual({ ok: false, reason: "room_id is required" });
    // v11 room IDs carry a server name.
    expect(validatePdu("11", pdu({ room_id: HASH_ROOM_ID }))).toMatchObject({ ok: false });
  });

  it("refuses a member event without a state_key", () => {
    expect(validatePdu("11", pdu({ type: "m.room.member", content: { membership: "join" } }))).toEqual({
      ok: false,
      reason: "m.room.member must have a state_key",
    });
  });
});

describe("room events with IDs (what auth and state resolution read)", () => {
  it("needs an event_id and the fields auth reads, not hashes or signatures", () => {
    expect(validateRoomEvent({ event_id: "$a", type: "m.room.topic", sender: "@a:x", state_key: "", content: {}, origin_server_ts: 1, prev_events: [], auth_events: [] })).toMatchObject({ ok: true });
    expect(validateRoomEvent({ event_id: "$a", type: "m.room.topic", sender: "@a:x", content: {}, prev_events: [], auth_events: [] })).toEqual({
      ok: false,
      reason: "event $a: origin_server_ts is required",
    });
  });
});

describe("room versions", () => {
  it("supports every stable version 1-12, defaults to 12, and advertises them all as stable", () => {
    expect(SUPPORTED_ROOM_VERSIONS).toEqual(["1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12"]);
    expect(DEFAULT_ROOM_VERSION).toBe("12");
    expect(STABLE_ROOM_VERSIONS).toHaveLength(12);
    expect(roomVersionsCapability()).toEqual({
      default: "12",
      available: Object.fromEntries(SUPPORTED_ROOM_VERSIONS.map((v) => [v, "stable"])),
    });
  });
});

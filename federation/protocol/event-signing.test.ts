import { describe, expect, it } from "vitest";
import { decodeBase64 } from "./base64.ts";
import {
  checkContentHash,
  computeEventId,
  computeReferenceHash,
  computeRoomIdFromCreateEvent,
  createEventIdOfRoom,
} from "./event-hashes.ts";
import { checkReceivedPdu, signEvent, verifyEventSignatures, type VerifyKeyLookup } from "./event-signing.ts";
import type { Pdu } from "./pdu.ts";
import { signingKeyFromSeed } from "./signing.ts";

// https://spec.matrix.org/latest/appendices/#cryptographic-test-vectors
const KEY = signingKeyFromSeed(decodeBase64("YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1"), "ed25519:1");
const lookupDomainKey: VerifyKeyLookup = (server, keyId) =>
  server === "domain" && keyId === "ed25519:1" ? KEY.publicKey : undefined;

// The appendix's event vectors predate room version 11: they keep the top-level `origin` under
// redaction, as the v9 redaction algorithm (room version 10) still does.
describe("signEvent: the appendix event signing vectors (room version 10 redaction)", () => {
  it("signs the minimally-sized event", () => {
    const event = {
      room_id: "!x:domain",
      sender: "@a:domain",
      origin: "domain",
      origin_server_ts: 1000000,
      signatures: {},
      hashes: {},
      type: "X",
      content: {},
      prev_events: [],
      auth_events: [],
      depth: 3,
      unsigned: { age_ts: 1000000 },
    };
    expect(signEvent("10", event, "domain", KEY)).toEqual({
      auth_events: [],
      content: {},
      depth: 3,
      hashes: { sha256: "5jM4wQpv6lnBo7CLIghJuHdW+s2CMBJPUOGOC89ncos" },
      origin: "domain",
      origin_server_ts: 1000000,
      prev_events: [],
      room_id: "!x:domain",
      sender: "@a:domain",
      signatures: {
        domain: {
          "ed25519:1": "KxwGjPSDEtvnFgU00fwFz+l6d2pJM6XBIaMEn81SXPTRl16AqLAYqfIReFGZlHi5KLjAWbOoMszkwsQma+lYAg",
        },
      },
      type: "X",
      unsigned: { age_ts: 1000000 },
    });
  });

  it("signs the event containing redactable content (the signature covers the redacted form)", () => {
    const event = {
      content: { body: "Here is the message content" },
      event_id: "$0:domain",
      origin: "domain",
      origin_server_ts: 1000000,
      type: "m.room.message",
      room_id: "!r:domain",
      sender: "@u:domain",
      signatures: {},
      unsigned: { age_ts: 1000000 },
    };
    const signed = signEvent("10", event, "domain", KEY);
    expect(signed.hashes).toEqual({ sha256: "onLKD1bGljeBWQhWZ1kaP9SorVmRQNdN5aM2JYU2n/g" });
    expect(signed.signatures).toEqual({
      domain: {
        "ed25519:1": "Wm+VzmOUOz08Ds+0NTWb1d4CZrVsJSikkeRxh6aCcUwu6pNC78FunoD7KNWzqFn241eYHYMGCA5McEiVPdhzBA",
      },
    });
    expect(signed.content).toEqual({ body: "Here is the message content" });
  });
});

// A real m.room.create event from a version 5 room (the event ID vector of gomatrixserverlib's
// eventversion_test.go). Versions 4–10 compute its ID the same way; the v10 ID must match.
const JKI_CREATE = JSON.parse(
  `{"auth_events": [], "prev_events": [], "type": "m.room.create", "room_id": "!uXDCzlYgCTHtiWCkEx:jki.re", "sender": "@erikj:jki.re", "content": {"room_version": "5", "predecessor": {"room_id": "!gdRMqOrTFdOCYHNwOo:half-shot.uk", "event_id": "$LP7ROBc4b+cMc1UE9haIz8q5AK2AIW4eJ90FfKLvyZI"}, "creator": "@erikj:jki.re"}, "depth": 1, "prev_state": [], "state_key": "", "origin": "jki.re", "origin_server_ts": 1560284621137, "hashes": {"sha256": "IX6zuNiJpJPNf70BLleL3HSCpjKeq9Uhu7uUpyDjBmc"}, "signatures": {"jki.re": {"ed25519:auto": "O4IyFfF2PPtGp5uaDm8t57dZbdh8vc8Q64LgCwvzYRVItAMI0uisfiAFaxkVT7MRpzh6N2QNN5NMRXZKmgPYDA"}}, "unsigned": {"age": 1321650}}`,
);

describe("event IDs", () => {
  it("computes the ID of a real event as `$` + URL-safe reference hash (v10)", () => {
    expect(computeEventId("10", JKI_CREATE)).toBe("$RrGxF28UrHLmoASHndYb9Jb_1SFww2ptmtur9INS438");
    expect(checkContentHash(JKI_CREATE)).toBe(true);
  });

  it("gives the same event a different ID under v11 redaction, which drops `origin`, `prev_state` and keeps all create content", () => {
    const v11 = computeEventId("11", JKI_CREATE);
    expect(v11).not.toBe(computeEventId("10", JKI_CREATE));
    const { origin: _o, prev_state: _p, ...withoutUnprotected } = JKI_CREATE;
    expect(computeEventId("11", withoutUnprotected)).toBe(v11);
    expect(computeEventId("11", { ...JKI_CREATE, content: { ...JKI_CREATE.content, extra: 1 } })).not.toBe(v11);
  });

  it("ignores unsigned, signatures, age_ts and a locally attached event_id", () => {
    const id = computeEventId("11", JKI_CREATE);
    expect(
      computeEventId("11", {
        ...JKI_CREATE,
        unsigned: { other: true },
        signatures: {},
        age_ts: 5,
        event_id: "$whatever",
      }),
    ).toBe(id);
  });

  it("is 43 URL-safe base64 characters after the sigil", () => {
    expect(computeEventId("12", JKI_CREATE)).toMatch(/^\$[A-Za-z0-9_-]{43}$/);
    expect(computeReferenceHash("12", JKI_CREATE)).toHaveLength(32);
  });
});

describe("v12 room IDs", () => {
  const create = signEvent(
    "12",
    {
      type: "m.room.create",
      state_key: "",
      sender: "@alice:domain",
      content: { room_version: "12" },
      origin_server_ts: 1000000,
      depth: 1,
      prev_events: [],
      auth_events: [],
    },
    "domain",
    KEY,
  );

  it("is the create event's ID with `!` instead of `$`", () => {
    const roomId = computeRoomIdFromCreateEvent("12", create);
    expect(roomId).toBe(`!${computeEventId("12", create).slice(1)}`);
    expect(createEventIdOfRoom(roomId)).toBe(computeEventId("12", create));
  });

  it("is only defined for room versions that derive it", () => {
    expect(() => computeRoomIdFromCreateEvent("11", create)).toThrow();
  });
});

describe("checking a received PDU (format, signatures, hashes)", () => {
  const message = signEvent(
    "11",
    {
      type: "m.room.message",
      sender: "@a:domain",
      room_id: "!r:domain",
      content: { body: "hello" },
      origin_server_ts: 1000000,
      depth: 4,
      prev_events: ["$prev"],
      auth_events: ["$create", "$member", "$power"],
    },
    "domain",
    KEY,
  ) as Pdu;

  it("accepts a correctly signed and hashed PDU and computes its event ID", () => {
    const result = checkReceivedPdu("11", message, lookupDomainKey);
    expect(result).toEqual({ ok: true, eventId: computeEventId("11", message), pdu: message, redacted: false });
  });

  it("redacts, rather than drops, a PDU whose content no longer matches its hash", () => {
    const tampered = { ...message, content: { body: "changed" } };
    const result = checkReceivedPdu("11", tampered, lookupDomainKey);
    expect(result.ok && result.redacted).toBe(true);
    expect(result.ok && result.pdu.content).toEqual({});
    // The event ID covers only the redacted form, so it is unchanged.
    expect(result.ok && result.eventId).toBe(computeEventId("11", message));
  });

  it("drops a PDU whose signature does not verify", () => {
    const forged = { ...message, origin_server_ts: 1000001 };
    expect(checkReceivedPdu("11", forged, lookupDomainKey)).toEqual({
      ok: false,
      reason: "signature ed25519:1 from domain does not verify",
    });
  });

  it("drops a PDU with no signature from a known key of the sender's server", () => {
    expect(checkReceivedPdu("11", message, () => undefined)).toEqual({
      ok: false,
      reason: "no ed25519 signature from domain with a known key",
    });
  });

  it("drops a malformed PDU before looking at signatures", () => {
    const { depth: _d, ...noDepth } = message;
    expect(checkReceivedPdu("11", noDepth, lookupDomainKey)).toEqual({ ok: false, reason: "invalid PDU: depth is required" });
  });

  it("requires the signature of the server authorising a restricted join", () => {
    const join = signEvent(
      "11",
      {
        type: "m.room.member",
        state_key: "@a:domain",
        sender: "@a:domain",
        room_id: "!r:domain",
        content: { membership: "join", join_authorised_via_users_server: "@mod:other.example" },
        origin_server_ts: 1000000,
        depth: 4,
        prev_events: ["$prev"],
        auth_events: ["$create"],
      },
      "domain",
      KEY,
    ) as Pdu;
    expect(verifyEventSignatures("11", join, lookupDomainKey)).toEqual({ ok: false, reason: "no signature from other.example" });
  });
});

// Room versions 1–12 checked against vectors other implementations and the spec published, never
// against our own output: Synapse's and ruma's signing vectors, Synapse's redaction (prune) tests,
// gomatrixserverlib's event ID vectors, and the spec's own examples. Each vector names its source.

import { createHash } from "node:crypto";
import { describe, expect, it } from "vitest";
import { powerLevelValue, userPowerLevel } from "./auth-rules.ts";
import { Base64Error, decodeBase64, decodeBase64Url } from "./base64.ts";
import { checkContentHash, computeEventId } from "./event-hashes.ts";
import { serversThatMustSign, signEvent, verifyEventSignatures, type VerifyKeyLookup } from "./event-signing.ts";
import { validatePdu, type Pdu, type RoomEvent } from "./pdu.ts";
import { redactEvent } from "./redaction.ts";
import { STABLE_ROOM_VERSIONS } from "./room-versions.ts";
import { signingKeyFromSeed } from "./signing.ts";

type JsonObject = Record<string, unknown>;

const versions = (from: number, to: number): string[] => STABLE_ROOM_VERSIONS.filter((v) => Number(v) >= from && Number(v) <= to);

// element-hq/synapse tests/crypto/test_event_signing.py: SIGNING_KEY_SEED, KEY_NAME "ed25519:1",
// HOSTNAME "domain"; both events are signed with add_hashes_and_signatures(RoomVersions.V1, ...).
const SYNAPSE_KEY = signingKeyFromSeed(decodeBase64("YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1"), "ed25519:1");

describe("Synapse's event signing vectors, room version 1", () => {
  // element-hq/synapse tests/crypto/test_event_signing.py, test_sign_minimal
  it("hashes and signs the minimal event, whose ID is the event_id it carries", () => {
    const event = {
      event_id: "$0:domain",
      origin: "domain",
      origin_server_ts: 1000000,
      signatures: {},
      type: "X",
      unsigned: { age_ts: 1000000 },
    };
    const signed = signEvent("1", event, "domain", SYNAPSE_KEY);
    expect(signed.hashes.sha256).toBe("6tJjLpXtggfke8UxFhAKg82QVkJzvKOVOOSjUDK4ZSI");
    expect(signed.signatures).toEqual({
      domain: { "ed25519:1": "2Wptgo4CwmLo/Y8B8qinxApKaCkBG2fjTWB7AbP5Uy+aIbygsSdLOFzvdDjww8zUVKCmI02eP9xtyJxc/cLiBA" },
    });
    expect(computeEventId("1", signed)).toBe("$0:domain");
  });

  // element-hq/synapse tests/crypto/test_event_signing.py, test_sign_message
  const message = {
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

  it("hashes and signs the message event, whose ID is the event_id it carries", () => {
    const signed = signEvent("1", message, "domain", SYNAPSE_KEY);
    expect(signed.hashes.sha256).toBe("onLKD1bGljeBWQhWZ1kaP9SorVmRQNdN5aM2JYU2n/g");
    expect(signed.signatures).toEqual({
      domain: { "ed25519:1": "Wm+VzmOUOz08Ds+0NTWb1d4CZrVsJSikkeRxh6aCcUwu6pNC78FunoD7KNWzqFn241eYHYMGCA5McEiVPdhzBA" },
    });
    expect(computeEventId("1", signed)).toBe("$0:domain");
    expect(checkContentHash(signed, { strict: false })).toBe(true);
  });

  it("verifies the signed message event as a room version 1 PDU (sender's and event ID's server are both `domain`)", () => {
    const signed = signEvent("1", message, "domain", SYNAPSE_KEY) as unknown as Pdu;
    const lookup: VerifyKeyLookup = (server, keyId) => (server === "domain" && keyId === "ed25519:1" ? SYNAPSE_KEY.publicKey : undefined);
    expect(serversThatMustSign("1", signed)).toEqual(["domain"]);
    expect(verifyEventSignatures("1", signed, lookup)).toEqual({ ok: true });
  });
});

// ruma/ruma crates/ruma-signatures/src/lib.rs at 088d1872b73cc6c80e0b54eebaa53429c78c5d32 (tests
// module): PKCS8 is a PKCS#8 v2 (OneAsymmetricKey) document: a 16-byte header, the 32-byte seed,
// then the public key in its last 32 bytes.
const RUMA_PKCS8 = decodeBase64("MFMCAQEwBQYDK2VwBCIEINjozvdfbsGEt6DD+7Uf4PiJ/YvTNXV2mIPc/tA0T+6toSMDIQDdM+tpNzNWQM9NFpfgr4B9S7LHszOrVRp9NfKmeXS3aQ");
const RUMA_KEY = signingKeyFromSeed(RUMA_PKCS8.slice(16, 48), "ed25519:1");

describe("ruma-signatures' event signing vectors, room version 5", () => {
  it("derives the public key the PKCS#8 document carries", () => {
    expect(Buffer.from(RUMA_KEY.publicKey).equals(Buffer.from(RUMA_PKCS8.slice(-32)))).toBe(true);
  });

  // ruma/ruma crates/ruma-signatures/src/lib.rs at 088d1872b73cc6c80e0b54eebaa53429c78c5d32, sign_minimal_event
  it("hashes and signs the minimal event", () => {
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
    expect(signEvent("5", event, "domain", RUMA_KEY)).toEqual({
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
        domain: { "ed25519:1": "PxOFMn6ORll8PFSQp0IRF6037MEZt3Mfzu/ROiT/gb/ccs1G+f6Ddoswez4KntLPBI3GKCGIkhctiK37JOy2Aw" },
      },
      type: "X",
      unsigned: { age_ts: 1000000 },
    });
  });

  // ruma/ruma crates/ruma-signatures/src/lib.rs at 088d1872b73cc6c80e0b54eebaa53429c78c5d32, verify_minimal_event
  it("verifies the signed minimal event", () => {
    const signed = {
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
        domain: { "ed25519:1": "PxOFMn6ORll8PFSQp0IRF6037MEZt3Mfzu/ROiT/gb/ccs1G+f6Ddoswez4KntLPBI3GKCGIkhctiK37JOy2Aw" },
      },
      type: "X",
      unsigned: { age_ts: 1000000 },
    };
    const lookup: VerifyKeyLookup = (server, keyId) => (server === "domain" && keyId === "ed25519:1" ? RUMA_KEY.publicKey : undefined);
    expect(verifyEventSignatures("5", signed, lookup)).toEqual({ ok: true });
  });

  // ruma/ruma crates/ruma-signatures/src/lib.rs at 088d1872b73cc6c80e0b54eebaa53429c78c5d32, sign_redacted_event
  it("hashes and signs the event with redactable content", () => {
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
    expect(signEvent("5", event, "domain", RUMA_KEY)).toEqual({
      content: { body: "Here is the message content" },
      event_id: "$0:domain",
      hashes: { sha256: "onLKD1bGljeBWQhWZ1kaP9SorVmRQNdN5aM2JYU2n/g" },
      origin: "domain",
      origin_server_ts: 1000000,
      room_id: "!r:domain",
      sender: "@u:domain",
      signatures: {
        domain: { "ed25519:1": "D2V+qWBJssVuK/pEUJtwaYMdww2q1fP4PRCo226ChlLz8u8AWmQdLKes19NMjs/X0Hv0HIjU0c1TDKFMtGuoCA" },
      },
      type: "m.room.message",
      unsigned: { age_ts: 1000000 },
    });
  });
});

describe("ruma-signatures' servers_to_check_signatures vectors", () => {
  // ruma/ruma crates/ruma-signatures/src/functions/tests.rs at 0bae54ee1cddb2c05c57c6592eb729290ba74e1a:
  // the events of servers_to_check_signatures_{message,invite_via_third_party,restricted}.
  const base = {
    event_id: "$event_id:domain-event",
    auth_events: ["$room_create", "$power_levels", "$sender_room_member"],
    depth: 3,
    hashes: { sha256: "5jM4wQpv6lnBo7CLIghJuHdW+s2CMBJPUOGOC89ncos" },
    origin: "domain",
    origin_server_ts: 1_000_000,
    prev_events: ["$another_message"],
    room_id: "!x:domain",
    sender: "@name:domain-sender",
    signatures: {},
    unsigned: { age_ts: 1_000_000 },
  };
  const message = { ...base, type: "m.room.message", content: { msgtype: "text", body: "Hello world!" } } as Pdu;
  const thirdPartyInvite = {
    ...base,
    type: "m.room.member",
    state_key: "@name:domain-target-user",
    content: { membership: "invite", third_party_invite: {} },
  } as Pdu;
  const restrictedJoin = {
    ...base,
    type: "m.room.member",
    state_key: "@name:domain-sender",
    content: { membership: "join", join_authorised_via_users_server: "@name:domain-authorize-user" },
  } as Pdu;

  it("needs the event ID's server as well as the sender's in room version 1, not from 3", () => {
    expect(new Set(serversThatMustSign("1", message))).toEqual(new Set(["domain-sender", "domain-event"]));
    expect(serversThatMustSign("3", message)).toEqual(["domain-sender"]);
  });

  it("needs only the event ID's server for a third-party invite in room version 1, and nobody from 3", () => {
    expect(serversThatMustSign("1", thirdPartyInvite)).toEqual(["domain-event"]);
    expect(serversThatMustSign("3", thirdPartyInvite)).toEqual([]);
  });

  it("needs the authorising user's server for a restricted join from room version 8 only", () => {
    expect(new Set(serversThatMustSign("1", restrictedJoin))).toEqual(new Set(["domain-sender", "domain-event"]));
    expect(serversThatMustSign("3", restrictedJoin)).toEqual(["domain-sender"]);
    expect(new Set(serversThatMustSign("8", restrictedJoin))).toEqual(new Set(["domain-sender", "domain-authorize-user"]));
  });
});

describe("gomatrixserverlib's event ID vectors", () => {
  // matrix-org/gomatrixserverlib eventversion_test.go, TestEventIDForRoomVersionV1: a real
  // m.room.name event from a Synapse room of version 1.
  const V1_EVENT = JSON.parse(
    `{"auth_events":[["$oXL79cT7fFxR7dPH:localhost",{"sha256":"abjkiDSg1RkuZrbj2jZoGMlQaaj1Ue3Jhi7I7NlKfXY"}],["$IVUsaSkm1LBAZYYh:localhost",{"sha256":"X7RUj46hM/8sUHNBIFkStbOauPvbDzjSdH4NibYWnko"}],["$VS2QT0EeArZYi8wf:localhost",{"sha256":"k9eM6utkCH8vhLW9/oRsH74jOBS/6RVK42iGDFbylno"}]],"content":{"name":"test3"},"depth":7,"event_id":"$yvN1b43rlmcOs5fY:localhost","hashes":{"sha256":"Oh1mwI1jEqZ3tgJ+V1Dmu5nOEGpCE4RFUqyJv2gQXKs"},"origin":"localhost","origin_server_ts":1510854416361,"prev_events":[["$FqI6TVvWpcbcnJ97:localhost",{"sha256":"upCsBqUhNUgT2/+zkzg8TbqdQpWWKQnZpGJc6KcbUC4"}]],"prev_state":[],"room_id":"!19Mp0U9hjajeIiw1:localhost","sender":"@test:localhost","signatures":{"localhost":{"ed25519:u9kP":"5IzSuRXkxvbTp0vZhhXYZeOe+619iG3AybJXr7zfNn/4vHz4TH7qSJVQXSaHHvcTcDodAKHnTG1WDulgO5okAQ"}},"state_key":"","type":"m.room.name"}`,
  );

  it("takes a version 1 event's ID from its event_id, on a PDU valid in versions 1–2 only", () => {
    expect(computeEventId("1", V1_EVENT)).toBe("$yvN1b43rlmcOs5fY:localhost");
    expect(checkContentHash(V1_EVENT, { strict: false })).toBe(true);
    for (const version of versions(1, 2)) expect(validatePdu(version, V1_EVENT).ok).toBe(true);
    for (const version of versions(3, 11)) expect(validatePdu(version, V1_EVENT).ok).toBe(false);
  });

  // matrix-org/gomatrixserverlib eventversion_test.go, TestEventIDForRoomVersionV3 and
  // TestEventIDForRoomVersionV4: the same real m.room.create event under versions 3 and 4.
  const CREATE = JSON.parse(
    `{"auth_events": [], "prev_events": [], "type": "m.room.create", "room_id": "!uXDCzlYgCTHtiWCkEx:jki.re", "sender": "@erikj:jki.re", "content": {"room_version": "5", "predecessor": {"room_id": "!gdRMqOrTFdOCYHNwOo:half-shot.uk", "event_id": "$LP7ROBc4b+cMc1UE9haIz8q5AK2AIW4eJ90FfKLvyZI"}, "creator": "@erikj:jki.re"}, "depth": 1, "prev_state": [], "state_key": "", "origin": "jki.re", "origin_server_ts": 1560284621137, "hashes": {"sha256": "IX6zuNiJpJPNf70BLleL3HSCpjKeq9Uhu7uUpyDjBmc"}, "signatures": {"jki.re": {"ed25519:auto": "O4IyFfF2PPtGp5uaDm8t57dZbdh8vc8Q64LgCwvzYRVItAMI0uisfiAFaxkVT7MRpzh6N2QNN5NMRXZKmgPYDA"}}, "unsigned": {"age": 1321650}}`,
  );

  it("computes the version 3 ID in standard base64 and the version 4 ID in URL-safe base64", () => {
    expect(computeEventId("3", CREATE)).toBe("$RrGxF28UrHLmoASHndYb9Jb/1SFww2ptmtur9INS438");
    expect(computeEventId("4", CREATE)).toBe("$RrGxF28UrHLmoASHndYb9Jb_1SFww2ptmtur9INS438");
    expect(checkContentHash(CREATE, { strict: false })).toBe(true);
  });

  it("gives the event the same ID in every version with the v1 or v6 redaction algorithm from 4 (the create content keeps `creator` only)", () => {
    for (const version of versions(4, 10)) expect(computeEventId(version, CREATE)).toBe("$RrGxF28UrHLmoASHndYb9Jb_1SFww2ptmtur9INS438");
  });
});

describe("the same event under room versions 3 and 4: only the base64 alphabet differs", () => {
  // Constructed (no published event has both `+` and `/` in its ID): the spec's appendix minimal
  // event (appendices#signing-events) with origin_server_ts 1000004, chosen so its hash has both.
  // The oracle is independent of our code: its redacted form written out by hand as canonical JSON
  // (rooms/fragments/v1-redactions: a type "X" event keeps no content), hashed by node:crypto and
  // encoded by Buffer's base64, per rooms/v3#event-ids and rooms/fragments/v4-event-ids.
  const event = {
    room_id: "!x:domain",
    sender: "@a:domain",
    origin: "domain",
    origin_server_ts: 1000004,
    signatures: { domain: { "ed25519:1": "not checked here" } },
    hashes: { sha256: "5jM4wQpv6lnBo7CLIghJuHdW+s2CMBJPUOGOC89ncos" },
    type: "X",
    content: { body: "redacted before hashing" },
    prev_events: [],
    auth_events: [],
    depth: 3,
    unsigned: { age_ts: 1000000 },
  };
  const canonicalRedacted =
    '{"auth_events":[],"content":{},"depth":3,"hashes":{"sha256":"5jM4wQpv6lnBo7CLIghJuHdW+s2CMBJPUOGOC89ncos"},' +
    '"origin":"domain","origin_server_ts":1000004,"prev_events":[],"room_id":"!x:domain","sender":"@a:domain","type":"X"}';
  const digest = createHash("sha256").update(canonicalRedacted, "utf8").digest();
  const standard = `$${digest.toString("base64").replace(/=+$/, "")}`;
  const urlSafe = `$${digest.toString("base64url")}`;

  it("has a reference hash with both `+` and `/` in standard base64", () => {
    expect(standard).toMatch(/\+/);
    expect(standard).toMatch(/\//);
    expect(urlSafe).toBe(standard.replaceAll("+", "-").replaceAll("/", "_"));
  });

  it("is `$` + standard unpadded base64 in version 3 and URL-safe in versions 4 to 5", () => {
    expect(computeEventId("3", event)).toBe(standard);
    for (const version of versions(4, 5)) expect(computeEventId(version, event)).toBe(urlSafe);
  });
});

// matrix-org/matrix-spec data/api/server-server/examples/components/pdu_base.json
const PDU_BASE = {
  room_id: "!UcYsUzyxTGDxLBEvLy:example.org",
  sender: "@alice:example.com",
  origin_server_ts: 1404838188000,
  depth: 12,
  type: "m.room.message",
  content: { key: "value" },
  hashes: { sha256: "thishashcoversallfieldsincasethisisredacted" },
  signatures: {
    "example.com": {
      "ed25519:key_version": "these86bytesofbase64signaturecoveressentialfieldsincludinghashessocancheckredactedpdus",
    },
  },
  unsigned: { age: 4612 },
};

describe("the spec's event ID examples (rooms/v3, rooms/v4)", () => {
  // matrix-org/matrix-spec content/rooms/v3.md ("Client considerations" and "Event IDs")
  const V3_EXAMPLES = ["$acR1l0raoZnm60CBwAVgqbZqoO/mYU81xysh1u7XcJk", "$CD66HAED5npg6074c6pDtLKalHjVfYb2q4Q3LZgrW6o"];
  // matrix-org/matrix-spec content/rooms/v4.md and content/rooms/fragments/v4-event-ids.md
  const V4_EXAMPLE = "$Rqnc-F-dvnEYJTyHq_iKxU2bZ1CI92-kuZq3a5lr5Zg";

  it("version 3 examples are `$` + a sha256 in standard unpadded base64, the shape of our version 3 IDs", () => {
    for (const id of V3_EXAMPLES) {
      expect(decodeBase64(id.slice(1))).toHaveLength(32);
      expect(id).toMatch(/^\$[A-Za-z0-9+/]{43}$/);
    }
  });

  it("the version 4 example is `$` + a sha256 in URL-safe unpadded base64, which the standard alphabet refuses", () => {
    expect(decodeBase64Url(V4_EXAMPLE.slice(1))).toHaveLength(32);
    expect(() => decodeBase64(V4_EXAMPLE.slice(1))).toThrow(Base64Error);
    expect(V4_EXAMPLE).toMatch(/^\$[A-Za-z0-9_-]{43}$/);
  });

  it("accepts the examples as references in PDUs of their versions", () => {
    const pdu = { ...PDU_BASE, auth_events: [...V3_EXAMPLES], prev_events: [V3_EXAMPLES[0]] };
    expect(validatePdu("3", pdu).ok).toBe(true);
    expect(validatePdu("4", { ...pdu, auth_events: [V4_EXAMPLE], prev_events: [V4_EXAMPLE] }).ok).toBe(true);
  });
});

describe("the spec's PDU examples (data/api/server-server/definitions/pdu_v1.yaml, pdu_v3.yaml, pdu_v4.yaml)", () => {
  // matrix-org/matrix-spec data/api/server-server/examples/pdu_v1.json
  const PDU_V1 = {
    ...PDU_BASE,
    event_id: "$a4ecee13e2accdadf56c1025:example.com",
    auth_events: [["$af232176:example.org", { sha256: "abase64encodedsha256hashshouldbe43byteslong" }]],
    prev_events: [["$af232176:example.org", { sha256: "abase64encodedsha256hashshouldbe43byteslong" }]],
  };
  // matrix-org/matrix-spec data/api/server-server/examples/pdu_v3.json
  const PDU_V3 = {
    ...PDU_BASE,
    auth_events: ["$base64encodedeventid", "$adifferenteventid"],
    prev_events: ["$base64encodedeventid", "$adifferenteventid"],
    redacts: "$some/old+event",
  };
  // matrix-org/matrix-spec data/api/server-server/examples/pdu_v4.json (with
  // components/auth_events_prev_events_v4.json)
  const PDU_V4 = {
    ...PDU_BASE,
    auth_events: ["$urlsafe_base64_encoded_eventid", "$a-different-event-id"],
    prev_events: ["$urlsafe_base64_encoded_eventid", "$a-different-event-id"],
    redacts: "$some-old_event",
  };

  it("accepts the pdu_v1 example in room versions 1 and 2 and takes its ID from its event_id", () => {
    for (const version of versions(1, 2)) expect(validatePdu(version, PDU_V1).ok).toBe(true);
    expect(computeEventId("1", PDU_V1)).toBe("$a4ecee13e2accdadf56c1025:example.com");
  });

  it("accepts the pdu_v3 example in room version 3 and the pdu_v4 example in versions 4 to 10", () => {
    expect(validatePdu("3", PDU_V3).ok).toBe(true);
    for (const version of versions(4, 10)) expect(validatePdu(version, PDU_V4).ok).toBe(true);
  });

  it("refuses the version 1 format in a version 4 room: its references are [id, hashes] pairs", () => {
    const result = validatePdu("4", PDU_V1);
    expect(result.ok).toBe(false);
    if (!result.ok) expect(result.reason).toMatch(/^(auth|prev)_events\.0/);
  });

  it("refuses the version 3 and 4 formats in a version 1 room: no event_id and plain ID references", () => {
    for (const pdu of [PDU_V3, PDU_V4]) {
      for (const version of versions(1, 2)) expect(validatePdu(version, pdu).ok).toBe(false);
      // With an event_id added, the plain references alone still make it invalid.
      expect(validatePdu("1", { ...pdu, event_id: "$x:example.org" }).ok).toBe(false);
    }
  });
});

describe("the spec's stringy and floaty power levels (rooms/fragments/v1-stringy-power-levels, v1-floaty-power-levels)", () => {
  // The examples are client-format events; the PDU fields they leave out are filled in, the
  // example itself is unchanged.
  function asPdu(version: string, event: JsonObject): JsonObject {
    const references = { prev_events: [], auth_events: [] };
    const eventId = Number(version) <= 2 ? { event_id: "$power_levels:example.org" } : {};
    return { ...event, ...references, ...eventId, depth: 3, hashes: { sha256: "h" }, signatures: {} };
  }

  // matrix-org/matrix-spec content/rooms/fragments/v1-floaty-power-levels.md
  const FLOATY = {
    content: {
      ban: 50,
      events: { "m.room.power_levels": 100 },
      events_default: 0,
      state_default: 50,
      users: { "@example:example.org": 100, "@alice:localhost": 50, "@bob:localhost": 50.57 },
      users_default: 0,
    },
    origin_server_ts: 1432735824653,
    room_id: "!jEsUZKDJdhlrceRyVU:example.org",
    sender: "@example:example.org",
    state_key: "",
    type: "m.room.power_levels",
  };

  // matrix-org/matrix-spec content/rooms/fragments/v1-stringy-power-levels.md
  const STRINGY = {
    content: {
      ban: "50",
      events: { "m.room.power_levels": "100" },
      events_default: "0",
      state_default: "50",
      users: { "@example:localhost": "100" },
      users_default: "0",
    },
    origin_server_ts: 1432735824653,
    room_id: "!jEsUZKDJdhlrceRyVU:example.org",
    sender: "@example:example.org",
    state_key: "",
    type: "m.room.power_levels",
  };

  it("accepts the float example as a PDU in room versions 1 to 5, which do not enforce canonical JSON", () => {
    for (const version of versions(1, 5)) expect(validatePdu(version, asPdu(version, FLOATY)).ok).toBe(true);
  });

  it("refuses the float example from room version 6, whose events must be canonical JSON", () => {
    for (const version of versions(6, 11)) {
      const result = validatePdu(version, asPdu(version, FLOATY));
      expect(result.ok).toBe(false);
      if (!result.ok) expect(result.reason).toMatch(/canonical JSON/);
    }
  });

  it("gives @bob (50.57) and @alice (50) the same effective level of 50 before version 10", () => {
    const powerLevels = { ...asPdu("1", FLOATY), event_id: "$power_levels:example.org" } as unknown as RoomEvent;
    for (const version of versions(1, 9)) {
      expect(userPowerLevel(version, "@bob:localhost", undefined, powerLevels)).toBe(50);
      expect(userPowerLevel(version, "@alice:localhost", undefined, powerLevels)).toBe(50);
    }
    // "Exponential notation is applied: 5.114698E4 becomes 51146.98 ... truncated ... 51146."
    expect(powerLevelValue("1", JSON.parse("5.114698E4"))).toBe(51146);
  });

  it("reads the string example's levels before version 10, and not from 10", () => {
    const powerLevels = { ...asPdu("1", STRINGY), event_id: "$power_levels:example.org" } as unknown as RoomEvent;
    for (const version of versions(1, 9)) {
      expect(validatePdu(version, asPdu(version, STRINGY)).ok).toBe(true);
      expect(userPowerLevel(version, "@example:localhost", undefined, powerLevels)).toBe(100);
      expect(powerLevelValue(version, STRINGY.content.ban)).toBe(50);
    }
    for (const version of versions(10, 12)) expect(powerLevelValue(version, STRINGY.content.ban)).toBeUndefined();
  });

  it("reads each integer form the fragment lists", () => {
    const forms: [string, number][] = [
      ["100", 100], ["000100", 100], ["+100", 100], ["-100", -100],
      [" 100 ", 100], [" 00100 ", 100], [" +100 ", 100], [" -100 ", -100],
    ];
    for (const [form, level] of forms) expect(powerLevelValue("1", form), form).toBe(level);
  });
});

describe("Synapse's redaction vectors (PruneEventTestCase)", () => {
  // element-hq/synapse tests/events/test_utils.py, PruneEventTestCase, at
  // 0127aee30a4d5a6d3267fd834bcf2a3abd78099c. run_test builds the event with make_test_event
  // (tests/test_utils/event_builders.py: default_event_fields, plus event_id for V1) and compares
  // prune_event(...).get_dict() with _DEFAULT_KEPT_FIELDS + matchdict. A Synapse event always has
  // `signatures` and `unsigned` ({} when absent), so the input has them too.
  //
  // One deliberate difference: Synapse's pruned event keeps `unsigned` (with `age_ts` and
  // `replaces_state`, its local metadata); the spec's redaction algorithm keeps no `unsigned`, and
  // signatures and reference hashes never cover it, so redactEvent drops it. The expected `unsigned`
  // is left out of the comparison.
  const DEFAULT_KEPT_FIELDS = {
    sender: "@test:test",
    room_id: "!test:test",
    depth: 1,
    origin_server_ts: 1,
    hashes: {},
    auth_events: [],
    prev_events: [],
  };

  function makeTestEvent(version: string, evdict: JsonObject): JsonObject {
    return {
      type: "m.test",
      sender: "@test:test",
      content: {},
      depth: 1,
      origin_server_ts: 1,
      hashes: {},
      prev_events: [],
      room_id: "!test:test",
      auth_events: [],
      ...(version === "1" ? { event_id: "$test_event_id:matrix.org" } : {}),
      signatures: {},
      unsigned: {},
      ...evdict,
    };
  }

  function expectPruned(version: string, evdict: JsonObject, matchdict: JsonObject): void {
    const { unsigned: _synapseOnly, ...expected }: JsonObject = { ...DEFAULT_KEPT_FIELDS, ...matchdict };
    expect(redactEvent(version, makeTestEvent(version, evdict))).toEqual(expected);
  }

  it("test_minimal (v1)", () => {
    expectPruned("1", { type: "A", event_id: "$test:domain" }, { type: "A", event_id: "$test:domain", content: {}, signatures: {}, unsigned: {} });
  });

  it("test_basic_keys (v1): keeps every listed top-level key and drops others", () => {
    expectPruned(
      "1",
      {
        event_id: "$3:domain",
        type: "A",
        room_id: "!1:domain",
        sender: "@2:domain",
        state_key: "B",
        content: { other_key: "foo" },
        hashes: { sha256: "abc" },
        signatures: { domain: { "algo:1": "sigs" } },
        depth: 4,
        prev_events: [],
        prev_state: "prev_state",
        auth_events: [],
        origin: "domain",
        origin_server_ts: 1234,
        membership: "join",
        other_key: "foo",
      },
      {
        event_id: "$3:domain",
        type: "A",
        room_id: "!1:domain",
        sender: "@2:domain",
        state_key: "B",
        hashes: { sha256: "abc" },
        depth: 4,
        prev_events: [],
        prev_state: "prev_state",
        auth_events: [],
        origin: "domain",
        origin_server_ts: 1234,
        membership: "join",
        content: {},
        signatures: { domain: { "algo:1": "sigs" } },
        unsigned: {},
      },
    );
  });

  it("test_basic_keys (v11): drops prev_state and membership", () => {
    expectPruned("11", { type: "A", prev_state: "prev_state", membership: "join" }, { type: "A", content: {}, signatures: {}, unsigned: {} });
  });

  it("test_unsigned (v1): drops unsigned entirely (Synapse keeps its age_ts and replaces_state locally)", () => {
    expectPruned(
      "1",
      { type: "B", event_id: "$test:domain", unsigned: { age_ts: 20, replaces_state: "$test2:domain", other_key: "foo" } },
      { type: "B", event_id: "$test:domain", content: {}, signatures: {}, unsigned: { age_ts: 20, replaces_state: "$test2:domain" } },
    );
  });

  it("test_content (v1): strips content, except the one key member, join_rules and history_visibility keep", () => {
    expectPruned(
      "1",
      { type: "C", event_id: "$test:domain", content: { things: "here" } },
      { type: "C", event_id: "$test:domain", content: {}, signatures: {}, unsigned: {} },
    );
    const keepContentKeys: [string, string, string][] = [
      ["member", "membership", "join"],
      ["join_rules", "join_rule", "invite"],
      ["history_visibility", "history_visibility", "shared"],
    ];
    for (const [eventType, key, value] of keepContentKeys) {
      expectPruned(
        "1",
        { type: `m.room.${eventType}`, event_id: "$test:domain", content: { [key]: value, other_key: "foo" } },
        { type: `m.room.${eventType}`, event_id: "$test:domain", content: { [key]: value }, signatures: {}, unsigned: {} },
      );
    }
  });

  it("test_create (v1): keeps only `creator`", () => {
    expectPruned(
      "1",
      { type: "m.room.create", event_id: "$test:domain", content: { creator: "@2:domain", other_key: "foo" } },
      { type: "m.room.create", event_id: "$test:domain", content: { creator: "@2:domain" }, signatures: {}, unsigned: {} },
    );
  });

  it("test_create (v11): keeps all create content, drops unknown top-level keys", () => {
    expectPruned(
      "11",
      { type: "m.room.create", content: { not_a_real_key: true }, nonsense_field: "some_random_garbage" },
      { type: "m.room.create", content: { not_a_real_key: true }, signatures: {}, unsigned: {} },
    );
  });

  it("test_power_levels (v1): keeps every level but `invite`", () => {
    expectPruned(
      "1",
      {
        type: "m.room.power_levels",
        event_id: "$test:domain",
        content: {
          ban: 1,
          events: { "m.room.name": 100 },
          events_default: 2,
          invite: 3,
          kick: 4,
          redact: 5,
          state_default: 6,
          users: { "@admin:domain": 100 },
          users_default: 7,
          other_key: 8,
        },
      },
      {
        type: "m.room.power_levels",
        event_id: "$test:domain",
        content: {
          ban: 1,
          events: { "m.room.name": 100 },
          events_default: 2,
          kick: 4,
          redact: 5,
          state_default: 6,
          users: { "@admin:domain": 100 },
          users_default: 7,
        },
        signatures: {},
        unsigned: {},
      },
    );
  });

  it("test_power_levels (v11): keeps `invite`", () => {
    expectPruned(
      "11",
      { type: "m.room.power_levels", content: { invite: 75 } },
      { type: "m.room.power_levels", content: { invite: 75 }, signatures: {}, unsigned: {} },
    );
  });

  it("test_alias_event (v1): keeps `aliases`", () => {
    expectPruned(
      "1",
      { type: "m.room.aliases", event_id: "$test:domain", content: { aliases: ["test"] } },
      { type: "m.room.aliases", event_id: "$test:domain", content: { aliases: ["test"] }, signatures: {}, unsigned: {} },
    );
  });

  it("test_alias_event (v6): drops `aliases`", () => {
    expectPruned(
      "6",
      { type: "m.room.aliases", content: { aliases: ["test"] } },
      { type: "m.room.aliases", content: {}, signatures: {}, unsigned: {} },
    );
  });

  it("test_redacts (v6): drops top-level and content `redacts`", () => {
    expectPruned(
      "6",
      { type: "m.room.redaction", content: { redacts: "$test2:domain" }, redacts: "$test2:domain" },
      { type: "m.room.redaction", content: {}, signatures: {}, unsigned: {} },
    );
  });

  it("test_redacts (v11): keeps content `redacts`", () => {
    expectPruned(
      "11",
      { type: "m.room.redaction", content: { redacts: "$test2:domain" }, redacts: "$test2:domain" },
      { type: "m.room.redaction", content: { redacts: "$test2:domain" }, signatures: {}, unsigned: {} },
    );
  });

  it("test_join_rules (v1): drops `allow`", () => {
    expectPruned(
      "1",
      { type: "m.room.join_rules", event_id: "$test:domain", content: { join_rule: "invite", allow: [], other_key: "stripped" } },
      { type: "m.room.join_rules", event_id: "$test:domain", content: { join_rule: "invite" }, signatures: {}, unsigned: {} },
    );
  });

  it("test_join_rules (v8): keeps `allow`", () => {
    expectPruned(
      "8",
      { type: "m.room.join_rules", content: { join_rule: "invite", allow: [], other_key: "stripped" } },
      { type: "m.room.join_rules", content: { join_rule: "invite", allow: [] }, signatures: {}, unsigned: {} },
    );
  });

  it("test_member (v1): drops join_authorised_via_users_server", () => {
    expectPruned(
      "1",
      {
        type: "m.room.member",
        event_id: "$test:domain",
        content: { membership: "join", join_authorised_via_users_server: "@user:domain", other_key: "stripped" },
      },
      { type: "m.room.member", event_id: "$test:domain", content: { membership: "join" }, signatures: {}, unsigned: {} },
    );
  });

  it("test_member (v9): keeps join_authorised_via_users_server", () => {
    expectPruned(
      "9",
      { type: "m.room.member", content: { membership: "join", join_authorised_via_users_server: "@user:domain", other_key: "stripped" } },
      {
        type: "m.room.member",
        content: { membership: "join", join_authorised_via_users_server: "@user:domain" },
        signatures: {},
        unsigned: {},
      },
    );
  });

  const THIRD_PARTY_INVITE = {
    display_name: "alice",
    signed: {
      mxid: "@alice:example.org",
      signatures: {
        "magic.forest": {
          "ed25519:3": "fQpGIW1Snz+pwLZu6sTy2aHy/DYWWTspTJRPyNp0PKkymfIsNffysMl6ObMMFdIJhk6g6pwlIqZ54rxo8SLmAg",
        },
      },
      token: "abc123",
    },
  };

  it("test_member (v11): keeps only `signed` of an object third_party_invite, an empty one as it is, and drops a string", () => {
    expectPruned(
      "11",
      { type: "m.room.member", content: { membership: "invite", third_party_invite: THIRD_PARTY_INVITE, other_key: "stripped" } },
      {
        type: "m.room.member",
        content: { membership: "invite", third_party_invite: { signed: THIRD_PARTY_INVITE.signed } },
        signatures: {},
        unsigned: {},
      },
    );
    expectPruned(
      "11",
      { type: "m.room.member", content: { membership: "invite", third_party_invite: {}, other_key: "stripped" } },
      { type: "m.room.member", content: { membership: "invite", third_party_invite: {} }, signatures: {}, unsigned: {} },
    );
    expectPruned(
      "11",
      { type: "m.room.member", content: { membership: "invite", third_party_invite: "stripped", other_key: "stripped" } },
      { type: "m.room.member", content: { membership: "invite" }, signatures: {}, unsigned: {} },
    );
  });

  it("test_relations (v10): strips m.relates_to (the MSC3389 versions that keep it are not stable)", () => {
    expectPruned(
      "10",
      {
        type: "m.room.message",
        content: { body: "foo", "m.relates_to": { rel_type: "rel_type", event_id: "$parent:domain", other: "stripped" } },
      },
      { type: "m.room.message", content: {}, signatures: {}, unsigned: {} },
    );
  });
});

describe("which redaction algorithm each room version uses (matrix-org/matrix-spec content/rooms/v1.md … v12.md)", () => {
  // The rver-fragment each room page includes: v1-redactions in 1–5, v6-redactions in 6–7, the
  // inline list of rooms/v8.md in 8, v9-redactions in 9–10, v11-redactions in 11–12. The rows say
  // what the fragment's lists keep of a probe event of each kind.
  const probes: { name: string; event: JsonObject; keptFrom: (version: number) => JsonObject }[] = [
    {
      name: "m.room.aliases `aliases` (v1-redactions only)",
      event: { type: "m.room.aliases", state_key: "example.org", content: { aliases: ["#a:example.org"] } },
      keptFrom: (v) => (v <= 5 ? { aliases: ["#a:example.org"] } : {}),
    },
    {
      name: "m.room.join_rules `allow` (from rooms/v8)",
      event: { type: "m.room.join_rules", state_key: "", content: { join_rule: "restricted", allow: [{ type: "m.room_membership" }], x: 1 } },
      keptFrom: (v) => (v >= 8 ? { join_rule: "restricted", allow: [{ type: "m.room_membership" }] } : { join_rule: "restricted" }),
    },
    {
      name: "m.room.member `join_authorised_via_users_server` (from v9-redactions)",
      event: { type: "m.room.member", state_key: "@u:example.org", content: { membership: "join", join_authorised_via_users_server: "@v:example.org", displayname: "u" } },
      keptFrom: (v) => (v >= 9 ? { membership: "join", join_authorised_via_users_server: "@v:example.org" } : { membership: "join" }),
    },
    {
      name: "m.room.power_levels `invite` (from v11-redactions)",
      event: { type: "m.room.power_levels", state_key: "", content: { invite: 0, ban: 50, notifications: { room: 50 } } },
      keptFrom: (v) => (v >= 11 ? { invite: 0, ban: 50 } : { ban: 50 }),
    },
    {
      name: "m.room.create content beyond `creator` (from v11-redactions)",
      event: { type: "m.room.create", state_key: "", content: { creator: "@u:example.org", room_version: "1" } },
      keptFrom: (v) => (v >= 11 ? { creator: "@u:example.org", room_version: "1" } : { creator: "@u:example.org" }),
    },
    {
      name: "m.room.redaction content `redacts` (from v11-redactions)",
      event: { type: "m.room.redaction", content: { redacts: "$r", reason: "spam" } },
      keptFrom: (v) => (v >= 11 ? { redacts: "$r" } : {}),
    },
  ];

  for (const { name, event, keptFrom } of probes) {
    it(`keeps ${name}`, () => {
      for (const version of STABLE_ROOM_VERSIONS) {
        expect(redactEvent(version, event).content, `room version ${version}`).toEqual(keptFrom(Number(version)));
      }
    });
  }

  it("keeps top-level origin, membership and prev_state up to version 10, not from 11", () => {
    const event = { type: "m.room.message", content: {}, origin: "example.org", membership: "join", prev_state: [] };
    for (const version of STABLE_ROOM_VERSIONS) {
      const kept = Number(version) <= 10 ? { origin: "example.org", membership: "join", prev_state: [] } : {};
      expect(redactEvent(version, event), `room version ${version}`).toEqual({ type: "m.room.message", content: {}, ...kept });
    }
  });
});

import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { debugMain } from "./debug-cli.ts";
import { decodeBase64 } from "./protocol/base64.ts";
import { signEvent } from "./protocol/event-signing.ts";
import { signingKeyFromSeed } from "./protocol/signing.ts";

const FIXTURES = join(import.meta.dirname, "../tests/fixtures/state-res");
const fixture = (name: string) => JSON.parse(readFileSync(join(FIXTURES, name), "utf8"));
const KEY = signingKeyFromSeed(decodeBase64("YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1"), "ed25519:1");

async function run(argv: string[], input: unknown) {
  const result = await debugMain(argv, typeof input === "string" ? input : JSON.stringify(input));
  return { ...result, json: result.code === 0 && result.stdout ? JSON.parse(result.stdout) : undefined };
}

describe("parley debug canonical-json", () => {
  it("prints the canonical form (appendix example)", async () => {
    const result = await run(["canonical-json"], `{"b": "2", "a": "1"}`);
    expect(result).toMatchObject({ code: 0, stdout: `{"a":"1","b":"2"}\n`, stderr: "" });
  });

  it("writes -0 and 1e10 as integers (the appendix's example)", async () => {
    const result = await run(["canonical-json"], `{"a":-0,"b":1e10}`);
    expect(result).toMatchObject({ code: 0, stdout: `{"a":0,"b":10000000000}\n`, stderr: "" });
  });

  it("refuses a float with one line on stderr and code 2", async () => {
    const result = await run(["canonical-json"], `{"a": 1.5}`);
    expect(result.code).toBe(2);
    expect(result.stdout).toBe("");
    expect(result.stderr.trimEnd().split("\n")).toHaveLength(1);
    expect(result.stderr).toContain("1.5");
  });
});

describe("parley debug event-id", () => {
  it("computes the event ID of a real event and checks its content hash", async () => {
    const event = JSON.parse(
      `{"auth_events": [], "prev_events": [], "type": "m.room.create", "room_id": "!uXDCzlYgCTHtiWCkEx:jki.re", "sender": "@erikj:jki.re", "content": {"room_version": "5", "predecessor": {"room_id": "!gdRMqOrTFdOCYHNwOo:half-shot.uk", "event_id": "$LP7ROBc4b+cMc1UE9haIz8q5AK2AIW4eJ90FfKLvyZI"}, "creator": "@erikj:jki.re"}, "depth": 1, "prev_state": [], "state_key": "", "origin": "jki.re", "origin_server_ts": 1560284621137, "hashes": {"sha256": "IX6zuNiJpJPNf70BLleL3HSCpjKeq9Uhu7uUpyDjBmc"}, "signatures": {"jki.re": {"ed25519:auto": "O4IyFfF2PPtGp5uaDm8t57dZbdh8vc8Q64LgCwvzYRVItAMI0uisfiAFaxkVT7MRpzh6N2QNN5NMRXZKmgPYDA"}}, "unsigned": {"age": 1321650}}`,
    );
    expect((await run(["event-id", "--room-version", "10"], event)).json).toEqual({
      event_id: "$RrGxF28UrHLmoASHndYb9Jb_1SFww2ptmtur9INS438",
      content_hash_ok: true,
    });
    const tampered = { ...event, content: { ...event.content, creator: "@mallory:jki.re" } };
    expect((await run(["event-id", "--room-version", "10"], tampered)).json).toMatchObject({ content_hash_ok: false });
  });

  it("defaults to room version 12", async () => {
    const create = signEvent(
      "12",
      { type: "m.room.create", state_key: "", sender: "@a:domain", content: { room_version: "12" }, origin_server_ts: 1, depth: 1, prev_events: [], auth_events: [] },
      "domain",
      KEY,
    );
    const v12 = (await run(["event-id"], create)).json;
    const v11 = (await run(["event-id", "--room-version", "11"], create)).json;
    expect(v12).toEqual((await run(["event-id", "--room-version", "12"], create)).json);
    expect(v12.content_hash_ok).toBe(true);
    expect(v12.event_id).toMatch(/^\$[A-Za-z0-9_-]{43}$/);
    expect(v11.event_id).toBe(v12.event_id); // v11 and v12 redact alike
  });
});

describe("parley debug redact", () => {
  it("redacts per the room version", async () => {
    const event = { type: "m.room.member", origin: "x", content: { membership: "join", displayname: "A" } };
    expect((await run(["redact", "--room-version", "10"], event)).json).toEqual({ type: "m.room.member", origin: "x", content: { membership: "join" } });
    expect((await run(["redact", "--room-version", "11"], event)).json).toEqual({ type: "m.room.member", content: { membership: "join" } });
  });
});

describe("parley debug check-auth", () => {
  const room = fixture("topic-basic.v11.json");
  const byId = new Map(room.events.map((e: { event_id: string }) => [e.event_id, e]));
  const authEventsOf = (e: { auth_events: string[] }) => e.auth_events.map((id) => byId.get(id));
  const t1 = byId.get("$T1:example.com") as { auth_events: string[] };

  it("allows an event its auth events allow", async () => {
    expect((await run(["check-auth", "--room-version", "11"], { event: t1, auth_events: authEventsOf(t1) })).json).toEqual({ allowed: true });
  });

  it("refuses with a readable reason", async () => {
    const authEvents = ["$CREATE:example.com", "$IPOWER:example.com", "$IMZ:example.com"];
    const zaraTopic = { ...t1, event_id: "$Z", sender: "@zara:example.com", auth_events: authEvents };
    const result = await run(["check-auth", "--room-version", "11"], { event: zaraTopic, auth_events: authEvents.map((id) => byId.get(id)) });
    expect(result.json).toEqual({ allowed: false, reason: "sending m.room.topic needs power level 50; sender @zara:example.com has 0" });
  });

  it("refuses auth events the selection does not name", async () => {
    const zaraTopic = { ...t1, event_id: "$Z", sender: "@zara:example.com" };
    const result = await run(["check-auth", "--room-version", "11"], { event: zaraTopic, auth_events: authEventsOf(t1) });
    expect(result.json).toEqual({ allowed: false, reason: expect.stringContaining("is not one the auth events selection allows") });
  });
});

describe("parley debug resolve-state", () => {
  it("resolves the state sets of a fixture", async () => {
    const f = fixture("msc4297-problem-a.v12.json");
    const result = await run(["resolve-state", "--room-version", "12"], { events: f.events, state_sets: f.state_sets });
    expect(result.json).toEqual({ state: f.expected.state });
  });

  it("refuses an unknown event ID in a state set", async () => {
    const result = await run(["resolve-state", "--room-version", "11"], { events: [], state_sets: [["$nope"]] });
    expect(result).toMatchObject({ code: 2, stderr: `parley debug: state_sets[0]: "$nope" is not one of the events\n` });
  });
});

describe("parley debug replay", () => {
  for (const name of ["ban-vs-power-levels.v10.json", "mainline-sort.v12.json", "rejected-events-change-nothing.v11.json"]) {
    it(`replays ${name} to its expected state`, async () => {
      const f = fixture(name);
      const result = await run(["replay", "--room-version", f.room_version], { events: f.events });
      expect(result.json).toEqual({ state: f.expected.state, rejected: f.expected.rejected });
    });
  }

  it("refuses events out of order", async () => {
    const f = fixture("topic.v11.json");
    const result = await run(["replay", "--room-version", "11"], { events: [...f.events].reverse() });
    expect(result.code).toBe(2);
    expect(result.stderr).toMatch(/^parley debug: event \$END:example.com comes before its prev_event/);
  });
});

describe("parley debug: bad usage", () => {
  it.each([
    [[], "{}"],
    [["frobnicate"], "{}"],
    [["event-id", "--room-version", "13"], "{}"],
    [["event-id", "--colour"], "{}"],
    [["event-id"], ""],
    [["event-id"], "not json"],
    [["event-id"], "[1]"],
    [["replay"], `{"events": [{"event_id": "$x"}]}`],
  ])("%j with %j gives code 2 and one line on stderr", async (argv, stdin) => {
    const result = await debugMain(argv, stdin);
    expect(result.code).toBe(2);
    expect(result.stdout).toBe("");
    expect(result.stderr).toMatch(/^parley debug: [^\n]+\n$/);
  });
});

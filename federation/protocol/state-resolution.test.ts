import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { validateRoomEvent, type RoomEvent } from "./pdu.ts";
import { replayRoom } from "./replay.ts";
import { stateEntries, stateMapKey, type StateEntry, type StateMap } from "./room-state.ts";
import { resolveState } from "./state-resolution.ts";

// The fixtures under tests/fixtures/state-res are written by generate.ts there: the classic
// conflicts of Synapse's tests/state/test_v2.py (ban vs power levels, topic vs power levels,
// join rule evasion, mainline ordering), tie-breaks, and the MSC4297 problems that v2.1 fixes,
// each for room versions 10, 11 (state res v2) and 12 (v2.1).
const FIXTURES = join(import.meta.dirname, "../../tests/fixtures/state-res");

interface Fixture {
  description: string;
  room_version: string;
  events: unknown[];
  state_sets?: string[][];
  expected: { state: StateEntry[]; rejected?: string[] };
}

function loadFixtures(): Array<[string, Fixture]> {
  return readdirSync(FIXTURES)
    .filter((name) => name.endsWith(".json"))
    .sort()
    .map((name) => [name, JSON.parse(readFileSync(join(FIXTURES, name), "utf8")) as Fixture]);
}

function eventsOf(fixture: Fixture): RoomEvent[] {
  return fixture.events.map((value) => {
    const result = validateRoomEvent(value);
    if (!result.ok) throw new Error(result.reason);
    return result.value;
  });
}

describe("state resolution fixtures", () => {
  const fixtures = loadFixtures();

  it("covers v2 and v2.1 with every scenario", () => {
    const byVersion = (v: string) => fixtures.filter(([, f]) => f.room_version === v).length;
    expect(byVersion("10")).toBeGreaterThanOrEqual(10);
    expect(byVersion("11")).toBe(byVersion("10"));
    expect(byVersion("12")).toBe(byVersion("10"));
  });

  for (const [name, fixture] of fixtures) {
    it(`${name}: ${fixture.description}`, () => {
      const events = eventsOf(fixture);
      if (fixture.state_sets) {
        const byId = new Map(events.map((e) => [e.event_id, e]));
        const stateSets = fixture.state_sets.map((ids): StateMap => {
          return new Map(ids.map((id) => {
            const event = byId.get(id)!;
            return [stateMapKey(event.type, event.state_key!), id];
          }));
        });
        const resolved = resolveState(fixture.room_version, stateSets, (id) => byId.get(id));
        expect(stateEntries(resolved)).toEqual(fixture.expected.state);
      } else {
        const result = replayRoom(fixture.room_version, events);
        expect(stateEntries(result.state)).toEqual(fixture.expected.state);
        expect(result.rejected).toEqual(fixture.expected.rejected ?? []);
      }
    });
  }
});

describe("resolveState edge cases", () => {
  const fixture = JSON.parse(readFileSync(join(FIXTURES, "topic-basic.v11.json"), "utf8")) as Fixture;
  const events = eventsOf(fixture);
  const byId = new Map(events.map((e) => [e.event_id, e]));
  const topicKey = stateMapKey("m.room.topic", "");
  const plKey = stateMapKey("m.room.power_levels", "");

  it("returns the state itself when there is nothing to resolve", () => {
    const state: StateMap = new Map([[topicKey, "$T1:example.com"]]);
    expect(resolveState("11", [state, new Map(state)], (id) => byId.get(id))).toEqual(state);
    expect(resolveState("11", [state], (id) => byId.get(id))).toEqual(state);
    expect(resolveState("11", [], (id) => byId.get(id))).toEqual(new Map());
  });

  it("treats a key missing from one state set as conflicted", () => {
    const withTopic: StateMap = new Map([[plKey, "$IPOWER:example.com"], [topicKey, "$T1:example.com"]]);
    const withoutTopic: StateMap = new Map([[plKey, "$IPOWER:example.com"]]);
    expect(resolveState("11", [withTopic, withoutTopic], (id) => byId.get(id)).get(topicKey)).toBe("$T1:example.com");
  });

  it("leaves out conflicted events it cannot look up", () => {
    const a: StateMap = new Map([[topicKey, "$T1:example.com"]]);
    const b: StateMap = new Map([[topicKey, "$unknown"]]);
    expect(resolveState("11", [a, b], (id) => byId.get(id)).get(topicKey)).toBe("$T1:example.com");
  });
});

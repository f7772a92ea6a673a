import { describe, expect, it } from "vitest";
import { passesFilter, pickEventFields, roomAllowed, timelineLimit } from "./filter.ts";
import { decodeSyncToken, encodeSyncToken } from "./token.ts";
import { zeroPositions } from "./streams.ts";

describe("event filters", () => {
  const message = { type: "m.room.message", sender: "@a:x", room_id: "!r:x", content: { body: "hi" } };

  it("matches types with wildcards, and not_types wins over types", () => {
    expect(passesFilter({ types: ["m.room.*"] }, message)).toBe(true);
    expect(passesFilter({ types: ["m.room.member"] }, message)).toBe(false);
    expect(passesFilter({ types: ["*"], not_types: ["m.room.message"] }, message)).toBe(false);
    expect(passesFilter({ types: [] }, message)).toBe(false);
    expect(passesFilter({ types: ["m.*.message"] }, message)).toBe(true);
  });

  it("matches senders and rooms", () => {
    expect(passesFilter({ senders: ["@b:x"] }, message)).toBe(false);
    expect(passesFilter({ not_senders: ["@a:x"] }, message)).toBe(false);
    expect(passesFilter({ rooms: ["!r:x"] }, message)).toBe(true);
    expect(passesFilter({ not_rooms: ["!r:x"] }, message)).toBe(false);
    expect(roomAllowed({ rooms: ["!other:x"] }, "!r:x")).toBe(false);
  });

  it("matches contains_url", () => {
    expect(passesFilter({ contains_url: true }, message)).toBe(false);
    expect(passesFilter({ contains_url: false }, message)).toBe(true);
    expect(passesFilter({ contains_url: true }, { ...message, content: { url: "mxc://x/y" } })).toBe(true);
  });

  it("caps and defaults the timeline limit", () => {
    expect(timelineLimit(undefined)).toBe(10);
    expect(timelineLimit({ limit: 50 })).toBe(50);
    expect(timelineLimit({ limit: 1_000_000 })).toBe(1000);
  });

  it("keeps only the event_fields asked for", () => {
    const event = { type: "m.room.message", content: { body: "hi", "m.x": 1 }, sender: "@a:x", event_id: "$e" };
    expect(pickEventFields(event, ["type", "content.body"])).toEqual({ type: "m.room.message", content: { body: "hi" } });
    expect(pickEventFields(event, ["content.m\\.x"])).toEqual({ content: { "m.x": 1 } });
    expect(pickEventFields(event, undefined)).toBe(event);
  });
});

describe("sync tokens", () => {
  it("round-trips every stream position", () => {
    const p = { ...zeroPositions(), events: 12, account_data: 3, typing: 99, device_lists: 7 };
    expect(decodeSyncToken(encodeSyncToken(p))).toEqual(p);
  });

  it("reads missing trailing positions as 0", () => {
    expect(decodeSyncToken("s5_6")).toEqual({ ...zeroPositions(), events: 5, account_data: 6 });
  });

  it("refuses anything else with 400 M_INVALID_PARAM", () => {
    for (const bad of ["", "x", "s", "s1_", "s-1", "s1_2_3_4_5_6_7_8", "s99999999999999999", "s1 2"]) {
      expect(() => decodeSyncToken(bad), bad).toThrowError(expect.objectContaining({ status: 400, errcode: "M_INVALID_PARAM" }));
    }
  });
});

describe("type patterns", () => {
  it("match `*` as any run of characters, and nothing else as special", () => {
    const passes = (types: string[], type: string) => passesFilter({ types }, { type, sender: "@a:x", content: {} } as never);
    expect(passes(["m.room.*"], "m.room.message")).toBe(true);
    expect(passes(["m.*.message"], "m.room.message")).toBe(true);
    expect(passes(["*"], "")).toBe(true);
    expect(passes(["m.room.*"], "m.roomy")).toBe(false);
    expect(passes(["m.room.?"], "m.room.x")).toBe(false);
    expect(passes(["m.room.?"], "m.room.?")).toBe(true);
    expect(passes(["a*b*c"], "abxbxc")).toBe(true);
    expect(passes(["a*b*c"], "abxbx")).toBe(false);
  });

  it("take linear time on patterns that make a backtracking regex take seconds", () => {
    const started = performance.now();
    const passes = passesFilter({ types: ["*a".repeat(25) + "b"] }, { type: "a".repeat(5000), sender: "@a:x", content: {} } as never);
    expect(passes).toBe(false);
    expect(performance.now() - started).toBeLessThan(1000);
  });
});

import pino from "pino";
import { describe, expect, it } from "vitest";
import type { OpenedDatabase } from "../../schema/db.ts";
import { evaluatePushRules, type PushEvent } from "../pushrules/evaluate.ts";
import { withServerDefaults } from "../pushrules/ruleset.ts";
import type { UserData } from "../userdata/userdata.ts";
import { Notifier } from "./notifier.ts";
import { PushActions, type PushRoomContext } from "./push-actions.ts";

describe("push actions", () => {
  it("relies on the server-default rules naming a user only in whole-string comparisons", () => {
    const user = "@someone:example.org";
    const ruleset = withServerDefaults(undefined, user);
    for (const rules of Object.values(ruleset)) {
      for (const rule of rules) {
        expect(rule.pattern ?? "").not.toContain(user);
        for (const c of rule.conditions ?? []) {
          if (!JSON.stringify(c).includes(user)) continue;
          const exact =
            (c.kind === "event_match" && (c as { key: string }).key === "state_key") ||
            (c.kind === "event_property_contains" && (c as { key: string }).key === "content.m\\.mentions.user_ids");
          expect(exact, JSON.stringify(c)).toBe(true);
        }
      }
    }
  });

  it("gives members with default rules the outcome each would get alone", async () => {
    const members = ["@a:x", "@b:x", "@c:x", "@d:x"];
    const userData = {
      async pushRulesOf(userIds: readonly string[]) {
        return new Map(userIds.map((u) => [u, { ruleset: withServerDefaults(undefined, u), custom: false }]));
      },
    } as unknown as UserData;
    const notifier = new Notifier({ kind: "pglite" } as unknown as OpenedDatabase, pino({ level: "silent" }));
    const push = new PushActions(userData, notifier, "x");
    const room: PushRoomContext = {
      joinedMemberCount: members.length,
      localJoinedMembers: members,
      powerLevels: { users: { "@a:x": 100 } },
      powerLevelOf: (u) => (u === "@a:x" ? 100 : 0),
      displayNameOf: async () => null,
    };
    const events: PushEvent[] = [
      { type: "m.room.message", sender: "@a:x", room_id: "!r:x", content: { msgtype: "m.text", body: "hello" } },
      { type: "m.room.message", sender: "@a:x", room_id: "!r:x", content: { msgtype: "m.text", body: "hey b", "m.mentions": { user_ids: ["@b:x"] } } },
      { type: "m.room.member", sender: "@a:x", room_id: "!r:x", state_key: "@c:x", content: { membership: "invite" } },
      { type: "m.room.message", sender: "@a:x", room_id: "!r:x", content: { msgtype: "m.notice", body: "bot" } },
    ];
    for (const event of events) {
      const got = await push.actionsFor(room, event);
      const expected = members
        .filter((u) => u !== event.sender)
        .flatMap((u) => {
          const o = evaluatePushRules(withServerDefaults(undefined, u), event, {
            userId: u,
            roomMemberCount: members.length,
            senderPowerLevel: 100,
            powerLevels: room.powerLevels,
          });
          return o.notify ? [{ userId: u, threadId: "main", highlight: o.highlight, actions: o.actions }] : [];
        });
      expect(got).toEqual(expected);
    }
  });

  it("keeps the rules it already had when its cache is emptied while it reads the others'", async () => {
    let clearDuringRead = false;
    const notifier = new Notifier({ kind: "pglite" } as unknown as OpenedDatabase, pino({ level: "silent" }));
    const userData = {
      async pushRulesOf(userIds: readonly string[]) {
        // Every user's account data changed (another process) while this read ran: the cache goes.
        if (clearDuringRead) notifier.publish({ stream: "account_data", position: 1, everyone: true });
        return new Map(userIds.map((u) => [u, { ruleset: withServerDefaults(undefined, u), custom: false }]));
      },
    } as unknown as UserData;
    const push = new PushActions(userData, notifier, "x");
    const room = (members: string[]): PushRoomContext => ({
      joinedMemberCount: members.length,
      localJoinedMembers: members,
      powerLevels: {},
      powerLevelOf: () => 0,
      displayNameOf: async () => null,
    });
    const message: PushEvent = { type: "m.room.message", sender: "@s:y", room_id: "!r:x", content: { msgtype: "m.text", body: "hi" } };
    expect((await push.actionsFor(room(["@a:x", "@b:x"]), message)).map((a) => a.userId)).toEqual(["@a:x", "@b:x"]);
    clearDuringRead = true;
    expect((await push.actionsFor(room(["@a:x", "@b:x", "@c:x"]), message)).map((a) => a.userId)).toEqual(["@a:x", "@b:x", "@c:x"]);
  });
});

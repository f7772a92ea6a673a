// Room upgrades: POST /rooms/{roomId}/upgrade replaces a room by a new one of another version.
// https://spec.matrix.org/latest/client-server-api/#room-upgrades (room_upgrades.yaml, "Server behaviour")
//
// The replacement room is made by Rooms.createRoom (the one way rooms are created), with the old
// room's state as its initial state. The steps, and where Synapse 1.67 (handlers/room.py
// `upgrade_room`) settles what the spec leaves open:
// 1. The upgrader must be allowed to send m.room.tombstone in the old room: checked by drafting it
//    on the room's current state (403, and nothing changes, when the auth rules refuse it).
// 2. The new room's m.room.create has `predecessor` and the old room's `type` (and `m.federate:
//    false` when the old room had it, as Synapse does). `predecessor.event_id` ("the last known
//    event in the old room") is the tombstone's ID before v12, as Synapse has it and sytest checks:
//    those room IDs are chosen freely, so the tombstone is sent first and names the new room's ID.
//    A v12 room ID is the hash of its create event, which holds `predecessor`, so the tombstone can
//    only follow it; `event_id` (which v12 lets us omit) is then the old room's latest event.
// 3. Copied state: the spec's list (server ACL, encryption, name, avatar, topic, guest access,
//    history visibility, join rules, power levels), the children of a space (Synapse), and the
//    bans (Synapse, and sytest): they are sent by the upgrader, so nobody is impersonated, which is
//    why the spec leaves memberships behind. Join rules, history visibility and guest access are
//    always set, from the old room or as its absent event means (invite, shared, forbidden), so
//    no preset adds what the old room did not have.
// 4. Power levels: the old room's (string levels made integers, as Synapse's
//    copy_and_fixup_power_levels_contents does), with the upgrader raised to the level needed to
//    send all of the above, then restored by a second power levels event at the end. v12 creators
//    have infinite power and may not be listed (auth rule 10.4): the upgrader and the
//    `additional_creators` are left out. From a v12 room to an older version, the old creators
//    are listed at the highest level the power levels name.
// 5. Local aliases, the local part of m.room.canonical_alias, and the published directory entry
//    move to the new room in the transaction that creates it; the old room's canonical alias loses
//    them.
// 6. The old room's `events_default` and `invite` are raised to max(50, users_default + 1). A
//    refusal (the upgrader may send a tombstone but not power levels) leaves them as they were,
//    as Synapse does.
// 7. "When a user joins the new room, the server should automatically transfer ... the user's
//    personalized settings such as notifications, tags": as Synapse does, for every local member
//    of the old room at the upgrade (the upgrader is joined to the new room at once; the others
//    find their settings there when they join): the room's tags, its place in m.direct, and the
//    push rules that name the room. A server that joins a room upgraded elsewhere does the same
//    for what it holds of the old room (aliases, directory entry, members' settings) when its
//    first user joins the new room.
import { and, eq, inArray, sql } from "drizzle-orm";
import type { Logger } from "pino";
import { type Database, rowsOf, schema } from "../../schema/db.ts";
import { canonicalJson } from "../../federation/protocol/canonical-json.ts";
import { powerLevelValue, roomCreators } from "../../federation/protocol/auth-rules.ts";
import { isValidUserId, serverNameOf } from "../../federation/protocol/identifiers.ts";
import type { RoomEvent } from "../../federation/protocol/pdu.ts";
import { splitStateMapKey } from "../../federation/protocol/room-state.ts";
import { isSupportedRoomVersion, type RoomVersionRules, roomVersionRules } from "../../federation/protocol/room-versions.ts";
import { MatrixError, forbidden } from "../http/errors.ts";
import type { Requester } from "../http/route.ts";
import type { PushRule, Ruleset } from "../pushrules/defaults.ts";
import type { RoomTags } from "../userdata/room-tags.ts";
import type { UserData } from "../userdata/userdata.ts";
import type { RoomAliases } from "./aliases.ts";
import type { CreateRoomRequest } from "./create-room.ts";
import { type EventPersister, type EventTemplate, type PersistedEvent, newRoomIdWithDomain } from "./persister.ts";
import type { Rooms } from "./rooms.ts";

type JsonObject = Record<string, unknown>;

/** The state events the spec recommends transferring, in the order the new room gets them. */
const COPIED_STATE = [
  "m.room.join_rules",
  "m.room.history_visibility",
  "m.room.guest_access",
  "m.room.name",
  "m.room.topic",
  "m.room.avatar",
  "m.room.encryption",
  "m.room.server_acl",
] as const;

/** What an absent event means, for the three the new room always states. */
const ABSENT_MEANS: Record<string, JsonObject> = {
  "m.room.join_rules": { join_rule: "invite" },
  "m.room.history_visibility": { history_visibility: "shared" },
  "m.room.guest_access": { guest_access: "forbidden" },
};

const TOMBSTONE_BODY = "This room has been replaced";

/** What the upgrade reads of the old room, in its serial section (one consistent state). */
interface OldRoom {
  rules: RoomVersionRules;
  create: RoomEvent;
  powerLevels: JsonObject | undefined;
  canonicalAlias: JsonObject | undefined;
  state: Map<string, JsonObject>;
  spaceChildren: Array<{ stateKey: string; content: JsonObject }>;
  bans: Array<{ userId: string; content: JsonObject }>;
  latestEventId: string | undefined;
}

export interface UpgradePlan {
  creationContent: JsonObject;
  initialState: Array<{ type: string; state_key: string; content: JsonObject }>;
  /** The upgrader's power level restored, when it was raised. */
  after: EventTemplate[];
}

/**
 * Power levels content with every level an integer: strings holding one (allowed before v10) are
 * read as the old version reads them; anything that is not a level is left out.
 */
export function integerPowerLevels(rules: RoomVersionRules, content: JsonObject): JsonObject {
  const out: JsonObject = {};
  for (const [key, value] of Object.entries(content)) {
    if (typeof value === "object" && value !== null && !Array.isArray(value)) {
      const map: JsonObject = {};
      for (const [k, v] of Object.entries(value as JsonObject)) {
        const level = powerLevelValue(rules, v);
        if (level !== undefined && Number.isSafeInteger(level)) map[k] = level;
      }
      out[key] = map;
    } else {
      const level = powerLevelValue(rules, value);
      if (level !== undefined && Number.isSafeInteger(level)) out[key] = level;
    }
  }
  return out;
}

function levelOr(content: JsonObject, key: string, fallback: number): number {
  const v = content[key];
  return typeof v === "number" ? v : fallback;
}

function levelsOf(value: unknown): number[] {
  return typeof value === "object" && value !== null ? Object.values(value).filter((v): v is number => typeof v === "number") : [];
}

/**
 * The replacement room's creation, from the old room (pure: the caller reads and writes).
 * `localServer` tells which aliases are ours to move.
 */
export function planUpgrade(
  old: OldRoom,
  newRules: RoomVersionRules,
  upgrader: string,
  additionalCreators: readonly string[],
  localServer: string,
): UpgradePlan {
  const creationContent: JsonObject = {};
  const roomType = old.create.content.type;
  if (roomType !== undefined) creationContent.type = roomType;
  if (old.create.content["m.federate"] === false) creationContent["m.federate"] = false;
  const newCreators = new Set([upgrader]);
  if (newRules.privilegedCreators && additionalCreators.length > 0) {
    creationContent.additional_creators = [...additionalCreators];
    for (const u of additionalCreators) newCreators.add(u);
  }

  // Content the new version cannot hold (floats of a v1–5 room in a v6+ one) stays behind.
  const storable = (content: JsonObject) => {
    try {
      canonicalJson(content, { strict: newRules.strictCanonicalJson });
      return true;
    } catch {
      return false;
    }
  };

  const initialState: UpgradePlan["initialState"] = [];
  const after: EventTemplate[] = [];

  if (old.powerLevels) {
    const levels = integerPowerLevels(old.rules, old.powerLevels);
    const users: JsonObject = typeof levels.users === "object" ? { ...(levels.users as JsonObject) } : {};
    const top = Math.max(
      100,
      ...levelsOf(levels.events),
      ...levelsOf(levels.users),
      ...["users_default", "events_default", "state_default", "ban", "kick", "redact", "invite"].map((k) => levelOr(levels, k, 0)),
    );
    if (old.rules.privilegedCreators && !newRules.privilegedCreators) {
      for (const creator of roomCreators(old.rules, old.create)) if (users[creator] === undefined) users[creator] = top;
    }
    if (newRules.privilegedCreators) for (const creator of newCreators) delete users[creator];
    const final: JsonObject = { ...levels, users };

    if (newRules.privilegedCreators) {
      initialState.push({ type: "m.room.power_levels", state_key: "", content: final });
    } else {
      // The level that sends every copied event, the bans (above each banned user), and the
      // power levels that restore the upgrader's own level.
      const events = typeof levels.events === "object" ? (levels.events as JsonObject) : {};
      const stateDefault = levelOr(levels, "state_default", 50);
      const sendLevel = (type: string) => (typeof events[type] === "number" ? (events[type] as number) : stateDefault);
      const usersDefault = levelOr(levels, "users_default", 0);
      const bannedLevels = old.bans.map((b) => (typeof users[b.userId] === "number" ? (users[b.userId] as number) : usersDefault) + 1);
      const needed = Math.max(
        stateDefault,
        levelOr(levels, "ban", 50),
        ...levelsOf(levels.events),
        sendLevel("m.room.power_levels"),
        ...bannedLevels,
      );
      const own = users[upgrader];
      const current = typeof own === "number" ? own : usersDefault;
      if (current < needed) {
        initialState.push({ type: "m.room.power_levels", state_key: "", content: { ...final, users: { ...users, [upgrader]: needed } } });
        after.push({ type: "m.room.power_levels", state_key: "", sender: upgrader, content: final });
      } else {
        initialState.push({ type: "m.room.power_levels", state_key: "", content: final });
      }
    }
  }

  for (const type of COPIED_STATE) {
    const content = old.state.get(type) ?? ABSENT_MEANS[type];
    if (content && storable(content)) initialState.push({ type, state_key: "", content });
  }

  if (old.canonicalAlias) {
    const { alias, alt_aliases: alt } = old.canonicalAlias;
    const moved: JsonObject = {};
    if (typeof alias === "string" && serverNameOf(alias) === localServer) moved.alias = alias;
    const localAlt = Array.isArray(alt) ? alt.filter((a): a is string => typeof a === "string" && serverNameOf(a) === localServer) : [];
    if (localAlt.length > 0) moved.alt_aliases = localAlt;
    if (Object.keys(moved).length > 0) initialState.push({ type: "m.room.canonical_alias", state_key: "", content: moved });
  }

  if (roomType === "m.space") {
    for (const child of old.spaceChildren) {
      // A child with empty content was removed from the space.
      if (Object.keys(child.content).length > 0 && storable(child.content)) {
        initialState.push({ type: "m.space.child", state_key: child.stateKey, content: child.content });
      }
    }
  }

  for (const ban of old.bans) {
    // v12 creators cannot be banned (infinite power).
    if (newRules.privilegedCreators && newCreators.has(ban.userId)) continue;
    if (storable(ban.content)) initialState.push({ type: "m.room.member", state_key: ban.userId, content: ban.content });
  }

  return { creationContent, initialState, after };
}

/** The old room's canonical alias without the aliases that moved; undefined when nothing changes. */
export function canonicalAliasLeftBehind(content: JsonObject | undefined, localServer: string): JsonObject | undefined {
  if (!content) return undefined;
  const out: JsonObject = { ...content };
  let changed = false;
  if (typeof out.alias === "string" && serverNameOf(out.alias) === localServer) {
    delete out.alias;
    changed = true;
  }
  if (Array.isArray(out.alt_aliases)) {
    const remaining = out.alt_aliases.filter((a) => !(typeof a === "string" && serverNameOf(a) === localServer));
    if (remaining.length !== out.alt_aliases.length) changed = true;
    if (remaining.length > 0) out.alt_aliases = remaining;
    else delete out.alt_aliases;
  }
  return changed ? out : undefined;
}

/** The old room's power levels with events_default and invite at least max(50, users_default + 1); undefined when they already are. */
export function restrictedPowerLevels(rules: RoomVersionRules, content: JsonObject | undefined): JsonObject | undefined {
  if (!content) return undefined;
  const levels = integerPowerLevels(rules, content);
  const restricted = Math.max(50, levelOr(levels, "users_default", 0) + 1);
  let changed = false;
  for (const key of ["events_default", "invite"]) {
    if (levelOr(levels, key, 0) < restricted) {
      levels[key] = restricted;
      changed = true;
    }
  }
  return changed ? levels : undefined;
}

/** A rule's copy for the new room: the room ID replaced in its ID and its conditions. */
function ruleForNewRoom(rule: PushRule, oldRoomId: string, newRoomId: string): PushRule {
  const copy: PushRule = { ...rule, rule_id: rule.rule_id.split(oldRoomId).join(newRoomId) };
  if (rule.conditions) {
    copy.conditions = rule.conditions.map((c) =>
      c.kind === "event_match" && (c as { key?: unknown }).key === "room_id" && (c as { pattern?: unknown }).pattern === oldRoomId
        ? { ...c, pattern: newRoomId }
        : c,
    );
  }
  return copy;
}

/**
 * The user's rules about the old room, copied for the new one just before each original (the same
 * priority): the `room` rule whose ID is the room, and rules with an `event_match` condition on
 * `room_id` (as Synapse's copy_push_rules_from_room_to_room_for_user). A copy whose ID is taken is
 * left out, so copying twice changes nothing.
 */
export function copyRoomPushRules(ruleset: Ruleset, oldRoomId: string, newRoomId: string): Ruleset {
  const out = { ...ruleset } as Ruleset;
  for (const kind of Object.keys(ruleset) as Array<keyof Ruleset>) {
    const rules = ruleset[kind];
    const taken = new Set(rules.map((r) => r.rule_id));
    const next: PushRule[] = [];
    for (const rule of rules) {
      const aboutRoom =
        !rule.default &&
        ((kind === "room" && rule.rule_id === oldRoomId) ||
          (rule.conditions ?? []).some((c) => c.kind === "event_match" && (c as { key?: unknown }).key === "room_id" && (c as { pattern?: unknown }).pattern === oldRoomId));
      if (aboutRoom) {
        const copy = ruleForNewRoom(rule, oldRoomId, newRoomId);
        if (!taken.has(copy.rule_id)) {
          next.push(copy);
          taken.add(copy.rule_id);
        }
      }
      next.push(rule);
    }
    out[kind] = next;
  }
  return out;
}

export class RoomUpgrades {
  /** Upgrades in flight in this process, by old room: a retry by the same user gets the same answer. */
  private readonly inFlight = new Map<string, { userId: string; result: Promise<string> }>();

  constructor(
    private readonly db: Database,
    private readonly persister: EventPersister,
    private readonly rooms: Rooms,
    private readonly aliases: RoomAliases,
    private readonly userData: UserData,
    private readonly roomTags: RoomTags,
    private readonly serverName: string,
    private readonly logger: Logger,
  ) {}

  async upgrade(requester: Requester, roomId: string, newVersion: string, additionalCreators: readonly string[] = []): Promise<string> {
    if (!isSupportedRoomVersion(newVersion)) {
      throw new MatrixError(400, "M_UNSUPPORTED_ROOM_VERSION", `Room version ${JSON.stringify(newVersion).slice(0, 40)} is not supported`);
    }
    for (const u of additionalCreators) {
      if (!isValidUserId(u)) throw new MatrixError(400, "M_INVALID_PARAM", `Invalid user ID in additional_creators: ${String(u).slice(0, 100)}`);
    }
    await this.rooms.requireRoom(roomId);
    const running = this.inFlight.get(roomId);
    if (running) {
      if (running.userId === requester.userId) return running.result;
      throw new MatrixError(400, "M_UNKNOWN", "An upgrade of this room is already in progress");
    }
    const result = this.run(requester, roomId, newVersion, additionalCreators);
    this.inFlight.set(roomId, { userId: requester.userId, result });
    try {
      return await result;
    } finally {
      this.inFlight.delete(roomId);
    }
  }

  private async run(requester: Requester, oldRoomId: string, newVersion: string, additionalCreators: readonly string[]): Promise<string> {
    const upgrader = requester.userId;
    const tombstone = (replacement: string): EventTemplate => ({
      type: "m.room.tombstone",
      state_key: "",
      sender: upgrader,
      content: { body: TOMBSTONE_BODY, replacement_room: replacement },
    });

    // 1. "Checks that the user has permission to send m.room.tombstone events in the room."
    const draft = await this.persister.draft(oldRoomId, tombstone("!replacement"));
    if (!draft.allowed) throw forbidden(`You cannot upgrade this room: ${draft.reason ?? "not allowed"}`);

    const old = await this.readOldRoom(oldRoomId);
    const newRules = roomVersionRules(newVersion);
    const creators = [...new Set(additionalCreators)].filter((u) => u !== upgrader);
    const plan = planUpgrade(old, newRules, upgrader, newRules.privilegedCreators ? creators : [], this.serverName);
    const isPublic = await this.isPublished(oldRoomId);

    const create = async (predecessor: JsonObject, roomId?: string) => {
      const request: CreateRoomRequest = {
        room_version: newVersion,
        visibility: isPublic ? "public" : "private",
        creation_content: { ...plan.creationContent, predecessor },
        initial_state: plan.initialState,
      };
      return this.rooms.createRoom(requester, request, {
        ...(roomId !== undefined ? { roomId } : {}),
        after: plan.after,
        alongside: async (tx, newRoomId) => {
          await this.aliases.moveAll(oldRoomId, newRoomId, tx);
          if (isPublic) await tx.update(schema.rooms).set({ isPublic: false }).where(eq(schema.rooms.roomId, oldRoomId));
        },
      });
    };

    let newRoomId: string;
    if (!newRules.roomIdIsCreateEventId) {
      newRoomId = newRoomIdWithDomain(this.serverName);
      const [sent] = await this.persister.enqueue(oldRoomId, () => [tombstone(newRoomId)]);
      try {
        await create({ room_id: oldRoomId, event_id: sent!.eventId }, newRoomId);
      } catch (err) {
        this.logger.error({ err, oldRoomId, newRoomId }, "room upgrade: the old room has its tombstone but the new room could not be created");
        throw err;
      }
    } else {
      const predecessor: JsonObject = { room_id: oldRoomId };
      if (old.latestEventId !== undefined) predecessor.event_id = old.latestEventId;
      newRoomId = await create(predecessor);
      await this.persister.enqueue(oldRoomId, () => [tombstone(newRoomId)]);
    }

    // The old room: its canonical alias without the aliases that moved, then power levels that
    // stop ordinary members from speaking and inviting. Either may be refused by the auth rules
    // (the upgrader may send a tombstone yet lack these levels): the upgrade stands.
    const aliasLeft = canonicalAliasLeftBehind(old.canonicalAlias, this.serverName);
    if (aliasLeft) await this.sendQuietly(oldRoomId, { type: "m.room.canonical_alias", state_key: "", sender: upgrader, content: aliasLeft });
    const restricted = restrictedPowerLevels(old.rules, old.powerLevels);
    if (restricted) await this.sendQuietly(oldRoomId, { type: "m.room.power_levels", state_key: "", sender: upgrader, content: restricted });
    await this.transferUserSettings(oldRoomId, newRoomId);
    return newRoomId;
  }

  /**
   * The persister's listener: when one of our users is the first of this server to join a room
   * that replaces another, and the upgrade was made on another server, this server moves what it
   * holds for the old room as if it had upgraded it (as Synapse does when it joins an upgraded room
   * over federation): its local aliases, its directory entry, and its members' tags, m.direct
   * and push rules.
   */
  readonly onEventsPersisted = (roomId: string, events: readonly PersistedEvent[]): void => {
    const localJoin = events.some(
      (e) => e.type === "m.room.member" && e.membership === "join" && e.stateKey !== undefined && serverNameOf(e.stateKey) === this.serverName,
    );
    if (!localJoin) return;
    this.joinedUpgradedRoom(roomId).catch((err: unknown) => this.logger.warn({ err, roomId }, "room upgrade: could not move the old room's aliases and settings"));
  };

  private async joinedUpgradedRoom(newRoomId: string): Promise<void> {
    const [create] = rowsOf<{ sender: string; json: string }>(
      await this.db.execute(sql`select e.sender, e.json from current_state c join events e on e.event_id = c.event_id
        where c.room_id = ${newRoomId} and c.type = 'm.room.create' and c.state_key = ''`),
    );
    if (!create || serverNameOf(create.sender) === this.serverName) return;
    const predecessor = (JSON.parse(create.json) as { content?: { predecessor?: unknown } }).content?.predecessor;
    const oldRoomId = typeof predecessor === "object" && predecessor !== null ? (predecessor as JsonObject).room_id : undefined;
    if (typeof oldRoomId !== "string" || oldRoomId === newRoomId) return;
    const local = rowsOf<{ n: string | number }>(
      await this.db.execute(sql`select count(*) as n from room_memberships where room_id = ${newRoomId} and membership = 'join'`),
    );
    if (Number(local[0]?.n ?? 0) !== 1) return;
    if (await this.isPublished(oldRoomId)) {
      const t = schema.rooms;
      await this.db.transaction(async (tx) => {
        await tx.update(t).set({ isPublic: false }).where(eq(t.roomId, oldRoomId));
        await tx.update(t).set({ isPublic: true }).where(eq(t.roomId, newRoomId));
      });
    }
    await this.aliases.moveAll(oldRoomId, newRoomId);
    await this.transferUserSettings(oldRoomId, newRoomId);
  }

  /** Tags, m.direct and push rules of the old room's local members, for the new room (step 7). */
  private async transferUserSettings(oldRoomId: string, newRoomId: string): Promise<void> {
    const t = schema.roomMemberships;
    const members = await this.db
      .select({ userId: t.userId })
      .from(t)
      .where(and(eq(t.roomId, oldRoomId), eq(t.membership, "join")));
    for (const { userId } of members) {
      try {
        const tags = await this.roomTags.getTags(userId, oldRoomId);
        for (const [tag, content] of Object.entries(tags)) await this.roomTags.setTag(userId, newRoomId, tag, content);

        const direct = await this.userData.getAccountData(userId, "", "m.direct");
        if (direct) {
          let changed = false;
          const updated: JsonObject = {};
          for (const [other, rooms] of Object.entries(direct)) {
            if (Array.isArray(rooms) && rooms.includes(oldRoomId) && !rooms.includes(newRoomId)) {
              updated[other] = [...rooms, newRoomId];
              changed = true;
            } else updated[other] = rooms;
          }
          if (changed) await this.userData.setAccountData(userId, "", "m.direct", updated);
        }

        const rules = await this.userData.getPushRules(userId);
        if (JSON.stringify(copyRoomPushRules(rules.global, oldRoomId, newRoomId)) !== JSON.stringify(rules.global)) {
          await this.userData.editPushRules(userId, (ruleset) => copyRoomPushRules(ruleset, oldRoomId, newRoomId));
        }
      } catch (err) {
        this.logger.warn({ err, userId, oldRoomId, newRoomId }, "room upgrade: could not copy a member's tags, m.direct or push rules");
      }
    }
  }

  private async sendQuietly(roomId: string, template: EventTemplate): Promise<void> {
    try {
      await this.persister.enqueue(roomId, () => [template]);
    } catch (err) {
      if (err instanceof MatrixError && err.status < 500) {
        this.logger.info({ roomId, type: template.type, reason: err.message }, "room upgrade: the old room keeps its state");
      } else {
        this.logger.warn({ err, roomId, type: template.type }, "room upgrade: could not update the old room");
      }
    }
  }

  private async readOldRoom(roomId: string): Promise<OldRoom> {
    let out: OldRoom | undefined;
    let extremities: readonly string[] = [];
    await this.persister.enqueue(roomId, async (view) => {
      const create = await view.stateEvent("m.room.create", "");
      if (!create) throw new MatrixError(404, "M_NOT_FOUND", "Unknown room");
      const state = new Map<string, JsonObject>();
      for (const type of COPIED_STATE) {
        const event = await view.stateEvent(type, "");
        if (event) state.set(type, event.content ?? {});
      }
      const spaceChildren: OldRoom["spaceChildren"] = [];
      const bans: OldRoom["bans"] = [];
      for (const key of view.currentState().keys()) {
        const [type, stateKey] = splitStateMapKey(key);
        if (type === "m.space.child") {
          spaceChildren.push({ stateKey, content: (await view.stateEvent(type, stateKey))?.content ?? {} });
        } else if (type === "m.room.member" && view.membership(stateKey) === "ban") {
          bans.push({ userId: stateKey, content: (await view.stateEvent(type, stateKey))?.content ?? { membership: "ban" } });
        }
      }
      out = {
        rules: view.rules,
        create,
        powerLevels: (await view.stateEvent("m.room.power_levels", ""))?.content,
        canonicalAlias: (await view.stateEvent("m.room.canonical_alias", ""))?.content,
        state,
        spaceChildren,
        bans,
        latestEventId: undefined,
      };
      extremities = view.forwardExtremities();
      return [];
    });
    // Read after the room's serial section, which must not wait for other queries (PGlite has one connection).
    out!.latestEventId = await this.latestEvent(extremities);
    return out!;
  }

  /** The latest of the room's forward extremities (by stream position). */
  private async latestEvent(extremities: readonly string[]): Promise<string | undefined> {
    if (extremities.length <= 1) return extremities[0];
    const t = schema.events;
    const [row] = await this.db
      .select({ eventId: t.eventId })
      .from(t)
      .where(inArray(t.eventId, [...extremities]))
      .orderBy(sql`${t.streamOrdering} desc nulls last`)
      .limit(1);
    return row?.eventId ?? extremities[0];
  }

  private async isPublished(roomId: string): Promise<boolean> {
    const t = schema.rooms;
    const [row] = await this.db.select({ isPublic: t.isPublic }).from(t).where(eq(t.roomId, roomId));
    return row?.isPublic === true;
  }
}

// What POST /createRoom sends, in the order the spec gives.
// https://spec.matrix.org/latest/client-server-api/#post_matrixclientv3createroom (create_room.yaml)
//
// 1. m.room.create; 2. the creator's join; 3. m.room.power_levels (the default, overridden by
// power_level_content_override); 4. m.room.canonical_alias if room_alias_name is given; 5. the
// preset's join_rules, history_visibility and guest_access; 6. initial_state, in order; 7. name and
// topic; 8. invites.
import { dictionary } from "../../federation/protocol/dictionary.ts";
import type { RoomVersionRules } from "../../federation/protocol/room-versions.ts";
import type { EventTemplate } from "./persister.ts";

type JsonObject = Record<string, unknown>;

export type Preset = "private_chat" | "trusted_private_chat" | "public_chat";

export interface CreateRoomRequest {
  visibility?: "public" | "private";
  room_alias_name?: string;
  name?: string;
  topic?: string;
  invite?: string[];
  room_version?: string;
  creation_content?: JsonObject;
  initial_state?: Array<{ type: string; state_key?: string; content: JsonObject }>;
  preset?: Preset;
  is_direct?: boolean;
  power_level_content_override?: JsonObject;
}

export interface Profile {
  displayname?: string;
  avatar_url?: string;
}

export interface RoomCreationPlan {
  createContent: JsonObject;
  templates: (roomId: string) => EventTemplate[];
}

const PRESETS: Record<Preset, { joinRule: string; historyVisibility: string; guestCanJoin: boolean; inviteLevel: number; invitesAreCreators: boolean }> = {
  private_chat: { joinRule: "invite", historyVisibility: "shared", guestCanJoin: true, inviteLevel: 0, invitesAreCreators: false },
  trusted_private_chat: { joinRule: "invite", historyVisibility: "shared", guestCanJoin: true, inviteLevel: 0, invitesAreCreators: true },
  public_chat: { joinRule: "public", historyVisibility: "shared", guestCanJoin: false, inviteLevel: 50, invitesAreCreators: false },
};

/** The content of m.room.member for a user with this profile. */
export function memberContent(membership: string, profile: Profile | undefined, extra: JsonObject = {}): JsonObject {
  const content: JsonObject = { membership };
  if (profile?.displayname !== undefined) content.displayname = profile.displayname;
  if (profile?.avatar_url !== undefined) content.avatar_url = profile.avatar_url;
  return { ...content, ...extra };
}

/** A topic event's content: the plain `topic` and, since v1.15, `m.topic` with a text/plain body. */
export function topicContent(topic: string): JsonObject {
  return { topic, "m.topic": { "m.text": [{ mimetype: "text/plain", body: topic }] } };
}

export function planRoomCreation(
  rules: RoomVersionRules,
  creator: string,
  request: CreateRoomRequest,
  profiles: { creator: Profile | undefined; invitees: Map<string, Profile | undefined> },
  alias: string | undefined,
): RoomCreationPlan {
  const preset = PRESETS[request.preset ?? (request.visibility === "public" ? "public_chat" : "private_chat")];
  const invitees = [...new Set(request.invite ?? [])].filter((u) => u !== creator);

  // The server overwrites creator and room_version. v12: trusted_private_chat invitees become
  // additional creators (deduplicated with any given in creation_content).
  const createContent: JsonObject = { ...(request.creation_content ?? {}) };
  delete createContent.creator;
  createContent.room_version = rules.id;
  if (!rules.creatorFromCreateSender) createContent.creator = creator;
  if (rules.privilegedCreators && preset.invitesAreCreators && invitees.length > 0) {
    const given = Array.isArray(createContent.additional_creators) ? (createContent.additional_creators as unknown[]) : [];
    createContent.additional_creators = [...new Set([...given, ...invitees])];
  }

  const initialState = new Map<string, { type: string; state_key: string; content: JsonObject }>();
  for (const e of request.initial_state ?? []) {
    initialState.set(`${e.type}\u0000${e.state_key ?? ""}`, { type: e.type, state_key: e.state_key ?? "", content: e.content });
  }
  const inInitialState = (type: string) => initialState.has(`${type}\u0000`);

  const templates = (roomId: string): EventTemplate[] => {
    void roomId;
    const out: EventTemplate[] = [];
    const state = (type: string, content: JsonObject, stateKey = ""): EventTemplate => ({ type, state_key: stateKey, sender: creator, content });

    out.push({ type: "m.room.member", state_key: creator, sender: creator, content: memberContent("join", profiles.creator) });

    const givenPowerLevels = initialState.get("m.room.power_levels\u0000");
    if (givenPowerLevels) {
      out.push(state("m.room.power_levels", givenPowerLevels.content));
    } else {
      const users = dictionary<unknown>();
      // Before v12 the creator (and trusted_private_chat invitees) are listed at 100; from v12
      // creators have infinite power and must not be listed (auth rule 10.4).
      if (!rules.privilegedCreators) {
        users[creator] = 100;
        if (preset.invitesAreCreators) for (const u of invitees) users[u] = 100;
      }
      const powerLevels: JsonObject = {
        users,
        users_default: 0,
        events: {
          "m.room.name": 50,
          "m.room.power_levels": 100,
          "m.room.history_visibility": 100,
          "m.room.canonical_alias": 50,
          "m.room.avatar": 50,
          // v12: "the power level for sending m.room.tombstone events MUST explicitly be higher than state_default".
          "m.room.tombstone": rules.privilegedCreators ? 150 : 100,
          "m.room.server_acl": 100,
          "m.room.encryption": 100,
        },
        events_default: 0,
        state_default: 50,
        ban: 50,
        kick: 50,
        redact: 50,
        invite: preset.inviteLevel,
      };
      out.push(state("m.room.power_levels", { ...powerLevels, ...(request.power_level_content_override ?? {}) }));
    }

    if (alias !== undefined) out.push(state("m.room.canonical_alias", { alias }));

    if (!inInitialState("m.room.join_rules")) out.push(state("m.room.join_rules", { join_rule: preset.joinRule }));
    if (!inInitialState("m.room.history_visibility")) {
      out.push(state("m.room.history_visibility", { history_visibility: preset.historyVisibility }));
    }
    if (preset.guestCanJoin && !inInitialState("m.room.guest_access")) out.push(state("m.room.guest_access", { guest_access: "can_join" }));

    for (const e of initialState.values()) {
      if (e.type === "m.room.power_levels" && e.state_key === "") continue;
      // name and topic override the same events in initial_state.
      if (e.type === "m.room.name" && e.state_key === "" && request.name !== undefined) continue;
      if (e.type === "m.room.topic" && e.state_key === "" && request.topic !== undefined) continue;
      out.push(state(e.type, e.content, e.state_key));
    }

    if (request.name !== undefined) out.push(state("m.room.name", { name: request.name }));
    if (request.topic !== undefined) out.push(state("m.room.topic", topicContent(request.topic)));

    for (const invitee of invitees) {
      const extra: JsonObject = request.is_direct ? { is_direct: true } : {};
      out.push({
        type: "m.room.member",
        state_key: invitee,
        sender: creator,
        content: memberContent("invite", profiles.invitees.get(invitee), extra),
      });
    }
    return out;
  };
  return { createContent, templates };
}

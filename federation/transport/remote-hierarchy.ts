// Asking other servers for a space's hierarchy, for our clients' `GET /hierarchy` walks.
// https://spec.matrix.org/latest/server-server-api/#get_matrixfederationv1hierarchyroomid
//
// The `via` servers are asked in turn, each for at most HIERARCHY_TIMEOUT_MS; the first usable
// answer wins and is remembered for HIERARCHY_CACHE_MS ("Responses to this endpoint should be
// cached for a period of time"). Answers are checked as Synapse checks them (federation_client.py
// get_room_hierarchy): the room asked for, a list of child events, a list of child rooms, a list of
// room IDs; of each summary only the fields the spec gives, with their types, are kept.
import { z } from "zod";
import type { ChildStateEvent, RemoteHierarchy, RoomSummary } from "../../server/rooms/space-hierarchy.ts";
import { childEvent } from "../../server/rooms/space-hierarchy.ts";
import { isValidServerName } from "../protocol/identifiers.ts";
import type { FederationHttpClient } from "./http-client.ts";
import type { Logger } from "pino";

/** One server gets this long to answer. */
const HIERARCHY_TIMEOUT_MS = 5_000;
const HIERARCHY_CACHE_MS = 60_000;
/** A room none of whose servers answered is not asked again for this long (a walk's next page, a reload). */
const FAILURE_CACHE_MS = 30_000;
const HIERARCHY_CACHE_LIMIT = 1_000;
const MAX_CHILDREN = 1_000;

const answerShape = z.object({
  room: z.looseObject({ room_id: z.string().max(255) }),
  children: z.array(z.unknown()).max(MAX_CHILDREN).optional(),
  inaccessible_children: z.array(z.unknown()).max(MAX_CHILDREN).optional(),
});
const summaryShape = z.object({
  room_id: z.string().startsWith("!").max(255),
  num_joined_members: z.int().min(0),
  world_readable: z.boolean(),
  guest_can_join: z.boolean(),
});
const SUMMARY_STRINGS = ["name", "topic", "canonical_alias", "avatar_url", "join_rule", "room_type", "encryption", "room_version"] as const;

export class RemoteHierarchies {
  /** Answers by room and suggested_only; undefined for rooms none of the servers asked answered. */
  private readonly cache = new Map<string, { answer: RemoteHierarchy | undefined; until: number }>();

  constructor(
    private readonly http: FederationHttpClient,
    private readonly now: () => number,
    private readonly logger: Logger,
  ) {}

  /** The first usable answer of `servers`, asked in turn; undefined when none gave one. */
  async hierarchy(servers: readonly string[], roomId: string, suggestedOnly: boolean): Promise<RemoteHierarchy | undefined> {
    const key = `${suggestedOnly ? "s" : "a"}${roomId}`;
    // A failure is remembered for the servers asked alone: another parent may name others.
    const failureKey = `${key} ${[...servers].sort().join(",")}`;
    for (const k of [key, failureKey]) {
      const cached = this.cache.get(k);
      if (cached && cached.until > this.now()) return cached.answer;
      this.cache.delete(k);
    }
    const path = `/_matrix/federation/v1/hierarchy/${encodeURIComponent(roomId)}?suggested_only=${suggestedOnly}`;
    let answer: RemoteHierarchy | undefined;
    for (const server of new Set(servers)) {
      if (!isValidServerName(server)) continue;
      try {
        const res = await this.http.request(server, { method: "GET", path, signal: AbortSignal.timeout(HIERARCHY_TIMEOUT_MS) });
        answer = res.status === 200 ? parseAnswer(res.body, roomId) : undefined;
        if (answer) break;
        this.logger.debug({ server, roomId, status: res.status }, "no usable space hierarchy answer");
      } catch (err) {
        this.logger.debug({ server, roomId, err: (err as Error).message }, "asking for a space hierarchy failed");
      }
    }
    if (this.cache.size >= HIERARCHY_CACHE_LIMIT) {
      const oldest = this.cache.keys().next().value;
      if (oldest !== undefined) this.cache.delete(oldest);
    }
    this.cache.set(answer ? key : failureKey, { answer, until: this.now() + (answer ? HIERARCHY_CACHE_MS : FAILURE_CACHE_MS) });
    return answer;
  }
}

/** The answer checked; undefined when it is not for `roomId` or malformed. */
function parseAnswer(body: unknown, roomId: string): RemoteHierarchy | undefined {
  const parsed = answerShape.safeParse(body);
  if (!parsed.success || parsed.data.room.room_id !== roomId) return undefined;
  const room = summary(parsed.data.room);
  if (!room) return undefined;
  const rawChildren = parsed.data.room.children_state ?? [];
  if (!Array.isArray(rawChildren)) return undefined;
  const childrenState: ChildStateEvent[] = [];
  for (const raw of rawChildren.slice(0, MAX_CHILDREN)) {
    const child = childEvent(raw);
    if (child) childrenState.push(child);
  }
  const children = new Map<string, RoomSummary>();
  for (const raw of parsed.data.children ?? []) {
    const child = summary(raw);
    if (child) children.set(child.room_id, child);
  }
  const inaccessible = new Set((parsed.data.inaccessible_children ?? []).filter((r): r is string => typeof r === "string"));
  return { room, childrenState, children, inaccessible };
}

/** A RoomSummary with the required fields, and of the optional ones those of the right type. */
function summary(raw: unknown): RoomSummary | undefined {
  const parsed = summaryShape.safeParse(raw);
  if (!parsed.success) return undefined;
  const out: RoomSummary = { ...parsed.data };
  const entry = raw as Record<string, unknown>;
  for (const key of SUMMARY_STRINGS) {
    if (typeof entry[key] === "string") out[key] = entry[key];
  }
  if (Array.isArray(entry.allowed_room_ids)) {
    out.allowed_room_ids = entry.allowed_room_ids.filter((r): r is string => typeof r === "string").slice(0, 50);
  }
  return out;
}

// Room state as deduplicated snapshots with deltas (ARCHITECTURE.md, "Storage").
//
// A state group is either a full snapshot (no prev_group) or a delta on its prev_group: the keys it
// sets (or removes, with a null event_id). A new state event makes a new group holding one entry on
// top of the group of the state before it; a message event reuses the group of the state it sees and
// writes nothing. After MAX_CHAIN_LENGTH deltas a full snapshot is written, so reading any group
// walks at most that many rows of `state_groups`. Every event row records the group of the state
// before it (and, for state events, after it), so "the state before event X" is one walk for any X.
import { type SQL, sql } from "drizzle-orm";
import { type Database, rowsOf } from "../../schema/db.ts";
import { type StateMap, type StateMapKey, splitStateMapKey, stateMapKey } from "../../federation/protocol/room-state.ts";

/** Deltas allowed on top of a snapshot before the next group is written as a full snapshot. */
export const MAX_CHAIN_LENGTH = 50;

export interface StateGroupRef {
  id: number;
  /** Deltas down to the snapshot (0 for a snapshot). */
  chainLength: number;
}

/** A group about to be written: a snapshot (prev undefined) or a delta on `prev`. */
export interface NewStateGroup extends StateGroupRef {
  prev: number | undefined;
  /** Snapshot: every entry. Delta: the changed keys (undefined removes the key). */
  entries: Map<StateMapKey, string | undefined>;
}

/**
 * Decides how the state after a change is stored: as a delta on `before`, or (no group before, or
 * the chain is at its cap) as a full snapshot of `after`.
 */
export function nextStateGroup(
  id: number,
  before: StateGroupRef | undefined,
  changes: Map<StateMapKey, string | undefined>,
  after: ReadonlyMap<StateMapKey, string>,
): NewStateGroup {
  if (before && before.chainLength + 1 <= MAX_CHAIN_LENGTH) {
    return { id, prev: before.id, chainLength: before.chainLength + 1, entries: new Map(changes) };
  }
  return { id, prev: undefined, chainLength: 0, entries: new Map(after) };
}

/** The chain of groups from `groupIds` down to their snapshots, with each row's distance. */
export function chainCte(groupIds: readonly number[]): SQL {
  const starts = sql.join(
    groupIds.map((g) => sql`${g}::bigint`),
    sql`, `,
  );
  return sql`with recursive chain(start, id, prev, n) as (
      select id, id, prev_group, 0 from state_groups where id in (${starts})
      union all
      select c.start, g.id, g.prev_group, c.n + 1 from state_groups g join chain c on g.id = c.prev
    )`;
}

/** The full state of a group. */
export async function loadStateGroup(db: Database, groupId: number): Promise<StateMap> {
  const rows = rowsOf<{ type: string; state_key: string; event_id: string | null }>(
    await db.execute(sql`${chainCte([groupId])}
      select distinct on (e.type, e.state_key) e.type, e.state_key, e.event_id
      from chain c join state_group_entries e on e.group_id = c.id
      order by e.type, e.state_key, c.n`),
  );
  const state: StateMap = new Map();
  for (const r of rows) if (r.event_id !== null) state.set(stateMapKey(r.type, r.state_key), r.event_id);
  return state;
}

/**
 * The event IDs of some keys in several groups at once: group → (key → event ID). Keys may name a
 * whole type with a null state key (every state key of that type).
 */
export async function lookupStateKeys(
  db: Database,
  groupIds: readonly number[],
  keys: ReadonlyArray<readonly [type: string, stateKey: string | null]>,
): Promise<Map<number, StateMap>> {
  const result = new Map<number, StateMap>();
  const unique = [...new Set(groupIds)];
  for (const g of unique) result.set(g, new Map());
  if (unique.length === 0 || keys.length === 0) return result;
  const conditions = sql.join(
    keys.map(([type, stateKey]) =>
      stateKey === null ? sql`(e.type = ${type})` : sql`(e.type = ${type} and e.state_key = ${stateKey})`,
    ),
    sql` or `,
  );
  const rows = rowsOf<{ start: string | number; type: string; state_key: string; event_id: string | null }>(
    await db.execute(sql`${chainCte(unique)}
      select distinct on (c.start, e.type, e.state_key) c.start, e.type, e.state_key, e.event_id
      from chain c join state_group_entries e on e.group_id = c.id
      where ${conditions}
      order by c.start, e.type, e.state_key, c.n`),
  );
  for (const r of rows) {
    if (r.event_id !== null) result.get(Number(r.start))!.set(stateMapKey(r.type, r.state_key), r.event_id);
  }
  return result;
}

/** The chain length of a group (to decide the next delta), or undefined when there is no such group. */
export async function stateGroupRef(db: Database, groupId: number): Promise<StateGroupRef | undefined> {
  const rows = rowsOf<{ chain_length: number }>(
    await db.execute(sql`select chain_length from state_groups where id = ${groupId}`),
  );
  return rows[0] ? { id: groupId, chainLength: Number(rows[0].chain_length) } : undefined;
}

/** Rows of `state_group_entries` for new groups, as (group, type, state_key, event_id) tuples. */
export function stateGroupEntryRows(group: NewStateGroup): Array<[number, string, string, string | null]> {
  const rows: Array<[number, string, string, string | null]> = [];
  for (const [key, eventId] of group.entries) {
    const [type, stateKey] = splitStateMapKey(key);
    rows.push([group.id, type, stateKey, eventId ?? null]);
  }
  return rows;
}

/**
 * Hands out state group IDs from blocks taken from the `state_groups` id sequence, so that building
 * a state event needs no round trip (IDs need only be unique, not dense or ordered).
 */
export class StateGroupIds {
  private free: number[] = [];
  private refill: Promise<void> | undefined;

  constructor(private readonly blockSize = 100) {}

  /** `q` is the open transaction when there is one (PGlite runs one transaction at a time). */
  async next(q: Database): Promise<number> {
    while (this.free.length === 0) {
      this.refill ??= (async () => {
        try {
          const rows = rowsOf<{ id: string | number }>(
            await q.execute(
              sql`select nextval('state_groups_id_seq') as id from generate_series(1, ${this.blockSize}::int)`,
            ),
          );
          this.free.push(...rows.map((r) => Number(r.id)));
        } finally {
          this.refill = undefined;
        }
      })();
      await this.refill;
    }
    return this.free.shift()!;
  }
}

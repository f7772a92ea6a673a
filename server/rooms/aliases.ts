// Local room aliases (`#name:our.server` → room ID).
// https://spec.matrix.org/latest/client-server-api/#room-aliases
import { and, asc, eq } from "drizzle-orm";
import { type Database, schema } from "../../schema/db.ts";
import { byteLength, isValidServerName } from "../../federation/protocol/identifiers.ts";
import { MatrixError } from "../http/errors.ts";

export interface AliasRow {
  alias: string;
  roomId: string;
  creator: string;
}

/** `#localpart:server`, at most 255 bytes (https://spec.matrix.org/latest/appendices/#room-aliases). */
export function parseAlias(alias: string): { localpart: string; server: string } | undefined {
  if (!alias.startsWith("#") || byteLength(alias) > 255) return undefined;
  const colon = alias.indexOf(":");
  if (colon < 2) return undefined;
  const localpart = alias.slice(1, colon);
  const server = alias.slice(colon + 1);
  if (/[\s:\u0000]/.test(localpart) || !isValidServerName(server)) return undefined;
  return { localpart, server };
}

export class RoomAliases {
  constructor(
    private readonly db: Database,
    private readonly serverName: string,
    private readonly now: () => number,
  ) {}

  /** Checks an alias is well formed and ours; returns it. */
  checkLocal(alias: string): string {
    const parsed = parseAlias(alias);
    if (!parsed) throw new MatrixError(400, "M_INVALID_PARAM", `Invalid room alias: ${alias.slice(0, 100)}`);
    if (parsed.server !== this.serverName) {
      throw new MatrixError(400, "M_INVALID_PARAM", "Room aliases on other servers cannot be managed here");
    }
    return alias;
  }

  async resolve(alias: string): Promise<AliasRow | undefined> {
    const t = schema.roomAliases;
    const [row] = await this.db.select().from(t).where(eq(t.alias, alias));
    return row ? { alias: row.alias, roomId: row.roomId, creator: row.creator } : undefined;
  }

  /** Adds an alias; false when it is taken. `db` may be an open transaction. */
  async create(alias: string, roomId: string, creator: string, db: Database = this.db): Promise<boolean> {
    const t = schema.roomAliases;
    const rows = await db
      .insert(t)
      .values({ alias, roomId, creator, createdTs: this.now() })
      .onConflictDoNothing()
      .returning({ alias: t.alias });
    return rows.length > 0;
  }

  async delete(alias: string): Promise<boolean> {
    const t = schema.roomAliases;
    const rows = await this.db.delete(t).where(eq(t.alias, alias)).returning({ alias: t.alias });
    return rows.length > 0;
  }

  /** Points every alias of one room at another (a room upgrade); `db` may be an open transaction. */
  async moveAll(fromRoomId: string, toRoomId: string, db: Database = this.db): Promise<string[]> {
    const t = schema.roomAliases;
    const rows = await db.update(t).set({ roomId: toRoomId }).where(eq(t.roomId, fromRoomId)).returning({ alias: t.alias });
    return rows.map((r) => r.alias);
  }

  async forRoom(roomId: string): Promise<string[]> {
    const t = schema.roomAliases;
    const rows = await this.db.select({ alias: t.alias }).from(t).where(and(eq(t.roomId, roomId))).orderBy(asc(t.alias));
    return rows.map((r) => r.alias);
  }
}

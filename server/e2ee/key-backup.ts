// Server-side key backups: versions, and the encrypted Megolm session keys stored in them.
// https://spec.matrix.org/latest/client-server-api/#server-side-key-backups
//
// Versions are integers (as strings), increasing per user; the current version is the highest one
// not deleted. Keys may only be stored in the current version. Writes to one user's backups take a
// per-user advisory lock, so two devices backing up at once cannot lose one another's keys or race
// on the etag.
import { and, asc, desc, eq, inArray, sql } from "drizzle-orm";
import { dictionary } from "../../federation/protocol/dictionary.ts";
import { type Database, schema, type Tx } from "../../schema/db.ts";
import { MatrixError, notFound } from "../http/errors.ts";
import { canonicalOrBadJson, type JsonObject } from "./signed-json.ts";

export interface BackupVersionInfo {
  algorithm: string;
  /** Opaque to the server: an object as the spec describes it, or any JSON a client stored. */
  auth_data: unknown;
  count: number;
  etag: string;
  version: string;
}

export interface KeyBackupData {
  first_message_index: number;
  forwarded_count: number;
  is_verified: boolean;
  session_data: unknown;
}

/** `{roomId: {sessions: {sessionId: data}}}` */
export type RoomsKeyBackup = Record<string, { sessions: Record<string, KeyBackupData> }>;

export interface BackupUpdate {
  etag: string;
  count: number;
}

type Row = typeof schema.e2eRoomKeysVersions.$inferSelect;

export class KeyBackup {
  constructor(private readonly db: Database) {}

  async createVersion(userId: string, algorithm: string, authData: unknown): Promise<string> {
    const authJson = canonicalOrBadJson(authData, "auth_data");
    return this.db.transaction(async (tx) => {
      await lockUser(tx, userId);
      const t = schema.e2eRoomKeysVersions;
      // Deleted versions count too: a version number is never given out twice.
      const [last] = await tx
        .select({ version: t.version })
        .from(t)
        .where(eq(t.userId, userId))
        .orderBy(desc(t.version))
        .limit(1);
      const version = (last?.version ?? 0) + 1;
      await tx.insert(t).values({ userId, version, algorithm, authData: authJson });
      return String(version);
    });
  }

  /** A version's information; the current one when `version` is undefined. 404 M_NOT_FOUND when there is none. */
  async getVersion(userId: string, version?: string): Promise<BackupVersionInfo> {
    const row = version === undefined ? await this.current(this.db, userId) : await this.existing(this.db, userId, version);
    if (!row) throw notFound(version === undefined ? "No current backup version" : "Unknown backup version");
    return {
      algorithm: row.algorithm,
      auth_data: JSON.parse(row.authData) as unknown,
      count: await this.count(this.db, userId, row.version),
      etag: String(row.etag),
      version: String(row.version),
    };
  }

  /** Replaces a version's `auth_data`; the algorithm cannot change. */
  async updateVersion(userId: string, version: string, algorithm: string, authData: unknown, bodyVersion?: string) {
    if (bodyVersion !== undefined && bodyVersion !== version) {
      throw new MatrixError(400, "M_INVALID_PARAM", "The version in the body does not match the version in the path");
    }
    const authJson = canonicalOrBadJson(authData, "auth_data");
    await this.db.transaction(async (tx) => {
      await lockUser(tx, userId);
      const row = await this.existing(tx, userId, version);
      if (!row) throw notFound("Unknown backup version");
      if (row.algorithm !== algorithm) {
        throw new MatrixError(400, "M_INVALID_PARAM", "The algorithm of a backup version cannot change");
      }
      const t = schema.e2eRoomKeysVersions;
      await tx
        .update(t)
        .set({ authData: authJson })
        .where(and(eq(t.userId, userId), eq(t.version, row.version)));
    });
  }

  /** Deletes a version and its keys. Deleting a deleted version succeeds; an unknown one is 404. */
  async deleteVersion(userId: string, version: string): Promise<void> {
    const n = parseVersion(version);
    await this.db.transaction(async (tx) => {
      await lockUser(tx, userId);
      const t = schema.e2eRoomKeysVersions;
      const updated = await tx
        .update(t)
        .set({ deleted: true })
        .where(and(eq(t.userId, userId), eq(t.version, n ?? -1)))
        .returning({ version: t.version });
      if (updated.length === 0) throw notFound("Unknown backup version");
      const k = schema.e2eRoomKeys;
      await tx.delete(k).where(and(eq(k.userId, userId), eq(k.version, n!)));
    });
  }

  /**
   * Stores keys in the current version. Of two keys for one session the better one is kept
   * (spec: `is_verified` true beats false, then the lower `first_message_index`, then the lower
   * `forwarded_count`; a tie keeps the stored key). The etag changes when any key does.
   */
  async putKeys(userId: string, version: string, rooms: RoomsKeyBackup): Promise<BackupUpdate> {
    const incoming: (typeof schema.e2eRoomKeys.$inferInsert)[] = [];
    for (const [roomId, { sessions }] of Object.entries(rooms)) {
      for (const [sessionId, data] of Object.entries(sessions)) {
        incoming.push({
          userId,
          version: 0,
          roomId,
          sessionId,
          firstMessageIndex: data.first_message_index,
          forwardedCount: data.forwarded_count,
          isVerified: data.is_verified,
          sessionData: canonicalOrBadJson(data.session_data, `session_data of ${sessionId}`),
        });
      }
    }
    return this.db.transaction(async (tx) => {
      await lockUser(tx, userId);
      const current = await this.current(tx, userId);
      if (!current) throw notFound("No backup version exists");
      if (String(current.version) !== version) {
        throw new MatrixError(403, "M_WRONG_ROOM_KEYS_VERSION", "Wrong backup version", {
          current_version: String(current.version),
        });
      }
      const k = schema.e2eRoomKeys;
      const stored = new Map<string, typeof k.$inferSelect>();
      const sessionIds = [...new Set(incoming.map((r) => r.sessionId))];
      for (let i = 0; i < sessionIds.length; i += 500) {
        const rows = await tx
          .select()
          .from(k)
          .where(and(eq(k.userId, userId), eq(k.version, current.version), inArray(k.sessionId, sessionIds.slice(i, i + 500))));
        for (const r of rows) stored.set(`${r.roomId}\u0000${r.sessionId}`, r);
      }
      const better = new Map<string, typeof k.$inferInsert>();
      for (const r of incoming) {
        const key = `${r.roomId}\u0000${r.sessionId}`;
        const against = better.get(key) ?? stored.get(key);
        if (!against || isBetter(r, against)) better.set(key, { ...r, version: current.version });
      }
      const writes = [...better.values()];
      for (let i = 0; i < writes.length; i += 500) {
        await tx
          .insert(k)
          .values(writes.slice(i, i + 500))
          .onConflictDoUpdate({
            target: [k.userId, k.version, k.roomId, k.sessionId],
            set: {
              firstMessageIndex: sql`excluded.first_message_index`,
              forwardedCount: sql`excluded.forwarded_count`,
              isVerified: sql`excluded.is_verified`,
              sessionData: sql`excluded.session_data`,
            },
          });
      }
      const etag = writes.length > 0 ? await this.bumpEtag(tx, userId, current.version) : current.etag;
      return { etag: String(etag), count: await this.count(tx, userId, current.version) };
    });
  }

  /** Keys of a version: all, one room's, or one session's (404 M_NOT_FOUND when that key is missing). */
  async getKeys(userId: string, version: string, roomId?: string, sessionId?: string): Promise<RoomsKeyBackup> {
    const row = await this.existing(this.db, userId, version);
    if (!row) throw notFound("Unknown backup version");
    const k = schema.e2eRoomKeys;
    const rows = await this.db
      .select()
      .from(k)
      .where(
        and(
          eq(k.userId, userId),
          eq(k.version, row.version),
          roomId === undefined ? undefined : eq(k.roomId, roomId),
          sessionId === undefined ? undefined : eq(k.sessionId, sessionId),
        ),
      )
      .orderBy(asc(k.roomId), asc(k.sessionId));
    // Room and session IDs are the client's to choose (`constructor` included): no prototypes.
    const rooms: RoomsKeyBackup = dictionary();
    for (const r of rows) {
      (rooms[r.roomId] ??= { sessions: dictionary() }).sessions[r.sessionId] = {
        first_message_index: r.firstMessageIndex,
        forwarded_count: r.forwardedCount,
        is_verified: r.isVerified,
        session_data: JSON.parse(r.sessionData) as unknown,
      };
    }
    return rooms;
  }

  /** Deletes keys of a version: all, one room's, or one session's. */
  async deleteKeys(userId: string, version: string, roomId?: string, sessionId?: string): Promise<BackupUpdate> {
    return this.db.transaction(async (tx) => {
      await lockUser(tx, userId);
      const row = await this.existing(tx, userId, version);
      if (!row) throw notFound("Unknown backup version");
      const k = schema.e2eRoomKeys;
      const deleted = await tx
        .delete(k)
        .where(
          and(
            eq(k.userId, userId),
            eq(k.version, row.version),
            roomId === undefined ? undefined : eq(k.roomId, roomId),
            sessionId === undefined ? undefined : eq(k.sessionId, sessionId),
          ),
        )
        .returning({ sessionId: k.sessionId });
      const etag = deleted.length > 0 ? await this.bumpEtag(tx, userId, row.version) : row.etag;
      return { etag: String(etag), count: await this.count(tx, userId, row.version) };
    });
  }

  private async current(q: Database | Tx, userId: string): Promise<Row | undefined> {
    const t = schema.e2eRoomKeysVersions;
    const [row] = await q
      .select()
      .from(t)
      .where(and(eq(t.userId, userId), eq(t.deleted, false)))
      .orderBy(desc(t.version))
      .limit(1);
    return row;
  }

  /** A version that exists and is not deleted. */
  private async existing(q: Database | Tx, userId: string, version: string): Promise<Row | undefined> {
    const n = parseVersion(version);
    if (n === undefined) return undefined;
    const t = schema.e2eRoomKeysVersions;
    const [row] = await q
      .select()
      .from(t)
      .where(and(eq(t.userId, userId), eq(t.version, n), eq(t.deleted, false)));
    return row;
  }

  private async count(q: Database | Tx, userId: string, version: number): Promise<number> {
    const k = schema.e2eRoomKeys;
    const [row] = await q
      .select({ count: sql<number>`count(*)::int` })
      .from(k)
      .where(and(eq(k.userId, userId), eq(k.version, version)));
    return Number(row?.count ?? 0);
  }

  private async bumpEtag(tx: Tx, userId: string, version: number): Promise<number> {
    const t = schema.e2eRoomKeysVersions;
    const [row] = await tx
      .update(t)
      .set({ etag: sql`${t.etag} + 1` })
      .where(and(eq(t.userId, userId), eq(t.version, version)))
      .returning({ etag: t.etag });
    return row!.etag;
  }
}

function isBetter(
  a: { isVerified: boolean; firstMessageIndex: number; forwardedCount: number },
  b: { isVerified: boolean; firstMessageIndex: number; forwardedCount: number },
): boolean {
  if (a.isVerified !== b.isVerified) return a.isVerified;
  if (a.firstMessageIndex !== b.firstMessageIndex) return a.firstMessageIndex < b.firstMessageIndex;
  return a.forwardedCount < b.forwardedCount;
}

/** Versions are decimal integers; anything else names no version. */
function parseVersion(version: string): number | undefined {
  return /^[1-9][0-9]{0,8}$/.test(version) ? Number(version) : undefined;
}

async function lockUser(tx: Tx, userId: string): Promise<void> {
  await tx.execute(sql`select pg_advisory_xact_lock(hashtext(${`room_keys:${userId}`}))`);
}

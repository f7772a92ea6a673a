// The media repository: uploads (direct and asynchronous), downloads, thumbnails, and remote media
// fetched from its origin and cached for local clients. The bytes are in a MediaStore; this service
// owns the `media` and `media_thumbnails` tables.
// https://spec.matrix.org/latest/client-server-api/#content-repository
import { randomBytes } from "node:crypto";
import type { Readable } from "node:stream";
import { and, count, desc, eq, gt, inArray, isNotNull, isNull, lt, ne, sql } from "drizzle-orm";
import type { Logger } from "pino";
import { isValidServerName } from "../../federation/protocol/identifiers.ts";
import type { Database } from "../../schema/db.ts";
import { media, mediaQuarantine, mediaThumbnails } from "../../schema/tables.ts";
import { MatrixError } from "../http/errors.ts";
import { ContentTooLargeError, type MediaStore } from "./store.ts";
import { canThumbnail, isPixelLimitError, makeThumbnail, type Original, type ThumbnailRequest } from "./thumbnails.ts";

/** What is known of one piece of media. */
export interface MediaInfo {
  serverName: string;
  mediaId: string;
  contentType: string | null;
  uploadName: string | null;
  size: number;
  sha256: string;
}

/** Media opened for reading: its description and a stream of its bytes. */
export interface OpenedMedia {
  contentType: string;
  uploadName: string | null;
  size: number;
  stream: Readable;
}

/** Remote media as its origin served it (the body not read yet). */
export interface RemoteMedia {
  contentType?: string;
  uploadName?: string;
  body: Readable | AsyncIterable<Uint8Array>;
}

/**
 * Asks the origin server for a piece of media (federation/transport/remote-media.ts). Throws a
 * MatrixError 404 when the origin does not have it, 502 when it cannot be reached.
 */
export type RemoteMediaFetcher = (serverName: string, mediaId: string) => Promise<RemoteMedia>;

export interface ReadOptions {
  /** How long to wait for media created but not uploaded yet (`timeout_ms`). */
  timeoutMs: number;
  /** Fetch from the origin when it is another server's media not cached yet. */
  allowRemote: boolean;
  /** Through the deprecated unauthenticated endpoints: media uploaded under the freeze is refused. */
  legacy: boolean;
}

export interface MediaRepositoryOptions {
  db: Database;
  store: MediaStore;
  serverName: string;
  now(): number;
  logger: Logger;
  maxUploadBytes: number;
  /** The total a user may upload, in bytes; 0 for no quota. */
  quotaBytes?: number;
  maxImagePixels: number;
  /**
   * The spec's "freeze" (Synapse's `enable_authenticated_media`): media uploaded or cached while it
   * is on is served only through the authenticated endpoints.
   */
  authenticatedMedia: boolean;
  /** Media IDs created but not uploaded yet, per user (`POST /create` answers 429 beyond). */
  maxPendingPerUser?: number;
  /** How long a created media ID waits for its upload. */
  unusedExpiryMs?: number;
  /** Cached remote media fetched longer ago than this is deleted by the sweep; 0 keeps it forever. */
  remoteCacheMaxAgeMs?: number;
}

/** What a purge deleted: media rows, thumbnail rows, and content files no longer referenced. */
export interface PurgeResult {
  media: number;
  thumbnails: number;
  bytes: number;
  files: number;
}

/** `parley admin media usage`. */
export interface MediaUsage {
  local: { count: number; bytes: number };
  remote: { count: number; bytes: number };
  thumbnails: { count: number; bytes: number };
  topUsers: { userId: string; count: number; bytes: number }[];
}

/**
 * A content file younger than this is never deleted: an identical upload may have just renamed its
 * bytes onto it and not inserted its row yet (the store is content-addressed, so the file is shared).
 */
const CONTENT_GRACE_MS = 60_000;
/** The sweep's period, and how many media rows one purge transaction deletes at most. */
const SWEEP_INTERVAL_MS = 60 * 60 * 1000;
const PURGE_BATCH = 500;
const MAX_DEFERRED_FILES = 100_000;
/** Orphaned content: looked for daily, deleted when written over an hour ago and unreferenced. */
const ORPHAN_SWEEP_INTERVAL_MS = 24 * 60 * 60 * 1000;
const ORPHAN_MIN_AGE_MS = 60 * 60 * 1000;
/** A temporary file is an upload being written: one a day old is a crash's leftover. */
const TEMPORARY_MIN_AGE_MS = 24 * 60 * 60 * 1000;
const ACCESS_RECORD_INTERVAL_MS = 10 * 60 * 1000;
const MAX_ACCESS_RECORDED = 100_000;

const MEDIA_ID = /^[A-Za-z0-9_-]+$/;
const MAX_TIMEOUT_MS = 60_000;
const THUMBNAIL_TIMEOUT_S = 20;

export class MediaRepository {
  private readonly opts: Required<MediaRepositoryOptions>;
  private fetchRemote: RemoteMediaFetcher | undefined;
  /** Remote fetches and thumbnails in progress, so concurrent requests share one. */
  private readonly inProgress = new Map<string, Promise<unknown>>();
  /** Requests waiting for an asynchronous upload, by `server/mediaId`. */
  private readonly waiting = new Map<string, Set<() => void>>();

  constructor(options: MediaRepositoryOptions) {
    this.opts = { maxPendingPerUser: 50, unusedExpiryMs: 24 * 60 * 60 * 1000, quotaBytes: 0, remoteCacheMaxAgeMs: 0, ...options };
  }

  private sweepTimer: NodeJS.Timeout | undefined;
  /** Content files a purge found unreferenced but too young to delete. */
  private readonly deferredFiles = new Set<string>();
  /** Uploads between storing their bytes and writing their row, by SHA-256 (see storeUpload). */
  private readonly pins = new Map<string, number>();
  private sweeping: Promise<unknown> | undefined;
  private lastOrphanSweep = -Infinity;
  /** When this process last recorded an access to each media (`server/id`), to write it at most every ten minutes. */
  private readonly accessRecorded = new Map<string, number>();
  private readonly accessWrites = new Set<Promise<unknown>>();

  /** Starts the periodic sweep: expired remote media, and files earlier purges left for later. */
  startSweeping(intervalMs = SWEEP_INTERVAL_MS): void {
    if (this.sweepTimer) return;
    const sweep = () => {
      if (this.sweeping) return;
      this.sweeping = this.sweepRemoteCache()
        .then((r) => {
          if (r.media > 0) this.opts.logger.info(r, "media: expired remote media deleted");
        })
        .catch((err: unknown) => this.opts.logger.warn({ err }, "media: remote cache sweep failed"))
        .finally(() => (this.sweeping = undefined));
    };
    this.sweepTimer = setInterval(sweep, intervalMs);
    this.sweepTimer.unref();
    sweep();
  }

  /** Stops the sweep and waits for a sweep in progress. */
  async stop(): Promise<void> {
    clearInterval(this.sweepTimer);
    this.sweepTimer = undefined;
    await this.sweeping;
    await Promise.all(this.accessWrites);
  }

  /**
   * Deletes the cached remote media older than `remoteCacheMaxAgeMs` (nothing when it is 0), and
   * the files earlier purges left because they were too young, if still unreferenced.
   */
  async sweepRemoteCache(): Promise<PurgeResult> {
    const result = emptyPurge();
    for (const sha256 of [...this.deferredFiles]) {
      const outcome = await this.releaseContent(sha256);
      if (outcome !== "young") this.deferredFiles.delete(sha256);
      if (outcome === "deleted") result.files++;
    }
    if (this.opts.remoteCacheMaxAgeMs > 0) addPurge(result, await this.purgeRemote(this.opts.now() - this.opts.remoteCacheMaxAgeMs));
    if (Date.now() - this.lastOrphanSweep >= ORPHAN_SWEEP_INTERVAL_MS) {
      this.lastOrphanSweep = Date.now();
      const orphans = await this.sweepOrphans();
      result.files += orphans.files;
      if (orphans.files > 0 || orphans.temporary > 0) this.opts.logger.info(orphans, "media: files no media referenced were deleted");
    }
    return result;
  }

  /**
   * Deletes content files that no media or thumbnail row references and that were written more than
   * an hour ago (a crash between storing an upload's bytes and writing its row leaves them), and
   * temporary files a crash left mid-write. Runs with the first sweep after a start, then daily.
   */
  async sweepOrphans(minAgeMs = ORPHAN_MIN_AGE_MS): Promise<{ files: number; temporary: number }> {
    const { store, db } = this.opts;
    let files = 0;
    const check = async (batch: string[]) => {
      const referenced = new Set<string>();
      for (const r of await db.selectDistinct({ sha256: media.sha256 }).from(media).where(inArray(media.sha256, batch))) if (r.sha256) referenced.add(r.sha256);
      for (const r of await db.selectDistinct({ sha256: mediaThumbnails.sha256 }).from(mediaThumbnails).where(inArray(mediaThumbnails.sha256, batch))) referenced.add(r.sha256);
      for (const sha256 of batch) {
        // Released the usual way: checked again, moved aside, asked once more.
        if (!referenced.has(sha256) && (await this.releaseContent(sha256)) === "deleted") files++;
      }
    };
    let batch: string[] = [];
    for await (const content of store.list()) {
      if (Date.now() - content.writtenMs < minAgeMs) continue;
      batch.push(content.sha256);
      if (batch.length >= PURGE_BATCH) {
        await check(batch);
        batch = [];
      }
    }
    if (batch.length > 0) await check(batch);
    const temporary = await store.removeStaleTemporary(Math.max(minAgeMs, TEMPORARY_MIN_AGE_MS));
    return { files, temporary };
  }

  /** Deletes cached remote media not read since `beforeTs` (or never read and fetched before it), with its thumbnails. */
  purgeRemote(beforeTs: number): Promise<PurgeResult> {
    return this.purgeWhere(
      and(ne(media.serverName, this.opts.serverName), isNotNull(media.fetchedTs), lt(sql`coalesce(${media.lastAccessTs}, ${media.fetchedTs})`, beforeTs))!,
    );
  }

  /** Deletes a local user's uploads (created media IDs included) with their thumbnails. */
  purgeUser(userId: string): Promise<PurgeResult> {
    return this.purgeWhere(and(eq(media.serverName, this.opts.serverName), eq(media.userId, userId))!);
  }

  /** Deletes these local media IDs with their thumbnails (other servers' media is left alone). */
  async purgeLocal(mediaIds: readonly string[]): Promise<PurgeResult> {
    const total = emptyPurge();
    const ids = [...new Set(mediaIds)].filter((id) => MEDIA_ID.test(id));
    for (let i = 0; i < ids.length; i += PURGE_BATCH) {
      const part = await this.purgeWhere(and(eq(media.serverName, this.opts.serverName), inArray(media.mediaId, ids.slice(i, i + PURGE_BATCH)))!);
      addPurge(total, part);
    }
    return total;
  }

  /**
   * A local user's uploads for Synapse's admin API (`GET /_synapse/admin/v1/users/{userId}/media`),
   * newest first (`dir` "f": oldest first), paged by offset.
   */
  async listUserMedia(userId: string, options: { from: number; limit: number; dir: "f" | "b" }) {
    const where = and(eq(media.serverName, this.opts.serverName), eq(media.userId, userId));
    const order = options.dir === "f" ? [media.createdTs, media.mediaId] : [desc(media.createdTs), desc(media.mediaId)];
    const [rows, [total]] = await Promise.all([
      this.opts.db.select().from(media).where(where).orderBy(...order).limit(options.limit).offset(options.from),
      this.opts.db.select({ n: count() }).from(media).where(where),
    ]);
    return { rows, total: total?.n ?? 0 };
  }

  /**
   * Quarantines media (an admin's decision): from then on it is served to no one, neither local
   * clients nor other servers, and remote media is not fetched again. Answers how many of the URIs
   * were not quarantined before.
   */
  async quarantine(uris: readonly { serverName: string; mediaId: string }[], by: string): Promise<number> {
    if (uris.length === 0) return 0;
    const ts = this.opts.now();
    const added = await this.opts.db
      .insert(mediaQuarantine)
      .values(uris.map((u) => ({ serverName: u.serverName, mediaId: u.mediaId, quarantinedBy: by, ts })))
      .onConflictDoNothing()
      .returning({ id: mediaQuarantine.mediaId });
    return added.length;
  }

  /** Lifts a quarantine; answers whether there was one. */
  async unquarantine(serverName: string, mediaId: string): Promise<boolean> {
    const removed = await this.opts.db
      .delete(mediaQuarantine)
      .where(and(eq(mediaQuarantine.serverName, serverName), eq(mediaQuarantine.mediaId, mediaId)))
      .returning({ id: mediaQuarantine.mediaId });
    return removed.length > 0;
  }

  /** Who quarantined each of these media IDs of `serverName` (absent: not quarantined). */
  async quarantinedBy(serverName: string, mediaIds: readonly string[]): Promise<Map<string, string>> {
    if (mediaIds.length === 0) return new Map();
    const rows = await this.opts.db
      .select({ id: mediaQuarantine.mediaId, by: mediaQuarantine.quarantinedBy })
      .from(mediaQuarantine)
      .where(and(eq(mediaQuarantine.serverName, serverName), inArray(mediaQuarantine.mediaId, [...mediaIds])));
    return new Map(rows.map((r) => [r.id, r.by]));
  }

  /**
   * The IDs of local media matching Synapse's admin delete filters: uploaded before `beforeTs`,
   * larger than `sizeGt` bytes, and (when given) by `userId`. For the caller to purge with `purgeLocal`.
   */
  async localMediaIds(filter: { beforeTs?: number; sizeGt?: number; userId?: string }): Promise<string[]> {
    const conditions = [eq(media.serverName, this.opts.serverName)];
    if (filter.beforeTs !== undefined) conditions.push(lt(media.createdTs, filter.beforeTs));
    if (filter.sizeGt !== undefined) conditions.push(gt(media.size, filter.sizeGt));
    if (filter.userId !== undefined) conditions.push(eq(media.userId, filter.userId));
    const rows = await this.opts.db.select({ id: media.mediaId }).from(media).where(and(...conditions));
    return rows.map((r) => r.id);
  }

  /** Storage used: local and remote media, thumbnails, and the local users using the most. */
  async usage(top = 10): Promise<MediaUsage> {
    const { db, serverName } = this.opts;
    const bytes = sql<string | number>`coalesce(sum(${media.size}), 0)`;
    const [local] = await db.select({ n: count(), bytes }).from(media).where(and(eq(media.serverName, serverName), isNotNull(media.sha256)));
    const [remote] = await db.select({ n: count(), bytes }).from(media).where(and(ne(media.serverName, serverName), isNotNull(media.sha256)));
    const [thumbs] = await db.select({ n: count(), bytes: sql<string | number>`coalesce(sum(${mediaThumbnails.size}), 0)` }).from(mediaThumbnails);
    const users = await db
      .select({ userId: media.userId, n: count(), bytes })
      .from(media)
      .where(and(eq(media.serverName, serverName), isNotNull(media.userId), isNotNull(media.sha256)))
      .groupBy(media.userId)
      .orderBy(desc(bytes), media.userId)
      .limit(top);
    return {
      local: { count: local?.n ?? 0, bytes: Number(local?.bytes ?? 0) },
      remote: { count: remote?.n ?? 0, bytes: Number(remote?.bytes ?? 0) },
      thumbnails: { count: thumbs?.n ?? 0, bytes: Number(thumbs?.bytes ?? 0) },
      topUsers: users.map((u) => ({ userId: u.userId ?? "", count: u.n, bytes: Number(u.bytes) })),
    };
  }

  /**
   * Deletes the matching media rows and their thumbnail rows, in batches, each batch in one
   * transaction; then each content file they used that no row references any more, unless it is
   * younger than CONTENT_GRACE_MS (an identical upload may be about to reference it).
   */
  private async purgeWhere(where: ReturnType<typeof and> & {}): Promise<PurgeResult> {
    const total = emptyPurge();
    for (;;) {
      const batch = await this.opts.db.transaction(async (tx) => {
        const rows = await tx.select({ serverName: media.serverName, mediaId: media.mediaId }).from(media).where(where).limit(PURGE_BATCH);
        if (rows.length === 0) return undefined;
        const hashes = new Set<string>();
        let bytes = 0;
        let thumbnails = 0;
        for (const server of new Set(rows.map((r) => r.serverName))) {
          const ids = rows.filter((r) => r.serverName === server).map((r) => r.mediaId);
          const gone = await tx
            .delete(media)
            .where(and(eq(media.serverName, server), inArray(media.mediaId, ids)))
            .returning({ sha256: media.sha256, size: media.size });
          const thumbs = await tx
            .delete(mediaThumbnails)
            .where(and(eq(mediaThumbnails.serverName, server), inArray(mediaThumbnails.mediaId, ids)))
            .returning({ sha256: mediaThumbnails.sha256, size: mediaThumbnails.size });
          for (const g of gone) {
            if (g.sha256) hashes.add(g.sha256);
            bytes += g.size ?? 0;
          }
          for (const t of thumbs) hashes.add(t.sha256);
          thumbnails += thumbs.length;
        }
        return { media: rows.length, thumbnails, bytes, hashes };
      });
      if (!batch) break;
      total.media += batch.media;
      total.thumbnails += batch.thumbnails;
      total.bytes += batch.bytes;
      for (const sha256 of batch.hashes) {
        const outcome = await this.releaseContent(sha256);
        if (outcome === "deleted") total.files++;
        // Looked at again by the next sweep (kept in memory only: a restart forgets it).
        if (outcome === "young" && this.deferredFiles.size < MAX_DEFERRED_FILES) this.deferredFiles.add(sha256);
      }
      if (batch.media < PURGE_BATCH) break;
    }
    return total;
  }

  private unpin(sha256: string): void {
    const n = (this.pins.get(sha256) ?? 0) - 1;
    if (n > 0) this.pins.set(sha256, n);
    else this.pins.delete(sha256);
  }

  /** Deletes a content file that no media or thumbnail row references (re-checked after the rows' commit). */
  private async releaseContent(sha256: string): Promise<"deleted" | "referenced" | "young"> {
    if (await this.isWanted(sha256, 0)) return "referenced";
    const outcome = await this.opts.store.delete(sha256, { minAgeMs: CONTENT_GRACE_MS, stillWanted: () => this.isWanted(sha256, 0) });
    if (outcome === "kept") return "referenced";
    return outcome === "kept-young" ? "young" : "deleted";
  }

  /** Whether a row references these bytes, or an upload in this process beyond `ownPins` holds them. */
  private async isWanted(sha256: string, ownPins: number): Promise<boolean> {
    if ((this.pins.get(sha256) ?? 0) > ownPins) return true;
    const { db } = this.opts;
    const [rows] = await db.select({ n: count() }).from(media).where(eq(media.sha256, sha256));
    const [thumbs] = await db.select({ n: count() }).from(mediaThumbnails).where(eq(mediaThumbnails.sha256, sha256));
    return (rows?.n ?? 0) > 0 || (thumbs?.n ?? 0) > 0 || (this.pins.get(sha256) ?? 0) > ownPins;
  }

  /** Wired in server/homeserver.ts: how remote media is fetched (services never import federation). */
  fetchRemoteWith(fetcher: RemoteMediaFetcher): void {
    this.fetchRemote = fetcher;
  }

  get maxUploadBytes(): number {
    return this.opts.maxUploadBytes;
  }

  /** `POST /_matrix/media/v3/upload`. */
  async upload(
    userId: string,
    body: Readable | AsyncIterable<Uint8Array>,
    meta: { contentType?: string; uploadName?: string },
  ): Promise<{ content_uri: string }> {
    await this.checkQuota(userId, 0);
    const stored = await this.storeUpload(body);
    try {
      await this.checkQuota(userId, stored.size, stored.sha256);
      const mediaId = newMediaId();
      await this.opts.db.insert(media).values({
        serverName: this.opts.serverName,
        mediaId,
        userId,
        contentType: meta.contentType ?? null,
        uploadName: meta.uploadName ?? null,
        size: stored.size,
        sha256: stored.sha256,
        createdTs: this.opts.now(),
        authenticated: this.opts.authenticatedMedia,
      });
      return { content_uri: `mxc://${this.opts.serverName}/${mediaId}` };
    } finally {
      this.unpin(stored.sha256);
    }
  }

  /**
   * Stores bytes the server fetched for a user (a URL preview's image) as that user's media, at
   * most `maxBytes` (the quota is not applied: the user did not choose to upload them).
   */
  async saveFetched(
    userId: string,
    body: Readable | AsyncIterable<Uint8Array>,
    meta: { contentType: string; maxBytes: number },
  ): Promise<{ contentUri: string; serverName: string; mediaId: string; size: number }> {
    let stored;
    try {
      stored = await this.opts.store.put(body, Math.min(meta.maxBytes, this.opts.maxUploadBytes));
    } catch (err) {
      if (err instanceof ContentTooLargeError) throw tooLarge(502, err.maxBytes);
      throw new MatrixError(502, "M_UNKNOWN", "Could not fetch the content");
    }
    const mediaId = newMediaId();
    await this.opts.db.insert(media).values({
      serverName: this.opts.serverName,
      mediaId,
      userId,
      contentType: meta.contentType,
      uploadName: null,
      size: stored.size,
      sha256: stored.sha256,
      createdTs: this.opts.now(),
      authenticated: this.opts.authenticatedMedia,
    });
    return { contentUri: `mxc://${this.opts.serverName}/${mediaId}`, serverName: this.opts.serverName, mediaId, size: stored.size };
  }

  /** `POST /_matrix/media/v1/create`: an mxc URI to upload to later. */
  async create(userId: string): Promise<{ content_uri: string; unused_expires_at: number }> {
    const now = this.opts.now();
    const [pending] = await this.opts.db
      .select({ n: count() })
      .from(media)
      .where(and(eq(media.userId, userId), isNull(media.sha256), gt(media.unusedExpiresTs, now)));
    if ((pending?.n ?? 0) >= this.opts.maxPendingPerUser) {
      throw new MatrixError(429, "M_LIMIT_EXCEEDED", "Too many media IDs waiting for their upload", { retry_after_ms: 60_000 }, { "Retry-After": "60" });
    }
    const mediaId = newMediaId();
    const expires = now + this.opts.unusedExpiryMs;
    await this.opts.db.insert(media).values({
      serverName: this.opts.serverName,
      mediaId,
      userId,
      createdTs: now,
      unusedExpiresTs: expires,
      authenticated: this.opts.authenticatedMedia,
    });
    return { content_uri: `mxc://${this.opts.serverName}/${mediaId}`, unused_expires_at: expires };
  }

  /** `PUT /_matrix/media/v3/upload/{serverName}/{mediaId}`: the content of a created media ID. */
  async uploadTo(
    userId: string,
    serverName: string,
    mediaId: string,
    body: Readable | AsyncIterable<Uint8Array>,
    meta: { contentType?: string; uploadName?: string },
  ): Promise<void> {
    // Checked before and after the bytes arrive: before so a refused upload stores nothing, after
    // because another request may have filled it meanwhile.
    await this.checkUploadable(userId, serverName, mediaId);
    await this.checkQuota(userId, 0);
    const stored = await this.storeUpload(body);
    let updated;
    try {
      await this.checkQuota(userId, stored.size, stored.sha256);
      updated = await this.opts.db
        .update(media)
        .set({ sha256: stored.sha256, size: stored.size, contentType: meta.contentType ?? null, uploadName: meta.uploadName ?? null, unusedExpiresTs: null })
        .where(and(eq(media.serverName, serverName), eq(media.mediaId, mediaId), eq(media.userId, userId), isNull(media.sha256)))
        .returning({ mediaId: media.mediaId });
    } finally {
      this.unpin(stored.sha256);
    }
    if (updated.length === 0) {
      await this.checkUploadable(userId, serverName, mediaId);
      throw cannotOverwrite();
    }
    const key = `${serverName}/${mediaId}`;
    for (const wake of this.waiting.get(key) ?? []) wake();
    this.waiting.delete(key);
  }

  /** `GET …/download/{serverName}/{mediaId}`. */
  async download(serverName: string, mediaId: string, options: ReadOptions): Promise<OpenedMedia> {
    const info = await this.resolve(serverName, mediaId, options);
    const content = await this.opts.store.get(info.sha256);
    if (!content) throw notFound();
    return { contentType: info.contentType ?? "application/octet-stream", uploadName: info.uploadName, size: content.size, stream: content.stream };
  }

  /** `GET …/thumbnail/{serverName}/{mediaId}`: made once per size and method, then served from the store. */
  async thumbnail(serverName: string, mediaId: string, request: ThumbnailRequest, options: ReadOptions): Promise<OpenedMedia> {
    const info = await this.resolve(serverName, mediaId, options);
    if (!canThumbnail(info.contentType)) {
      throw new MatrixError(400, "M_UNKNOWN", "Cannot generate thumbnails for the requested content");
    }
    const method = request.animated ? `${request.method}-animated` : request.method;
    const key = { serverName, mediaId, width: request.width, height: request.height, method };
    let row: { contentType: string; sha256: string } | "original" | undefined = await this.thumbnailRow(key);
    if (!row) {
      const flight = `thumbnail:${serverName}/${mediaId}/${request.width}x${request.height}/${method}`;
      row = await this.once(flight, () => this.generateThumbnail(info, key, request));
    }
    if (row === "original") return this.download(serverName, mediaId, { ...options, allowRemote: false });
    const content = await this.opts.store.get(row.sha256);
    if (!content) throw notFound();
    return { contentType: row.contentType, uploadName: null, size: content.size, stream: content.stream };
  }

  mediaConfig(): { "m.upload.size": number } {
    return { "m.upload.size": this.opts.maxUploadBytes };
  }

  private async checkUploadable(userId: string, serverName: string, mediaId: string): Promise<void> {
    if (serverName !== this.opts.serverName || !MEDIA_ID.test(mediaId)) throw notFound();
    const [row] = await this.opts.db
      .select({ userId: media.userId, sha256: media.sha256, expires: media.unusedExpiresTs })
      .from(media)
      .where(and(eq(media.serverName, serverName), eq(media.mediaId, mediaId)));
    if (!row) throw notFound();
    if (row.userId !== userId) throw new MatrixError(403, "M_FORBIDDEN", "This media ID was created by another user");
    if (row.sha256 !== null) throw cannotOverwrite();
    if (row.expires !== null && row.expires <= this.opts.now()) throw notFound();
  }

  /**
   * Refuses an upload that would take the user past the quota: before the bytes arrive (already
   * full), and once their size is known, when the bytes just stored are dropped unless other
   * media shares them.
   * https://spec.matrix.org/latest/client-server-api/#content-repo-security-considerations
   */
  private async checkQuota(userId: string, adding: number, storedSha256?: string): Promise<void> {
    const quota = this.opts.quotaBytes;
    if (quota <= 0) return;
    const [used] = await this.opts.db
      .select({ bytes: sql<string | number | null>`coalesce(sum(${media.size}), 0)` })
      .from(media)
      .where(and(eq(media.serverName, this.opts.serverName), eq(media.userId, userId)));
    const total = Number(used?.bytes ?? 0) + adding;
    if (adding === 0 ? total < quota : total <= quota) return;
    if (storedSha256) {
      const [shared] = await this.opts.db.select({ n: count() }).from(media).where(eq(media.sha256, storedSha256));
      const [thumbs] = await this.opts.db.select({ n: count() }).from(mediaThumbnails).where(eq(mediaThumbnails.sha256, storedSha256));
      // Not while another upload of the same bytes (pinned) is between its put and its row.
      if ((shared?.n ?? 0) === 0 && (thumbs?.n ?? 0) === 0) {
        await this.opts.store.delete(storedSha256, { stillWanted: () => this.isWanted(storedSha256, 1) });
      }
    }
    throw new MatrixError(403, "M_FORBIDDEN", `This upload would take you past your media quota of ${quota} bytes`);
  }

  /**
   * Stores an upload's bytes and pins them (the caller unpins once its row is written or the upload
   * refused): a purge or a refused identical upload in this process leaves pinned bytes alone. The
   * pin is taken in the same microtask run as the store's rename completes, so no deletion in this
   * process comes between them; other processes are covered by the one-minute grace of purges.
   */
  private async storeUpload(body: Readable | AsyncIterable<Uint8Array>) {
    try {
      const stored = await this.opts.store.put(body, this.opts.maxUploadBytes);
      this.pins.set(stored.sha256, (this.pins.get(stored.sha256) ?? 0) + 1);
      return stored;
    } catch (err) {
      if (err instanceof ContentTooLargeError) throw tooLarge(413, this.opts.maxUploadBytes);
      throw err;
    }
  }

  /** The media's row once it has content: waiting for an asynchronous upload, fetching remote media. */
  private async resolve(serverName: string, mediaId: string, options: ReadOptions): Promise<MediaInfo> {
    if (!isValidServerName(serverName) || !MEDIA_ID.test(mediaId)) throw notFound();
    // Quarantined media is gone for everyone, as if it did not exist (Synapse answers 404 too).
    if ((await this.quarantinedBy(serverName, [mediaId])).size > 0) throw notFound();
    const deadline = this.opts.now() + Math.min(Math.max(options.timeoutMs, 0), MAX_TIMEOUT_MS);
    for (;;) {
      const row = await this.row(serverName, mediaId);
      if (row && options.legacy && row.authenticated) throw notFound();
      if (row?.sha256 && row.size !== null) {
        this.recordAccess(serverName, mediaId);
        return { serverName, mediaId, contentType: row.contentType, uploadName: row.uploadName, size: row.size, sha256: row.sha256 };
      }
      if (serverName !== this.opts.serverName) {
        if (!options.allowRemote) throw notFound();
        return this.once(`remote:${serverName}/${mediaId}`, () => this.fetchAndCache(serverName, mediaId));
      }
      if (!row || (row.unusedExpiresTs !== null && row.unusedExpiresTs <= this.opts.now())) throw notFound();
      const left = deadline - this.opts.now();
      if (left <= 0) throw new MatrixError(504, "M_NOT_YET_UPLOADED", "The media has not been uploaded yet");
      await this.waitForUpload(`${serverName}/${mediaId}`, left);
    }
  }

  /**
   * Records that the media was read now, without making the reader wait, at most every ten minutes
   * (a tenth of the cache's max age when that is shorter) per media and process: the remote cache is swept by last access, not by fetch time.
   */
  private recordAccess(serverName: string, mediaId: string): void {
    const key = `${serverName}/${mediaId}`;
    const now = this.opts.now();
    // Finer than the cache's max age, so the sweep never takes media read lately for media unread.
    const interval = this.opts.remoteCacheMaxAgeMs > 0 ? Math.min(ACCESS_RECORD_INTERVAL_MS, this.opts.remoteCacheMaxAgeMs / 10) : ACCESS_RECORD_INTERVAL_MS;
    if (now - (this.accessRecorded.get(key) ?? -Infinity) < interval) return;
    if (this.accessRecorded.size >= MAX_ACCESS_RECORDED) this.accessRecorded.clear();
    this.accessRecorded.set(key, now);
    const write = this.opts.db
      .update(media)
      .set({ lastAccessTs: now })
      .where(and(eq(media.serverName, serverName), eq(media.mediaId, mediaId)))
      .catch((err: unknown) => this.opts.logger.warn({ err }, "media: the last access time could not be recorded"))
      .finally(() => this.accessWrites.delete(write));
    this.accessWrites.add(write);
  }

  /** Wakes on an upload in this process, and looks again at least every second (other processes). */
  private waitForUpload(key: string, ms: number): Promise<void> {
    return new Promise((resolve) => {
      let set = this.waiting.get(key);
      if (!set) this.waiting.set(key, (set = new Set()));
      const wake = () => {
        clearTimeout(timer);
        set.delete(wake);
        resolve();
      };
      const timer = setTimeout(wake, Math.min(ms, 1000));
      set.add(wake);
    });
  }

  private async fetchAndCache(serverName: string, mediaId: string): Promise<MediaInfo> {
    if (!this.fetchRemote) throw notFound();
    const remote = await this.fetchRemote(serverName, mediaId);
    let stored;
    try {
      stored = await this.opts.store.put(remote.body, this.opts.maxUploadBytes);
    } catch (err) {
      if (err instanceof ContentTooLargeError) throw tooLarge(502, this.opts.maxUploadBytes);
      throw new MatrixError(502, "M_UNKNOWN", `Could not fetch the media from ${serverName}`);
    }
    const now = this.opts.now();
    const row = {
      serverName,
      mediaId,
      userId: null,
      contentType: remote.contentType ?? null,
      uploadName: remote.uploadName ?? null,
      size: stored.size,
      sha256: stored.sha256,
      createdTs: now,
      fetchedTs: now,
      // The spec: remote media is "new" as of the day its cache was populated.
      authenticated: this.opts.authenticatedMedia,
    };
    await this.opts.db.insert(media).values(row).onConflictDoNothing();
    this.opts.logger.debug({ serverName, mediaId, size: stored.size }, "cached remote media");
    return { serverName, mediaId, contentType: row.contentType, uploadName: row.uploadName, size: stored.size, sha256: stored.sha256 };
  }

  private async generateThumbnail(
    info: MediaInfo,
    key: { serverName: string; mediaId: string; width: number; height: number; method: string },
    request: ThumbnailRequest,
  ): Promise<{ contentType: string; sha256: string } | "original"> {
    const { store } = this.opts;
    const open = async (): Promise<Original> => {
      const file = await store.localPath?.(info.sha256);
      if (file) return file;
      const content = await store.get(info.sha256);
      if (!content) throw notFound();
      return content.stream;
    };
    const remote = info.serverName !== this.opts.serverName;
    let stored;
    let contentType: string;
    try {
      const outcome = await makeThumbnail(open, info.contentType ?? "", request, {
        maxInputPixels: this.opts.maxImagePixels,
        timeoutSeconds: THUMBNAIL_TIMEOUT_S,
      });
      if (outcome.kind === "original") return "original";
      contentType = outcome.contentType;
      stored = await store.put(outcome.output, this.opts.maxUploadBytes);
    } catch (err) {
      if (err instanceof MatrixError && err.errcode === "M_TOO_LARGE" && remote) throw tooLarge(502, this.opts.maxImagePixels, "pixels");
      if (err instanceof MatrixError) throw err;
      if (isPixelLimitError(err)) throw remote ? tooLarge(502, this.opts.maxImagePixels, "pixels") : tooLarge(413, this.opts.maxImagePixels, "pixels");
      this.opts.logger.info({ err, mediaId: info.mediaId }, "thumbnail failed");
      throw new MatrixError(400, "M_UNKNOWN", "Cannot generate thumbnails for the requested content");
    }
    await this.opts.db
      .insert(mediaThumbnails)
      .values({ ...key, contentType, size: stored.size, sha256: stored.sha256, createdTs: this.opts.now() })
      .onConflictDoNothing();
    return { contentType, sha256: stored.sha256 };
  }

  private async thumbnailRow(key: { serverName: string; mediaId: string; width: number; height: number; method: string }) {
    const [row] = await this.opts.db
      .select({ contentType: mediaThumbnails.contentType, sha256: mediaThumbnails.sha256 })
      .from(mediaThumbnails)
      .where(
        and(
          eq(mediaThumbnails.serverName, key.serverName),
          eq(mediaThumbnails.mediaId, key.mediaId),
          eq(mediaThumbnails.width, key.width),
          eq(mediaThumbnails.height, key.height),
          eq(mediaThumbnails.method, key.method),
        ),
      );
    return row;
  }

  private async row(serverName: string, mediaId: string) {
    const [row] = await this.opts.db
      .select()
      .from(media)
      .where(and(eq(media.serverName, serverName), eq(media.mediaId, mediaId)));
    return row;
  }

  private once<T>(key: string, work: () => Promise<T>): Promise<T> {
    const running = this.inProgress.get(key) as Promise<T> | undefined;
    if (running) return running;
    const started = work().finally(() => this.inProgress.delete(key));
    this.inProgress.set(key, started);
    return started;
  }
}

/** 24 random characters of the media ID alphabet (Synapse's length): about 143 bits. */
function newMediaId(): string {
  const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
  const bytes = randomBytes(24);
  let id = "";
  for (const b of bytes) id += alphabet[b % alphabet.length];
  return id;
}

const emptyPurge = (): PurgeResult => ({ media: 0, thumbnails: 0, bytes: 0, files: 0 });
function addPurge(total: PurgeResult, part: PurgeResult): void {
  total.media += part.media;
  total.thumbnails += part.thumbnails;
  total.bytes += part.bytes;
  total.files += part.files;
}

const notFound = () => new MatrixError(404, "M_NOT_FOUND", "Media not found");
const cannotOverwrite = () => new MatrixError(409, "M_CANNOT_OVERWRITE_MEDIA", "This media ID already has content");
const tooLarge = (status: 413 | 502, limit: number, unit = "bytes") =>
  new MatrixError(status, "M_TOO_LARGE", `The content is larger than ${limit} ${unit}`, {}, status === 413 ? { Connection: "close" } : {});

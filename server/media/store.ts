// Where media bytes live: a small interface (put a stream, get a stream, delete) that an
// S3-compatible store can implement later, and its implementation on the local disk.
//
// Content-addressed: a file is named by the SHA-256 of its bytes, so identical uploads are stored
// once. Bytes are streamed both ways: `put` hashes while it writes to a temporary file and renames
// it into place at the end; nothing holds a whole file in memory.
import { createHash, randomUUID } from "node:crypto";
import { createWriteStream } from "node:fs";
import { mkdir, open, readdir, rename, rm, stat } from "node:fs/promises";
import path from "node:path";
import { Transform, type Readable } from "node:stream";
import { pipeline } from "node:stream/promises";

export interface StoredContent {
  /** Lower-case hex SHA-256 of the bytes: the content's address in the store. */
  sha256: string;
  size: number;
}

/** Thrown by `put` when the stream is longer than its limit; nothing is kept. */
export class ContentTooLargeError extends Error {
  constructor(readonly maxBytes: number) {
    super(`the content is larger than ${maxBytes} bytes`);
  }
}

export interface MediaStore {
  /** Stores the stream's bytes (at most `maxBytes`, else ContentTooLargeError and nothing is kept). */
  put(source: Readable | AsyncIterable<Uint8Array>, maxBytes: number): Promise<StoredContent>;
  /** The bytes stored under `sha256`, or undefined when there are none. */
  get(sha256: string): Promise<{ stream: Readable; size: number } | undefined>;
  /**
   * Deletes the bytes stored under `sha256`; with `minAgeMs`, only when they were written longer
   * ago than that ("kept-young" otherwise). With `stillWanted`, the bytes are first moved out of
   * the way, then it is asked (an identical upload may have just landed on them): when it answers
   * true they are put back ("kept").
   */
  delete(sha256: string, options?: DeleteOptions): Promise<"deleted" | "absent" | "kept-young" | "kept">;
  /**
   * Where the bytes are on the local disk, when the store keeps them there (else undefined): image
   * decoding reads only what it needs of a file instead of collecting a stream in memory.
   */
  localPath?(sha256: string): Promise<string | undefined>;
  /** Every stored content with when it was written: the orphan sweep's walk. */
  list(): AsyncIterable<{ sha256: string; writtenMs: number }>;
  /** Removes temporary files older than `olderThanMs` (left by a crash mid-write); how many. */
  removeStaleTemporary(olderThanMs: number): Promise<number>;
}

export interface DeleteOptions {
  minAgeMs?: number;
  stillWanted?: () => Promise<boolean>;
}

const SHA256_HEX = /^[0-9a-f]{64}$/;

/** The store under `<data_dir>/media/`: `content/ab/cd/<sha256>`, temporary files in `tmp/`. */
export class FileMediaStore implements MediaStore {
  private readonly contentDir: string;
  private readonly tmpDir: string;
  private ready: Promise<void> | undefined;
  /**
   * Deletions in this process whose bytes are moved aside while `stillWanted` is asked: a read that
   * finds no file during that window waits for the answer (the bytes may come back) before it says
   * they are absent.
   */
  private readonly asideNow = new Map<string, Promise<unknown>>();

  constructor(root: string) {
    this.contentDir = path.join(root, "content");
    this.tmpDir = path.join(root, "tmp");
  }

  async put(source: Readable | AsyncIterable<Uint8Array>, maxBytes: number): Promise<StoredContent> {
    await (this.ready ??= Promise.all([mkdir(this.contentDir, { recursive: true }), mkdir(this.tmpDir, { recursive: true })]).then(() => {}));
    const tmp = path.join(this.tmpDir, randomUUID());
    const hash = createHash("sha256");
    let size = 0;
    const meter = new Transform({
      transform(chunk: Buffer, _encoding, callback) {
        size += chunk.byteLength;
        if (size > maxBytes) {
          callback(new ContentTooLargeError(maxBytes));
          return;
        }
        hash.update(chunk);
        callback(null, chunk);
      },
    });
    try {
      await pipeline(source, meter, createWriteStream(tmp, { flags: "wx" }));
      const sha256 = hash.digest("hex");
      const final = this.pathOf(sha256);
      await mkdir(path.dirname(final), { recursive: true });
      // Identical bytes land on the same name: renaming over an existing copy changes nothing.
      await rename(tmp, final);
      return { sha256, size };
    } catch (err) {
      await rm(tmp, { force: true });
      throw err;
    }
  }

  async get(sha256: string): Promise<{ stream: Readable; size: number } | undefined> {
    if (!SHA256_HEX.test(sha256)) return undefined;
    const found = await this.open(sha256);
    if (found) return found;
    const aside = this.asideNow.get(sha256);
    if (!aside) return undefined;
    await aside.catch(() => {});
    return this.open(sha256);
  }

  async localPath(sha256: string): Promise<string | undefined> {
    if (!SHA256_HEX.test(sha256)) return undefined;
    const file = this.pathOf(sha256);
    try {
      await stat(file);
      return file;
    } catch {
      return undefined;
    }
  }

  async *list(): AsyncIterable<{ sha256: string; writtenMs: number }> {
    for (const first of await entries(this.contentDir)) {
      for (const second of await entries(path.join(this.contentDir, first))) {
        const dir = path.join(this.contentDir, first, second);
        for (const name of await entries(dir)) {
          if (!SHA256_HEX.test(name)) continue;
          try {
            yield { sha256: name, writtenMs: (await stat(path.join(dir, name))).mtimeMs };
          } catch {
            // Deleted meanwhile.
          }
        }
      }
    }
  }

  async removeStaleTemporary(olderThanMs: number): Promise<number> {
    let removed = 0;
    for (const name of await entries(this.tmpDir)) {
      const file = path.join(this.tmpDir, name);
      try {
        if (Date.now() - (await stat(file)).mtimeMs < olderThanMs) continue;
        await rm(file, { force: true });
        removed++;
      } catch {
        // Renamed into place or removed meanwhile.
      }
    }
    return removed;
  }

  private async open(sha256: string): Promise<{ stream: Readable; size: number } | undefined> {
    const file = this.pathOf(sha256);
    try {
      // Opened before its size is read: the open file stays readable whatever happens to the name.
      const handle = await open(file, "r");
      try {
        const { size } = await handle.stat();
        return { stream: handle.createReadStream(), size };
      } catch (err) {
        await handle.close();
        throw err;
      }
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
      throw err;
    }
  }

  async delete(sha256: string, options: DeleteOptions = {}): Promise<"deleted" | "absent" | "kept-young" | "kept"> {
    if (!SHA256_HEX.test(sha256)) return "absent";
    const file = this.pathOf(sha256);
    try {
      // A put renames its freshly written file over this name, so a young mtime means bytes that an
      // upload in progress may be about to reference.
      const { mtimeMs } = await stat(file);
      if (options.minAgeMs && Date.now() - mtimeMs < options.minAgeMs) return "kept-young";
      if (!options.stillWanted) {
        await rm(file);
        return "deleted";
      }
      const decided = this.deleteAside(sha256, file, options.stillWanted);
      const previous = this.asideNow.get(sha256);
      const window = previous ? Promise.allSettled([previous, decided]) : decided;
      this.asideNow.set(sha256, window);
      try {
        return await decided;
      } finally {
        if (this.asideNow.get(sha256) === window) this.asideNow.delete(sha256);
      }
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return "absent";
      throw err;
    }
  }

  /** Moves the bytes aside atomically (an identical upload renaming onto the name creates it anew), then asks. */
  private async deleteAside(sha256: string, file: string, stillWanted: () => Promise<boolean>): Promise<"deleted" | "absent" | "kept"> {
    const aside = path.join(this.tmpDir, `deleting-${sha256}-${randomUUID()}`);
    try {
      await rename(file, aside);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return "absent";
      throw err;
    }
    if (await stillWanted()) {
      // Identical bytes: putting them back over a copy that landed meanwhile changes nothing.
      await rename(aside, file);
      return "kept";
    }
    await rm(aside, { force: true });
    return "deleted";
  }

  private pathOf(sha256: string): string {
    return path.join(this.contentDir, sha256.slice(0, 2), sha256.slice(2, 4), sha256);
  }
}

async function entries(dir: string): Promise<string[]> {
  try {
    return await readdir(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT" || (err as NodeJS.ErrnoException).code === "ENOTDIR") return [];
    throw err;
  }
}

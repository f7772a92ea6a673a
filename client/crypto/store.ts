// The client's crypto store: the device's Olm account, Olm and Megolm sessions, device lists and
// the rest of what E2EE must keep across restarts, as strings under (namespace, key).
//
// FileCryptoStore keeps everything in one file, encrypted at rest with a key derived from a
// passphrase, because it holds the private identity keys and every room key: a copy of the file
// alone must give nothing. The whole content is rewritten on each write (temp file, fsync, rename),
// which keeps a crash from ever leaving half a store; writes are debounced so a burst of updates
// (a sync with a hundred room keys) costs one write.
//
// File layout (integers big-endian):
//   header (58 bytes, in the clear, the AEAD's associated data so no field of it can be changed):
//     0  8  magic "PARLEYCS"
//     8  1  format version (1)
//     9  1  KDF algorithm (2: Argon2id v1.3, libsodium's crypto_pwhash_ALG_ARGON2ID13)
//    10  4  Argon2id opslimit
//    14  4  Argon2id memlimit in KiB
//    18 16  salt (random, made once when the store is created)
//    34 16  key check: tells a wrong passphrase apart from a damaged file
//    50  8  header checksum: the first 8 bytes of SHA-256 of bytes 0..50 (a damaged header is
//           reported as damage, not as a wrong passphrase)
//   nonce (24 bytes, fresh for every write)
//   XChaCha20-Poly1305 ciphertext of the JSON content, with its 16-byte tag
//
// The passphrase gives a 32-byte master key through Argon2id; libsodium's KDF (BLAKE2b) splits it
// into the encryption key and the key check, so the check reveals nothing about the encryption key.
import argon2 from "argon2";
import { randomBytes as nodeRandomBytes } from "node:crypto";
import { mkdir, open, readFile, readdir, rename, unlink } from "node:fs/promises";
import path from "node:path";
import { bytesEqual, concatBytes, cryptoReady, randomBytes, sha256, sodium } from "./primitives.ts";

export interface CryptoStore {
  get(namespace: string, key: string): Promise<string | undefined>;
  put(namespace: string, key: string, value: string): Promise<void>;
  delete(namespace: string, key: string): Promise<void>;
  /** Every entry of the namespace, in insertion order. */
  list(namespace: string): Promise<Array<[key: string, value: string]>>;
  /** Writes pending changes durably. */
  flush(): Promise<void>;
  close(): Promise<void>;
}

/** The passphrase does not open this store. */
export class WrongPassphraseError extends Error {
  override name = "WrongPassphraseError";
  constructor(readonly path: string) {
    super(`the passphrase does not open the crypto store ${path}`);
  }
}

/** The store file is damaged or is not a crypto store: it is left untouched, never overwritten. */
export class CryptoStoreCorruptError extends Error {
  override name = "CryptoStoreCorruptError";
  constructor(
    readonly path: string,
    reason: string,
  ) {
    super(`the crypto store ${path} is damaged or not a crypto store (${reason}); it was left as it is`);
  }
}

/** Another open FileCryptoStore (in this process or a live other one) holds the file. */
export class CryptoStoreLockedError extends Error {
  override name = "CryptoStoreLockedError";
  constructor(
    readonly path: string,
    readonly pid: number,
  ) {
    super(`the crypto store ${path} is open in process ${pid} (if no such process uses it, remove ${path}.lock)`);
  }
}

export class CryptoStoreClosedError extends Error {
  override name = "CryptoStoreClosedError";
  constructor() {
    super("the crypto store is closed");
  }
}

type Entries = Map<string, Map<string, string>>;

/** The in-memory store: for tests and for clients that keep no state across runs. */
export class MemoryCryptoStore implements CryptoStore {
  protected entries: Entries = new Map();
  protected closed = false;

  async get(namespace: string, key: string): Promise<string | undefined> {
    this.assertOpen();
    return this.entries.get(namespace)?.get(key);
  }

  async put(namespace: string, key: string, value: string): Promise<void> {
    this.assertOpen();
    let space = this.entries.get(namespace);
    if (!space) {
      space = new Map();
      this.entries.set(namespace, space);
    }
    if (space.get(key) === value) return;
    space.set(key, value);
    this.changed();
  }

  async delete(namespace: string, key: string): Promise<void> {
    this.assertOpen();
    const space = this.entries.get(namespace);
    if (!space?.delete(key)) return;
    if (space.size === 0) this.entries.delete(namespace);
    this.changed();
  }

  async list(namespace: string): Promise<Array<[key: string, value: string]>> {
    this.assertOpen();
    return [...(this.entries.get(namespace) ?? [])];
  }

  async flush(): Promise<void> {
    this.assertOpen();
  }

  async close(): Promise<void> {
    this.closed = true;
  }

  /** Called after every change that must reach the disk. */
  protected changed(): void {}

  protected assertOpen(): void {
    if (this.closed) throw new CryptoStoreClosedError();
  }
}

export type KdfStrength = "interactive" | "moderate";

export interface FileCryptoStoreOptions {
  /**
   * Argon2id limits for a NEW store (an existing one keeps those in its header). "interactive"
   * (2 passes, 64 MiB) takes about 0.5 s here, "moderate" (3 passes, 256 MiB) about 2 s; both
   * block the thread (libsodium-wrappers runs in the caller's thread). Default "moderate": the
   * store holds every private key of the device, and the cost is paid once per start.
   */
  kdf?: KdfStrength;
  /** How long a change waits before it is written, so a burst costs one write (default 50 ms). */
  writeDelayMs?: number;
}

const MAGIC = new TextEncoder().encode("PARLEYCS");
const FORMAT_VERSION = 1;
const HEADER_BYTES = 58;
const NONCE_BYTES = 24;
const TAG_BYTES = 16;
const KDF_CONTEXT = "parleycs"; // libsodium's crypto_kdf contexts are 8 characters
const SUBKEY_ENCRYPTION = 1;
const SUBKEY_CHECK = 2;
// Bounds on what a header may ask of the KDF: the header is read before anything is
// authenticated, and a planted file must not make the client spend minutes or gigabytes.
const MAX_OPSLIMIT = 16;
const MIN_MEMLIMIT_KIB = 8;
const MAX_MEMLIMIT_KIB = 1024 * 1024;

interface Header {
  bytes: Uint8Array;
  opslimit: number;
  memlimitKiB: number;
  salt: Uint8Array;
  keyCheck: Uint8Array;
}

interface Keys {
  encryption: Uint8Array;
  check: Uint8Array;
}

function kdfLimits(strength: KdfStrength): { opslimit: number; memlimitKiB: number } {
  const s = sodium();
  return strength === "interactive"
    ? { opslimit: s.crypto_pwhash_OPSLIMIT_INTERACTIVE, memlimitKiB: s.crypto_pwhash_MEMLIMIT_INTERACTIVE / 1024 }
    : { opslimit: s.crypto_pwhash_OPSLIMIT_MODERATE, memlimitKiB: s.crypto_pwhash_MEMLIMIT_MODERATE / 1024 };
}

/**
 * Argon2id as libsodium's crypto_pwhash computes it (version 1.3, one lane; the same bytes), run
 * by the argon2 package on libuv's thread pool: a 256 MiB derivation takes seconds, and the event
 * loop (the sync loop, the terminal) goes on meanwhile.
 */
async function deriveKeys(passphrase: string, salt: Uint8Array, opslimit: number, memlimitKiB: number): Promise<Keys> {
  const s = sodium();
  const master = new Uint8Array(
    await argon2.hash(passphrase, {
      type: argon2.argon2id,
      version: 0x13,
      raw: true,
      salt: Buffer.from(salt),
      timeCost: opslimit,
      memoryCost: memlimitKiB,
      parallelism: 1,
      hashLength: 32,
    }),
  );
  try {
    return {
      encryption: s.crypto_kdf_derive_from_key(32, SUBKEY_ENCRYPTION, KDF_CONTEXT, master),
      check: s.crypto_kdf_derive_from_key(16, SUBKEY_CHECK, KDF_CONTEXT, master),
    };
  } finally {
    s.memzero(master);
  }
}

function buildHeader(opslimit: number, memlimitKiB: number, salt: Uint8Array, keyCheck: Uint8Array): Header {
  const bytes = new Uint8Array(HEADER_BYTES);
  const view = new DataView(bytes.buffer);
  bytes.set(MAGIC, 0);
  bytes[8] = FORMAT_VERSION;
  bytes[9] = sodium().crypto_pwhash_ALG_ARGON2ID13;
  view.setUint32(10, opslimit);
  view.setUint32(14, memlimitKiB);
  bytes.set(salt, 18);
  bytes.set(keyCheck, 34);
  bytes.set(sha256(bytes.subarray(0, 50)).subarray(0, 8), 50);
  return { bytes, opslimit, memlimitKiB, salt, keyCheck };
}

function parseHeader(file: string, data: Uint8Array): Header {
  if (data.length < HEADER_BYTES + NONCE_BYTES + TAG_BYTES) throw new CryptoStoreCorruptError(file, "file too short");
  const bytes = data.slice(0, HEADER_BYTES);
  if (!bytesEqual(bytes.subarray(0, 8), MAGIC)) throw new CryptoStoreCorruptError(file, "no crypto store header");
  if (!bytesEqual(sha256(bytes.subarray(0, 50)).subarray(0, 8), bytes.subarray(50, 58))) {
    throw new CryptoStoreCorruptError(file, "header checksum mismatch");
  }
  if (bytes[8] !== FORMAT_VERSION) throw new CryptoStoreCorruptError(file, `unknown format version ${bytes[8]}`);
  if (bytes[9] !== sodium().crypto_pwhash_ALG_ARGON2ID13) throw new CryptoStoreCorruptError(file, `unknown KDF ${bytes[9]}`);
  const view = new DataView(bytes.buffer);
  const opslimit = view.getUint32(10);
  const memlimitKiB = view.getUint32(14);
  if (opslimit < 1 || opslimit > MAX_OPSLIMIT || memlimitKiB < MIN_MEMLIMIT_KIB || memlimitKiB > MAX_MEMLIMIT_KIB) {
    throw new CryptoStoreCorruptError(file, "KDF parameters out of bounds");
  }
  return { bytes, opslimit, memlimitKiB, salt: bytes.slice(18, 34), keyCheck: bytes.slice(34, 50) };
}

// The content is a list of pairs rather than a JSON object keyed by namespace, so that no key
// ("__proto__" included) is ever looked up on an object.
type Content = { v: 1; entries: Array<[namespace: string, entries: Array<[key: string, value: string]>]> };

function serialize(entries: Entries): Uint8Array {
  const content: Content = { v: 1, entries: [...entries].map(([ns, space]) => [ns, [...space]]) };
  return new TextEncoder().encode(JSON.stringify(content));
}

function deserialize(file: string, plaintext: Uint8Array): Entries {
  let content: unknown;
  try {
    content = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(plaintext));
  } catch {
    throw new CryptoStoreCorruptError(file, "content is not JSON");
  }
  const c = content as Partial<Content> | null;
  if (!c || c.v !== 1 || !Array.isArray(c.entries)) throw new CryptoStoreCorruptError(file, "unknown content version");
  const entries: Entries = new Map();
  for (const pair of c.entries) {
    if (!Array.isArray(pair) || typeof pair[0] !== "string" || !Array.isArray(pair[1])) {
      throw new CryptoStoreCorruptError(file, "malformed content");
    }
    const space = new Map<string, string>();
    for (const entry of pair[1] as unknown[]) {
      if (!Array.isArray(entry) || typeof entry[0] !== "string" || typeof entry[1] !== "string") {
        throw new CryptoStoreCorruptError(file, "malformed content");
      }
      space.set(entry[0], entry[1]);
    }
    entries.set(pair[0], space);
  }
  return entries;
}

/** Creates the file at `target` with `data` so that a reader sees the old file or the new one, whole. */
async function writeAtomically(target: string, data: Uint8Array): Promise<void> {
  const temp = `${target}.${process.pid}.${nodeRandomBytes(4).toString("hex")}.tmp`;
  try {
    const handle = await open(temp, "wx", 0o600);
    try {
      // The mode given to open() is reduced by the umask; this makes it 0600 exactly.
      await handle.chmod(0o600);
      await handle.writeFile(data);
      await handle.sync();
    } finally {
      await handle.close();
    }
    await rename(temp, target);
  } catch (err) {
    await unlink(temp).catch(() => {});
    throw err;
  }
  // The rename is durable only once the directory is: without this a power cut can bring back the
  // previous version (never a partial one). Some platforms cannot open a directory; the write
  // itself is already atomic there.
  const dir = await open(path.dirname(target), "r").catch(() => undefined);
  if (dir) {
    await dir.sync().catch(() => {});
    await dir.close();
  }
}

/**
 * Temp files of writes that a crash interrupted (their rename never happened). Called with the lock
 * held, so no live writer of this store is making one.
 */
async function removeLeftoverTempFiles(target: string): Promise<void> {
  const base = path.basename(target);
  const leftover = /^\d+\.[0-9a-f]{8}\.tmp$/;
  const names = await readdir(path.dirname(target)).catch(() => [] as string[]);
  for (const name of names) {
    if (name.startsWith(`${base}.`) && leftover.test(name.slice(base.length + 1))) {
      await unlink(path.join(path.dirname(target), name)).catch(() => {});
    }
  }
}

// Open stores of this process, by resolved path: a second open of the same file in one process
// would let two writers overwrite each other's changes.
const openInProcess = new Set<string>();

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** A lock file next to the store, holding the owner's pid; a dead owner's lock is taken over. */
async function acquireLock(lockPath: string, file: string): Promise<void> {
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      const handle = await open(lockPath, "wx", 0o600);
      await handle.writeFile(String(process.pid));
      await handle.close();
      return;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
    }
    const owner = Number.parseInt(await readFile(lockPath, "utf8").catch(() => ""), 10);
    if (Number.isInteger(owner) && owner > 0 && owner !== process.pid && isAlive(owner)) {
      throw new CryptoStoreLockedError(file, owner);
    }
    // Our own pid here is a lock left by this process's earlier run under the same pid
    // (openInProcess already refused a second open in this run), or an owner that died.
    await unlink(lockPath).catch(() => {});
  }
  throw new CryptoStoreLockedError(file, -1);
}

/** The passphrase-encrypted store in one file. */
export class FileCryptoStore extends MemoryCryptoStore {
  private dirty = false;
  private timer: NodeJS.Timeout | undefined;
  private writing: Promise<void> = Promise.resolve();

  private constructor(
    readonly path: string,
    private readonly lockPath: string,
    private header: Header,
    private keys: Keys,
    entries: Entries,
    private readonly writeDelayMs: number,
  ) {
    super();
    this.entries = entries;
  }

  /**
   * Opens the store at `file`, creating it (and its directory, mode 0700) when it does not exist.
   * Throws WrongPassphraseError, CryptoStoreCorruptError or CryptoStoreLockedError.
   */
  static async open(file: string, passphrase: string, opts: FileCryptoStoreOptions = {}): Promise<FileCryptoStore> {
    await cryptoReady();
    const resolved = path.resolve(file);
    const lockPath = `${resolved}.lock`;
    if (openInProcess.has(resolved)) throw new CryptoStoreLockedError(resolved, process.pid);
    await mkdir(path.dirname(resolved), { recursive: true, mode: 0o700 });
    openInProcess.add(resolved);
    try {
      await acquireLock(lockPath, resolved);
      try {
        await removeLeftoverTempFiles(resolved);
        return await FileCryptoStore.load(resolved, lockPath, passphrase, opts);
      } catch (err) {
        await unlink(lockPath).catch(() => {});
        throw err;
      }
    } catch (err) {
      openInProcess.delete(resolved);
      throw err;
    }
  }

  private static async load(file: string, lockPath: string, passphrase: string, opts: FileCryptoStoreOptions): Promise<FileCryptoStore> {
    const writeDelayMs = opts.writeDelayMs ?? 50;
    let data: Uint8Array | undefined;
    try {
      data = new Uint8Array(await readFile(file));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
    }
    if (!data) {
      const { opslimit, memlimitKiB } = kdfLimits(opts.kdf ?? "moderate");
      const salt = randomBytes(sodium().crypto_pwhash_SALTBYTES);
      const keys = await deriveKeys(passphrase, salt, opslimit, memlimitKiB);
      const store = new FileCryptoStore(file, lockPath, buildHeader(opslimit, memlimitKiB, salt, keys.check), keys, new Map(), writeDelayMs);
      // Written at once: the salt must be on disk before anything is encrypted under its key.
      store.dirty = true;
      await store.flush();
      return store;
    }
    const header = parseHeader(file, data);
    const keys = await deriveKeys(passphrase, header.salt, header.opslimit, header.memlimitKiB);
    try {
      if (!bytesEqual(keys.check, header.keyCheck)) throw new WrongPassphraseError(file);
      const nonce = data.subarray(HEADER_BYTES, HEADER_BYTES + NONCE_BYTES);
      const ciphertext = data.subarray(HEADER_BYTES + NONCE_BYTES);
      let plaintext: Uint8Array;
      try {
        plaintext = sodium().crypto_aead_xchacha20poly1305_ietf_decrypt(null, ciphertext, header.bytes, nonce, keys.encryption);
      } catch {
        // The passphrase is right (the key check matched), so the content or its header was changed.
        throw new CryptoStoreCorruptError(file, "content does not authenticate");
      }
      return new FileCryptoStore(file, lockPath, header, keys, deserialize(file, plaintext), writeDelayMs);
    } catch (err) {
      sodium().memzero(keys.encryption);
      throw err;
    }
  }

  /** Re-encrypts the store under a new passphrase (new salt, the KDF strength given or the current one). */
  async changePassphrase(passphrase: string, kdf?: KdfStrength): Promise<void> {
    this.assertOpen();
    const { opslimit, memlimitKiB } = kdf ? kdfLimits(kdf) : this.header;
    const salt = randomBytes(sodium().crypto_pwhash_SALTBYTES);
    const keys = await deriveKeys(passphrase, salt, opslimit, memlimitKiB);
    // Queued behind any write under the old key, so the file never mixes the two.
    const run = this.writing.then(async () => {
      const previous = { header: this.header, keys: this.keys };
      const wasDirty = this.dirty;
      this.header = buildHeader(opslimit, memlimitKiB, salt, keys.check);
      this.keys = keys;
      this.dirty = false;
      try {
        await writeAtomically(this.path, this.encrypt(serialize(this.entries)));
      } catch (err) {
        this.header = previous.header;
        this.keys = previous.keys;
        this.dirty ||= wasDirty;
        throw err;
      }
      sodium().memzero(previous.keys.encryption);
    });
    this.writing = run.catch(() => {});
    await run;
  }

  override async flush(): Promise<void> {
    this.assertOpen();
    await this.writePending();
  }

  /** Writes what is pending and closes; if that write fails, the store stays open and this throws. */
  override async close(): Promise<void> {
    if (this.closed) return;
    // Closed first: a put racing the last write would otherwise schedule a write after the key is wiped.
    this.closed = true;
    try {
      await this.writePending();
    } catch (err) {
      this.closed = false;
      throw err;
    }
    sodium().memzero(this.keys.encryption);
    await unlink(this.lockPath).catch(() => {});
    openInProcess.delete(this.path);
  }

  protected override changed(): void {
    this.dirty = true;
    this.timer ??= setTimeout(() => {
      this.timer = undefined;
      // On a failure the changes stay dirty: the next flush() or close() writes them again and
      // throws if it fails too, so nothing is lost without the caller hearing of it.
      this.writePending().catch(() => {});
    }, this.writeDelayMs);
  }

  /** Writes the content if changed, after any write under way (writes never overlap). */
  private writePending(): Promise<void> {
    if (this.timer) {
      clearTimeout(this.timer);
      this.timer = undefined;
    }
    const run = this.writing.then(async () => {
      if (!this.dirty) return;
      // Cleared before the write: a change made while it runs marks the store dirty again.
      this.dirty = false;
      try {
        await writeAtomically(this.path, this.encrypt(serialize(this.entries)));
      } catch (err) {
        this.dirty = true;
        throw err;
      }
    });
    this.writing = run.catch(() => {});
    return run;
  }

  private encrypt(plaintext: Uint8Array): Uint8Array {
    const nonce = randomBytes(NONCE_BYTES);
    const ciphertext = sodium().crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, this.header.bytes, null, nonce, this.keys.encryption);
    return concatBytes(this.header.bytes, nonce, ciphertext);
  }
}

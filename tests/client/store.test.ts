// The client's crypto store (client/crypto/store.ts): the in-memory store, and the file store
// encrypted under a passphrase (Argon2id, XChaCha20-Poly1305). Every FileCryptoStore.open runs
// Argon2id with libsodium's "interactive" limits (about 0.5 s), so the tests share files where
// they can.
import { spawn } from "node:child_process";
import { watch } from "node:fs";
import { copyFile, mkdtemp, readFile, readdir, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  type CryptoStore,
  CryptoStoreClosedError,
  CryptoStoreCorruptError,
  CryptoStoreLockedError,
  FileCryptoStore,
  MemoryCryptoStore,
  WrongPassphraseError,
} from "../../client/crypto/store.ts";
import { cryptoReady, sodium } from "../../client/crypto/primitives.ts";

const PASSPHRASE = "correct horse battery staple";
let dir: string;
/** A store made by the round-trip test, used (copied) by the tampering tests. */
let storeFile: string;

beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), "parley-store-test-"));
  storeFile = path.join(dir, "nested", "device", "crypto.store");
});

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

function open(file: string, passphrase = PASSPHRASE) {
  return FileCryptoStore.open(file, passphrase, { kdf: "interactive", writeDelayMs: 10 });
}

async function expectRejects(promise: Promise<unknown>, type: new (...args: any[]) => Error) {
  const err = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(type);
}

async function namespacesAreIsolated(store: CryptoStore) {
  await store.put("olm_sessions", "same-key", "session");
  await store.put("megolm_inbound", "same-key", "group session");
  await store.put("megolm_inbound", "other", "x");
  await store.delete("olm_sessions", "other"); // absent: no effect on the other namespace
  expect(await store.get("olm_sessions", "same-key")).toBe("session");
  expect(await store.get("megolm_inbound", "same-key")).toBe("group session");
  expect(await store.list("olm_sessions")).toEqual([["same-key", "session"]]);
  expect(await store.list("megolm_inbound")).toEqual([
    ["same-key", "group session"],
    ["other", "x"],
  ]);
  await store.delete("megolm_inbound", "same-key");
  expect(await store.get("olm_sessions", "same-key")).toBe("session");
  expect(await store.list("megolm_inbound")).toEqual([["other", "x"]]);
  expect(await store.list("nothing-here")).toEqual([]);
}

describe("MemoryCryptoStore", () => {
  it("keeps namespaces apart", async () => {
    await namespacesAreIsolated(new MemoryCryptoStore());
  });

  it("refuses use after close", async () => {
    const store = new MemoryCryptoStore();
    await store.close();
    await expectRejects(store.get("a", "b"), CryptoStoreClosedError);
  });
});

describe("FileCryptoStore", () => {
  it("keeps what was put across a close and a reopen, namespaces apart, in a 0600 file in a 0700 directory", async () => {
    const store = await open(storeFile);
    await namespacesAreIsolated(store);
    await store.put("account", "pickle", "secret identity keys");
    await store.put("proto", "__proto__", "not an object key");
    // Concurrent flushes with changes between them: every change is written, and the writes queue.
    const flushes: Promise<void>[] = [];
    for (let i = 0; i < 20; i++) {
      await store.put("counter", `k${i}`, String(i));
      flushes.push(store.flush());
    }
    await Promise.all(flushes);
    await store.put("late", "written by close", "yes");
    const closing = store.close();
    // A change racing the close is refused, not written after the key is wiped.
    await expectRejects(store.put("late", "racing the close", "no"), CryptoStoreClosedError);
    await closing;

    expect((await stat(storeFile)).mode & 0o777).toBe(0o600);
    expect((await stat(path.dirname(storeFile))).mode & 0o777).toBe(0o700);
    // Nothing readable in the file: the values are encrypted.
    expect((await readFile(storeFile)).includes(Buffer.from("secret identity keys"))).toBe(false);
    // No temp file left behind.
    expect(await readdir(path.dirname(storeFile))).toEqual(["crypto.store"]);

    const reopened = await open(storeFile);
    expect(await reopened.get("account", "pickle")).toBe("secret identity keys");
    expect(await reopened.get("proto", "__proto__")).toBe("not an object key");
    expect(await reopened.get("olm_sessions", "same-key")).toBe("session");
    expect(await reopened.list("megolm_inbound")).toEqual([["other", "x"]]);
    expect((await reopened.list("counter")).length).toBe(20);
    expect(await reopened.get("late", "written by close")).toBe("yes");
    await reopened.close();
  });

  it("writes a change after the debounce delay without a flush", async () => {
    const file = path.join(dir, "debounce.store");
    const store = await open(file);
    const before = await readFile(file);
    await store.put("a", "b", "c");
    await new Promise((resolve) => setTimeout(resolve, 300));
    const after = await readFile(file);
    expect(after.equals(before)).toBe(false);
    // Unchanged values and absent deletions write nothing.
    await store.put("a", "b", "c");
    await store.delete("a", "absent");
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect((await readFile(file)).equals(after)).toBe(true);
    await store.close();
  });

  it("refuses a second open of the same file while it is open", async () => {
    const file = path.join(dir, "debounce.store");
    const store = await open(file);
    await expectRejects(open(file), CryptoStoreLockedError);
    await store.close();
  });

  it("refuses a wrong passphrase and leaves the file as it was", async () => {
    const before = await readFile(storeFile);
    await expectRejects(open(storeFile, "wrong passphrase"), WrongPassphraseError);
    expect((await readFile(storeFile)).equals(before)).toBe(true);
  });

  it("refuses a file with one flipped byte in its ciphertext, and never overwrites it", async () => {
    const file = path.join(dir, "flipped-content.store");
    const bytes = await readFile(storeFile);
    bytes[bytes.length - 40]! ^= 0x01;
    await writeFile(file, bytes);
    await expectRejects(open(file), CryptoStoreCorruptError);
    expect((await readFile(file)).equals(bytes)).toBe(true);
  });

  it("refuses a file with a flipped byte in its header (as damage, not as a wrong passphrase)", async () => {
    for (const offset of [9, 20, 40]) {
      const file = path.join(dir, `flipped-header-${offset}.store`);
      const bytes = await readFile(storeFile);
      bytes[offset]! ^= 0x80;
      await writeFile(file, bytes);
      await expectRejects(open(file), CryptoStoreCorruptError);
    }
  });

  it("refuses a file whose header was swapped for another store's (same passphrase)", async () => {
    const other = path.join(dir, "other.store");
    const store = await open(other);
    await store.put("account", "pickle", "someone else");
    await store.close();
    // The other store's header is self-consistent (its key check matches its own salt), so only
    // the header being the AEAD's associated data catches the swap.
    const swapped = Buffer.concat([(await readFile(other)).subarray(0, 58), (await readFile(storeFile)).subarray(58)]);
    const file = path.join(dir, "swapped.store");
    await writeFile(file, swapped);
    await expectRejects(open(file), CryptoStoreCorruptError);
  });

  it("writes the documented format: Argon2id key, XChaCha20-Poly1305 with the whole header as associated data", async () => {
    await cryptoReady();
    const s = sodium();
    const bytes = new Uint8Array(await readFile(storeFile));
    const header = bytes.subarray(0, 58);
    const view = new DataView(header.buffer, header.byteOffset);
    expect(new TextDecoder().decode(header.subarray(0, 8))).toBe("PARLEYCS");
    expect([header[8], header[9]]).toEqual([1, s.crypto_pwhash_ALG_ARGON2ID13]);
    expect(view.getUint32(10)).toBe(s.crypto_pwhash_OPSLIMIT_INTERACTIVE);
    expect(view.getUint32(14) * 1024).toBe(s.crypto_pwhash_MEMLIMIT_INTERACTIVE);
    const master = s.crypto_pwhash(32, PASSPHRASE, header.slice(18, 34), view.getUint32(10), view.getUint32(14) * 1024, s.crypto_pwhash_ALG_ARGON2ID13);
    const key = s.crypto_kdf_derive_from_key(32, 1, "parleycs", master);
    const nonce = bytes.subarray(58, 82);
    const ciphertext = bytes.subarray(82);
    const plaintext = s.crypto_aead_xchacha20poly1305_ietf_decrypt(null, ciphertext, header, nonce, key);
    expect(new TextDecoder().decode(plaintext)).toContain("secret identity keys");
    // Without the header as associated data the content does not authenticate: no header field
    // can be changed, even one that would leave the key the same.
    expect(() => s.crypto_aead_xchacha20poly1305_ietf_decrypt(null, ciphertext, null, nonce, key)).toThrow();
  });

  it("refuses a file that is not a store, or is cut short", async () => {
    const notStore = path.join(dir, "not-a-store");
    await writeFile(notStore, "hello, I am a text file that is long enough to have a header and a nonce and a tag");
    await expectRejects(open(notStore), CryptoStoreCorruptError);
    const short = path.join(dir, "short.store");
    await writeFile(short, (await readFile(storeFile)).subarray(0, 90));
    await expectRejects(open(short), CryptoStoreCorruptError);
  });

  it("changes the passphrase: the new one opens the store, the old one no longer does", async () => {
    const file = path.join(dir, "rekey.store");
    await copyFile(storeFile, file);
    const store = await open(file);
    await store.changePassphrase("a new passphrase");
    await store.put("after", "rekey", "kept");
    await store.close();
    await expectRejects(open(file), WrongPassphraseError);
    const reopened = await open(file, "a new passphrase");
    expect(await reopened.get("account", "pickle")).toBe("secret identity keys");
    expect(await reopened.get("after", "rekey")).toBe("kept");
    await reopened.close();
  });

  it("is never left partly written by a process killed while writing (temp file, fsync, rename)", async () => {
    const file = path.join(dir, "crash.store");
    await copyFile(storeFile, file);
    const writer = path.join(import.meta.dirname, "store-writer.ts");
    const child = spawn(process.execPath, ["--import", "tsx", writer, file, PASSPHRASE], { stdio: ["ignore", "pipe", "inherit"] });
    const exited = new Promise((resolve) => child.once("exit", resolve));
    await new Promise<void>((resolve, reject) => {
      child.stdout.on("data", (chunk: Buffer) => chunk.toString().includes("ready") && resolve());
      child.once("exit", (code) => reject(new Error(`store writer exited (${code}) before its first write`)));
    });
    // Killed the moment a write's temp file appears, that is in the middle of a write (of about
    // 0.7 MB, fsynced), where writing the store in place would leave it cut short.
    const watcher = watch(dir, (_event, name) => {
      if (name?.startsWith("crash.store.") && name.endsWith(".tmp")) child.kill("SIGKILL");
    });
    const killedAnyway = setTimeout(() => child.kill("SIGKILL"), 5000);
    await exited;
    watcher.close();
    clearTimeout(killedAnyway);

    // The dead writer's lock is taken over, the temp file of the write it was killed in (if any)
    // removed, and the file is one whole version.
    const store = await open(file);
    expect((await readdir(dir)).filter((name) => name.startsWith("crash.store.") && name.endsWith(".tmp"))).toEqual([]);
    const counter = await store.get("crash", "counter");
    expect(Number(counter)).toBeGreaterThanOrEqual(1);
    expect((await store.get("crash", "big"))?.startsWith(`${counter}:`)).toBe(true);
    expect(await store.get("account", "pickle")).toBe("secret identity keys");
    await store.close();
  });
});

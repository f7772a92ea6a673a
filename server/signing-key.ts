// The server's Ed25519 signing key: created on first start in the data directory (mode 0600) and
// reused after every restart. The file uses Synapse's format, `ed25519 <version> <unpadded base64
// seed>`, so keys can move between implementations.
import { randomBytes } from "node:crypto";
import { chmod, mkdir, readFile, rename, stat, writeFile } from "node:fs/promises";
import path from "node:path";
import { decodeBase64, encodeUnpaddedBase64 } from "../federation/protocol/base64.ts";
import { type SigningKey, signingKeyFromSeed } from "../federation/protocol/signing.ts";

export const SIGNING_KEY_FILE = "signing.key";

const VERSION_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

function randomKeyVersion(): string {
  const bytes = randomBytes(6);
  return "a_" + Array.from(bytes, (b) => VERSION_ALPHABET[b % VERSION_ALPHABET.length]).join("");
}

export function parseSigningKeyFile(text: string): SigningKey {
  const line = text.split("\n").map((l) => l.trim()).find((l) => l && !l.startsWith("#"));
  const parts = line?.split(/\s+/) ?? [];
  if (parts.length !== 3 || parts[0] !== "ed25519" || !/^[a-zA-Z0-9_]+$/.test(parts[1]!)) {
    throw new Error("signing key file is not in the format `ed25519 <version> <base64 seed>`");
  }
  const seed = decodeBase64(parts[2]!);
  if (seed.length !== 32) throw new Error("signing key seed must be 32 bytes");
  return signingKeyFromSeed(seed, `ed25519:${parts[1]}`);
}

/** Reads the signing key from `dataDir`, creating it (mode 0600, never overwriting) on first start. */
export async function loadOrCreateSigningKey(
  dataDir: string,
  onCreate?: (keyId: string) => void,
): Promise<SigningKey> {
  const file = path.join(dataDir, SIGNING_KEY_FILE);
  await mkdir(dataDir, { recursive: true });
  try {
    const key = parseSigningKeyFile(await readFile(file, "utf8"));
    // A key readable by others is a key others may have copied; tighten it rather than refuse.
    if (process.platform !== "win32" && ((await stat(file)).mode & 0o077) !== 0) await chmod(file, 0o600);
    return key;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOENT") {
      throw new Error(`cannot use signing key ${file}: ${(err as Error).message}`);
    }
  }
  const version = randomKeyVersion();
  const seed = randomBytes(32);
  // `wx` fails if another process created the file meanwhile: then we read theirs.
  try {
    await writeFile(file, `ed25519 ${version} ${encodeUnpaddedBase64(seed)}\n`, { mode: 0o600, flag: "wx" });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "EEXIST") return loadOrCreateSigningKey(dataDir);
    throw err;
  }
  onCreate?.(`ed25519:${version}`);
  return signingKeyFromSeed(seed, `ed25519:${version}`);
}

/** The signing key in `dataDir`; undefined when there is none yet (the server never started). */
export async function readSigningKey(dataDir: string): Promise<SigningKey | undefined> {
  const file = path.join(dataDir, SIGNING_KEY_FILE);
  try {
    return parseSigningKeyFile(await readFile(file, "utf8"));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw new Error(`cannot use signing key ${file}: ${(err as Error).message}`);
  }
}

/**
 * Replaces the signing key in `dataDir` with a new one (a new key version), atomically: the file
 * is either the old key or the new one, never half written. The old key's secret is not kept;
 * its public half is the caller's to publish as an old verify key.
 */
export async function writeNewSigningKey(dataDir: string): Promise<SigningKey> {
  const file = path.join(dataDir, SIGNING_KEY_FILE);
  const version = randomKeyVersion();
  const seed = randomBytes(32);
  const temporary = `${file}.${process.pid}.new`;
  await writeFile(temporary, `ed25519 ${version} ${encodeUnpaddedBase64(seed)}\n`, { mode: 0o600, flag: "wx" });
  await rename(temporary, file);
  return signingKeyFromSeed(seed, `ed25519:${version}`);
}

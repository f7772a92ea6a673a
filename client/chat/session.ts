// Where parley-chat keeps a login between runs: the access token and device ID (so each run is the
// same device, with the same encryption keys), in ~/.config/parley-chat/session.json, readable by
// its owner only. The access token is a password in all but name.
import { chmod, mkdir, readFile, rename, rm, writeFile } from "node:fs/promises";
import { homedir } from "node:os";
import path from "node:path";

export interface StoredSession {
  homeserver: string;
  userId: string;
  deviceId: string;
  accessToken: string;
}

/** $XDG_CONFIG_HOME/parley-chat, else ~/.config/parley-chat. */
export function defaultDataDir(env: NodeJS.ProcessEnv = process.env): string {
  const base = env.XDG_CONFIG_HOME && path.isAbsolute(env.XDG_CONFIG_HOME) ? env.XDG_CONFIG_HOME : path.join(homedir(), ".config");
  return path.join(base, "parley-chat");
}

/** Creates the data directory (mode 0700: it holds the token and the crypto store). */
export async function ensureDataDir(dir: string): Promise<void> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  await chmod(dir, 0o700);
}

function sessionFile(dir: string): string {
  return path.join(dir, "session.json");
}

export async function loadSession(dir: string): Promise<StoredSession | undefined> {
  let text: string;
  try {
    text = await readFile(sessionFile(dir), "utf8");
  } catch {
    return undefined;
  }
  try {
    const s = JSON.parse(text) as Partial<StoredSession>;
    if (typeof s.homeserver === "string" && typeof s.userId === "string" && typeof s.deviceId === "string" && typeof s.accessToken === "string") {
      return { homeserver: s.homeserver, userId: s.userId, deviceId: s.deviceId, accessToken: s.accessToken };
    }
  } catch {
    // A damaged file is a missing session: the user logs in again.
  }
  return undefined;
}

export async function saveSession(dir: string, session: StoredSession): Promise<void> {
  await ensureDataDir(dir);
  // Written aside with mode 0600 from its creation, then renamed: never a moment when the token is
  // in a world-readable file, never half a file after a crash.
  const tmp = `${sessionFile(dir)}.${process.pid}.tmp`;
  await writeFile(tmp, `${JSON.stringify(session, null, 2)}\n`, { mode: 0o600 });
  await rename(tmp, sessionFile(dir));
}

export async function clearSession(dir: string): Promise<void> {
  await rm(sessionFile(dir), { force: true });
}

/** The crypto store of one device (a new device, after a new login, starts a new store). */
export function cryptoStorePath(dir: string, session: Pick<StoredSession, "userId" | "deviceId">): string {
  const safe = (s: string) => s.replace(/[^A-Za-z0-9._=-]/g, "_");
  return path.join(dir, `crypto-${safe(session.userId)}-${safe(session.deviceId)}.store`);
}

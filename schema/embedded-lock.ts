// The embedded database (PGlite) lives inside one process: a second process opening the same files
// would corrupt them. A lock file beside the database records its owner, so a second opener (the
// admin command line while the server runs, or a second server) gets a clear error instead.
//
// A lock file left by a process that died is stale and taken over. "Died" is judged by the pid and,
// on Linux, the process's start time and the boot ID, so that a reused pid (pid 1 in a restarted
// container) does not look like the old owner.
import { readFileSync } from "node:fs";
import { readFile, rm, writeFile } from "node:fs/promises";
import path from "node:path";

export class DatabaseInUseError extends Error {
  override name = "DatabaseInUseError";
}

interface Owner {
  pid: number;
  /** Linux only: the boot ID and the process start time (clock ticks since boot). */
  boot?: string;
  start?: string;
}

const heldHere = new Set<string>();

function identity(pid: number): Owner {
  try {
    const boot = readFileSync("/proc/sys/kernel/random/boot_id", "utf8").trim();
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    // Fields after the command name (which may contain spaces) start after the last ')'.
    const start = stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19];
    return { pid, boot, start };
  } catch {
    return { pid };
  }
}

function isAlive(owner: Owner): boolean {
  if (owner.pid === process.pid) return false;
  try {
    process.kill(owner.pid, 0);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "EPERM") return false;
  }
  if (owner.boot === undefined || owner.start === undefined) return true;
  const now = identity(owner.pid);
  if (now.boot === undefined) return true;
  return now.boot === owner.boot && now.start === owner.start;
}

/** Takes the lock of the embedded database in `dir`; resolves to its release. */
export async function lockEmbeddedDatabase(dir: string): Promise<() => Promise<void>> {
  const file = path.join(dir, "parley.lock");
  const advice =
    "The embedded database can only be opened by one process at a time: stop the server first, " +
    "or use PostgreSQL (database_url), where the admin commands work while the server runs.";
  if (heldHere.has(file)) {
    throw new DatabaseInUseError(`the embedded database in ${dir} is already open in this process. ${advice}`);
  }
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      await writeFile(file, JSON.stringify(identity(process.pid)), { flag: "wx", mode: 0o600 });
      heldHere.add(file);
      return async () => {
        heldHere.delete(file);
        await rm(file, { force: true });
      };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
      let owner: Owner | undefined;
      try {
        owner = JSON.parse(await readFile(file, "utf8")) as Owner;
      } catch {
        owner = undefined;
      }
      if (owner && typeof owner.pid === "number" && isAlive(owner)) {
        throw new DatabaseInUseError(
          `the embedded database in ${dir} is in use by another Parley process (pid ${owner.pid}). ${advice}`,
        );
      }
      await rm(file, { force: true });
    }
  }
  throw new DatabaseInUseError(`could not take the lock file ${file}`);
}

// Password hashing with Argon2id, off the main thread: the `argon2` package hashes on libuv's
// thread pool, so the event loop keeps serving while a login hashes. At most (cores - 1) hashes run
// at once, which leaves a core for the event loop and pool slots for file and DNS work; the rest wait
// their turn in a queue rather than competing for the CPU.
import { availableParallelism } from "node:os";
import argon2 from "argon2";
import { MatrixError } from "../http/errors.ts";

// OWASP's first recommended Argon2id configuration (m = 19 MiB, t = 2, p = 1): ~30 ms a hash here.
const OPTIONS = { type: argon2.argon2id, memoryCost: 19_456, timeCost: 2, parallelism: 1 } as const;
/** Passwords longer than this are refused before hashing: hashing a megabyte is a cheap DoS. */
export const MAX_PASSWORD_LENGTH = 512;

export class PasswordHasher {
  private running = 0;
  private readonly waiting: (() => void)[] = [];
  private dummyHash: Promise<string> | undefined;

  constructor(private readonly concurrency = Math.max(1, availableParallelism() - 1)) {}

  hash(password: string): Promise<string> {
    return this.limited(() => argon2.hash(password, OPTIONS));
  }

  /** True when `password` matches `hash`. A malformed hash counts as a mismatch. */
  verify(hash: string, password: string): Promise<boolean> {
    return this.limited(() => argon2.verify(hash, password).catch(() => false));
  }

  /**
   * Spends the time of a real verification when there is no hash to check (unknown user,
   * deactivated account), so the answer's timing does not tell whether the account exists.
   */
  async verifyNothing(password: string): Promise<false> {
    this.dummyHash ??= this.hash("parley-dummy-password");
    await this.verify(await this.dummyHash, password);
    return false;
  }

  needsRehash(hash: string): boolean {
    try {
      return argon2.needsRehash(hash, OPTIONS);
    } catch {
      return false;
    }
  }

  private async limited<T>(work: () => Promise<T>): Promise<T> {
    // A finishing hash hands its slot straight to the next waiter, so a newcomer cannot slip in between.
    if (this.running < this.concurrency) this.running++;
    else await new Promise<void>((resolve) => this.waiting.push(resolve));
    try {
      return await work();
    } finally {
      const next = this.waiting.shift();
      if (next) next();
      else this.running--;
    }
  }
}

/**
 * The configured minimum length (`password_min_length`), for passwords a user chooses (registration,
 * password change): counted in characters as users count them (code points, not UTF-16 units).
 * Passwords set by an admin are theirs to choose.
 */
export function checkPasswordStrength(password: string, minLength: number): void {
  if ([...password].length < minLength) {
    throw new MatrixError(400, "M_WEAK_PASSWORD", `The password must be at least ${minLength} characters long`);
  }
}

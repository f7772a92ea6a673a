// Erased users: deactivated with `erase: true` (POST /account/deactivate). The spec: "the server
// SHOULD NOT share the user's messages with users who join the room later", so their messages are
// served redacted to users who were not joined when they were sent, and to other servers.
// https://spec.matrix.org/latest/client-server-api/#post_matrixclientv3accountdeactivate
//
// The history-visibility filter asks for every page it serves, so the list (short: erasure is
// rare) is read whole and kept for a few seconds per database. An erasure made by this process is
// seen at once; one made by another process sharing the database within ERASED_TTL_MS.
import { isNotNull } from "drizzle-orm";
import { type Database, schema } from "../../schema/db.ts";

const ERASED_TTL_MS = 5_000;

export class ErasedUsers {
  private static readonly byDatabase = new WeakMap<Database, ErasedUsers>();

  /** The one lookup of a database (so accounts, rooms and sync share its cache). */
  static of(db: Database): ErasedUsers {
    let found = ErasedUsers.byDatabase.get(db);
    if (!found) ErasedUsers.byDatabase.set(db, (found = new ErasedUsers(db)));
    return found;
  }

  private cached: { users: Set<string>; readAt: number } | undefined;
  private loading: Promise<Set<string>> | undefined;
  /** Bumped by `invalidate`: a read begun before it is not kept. */
  private generation = 0;

  private constructor(private readonly db: Database) {}

  /** The erased users. */
  async all(): Promise<ReadonlySet<string>> {
    const now = Date.now();
    if (this.cached && now - this.cached.readAt < ERASED_TTL_MS) return this.cached.users;
    if (this.loading) return this.loading;
    const generation = this.generation;
    const load = this.read(generation);
    this.loading = load;
    void load.then(
      () => this.loading === load && (this.loading = undefined),
      () => this.loading === load && (this.loading = undefined),
    );
    return load;
  }

  private async read(generation: number): Promise<Set<string>> {
    const u = schema.users;
    const rows = await this.db.select({ userId: u.userId }).from(u).where(isNotNull(u.erasedTs));
    const users = new Set(rows.map((r) => r.userId));
    if (generation === this.generation) this.cached = { users, readAt: Date.now() };
    return users;
  }

  /** Forgets the cached list (after this process erased a user). */
  invalidate(): void {
    this.generation++;
    this.cached = undefined;
    this.loading = undefined;
  }
}

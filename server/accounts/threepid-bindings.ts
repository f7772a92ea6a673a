// Third-party identifiers bound on identity servers through this homeserver: `/account/3pid/bind`
// asks the identity server to bind and records it; `/account/3pid/unbind`, `/account/3pid/delete`
// and deactivation unbind (the identity server named, or every one it was bound through).
// Parley attaches no 3pids to accounts beyond these bindings (no email or msisdn verification of
// its own), so `GET /account/3pid` lists none and "delete" is an unbind.
// https://spec.matrix.org/latest/client-server-api/#adding-account-administrative-contact-information
import { and, eq } from "drizzle-orm";
import type { Logger } from "pino";
import { type Database, schema } from "../../schema/db.ts";
import { MatrixError } from "../http/errors.ts";

export interface BoundThreepid {
  medium: string;
  address: string;
}

/** The identity-server calls bindings need, plugged in by the homeserver wiring. */
export interface IdentityServerBindings {
  /** `/v2/3pid/bind` with the user's identity-server access token; the 3pid that was bound. */
  bind(idServer: string, accessToken: string, sid: string, clientSecret: string, mxid: string): Promise<BoundThreepid>;
  /** `/v2/3pid/unbind` signed by us: true when unbound, false when the identity server refused. */
  unbind(idServer: string, mxid: string, medium: string, address: string): Promise<boolean>;
}

export type UnbindResult = "success" | "no-support";

export class ThreepidBindings {
  private identityServers: IdentityServerBindings | undefined;

  constructor(
    private readonly db: Database,
    private readonly now: () => number,
    private readonly logger: Logger,
  ) {}

  useIdentityServers(identityServers: IdentityServerBindings): void {
    this.identityServers = identityServers;
  }

  private get ids(): IdentityServerBindings {
    if (!this.identityServers) throw new MatrixError(400, "M_UNKNOWN", "This server cannot reach identity servers");
    return this.identityServers;
  }

  async bind(userId: string, idServer: string, accessToken: string, sid: string, clientSecret: string): Promise<void> {
    const { medium, address } = await this.ids.bind(idServer, accessToken, sid, clientSecret, userId);
    await this.db
      .insert(schema.threepidBindings)
      .values({ userId, medium, address, idServer, boundTs: this.now() })
      .onConflictDoUpdate({
        target: [schema.threepidBindings.userId, schema.threepidBindings.medium, schema.threepidBindings.address, schema.threepidBindings.idServer],
        set: { boundTs: this.now() },
      });
  }

  /**
   * Unbinds `medium`/`address` of the user from `idServer`, or (none given) from every identity
   * server it was bound through here; "no-support" when there is none to ask or one refused.
   * A binding the identity server refused to remove is forgotten all the same (as Synapse does):
   * the identity server says it is not there.
   */
  async unbind(userId: string, medium: string, address: string, idServer?: string): Promise<UnbindResult> {
    const t = schema.threepidBindings;
    const servers =
      idServer !== undefined
        ? [idServer]
        : (await this.db.select({ idServer: t.idServer }).from(t).where(and(eq(t.userId, userId), eq(t.medium, medium), eq(t.address, address)))).map((r) => r.idServer);
    if (servers.length === 0) return "no-support";
    let result: UnbindResult = "success";
    for (const server of servers) {
      if (!(await this.ids.unbind(server, userId, medium, address))) result = "no-support";
      await this.db.delete(t).where(and(eq(t.userId, userId), eq(t.medium, medium), eq(t.address, address), eq(t.idServer, server)));
    }
    return result;
  }

  /**
   * At deactivation: unbinds every binding of the user (from `idServer` if given, else from the one
   * each was bound through). Best effort: an identity server that cannot be reached or refuses makes
   * the answer "no-support" and does not stop the others.
   */
  async unbindAll(userId: string, idServer?: string): Promise<UnbindResult> {
    const t = schema.threepidBindings;
    const rows = await this.db.select().from(t).where(eq(t.userId, userId));
    // Nothing bound: nothing left bound (Synapse answers "success" too).
    let result: UnbindResult = "success";
    for (const row of rows) {
      try {
        if (!(await this.ids.unbind(idServer ?? row.idServer, userId, row.medium, row.address))) result = "no-support";
      } catch (err) {
        this.logger.info({ userId, idServer: idServer ?? row.idServer, err }, "could not unbind a 3pid at deactivation");
        result = "no-support";
      }
    }
    await this.db.delete(t).where(eq(t.userId, userId));
    return result;
  }
}

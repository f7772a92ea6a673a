// The security audit log: who registered, logged in (or failed to), logged out, changed a password,
// deleted a device or was deactivated; from which address and client, and when. Details are small
// JSON objects and never hold a password or a token.
import { and, desc, eq, lt } from "drizzle-orm";
import type { Logger } from "pino";
import { type Database, schema } from "../../schema/db.ts";
import type { RequestInfo } from "../http/route.ts";

export type AuditEvent =
  | "registered"
  | "login"
  | "login_failed"
  | "logout"
  | "password_changed"
  | "device_deleted"
  | "deactivated"
  | "uia_password_failed"
  /** An action through the admin API (/_synapse/admin/...); `detail.action` names it. */
  | "admin_action";

export interface AuditEntry {
  id: number;
  ts: number;
  event: string;
  userId: string | null;
  ip: string | null;
  userAgent: string | null;
  detail: Record<string, unknown>;
}

/** Where a security event came from: an HTTP request, or the admin command line. */
export type AuditSource = Pick<RequestInfo, "ip" | "userAgent"> | "cli";

export class AuditLog {
  constructor(
    private readonly db: Database,
    private readonly now: () => number,
    private readonly logger: Logger,
  ) {}

  async record(
    event: AuditEvent,
    userId: string | undefined,
    source: AuditSource,
    detail: Record<string, unknown> = {},
  ): Promise<void> {
    const fromCli = source === "cli";
    await this.db.insert(schema.auditLog).values({
      ts: this.now(),
      event,
      userId: userId ?? null,
      ip: fromCli ? null : source.ip,
      userAgent: fromCli ? "parley admin" : source.userAgent,
      detail: fromCli ? { ...detail, via: "cli" } : detail,
    });
    this.logger.info({ audit: event, userId, ...(fromCli ? {} : { ip: source.ip }) }, "security event");
  }

  /** The newest entries first, optionally for one user and before an entry ID (paging). */
  async list(options: { userId?: string; limit?: number; beforeId?: number } = {}): Promise<AuditEntry[]> {
    const t = schema.auditLog;
    const conditions = [];
    if (options.userId) conditions.push(eq(t.userId, options.userId));
    if (options.beforeId) conditions.push(lt(t.id, options.beforeId));
    return this.db
      .select()
      .from(t)
      .where(conditions.length ? and(...conditions) : undefined)
      .orderBy(desc(t.id))
      .limit(options.limit ?? 50);
  }
}

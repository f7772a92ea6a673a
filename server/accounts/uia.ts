// User-interactive authentication: https://spec.matrix.org/latest/client-server-api/#user-interactive-authentication-api
//
// A protected request without `auth` is answered 401 `{flows, params, session}`. The client completes
// stages by repeating the request with `auth: {type, session, ...}`; each stage done is recorded in
// the session, and the request goes through once every stage of one flow is done. Sessions live in
// the database (another process may serve the next step), expire after UIA_SESSION_MS, authorise
// one operation for one user, and are deleted once used.
import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import { eq, lt } from "drizzle-orm";
import { type Database, schema } from "../../schema/db.ts";
import { forbidden, MatrixError } from "../http/errors.ts";
import type { RateLimiter } from "../ratelimit.ts";
import type { Accounts } from "./accounts.ts";
import type { AuditLog, AuditSource } from "./audit.ts";
import type { RegistrationTokens } from "./registration-tokens.ts";

const UIA_SESSION_MS = 10 * 60 * 1000;

export type UiaStage = "m.login.dummy" | "m.login.password" | "m.login.registration_token";

export interface UiaRequest {
  /** What the session authorises, e.g. `register` or `delete_devices`. */
  operation: string;
  /** For requests of a logged-in user: the user `m.login.password` must prove to be. */
  userId?: string;
  flows: UiaStage[][];
  params?: Record<string, unknown>;
  /**
   * The request's own parameters, to keep in the session: a later step that gives none uses the
   * kept ones ("registration remembers parameters"). Undefined: this step gave none.
   */
  remember?: Record<string, unknown>;
  /**
   * Keep the session once complete, so a retry of the finished request gets its result
   * (`finish`) instead of an unknown session (registration).
   */
  retryable?: boolean;
}

/** What a completed flow authorises. */
export interface UiaOutcome {
  sessionId: string;
  /** The parameters to act on: this step's, else those an earlier step of the session gave. */
  params: Record<string, unknown>;
  /** Set when the session had already finished its operation: what it produced. */
  result?: string;
  /**
   * The database registration token whose stage the session passed, holding a pending use: the
   * caller calls `RegistrationTokens.complete` with it once the account exists.
   */
  registrationToken?: string;
}

/** A 401 of user-interactive auth: the flows, the session and what is done, plus an error when a stage failed. */
export class UiaChallenge extends MatrixError {
  constructor(
    readonly body: Record<string, unknown>,
    errcode?: string,
    message?: string,
  ) {
    super(401, errcode ?? "M_UNAUTHORIZED", message ?? "User-interactive authentication is required");
    this.failed = errcode !== undefined;
  }
  private readonly failed: boolean;

  override toJSON(): Record<string, unknown> {
    return this.failed ? { errcode: this.errcode, error: this.message, ...this.body } : { ...this.body };
  }
}

export class UserInteractiveAuth {
  private readonly tokenHashes: Buffer[];

  constructor(
    private readonly db: Database,
    private readonly now: () => number,
    private readonly accounts: Accounts,
    private readonly audit: AuditLog,
    private readonly rateLimiter: RateLimiter,
    registrationTokens: readonly string[],
    /** The tokens made through the admin API, accepted besides the configured ones. */
    private readonly tokenStore: RegistrationTokens,
  ) {
    this.tokenHashes = registrationTokens.map(sha256);
  }

  /**
   * Resolves when `auth` completes a flow of `req`; otherwise throws the 401 that tells the client
   * what to do next (or 400/403 for a session that is unknown, expired or for something else).
   *
   * "Completed stages cannot be retried by clients, therefore servers must return either a 401
   * response with the completed stages, or the result of the API call if all stages were completed
   * when a client retries a stage": a retryable session (registration) answers with its result.
   */
  async require(req: UiaRequest, auth: unknown, source: AuditSource): Promise<UiaOutcome> {
    const flowsJson = req.flows.map((stages) => ({ stages }));
    const params = req.params ?? {};
    const a = isObject(auth) ? auth : undefined;
    const t = schema.uiaSessions;
    let sessionId = typeof a?.session === "string" ? a.session : undefined;
    let completed: string[] = [];
    let remembered: Record<string, unknown> = req.remember ?? {};
    let registrationToken: string | undefined;
    if (sessionId === undefined) {
      sessionId = await this.createSession(req);
    } else {
      const [session] = await this.db.select().from(t).where(eq(t.sessionId, sessionId));
      if (!session || session.createdTs + UIA_SESSION_MS < this.now()) {
        throw new MatrixError(400, "M_UNKNOWN", "Unknown or expired user-interactive auth session");
      }
      if (session.operation !== req.operation || session.userId !== (req.userId ?? null)) {
        throw forbidden("This user-interactive auth session was started for another request");
      }
      completed = session.completed;
      registrationToken = session.registrationToken ?? undefined;
      if (req.remember === undefined) remembered = session.params ?? {};
      else await this.db.update(t).set({ params: req.remember }).where(eq(t.sessionId, sessionId));
      const done = req.flows.some((flow) => flow.every((s) => completed.includes(s)));
      if (done && session.result !== null) return { sessionId, params: remembered, result: session.result, registrationToken };
    }
    const challenge = (errcode?: string, message?: string) =>
      new UiaChallenge(
        { flows: flowsJson, params, session: sessionId, ...(completed.length || a !== undefined ? { completed } : {}) },
        errcode,
        message,
      );

    if (a === undefined || typeof a.type !== "string") throw challenge();
    const stage = a.type;
    if (!req.flows.some((flow) => (flow as string[]).includes(stage))) {
      throw challenge("M_UNRECOGNIZED", `Authentication type ${stage} is not offered here`);
    }
    let failure: string | undefined;
    if (stage === "m.login.registration_token" && !this.isConfiguredToken(a.token)) {
      // A database token: one use is taken now (pending) and recorded in the session, once per
      // session, so a retried stage does not take a second.
      if (registrationToken === undefined) {
        if (typeof a.token === "string" && (await this.tokenStore.reserve(a.token))) {
          registrationToken = a.token;
          await this.db.update(t).set({ registrationToken }).where(eq(t.sessionId, sessionId));
        } else {
          failure = "Invalid registration token";
        }
      } else if (a.token !== registrationToken) {
        failure = "Invalid registration token";
      }
    } else {
      failure = await this.attempt(stage as UiaStage, a, req, source);
    }
    if (failure) throw challenge("M_FORBIDDEN", failure);
    if (!completed.includes(stage)) completed = [...completed, stage];

    if (req.flows.some((flow) => flow.every((s) => completed.includes(s)))) {
      if (req.retryable) await this.db.update(t).set({ completed }).where(eq(t.sessionId, sessionId));
      else await this.db.delete(t).where(eq(t.sessionId, sessionId));
      return { sessionId, params: remembered, registrationToken };
    }
    await this.db.update(t).set({ completed }).where(eq(t.sessionId, sessionId));
    throw challenge();
  }

  /** Records what a retryable session's operation produced, for retries of it. */
  async finish(sessionId: string, result: string): Promise<void> {
    const t = schema.uiaSessions;
    await this.db.update(t).set({ result }).where(eq(t.sessionId, sessionId));
  }

  /** Runs one stage; answers a reason when it failed. */
  private async attempt(stage: UiaStage, auth: Record<string, unknown>, req: UiaRequest, source: AuditSource) {
    switch (stage) {
      case "m.login.dummy":
        return undefined;
      case "m.login.registration_token":
        return this.isConfiguredToken(auth.token) ? undefined : "Invalid registration token";
      case "m.login.password": {
        if (!req.userId) return "Password authentication needs a logged-in user";
        const named = passwordUser(auth);
        const userId = named === undefined ? undefined : this.accounts.loginUserId(named);
        // Someone else's credentials (a stolen access token and the thief's own password) are
        // refused outright, whether or not they are right, as Synapse does.
        if (userId !== undefined && userId !== req.userId) {
          throw forbidden("The authenticated user does not match the user making the request");
        }
        const password = typeof auth.password === "string" ? auth.password : "";
        // Wrong passwords here are limited like logins: UIA must not become a way round the login limit.
        this.rateLimiter.take("login", req.userId);
        if (userId === req.userId && (await this.accounts.verifyPassword(req.userId, password))) return undefined;
        await this.audit.record("uia_password_failed", req.userId, source, { operation: req.operation });
        return "Invalid password";
      }
    }
  }

  private async createSession(req: UiaRequest): Promise<string> {
    const t = schema.uiaSessions;
    const now = this.now();
    // Expired sessions are swept here rather than by a timer: creating one is rare enough. A swept
    // session that passed a database token's stage without registering gives its use back.
    const expired = await this.db
      .delete(t)
      .where(lt(t.createdTs, now - UIA_SESSION_MS))
      .returning({ registrationToken: t.registrationToken, result: t.result });
    for (const s of expired) {
      if (s.registrationToken !== null && s.result === null) await this.tokenStore.release(s.registrationToken);
    }
    const sessionId = randomBytes(18).toString("base64url");
    await this.db
      .insert(t)
      .values({ sessionId, operation: req.operation, userId: req.userId ?? null, createdTs: now, params: req.remember ?? null });
    return sessionId;
  }

  /** Whether `token` is a usable registration token (`GET /register/m.login.registration_token/validity`). */
  async isRegistrationToken(token: string): Promise<boolean> {
    return this.isConfiguredToken(token) || (await this.tokenStore.isValid(token));
  }

  private isConfiguredToken(token: unknown): boolean {
    if (typeof token !== "string") return false;
    const h = sha256(token);
    return this.tokenHashes.some((t) => timingSafeEqual(t, h));
  }
}

/** The user named by a password auth dict: `identifier` (m.id.user), or the deprecated top-level `user`. */
export function passwordUser(body: Record<string, unknown>): string | undefined {
  const identifier = body.identifier;
  if (isObject(identifier)) {
    return identifier.type === "m.id.user" && typeof identifier.user === "string" ? identifier.user : undefined;
  }
  return typeof body.user === "string" ? body.user : undefined;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function sha256(s: string): Buffer {
  return createHash("sha256").update(s).digest();
}


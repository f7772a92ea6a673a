// Pushers: where a user's notifications are pushed (a push gateway URL per app and pushkey).
// https://spec.matrix.org/latest/client-server-api/#get_matrixclientv3pushers
// https://spec.matrix.org/latest/client-server-api/#post_matrixclientv3pushersset
//
// A pusher is keyed by (user, app_id, pushkey) and tied to the device whose access token set it: it
// goes when that device is deleted (logout, device deletion, a password change logging the other
// devices out, deactivation), as Synapse ties pushers to access tokens.
import { and, asc, eq, inArray, ne, sql } from "drizzle-orm";
import { type Database, rowsOf, schema } from "../../schema/db.ts";
import { MatrixError } from "../http/errors.ts";

/** The pusher as `GET /pushers` lists it. */
export interface PusherJson {
  pushkey: string;
  kind: string;
  app_id: string;
  app_display_name: string;
  device_display_name: string;
  profile_tag?: string;
  lang: string;
  data: Record<string, unknown>;
}

export interface SetPusherRequest {
  pushkey?: string;
  kind?: string | null;
  app_id?: string;
  app_display_name?: string;
  device_display_name?: string;
  profile_tag?: string;
  lang?: string;
  data?: Record<string, unknown>;
  append?: boolean;
}

/** A pusher as the sender uses it. */
export interface Pusher {
  id: number;
  userId: string;
  appId: string;
  pushkey: string;
  pushkeyTs: number;
  data: Record<string, unknown>;
  profileTag: string | null;
}

/** The path a push gateway URL must have (push-gateway-api, `POST /_matrix/push/v1/notify`). */
export const NOTIFY_PATH = "/_matrix/push/v1/notify";
const MAX_PUSHKEY_BYTES = 512;
const MAX_APP_ID_LENGTH = 64;

export class Pushers {
  constructor(
    private readonly db: Database,
    private readonly now: () => number,
  ) {}

  async list(userId: string): Promise<PusherJson[]> {
    const p = schema.pushers;
    const rows = await this.db.select().from(p).where(eq(p.userId, userId)).orderBy(asc(p.id));
    return rows.map((r) => ({
      pushkey: r.pushkey,
      kind: r.kind,
      app_id: r.appId,
      app_display_name: r.appDisplayName,
      device_display_name: r.deviceDisplayName,
      ...(r.profileTag === null ? {} : { profile_tag: r.profileTag }),
      lang: r.lang,
      data: r.data as Record<string, unknown>,
    }));
  }

  /** `POST /pushers/set`: creates, updates (`kind` set) or deletes (`kind: null`) the user's pusher. */
  async set(userId: string, deviceId: string | null, body: SetPusherRequest): Promise<void> {
    const absent = (["kind", "app_id", "pushkey"] as const).filter((k) => body[k] === undefined);
    if (absent.length) throw new MatrixError(400, "M_MISSING_PARAM", `Missing parameters: ${absent.join(", ")}`);
    const request = body as SetPusherRequest & { pushkey: string; app_id: string; kind: string | null };
    if (Buffer.byteLength(request.pushkey) > MAX_PUSHKEY_BYTES) throw new MatrixError(400, "M_INVALID_PARAM", "pushkey is longer than 512 bytes");
    if (request.app_id.length > MAX_APP_ID_LENGTH) throw new MatrixError(400, "M_INVALID_PARAM", "app_id is longer than 64 characters");
    const p = schema.pushers;
    if (request.kind === null) {
      await this.db.delete(p).where(and(eq(p.userId, userId), eq(p.appId, request.app_id), eq(p.pushkey, request.pushkey)));
      return;
    }
    const missing = (["app_display_name", "device_display_name", "lang", "data"] as const).filter((k) => request[k] === undefined);
    if (missing.length) throw new MatrixError(400, "M_MISSING_PARAM", `Missing parameters: ${missing.join(", ")}`);
    const data = request.data!;
    if (request.kind === "http") {
      if (typeof data.url !== "string") throw new MatrixError(400, "M_MISSING_PARAM", "data.url is required for an http pusher");
      checkGatewayUrl(data.url);
      // Only `event_id_only` changes what is sent; another format is kept and forwarded (the gateway
      // gets `data` whole), and the notification is sent in full, as Synapse does.
      if (data.format !== undefined && typeof data.format !== "string") throw new MatrixError(400, "M_INVALID_PARAM", "data.format must be a string");
    } else if (request.kind === "email") {
      // The spec defines email pushers but lets a server not support them; this one sends no email.
      throw new MatrixError(400, "M_INVALID_PARAM", "email pushers are not supported by this server");
    } else {
      throw new MatrixError(400, "M_INVALID_PARAM", `Unknown pusher kind ${request.kind}`);
    }
    const now = this.now();
    const values = {
      userId,
      deviceId,
      appId: request.app_id,
      pushkey: request.pushkey,
      kind: request.kind,
      appDisplayName: request.app_display_name!,
      deviceDisplayName: request.device_display_name!,
      profileTag: request.profile_tag ?? null,
      lang: request.lang!,
      data,
      pushkeyTs: now,
    };
    await this.db.transaction(async (tx) => {
      // Without `append`, the same app_id and pushkey of any other user goes (spec: "the homeserver
      // must remove any other pushers with the same App ID and pushkey for different users").
      if (!request.append) {
        await tx.delete(p).where(and(eq(p.appId, request.app_id), eq(p.pushkey, request.pushkey), ne(p.userId, userId)));
      }
      await tx
        .insert(p)
        .values(values)
        .onConflictDoUpdate({
          target: [p.userId, p.appId, p.pushkey],
          set: {
            deviceId,
            kind: values.kind,
            appDisplayName: values.appDisplayName,
            deviceDisplayName: values.deviceDisplayName,
            profileTag: values.profileTag,
            lang: values.lang,
            data: values.data,
            pushkeyTs: now,
          },
        });
    });
  }

  /** The device's pushers go with it. */
  async devicesDeleted(userId: string, deviceIds: readonly string[]): Promise<void> {
    if (deviceIds.length === 0) return;
    const p = schema.pushers;
    await this.db.delete(p).where(and(eq(p.userId, userId), inArray(p.deviceId, [...deviceIds])));
  }

  /** Every pusher of a deactivated user goes. */
  async userDeactivated(userId: string): Promise<void> {
    const p = schema.pushers;
    await this.db.delete(p).where(eq(p.userId, userId));
  }

  /** A pushkey the gateway rejected: that pusher goes (push-gateway-api, `rejected`). */
  async rejected(pusherIds: readonly number[]): Promise<void> {
    if (pusherIds.length === 0) return;
    const p = schema.pushers;
    await this.db.delete(p).where(inArray(p.id, [...pusherIds]));
  }

  /** The http pushers of these users. */
  async httpPushersOf(userIds: readonly string[]): Promise<Pusher[]> {
    if (userIds.length === 0) return [];
    const p = schema.pushers;
    const rows = await this.db
      .select()
      .from(p)
      .where(and(inArray(p.userId, [...userIds]), eq(p.kind, "http")));
    return rows.map(toPusher);
  }

  async byIds(ids: readonly number[]): Promise<Map<number, Pusher>> {
    if (ids.length === 0) return new Map();
    const p = schema.pushers;
    const rows = await this.db.select().from(p).where(inArray(p.id, [...ids]));
    return new Map(rows.map((r) => [r.id, toPusher(r)]));
  }

  /** Whether the user has an http pusher (cheap: the receipt path asks it). */
  async hasPushers(userId: string): Promise<boolean> {
    return rowsOf(await this.db.execute(sql`select 1 from pushers where user_id = ${userId} and kind = 'http' limit 1`)).length > 0;
  }
}

function toPusher(r: typeof schema.pushers.$inferSelect): Pusher {
  return {
    id: r.id,
    userId: r.userId,
    appId: r.appId,
    pushkey: r.pushkey,
    pushkeyTs: r.pushkeyTs,
    data: r.data as Record<string, unknown>,
    profileTag: r.profileTag,
  };
}

/**
 * `data.url` of an http pusher: an absolute http(s) URL whose path is `/_matrix/push/v1/notify`.
 * The spec asks for HTTPS; plain HTTP is accepted as Synapse does (a gateway on a private network),
 * and where the URL may point is decided when pushing (the address policy, `push_gateways_insecure`).
 */
export function checkGatewayUrl(raw: string): URL {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new MatrixError(400, "M_INVALID_PARAM", "data.url is not a URL");
  }
  if (url.protocol !== "https:" && url.protocol !== "http:") throw new MatrixError(400, "M_INVALID_PARAM", "data.url must be an http(s) URL");
  if (url.pathname !== NOTIFY_PATH) throw new MatrixError(400, "M_INVALID_PARAM", `data.url must have the path ${NOTIFY_PATH}`);
  if (url.username || url.password) throw new MatrixError(400, "M_INVALID_PARAM", "data.url must not carry credentials");
  return url;
}

// Device identity keys, one-time keys and fallback keys.
// https://spec.matrix.org/latest/client-server-api/#post_matrixclientv3keysupload
// https://spec.matrix.org/latest/client-server-api/#post_matrixclientv3keysclaim
// https://spec.matrix.org/latest/client-server-api/#one-time-and-fallback-keys
import { and, eq, inArray, sql } from "drizzle-orm";
import { dictionaryOf } from "../../federation/protocol/dictionary.ts";
import { type Database, rowsOf, schema } from "../../schema/db.ts";
import { MatrixError } from "../http/errors.ts";
import type { DeviceLists, Queryable } from "./device-lists.ts";
import { canonicalOrBadJson, isJsonObject, type JsonObject, signedContent } from "./signed-json.ts";

export interface UploadKeys {
  device_keys?: JsonObject;
  one_time_keys?: Record<string, unknown>;
  fallback_keys?: Record<string, unknown>;
}

export interface ClaimRequest {
  userId: string;
  deviceId: string;
  algorithm: string;
}

export interface ClaimedKey extends ClaimRequest {
  /** `<algorithm>:<key ID>` */
  keyId: string;
  key: unknown;
  /** The device had no one-time key left, so its fallback key was handed out. */
  fallback: boolean;
}

interface ParsedKey {
  algorithm: string;
  keyId: string;
  json: string;
}

/** Rust crypto reads `signed_curve25519` from every count, so it is always present (0 when none). */
const ALWAYS_COUNTED = "signed_curve25519";
const MAX_KEY_ID_LENGTH = 255;
const INSERT_CHUNK = 500;

/** Devices whose one-time or fallback keys changed (an upload, a claim), called after the change is committed. */
export type KeyCountsListener = (devices: ReadonlyArray<{ userId: string; deviceId: string }>) => void;

export class DeviceKeys {
  private readonly keyCountsListeners: KeyCountsListener[] = [];

  constructor(
    private readonly db: Database,
    private readonly deviceLists: DeviceLists,
  ) {}

  /** Called when devices' one-time or fallback key counts change (`/sync` caches them). */
  onKeyCountsChanged(listener: KeyCountsListener): void {
    this.keyCountsListeners.push(listener);
  }

  private keyCountsChanged(devices: ReadonlyArray<{ userId: string; deviceId: string }>): void {
    if (devices.length === 0) return;
    for (const listener of this.keyCountsListeners) listener(devices);
  }

  /**
   * `/keys/upload` for the requester's device. Device keys must name this user and device and be
   * signed by the device's own Ed25519 key; once a device has identity keys they cannot change
   * (a different key for the same device ID would let the server, or a thief of the access token,
   * swap a device's identity under its contacts). A one-time key ID already stored with different
   * content is refused; the same content again is fine. A fallback key replaces the device's
   * previous one of its algorithm. Nothing is stored unless everything is accepted.
   */
  async upload(userId: string, deviceId: string, body: UploadKeys): Promise<Record<string, number>> {
    const deviceKeys = body.device_keys !== undefined ? checkDeviceKeys(userId, deviceId, body.device_keys) : undefined;
    const oneTimeKeys = parseKeyMap(body.one_time_keys ?? {}, "one_time_keys");
    const fallbackKeys = parseKeyMap(body.fallback_keys ?? {}, "fallback_keys");
    const fallbackAlgorithms = new Set<string>();
    for (const k of fallbackKeys) {
      if (fallbackAlgorithms.has(k.algorithm)) {
        throw new MatrixError(400, "M_INVALID_PARAM", `fallback_keys: more than one ${k.algorithm} key`);
      }
      fallbackAlgorithms.add(k.algorithm);
    }

    const position = await this.db.transaction(async (tx) => {
      const changed = deviceKeys ? await this.storeDeviceKeys(tx, userId, deviceId, deviceKeys) : false;
      if (oneTimeKeys.length) await this.storeOneTimeKeys(tx, userId, deviceId, oneTimeKeys);
      if (fallbackKeys.length) await this.storeFallbackKeys(tx, userId, deviceId, fallbackKeys);
      return changed ? this.deviceLists.record(tx, [{ userId, deviceId }]) : 0;
    });
    this.deviceLists.notify([userId], position, [{ userId, deviceId }]);
    if (oneTimeKeys.length || fallbackKeys.length) this.keyCountsChanged([{ userId, deviceId }]);
    return this.oneTimeKeyCounts(userId, deviceId);
  }

  private async storeDeviceKeys(tx: Queryable, userId: string, deviceId: string, keys: DeviceKeysToStore): Promise<boolean> {
    const t = schema.e2eDeviceKeys;
    const [existing] = await tx
      .select({ keyJson: t.keyJson })
      .from(t)
      .where(and(eq(t.userId, userId), eq(t.deviceId, deviceId)))
      .for("update");
    if (existing) {
      if (existing.keyJson === keys.json) return false;
      const old = JSON.parse(existing.keyJson) as JsonObject;
      // Once a device has an identity key, its keys cannot change (placeholders before may).
      const oldKey = isJsonObject(old.keys) ? old.keys[`ed25519:${deviceId}`] : undefined;
      if (oldKey !== undefined && canonicalOrBadJson(old.keys, "keys") !== canonicalOrBadJson(keys.object.keys ?? null, "keys")) {
        throw new MatrixError(
          400,
          "M_INVALID_PARAM",
          `Device ${deviceId} already has different identity keys; log in as a new device to use new keys`,
        );
      }
      await tx
        .update(t)
        .set({ keyJson: keys.json })
        .where(and(eq(t.userId, userId), eq(t.deviceId, deviceId)));
    } else {
      await tx.insert(t).values({ userId, deviceId, keyJson: keys.json });
    }
    return true;
  }

  private async storeOneTimeKeys(tx: Queryable, userId: string, deviceId: string, keys: ParsedKey[]): Promise<void> {
    const t = schema.e2eOneTimeKeys;
    for (let i = 0; i < keys.length; i += INSERT_CHUNK) {
      const chunk = keys.slice(i, i + INSERT_CHUNK);
      const existing = await tx
        .select({ algorithm: t.algorithm, keyId: t.keyId, keyJson: t.keyJson })
        .from(t)
        .where(and(eq(t.userId, userId), eq(t.deviceId, deviceId), inArray(t.keyId, chunk.map((k) => k.keyId))));
      const stored = new Map(existing.map((r) => [`${r.algorithm}:${r.keyId}`, r.keyJson]));
      for (const k of chunk) {
        const old = stored.get(`${k.algorithm}:${k.keyId}`);
        if (old !== undefined && old !== k.json) {
          throw new MatrixError(
            400,
            "M_INVALID_PARAM",
            `One-time key ${k.algorithm}:${k.keyId} already exists with different content`,
          );
        }
      }
      await tx
        .insert(t)
        .values(chunk.map((k) => ({ userId, deviceId, algorithm: k.algorithm, keyId: k.keyId, keyJson: k.json })))
        .onConflictDoNothing();
    }
  }

  private async storeFallbackKeys(tx: Queryable, userId: string, deviceId: string, keys: ParsedKey[]): Promise<void> {
    const t = schema.e2eFallbackKeys;
    for (const k of keys) {
      // The same key uploaded again keeps its `used` flag; a new one starts unused.
      await tx
        .insert(t)
        .values({ userId, deviceId, algorithm: k.algorithm, keyId: k.keyId, keyJson: k.json, used: false })
        .onConflictDoUpdate({
          target: [t.userId, t.deviceId, t.algorithm],
          set: { keyId: k.keyId, keyJson: k.json, used: false },
          setWhere: sql`${t.keyId} <> ${k.keyId} or ${t.keyJson} <> ${k.json}`,
        });
    }
  }

  /** Unclaimed one-time keys of a device, by algorithm (`device_one_time_keys_count` of `/sync`). */
  async oneTimeKeyCounts(userId: string, deviceId: string): Promise<Record<string, number>> {
    const t = schema.e2eOneTimeKeys;
    const rows = await this.db
      .select({ algorithm: t.algorithm, count: sql<number>`count(*)::int` })
      .from(t)
      .where(and(eq(t.userId, userId), eq(t.deviceId, deviceId)))
      .groupBy(t.algorithm);
    // Algorithm names are the uploader's (`__proto__:AAAA` is a valid key name).
    const counts = dictionaryOf<number>([[ALWAYS_COUNTED, 0]]);
    for (const r of rows) counts[r.algorithm] = Number(r.count);
    return counts;
  }

  /** The algorithms of a device's fallback keys not yet handed out (`device_unused_fallback_key_types` of `/sync`). */
  async unusedFallbackKeyTypes(userId: string, deviceId: string): Promise<string[]> {
    const t = schema.e2eFallbackKeys;
    const rows = await this.db
      .select({ algorithm: t.algorithm })
      .from(t)
      .where(and(eq(t.userId, userId), eq(t.deviceId, deviceId), eq(t.used, false)));
    return rows.map((r) => r.algorithm).sort();
  }

  /**
   * `oneTimeKeyCounts` and `unusedFallbackKeyTypes` of several devices in two queries (the long-polls
   * a message wakes all ask at once). Keyed by `userId\u0000deviceId`.
   */
  async keyCountsOf(
    devices: ReadonlyArray<{ userId: string; deviceId: string }>,
  ): Promise<Map<string, { oneTimeKeyCounts: Record<string, number>; unusedFallbackKeyTypes: string[] }>> {
    const out = new Map<string, { oneTimeKeyCounts: Record<string, number>; unusedFallbackKeyTypes: string[] }>();
    if (devices.length === 0) return out;
    for (const d of devices) out.set(`${d.userId}\u0000${d.deviceId}`, { oneTimeKeyCounts: dictionaryOf([[ALWAYS_COUNTED, 0]]), unusedFallbackKeyTypes: [] });
    const otk = schema.e2eOneTimeKeys;
    const fallback = schema.e2eFallbackKeys;
    const pairs = (t: typeof otk | typeof fallback) =>
      sql`(${t.userId}, ${t.deviceId}) in (${sql.join(devices.map((d) => sql`(${d.userId}, ${d.deviceId})`), sql`, `)})`;
    const [counts, unused] = await Promise.all([
      this.db
        .select({ userId: otk.userId, deviceId: otk.deviceId, algorithm: otk.algorithm, count: sql<number>`count(*)::int` })
        .from(otk)
        .where(pairs(otk))
        .groupBy(otk.userId, otk.deviceId, otk.algorithm),
      this.db
        .select({ userId: fallback.userId, deviceId: fallback.deviceId, algorithm: fallback.algorithm })
        .from(fallback)
        .where(and(pairs(fallback), eq(fallback.used, false))),
    ]);
    for (const r of counts) out.get(`${r.userId}\u0000${r.deviceId}`)!.oneTimeKeyCounts[r.algorithm] = Number(r.count);
    for (const r of unused) out.get(`${r.userId}\u0000${r.deviceId}`)!.unusedFallbackKeyTypes.push(r.algorithm);
    for (const v of out.values()) v.unusedFallbackKeyTypes.sort();
    return out;
  }

  /** The stored device keys of one user: all devices, or those listed. */
  async deviceKeysOf(userId: string, deviceIds?: readonly string[]): Promise<Map<string, JsonObject>> {
    const t = schema.e2eDeviceKeys;
    if (deviceIds !== undefined && deviceIds.length === 0) return new Map();
    const rows = await this.db
      .select({ deviceId: t.deviceId, keyJson: t.keyJson })
      .from(t)
      .where(and(eq(t.userId, userId), deviceIds === undefined ? undefined : inArray(t.deviceId, [...deviceIds])));
    return new Map(rows.map((r) => [r.deviceId, JSON.parse(r.keyJson) as JsonObject]));
  }

  /**
   * Claims one key per request: a one-time key, each handed out exactly once even when claims race
   * (one `DELETE ... RETURNING` of a row locked with SKIP LOCKED, so two claims never get the same
   * row and never wait on each other); when the device has none left, its fallback key, which is
   * then marked used. Devices with neither are left out.
   */
  async claim(requests: readonly ClaimRequest[]): Promise<ClaimedKey[]> {
    const claimed: ClaimedKey[] = [];
    for (const r of requests) {
      const rows = rowsOf<{ key_id: string; key_json: string }>(
        await this.db.execute(sql`
          delete from e2e_one_time_keys
          where (user_id, device_id, algorithm, key_id) = (
            select user_id, device_id, algorithm, key_id from e2e_one_time_keys
            where user_id = ${r.userId} and device_id = ${r.deviceId} and algorithm = ${r.algorithm}
            order by key_id
            limit 1
            for update skip locked)
          returning key_id, key_json`),
      );
      const one = rows[0];
      if (one) {
        claimed.push({ ...r, keyId: `${r.algorithm}:${one.key_id}`, key: JSON.parse(one.key_json), fallback: false });
        continue;
      }
      const t = schema.e2eFallbackKeys;
      const [fallback] = await this.db
        .update(t)
        .set({ used: true })
        .where(and(eq(t.userId, r.userId), eq(t.deviceId, r.deviceId), eq(t.algorithm, r.algorithm)))
        .returning({ keyId: t.keyId, keyJson: t.keyJson });
      if (fallback) {
        claimed.push({ ...r, keyId: `${r.algorithm}:${fallback.keyId}`, key: JSON.parse(fallback.keyJson), fallback: true });
      }
    }
    this.keyCountsChanged(claimed.map((c) => ({ userId: c.userId, deviceId: c.deviceId })));
    return claimed;
  }

  /** Removes the keys of deleted devices, in the caller's transaction. */
  async deleteDevices(q: Queryable, userId: string, deviceIds: readonly string[]): Promise<void> {
    const ids = [...deviceIds];
    for (const t of [schema.e2eDeviceKeys, schema.e2eOneTimeKeys, schema.e2eFallbackKeys]) {
      await q.delete(t).where(and(eq(t.userId, userId), inArray(t.deviceId, ids)));
    }
  }
}

interface DeviceKeysToStore {
  object: JsonObject;
  json: string;
}

function checkDeviceKeys(userId: string, deviceId: string, keys: JsonObject): DeviceKeysToStore {
  if (keys.user_id !== userId || keys.device_id !== deviceId) {
    throw new MatrixError(
      400,
      "M_INVALID_PARAM",
      `device_keys must be for user ${userId} and device ${deviceId}, the requester's own device`,
    );
  }
  // The spec's DeviceKeys has `algorithms`, `keys` and `signatures`, but /keys/upload names no
  // error for their absence, and Synapse stores what it gets (sytest's own upload helper sends
  // none of them). Each may be missing; present, it must have its type. The server does not check
  // the keys' self-signature either (the spec asks it of no server, and Synapse does not): the keys
  // serve the clients that query them, which verify it before trusting the device.
  if (keys.algorithms !== undefined && !(Array.isArray(keys.algorithms) && keys.algorithms.every((a) => typeof a === "string"))) {
    throw new MatrixError(400, "M_BAD_JSON", "device_keys.algorithms must be a list of strings");
  }
  if (keys.keys !== undefined && !(isJsonObject(keys.keys) && Object.values(keys.keys).every((k) => typeof k === "string"))) {
    throw new MatrixError(400, "M_BAD_JSON", "device_keys.keys must map key IDs to strings");
  }
  // `unsigned` is ours to fill in (the display name), not the client's.
  const object = { ...signedContent(keys), ...(keys.signatures !== undefined ? { signatures: keys.signatures } : {}) };
  return { object, json: canonicalOrBadJson(object, "device_keys") };
}

function parseKeyMap(map: Record<string, unknown>, field: string): ParsedKey[] {
  const keys: ParsedKey[] = [];
  for (const [name, value] of Object.entries(map)) {
    const colon = name.indexOf(":");
    const algorithm = name.slice(0, colon);
    const keyId = name.slice(colon + 1);
    if (colon <= 0 || keyId === "" || algorithm.length > MAX_KEY_ID_LENGTH || keyId.length > MAX_KEY_ID_LENGTH) {
      throw new MatrixError(400, "M_INVALID_PARAM", `${field}: "${name.slice(0, 64)}" is not <algorithm>:<key ID>`);
    }
    if (typeof value !== "string" && !isJsonObject(value)) {
      throw new MatrixError(400, "M_BAD_JSON", `${field}.${name}: a key is a string or an object`);
    }
    keys.push({ algorithm, keyId, json: canonicalOrBadJson(value, `${field}.${name}`) });
  }
  return keys;
}

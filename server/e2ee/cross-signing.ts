// Cross-signing keys and the signatures made with them.
// https://spec.matrix.org/latest/client-server-api/#cross-signing
// https://spec.matrix.org/latest/client-server-api/#post_matrixclientv3keysdevice_signingupload
// https://spec.matrix.org/latest/client-server-api/#post_matrixclientv3keyssignaturesupload
//
// A user has at most one key of each type: `master` (signs the other two, and is what other users
// verify), `self_signing` (signs the user's own devices) and `user_signing` (signs other users'
// master keys, seen only by the user themself). Signatures uploaded later are stored apart from the
// keys and merged into them when keys are queried, each shown to whom it concerns.
import { createHash } from "node:crypto";
import { and, eq, inArray, or, sql } from "drizzle-orm";
import { CanonicalJsonError, canonicalJson } from "../../federation/protocol/canonical-json.ts";
import { dictionary, dictionaryOf } from "../../federation/protocol/dictionary.ts";
import { type Database, schema } from "../../schema/db.ts";
import type { Accounts } from "../accounts/accounts.ts";
import { isLocalUser } from "../accounts/user-id.ts";
import type { AuditSource } from "../accounts/audit.ts";
import type { UserInteractiveAuth } from "../accounts/uia.ts";
import { MatrixError } from "../http/errors.ts";
import type { DeviceKeys } from "./device-keys.ts";
import type { DeviceListChange, DeviceLists, Queryable } from "./device-lists.ts";
import {
  canonicalOrBadJson,
  ed25519PublicKey,
  hasValidSignature,
  invalidSignature,
  isJsonObject,
  type JsonObject,
  signaturesOf,
  signedContent,
} from "./signed-json.ts";

export type CrossSigningKeyType = "master" | "self_signing" | "user_signing";
const KEY_TYPES: readonly CrossSigningKeyType[] = ["master", "self_signing", "user_signing"];

export interface CrossSigningUpload {
  master_key?: JsonObject;
  self_signing_key?: JsonObject;
  user_signing_key?: JsonObject;
  auth?: Record<string, unknown>;
}

export interface CrossSigningKey {
  publicKey: string;
  key: JsonObject;
}

export type CrossSigningKeys = Partial<Record<CrossSigningKeyType, CrossSigningKey>>;

/** Per-key failures of `/keys/signatures/upload`: user ID → key ID → error. */
export type SignatureFailures = Record<string, Record<string, { errcode: string; error: string }>>;

interface StoredSignature {
  targetUserId: string;
  targetKeyId: string;
  signerUserId: string;
  signerKeyId: string;
  signature: string;
}

/** Reads a user of another server's current master key (from their server), or undefined when they have none. */
export type RemoteMasterKeys = (userId: string) => Promise<CrossSigningKey | undefined>;

export class CrossSigning {
  private remoteMasterKey?: RemoteMasterKeys;

  constructor(
    private readonly db: Database,
    private readonly deviceKeys: DeviceKeys,
    private readonly deviceLists: DeviceLists,
    private readonly accounts: Accounts,
    private readonly uia: UserInteractiveAuth,
  ) {}

  /** How to read other servers' users' master keys (the e2ee component's remote key queries). */
  useRemoteMasterKeys(fetch: RemoteMasterKeys): void {
    this.remoteMasterKey = fetch;
  }

  /** The current cross-signing keys of some users, as uploaded (without later signatures). */
  async keysOf(userIds: readonly string[]): Promise<Map<string, CrossSigningKeys>> {
    const out = new Map<string, CrossSigningKeys>();
    if (userIds.length === 0) return out;
    const t = schema.e2eCrossSigningKeys;
    const rows = await this.db.select().from(t).where(inArray(t.userId, [...userIds]));
    for (const r of rows) {
      let keys = out.get(r.userId);
      if (!keys) out.set(r.userId, (keys = {}));
      keys[r.keyType as CrossSigningKeyType] = { publicKey: r.publicKey, key: JSON.parse(r.keyJson) as JsonObject };
    }
    return out;
  }

  /**
   * `/keys/device_signing/upload`. Each key must belong to the requester, carry the right usage and
   * one Ed25519 key; the self-signing and user-signing keys must be signed by the master key (the
   * one uploaded with them, else the stored one). No user-interactive auth is asked for the first
   * upload (no master key yet) or an upload identical to the stored keys (spec v1.11, MSC3967);
   * replacing keys needs the account password, as matrix-js-sdk sends it.
   */
  async uploadKeys(userId: string, upload: CrossSigningUpload, source: AuditSource): Promise<void> {
    const uploaded: CrossSigningKeys = {};
    for (const type of KEY_TYPES) {
      const key = upload[`${type}_key`];
      if (key !== undefined) uploaded[type] = checkKeyShape(userId, type, key);
    }
    if (Object.keys(uploaded).length === 0) return;
    const stored = (await this.keysOf([userId])).get(userId) ?? {};

    const master = uploaded.master ?? stored.master;
    for (const type of ["self_signing", "user_signing"] as const) {
      const key = uploaded[type];
      if (!key) continue;
      if (!master) throw new MatrixError(400, "M_MISSING_PARAM", `No master key to check the ${type} key against`);
      if (!hasValidSignature(key.key, userId, master.publicKey, master.publicKey)) {
        throw invalidSignature(`The ${type} key is not signed by the master key`);
      }
    }
    const devices = new Set((await this.accounts.listDevices(userId)).map((d) => d.device_id));
    for (const [type, key] of Object.entries(uploaded)) {
      if (devices.has(key.publicKey)) throw new MatrixError(403, "M_FORBIDDEN", `The ${type} key's ID is one of your device IDs`);
    }

    const json = (k: CrossSigningKey) => canonicalOrBadJson(k.key, "cross-signing key");
    const identical = KEY_TYPES.every((type) => {
      const u = uploaded[type];
      const s = stored[type];
      return u === undefined || (s !== undefined && json(u) === json(s));
    });
    if (identical && stored.master) return;
    if (stored.master) {
      // The session authorises exactly these keys.
      const digest = createHash("sha256")
        .update(canonicalJson(KEY_TYPES.map((t) => (uploaded[t] ? json(uploaded[t]) : null))))
        .digest("hex");
      await this.uia.require(
        { operation: `device_signing_upload:${digest}`, userId, flows: [["m.login.password"]] },
        upload.auth,
        source,
      );
    }

    // A new user-signing key alone concerns the user's own devices: others never see it in
    // /keys/query, nor do other servers (m.signing_key_update carries the master and self-signing
    // keys). Synapse tells only the user too (sytest "Changing user-signing key notifies local users").
    const changes: DeviceListChange[] = [uploaded.master || uploaded.self_signing ? { userId } : { userId, selfOnly: true }];
    const position = await this.db.transaction(async (tx) => {
      const t = schema.e2eCrossSigningKeys;
      const s = schema.e2eCrossSigningSignatures;
      for (const [type, key] of Object.entries(uploaded) as [CrossSigningKeyType, CrossSigningKey][]) {
        const old = stored[type];
        if (old && old.publicKey !== key.publicKey) {
          // Signatures made by the old key, and (for a master key) of it, mean nothing any more.
          await tx
            .delete(s)
            .where(and(eq(s.signerUserId, userId), eq(s.signerKeyId, `ed25519:${old.publicKey}`)));
          if (type === "master") {
            await tx.delete(s).where(and(eq(s.targetUserId, userId), eq(s.targetKeyId, old.publicKey)));
          }
        }
        await tx
          .insert(t)
          .values({ userId, keyType: type, publicKey: key.publicKey, keyJson: json(key) })
          .onConflictDoUpdate({ target: [t.userId, t.keyType], set: { publicKey: key.publicKey, keyJson: json(key) } });
      }
      return this.deviceLists.record(tx, changes);
    });
    this.deviceLists.notify([userId], position, changes);
  }

  /**
   * `/keys/signatures/upload`: `{userId: {keyId: signedObject}}`. Accepted are signatures of one's
   * own devices by one's self-signing key, of one's own master key by one's devices, and of other
   * users' master keys by one's user-signing key. The object must be the stored key (apart from
   * `signatures`); every signature is verified. What fails is reported per key, the rest is kept.
   */
  async uploadSignatures(userId: string, body: Record<string, Record<string, JsonObject>>): Promise<SignatureFailures> {
    // User and key IDs are the uploader's to choose: `constructor` must not find the global Object.
    const failures: SignatureFailures = dictionary();
    const fail = (user: string, keyId: string, errcode: string, error: string) => {
      (failures[user] ??= dictionary())[keyId] = { errcode, error };
    };
    const accepted: StoredSignature[] = [];
    const changes: DeviceListChange[] = [];

    const targetUsers = Object.keys(body);
    const keys = await this.keysOf([...new Set([userId, ...targetUsers])]);
    const own = keys.get(userId) ?? {};

    for (const [targetUser, objects] of Object.entries(body)) {
      for (const [keyId, object] of Object.entries(objects)) {
        if (!isJsonObject(object)) {
          fail(targetUser, keyId, "M_BAD_JSON", "Not a signed key object");
          continue;
        }
        const mine = signaturesOf(object)[userId] ?? dictionary();
        if (targetUser === userId) {
          if (own.master && keyId === own.master.publicKey) {
            // Our own master key, signed by our devices.
            const result = await this.signaturesOfOwnMasterKey(userId, own.master, object, mine);
            if ("error" in result) fail(targetUser, keyId, result.errcode, result.error);
            else accepted.push(...result.signatures);
            continue;
          }
          const device = (await this.deviceKeys.deviceKeysOf(userId, [keyId])).get(keyId);
          if (!device) {
            fail(targetUser, keyId, "M_NOT_FOUND", "No such device or key");
            continue;
          }
          const ssk = own.self_signing;
          if (!ssk) {
            fail(targetUser, keyId, "M_INVALID_SIGNATURE", "You have no self-signing key");
            continue;
          }
          const check = signatureBy(object, device, userId, ssk.publicKey, mine);
          if (check) fail(targetUser, keyId, check.errcode, check.error);
          else accepted.push(sig(userId, keyId, userId, ssk.publicKey, mine));
          continue;
        }
        // Another user's master key, signed by our user-signing key. A user of another server's
        // key is read from their server (as Synapse does): verifying someone across servers is
        // the usual case. The signature is kept here, seen only by its maker, as for local users.
        let theirMaster = keys.get(targetUser)?.master;
        if (!isLocalUser(targetUser, this.accounts.serverName)) {
          try {
            theirMaster = await this.remoteMasterKey?.(targetUser);
          } catch (err) {
            fail(targetUser, keyId, "M_UNKNOWN", `Could not read the user's master key from their server: ${(err as Error)?.message ?? err}`.slice(0, 300));
            continue;
          }
        }
        if (!theirMaster || keyId !== theirMaster.publicKey) {
          fail(targetUser, keyId, "M_NOT_FOUND", "Only another user's current master key can be signed");
          continue;
        }
        const usk = own.user_signing;
        if (!usk) {
          fail(targetUser, keyId, "M_INVALID_SIGNATURE", "You have no user-signing key");
          continue;
        }
        const check = signatureBy(object, theirMaster.key, userId, usk.publicKey, mine);
        if (check) fail(targetUser, keyId, check.errcode, check.error);
        else accepted.push(sig(targetUser, keyId, userId, usk.publicKey, mine));
      }
    }

    if (accepted.length) {
      for (const a of accepted) {
        changes.push(
          a.targetUserId === userId ? { userId, deviceId: a.targetKeyId } : { userId, selfOnly: true, signedUserId: a.targetUserId },
        );
      }
      const recorded = dedupe(changes);
      const position = await this.db.transaction(async (tx) => {
        const s = schema.e2eCrossSigningSignatures;
        await tx
          .insert(s)
          .values(accepted)
          .onConflictDoUpdate({
            target: [s.targetUserId, s.targetKeyId, s.signerUserId, s.signerKeyId],
            set: { signature: sql`excluded.signature` },
          });
        return this.deviceLists.record(tx, recorded);
      });
      this.deviceLists.notify([userId], position, recorded);
    }
    return failures;
  }

  private async signaturesOfOwnMasterKey(
    userId: string,
    master: CrossSigningKey,
    object: JsonObject,
    mine: Record<string, string>,
  ): Promise<{ signatures: StoredSignature[] } | { errcode: string; error: string }> {
    if (!sameSignedContent(object, master.key)) {
      return { errcode: "M_INVALID_PARAM", error: "The signed object is not your current master key" };
    }
    // Signatures already in the uploaded key (Rust crypto signs the master key with its device
    // when it creates it) come back unchanged; only the new ones are checked and stored.
    const known = signaturesOf(master.key)[userId] ?? dictionary();
    const fresh = Object.keys(mine).filter((k) => known[k] !== mine[k]);
    const deviceIds = fresh.filter((k) => k.startsWith("ed25519:")).map((k) => k.slice("ed25519:".length));
    if (deviceIds.length !== fresh.length) return { errcode: "M_INVALID_SIGNATURE", error: "Unknown signing key" };
    const devices = await this.deviceKeys.deviceKeysOf(userId, deviceIds);
    const signatures: StoredSignature[] = [];
    for (const deviceId of deviceIds) {
      const device = devices.get(deviceId);
      const key = isJsonObject(device?.keys) ? device.keys[`ed25519:${deviceId}`] : undefined;
      if (typeof key !== "string" || !hasValidSignature(object, userId, deviceId, key)) {
        return { errcode: "M_INVALID_SIGNATURE", error: `Invalid signature by device ${deviceId}` };
      }
      signatures.push(sig(userId, master.publicKey, userId, deviceId, mine));
    }
    return { signatures };
  }

  /**
   * Merges stored signatures into key objects, as `viewer` may see them: a user's signatures of
   * their own keys, and the viewer's own signatures (a user-signing signature is private to its
   * maker). `targets` maps a target key ID (device ID or master public key) to its object, which is
   * changed in place.
   */
  async mergeSignatures(viewer: string, targetUserId: string, targets: Map<string, JsonObject>): Promise<void> {
    if (targets.size === 0) return;
    const s = schema.e2eCrossSigningSignatures;
    const rows = await this.db
      .select()
      .from(s)
      .where(
        and(
          eq(s.targetUserId, targetUserId),
          inArray(s.targetKeyId, [...targets.keys()]),
          or(eq(s.signerUserId, targetUserId), eq(s.signerUserId, viewer)),
        ),
      );
    for (const r of rows) {
      const obj = targets.get(r.targetKeyId);
      if (!obj) continue;
      const sigs = dictionaryOf(isJsonObject(obj.signatures) ? Object.entries(obj.signatures) : []);
      const signer = sigs[r.signerUserId];
      const bySigner = dictionaryOf(isJsonObject(signer) ? Object.entries(signer) : []);
      bySigner[r.signerKeyId] = r.signature;
      sigs[r.signerUserId] = bySigner;
      obj.signatures = sigs;
    }
  }

  /** Removes signatures of and by deleted devices, in the caller's transaction. */
  async deleteDevices(q: Queryable, userId: string, deviceIds: readonly string[]): Promise<void> {
    const s = schema.e2eCrossSigningSignatures;
    const ids = [...deviceIds];
    await q.delete(s).where(and(eq(s.targetUserId, userId), inArray(s.targetKeyId, ids)));
    await q.delete(s).where(
      and(
        eq(s.signerUserId, userId),
        inArray(
          s.signerKeyId,
          ids.map((id) => `ed25519:${id}`),
        ),
      ),
    );
  }
}

/** Checks that a cross-signing key object is well formed and the requester's; returns it with its public key. */
export function checkKeyShape(userId: string, type: CrossSigningKeyType, key: JsonObject): CrossSigningKey {
  if (key.user_id !== userId) throw new MatrixError(400, "M_INVALID_PARAM", `The ${type} key must have user_id ${userId}`);
  if (!Array.isArray(key.usage) || !key.usage.includes(type)) {
    throw new MatrixError(400, "M_INVALID_PARAM", `The ${type} key must have "${type}" in its usage`);
  }
  const entries = isJsonObject(key.keys) ? Object.entries(key.keys) : [];
  const [entry] = entries;
  if (entries.length !== 1 || !entry) throw new MatrixError(400, "M_INVALID_PARAM", `The ${type} key must hold exactly one key`);
  const [keyId, publicKey] = entry;
  if (
    !keyId.startsWith("ed25519:") ||
    keyId.slice("ed25519:".length) !== publicKey ||
    ed25519PublicKey(publicKey) === undefined
  ) {
    throw new MatrixError(400, "M_INVALID_PARAM", `The ${type} key must be an Ed25519 key named ed25519:<public key>`);
  }
  canonicalOrBadJson(key, `${type}_key`);
  return { publicKey: publicKey as string, key };
}

/**
 * Checks that `object` is `stored` (apart from signatures) and carries a valid signature by the
 * signer's key `ed25519:<signerKey>`. Undefined when it does; else the failure.
 */
function signatureBy(
  object: JsonObject,
  stored: JsonObject,
  signerUserId: string,
  signerKey: string,
  mine: Record<string, string>,
): { errcode: string; error: string } | undefined {
  if (!sameSignedContent(object, stored)) {
    return { errcode: "M_INVALID_PARAM", error: "The signed object does not match the stored key" };
  }
  if (mine[`ed25519:${signerKey}`] === undefined) {
    return { errcode: "M_INVALID_SIGNATURE", error: `No signature by ed25519:${signerKey}` };
  }
  if (!hasValidSignature(object, signerUserId, signerKey, signerKey)) {
    return { errcode: "M_INVALID_SIGNATURE", error: "Invalid signature" };
  }
  return undefined;
}

/** Whether two key objects are the same key, signatures apart. */
function sameSignedContent(a: JsonObject, b: JsonObject): boolean {
  try {
    return canonicalJson(signedContent(a)) === canonicalJson(signedContent(b));
  } catch (err) {
    if (err instanceof CanonicalJsonError) return false;
    throw err;
  }
}

function sig(
  targetUserId: string,
  targetKeyId: string,
  signerUserId: string,
  signerKeyName: string,
  mine: Record<string, string>,
): StoredSignature {
  const signerKeyId = `ed25519:${signerKeyName}`;
  return { targetUserId, targetKeyId, signerUserId, signerKeyId, signature: mine[signerKeyId]! };
}

function dedupe(changes: DeviceListChange[]): DeviceListChange[] {
  const seen = new Set<string>();
  return changes.filter((c) => {
    const k = `${c.userId}|${c.deviceId ?? ""}|${c.selfOnly ? 1 : 0}|${c.signedUserId ?? ""}`;
    if (seen.has(k)) return false;
    seen.add(k);
    return true;
  });
}

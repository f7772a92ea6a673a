// Cross-signing: a user's master, self-signing and user-signing keys, the bodies that publish them
// and their signatures, and whether a device can be trusted from what /keys/query returns.
// https://spec.matrix.org/latest/client-server-api/#cross-signing
//
// Trust runs along signatures: a device of user U is cross-signed when U's self-signing key signed
// it, U's master key signed that self-signing key, and U's master key is trusted by us: it is our
// own (we hold it or verified it), we verified it (SAS covering the master key), or our
// user-signing key, signed by our own trusted master key, signed it. Every signature is checked
// here, from the /keys/query response: the server is not trusted to have checked them.
//
// The private keys are 32-byte Ed25519 seeds, kept as unpadded base64 (the form Element stores in
// secret storage for `m.cross_signing.master` and the others, and libolm's PkSigning takes).
import { MatrixApiError, type MatrixHttp } from "../http.ts";
import { ed25519FromSeed, ed25519Sign, type Ed25519KeyPair, fromBase64, randomBytes, toBase64 } from "./primitives.ts";
import { own, type Signer, signJson, verifyJsonSignature } from "./signed-json.ts";

export type CrossSigningUsage = "master" | "self_signing" | "user_signing";

/** A cross-signing key as /keys/device_signing/upload takes it and /keys/query gives it. */
export interface CrossSigningKeyObject {
  user_id: string;
  usage: string[];
  keys: Record<string, string>;
  signatures?: Record<string, Record<string, string>>;
  [extra: string]: unknown;
}

/** The private seeds (32 bytes, unpadded base64) of a user's cross-signing keys; a device may hold only some. */
export interface CrossSigningSeeds {
  master?: string;
  selfSigning?: string;
  userSigning?: string;
}

/** One Ed25519 cross-signing key held privately. */
export class CrossSigningKey {
  readonly publicKey: string;
  /** `ed25519:<public key>`: cross-signing keys are named by their public key. */
  readonly keyId: string;
  private readonly pair: Ed25519KeyPair;

  constructor(seed: Uint8Array) {
    if (seed.length !== 32) throw new RangeError("an Ed25519 seed is 32 bytes");
    this.pair = ed25519FromSeed(seed);
    this.publicKey = toBase64(this.pair.publicKey);
    this.keyId = `ed25519:${this.publicKey}`;
  }

  static generate(): CrossSigningKey {
    return new CrossSigningKey(randomBytes(32));
  }

  static fromSeed(seed: string): CrossSigningKey {
    return new CrossSigningKey(fromBase64(seed));
  }

  /** The seed, unpadded base64: what to store (encrypted) to use the key again. */
  seed(): string {
    return toBase64(this.pair.seed);
  }

  readonly sign: Signer = (message) => toBase64(ed25519Sign(this.pair.privateKey, message));
}

/** Bodies of POST /keys/signatures/upload: user ID → key ID (device ID, or a cross-signing public key) → signed object. */
export type SignaturesUploadBody = Record<string, Record<string, Record<string, unknown>>>;

export interface DeviceSigningUploadBody {
  master_key?: CrossSigningKeyObject;
  self_signing_key?: CrossSigningKeyObject;
  user_signing_key?: CrossSigningKeyObject;
}

/** A user's cross-signing keys, as far as this device holds them. */
export class CrossSigningIdentity {
  constructor(
    readonly userId: string,
    readonly master: CrossSigningKey | undefined,
    readonly selfSigning: CrossSigningKey | undefined,
    readonly userSigning: CrossSigningKey | undefined,
  ) {}

  /** New master, self-signing and user-signing keys. */
  static generate(userId: string): CrossSigningIdentity {
    return new CrossSigningIdentity(userId, CrossSigningKey.generate(), CrossSigningKey.generate(), CrossSigningKey.generate());
  }

  static fromSeeds(userId: string, seeds: CrossSigningSeeds): CrossSigningIdentity {
    const key = (s?: string) => (s === undefined ? undefined : CrossSigningKey.fromSeed(s));
    return new CrossSigningIdentity(userId, key(seeds.master), key(seeds.selfSigning), key(seeds.userSigning));
  }

  seeds(): CrossSigningSeeds {
    return {
      ...(this.master ? { master: this.master.seed() } : {}),
      ...(this.selfSigning ? { selfSigning: this.selfSigning.seed() } : {}),
      ...(this.userSigning ? { userSigning: this.userSigning.seed() } : {}),
    };
  }

  /**
   * The body of POST /keys/device_signing/upload (add `auth` for user-interactive auth): the three
   * public keys, the self-signing and user-signing ones signed by the master key, as the spec requires.
   */
  deviceSigningUploadBody(): DeviceSigningUploadBody {
    const master = this.need(this.master, "master");
    const object = (usage: CrossSigningUsage, key: CrossSigningKey): CrossSigningKeyObject => ({
      user_id: this.userId,
      usage: [usage],
      keys: { [key.keyId]: key.publicKey },
    });
    return {
      master_key: object("master", master),
      ...(this.selfSigning ? { self_signing_key: signJson(object("self_signing", this.selfSigning), this.userId, master.keyId, master.sign) } : {}),
      ...(this.userSigning ? { user_signing_key: signJson(object("user_signing", this.userSigning), this.userId, master.keyId, master.sign) } : {}),
    };
  }

  /** Signatures upload: our own device's keys (from /keys/query or as uploaded) signed by our self-signing key. */
  signOwnDevice(deviceKeys: Record<string, unknown>): SignaturesUploadBody {
    const ssk = this.need(this.selfSigning, "self-signing");
    const deviceId = deviceKeys.device_id;
    if (deviceKeys.user_id !== this.userId || typeof deviceId !== "string") throw new Error("not a device of this user");
    return { [this.userId]: { [deviceId]: signedFresh(deviceKeys, this.userId, ssk.keyId, ssk.sign) } };
  }

  /** Signatures upload: another user's master key (from /keys/query, checked by the caller, e.g. by SAS) signed by our user-signing key. */
  signUser(theirMasterKey: CrossSigningKeyObject): SignaturesUploadBody {
    const usk = this.need(this.userSigning, "user-signing");
    const publicKey = singleEd25519Key(theirMasterKey);
    if (!publicKey || !theirMasterKey.usage.includes("master")) throw new Error("not a master key");
    return { [theirMasterKey.user_id]: { [publicKey]: signedFresh(theirMasterKey, this.userId, usk.keyId, usk.sign) } };
  }

  private need(key: CrossSigningKey | undefined, name: string): CrossSigningKey {
    if (!key) throw new Error(`this device does not hold the ${name} key`);
    return key;
  }
}

/**
 * Signatures upload: our own master key signed by one of our devices (what Element does when it
 * creates the keys, so our other devices can trust the master key from a verified device).
 */
export function signMasterKeyWithDevice(masterKey: CrossSigningKeyObject, deviceId: string, deviceSign: Signer): SignaturesUploadBody {
  const publicKey = singleEd25519Key(masterKey);
  if (!publicKey) throw new Error("not a cross-signing key");
  return { [masterKey.user_id]: { [publicKey]: signedFresh(masterKey, masterKey.user_id, `ed25519:${deviceId}`, deviceSign) } };
}

/**
 * What to sign after a verification (e.g. SAS) succeeded: the other user's master key with our
 * user-signing key when it was among the verified keys, or our own other device with our
 * self-signing key. Only keys still equal to those verified (and present in `query`) are signed;
 * the result may be empty (nothing we hold can sign what was verified).
 */
export function signaturesAfterVerification(
  identity: CrossSigningIdentity,
  peer: { userId: string; deviceId: string; ed25519: string; masterKey?: string },
  verifiedKeyIds: readonly string[],
  query: KeysQueryResponse,
): SignaturesUploadBody {
  if (peer.userId === identity.userId) {
    const device = own(query.device_keys, peer.userId, peer.deviceId);
    const key = own(device, "keys", `ed25519:${peer.deviceId}`);
    if (!identity.selfSigning || !verifiedKeyIds.includes(`ed25519:${peer.deviceId}`) || key !== peer.ed25519) return {};
    return identity.signOwnDevice(device as Record<string, unknown>);
  }
  const master = crossSigningKey(query.master_keys, peer.userId, "master");
  if (!identity.userSigning || !master || !peer.masterKey || master.publicKey !== peer.masterKey || !verifiedKeyIds.includes(`ed25519:${peer.masterKey}`)) return {};
  return identity.signUser(master.object as CrossSigningKeyObject);
}

/** The object with only our new signature: the server keeps the others, and `unsigned` is not part of the key. */
function signedFresh(obj: Record<string, unknown>, userId: string, keyId: string, sign: Signer): Record<string, unknown> {
  const { signatures: _s, unsigned: _u, ...rest } = obj;
  return signJson(rest, userId, keyId, sign);
}

// ---- Publishing ----

/**
 * POST /keys/device_signing/upload, answering user-interactive auth with the password when the
 * server asks for it (it does when keys already exist and are being replaced).
 */
export async function uploadCrossSigningKeys(http: Pick<MatrixHttp, "request">, body: DeviceSigningUploadBody, auth?: { userId: string; password: string }): Promise<void> {
  const path = "/_matrix/client/v3/keys/device_signing/upload";
  try {
    await http.request("POST", path, { body });
  } catch (err) {
    if (!(err instanceof MatrixApiError) || err.status !== 401 || !Array.isArray(err.data.flows)) throw err;
    const passwordFlow = (err.data.flows as Array<{ stages?: unknown }>).some(
      (f) => Array.isArray(f.stages) && f.stages.length === 1 && f.stages[0] === "m.login.password",
    );
    if (!auth || !passwordFlow) throw err;
    await http.request("POST", path, {
      body: {
        ...body,
        auth: {
          type: "m.login.password",
          identifier: { type: "m.id.user", user: auth.userId },
          password: auth.password,
          ...(typeof err.data.session === "string" ? { session: err.data.session } : {}),
        },
      },
    });
  }
}

/** POST /keys/signatures/upload; throws when the server refused any of the signatures (its `failures`). */
export async function uploadSignatures(http: Pick<MatrixHttp, "request">, body: SignaturesUploadBody): Promise<void> {
  const res = await http.request<{ failures?: Record<string, Record<string, { errcode?: string; error?: string }>> }>(
    "POST",
    "/_matrix/client/v3/keys/signatures/upload",
    { body },
  );
  const failures = Object.entries(res?.failures ?? {}).flatMap(([user, keys]) => Object.entries(keys).map(([key, f]) => `${user} ${key}: ${f.errcode ?? "?"}`));
  if (failures.length) throw new Error(`signatures refused: ${failures.join("; ")}`);
}

// ---- Trust ----

/** What /keys/query answered (the parts trust needs). */
export interface KeysQueryResponse {
  device_keys?: Record<string, Record<string, Record<string, unknown>>>;
  master_keys?: Record<string, unknown>;
  self_signing_keys?: Record<string, unknown>;
  user_signing_keys?: Record<string, unknown>;
}

export interface TrustContext {
  /** Our user ID. */
  userId: string;
  /** Our master key (unpadded base64), trusted because we hold it or verified it with one of our devices. */
  ownMasterKey?: string;
  /** Master keys of other users we verified ourselves (SAS covering the master key): user ID → key. */
  verifiedMasterKeys?: ReadonlyMap<string, string> | Readonly<Record<string, string>>;
}

export type UntrustedReason =
  | "no_device"
  | "bad_device_signature"
  | "no_master_key"
  | "no_self_signing_key"
  | "bad_self_signing_signature"
  | "device_not_signed"
  | "master_key_not_trusted"
  /** The user has a device whose ID is a cross-signing key: the spec says refuse to trust the user. */
  | "device_id_collision";

export type Trust = { trusted: true; masterKey: string; via: "own" | "verified" | "user_signing" } | { trusted: false; reason: UntrustedReason };

/** A cross-signing key object's one Ed25519 public key, or undefined when it is malformed. */
function singleEd25519Key(obj: unknown): string | undefined {
  const keys = own(obj, "keys");
  if (typeof keys !== "object" || keys === null) return undefined;
  const entries = Object.entries(keys);
  if (entries.length !== 1) return undefined;
  const [keyId, value] = entries[0]!;
  return typeof value === "string" && keyId === `ed25519:${value}` ? value : undefined;
}

/** `userId`'s cross-signing key of `usage` from a /keys/query section, when well formed. */
function crossSigningKey(section: unknown, userId: string, usage: CrossSigningUsage): { object: Record<string, unknown>; publicKey: string } | undefined {
  const object = own(section, userId);
  if (typeof object !== "object" || object === null || own(object, "user_id") !== userId) return undefined;
  const usages = own(object, "usage");
  if (!Array.isArray(usages) || !usages.includes(usage)) return undefined;
  const publicKey = singleEd25519Key(object);
  return publicKey ? { object: object as Record<string, unknown>, publicKey } : undefined;
}

/** `userId`'s master key in a /keys/query response (to notice when it changes, as the spec requires). */
export function masterKeyOf(query: KeysQueryResponse, userId: string): string | undefined {
  return crossSigningKey(query.master_keys, userId, "master")?.publicKey;
}

/** Whether `userId`'s master key (in `query`) is trusted by us, and why. */
export function userTrust(query: KeysQueryResponse, userId: string, ctx: TrustContext): Trust {
  const master = crossSigningKey(query.master_keys, userId, "master");
  if (!master) return { trusted: false, reason: "no_master_key" };
  // Device IDs and cross-signing keys share one key ID namespace; a server that lets them collide
  // could pass a device off as the master key (spec "Key and signature security").
  const ssk = crossSigningKey(query.self_signing_keys, userId, "self_signing");
  for (const key of [master.publicKey, ssk?.publicKey]) {
    if (key !== undefined && own(query.device_keys, userId, key) !== undefined) return { trusted: false, reason: "device_id_collision" };
  }
  if (userId === ctx.userId) {
    return ctx.ownMasterKey === master.publicKey ? { trusted: true, masterKey: master.publicKey, via: "own" } : { trusted: false, reason: "master_key_not_trusted" };
  }
  const verified = ctx.verifiedMasterKeys instanceof Map ? ctx.verifiedMasterKeys.get(userId) : own(ctx.verifiedMasterKeys, userId);
  if (verified === master.publicKey) return { trusted: true, masterKey: master.publicKey, via: "verified" };
  // Our user-signing key counts only when our own trusted master key signed it.
  const ownMaster = ctx.ownMasterKey;
  const usk = crossSigningKey(query.user_signing_keys, ctx.userId, "user_signing");
  if (
    ownMaster &&
    usk &&
    verifyJsonSignature(usk.object, ctx.userId, `ed25519:${ownMaster}`, ownMaster) &&
    verifyJsonSignature(master.object, ctx.userId, `ed25519:${usk.publicKey}`, usk.publicKey)
  ) {
    return { trusted: true, masterKey: master.publicKey, via: "user_signing" };
  }
  return { trusted: false, reason: "master_key_not_trusted" };
}

/** Whether device `deviceId` of `userId` is cross-signed by a master key we trust, from a /keys/query response. */
export function deviceTrust(query: KeysQueryResponse, userId: string, deviceId: string, ctx: TrustContext): Trust {
  const device = own(query.device_keys, userId, deviceId);
  const deviceKey = own(device, "keys", `ed25519:${deviceId}`);
  if (typeof device !== "object" || device === null || own(device, "user_id") !== userId || own(device, "device_id") !== deviceId || typeof deviceKey !== "string") {
    return { trusted: false, reason: "no_device" };
  }
  if (!verifyJsonSignature(device, userId, `ed25519:${deviceId}`, deviceKey)) return { trusted: false, reason: "bad_device_signature" };
  const master = crossSigningKey(query.master_keys, userId, "master");
  if (!master) return { trusted: false, reason: "no_master_key" };
  const ssk = crossSigningKey(query.self_signing_keys, userId, "self_signing");
  if (!ssk) return { trusted: false, reason: "no_self_signing_key" };
  if (!verifyJsonSignature(ssk.object, userId, `ed25519:${master.publicKey}`, master.publicKey)) return { trusted: false, reason: "bad_self_signing_signature" };
  if (!verifyJsonSignature(device, userId, `ed25519:${ssk.publicKey}`, ssk.publicKey)) return { trusted: false, reason: "device_not_signed" };
  return userTrust(query, userId, ctx);
}

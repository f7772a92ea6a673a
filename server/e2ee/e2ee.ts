// The end-to-end-encryption component: what the server stores for clients' encryption, and the
// streams `/sync` reads. https://spec.matrix.org/latest/client-server-api/#end-to-end-encryption
//
// - deviceLists: the device-list stream (`/keys/changes`, `device_lists` of /sync)
// - deviceKeys: device identity keys, one-time and fallback keys
// - crossSigning: cross-signing keys and signatures
// - toDevice: per-device mailboxes of to-device messages
// - keyBackup: server-side key backups
//
// The server never sees a private key or a plaintext message: it stores signed public keys (and
// checks their signatures) and opaque ciphertext.
import { dictionary } from "../../federation/protocol/dictionary.ts";
import { isValidServerName, serverNameOf } from "../../federation/protocol/identifiers.ts";
import type { Database } from "../../schema/db.ts";
import type { Accounts } from "../accounts/accounts.ts";
import { groupUsersByServer } from "../accounts/user-id.ts";
import type { UserInteractiveAuth } from "../accounts/uia.ts";
import { CrossSigning, type CrossSigningKey, checkKeyShape } from "./cross-signing.ts";
import { DeviceKeys, type ClaimRequest } from "./device-keys.ts";
import { DeviceLists } from "./device-lists.ts";
import { KeyBackup } from "./key-backup.ts";
import { isJsonObject, type JsonObject } from "./signed-json.ts";
import { ToDevice, type ToDeviceLimits } from "./to-device.ts";

export interface KeysQueryResponse {
  device_keys: Record<string, Record<string, JsonObject>>;
  master_keys: Record<string, JsonObject>;
  self_signing_keys: Record<string, JsonObject>;
  user_signing_keys: Record<string, JsonObject>;
  failures: Record<string, JsonObject>;
}

/** An empty `/keys/query` answer. Keyed by user IDs, device IDs and server names others chose: no prototypes. */
export function emptyKeysQueryResponse(): KeysQueryResponse {
  return {
    device_keys: dictionary(),
    master_keys: dictionary(),
    self_signing_keys: dictionary(),
    user_signing_keys: dictionary(),
    failures: dictionary(),
  };
}

/** The public key of a master key as another server sent it, if it is a well-formed master key of `userId`. */
function masterPublicKey(userId: string, key: JsonObject): string | undefined {
  try {
    return checkKeyShape(userId, "master", key).publicKey;
  } catch {
    return undefined;
  }
}

export interface KeysClaimResponse {
  one_time_keys: Record<string, Record<string, Record<string, unknown>>>;
  failures: Record<string, JsonObject>;
}

export interface E2eeOptions {
  serverName: string;
  toDeviceLimits: ToDeviceLimits;
  now: () => number;
}

/** Answer for a remote server when federation is not wired in (the shape Synapse uses for unreachable servers). */
const NO_FEDERATION = { status: 503, message: "This server does not federate" };
/** How long `/keys/query` and `/keys/claim` wait for other servers (the spec's default `timeout`). */
const REMOTE_TIMEOUT_MS = 10_000;

/**
 * Key queries and claims for users of other servers (federation's `/user/keys/query` and
 * `/user/keys/claim`, wired at startup: e2ee does not import federation). Each rejects when the
 * server cannot be asked or answers badly; the answer may hold only that server's users.
 */
export interface RemoteKeys {
  query(server: string, deviceKeys: Record<string, string[]>, signal: AbortSignal): Promise<Partial<KeysQueryResponse>>;
  claim(server: string, oneTimeKeys: Record<string, Record<string, string>>, signal: AbortSignal): Promise<Partial<KeysClaimResponse>>;
}

/** `GET /_matrix/federation/v1/user/devices/{userId}`: a local user's devices, as other servers see them. */
export interface UserDevices {
  user_id: string;
  stream_id: number;
  devices: Array<{ device_id: string; keys?: JsonObject; device_display_name?: string }>;
  master_key?: JsonObject;
  self_signing_key?: JsonObject;
}

export class E2ee {
  readonly deviceLists: DeviceLists;
  readonly deviceKeys: DeviceKeys;
  readonly crossSigning: CrossSigning;
  readonly toDevice: ToDevice;
  readonly keyBackup: KeyBackup;
  private readonly serverName: string;
  private remoteKeys?: RemoteKeys;

  constructor(
    private readonly db: Database,
    private readonly accounts: Accounts,
    uia: UserInteractiveAuth,
    options: E2eeOptions,
  ) {
    this.serverName = options.serverName;
    this.deviceLists = new DeviceLists(db);
    this.deviceKeys = new DeviceKeys(db, this.deviceLists);
    this.crossSigning = new CrossSigning(db, this.deviceKeys, this.deviceLists, accounts, uia);
    this.crossSigning.useRemoteMasterKeys((userId) => this.remoteMasterKey(userId));
    this.toDevice = new ToDevice(db, accounts, options.serverName, options.toDeviceLimits, options.now);
    this.keyBackup = new KeyBackup(db);
    accounts.onDevicesDeleted((userId, deviceIds) => this.devicesDeleted(userId, deviceIds));
    accounts.onDeviceRenamed((userId, deviceId) => this.deviceRenamed(userId, deviceId));
    accounts.onDeviceCreated((userId, deviceId) => this.deviceCreated(userId, deviceId));
  }

  /** How to ask other servers for their users' keys (federation's, wired at startup). */
  useRemoteKeys(remote: RemoteKeys): void {
    this.remoteKeys = remote;
  }

  /**
   * Asks each server once, all in parallel, bounded by REMOTE_TIMEOUT_MS; a server that fails or
   * does not answer in time is listed in `failures`. Answers are kept only for the users of the
   * server that gave them.
   */
  private async askServers<A, R>(
    byServer: Map<string, A>,
    ask: (remote: RemoteKeys, server: string, arg: A, signal: AbortSignal) => Promise<R>,
    failures: Record<string, JsonObject>,
  ): Promise<Array<[string, R]>> {
    const remote = this.remoteKeys;
    const answers = await Promise.all(
      [...byServer].map(async ([server, arg]): Promise<[string, R] | undefined> => {
        if (!isValidServerName(server)) {
          failures[server] = { status: 400, message: "Not a valid server name" };
          return undefined;
        }
        if (!remote) {
          failures[server] = { ...NO_FEDERATION };
          return undefined;
        }
        const signal = AbortSignal.timeout(REMOTE_TIMEOUT_MS);
        try {
          const answer = await Promise.race([
            ask(remote, server, arg, signal),
            new Promise<never>((_, reject) => signal.addEventListener("abort", () => reject(new Error("timed out")), { once: true })),
          ]);
          return [server, answer];
        } catch (err) {
          failures[server] = { status: 503, message: `Could not reach ${server}: ${(err as Error)?.message ?? String(err)}`.slice(0, 300) };
          return undefined;
        }
      }),
    );
    return answers.filter((a): a is [string, R] => a !== undefined);
  }

  /**
   * A device is gone: its keys, the signatures of it, and its mailbox go with it, and its user's
   * device list changes. (Accounts calls this after deleting devices.)
   */
  async devicesDeleted(userId: string, deviceIds: readonly string[]): Promise<void> {
    if (deviceIds.length === 0) return;
    const changes = deviceIds.map((deviceId) => ({ userId, deviceId }));
    const position = await this.db.transaction(async (tx) => {
      await this.deviceKeys.deleteDevices(tx, userId, deviceIds);
      await this.crossSigning.deleteDevices(tx, userId, deviceIds);
      await this.toDevice.deleteDevices(tx, userId, deviceIds);
      return this.deviceLists.record(tx, changes);
    });
    this.deviceLists.notify([userId], position, changes);
  }

  /** A device's display name changed: it shows in `/keys/query`, so the device list changes. */
  async deviceRenamed(userId: string, deviceId: string): Promise<void> {
    await this.deviceChanged(userId, deviceId);
  }

  /**
   * A login created a device: the user's device list changed, before any key is uploaded (as
   * Synapse does; sytest "Local new device changes appear in v2 /sync"). The user's own other
   * devices and those sharing a room see it in `device_lists.changed`; other servers get an
   * `m.device_list_update` (without keys), which keeps their copy of the list, as `/user/devices`
   * answers it, whole.
   */
  async deviceCreated(userId: string, deviceId: string): Promise<void> {
    await this.deviceChanged(userId, deviceId);
  }

  private async deviceChanged(userId: string, deviceId: string): Promise<void> {
    const changes = [{ userId, deviceId }];
    const position = await this.db.transaction((tx) => this.deviceLists.record(tx, changes));
    this.deviceLists.notify([userId], position, changes);
  }

  /**
   * `/keys/query`: device keys (with the device's display name in `unsigned`) of the devices asked
   * for (all when the list is empty), and cross-signing keys with the signatures `requester` may
   * see; the user-signing key only of the requester themself. Unknown users and devices are left
   * out; users of other servers are asked of their servers (those that fail are in `failures`).
   */
  async queryKeys(requester: string, deviceKeys: Record<string, string[]>): Promise<KeysQueryResponse> {
    const out = emptyKeysQueryResponse();
    const { local, remote } = groupUsersByServer(deviceKeys, this.serverName);
    const answered = this.askServers(remote, (r, server, asked, signal) => r.query(server, asked, signal), out.failures);
    await this.localKeys(requester, local, deviceKeys, out);
    for (const [server, answer] of await answered) {
      const asked = remote.get(server)!;
      for (const field of ["device_keys", "master_keys", "self_signing_keys"] as const) {
        const got = answer[field];
        if (!isJsonObject(got)) continue;
        for (const [userId, value] of Object.entries(got)) {
          if (Object.hasOwn(asked, userId) && isJsonObject(value)) (out[field] as Record<string, unknown>)[userId] = value;
        }
      }
      // The requester's own signatures of these users' master keys (their user-signing key's,
      // kept here and seen by them alone) join what the users' servers answered.
      for (const userId of Object.keys(asked)) {
        const master = out.master_keys[userId];
        const publicKey = master && masterPublicKey(userId, master);
        if (publicKey && requester) await this.crossSigning.mergeSignatures(requester, userId, new Map([[publicKey, master]]));
      }
    }
    return out;
  }

  /** A user of another server's master key, asked of their server; undefined when they have none (or it is malformed). */
  private async remoteMasterKey(userId: string): Promise<CrossSigningKey | undefined> {
    const server = serverNameOf(userId);
    if (server === undefined) return undefined;
    const failures = dictionary<JsonObject>();
    const [answer] = await this.askServers(new Map([[server, { [userId]: [] as string[] }]]), (r, s, asked, signal) => r.query(s, asked, signal), failures);
    if (!answer) throw new Error(String(failures[server]?.message ?? `${server} did not answer`));
    const master = answer[1].master_keys?.[userId];
    if (!isJsonObject(master)) return undefined;
    const publicKey = masterPublicKey(userId, master);
    return publicKey ? { publicKey, key: master } : undefined;
  }

  /**
   * The keys of local users as `requester` may see them, into `out` (`/keys/query` and, with an
   * empty requester, the federation's `/user/keys/query`).
   */
  async localKeys(requester: string, local: readonly string[], deviceKeys: Record<string, string[]>, out: KeysQueryResponse): Promise<void> {
    const crossSigning = await this.crossSigning.keysOf(local);
    for (const userId of local) {
      const wanted = deviceKeys[userId]!;
      const devices = await this.accounts.listDevices(userId);
      const names = new Map(devices.map((d) => [d.device_id, d.display_name]));
      const ids = wanted.length === 0 ? devices.map((d) => d.device_id) : wanted.filter((id) => names.has(id));
      const keys = await this.deviceKeys.deviceKeysOf(userId, ids);
      await this.crossSigning.mergeSignatures(requester, userId, keys);
      const byDevice = dictionary<JsonObject>();
      for (const [deviceId, key] of keys) {
        const name = names.get(deviceId);
        byDevice[deviceId] = { ...key, unsigned: name !== undefined ? { device_display_name: name } : {} };
      }
      out.device_keys[userId] = byDevice;

      const cs = crossSigning.get(userId);
      if (cs?.master) {
        const master = { ...cs.master.key };
        await this.crossSigning.mergeSignatures(requester, userId, new Map([[cs.master.publicKey, master]]));
        out.master_keys[userId] = master;
      }
      if (cs?.self_signing) out.self_signing_keys[userId] = cs.self_signing.key;
      if (cs?.user_signing && userId === requester) out.user_signing_keys[userId] = cs.user_signing.key;
    }
  }

  /** A local user's devices with their keys and names, and cross-signing keys, for other servers. */
  async userDevices(userId: string): Promise<UserDevices> {
    const devices = await this.accounts.listDevices(userId);
    const keys = await this.deviceKeys.deviceKeysOf(userId);
    await this.crossSigning.mergeSignatures(userId, userId, keys);
    const cs = (await this.crossSigning.keysOf([userId])).get(userId);
    const out: UserDevices = {
      user_id: userId,
      stream_id: await this.deviceLists.lastDeviceChange(userId),
      devices: devices.map((d) => ({
        device_id: d.device_id,
        ...(keys.has(d.device_id) ? { keys: keys.get(d.device_id)! } : {}),
        ...(typeof d.display_name === "string" ? { device_display_name: d.display_name } : {}),
      })),
    };
    if (cs?.master) {
      const master = { ...cs.master.key };
      await this.crossSigning.mergeSignatures(userId, userId, new Map([[cs.master.publicKey, master]]));
      out.master_key = master;
    }
    if (cs?.self_signing) out.self_signing_key = cs.self_signing.key;
    return out;
  }

  /**
   * Users of other servers whose devices or keys changed (their server told us): they enter the
   * device-list stream, so local users who share a room with them see them in `device_lists.changed`.
   */
  async remoteUsersChanged(userIds: readonly string[]): Promise<void> {
    if (userIds.length === 0) return;
    const changes = userIds.map((userId) => ({ userId }));
    const position = await this.db.transaction((tx) => this.deviceLists.record(tx, changes));
    this.deviceLists.notify([...userIds], position, changes);
  }

  /** `/keys/claim`: one key per device asked for (see DeviceKeys.claim); other servers go to `failures`. */
  async claimKeys(oneTimeKeys: Record<string, Record<string, string>>): Promise<KeysClaimResponse> {
    const out: KeysClaimResponse = { one_time_keys: dictionary(), failures: dictionary() };
    const requests: ClaimRequest[] = [];
    const { local, remote } = groupUsersByServer(oneTimeKeys, this.serverName);
    for (const userId of local) {
      for (const [deviceId, algorithm] of Object.entries(oneTimeKeys[userId]!)) requests.push({ userId, deviceId, algorithm });
    }
    const answered = this.askServers(remote, (r, server, asked, signal) => r.claim(server, asked, signal), out.failures);
    for (const c of await this.deviceKeys.claim(requests)) {
      ((out.one_time_keys[c.userId] ??= dictionary())[c.deviceId] ??= dictionary())[c.keyId] = c.key;
    }
    for (const [server, answer] of await answered) {
      const asked = remote.get(server)!;
      if (!isJsonObject(answer.one_time_keys)) continue;
      for (const [userId, value] of Object.entries(answer.one_time_keys)) {
        if (Object.hasOwn(asked, userId) && isJsonObject(value)) out.one_time_keys[userId] = value as Record<string, Record<string, unknown>>;
      }
    }
    return out;
  }
}

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
import type { Database } from "../../schema/db.ts";
import type { Accounts } from "../accounts/accounts.ts";
import { isLocalUser, parseUserId } from "../accounts/user-id.ts";
import type { UserInteractiveAuth } from "../accounts/uia.ts";
import { CrossSigning } from "./cross-signing.ts";
import { DeviceKeys, type ClaimRequest } from "./device-keys.ts";
import { DeviceLists } from "./device-lists.ts";
import { KeyBackup } from "./key-backup.ts";
import type { JsonObject } from "./signed-json.ts";
import { ToDevice, type ToDeviceLimits } from "./to-device.ts";

export interface KeysQueryResponse {
  device_keys: Record<string, Record<string, JsonObject>>;
  master_keys: Record<string, JsonObject>;
  self_signing_keys: Record<string, JsonObject>;
  user_signing_keys: Record<string, JsonObject>;
  failures: Record<string, JsonObject>;
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

/** Answer for a remote server until federation exists (the shape Synapse uses for unreachable servers). */
const NO_FEDERATION = { status: 503, message: "This server does not federate yet" };

export class E2ee {
  readonly deviceLists: DeviceLists;
  readonly deviceKeys: DeviceKeys;
  readonly crossSigning: CrossSigning;
  readonly toDevice: ToDevice;
  readonly keyBackup: KeyBackup;
  private readonly serverName: string;

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
    this.toDevice = new ToDevice(db, accounts, options.serverName, options.toDeviceLimits, options.now);
    this.keyBackup = new KeyBackup(db);
    accounts.onDevicesDeleted((userId, deviceIds) => this.devicesDeleted(userId, deviceIds));
    accounts.onDeviceRenamed((userId, deviceId) => this.deviceRenamed(userId, deviceId));
  }

  /**
   * A device is gone: its keys, the signatures of it, and its mailbox go with it, and its user's
   * device list changes. (Accounts calls this after deleting devices.)
   */
  async devicesDeleted(userId: string, deviceIds: readonly string[]): Promise<void> {
    if (deviceIds.length === 0) return;
    const position = await this.db.transaction(async (tx) => {
      await this.deviceKeys.deleteDevices(tx, userId, deviceIds);
      await this.crossSigning.deleteDevices(tx, userId, deviceIds);
      await this.toDevice.deleteDevices(tx, userId, deviceIds);
      return this.deviceLists.record(tx, deviceIds.map((deviceId) => ({ userId, deviceId })));
    });
    this.deviceLists.notify([userId], position);
  }

  /** A device's display name changed: it shows in `/keys/query`, so the device list changes. */
  async deviceRenamed(userId: string, deviceId: string): Promise<void> {
    const position = await this.db.transaction((tx) => this.deviceLists.record(tx, [{ userId, deviceId }]));
    this.deviceLists.notify([userId], position);
  }

  /**
   * `/keys/query`: device keys (with the device's display name in `unsigned`) of the devices asked
   * for (all when the list is empty), and cross-signing keys with the signatures `requester` may
   * see; the user-signing key only of the requester themself. Unknown users and devices are left
   * out; users of other servers are reported in `failures` until federation exists.
   */
  async queryKeys(requester: string, deviceKeys: Record<string, string[]>): Promise<KeysQueryResponse> {
    // Keyed by user IDs, device IDs and server names the requester chose: no prototypes.
    const out: KeysQueryResponse = {
      device_keys: dictionary(),
      master_keys: dictionary(),
      self_signing_keys: dictionary(),
      user_signing_keys: dictionary(),
      failures: dictionary(),
    };
    const local: string[] = [];
    for (const userId of Object.keys(deviceKeys)) {
      if (isLocalUser(userId, this.serverName)) local.push(userId);
      else out.failures[parseUserId(userId)?.serverName ?? userId] = { ...NO_FEDERATION };
    }
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
    return out;
  }

  /** `/keys/claim`: one key per device asked for (see DeviceKeys.claim); other servers go to `failures`. */
  async claimKeys(oneTimeKeys: Record<string, Record<string, string>>): Promise<KeysClaimResponse> {
    const out: KeysClaimResponse = { one_time_keys: dictionary(), failures: dictionary() };
    const requests: ClaimRequest[] = [];
    for (const [userId, byDevice] of Object.entries(oneTimeKeys)) {
      if (!isLocalUser(userId, this.serverName)) {
        out.failures[parseUserId(userId)?.serverName ?? userId] = { ...NO_FEDERATION };
        continue;
      }
      for (const [deviceId, algorithm] of Object.entries(byDevice)) requests.push({ userId, deviceId, algorithm });
    }
    for (const c of await this.deviceKeys.claim(requests)) {
      ((out.one_time_keys[c.userId] ??= dictionary())[c.deviceId] ??= dictionary())[c.keyId] = c.key;
    }
    return out;
  }
}

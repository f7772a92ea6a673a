// The devices of the users we share encrypted rooms with, as /keys/query gives them
// (https://spec.matrix.org/v1.11/client-server-api/#tracking-the-device-list-for-a-user).
//
// A tracked user's list is "outdated" until queried; `device_lists.changed` of /sync makes it outdated
// again, and the next encryption (or an explicit `ensureUpToDate`) queries it. A device's keys are
// taken only when self-signed (the device's own Ed25519 key over its canonical JSON) and when the
// user and device IDs inside match the ones they are filed under. Once a device is known, its Ed25519
// key never changes silently: a different key for the same device ID is refused (a homeserver that
// swaps keys could otherwise read what we send to "that" device), and the old entry is kept.
import { verifyJsonSignature } from "./signed-json.ts";
import type { KeysQueryResponse } from "./cross-signing.ts";
import type { E2EEHttp, CryptoStore } from "./e2ee.ts";

export const OLM_ALGORITHM = "m.olm.v1.curve25519-aes-sha2";
export const MEGOLM_ALGORITHM = "m.megolm.v1.aes-sha2";

export interface DeviceInfo {
  userId: string;
  deviceId: string;
  algorithms: string[];
  curve25519: string;
  ed25519: string;
  displayName?: string;
  /** Verified by us: SAS, cross-signing, or our own device. */
  verified: boolean;
  /** The signed device keys as published (for cross-signing checks). */
  keys: Record<string, unknown>;
}

interface UserEntry {
  /** "outdated": must be queried before we trust the list. */
  state: "outdated" | "up_to_date";
  devices: Record<string, DeviceInfo>;
  /** The user's cross-signing keys as /keys/query gave them (signatures checked when trust is asked). */
  crossSigning?: { master?: unknown; self_signing?: unknown; user_signing?: unknown };
}

const NS_USERS = "device_lists";

export class DeviceList {
  private readonly users = new Map<string, UserEntry>();
  /** Bumped for a user on each invalidation: a query answering for an older generation leaves the user outdated. */
  private readonly generation = new Map<string, number>();
  private inFlight: Promise<void> | undefined;
  /** Reported when a known device's key changes (the new key is refused). */
  onKeyChangeRefused?: (userId: string, deviceId: string) => void;
  /** Our own device's Ed25519 key: the server's copy of our device must carry it. */
  ownEd25519?: string;

  private constructor(
    private readonly http: E2EEHttp,
    private readonly store: CryptoStore,
    private readonly ownUserId: string,
    private readonly ownDeviceId: string,
  ) {}

  static async load(http: E2EEHttp, store: CryptoStore, ownUserId: string, ownDeviceId: string): Promise<DeviceList> {
    const list = new DeviceList(http, store, ownUserId, ownDeviceId);
    for (const [userId, value] of await store.list(NS_USERS)) list.users.set(userId, JSON.parse(value) as UserEntry);
    return list;
  }

  isTracked(userId: string): boolean {
    return this.users.has(userId);
  }

  /** Starts tracking users not tracked yet (their lists are outdated until queried). */
  async track(userIds: Iterable<string>): Promise<void> {
    for (const userId of userIds) {
      if (this.users.has(userId)) continue;
      const entry: UserEntry = { state: "outdated", devices: {} };
      this.users.set(userId, entry);
      await this.save(userId, entry);
    }
  }

  /** `device_lists.changed`: tracked users' lists are queried again before they are used. */
  async invalidate(userIds: Iterable<string>): Promise<void> {
    for (const userId of userIds) {
      const entry = this.users.get(userId);
      if (!entry) continue;
      this.generation.set(userId, (this.generation.get(userId) ?? 0) + 1);
      if (entry.state === "outdated") continue;
      entry.state = "outdated";
      await this.save(userId, entry);
    }
  }

  /** `device_lists.left`: we share no encrypted room with them any more. */
  async stopTracking(userIds: Iterable<string>): Promise<void> {
    for (const userId of userIds) {
      if (userId === this.ownUserId || !this.users.delete(userId)) continue;
      await this.store.delete(NS_USERS, userId);
    }
  }

  /** Queries the outdated lists among `userIds` (tracking them first). */
  async ensureUpToDate(userIds: Iterable<string>): Promise<void> {
    const wanted = [...new Set(userIds)];
    await this.track(wanted);
    // A query already running may cover some of them; wait for it, then query what is still outdated.
    for (let round = 0; round < 3; round++) {
      const outdated = wanted.filter((u) => this.users.get(u)?.state === "outdated");
      if (outdated.length === 0) return;
      if (this.inFlight) {
        await this.inFlight.catch(() => {});
        continue;
      }
      const query = this.query(outdated);
      this.inFlight = query;
      try {
        await query;
      } finally {
        if (this.inFlight === query) this.inFlight = undefined;
      }
    }
  }

  /** Marks every tracked user outdated and queries `userIds` now (a refresh after an unknown sender). */
  async refresh(userIds: string[]): Promise<void> {
    await this.invalidate(userIds);
    await this.ensureUpToDate(userIds);
  }

  devicesOf(userId: string): DeviceInfo[] {
    return Object.values(this.users.get(userId)?.devices ?? {});
  }

  device(userId: string, deviceId: string): DeviceInfo | undefined {
    return this.users.get(userId)?.devices[deviceId];
  }

  /** The device of `userId` whose Curve25519 identity key is `curve25519`. */
  deviceByCurveKey(userId: string, curve25519: string): DeviceInfo | undefined {
    return this.devicesOf(userId).find((d) => d.curve25519 === curve25519);
  }

  /** What /keys/query said of `userId` (devices and cross-signing keys, with our user-signing key), for cross-signing trust checks. */
  keysQueryFor(userId: string): KeysQueryResponse {
    const entry = this.users.get(userId);
    const ownKeys = this.users.get(this.ownUserId)?.crossSigning;
    return {
      device_keys: { [userId]: Object.fromEntries(Object.values(entry?.devices ?? {}).map((d) => [d.deviceId, d.keys])) },
      master_keys: entry?.crossSigning?.master ? { [userId]: entry.crossSigning.master } : {},
      self_signing_keys: entry?.crossSigning?.self_signing ? { [userId]: entry.crossSigning.self_signing } : {},
      user_signing_keys: ownKeys?.user_signing ? { [this.ownUserId]: ownKeys.user_signing } : {},
    };
  }

  async setVerified(userId: string, deviceId: string, verified: boolean): Promise<void> {
    const entry = this.users.get(userId);
    const device = entry?.devices[deviceId];
    if (!entry || !device) throw new Error(`unknown device ${userId}/${deviceId}`);
    device.verified = verified;
    await this.save(userId, entry);
  }

  private async query(userIds: string[]): Promise<void> {
    const generations = new Map(userIds.map((u) => [u, this.generation.get(u) ?? 0]));
    const body = { device_keys: Object.fromEntries(userIds.map((u) => [u, [] as string[]])), timeout: 10_000 };
    const res = await this.http.request<{
      device_keys?: Record<string, Record<string, Record<string, unknown>>>;
      master_keys?: Record<string, unknown>;
      self_signing_keys?: Record<string, unknown>;
      user_signing_keys?: Record<string, unknown>;
    }>(
      "POST",
      "/_matrix/client/v3/keys/query",
      { body },
    );
    for (const userId of userIds) {
      const entry = this.users.get(userId);
      if (!entry) continue; // stopped tracking meanwhile
      const published = res.device_keys?.[userId];
      // A user whose server did not answer stays outdated (asked again next time).
      if (!published) continue;
      const devices: Record<string, DeviceInfo> = {};
      for (const [deviceId, keys] of Object.entries(published)) {
        // A hostile server's "__proto__" device would be a prototype here, never a device.
        if (deviceId === "__proto__" || !keys || typeof keys !== "object") continue;
        const previous = entry.devices[deviceId];
        const device = this.checkDeviceKeys(userId, deviceId, keys, previous);
        if (device) devices[deviceId] = device;
        else if (previous) devices[deviceId] = previous;
      }
      entry.devices = devices;
      const own = (section: Record<string, unknown> | undefined) => (section && Object.hasOwn(section, userId) ? section[userId] : undefined);
      entry.crossSigning = {
        master: own(res.master_keys),
        self_signing: own(res.self_signing_keys),
        // Only our own user-signing key is ever given (and needed: it signs the users we verified).
        ...(userId === this.ownUserId ? { user_signing: own(res.user_signing_keys) } : {}),
      };
      if ((this.generation.get(userId) ?? 0) === generations.get(userId)) entry.state = "up_to_date";
      await this.save(userId, entry);
    }
  }

  private checkDeviceKeys(userId: string, deviceId: string, keys: Record<string, unknown>, previous: DeviceInfo | undefined): DeviceInfo | undefined {
    if (keys.user_id !== userId || keys.device_id !== deviceId) return undefined;
    const keyMap = keys.keys as Record<string, unknown> | undefined;
    const ed25519 = keyMap?.[`ed25519:${deviceId}`];
    const curve25519 = keyMap?.[`curve25519:${deviceId}`];
    if (typeof ed25519 !== "string" || typeof curve25519 !== "string") return undefined;
    if (!verifyJsonSignature(keys, userId, `ed25519:${deviceId}`, ed25519)) return undefined;
    if (previous && previous.ed25519 !== ed25519) {
      this.onKeyChangeRefused?.(userId, deviceId);
      return undefined;
    }
    const own = userId === this.ownUserId && deviceId === this.ownDeviceId;
    if (own && this.ownEd25519 && ed25519 !== this.ownEd25519) return undefined;
    const unsigned = keys.unsigned as { device_display_name?: unknown } | undefined;
    return {
      userId,
      deviceId,
      algorithms: Array.isArray(keys.algorithms) ? keys.algorithms.filter((a): a is string => typeof a === "string") : [],
      curve25519,
      ed25519,
      displayName: typeof unsigned?.device_display_name === "string" ? unsigned.device_display_name : undefined,
      verified: own || (previous?.verified ?? false),
      keys,
    };
  }

  private async save(userId: string, entry: UserEntry): Promise<void> {
    await this.store.put(NS_USERS, userId, JSON.stringify(entry));
  }
}

// End-to-end encryption across servers: key queries and claims for remote users, to-device
// messages both ways, and device lists (`m.device_list_update`, `m.signing_key_update`) both ways.
// https://spec.matrix.org/latest/server-server-api/#device-management
// https://spec.matrix.org/latest/server-server-api/#end-to-end-encryption
// https://spec.matrix.org/latest/server-server-api/#send-to-device-messaging
//
// The e2ee service knows nothing of federation: it takes hooks (`useRemoteKeys`,
// `toDevice.useRemoteDelivery`) and publishes its device-list changes (`deviceLists.onChange`),
// and `wireE2eeFederation` (called where the homeserver is put together) plugs this in.
//
// What we know of remote users' device lists (`remote_device_list_heads`, `remote_devices`,
// `remote_cross_signing_keys`) is kept here. Each user's updates form a sequence (`stream_id`,
// `prev_id`): an update that follows the last one we applied is applied; one after a gap marks
// the list stale and it is fetched whole (`/user/devices`). Every update also enters the local
// device-list stream, so local users sharing a room see the user in `device_lists.changed` and
// query the keys again.
import { createHash } from "node:crypto";
import { and, eq, inArray } from "drizzle-orm";
import type { Logger } from "pino";
import { type Database, isDatabaseClosed, schema } from "../../schema/db.ts";
import type { E2ee, KeysClaimResponse, KeysQueryResponse } from "../../server/e2ee/e2ee.ts";
import type { RecordedChange } from "../../server/e2ee/device-lists.ts";
import type { EventsPersistedListener } from "../../server/rooms/persister.ts";
import { type JsonObject, isJsonObject } from "../../server/e2ee/signed-json.ts";
import { canonicalJson } from "../protocol/canonical-json.ts";
import { dictionary } from "../protocol/dictionary.ts";
import { serverNameOf } from "../protocol/identifiers.ts";
import type { EduHandlers } from "./edu-handlers.ts";
import type { FederationHttpClient } from "./http-client.ts";
import type { Edu, FederationSender } from "./sender.ts";
import { unsafeTestBreak } from "../../server/unsafe-test-break.ts";

export interface E2eeFederationDeps {
  db: Database;
  serverName: string;
  http: FederationHttpClient;
  sender: FederationSender;
  edus: EduHandlers;
  e2ee: E2ee;
  /** Everyone (local or remote) who shares a joined room with a local user: their servers get the user's device-list updates. */
  usersSharingRoomsWith(userId: string): Promise<Set<string>>;
  /** Which of these users (of other servers) share a joined room with a local user. */
  sharingRoomsWithLocalUsers(userIds: readonly string[]): Promise<Set<string>>;
  /** The room's joined members, of every server. */
  joinedMembers(roomId: string): Promise<string[]>;
  /** Subscribes to committed room events (to stop tracking users we no longer share a room with). */
  onEventsPersisted(listener: EventsPersistedListener): void;
  logger: Logger;
  now(): number;
}

/** The spec caps `message_id` at 32 codepoints. */
const MESSAGE_ID_LENGTH = 32;

export function wireE2eeFederation(deps: E2eeFederationDeps): RemoteDeviceLists {
  const { http, sender, edus, e2ee, serverName, logger } = deps;

  const remote = new RemoteDeviceLists(deps);
  e2ee.useRemoteKeys({
    // Users we share a room with are tracked: their lists come from our copy, fetched whole
    // (`/user/devices`) the first time or when it went stale, then kept current by their server's
    // updates, so the answer needs no request and survives their server being down. Others (and
    // tracked users whose list cannot be fetched) are asked of their server each time.
    async query(server, deviceKeys, signal) {
      const out: Pick<KeysQueryResponse, "device_keys" | "master_keys" | "self_signing_keys"> = {
        device_keys: dictionary(),
        master_keys: dictionary(),
        self_signing_keys: dictionary(),
      };
      const tracked = await deps.sharingRoomsWithLocalUsers(Object.keys(deviceKeys));
      const rest = dictionary<string[]>();
      for (const [userId, wanted] of Object.entries(deviceKeys)) {
        if (!(tracked.has(userId) && (await remote.answerFromCopy(userId, wanted, out)))) rest[userId] = wanted;
      }
      if (Object.keys(rest).length === 0) return out;
      const asked = (await ask(http, server, "/_matrix/federation/v1/user/keys/query", { device_keys: rest }, signal)) as Partial<KeysQueryResponse>;
      for (const field of ["device_keys", "master_keys", "self_signing_keys"] as const) {
        const got = asked[field];
        if (isJsonObject(got)) for (const [userId, value] of Object.entries(got)) if (Object.hasOwn(rest, userId)) (out[field] as Record<string, unknown>)[userId] = value;
      }
      return out;
    },
    async claim(server, oneTimeKeys, signal) {
      return (await ask(http, server, "/_matrix/federation/v1/user/keys/claim", { one_time_keys: oneTimeKeys }, signal)) as Partial<KeysClaimResponse>;
    },
  });

  // One EDU per destination server, durably queued. The message ID is derived from the send's own
  // key (sender, device, transaction ID) and the destination, so a client's retry of the same
  // transaction gives the same ID and the receiver delivers it once.
  e2ee.toDevice.useRemoteDelivery(async (from, eventType, messageKey, byServer) => {
    if (unsafeTestBreak("drop-outbound-to-device")) return;
    await Promise.all(
      [...byServer].map(([server, messages]) =>
        sender.enqueue([server], {
          edus: [
            {
              edu_type: "m.direct_to_device",
              content: { sender: from, type: eventType, message_id: messageIdOf(messageKey, server), messages },
            },
          ],
        }),
      ),
    );
  });

  edus.register("m.direct_to_device", async (origin, content) => {
    if (unsafeTestBreak("drop-inbound-to-device")) return;
    const { sender: from, type, message_id: messageId, messages } = content;
    if (typeof from !== "string" || typeof type !== "string" || typeof messageId !== "string" || !isJsonObject(messages)) {
      throw new Error("m.direct_to_device needs sender, type, message_id and messages");
    }
    if (serverNameOf(from) !== origin) throw new Error(`${origin} cannot send to-device messages for ${from}`);
    const valid = dictionary<Record<string, JsonObject>>();
    for (const [userId, byDevice] of Object.entries(messages)) {
      if (!isJsonObject(byDevice)) continue;
      const devices = dictionary<JsonObject>();
      for (const [deviceId, body] of Object.entries(byDevice)) if (isJsonObject(body)) devices[deviceId] = body;
      valid[userId] = devices;
    }
    await e2ee.toDevice.receive(from, type, messageId, valid);
  });

  edus.register("m.device_list_update", async (origin, content) => {
    if (!unsafeTestBreak("drop-inbound-device-list-updates")) await remote.deviceListUpdate(origin, content);
  });
  edus.register("m.signing_key_update", (origin, content) => remote.signingKeyUpdate(origin, content));

  // Outbound: a local user's device or cross-signing keys changed. One chain, so the updates of a
  // user are queued in the order of their stream positions.
  let chain: Promise<void> = Promise.resolve();
  e2ee.deviceLists.onChange((_userIds, _position, changes) => {
    const local = changes.filter((c) => !c.selfOnly && serverNameOf(c.userId) === serverName);
    if (local.length === 0) return;
    chain = chain
      .then(() => announce(deps, local))
      .catch((err) => logger.warn({ err }, "could not queue device-list updates for other servers"));
  });
  // A user we no longer share any room with is no longer tracked: their server stops telling us
  // of their devices, so our copy would silently age. It is dropped, and fetched whole again if
  // we share a room later.
  let forgetting: Promise<void> = Promise.resolve();
  deps.onEventsPersisted((roomId, events) => {
    const leaving = events.filter((e) => e.type === "m.room.member" && e.membership !== "join" && e.stateKey !== undefined);
    if (leaving.length === 0) return;
    forgetting = forgetting
      .then(async () => {
        const candidates = new Set<string>();
        for (const e of leaving) {
          if (serverNameOf(e.stateKey!) !== serverName) candidates.add(e.stateKey!);
          else for (const u of await deps.joinedMembers(roomId)) if (serverNameOf(u) !== serverName) candidates.add(u);
        }
        await remote.forgetUntracked([...candidates]);
      })
      .catch((err) => {
        // At shutdown the work left is moot: the lists are dropped at the next leave, or refetched.
        if (!isDatabaseClosed(err)) logger.warn({ err, roomId }, "could not drop the device lists of users we no longer share a room with");
      });
  });
  return remote;
}

function messageIdOf(messageKey: string, server: string): string {
  return createHash("sha256").update(`${messageKey}\u0000${server}`).digest("base64url").slice(0, MESSAGE_ID_LENGTH);
}

async function ask(http: FederationHttpClient, server: string, path: string, body: unknown, signal: AbortSignal): Promise<JsonObject> {
  const res = await http.request(server, { method: "POST", path, body, signal });
  if (res.status !== 200 || !isJsonObject(res.body)) throw new Error(`answered ${res.status}`);
  return res.body;
}

/** Queues `m.device_list_update` and `m.signing_key_update` EDUs for the servers sharing a room with each user. */
async function announce(deps: E2eeFederationDeps, changes: readonly RecordedChange[]): Promise<void> {
  if (unsafeTestBreak("drop-outbound-device-list-updates")) return;
  const byUser = new Map<string, RecordedChange[]>();
  for (const c of changes) byUser.set(c.userId, [...(byUser.get(c.userId) ?? []), c]);
  for (const [userId, own] of byUser) {
    const servers = new Set<string>();
    for (const u of await deps.usersSharingRoomsWith(userId)) {
      const server = serverNameOf(u);
      if (server !== undefined && server !== deps.serverName) servers.add(server);
    }
    if (servers.size === 0) continue;
    const now = await deps.e2ee.userDevices(userId);
    const devices = new Map(now.devices.map((d) => [d.device_id, d]));
    const out: Edu[] = [];
    const deviceChanges = own.filter((c) => c.deviceId !== undefined).sort((a, b) => a.streamId - b.streamId);
    let prev = deviceChanges.length ? await deps.e2ee.deviceLists.lastDeviceChange(userId, deviceChanges[0]!.streamId) : 0;
    // A signature of one's own master key by a device is recorded under the master key's ID: it
    // goes out as an update of that "device" carrying the key, as Synapse sends it (not a deletion).
    const crossSigningKeys = new Map<string, JsonObject>();
    for (const key of [now.master_key, now.self_signing_key]) {
      if (key && isJsonObject(key.keys)) for (const publicKey of Object.values(key.keys)) if (typeof publicKey === "string") crossSigningKeys.set(publicKey, key);
    }
    for (const c of deviceChanges) {
      const key = crossSigningKeys.get(c.deviceId!);
      const device = devices.get(c.deviceId!) ?? (key ? { device_id: c.deviceId!, keys: key } : undefined);
      out.push({
        edu_type: "m.device_list_update",
        content: {
          user_id: userId,
          device_id: c.deviceId,
          stream_id: c.streamId,
          prev_id: prev ? [prev] : [],
          ...(device
            ? { ...(device.keys ? { keys: device.keys } : {}), ...(device.device_display_name !== undefined ? { device_display_name: device.device_display_name } : {}) }
            : { deleted: true }),
        },
      });
      prev = c.streamId;
    }
    if (own.some((c) => c.deviceId === undefined)) {
      out.push({
        edu_type: "m.signing_key_update",
        content: {
          user_id: userId,
          ...(now.master_key ? { master_key: now.master_key } : {}),
          ...(now.self_signing_key ? { self_signing_key: now.self_signing_key } : {}),
        },
      });
    }
    if (out.length) await deps.sender.enqueue(servers, { edus: out });
  }
}

/** What we know of remote users' device lists, kept current from their servers' updates. */
export class RemoteDeviceLists {
  /** Updates of one user are applied one at a time, in arrival order. */
  private readonly perUser = new Map<string, Promise<unknown>>();
  /** Resyncs running in the background (tests wait for them). */
  readonly resyncs = new Set<Promise<void>>();

  constructor(private readonly deps: E2eeFederationDeps) {}

  private serial<T>(userId: string, work: () => Promise<T>): Promise<T> {
    const before = this.perUser.get(userId) ?? Promise.resolve();
    const run = before.catch(() => {}).then(work);
    const tail = run.catch(() => {});
    this.perUser.set(userId, tail);
    void tail.then(() => {
      if (this.perUser.get(userId) === tail) this.perUser.delete(userId);
    });
    return run;
  }

  async deviceListUpdate(origin: string, content: Record<string, unknown>): Promise<void> {
    const { user_id: userId, device_id: deviceId, stream_id: streamId } = content;
    const prevIds = content.prev_id ?? [];
    if (typeof userId !== "string" || typeof deviceId !== "string" || !Number.isSafeInteger(streamId) || !Array.isArray(prevIds)) {
      throw new Error("m.device_list_update needs user_id, device_id and an integer stream_id");
    }
    if (serverNameOf(userId) !== origin) throw new Error(`${origin} cannot update the devices of ${userId}`);
    const stream = streamId as number;
    const applied = await this.serial(userId, async () => {
      const head = await this.head(userId);
      if (head && !head.stale && stream <= head.streamId) return false; // already applied (a repeat or an old one)
      const follows = head !== undefined && !head.stale && prevIds.length > 0 && prevIds.every((p) => typeof p === "number" && p <= head.streamId) && prevIds.includes(head.streamId);
      if (!follows) {
        // A gap (or a user we never synced): what we hold cannot be brought up to date from this
        // update alone. Fetch the whole list.
        // Local users hear of the change once the list is fetched (or fetching failed).
        await this.setHead(userId, head?.streamId ?? 0, true);
        this.resyncLater(userId);
        return false;
      }
      const d = schema.remoteDevices;
      await this.deps.db.transaction(async (tx) => {
        if (content.deleted === true) {
          await tx.delete(d).where(and(eq(d.userId, userId), eq(d.deviceId, deviceId)));
        } else {
          const row = {
            displayName: typeof content.device_display_name === "string" ? content.device_display_name : null,
            keysJson: isJsonObject(content.keys) ? canonicalJson(content.keys) : null,
          };
          await tx.insert(d).values({ userId, deviceId, ...row }).onConflictDoUpdate({ target: [d.userId, d.deviceId], set: row });
        }
        await this.setHead(userId, stream, false, tx);
      });
      return true;
    });
    if (applied) await this.deps.e2ee.remoteUsersChanged([userId]);
  }

  async signingKeyUpdate(origin: string, content: Record<string, unknown>): Promise<void> {
    const userId = content.user_id;
    if (typeof userId !== "string") throw new Error("m.signing_key_update needs user_id");
    if (serverNameOf(userId) !== origin) throw new Error(`${origin} cannot update the keys of ${userId}`);
    const keys: Array<[string, JsonObject]> = [];
    for (const [field, usage] of [["master_key", "master"], ["self_signing_key", "self_signing"]] as const) {
      const key = content[field];
      if (key === undefined) continue;
      if (!isJsonObject(key) || key.user_id !== userId) throw new Error(`m.signing_key_update: ${field} is not a key of ${userId}`);
      keys.push([usage, key]);
    }
    if (keys.length === 0) return;
    await this.serial(userId, async () => {
      const t = schema.remoteCrossSigningKeys;
      for (const [usage, key] of keys) {
        const keyJson = canonicalJson(key);
        await this.deps.db.insert(t).values({ userId, usage, keyJson }).onConflictDoUpdate({ target: [t.userId, t.usage], set: { keyJson } });
      }
    });
    await this.deps.e2ee.remoteUsersChanged([userId]);
  }

  /** What we hold of a remote user's devices (undefined when we never fetched their list). */
  async devicesOf(userId: string): Promise<{ streamId: number; stale: boolean; devices: Map<string, { displayName: string | null; keys: JsonObject | null }> } | undefined> {
    const head = await this.head(userId);
    if (!head) return undefined;
    const d = schema.remoteDevices;
    const rows = await this.deps.db.select().from(d).where(eq(d.userId, userId));
    return {
      streamId: head.streamId,
      stale: head.stale,
      devices: new Map(rows.map((r) => [r.deviceId, { displayName: r.displayName, keys: r.keysJson ? (JSON.parse(r.keysJson) as JsonObject) : null }])),
    };
  }

  /**
   * Fills `out` with a tracked user's devices (those in `wanted`, all when it is empty) and
   * cross-signing keys from our copy of their list, fetching it whole first when we have none or it
   * is stale. False when the list cannot be had (the caller asks their server instead).
   */
  async answerFromCopy(
    userId: string,
    wanted: readonly string[],
    out: Pick<KeysQueryResponse, "device_keys" | "master_keys" | "self_signing_keys">,
  ): Promise<boolean> {
    let held = await this.devicesOf(userId);
    if (!held || held.stale) {
      try {
        await this.resync(userId);
      } catch (err) {
        this.deps.logger.info({ err, userId }, "could not fetch a remote device list; asking for the keys instead");
        return false;
      }
      held = await this.devicesOf(userId);
      if (!held || held.stale) return false;
    }
    const byDevice = dictionary<JsonObject>();
    for (const [deviceId, device] of held.devices) {
      if (!device.keys || (wanted.length > 0 && !wanted.includes(deviceId))) continue;
      byDevice[deviceId] = { ...device.keys, unsigned: device.displayName !== null ? { device_display_name: device.displayName } : {} };
    }
    out.device_keys[userId] = byDevice;
    const crossSigning = await this.crossSigningKeysOf(userId);
    if (crossSigning.master) out.master_keys[userId] = crossSigning.master;
    if (crossSigning.self_signing) out.self_signing_keys[userId] = crossSigning.self_signing;
    return true;
  }

  /** Drops what we hold of those of `userIds` who share no room with a local user any more. */
  async forgetUntracked(userIds: readonly string[]): Promise<void> {
    const h = schema.remoteDeviceListHeads;
    for (let i = 0; i < userIds.length; i += 500) {
      const chunk = userIds.slice(i, i + 500);
      const held = (await this.deps.db.select({ userId: h.userId }).from(h).where(inArray(h.userId, chunk))).map((r) => r.userId);
      if (held.length === 0) continue;
      const still = await this.deps.sharingRoomsWithLocalUsers(held);
      const gone = held.filter((u) => !still.has(u));
      if (gone.length === 0) continue;
      await this.deps.db.transaction(async (tx) => {
        await tx.delete(schema.remoteDevices).where(inArray(schema.remoteDevices.userId, gone));
        await tx.delete(schema.remoteCrossSigningKeys).where(inArray(schema.remoteCrossSigningKeys.userId, gone));
        await tx.delete(h).where(inArray(h.userId, gone));
      });
    }
  }

  /** The cross-signing keys we hold of a remote user, by usage. */
  async crossSigningKeysOf(userId: string): Promise<Record<string, JsonObject>> {
    const t = schema.remoteCrossSigningKeys;
    const rows = await this.deps.db.select().from(t).where(eq(t.userId, userId));
    return Object.fromEntries(rows.map((r) => [r.usage, JSON.parse(r.keyJson) as JsonObject]));
  }

  /** Waits for the resyncs running now (tests). */
  async settled(): Promise<void> {
    while (this.resyncs.size > 0) await Promise.all([...this.resyncs]);
  }

  private resyncLater(userId: string): void {
    const run: Promise<void> = this.resync(userId)
      .catch(async (err) => {
        this.deps.logger.info({ err, userId }, "could not resync a remote device list; it stays stale");
        // Clients still learn that the list changed (their key queries go to the user's server).
        await this.deps.e2ee.remoteUsersChanged([userId]);
      })
      .catch((err) => this.deps.logger.warn({ err, userId }, "could not announce a remote device-list change"))
      .finally(() => this.resyncs.delete(run));
    this.resyncs.add(run);
  }

  /** Fetches a remote user's whole device list (`/user/devices`) and replaces what we hold. */
  async resync(userId: string): Promise<void> {
    const server = serverNameOf(userId);
    if (server === undefined) return;
    const res = await this.deps.http.request(server, {
      method: "GET",
      path: `/_matrix/federation/v1/user/devices/${encodeURIComponent(userId)}`,
      signal: AbortSignal.timeout(30_000),
    });
    const body = res.body;
    if (res.status !== 200 || !isJsonObject(body) || body.user_id !== userId || !Number.isSafeInteger(body.stream_id) || !Array.isArray(body.devices)) {
      throw new Error(`/user/devices answered ${res.status} without a device list`);
    }
    await this.serial(userId, () =>
      this.deps.db.transaction(async (tx) => {
        const d = schema.remoteDevices;
        await tx.delete(d).where(eq(d.userId, userId));
        const rows = (body.devices as unknown[])
          .filter((x): x is JsonObject => isJsonObject(x) && typeof x.device_id === "string")
          .map((x) => ({
            userId,
            deviceId: x.device_id as string,
            displayName: typeof x.device_display_name === "string" ? x.device_display_name : null,
            keysJson: isJsonObject(x.keys) ? canonicalJson(x.keys) : null,
          }));
        const unique = [...new Map(rows.map((r) => [r.deviceId, r])).values()];
        if (unique.length) await tx.insert(d).values(unique);
        const t = schema.remoteCrossSigningKeys;
        for (const [field, usage] of [["master_key", "master"], ["self_signing_key", "self_signing"]] as const) {
          const key = body[field];
          if (!isJsonObject(key) || key.user_id !== userId) continue;
          const keyJson = canonicalJson(key);
          await tx.insert(t).values({ userId, usage, keyJson }).onConflictDoUpdate({ target: [t.userId, t.usage], set: { keyJson } });
        }
        await this.setHead(userId, body.stream_id as number, false, tx);
      }),
    );
    await this.deps.e2ee.remoteUsersChanged([userId]);
  }

  private async head(userId: string): Promise<{ streamId: number; stale: boolean } | undefined> {
    const h = schema.remoteDeviceListHeads;
    const [row] = await this.deps.db.select({ streamId: h.streamId, stale: h.stale }).from(h).where(eq(h.userId, userId));
    return row;
  }

  private async setHead(userId: string, streamId: number, stale: boolean, q: Pick<Database, "insert"> = this.deps.db): Promise<void> {
    const h = schema.remoteDeviceListHeads;
    const values = { streamId, stale, updatedTs: this.deps.now() };
    await q.insert(h).values({ userId, ...values }).onConflictDoUpdate({ target: h.userId, set: values });
  }
}

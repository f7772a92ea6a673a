// ParleyClient: a Matrix client on the Client-Server API. It logs in or registers, keeps a /sync
// loop running (client/sync.ts), keeps a model of the user's rooms (client/room.ts) and hands out
// their events, decrypted, as typed events and as an async iterator. End-to-end encryption is
// plugged in through ClientCryptoHooks (client/crypto/e2ee.ts implements them): the client calls
// them at the points the spec's E2EE module needs (each sync, each encrypted event, each send into an
// encrypted room, each membership change of an encrypted room).
// https://spec.matrix.org/v1.16/client-server-api/
import { EventEmitter } from "node:events";
import { randomBytes } from "node:crypto";
import { MatrixApiError, MatrixConnectionError, MatrixHttp, encodePath, sleep } from "./http.ts";
import { Room, type StateEvent, type TimelineEvent } from "./room.ts";
import { type BackoffOptions, SyncLoop, type SyncState, type SyncStateData } from "./sync.ts";

export type { TimelineEvent } from "./room.ts";

/** What the E2EE layer gives the client (client/crypto/e2ee.ts implements it). */
export interface ClientCryptoHooks {
  /**
   * Called with each /sync response BEFORE the client emits its rooms' events: to-device events
   * (decrypting Olm, taking m.room_key etc.), device_lists.changed/left, device_one_time_keys_count,
   * device_unused_fallback_key_types. Returns the to-device events it did not consume (already
   * decrypted when they were Olm).
   */
  processSync(sync: any): Promise<Array<Record<string, unknown>>>;
  /** For an m.room.encrypted room event: the decrypted event with `encrypted` info, or the event with encrypted.decrypted false. Never throws. */
  decryptRoomEvent(roomId: string, event: TimelineEvent): Promise<TimelineEvent>;
  /** type/content → m.room.encrypted content, for the room's joined and invited members. */
  encryptRoomEvent(roomId: string, type: string, content: Record<string, unknown>, members: string[]): Promise<Record<string, unknown>>;
  /** Membership changes in an encrypted room (rotate the outbound session when someone leaves). */
  onMembershipChange?(roomId: string, userId: string, membership: string): void;
  /** Tells the client when a room key arrives, so events that could not be decrypted yet are tried again. */
  addRoomKeyListener?(listener: (roomId: string, sessionId: string) => void): void;
}

export interface LoginOptions {
  deviceId?: string;
  initialDeviceDisplayName?: string;
  fetch?: typeof fetch;
}

export interface ClientOptions {
  baseUrl: string;
  accessToken: string;
  userId: string;
  deviceId: string;
  crypto?: ClientCryptoHooks;
  fetch?: typeof fetch;
  /** Tuning of the sync loop; the defaults suit an interactive client. */
  sync?: { pollTimeoutMs?: number; timelineLimit?: number; backoff?: BackoffOptions };
}

export interface Presence {
  presence: string;
  last_active_ago?: number;
  status_msg?: string;
  currently_active?: boolean;
}

/** The events a ParleyClient emits, with their arguments. */
export type ParleyClientEvents = {
  /** A timeline event of a room (decrypted), in the order of the room's timeline. */
  timeline: [room: Room, event: TimelineEvent];
  /** An event of the room's recent timeline that had no key yet now decrypts (it is replaced in `room.timeline`). */
  decrypted: [room: Room, event: TimelineEvent];
  /** A room appeared or changed (state, membership, summary, unread counts). */
  room: [room: Room];
  typing: [room: Room];
  receipt: [room: Room];
  presence: [userId: string, presence: Presence];
  sync: [state: SyncState, data?: SyncStateData];
  /** A to-device event that crypto did not consume (verification requests, custom types). */
  toDevice: [event: Record<string, unknown>];
  /** The sync loop ended on an error (M_UNKNOWN_TOKEN...), or a listener threw. Only emitted when listened to. */
  error: [error: Error];
};

/** Attempts of a send whose connection failed: the same transaction ID makes the retry idempotent. */
const SEND_ATTEMPTS = 3;

export class ParleyClient extends EventEmitter<ParleyClientEvents> {
  readonly userId: string;
  readonly deviceId: string;
  readonly http: MatrixHttp;
  private crypto: ClientCryptoHooks | undefined;
  private readonly roomsById = new Map<string, Room>();
  private readonly syncLoop: SyncLoop;
  private readonly iterators = new Set<TimelineQueue>();
  /** Transaction IDs: a per-client random prefix and a counter, so two clients of one device never collide. */
  private readonly txnPrefix = `p${Date.now().toString(36)}${randomBytes(6).toString("hex")}`;
  private txnCounter = 0;
  /** Global account data by type (m.direct, m.ignored_user_list...). */
  readonly accountData = new Map<string, Record<string, unknown>>();

  /** Logs in with a password (m.login.password, identifier m.id.user: a localpart or a full user ID). */
  static async login(baseUrl: string, user: string, password: string, opts: LoginOptions = {}): Promise<ParleyClient> {
    const http = new MatrixHttp({ baseUrl, ...(opts.fetch ? { fetch: opts.fetch } : {}) });
    const answer = await http.request<LoginAnswer>("POST", "/_matrix/client/v3/login", {
      body: {
        type: "m.login.password",
        identifier: { type: "m.id.user", user },
        password,
        device_id: opts.deviceId,
        initial_device_display_name: opts.initialDeviceDisplayName,
      },
    });
    return ParleyClient.fromLogin(baseUrl, answer, opts);
  }

  /**
   * Registers an account and logs it in. The user-interactive authentication is walked through:
   * the first request learns the session and the flows, then each stage of a flow this client can
   * complete (m.login.dummy, m.login.registration_token) is sent in turn.
   * https://spec.matrix.org/v1.16/client-server-api/#user-interactive-authentication-api
   */
  static async register(
    baseUrl: string,
    username: string,
    password: string,
    opts: LoginOptions & { registrationToken?: string } = {},
  ): Promise<ParleyClient> {
    const http = new MatrixHttp({ baseUrl, ...(opts.fetch ? { fetch: opts.fetch } : {}) });
    const params = { username, password, device_id: opts.deviceId, initial_device_display_name: opts.initialDeviceDisplayName };
    const canDo = (stage: string) => stage === "m.login.dummy" || (stage === "m.login.registration_token" && opts.registrationToken !== undefined);
    let auth: Record<string, unknown> | undefined;
    // Each round completes one stage; a flow has a few at most, the bound only stops a server that never finishes.
    for (let round = 0; round < 10; round++) {
      try {
        const answer = await http.request<LoginAnswer>("POST", "/_matrix/client/v3/register", { body: auth ? { ...params, auth } : params });
        return ParleyClient.fromLogin(baseUrl, answer, opts);
      } catch (err) {
        if (!(err instanceof MatrixApiError) || err.status !== 401 || !Array.isArray(err.data.flows)) throw err;
        // A 401 with an errcode after a stage was sent means that stage failed (a bad token).
        if (auth && typeof err.data.errcode === "string") throw err;
        const session = typeof err.data.session === "string" ? err.data.session : undefined;
        const completed = new Set(Array.isArray(err.data.completed) ? (err.data.completed as string[]) : []);
        const flows = (err.data.flows as Array<{ stages?: unknown }>).map((f) => (Array.isArray(f.stages) ? (f.stages as string[]) : []));
        const flow = flows.find((stages) => stages.every((s) => completed.has(s) || canDo(s)));
        const next = flow?.find((s) => !completed.has(s));
        if (!next) {
          const offered = flows.map((s) => s.join(" → ")).join("; ");
          throw new MatrixApiError(401, "M_FORBIDDEN", `no registration flow this client can complete (offered: ${offered})`, err.data);
        }
        auth = { type: next, ...(session ? { session } : {}), ...(next === "m.login.registration_token" ? { token: opts.registrationToken } : {}) };
      }
    }
    throw new MatrixApiError(401, "M_FORBIDDEN", "registration did not finish", {});
  }

  private static fromLogin(baseUrl: string, answer: LoginAnswer, opts: LoginOptions): ParleyClient {
    if (typeof answer.access_token !== "string" || typeof answer.user_id !== "string" || typeof answer.device_id !== "string") {
      throw new MatrixApiError(200, "M_UNKNOWN", "login answer without access_token, user_id or device_id", answer as Record<string, unknown>);
    }
    return new ParleyClient({
      baseUrl,
      accessToken: answer.access_token,
      userId: answer.user_id,
      deviceId: answer.device_id,
      ...(opts.fetch ? { fetch: opts.fetch } : {}),
    });
  }

  constructor(opts: ClientOptions) {
    super();
    this.userId = opts.userId;
    this.deviceId = opts.deviceId;
    this.http = new MatrixHttp({ baseUrl: opts.baseUrl, accessToken: opts.accessToken, ...(opts.fetch ? { fetch: opts.fetch } : {}) });
    this.crypto = opts.crypto;
    this.syncLoop = new SyncLoop({
      http: this.http,
      userId: this.userId,
      ...opts.sync,
      onResponse: (response) => this.processSync(response),
      onState: (state, data) => this.onSyncState(state, data),
    });
  }

  /** Plugs in end-to-end encryption (before start(), so the first sync's to-device events reach it). */
  setCrypto(crypto: ClientCryptoHooks): void {
    this.crypto = crypto;
    // Over federation an event can arrive before its key: it is decrypted once the key comes.
    crypto.addRoomKeyListener?.((roomId, sessionId) => void this.retryDecryption(roomId, sessionId));
  }

  /**
   * Decrypts again the room's recent events of this Megolm session that had no key, replacing them
   * in the room's timeline and emitting "decrypted" (room, event) for each that now decrypts.
   */
  private async retryDecryption(roomId: string, sessionId: string): Promise<void> {
    const room = this.roomsById.get(roomId);
    if (!room) return;
    const waiting = room.timeline.filter((e) => e.type === "m.room.encrypted" && e.encrypted?.decrypted === false && e.content.session_id === sessionId);
    for (const event of waiting) {
      const { encrypted: _failed, ...original } = event;
      const again = await this.decrypt(roomId, original);
      if (again.encrypted?.decrypted !== true) continue;
      const at = room.timeline.indexOf(event);
      if (at >= 0) room.timeline[at] = again;
      this.safeEmit("decrypted", room, again);
    }
  }

  /** The `since` token of the sync loop (the next_batch of the last processed sync). */
  get syncToken(): string | undefined {
    return this.syncLoop.since;
  }

  /** Starts the sync loop; resolves once the first sync is processed (rejects if it cannot be). */
  start(): Promise<void> {
    return this.syncLoop.start();
  }

  /** Stops the sync loop (the long-poll in flight is aborted); timeline iterators end. */
  async stop(): Promise<void> {
    await this.syncLoop.stop();
  }

  /** Logs this device out (its access token stops working) and stops syncing. */
  async logout(): Promise<void> {
    await this.stop();
    await this.http.request("POST", "/_matrix/client/v3/logout", { body: {} });
    this.http.accessToken = undefined;
  }

  rooms(): Room[] {
    return [...this.roomsById.values()];
  }

  room(roomId: string): Room | undefined {
    return this.roomsById.get(roomId);
  }

  async createRoom(
    opts: {
      name?: string;
      topic?: string;
      invite?: string[];
      isDirect?: boolean;
      encrypted?: boolean;
      preset?: "private_chat" | "public_chat" | "trusted_private_chat";
    } = {},
  ): Promise<string> {
    const body: Record<string, unknown> = {
      preset: opts.preset ?? (opts.isDirect ? "trusted_private_chat" : "private_chat"),
      ...(opts.name !== undefined ? { name: opts.name } : {}),
      ...(opts.topic !== undefined ? { topic: opts.topic } : {}),
      ...(opts.invite ? { invite: opts.invite } : {}),
      ...(opts.isDirect ? { is_direct: true } : {}),
    };
    if (opts.encrypted) body.initial_state = [{ type: "m.room.encryption", state_key: "", content: { algorithm: "m.megolm.v1.aes-sha2" } }];
    const answer = await this.http.request<{ room_id: string }>("POST", "/_matrix/client/v3/createRoom", { body });
    if (opts.isDirect && opts.invite?.length) await this.markDirect(answer.room_id, opts.invite);
    return answer.room_id;
  }

  /**
   * Records a direct chat in the m.direct account data (user ID → room IDs), which is what makes
   * other clients (Element) list it as a DM: `is_direct` only marks the invite.
   * https://spec.matrix.org/v1.16/client-server-api/#direct-messaging
   */
  private async markDirect(roomId: string, userIds: string[]): Promise<void> {
    const path = `/_matrix/client/v3/user/${encodePath(this.userId)}/account_data/m.direct`;
    let direct: Record<string, unknown>;
    try {
      // Read from the server, not the synced copy: another device may have changed it since.
      direct = await this.http.request<Record<string, unknown>>("GET", path);
    } catch (err) {
      if (!(err instanceof MatrixApiError && err.status === 404)) throw err;
      direct = {};
    }
    for (const userId of userIds) {
      const rooms = Array.isArray(direct[userId]) ? (direct[userId] as unknown[]).filter((r) => typeof r === "string") : [];
      if (!rooms.includes(roomId)) direct[userId] = [...rooms, roomId];
    }
    await this.http.request("PUT", path, { body: direct });
    this.accountData.set("m.direct", direct);
  }

  /** Joins by room ID or alias (`via`: servers to join through); the room ID. */
  async joinRoom(roomIdOrAlias: string, via?: string[]): Promise<string> {
    const answer = await this.http.request<{ room_id: string }>("POST", `/_matrix/client/v3/join/${encodePath(roomIdOrAlias)}`, {
      query: via?.length ? { via: via.join(",") } : undefined,
      body: {},
    });
    return answer.room_id;
  }

  async leaveRoom(roomId: string): Promise<void> {
    await this.http.request("POST", `/_matrix/client/v3/rooms/${encodePath(roomId)}/leave`, { body: {} });
  }

  async invite(roomId: string, userId: string): Promise<void> {
    await this.http.request("POST", `/_matrix/client/v3/rooms/${encodePath(roomId)}/invite`, { body: { user_id: userId } });
  }

  /**
   * Sends a room event; the event ID. In an encrypted room it goes through crypto.encryptRoomEvent
   * for the joined and invited members; without crypto it is refused rather than sent in the clear.
   */
  async sendEvent(roomId: string, type: string, content: Record<string, unknown>): Promise<string> {
    let sendType = type;
    let sendContent = content;
    if (type !== "m.room.encrypted" && (await this.isEncrypted(roomId))) {
      if (!this.crypto) throw new Error(`room ${roomId} is encrypted and this client has no crypto: refusing to send in the clear`);
      const members = await this.encryptionRecipients(roomId);
      sendContent = await this.crypto.encryptRoomEvent(roomId, type, content, members);
      sendType = "m.room.encrypted";
    }
    const path = `/_matrix/client/v3/rooms/${encodePath(roomId)}/send/${encodePath(sendType, this.newTxnId())}`;
    const answer = await this.withRetries(() => this.http.request<{ event_id: string }>("PUT", path, { body: sendContent }));
    return answer.event_id;
  }

  sendText(roomId: string, body: string): Promise<string> {
    return this.sendEvent(roomId, "m.room.message", { msgtype: "m.text", body });
  }

  /**
   * A page of the room's history (`/messages`), events decrypted like the timeline's, in the
   * server's order (dir "b", the default: newest first). `end` continues the paging; none means
   * the start (or end) of the room was reached. Without `from`, paging starts from the latest event.
   */
  async messages(roomId: string, opts: { from?: string; dir?: "b" | "f"; limit?: number } = {}): Promise<{ events: TimelineEvent[]; end?: string }> {
    const answer = await this.http.request<{ chunk?: TimelineEvent[]; end?: string; state?: StateEvent[] }>(
      "GET",
      `/_matrix/client/v3/rooms/${encodePath(roomId)}/messages`,
      { query: { from: opts.from, dir: opts.dir ?? "b", limit: opts.limit, filter: JSON.stringify({ lazy_load_members: true }) } },
    );
    const room = this.roomsById.get(roomId);
    // Lazy-loaded members of the page's senders: kept when the room knows nothing newer of them.
    if (room) for (const event of answer.state ?? []) if (event.type === "m.room.member" && !room.getState("m.room.member", event.state_key)) room.setState(event);
    const events: TimelineEvent[] = [];
    for (const event of answer.chunk ?? []) events.push(await this.decrypt(roomId, event));
    return answer.end !== undefined ? { events, end: answer.end } : { events };
  }

  async sendTyping(roomId: string, typing: boolean, timeoutMs = 30_000): Promise<void> {
    await this.http.request("PUT", `/_matrix/client/v3/rooms/${encodePath(roomId)}/typing/${encodePath(this.userId)}`, {
      body: typing ? { typing: true, timeout: timeoutMs } : { typing: false },
    });
  }

  async sendReadReceipt(roomId: string, eventId: string): Promise<void> {
    await this.http.request("POST", `/_matrix/client/v3/rooms/${encodePath(roomId)}/receipt/m.read/${encodePath(eventId)}`, { body: {} });
  }

  async setPresence(presence: "online" | "offline" | "unavailable", statusMsg?: string): Promise<void> {
    await this.http.request("PUT", `/_matrix/client/v3/presence/${encodePath(this.userId)}/status`, {
      body: { presence, ...(statusMsg !== undefined ? { status_msg: statusMsg } : {}) },
    });
  }

  async getProfile(userId: string): Promise<{ displayname?: string; avatar_url?: string }> {
    return this.http.request("GET", `/_matrix/client/v3/profile/${encodePath(userId)}`);
  }

  async setDisplayName(name: string): Promise<void> {
    await this.http.request("PUT", `/_matrix/client/v3/profile/${encodePath(this.userId)}/displayname`, { body: { displayname: name } });
  }

  /** The user's devices (`GET /devices`). */
  async devices(): Promise<Array<{ device_id: string; display_name?: string; last_seen_ts?: number; last_seen_ip?: string }>> {
    const answer = await this.http.request<{ devices?: Array<{ device_id: string; display_name?: string; last_seen_ts?: number }> }>("GET", "/_matrix/client/v3/devices");
    return answer.devices ?? [];
  }

  /** `messages`: user ID → device ID (or "*") → content. */
  async sendToDevice(type: string, messages: Record<string, Record<string, Record<string, unknown>>>): Promise<void> {
    const path = `/_matrix/client/v3/sendToDevice/${encodePath(type, this.newTxnId())}`;
    await this.withRetries(() => this.http.request("PUT", path, { body: { messages } }));
  }

  /**
   * Every room's timeline events, decrypted, from now on, until stop(). Subscribed when called, so
   * nothing that arrives before the first `next()` is lost.
   */
  timeline(): AsyncIterableIterator<{ room: Room; event: TimelineEvent }> {
    const queue = new TimelineQueue(() => this.iterators.delete(queue));
    this.iterators.add(queue);
    return queue;
  }

  private newTxnId(): string {
    return `${this.txnPrefix}.${++this.txnCounter}`;
  }

  /** Retries a request whose connection failed (its transaction ID makes the retry idempotent). */
  private async withRetries<T>(send: () => Promise<T>): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await send();
      } catch (err) {
        if (!(err instanceof MatrixConnectionError) || attempt >= SEND_ATTEMPTS) throw err;
        await sleep(250 * attempt);
      }
    }
  }

  /**
   * Whether the room is encrypted. A room this client has synced as joined answers from its state;
   * otherwise (just created or joined, not synced yet) the server is asked, so a message sent right
   * after createRoom({ encrypted: true }) never goes out in the clear.
   */
  private async isEncrypted(roomId: string): Promise<boolean> {
    const room = this.roomsById.get(roomId);
    if (room?.encrypted) return true;
    if (room?.stateSynced && room.membership === "join") return false;
    try {
      await this.http.request("GET", `/_matrix/client/v3/rooms/${encodePath(roomId)}/state/m.room.encryption/`);
      return true;
    } catch (err) {
      if (err instanceof MatrixApiError && err.status === 404) return false;
      throw err;
    }
  }

  /** The joined and invited members, all of them (members are lazy-loaded: fetched once per room). */
  private async encryptionRecipients(roomId: string): Promise<string[]> {
    let room = this.roomsById.get(roomId);
    if (!room?.membersLoaded) {
      const answer = await this.http.request<{ chunk?: StateEvent[] }>("GET", `/_matrix/client/v3/rooms/${encodePath(roomId)}/members`, {
        query: { not_membership: "leave" },
      });
      const members = answer.chunk ?? [];
      room = this.roomsById.get(roomId);
      if (!room) return members.filter((e) => e.content.membership === "join" || e.content.membership === "invite").map((e) => e.state_key);
      // A member event seen in /sync meanwhile is at least as new as this answer: it stays.
      for (const event of members) if (!room.getState("m.room.member", event.state_key)) room.setState(event);
      room.membersLoaded = true;
    }
    return room.joinedAndInvited();
  }

  private async decrypt(roomId: string, event: TimelineEvent): Promise<TimelineEvent> {
    if (event.type !== "m.room.encrypted") return event;
    if (!this.crypto) return { ...event, encrypted: { decrypted: false, error: "NO_CRYPTO" } };
    try {
      return await this.crypto.decryptRoomEvent(roomId, event);
    } catch (err) {
      // The hook promises never to throw; if it does, the event is still shown as undecryptable, not lost.
      return { ...event, encrypted: { decrypted: false, error: (err as Error)?.name === "OlmError" ? String((err as { code?: string }).code) : "DECRYPTION_FAILED" } };
    }
  }

  private onSyncState(state: SyncState, data?: SyncStateData): void {
    this.safeEmit("sync", state, data);
    if (state === "ERROR" && data?.fatal && data.error && this.listenerCount("error") > 0) this.emit("error", data.error);
    if (state === "STOPPED") {
      for (const queue of this.iterators) queue.end();
      this.iterators.clear();
    }
  }

  /**
   * Emits to listeners; a listener that throws does not break the sync loop: its error goes to the
   * "error" listeners, or, without any, is rethrown outside the loop (an uncaught error, as Node does
   * for a throwing listener anywhere else).
   */
  private safeEmit<K extends keyof ParleyClientEvents & string>(event: K, ...args: ParleyClientEvents[K]): void {
    try {
      (this.emit as (event: string, ...args: unknown[]) => boolean)(event, ...args);
    } catch (err) {
      const error = err instanceof Error ? err : new Error(String(err));
      if (event !== "error" && this.listenerCount("error") > 0) this.emit("error", error);
      else
        queueMicrotask(() => {
          throw error;
        });
    }
  }

  private async processSync(sync: any): Promise<void> {
    const toDevice: Array<Record<string, unknown>> = this.crypto ? await this.crypto.processSync(sync) : (sync.to_device?.events ?? []);

    for (const event of sync.account_data?.events ?? []) {
      if (typeof event?.type === "string" && isObject(event.content)) this.accountData.set(event.type, event.content);
    }
    const rooms = sync.rooms ?? {};
    for (const [roomId, data] of Object.entries<any>(rooms.join ?? {})) await this.processRoom(roomId, data, "join");
    for (const [roomId, data] of Object.entries<any>(rooms.invite ?? {})) this.processInvite(roomId, data);
    for (const [roomId, data] of Object.entries<any>(rooms.leave ?? {})) await this.processRoom(roomId, data, "leave");

    for (const event of sync.presence?.events ?? []) {
      if (typeof event?.sender === "string" && isObject(event.content)) this.safeEmit("presence", event.sender, event.content as Presence);
    }
    for (const event of toDevice) this.safeEmit("toDevice", event);
  }

  private roomOf(roomId: string): Room {
    let room = this.roomsById.get(roomId);
    if (!room) this.roomsById.set(roomId, (room = new Room(roomId, this.userId)));
    return room;
  }

  private async processRoom(roomId: string, data: any, membership: "join" | "leave"): Promise<void> {
    const room = this.roomOf(roomId);
    room.membership = membership;
    const summary = data.summary;
    if (isObject(summary)) {
      if (Array.isArray(summary["m.heroes"])) room.summary.heroes = summary["m.heroes"] as string[];
      if (typeof summary["m.joined_member_count"] === "number") room.summary.joinedMemberCount = summary["m.joined_member_count"];
      if (typeof summary["m.invited_member_count"] === "number") room.summary.invitedMemberCount = summary["m.invited_member_count"];
    }
    // `state` is the state at the start of the timeline section, so it goes in first.
    for (const event of data.state?.events ?? []) if (isStateEvent(event)) this.applyState(room, event, false);

    const timeline = data.timeline ?? {};
    // A limited timeline has a gap before it: the kept events would read as if continuous.
    if (timeline.limited) room.timeline.length = 0;
    if (typeof timeline.prev_batch === "string") room.prevBatch = timeline.prev_batch;
    const arrived: TimelineEvent[] = [];
    for (const raw of timeline.events ?? []) {
      if (!isTimelineEvent(raw)) continue;
      const event = await this.decrypt(roomId, raw);
      if (typeof event.state_key === "string") this.applyState(room, event as StateEvent, true);
      room.addToTimeline(event);
      arrived.push(event);
    }
    if (membership === "join") room.stateSynced = true;
    else room.typing = [];

    let typingChanged = false;
    let receiptsChanged = false;
    for (const event of data.ephemeral?.events ?? []) {
      if (event?.type === "m.typing" && Array.isArray(event.content?.user_ids)) {
        room.typing = event.content.user_ids.filter((u: unknown) => typeof u === "string");
        typingChanged = true;
      } else if (event?.type === "m.receipt" && isObject(event.content)) {
        receiptsChanged = applyReceipts(room, event.content) || receiptsChanged;
      }
    }
    const unread = data.unread_notifications;
    if (isObject(unread)) {
      if (typeof unread.notification_count === "number") room.unreadCount = unread.notification_count;
      if (typeof unread.highlight_count === "number") room.highlightCount = unread.highlight_count;
    }

    this.safeEmit("room", room);
    for (const event of arrived) {
      this.safeEmit("timeline", room, event);
      for (const queue of this.iterators) queue.push({ room, event });
    }
    if (typingChanged) this.safeEmit("typing", room);
    if (receiptsChanged) this.safeEmit("receipt", room);
  }

  private processInvite(roomId: string, data: any): void {
    const room = this.roomOf(roomId);
    room.membership = "invite";
    for (const event of data.invite_state?.events ?? []) if (isStateEvent(event)) room.setState(event);
    this.safeEmit("room", room);
  }

  /**
   * Records a state event. Membership changes of an encrypted room go to crypto (a leave rotates the
   * outbound Megolm session). A member first seen in the `state` section is lazy loading, not a
   * change; in the timeline it is one; a profile change (join to join) is not.
   */
  private applyState(room: Room, event: StateEvent, inTimeline: boolean): void {
    const previous = room.setState(event);
    if (event.type !== "m.room.member" || !this.crypto?.onMembershipChange || !room.encrypted) return;
    const membership = event.content.membership;
    if (typeof membership !== "string") return;
    // The same event seen before came from `/members` (fetched to encrypt), which reports nothing
    // to crypto: its first arrival through /sync is the change.
    const changed = !previous || previous.event_id === event.event_id ? inTimeline : previous.content.membership !== membership;
    if (changed) this.crypto.onMembershipChange(room.roomId, event.state_key, membership);
  }
}

interface LoginAnswer {
  user_id?: string;
  access_token?: string;
  device_id?: string;
}

/** m.receipt content: event ID → receipt type → user ID → { ts, thread_id }. Returns whether any receipt was taken. */
function applyReceipts(room: Room, content: Record<string, unknown>): boolean {
  let taken = false;
  for (const [eventId, byType] of Object.entries(content)) {
    if (!isObject(byType)) continue;
    for (const type of ["m.read", "m.read.private"]) {
      const byUser = byType[type];
      if (!isObject(byUser)) continue;
      for (const [userId, receipt] of Object.entries(byUser)) {
        const r = isObject(receipt) ? receipt : {};
        // A thread's receipt says nothing about the main timeline; only unthreaded and "main" ones are kept.
        if (typeof r.thread_id === "string" && r.thread_id !== "main") continue;
        room.receipts.set(userId, { eventId, type, ...(typeof r.ts === "number" ? { ts: r.ts } : {}) });
        taken = true;
      }
    }
  }
  return taken;
}

function isObject(value: unknown): value is Record<string, any> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function isStateEvent(event: any): event is StateEvent {
  return isObject(event) && typeof event.type === "string" && typeof event.state_key === "string" && isObject(event.content);
}

function isTimelineEvent(event: any): event is TimelineEvent {
  return isObject(event) && typeof event.type === "string" && typeof event.event_id === "string" && typeof event.sender === "string" && isObject(event.content);
}

/** One timeline() subscriber: a queue of events and the reader waiting for the next one. */
class TimelineQueue implements AsyncIterableIterator<{ room: Room; event: TimelineEvent }> {
  private readonly items: Array<{ room: Room; event: TimelineEvent }> = [];
  private waiting: ((result: IteratorResult<{ room: Room; event: TimelineEvent }>) => void) | undefined;
  private ended = false;

  constructor(private readonly unsubscribe: () => void) {}

  push(item: { room: Room; event: TimelineEvent }): void {
    if (this.ended) return;
    if (this.waiting) {
      const resolve = this.waiting;
      this.waiting = undefined;
      resolve({ value: item, done: false });
    } else this.items.push(item);
  }

  /** Ends the iteration once the queued events are read. */
  end(): void {
    this.ended = true;
    if (this.waiting && this.items.length === 0) {
      const resolve = this.waiting;
      this.waiting = undefined;
      resolve({ value: undefined, done: true });
    }
  }

  next(): Promise<IteratorResult<{ room: Room; event: TimelineEvent }>> {
    const item = this.items.shift();
    if (item) return Promise.resolve({ value: item, done: false });
    if (this.ended) return Promise.resolve({ value: undefined, done: true });
    return new Promise((resolve) => {
      this.waiting = resolve;
    });
  }

  /** `break` out of a for-await loop: unsubscribes. */
  return(): Promise<IteratorResult<{ room: Room; event: TimelineEvent }>> {
    this.ended = true;
    this.items.length = 0;
    this.unsubscribe();
    const resolve = this.waiting;
    this.waiting = undefined;
    resolve?.({ value: undefined, done: true });
    return Promise.resolve({ value: undefined, done: true });
  }

  [Symbol.asyncIterator](): this {
    return this;
  }
}

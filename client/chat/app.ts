// parley-chat: the terminal client on the client library. Logs in (or registers), keeps the session
// in its data directory, opens the crypto store when this build has encryption, then runs the full
// screen: the room list, the open room's timeline, an input line for messages and commands.
import { MatrixApiError, MatrixHttp } from "../http.ts";
import { ParleyClient, type TimelineEvent } from "../client.ts";
import type { Room } from "../room.ts";
import { HELP, findRoom, parseCommand, type Command } from "./commands.ts";
import { openCrypto, type ChatCrypto } from "./crypto-setup.ts";
import { decodeKeys, edit, newLineEditor, type Key } from "./keys.ts";
import { localpart, toChatMessage } from "./model.ts";
import { clearSession, defaultDataDir, ensureDataDir, loadSession, saveSession, type StoredSession } from "./session.ts";
import { FullScreen, PromptCancelled, promptLine, type TerminalIO } from "./terminal.ts";
import { ChatVerifications, type VerificationApi } from "./verification.ts";
import { render, roomListWidth, timelineRows, type ChatMessage, type ChatRoomEntry, type ChatViewState } from "./view.ts";

export interface ChatOptions {
  homeserver?: string;
  user?: string;
  register: boolean;
  registrationToken?: string;
  dataDir: string;
  deviceName: string;
  /** The Argon2id cost of a NEW crypto store (see FileCryptoStoreOptions.kdf). */
  storeKdf: "interactive" | "moderate";
}

const USAGE = `usage: parley-chat [--homeserver URL] [--user NAME] [--register] [--registration-token TOKEN]
                   [--data-dir DIR] [--device-name NAME] [--store-kdf moderate|interactive]

A terminal Matrix client. Logs in to the homeserver (http://localhost:8008 unless given) and keeps
the session in ~/.config/parley-chat (--data-dir to use another directory). /help inside lists the
commands. --store-kdf interactive makes a new encryption store quicker to open (0.5 s instead of
2 s) at the price of a cheaper guess of its passphrase.`;

export function parseArgs(argv: string[], env: NodeJS.ProcessEnv = process.env): ChatOptions | { help: true } | { error: string } {
  const opts: ChatOptions = { register: false, dataDir: defaultDataDir(env), deviceName: "parley-chat", storeKdf: "moderate" };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    const [flag, inline] = arg.startsWith("--") && arg.includes("=") ? [arg.slice(0, arg.indexOf("=")), arg.slice(arg.indexOf("=") + 1)] : [arg, undefined];
    const value = (): string | undefined => inline ?? argv[++i];
    switch (flag) {
      case "-h":
      case "--help":
        return { help: true };
      case "--register":
        opts.register = true;
        break;
      case "--homeserver":
      case "--user":
      case "--registration-token":
      case "--data-dir":
      case "--device-name":
      case "--store-kdf": {
        const v = value();
        if (!v) return { error: `${flag} needs a value` };
        if (flag === "--homeserver") opts.homeserver = v;
        else if (flag === "--user") opts.user = v;
        else if (flag === "--registration-token") opts.registrationToken = v;
        else if (flag === "--data-dir") opts.dataDir = v;
        else if (flag === "--device-name") opts.deviceName = v;
        else if (v === "interactive" || v === "moderate") opts.storeKdf = v;
        else return { error: "--store-kdf is moderate or interactive" };
        break;
      }
      default:
        return { error: `unknown argument ${arg}` };
    }
  }
  if (opts.homeserver !== undefined) {
    const url = opts.homeserver.includes("://") ? opts.homeserver : `https://${opts.homeserver}`;
    try {
      opts.homeserver = new URL(url).toString().replace(/\/+$/, "");
    } catch {
      return { error: `not a URL: ${opts.homeserver}` };
    }
  }
  return opts;
}

/** "alice", "@alice:example.org": the localpart for registration, the full ID for login. */
function sameUser(session: StoredSession, user: string | undefined): boolean {
  if (user === undefined) return true;
  return user.startsWith("@") ? session.userId === user : localpart(session.userId) === user;
}

function errorText(err: unknown): string {
  if (err instanceof MatrixApiError) return `${err.errcode}: ${(err.data.error as string | undefined) ?? err.message}`;
  return err instanceof Error ? err.message : String(err);
}

/** Checks a stored access token still works (a logged-out device's token does not). */
async function sessionValid(session: StoredSession): Promise<boolean> {
  const http = new MatrixHttp({ baseUrl: session.homeserver, accessToken: session.accessToken, timeoutMs: 15_000 });
  try {
    const who = await http.request<{ user_id: string; device_id?: string }>("GET", "/_matrix/client/v3/account/whoami");
    return who.user_id === session.userId;
  } catch (err) {
    if (err instanceof MatrixApiError && (err.status === 401 || err.status === 403)) return false;
    throw err;
  }
}

async function logIn(opts: ChatOptions, io: TerminalIO & { error: NodeJS.WriteStream }): Promise<StoredSession> {
  const homeserver = opts.homeserver ?? "http://localhost:8008";
  const user = opts.user ?? (await promptLine(io, `User name on ${homeserver}: `)).trim();
  if (!user) throw new PromptCancelled("no user name");
  for (let attempt = 1; ; attempt++) {
    const password = await promptLine(io, `Password for ${user}: `, { secret: true });
    if (opts.register) {
      const again = await promptLine(io, "Password again: ", { secret: true });
      if (again !== password) {
        io.output.write("The passwords differ.\r\n");
        if (attempt < 3) continue;
        throw new PromptCancelled("passwords differ");
      }
    }
    try {
      const loginOpts = { initialDeviceDisplayName: opts.deviceName };
      const client = opts.register
        ? await ParleyClient.register(homeserver, user.replace(/^@/, "").replace(/:.*$/, ""), password, {
            ...loginOpts,
            ...(opts.registrationToken ? { registrationToken: opts.registrationToken } : {}),
          })
        : await ParleyClient.login(homeserver, user, password, loginOpts);
      const accessToken = client.http.accessToken;
      if (!accessToken) throw new Error("the server gave no access token");
      return { homeserver, userId: client.userId, deviceId: client.deviceId, accessToken };
    } catch (err) {
      io.output.write(`${opts.register ? "Registration" : "Login"} failed: ${errorText(err)}\r\n`);
      const retry = err instanceof MatrixApiError && (err.errcode === "M_FORBIDDEN" || err.errcode === "M_WEAK_PASSWORD" || err.errcode === "M_USER_IN_USE");
      if (!retry || attempt >= 3 || err.errcode === "M_USER_IN_USE") throw new PromptCancelled("login failed");
    }
  }
}

export async function main(
  argv: string[],
  io: TerminalIO & { error: NodeJS.WriteStream } = { input: process.stdin, output: process.stdout, error: process.stderr },
): Promise<number> {
  const opts = parseArgs(argv);
  if ("help" in opts) {
    io.output.write(`${USAGE}\n`);
    return 0;
  }
  if ("error" in opts) {
    io.error.write(`parley-chat: ${opts.error}\n${USAGE}\n`);
    return 2;
  }
  try {
    await ensureDataDir(opts.dataDir);
    let session = opts.register ? undefined : await loadSession(opts.dataDir);
    if (session && (!sameUser(session, opts.user) || (opts.homeserver && opts.homeserver !== session.homeserver))) session = undefined;
    if (session && !(await sessionValid(session))) {
      io.output.write(`The saved session of ${session.userId} is no longer valid: log in again.\r\n`);
      await clearSession(opts.dataDir);
      session = { ...session, accessToken: "" };
      session = await logIn({ ...opts, homeserver: opts.homeserver ?? session.homeserver, user: opts.user ?? session.userId }, io);
      await saveSession(opts.dataDir, session);
    } else if (!session) {
      session = await logIn(opts, io);
      await saveSession(opts.dataDir, session);
    }
    const client = new ParleyClient({ baseUrl: session.homeserver, accessToken: session.accessToken, userId: session.userId, deviceId: session.deviceId });
    const crypto = await openCrypto(opts.dataDir, session, io, client.http, opts.storeKdf);
    client.setCrypto(crypto.machine);
    const app = new ChatApp(client, io, { homeserver: new URL(session.homeserver).host, crypto });
    try {
      await app.run();
    } finally {
      await crypto?.close();
    }
    return 0;
  } catch (err) {
    // Ctrl+C at a prompt, or a failure already explained on screen: nothing more to say.
    if (err instanceof PromptCancelled) {
      if (err.message === "input closed") io.error.write("parley-chat: the input ended before the prompt was answered\n");
      return 1;
    }
    io.error.write(`parley-chat: ${errorText(err)}\n`);
    return 1;
  }
}

const TYPING_TIMEOUT_MS = 5_000;

/** The running full-screen client: state, input and what the library reports. */
export class ChatApp {
  private readonly screen: FullScreen;
  private readonly editor = newLineEditor();
  private openRoomId: string | undefined;
  private scroll = 0;
  private panel: ChatViewState["panel"];
  private status: ChatViewState["status"];
  private statusTimer: NodeJS.Timeout | undefined;
  private connection: ChatViewState["connection"] = "connecting";
  /** Messages from others since the room was last open (counted by us, so opening clears it at once). */
  private readonly unread = new Map<string, number>();
  /** Our messages sent and not yet back from the server, per room. */
  private readonly pending = new Map<string, ChatMessage[]>();
  /** Older events loaded with /messages (PageUp at the top), per room, oldest first. */
  private readonly older = new Map<string, { events: TimelineEvent[]; end?: string; done: boolean; loading: boolean; anchor?: string }>();
  private synced = false;
  private typingSentAt = 0;
  private drawScheduled = false;
  private quit!: () => void;
  private readonly verifications: ChatVerifications | undefined;

  constructor(
    private readonly client: ParleyClient,
    private readonly io: TerminalIO,
    private readonly opts: { homeserver: string; crypto: ChatCrypto | undefined },
  ) {
    this.screen = new FullScreen(io.output);
    if (opts.crypto) {
      this.verifications = new ChatVerifications(opts.crypto.machine as unknown as VerificationApi, {
        panel: (title, lines) => {
          this.panel = lines.length > 0 ? { title, lines } : undefined;
          this.scheduleDraw();
        },
        status: (text, kind) => this.setStatus(text, kind),
      });
    }
  }

  async run(): Promise<void> {
    const { input, output } = this.io;
    const finished = new Promise<void>((resolve) => (this.quit = resolve));
    this.screen.enter();
    // The terminal is given back as it was, however the process ends.
    const restore = () => this.screen.leave();
    const onSignal = () => this.quit();
    process.on("exit", restore);
    process.on("SIGTERM", onSignal);
    process.on("SIGHUP", onSignal);
    if (input.isTTY) input.setRawMode(true);
    input.setEncoding("utf8");
    const onData = (chunk: string) => {
      for (const key of decodeKeys(chunk)) this.onKey(key);
    };
    const onResize = () => {
      this.screen.invalidate();
      this.draw();
    };
    input.on("data", onData);
    input.on("end", () => this.quit());
    input.resume();
    output.on("resize", onResize);
    this.client.on("timeline", (room: Room, event: TimelineEvent) => this.onTimeline(room, event));
    this.client.on("room", () => this.scheduleDraw());
    this.client.on("decrypted", () => this.scheduleDraw());
    this.client.on("typing", () => this.scheduleDraw());
    this.client.on("error", (err: Error) => {
      // The sync loop ended for good: most often the token was revoked (logged out elsewhere).
      const revoked = err instanceof MatrixApiError && err.errcode === "M_UNKNOWN_TOKEN";
      this.connection = "offline";
      this.setStatus(revoked ? "This device was logged out: /quit and start parley-chat again to log in" : `Sync stopped: ${errorText(err)}`, "error");
    });
    this.client.on("sync", (state: string) => {
      this.connection = state === "ERROR" ? "offline" : state === "STOPPED" ? "offline" : "connected";
      this.scheduleDraw();
    });
    this.draw();
    this.client
      .start()
      .then(() => {
        this.synced = true;
        this.connection = "connected";
        for (const room of this.client.rooms()) if (!this.unread.has(room.roomId)) this.unread.set(room.roomId, room.unreadCount);
        if (!this.openRoomId) {
          const first = this.roomEntries()[0];
          if (first) this.openRoom(first.roomId);
        }
        this.scheduleDraw();
      })
      .catch((err) => this.setStatus(`Cannot sync: ${errorText(err)}`, "error"));
    try {
      await finished;
    } finally {
      input.off("data", onData);
      output.off("resize", onResize);
      if (input.isTTY) input.setRawMode(false);
      input.pause();
      this.screen.leave();
      process.off("exit", restore);
      process.off("SIGTERM", onSignal);
      process.off("SIGHUP", onSignal);
      await this.client.stop().catch(() => {});
    }
  }

  /** The rooms as listed: invitations first, then joined rooms by name (numbers stay put as messages arrive). */
  roomEntries(): ChatRoomEntry[] {
    const rooms = this.client.rooms().filter((r) => r.membership === "join" || r.membership === "invite");
    const entries = rooms.map((r) => ({
      roomId: r.roomId,
      name: r.name,
      unread: r.roomId === this.openRoomId ? 0 : (this.unread.get(r.roomId) ?? r.unreadCount),
      encrypted: r.encrypted,
      membership: r.membership,
    }));
    const rank = (e: ChatRoomEntry) => (e.membership === "invite" ? 0 : 1);
    return entries.sort((a, b) => rank(a) - rank(b) || a.name.localeCompare(b.name, undefined, { sensitivity: "base" }) || a.roomId.localeCompare(b.roomId));
  }

  private messages(room: Room | undefined): ChatMessage[] {
    if (!room) return [];
    const nameOf = (userId: string) => {
      const name = room.memberName(userId);
      return name === userId ? localpart(userId) : name;
    };
    const seen = new Set<string>();
    const out: ChatMessage[] = [];
    for (const event of [...(this.older.get(room.roomId)?.events ?? []), ...room.timeline]) {
      if (seen.has(event.event_id)) continue;
      seen.add(event.event_id);
      const m = toChatMessage(event, nameOf);
      if (m) out.push(m);
    }
    for (const p of this.pending.get(room.roomId) ?? []) if (!seen.has(p.eventId)) out.push(p);
    return out;
  }

  viewState(): ChatViewState {
    const room = this.openRoomId ? this.client.room(this.openRoomId) : undefined;
    return {
      userId: this.client.userId,
      homeserver: this.opts.homeserver,
      rooms: this.roomEntries(),
      ...(this.openRoomId ? { openRoomId: this.openRoomId } : {}),
      messages: this.messages(room),
      typing: (room?.typing ?? []).filter((u) => u !== this.client.userId).map((u) => room!.memberName(u)),
      input: this.editor.text,
      cursor: this.editor.cursor,
      scroll: this.scroll,
      ...(this.panel ? { panel: this.panel } : {}),
      ...(this.status ? { status: this.status } : {}),
      connection: this.connection,
      crypto: this.opts.crypto !== undefined,
    };
  }

  private draw(): void {
    this.drawScheduled = false;
    this.screen.draw(render(this.viewState(), this.screen.size()));
  }

  /** Coalesces the redraws of one burst (a sync with many events) into one. */
  private scheduleDraw(): void {
    if (this.drawScheduled) return;
    this.drawScheduled = true;
    setImmediate(() => this.draw());
  }

  private setStatus(text: string, kind: "info" | "error" = "info"): void {
    this.status = { text, kind };
    clearTimeout(this.statusTimer);
    this.statusTimer = setTimeout(() => {
      this.status = undefined;
      this.scheduleDraw();
    }, kind === "error" ? 10_000 : 5_000);
    this.statusTimer.unref();
    this.scheduleDraw();
  }

  private onTimeline(room: Room, event: TimelineEvent): void {
    // The loaded pages continue the timeline from its first event; when that is gone (a limited
    // sync cleared the timeline, or it was trimmed), they no longer join it: drop them rather than
    // show history with a hole in it.
    const older = this.older.get(room.roomId);
    if (older && !older.loading && older.anchor !== room.timeline[0]?.event_id) this.older.delete(room.roomId);
    const mine = event.sender === this.client.userId;
    const isMessage = event.type === "m.room.message" || event.type === "m.room.encrypted" || event.type === "m.sticker";
    if (this.synced && isMessage && !mine && room.roomId !== this.openRoomId) {
      this.unread.set(room.roomId, (this.unread.get(room.roomId) ?? 0) + 1);
    }
    if (mine) {
      const pending = this.pending.get(room.roomId);
      if (pending) this.pending.set(room.roomId, pending.filter((p) => p.eventId !== event.event_id));
    }
    if (room.roomId === this.openRoomId && isMessage && !mine) this.markRead(room.roomId, event.event_id);
    this.scheduleDraw();
  }

  private markRead(roomId: string, eventId: string | undefined): void {
    if (!eventId) return;
    this.client.sendReadReceipt(roomId, eventId).catch(() => {});
  }

  private openRoom(roomId: string): void {
    this.openRoomId = roomId;
    this.scroll = 0;
    this.panel = undefined;
    this.unread.set(roomId, 0);
    const room = this.client.room(roomId);
    if (room?.membership === "invite") this.setStatus(`You are invited to ${room.name}: /join to accept`);
    const last = room?.timeline[room.timeline.length - 1];
    if (last && room?.membership === "join") this.markRead(roomId, last.event_id);
  }

  private onKey(key: Key): void {
    switch (key.name) {
      case "ctrl-c":
        this.quit();
        return;
      case "ctrl-d":
        if (this.editor.text === "") this.quit();
        return;
      case "escape":
        this.panel = undefined;
        this.status = undefined;
        break;
      case "ctrl-l":
        this.screen.invalidate();
        break;
      case "pageup":
      case "pagedown": {
        const { rows, cols } = this.screen.size();
        const page = Math.max(1, rows - 5);
        const listWidth = roomListWidth(Math.max(20, cols));
        const total = timelineRows(this.viewState(), listWidth > 0 ? cols - listWidth - 1 : cols).length;
        const max = Math.max(0, total - (rows - 3));
        this.scroll = key.name === "pageup" ? Math.min(max, this.scroll + page) : Math.max(0, this.scroll - page);
        if (key.name === "pageup" && this.scroll >= max) void this.loadOlder();
        break;
      }
      case "alt-up":
      case "alt-down":
      case "ctrl-p":
      case "ctrl-n": {
        const entries = this.roomEntries();
        if (entries.length === 0) break;
        const i = entries.findIndex((e) => e.roomId === this.openRoomId);
        const step = key.name === "alt-up" || key.name === "ctrl-p" ? -1 : 1;
        const next = entries[(i + step + entries.length) % entries.length]!;
        this.openRoom(next.roomId);
        break;
      }
      case "enter": {
        const line = edit(this.editor, key);
        const command = line === undefined ? undefined : parseCommand(line);
        if (command) void this.runCommand(command);
        break;
      }
      default:
        edit(this.editor, key);
        if (key.name === "text") this.typing();
    }
    this.scheduleDraw();
  }

  private typing(): void {
    const room = this.openRoomId ? this.client.room(this.openRoomId) : undefined;
    if (!room || room.membership !== "join" || this.editor.text.startsWith("/")) return;
    const now = Date.now();
    if (now - this.typingSentAt < TYPING_TIMEOUT_MS - 1_000) return;
    this.typingSentAt = now;
    this.client.sendTyping(room.roomId, true, TYPING_TIMEOUT_MS).catch(() => {});
  }

  private async loadOlder(): Promise<void> {
    const roomId = this.openRoomId;
    const room = roomId ? this.client.room(roomId) : undefined;
    if (!roomId || !room) return;
    const older = this.older.get(roomId) ?? { events: [], done: false, loading: false, ...(room.timeline[0] ? { anchor: room.timeline[0].event_id } : {}) };
    this.older.set(roomId, older);
    if (older.done || older.loading) return;
    older.loading = true;
    try {
      const from = older.end ?? room.prevBatch;
      const page = await this.client.messages(roomId, { ...(from ? { from } : {}), dir: "b", limit: 50 });
      older.events = [...page.events.slice().reverse(), ...older.events];
      if (page.end) older.end = page.end;
      if (!page.end || page.events.length === 0) older.done = true;
    } catch (err) {
      this.setStatus(`Cannot load older messages: ${errorText(err)}`, "error");
    } finally {
      older.loading = false;
      this.scheduleDraw();
    }
  }

  private openJoinedRoom(): Room | undefined {
    const room = this.openRoomId ? this.client.room(this.openRoomId) : undefined;
    if (!room) {
      this.setStatus("No room is open: /open a room first", "error");
      return undefined;
    }
    return room;
  }

  async runCommand(command: Command): Promise<void> {
    try {
      await this.execute(command);
    } catch (err) {
      this.setStatus(errorText(err), "error");
    }
    this.scheduleDraw();
  }

  private async execute(command: Command): Promise<void> {
    switch (command.kind) {
      case "error":
        this.setStatus(command.message, "error");
        return;
      case "send":
      case "emote": {
        const room = this.openJoinedRoom();
        if (!room) return;
        if (room.membership !== "join") {
          this.setStatus("You are not in this room (/join to accept an invitation)", "error");
          return;
        }
        if (room.encrypted && !this.opts.crypto) {
          // Never fall back to plaintext in a room whose members expect encryption.
          this.setStatus("This room is encrypted and this parley-chat cannot encrypt: message NOT sent", "error");
          return;
        }
        const content = { msgtype: command.kind === "emote" ? "m.emote" : "m.text", body: command.text };
        const echo: ChatMessage = {
          eventId: `~local${Date.now()}${Math.random()}`,
          sender: this.client.userId,
          senderName: room.memberName(this.client.userId) === this.client.userId ? localpart(this.client.userId) : room.memberName(this.client.userId),
          ts: Date.now(),
          kind: command.kind === "emote" ? "emote" : "text",
          body: command.text,
          security: room.encrypted ? "verified" : "plain",
          pending: true,
        };
        const list = this.pending.get(room.roomId) ?? [];
        list.push(echo);
        this.pending.set(room.roomId, list);
        this.scroll = 0;
        this.typingSentAt = 0;
        this.scheduleDraw();
        try {
          echo.eventId = await this.client.sendEvent(room.roomId, "m.room.message", content);
          echo.pending = false;
          // Already back through sync: the timeline has it.
          if (room.timeline.some((e) => e.event_id === echo.eventId)) this.pending.set(room.roomId, (this.pending.get(room.roomId) ?? []).filter((p) => p !== echo));
        } catch (err) {
          this.pending.set(room.roomId, (this.pending.get(room.roomId) ?? []).filter((p) => p !== echo));
          throw new Error(`Not sent: ${errorText(err)}`);
        }
        this.client.sendTyping(room.roomId, false).catch(() => {});
        return;
      }
      case "join": {
        let target = command.target;
        if (target === "") {
          const room = this.openRoomId ? this.client.room(this.openRoomId) : undefined;
          if (room?.membership !== "invite") {
            this.setStatus("usage: /join #alias:server or /join !roomid:server", "error");
            return;
          }
          target = room.roomId;
        }
        this.setStatus(`Joining ${target}…`);
        const roomId = await this.client.joinRoom(target);
        this.openRoom(roomId);
        this.setStatus(`Joined ${target}`);
        return;
      }
      case "create": {
        if (command.encrypted && !this.opts.crypto) {
          this.setStatus("This parley-chat cannot encrypt: an encrypted room would be one you cannot write in", "error");
          return;
        }
        const roomId = await this.client.createRoom({ name: command.name, encrypted: command.encrypted, preset: "private_chat" });
        this.openRoom(roomId);
        this.setStatus(`Created ${command.name}${command.encrypted ? " (encrypted)" : ""}: /invite @user:server to bring people in`);
        return;
      }
      case "invite": {
        const room = this.openJoinedRoom();
        if (!room) return;
        await this.client.invite(room.roomId, command.userId);
        this.setStatus(`Invited ${command.userId}`);
        return;
      }
      case "leave": {
        const room = this.openJoinedRoom();
        if (!room) return;
        await this.client.leaveRoom(room.roomId);
        this.openRoomId = undefined;
        const next = this.roomEntries().find((e) => e.roomId !== room.roomId);
        if (next) this.openRoom(next.roomId);
        this.setStatus(`Left ${room.name}`);
        return;
      }
      case "rooms": {
        const entries = this.roomEntries();
        const lines = entries.map(
          (e, i) => `${String(i + 1).padStart(2)}. ${e.name}${e.encrypted ? " (encrypted)" : ""}${e.membership === "invite" ? " (invitation)" : ""}${e.unread ? ` — ${e.unread} unread` : ""}  ${e.roomId}`,
        );
        this.panel = { title: "Your rooms", lines: lines.length ? lines : ["No rooms yet: /create NAME or /join #alias:server"] };
        return;
      }
      case "open": {
        const found = findRoom(this.roomEntries(), command.ref);
        if ("error" in found) this.setStatus(found.error, "error");
        else this.openRoom(found.roomId);
        return;
      }
      case "devices": {
        const devices = await this.client.devices();
        const lines = devices.map((d) => {
          const seen = d.last_seen_ts ? new Date(d.last_seen_ts).toISOString().slice(0, 16).replace("T", " ") : "never";
          const me = d.device_id === this.client.deviceId ? "  (this device)" : "";
          return `${d.device_id}  ${d.display_name ?? ""}  last seen ${seen}${me}`;
        });
        this.panel = { title: `Devices of ${this.client.userId}`, lines };
        return;
      }
      case "verify":
        if (!this.verifications) {
          this.setStatus("Device verification needs encryption, which this parley-chat does not have", "error");
          return;
        }
        await this.verifications.verify(command.userId, command.deviceId);
        return;
      case "confirm":
        if (!this.verifications) {
          this.setStatus("No verification in progress", "error");
          return;
        }
        await this.verifications.answer(command.match);
        return;
      case "help":
        this.panel = { title: "Commands", lines: HELP };
        return;
      case "quit":
        this.quit();
        return;
    }
  }
}

// parley-chat: its screen as a pure function of the state (what a person would read), the pieces
// it is made of (commands, keys, events to lines), and the real binary driven through a
// pseudo-terminal against a Parley test server, as a person would use it.
import { mkdtemp, readFile, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { findRoom, parseCommand } from "../../client/chat/commands.ts";
import { decodeKeys, edit, newLineEditor } from "../../client/chat/keys.ts";
import { toChatMessage, type EventLike } from "../../client/chat/model.ts";
import { parseArgs } from "../../client/chat/app.ts";
import { displayWidth, wrap } from "../../client/chat/text.ts";
import { LOCK, WARNING, formatTime, render, stripAnsi, type ChatMessage, type ChatViewState } from "../../client/chat/view.ts";
import { registerUser } from "../accounts-helpers.ts";
import { request, startTestServer, type TestServer } from "../harness.ts";
import { ParleyClient } from "../../client/client.ts";
import { E2EE } from "../../client/crypto/e2ee.ts";
import { MemoryCryptoStore } from "../../client/crypto/store.ts";
import { PtySession, ptyAvailable, VirtualScreen } from "./pty.ts";

const T0 = new Date(2026, 11, 2, 14, 5).getTime();

function message(over: Partial<ChatMessage> = {}): ChatMessage {
  return { eventId: `$e${Math.random()}`, sender: "@bob:hs", senderName: "Bob", ts: T0, kind: "text", body: "hello", security: "plain", ...over };
}

function state(over: Partial<ChatViewState> = {}): ChatViewState {
  return {
    userId: "@alice:hs",
    homeserver: "hs",
    rooms: [
      { roomId: "!a:hs", name: "Lobby", unread: 0, encrypted: false, membership: "join" },
      { roomId: "!b:hs", name: "Secret plans", unread: 3, encrypted: true, membership: "join" },
      { roomId: "!c:hs", name: "Party", unread: 0, encrypted: false, membership: "invite" },
    ],
    openRoomId: "!a:hs",
    messages: [message()],
    typing: [],
    input: "",
    cursor: 0,
    scroll: 0,
    connection: "connected",
    crypto: true,
    ...over,
  };
}

/** The screen as a person reads it: rows without colours, trailing spaces removed. */
function screenText(s: ChatViewState, cols = 80, rows = 24): string[] {
  return render(s, { cols, rows }).lines.map((l) => stripAnsi(l).trimEnd());
}

describe("parley-chat's screen (pure rendering)", () => {
  it("fills an 80×24 terminal exactly: every row 80 columns, the input line last", () => {
    const screen = render(state({ input: "typing here", cursor: 11 }), { cols: 80, rows: 24 });
    expect(screen.lines).toHaveLength(24);
    for (const line of screen.lines) expect(displayWidth(stripAnsi(line))).toBe(80);
    expect(stripAnsi(screen.lines[23]!)).toMatch(/^> typing here\s*$/);
    expect(screen.cursor).toEqual({ row: 23, col: 13 });
  });

  it("lists the rooms with their numbers and unread counts, the invitation marked", () => {
    const text = screenText(state());
    expect(text[2]).toMatch(/^ 1 Lobby\s+│/);
    expect(text[3]).toMatch(/^ 2 Secret plans.*🔒 3 │/);
    expect(text[4]).toMatch(/^ 3 Party.*invite │/);
    // The open room is in reverse video in the list.
    expect(render(state(), { cols: 80, rows: 24 }).lines[2]).toContain("\x1b[7m");
  });

  it("shows sender names, times, and the newest message just above the status line", () => {
    const msgs = [message({ body: "first", ts: T0 }), message({ sender: "@alice:hs", senderName: "Alice", body: "second", ts: T0 + 60_000 })];
    const text = screenText(state({ messages: msgs }));
    expect(text[21]).toContain(`${formatTime(T0 + 60_000)}    Alice: second`);
    expect(text[20]).toContain(`${formatTime(T0)}    Bob: first`);
    expect(text[19]).toContain("Wed 2 Dec 2026");
    expect(text[0]).toMatch(/@alice:hs.*Lobby · not encrypted/);
  });

  it("marks encrypted messages with a lock, and unverified or undecryptable ones with a warning", () => {
    const text = screenText(
      state({
        openRoomId: "!b:hs",
        messages: [
          message({ body: "trusted", security: "verified" }),
          message({ body: "from a stranger", security: "unverified", securityNote: "sent from an unverified device" }),
          message({ kind: "notice", body: "[encrypted]", security: "undecryptable", securityNote: "unable to decrypt (UNKNOWN_SESSION)" }),
          message({ body: "in the clear" }),
        ],
      }),
    ).join("\n");
    expect(text).toMatch(new RegExp(`${LOCK} Bob: trusted`));
    expect(text).toMatch(new RegExp(`${LOCK}${WARNING}Bob: from a stranger`));
    expect(text).toContain(`${WARNING} sent from an unverified device`);
    expect(text).toMatch(new RegExp(`${LOCK}${WARNING}Bob: \\[encrypted\\]`));
    expect(text).toContain(`${WARNING} unable to decrypt (UNKNOWN_SESSION)`);
    expect(text).toMatch(/ {4}Bob: in the clear/);
    expect(text).toContain(`Secret plans · ${LOCK} encrypted`);
  });

  it("never passes a sender's escape sequences or control characters to the terminal", () => {
    const evil = "\x1b[2J\x1b]0;owned\x07\x1b[31mred\x9b1;1H\r\nnext\u202Eesrever";
    const screen = render(
      state({
        rooms: [{ roomId: "!a:hs", name: `Lobby\x1b[H`, unread: 0, encrypted: false, membership: "join" }],
        messages: [message({ senderName: "Bob\x1b[5m", body: evil })],
        typing: ["Eve\x1b[2J"],
      }),
      { cols: 80, rows: 24 },
    );
    for (const line of screen.lines) {
      // Only our own colour changes (SGR) remain; nothing moves the cursor, clears or sets a title.
      expect(line.replace(/\x1b\[[0-9;]*m/g, "")).not.toMatch(/[\x00-\x1f\x7f-\x9f\u202e]/);
      expect(displayWidth(stripAnsi(line))).toBe(80);
    }
    const text = screen.lines.map(stripAnsi).join("\n");
    expect(text).toContain("[2J]0;owned[31mred1;1H");
    expect(text).toContain("next");
  });

  it("wraps long messages under the sender, and keeps wide characters in their columns", () => {
    const long = "word ".repeat(40).trim();
    const screen = render(state({ messages: [message({ body: long }), message({ body: "日本語のテキスト 🎉 done" })] }), { cols: 80, rows: 24 });
    for (const line of screen.lines) expect(displayWidth(stripAnsi(line))).toBe(80);
    const text = screen.lines.map((l) => stripAnsi(l).trimEnd());
    const wrapped = text.filter((l) => /│ {9}word/.test(l));
    expect(wrapped.length).toBeGreaterThanOrEqual(2);
    expect(text.join("\n").match(/word/g)).toHaveLength(40);
    expect(text.join("\n")).toContain("Bob: 日本語のテキスト 🎉 done");
  });

  it("scrolls back through the timeline and returns to the newest", () => {
    const msgs = Array.from({ length: 60 }, (_, i) => message({ body: `message ${i}`, ts: T0 + i * 1000 }));
    const bottom = screenText(state({ messages: msgs })).join("\n");
    expect(bottom).toContain("message 59");
    expect(bottom).not.toContain("message 30");
    const back = screenText(state({ messages: msgs, scroll: 25 })).join("\n");
    expect(back).toContain("message 34");
    expect(back).not.toContain("message 59");
    expect(back).toContain("PageDown to return");
    // Scrolling past the oldest stops at the oldest.
    expect(screenText(state({ messages: msgs, scroll: 10_000 })).join("\n")).toContain("message 0");
  });

  it("redraws for any terminal size: a narrow one drops the room list, a tall one shows more", () => {
    const narrow = render(state({ messages: [message({ body: "fits anyway" })] }), { cols: 40, rows: 10 });
    expect(narrow.lines).toHaveLength(10);
    for (const line of narrow.lines) expect(displayWidth(stripAnsi(line))).toBe(40);
    expect(narrow.lines.map(stripAnsi).join("\n")).not.toContain("Rooms");
    expect(narrow.lines.map(stripAnsi).join("\n")).toContain("Bob: fits anyway");
    const wide = render(state(), { cols: 200, rows: 60 });
    expect(wide.lines).toHaveLength(60);
    for (const line of wide.lines) expect(displayWidth(stripAnsi(line))).toBe(200);
  });

  it("scrolls the input line so the cursor stays on screen", () => {
    const input = `${"x".repeat(100)}END`;
    const screen = render(state({ input, cursor: input.length }), { cols: 80, rows: 24 });
    expect(stripAnsi(screen.lines[23]!)).toMatch(/xEND $/);
    expect(screen.cursor.col).toBe(79);
  });

  it("shows a panel instead of the timeline, who is typing, and status messages", () => {
    const text = screenText(state({ panel: { title: "Your rooms", lines: [" 1. Lobby  !a:hs"] }, typing: ["Bob"] })).join("\n");
    expect(text).toContain("Your rooms (Esc closes)");
    expect(text).toContain("1. Lobby  !a:hs");
    expect(text).not.toContain("Bob: hello");
    expect(text).toContain("Bob is typing…");
    const error = screenText(state({ status: { text: "Not sent: M_FORBIDDEN", kind: "error" } }));
    expect(error[22]).toBe(" Not sent: M_FORBIDDEN");
  });
});

describe("parley-chat's pieces", () => {
  const names = (id: string) => ({ "@bob:hs": "Bob", "@alice:hs": "Alice" })[id] ?? id;
  const ev = (over: Partial<EventLike>): EventLike => ({ event_id: "$1", type: "m.room.message", sender: "@bob:hs", origin_server_ts: T0, content: {}, ...over });

  it("turns events into timeline lines, encrypted ones marked, noise left out", () => {
    expect(toChatMessage(ev({ content: { msgtype: "m.text", body: "hi" } }), names)).toMatchObject({ kind: "text", body: "hi", senderName: "Bob", security: "plain" });
    expect(toChatMessage(ev({ type: "m.room.encrypted", content: { algorithm: "m.megolm.v1.aes-sha2", ciphertext: "AAA" } }), names)).toMatchObject({
      body: "[encrypted]",
      security: "undecryptable",
    });
    expect(
      toChatMessage(ev({ type: "m.room.encrypted", content: {}, encrypted: { decrypted: false, error: "REPLAYED_INDEX" } }), names),
    ).toMatchObject({ security: "undecryptable", securityNote: "unable to decrypt (REPLAYED_INDEX)" });
    expect(
      toChatMessage(
        ev({ type: "m.room.encrypted", content: {}, encrypted: { decrypted: false, error: "UNKNOWN_SESSION", withheld: { code: "m.unverified", reason: "not verified" } } }),
        names,
      ),
    ).toMatchObject({ security: "undecryptable", securityNote: "unable to decrypt (the sender withheld the key: not verified)" });
    expect(
      toChatMessage(ev({ content: { msgtype: "m.text", body: "secret" }, encrypted: { decrypted: true, verified: "unverified" } }), names),
    ).toMatchObject({ body: "secret", security: "unverified" });
    expect(toChatMessage(ev({ content: { msgtype: "m.text", body: "ok" }, encrypted: { decrypted: true, verified: "verified" } }), names)?.security).toBe("verified");
    expect(toChatMessage(ev({ type: "m.room.member", state_key: "@alice:hs", content: { membership: "invite" } }), names)?.body).toBe("invited Alice");
    expect(toChatMessage(ev({ type: "m.room.member", state_key: "@bob:hs", content: { membership: "join" } }), names)?.body).toBe("joined");
    expect(toChatMessage(ev({ type: "m.room.power_levels", state_key: "", content: {} }), names)).toBeUndefined();
  });

  it("parses commands, and refuses malformed ones with their usage", () => {
    expect(parseCommand("/create Team chat --encrypted")).toEqual({ kind: "create", name: "Team chat", encrypted: true });
    expect(parseCommand("/join #room:hs")).toEqual({ kind: "join", target: "#room:hs" });
    expect(parseCommand("/join nonsense")).toMatchObject({ kind: "error" });
    expect(parseCommand("/invite @bob:hs")).toEqual({ kind: "invite", userId: "@bob:hs" });
    expect(parseCommand("/invite bob")).toMatchObject({ kind: "error" });
    expect(parseCommand("/verify @bob:hs ABCDEF")).toEqual({ kind: "verify", userId: "@bob:hs", deviceId: "ABCDEF" });
    expect(parseCommand("hello /world")).toEqual({ kind: "send", text: "hello /world" });
    expect(parseCommand("//shrug")).toEqual({ kind: "send", text: "/shrug" });
    expect(parseCommand("/frobnicate")).toMatchObject({ kind: "error" });
    expect(parseCommand("   ")).toBeUndefined();
    const rooms = [
      { roomId: "!1", name: "Lobby" },
      { roomId: "!2", name: "Lobby two" },
      { roomId: "!3", name: "Garden" },
    ];
    expect(findRoom(rooms, "2")).toEqual(rooms[1]);
    expect(findRoom(rooms, "lobby")).toEqual(rooms[0]);
    expect(findRoom(rooms, "gard")).toEqual(rooms[2]);
    expect(findRoom(rooms, "9")).toHaveProperty("error");
  });

  it("decodes keys and edits the input line (paste, arrows, emoji, history)", () => {
    expect(decodeKeys("ab\x1b[D\x1b[3~\r")).toEqual([{ name: "text", text: "ab" }, { name: "left" }, { name: "delete" }, { name: "enter" }]);
    expect(decodeKeys("line one\nline two")).toEqual([{ name: "text", text: "line one line two" }]);
    expect(decodeKeys("\x1b[5~\x1b[1;3A\x1b")).toEqual([{ name: "pageup" }, { name: "alt-up" }, { name: "escape" }]);
    const ed = newLineEditor();
    for (const key of decodeKeys("hi 🎉\x7fthere\x1b[H>\r")) edit(ed, key);
    expect(ed.history).toEqual([">hi there"]);
    edit(ed, { name: "up" });
    expect(ed.text).toBe(">hi there");
    edit(ed, { name: "ctrl-w" });
    expect(ed.text).toBe(">hi ");
  });

  it("wraps at word boundaries and splits words longer than a line", () => {
    expect(wrap("aaa bbb ccc", 7)).toEqual(["aaa bbb", "ccc"]);
    expect(wrap("abcdefghij", 4)).toEqual(["abcd", "efgh", "ij"]);
    expect(wrap("", 4)).toEqual([""]);
  });

  it("reads its options", () => {
    expect(parseArgs(["--homeserver", "http://127.0.0.1:8008/", "--user", "alice", "--register", "--data-dir", "/tmp/x"], {})).toMatchObject({
      homeserver: "http://127.0.0.1:8008",
      user: "alice",
      register: true,
      dataDir: "/tmp/x",
    });
    expect(parseArgs(["--homeserver", "matrix.example.org"], { XDG_CONFIG_HOME: "/cfg" })).toMatchObject({
      homeserver: "https://matrix.example.org",
      dataDir: "/cfg/parley-chat",
    });
    expect(parseArgs(["--bogus"], {})).toHaveProperty("error");
  });

  it("the test's terminal emulator reads what was drawn", () => {
    const vt = new VirtualScreen(10, 3);
    vt.write("\x1b[?1049h\x1b[2J\x1b[2;3Hab\x1b[31mc\x1b[0m\x1b[1;1Hxy\x1b[K");
    expect(vt.lines()).toEqual(["xy", "  abc", ""]);
  });
});

const bin = path.join(import.meta.dirname, "..", "..", "bin", "parley-chat.js");

describe.skipIf(!ptyAvailable())("parley-chat in a terminal, against a Parley server", () => {
  let server: TestServer;
  let dir: string;
  /** What the first terminal test leaves for the second: bob and the room alice made. */
  let lobby: { bob: Awaited<ReturnType<typeof registerUser>>; roomId: string } | undefined;
  beforeAll(async () => {
    server = await startTestServer();
    dir = await mkdtemp(path.join(tmpdir(), "parley-chat-"));
  });
  afterAll(async () => {
    await server?.destroy();
    await rm(dir, { recursive: true, force: true, maxRetries: 10 });
  });

  /** Starts parley-chat in an 80×24 pseudo-terminal; answers the crypto store's passphrase if asked. */
  async function startChat(args: string[], passwords: string[], dataDir = dir): Promise<PtySession> {
    const chat = new PtySession([process.execPath, bin, "--homeserver", server.url, "--data-dir", dataDir, "--store-kdf", "interactive", ...args]);
    for (const pw of passwords) {
      await chat.waitFor((t) => /Password[^\n]*: *$/m.test(t.trimEnd()));
      const before = chat.screen.text();
      chat.type(`${pw}\r`);
      await chat.waitFor((t) => t !== before);
    }
    const screen = await chat.waitFor((t) => t.includes(" Rooms ") || /passphrase[^\n]*: *$/im.test(t.trimEnd()), 15_000);
    if (!screen.includes(" Rooms ")) {
      const isNew = screen.includes("Choose a passphrase");
      chat.type("store-passphrase\r");
      if (isNew) {
        await chat.waitFor("Passphrase again");
        chat.type("store-passphrase\r");
      }
      await chat.waitFor(" Rooms ", 15_000);
    }
    return chat;
  }

  it("registers, creates a room, sends, and shows another user's message", async () => {
    const bob = await registerUser(server.url, "bob");
    const chat = await startChat(["--register", "--user", "alice"], ["correct horse battery", "correct horse battery"]);
    try {
      // The password was never echoed.
      expect(chat.raw).not.toContain("correct horse");
      await chat.waitFor("No rooms yet");
      chat.type("/create Lobby\r");
      await chat.waitFor(/Lobby · not encrypted/);
      await chat.waitFor("created the room");
      chat.type("/invite @bob:test.local\r");
      await chat.waitFor("Invited @bob:test.local");

      // Bob accepts through the API, as another client would.
      const sync = await request(server.url, "GET", "/_matrix/client/v3/sync", { token: bob.accessToken });
      const roomId = Object.keys(sync.json.rooms?.invite ?? {})[0]!;
      expect(roomId).toBeDefined();
      expect((await request(server.url, "POST", `/_matrix/client/v3/join/${encodeURIComponent(roomId)}`, { token: bob.accessToken, body: {} })).status).toBe(200);
      lobby = { bob, roomId };
      await chat.waitFor("bob joined");

      chat.type("hello from the terminal\r");
      await chat.waitFor(/alice: hello from the terminal/);
      let bodies: unknown[] = [];
      for (let i = 0; i < 50 && !bodies.includes("hello from the terminal"); i++) {
        const page = await request(server.url, "GET", `/_matrix/client/v3/rooms/${encodeURIComponent(roomId)}/messages?dir=b&limit=10`, { token: bob.accessToken });
        bodies = page.json.chunk.filter((e: any) => e.type === "m.room.message").map((e: any) => e.content.body);
        if (!bodies.includes("hello from the terminal")) await new Promise((r) => setTimeout(r, 100));
      }
      expect(bodies).toContain("hello from the terminal");

      const sent = await request(server.url, "PUT", `/_matrix/client/v3/rooms/${encodeURIComponent(roomId)}/send/m.room.message/t1`, {
        token: bob.accessToken,
        body: { msgtype: "m.text", body: "hi alice, from the API" },
      });
      expect(sent.status).toBe(200);
      const screen = await chat.waitFor(/bob: hi alice, from the API/);
      // Newest at the bottom of the timeline, in the room list's right pane.
      const lines = screen.split("\n");
      const row = lines.findIndex((l) => l.includes("bob: hi alice"));
      expect(lines[row]).toMatch(/^ .*│\d\d:\d\d {4}bob: hi alice, from the API$/);
      expect(row).toBe(21);

      chat.type("/quit\r");
      expect(await chat.exited).toBe(0);
    } finally {
      chat.kill();
    }
    // The session is kept for the owner's eyes only.
    expect((await stat(path.join(dir, "session.json"))).mode & 0o777).toBe(0o600);
    expect((await stat(dir)).mode & 0o777).toBe(0o700);
  }, 25_000);

  // After the test above: its session is in the data directory.
  it("starts again on the saved session: no password, the room and its history on screen", async () => {
    expect(lobby).toBeDefined();
    const { bob, roomId } = lobby!;
    // More messages than the first sync gives (20 events): the older ones come with PageUp.
    for (let i = 0; i < 30; i++) {
      await request(server.url, "PUT", `/_matrix/client/v3/rooms/${encodeURIComponent(roomId)}/send/m.room.message/burst${i}`, {
        token: bob.accessToken,
        body: { msgtype: "m.text", body: `burst ${i}` },
      });
    }
    const again = await startChat([], []);
    try {
      await again.waitFor("bob: burst 29");
      expect(again.screen.text()).not.toContain("Password");
      expect(again.screen.text()).not.toContain("hi alice, from the API");
      for (let i = 0; i < 20 && !again.screen.text().includes("hi alice, from the API"); i++) {
        again.type("\x1b[5~");
        await new Promise((r) => setTimeout(r, 150));
      }
      expect(again.screen.text()).toContain("bob: hi alice, from the API");
      expect(again.screen.text()).toContain("PageDown to return");
      again.type("\x1b[6~".repeat(20));
      await again.waitFor("bob: burst 29");

      // An invitation is listed first, marked; opening it says how to accept; /join accepts.
      const side = await request(server.url, "POST", "/_matrix/client/v3/createRoom", { token: bob.accessToken, body: { name: "Side", invite: ["@alice:test.local"] } });
      expect(side.status).toBe(200);
      await again.waitFor(/^ 1 Side .*invite │/m);
      again.type("/open Side\r");
      await again.waitFor("You are invited to Side: /join to accept");
      again.type("/join\r");
      await again.waitFor(/Side · not encrypted/);
      await again.waitFor("alice joined");

      // A message in the room not open counts as unread there, until it is opened.
      await request(server.url, "PUT", `/_matrix/client/v3/rooms/${encodeURIComponent(roomId)}/send/m.room.message/t2`, {
        token: bob.accessToken,
        body: { msgtype: "m.text", body: "are you there?" },
      });
      await again.waitFor(/^ 1 Lobby +1 │/m);
      again.type("/open 1\r");
      await again.waitFor(/bob: are you there\?/);
      expect(again.screen.text()).toMatch(/^ 1 Lobby +│/m);
      again.type("\x03");
      expect(await again.exited).toBe(0);
    } finally {
      again.kill();
    }
  }, 25_000);

  it("chats in an encrypted room with an E2EE client: locks on screen, ciphertext on the server", async () => {
    const registered = await ParleyClient.register(server.url, "dana", "dana-password-1");
    const dana = new ParleyClient({ baseUrl: server.url, accessToken: registered.http.accessToken!, userId: registered.userId, deviceId: registered.deviceId, sync: { pollTimeoutMs: 5_000 } });
    dana.setCrypto(await E2EE.create({ http: dana.http, userId: dana.userId, deviceId: dana.deviceId, store: new MemoryCryptoStore() }));
    await dana.start();
    const carolDir = await mkdtemp(path.join(tmpdir(), "parley-chat-"));
    const chat = await startChat(["--register", "--user", "carol"], ["carol-password-1", "carol-password-1"], carolDir);
    try {
      chat.type("/create Vault --encrypted\r");
      await chat.waitFor("turned on end-to-end encryption");
      await chat.waitFor(`Vault · ${LOCK} encrypted`);
      chat.type(`/invite ${dana.userId}\r`);
      await chat.waitFor(`Invited ${dana.userId}`);
      const invited = await until(() => dana.rooms().find((r) => r.membership === "invite"));
      await dana.joinRoom(invited.roomId);
      await chat.waitFor("dana joined");

      chat.type("for your eyes only\r");
      const received = await until(() => dana.room(invited.roomId)?.timeline.find((e) => e.content.body === "for your eyes only"));
      expect(received.encrypted).toMatchObject({ decrypted: true });

      await dana.sendText(invited.roomId, "sealed reply");
      // Decrypted, with the lock, and the warning: dana's device is not verified.
      await chat.waitFor(new RegExp(`${LOCK}${WARNING}dana: sealed reply`));
      await chat.waitFor(`${WARNING} sent from an unverified device`);

      // The server holds only ciphertext.
      const page = await request(server.url, "GET", `/_matrix/client/v3/rooms/${encodeURIComponent(invited.roomId)}/messages?dir=b&limit=20`, { token: dana.http.accessToken! });
      expect(page.text).not.toContain("for your eyes only");
      expect(page.text).not.toContain("sealed reply");
      expect(page.json.chunk.filter((e: any) => e.type === "m.room.encrypted").length).toBeGreaterThanOrEqual(2);
      chat.type("/quit\r");
      expect(await chat.exited).toBe(0);
    } finally {
      chat.kill();
      await dana.stop();
      await rm(carolDir, { recursive: true, force: true, maxRetries: 10 });
    }
  }, 25_000);
  // E2EE offers verification from E's SAS wiring on; before it, /verify says it is unavailable.
  it.skipIf(typeof (E2EE.prototype as unknown as Record<string, unknown>).requestVerification !== "function")(
    "verifies another user's device by comparing emoji (/verify, /yes); its messages then show no warning",
    async () => {
      const registered = await ParleyClient.register(server.url, "finn", "finn-password-1");
      const finn = new ParleyClient({ baseUrl: server.url, accessToken: registered.http.accessToken!, userId: registered.userId, deviceId: registered.deviceId, sync: { pollTimeoutMs: 5_000 } });
      const finnCrypto = await E2EE.create({ http: finn.http, userId: finn.userId, deviceId: finn.deviceId, store: new MemoryCryptoStore() });
      finn.setCrypto(finnCrypto);
      type Sas = import("../../client/crypto/sas.ts").SasVerification;
      const requests: Sas[] = [];
      (finnCrypto as unknown as { onVerificationRequest?: (v: Sas) => void }).onVerificationRequest = (v) => requests.push(v);
      await finn.start();
      const gwenDir = await mkdtemp(path.join(tmpdir(), "parley-chat-"));
      const chat = await startChat(["--register", "--user", "gwen"], ["gwen-password-1", "gwen-password-1"], gwenDir);
      try {
        chat.type(`/verify ${finn.userId} ${finn.deviceId}\r`);
        await chat.waitFor("Waiting for the other device");
        const v = await until(() => requests[0]);
        await v.ready();
        await v.keysExchanged;
        const emojis = v.emojis()!;
        // The person reads the same seven emoji on both devices.
        await chat.waitFor(emojis.map((e) => e.emoji).join("   "));
        await chat.waitFor("/yes if they match");
        chat.type("/yes\r");
        await v.confirm();
        // Finn's side checked gwen's MAC over her device key: that device is the one verified.
        const gwen = JSON.parse(await readFile(path.join(gwenDir, "session.json"), "utf8")) as { deviceId: string };
        expect(await v.done).toContain(`ed25519:${gwen.deviceId}`);
        await chat.waitFor(`${finn.userId} ${finn.deviceId} is verified`);

        // Finn's messages now show the lock without the warning.
        chat.type("/create Trusted --encrypted\r");
        await chat.waitFor("turned on end-to-end encryption");
        chat.type(`/invite ${finn.userId}\r`);
        await chat.waitFor(`Invited ${finn.userId}`);
        const invited = await until(() => finn.rooms().find((r) => r.membership === "invite"));
        await finn.joinRoom(invited.roomId);
        await chat.waitFor("finn joined");
        await finn.sendText(invited.roomId, "now you know it is me");
        await chat.waitFor(new RegExp(`${LOCK} finn: now you know it is me`));
        expect(chat.screen.text()).not.toContain(`${WARNING} sent from`);
        chat.type("/quit\r");
        expect(await chat.exited).toBe(0);
      } finally {
        chat.kill();
        await finn.stop();
        await rm(gwenDir, { recursive: true, force: true, maxRetries: 10 });
      }
    },
    25_000,
  );
});

/** Polls until `check` gives something (5 s at most). */
async function until<T>(check: () => T | undefined | false): Promise<T> {
  for (let i = 0; i < 100; i++) {
    const value = check();
    if (value) return value;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error("timed out");
}

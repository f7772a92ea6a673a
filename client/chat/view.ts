// parley-chat's screen as a pure function: the chat state in, the terminal's rows out (each exactly
// as wide as the terminal, with ANSI colours), plus where the cursor goes. Nothing here reads the
// clock, the terminal or the network, so what a person sees is tested by calling `render`.
//
//  ┌ header: who is logged in, the open room, encryption ────────────────────────┐
//  │ room list      │ timeline of the open room (or an info panel: /rooms, /help)  │
//  │ (unread count) │                                                              │
//  ├ status line: errors, notices, who is typing ─────────────────────────────────┤
//  └ input line ──────────────────────────────────────────────────────────────────┘
import { displayWidth, fit, sanitizeLine, truncate, wrap } from "./text.ts";

/** How a message arrived: in the clear, or encrypted (and then whether its sender is trusted). */
export type MessageSecurity =
  | "plain"
  /** decrypted, from a verified device */
  | "verified"
  /** decrypted, but the sending device is not verified (or not known) */
  | "unverified"
  /** could not be decrypted (or this client has no encryption) */
  | "undecryptable";

export interface ChatMessage {
  eventId: string;
  sender: string;
  /** What to call the sender: their display name in the room, else their user ID's localpart. */
  senderName: string;
  ts: number;
  /** "text" is a message; "emote" is /me; "event" is a room change (join, name, encryption). */
  kind: "text" | "emote" | "notice" | "event";
  body: string;
  security: MessageSecurity;
  /** Why it is marked: the decryption error, or "unverified device". */
  securityNote?: string;
  /** Sent by us and not yet acknowledged by the server. */
  pending?: boolean;
}

export interface ChatRoomEntry {
  roomId: string;
  name: string;
  unread: number;
  encrypted: boolean;
  membership: "join" | "invite" | "leave";
}

export interface ChatViewState {
  userId: string;
  /** The homeserver's name, shown in the header. */
  homeserver: string;
  rooms: ChatRoomEntry[];
  openRoomId?: string;
  /** The open room's timeline, oldest first. */
  messages: ChatMessage[];
  /** Users typing in the open room (display names). */
  typing: string[];
  input: string;
  /** Cursor position in `input`, in UTF-16 code units. */
  cursor: number;
  /** Timeline lines scrolled back from the newest (0: following the newest). */
  scroll: number;
  /** A panel shown instead of the timeline (/rooms, /devices, /help); Esc closes it. */
  panel?: { title: string; lines: string[] };
  status?: { text: string; kind: "info" | "error" };
  /** "connected", "connecting" (first sync or reconnecting), "offline" (sync errors). */
  connection: "connected" | "connecting" | "offline";
  /** Whether this client can encrypt and decrypt. */
  crypto: boolean;
}

export interface Size {
  cols: number;
  rows: number;
}

export interface Screen {
  /** Exactly `rows` strings, each `cols` columns wide once its ANSI escapes are removed. */
  lines: string[];
  /** Where the terminal cursor goes (0-based): on the input line. */
  cursor: { row: number; col: number };
}

// SGR sequences. Only these escapes ever reach the terminal from a render; user text is sanitized.
const RESET = "\x1b[0m";
const style = {
  header: "\x1b[7m",
  dim: "\x1b[2m",
  bold: "\x1b[1m",
  selected: "\x1b[7m",
  unread: "\x1b[1m",
  error: "\x1b[31m",
  warn: "\x1b[33m",
  ok: "\x1b[32m",
  me: "\x1b[36m",
};

const SENDER_COLOURS = ["\x1b[35m", "\x1b[34m", "\x1b[33m", "\x1b[32m", "\x1b[36m", "\x1b[91m", "\x1b[94m", "\x1b[95m"];

/** A stable colour for a user, so one sender reads the same all along a conversation. */
function senderColour(userId: string): string {
  let h = 0;
  for (let i = 0; i < userId.length; i++) h = (h * 31 + userId.charCodeAt(i)) >>> 0;
  return SENDER_COLOURS[h % SENDER_COLOURS.length]!;
}

/** A run of text in one style. The text is already printable (sanitized). */
type Span = [text: string, sgr?: string];

/** Joins spans into exactly `width` columns (cut or padded), with their styles. */
function layout(spans: Span[], width: number): string {
  let out = "";
  let used = 0;
  for (const [text, sgr] of spans) {
    if (used >= width) break;
    const t = truncate(text, width - used);
    used += displayWidth(t);
    out += sgr ? `${sgr}${t}${RESET}` : t;
  }
  return out + " ".repeat(width - used);
}

export const LOCK = "🔒";
export const WARNING = "⚠";

/** "14:05" in the local time zone. */
export function formatTime(ts: number): string {
  const d = new Date(ts);
  return `${String(d.getHours()).padStart(2, "0")}:${String(d.getMinutes()).padStart(2, "0")}`;
}

/** "Wed 2 Dec 2026" in the local time zone: the separator before a new day's messages. */
export function formatDay(ts: number): string {
  const d = new Date(ts);
  return d.toLocaleDateString("en-GB", { weekday: "short", day: "numeric", month: "short", year: "numeric" }).replace(/,/g, "");
}

function dayKey(ts: number): string {
  const d = new Date(ts);
  return `${d.getFullYear()}-${d.getMonth()}-${d.getDate()}`;
}

/** The room list's width for a terminal this wide (0: no room list, the terminal is too narrow). */
export function roomListWidth(cols: number): number {
  if (cols < 50) return 0;
  return Math.min(28, Math.max(16, Math.floor(cols / 4)));
}

/** The security marks: three columns, a lock for encrypted messages and a warning when not trusted. */
function securitySpans(m: ChatMessage): Span[] {
  switch (m.security) {
    case "plain":
      return [["   "]];
    case "verified":
      return [[LOCK, style.ok], [" "]];
    case "unverified":
      return [[LOCK], [WARNING, style.warn]];
    case "undecryptable":
      return [[LOCK], [WARNING, style.error]];
  }
}

/** The timeline's messages as rows of `width` columns, oldest first. */
export function timelineRows(state: ChatViewState, width: number): string[] {
  const rows: string[] = [];
  let lastDay: string | undefined;
  for (const m of state.messages) {
    const day = dayKey(m.ts);
    if (day !== lastDay) {
      const label = ` ${formatDay(m.ts)} `;
      const side = Math.max(0, Math.floor((width - displayWidth(label)) / 2));
      rows.push(layout([["─".repeat(side), style.dim], [label, style.dim], ["─".repeat(width), style.dim]], width));
      lastDay = day;
    }
    const time = formatTime(m.ts);
    const marks = securitySpans(m);
    const prefixWidth = time.length + 1 + 3;
    const name = sanitizeLine(m.senderName);
    const mine = m.sender === state.userId;
    const nameStyle = mine ? style.me : senderColour(m.sender);
    let head: Span[];
    let body: string;
    if (m.kind === "event") {
      head = [];
      body = `* ${name} ${m.body}`;
    } else if (m.kind === "emote") {
      head = [["* "], [name, nameStyle], [" "]];
      body = m.body;
    } else {
      head = [[name, `${style.bold}${nameStyle}`], [": "]];
      body = m.body;
    }
    const bodyStyle = m.kind === "event" || m.kind === "notice" ? style.dim : m.pending ? style.dim : m.security === "undecryptable" ? style.error : undefined;
    const textWidth = Math.max(1, width - prefixWidth);
    const headText = head.map(([t]) => t).join("");
    const headWidth = displayWidth(headText);
    // The first row starts with the sender; following rows are indented under the time.
    const bodyLines = body.split("\n").map(sanitizeLine);
    const wrapped: string[] = [];
    bodyLines.forEach((line, i) => {
      const first = i === 0 ? headWidth : 0;
      const pieces = wrap(" ".repeat(first) + line, textWidth);
      if (i === 0) pieces[0] = pieces[0]!.slice(first);
      wrapped.push(...pieces);
    });
    wrapped.forEach((line, i) => {
      const spans: Span[] = i === 0 ? [[time, style.dim], [" "], ...marks, ...head, [line, bodyStyle]] : [[" ".repeat(prefixWidth)], [line, bodyStyle]];
      rows.push(layout(spans, width));
    });
    if (m.securityNote && m.security !== "plain" && m.security !== "verified") {
      const noteStyle = m.security === "undecryptable" ? style.error : style.warn;
      rows.push(layout([[" ".repeat(prefixWidth)], [`${WARNING} ${sanitizeLine(m.securityNote)}`, noteStyle]], width));
    }
  }
  return rows;
}

function roomListRows(state: ChatViewState, width: number, height: number): string[] {
  const rows: string[] = [layout([[" Rooms", style.bold]], width)];
  const entries = state.rooms;
  // Keep the open room in view when the list is longer than the pane.
  const openIndex = entries.findIndex((r) => r.roomId === state.openRoomId);
  const visible = height - 1;
  const first = openIndex >= visible ? openIndex - visible + 1 : 0;
  entries.slice(first, first + visible).forEach((room, i) => {
    const n = first + i + 1;
    const open = room.roomId === state.openRoomId;
    const count = room.membership === "invite" ? "invite" : room.unread > 0 ? String(room.unread > 999 ? "999+" : room.unread) : "";
    const num = `${String(n).padStart(2)} `;
    const lock = room.encrypted ? `${LOCK}` : "";
    const nameWidth = Math.max(1, width - num.length - (count ? count.length + 1 : 0) - (lock ? 2 : 0) - 1);
    const name = fit(sanitizeLine(room.name), nameWidth);
    const spans: Span[] = [[num, style.dim], [name, room.unread > 0 || room.membership === "invite" ? style.unread : undefined]];
    if (lock) spans.push([lock]);
    if (count) spans.push([" "], [count, room.membership === "invite" ? style.warn : style.unread]);
    // The open room is shown in reverse video as a whole (its own colours would break the bar).
    rows.push(open ? `${style.selected}${layout(spans.map(([t]) => [t] as Span), width - 1)} ${RESET}` : `${layout(spans, width - 1)} `);
  });
  while (rows.length < height) rows.push(" ".repeat(width));
  return rows.slice(0, height);
}

function panelRows(panel: NonNullable<ChatViewState["panel"]>, width: number, height: number): string[] {
  const rows = [layout([[` ${sanitizeLine(panel.title)} `, style.bold], ["(Esc closes)", style.dim]], width)];
  for (const line of panel.lines) for (const piece of wrap(sanitizeLine(line), Math.max(1, width - 1))) rows.push(layout([[" "], [piece]], width));
  while (rows.length < height) rows.push(" ".repeat(width));
  return rows.slice(0, height);
}

function headerRow(state: ChatViewState, cols: number): string {
  const room = state.rooms.find((r) => r.roomId === state.openRoomId);
  const connection = state.connection === "connected" ? "" : state.connection === "connecting" ? " [connecting…]" : " [offline]";
  const left = ` ${sanitizeLine(state.userId)}${connection}`;
  let right = "";
  if (room) {
    const lock = room.encrypted ? (state.crypto ? ` ${LOCK} encrypted` : ` ${LOCK} encrypted (no encryption in this client)`) : " not encrypted";
    right = ` ${sanitizeLine(room.name)} ·${lock} `;
  }
  const gap = Math.max(1, cols - displayWidth(left) - displayWidth(right));
  return `${style.header}${fit(left + " ".repeat(gap) + right, cols)}${RESET}`;
}

function inputRow(state: ChatViewState, cols: number): { line: string; col: number } {
  const prompt = "> ";
  const room = state.rooms.find((r) => r.roomId === state.openRoomId);
  const width = cols - prompt.length;
  const input = sanitizeLine(state.input);
  const before = sanitizeLine(state.input.slice(0, state.cursor));
  // Scroll the input horizontally so the cursor stays visible.
  let start = 0;
  const cursorCol = displayWidth(before);
  if (cursorCol >= width) start = cursorCol - width + 1;
  let shown = input;
  let skipped = 0;
  while (skipped < start && shown.length > 0) {
    const cp = String.fromCodePoint(shown.codePointAt(0)!);
    skipped += displayWidth(cp) || 0;
    shown = shown.slice(cp.length);
  }
  const placeholder = !state.input && !room ? "type /help for commands" : !state.input && room ? `message ${sanitizeLine(room.name)}` : "";
  const spans: Span[] = [[prompt, style.bold], placeholder ? [placeholder, style.dim] : [shown]];
  return { line: layout(spans, cols), col: Math.min(cols - 1, prompt.length + cursorCol - skipped) };
}

function statusRow(state: ChatViewState, cols: number): string {
  if (state.status) return layout([[` ${sanitizeLine(state.status.text)}`, state.status.kind === "error" ? style.error : style.dim]], cols);
  if (state.typing.length > 0) {
    const names = state.typing.map(sanitizeLine);
    const who = names.length > 3 ? `${names.slice(0, 3).join(", ")} and ${names.length - 3} more` : names.join(", ");
    return layout([[` ${who} ${names.length === 1 ? "is" : "are"} typing…`, style.dim]], cols);
  }
  if (state.scroll > 0) return layout([[" (scrolled back: PageDown to return)", style.dim]], cols);
  return layout([], cols);
}

/** The whole screen for this state and terminal size. */
export function render(state: ChatViewState, size: Size): Screen {
  const cols = Math.max(20, size.cols);
  const rows = Math.max(5, size.rows);
  const bodyHeight = rows - 3;
  const listWidth = roomListWidth(cols);
  const mainWidth = listWidth > 0 ? cols - listWidth - 1 : cols;

  let main: string[];
  if (state.panel) main = panelRows(state.panel, mainWidth, bodyHeight);
  else if (!state.openRoomId) {
    const hint = state.rooms.length === 0 ? "No rooms yet. /create NAME or /join #alias:server" : "Open a room: /open NUMBER or /open NAME (Alt+↑/↓ switches rooms)";
    main = [layout([[` ${hint}`, style.dim]], mainWidth)];
  } else {
    const all = timelineRows(state, mainWidth);
    const end = Math.max(0, all.length - Math.min(state.scroll, Math.max(0, all.length - bodyHeight)));
    main = all.slice(Math.max(0, end - bodyHeight), end);
    // Newest messages sit just above the status line, as in every chat client.
    while (main.length < bodyHeight) main.unshift(" ".repeat(mainWidth));
  }
  while (main.length < bodyHeight) main.push(" ".repeat(mainWidth));

  const lines = [headerRow(state, cols)];
  const list = listWidth > 0 ? roomListRows(state, listWidth, bodyHeight) : [];
  for (let i = 0; i < bodyHeight; i++) lines.push(listWidth > 0 ? `${list[i]}${style.dim}│${RESET}${main[i]}` : main[i]!);
  lines.push(statusRow(state, cols));
  const input = inputRow(state, cols);
  lines.push(input.line);
  return { lines, cursor: { row: rows - 1, col: input.col } };
}

/** A rendered line without its colours (tests, and the width checks). */
export function stripAnsi(s: string): string {
  // eslint-disable-next-line no-control-regex
  return s.replace(/\x1b\[[0-9;?]*[A-Za-z]/g, "");
}

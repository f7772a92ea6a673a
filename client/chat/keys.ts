// Keyboard input from a terminal in raw mode, decoded into keys, and the input line's editing.
// Pure, so the tests type into it without a terminal.

export type Key =
  | { name: "text"; text: string }
  | {
      name:
        | "enter"
        | "backspace"
        | "delete"
        | "left"
        | "right"
        | "up"
        | "down"
        | "home"
        | "end"
        | "pageup"
        | "pagedown"
        | "escape"
        | "tab"
        | "ctrl-c"
        | "ctrl-d"
        | "ctrl-u"
        | "ctrl-w"
        | "ctrl-l"
        | "ctrl-n"
        | "ctrl-p"
        | "alt-up"
        | "alt-down"
        | "unknown";
    };

const SEQUENCES: Record<string, Key["name"]> = {
  "[A": "up",
  "[B": "down",
  "[C": "right",
  "[D": "left",
  "[H": "home",
  "[F": "end",
  OA: "up",
  OB: "down",
  OC: "right",
  OD: "left",
  OH: "home",
  OF: "end",
  "[1~": "home",
  "[7~": "home",
  "[4~": "end",
  "[8~": "end",
  "[3~": "delete",
  "[5~": "pageup",
  "[6~": "pagedown",
  "[1;3A": "alt-up",
  "[1;3B": "alt-down",
  "[1;5A": "alt-up",
  "[1;5B": "alt-down",
};

const CONTROL: Record<string, Key["name"]> = {
  "\r": "enter",
  "\n": "enter",
  "\x7f": "backspace",
  "\b": "backspace",
  "\t": "tab",
  "\x03": "ctrl-c",
  "\x04": "ctrl-d",
  "\x15": "ctrl-u",
  "\x17": "ctrl-w",
  "\x0c": "ctrl-l",
  "\x0e": "ctrl-n",
  "\x10": "ctrl-p",
  "\x01": "home",
  "\x05": "end",
};

/**
 * Splits one chunk of terminal input into keys. Printable runs (typing, a paste) come out as one
 * text key; a paste's newlines become spaces inside it rather than sending half a paste.
 */
export function decodeKeys(chunk: string): Key[] {
  const keys: Key[] = [];
  let text = "";
  const flush = () => {
    if (text) keys.push({ name: "text", text });
    text = "";
  };
  for (let i = 0; i < chunk.length; ) {
    const ch = chunk[i]!;
    if (ch === "\x1b") {
      flush();
      // CSI/SS3 sequence: ESC [ params final, or ESC O final; ESC ESC [ A is Alt+arrow in some terminals.
      const m = /^\x1b(\x1b)?(\[[0-9;]*[~A-Za-z]|O[A-Za-z])/.exec(chunk.slice(i));
      if (m) {
        let name = SEQUENCES[m[2]!] ?? "unknown";
        if (m[1] && (name === "up" || name === "down")) name = name === "up" ? "alt-up" : "alt-down";
        keys.push({ name } as Key);
        i += m[0].length;
      } else {
        keys.push({ name: "escape" });
        i += 1;
      }
      continue;
    }
    const control = CONTROL[ch];
    if (control) {
      // A newline inside pasted text (more printable text follows at once) joins the line.
      if (control === "enter" && text && i + 1 < chunk.length && /^[^\r\n\x00-\x1f]/.test(chunk.slice(i + 1))) {
        text += " ";
        i += ch === "\r" && chunk[i + 1] === "\n" ? 2 : 1;
        continue;
      }
      flush();
      keys.push({ name: control } as Key);
      i += ch === "\r" && chunk[i + 1] === "\n" ? 2 : 1;
      continue;
    }
    if (ch < " ") {
      i += 1; // other control characters do nothing
      continue;
    }
    text += ch;
    i += 1;
  }
  flush();
  return keys;
}

export interface LineEditor {
  text: string;
  /** In UTF-16 code units, always at a code point boundary. */
  cursor: number;
  history: string[];
  /** Position while recalling history (history.length: the line being typed). */
  historyIndex: number;
  /** The line being typed, kept while browsing history. */
  draft: string;
}

export function newLineEditor(): LineEditor {
  return { text: "", cursor: 0, history: [], historyIndex: 0, draft: "" };
}

function prevBoundary(s: string, i: number): number {
  if (i <= 0) return 0;
  const code = s.charCodeAt(i - 1);
  return code >= 0xdc00 && code <= 0xdfff && i >= 2 ? i - 2 : i - 1;
}

function nextBoundary(s: string, i: number): number {
  if (i >= s.length) return s.length;
  const code = s.charCodeAt(i);
  return code >= 0xd800 && code <= 0xdbff ? i + 2 : i + 1;
}

/**
 * Applies an editing key. Returns the submitted line for "enter" (the editor is then cleared and
 * the line kept in history), undefined otherwise. Keys that are not editing keys are ignored.
 */
export function edit(ed: LineEditor, key: Key): string | undefined {
  switch (key.name) {
    case "text":
      ed.text = ed.text.slice(0, ed.cursor) + key.text + ed.text.slice(ed.cursor);
      ed.cursor += key.text.length;
      return undefined;
    case "backspace": {
      const from = prevBoundary(ed.text, ed.cursor);
      ed.text = ed.text.slice(0, from) + ed.text.slice(ed.cursor);
      ed.cursor = from;
      return undefined;
    }
    case "delete":
      ed.text = ed.text.slice(0, ed.cursor) + ed.text.slice(nextBoundary(ed.text, ed.cursor));
      return undefined;
    case "left":
      ed.cursor = prevBoundary(ed.text, ed.cursor);
      return undefined;
    case "right":
      ed.cursor = nextBoundary(ed.text, ed.cursor);
      return undefined;
    case "home":
      ed.cursor = 0;
      return undefined;
    case "end":
      ed.cursor = ed.text.length;
      return undefined;
    case "ctrl-u":
      ed.text = ed.text.slice(ed.cursor);
      ed.cursor = 0;
      return undefined;
    case "ctrl-w": {
      const before = ed.text.slice(0, ed.cursor).replace(/\S+\s*$/, "");
      ed.text = before + ed.text.slice(ed.cursor);
      ed.cursor = before.length;
      return undefined;
    }
    case "up":
      if (ed.historyIndex > 0) {
        if (ed.historyIndex === ed.history.length) ed.draft = ed.text;
        ed.historyIndex -= 1;
        ed.text = ed.history[ed.historyIndex]!;
        ed.cursor = ed.text.length;
      }
      return undefined;
    case "down":
      if (ed.historyIndex < ed.history.length) {
        ed.historyIndex += 1;
        ed.text = ed.historyIndex === ed.history.length ? ed.draft : ed.history[ed.historyIndex]!;
        ed.cursor = ed.text.length;
      }
      return undefined;
    case "enter": {
      const line = ed.text;
      if (line.trim() !== "" && ed.history[ed.history.length - 1] !== line) ed.history.push(line);
      if (ed.history.length > 200) ed.history.shift();
      ed.historyIndex = ed.history.length;
      ed.text = "";
      ed.draft = "";
      ed.cursor = 0;
      return line;
    }
    default:
      return undefined;
  }
}

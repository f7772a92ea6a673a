// The terminal itself: prompts before the full screen (a password is read without echo), and the
// full screen drawn with plain ANSI escapes on the alternate screen, rewriting only rows that changed.
import type { Screen } from "./view.ts";

export interface TerminalIO {
  input: NodeJS.ReadStream;
  output: NodeJS.WriteStream;
}

export class PromptCancelled extends Error {
  override name = "PromptCancelled";
}

/**
 * Reads one line typed at the terminal. With `secret`, nothing is echoed (the terminal is put in
 * raw mode before the prompt is shown, so no keystroke is ever echoed by the terminal itself).
 * When the input is not a terminal (a pipe), reads a line from it as is.
 */
// Input that arrived after a prompt's line (a pipe delivers several lines at once): the next prompt's.
let leftover = "";

export function promptLine(io: TerminalIO, prompt: string, opts: { secret?: boolean } = {}): Promise<string> {
  const { input, output } = io;
  return new Promise((resolve, reject) => {
    const tty = input.isTTY === true;
    if (tty) input.setRawMode(true);
    input.setEncoding("utf8");
    output.write(prompt);
    let line = "";
    let finished = false;
    const done = (err?: Error) => {
      finished = true;
      input.off("data", onData);
      input.off("end", onEnd);
      if (tty) input.setRawMode(false);
      input.pause();
      output.write("\r\n");
      if (err) reject(err);
      else resolve(line);
    };
    const onEnd = () => done(line ? undefined : new PromptCancelled("input closed"));
    const onData = (chunk: string) => {
      const chars = Array.from(chunk);
      for (let i = 0; i < chars.length; i++) {
        const ch = chars[i]!;
        if (ch === "\r" || ch === "\n") {
          leftover = chars.slice(ch === "\r" && chars[i + 1] === "\n" ? i + 2 : i + 1).join("");
          return done();
        }
        if (ch === "\x03" || ch === "\x04") return done(new PromptCancelled("cancelled"));
        if (ch === "\x7f" || ch === "\b") {
          if (line.length > 0) {
            const kept = Array.from(line);
            kept.pop();
            line = kept.join("");
            if (!opts.secret && tty) output.write("\b \b");
          }
          continue;
        }
        if (ch === "\x15") {
          if (!opts.secret && tty) output.write("\b \b".repeat(Array.from(line).length));
          line = "";
          continue;
        }
        if (ch < " ") continue;
        line += ch;
        if (!opts.secret && tty) output.write(ch);
      }
    };
    if (leftover) {
      const pending = leftover;
      leftover = "";
      onData(pending);
      if (finished) return;
    }
    input.on("data", onData);
    input.on("end", onEnd);
    input.resume();
  });
}

const ALT_SCREEN_ON = "\x1b[?1049h";
const ALT_SCREEN_OFF = "\x1b[?1049l";
const HIDE_CURSOR = "\x1b[?25l";
const SHOW_CURSOR = "\x1b[?25h";
const CLEAR = "\x1b[2J";
// Auto-wrap off while drawing: a row exactly as wide as the terminal never wraps onto the next.
const WRAP_OFF = "\x1b[?7l";
const WRAP_ON = "\x1b[?7h";

/** The full-screen part: draws Screens, sending only the rows that differ from the last frame. */
export class FullScreen {
  private previous: string[] = [];
  private active = false;

  constructor(private readonly output: NodeJS.WriteStream) {}

  size(): { cols: number; rows: number } {
    // A pseudo-terminal nobody has sized reports 0×0: assume the classic 80×24.
    return { cols: this.output.columns || 80, rows: this.output.rows || 24 };
  }

  enter(): void {
    this.active = true;
    this.previous = [];
    this.output.write(ALT_SCREEN_ON + WRAP_OFF + CLEAR);
  }

  leave(): void {
    if (!this.active) return;
    this.active = false;
    this.output.write(`\x1b[0m${WRAP_ON}${SHOW_CURSOR}${ALT_SCREEN_OFF}`);
  }

  /** Forgets what is on screen (after a resize) so the next draw rewrites every row. */
  invalidate(): void {
    this.previous = [];
    if (this.active) this.output.write(CLEAR);
  }

  draw(screen: Screen): void {
    if (!this.active) return;
    let out = HIDE_CURSOR;
    screen.lines.forEach((line, i) => {
      if (this.previous[i] === line) return;
      out += `\x1b[${i + 1};1H\x1b[0m${line}\x1b[0m`;
    });
    out += `\x1b[${screen.cursor.row + 1};${screen.cursor.col + 1}H${SHOW_CURSOR}`;
    this.previous = screen.lines.slice();
    this.output.write(out);
  }
}

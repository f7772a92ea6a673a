// Driving a terminal program as a person would: it runs in a pseudo-terminal (util-linux `script`
// makes one, no native module needed), we type into it, and read its screen through a small
// terminal emulator (the escapes parley-chat and ordinary prompts use: cursor moves, clears, SGR).
import { spawn, spawnSync, type ChildProcessWithoutNullStreams } from "node:child_process";
import { displayWidth, graphemes } from "../../client/chat/text.ts";

/** A minimal VT100/xterm screen: enough to read what a full-screen program shows. */
export class VirtualScreen {
  private grid: string[][];
  private row = 0;
  private col = 0;
  private autowrap = true;
  private pending = "";

  constructor(
    readonly cols: number,
    readonly rows: number,
  ) {
    this.grid = this.blank();
  }

  private blank(): string[][] {
    return Array.from({ length: this.rows }, () => Array<string>(this.cols).fill(" "));
  }

  private newline(): void {
    if (this.row < this.rows - 1) this.row++;
    else {
      this.grid.shift();
      this.grid.push(Array<string>(this.cols).fill(" "));
    }
  }

  private put(g: string): void {
    const w = displayWidth(g);
    if (w === 0) return;
    if (this.col + w > this.cols) {
      if (!this.autowrap) return;
      this.col = 0;
      this.newline();
    }
    const line = this.grid[this.row]!;
    line[this.col] = g;
    if (w === 2 && this.col + 1 < this.cols) line[this.col + 1] = "";
    this.col += w;
    if (this.col >= this.cols && !this.autowrap) this.col = this.cols - 1;
  }

  private csi(params: string, final: string): void {
    const nums = params.replace(/^\?/, "").split(";").map((n) => (n === "" ? undefined : Number(n)));
    const n = (i: number, d: number) => nums[i] ?? d;
    switch (final) {
      case "H":
      case "f":
        this.row = Math.min(this.rows - 1, Math.max(0, n(0, 1) - 1));
        this.col = Math.min(this.cols - 1, Math.max(0, n(1, 1) - 1));
        break;
      case "A":
        this.row = Math.max(0, this.row - n(0, 1));
        break;
      case "B":
        this.row = Math.min(this.rows - 1, this.row + n(0, 1));
        break;
      case "C":
        this.col = Math.min(this.cols - 1, this.col + n(0, 1));
        break;
      case "D":
        this.col = Math.max(0, this.col - n(0, 1));
        break;
      case "G":
        this.col = Math.min(this.cols - 1, Math.max(0, n(0, 1) - 1));
        break;
      case "J":
        if (n(0, 0) === 2 || n(0, 0) === 3) this.grid = this.blank();
        else if (n(0, 0) === 0) {
          for (let c = this.col; c < this.cols; c++) this.grid[this.row]![c] = " ";
          for (let r = this.row + 1; r < this.rows; r++) this.grid[r] = Array<string>(this.cols).fill(" ");
        }
        break;
      case "K": {
        const line = this.grid[this.row]!;
        const mode = n(0, 0);
        const [from, to] = mode === 0 ? [this.col, this.cols] : mode === 1 ? [0, this.col + 1] : [0, this.cols];
        for (let c = from; c < to; c++) line[c] = " ";
        break;
      }
      case "h":
      case "l":
        if (params.startsWith("?")) {
          if (nums.includes(7)) this.autowrap = final === "h";
          if (nums.includes(1049)) {
            this.grid = this.blank();
            this.row = 0;
            this.col = 0;
          }
        }
        break;
      default:
        break; // SGR (m) and the rest change nothing we read
    }
  }

  write(data: string): void {
    let s = this.pending + data;
    this.pending = "";
    let text = "";
    const flushText = () => {
      for (const g of graphemes(text)) this.put(g);
      text = "";
    };
    while (s.length > 0) {
      const ch = s[0]!;
      if (ch === "\x1b") {
        flushText();
        const csi = /^\x1b\[([0-9;?]*)([@-~])/.exec(s);
        if (csi) {
          this.csi(csi[1]!, csi[2]!);
          s = s.slice(csi[0].length);
          continue;
        }
        const osc = /^\x1b\][^\x07\x1b]*(\x07|\x1b\\)/.exec(s);
        if (osc) {
          s = s.slice(osc[0].length);
          continue;
        }
        if (s.length < 2 || /^\x1b\[[0-9;?]*$/.test(s) || /^\x1b\][^\x07]*$/.test(s)) {
          this.pending = s; // an escape cut between two reads
          return;
        }
        s = s.slice(2);
        continue;
      }
      if (ch === "\r") {
        flushText();
        this.col = 0;
      } else if (ch === "\n") {
        flushText();
        this.newline();
      } else if (ch === "\b") {
        flushText();
        this.col = Math.max(0, this.col - 1);
      } else if (ch >= " ") text += ch;
      else flushText();
      s = s.slice(1);
    }
    flushText();
  }

  /** The screen's rows, trailing spaces removed. */
  lines(): string[] {
    return this.grid.map((r) => r.join("").trimEnd());
  }

  text(): string {
    return this.lines().join("\n");
  }
}

export function ptyAvailable(): boolean {
  return spawnSync("script", ["--version"], { encoding: "utf8" }).status === 0;
}

function shellQuote(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

/** A program running in an 80×24 (or given) pseudo-terminal, with its screen. */
export class PtySession {
  readonly screen: VirtualScreen;
  readonly child: ChildProcessWithoutNullStreams;
  /** Everything the program wrote, escapes included (for failure messages). */
  raw = "";
  readonly exited: Promise<number | null>;

  constructor(command: string[], opts: { cols?: number; rows?: number; env?: NodeJS.ProcessEnv; cwd?: string } = {}) {
    const cols = opts.cols ?? 80;
    const rows = opts.rows ?? 24;
    this.screen = new VirtualScreen(cols, rows);
    // The terminal size is set inside the pseudo-terminal before the program starts; `script` gives
    // it no size of its own when its input is a pipe.
    const inner = `stty rows ${rows} cols ${cols} && exec ${command.map(shellQuote).join(" ")}`;
    this.child = spawn("script", ["-qfec", inner, "/dev/null"], { env: { ...process.env, ...opts.env, TERM: "xterm-256color" }, cwd: opts.cwd });
    this.child.stdout.setEncoding("utf8");
    this.child.stdout.on("data", (d: string) => {
      this.raw += d;
      this.screen.write(d);
    });
    this.child.stderr.on("data", (d: Buffer) => (this.raw += d.toString()));
    this.exited = new Promise((resolve) => this.child.on("exit", (code) => resolve(code)));
  }

  type(text: string): void {
    this.child.stdin.write(text);
  }

  /** Waits until the screen shows what `test` looks for; fails with the screen as it is. */
  async waitFor(test: string | RegExp | ((text: string) => boolean), timeoutMs = 10_000): Promise<string> {
    const matches = typeof test === "function" ? test : (t: string) => (typeof test === "string" ? t.includes(test) : test.test(t));
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const text = this.screen.text();
      if (matches(text)) return text;
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${String(test)}; the screen:\n${text}`);
      await new Promise((r) => setTimeout(r, 25));
    }
  }

  kill(): void {
    this.child.kill("SIGKILL");
  }
}

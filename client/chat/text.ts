// Text as a terminal shows it: what a string occupies in columns, and how it is made safe to print.
//
// Everything a room member writes ends up on our terminal, so every control character is taken
// out before it is drawn: an escape sequence in a message body must never move our cursor, change
// the title, or rewrite the screen (the terminal client would then show what the sender wants
// instead of what was said).

const segmenter = new Intl.Segmenter(undefined, { granularity: "grapheme" });

// East Asian Wide and Fullwidth ranges (Unicode's EastAsianWidth W/F), enough for CJK, Hangul and
// fullwidth forms; emoji are handled by their presentation property below.
const WIDE =
  /[\u1100-\u115F\u231A\u231B\u2329\u232A\u23E9-\u23EC\u23F0\u23F3\u25FD\u25FE\u2E80-\u303E\u3041-\u33FF\u3400-\u4DBF\u4E00-\u9FFF\uA000-\uA4CF\uA960-\uA97F\uAC00-\uD7A3\uF900-\uFAFF\uFE10-\uFE19\uFE30-\uFE6F\uFF00-\uFF60\uFFE0-\uFFE6\u{1F300}-\u{1F64F}\u{1F900}-\u{1F9FF}\u{20000}-\u{3FFFD}]/u;
const EMOJI_PRESENTATION = /\p{Emoji_Presentation}/u;
const PICTOGRAPHIC = /\p{Extended_Pictographic}/u;
// C0 and C1 controls, DEL, and the bidirectional overrides/isolates (which reorder what follows
// them on screen: a message could make its text read differently than it is).
// eslint-disable-next-line no-control-regex
const CONTROLS = /[\u0000-\u001F\u007F-\u009F\u200E\u200F\u202A-\u202E\u2066-\u2069]/gu;

/** The columns one grapheme cluster takes: 0 (combining, zero-width), 1, or 2 (wide, emoji). */
function graphemeWidth(g: string): number {
  if (g === "") return 0;
  if (EMOJI_PRESENTATION.test(g) || (g.includes("\uFE0F") && PICTOGRAPHIC.test(g))) return 2;
  if (WIDE.test(g)) return 2;
  // Zero-width characters (combining marks alone, ZWSP, ZWJ, variation selectors).
  if (/^[\p{M}\u200B-\u200D\uFE00-\uFE0F\u2060]+$/u.test(g)) return 0;
  return 1;
}

export function graphemes(s: string): string[] {
  return Array.from(segmenter.segment(s), (x) => x.segment);
}

/** The columns a string (already sanitized, no escapes) takes on the terminal. */
export function displayWidth(s: string): number {
  // ASCII fast path: most text is.
  if (/^[\x20-\x7E]*$/.test(s)) return s.length;
  let w = 0;
  for (const g of graphemes(s)) w += graphemeWidth(g);
  return w;
}

/** One line of untrusted text made printable: tabs become spaces, other controls are removed. */
export function sanitizeLine(s: string): string {
  return s.replace(/\t/g, "    ").replace(CONTROLS, "");
}

/** Untrusted text (a message body) as printable lines: split on newlines, each sanitized. */
export function sanitizeLines(s: string): string[] {
  return s.split(/\r\n|\r|\n/).map(sanitizeLine);
}

/** The longest prefix of `s` that fits in `width` columns (never splitting a grapheme). */
export function truncate(s: string, width: number): string {
  if (width <= 0) return "";
  if (/^[\x20-\x7E]*$/.test(s)) return s.slice(0, width);
  let out = "";
  let w = 0;
  for (const g of graphemes(s)) {
    const gw = graphemeWidth(g);
    if (w + gw > width) break;
    out += g;
    w += gw;
  }
  return out;
}

/** `s` cut or padded with spaces to exactly `width` columns. */
export function fit(s: string, width: number): string {
  const t = truncate(s, width);
  return t + " ".repeat(Math.max(0, width - displayWidth(t)));
}

/**
 * Word-wraps one line (no newlines) to `width` columns: breaks at spaces, and inside a word only
 * when the word alone is wider than a line. Always at least one (possibly empty) line.
 */
export function wrap(s: string, width: number): string[] {
  if (width <= 0) return [""];
  if (displayWidth(s) <= width) return [s];
  const lines: string[] = [];
  let line = "";
  let lineWidth = 0;
  for (const word of s.split(/(?<= )/)) {
    const ww = displayWidth(word);
    if (lineWidth + ww <= width) {
      line += word;
      lineWidth += ww;
      continue;
    }
    // The trailing space of a line that ends here need not fit.
    if (lineWidth + displayWidth(word.trimEnd()) <= width) {
      lines.push(line + word.trimEnd());
      line = "";
      lineWidth = 0;
      continue;
    }
    if (line !== "") lines.push(line.trimEnd());
    line = "";
    lineWidth = 0;
    for (const g of graphemes(word)) {
      const gw = graphemeWidth(g);
      if (lineWidth + gw > width) {
        lines.push(line);
        line = "";
        lineWidth = 0;
      }
      line += g;
      lineWidth += gw;
    }
  }
  if (line !== "" || lines.length === 0) lines.push(line.trimEnd());
  return lines;
}

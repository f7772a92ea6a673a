// Glob matching for push rules: `*` matches zero or more characters, `?` exactly one, and nothing else is
// special (appendices "Glob-style matching"). Matching is case-insensitive; the spec leaves the meaning of
// that to the homeserver, and we lower-case both sides as Synapse and ruma do.
//
// The glob runs as an NFA over the value, one step per character, instead of being compiled to a JS
// RegExp. A user chooses their own patterns and JS regexes backtrack, so `*a*a*a*a*b` against a long
// message body could otherwise stall the event pipeline. This way the cost is at most
// pattern length × value length.

/**
 * - `whole`: the pattern must match the entire value (`event_match` on any key but `content.body`).
 * - `words`: the pattern must match a substring that starts and ends at a word boundary (`content` rules,
 *   `event_match` on `content.body`, `contains_display_name`).
 */
export type GlobMatchMode = "whole" | "words";

type Token = { star: true } | { star: false; char: string | null /* null: `?` */ };

function tokenize(pattern: string): Token[] {
  const tokens: Token[] = [];
  for (const c of pattern) {
    if (c === "*") {
      // Consecutive stars match the same set of strings as a single star.
      if (tokens.at(-1)?.star !== true) tokens.push({ star: true });
    } else {
      tokens.push({ star: false, char: c === "?" ? null : c });
    }
  }
  return tokens;
}

/** Word characters per the spec: `[A-Z]`, `[a-z]`, `[0-9]` and `_`; everything else is a word boundary. */
function isWordChar(c: string | undefined): boolean {
  return c !== undefined && /^[A-Za-z0-9_]$/.test(c);
}

/**
 * A pattern without `*` or `?` (most of them: user names, event types) is a plain string: compared, or
 * searched for between word boundaries, without the NFA. Same answers, without its allocations on
 * the persist path (push rules run for every local member on every event).
 */
function literalMatches(pattern: string, value: string, mode: GlobMatchMode): boolean {
  if (mode === "whole") return pattern === value;
  if (pattern.length === 0) return false;
  for (let i = value.indexOf(pattern); i !== -1; i = value.indexOf(pattern, i + 1)) {
    const end = i + pattern.length;
    const startsAtBoundary = i === 0 || !isWordCode(value.charCodeAt(i - 1)) || !isWordCode(value.charCodeAt(i));
    const endsAtBoundary = end === value.length || !isWordCode(value.charCodeAt(end)) || !isWordCode(value.charCodeAt(end - 1));
    if (startsAtBoundary && endsAtBoundary) return true;
  }
  return false;
}

/** isWordChar on a UTF-16 code unit (a surrogate is never a word character, like the astral character it is part of). */
function isWordCode(c: number): boolean {
  return (c >= 48 && c <= 57) || (c >= 65 && c <= 90) || (c >= 97 && c <= 122) || c === 95;
}

export function globMatches(pattern: string, value: string, mode: GlobMatchMode): boolean {
  if (!pattern.includes("*") && !pattern.includes("?")) return literalMatches(pattern.toLowerCase(), value.toLowerCase(), mode);
  const tokens = tokenize(pattern.toLowerCase());
  // Split into code points so that `?` matches one character, not half of a surrogate pair.
  const chars = Array.from(value.toLowerCase());
  const accept = tokens.length;

  // The spec says a word match must start and end "at a word boundary", which is the start or end of the
  // value or a non-word character. Like Synapse (`(?:^|\b|\W)…(?:\b|\W|$)`) and ruma, we read that
  // leniently. A match may begin after a non-word character, or at a non-word character: `@room` matches
  // in `hey,@room` and in `ping@room`. It may end in the same two ways.
  const canStartAt = (i: number) => i === 0 || !isWordChar(chars[i - 1]) || !isWordChar(chars[i]);
  const canEndAt = (i: number) => i === chars.length || !isWordChar(chars[i]) || !isWordChar(chars[i - 1]);

  // A word match of an empty pattern would match every value; treat it as matching nothing, as ruma does.
  if (mode === "words" && accept === 0) return false;

  let active = new Uint8Array(accept + 1);
  const addState = (set: Uint8Array, state: number) => {
    // A star may match nothing, so being before a star also means being after it. Every state enters a
    // set through here, so a star state in a set always has its successor there too.
    let s = state;
    while (set[s] === 0) {
      set[s] = 1;
      if (s < accept && tokens[s]?.star === true) s += 1;
      else break;
    }
  };

  addState(active, 0);
  for (let i = 0; ; i += 1) {
    if (mode === "words" && i > 0 && canStartAt(i)) addState(active, 0);
    if (active[accept] === 1 && (mode === "whole" ? i === chars.length : canEndAt(i))) return true;
    if (i === chars.length) return false;

    const c = chars[i];
    const next = new Uint8Array(accept + 1);
    let any = false;
    for (let s = 0; s < accept; s += 1) {
      if (active[s] === 0) continue;
      const token = tokens[s];
      if (token === undefined) continue;
      if (token.star) {
        addState(next, s);
        any = true;
      } else if (token.char === null || token.char === c) {
        addState(next, s + 1);
        any = true;
      }
    }
    active = next;
    // Nothing left to extend: a whole match has failed, and a word match can only restart at a boundary.
    if (!any && mode === "whole") return false;
  }
}

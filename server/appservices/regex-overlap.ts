// Do two namespace regexes claim a common name? Used at start to refuse two application services
// whose exclusive namespaces overlap (each would be refused the other's users).
//
// A namespace regex matches a name when it matches at the start of it (Synapse's `re.match`,
// registration.ts compiles `^(?:regex)`), so two namespaces overlap when some name has a prefix in
// each: the intersection of L(A)Σ* and L(B)Σ* is not empty, with `$` ending a match at the end of
// the name. That is decided exactly for the regular subset registrations use (literals, escapes,
// `.`, classes, groups, alternation, quantifiers, `^` at the start, `$`), by a search over pairs of
// states of the two regexes' automata (Thompson's construction), with character sets as code point
// ranges. A regex outside that subset (lookarounds, back-references, `\b`, `\p{…}`) gives "unknown".

type Ranges = Array<[number, number]>;
const MAX_CP = 0x10ffff;

function normalise(r: Ranges): Ranges {
  const sorted = r.filter(([a, b]) => a <= b).sort((x, y) => x[0] - y[0]);
  const out: Ranges = [];
  for (const [a, b] of sorted) {
    const last = out[out.length - 1];
    if (last && a <= last[1] + 1) last[1] = Math.max(last[1], b);
    else out.push([a, b]);
  }
  return out;
}

function negate(r: Ranges): Ranges {
  const out: Ranges = [];
  let next = 0;
  for (const [a, b] of normalise(r)) {
    if (a > next) out.push([next, a - 1]);
    next = b + 1;
  }
  if (next <= MAX_CP) out.push([next, MAX_CP]);
  return out;
}

function intersect(x: Ranges, y: Ranges): Ranges {
  const out: Ranges = [];
  let i = 0;
  let j = 0;
  while (i < x.length && j < y.length) {
    const lo = Math.max(x[i]![0], y[j]![0]);
    const hi = Math.min(x[i]![1], y[j]![1]);
    if (lo <= hi) out.push([lo, hi]);
    if (x[i]![1] < y[j]![1]) i++;
    else j++;
  }
  return out;
}

const READABLE: Ranges[] = [[[0x61, 0x7a]], [[0x30, 0x39]], [[0x21, 0x7e]]];

/** A code point in both sets (a readable one when there is one, for the message), or undefined. */
function commonCodePoint(x: Ranges, y: Ranges): number | undefined {
  const both = intersect(x, y);
  if (both.length === 0) return undefined;
  for (const preferred of READABLE) {
    const r = intersect(both, preferred);
    if (r.length > 0) return r[0]![0];
  }
  return both[0]![0];
}

const DIGIT: Ranges = [[0x30, 0x39]];
const WORD: Ranges = normalise([[0x30, 0x39], [0x41, 0x5a], [0x5f, 0x5f], [0x61, 0x7a]]);
const SPACE: Ranges = normalise([
  [0x09, 0x0d], [0x20, 0x20], [0xa0, 0xa0], [0x1680, 0x1680], [0x2000, 0x200a], [0x2028, 0x2029],
  [0x202f, 0x202f], [0x205f, 0x205f], [0x3000, 0x3000], [0xfeff, 0xfeff],
]);
const DOT: Ranges = negate([[0x0a, 0x0a], [0x0d, 0x0d], [0x2028, 0x2029]]);

class Unsupported extends Error {}

type Node =
  | { t: "set"; set: Ranges }
  | { t: "end" } // `$`
  | { t: "empty" }
  | { t: "seq"; items: Node[] }
  | { t: "alt"; options: Node[] }
  | { t: "repeat"; node: Node; min: number; max: number }; // max Infinity for unbounded

const MAX_EXPANSION = 64;

class Parser {
  private i = 0;
  constructor(private readonly s: string) {}

  parse(): Node {
    const node = this.alternation();
    if (this.i < this.s.length) throw new Unsupported(`unexpected ${this.s[this.i]}`);
    return node;
  }

  private peek(): string | undefined {
    return this.s[this.i];
  }

  private alternation(): Node {
    const options = [this.sequence()];
    while (this.peek() === "|") {
      this.i++;
      options.push(this.sequence());
    }
    return options.length === 1 ? options[0]! : { t: "alt", options };
  }

  private sequence(): Node {
    const items: Node[] = [];
    for (let c = this.peek(); c !== undefined && c !== "|" && c !== ")"; c = this.peek()) {
      const atom = this.atom(items.length === 0);
      items.push(this.quantified(atom));
    }
    return items.length === 1 ? items[0]! : { t: "seq", items };
  }

  private quantified(atom: Node): Node {
    const c = this.peek();
    let min: number;
    let max: number;
    if (c === "*") [min, max] = [0, Infinity];
    else if (c === "+") [min, max] = [1, Infinity];
    else if (c === "?") [min, max] = [0, 1];
    else if (c === "{") {
      const m = /^\{(\d+)(,(\d*))?\}/.exec(this.s.slice(this.i));
      if (!m) throw new Unsupported("a brace that is no quantifier");
      min = Number(m[1]);
      max = m[2] === undefined ? min : m[3] === "" ? Infinity : Number(m[3]);
      if (min > MAX_EXPANSION || (max !== Infinity && max > MAX_EXPANSION)) throw new Unsupported("a large repetition count");
      this.i += m[0].length - 1;
    } else return atom;
    this.i++;
    if (this.peek() === "?") this.i++; // lazy: the same language
    return { t: "repeat", node: atom, min, max };
  }

  private atom(first: boolean): Node {
    const c = this.s[this.i++]!;
    switch (c) {
      case "(": {
        if (this.s.startsWith("?:", this.i)) this.i += 2;
        else if (this.s.startsWith("?<", this.i) && !/^\?<[=!]/.test(this.s.slice(this.i))) {
          const close = this.s.indexOf(">", this.i);
          if (close < 0) throw new Unsupported("a group name");
          this.i = close + 1;
        } else if (this.peek() === "?") throw new Unsupported("a lookaround");
        const inner = this.alternation();
        if (this.s[this.i++] !== ")") throw new Unsupported("an unclosed group");
        return inner;
      }
      case ".":
        return { t: "set", set: DOT };
      case "[":
        return { t: "set", set: this.characterClass() };
      case "\\":
        return this.escape(false) as Node;
      case "^":
        // Every namespace regex is anchored at the start already; `^` elsewhere is not supported.
        if (first && this.i === 1) return { t: "empty" };
        throw new Unsupported("^ inside the regex");
      case "$":
        return { t: "end" };
      default: {
        const cp = this.s.codePointAt(this.i - 1)!;
        if (cp > 0xffff) this.i++;
        return { t: "set", set: [[cp, cp]] };
      }
    }
  }

  /** After a backslash: a node (outside a class) or a set (inside one). */
  private escape(inClass: boolean): Node | Ranges {
    const c = this.s[this.i++];
    if (c === undefined) throw new Unsupported("a trailing backslash");
    const set = (r: Ranges): Node | Ranges => (inClass ? r : { t: "set", set: r });
    const one = (cp: number) => set([[cp, cp]]);
    switch (c) {
      case "d": return set(DIGIT);
      case "D": return set(negate(DIGIT));
      case "w": return set(WORD);
      case "W": return set(negate(WORD));
      case "s": return set(SPACE);
      case "S": return set(negate(SPACE));
      case "n": return one(0x0a);
      case "r": return one(0x0d);
      case "t": return one(0x09);
      case "f": return one(0x0c);
      case "v": return one(0x0b);
      case "0": return one(0);
      case "x": {
        const m = /^[0-9a-fA-F]{2}/.exec(this.s.slice(this.i));
        if (!m) throw new Unsupported("\\x");
        this.i += 2;
        return one(parseInt(m[0], 16));
      }
      case "u": {
        const m = /^(?:\{([0-9a-fA-F]+)\}|([0-9a-fA-F]{4}))/.exec(this.s.slice(this.i));
        if (!m) throw new Unsupported("\\u");
        this.i += m[0].length;
        return one(parseInt(m[1] ?? m[2]!, 16));
      }
      case "-":
        return one(0x2d);
      default:
        // With the u flag only syntax characters may be escaped; anything else (\b, \B, \1, \p, \k, \c)
        // is an assertion or a reference this search does not model.
        if ("^$\\.*+?()[]{}|/".includes(c)) return one(c.codePointAt(0)!);
        if (inClass && c === "b") return one(0x08);
        throw new Unsupported(`\\${c}`);
    }
  }

  private characterClass(): Ranges {
    let negated = false;
    if (this.peek() === "^") {
      negated = true;
      this.i++;
    }
    const out: Ranges = [];
    const item = (): Ranges => {
      const c = this.s[this.i];
      if (c === undefined) throw new Unsupported("an unclosed class");
      if (c === "\\") {
        this.i++;
        return this.escape(true) as Ranges;
      }
      const cp = this.s.codePointAt(this.i)!;
      this.i += cp > 0xffff ? 2 : 1;
      return [[cp, cp]];
    };
    while (this.peek() !== "]") {
      const lo = item();
      if (this.peek() === "-" && this.s[this.i + 1] !== "]" && this.s[this.i + 1] !== undefined && lo.length === 1 && lo[0]![0] === lo[0]![1]) {
        this.i++;
        const hi = item();
        if (hi.length !== 1 || hi[0]![0] !== hi[0]![1]) throw new Unsupported("a class range to a class");
        out.push([lo[0]![0], hi[0]![0]]);
      } else out.push(...lo);
    }
    this.i++;
    const set = normalise(out);
    return negated ? negate(set) : set;
  }
}

// Thompson's construction. Edge kinds: epsilon, a character set, `$` (taken only at the end).
interface State {
  eps: number[];
  sets: Array<{ set: Ranges; to: number }>;
  ends: number[];
}

class Automaton {
  readonly states: State[] = [];
  readonly start: number;
  readonly accept: number;
  /** Reached from `accept` by epsilon: the regex matched a prefix, so any rest of the name is fine. */
  readonly done: number;

  constructor(node: Node) {
    this.start = this.add();
    this.accept = this.add();
    this.done = this.add();
    this.build(node, this.start, this.accept);
    this.states[this.accept]!.eps.push(this.done);
    this.states[this.done]!.sets.push({ set: [[0, MAX_CP]], to: this.done });
  }

  private add(): number {
    this.states.push({ eps: [], sets: [], ends: [] });
    if (this.states.length > 20_000) throw new Unsupported("too large");
    return this.states.length - 1;
  }

  private build(node: Node, from: number, to: number): void {
    switch (node.t) {
      case "empty":
        this.states[from]!.eps.push(to);
        return;
      case "end":
        this.states[from]!.ends.push(to);
        return;
      case "set":
        this.states[from]!.sets.push({ set: node.set, to });
        return;
      case "seq": {
        let at = from;
        node.items.forEach((item, k) => {
          const next = k === node.items.length - 1 ? to : this.add();
          this.build(item, at, next);
          at = next;
        });
        if (node.items.length === 0) this.states[from]!.eps.push(to);
        return;
      }
      case "alt":
        for (const option of node.options) this.build(option, from, to);
        return;
      case "repeat": {
        let at = from;
        for (let k = 0; k < node.min; k++) {
          const next = this.add();
          this.build(node.node, at, next);
          at = next;
        }
        if (node.max === Infinity) {
          const loop = this.add();
          this.states[at]!.eps.push(loop);
          const back = this.add();
          this.build(node.node, loop, back);
          this.states[back]!.eps.push(loop);
          this.states[loop]!.eps.push(to);
        } else {
          for (let k = node.min; k < node.max; k++) {
            this.states[at]!.eps.push(to);
            const next = this.add();
            this.build(node.node, at, next);
            at = next;
          }
          this.states[at]!.eps.push(to);
        }
        return;
      }
    }
  }

  /** The states reachable without reading a character (`$` edges only when the name ends here). */
  closure(state: number, atEnd: boolean): number[] {
    const seen = new Set([state]);
    const stack = [state];
    while (stack.length > 0) {
      const s = this.states[stack.pop()!]!;
      for (const next of atEnd ? [...s.eps, ...s.ends] : s.eps) {
        if (!seen.has(next)) {
          seen.add(next);
          stack.push(next);
        }
      }
    }
    return [...seen];
  }

  /** Whether a name ending right after reaching `state` is matched. */
  acceptsAtEnd(state: number): boolean {
    const c = this.closure(state, true);
    return c.includes(this.accept) || c.includes(this.done);
  }
}

function automaton(source: string): Automaton {
  return new Automaton(new Parser(source).parse());
}

const MAX_PAIRS = 200_000;

/**
 * A name both regexes claim (as namespace regexes: matched at the start), `null` when there is
 * none, or `"unknown"` when a regex uses syntax outside the supported subset.
 */
export function overlapWitness(a: string, b: string): string | null | "unknown" {
  let A: Automaton;
  let B: Automaton;
  try {
    A = automaton(a);
    B = automaton(b);
  } catch (err) {
    if (err instanceof Unsupported) return "unknown";
    throw err;
  }
  // Breadth-first over pairs of states, so the witness is a shortest name.
  const key = (x: number, y: number) => x * B.states.length + y;
  const parent = new Map<number, { from: number; cp: number } | null>();
  const queue: Array<[number, number]> = [];
  for (const x of A.closure(A.start, false)) {
    for (const y of B.closure(B.start, false)) {
      if (!parent.has(key(x, y))) {
        parent.set(key(x, y), null);
        queue.push([x, y]);
      }
    }
  }
  for (let head = 0; head < queue.length; head++) {
    const [x, y] = queue[head]!;
    if (A.acceptsAtEnd(x) && B.acceptsAtEnd(y)) {
      const cps: number[] = [];
      for (let p = parent.get(key(x, y)); p; p = parent.get(p.from)) cps.push(p.cp);
      return String.fromCodePoint(...cps.reverse());
    }
    for (const ex of A.states[x]!.sets) {
      for (const ey of B.states[y]!.sets) {
        const cp = commonCodePoint(ex.set, ey.set);
        if (cp === undefined) continue;
        for (const nx of A.closure(ex.to, false)) {
          for (const ny of B.closure(ey.to, false)) {
            const k = key(nx, ny);
            if (parent.has(k)) continue;
            if (parent.size >= MAX_PAIRS) return "unknown";
            parent.set(k, { from: key(x, y), cp });
            queue.push([nx, ny]);
          }
        }
      }
    }
  }
  return null;
}

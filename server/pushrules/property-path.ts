// Dot-separated property paths, as push rule conditions use them in `key` (appendices "Dot-separated
// property paths"): `content.m\.relates_to.rel_type` is `rel_type` inside `m.relates_to` inside `content`.

/**
 * Splits a path into property names. `\.` is a literal dot and `\\` a literal backslash. Any other
 * backslash is kept as written ("other escape sequences are left as-is": `\x` is a backslash then `x`).
 */
export function parsePropertyPath(path: string): string[] {
  const names: string[] = [];
  let name = "";
  for (let i = 0; i < path.length; i += 1) {
    const c = path[i];
    const next = path[i + 1];
    if (c === "\\" && (next === "." || next === "\\")) {
      name += next;
      i += 1;
    } else if (c === ".") {
      names.push(name);
      name = "";
    } else {
      name += c;
    }
  }
  names.push(name);
  return names;
}

function isJsonObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/**
 * The value at `path` in `event`, or `undefined` when any step is missing. Only JSON objects are walked
 * into, never arrays. Own properties only, so a key such as `content.constructor` finds nothing rather than
 * something from Object.prototype.
 */
export function eventProperty(event: unknown, path: string): unknown {
  let value: unknown = event;
  for (const name of parsePropertyPath(path)) {
    if (!isJsonObject(value) || !Object.hasOwn(value, name)) return undefined;
    value = value[name];
  }
  return value;
}

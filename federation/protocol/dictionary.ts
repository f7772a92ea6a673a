// Objects keyed by what others chose: user IDs, device IDs, event types, key IDs, room IDs, tags.
// A `{}` inherits from Object.prototype, so `x["constructor"]` finds the global Object (and
// `(x[k] ??= {})[k2] = v` then writes onto it), and `x["__proto__"] = v` replaces x's prototype.
// A dictionary has no prototype: every key is only a key, and JSON.stringify writes it as usual.
// Reads from objects that came from JSON go through `own`, which never finds anything inherited.

/** An empty object without a prototype, for keys chosen by others. */
export function dictionary<T>(): Record<string, T> {
  return Object.create(null) as Record<string, T>;
}

/** A dictionary holding the given entries (later ones win), e.g. a copy of a parsed JSON object. */
export function dictionaryOf<T>(entries: Iterable<readonly [string, T]>): Record<string, T> {
  const out = dictionary<T>();
  for (const [k, v] of entries) out[k] = v;
  return out;
}

/** `object[key]` when it is the object's own property, else undefined (never an inherited one). */
export function own(object: object, key: string): unknown {
  return Object.hasOwn(object, key) ? (object as Record<string, unknown>)[key] : undefined;
}

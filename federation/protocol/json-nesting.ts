// How deep JSON from others may nest. Everything that walks JSON recursively (schemas, canonical
// JSON, redaction, signature checks) would overflow the stack on text nested a few thousand levels
// deep, so text is checked before it is parsed, in a loop that cannot overflow itself. Events need
// far less: the spec's PDU size limits and canonical JSON make 100 levels plenty.

/** The deepest nesting of arrays and objects accepted in JSON from clients and other servers. */
export const MAX_JSON_DEPTH = 100;

/**
 * Whether arrays and objects in `text` nest deeper than `max` (brackets inside strings do not
 * count). Iterative, and linear in the text: strings are skipped with indexOf. Malformed text is
 * left for JSON.parse to refuse.
 */
export function nestingExceeds(text: string, max: number = MAX_JSON_DEPTH): boolean {
  let depth = 0;
  const len = text.length;
  for (let i = 0; i < len; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x22 /* " */) {
      let end = i;
      for (;;) {
        end = text.indexOf('"', end + 1);
        if (end < 0) return false;
        let backslashes = 0;
        for (let k = end - 1; text.charCodeAt(k) === 0x5c /* \ */; k--) backslashes++;
        if (backslashes % 2 === 0) break;
      }
      i = end;
    } else if (c === 0x7b /* { */ || c === 0x5b /* [ */) {
      if (++depth > max) return true;
    } else if (c === 0x7d /* } */ || c === 0x5d /* ] */) {
      depth--;
    }
  }
  return false;
}

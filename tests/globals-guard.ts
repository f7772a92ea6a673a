// Tests run in the server's process, so what a request did to the built-in objects shows here:
// snapshot them before, compare after, and put them back so one failure does not fail every test after it.

const guarded: [string, object][] = [
  ["Object.prototype", Object.prototype],
  ["Object", Object],
  ["Array.prototype", Array.prototype],
  ["Function.prototype", Function.prototype],
  ["String.prototype", String.prototype],
];

export interface GlobalsSnapshot {
  /** What changed since the snapshot (empty when nothing did), after putting everything back. */
  restore(): string[];
}

export function snapshotGlobals(): GlobalsSnapshot {
  const saved = guarded.map(([name, target]) => ({
    name,
    target,
    descriptors: Object.getOwnPropertyDescriptors(target) as Record<string | symbol, PropertyDescriptor>,
    keys: Reflect.ownKeys(target),
  }));
  // Captured now: later code may find these replaced on the globals.
  const { defineProperty, getOwnPropertyDescriptor } = Object;
  const { ownKeys, deleteProperty } = Reflect;
  return {
    restore() {
      const changes: string[] = [];
      for (const s of saved) {
        for (const key of ownKeys(s.target)) {
          if (!s.keys.includes(key)) {
            changes.push(`${s.name}.${String(key)} added`);
            deleteProperty(s.target, key);
          }
        }
        for (const key of s.keys) {
          const before = s.descriptors[key as string]!;
          const now = getOwnPropertyDescriptor(s.target, key);
          if (!now || !sameDescriptor(before, now)) {
            changes.push(`${s.name}.${String(key)} ${now ? "changed" : "deleted"}`);
            defineProperty(s.target, key, before);
          }
        }
      }
      return changes;
    },
  };
}

function sameDescriptor(a: PropertyDescriptor, b: PropertyDescriptor): boolean {
  return (
    a.value === b.value &&
    a.get === b.get &&
    a.set === b.set &&
    a.writable === b.writable &&
    a.enumerable === b.enumerable &&
    a.configurable === b.configurable
  );
}

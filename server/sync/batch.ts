// Batching: many requests that each need one key looked up in the same tick (a message wakes every
// long-poll of a room at once) share one query for all their keys.
export class Batcher<K, V> {
  private pending = new Map<K, Array<{ resolve: (v: V) => void; reject: (e: unknown) => void }>>();
  private scheduled = false;

  /** `load` answers every key it is given (a missing key answers `fallback`). */
  constructor(
    private readonly load: (keys: K[]) => Promise<Map<K, V>>,
    private readonly fallback: () => V,
    private readonly maxBatch = 500,
  ) {}

  get(key: K): Promise<V> {
    return new Promise<V>((resolve, reject) => {
      let waiting = this.pending.get(key);
      if (!waiting) this.pending.set(key, (waiting = []));
      waiting.push({ resolve, reject });
      if (!this.scheduled) {
        this.scheduled = true;
        // After the current I/O callbacks: the requests woken together have all asked by then.
        setImmediate(() => this.flush());
      }
    });
  }

  private flush(): void {
    this.scheduled = false;
    const all = this.pending;
    this.pending = new Map();
    const keys = [...all.keys()];
    for (let i = 0; i < keys.length; i += this.maxBatch) {
      const chunk = keys.slice(i, i + this.maxBatch);
      this.load(chunk).then(
        (values) => {
          for (const k of chunk) for (const w of all.get(k)!) w.resolve(values.get(k) ?? this.fallback());
        },
        (err: unknown) => {
          for (const k of chunk) for (const w of all.get(k)!) w.reject(err);
        },
      );
    }
  }
}

/**
 * Shares the result of identical reads in flight, and for `keepMs` after they finish: the woken
 * long-polls of one room all ask for the same events.
 */
export class SharedReads<V> {
  private readonly entries = new Map<string, { value: Promise<V>; expires: number }>();

  constructor(
    private readonly keepMs: number,
    private readonly maxEntries = 2_000,
  ) {}

  get(key: string, read: () => Promise<V>): Promise<V> {
    const now = performance.now();
    const hit = this.entries.get(key);
    if (hit && hit.expires > now) return hit.value;
    if (this.entries.size >= this.maxEntries) {
      for (const [k, e] of this.entries) if (e.expires <= now) this.entries.delete(k);
      if (this.entries.size >= this.maxEntries) this.entries.clear();
    }
    const entry = { value: read(), expires: Number.POSITIVE_INFINITY };
    this.entries.set(key, entry);
    entry.value.then(
      () => {
        entry.expires = performance.now() + this.keepMs;
        if (this.keepMs <= 0 && this.entries.get(key) === entry) this.entries.delete(key);
      },
      () => {
        if (this.entries.get(key) === entry) this.entries.delete(key);
      },
    );
    return entry.value;
  }
}

// The media repository on loopback, one in-process server (embedded PGlite, or PostgreSQL when
// DATABASE_URL is set):
// - upload: SIZE_MB streamed in 64 KiB chunks (never held whole by the client either): MB/s, and
//   how much the process's RSS rose while it streamed (client and server together);
// - download of the same file: MB/s, RSS rise;
// - thumbnails: THUMBS distinct sizes of a 1600x1200 JPEG made one at a time, then CONCURRENCY at
//   a time (each generated, stored and served), then the same ones again from the cache: per second.
// `node --expose-gc --import tsx bench/media.bench.ts` (or `npx tsx bench/media.bench.ts`).
//
// On the 2-core VM shared with other work (load average 6.7), PGlite: upload 200 MB at 58 MB/s with
// RSS rising 14.7 MB; download at 60 MB/s, RSS +6.3 MB; thumbnails (1600x1200 JPEG) 25.9/s one at a
// time, 25.7/s four at a time (the cores were busy), 178/s from the cache.
import sharp from "sharp";
import { registerUser } from "../tests/accounts-helpers.ts";
import { startTestServer } from "../tests/harness.ts";

const SIZE_MB = Number(process.env.BENCH_MEDIA_MB ?? 200);
const THUMBS = Number(process.env.BENCH_MEDIA_THUMBS ?? 40);
const CONCURRENCY = Number(process.env.BENCH_MEDIA_CONCURRENCY ?? 4);
const CHUNK = 64 * 1024;

const hs = await startTestServer({ config: { max_upload_size: (SIZE_MB + 1) * 1024 * 1024 } });
const results: Array<{ name: string; value: number; unit: string }> = [];
try {
  const user = await registerUser(hs.url, "bench");
  const auth = { Authorization: `Bearer ${user.accessToken}` };

  const rss = () => process.memoryUsage().rss;
  const peakWhile = async <T>(work: () => Promise<T>): Promise<{ result: T; rise: number; seconds: number }> => {
    global.gc?.();
    const base = rss();
    let peak = base;
    const timer = setInterval(() => (peak = Math.max(peak, rss())), 20);
    const started = performance.now();
    try {
      const result = await work();
      return { result, rise: peak - base, seconds: (performance.now() - started) / 1000 };
    } finally {
      clearInterval(timer);
    }
  };

  const chunk = new Uint8Array(CHUNK);
  for (let i = 0; i < CHUNK; i++) chunk[i] = (i * 31) & 0xff;
  const total = SIZE_MB * 1024 * 1024;
  const up = await peakWhile(async () => {
    let sent = 0;
    const body = new ReadableStream<Uint8Array>({
      pull(controller) {
        if (sent >= total) return controller.close();
        sent += CHUNK;
        controller.enqueue(chunk);
      },
    });
    const res = await fetch(`${hs.url}/_matrix/media/v3/upload?filename=big.bin`, {
      method: "POST",
      headers: { ...auth, "Content-Type": "application/octet-stream" },
      body,
      duplex: "half",
    } as RequestInit);
    if (res.status !== 200) throw new Error(`upload answered ${res.status}: ${await res.text()}`);
    return ((await res.json()) as { content_uri: string }).content_uri.slice("mxc://".length);
  });
  console.log(`upload ${SIZE_MB} MB: ${(SIZE_MB / up.seconds).toFixed(0)} MB/s, RSS rise ${(up.rise / 1048576).toFixed(1)} MB`);
  results.push({ name: `upload ${SIZE_MB} MB`, value: Math.round(SIZE_MB / up.seconds), unit: "MB/s" }, { name: "upload RSS rise", value: Number((up.rise / 1048576).toFixed(1)), unit: "MB" });

  const down = await peakWhile(async () => {
    const res = await fetch(`${hs.url}/_matrix/client/v1/media/download/${up.result}`, { headers: auth });
    let bytes = 0;
    for await (const part of res.body as unknown as AsyncIterable<Uint8Array>) bytes += part.byteLength;
    if (bytes !== total) throw new Error(`downloaded ${bytes} bytes of ${total}`);
  });
  console.log(`download ${SIZE_MB} MB: ${(SIZE_MB / down.seconds).toFixed(0)} MB/s, RSS rise ${(down.rise / 1048576).toFixed(1)} MB`);
  results.push({ name: `download ${SIZE_MB} MB`, value: Math.round(SIZE_MB / down.seconds), unit: "MB/s" }, { name: "download RSS rise", value: Number((down.rise / 1048576).toFixed(1)), unit: "MB" });

  const jpeg = await sharp({ create: { width: 1600, height: 1200, channels: 3, background: { r: 0, g: 0, b: 0 }, noise: { type: "gaussian", mean: 128, sigma: 40 } } })
    .jpeg()
    .toBuffer();
  const uploaded = await fetch(`${hs.url}/_matrix/media/v3/upload`, { method: "POST", headers: { ...auth, "Content-Type": "image/jpeg" }, body: new Uint8Array(jpeg) });
  const imageId = ((await uploaded.json()) as { content_uri: string }).content_uri.slice("mxc://".length);
  const thumb = async (i: number) => {
    const res = await fetch(`${hs.url}/_matrix/client/v1/media/thumbnail/${imageId}?width=${64 + i}&height=${48 + i}&method=${i % 2 ? "crop" : "scale"}`, { headers: auth });
    if (res.status !== 200) throw new Error(`thumbnail answered ${res.status}`);
    await res.arrayBuffer();
  };
  const timed = async (label: string, from: number, count: number, parallel: number) => {
    const started = performance.now();
    let next = from;
    await Promise.all(
      Array.from({ length: parallel }, async () => {
        while (next < from + count) await thumb(next++);
      }),
    );
    const seconds = (performance.now() - started) / 1000;
    console.log(`${label}: ${(count / seconds).toFixed(1)} thumbnails/s (${count} in ${seconds.toFixed(2)} s)`);
    results.push({ name: label, value: Number((count / seconds).toFixed(1)), unit: "thumbnails/s" });
  };
  await timed("thumbnails generated, one at a time", 0, THUMBS, 1);
  await timed(`thumbnails generated, ${CONCURRENCY} at a time`, THUMBS, THUMBS, CONCURRENCY);
  await timed(`thumbnails from the cache, ${CONCURRENCY} at a time`, 0, THUMBS * 2, CONCURRENCY);
  // The line bench/run.ts collects.
  console.log(`BENCH_RESULT ${JSON.stringify({ bench: "media", results })}`);
} finally {
  await hs.destroy();
}

// Media retention and URL previews on loopback, one in-process server (embedded PGlite, or
// PostgreSQL when DATABASE_URL is set):
// - purge: UPLOADS distinct small files uploaded by one user, their content files aged past the
//   one-minute grace, then `purgeUser` (what `parley admin media purge-user` runs): media rows and
//   content files deleted per second;
// - URL previews: PREVIEWS distinct pages (Open Graph tags, no image) from a page server on
//   loopback, CONCURRENCY at a time, fetched and parsed: per second; then the same URLs again,
//   answered from the cache: per second.
// `npx tsx bench/media-retention.bench.ts`
//
// On the 2-core VM shared with other work (load average 5.8), PGlite: purge-user of 1,000 media and
// their 1,000 files in 1.76 s (568 media/s); URL previews 390/s fetched and parsed (8 at a time),
// 1,383/s from the cache.
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { readdir, utimes } from "node:fs/promises";
import path from "node:path";
import { registerUser } from "../tests/accounts-helpers.ts";
import { startTestServer } from "../tests/harness.ts";

const UPLOADS = Number(process.env.BENCH_PURGE_UPLOADS ?? 1000);
const PREVIEWS = Number(process.env.BENCH_PREVIEWS ?? 300);
const CONCURRENCY = Number(process.env.BENCH_PREVIEW_CONCURRENCY ?? 8);

const pages = createServer((req, res) => {
  res.writeHead(200, { "Content-Type": "text/html" });
  res.end(`<html><head><title>t</title><meta property="og:title" content="Page ${req.url}"><meta property="og:description" content="${"words ".repeat(200)}"></head><body>${"<p>text</p>".repeat(2000)}</body></html>`);
});
await new Promise<void>((resolve) => pages.listen(0, "127.0.0.1", resolve));
const origin = `http://127.0.0.1:${(pages.address() as AddressInfo).port}`;
const hs = await startTestServer({ config: { url_preview_enabled: true, url_preview_insecure: ["127.0.0.1"] } });
const results: Array<{ name: string; value: number; unit: string }> = [];
try {
  const user = await registerUser(hs.url, "bench");
  const auth = { Authorization: `Bearer ${user.accessToken}` };

  async function pool(n: number, concurrency: number, work: (i: number) => Promise<void>) {
    let next = 0;
    await Promise.all(Array.from({ length: concurrency }, async () => {
      while (next < n) await work(next++);
    }));
  }

  await pool(UPLOADS, 8, async (i) => {
    const res = await fetch(`${hs.url}/_matrix/media/v3/upload`, { method: "POST", headers: { ...auth, "Content-Type": "text/plain" }, body: `file ${i} ${"x".repeat(1000)}` });
    if (res.status !== 200) throw new Error(`upload ${res.status}`);
    await res.arrayBuffer();
  });
  const contentDir = path.join(hs.dataDir, "media", "content");
  const past = new Date(Date.now() - 5 * 60_000);
  for (const e of await readdir(contentDir, { recursive: true, withFileTypes: true })) if (e.isFile()) await utimes(path.join(e.parentPath, e.name), past, past);
  let started = performance.now();
  const purged = await hs.services.media.purgeUser(user.userId);
  let seconds = (performance.now() - started) / 1000;
  console.log(`purge-user: ${purged.media} media, ${purged.files} files in ${seconds.toFixed(2)} s: ${(purged.media / seconds).toFixed(0)} media/s`);
  results.push({ name: "purge-user", value: Math.round(purged.media / seconds), unit: "media/s" });

  const previewOnce = async (i: number) => {
    const res = await fetch(`${hs.url}/_matrix/client/v1/media/preview_url?url=${encodeURIComponent(`${origin}/p${i}`)}`, { headers: auth });
    if (res.status !== 200) throw new Error(`preview ${res.status}`);
    await res.arrayBuffer();
  };
  started = performance.now();
  await pool(PREVIEWS, CONCURRENCY, previewOnce);
  seconds = (performance.now() - started) / 1000;
  console.log(`URL previews fetched: ${PREVIEWS} in ${seconds.toFixed(2)} s: ${(PREVIEWS / seconds).toFixed(0)}/s (${CONCURRENCY} at a time)`);
  results.push({ name: `URL previews fetched, ${CONCURRENCY} at a time`, value: Math.round(PREVIEWS / seconds), unit: "previews/s" });
  started = performance.now();
  await pool(PREVIEWS, CONCURRENCY, previewOnce);
  seconds = (performance.now() - started) / 1000;
  console.log(`URL previews cached: ${PREVIEWS} in ${seconds.toFixed(2)} s: ${(PREVIEWS / seconds).toFixed(0)}/s`);
  results.push({ name: "URL previews cached", value: Math.round(PREVIEWS / seconds), unit: "previews/s" });
  // The line bench/run.ts collects.
  console.log(`BENCH_RESULT ${JSON.stringify({ bench: "media-retention", results })}`);
} finally {
  await hs.destroy();
  pages.close();
}

// MatrixHttp against a scripted fetch: what reaches the server (URL, token, body) and how answers
// become results or MatrixApiError / MatrixConnectionError. No server: each case is one exchange.
import { describe, expect, it } from "vitest";
import { MatrixApiError, MatrixConnectionError, MatrixHttp, encodePath } from "../../client/http.ts";

type Exchange = { url: string; init: RequestInit };
function scripted(answers: Array<Response | Error>) {
  const seen: Exchange[] = [];
  const fetchImpl: typeof fetch = async (input, init) => {
    seen.push({ url: String(input), init: init ?? {} });
    const next = answers.shift();
    if (!next) throw new Error("no more scripted answers");
    if (next instanceof Error) throw next;
    return next;
  };
  return { seen, fetchImpl };
}
const json = (status: number, body: unknown, headers: Record<string, string> = {}) =>
  new Response(JSON.stringify(body), { status, headers: { "content-type": "application/json", ...headers } });

describe("MatrixHttp", () => {
  it("sends the token, a JSON body and the defined query values, and parses the answer", async () => {
    const { seen, fetchImpl } = scripted([json(200, { event_id: "$e" })]);
    const http = new MatrixHttp({ baseUrl: "https://hs.example/", accessToken: "tok", fetch: fetchImpl });
    const answer = await http.request("PUT", `/_matrix/client/v3/rooms/${encodePath("!r:hs.example")}/send`, { body: { a: 1 }, query: { x: "1 2", skip: undefined, n: 3 } });
    expect(answer).toEqual({ event_id: "$e" });
    expect(seen[0]!.url).toBe("https://hs.example/_matrix/client/v3/rooms/!r%3Ahs.example/send?x=1+2&n=3");
    expect((seen[0]!.init.headers as Record<string, string>).authorization).toBe("Bearer tok");
    expect(seen[0]!.init.body).toBe('{"a":1}');
  });

  it("turns error bodies into MatrixApiError, and a proxy's HTML page into M_UNKNOWN with its status", async () => {
    const { fetchImpl } = scripted([json(403, { errcode: "M_FORBIDDEN", error: "no" }), new Response("<html>Bad Gateway</html>", { status: 502 })]);
    const http = new MatrixHttp({ baseUrl: "https://hs.example", fetch: fetchImpl });
    await expect(http.request("GET", "/a")).rejects.toMatchObject({ name: "MatrixApiError", status: 403, errcode: "M_FORBIDDEN" });
    const proxied = await http.request("GET", "/b").catch((e) => e);
    expect(proxied).toBeInstanceOf(MatrixApiError);
    expect(proxied).toMatchObject({ status: 502, errcode: "M_UNKNOWN" });
  });

  it("waits out a 429 for its retry_after_ms (or Retry-After), and passes on one that asks too long", async () => {
    const { seen, fetchImpl } = scripted([
      json(429, { errcode: "M_LIMIT_EXCEEDED", retry_after_ms: 120 }),
      json(429, { errcode: "M_LIMIT_EXCEEDED" }, { "retry-after": "0" }),
      json(200, { ok: true }),
      json(429, { errcode: "M_LIMIT_EXCEEDED", retry_after_ms: 3_600_000 }),
    ]);
    const http = new MatrixHttp({ baseUrl: "https://hs.example", fetch: fetchImpl });
    const started = performance.now();
    expect(await http.request("GET", "/c")).toEqual({ ok: true });
    expect(performance.now() - started).toBeGreaterThanOrEqual(110);
    expect(seen).toHaveLength(3);
    await expect(http.request("GET", "/d")).rejects.toMatchObject({ status: 429, retryAfterMs: 3_600_000 });
  });

  it("reports an unreachable server as MatrixConnectionError, without the query in the message", async () => {
    const { fetchImpl } = scripted([new TypeError("fetch failed")]);
    const http = new MatrixHttp({ baseUrl: "https://hs.example", fetch: fetchImpl });
    const error = await http.request("GET", "/_matrix/client/v3/sync", { query: { since: "s123_secret" } }).catch((e) => e);
    expect(error).toBeInstanceOf(MatrixConnectionError);
    expect(error.message).toContain("/_matrix/client/v3/sync");
    expect(error.message).not.toContain("s123_secret");
  });

  it("gives the caller's abort back as it is, not as a connection error", async () => {
    const http = new MatrixHttp({ baseUrl: "https://hs.example", fetch: (_input, init) => new Promise((_, reject) => init?.signal?.addEventListener("abort", () => reject(init.signal!.reason))) });
    const controller = new AbortController();
    const pending = http.request("GET", "/slow", { signal: controller.signal });
    controller.abort(new Error("stopped"));
    await expect(pending).rejects.toThrow("stopped");
  });

  it("times a request out as a MatrixConnectionError", async () => {
    const http = new MatrixHttp({ baseUrl: "https://hs.example", timeoutMs: 50, fetch: (_input, init) => new Promise((_, reject) => init?.signal?.addEventListener("abort", () => reject(init.signal!.reason))) });
    await expect(http.request("GET", "/slow")).rejects.toThrow(/timed out/);
  });
});

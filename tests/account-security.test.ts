import { createHmac } from "node:crypto";
import { sql } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { rowsOf } from "../schema/db.ts";
import { loginUser, registerUser } from "./accounts-helpers.ts";
import { request, startTestServer, type TestServer } from "./harness.ts";

describe("wrong passwords", () => {
  let hs: TestServer;
  beforeAll(async () => {
    hs = await startTestServer({ config: { rate_limits: true } });
    await registerUser(hs.url, "mallory", "real password");
  });
  afterAll(() => hs.destroy());

  it("answer 403 M_FORBIDDEN and land in the audit log, without the password", async () => {
    const res = await request(hs.url, "POST", "/_matrix/client/v3/login", {
      body: { type: "m.login.password", identifier: { type: "m.id.user", user: "mallory" }, password: "guess-1" },
      headers: { "User-Agent": "audit-test/1.0" },
    });
    expect(res.status).toBe(403);
    expect(res.json.errcode).toBe("M_FORBIDDEN");
    const [entry] = await hs.services.audit.list({ userId: "@mallory:test.local", limit: 1 });
    expect(entry).toMatchObject({ event: "login_failed", userId: "@mallory:test.local", userAgent: "audit-test/1.0" });
    expect(entry!.ip).toBeTruthy();
    expect(JSON.stringify(entry)).not.toContain("guess-1");
  });

  it("are rate limited: the sixth quick attempt gets 429 M_LIMIT_EXCEEDED with Retry-After", async () => {
    // A fresh server: the per-address bucket of the test above must not count here.
    const fresh = await startTestServer({ config: { rate_limits: true } });
    try {
      await registerUser(fresh.url, "trudy", "real password");
      const statuses: number[] = [];
      let limited;
      for (let i = 0; i < 6; i++) {
        const res = await loginUser(fresh.url, "trudy", `wrong-${i}`);
        statuses.push(res.status);
        if (res.status === 429) limited = res;
      }
      expect(statuses).toEqual([403, 403, 403, 403, 403, 429]);
      expect(limited!.json.errcode).toBe("M_LIMIT_EXCEEDED");
      expect(limited!.json.retry_after_ms).toBeGreaterThan(0);
      expect(Number(limited!.headers.get("retry-after"))).toBeGreaterThanOrEqual(1);
    } finally {
      await fresh.destroy();
    }
  });
});

describe("the general per-user limit", () => {
  it("limits a flood of authenticated requests", async () => {
    const hs = await startTestServer({ config: { rate_limits: true, rate_limit_requests: "5/1m" } });
    try {
      const user = await registerUser(hs.url, "flood");
      const statuses: number[] = [];
      for (let i = 0; i < 7; i++) {
        statuses.push((await request(hs.url, "GET", "/_matrix/client/v3/account/whoami", { token: user.accessToken })).status);
      }
      expect(statuses.slice(0, 5)).toEqual([200, 200, 200, 200, 200]);
      expect(statuses.slice(5)).toEqual([429, 429]);
      // Unauthenticated endpoints are not counted against users.
      expect((await request(hs.url, "GET", "/_matrix/client/versions")).status).toBe(200);
    } finally {
      await hs.destroy();
    }
  });
});

describe("secrets at rest", () => {
  it("stores no plaintext password or token in any text column of any table", async () => {
    const hs = await startTestServer();
    try {
      const password = "plain-password-6d1f0c";
      const user = await registerUser(hs.url, "secretive", password);
      const refreshing = await loginUser(hs.url, "secretive", password, { refresh_token: true });
      const failed = await loginUser(hs.url, "secretive", "wrong-password-9a7e21");
      expect(failed.status).toBe(403);
      // A password typed into the username field must not be logged either.
      await loginUser(hs.url, "typed-password-in-username-field", password);
      const secrets = [
        password,
        "wrong-password-9a7e21",
        "typed-password-in-username-field",
        user.accessToken,
        refreshing.json.access_token,
        refreshing.json.refresh_token,
      ];
      const columns = rowsOf<{ table_schema: string; table_name: string; column_name: string }>(
        await hs.services.db.execute(sql`
          select table_schema, table_name, column_name from information_schema.columns
          where table_schema not in ('pg_catalog', 'information_schema')
            and data_type in ('text', 'character varying', 'character', 'json', 'jsonb', 'bytea')`),
      );
      expect(columns.length).toBeGreaterThan(10);
      let scanned = 0;
      for (const c of columns) {
        const rows = rowsOf<{ v: string | null }>(
          await hs.services.db.execute(
            sql.raw(`select "${c.column_name}"::text as v from "${c.table_schema}"."${c.table_name}"`),
          ),
        );
        for (const { v } of rows) {
          if (v === null) continue;
          scanned++;
          for (const secret of secrets) {
            expect(v.includes(secret), `${c.table_name}.${c.column_name} holds a secret`).toBe(false);
          }
        }
      }
      expect(scanned).toBeGreaterThan(10);
    } finally {
      await hs.destroy();
    }
  });
});

describe("shared-secret registration (Synapse-compatible)", () => {
  const secret = "a shared secret for tests";
  const mac = (nonce: string, username: string, password: string, admin: boolean) =>
    createHmac("sha1", secret)
      .update(`${nonce}\0${username}\0${password}\0${admin ? "admin" : "notadmin"}`)
      .digest("hex");

  it("registers an admin with a correct MAC, once per nonce", async () => {
    const hs = await startTestServer({ config: { registration_shared_secret: secret, registration: "closed" } });
    try {
      const { nonce } = (await request(hs.url, "GET", "/_synapse/admin/v1/register")).json;
      expect(nonce).toMatch(/^[0-9a-f]{64}$/);
      const body = { nonce, username: "root", password: "rootpw", admin: true, mac: mac(nonce, "root", "rootpw", true) };
      const res = await request(hs.url, "POST", "/_synapse/admin/v1/register", { body });
      expect(res.status).toBe(200);
      expect(res.json.user_id).toBe("@root:test.local");
      expect((await request(hs.url, "GET", "/_matrix/client/v3/account/whoami", { token: res.json.access_token })).status).toBe(200);
      expect((await hs.services.accounts.getUser("@root:test.local"))?.isAdmin).toBe(true);
      const reused = await request(hs.url, "POST", "/_synapse/admin/v1/register", { body: { ...body, username: "root2", mac: mac(nonce, "root2", "rootpw", true) } });
      expect(reused.status).toBe(403);
      expect(reused.json.errcode).toBe("M_FORBIDDEN");
    } finally {
      await hs.destroy();
    }
  });

  it("refuses a wrong MAC, and is disabled without a secret", async () => {
    const hs = await startTestServer({ config: { registration_shared_secret: secret } });
    try {
      const { nonce } = (await request(hs.url, "GET", "/_synapse/admin/v1/register")).json;
      const res = await request(hs.url, "POST", "/_synapse/admin/v1/register", {
        body: { nonce, username: "eve", password: "pw", admin: false, mac: mac(nonce, "eve", "pw", true) },
      });
      expect(res.status).toBe(403);
      expect(res.json.errcode).toBe("M_FORBIDDEN");
    } finally {
      await hs.destroy();
    }
    const off = await startTestServer();
    try {
      expect((await request(off.url, "GET", "/_synapse/admin/v1/register")).status).toBe(400);
    } finally {
      await off.destroy();
    }
  });
});

describe.skipIf(!process.env.DATABASE_URL)("several processes on one PostgreSQL", () => {
  it("a logout on one server kills the token on the other, even when the other had it cached", async () => {
    const { createTestDatabase } = await import("./harness.ts");
    const database = await createTestDatabase();
    const a = await startTestServer({ database });
    const b = await startTestServer({ database });
    try {
      const user = await registerUser(a.url, "roamer");
      const login = await loginUser(a.url, "roamer", user.password);
      const token = login.json.access_token as string;
      // Warm b's token cache.
      expect((await request(b.url, "GET", "/_matrix/client/v3/account/whoami", { token })).status).toBe(200);
      expect((await request(a.url, "POST", "/_matrix/client/v3/logout", { token })).status).toBe(200);
      // b hears of it through NOTIFY, within milliseconds, long before its cache entry would expire.
      const started = Date.now();
      let status = 200;
      while (status === 200 && Date.now() - started < 500) {
        status = (await request(b.url, "GET", "/_matrix/client/v3/account/whoami", { token })).status;
      }
      expect(status).toBe(401);
      expect(Date.now() - started).toBeLessThan(500);
    } finally {
      await a.stop();
      await b.stop();
      await database.drop();
    }
  });
});

describe("behind a reverse proxy (x_forwarded_for)", () => {
  it("takes the client's address from the entry the proxy added", async () => {
    const hs = await startTestServer({ config: { x_forwarded_for: true } });
    try {
      await request(hs.url, "POST", "/_matrix/client/v3/login", {
        body: { type: "m.login.password", user: "nobody", password: "x" },
        headers: { "X-Forwarded-For": "198.51.100.1, 203.0.113.7" },
      });
      const [entry] = await hs.services.audit.list({ limit: 1 });
      expect(entry).toMatchObject({ event: "login_failed", ip: "203.0.113.7" });
    } finally {
      await hs.destroy();
    }
  });
});

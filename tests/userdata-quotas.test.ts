// Per-user storage quotas on account data, room account data, tags and filters (issue 20, finding 9):
// without them one account could store about 8 MB per request, as many times as it liked.
import { readFile } from "node:fs/promises";
import { asc, eq, sql } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { schema } from "../schema/db.ts";
import { registerUser, type TestUser } from "./accounts-helpers.ts";
import { request, startTestServer, type TestServer } from "./harness.ts";

const QUOTA = 8192;
const ITEM_MAX = 2048;
const MAX_FILTERS = 5;

let hs: TestServer;
beforeAll(async () => {
  hs = await startTestServer({
    config: { user_data_quota_bytes: QUOTA, user_data_item_max_bytes: ITEM_MAX, user_filters_max: MAX_FILTERS },
  });
});
afterAll(() => hs.destroy());

const u = encodeURIComponent;
const globalPath = (user: TestUser, type: string) => `/_matrix/client/v3/user/${u(user.userId)}/account_data/${type}`;
const roomPath = (user: TestUser, roomId: string, rest: string) =>
  `/_matrix/client/v3/user/${u(user.userId)}/rooms/${u(roomId)}/${rest}`;
/** JSON content of about `bytes` bytes. */
const blob = (bytes: number) => ({ v: "x".repeat(bytes - 8) });

async function usage(user: TestUser) {
  const t = schema.userDataUsage;
  const [row] = await hs.services.db.select().from(t).where(eq(t.userId, user.userId));
  return row;
}

describe("account data quotas", () => {
  it("refuses one piece of account data larger than the item limit with 413 M_TOO_LARGE, and stores nothing", async () => {
    const alice = await registerUser(hs.url, "item-alice");
    const put = await request(hs.url, "PUT", globalPath(alice, "org.example.big"), {
      token: alice.accessToken,
      body: blob(ITEM_MAX + 100),
    });
    expect(put.status).toBe(413);
    expect(put.json.errcode).toBe("M_TOO_LARGE");
    const get = await request(hs.url, "GET", globalPath(alice, "org.example.big"), { token: alice.accessToken });
    expect(get.status).toBe(404);
    const room = await request(hs.url, "PUT", roomPath(alice, "!r:test.local", "account_data/org.example.big"), {
      token: alice.accessToken,
      body: blob(ITEM_MAX + 100),
    });
    expect(room.status).toBe(413);
  });

  it("counts global and room account data and tags together, refuses growth past the quota, and allows shrinking", async () => {
    const bob = await registerUser(hs.url, "quota-bob");
    const carol = await registerUser(hs.url, "quota-carol");
    const sizes: number[] = [];
    for (let i = 0; ; i++) {
      const res =
        i % 2 === 0
          ? await request(hs.url, "PUT", globalPath(bob, `org.example.t${i}`), { token: bob.accessToken, body: blob(1500) })
          : await request(hs.url, "PUT", roomPath(bob, `!room${i}:test.local`, `account_data/org.example.t${i}`), {
              token: bob.accessToken,
              body: blob(1500),
            });
      if (res.status !== 200) {
        expect(res.status).toBe(413);
        expect(res.json.errcode).toBe("M_TOO_LARGE");
        break;
      }
      sizes.push(i);
      expect(i).toBeLessThan(10);
    }
    expect(sizes.length).toBe(5); // 5 × ~1.5 KB fit in 8 KB, the sixth does not
    // A tag is room account data too: refused when it would grow past the quota.
    const tag = await request(hs.url, "PUT", roomPath(bob, "!tagged:test.local", `tags/${"t".repeat(200)}`), {
      token: bob.accessToken,
      body: { order: 0.5, pad: "p".repeat(800) },
    });
    expect(tag.status).toBe(413);
    expect(tag.json.errcode).toBe("M_TOO_LARGE");
    // Replacing a value with a smaller one and rewriting one of the same size always pass.
    expect((await request(hs.url, "PUT", globalPath(bob, "org.example.t0"), { token: bob.accessToken, body: { v: 1 } })).status).toBe(200);
    expect((await request(hs.url, "PUT", globalPath(bob, "org.example.t2"), { token: bob.accessToken, body: blob(1500) })).status).toBe(200);
    // ... and the freed room takes the tag now.
    expect(
      (
        await request(hs.url, "PUT", roomPath(bob, "!tagged:test.local", "tags/u.work"), {
          token: bob.accessToken,
          body: { order: 0.5 },
        })
      ).status,
    ).toBe(200);
    // Another user's quota is their own.
    expect((await request(hs.url, "PUT", globalPath(carol, "org.example.t0"), { token: carol.accessToken, body: blob(1500) })).status).toBe(200);
  });

  it("keeps the usage exact under concurrent writes of the same user", async () => {
    const dave = await registerUser(hs.url, "concurrent-dave");
    const writes = Array.from({ length: 24 }, (_, i) =>
      request(hs.url, "PUT", globalPath(dave, `org.example.k${i % 3}`), { token: dave.accessToken, body: blob(100 + i * 10) }),
    );
    for (const res of await Promise.all(writes)) expect(res.status).toBe(200);
    const t = schema.accountData;
    const rows = await hs.services.db.select().from(t).where(eq(t.userId, dave.userId));
    const actual = rows.reduce((n, r) => n + Buffer.byteLength(r.roomId + r.type + r.content), 0);
    expect((await usage(dave))?.bytes).toBe(actual);
  });
});

describe("filter quotas", () => {
  const filterPath = (user: TestUser) => `/_matrix/client/v3/user/${u(user.userId)}/filter`;

  it("gives an identical filter the stored one's ID instead of storing it again", async () => {
    const erin = await registerUser(hs.url, "filter-erin");
    const filter = { room: { timeline: { limit: 20 } }, event_fields: ["type", "content"] };
    const ids = new Set<string>();
    for (let i = 0; i < MAX_FILTERS + 3; i++) {
      const res = await request(hs.url, "POST", filterPath(erin), { token: erin.accessToken, body: filter });
      expect(res.status).toBe(200);
      ids.add(res.json.filter_id);
    }
    expect(ids.size).toBe(1);
    expect((await usage(erin))?.filters).toBe(1);
  });

  it("refuses a filter past the per-user count with 413 M_TOO_LARGE, and one larger than the item limit", async () => {
    const frank = await registerUser(hs.url, "filter-frank");
    for (let i = 0; i < MAX_FILTERS; i++) {
      const res = await request(hs.url, "POST", filterPath(frank), { token: frank.accessToken, body: { room: { timeline: { limit: i + 1 } } } });
      expect(res.status).toBe(200);
    }
    const over = await request(hs.url, "POST", filterPath(frank), { token: frank.accessToken, body: { room: { timeline: { limit: 99 } } } });
    expect(over.status).toBe(413);
    expect(over.json.errcode).toBe("M_TOO_LARGE");
    expect((await usage(frank))?.filters).toBe(MAX_FILTERS);

    const grace = await registerUser(hs.url, "filter-grace");
    const big = await request(hs.url, "POST", filterPath(grace), {
      token: grace.accessToken,
      body: { room: { rooms: Array.from({ length: 200 }, (_, i) => `!room${i}:test.local`) } },
    });
    expect(big.status).toBe(413);
    expect(big.json.errcode).toBe("M_TOO_LARGE");
  });
});

describe("usage of data stored before the quotas", () => {
  it("is counted by the migration from the account data and filters already there", async () => {
    const u = schema.userDataUsage;
    const before = await hs.services.db.select().from(u).orderBy(asc(u.userId));
    expect(before.length).toBeGreaterThan(3);
    // The migration's counting statement, run again on an emptied usage table, counts the same.
    const migration = await readFile(new URL("../schema/migrations/0007_user_data_usage.sql", import.meta.url), "utf8");
    const backfill = migration.split("--> statement-breakpoint")[1]!;
    await hs.services.db.transaction(async (tx) => {
      await tx.delete(u);
      await tx.execute(sql.raw(backfill));
    });
    const after = await hs.services.db.select().from(u).orderBy(asc(u.userId));
    // Users whose usage went back to nothing have a zero row now, and none after a recount.
    expect(after).toEqual(before.filter((r) => r.bytes !== 0 || r.filters !== 0));
  });
});

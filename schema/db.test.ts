import { cp, mkdtemp, rm, writeFile, readFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { sql } from "drizzle-orm";
import { afterEach, describe, expect, it } from "vitest";
import { createTestDatabase, type TestDatabase } from "../tests/harness.ts";
import { MigrationError, migrate, openDatabase, type OpenedDatabase, rowsOf, sqlLiteral } from "./db.ts";

const migrationsDir = path.join(path.dirname(fileURLToPath(import.meta.url)), "migrations");

describe("migrations", () => {
  let opened: OpenedDatabase | undefined;
  let database: TestDatabase | undefined;
  const dirs: string[] = [];
  afterEach(async () => {
    await opened?.close();
    await database?.drop();
    for (const d of dirs.splice(0)) await rm(d, { recursive: true, force: true });
  });

  async function open() {
    database = await createTestDatabase();
    const dataDir = await mkdtemp(path.join(tmpdir(), "parley-db-"));
    dirs.push(dataDir);
    opened = await openDatabase({ databaseUrl: database.url, dataDir, embedded: "memory" });
    return opened;
  }

  it("start an already-migrated database unchanged", async () => {
    const { db } = await open();
    await db.execute(sql`insert into server_settings (key, value, updated_ts) values ('k', 'v', 1)`);
    expect(await migrate(db)).toEqual({ applied: 0 });
    const rows = rowsOf<{ value: string }>(await db.execute(sql`select value from server_settings where key = 'k'`));
    expect(rows).toEqual([{ value: "v" }]);
  });

  it("leave the data as it was when a migration fails, and say so clearly", async () => {
    const { db } = await open();
    await db.execute(sql`insert into server_settings (key, value, updated_ts) values ('k', 'v', 1)`);
    // The real migrations plus a broken one whose first statement would succeed on its own.
    const folder = await mkdtemp(path.join(tmpdir(), "parley-migrations-"));
    dirs.push(folder);
    await cp(migrationsDir, folder, { recursive: true });
    const journalPath = path.join(folder, "meta", "_journal.json");
    const journal = JSON.parse(await readFile(journalPath, "utf8"));
    const last = journal.entries.at(-1);
    journal.entries.push({ ...last, idx: last.idx + 1, when: last.when + 1000, tag: "9999_broken" });
    await writeFile(journalPath, JSON.stringify(journal));
    await writeFile(
      path.join(folder, "9999_broken.sql"),
      `CREATE TABLE "half_done" ("id" integer);\n--> statement-breakpoint\nDELETE FROM "server_settings";\n--> statement-breakpoint\nTHIS IS NOT SQL;`,
    );
    await expect(migrate(db, folder)).rejects.toThrow(MigrationError);
    await expect(migrate(db, folder)).rejects.toThrow(/nothing was changed/);
    const rows = rowsOf<{ value: string }>(await db.execute(sql`select value from server_settings where key = 'k'`));
    expect(rows).toEqual([{ value: "v" }]);
    const tables = rowsOf(await db.execute(sql`select 1 from information_schema.tables where table_name = 'half_done'`));
    expect(tables).toEqual([]);
    // The good migrations still count as applied: nothing to do with the real folder.
    expect(await migrate(db)).toEqual({ applied: 0 });
  });
});

describe("literal values written into SQL text", () => {
  it("read back exactly what was written, whatever quotes and backslashes they hold", async () => {
    const database = await createTestDatabase();
    const dataDir = await mkdtemp(path.join(tmpdir(), "parley-db-"));
    const opened = await openDatabase({ databaseUrl: database.url, dataDir, embedded: "memory" });
    try {
      const tricky = [
        "plain",
        "it's",
        "''",
        "\\",
        "\\'; drop table server_settings; --",
        "E'\\x41'",
        "\\n\\t\\x41\\u0041\\101",
        "$$ dollar $$",
        "émoji 🎉 \u2028",
        "",
      ];
      for (const value of tricky) {
        const rows = rowsOf<{ v: string }>(await opened.db.execute(sql.raw(`select ${sqlLiteral(value)} as v`)));
        expect(rows[0]?.v).toBe(value);
      }
      expect(sqlLiteral(null)).toBe("null");
      expect(sqlLiteral(42)).toBe("42");
      expect(() => sqlLiteral(1.5)).toThrow();
      expect(() => sqlLiteral("a\u0000b")).toThrow();
      const tables = rowsOf(await opened.db.execute(sql`select 1 from information_schema.tables where table_name = 'server_settings'`));
      expect(tables).toHaveLength(1);
    } finally {
      await opened.close();
      await database.drop();
      await rm(dataDir, { recursive: true, force: true });
    }
  });
});

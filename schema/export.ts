// Moving a database between the embedded PGlite and PostgreSQL (either way): `parley admin export`
// writes every row of every Parley table, and the sequences' positions, to one gzipped text file;
// `parley admin import` loads it into an empty database of the same schema version.
//
// The rows travel as PostgreSQL's own JSON (`row_to_json`) and are turned back into rows by
// PostgreSQL (`json_populate_recordset`), never parsed in JavaScript: 64-bit integers keep every
// digit, bytea comes back from its hex text, timestamps and jsonb as they were. The file:
//
//   #parley-export {"version":1,"schema":<newest migration>,"server_name":...}
//   #table <name>
//   {"col":...}            one row per line (row_to_json never starts a line with '#')
//   #sequence {"name":...,"last_value":"...","is_called":true}
//   #end {"tables":N,"rows":N}
//
// The source must not change while it is read (the embedded database is locked to one process;
// for PostgreSQL stop the servers), and an import runs in one transaction: it lands whole or not
// at all.
import { createReadStream } from "node:fs";
import { open, rm } from "node:fs/promises";
import { once } from "node:events";
import { createInterface } from "node:readline";
import { pipeline } from "node:stream/promises";
import { PassThrough } from "node:stream";
import { createGunzip, createGzip } from "node:zlib";
import { sql } from "drizzle-orm";
import { type Database, rowsOf } from "./db.ts";

const FORMAT = "#parley-export ";
const VERSION = 1;
/** Rows read or written per statement: bounded memory whatever the table's size. */
const BATCH_ROWS = 500;

export interface ExportHeader {
  version: number;
  /** The newest migration applied (drizzle's created_at): an import needs the same. */
  schema: number;
  server_name: string;
}

export interface TransferCount {
  tables: number;
  rows: number;
}

/** A file that is not an export of this format, or one this database cannot take. */
export class ExportFileError extends Error {}

/** The newest migration applied to the database. */
async function schemaVersion(db: Database): Promise<number> {
  const rows = rowsOf<{ created_at: string | number | null }>(
    await db.execute(sql`select max(created_at) as created_at from drizzle.__drizzle_migrations`),
  );
  return Number(rows[0]?.created_at ?? 0);
}

/** Parley's tables: everything in the public schema (drizzle's own bookkeeping lives in `drizzle`). */
async function tables(db: Database): Promise<string[]> {
  const rows = rowsOf<{ name: string }>(
    await db.execute(sql`select tablename as name from pg_tables where schemaname = 'public' order by tablename`),
  );
  return rows.map((r) => r.name);
}

/** The columns an INSERT may give values for (not generated ones, which PostgreSQL computes). */
async function insertableColumns(db: Database, table: string): Promise<string[]> {
  const rows = rowsOf<{ name: string }>(
    await db.execute(sql`select attname as name from pg_attribute
      where attrelid = ${`public.${quoteIdentifier(table)}`}::regclass and attnum > 0 and not attisdropped and attgenerated = ''
      order by attnum`),
  );
  return rows.map((r) => r.name);
}

function quoteIdentifier(name: string): string {
  return `"${name.replaceAll('"', '""')}"`;
}

export async function exportDatabase(db: Database, serverName: string, file: string): Promise<TransferCount> {
  // Opened first, so an existing file (never overwritten) fails before any work.
  const handle = await open(file, "wx", 0o600);
  const gzip = createGzip();
  const done = pipeline(gzip, handle.createWriteStream());
  // Observed at once: a failing disk must not surface as an unhandled rejection, nor leave a write
  // waiting for a 'drain' that a destroyed stream never sends.
  const writeFailure = done.then(() => undefined, (e: unknown) => e);
  const write = async (line: string) => {
    if (gzip.write(line + "\n")) return;
    const failed = await Promise.race([once(gzip, "drain").then(() => undefined), writeFailure]);
    if (failed) throw failed;
  };
  const count: TransferCount = { tables: 0, rows: 0 };
  try {
    const header: ExportHeader = { version: VERSION, schema: await schemaVersion(db), server_name: serverName };
    await write(FORMAT + JSON.stringify(header));
    for (const table of await tables(db)) {
      count.tables++;
      await write(`#table ${table}`);
      // Keyset paging on the physical row address: no ORDER BY over the whole table, no OFFSET.
      let after = "(0,0)";
      for (;;) {
        const rows = rowsOf<{ c: string; j: string }>(
          await db.execute(sql`select ctid::text as c, row_to_json(t)::text as j from ${sql.identifier(table)} t
            where ctid > ${after}::tid order by ctid limit ${BATCH_ROWS}`),
        );
        for (const r of rows) await write(r.j);
        count.rows += rows.length;
        if (rows.length < BATCH_ROWS) break;
        after = rows[rows.length - 1]!.c;
      }
    }
    const sequences = rowsOf<{ name: string }>(
      await db.execute(sql`select sequencename as name from pg_sequences where schemaname = 'public' order by sequencename`),
    );
    for (const { name } of sequences) {
      const [state] = rowsOf<{ last_value: string | number; is_called: boolean }>(
        await db.execute(sql`select last_value::text as last_value, is_called from ${sql.identifier(name)}`),
      );
      await write(`#sequence ${JSON.stringify({ name, last_value: String(state!.last_value), is_called: state!.is_called })}`);
    }
    await write(`#end ${JSON.stringify(count)}`);
    gzip.end();
    const failed = await writeFailure;
    if (failed) throw failed;
    return count;
  } catch (err) {
    gzip.destroy();
    await writeFailure;
    // Half a file would only be refused by an import later (it has no end marker): gone now.
    await rm(file, { force: true }).catch(() => {});
    throw err;
  }
}

/**
 * Loads an export into `db`, which must hold no accounts, rooms or events yet (a database just
 * created: what start-up seeds is replaced by the export's rows). All in one transaction.
 */
export async function importDatabase(db: Database, serverName: string, file: string): Promise<TransferCount> {
  const schema = await schemaVersion(db);
  const known = new Set(await tables(db));
  for (const table of ["users", "events", "rooms"]) {
    if (!known.has(table)) continue;
    const [row] = rowsOf<{ n: string | number }>(await db.execute(sql`select count(*) as n from ${sql.identifier(table)}`));
    if (Number(row?.n ?? 0) > 0) throw new ExportFileError(`the database is not empty (its ${table} table has rows): import only into a new database`);
  }

  const input = new PassThrough();
  const reading = pipeline(createReadStream(file), createGunzip(), input);
  // Observed at once (the transaction may still be running when reading fails).
  const readFailure = reading.then(() => undefined, (e: unknown) => e as { code?: string });
  const lines = createInterface({ input, crlfDelay: Infinity });
  const count: TransferCount = { tables: 0, rows: 0 };
  try {
    await db.transaction(async (tx) => {
      let headerSeen = false;
      let ended = false;
      let table: string | undefined;
      let columns: string[] = [];
      let batch: string[] = [];
      const flush = async () => {
        if (!table || batch.length === 0) return;
        const list = sql.raw(columns.map(quoteIdentifier).join(", "));
        await tx.execute(sql`insert into ${sql.identifier(table)} (${list}) overriding system value
          select ${list} from json_populate_recordset(null::${sql.identifier(table)}, ${`[${batch.join(",")}]`}::json)`);
        count.rows += batch.length;
        batch = [];
      };
      for await (const line of lines) {
        if (!headerSeen) {
          if (!line.startsWith(FORMAT)) throw new ExportFileError("this is not a Parley export file");
          const header = JSON.parse(line.slice(FORMAT.length)) as ExportHeader;
          if (header.version !== VERSION) throw new ExportFileError(`export format ${header.version} is not known to this Parley`);
          if (header.schema !== schema) {
            throw new ExportFileError(
              "the export was made by another version of Parley (its schema differs from this one's): import it with the version that exported it",
            );
          }
          if (header.server_name !== serverName) {
            throw new ExportFileError(`the export is of server ${header.server_name}, but this configuration's server_name is ${serverName}`);
          }
          // What start-up seeded (the server's name row, ...) gives way to the export's copy.
          const all = [...known].map((t) => sql.identifier(t));
          if (all.length > 0) await tx.execute(sql`truncate ${sql.join(all, sql`, `)}`);
          headerSeen = true;
        } else if (line.startsWith("#table ")) {
          await flush();
          table = line.slice("#table ".length);
          if (!known.has(table)) throw new ExportFileError(`the export has a table ${table} that this database does not`);
          columns = await insertableColumns(tx as unknown as Database, table);
          count.tables++;
        } else if (line.startsWith("#sequence ")) {
          await flush();
          table = undefined;
          const s = JSON.parse(line.slice("#sequence ".length)) as { name: string; last_value: string; is_called: boolean };
          await tx.execute(sql`select setval(${`public.${quoteIdentifier(s.name)}`}::regclass, ${s.last_value}::bigint, ${s.is_called})`);
        } else if (line.startsWith("#end ")) {
          await flush();
          ended = true;
        } else if (line.startsWith("{")) {
          if (!table) throw new ExportFileError("the export file is damaged (a row outside any table)");
          batch.push(line);
          if (batch.length >= BATCH_ROWS) await flush();
        } else if (line !== "") {
          throw new ExportFileError("the export file is damaged (an unknown line)");
        }
      }
      if (!headerSeen) throw new ExportFileError("the export file is empty");
      // A file cut short (a full disk, a copy interrupted) must not become a half database.
      if (!ended) throw new ExportFileError("the export file is incomplete (it has no end marker)");
    });
    const failed = await readFailure;
    if (failed) throw failed;
    return count;
  } catch (err) {
    input.destroy();
    const failed = await readFailure;
    if (failed?.code === "Z_DATA_ERROR" || failed?.code === "Z_BUF_ERROR") {
      throw new ExportFileError("this is not a Parley export file, or it is cut short (its gzip stream is damaged)");
    }
    if (failed?.code === "ENOENT" || failed?.code === "EACCES" || failed?.code === "EISDIR") throw failed;
    throw err;
  }
}

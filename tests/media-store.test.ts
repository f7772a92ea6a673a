// The disk store's deletion moves bytes aside while it asks whether they are still wanted; a read
// in that window must not answer "absent" for bytes that come back.
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { Readable } from "node:stream";
import { afterAll, describe, expect, it } from "vitest";
import { FileMediaStore } from "../server/media/store.ts";

const dirs: string[] = [];
afterAll(async () => {
  for (const dir of dirs) await rm(dir, { recursive: true, force: true });
});

async function newStore(): Promise<FileMediaStore> {
  const dir = await mkdtemp(path.join(tmpdir(), "parley-store-"));
  dirs.push(dir);
  return new FileMediaStore(dir);
}

async function readAll(stream: Readable): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString();
}

describe("FileMediaStore", () => {
  it("a read while a deletion asks stillWanted waits for the answer and finds the bytes kept", async () => {
    const store = await newStore();
    const { sha256 } = await store.put(Readable.from([Buffer.from("kept bytes")]), 1000);
    let during: Awaited<ReturnType<FileMediaStore["get"]>> | "unset" = "unset";
    const outcome = await store.delete(sha256, {
      stillWanted: async () => {
        // The read starts while the bytes are aside; it resolves only after the answer.
        const read = store.get(sha256);
        await new Promise((r) => setTimeout(r, 20));
        void read.then((got) => (during = got));
        return true;
      },
    });
    expect(outcome).toBe("kept");
    await new Promise((r) => setTimeout(r, 20));
    expect(during).not.toBe("unset");
    expect(during).toBeDefined();
    expect(await readAll((during as unknown as { stream: Readable }).stream)).toBe("kept bytes");
  });

  it("a read while a deletion goes through answers absent, and an open file stays readable", async () => {
    const store = await newStore();
    const { sha256 } = await store.put(Readable.from([Buffer.from("going")]), 1000);
    const opened = await store.get(sha256);
    expect(opened?.size).toBe(5);
    let during: unknown = "unset";
    const outcome = await store.delete(sha256, {
      stillWanted: async () => {
        void store.get(sha256).then((got) => (during = got));
        return false;
      },
    });
    expect(outcome).toBe("deleted");
    await new Promise((r) => setTimeout(r, 20));
    expect(during).toBeUndefined();
    expect(await store.get(sha256)).toBeUndefined();
    expect(await readAll(opened!.stream)).toBe("going");
  });
});

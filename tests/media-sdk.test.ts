// The content repository through matrix-js-sdk as a client uses it: `uploadContent`, URLs from
// `mxcUrlToHttp` (authenticated media), and an encrypted attachment (the spec's EncryptedFile:
// AES-256-CTR, SHA-256 of the ciphertext) that comes back byte for byte.
// https://spec.matrix.org/latest/client-server-api/#sending-encrypted-attachments
import { createCipheriv, createDecipheriv, createHash, randomBytes } from "node:crypto";
import sharp from "sharp";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { registerUser, type TestUser } from "./accounts-helpers.ts";
import { startTestServer, type TestServer } from "./harness.ts";
import { sdk } from "./matrix-sdk.ts";

type Client = ReturnType<typeof sdk.createClient>;

describe("media through matrix-js-sdk", () => {
  let hs: TestServer;
  let alice: TestUser;
  let client: Client;
  beforeAll(async () => {
    hs = await startTestServer();
    alice = await registerUser(hs.url, "alice");
    client = sdk.createClient({ baseUrl: hs.url, accessToken: alice.accessToken, userId: alice.userId, deviceId: alice.deviceId });
  });
  afterAll(() => hs.destroy());

  const get = async (url: string) => {
    const res = await fetch(url, { headers: { Authorization: `Bearer ${alice.accessToken}` } });
    return { status: res.status, headers: res.headers, bytes: Buffer.from(await res.arrayBuffer()) };
  };

  it("uploads an image with uploadContent and serves it and its thumbnail at the SDK's URLs", async () => {
    const image = await sharp({ create: { width: 200, height: 100, channels: 4, background: { r: 0, g: 90, b: 200, alpha: 1 } } }).png().toBuffer();
    const { content_uri: uri } = await client.uploadContent(image, { name: "blue.png", type: "image/png" });
    expect(uri).toMatch(/^mxc:\/\/test\.local\//);
    const full = await get(client.mxcUrlToHttp(uri, undefined, undefined, undefined, false, true, true) as string);
    expect(full.status).toBe(200);
    expect(full.bytes.equals(image)).toBe(true);
    const thumbUrl = client.mxcUrlToHttp(uri, 50, 50, "crop", false, true, true) as string;
    expect(thumbUrl).toContain("/_matrix/client/v1/media/thumbnail/");
    const thumb = await get(thumbUrl);
    expect(thumb.status).toBe(200);
    const meta = await sharp(thumb.bytes).metadata();
    expect([meta.width, meta.height]).toEqual([50, 50]);
  });

  it("round-trips an encrypted attachment byte for byte", async () => {
    const plaintext = randomBytes(300_000);
    const key = randomBytes(32);
    // The spec: a random 64-bit IV in the high half, a zero counter in the low half.
    const iv = Buffer.concat([randomBytes(8), Buffer.alloc(8)]);
    const cipher = createCipheriv("aes-256-ctr", key, iv);
    const ciphertext = Buffer.concat([cipher.update(plaintext), cipher.final()]);
    const file = {
      v: "v2",
      key: { kty: "oct", key_ops: ["encrypt", "decrypt"], alg: "A256CTR", k: key.toString("base64url"), ext: true },
      iv: iv.toString("base64").replace(/=+$/, ""),
      hashes: { sha256: createHash("sha256").update(ciphertext).digest("base64").replace(/=+$/, "") },
    };
    const { content_uri: uri } = await client.uploadContent(ciphertext, { type: "application/octet-stream", includeFilename: false });
    const got = await get(client.mxcUrlToHttp(uri, undefined, undefined, undefined, false, true, true) as string);
    expect(got.status).toBe(200);
    expect(got.headers.get("content-disposition")).toBe("attachment");
    expect(createHash("sha256").update(got.bytes).digest("base64").replace(/=+$/, "")).toBe(file.hashes.sha256);
    const decipher = createDecipheriv("aes-256-ctr", Buffer.from(file.key.k, "base64url"), Buffer.from(file.iv, "base64"));
    const decrypted = Buffer.concat([decipher.update(got.bytes), decipher.final()]);
    expect(decrypted.equals(plaintext)).toBe(true);
  });
});

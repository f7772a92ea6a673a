// Encrypted attachments (client/crypto/attachments.ts), per the spec's "Sending encrypted
// attachments": known vectors from matrix-org/matrix-encrypt-attachment (what Element uses),
// WebCrypto's AES-CTR as the independent decrypter, tampering, and a round trip through a
// Parley media repository.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  AttachmentDecryptError,
  decryptAttachment,
  downloadEncryptedAttachment,
  type EncryptedFile,
  encryptAttachment,
  uploadEncryptedAttachment,
} from "../../client/crypto/attachments.ts";
import { fromBase64, randomBytes, sha256, toBase64 } from "../../client/crypto/primitives.ts";
import { MatrixHttp } from "../../client/http.ts";
import { registerUser } from "../accounts-helpers.ts";
import { startTestServer, type TestServer } from "../harness.ts";

// matrix-encrypt-attachment's v2 decryption vectors (test/decrypt.Spec.js): ciphertext (base64),
// the file object (without url; its JWK has no "ext"), plaintext (base64).
const vectors: Array<[string, Omit<EncryptedFile, "url" | "key"> & { key: Record<string, unknown> }, string]> = [
  [
    "",
    {
      iv: "AAAAAAAAAAAAAAAAAAAAAA",
      key: { kty: "oct", key_ops: ["encrypt", "decrypt"], k: "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", alg: "A256CTR" },
      v: "v2",
      hashes: { sha256: "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU" },
    },
    "",
  ],
  [
    "5xJZTt5cQicm+9f4",
    {
      iv: "//////////8AAAAAAAAAAA",
      key: { kty: "oct", key_ops: ["encrypt", "decrypt"], k: "__________________________________________8", alg: "A256CTR" },
      v: "v2",
      hashes: { sha256: "YzF08lARDdOCzJpzuSwsjTNlQc4pHxpdHcXiD/wpK6k" },
    },
    "SGVsbG8sIFdvcmxk",
  ],
  [
    "zhtFStAeFx0s+9L/sSQO+WQMtldqYEHqTxMduJrCIpnkyer09kxJJuA4K+adQE4w+7jZe/vR9kIcqj9rOhDR8Q",
    {
      iv: "//////////8AAAAAAAAAAA",
      key: { kty: "oct", key_ops: ["encrypt", "decrypt"], k: "__________________________________________8", alg: "A256CTR" },
      v: "v2",
      hashes: { sha256: "IOq7/dHHB+mfHfxlRY5XMeCWEwTPmlf4cJcgrkf6fVU" },
    },
    "YWxwaGFudW1lcmljYWxseWFscGhhbnVtZXJpY2FsbHlhbHBoYW51bWVyaWNhbGx5YWxwaGFudW1lcmljYWxseQ",
  ],
];

function withUrl(file: Omit<EncryptedFile, "url">): EncryptedFile {
  return { ...file, url: "mxc://example.org/abc" };
}

function decryptError(data: Uint8Array, file: unknown): unknown {
  try {
    decryptAttachment(data, file as EncryptedFile);
  } catch (err) {
    return err;
  }
  return undefined;
}

describe("encrypted attachments", () => {
  it("decrypts matrix-encrypt-attachment's v2 vectors", () => {
    for (const [ciphertext, file, plaintext] of vectors) {
      const out = decryptAttachment(fromBase64(ciphertext), { ...file, url: "mxc://x/y" } as unknown as EncryptedFile);
      expect(toBase64(out)).toBe(plaintext);
    }
  });

  it("round-trips, and writes the spec's EncryptedFile (v2, A256CTR JWK, IV with a zero counter half, SHA-256 of the ciphertext)", () => {
    const plaintext = randomBytes(100_000);
    const { data, file } = encryptAttachment(plaintext);
    expect(Buffer.from(data).equals(Buffer.from(plaintext))).toBe(false);
    expect(file.v).toBe("v2");
    expect(file.key).toEqual({ kty: "oct", key_ops: ["encrypt", "decrypt"], alg: "A256CTR", k: expect.stringMatching(/^[A-Za-z0-9_-]{43}$/), ext: true });
    expect(file.iv).toMatch(/^[A-Za-z0-9+/]{22}$/);
    expect([...fromBase64(file.iv).subarray(8)]).toEqual([0, 0, 0, 0, 0, 0, 0, 0]);
    expect(file.hashes.sha256).toBe(toBase64(sha256(data)));
    expect(Buffer.from(decryptAttachment(data, withUrl(file))).equals(Buffer.from(plaintext))).toBe(true);
    // A fresh key and IV every time.
    const again = encryptAttachment(plaintext);
    expect(again.file.key.k).not.toBe(file.key.k);
    expect(again.file.iv).not.toBe(file.iv);
  });

  it("is decrypted by WebCrypto's AES-CTR with a 64-bit counter, as Element decrypts", async () => {
    const plaintext = randomBytes(4096 + 7);
    const { data, file } = encryptAttachment(plaintext);
    const key = await crypto.subtle.importKey("jwk", file.key, { name: "AES-CTR" }, false, ["decrypt"]);
    const out = await crypto.subtle.decrypt({ name: "AES-CTR", counter: fromBase64(file.iv), length: 64 }, key, data);
    expect(Buffer.from(out).equals(Buffer.from(plaintext))).toBe(true);
  });

  it("refuses a changed ciphertext, a changed hash, and file objects it cannot use", () => {
    const { data, file } = encryptAttachment(new TextEncoder().encode("a private photo"));
    const tampered = data.slice();
    tampered[3]! ^= 0x01;
    expect(decryptError(tampered, withUrl(file))).toBeInstanceOf(AttachmentDecryptError);
    expect(decryptError(data.subarray(0, data.length - 1), withUrl(file))).toBeInstanceOf(AttachmentDecryptError);
    const otherHash = { ...withUrl(file), hashes: { sha256: toBase64(sha256(tampered)) } };
    expect(decryptError(data, otherHash)).toBeInstanceOf(AttachmentDecryptError);
    for (const bad of [
      { ...file, v: "v1" },
      { ...file, v: undefined },
      { ...file, hashes: {} },
      { ...file, iv: "AAAA" },
      { ...file, iv: "not base64!" },
      { ...file, key: { ...file.key, alg: "A128CTR" } },
      { ...file, key: { ...file.key, k: "AAAA" } },
      { ...file, key: { ...file.key, key_ops: ["encrypt"] } },
      { ...file, key: undefined },
      null,
    ]) {
      expect(decryptError(data, bad)).toBeInstanceOf(AttachmentDecryptError);
    }
  });
});

describe("encrypted attachments through a Parley media repository", () => {
  let hs: TestServer;
  let http: MatrixHttp;

  beforeAll(async () => {
    hs = await startTestServer();
    const alice = await registerUser(hs.url, "alice");
    http = new MatrixHttp({ baseUrl: hs.url, accessToken: alice.accessToken });
  });

  afterAll(async () => {
    await hs?.destroy();
  });

  it("uploads only ciphertext and gets the file back byte for byte", async () => {
    const plaintext = randomBytes(300_000);
    const file = await uploadEncryptedAttachment(http, plaintext);
    expect(file.url).toMatch(/^mxc:\/\/test\.local\//);
    const stored = await http.download(file.url);
    expect(stored.length).toBe(plaintext.length);
    expect(Buffer.from(stored).equals(Buffer.from(plaintext))).toBe(false);
    expect(toBase64(sha256(stored))).toBe(file.hashes.sha256);
    const back = await downloadEncryptedAttachment(http, file);
    expect(Buffer.from(back).equals(Buffer.from(plaintext))).toBe(true);
  });

  it("refuses bytes the server swapped for other ones", async () => {
    const file = await uploadEncryptedAttachment(http, new TextEncoder().encode("the real document"));
    const forged = encryptAttachment(new TextEncoder().encode("a forged document"));
    const forgedUrl = await http.upload(forged.data, "application/octet-stream");
    await expect(downloadEncryptedAttachment(http, { ...file, url: forgedUrl })).rejects.toBeInstanceOf(AttachmentDecryptError);
  });
});

import { describe, expect, it } from "vitest";
import * as noble from "@noble/ed25519";
import { decodeBase64, decodeBase64Url, encodeUnpaddedBase64, encodeUnpaddedBase64Url, Base64Error } from "./base64.ts";
import { signJson, signingKeyFromSeed, verifyEd25519, verifyJsonSignature } from "./signing.ts";

// https://spec.matrix.org/latest/appendices/#cryptographic-test-vectors
// SIGNING_KEY_SEED = decode_base64("YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1"), SERVER_NAME = "domain",
// KEY_ID = "ed25519:1"
const SEED = decodeBase64("YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1");
const KEY = signingKeyFromSeed(SEED, "ed25519:1");

describe("unpadded base64 (appendix examples)", () => {
  const examples: Array<[string, string]> = [
    ["", ""],
    ["f", "Zg"],
    ["fo", "Zm8"],
    ["foo", "Zm9v"],
    ["foob", "Zm9vYg"],
    ["fooba", "Zm9vYmE"],
    ["foobar", "Zm9vYmFy"],
  ];
  it.each(examples)("UNPADDED_BASE64(%j) = %j", (input, encoded) => {
    expect(encodeUnpaddedBase64(Buffer.from(input))).toBe(encoded);
    expect(Buffer.from(decodeBase64(encoded)).toString()).toBe(input);
  });

  it("accepts padded input too", () => {
    expect(Buffer.from(decodeBase64("Zm9vYg==")).toString()).toBe("foob");
    expect(Buffer.from(decodeBase64Url("Zm9vYmE=")).toString()).toBe("fooba");
  });

  it("refuses characters outside the alphabet and impossible lengths", () => {
    expect(() => decodeBase64("Zm9v!")).toThrow(Base64Error);
    expect(() => decodeBase64("Zm9v-_")).toThrow(Base64Error);
    expect(() => decodeBase64Url("Zm9v+/")).toThrow(Base64Error);
    expect(() => decodeBase64("Zm9vY")).toThrow(Base64Error);
    expect(() => decodeBase64("Zg=")).toThrow(Base64Error);
  });

  it("uses - and _ in the URL-safe alphabet", () => {
    const bytes = new Uint8Array([0xfb, 0xff, 0xbf]);
    expect(encodeUnpaddedBase64(bytes)).toBe("+/+/");
    expect(encodeUnpaddedBase64Url(bytes)).toBe("-_-_");
    expect(decodeBase64Url("-_-_")).toEqual(bytes);
  });
});

describe("signingKeyFromSeed", () => {
  it("derives the same public key as RFC 8032 (checked with @noble/ed25519)", async () => {
    expect(KEY.publicKey).toEqual(await noble.getPublicKeyAsync(SEED));
    expect(KEY.keyId).toBe("ed25519:1");
  });
});

describe("signJson: the appendix JSON signing vectors", () => {
  it("signs {}", () => {
    // "The JSON signing algorithm should emit the following signed data:"
    expect(signJson({}, "domain", KEY)).toEqual({
      signatures: {
        domain: {
          "ed25519:1": "K8280/U9SSy9IVtjBuVeLr+HpOB4BQFWbg+UZaADMtTdGYI7Geitb76LTrr5QV/7Xg4ahLwYGYZzuHGZKM5ZAQ",
        },
      },
    });
  });

  it('signs {"one": 1, "two": "Two"}', () => {
    expect(signJson({ one: 1, two: "Two" }, "domain", KEY)).toEqual({
      one: 1,
      signatures: {
        domain: {
          "ed25519:1": "KqmLSbO39/Bzb0QIYE82zqLwsA+PDzYIpIRA2sRQ4sL53+sN6/fpNSoqE7BP7vBZhG6kYdD13EIMJpvhJI+6Bw",
        },
      },
      two: "Two",
    });
  });

  it("ignores unsigned and keeps it, and keeps other signatures", () => {
    const signed = signJson(
      { one: 1, two: "Two", unsigned: { age_ts: 5 }, signatures: { other: { "ed25519:x": "abc" } } },
      "domain",
      KEY,
    );
    expect(signed.unsigned).toEqual({ age_ts: 5 });
    expect(signed.signatures).toEqual({
      other: { "ed25519:x": "abc" },
      domain: {
        "ed25519:1": "KqmLSbO39/Bzb0QIYE82zqLwsA+PDzYIpIRA2sRQ4sL53+sN6/fpNSoqE7BP7vBZhG6kYdD13EIMJpvhJI+6Bw",
      },
    });
  });

  it("does not modify its input", () => {
    const input = { a: 1, signatures: { domain: { "ed25519:0": "x" } } };
    signJson(input, "domain", KEY);
    expect(input).toEqual({ a: 1, signatures: { domain: { "ed25519:0": "x" } } });
  });
});

describe("verifyJsonSignature", () => {
  const signed = signJson({ one: 1, two: "Two" }, "domain", KEY);

  it("accepts the appendix signature", () => {
    expect(verifyJsonSignature(signed, "domain", "ed25519:1", KEY.publicKey)).toBe(true);
  });
  it("accepts it whatever unsigned holds", () => {
    expect(verifyJsonSignature({ ...signed, unsigned: { age: 3 } }, "domain", "ed25519:1", KEY.publicKey)).toBe(true);
  });
  it("refuses a changed object", () => {
    expect(verifyJsonSignature({ ...signed, two: "Three" }, "domain", "ed25519:1", KEY.publicKey)).toBe(false);
  });
  it("refuses another entity, another key id, another public key", () => {
    expect(verifyJsonSignature(signed, "other", "ed25519:1", KEY.publicKey)).toBe(false);
    expect(verifyJsonSignature(signed, "domain", "ed25519:2", KEY.publicKey)).toBe(false);
    const other = signingKeyFromSeed(new Uint8Array(32), "ed25519:1");
    expect(verifyJsonSignature(signed, "domain", "ed25519:1", other.publicKey)).toBe(false);
  });
  it("refuses a signature that is not base64", () => {
    const bad = { ...signed, signatures: { domain: { "ed25519:1": "!!!" } } };
    expect(verifyJsonSignature(bad, "domain", "ed25519:1", KEY.publicKey)).toBe(false);
  });
});

describe("verifyEd25519", () => {
  const message = new TextEncoder().encode("hello");

  it("agrees with @noble/ed25519 on a valid and a tampered signature", async () => {
    const signature = await noble.signAsync(message, SEED);
    expect(verifyEd25519(KEY.publicKey, message, signature)).toBe(true);
    const tampered = new Uint8Array(signature);
    tampered[0] = (tampered[0] ?? 0) ^ 1;
    expect(verifyEd25519(KEY.publicKey, message, tampered)).toBe(false);
    expect(await noble.verifyAsync(tampered, message, KEY.publicKey)).toBe(false);
  });

  it("returns false for wrong-length keys and signatures instead of throwing", async () => {
    const signature = await noble.signAsync(message, SEED);
    expect(verifyEd25519(KEY.publicKey.slice(0, 31), message, signature)).toBe(false);
    expect(verifyEd25519(KEY.publicKey, message, signature.slice(0, 63))).toBe(false);
  });
});

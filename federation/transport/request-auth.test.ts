// https://spec.matrix.org/latest/server-server-api/#request-authentication
import * as noble from "@noble/ed25519";
import { describe, expect, it } from "vitest";
import { decodeBase64 } from "../protocol/base64.ts";
import { signingKeyFromSeed } from "../protocol/signing.ts";
import {
  XMatrixParseError,
  parseXMatrixAuthorization,
  verifyXMatrixRequest,
  xMatrixAuthorization,
} from "./request-auth.ts";

// The appendix's example signing key (https://spec.matrix.org/latest/appendices/#signing-details).
const key = signingKeyFromSeed(decodeBase64("YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1"), "ed25519:1");
const other = signingKeyFromSeed(new Uint8Array(32).fill(7), "ed25519:1");

const parts = {
  method: "PUT",
  uri: "/_matrix/federation/v1/send/txn1?a=b%20c",
  origin: "origin.hs.example.com",
  destination: "destination.hs.example.com",
  content: { pdus: [], edus: [{ edu_type: "m.typing", content: { typing: true } }] },
};

describe("X-Matrix request authentication", () => {
  it("writes the header the spec shows: lower-case names, quoted values, no spaces around commas", () => {
    const header = xMatrixAuthorization(parts, key);
    expect(header).toMatch(
      /^X-Matrix origin="origin\.hs\.example\.com",destination="destination\.hs\.example\.com",key="ed25519:1",sig="[A-Za-z0-9+/]{86}"$/,
    );
  });

  it("signs the canonical JSON of method, uri, origin, destination and content (checked with another Ed25519 implementation)", async () => {
    const { sig } = parseXMatrixAuthorization(xMatrixAuthorization(parts, key));
    const canonical =
      '{"content":{"edus":[{"content":{"typing":true},"edu_type":"m.typing"}],"pdus":[]},' +
      '"destination":"destination.hs.example.com","method":"PUT","origin":"origin.hs.example.com",' +
      '"uri":"/_matrix/federation/v1/send/txn1?a=b%20c"}';
    const ok = await noble.verifyAsync(decodeBase64(sig), new TextEncoder().encode(canonical), key.publicKey);
    expect(ok).toBe(true);
  });

  it("leaves content out of the signed object for a request without a body", async () => {
    const get = { method: "GET", uri: "/_matrix/federation/v1/version", origin: "a.example", destination: "b.example" };
    const { sig } = parseXMatrixAuthorization(xMatrixAuthorization(get, key));
    const canonical = '{"destination":"b.example","method":"GET","origin":"a.example","uri":"/_matrix/federation/v1/version"}';
    expect(await noble.verifyAsync(decodeBase64(sig), new TextEncoder().encode(canonical), key.publicKey)).toBe(true);
  });

  it("verifies a request it signed, and refuses any change to method, uri, body, destination or key", () => {
    const creds = parseXMatrixAuthorization(xMatrixAuthorization(parts, key));
    const { origin: _o, ...received } = parts;
    expect(verifyXMatrixRequest(creds, received, key.publicKey)).toBe(true);
    expect(verifyXMatrixRequest(creds, { ...received, method: "POST" }, key.publicKey)).toBe(false);
    expect(verifyXMatrixRequest(creds, { ...received, uri: "/_matrix/federation/v1/send/txn2" }, key.publicKey)).toBe(false);
    expect(verifyXMatrixRequest(creds, { ...received, content: { pdus: [], edus: [] } }, key.publicKey)).toBe(false);
    expect(verifyXMatrixRequest(creds, { ...received, content: undefined }, key.publicKey)).toBe(false);
    expect(verifyXMatrixRequest(creds, { ...received, destination: "elsewhere.example" }, key.publicKey)).toBe(false);
    expect(verifyXMatrixRequest(creds, received, other.publicKey)).toBe(false);
    expect(verifyXMatrixRequest({ ...creds, origin: "evil.example" }, received, key.publicKey)).toBe(false);
    expect(verifyXMatrixRequest({ ...creds, sig: "not base64!" }, received, key.publicKey)).toBe(false);
  });

  it("refuses a header naming another destination even when the signature is over ours", () => {
    const creds = parseXMatrixAuthorization(xMatrixAuthorization(parts, key));
    const { origin: _o, ...received } = parts;
    expect(verifyXMatrixRequest({ ...creds, destination: "other.example" }, received, key.publicKey)).toBe(false);
  });

  it("accepts a header without destination from an older server when it signed our name", () => {
    const { destination: _d, ...creds } = parseXMatrixAuthorization(xMatrixAuthorization(parts, key));
    const { origin: _o, ...received } = parts;
    expect(verifyXMatrixRequest(creds, received, key.publicKey)).toBe(true);
  });

  it("parses names case-insensitively in any order, spaces and tabs around commas, bare tokens with colons, escapes, unknown parameters", () => {
    const parsed = parseXMatrixAuthorization(
      'X-Matrix  KEY=ed25519:abc ,\tSig="a\\"b\\\\c" , Origin=matrix.org:8448,extra="x",destination="d.example"',
    );
    expect(parsed).toEqual({ origin: "matrix.org:8448", destination: "d.example", key: "ed25519:abc", sig: 'a"b\\c' });
    expect(parseXMatrixAuthorization('x-matrix origin="o",key="k",sig="s"')).toEqual({ origin: "o", key: "k", sig: "s" });
  });

  it("refuses other schemes, broken syntax, repeated and missing parameters", () => {
    for (const bad of [
      'Bearer origin="o",key="k",sig="s"',
      "X-Matrix",
      'X-Matrixorigin="o",key="k",sig="s"',
      'X-Matrix origin="o",key="k"',
      'X-Matrix origin="o",key="k",sig="s',
      'X-Matrix origin="o" key="k",sig="s"',
      'X-Matrix origin="o",origin="p",key="k",sig="s"',
      'X-Matrix origin=,key="k",sig="s"',
      'X-Matrix origin="o",key="k",sig="s",',
      'X-Matrix =x,origin="o",key="k",sig="s"',
    ]) {
      expect(() => parseXMatrixAuthorization(bad), bad).toThrow(XMatrixParseError);
    }
  });
});

// Which key of an m.room.third_party_invite signed a `signed` block, and its key_validity_url.
// https://spec.matrix.org/latest/client-server-api/#mroomthird_party_invite
import { describe, expect, it } from "vitest";
import { decodeBase64, encodeUnpaddedBase64, encodeUnpaddedBase64Url } from "./base64.ts";
import { signJson, signingKeyFromSeed } from "./signing.ts";
import { keySigningThirdPartyInvite, thirdPartyInviteKeys } from "./third-party-invite.ts";

// The appendix's test key ("Signing JSON"), and a second one.
const KEY = signingKeyFromSeed(decodeBase64("YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1"), "ed25519:1");
const OTHER = signingKeyFromSeed(new Uint8Array(32).fill(7), "ed25519:0");
const URL_1 = "https://id.example.org/_matrix/identity/v2/pubkey/isvalid";

describe("third-party invite keys", () => {
  it("lists public_keys with their own validity URLs, then the older public_key", () => {
    expect(
      thirdPartyInviteKeys({
        public_key: "legacy",
        key_validity_url: URL_1,
        public_keys: [{ public_key: "a", key_validity_url: "https://a" }, { public_key: "b" }, "junk", { key_validity_url: "x" }],
      }),
    ).toEqual([{ publicKey: "a", keyValidityUrl: "https://a" }, { publicKey: "b" }, { publicKey: "legacy", keyValidityUrl: URL_1 }]);
    // The same key in both places is listed once, with public_keys' URL.
    expect(thirdPartyInviteKeys({ public_key: "a", key_validity_url: URL_1, public_keys: [{ public_key: "a" }] })).toEqual([{ publicKey: "a" }]);
  });

  it("finds the key that signed, whatever entity and ed25519 key ID the signature is under", () => {
    const signed = signJson({ mxid: "@bob:example.org", token: "abc" }, "id.example.org", { ...OTHER, keyId: "ed25519:anything" });
    const content = {
      public_key: encodeUnpaddedBase64(KEY.publicKey),
      key_validity_url: URL_1,
      // URL-safe alphabet is accepted too.
      public_keys: [{ public_key: encodeUnpaddedBase64Url(OTHER.publicKey), key_validity_url: "https://other" }],
    };
    expect(keySigningThirdPartyInvite(content, signed)).toEqual({ publicKey: encodeUnpaddedBase64Url(OTHER.publicKey), keyValidityUrl: "https://other" });
    const byLegacy = signJson({ mxid: "@bob:example.org", token: "abc" }, "id.example.org", KEY);
    expect(keySigningThirdPartyInvite(content, byLegacy)?.keyValidityUrl).toBe(URL_1);
  });

  it("finds none when the signature is by another key, over other content, or not ed25519", () => {
    const content = { public_key: encodeUnpaddedBase64(KEY.publicKey), key_validity_url: URL_1 };
    expect(keySigningThirdPartyInvite(content, signJson({ mxid: "@bob:x", token: "t" }, "id", OTHER))).toBeUndefined();
    const tampered = { ...signJson({ mxid: "@bob:x", token: "t" }, "id", KEY), mxid: "@eve:x" };
    expect(keySigningThirdPartyInvite(content, tampered)).toBeUndefined();
    const signature = signJson({ mxid: "@bob:x", token: "t" }, "id", KEY).signatures.id!["ed25519:1"]!;
    expect(keySigningThirdPartyInvite(content, { mxid: "@bob:x", token: "t", signatures: { id: { "curve25519:1": signature } } })).toBeUndefined();
    expect(keySigningThirdPartyInvite(content, { mxid: "@bob:x", token: "t" })).toBeUndefined();
  });
});

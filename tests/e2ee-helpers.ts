// Helpers for E2EE tests: Ed25519 identities for devices and cross-signing keys, signed the way
// clients sign them (appendix "Signing JSON"), and short calls to the key endpoints.
import { randomBytes } from "node:crypto";
import { encodeUnpaddedBase64 } from "../federation/protocol/base64.ts";
import { type SigningKey, signJson, signingKeyFromSeed } from "../federation/protocol/signing.ts";
import type { TestUser } from "./accounts-helpers.ts";
import { request } from "./harness.ts";

export type Json = Record<string, any>;

/** An Ed25519 key whose key ID is `ed25519:<name>`; `name` defaults to the public key itself. */
export function ed25519Key(name?: string): SigningKey & { publicKeyBase64: string } {
  const seed = randomBytes(32);
  const publicKeyBase64 = encodeUnpaddedBase64(signingKeyFromSeed(seed, "ed25519:x").publicKey);
  return { ...signingKeyFromSeed(seed, `ed25519:${name ?? publicKeyBase64}`), publicKeyBase64 };
}

export function sign<T extends object>(obj: T, userId: string, key: SigningKey): T & { signatures: Json } {
  return signJson(obj, userId, key);
}

export interface DeviceIdentity {
  key: ReturnType<typeof ed25519Key>;
  deviceKeys: Json;
}

/** Device keys for `user`'s device, signed by the device's own Ed25519 key. */
export function deviceIdentity(user: TestUser): DeviceIdentity {
  const key = ed25519Key(user.deviceId);
  const deviceKeys = sign(
    {
      user_id: user.userId,
      device_id: user.deviceId,
      algorithms: ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
      keys: {
        [`curve25519:${user.deviceId}`]: encodeUnpaddedBase64(randomBytes(32)),
        [`ed25519:${user.deviceId}`]: key.publicKeyBase64,
      },
    },
    user.userId,
    key,
  );
  return { key, deviceKeys };
}

/** `count` signed_curve25519 one-time keys signed by the device, with IDs `<prefix>0`, `<prefix>1`... */
export function oneTimeKeys(user: TestUser, device: DeviceIdentity, count: number, prefix = "AAAA"): Json {
  const keys: Json = {};
  for (let i = 0; i < count; i++) {
    keys[`signed_curve25519:${prefix}${i}`] = sign({ key: encodeUnpaddedBase64(randomBytes(32)) }, user.userId, device.key);
  }
  return keys;
}

export function fallbackKey(user: TestUser, device: DeviceIdentity, id = "FB1"): Json {
  return {
    [`signed_curve25519:${id}`]: sign({ key: encodeUnpaddedBase64(randomBytes(32)), fallback: true }, user.userId, device.key),
  };
}

export interface CrossSigningIdentity {
  master: ReturnType<typeof ed25519Key>;
  selfSigning: ReturnType<typeof ed25519Key>;
  userSigning: ReturnType<typeof ed25519Key>;
  body: { master_key: Json; self_signing_key: Json; user_signing_key: Json };
}

/** A full set of cross-signing keys for `userId`, the other two signed by the master key. */
export function crossSigningIdentity(userId: string): CrossSigningIdentity {
  const master = ed25519Key();
  const selfSigning = ed25519Key();
  const userSigning = ed25519Key();
  const keyObject = (usage: string, k: ReturnType<typeof ed25519Key>) => ({
    user_id: userId,
    usage: [usage],
    keys: { [`ed25519:${k.publicKeyBase64}`]: k.publicKeyBase64 },
  });
  return {
    master,
    selfSigning,
    userSigning,
    body: {
      master_key: keyObject("master", master),
      self_signing_key: sign(keyObject("self_signing", selfSigning), userId, master),
      user_signing_key: sign(keyObject("user_signing", userSigning), userId, master),
    },
  };
}

export const post = (base: string, user: TestUser, path: string, body: unknown) =>
  request(base, "POST", `/_matrix/client/v3${path}`, { token: user.accessToken, body });

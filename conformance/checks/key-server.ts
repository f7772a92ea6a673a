// Key server: what a server publishes about its own signing keys, and what it answers as a notary.
// https://spec.matrix.org/latest/server-server-api/#retrieving-server-keys
import { Base64Error, decodeBase64 } from "../../federation/protocol/base64.ts";
import { verifyJsonSignature } from "../../federation/protocol/signing.ts";
import { type Check, type CheckContext, type Target, expect, expectStatus, fail, show, skip } from "../check.ts";
import { httpCall } from "../client.ts";

const group = "key-server";
const enc = encodeURIComponent;

async function ownKeys(target: Target): Promise<Record<string, any>> {
  const res = await httpCall(`${target.url}/_matrix/key/v2/server`, "GET");
  expectStatus(res, 200, "GET /_matrix/key/v2/server");
  expect(typeof res.json === "object" && res.json !== null && !Array.isArray(res.json), `the key document is not a JSON object: ${show(res.text)}`);
  return res.json;
}

/** The 32-byte public key in an entry `{key: unpadded base64}`, or a failure naming `where`. */
function publicKeyOf(entry: unknown, where: string): Uint8Array {
  const key = (entry as { key?: unknown } | null)?.key;
  if (typeof key !== "string") fail(`${where} has no "key" string: ${show(entry)}`);
  if (key.endsWith("=")) fail(`${where}: the key is padded base64; the spec wants unpadded (${key})`);
  let bytes: Uint8Array;
  try {
    bytes = decodeBase64(key);
  } catch (err) {
    if (err instanceof Base64Error) fail(`${where}: the key is not base64 (${key})`);
    throw err;
  }
  if (bytes.length !== 32) fail(`${where}: an Ed25519 key is 32 bytes, this one ${bytes.length}`);
  return bytes;
}

/** Key IDs are `ed25519:` followed by [a-zA-Z0-9_] (appendix "Signing key identifiers"). */
function expectKeyId(keyId: string, where: string): void {
  if (!/^ed25519:[A-Za-z0-9_]+$/.test(keyId)) fail(`${where}: key ID ${show(keyId)} is not ed25519:[a-zA-Z0-9_]+`);
}

/** Checks that `doc` carries a valid signature of `signer` with `keyId`. */
function expectSigned(doc: object, signer: string, keyId: string, key: Uint8Array, what: string): void {
  const sigs = (doc as { signatures?: Record<string, Record<string, unknown>> }).signatures;
  if (typeof sigs?.[signer]?.[keyId] !== "string") fail(`${what} has no signature by ${signer} with ${keyId} (signatures: ${show(sigs)})`);
  if (!verifyJsonSignature(doc, signer, keyId, key)) fail(`${what}: the signature by ${signer} with ${keyId} does not verify`);
}

const format: Check = {
  id: "key-server.format",
  group,
  title: "GET /_matrix/key/v2/server answers the spec's key document for the server's own name",
  async run(ctx) {
    const doc = await ownKeys(ctx.target);
    if (doc.server_name !== ctx.target.serverName) fail(`server_name is ${show(doc.server_name)}, not ${ctx.target.serverName}`);
    expect(typeof doc.verify_keys === "object" && doc.verify_keys !== null, `verify_keys is missing or not an object: ${show(doc.verify_keys)}`);
    const ids = Object.keys(doc.verify_keys);
    expect(ids.length > 0, "verify_keys is empty");
    for (const id of ids) {
      expectKeyId(id, "verify_keys");
      publicKeyOf(doc.verify_keys[id], `verify_keys[${id}]`);
    }
    if (doc.old_verify_keys !== undefined && (typeof doc.old_verify_keys !== "object" || doc.old_verify_keys === null || Array.isArray(doc.old_verify_keys))) {
      fail(`old_verify_keys is not an object: ${show(doc.old_verify_keys)}`);
    }
    expect(Number.isSafeInteger(doc.valid_until_ts), `valid_until_ts is not an integer: ${show(doc.valid_until_ts)}`);
    // The deprecated key-ID form must answer the same document (older servers still ask for it).
    const byId = await httpCall(`${ctx.target.url}/_matrix/key/v2/server/${enc(ids[0]!)}`, "GET");
    expectStatus(byId, 200, "GET /_matrix/key/v2/server/{keyId}");
    if (byId.json?.server_name !== ctx.target.serverName) fail(`the key-ID form answered server_name ${show(byId.json?.server_name)}`);
  },
};

const selfSignature: Check = {
  id: "key-server.self-signature",
  group,
  title: "the key document is signed by every key in verify_keys",
  async run(ctx) {
    const doc = await ownKeys(ctx.target);
    const keys = Object.entries((doc.verify_keys ?? {}) as Record<string, unknown>);
    expect(keys.length > 0, "verify_keys is empty");
    for (const [keyId, entry] of keys) expectSigned(doc, ctx.target.serverName, keyId, publicKeyOf(entry, `verify_keys[${keyId}]`), "the key document");
  },
};

const validUntil: Check = {
  id: "key-server.valid-until",
  group,
  title: "valid_until_ts lies in the future (at least an hour), so peers can cache the keys",
  async run(ctx) {
    const doc = await ownKeys(ctx.target);
    const now = Date.now();
    expect(Number.isSafeInteger(doc.valid_until_ts), `valid_until_ts is not an integer: ${show(doc.valid_until_ts)}`);
    // Milliseconds, not seconds: a value in seconds would lie in 1970.
    if (doc.valid_until_ts <= now + 3_600_000) fail(`valid_until_ts ${doc.valid_until_ts} is less than an hour ahead of now (${now})`);
  },
};

const oldKeys: Check = {
  id: "key-server.old-keys",
  group,
  title: "old_verify_keys: each retired key has its key and expired_ts, and is not also a current key",
  async run(ctx) {
    const doc = await ownKeys(ctx.target);
    const old = Object.entries((doc.old_verify_keys ?? {}) as Record<string, any>);
    if (old.length === 0) skip("the server publishes no old keys (it never rotated its key)");
    for (const [keyId, entry] of old) {
      expectKeyId(keyId, "old_verify_keys");
      publicKeyOf(entry, `old_verify_keys[${keyId}]`);
      if (!Number.isSafeInteger(entry?.expired_ts)) fail(`old_verify_keys[${keyId}].expired_ts is not an integer: ${show(entry?.expired_ts)}`);
      if (entry.expired_ts > Date.now() + 60_000) fail(`old_verify_keys[${keyId}] expires in the future (${entry.expired_ts})`);
      if (Object.hasOwn(doc.verify_keys ?? {}, keyId)) fail(`${keyId} is both a current and an old key`);
    }
    // The whole document is still signed by the current keys only, not the old ones.
    for (const [keyId, entry] of Object.entries((doc.verify_keys ?? {}) as Record<string, unknown>)) {
      expectSigned(doc, ctx.target.serverName, keyId, publicKeyOf(entry, `verify_keys[${keyId}]`), "the key document");
    }
  },
};

/**
 * Checks a notary's answer about `server`: the server's own document with its own signature intact
 * (verified with `key` when we know it), and the notary's signature added.
 */
async function checkNotaryAnswer(ctx: CheckContext, json: any, server: string, expectedKey: { keyId: string; key: Uint8Array } | undefined, what: string): Promise<void> {
  const list = json?.server_keys;
  if (!Array.isArray(list)) fail(`${what}: server_keys is not an array: ${show(json)}`);
  const doc = list.find((d: any) => d?.server_name === server);
  if (!doc) fail(`${what}: no key document for ${server} in ${show(list)}`);
  const notary = await ownKeys(ctx.target);
  const notaryKeys = Object.entries((notary.verify_keys ?? {}) as Record<string, unknown>);
  expect(notaryKeys.length > 0, "the notary publishes no verify keys");
  const signedByNotary = notaryKeys.some(([keyId, entry]) => {
    const sig = doc.signatures?.[ctx.target.serverName]?.[keyId];
    return typeof sig === "string" && verifyJsonSignature(doc, ctx.target.serverName, keyId, publicKeyOf(entry, `verify_keys[${keyId}]`));
  });
  if (!signedByNotary) fail(`${what}: the document for ${server} lacks a valid signature of the notary ${ctx.target.serverName}`);
  if (expectedKey) {
    const served = doc.verify_keys?.[expectedKey.keyId];
    if (!served) fail(`${what}: the document for ${server} lacks the key ${expectedKey.keyId}`);
    if (Buffer.compare(Buffer.from(publicKeyOf(served, `${server} ${expectedKey.keyId}`)), Buffer.from(expectedKey.key)) !== 0) {
      fail(`${what}: the notary serves a different key for ${server} ${expectedKey.keyId}`);
    }
    expectSigned(doc, server, expectedKey.keyId, expectedKey.key, `${what}: the document for ${server}`);
  }
}

const notaryPeer: Check = {
  id: "key-server.notary-peer",
  group,
  title: "as a notary, the server fetches another server's keys and answers them with both signatures (POST and GET /key/v2/query)",
  async run(ctx) {
    const peer = ctx.peer;
    const expected = { keyId: peer.key.keyId, key: peer.key.publicKey };
    const post = await httpCall(`${ctx.target.url}/_matrix/key/v2/query`, "POST", { body: { server_keys: { [peer.serverName]: {} } } });
    expectStatus(post, 200, "POST /_matrix/key/v2/query");
    await checkNotaryAnswer(ctx, post.json, peer.serverName, expected, "POST /key/v2/query");
    const get = await httpCall(`${ctx.target.url}/_matrix/key/v2/query/${enc(peer.serverName)}`, "GET");
    expectStatus(get, 200, "GET /_matrix/key/v2/query/{serverName}");
    await checkNotaryAnswer(ctx, get.json, peer.serverName, expected, "GET /key/v2/query/{serverName}");
  },
};

const notaryOwn: Check = {
  id: "key-server.notary-self",
  group,
  title: "as a notary, the server answers for its own keys, signed",
  async run(ctx) {
    const doc = await ownKeys(ctx.target);
    const [keyId, entry] = Object.entries((doc.verify_keys ?? {}) as Record<string, unknown>)[0] ?? fail("verify_keys is empty");
    const res = await httpCall(`${ctx.target.url}/_matrix/key/v2/query`, "POST", { body: { server_keys: { [ctx.target.serverName]: {} } } });
    expectStatus(res, 200, "POST /_matrix/key/v2/query (itself)");
    await checkNotaryAnswer(ctx, res.json, ctx.target.serverName, { keyId, key: publicKeyOf(entry, keyId) }, "POST /key/v2/query for itself");
  },
};

const notaryUnreachable: Check = {
  id: "key-server.notary-unreachable",
  group,
  title: "as a notary, a server that cannot be reached gives an empty answer for it, not an error",
  async run(ctx) {
    // .invalid never resolves (RFC 2606), so no server can answer for it.
    const res = await httpCall(`${ctx.target.url}/_matrix/key/v2/query`, "POST", { body: { server_keys: { "conformance-nowhere.invalid": {} } } });
    expectStatus(res, 200, "POST /_matrix/key/v2/query for an unreachable server");
    if (!Array.isArray(res.json?.server_keys)) fail(`server_keys is not an array: ${show(res.json)}`);
    if (res.json.server_keys.some((d: any) => d?.server_name === "conformance-nowhere.invalid")) fail("the notary answered keys for a server that does not exist");
  },
};

export const keyServerChecks: readonly Check[] = [format, selfSignature, validUntil, oldKeys, notaryPeer, notaryOwn, notaryUnreachable];

// Encrypted attachments, per the spec's "Sending encrypted attachments"
// (https://spec.matrix.org/latest/client-server-api/#sending-encrypted-attachments):
// a single-use AES-256 key, AES-CTR with a 64-bit random IV followed by a 64-bit counter starting
// at zero, and the SHA-256 of the CIPHERTEXT in the event, so the homeserver (which holds the
// bytes) cannot change them unnoticed. The key, IV and hash travel in the encrypted event's
// `file` (or `info.thumbnail_file`) object; the media repository only ever sees ciphertext.
import { decodeBase64Url, encodeUnpaddedBase64Url } from "../../federation/protocol/base64.ts";
import { aesCtr, bytesEqual, fromBase64, randomBytes, sha256, toBase64 } from "./primitives.ts";

/** The spec's JWK for an attachment key. */
export interface AttachmentJwk {
  kty: "oct";
  key_ops: string[];
  alg: "A256CTR";
  /** The key, unpadded URL-safe base64. */
  k: string;
  ext: true;
}

/** The spec's EncryptedFile. */
export interface EncryptedFile {
  url: string;
  key: AttachmentJwk;
  /** Unpadded base64 of the 16-byte initial counter block. */
  iv: string;
  /** Unpadded base64 hashes of the ciphertext; sha256 is the one clients must support. */
  hashes: { sha256: string } & Record<string, string>;
  v: "v2";
}

/** The attachment cannot be decrypted: changed ciphertext, or a `file` object that is not v2 AES-CTR. */
export class AttachmentDecryptError extends Error {
  override name = "AttachmentDecryptError";
}

/** Encrypts `data` under a fresh key; upload the returned bytes and put `file` (plus `url`) in the event. */
export function encryptAttachment(data: Uint8Array): { data: Uint8Array; file: Omit<EncryptedFile, "url"> } {
  const key = randomBytes(32);
  // The low 8 bytes (the counter) start at zero so the counter cannot wrap inside one file; WebCrypto
  // senders and receivers (Element) count with 64 bits, node:crypto with 128, and they agree as long
  // as it does not wrap.
  const iv = new Uint8Array(16);
  iv.set(randomBytes(8), 0);
  const ciphertext = aesCtr(key, iv, data);
  return {
    data: ciphertext,
    file: {
      v: "v2",
      key: { kty: "oct", key_ops: ["encrypt", "decrypt"], alg: "A256CTR", k: encodeUnpaddedBase64Url(key), ext: true },
      iv: toBase64(iv),
      hashes: { sha256: toBase64(sha256(ciphertext)) },
    },
  };
}

function decodeField(value: unknown, what: string, decode: (s: string) => Uint8Array, length?: number): Uint8Array {
  if (typeof value !== "string") throw new AttachmentDecryptError(`${what} missing`);
  let bytes: Uint8Array;
  try {
    bytes = decode(value);
  } catch {
    throw new AttachmentDecryptError(`${what} is not base64`);
  }
  if (length !== undefined && bytes.length !== length) throw new AttachmentDecryptError(`${what} has ${bytes.length} bytes, not ${length}`);
  return bytes;
}

/** Some senders write the JWK's `k` in the standard alphabet; both decode to the same key. */
function decodeKey(k: string): Uint8Array {
  try {
    return decodeBase64Url(k);
  } catch {
    return fromBase64(k);
  }
}

/**
 * Checks the ciphertext's SHA-256 against `file.hashes.sha256` and decrypts it. Throws
 * AttachmentDecryptError on a mismatch or a `file` object it cannot use; never returns bytes
 * that were not the sender's.
 */
export function decryptAttachment(data: Uint8Array, file: EncryptedFile): Uint8Array {
  // The file object comes from another user's event: every field is checked, not trusted to the type.
  const f = file as unknown as Record<string, any>;
  if (f?.v !== "v2") throw new AttachmentDecryptError(`unsupported encrypted attachment version ${JSON.stringify(f?.v)}`);
  const jwk = f.key as Record<string, unknown> | undefined;
  if (jwk?.kty !== "oct" || jwk.alg !== "A256CTR") throw new AttachmentDecryptError("the key is not an A256CTR octet key");
  // The spec asks for both operations; only "decrypt" matters to a receiver, so a key that lists
  // just that is used rather than refused.
  if (!Array.isArray(jwk.key_ops) || !jwk.key_ops.includes("decrypt")) throw new AttachmentDecryptError("the key is not for decryption");
  const key = decodeField(jwk.k, "key", decodeKey, 32);
  const iv = decodeField(f.iv, "iv", fromBase64, 16);
  const expected = decodeField(f.hashes?.sha256, "hashes.sha256", fromBase64, 32);
  // Hash first: a changed ciphertext is refused before any of it is decrypted.
  if (!bytesEqual(sha256(data), expected)) throw new AttachmentDecryptError("the ciphertext does not match its SHA-256 hash");
  return aesCtr(key, iv, data);
}

/** What the attachment helpers need of the HTTP layer (client/http.ts's MatrixHttp has it). */
export interface MediaTransport {
  upload(bytes: Uint8Array, contentType: string, fileName?: string): Promise<string>;
  download(mxc: string): Promise<Uint8Array>;
}

/**
 * Encrypts and uploads `data`; the result is the `file` object of the event. The upload is typed
 * application/octet-stream and carries no file name whatever the file is: the real type and name
 * go in the encrypted event, not to the server.
 */
export async function uploadEncryptedAttachment(media: MediaTransport, data: Uint8Array): Promise<EncryptedFile> {
  const encrypted = encryptAttachment(data);
  const url = await media.upload(encrypted.data, "application/octet-stream");
  return { ...encrypted.file, url };
}

/** Downloads `file.url` and decrypts it (throws AttachmentDecryptError when it was changed). */
export async function downloadEncryptedAttachment(media: MediaTransport, file: EncryptedFile): Promise<Uint8Array> {
  return decryptAttachment(await media.download(file.url), file);
}

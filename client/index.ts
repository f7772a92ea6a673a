// The client library's public entry (client/index.ts): everything an application or the E2EE layer imports.
export { ParleyClient, type ClientCryptoHooks, type ClientOptions, type LoginOptions, type ParleyClientEvents, type Presence } from "./client.ts";
export { Room, ROOM_TIMELINE_LIMIT, type Membership, type ReadReceipt, type RoomMember, type RoomSummary, type StateEvent, type TimelineEvent } from "./room.ts";
export { MatrixApiError, MatrixConnectionError, MatrixHttp, encodePath, type HttpOptions } from "./http.ts";
export { backoffDelay, syncFilter, type BackoffOptions, type SyncState, type SyncStateData } from "./sync.ts";
// End-to-end encryption: the machine to plug in with `client.setCrypto(await E2EE.create(...))`,
// its stores, encrypted attachments, SAS verification and cross-signing.
export { E2EE, type DecryptedToDevice, type E2EEOptions } from "./crypto/e2ee.ts";
export {
  CryptoStoreClosedError,
  CryptoStoreCorruptError,
  CryptoStoreLockedError,
  FileCryptoStore,
  MemoryCryptoStore,
  WrongPassphraseError,
  type CryptoStore,
  type FileCryptoStoreOptions,
  type KdfStrength,
} from "./crypto/store.ts";
export { AttachmentDecryptError, decryptAttachment, downloadEncryptedAttachment, encryptAttachment, uploadEncryptedAttachment, type EncryptedFile } from "./crypto/attachments.ts";
export { SasVerification, type CancelCode, type SasEmoji } from "./crypto/sas.ts";
export * as crossSigning from "./crypto/cross-signing.ts";
export { cryptoReady } from "./crypto/primitives.ts";

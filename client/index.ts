// The client library's public entry (client/index.ts): everything an application or the E2EE layer imports.
export { ParleyClient, type ClientCryptoHooks, type ClientOptions, type LoginOptions, type ParleyClientEvents, type Presence } from "./client.ts";
export { Room, ROOM_TIMELINE_LIMIT, type Membership, type ReadReceipt, type RoomMember, type RoomSummary, type StateEvent, type TimelineEvent } from "./room.ts";
export { MatrixApiError, MatrixConnectionError, MatrixHttp, encodePath, type HttpOptions } from "./http.ts";
export { backoffDelay, syncFilter, type BackoffOptions, type SyncState, type SyncStateData } from "./sync.ts";

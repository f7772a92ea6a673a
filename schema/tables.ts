// The one drizzle schema of Parley: every table, for PGlite and PostgreSQL alike.
// Each component's tables live in their own file under schema/tables/.
export * from "./tables/server.ts";
export * from "./tables/accounts.ts";
export * from "./tables/userdata.ts";
export * from "./tables/e2ee.ts";
export * from "./tables/rooms.ts";
export * from "./tables/search.ts";
export * from "./tables/sync.ts";
export * from "./tables/federation.ts";
export * from "./tables/user-directory.ts";
export * from "./tables/spaces.ts";
export * from "./tables/appservices.ts";
export * from "./tables/appservice-room-lists.ts";
export * from "./tables/media.ts";
export * from "./tables/push.ts";
export * from "./tables/threepid-bindings.ts";
export * from "./tables/room-moderation.ts";

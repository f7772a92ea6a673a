// Application services' published room directories: the rooms a bridge lists for one of its
// third-party networks (`PUT /directory/list/appservice/{networkId}/{roomId}`), shown by
// `/publicRooms` with `third_party_instance_id` ({service id}|{network id}) or `include_all_networks`,
// apart from the server's main list (rooms.is_public).
// https://spec.matrix.org/latest/application-service-api/#published-room-directories
import { index, pgTable, primaryKey, text } from "drizzle-orm/pg-core";

export const appserviceRoomLists = pgTable(
  "appservice_room_lists",
  {
    appserviceId: text("appservice_id").notNull(),
    networkId: text("network_id").notNull(),
    roomId: text("room_id").notNull(),
  },
  (t) => [primaryKey({ columns: [t.appserviceId, t.networkId, t.roomId] }), index("appservice_room_lists_room_idx").on(t.roomId)],
);

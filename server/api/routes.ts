// Every HTTP endpoint of the homeserver, in one list.
import { federationVersion } from "../../federation/transport/version.ts";
import { notaryQuery, notaryQueryOne, notaryQueryOneById, serverKeys, serverKeysById } from "../../federation/transport/key-server.ts";
import { federationQueryRoutes } from "./federation/query.ts";
import { federationPublicRoomsRoutes } from "./federation/public-rooms.ts";
import { federationHierarchyRoutes } from "./federation/hierarchy.ts";
import { federationEventRoutes } from "./federation/events.ts";
import { openIdUserInfo } from "./federation/openid.ts";
import { adminRoutes } from "./client/admin.ts";
import { openIdRoutes } from "./client/openid.ts";
import { federationSendRoutes } from "./federation/send.ts";
import { federationMembershipRoutes } from "./federation/membership.ts";
import { federationThirdPartyInviteRoutes } from "./federation/third-party-invites.ts";
import { federationUserKeyRoutes } from "./federation/user-keys.ts";
import type { AnyRoute } from "../http/route.ts";
import { accountRoutes } from "./client/account.ts";
import { threepidRoutes } from "./client/threepid.ts";
import { appServiceRoutes } from "./client/appservice.ts";
import { thirdPartyRoutes } from "./client/thirdparty.ts";
import { accountDataRoutes } from "./client/account-data.ts";
import { capabilities } from "./client/capabilities.ts";
import { deviceRoutes } from "./client/devices.ts";
import { keyBackupRoutes } from "./client/e2ee-backup.ts";
import { crossSigningRoutes } from "./client/e2ee-cross-signing.ts";
import { e2eeKeyRoutes } from "./client/e2ee-keys.ts";
import { toDeviceRoutes } from "./client/e2ee-to-device.ts";
import { filterRoutes } from "./client/filter.ts";
import { loginRoutes } from "./client/login.ts";
import { profileRoutes } from "./client/profile.ts";
import { pushRoutes } from "./client/push.ts";
import { userDirectoryRoutes } from "./client/user-directory.ts";
import { voipRoutes } from "./client/voip.ts";
import { mediaRoutes } from "./client/media.ts";
import { federationMediaRoutes } from "./federation/media.ts";
import { pushRuleRoutes } from "./client/pushrules.ts";
import { registerRoutes } from "./client/register.ts";
import { searchRoutes } from "./client/search.ts";
import { createRoomRoutes } from "./client/rooms/create-room.ts";
import { directoryRoutes } from "./client/rooms/directory.ts";
import { hierarchyRoutes } from "./client/rooms/hierarchy.ts";
import { membershipRoutes } from "./client/rooms/membership.ts";
import { readRoutes } from "./client/rooms/read.ts";
import { relationsRoutes } from "./client/rooms/relations.ts";
import { roomAccountDataRoutes } from "./client/rooms/room-account-data.ts";
import { sendRoutes } from "./client/rooms/send.ts";
import { upgradeRoutes } from "./client/rooms/upgrade.ts";
import { ephemeralRoutes } from "./client/ephemeral.ts";
import { syncRoutes } from "./client/sync.ts";
import { eventStreamRoutes } from "./client/events.ts";
import { initialSyncRoutes } from "./client/initial-sync.ts";
import { versions } from "./client/versions.ts";
import { synapseAdminRoutes } from "./synapse/register.ts";
import { serverVersionRoutes } from "./synapse/server-version.ts";
import { userAdminRoutes } from "./synapse/users.ts";
import { adminDeviceRoutes } from "./synapse/devices.ts";
import { registrationTokenRoutes } from "./synapse/registration-tokens.ts";
import { synapseRoomAdminRoutes } from "./synapse/rooms.ts";
import { synapseFederationAdminRoutes } from "./synapse/federation.ts";
import { synapseMediaAdminRoutes } from "./synapse/media.ts";
import { reportRoutes } from "./client/rooms/report.ts";
import { health } from "./health.ts";
import { wellKnownClient, wellKnownServer } from "./wellknown.ts";

export const routes: AnyRoute[] = [
  versions,
  wellKnownClient,
  wellKnownServer,
  health,
  federationVersion,
  serverKeys,
  serverKeysById,
  notaryQuery,
  notaryQueryOne,
  notaryQueryOneById,
  ...federationQueryRoutes,
  ...federationPublicRoomsRoutes,
  ...federationHierarchyRoutes,
  openIdUserInfo,
  ...openIdRoutes,
  ...adminRoutes,
  ...federationSendRoutes,
  ...federationMembershipRoutes,
  ...federationThirdPartyInviteRoutes,
  ...federationUserKeyRoutes,
  ...federationEventRoutes,
  ...registerRoutes,
  ...loginRoutes,
  ...accountRoutes,
  ...threepidRoutes,
  ...appServiceRoutes,
  ...thirdPartyRoutes,
  ...deviceRoutes,
  ...profileRoutes,
  ...pushRoutes,
  ...userDirectoryRoutes,
  ...voipRoutes,
  ...mediaRoutes,
  ...federationMediaRoutes,
  ...accountDataRoutes,
  ...filterRoutes,
  ...pushRuleRoutes,
  capabilities,
  ...e2eeKeyRoutes,
  ...crossSigningRoutes,
  ...toDeviceRoutes,
  ...keyBackupRoutes,
  ...synapseAdminRoutes,
  ...serverVersionRoutes,
  ...userAdminRoutes,
  ...adminDeviceRoutes,
  ...registrationTokenRoutes,
  ...synapseRoomAdminRoutes,
  ...synapseFederationAdminRoutes,
  ...synapseMediaAdminRoutes,
  ...reportRoutes,
  ...createRoomRoutes,
  ...membershipRoutes,
  ...sendRoutes,
  ...readRoutes,
  ...relationsRoutes,
  ...searchRoutes,
  ...directoryRoutes,
  ...hierarchyRoutes,
  ...roomAccountDataRoutes,
  ...upgradeRoutes,
  ...syncRoutes,
  ...eventStreamRoutes,
  ...initialSyncRoutes,
  ...ephemeralRoutes,
];

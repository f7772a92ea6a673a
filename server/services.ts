// The services of one homeserver process, built once at startup and handed to every route.
// Each service owns its tables' queries (STYLE.md, "Components own their storage"); routes call
// services, never tables.
import type { Logger } from "pino";
import type { Database, OpenedDatabase } from "../schema/db.ts";
import type { SigningKey } from "../federation/protocol/signing.ts";
import { Accounts } from "./accounts/accounts.ts";
import { AuditLog } from "./accounts/audit.ts";
import { OpenIdTokens } from "./accounts/openid.ts";
import { PasswordHasher } from "./accounts/passwords.ts";
import { RegistrationTokens } from "./accounts/registration-tokens.ts";
import { Sessions } from "./accounts/sessions.ts";
import { SharedSecretRegistration } from "./accounts/shared-secret.ts";
import { UserInteractiveAuth } from "./accounts/uia.ts";
import type { AppServiceDelivery } from "./appservices/delivery.ts";
import { AppServiceRegistry, loadAppServices } from "./appservices/registration.ts";
import type { AppServiceQueries } from "./appservices/queries.ts";
import type { ThirdPartyLookups } from "./appservices/thirdparty.ts";
import type { Config } from "./config.ts";
import type { Requester, RequestInfo, ServerAuthenticator } from "./http/route.ts";
import type { Federation } from "../federation/transport/federation.ts";
import { MatrixError } from "./http/errors.ts";
import { E2ee } from "./e2ee/e2ee.ts";
import type { MediaRepository } from "./media/media.ts";
import type { UrlPreviewer } from "./media/url-preview.ts";
import type { NotificationsList } from "./push/notifications.ts";
import type { PushSender } from "./push/push-sender.ts";
import { Pushers } from "./push/pushers.ts";
import { RateLimiter } from "./ratelimit.ts";
import type { RoomServices } from "./rooms/room-services.ts";
import type { SyncServices } from "./sync/sync-services.ts";
import type { ThirdPartyInvites } from "./rooms/third-party-invites.ts";
import type { ThreepidBindings } from "./accounts/threepid-bindings.ts";
import { UserData } from "./userdata/userdata.ts";
import type { UserDirectory } from "./userdirectory/user-directory.ts";

/** Turns an access token into a requester, or throws 401 M_UNKNOWN_TOKEN. */
export interface Authenticator {
  authenticate(accessToken: string, request: RequestInfo): Promise<Requester>;
}

export interface Services extends AccountServices, RoomServices, SyncServices {
  config: Config;
  database: OpenedDatabase;
  db: Database;
  logger: Logger;
  signingKey: SigningKey;
  /** The clock; tests may replace it. */
  now(): number;
  auth: Authenticator;
  /** The server-to-server side (federation/transport), built in server/homeserver.ts. */
  federation: Federation;
  /** Checks X-Matrix signatures for routes declared `auth: "server"`. */
  serverAuth: ServerAuthenticator;
  /** `/user_directory/search`. */
  userDirectory: UserDirectory;
  /** Pushes room events (and ephemeral data) to the application services' URLs. */
  appServiceDelivery: AppServiceDelivery;
  /** What the homeserver asks of application services (users, aliases, ping). */
  appServiceQueries: AppServiceQueries;
  /** `/thirdparty/*`: lookups proxied to the application services that bridge each protocol. */
  thirdParty: ThirdPartyLookups;
  /** Invites by third-party identifier (identity servers, onbind, exchange). */
  thirdPartyInvites: ThirdPartyInvites;
  /** 3pids bound on identity servers through us (`/account/3pid/bind`, unbind, delete, deactivation). */
  threepidBindings: ThreepidBindings;
  /** The content repository: uploads, downloads, thumbnails, remote media. */
  media: MediaRepository;
  /** `GET …/preview_url`; undefined when `url_preview_enabled` is off. */
  urlPreviews?: UrlPreviewer;
  /** Pushes notifications to the users' push gateways (server/push/). */
  pushSender: PushSender;
  /** `GET /notifications`. */
  pushNotifications: NotificationsList;
}

/** Until accounts exist, no token is valid. */
export const noAccounts: Authenticator = {
  async authenticate() {
    throw new MatrixError(401, "M_UNKNOWN_TOKEN", "Unknown access token");
  },
};

/** The account-related services: what the homeserver and the admin command line both use. */
export interface AccountServices {
  accounts: Accounts;
  sessions: Sessions;
  uia: UserInteractiveAuth;
  /** Registration tokens made through the admin API (with use counts and expiry). */
  registrationTokens: RegistrationTokens;
  audit: AuditLog;
  userData: UserData;
  rateLimiter: RateLimiter;
  sharedSecret: SharedSecretRegistration;
  /** OpenID tokens for other services to check who a user is. */
  openId: OpenIdTokens;
  /** End-to-end encryption: built with the accounts so device deletion (even from the CLI) removes device keys. */
  e2ee: E2ee;
  /** The application services registered in the configuration (`app_service_config_files`). */
  appServices: AppServiceRegistry;
  /** Push gateways' pushers: built with the accounts so device deletion (even from the CLI) removes them. */
  pushers: Pushers;
}

export function createAccountServices(
  database: OpenedDatabase,
  config: Config,
  logger: Logger,
  now: () => number,
  tokenCacheMs?: number,
): AccountServices {
  const db = database.db;
  const audit = new AuditLog(db, now, logger);
  const sessions = new Sessions(database, now, config.access_token_lifetime_ms, logger, tokenCacheMs);
  const accounts = new Accounts(db, config.server_name, now, new PasswordHasher(), sessions, audit, logger);
  const rateLimiter = new RateLimiter(
    config.rate_limits && {
      login: config.rate_limit_login,
      registration: config.rate_limit_registration,
      requests: config.rate_limit_requests,
    },
    now,
  );
  const registrationTokens = new RegistrationTokens(db, now);
  const uia = new UserInteractiveAuth(db, now, accounts, audit, rateLimiter, config.registration_tokens, registrationTokens);
  const pushers = new Pushers(db, now);
  accounts.onDevicesDeleted((userId, deviceIds) => pushers.devicesDeleted(userId, deviceIds));
  // Pushers without a device (set by an application service acting as the user) go too.
  accounts.onDeactivated((userId) => pushers.userDeactivated(userId));
  return {
    pushers,
    appServices: new AppServiceRegistry(loadAppServices(config.app_service_config_files, config.server_name)),
    accounts,
    sessions,
    audit,
    rateLimiter,
    uia,
    registrationTokens,
    userData: new UserData(db, {
      quotaBytes: config.user_data_quota_bytes,
      itemMaxBytes: config.user_data_item_max_bytes,
      maxFilters: config.user_filters_max,
    }),
    sharedSecret: new SharedSecretRegistration(db, now, config.registration_shared_secret),
    openId: new OpenIdTokens(db, now),
    e2ee: new E2ee(db, accounts, uia, {
      serverName: config.server_name,
      toDeviceLimits: {
        mailbox: config.to_device_mailbox_limit,
        perSender: config.to_device_per_sender_limit,
        stranger: config.to_device_stranger_limit,
      },
      now,
    }),
  };
}

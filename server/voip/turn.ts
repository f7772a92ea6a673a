// TURN credentials for VoIP calls (`GET /voip/turnServer`).
// https://spec.matrix.org/latest/client-server-api/#voice-over-ip
// With a shared secret, credentials are the time-limited ones of coturn's `use-auth-secret` (the
// "TURN REST API" draft): username `<expiry, unix seconds>:<user ID>`, password the standard
// (padded) base64 of HMAC-SHA1(secret, username); the TURN server checks them with the same secret
// and refuses them after the expiry. Without a secret, a static username and password are handed
// out as configured.
import { createHmac } from "node:crypto";

export interface TurnConfig {
  turn_uris: string[];
  turn_shared_secret?: string;
  turn_username?: string;
  turn_password?: string;
  turn_user_lifetime_ms: number;
}

export interface TurnCredentials {
  username: string;
  password: string;
  uris: string[];
  /** Seconds. */
  ttl: number;
}

/**
 * The credentials `userId` gets at `nowMs`, or undefined when no TURN server is configured (URIs,
 * and a shared secret or a static username and password).
 */
export function turnCredentials(config: TurnConfig, userId: string, nowMs: number): TurnCredentials | undefined {
  const uris = config.turn_uris;
  if (uris.length === 0) return undefined;
  const ttl = Math.floor(config.turn_user_lifetime_ms / 1000);
  if (config.turn_shared_secret !== undefined) {
    const expiry = Math.floor((nowMs + config.turn_user_lifetime_ms) / 1000);
    const username = `${expiry}:${userId}`;
    const password = createHmac("sha1", config.turn_shared_secret).update(username).digest("base64");
    return { username, password, uris, ttl };
  }
  if (config.turn_username !== undefined && config.turn_password !== undefined) {
    return { username: config.turn_username, password: config.turn_password, uris, ttl };
  }
  return undefined;
}

// Helpers for tests that need accounts: register through the real UIA flow, log in.
import { expect } from "vitest";
import { request } from "./harness.ts";

export interface TestUser {
  userId: string;
  accessToken: string;
  deviceId: string;
  password: string;
}

/** Registers `username` through the open-registration flow (401 with a session, then m.login.dummy). */
export async function registerUser(base: string, username: string, password = `pw-${username}-secret`): Promise<TestUser> {
  const first = await request(base, "POST", "/_matrix/client/v3/register", { body: { username, password } });
  expect(first.status).toBe(401);
  const res = await request(base, "POST", "/_matrix/client/v3/register", {
    body: { username, password, auth: { type: "m.login.dummy", session: first.json.session } },
  });
  expect(res.status, JSON.stringify(res.json)).toBe(200);
  return { userId: res.json.user_id, accessToken: res.json.access_token, deviceId: res.json.device_id, password };
}

export async function loginUser(base: string, user: string, password: string, extra: Record<string, unknown> = {}) {
  return request(base, "POST", "/_matrix/client/v3/login", {
    body: { type: "m.login.password", identifier: { type: "m.id.user", user }, password, ...extra },
  });
}

/** The password auth dict of user-interactive auth. */
export function passwordAuth(user: TestUser, session?: string) {
  return {
    type: "m.login.password",
    identifier: { type: "m.id.user", user: user.userId },
    password: user.password,
    ...(session ? { session } : {}),
  };
}

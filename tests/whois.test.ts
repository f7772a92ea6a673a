// GET /admin/whois/{userId}: a user's devices with the connection last seen on each; for the user
// themself or a server admin.
// https://spec.matrix.org/latest/client-server-api/#get_matrixclientv3adminwhoisuserid
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { registerUser } from "./accounts-helpers.ts";
import { request, startTestServer, type TestServer } from "./harness.ts";

let hs: TestServer;
beforeAll(async () => {
  hs = await startTestServer();
});
afterAll(() => hs.destroy());

const whois = (token: string, userId: string) => request(hs.url, "GET", `/_matrix/client/v3/admin/whois/${encodeURIComponent(userId)}`, { token });

describe("/admin/whois", () => {
  it("shows a user their devices and where each was last used; admins see anyone; others get 403", async () => {
    const alice = await registerUser(hs.url, "alice");
    const bob = await registerUser(hs.url, "bob");
    const admin = await registerUser(hs.url, "boss");
    await hs.services.accounts.setAdmin(admin.userId, true);
    // A request marks the device as seen (the address and time are written in the background).
    await request(hs.url, "GET", "/_matrix/client/v3/account/whoami", { token: alice.accessToken });
    let seen: any;
    await expect
      .poll(async () => {
        seen = (await whois(alice.accessToken, alice.userId)).json;
        return seen.devices?.[alice.deviceId]?.sessions?.[0]?.connections?.length;
      })
      .toBe(1);
    expect(seen.user_id).toBe(alice.userId);
    expect(seen.devices[alice.deviceId].sessions[0].connections[0]).toMatchObject({ ip: expect.stringMatching(/127\.0\.0\.1/), last_seen: expect.any(Number), user_agent: expect.any(String) });

    expect((await whois(bob.accessToken, alice.userId)).status).toBe(403);
    const byAdmin = await whois(admin.accessToken, alice.userId);
    expect(byAdmin.status).toBe(200);
    expect(Object.keys(byAdmin.json.devices)).toEqual([alice.deviceId]);
    expect((await whois(admin.accessToken, "@nobody:test.local")).status).toBe(404);
    expect((await whois(admin.accessToken, "@someone:elsewhere.test")).status).toBe(400);
  });
});

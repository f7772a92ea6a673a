// matrix-js-sdk as a real third-party client: register, log in, profile, account data, devices.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startTestServer, type TestServer } from "./harness.ts";
import { sdk } from "./matrix-sdk.ts";


// The SDK logs every request; keep the test output readable.
const quiet = {
  trace() {},
  debug() {},
  info() {},
  warn() {},
  error() {},
  getChild: () => quiet,
};
const createClient = (opts: Parameters<typeof sdk.createClient>[0]) => sdk.createClient({ ...opts, logger: quiet as never });

describe("matrix-js-sdk", () => {
  let hs: TestServer;
  beforeAll(async () => {
    hs = await startTestServer();
  });
  afterAll(() => hs.destroy());

  it("registers, logs in, manages its profile, account data and devices", async () => {
    const anonymous = createClient({ baseUrl: hs.url });

    // Registration: the first attempt is answered with the UIA flows and a session.
    let session: string | undefined;
    try {
      await anonymous.register("sdkuser", "sdk password", null, undefined as never);
      expect.fail("registration without auth should ask for user-interactive auth");
    } catch (err) {
      const e = err as InstanceType<typeof sdk.MatrixError>;
      expect(e.httpStatus).toBe(401);
      expect(e.data.flows).toEqual([{ stages: ["m.login.dummy"] }]);
      session = e.data.session as string;
    }
    const registered = await anonymous.register("sdkuser", "sdk password", session!, { type: "m.login.dummy" });
    expect(registered.user_id).toBe("@sdkuser:test.local");

    // Log in on a second device with loginWithPassword (the deprecated top-level `user` field).
    const loginClient = createClient({ baseUrl: hs.url });
    const login = await loginClient.loginWithPassword("sdkuser", "sdk password");
    expect(login.user_id).toBe("@sdkuser:test.local");
    const client = createClient({
      baseUrl: hs.url,
      accessToken: login.access_token,
      userId: login.user_id,
      deviceId: login.device_id,
    });
    expect((await client.whoami()).user_id).toBe("@sdkuser:test.local");

    // Profile.
    await client.setDisplayName("SDK User");
    expect(await client.getProfileInfo("@sdkuser:test.local")).toEqual({ displayname: "SDK User" });
    expect(await client.getProfileInfo("@sdkuser:test.local", "displayname")).toEqual({ displayname: "SDK User" });

    // Account data: a missing type reads as null, a written one comes back.
    expect(await client.getAccountDataFromServer("org.example.sdk" as never)).toBeNull();
    await client.setAccountData("org.example.sdk" as never, { hello: "world" } as never);
    expect(await client.getAccountDataFromServer("org.example.sdk" as never)).toEqual({ hello: "world" });

    // Push rules and capabilities, as the SDK fetches them when it starts.
    const rules = await client.getPushRules();
    expect(rules.global.override?.[0]?.rule_id).toBe(".m.rule.master");
    const capabilities = await client.getCapabilities();
    expect(capabilities["m.change_password"]?.enabled).toBe(true);

    // Devices: both are listed; delete the registration's device with password UIA.
    const { devices } = await client.getDevices();
    expect(devices.map((d) => d.device_id).sort()).toEqual([registered.device_id, login.device_id].sort());
    let deleteSession: string | undefined;
    try {
      await client.deleteDevice(registered.device_id!);
      expect.fail("deleting a device should ask for user-interactive auth");
    } catch (err) {
      const e = err as InstanceType<typeof sdk.MatrixError>;
      expect(e.httpStatus).toBe(401);
      deleteSession = e.data.session as string;
    }
    await client.deleteDevice(registered.device_id!, {
      type: "m.login.password",
      identifier: { type: "m.id.user", user: "@sdkuser:test.local" },
      password: "sdk password",
      session: deleteSession,
    } as never);
    expect((await client.getDevices()).devices.map((d) => d.device_id)).toEqual([login.device_id]);

    // The deleted device's token is refused.
    const old = createClient({ baseUrl: hs.url, accessToken: registered.access_token, userId: registered.user_id });
    await expect(old.whoami()).rejects.toMatchObject({ httpStatus: 401, errcode: "M_UNKNOWN_TOKEN" });

    await client.logout(true);
  });
});

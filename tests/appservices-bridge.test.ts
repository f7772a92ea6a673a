// A real bridge library drives Parley through the Application Service API: matrix-appservice-bridge
// (the library of matrix-appservice-irc, -slack and others) generates its registration, listens on
// loopback, registers a ghost user with its as_token, creates a portal room as the ghost, receives
// a user's message through a transaction and answers as the ghost.
// https://spec.matrix.org/latest/application-service-api/
import { createRequire } from "node:module";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type TestServer, startTestServer } from "./harness.ts";
import { freePort } from "./free-port.ts";
import { registerRoomUser, type RoomUser } from "./rooms-helpers.ts";

// The library's client (matrix-bot-sdk) loads the Rust crypto bindings at import, a native binary
// its postinstall downloads from GitHub (not reachable here, and not run by npm without approval).
// The bridge does not use end-to-end encryption: an inert stand-in takes the module's place.
function standInForNativeCrypto(): void {
  const require = createRequire(import.meta.url);
  const botSdk = require.resolve("@vector-im/matrix-bot-sdk");
  const cryptoPath = createRequire(botSdk).resolve("@matrix-org/matrix-sdk-crypto-nodejs");
  const inert: object = new Proxy(function () {}, { get: (_t, key) => (key === "__esModule" ? false : inert) });
  require.cache[cryptoPath] = { id: cryptoPath, filename: cryptoPath, loaded: true, exports: inert } as NodeJS.Module;
}

describe("application services: matrix-appservice-bridge", () => {
  let dir: string;
  let hs: TestServer;
  let bridge: import("matrix-appservice-bridge").Bridge;
  let alice: RoomUser;
  const received: any[] = [];

  beforeAll(async () => {
    standInForNativeCrypto();
    const { AppServiceRegistration, Bridge } = await import("matrix-appservice-bridge");
    dir = await mkdtemp(path.join(tmpdir(), "parley-bridge-"));
    const port = await freePort();
    const registration = new AppServiceRegistration(`http://127.0.0.1:${port}`);
    registration.setId("test-bridge");
    registration.setHomeserverToken(AppServiceRegistration.generateToken());
    registration.setAppServiceToken(AppServiceRegistration.generateToken());
    registration.setSenderLocalpart("testbridgebot");
    registration.addRegexPattern("users", "@ghost_.*", true);
    registration.addRegexPattern("aliases", "#ghost_.*", true);
    const file = path.join(dir, "registration.yaml");
    registration.outputAsYaml(file);

    hs = await startTestServer({ config: { app_service_config_files: [file] } });
    bridge = new Bridge({
      homeserverUrl: hs.url,
      domain: "test.local",
      registration,
      disableStores: true,
      disableContext: true,
      controller: {
        onEvent: (request) => {
          const event = request.getData();
          received.push(event);
          // The bridge answers a message from a real user as the ghost of the room.
          if (event.type === "m.room.message" && !event.sender.startsWith("@ghost_") && typeof event.content?.body === "string") {
            void bridge.getIntent("@ghost_bob:test.local").sendText(event.room_id, `echo: ${event.content.body}`);
          }
        },
      },
    });
    await bridge.initialise();
    await bridge.listen(port, "127.0.0.1");
    alice = await registerRoomUser(hs.url, "alice");
  }, 60_000);

  afterAll(async () => {
    await bridge?.close().catch(() => {});
    await hs?.destroy();
    await rm(dir, { recursive: true, force: true });
  });

  it("registers a ghost, opens a portal room, receives a message through a transaction and answers as the ghost", async () => {
    const ghost = bridge.getIntent("@ghost_bob:test.local");
    await ghost.ensureRegistered();
    const whoami = await ghost.matrixClient.getUserId();
    expect(whoami).toBe("@ghost_bob:test.local");

    const { room_id: portal } = await ghost.createRoom({
      createAsClient: true,
      options: { name: "Portal to elsewhere", preset: "private_chat", invite: [alice.userId] },
    });
    expect(portal).toMatch(/^!/);
    expect((await alice.join(portal)).status).toBe(200);
    await alice.send(portal, { msgtype: "m.text", body: "hello, bridge" });

    // The bridge got the message through a transaction ...
    const deadline = Date.now() + 15_000;
    let answer: any;
    while (Date.now() < deadline) {
      const messages = await alice.messages(portal, { dir: "b", limit: "20" });
      answer = messages.json.chunk.find((e: any) => e.sender === "@ghost_bob:test.local" && e.content?.body === "echo: hello, bridge");
      if (answer) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    const got = received.find((e) => e.type === "m.room.message" && e.sender === alice.userId);
    expect(got?.content.body).toBe("hello, bridge");
    expect(got?.room_id).toBe(portal);
    // ... and answered as the ghost, which the room's user sees.
    expect(answer, "the ghost's answer in the room").toBeDefined();
    // The ghost's own events (its join, its answer) came through transactions too: it is in the namespace.
    expect(received.some((e) => e.type === "m.room.member" && e.state_key === alice.userId && e.content.membership === "join")).toBe(true);
  }, 30_000);
});

// The E2EE machine (client/crypto/e2ee.ts, on our Olm/Megolm) sending the first encrypted message into
// a room of 100 other devices (10 users × 10 devices): the time from encryptRoomEvent to the Megolm
// content, key sharing included: /keys/query, /keys/claim, 100 Olm sessions set up, 100 m.room_key
// messages Olm-encrypted, the Megolm encryption. The homeserver is an in-memory stand-in of the four
// key endpoints (no HTTP, no database), so the figures are the client's crypto and bookkeeping alone.
// Then the next message (the session already shared), and the 100 devices taking their room key
// (a pre-key Olm message each: an inbound session, the payload checks, the Megolm session stored).
// Run: `npx tsx bench/client-e2ee.bench.ts` (about 10 s). Ends with one BENCH_RESULT line.
import { E2EE } from "../client/crypto/e2ee.ts";
import { cryptoReady } from "../client/crypto/primitives.ts";
import { MemoryCryptoStore } from "../client/crypto/store.ts";
import { KeyServer } from "../tests/client/e2ee-helpers.ts";

const USERS = 10;
const DEVICES_PER_USER = 10;
const ROUNDS = Number(process.env.BENCH_CLIENT_E2EE_ROUNDS ?? 3);

await cryptoReady();
const firstMessage: number[] = [];
const nextMessage: number[] = [];
const takeKeys: number[] = [];
for (let round = 0; round < ROUNDS; round++) {
  const server = new KeyServer();
  const recipients: Array<{ e2ee: E2EE; userId: string; deviceId: string }> = [];
  for (let u = 0; u < USERS; u++) {
    for (let d = 0; d < DEVICES_PER_USER; d++) {
      const userId = `@user${u}:bench`;
      const deviceId = `DEVICE${d}`;
      recipients.push({ userId, deviceId, e2ee: await E2EE.create({ http: server.httpFor(userId, deviceId), userId, deviceId, store: new MemoryCryptoStore() }) });
    }
  }
  const sender = await E2EE.create({ http: server.httpFor("@sender:bench", "SENDER"), userId: "@sender:bench", deviceId: "SENDER", store: new MemoryCryptoStore() });
  const members = ["@sender:bench", ...Array.from({ length: USERS }, (_, u) => `@user${u}:bench`)];
  const roomId = `!bench${round}:bench`;

  let start = performance.now();
  await sender.encryptRoomEvent(roomId, "m.room.message", { msgtype: "m.text", body: "the first message" }, members);
  firstMessage.push(performance.now() - start);

  start = performance.now();
  await sender.encryptRoomEvent(roomId, "m.room.message", { msgtype: "m.text", body: "the second message" }, members);
  nextMessage.push(performance.now() - start);

  start = performance.now();
  for (const r of recipients) {
    const events = server.inbox.get(`${r.userId}|${r.deviceId}`) ?? [];
    if (events.length !== 1) throw new Error(`${r.userId}/${r.deviceId} got ${events.length} to-device messages`);
    await r.e2ee.processSync({ to_device: { events } });
  }
  takeKeys.push((performance.now() - start) / recipients.length);
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const results = [
  { name: "first encrypted message into a room of 100 devices (key sharing included)", value: Math.round(median(firstMessage)), unit: "ms" },
  { name: "next encrypted message in that room (session shared)", value: Number(median(nextMessage).toFixed(2)), unit: "ms" },
  { name: "a device taking its m.room_key (a pre-key Olm message: new Olm and Megolm inbound sessions)", value: Number(median(takeKeys).toFixed(2)), unit: "ms" },
];
for (const r of results) console.log(`${r.name}: ${r.value} ${r.unit}`);
process.stdout.write(`BENCH_RESULT ${JSON.stringify({ bench: "client-e2ee", results })}\n`);

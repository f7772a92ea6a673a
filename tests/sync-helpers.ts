// Helpers for tests of /sync and what it carries: rooms, messages, sync calls over HTTP.
import { expect } from "vitest";
import { request } from "./harness.ts";
import type { TestUser } from "./accounts-helpers.ts";

export const enc = encodeURIComponent;
let txn = 0;

export async function createRoom(base: string, user: TestUser, body: Record<string, unknown> = {}): Promise<string> {
  const res = await request(base, "POST", "/_matrix/client/v3/createRoom", { token: user.accessToken, body });
  expect(res.status, JSON.stringify(res.json)).toBe(200);
  return res.json.room_id as string;
}

export async function joinRoom(base: string, user: TestUser, roomId: string): Promise<void> {
  const res = await request(base, "POST", `/_matrix/client/v3/join/${enc(roomId)}`, { token: user.accessToken, body: {} });
  expect(res.status, JSON.stringify(res.json)).toBe(200);
}

export async function invite(base: string, user: TestUser, roomId: string, target: string): Promise<void> {
  const res = await request(base, "POST", `/_matrix/client/v3/rooms/${enc(roomId)}/invite`, {
    token: user.accessToken,
    body: { user_id: target },
  });
  expect(res.status, JSON.stringify(res.json)).toBe(200);
}

export async function leaveRoom(base: string, user: TestUser, roomId: string): Promise<void> {
  const res = await request(base, "POST", `/_matrix/client/v3/rooms/${enc(roomId)}/leave`, { token: user.accessToken, body: {} });
  expect(res.status, JSON.stringify(res.json)).toBe(200);
}

/** Sends an event and returns its ID; `txnId` is fresh unless given. */
export async function send(
  base: string,
  user: TestUser,
  roomId: string,
  content: Record<string, unknown> = { msgtype: "m.text", body: "hello" },
  type = "m.room.message",
  txnId = `t${++txn}-${Date.now()}`,
): Promise<string> {
  const res = await request(base, "PUT", `/_matrix/client/v3/rooms/${enc(roomId)}/send/${enc(type)}/${enc(txnId)}`, {
    token: user.accessToken,
    body: content,
  });
  expect(res.status, JSON.stringify(res.json)).toBe(200);
  return res.json.event_id as string;
}

export interface SyncOptions {
  since?: string;
  timeout?: number;
  filter?: string | Record<string, unknown>;
  fullState?: boolean;
  setPresence?: string;
}

/** GET /sync; fails the test unless it answers 200. */
export async function sync(base: string, user: TestUser, options: SyncOptions = {}): Promise<any> {
  const res = await syncRaw(base, user, options);
  expect(res.status, JSON.stringify(res.json)).toBe(200);
  return res.json;
}

export function syncRaw(base: string, user: TestUser, options: SyncOptions = {}) {
  const q = new URLSearchParams();
  if (options.since) q.set("since", options.since);
  if (options.timeout !== undefined) q.set("timeout", String(options.timeout));
  if (options.filter !== undefined) q.set("filter", typeof options.filter === "string" ? options.filter : JSON.stringify(options.filter));
  if (options.fullState) q.set("full_state", "true");
  if (options.setPresence) q.set("set_presence", options.setPresence);
  return request(base, "GET", `/_matrix/client/v3/sync?${q}`, { token: user.accessToken });
}

/** The timeline event bodies of a joined room in a sync response. */
export function bodies(response: any, roomId: string): string[] {
  const events: any[] = response.rooms?.join?.[roomId]?.timeline?.events ?? [];
  return events.filter((e) => e.type === "m.room.message").map((e) => e.content.body);
}

// Helpers for room tests: a user with shorthand calls for the rooms API.
import { expect } from "vitest";
import { registerUser, type TestUser } from "./accounts-helpers.ts";
import { request } from "./harness.ts";

const enc = encodeURIComponent;

export interface RoomUser extends TestUser {
  call(method: string, path: string, body?: unknown): Promise<{ status: number; json: any }>;
  createRoom(body?: Record<string, unknown>): Promise<string>;
  join(roomIdOrAlias: string): Promise<{ status: number; json: any }>;
  send(roomId: string, content: Record<string, unknown>, type?: string): Promise<string>;
  setState(roomId: string, type: string, content: Record<string, unknown>, stateKey?: string): Promise<{ status: number; json: any }>;
  state(roomId: string, type: string, stateKey?: string): Promise<{ status: number; json: any }>;
  messages(roomId: string, query: Record<string, string>): Promise<{ status: number; json: any }>;
}

let txn = 0;

export function asRoomUser(base: string, user: TestUser): RoomUser {
  const call = (method: string, path: string, body?: unknown) =>
    request(base, method, path, { token: user.accessToken, ...(body !== undefined ? { body } : {}) });
  return {
    ...user,
    call,
    async createRoom(body = {}) {
      const res = await call("POST", "/_matrix/client/v3/createRoom", body);
      expect(res.status, JSON.stringify(res.json)).toBe(200);
      return res.json.room_id;
    },
    join: (roomIdOrAlias) => call("POST", `/_matrix/client/v3/join/${enc(roomIdOrAlias)}`, {}),
    async send(roomId, content, type = "m.room.message") {
      const res = await call("PUT", `/_matrix/client/v3/rooms/${enc(roomId)}/send/${enc(type)}/t${txn++}`, content);
      expect(res.status, JSON.stringify(res.json)).toBe(200);
      return res.json.event_id;
    },
    setState: (roomId, type, content, stateKey = "") =>
      call("PUT", `/_matrix/client/v3/rooms/${enc(roomId)}/state/${enc(type)}/${enc(stateKey)}`, content),
    state: (roomId, type, stateKey = "") => call("GET", `/_matrix/client/v3/rooms/${enc(roomId)}/state/${enc(type)}/${enc(stateKey)}`),
    messages: (roomId, query) => call("GET", `/_matrix/client/v3/rooms/${enc(roomId)}/messages?${new URLSearchParams(query)}`),
  };
}

export async function registerRoomUser(base: string, name: string): Promise<RoomUser> {
  return asRoomUser(base, await registerUser(base, name));
}

/** The whole timeline a user can page back through, oldest first. */
export async function timeline(user: RoomUser, roomId: string): Promise<any[]> {
  const events: any[] = [];
  let from: string | undefined;
  for (;;) {
    const res = await user.messages(roomId, { dir: "b", limit: "50", ...(from ? { from } : {}) });
    expect(res.status, JSON.stringify(res.json)).toBe(200);
    events.push(...res.json.chunk);
    if (!res.json.end) return events.reverse();
    from = res.json.end;
  }
}

export const roomPath = (roomId: string, rest: string) => `/_matrix/client/v3/rooms/${enc(roomId)}${rest}`;

// What a line typed into parley-chat asks for. Pure: the app carries the command out.

export type Command =
  | { kind: "send"; text: string }
  | { kind: "emote"; text: string }
  | { kind: "join"; target: string }
  | { kind: "create"; name: string; encrypted: boolean }
  | { kind: "invite"; userId: string }
  | { kind: "leave" }
  | { kind: "rooms" }
  | { kind: "open"; ref: string }
  | { kind: "verify"; userId: string; deviceId: string }
  | { kind: "devices" }
  | { kind: "confirm"; match: boolean }
  | { kind: "help" }
  | { kind: "quit" }
  | { kind: "error"; message: string };

export const HELP: string[] = [
  "/join #alias:server|!id   join a room (/join alone accepts the open invitation)",
  "/create NAME [--encrypted]   create a room and open it",
  "/invite @user:server   invite someone to the open room",
  "/leave   leave the open room",
  "/rooms   your rooms, with their IDs",
  "/open NUMBER|NAME   open a room (also Alt+↑/↓ or Ctrl+P/N)",
  "/verify @user:server DEVICE   verify a device by comparing emoji",
  "/yes, /no   answer whether a verification's emoji match",
  "/devices   your devices",
  "/me TEXT   an action",
  "/quit   leave parley-chat (also Ctrl+C)",
  "",
  "Other text is sent to the open room (//text sends /text).",
  "PageUp/PageDown scroll, ↑/↓ recall what you typed, Esc closes this panel.",
];

const USER_ID = /^@[^:\s]+:\S+$/;
const ROOM_REF = /^[#!][^:\s]+:\S+$/;

export function parseCommand(line: string): Command | undefined {
  const text = line.trim();
  if (text === "") return undefined;
  if (!text.startsWith("/")) return { kind: "send", text: line };
  if (text.startsWith("//")) return { kind: "send", text: line.trimStart().slice(1) };
  const [head = "", ...rest] = text.split(/\s+/);
  const name = head.slice(1).toLowerCase();
  const args = rest;
  const argText = text.slice(head.length).trim();
  switch (name) {
    case "join":
    case "j":
      if (args.length === 0) return { kind: "join", target: "" }; // accepts the open room's invitation
      if (args.length !== 1 || !ROOM_REF.test(args[0]!)) return { kind: "error", message: "usage: /join #alias:server or /join !roomid:server" };
      return { kind: "join", target: args[0]! };
    case "create": {
      const encrypted = args.includes("--encrypted") || args.includes("-e");
      const words = args.filter((a) => a !== "--encrypted" && a !== "-e");
      if (words.length === 0) return { kind: "error", message: "usage: /create NAME [--encrypted]" };
      return { kind: "create", name: words.join(" "), encrypted };
    }
    case "invite":
      if (args.length !== 1 || !USER_ID.test(args[0]!)) return { kind: "error", message: "usage: /invite @user:server" };
      return { kind: "invite", userId: args[0]! };
    case "leave":
    case "part":
      return { kind: "leave" };
    case "rooms":
      return { kind: "rooms" };
    case "open":
    case "o":
      if (argText === "") return { kind: "error", message: "usage: /open NUMBER or /open NAME" };
      return { kind: "open", ref: argText };
    case "verify":
      if (args.length !== 2 || !USER_ID.test(args[0]!)) return { kind: "error", message: "usage: /verify @user:server DEVICEID" };
      return { kind: "verify", userId: args[0]!, deviceId: args[1]! };
    case "devices":
      return { kind: "devices" };
    case "yes":
    case "no":
      return { kind: "confirm", match: name === "yes" };
    case "me":
      if (argText === "") return { kind: "error", message: "usage: /me TEXT" };
      return { kind: "emote", text: argText };
    case "help":
    case "?":
      return { kind: "help" };
    case "quit":
    case "exit":
    case "q":
      return { kind: "quit" };
    default:
      return { kind: "error", message: `unknown command /${name} (/help lists them)` };
  }
}

/**
 * The room a `/open` argument names: a 1-based number in the room list, a room ID, or a name
 * (exact, case-insensitive, then the only room whose name contains it).
 */
export function findRoom<R extends { roomId: string; name: string }>(rooms: R[], ref: string): R | { error: string } {
  if (/^\d+$/.test(ref)) {
    const room = rooms[Number(ref) - 1];
    return room ?? { error: `no room number ${ref} (there are ${rooms.length})` };
  }
  const byId = rooms.find((r) => r.roomId === ref);
  if (byId) return byId;
  const wanted = ref.toLowerCase();
  const exact = rooms.filter((r) => r.name.toLowerCase() === wanted);
  if (exact.length === 1) return exact[0]!;
  const partial = rooms.filter((r) => r.name.toLowerCase().includes(wanted));
  if (partial.length === 1) return partial[0]!;
  if (exact.length + partial.length === 0) return { error: `no room matches "${ref}"` };
  return { error: `"${ref}" matches several rooms: use its number` };
}

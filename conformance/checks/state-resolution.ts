// State resolution over federation: the peer forks a room of the target and the target must
// resolve the fork to the spec's answer.
// https://spec.matrix.org/latest/rooms/v2/#state-resolution (v2: power events first, in reverse
// topological power order, each checked against the partly resolved state; then the others in
// mainline order).
//
// The fork, from one point F where bob (peer, power 100) and carol (peer, power 50, enough to ban
// and to set the topic) are joined:
//   A: carol acts (bans a local user, or sets the topic): sent first, accepted on its own;
//   B: bob lowers carol to 0, on F as well (so A is not in B's past and B is not in A's): sent second.
// Bob outranks carol, so B is resolved first and A is then refused against carol's new level: the
// banned user stays joined, the topic stays. A is the later of the two by origin_server_ts, so a
// server resolving by last writer would keep A.
import { type Check, type CheckContext, eventually, fail, show, skip } from "../check.ts";
import type { ClientUser } from "../client.ts";
import type { BuiltEvent, PeerRoom } from "../peer.ts";
import { roomWithPeerUsers, sendPdus } from "../rooms.ts";

/** The room versions resolved by state resolution v1 (rooms/v1): the fork is about v2. */
const STATE_RES_V1 = new Set(["1"]);

interface Fork {
  alice: ClientUser;
  roomId: string;
  room: PeerRoom;
  bob: string;
  carol: string;
}

/** A room where bob (100) and carol (50) of the peer are joined, and everything else needs 50. */
async function forkableRoom(ctx: CheckContext, before?: (alice: ClientUser, roomId: string) => Promise<void>): Promise<Fork> {
  const shared = await roomWithPeerUsers(ctx, ["bob", "carol"], {
    create: { initial_state: [{ type: "m.room.topic", state_key: "", content: { topic: "original" } }] },
    before: async (alice, roomId, [bob, carol]) => {
      await before?.(alice, roomId);
      const levels = (await alice.getState(roomId, "m.room.power_levels")) ?? fail("the room has no power levels");
      await alice.setState(roomId, "m.room.power_levels", "", {
        ...levels,
        users: { ...levels.users, [bob!]: 100, [carol!]: 50 },
        ban: 50,
        state_default: 50,
        events: { ...levels.events, "m.room.topic": 50, "m.room.power_levels": 100 },
      });
    },
  });
  if (STATE_RES_V1.has(shared.room.version)) skip(`the target created a room of version ${shared.room.version}, resolved by state resolution v1`);
  return { alice: shared.alice, roomId: shared.roomId, room: shared.room, bob: shared.peerUsers[0]!, carol: shared.peerUsers[1]! };
}

/** B: bob lowers carol to 0, on the fork point, stamped a second before A. */
function demotion(fork: Fork, forkPoint: string[], ts: number): BuiltEvent {
  const levels = fork.room.stateEvent("m.room.power_levels");
  if (!levels) fail("the peer holds no power levels of the room");
  return fork.room.build({
    type: "m.room.power_levels",
    state_key: "",
    sender: fork.bob,
    content: { ...levels.content, users: { ...levels.content.users, [fork.carol]: 0 } },
    prev_events: forkPoint,
    origin_server_ts: ts,
  });
}

const banAgainstPowerLevels: Check = {
  id: "state-resolution.ban-against-power-levels",
  group: "state-resolution",
  title: "A ban by a user demoted on a concurrent branch (by a higher-ranked user) is undone by state resolution",
  async run(ctx) {
    let dave: ClientUser | undefined;
    const fork = await forkableRoom(ctx, async (_alice, roomId) => {
      dave = await ctx.user("dave");
      await dave.join(roomId);
    });
    const daveId = dave!.userId;
    const forkPoint = [...fork.room.extremities];
    const now = Date.now();
    const ban = fork.room.build({
      type: "m.room.member",
      state_key: daveId,
      sender: fork.carol,
      content: { membership: "ban" },
      prev_events: forkPoint,
      origin_server_ts: now + 1000,
    });
    await sendPdus(ctx, [ban], "carol's ban of a local user");
    await fork.alice.waitForMembership(fork.roomId, daveId, "ban");
    await sendPdus(ctx, [demotion(fork, forkPoint, now)], "bob's demotion of carol, concurrent with the ban");
    const member = await eventually(
      "the ban and the demotion both reaching the room's state",
      async () => {
        const levels = await fork.alice.getState(fork.roomId, "m.room.power_levels");
        if (levels?.users?.[fork.carol] !== 0) return undefined;
        return (await fork.alice.getState(fork.roomId, "m.room.member", daveId)) ?? null;
      },
    );
    if (member?.membership !== "join") {
      fail(`after resolving the fork, ${daveId}'s membership is ${show(member?.membership)}: the spec's answer is join (the demotion outranks the ban, which is then refused)`);
    }
  },
};

const topicAgainstPowerLevels: Check = {
  id: "state-resolution.topic-against-power-levels",
  group: "state-resolution",
  title: "A topic set by a user demoted on a concurrent branch is undone by state resolution",
  async run(ctx) {
    const fork = await forkableRoom(ctx);
    const forkPoint = [...fork.room.extremities];
    const now = Date.now();
    const topic = fork.room.build({
      type: "m.room.topic",
      state_key: "",
      sender: fork.carol,
      content: { topic: "carol's" },
      prev_events: forkPoint,
      origin_server_ts: now + 1000,
    });
    await sendPdus(ctx, [topic], "carol's topic");
    await eventually("carol's topic in the room's state", async () => ((await fork.alice.getState(fork.roomId, "m.room.topic"))?.topic === "carol's" ? true : undefined));
    await sendPdus(ctx, [demotion(fork, forkPoint, now)], "bob's demotion of carol, concurrent with the topic");
    const current = await eventually("the demotion reaching the room's state", async () => {
      const levels = await fork.alice.getState(fork.roomId, "m.room.power_levels");
      if (levels?.users?.[fork.carol] !== 0) return undefined;
      return (await fork.alice.getState(fork.roomId, "m.room.topic")) ?? null;
    });
    if (current?.topic !== "original") {
      fail(`after resolving the fork the topic is ${show(current?.topic)}: the spec's answer is "original" (carol's topic is refused against the resolved power levels)`);
    }
  },
};

export const stateResolutionChecks: readonly Check[] = [banAgainstPowerLevels, topicAgainstPowerLevels];

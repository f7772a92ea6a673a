// Third-party invites: inviting someone by e-mail address (or another third-party identifier)
// through an identity server, and turning the invite into an m.room.member invite once the
// identifier is bound to a Matrix user.
// https://spec.matrix.org/latest/client-server-api/#third-party-invites
// https://spec.matrix.org/latest/server-server-api/#third-party-invites
//
// The identity servers and the other servers of a room are reached through what the homeserver
// wiring plugs in (federation/transport/identity-servers.ts, third-party-invites.ts): this service
// never imports federation.
import type { Logger } from "pino";
import { powerLevelValue } from "../../federation/protocol/auth-rules.ts";
import { isValidUserId, serverNameOf } from "../../federation/protocol/identifiers.ts";
import { keySigningThirdPartyInvite } from "../../federation/protocol/third-party-invite.ts";
import type { Accounts } from "../accounts/accounts.ts";
import { MatrixError, forbidden } from "../http/errors.ts";
import type { Requester } from "../http/route.ts";
import { memberContent } from "./create-room.ts";
import type { EventPersister } from "./persister.ts";
import type { Rooms } from "./rooms.ts";

type JsonObject = Record<string, unknown>;

/** The 3pid form of `/invite`, and an entry of `invite_3pid` in `/createRoom` (invite_3pid.yaml). */
export interface Invite3pid {
  id_server: string;
  id_access_token: string;
  medium: string;
  address: string;
}

/** `signed` of a third-party invite: signed by the identity server (signed_third_party_invite.yaml). */
export interface SignedThirdPartyInvite {
  mxid: string;
  token: string;
  signatures: Record<string, Record<string, string>>;
  [key: string]: unknown;
}

/** What an identity server answered to `store-invite`. */
export interface StoredInvite {
  token: string;
  display_name: string;
  public_keys: Array<{ public_key: string; key_validity_url?: string }>;
}

/** The identity servers clients name (Identity Service API), reached by the homeserver wiring. */
export interface IdentityServers {
  /** `/v2/hash_details` + `/v2/lookup`: the Matrix user bound to a 3pid, if any. */
  lookup(idServer: string, accessToken: string, medium: string, address: string): Promise<string | undefined>;
  /** `/v2/store-invite`. */
  storeInvite(idServer: string, accessToken: string, request: JsonObject): Promise<StoredInvite>;
  /**
   * `key_validity_url?public_key=…`: whether the key is still valid. Throws a MatrixError (502)
   * when the URL cannot be read.
   */
  isKeyValid(keyValidityUrl: string, publicKey: string): Promise<boolean>;
}

/** What third-party invites need from other servers, plugged in by the homeserver wiring. */
export interface ThirdPartyInviteFederation {
  /** `PUT /exchange_third_party_invite/{roomId}` to the first of `servers` that answers. */
  exchange(servers: readonly string[], roomId: string, event: JsonObject): Promise<void>;
  /** Invites a user of another server (their server signs the invite first). */
  inviteRemote(inviter: string, roomId: string, target: string, extraContent: JsonObject): Promise<void>;
}

/** One entry of `invites` in `/3pid/onbind`. */
export interface BoundInvite {
  mxid: string;
  room_id: string;
  sender: string;
  signed: SignedThirdPartyInvite;
}

export interface ThirdPartyInvitesDeps {
  rooms: Rooms;
  persister: EventPersister;
  accounts: Accounts;
  serverName: string;
  logger: Logger;
}

export class ThirdPartyInvites {
  private identityServers: IdentityServers | undefined;
  private federation: ThirdPartyInviteFederation | undefined;

  constructor(private readonly d: ThirdPartyInvitesDeps) {}

  useIdentityServers(identityServers: IdentityServers): void {
    this.identityServers = identityServers;
  }

  federateWith(federation: ThirdPartyInviteFederation): void {
    this.federation = federation;
  }

  private get ids(): IdentityServers {
    if (!this.identityServers) throw new MatrixError(400, "M_UNKNOWN", "This server cannot reach identity servers");
    return this.identityServers;
  }

  /**
   * `POST /rooms/{roomId}/invite` with a 3pid (third_party_membership.yaml), and `invite_3pid` of
   * `/createRoom`: the user bound to it is invited; an unbound 3pid gets an invite stored on the
   * identity server and an m.room.third_party_invite event in the room.
   */
  async invite(requester: Requester, roomId: string, invite: Invite3pid): Promise<void> {
    const inviter = requester.userId;
    const version = await this.d.rooms.requireRoom(roomId);
    // Checked before anything is asked of the identity server (the auth rules check it again).
    if ((await this.d.rooms.currentMembership(roomId, inviter)) !== "join") throw forbidden("You are not in this room");
    const { level, content: powerLevels } = await this.d.rooms.powerLevels(roomId, inviter);
    const inviteLevel = powerLevelValue(version, powerLevels.invite) ?? 0;
    if (level < inviteLevel) throw forbidden(`Your power level ${level} is below the invite level ${inviteLevel}`);

    const bound = await this.ids.lookup(invite.id_server, invite.id_access_token, invite.medium, invite.address);
    if (bound !== undefined) {
      if (!isValidUserId(bound)) throw new MatrixError(502, "M_UNKNOWN", "The identity server answered with an invalid user ID");
      await this.d.rooms.invite(requester, roomId, bound);
      return;
    }
    const stored = await this.ids.storeInvite(invite.id_server, invite.id_access_token, {
      medium: invite.medium,
      address: invite.address,
      room_id: roomId,
      sender: inviter,
      ...(await this.storeInviteExtras(roomId, inviter)),
    });
    // public_key and key_validity_url are kept for older servers: the first of public_keys, or
    // the identity server's usual URL when it gave none (as Synapse does).
    const [first] = stored.public_keys;
    const content: JsonObject = {
      display_name: stored.display_name,
      public_keys: stored.public_keys,
      public_key: first!.public_key,
      key_validity_url: first!.key_validity_url ?? `https://${invite.id_server}/_matrix/identity/v2/pubkey/isvalid`,
    };
    await this.d.rooms.setState(requester, roomId, "m.room.third_party_invite", stored.token, content);
  }

  /** The optional fields of store-invite: what the identity server may put in its e-mail. */
  private async storeInviteExtras(roomId: string, inviter: string): Promise<JsonObject> {
    const extras: JsonObject = {};
    const state = async (type: string, field: string, as: string) => {
      const value = (await this.d.rooms.currentStateContent(roomId, type))?.[field];
      if (typeof value === "string") extras[as] = value;
    };
    await state("m.room.canonical_alias", "alias", "room_alias");
    await state("m.room.avatar", "url", "room_avatar_url");
    await state("m.room.join_rules", "join_rule", "room_join_rules");
    await state("m.room.name", "name", "room_name");
    const roomType = (await this.d.rooms.currentStateContent(roomId, "m.room.create"))?.type;
    if (typeof roomType === "string") extras.room_type = roomType;
    const profile = await this.d.accounts.getProfile(inviter);
    if (profile?.displayname !== undefined) extras.sender_display_name = profile.displayname;
    if (profile?.avatar_url !== undefined) extras.sender_avatar_url = profile.avatar_url;
    return extras;
  }

  /**
   * `/3pid/onbind`: a 3pid was bound to one of our users; each pending invite becomes an
   * m.room.member invite. Every invite is tried; the last failure is what the identity server
   * hears (as Synapse answers).
   */
  async onBind(invites: readonly BoundInvite[]): Promise<void> {
    let failure: unknown;
    for (const invite of invites) {
      try {
        if (serverNameOf(invite.mxid) !== this.d.serverName) throw forbidden(`${invite.mxid} is not a user of this server`);
        if (invite.signed.mxid !== invite.mxid) throw new MatrixError(400, "M_INVALID_PARAM", "signed.mxid is not the invite's mxid");
        await this.exchange(invite.sender, invite.mxid, invite.room_id, invite.signed);
      } catch (err) {
        this.d.logger.info({ err, roomId: invite.room_id, mxid: invite.mxid }, "could not turn a third-party invite into an invite");
        failure = err;
      }
    }
    if (failure !== undefined) throw failure;
  }

  /**
   * Turns the room's m.room.third_party_invite into an invite of `target` (onbind, and `/join`
   * with `third_party_signed`): here when this server is in the room, else by the inviter's server
   * (or the room's) through `/exchange_third_party_invite`.
   */
  async exchange(sender: string, target: string, roomId: string, signed: SignedThirdPartyInvite): Promise<void> {
    // A server in the room issues the invite itself, for an inviter of another server too ("If the
    // invited homeserver is in the room the invite came from, it can auth the event and send it";
    // the others accept it signed by us alone: serversThatMustSign).
    if (await this.d.rooms.isInRoom(roomId)) {
      await this.issue(roomId, sender, target, signed);
      return;
    }
    if (!this.federation) throw new MatrixError(404, "M_NOT_FOUND", "This server is not in that room");
    const servers = [...new Set([serverNameOf(sender), serverNameOf(roomId)])].filter(
      (s): s is string => s !== undefined && s !== this.d.serverName,
    );
    if (servers.length === 0) throw new MatrixError(404, "M_NOT_FOUND", "No server to ask for this room");
    const invite = (await this.d.rooms.roomVersion(roomId)) === undefined
      ? undefined
      : await this.d.rooms.currentStateContent(roomId, "m.room.third_party_invite", signed.token);
    const thirdPartyInvite: JsonObject = { signed };
    if (typeof invite?.display_name === "string") thirdPartyInvite.display_name = invite.display_name;
    await this.federation.exchange(servers, roomId, {
      type: "m.room.member",
      room_id: roomId,
      sender,
      state_key: target,
      content: { membership: "invite", third_party_invite: thirdPartyInvite },
    });
  }

  /**
   * `PUT /exchange_third_party_invite/{roomId}` from `origin`: the invitee's server asks us (the
   * inviter's server, in the room) to issue the invite.
   */
  async receiveExchange(origin: string, roomId: string, sender: string, target: string, signed: SignedThirdPartyInvite): Promise<void> {
    if (serverNameOf(target) !== origin) throw forbidden("A server may only exchange third-party invites for its own users");
    if (serverNameOf(sender) !== this.d.serverName) throw forbidden(`${sender} is not a user of this server`);
    if (!(await this.d.rooms.isInRoom(roomId))) throw new MatrixError(404, "M_NOT_FOUND", "This server is not in that room");
    await this.issue(roomId, sender, target, signed);
  }

  /**
   * Sends the m.room.member invite carrying `third_party_invite` (display name from the room's
   * m.room.third_party_invite, and `signed`), as `sender`. The signature is checked against the
   * invite's public keys and the key that signed against its `key_validity_url` first: this server
   * is the one already in the room ("MUST validate that the public key used for signing is still
   * valid").
   */
  private async issue(roomId: string, sender: string, target: string, signed: SignedThirdPartyInvite): Promise<void> {
    if (!isValidUserId(target)) throw new MatrixError(400, "M_INVALID_PARAM", "Invalid user ID");
    if (signed.mxid !== target) throw forbidden("The third-party invite was signed for another user");
    const invite = await this.d.rooms.currentStateContent(roomId, "m.room.third_party_invite", signed.token);
    if (!invite) throw forbidden("No pending third-party invite in this room matches the token");
    const key = keySigningThirdPartyInvite(invite, signed);
    if (!key) throw forbidden("The third-party invite is not signed by a key of the room's invite");
    if (key.keyValidityUrl !== undefined && !(await this.ids.isKeyValid(key.keyValidityUrl, key.publicKey))) {
      throw forbidden("The identity server says the key that signed the third-party invite is no longer valid");
    }
    const thirdPartyInvite: JsonObject = { signed };
    if (typeof invite.display_name === "string") thirdPartyInvite.display_name = invite.display_name;
    const current = await this.d.rooms.currentMembership(roomId, target);
    if (current === "join" || current === "invite") return;
    if (serverNameOf(target) !== this.d.serverName) {
      if (!this.federation) throw forbidden("Inviting users of other servers needs federation");
      await this.federation.inviteRemote(sender, roomId, target, { third_party_invite: thirdPartyInvite });
      return;
    }
    const profile = await this.d.accounts.getProfile(target);
    await this.d.persister.enqueue(roomId, (view) => {
      const membership = view.membership(target);
      if (membership === "join" || membership === "invite") return [];
      return [
        {
          type: "m.room.member",
          state_key: target,
          sender,
          content: memberContent("invite", profile, { third_party_invite: thirdPartyInvite }),
        },
      ];
    });
  }
}

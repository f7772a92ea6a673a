// Third-party invites between servers, and the identity server's notice that a 3pid was bound.
// https://spec.matrix.org/latest/server-server-api/#third-party-invites (third_party_invite.yaml)
import { z } from "zod";
import { MatrixError } from "../../http/errors.ts";
import { route } from "../../http/route.ts";
import type { SignedThirdPartyInvite } from "../../rooms/third-party-invites.ts";

/** signed_third_party_invite.yaml: mxid, token, and the identity server's signatures. */
export const signedThirdPartyInvite = z.looseObject({
  mxid: z.string().max(255),
  token: z.string().min(1).max(255),
  signatures: z.record(z.string(), z.record(z.string(), z.string())),
});

const userId = z.string().startsWith("@").max(255);
const roomId = z.string().startsWith("!").max(255);

// https://spec.matrix.org/latest/server-server-api/#put_matrixfederationv1exchange_third_party_inviteroomid
export const exchangeThirdPartyInvite = route({
  method: "PUT",
  path: "/_matrix/federation/v1/exchange_third_party_invite/:roomId",
  auth: "server",
  body: z.looseObject({
    type: z.literal("m.room.member"),
    room_id: roomId,
    sender: userId,
    state_key: userId,
    content: z.looseObject({
      membership: z.literal("invite"),
      // display_name is required by the spec, but Synapse sends none (the room's server has it).
      third_party_invite: z.looseObject({ display_name: z.string().optional(), signed: signedThirdPartyInvite }),
    }),
  }),
  async handler({ origin, params, body }, services) {
    if (body.room_id !== params.roomId) throw new MatrixError(400, "M_INVALID_PARAM", "room_id does not match the room in the path");
    await services.federation.acl.assertServerAllowed(params.roomId!, origin);
    const signed = body.content.third_party_invite.signed as SignedThirdPartyInvite;
    await services.thirdPartyInvites.receiveExchange(origin, params.roomId!, body.sender, body.state_key, signed);
    return {};
  },
});

// https://spec.matrix.org/latest/server-server-api/#put_matrixfederationv13pidonbind
// Called by identity servers, so not X-Matrix signed; what it carries is only acted on once the
// identity server's signature in `signed` matches a key of the room's invite. The spec says PUT;
// identity servers (Sydent, sytest's) send POST, so both are accepted.
const onBindBody = z.looseObject({
  medium: z.string(),
  address: z.string(),
  mxid: userId,
  invites: z
    .array(
      z.looseObject({
        medium: z.string().optional(),
        address: z.string().optional(),
        mxid: userId,
        room_id: roomId,
        sender: userId,
        signed: signedThirdPartyInvite,
      }),
    )
    .max(100)
    .default([]),
});

const onBind = (method: "PUT" | "POST") =>
  route({
    method,
    path: "/_matrix/federation/v1/3pid/onbind",
    auth: "none",
    body: onBindBody,
    async handler({ body }, services) {
      await services.thirdPartyInvites.onBind(
        body.invites.map((i) => ({ mxid: i.mxid, room_id: i.room_id, sender: i.sender, signed: i.signed as SignedThirdPartyInvite })),
      );
      return {};
    },
  });

export const federationThirdPartyInviteRoutes = [exchangeThirdPartyInvite, onBind("PUT"), onBind("POST")];

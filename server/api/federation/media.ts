// https://spec.matrix.org/latest/server-server-api/#content-repository
// Our own media for other servers, as multipart/mixed (a JSON metadata part, then the content).
// Only local media: another server's media is never proxied onwards.
import { z } from "zod";
import { route } from "../../http/route.ts";
import { multipartMediaResponse } from "../media-responses.ts";

const MAX_THUMBNAIL_SIDE = 2048;
const side = z.coerce.number().int().min(1).transform((n) => Math.min(n, MAX_THUMBNAIL_SIDE));

export const federationMediaDownload = route({
  method: "GET",
  path: "/_matrix/federation/v1/media/download/:mediaId",
  auth: "server",
  query: z.object({ timeout_ms: z.coerce.number().int().min(0).optional() }),
  async handler({ params, query }, services) {
    const opened = await services.media.download(services.config.server_name, params.mediaId ?? "", {
      timeoutMs: query.timeout_ms ?? 20_000,
      allowRemote: false,
      legacy: false,
    });
    return multipartMediaResponse(opened);
  },
});

export const federationMediaThumbnail = route({
  method: "GET",
  path: "/_matrix/federation/v1/media/thumbnail/:mediaId",
  auth: "server",
  query: z.object({
    width: side,
    height: side,
    method: z.enum(["crop", "scale"]).default("scale"),
    animated: z.enum(["true", "false"]).optional(),
    timeout_ms: z.coerce.number().int().min(0).optional(),
  }),
  async handler({ params, query }, services) {
    const opened = await services.media.thumbnail(
      services.config.server_name,
      params.mediaId ?? "",
      { width: query.width, height: query.height, method: query.method, animated: query.animated === "true" },
      { timeoutMs: query.timeout_ms ?? 20_000, allowRemote: false, legacy: false },
    );
    return multipartMediaResponse(opened, { thumbnail: true });
  },
});

export const federationMediaRoutes = [federationMediaDownload, federationMediaThumbnail];

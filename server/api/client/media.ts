// The content repository, client side.
// https://spec.matrix.org/latest/client-server-api/#content-repository
// Authenticated endpoints under /_matrix/client/v1/media; uploads stay under /_matrix/media (v3 and
// v1/create), and the deprecated unauthenticated /_matrix/media/v3/download|thumbnail|config|preview_url
// are kept for older clients, subject to the "freeze" (`enable_authenticated_media`).
import { Readable } from "node:stream";
import { z } from "zod";
import { MatrixError } from "../../http/errors.ts";
import { type AnyRoute, type HandlerInput, route } from "../../http/route.ts";
import type { ReadOptions } from "../../media/media.ts";
import type { Services } from "../../services.ts";
import { mediaResponse } from "../media-responses.ts";

const bool = z.enum(["true", "false"]).transform((v) => v === "true");
const timeoutMs = z.coerce.number().int().min(0).optional();
const downloadQuery = z.object({ timeout_ms: timeoutMs, allow_remote: bool.optional(), allow_redirect: bool.optional() });
// Sizes beyond this are served as this: the answer would be the same image (never upscaled), and
// a bounded key keeps the thumbnail cache from growing with every size a client can invent.
const MAX_THUMBNAIL_SIDE = 2048;
const side = z.coerce.number().int().min(1).transform((n) => Math.min(n, MAX_THUMBNAIL_SIDE));
const thumbnailQuery = z.object({
  width: side,
  height: side,
  method: z.enum(["crop", "scale"]).default("scale"),
  animated: bool.optional(),
  timeout_ms: timeoutMs,
  allow_remote: bool.optional(),
  allow_redirect: bool.optional(),
});

const DEFAULT_TIMEOUT_MS = 20_000;
// `ts` asks for the preview as of a time; previews are cached for an hour, so it is accepted and unused.
const previewQuery = z.object({ url: z.string().min(1).max(4096), ts: z.coerce.number().int().optional() });

function uploadMeta(c: HandlerInput<"user", undefined, { filename?: string }>["c"], filename: string | undefined) {
  const contentType = c.req.header("content-type")?.trim() || undefined;
  return { contentType: contentType ?? "application/octet-stream", uploadName: filename || undefined };
}

// https://spec.matrix.org/latest/client-server-api/#post_matrixmediav3upload
export const upload = route({
  method: "POST",
  path: "/_matrix/media/v3/upload",
  auth: "user",
  rawBody: true,
  query: z.object({ filename: z.string().max(1024).optional() }),
  async handler({ requester, rawBody, query, c }, services) {
    return services.media.upload(requester.userId, rawBody ?? Readable.from([]), uploadMeta(c, query.filename));
  },
});

// https://spec.matrix.org/latest/client-server-api/#post_matrixmediav1create
export const createMedia = route({
  method: "POST",
  path: "/_matrix/media/v1/create",
  auth: "user",
  async handler({ requester }, services) {
    return services.media.create(requester.userId);
  },
});

// https://spec.matrix.org/latest/client-server-api/#put_matrixmediav3uploadservernamemediaid
export const uploadToCreated = route({
  method: "PUT",
  path: "/_matrix/media/v3/upload/:serverName/:mediaId",
  auth: "user",
  rawBody: true,
  query: z.object({ filename: z.string().max(1024).optional() }),
  async handler({ requester, rawBody, query, params, c }, services) {
    await services.media.uploadTo(requester.userId, params.serverName ?? "", params.mediaId ?? "", rawBody ?? Readable.from([]), uploadMeta(c, query.filename));
    return {};
  },
});

function readOptions(query: { timeout_ms?: number; allow_remote?: boolean }, legacy: boolean): ReadOptions {
  return { timeoutMs: query.timeout_ms ?? DEFAULT_TIMEOUT_MS, allowRemote: query.allow_remote ?? true, legacy };
}

function downloadRoutes(prefix: string, auth: "user" | "none"): AnyRoute[] {
  const legacy = auth === "none";
  const handler = async (
    { params, query }: { params: Record<string, string>; query: z.infer<typeof downloadQuery> },
    services: Services,
  ) => {
    const opened = await services.media.download(params.serverName ?? "", params.mediaId ?? "", readOptions(query, legacy));
    return mediaResponse(opened, { filename: params.fileName, legacy });
  };
  return [
    route({ method: "GET", path: `${prefix}/download/:serverName/:mediaId`, auth, allowGuests: true, query: downloadQuery, handler }),
    route({ method: "GET", path: `${prefix}/download/:serverName/:mediaId/:fileName`, auth, allowGuests: true, query: downloadQuery, handler }),
    route({
      method: "GET",
      path: `${prefix}/thumbnail/:serverName/:mediaId`,
      auth,
      allowGuests: true,
      query: thumbnailQuery,
      async handler({ params, query }, services) {
        const opened = await services.media.thumbnail(
          params.serverName ?? "",
          params.mediaId ?? "",
          { width: query.width, height: query.height, method: query.method, animated: query.animated === true },
          readOptions(query, legacy),
        );
        return mediaResponse(opened, { thumbnail: true, legacy });
      },
    }),
    route({
      method: "GET",
      path: `${prefix}/config`,
      auth: legacy ? "optional" : "user",
      allowGuests: true,
      handler: (_input, services) => services.media.mediaConfig(),
    }),
    route({
      method: "GET",
      path: `${prefix}/preview_url`,
      auth: legacy ? "optional" : "user",
      allowGuests: true,
      query: previewQuery,
      async handler({ requester, query }, services) {
        // Fetching URLs for clients is an SSRF risk: off unless `url_preview_enabled`.
        if (!services.urlPreviews) throw new MatrixError(403, "M_FORBIDDEN", "URL previews are disabled on this server");
        if (!requester) throw new MatrixError(401, "M_MISSING_TOKEN", "URL previews need an access token");
        return services.urlPreviews.preview(query.url, requester.userId);
      },
    }),
  ];
}

export const mediaRoutes: AnyRoute[] = [
  upload,
  createMedia,
  uploadToCreated,
  ...downloadRoutes("/_matrix/client/v1/media", "user"),
  ...downloadRoutes("/_matrix/media/v3", "none"),
  ...downloadRoutes("/_matrix/media/r0", "none"),
];

// Thumbnails with sharp (libvips): decoded off the main thread by libuv's pool, bounded in input
// pixels (no decompression bombs) and in time.
// https://spec.matrix.org/latest/client-server-api/#thumbnails
import type { Readable } from "node:stream";
import sharp, { type Metadata, type Sharp, type SharpOptions } from "sharp";
import { MatrixError } from "../http/errors.ts";

export type ThumbnailMethod = "crop" | "scale";

/** The types we decode. SVG is left out on purpose: rendering it pulls in a whole XML/CSS engine. */
const THUMBNAILABLE = new Set(["image/jpeg", "image/png", "image/gif", "image/webp", "image/apng"]);
const ANIMATABLE = new Set(["image/gif", "image/webp", "image/apng", "image/png"]);

export function canThumbnail(contentType: string | null | undefined): boolean {
  return contentType !== null && contentType !== undefined && THUMBNAILABLE.has(baseType(contentType));
}

export function baseType(contentType: string): string {
  return (contentType.split(";")[0] ?? "").trim().toLowerCase();
}

export interface ThumbnailRequest {
  width: number;
  height: number;
  method: ThumbnailMethod;
  animated: boolean;
}

export type ThumbnailOutcome =
  /** The original is no larger than asked: the spec says serve it as it is. */
  | { kind: "original" }
  | { kind: "thumbnail"; contentType: string; output: Readable };

export interface ThumbnailLimits {
  maxInputPixels: number;
  timeoutSeconds: number;
}

/**
 * The original: a file path when the store keeps it on disk (libvips reads what it needs of the
 * file: the header alone for the dimensions, nothing held in our memory), else a stream, which sharp
 * collects whole before decoding.
 */
export type Original = string | Readable;

/**
 * Plans and starts one thumbnail. `open` gives the original afresh each time it is called (read
 * once for its dimensions, once to resize).
 */
export async function makeThumbnail(
  open: () => Promise<Original>,
  contentType: string,
  request: ThumbnailRequest,
  limits: ThumbnailLimits,
): Promise<ThumbnailOutcome> {
  const type = baseType(contentType);
  const animated = request.animated && ANIMATABLE.has(type);
  let meta: Metadata;
  try {
    meta = await input(await open(), { limitInputPixels: false, failOn: "none" }).metadata();
  } catch {
    throw new MatrixError(400, "M_UNKNOWN", "Cannot generate thumbnails for the requested content");
  }
  const width = meta.width ?? 0;
  const height = meta.pageHeight ?? meta.height ?? 0;
  if (width <= 0 || height <= 0) throw new MatrixError(400, "M_UNKNOWN", "Cannot generate thumbnails for the requested content");
  const frames = animated ? (meta.pages ?? 1) : 1;
  if (width * height * frames > limits.maxInputPixels) {
    throw new MatrixError(413, "M_TOO_LARGE", "Content is too large to thumbnail");
  }
  // Never upscale; an original already within the box is served as it is (a still one, unless
  // animation was asked for).
  const multiPage = (meta.pages ?? 1) > 1;
  if (width <= request.width && height <= request.height && (!multiPage || animated)) return { kind: "original" };
  const image = input(await open(), {
    limitInputPixels: limits.maxInputPixels * frames,
    animated,
    failOn: "none",
  })
    .timeout({ seconds: limits.timeoutSeconds })
    .rotate()
    .resize({
      width: request.width,
      height: request.height,
      // crop: the requested aspect, covering the box; scale: the original aspect, inside the box.
      fit: request.method === "crop" ? "cover" : "inside",
      withoutEnlargement: true,
    });
  let outType: string;
  if (animated && multiPage) {
    image.webp({ quality: 80 });
    outType = "image/webp";
  } else if (type === "image/jpeg") {
    image.jpeg({ quality: 80, mozjpeg: false });
    outType = "image/jpeg";
  } else {
    image.png();
    outType = "image/png";
  }
  return { kind: "thumbnail", contentType: outType, output: image };
}

function input(original: Original, options: SharpOptions): Sharp {
  if (typeof original === "string") return sharp(original, options);
  const image = sharp(options);
  feed(original, image);
  return image;
}

/** Pipes the original into sharp; a read error fails the image instead of going unheard. */
function feed(source: Readable, image: Sharp): void {
  source.on("error", (err) => image.destroy(err));
  image.on("error", () => source.destroy());
  image.on("close", () => source.destroy());
  source.pipe(image);
}

/** True when sharp refused the input for its pixel count. */
export function isPixelLimitError(err: unknown): boolean {
  return err instanceof Error && /pixel limit/i.test(err.message);
}

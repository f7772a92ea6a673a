// Room tags: kept as the `m.tag` room account data, `{"tags": {tag: {order?}}}`, so they stream to
// `/sync` with the rest of the room's account data.
// https://spec.matrix.org/latest/client-server-api/#room-tagging
import { MatrixError } from "../http/errors.ts";
import type { UserData } from "./userdata.ts";

export const TAG_TYPE = "m.tag";
const MAX_TAG_BYTES = 255;

type Tags = Record<string, Record<string, unknown>>;

export class RoomTags {
  /** Edits of one user's tags on one room run one at a time in this process (read, change, write). */
  private readonly locks = new Map<string, Promise<unknown>>();

  constructor(private readonly userData: UserData) {}

  async getTags(userId: string, roomId: string): Promise<Tags> {
    const content = await this.userData.getAccountData(userId, roomId, TAG_TYPE);
    const tags = content?.tags;
    return typeof tags === "object" && tags !== null && !Array.isArray(tags) ? (tags as Tags) : {};
  }

  async setTag(userId: string, roomId: string, tag: string, content: Record<string, unknown>): Promise<void> {
    if (Buffer.byteLength(tag, "utf8") > MAX_TAG_BYTES) throw new MatrixError(400, "M_INVALID_PARAM", "Tag names are at most 255 bytes");
    if (content.order !== undefined && typeof content.order !== "number") {
      throw new MatrixError(400, "M_INVALID_PARAM", "order must be a number");
    }
    await this.edit(userId, roomId, (tags) => ({ ...tags, [tag]: content }));
  }

  async deleteTag(userId: string, roomId: string, tag: string): Promise<void> {
    await this.edit(userId, roomId, (tags) => {
      const { [tag]: _removed, ...rest } = tags;
      return rest;
    });
  }

  private async edit(userId: string, roomId: string, change: (tags: Tags) => Tags): Promise<void> {
    const key = `${userId}\u0000${roomId}`;
    const previous = this.locks.get(key) ?? Promise.resolve();
    const next = previous
      .catch(() => {})
      .then(async () => {
        const tags = change(await this.getTags(userId, roomId));
        await this.userData.setAccountData(userId, roomId, TAG_TYPE, { tags });
      });
    this.locks.set(key, next);
    try {
      await next;
    } finally {
      if (this.locks.get(key) === next) this.locks.delete(key);
    }
  }
}

// https://spec.matrix.org/latest/client-server-api/#post_matrixclientv3search
// data/api/client-server/search.yaml; the RoomEventFilter: definitions/room_event_filter.yaml
import { z } from "zod";
import { route } from "../../http/route.ts";

const strings = z.array(z.string());

const roomEventFilter = z.looseObject({
  limit: z.int().min(0).optional(),
  types: strings.optional(),
  not_types: strings.optional(),
  senders: strings.optional(),
  not_senders: strings.optional(),
  rooms: strings.optional(),
  not_rooms: strings.optional(),
  contains_url: z.boolean().optional(),
  lazy_load_members: z.boolean().optional(),
  include_redundant_members: z.boolean().optional(),
});

const roomEventsCriteria = z.looseObject({
  search_term: z.string(),
  keys: z.array(z.enum(["content.body", "content.name", "content.topic"])).optional(),
  filter: roomEventFilter.optional(),
  order_by: z.enum(["recent", "rank"]).optional(),
  event_context: z
    .looseObject({
      before_limit: z.int().min(0).optional(),
      after_limit: z.int().min(0).optional(),
      include_profile: z.boolean().optional(),
    })
    .optional(),
  include_state: z.boolean().optional(),
  groupings: z
    .looseObject({
      group_by: z.array(z.looseObject({ key: z.enum(["room_id", "sender"]) })).optional(),
    })
    .optional(),
});

export const search = route({
  method: "POST",
  path: "/_matrix/client/v3/search",
  auth: "user",
  query: z.looseObject({ next_batch: z.string().optional() }),
  body: z.looseObject({
    search_categories: z.looseObject({ room_events: roomEventsCriteria.optional() }),
  }),
  async handler({ requester, query, body }, services) {
    const criteria = body.search_categories.room_events;
    // `room_events` is the only category the spec defines: no category asked, none answered.
    if (criteria === undefined) return { search_categories: {} };
    const roomEvents = await services.search.search(requester, {
      searchTerm: criteria.search_term,
      keys: criteria.keys,
      filter: criteria.filter ?? {},
      orderBy: criteria.order_by ?? "rank",
      eventContext: criteria.event_context && {
        beforeLimit: criteria.event_context.before_limit,
        afterLimit: criteria.event_context.after_limit,
        includeProfile: criteria.event_context.include_profile,
      },
      includeState: criteria.include_state ?? false,
      groupBy: (criteria.groupings?.group_by ?? []).map((g) => g.key),
      nextBatch: query.next_batch,
    });
    return { search_categories: { room_events: roomEvents } };
  },
});

export const searchRoutes = [search];

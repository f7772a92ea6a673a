// Synapse's admin API for federation destinations: the outbound queues (federation/transport/sender.ts)
// as synapse-admin and synadm read them, and resetting a destination's backoff.
// https://element-hq.github.io/synapse/latest/usage/administration/admin_api/federation.html
import { z } from "zod";
import { listDestinations } from "../../../federation/transport/sender.ts";
import { notFound } from "../../http/errors.ts";
import { route } from "../../http/route.ts";
import type { Services } from "../../services.ts";
import { auditAdminAction, requireAdmin } from "./admin-auth.ts";

interface Destination {
  destination: string;
  retry_last_ts: number;
  retry_interval: number;
  failure_ts: number | null;
  last_successful_stream_ordering: number | null;
}

const ORDERS = ["destination", "retry_last_ts", "retry_interval", "failure_ts", "last_successful_stream_ordering"] as const;

/**
 * Our queue rows in Synapse's shape. Synapse's `failure_ts` is when the current run of failures
 * began; we keep the last attempt only, so it is that (null when the last attempt succeeded).
 * `last_successful_stream_ordering` has no meaning here (our queue is its own table): null.
 */
async function destinations(services: Services): Promise<Destination[]> {
  const rows = await listDestinations(services.database);
  return rows.map((r) => {
    const failing = (r.failures ?? 0) > 0;
    const lastAttempt = r.last_attempt_ts === null ? 0 : Number(r.last_attempt_ts);
    const retryAt = r.retry_at_ts === null ? 0 : Number(r.retry_at_ts);
    return {
      destination: r.destination,
      retry_last_ts: failing ? lastAttempt : 0,
      retry_interval: failing && retryAt > lastAttempt ? retryAt - lastAttempt : 0,
      failure_ts: failing ? lastAttempt : null,
      last_successful_stream_ordering: null,
    };
  });
}

const intParam = (min: number, max = Number.MAX_SAFE_INTEGER) =>
  z.string().regex(/^\d{1,15}$/, "must be a non-negative integer").transform(Number).pipe(z.number().int().min(min).max(max));

export const listFederationDestinations = route({
  method: "GET",
  path: "/_synapse/admin/v1/federation/destinations",
  auth: "user",
  query: z.looseObject({
    from: intParam(0).optional(),
    limit: intParam(0, 10_000).optional(),
    order_by: z.enum(ORDERS).optional(),
    dir: z.enum(["f", "b"]).optional(),
    destination: z.string().max(255).optional(),
  }),
  async handler({ requester, query }, services) {
    await requireAdmin(requester, services);
    let all = await destinations(services);
    if (query.destination !== undefined) all = all.filter((d) => d.destination.includes(query.destination!));
    const key = query.order_by ?? "destination";
    const sign = query.dir === "b" ? -1 : 1;
    all.sort((a, b) => {
      const x = a[key];
      const y = b[key];
      const c = x === y ? 0 : x === null ? 1 : y === null ? -1 : typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
      return sign * c || a.destination.localeCompare(b.destination);
    });
    const from = query.from ?? 0;
    const limit = query.limit ?? 100;
    const page = all.slice(from, from + limit);
    const response: Record<string, unknown> = { destinations: page, total: all.length };
    if (from + page.length < all.length) response.next_token = String(from + page.length);
    return response;
  },
});

export const getFederationDestination = route({
  method: "GET",
  path: "/_synapse/admin/v1/federation/destinations/:destination",
  auth: "user",
  async handler({ requester, params }, services) {
    await requireAdmin(requester, services);
    const found = (await destinations(services)).find((d) => d.destination === params.destination);
    if (!found) throw notFound("Unknown destination");
    return found;
  },
});

// "Reset the connection timeout for a specific remote server to try and reconnect now."
export const resetFederationConnection = route({
  method: "POST",
  path: "/_synapse/admin/v1/federation/destinations/:destination/reset_connection",
  auth: "user",
  body: z.looseObject({}),
  async handler({ requester, params, request }, services) {
    await requireAdmin(requester, services);
    const destination = params.destination!;
    if (!(await destinations(services)).some((d) => d.destination === destination)) throw notFound("Unknown destination");
    await services.federation.sender.markReachable(destination);
    await auditAdminAction(services, requester, request, "reset_federation_connection", { destination });
    return {};
  },
});

export const synapseFederationAdminRoutes = [listFederationDestinations, getFederationDestination, resetFederationConnection];

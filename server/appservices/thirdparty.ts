// Third-party networks: what bridges (application services listing `protocols`) know about the
// networks they bridge, asked of them for clients.
// https://spec.matrix.org/latest/client-server-api/#third-party-networks
// https://spec.matrix.org/latest/application-service-api/#third-party-networks
//
// A protocol's metadata is asked of every service that lists it, and merged: the fields of the
// first answer, the `instances` of all (each instance with a `network_id` gets an `instance_id`,
// `{service id}|{network id}`, which `/publicRooms`' `third_party_instance_id` names). Metadata
// that came back valid is remembered for an hour per service and protocol (as Synapse does).
// Lookups are asked of the services in parallel and their valid results concatenated; a service
// that fails adds nothing.
import type { Logger } from "pino";
import { MatrixError, notFound } from "../http/errors.ts";
import type { AppServiceQueries } from "./queries.ts";
import type { AppService, AppServiceRegistry } from "./registration.ts";

type JsonObject = Record<string, unknown>;

const METADATA_CACHE_MS = 60 * 60 * 1000;

export type ThirdPartyKind = "user" | "location";

export class ThirdPartyLookups {
  private readonly metadataCache = new Map<string, { info: JsonObject; at: number }>();

  constructor(
    private readonly registry: AppServiceRegistry,
    private readonly queries: AppServiceQueries,
    private readonly logger: Logger,
    private readonly now: () => number,
  ) {}

  /** `GET /thirdparty/protocols`: every protocol some service answered for, merged. */
  async protocols(only?: string): Promise<Record<string, JsonObject>> {
    const byProtocol = new Map<string, JsonObject[]>();
    const asks: Array<Promise<void>> = [];
    for (const service of this.registry.services) {
      for (const protocol of new Set(service.protocols)) {
        if (only !== undefined && protocol !== only) continue;
        if (!byProtocol.has(protocol)) byProtocol.set(protocol, []);
        asks.push(
          this.metadata(service, protocol).then((info) => {
            if (info) byProtocol.get(protocol)!.push(info);
          }),
        );
      }
    }
    await Promise.all(asks);
    const merged: Record<string, JsonObject> = Object.create(null);
    for (const [protocol, infos] of byProtocol) {
      if (infos.length === 0) continue;
      const combined: JsonObject = { ...infos[0]!, instances: infos.flatMap((i) => i.instances as unknown[]) };
      merged[protocol] = combined;
    }
    return merged;
  }

  /** `GET /thirdparty/protocol/{protocol}`: 404 M_NOT_FOUND for a protocol no service answers for. */
  async protocol(protocol: string): Promise<JsonObject> {
    const info = (await this.protocols(protocol))[protocol];
    if (!info) throw notFound("Unknown protocol");
    return info;
  }

  /**
   * `GET /thirdparty/{kind}/{protocol}?fields...`: the portals (locations) or users the services of
   * that protocol find; 404 M_NOT_FOUND when none.
   */
  async lookup(kind: ThirdPartyKind, protocol: string, fields: Array<[string, string]>): Promise<JsonObject[]> {
    const services = this.registry.services.filter((s) => s.url !== null && s.protocols.includes(protocol));
    const p = encodeURIComponent(protocol);
    const results = await this.ask(services, `/_matrix/app/v1/thirdparty/${kind}/${p}`, `/_matrix/app/unstable/thirdparty/${kind}/${p}`, fields, kind);
    if (results.length === 0) throw notFound(kind === "user" ? "No users were found" : "No portal rooms were found");
    return results;
  }

  /**
   * `GET /thirdparty/location?alias=` and `GET /thirdparty/user?userid=`: the reverse lookups, asked
   * of every service that bridges any protocol.
   */
  async reverseLookup(kind: ThirdPartyKind, value: string): Promise<JsonObject[]> {
    const services = this.registry.services.filter((s) => s.url !== null && s.protocols.length > 0);
    const param = kind === "user" ? "userid" : "alias";
    const results = await this.ask(services, `/_matrix/app/v1/thirdparty/${kind}`, `/_matrix/app/unstable/thirdparty/${kind}`, [[param, value]], kind);
    if (results.length === 0) throw notFound(kind === "user" ? "No users were found" : "No portal rooms were found");
    return results;
  }

  private async ask(services: AppService[], v1: string, legacy: string, query: Array<[string, string]>, kind: ThirdPartyKind): Promise<JsonObject[]> {
    const field = kind === "user" ? "userid" : "alias";
    const answers = await Promise.all(
      services.map(async (service) => {
        try {
          const res = await this.queries.get(service, v1, legacy, query);
          if (res.status !== 200 || !Array.isArray(res.json)) return [];
          return (res.json as unknown[]).filter((r): r is JsonObject => isValidResult(r, field));
        } catch (err) {
          this.logger.warn({ appservice: service.id, err: (err as Error).message }, "third-party lookup failed");
          return [];
        }
      }),
    );
    return answers.flat();
  }

  private async metadata(service: AppService, protocol: string): Promise<JsonObject | undefined> {
    if (service.url === null) return undefined;
    const key = `${service.id}\u0000${protocol}`;
    const cached = this.metadataCache.get(key);
    if (cached && this.now() - cached.at < METADATA_CACHE_MS) return cached.info;
    const p = encodeURIComponent(protocol);
    try {
      const res = await this.queries.get(service, `/_matrix/app/v1/thirdparty/protocol/${p}`, `/_matrix/app/unstable/thirdparty/protocol/${p}`);
      const info = res.json;
      if (res.status !== 200 || !isValidMetadata(info)) {
        this.logger.warn({ appservice: service.id, protocol, status: res.status }, "third-party protocol metadata is missing or invalid");
        return undefined;
      }
      const instances = (info.instances as unknown[]).map((instance) => {
        const copy: JsonObject = { ...(instance as JsonObject) };
        if (typeof copy.network_id === "string") copy.instance_id = `${service.id}|${copy.network_id}`;
        return copy;
      });
      const result = { ...info, instances };
      this.metadataCache.set(key, { info: result, at: this.now() });
      return result;
    } catch (err) {
      this.logger.warn({ appservice: service.id, protocol, err: (err as Error).message }, "third-party protocol metadata query failed");
      return undefined;
    }
  }
}

function isObject(v: unknown): v is JsonObject {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function isValidMetadata(info: unknown): info is JsonObject {
  return isObject(info) && Array.isArray(info.instances) && info.instances.every(isObject);
}

/** A result names its protocol, its Matrix ID (`userid` or `alias`) and its `fields` (as Synapse checks). */
function isValidResult(r: unknown, field: string): boolean {
  return isObject(r) && typeof r[field] === "string" && typeof r.protocol === "string" && isObject(r.fields);
}

/** `{service id}|{network id}` → its parts (the `third_party_instance_id` of `/publicRooms`). */
export function parseInstanceId(instanceId: string): { appServiceId: string; networkId: string } {
  const bar = instanceId.indexOf("|");
  if (bar < 0) throw new MatrixError(400, "M_INVALID_PARAM", "third_party_instance_id must be {appservice}|{network}");
  return { appServiceId: instanceId.slice(0, bar), networkId: instanceId.slice(bar + 1) };
}

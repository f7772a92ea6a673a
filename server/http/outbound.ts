// Outbound HTTP to addresses that users choose (push gateways, identity servers, URL previews):
// the operator decides where such requests may go, never the user. A name is judged by the
// addresses it resolves to, at connection time, so DNS cannot smuggle in a loopback or private
// address (and a second lookup cannot swap one in: the connection uses the address judged here).
import { lookup as dnsLookup, type LookupAddress } from "node:dns";
import type { LookupFunction } from "node:net";
import { errors as undiciErrors } from "undici";

/** A DNS lookup for `net.connect` (undici's `connect.lookup`) that only yields allowed addresses. */
export function policyLookup(allowAddress: (address: string) => boolean): LookupFunction {
  return ((hostname: string, options: { all?: boolean }, callback: (...args: unknown[]) => void) => {
    dnsLookup(hostname, { all: true }, (err, addresses: LookupAddress[]) => {
      if (err) return callback(err, options.all ? [] : undefined, undefined);
      const allowed = addresses.filter((a) => allowAddress(a.address));
      if (allowed.length === 0) {
        return callback(Object.assign(new Error(`${hostname} resolves only to addresses this server may not reach`), { code: "EPARLEYBLOCKED" }), options.all ? [] : undefined, undefined);
      }
      if (options.all) return callback(null, allowed);
      const first = allowed[0]!;
      callback(null, first.address, first.family);
    });
  }) as unknown as LookupFunction;
}

/** Why an outbound request failed, in words fit for a log line or an error message (never a body). */
export function describeRequestFailure(err: unknown): string {
  if (err instanceof undiciErrors.ResponseExceededMaxSizeError) return "the answer is too large";
  const e = err as { name?: string; message?: string; code?: string; cause?: { code?: string } };
  if (e.name === "TimeoutError" || err instanceof undiciErrors.ConnectTimeoutError || err instanceof undiciErrors.HeadersTimeoutError) return "timed out";
  return e.cause?.code ?? e.code ?? e.message ?? String(err);
}

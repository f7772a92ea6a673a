// https://spec.matrix.org/latest/server-server-api/#request-authentication
import { describe, expect, it } from "vitest";
import { MatrixError } from "../../server/http/errors.ts";
import { signingKeyFromSeed } from "../protocol/signing.ts";
import { ServerRequestAuthenticator } from "./inbound-auth.ts";
import { xMatrixAuthorization } from "./request-auth.ts";

const peer = signingKeyFromSeed(new Uint8Array(32).fill(11), "ed25519:p");
const impostor = signingKeyFromSeed(new Uint8Array(32).fill(12), "ed25519:p");
const keys = {
  async verifyKey(server: string, keyId: string) {
    return server === "peer.test" && keyId === "ed25519:p" ? peer.publicKey : undefined;
  },
};

function request(opts: { key?: typeof peer; origin?: string; destination?: string; uri?: string; content?: unknown; header?: string }) {
  const uri = opts.uri ?? "/_matrix/federation/v1/send/1";
  const content = "content" in opts ? opts.content : { pdus: [], edus: [] };
  const authorization =
    opts.header ??
    xMatrixAuthorization(
      { method: "PUT", uri, origin: opts.origin ?? "peer.test", destination: opts.destination ?? "us.test", content },
      opts.key ?? peer,
    );
  return { authorization, method: "PUT", rawTarget: uri, content: { pdus: [], edus: [] } };
}

async function refusal(auth: ServerRequestAuthenticator, req: ReturnType<typeof request>) {
  const err = await auth.authenticate(req).then(() => undefined, (e: unknown) => e);
  expect(err).toBeInstanceOf(MatrixError);
  expect(err).toMatchObject({ status: 401, errcode: "M_UNAUTHORIZED" });
  return (err as Error).message;
}

describe("authenticating requests from other servers", () => {
  it("answers the origin of a correctly signed request and reports it reachable", async () => {
    const seen: string[] = [];
    const auth = new ServerRequestAuthenticator(keys, "us.test", (o) => seen.push(o));
    expect(await auth.authenticate(request({}))).toBe("peer.test");
    expect(seen).toEqual(["peer.test"]);
  });

  it("refuses missing, malformed, wrongly signed, unknown-key, other-origin and wrong-destination requests with 401", async () => {
    const seen: string[] = [];
    const auth = new ServerRequestAuthenticator(keys, "us.test", (o) => seen.push(o));
    expect(await refusal(auth, { ...request({}), authorization: undefined as unknown as string })).toMatch(/Missing/);
    expect(await refusal(auth, request({ header: "X-Matrix origin=peer.test" }))).toMatch(/Malformed/);
    expect(await refusal(auth, request({ header: "Bearer abc" }))).toMatch(/Malformed/);
    expect(await refusal(auth, request({ key: impostor }))).toMatch(/signature/);
    expect(await refusal(auth, request({ key: { ...peer, keyId: "ed25519:unknown" } }))).toMatch(/Cannot find the key/);
    // Signed by peer.test's key but claiming to be another server.
    expect(await refusal(auth, request({ origin: "other.test" }))).toMatch(/Cannot find the key|signature/);
    expect(await refusal(auth, request({ destination: "elsewhere.test" }))).toMatch(/meant for elsewhere\.test/);
    // The signature covers the body and the target as received.
    expect(await refusal(auth, request({ content: { pdus: [{}], edus: [] } }))).toMatch(/signature/);
    expect(await refusal(auth, { ...request({}), rawTarget: "/_matrix/federation/v1/send/2" })).toMatch(/signature/);
    expect(await refusal(auth, { ...request({}), method: "POST" })).toMatch(/signature/);
    expect(await refusal(auth, request({ origin: "us.test" }))).toMatch(/this server/);

    expect(seen).toEqual([]);
  });

  it("answers 400 for an origin that is not a valid server name (a non-numeric port)", async () => {
    const auth = new ServerRequestAuthenticator(keys, "us.test");
    const err = await auth.authenticate(request({ origin: "localhost:http" })).then(() => undefined, (e: unknown) => e);
    expect(err).toMatchObject({ status: 400, errcode: "M_UNAUTHORIZED" });
  });
});

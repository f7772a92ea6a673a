import { describe, expect, it } from "vitest";
import { AppServiceConfigError, AppServiceRegistry, claimsUserExclusively, isInterestedInAlias, isInterestedInUser, loadAppServices, parseRegistration } from "./registration.ts";

const irc = `
id: "IRC Bridge"
url: "http://127.0.0.1:1234/"
as_token: "as-irc"
hs_token: "hs-irc"
sender_localpart: "_irc_bot"
namespaces:
  users:
    - exclusive: true
      regex: "@_irc_bridge_.*"
  aliases:
    - exclusive: false
      regex: "#_irc_bridge_.*"
  rooms: []
protocols: [irc]
`;

describe("application-service registrations", () => {
  it("reads the spec's example registration", () => {
    const s = parseRegistration(irc, "irc.yaml", "example.org");
    expect(s).toMatchObject({ id: "IRC Bridge", url: "http://127.0.0.1:1234", senderUserId: "@_irc_bot:example.org", rateLimited: true, protocols: ["irc"], receiveEphemeral: false });
    expect(isInterestedInUser(s, "@_irc_bridge_alice:example.org")).toBe(true);
    expect(isInterestedInUser(s, "@_irc_bot:example.org")).toBe(true);
    expect(isInterestedInUser(s, "@alice:example.org")).toBe(false);
    // Anchored at the start: the namespace does not match in the middle of an ID.
    expect(isInterestedInUser(s, "@x_@_irc_bridge_:example.org")).toBe(false);
    expect(claimsUserExclusively(s, "@_irc_bridge_bob:example.org")).toBe(true);
    expect(isInterestedInAlias(s, "#_irc_bridge_chan:example.org")).toBe(true);
  });

  it("takes url: null, a numeric id, missing namespaces and the ephemeral switches", () => {
    const s = parseRegistration("id: 7\nurl: null\nas_token: a\nhs_token: h\nsender_localpart: bot\nnamespaces: {}\nreceive_ephemeral: true\n", "x.yaml", "hs");
    expect(s).toMatchObject({ id: "7", url: null, receiveEphemeral: true, namespaces: { users: [], aliases: [], rooms: [] } });
  });

  it("refuses broken registrations with the file and the field named", () => {
    expect(() => parseRegistration("id: x\n", "a.yaml", "hs")).toThrow(/a\.yaml: not an application-service registration: .*as_token/);
    expect(() => parseRegistration("id: [\n", "b.yaml", "hs")).toThrow(/b\.yaml: not valid YAML/);
    expect(() => parseRegistration(irc.replace('"@_irc_bridge_.*"', '"@(unclosed"'), "c.yaml", "hs")).toThrow(/c\.yaml: namespaces\.users has an invalid regex/);
    expect(() => parseRegistration(irc.replace('"http://127.0.0.1:1234/"', '"ftp://x"'), "d.yaml", "hs")).toThrow(AppServiceConfigError);
  });

  it("refuses two services with the same id or token, or one whose bot another claims", () => {
    const other = irc.replace('"IRC Bridge"', "other").replace("as-irc", "as-2").replace("hs-irc", "hs-2").replace("_irc_bot", "other_bot").replace('"@_irc_bridge_.*"', '"@_other_.*"');
    const files: Record<string, string> = { irc, other, sameId: other.replace("id: other", 'id: "IRC Bridge"'), sameToken: other.replace("as-2", "as-irc") };
    const read = (f: string) => files[f]!;
    expect(loadAppServices(["irc", "other"], "hs", read)).toHaveLength(2);
    expect(() => loadAppServices(["irc", "sameId"], "hs", read)).toThrow(/sameId: the same id as irc/);
    expect(() => loadAppServices(["irc", "sameToken"], "hs", read)).toThrow(/sameToken: the same token as irc/);
    files.claimed = other.replace("other_bot", "_irc_bridge_x");
    expect(() => loadAppServices(["irc", "claimed"], "hs", read)).toThrow(/claimed: its sender .* lies in an exclusive user namespace of irc/);
    expect(() => loadAppServices(["/nonexistent/reg.yaml"], "hs")).toThrow(/cannot read .*ENOENT/);
  });

  it("refuses two services whose exclusive namespaces overlap, naming a user both claim; shared ones may overlap", () => {
    const other = irc.replace('"IRC Bridge"', "other").replace("as-irc", "as-2").replace("hs-irc", "hs-2").replace("_irc_bot", "other_bot");
    const files: Record<string, string> = {
      irc,
      // The same exclusive regex.
      same: other,
      // A narrower exclusive regex inside irc's.
      narrower: other.replace('"@_irc_bridge_.*"', '"@_irc_bridge_(alice|bob):hs"'),
      // Overlapping only in a name neither regex spells out.
      crossing: other.replace('"@_irc_bridge_.*"', '"@[_a-z]+bridge_[0-9]+"'),
      // Disjoint from irc's: a different prefix.
      disjoint: other.replace('"@_irc_bridge_.*"', '"@_irc_bridgf_.*"'),
      // The same regex, but shared by this one: allowed.
      shared: other.replace("exclusive: true", "exclusive: false"),
      // Exclusive aliases overlapping irc's shared aliases: allowed.
      aliases: other.replace('"@_irc_bridge_.*"', '"@_x_.*"').replace("exclusive: false", "exclusive: true"),
    };
    const read = (f: string) => files[f]!;
    expect(() => loadAppServices(["irc", "same"], "hs", read)).toThrow(/same: its exclusive users namespace "@_irc_bridge_\.\*" overlaps "@_irc_bridge_\.\*" of irc \(both claim "@_irc_bridge_"\)/);
    expect(() => loadAppServices(["irc", "narrower"], "hs", read)).toThrow(/narrower: .* \(both claim "@_irc_bridge_bob:hs"\)/);
    expect(() => loadAppServices(["crossing", "irc"], "hs", read)).toThrow(/irc: .* overlaps .* of crossing \(both claim "@_irc_bridge_0"\)/);
    expect(loadAppServices(["irc", "disjoint"], "hs", read)).toHaveLength(2);
    expect(loadAppServices(["irc", "shared"], "hs", read)).toHaveLength(2);
    expect(loadAppServices(["irc", "aliases"], "hs", read)).toHaveLength(2);
  });

  it("finds a service by token and the owner of an exclusive namespace", () => {
    const registry = new AppServiceRegistry(loadAppServices(["irc"], "example.org", () => irc));
    expect(registry.byAsToken("as-irc")?.id).toBe("IRC Bridge");
    expect(registry.byAsToken("hs-irc")).toBeUndefined();
    expect(registry.exclusiveOwnerOfUser("@_irc_bridge_z:example.org")?.id).toBe("IRC Bridge");
    expect(registry.exclusiveOwnerOfUser("@z:example.org")).toBeUndefined();
    expect(registry.exclusiveOwnerOfAlias("#_irc_bridge_c:example.org")).toBeUndefined(); // not exclusive
    expect(registry.interestedInAlias("#_irc_bridge_c:example.org").map((s) => s.id)).toEqual(["IRC Bridge"]);
  });
});

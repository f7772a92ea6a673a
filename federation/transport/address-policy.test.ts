import { describe, expect, it } from "vitest";
import { isAllowedFederationAddress } from "./address-policy.ts";

describe("federation address policy (SSRF)", () => {
  it("refuses loopback, private, link-local, shared, documentation, benchmarking, multicast and unspecified IPv4", () => {
    for (const a of [
      "127.0.0.1", "127.255.255.254", "10.1.2.3", "172.16.0.1", "172.31.255.255", "192.168.1.1", "100.64.0.1",
      "169.254.169.254", "192.0.0.8", "192.0.2.1", "198.18.0.1", "198.51.100.7", "203.0.113.9", "224.0.0.251",
      "239.255.255.250", "0.0.0.0", "240.0.0.1", "255.255.255.255",
    ]) {
      expect(isAllowedFederationAddress(a), a).toBe(false);
    }
  });

  it("refuses the same ranges in IPv6, including IPv4-mapped and IPv4-compatible forms", () => {
    for (const a of [
      "::1", "::", "0:0:0:0:0:0:0:1", "fe80::1", "fc00::1", "fd12:3456::1", "2001:db8::1", "ff02::1", "fec0::1",
      "::ffff:127.0.0.1", "::FFFF:10.0.0.1", "0:0:0:0:0:ffff:7f00:1", "::127.0.0.1", "::ffff:0:7f00:1", "[::1]",
    ]) {
      expect(isAllowedFederationAddress(a), a).toBe(false);
    }
  });

  it("allows public addresses", () => {
    for (const a of ["1.1.1.1", "8.8.8.8", "172.32.0.1", "192.169.0.1", "100.128.0.1", "2606:4700::1111", "::ffff:1.1.1.1", "[2a00:1450::1]"]) {
      expect(isAllowedFederationAddress(a), a).toBe(true);
    }
  });

  it("refuses anything that is not an IP literal", () => {
    for (const a of ["localhost", "example.org", "", "127.1", "0x7f000001", "1.2.3.4:80"]) {
      expect(isAllowedFederationAddress(a), a).toBe(false);
    }
  });
});

// Which addresses federation may connect to. By default never loopback, private, link-local,
// shared (CGNAT), documentation, benchmarking or multicast addresses: a server name or its
// .well-known/SRV answer must not be able to point our outbound requests at the operator's own
// network (SSRF). The list is Synapse's default `ip_range_blacklist` plus the unspecified
// addresses; names pinned by the operator (`federation_hosts`) are the explicit exception, and are
// decided by the caller before asking here.
//
// Checked on the resolved address, after DNS, so a name cannot smuggle a private address in.

import { BlockList, isIP } from "node:net";

const BLOCKED_V4 = [
  "0.0.0.0/8",
  "10.0.0.0/8",
  "100.64.0.0/10",
  "127.0.0.0/8",
  "169.254.0.0/16",
  "172.16.0.0/12",
  "192.0.0.0/24",
  "192.0.2.0/24",
  "192.88.99.0/24",
  "192.168.0.0/16",
  "198.18.0.0/15",
  "198.51.100.0/24",
  "203.0.113.0/24",
  "224.0.0.0/4",
  "240.0.0.0/4",
];
// ::/96 holds the unspecified address, loopback and the deprecated IPv4-compatible form
// (::127.0.0.1); ::ffff:0:0:0/96 the IPv4-translated form. IPv4-mapped addresses (::ffff:a.b.c.d)
// are matched against the IPv4 ranges by node's BlockList itself.
const BLOCKED_V6 = ["::/96", "::ffff:0:0:0/96", "fe80::/10", "fc00::/7", "2001:db8::/32", "ff00::/8", "fec0::/10"];

function blockList(ranges: { v4: string[]; v6: string[] }): BlockList {
  const list = new BlockList();
  for (const r of ranges.v4) {
    const [net, prefix] = r.split("/") as [string, string];
    list.addSubnet(net, Number(prefix), "ipv4");
  }
  for (const r of ranges.v6) {
    const [net, prefix] = r.split("/") as [string, string];
    list.addSubnet(net, Number(prefix), "ipv6");
  }
  return list;
}

const DEFAULT_BLOCKED = blockList({ v4: BLOCKED_V4, v6: BLOCKED_V6 });

/**
 * Whether federation may connect to this resolved IP address. Anything that is not a valid IP
 * literal is refused. IPv4-mapped IPv6 addresses (::ffff:127.0.0.1) are judged by the IPv4
 * address they carry.
 */
export function isAllowedFederationAddress(address: string, blocked: BlockList = DEFAULT_BLOCKED): boolean {
  const bare = address.startsWith("[") && address.endsWith("]") ? address.slice(1, -1) : address;
  const family = isIP(bare);
  if (family === 0) return false;
  return !blocked.check(bare, family === 4 ? "ipv4" : "ipv6");
}

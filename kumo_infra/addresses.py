"""How much of the internet a list of source networks may cover.

``network.ssh_cidrs``, ``network.api_cidrs`` (and the deprecated ``admin_cidrs``) and
``kumomta.relay_cidrs`` decide who reaches SSH, the HTTP API and the relay: the cloud
firewall (netplan) and the policy (relay_hosts) are built from these lists after they
passed the rules here. Refusing only ``/0`` is not enough: ``[0.0.0.0/1, 128.0.0.0/1]``
is the whole IPv4 internet too. So, for every entry and for each list as a whole:

* private and unique-local ranges (10/8, 172.16/12, 192.168/16, 100.64/10, fc00::/7)
  are accepted at their natural sizes: they are the deployer's own networks;
* any other entry is public: IPv4 /16 or narrower, IPv6 /32 or narrower (a /32 is a
  whole provider allocation);
* the public entries of one list together cover at most 256 of those largest
  blocks per family: 2^24 IPv4 addresses, 2^104 IPv6 addresses (the union is
  counted, so overlapping entries cannot hide coverage);
* IPv6 ranges that embed IPv4 addresses (mapped, translated, compatible, NAT64,
  6to4, Teredo) are refused: ``::ffff:0:0/96`` is all of IPv4 behind one /96;
* addresses that are never the source of an operator's traffic (loopback,
  link-local, multicast, "this network", reserved) are refused;
* host bits must be clear (KumoMTA's CidrSet refuses them) and no entry may repeat
  or lie inside another.

Every refusal says which rule and what to write instead. Pure functions, no pydantic.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Union

from .errors import shown

Net = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

_CIDR_CHARS = re.compile(r"[0-9A-Fa-f.:]+(/[0-9]{1,3})?", re.ASCII)

PRIVATE: tuple[Net, ...] = tuple(ipaddress.ip_network(n) for n in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",  # RFC 1918
    "100.64.0.0/10",  # RFC 6598 shared address space (carrier-grade NAT, some cloud-internal ranges)
    "fc00::/7",  # RFC 4193 unique local
))

# The narrowest public prefix length a single entry may have, and what one list may
# cover in all: 256 of those blocks per family.
LARGEST_PUBLIC_PREFIX = {4: 16, 6: 32}
PUBLIC_BUDGET = {4: 256 * 2 ** (32 - 16), 6: 256 * 2 ** (128 - 32)}  # 2^24 and 2^104 addresses

# IPv6 ranges whose addresses carry an IPv4 address: a rule for them would let IPv4
# space in under an IPv6 entry that the IPv4 limits never see.
EMBEDS_IPV4: dict[Net, str] = {ipaddress.ip_network(n): why for n, why in (
    ("::ffff:0:0/96", "IPv4-mapped IPv6 (RFC 4291)"),
    ("::ffff:0:0:0/96", "IPv4-translated IPv6 (RFC 2765)"),
    ("64:ff9b::/96", "the NAT64 well-known prefix (RFC 6052)"),
    ("64:ff9b:1::/48", "local-use NAT64 (RFC 8215)"),
    ("2002::/16", "6to4 (RFC 3056)"),
    ("2001::/32", "Teredo (RFC 4380)"),
)}

# Never the source address of an operator's connection to a cloud machine.
NEVER_A_SOURCE: dict[Net, str] = {ipaddress.ip_network(n): why for n, why in (
    ("127.0.0.0/8", "loopback: it never crosses the cloud firewall, and the node itself may always relay"),
    ("::1/128", "loopback: it never crosses the cloud firewall, and the node itself may always relay"),
    ("::/128", "the unspecified address"),
    ("::/96", "IPv4-compatible IPv6 (deprecated by RFC 4291; it embeds IPv4 addresses)"),
    ("0.0.0.0/8", "'this network' (RFC 1122), never a source address"),
    ("169.254.0.0/16", "link-local: it never crosses a router"),
    ("fe80::/10", "link-local: it never crosses a router"),
    ("224.0.0.0/4", "multicast, never a source address"),
    ("ff00::/8", "multicast, never a source address"),
    ("240.0.0.0/4", "reserved (RFC 1112) and broadcast, never a source address"),
)}


def is_private(net: Net) -> bool:
    """Inside one of the private or unique-local ranges (accepted at any size within it)."""
    return any(net.version == p.version and net.subnet_of(p) for p in PRIVATE)  # type: ignore[arg-type]


def parse_entry(value: str, world_refusal: str) -> Net:
    """One list entry, or ValueError saying which rule it breaks and what to write instead.

    ``world_refusal`` says why an entry covering every address is refused, in the
    list's own terms (management ports, open relay).
    """
    # Digits, hex, dots, colons and one slash only: ipaddress also takes an IPv6 scope id
    # ("fe80::1%anything"), which would carry any text into the firewall and the policy.
    if not _CIDR_CHARS.fullmatch(value):
        raise ValueError(f"{shown(value)} is not a CIDR block (like 203.0.113.0/24 or 2001:db8:1::/48)")
    try:
        net = ipaddress.ip_network(value, strict=False)
        address = ipaddress.ip_interface(value).ip
    except ValueError:
        raise ValueError(f"{shown(value)} is not a CIDR block (like 203.0.113.0/24 or 2001:db8:1::/48)") from None
    if net.prefixlen == 0:
        raise ValueError(f"{shown(value)} is refused: {world_refusal}")
    if address != net.network_address:
        raise ValueError(f"{shown(value)} has host bits set (KumoMTA's CidrSet refuses it): write {net} for the "
                         f"whole network, or {address}/{address.max_prefixlen} for that one address")
    if is_private(net):
        return net
    # A range wholly inside a special one is named as such; a wider one is first of all too wide.
    for special, why in {**EMBEDS_IPV4, **NEVER_A_SOURCE}.items():
        if net.version == special.version and net.subnet_of(special):  # type: ignore[arg-type]
            raise ValueError(_special_refusal(value, special, why))
    smallest = LARGEST_PUBLIC_PREFIX[net.version]
    if net.prefixlen < smallest:
        raise ValueError(
            f"{shown(value)} covers {net.num_addresses:,} public addresses: a public IPv{net.version} entry must be "
            f"/{smallest} or narrower; list the operators' own networks (private ranges such as 10.0.0.0/8 and "
            "fc00::/7 are accepted at their full size)")
    for special, why in {**EMBEDS_IPV4, **NEVER_A_SOURCE}.items():
        if net.version == special.version and net.overlaps(special):  # type: ignore[arg-type]
            raise ValueError(_special_refusal(value, special, why))
    return net


def _special_refusal(value: str, special: Net, why: str) -> str:
    if special in EMBEDS_IPV4:
        return (f"{shown(value)} overlaps {special}, {why}, whose addresses embed IPv4 addresses; write the IPv4 "
                "network itself (like 203.0.113.0/24)")
    return f"{shown(value)} overlaps {special}, {why}; remove it"


def list_problem(values: list[str]) -> str | None:
    """What is wrong with a list of already parsed entries as a whole, or None."""
    nets = [ipaddress.ip_network(v) for v in values]
    for j, later in enumerate(nets):
        for i, earlier in enumerate(nets[:j]):
            if later.version != earlier.version or not later.overlaps(earlier):  # type: ignore[arg-type]
                continue
            if later == earlier:
                return f"entries [{i}] and [{j}] are both {earlier}: list it once"
            inner, outer = sorted(((i, earlier), (j, later)), key=lambda e: -e[1].prefixlen)
            return (f"entry [{inner[0]}] {inner[1]} lies inside entry [{outer[0]}] {outer[1]}: remove the narrower "
                    "one")
    for version, budget in PUBLIC_BUDGET.items():
        covered = public_coverage([n for n in nets if n.version == version])
        if covered > budget:
            return (f"the public IPv{version} entries cover {covered:,} addresses in all, more than the {budget:,} "
                    f"(256 /{LARGEST_PUBLIC_PREFIX[version]} blocks) one list may open; list only the operators' own "
                    "networks")
    return None


def public_coverage(nets: list[Net]) -> int:
    """Addresses covered by the union of the public (not private) networks of one family."""
    public = [n for n in nets if not is_private(n)]
    return sum(n.num_addresses for n in ipaddress.collapse_addresses(public))  # type: ignore[arg-type]

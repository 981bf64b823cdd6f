"""How much of the internet ssh_cidrs, api_cidrs, admin_cidrs and relay_cidrs may open.

Each rule by example (the message says which rule and what to write instead), the
exit code through the real command, and properties over generated lists checked
against an oracle written here from the rules' definitions, not from the code.
"""

from __future__ import annotations

import ipaddress
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kumo_infra.config import ROOT, parse_deployment
from kumo_infra.errors import ConfigError
from tests.conftest import deployment

REPO = Path(__file__).resolve().parent.parent
LISTS = {
    "network.ssh_cidrs": lambda v: deployment(network={"ssh_cidrs": v}),
    "network.api_cidrs": lambda v: deployment(network={"api_cidrs": v}),
    "network.admin_cidrs": lambda v: deployment(network={"admin_cidrs": v}),
    "kumomta.relay_cidrs": lambda v: deployment(kumomta={"relay_cidrs": v}),
}


def problems(raw) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        parse_deployment(raw)
    return {p.path: p.message for p in info.value.problems}


def accepted(key: str, values: list[str]) -> list[str]:
    d = parse_deployment(LISTS[key](values))
    section, name = key.split(".")
    return getattr(getattr(d, section), name)


# -- each rule, by example --------------------------------------------------------------------

REFUSED = [
    # (entries, the key suffix named, fragments of the message: the rule and what to write)
    (["0.0.0.0/0"], "[0]", ["refused"]),
    (["::/0"], "[0]", ["refused"]),
    (["0.0.0.0/1", "128.0.0.0/1"], "[0]", ["public IPv4 entry must be /16 or narrower", "operators' own networks"]),
    (["203.0.0.0/15"], "[0]", ["/16 or narrower"]),
    (["2000::/3"], "[0]", ["public IPv6 entry must be /32 or narrower"]),
    (["2001:db8::/31"], "[0]", ["/32 or narrower"]),
    (["::ffff:0:0/96"], "[0]", ["IPv4-mapped", "write the IPv4 network itself"]),
    (["::ffff:203.0.113.0/120"], "[0]", ["IPv4-mapped", "write the IPv4 network itself"]),
    (["64:ff9b::/96"], "[0]", ["NAT64", "write the IPv4 network itself"]),
    (["64:ff9b::cb00:7100/120"], "[0]", ["NAT64"]),
    (["64:ff9b:1::/48"], "[0]", ["NAT64"]),
    (["2002:cb00:7100::/40"], "[0]", ["6to4", "write the IPv4 network itself"]),
    (["2002::/16"], "[0]", ["6to4"]),
    (["2001::/32"], "[0]", ["Teredo"]),
    (["::ffff:0:0:0/96"], "[0]", ["IPv4-translated"]),
    (["203.0.113.5/24"], "[0]", ["host bits set", "write 203.0.113.0/24", "or 203.0.113.5/32"]),
    (["2001:db8::1/48"], "[0]", ["host bits set", "write 2001:db8::/48", "2001:db8::1/128"]),
    (["10.0.0.1/8"], "[0]", ["host bits set", "10.0.0.0/8"]),
    (["127.0.0.0/8"], "[0]", ["loopback", "remove it"]),
    (["::1/128"], "[0]", ["loopback"]),
    (["169.254.169.254/32"], "[0]", ["link-local"]),
    (["fe80::/64"], "[0]", ["link-local"]),
    (["224.0.0.0/8"], "[0]", ["multicast"]),
    (["240.0.0.0/16"], "[0]", ["reserved"]),
    (["0.0.0.0/16"], "[0]", ["this network"]),
    (["2001:db8::1%eth0/128"], "[0]", ["not a CIDR block"]),  # an IPv6 scope id carries any text
    (["203.0.113.0/24", "203.0.113.0/24"], "", ["entries [0] and [1] are both 203.0.113.0/24", "list it once"]),
    (["2001:db8::/48", "2001:DB8:0::/48"], "", ["are both 2001:db8::/48"]),  # equal once written canonically
    (["203.0.113.0/255.255.255.0"], "[0]", ["not a CIDR block"]),  # prefix lengths only
    (["203.0.113.128/25", "203.0.113.0/24"], "", ["entry [0] 203.0.113.128/25 lies inside entry [1]",
                                                   "remove the narrower one"]),
    (["10.0.0.0/8", "10.1.0.0/16"], "", ["lies inside"]),
    ([f"{a}.{b}.0.0/16" for a in (20, 21) for b in range(129)], "",
     ["cover 16,908,288 addresses", "more than the 16,777,216 (256 /16 blocks)"]),
    ([f"2001:{a:x}::/32" for a in range(0x100, 0x201)], "", ["IPv6 entries cover", "(256 /32 blocks)"]),
]


@pytest.mark.parametrize("key", sorted(LISTS))
@pytest.mark.parametrize("entries, suffix, fragments", REFUSED)
def test_each_rule_is_refused_saying_which_and_what_to_write(key, entries, suffix, fragments):
    found = problems(LISTS[key](entries))
    path = f"{ROOT}.{key}{suffix}"
    assert path in found, found
    for fragment in fragments:
        assert fragment in found[path], found[path]


@pytest.mark.parametrize("key", sorted(LISTS))
@pytest.mark.parametrize("entries", [
    ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7"],  # natural sizes
    ["10.1.0.0/16", "172.20.0.0/14", "fd12:3456::/32"],
    ["203.0.113.0/24", "198.51.100.7/32", "2001:db8::/32", "2001:db9:1::/48"],
    ["203.0.0.0/16"],  # the widest public IPv4 entry
    [f"{a}.{b}.0.0/16" for a in (20, 21) for b in range(128)],  # exactly 2^24 public addresses
    [f"2001:{a:x}::/32" for a in range(0x100, 0x200)],  # exactly 256 /32s
])
def test_private_ranges_at_natural_size_and_bounded_public_lists_are_accepted(key, entries):
    assert accepted(key, entries) == [str(ipaddress.ip_network(e)) for e in entries]


def test_entries_are_written_in_canonical_form():
    assert accepted("network.ssh_cidrs", ["2001:DB8:0:0::/48", "203.0.113.7"]) == ["2001:db8::/48",
                                                                                  "203.0.113.7/32"]


def test_admin_cidrs_alone_fills_both_lists():
    d = parse_deployment(deployment(network={"admin_cidrs": ["203.0.113.0/24"]}))
    assert d.network.ssh_cidrs == d.network.api_cidrs == ["203.0.113.0/24"]


@pytest.mark.parametrize("other", ["ssh_cidrs", "api_cidrs"])
@pytest.mark.parametrize("other_value", [["198.51.100.0/24"], []])
def test_admin_cidrs_beside_a_new_key_is_refused_naming_admin_cidrs(other, other_value):
    found = problems(deployment(network={"admin_cidrs": ["203.0.113.0/24"], other: other_value}))
    message = found[f"{ROOT}.network.admin_cidrs"]
    assert "move its entries into them and remove admin_cidrs" in message


# -- the real command -----------------------------------------------------------------------------

def kumo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kumo_infra.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


def stack_file(tmp_path: Path, raw: dict) -> Path:
    f = tmp_path / "Pulumi.cidrs.yaml"
    f.write_text(yaml.safe_dump({"config": {ROOT: raw}}))
    return f


@pytest.mark.parametrize("key, entries, named, fragment", [
    ("kumomta.relay_cidrs", ["0.0.0.0/1", "128.0.0.0/1"], "kumomta.relay_cidrs[0]", "/16 or narrower"),
    ("network.ssh_cidrs", ["2000::/3"], "network.ssh_cidrs[0]", "/32 or narrower"),
    ("network.api_cidrs", ["::ffff:0:0/96"], "network.api_cidrs[0]", "IPv4-mapped"),
    ("network.admin_cidrs", ["203.0.113.0/24", "203.0.113.0/24"], "network.admin_cidrs:", "list it once"),
    ("network.ssh_cidrs", ["198.51.100.9/24"], "network.ssh_cidrs[0]", "write 198.51.100.0/24"),
    ("kumomta.relay_cidrs", [f"{a}.{b}.0.0/16" for a in (20, 21) for b in range(129)], "kumomta.relay_cidrs:",
     "more than the 16,777,216"),
])
def test_the_real_command_exits_2_naming_the_list(tmp_path, key, entries, named, fragment):
    result = kumo("validate", "--config", str(stack_file(tmp_path, LISTS[key](entries))))
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    assert f"{ROOT}.{named}" in result.stderr and fragment in result.stderr, result.stderr


def test_admin_cidrs_alone_warns_naming_the_new_keys(tmp_path):
    raw = deployment(network={"admin_cidrs": ["203.0.113.0/24"]})
    result = kumo("validate", "--config", str(stack_file(tmp_path, raw)))
    assert result.returncode == 0, result.stderr
    warning = next(line for line in result.stderr.splitlines() if "admin_cidrs is deprecated" in line)
    assert "network.ssh_cidrs" in warning and "network.api_cidrs" in warning


def test_admin_cidrs_with_ssh_cidrs_exits_2_naming_admin_cidrs(tmp_path):
    raw = deployment(network={"admin_cidrs": ["203.0.113.0/24"], "ssh_cidrs": ["203.0.113.0/24"]})
    result = kumo("validate", "--config", str(stack_file(tmp_path, raw)))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{ROOT}.network.admin_cidrs:" in result.stderr


# -- properties, against an oracle written from the rules ---------------------------------------

PRIVATE = [ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10",
                                             "fc00::/7")]
EMBEDS_IPV4 = [ipaddress.ip_network(n) for n in ("::ffff:0:0/96", "64:ff9b::/96", "2002::/16", "::ffff:0:0:0/96",
                                                 "64:ff9b:1::/48", "2001::/32", "::/96")]


def oracle_private(net) -> bool:
    return any(net.version == p.version and net.subnet_of(p) for p in PRIVATE)


def check_accepted_list(values: list[str]) -> None:
    nets = [ipaddress.ip_network(v) for v in values]  # strict: raises if host bits were let through
    assert len(set(nets)) == len(nets)
    for i, a in enumerate(nets):
        for b in nets[i + 1:]:
            assert a.version != b.version or not a.overlaps(b), (a, b)
    for net in nets:
        if oracle_private(net):
            continue
        assert net.prefixlen >= {4: 16, 6: 32}[net.version], net
        assert not any(net.version == e.version and net.overlaps(e) for e in EMBEDS_IPV4), net
        assert not net.is_loopback and not net.is_multicast and not net.is_link_local, net
    for version, budget in ((4, 2 ** 24), (6, 2 ** 104)):
        public = [n for n in nets if n.version == version and not oracle_private(n)]
        covered = sum(n.num_addresses for n in ipaddress.collapse_addresses(public))
        assert covered <= budget, (version, covered)


def _network(version: int, address: int, prefix: int, host_bits: bool) -> str:
    cls = ipaddress.IPv4Network if version == 4 else ipaddress.IPv6Network
    net = cls((address, prefix), strict=False)
    if host_bits and prefix < net.max_prefixlen:
        return f"{net.network_address + 1}/{prefix}"
    return str(net)


def _near(ranges: list[str], version: int) -> st.SearchStrategy[int]:
    """Addresses inside ranges the rules treat specially, so generated lists hit every rule."""
    nets = [ipaddress.ip_network(r) for r in ranges if ipaddress.ip_network(r).version == version]
    return st.sampled_from(nets).flatmap(
        lambda n: st.integers(int(n.network_address), int(n.broadcast_address)))


SPECIAL = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
           "203.0.113.0/24", "fc00::/7", "::ffff:0:0/96", "64:ff9b::/96", "2002::/16", "2001:db8::/32", "fe80::/10"]
v4 = st.builds(_network, st.just(4), st.one_of(st.integers(0, 2 ** 32 - 1), _near(SPECIAL, 4)),
               st.one_of(st.integers(0, 32), st.integers(14, 32)), st.just(False))
v6 = st.builds(_network, st.just(6), st.one_of(st.integers(0, 2 ** 128 - 1), _near(SPECIAL, 6)),
               st.one_of(st.integers(0, 128), st.integers(28, 128)), st.just(False))
with_host_bits = st.builds(_network, st.sampled_from([4, 6]), st.integers(0, 2 ** 32 - 1), st.integers(1, 31),
                           st.just(True))
many_16s = st.lists(st.integers(0, 2 ** 16 - 1), min_size=200, max_size=300).map(
    lambda xs: [f"{ipaddress.IPv4Address(x << 16)}/16" for x in xs])
# Entries the rules should mostly accept, so both outcomes are frequent.
plausible_v4 = st.builds(_network, st.just(4), st.integers(1 << 24, (224 << 24) - 1), st.integers(16, 32),
                         st.just(False))
plausible_v6 = st.builds(_network, st.just(6), st.integers(0x2400 << 112, (0x2c00 << 112) - 1), st.integers(32, 128),
                         st.just(False))
plausible_private = st.sampled_from(PRIVATE).flatmap(lambda n: st.builds(
    _network, st.just(n.version), st.integers(int(n.network_address), int(n.broadcast_address)),
    st.integers(n.prefixlen, n.max_prefixlen), st.just(False)))
plausible = st.one_of(plausible_v4, plausible_v6, plausible_private)
entry_lists = st.one_of(st.lists(plausible, max_size=4),
                        st.lists(st.one_of(plausible, v4, v6, with_host_bits), max_size=4), many_16s)


def test_every_accepted_list_keeps_within_the_rules():
    seen: Counter[str] = Counter()

    @settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(key=st.sampled_from(sorted(LISTS)), entries=entry_lists)
    def check(key, entries):
        try:
            values = accepted(key, entries)
        except ConfigError as exc:
            # Refused: always at this list (an entry or the whole), never by surprise elsewhere.
            assert all(p.path.startswith(f"{ROOT}.{key}") for p in exc.problems), exc.problems
            seen["refused"] += 1
            return
        check_accepted_list(values)
        seen["accepted"] += 1
        seen["accepted-public"] += any(not oracle_private(ipaddress.ip_network(v)) for v in values)

    check()
    # Both outcomes really happened, often: the property was not vacuous.
    assert seen["refused"] >= 50 and seen["accepted"] >= 50 and seen["accepted-public"] >= 20, seen


def test_the_budget_counts_the_union_of_public_slash16s():
    seen: Counter[str] = Counter()

    # Distinct global /16 blocks: accepted exactly when there are at most 256 of them.
    @settings(max_examples=60, deadline=None)
    @given(blocks=st.lists(st.integers(1 << 8, 223 << 8), min_size=230, max_size=290, unique=True))
    def check(blocks):
        nets = [ipaddress.IPv4Network((b << 16, 16)) for b in blocks]
        entries = [str(n) for n in nets if n.is_global and not oracle_private(n)]
        try:
            accepted("network.ssh_cidrs", entries)
        except ConfigError as exc:
            assert len(entries) > 256 and "more than the 16,777,216" in str(exc), exc
            seen["refused"] += 1
            return
        assert len(entries) <= 256
        seen["accepted"] += 1

    check()
    assert seen["refused"] >= 10 and seen["accepted"] >= 10, seen

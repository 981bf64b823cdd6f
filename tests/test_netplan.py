"""The shared firewall plan: properties that hold for every deployment."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kumo_infra.bootstrap.policy import API_TLS_PORT, HTTP_PORT
from kumo_infra.config import parse_deployment
from kumo_infra.netplan import (SUPPORT_EGRESS, firewall_rules, is_world, management_ports, never_opened_ports,
                                smtp_egress_ports)
from kumo_infra.ports import TSA_PORT
from tests.conftest import deployment

# Source lists the config accepts (issue 8, point 3): private ranges at any size inside them, public
# IPv4 no wider than /16, public IPv6 no wider than /32, never an IPv4-mapped block, and no entry
# overlapping another.
def _inside(base: str, offset: int, prefix: int) -> str:
    net = ipaddress.ip_network(base)
    return str(ipaddress.ip_network(f"{net[offset % net.num_addresses]}/{prefix}", strict=False))


private_v4 = st.builds(
    _inside,
    st.sampled_from(["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]), st.integers(0, 2**24 - 1),
    st.integers(16, 32))
public_v4 = st.builds(
    lambda a, p: str(ipaddress.ip_network(f"{ipaddress.IPv4Address(a)}/{p}", strict=False)),
    st.integers(int(ipaddress.IPv4Address("11.0.0.0")), int(ipaddress.IPv4Address("99.255.255.255"))),
    st.integers(16, 32))
public_v6 = st.builds(
    lambda a, p: str(ipaddress.ip_network(f"{ipaddress.IPv6Address(a)}/{p}", strict=False)),
    st.integers(int(ipaddress.IPv6Address("2001:db8::")), int(ipaddress.IPv6Address("2001:db8:ffff::"))),
    st.integers(32, 128))


def disjoint(cidrs: list[str]) -> list[str]:
    """The entries that overlap no earlier one (the config refuses overlapping entries)."""
    kept: list[ipaddress._BaseNetwork] = []
    for c in cidrs:
        net = ipaddress.ip_network(c)
        if not any(net.version == k.version and net.overlaps(k) for k in kept):
            kept.append(net)
    return [str(n) for n in kept]


source_lists = st.lists(st.one_of(private_v4, public_v4, public_v6), max_size=4).map(disjoint)

ATTEMPTS = {"ran": 0}


def ingress(rules):
    return [r for r in rules if r.direction == "ingress"]


@settings(max_examples=200, deadline=None)
@given(ssh=source_lists, api=source_lists, submission=st.lists(st.sampled_from([587, 2525]), unique=True))
def test_management_ports_open_only_to_their_own_lists(ssh, api, submission):
    d = parse_deployment(deployment(network={"ssh_cidrs": ssh, "api_cidrs": api, "submission_ports": submission}))
    ATTEMPTS["ran"] += 1
    rules = ingress(firewall_rules(d))
    by_port: dict[int, list] = {}
    for rule in rules:
        by_port.setdefault(rule.port, []).append(rule)
        if rule.port in management_ports():
            assert not any(is_world(c) for c in rule.cidrs), rule
    # SSH exactly from ssh_cidrs, the API's TLS listener exactly from api_cidrs, each only when listed.
    assert [set(r.cidrs) for r in by_port.get(22, [])] == ([set(d.network.ssh_cidrs)] if ssh else [])
    assert [set(r.cidrs) for r in by_port.get(API_TLS_PORT, [])] == ([set(d.network.api_cidrs)] if api else [])
    # The plain-HTTP listener is never opened, to anyone.
    assert not set(by_port) & never_opened_ports()
    assert set(by_port) == {25, *submission} | ({22} if ssh else set()) | ({API_TLS_PORT} if api else set())
    names = [r.name for r in firewall_rules(d)]
    assert len(names) == len(set(names))
    for rule in rules:
        assert set(rule.ipv4) | set(rule.ipv6) == set(rule.cidrs)
        assert all(ipaddress.ip_network(c).version == 4 for c in rule.ipv4)
        assert all(ipaddress.ip_network(c).version == 6 for c in rule.ipv6)


def test_the_property_really_ran():
    # Runs after the property in file order: it saw its examples, none skipped.
    if ATTEMPTS["ran"] == 0:
        pytest.skip("run together with test_management_ports_open_only_to_their_own_lists")
    assert ATTEMPTS["ran"] >= 100


def test_management_ports_name_the_api_listeners_and_the_tsa_daemon():
    assert management_ports() == {22, API_TLS_PORT, HTTP_PORT, TSA_PORT} == {22, 8443, 8000, 8008}
    assert never_opened_ports() == {8000, 8008}


FLEET = {"nodes": 3, "network": {"ssh_cidrs": ["198.51.100.0/24"], "api_cidrs": ["203.0.113.0/24"]}}


def test_a_fleet_opens_tsa_and_xfer_between_its_own_nodes_only():
    rules = firewall_rules(parse_deployment(deployment(**FLEET)))
    between = {(r.direction, r.port) for r in rules if r.from_nodes}
    assert between == {("ingress", TSA_PORT), ("ingress", HTTP_PORT), ("egress", TSA_PORT), ("egress", HTTP_PORT)}
    for rule in rules:
        if rule.from_nodes:
            assert rule.cidrs == () and rule.families() == [], rule  # no network: the nodes themselves
        if rule.direction == "ingress" and rule.port in never_opened_ports():
            assert rule.from_nodes, rule
    names = [r.name for r in rules]
    assert len(names) == len(set(names))


def test_a_single_node_opens_neither_and_needs_no_redis():
    rules = firewall_rules(parse_deployment(deployment(**{**FLEET, "nodes": 1})))
    assert not [r for r in rules if r.from_nodes or r.port in never_opened_ports() or r.name == "out-redis"]


def test_a_fleet_reaches_its_own_redis_on_the_urls_port_and_a_managed_one_is_the_targets():
    external = parse_deployment(deployment(**FLEET, fleet={"redis_url": "rediss://redis.example.net:6380/1"}))
    (out,) = [r for r in firewall_rules(external) if r.name == "out-redis"]
    assert (out.direction, out.protocol, out.port) == ("egress", "tcp", 6380)
    default_port = parse_deployment(deployment(**FLEET, fleet={"redis_url": "redis://10.1.2.3"}))
    assert [r.port for r in firewall_rules(default_port) if r.name == "out-redis"] == [6379]
    managed = parse_deployment(deployment(**FLEET))
    assert not [r for r in firewall_rules(managed) if r.name == "out-redis"]


def test_deprecated_admin_cidrs_open_both_and_never_8000():
    d = parse_deployment(deployment(network={"admin_cidrs": ["203.0.113.0/24"]}))
    ports = {r.port: r.cidrs for r in ingress(firewall_rules(d))}
    assert ports == {25: ("0.0.0.0/0", "::/0"), 22: ("203.0.113.0/24",), 8443: ("203.0.113.0/24",)}


def test_ssh_only_means_no_api_rule_and_api_only_no_ssh_rule():
    ssh_only = parse_deployment(deployment(network={"ssh_cidrs": ["198.51.100.0/24"]}))
    assert {r.port for r in ingress(firewall_rules(ssh_only))} == {25, 22}
    api_only = parse_deployment(deployment(network={"api_cidrs": ["198.51.100.0/24"]}))
    assert {r.port for r in ingress(firewall_rules(api_only))} == {25, 8443}


RELAY = {"host": "smtp.relay.example.net", "username": "kumo"}


def egress(d: dict) -> set[tuple[str, int]]:
    return {(r.protocol, r.port) for r in firewall_rules(parse_deployment(d)) if r.direction == "egress"}


SUPPORT = {(proto, port) for _, proto, port in SUPPORT_EGRESS}


def test_support_egress_is_dns_ntp_and_web():
    assert SUPPORT == {("udp", 53), ("tcp", 53), ("udp", 123), ("tcp", 80), ("tcp", 443)}


def test_direct_mode_sends_on_25_only():
    assert egress(deployment(port25={"outbound": "direct"})) == {("tcp", 25)} | SUPPORT


@pytest.mark.parametrize("port", [587, 2525])
def test_relay_mode_opens_the_relays_port_and_not_25(port):
    d = deployment(port25={"outbound": "relay", "relay": {**RELAY, "port": port}})
    assert egress(d) == {("tcp", port)} | SUPPORT
    assert smtp_egress_ports(parse_deployment(d)) == [port]


# Every (cloud, mode) the config accepts; direct is refused where the cloud blocks 25 for good (test_config).
ACCEPTED = [("aws", "direct"), ("aws", "relay"), ("aws", "auto"), ("azure-ea", "direct"), ("azure-ea", "relay"),
            ("azure-ea", "auto"), ("azure-payg", "relay"), ("azure-payg", "auto"), ("gcp", "relay"), ("gcp", "auto")]
CLOUDS = {
    "aws": {},
    "azure-ea": {"cloud": "azure", "region": "westeurope", "os": "ubuntu22", "azure": {"subscription_type": "ea"}},
    "azure-payg": {"cloud": "azure", "region": "westeurope", "os": "ubuntu22",
                   "azure": {"subscription_type": "pay-as-you-go"}},
    "gcp": {"cloud": "gcp", "region": "us-central1", "gcp": {"project": "my-project"}},
}


@settings(max_examples=60, deadline=None)
@given(case=st.sampled_from(ACCEPTED), port=st.sampled_from([587, 2525]))
def test_egress_follows_the_delivery_mode_and_never_465(case, port):
    cloud, mode = case
    raw = deployment(**CLOUDS[cloud], port25={"outbound": mode, "relay": {**RELAY, "port": port}})
    d = parse_deployment(raw)
    smtp = {p for proto, p in egress(raw) if (proto, p) not in SUPPORT}
    assert smtp == ({port} if d.outbound_mode == "relay" else {25})
    assert 465 not in {p for _, p in egress(raw)}

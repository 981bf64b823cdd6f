"""The shared firewall plan: properties that hold for every deployment."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from kumo_infra.config import parse_deployment
from kumo_infra.netplan import firewall_rules, is_world, management_ports
from tests.conftest import deployment

cidrs = st.builds(
    lambda a, p: str(ipaddress.ip_network(f"{ipaddress.IPv4Address(a)}/{p}", strict=False)),
    st.integers(0, 2**32 - 1), st.integers(1, 32))
cidrs6 = st.builds(
    lambda a, p: str(ipaddress.ip_network(f"{ipaddress.IPv6Address(a)}/{p}", strict=False)),
    st.integers(0, 2**128 - 1), st.integers(1, 128))


@settings(max_examples=200, deadline=None)
@given(admin=st.lists(st.one_of(cidrs, cidrs6), max_size=4),
       submission=st.lists(st.sampled_from([587, 2525]), unique=True))
def test_management_ports_only_ever_open_to_admin_networks(admin, submission):
    d = parse_deployment(deployment(network={"admin_cidrs": admin, "submission_ports": submission}))
    rules = firewall_rules(d)
    ingress = [r for r in rules if r.direction == "ingress"]
    for rule in ingress:
        if rule.port in management_ports():
            assert admin, "management port opened without admin networks"
            assert set(rule.cidrs) == set(d.network.admin_cidrs)
            assert not any(is_world(c) for c in rule.cidrs)
    opened = {r.port for r in ingress}
    assert 25 in opened
    assert opened - {25} - management_ports() == set(submission)
    assert bool(admin) == (management_ports() <= opened)
    names = [r.name for r in rules]
    assert len(names) == len(set(names))
    for rule in rules:
        assert set(rule.ipv4) | set(rule.ipv6) == set(rule.cidrs)
        assert all(ipaddress.ip_network(c).version == 4 for c in rule.ipv4)
        assert all(ipaddress.ip_network(c).version == 6 for c in rule.ipv6)


def test_egress_covers_the_mail_path():
    rules = firewall_rules(parse_deployment(deployment()))
    egress = {(r.protocol, r.port) for r in rules if r.direction == "egress"}
    assert {("tcp", 25), ("tcp", 587), ("tcp", 465), ("udp", 53), ("tcp", 443)} <= egress

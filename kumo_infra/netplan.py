"""Firewall and addressing plan shared by every cloud: pure data, no Pulumi.

Each cloud module turns these rules into its own resources (security group,
NSG, VPC firewall), so the three clouds open exactly the same ports to exactly
the same sources, and the safety rules are tested once, here.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from .bootstrap.policy import HTTP_PORT
from .config import Deployment

WORLD_V4 = "0.0.0.0/0"
WORLD_V6 = "::/0"
WORLD = {"v4": WORLD_V4, "v6": WORLD_V6}
SSH_PORT = 22
# Ports the mail path needs on the way out: SMTP to MX hosts and smarthosts, DNS,
# NTP, and HTTP(S) for packages and the cloud's own APIs (secrets, metadata).
EGRESS: tuple[tuple[str, str, int], ...] = (
    ("smtp", "tcp", 25),
    ("submissions", "tcp", 465),
    ("submission", "tcp", 587),
    ("smtp-alt", "tcp", 2525),
    ("dns-udp", "udp", 53),
    ("dns-tcp", "tcp", 53),
    ("ntp", "udp", 123),
    ("http", "tcp", 80),
    ("https", "tcp", 443),
)


@dataclass(frozen=True)
class Rule:
    name: str  # stable, short: used in resource and rule names
    direction: str  # "ingress" | "egress"
    protocol: str  # "tcp" | "udp"
    port: int
    cidrs: tuple[str, ...]
    description: str

    @property
    def ipv4(self) -> tuple[str, ...]:
        return tuple(c for c in self.cidrs if ipaddress.ip_network(c).version == 4)

    @property
    def ipv6(self) -> tuple[str, ...]:
        return tuple(c for c in self.cidrs if ipaddress.ip_network(c).version == 6)

    def families(self) -> list[tuple[str, tuple[str, ...]]]:
        """("v4", cidrs) and ("v6", cidrs), each only when it has any: clouds refuse mixed-family rules."""
        return [(family, cidrs) for family, cidrs in (("v4", self.ipv4), ("v6", self.ipv6)) if cidrs]


def firewall_rules(deployment: Deployment) -> list[Rule]:
    """Every rule a node's firewall needs. Management ports only ever from admin_cidrs."""
    admin = tuple(deployment.network.admin_cidrs)
    world = (WORLD_V4, WORLD_V6)
    rules = [Rule("smtp", "ingress", "tcp", 25, world, "SMTP from the internet")]
    for port in deployment.network.submission_ports:
        rules.append(Rule(f"submission-{port}", "ingress", "tcp", port, world, f"client submission on {port}"))
    if admin:
        rules.append(Rule("ssh", "ingress", "tcp", SSH_PORT, admin, "SSH from admin networks"))
        rules.append(Rule("kumo-api", "ingress", "tcp", HTTP_PORT, admin, "KumoMTA HTTP API from admin networks"))
    for name, protocol, port in EGRESS:
        rules.append(Rule(f"out-{name}", "egress", protocol, port, world, f"outbound {name}"))
    return rules


def management_ports() -> set[int]:
    return {SSH_PORT, HTTP_PORT}


def is_world(cidr: str) -> bool:
    return ipaddress.ip_network(cidr).prefixlen == 0

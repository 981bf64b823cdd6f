"""Firewall and addressing plan shared by every cloud: pure data, no Pulumi.

Each cloud module turns these rules into its own resources (security group,
NSG, VPC firewall), so the three clouds open exactly the same ports to exactly
the same sources, and the safety rules are tested once, here. The sources are
the validated lists of the config (``network.ssh_cidrs``, ``network.api_cidrs``),
the same lists the policy is built from.

A fleet (several nodes, kumo_infra.fleet) adds rules whose source or destination is the
deployment's own nodes (``Rule.from_nodes``): every node publishes to every node's TSA daemon
and transfers queues to a peer's HTTP listener, and nothing else may reach either port.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from . import fleet
from .config import Deployment
from .ports import API_TLS_PORT, HTTP_PORT, MANAGEMENT_PORTS, SSH_PORT, TSA_PORT

WORLD_V4 = "0.0.0.0/0"
WORLD_V6 = "::/0"
WORLD = {"v4": WORLD_V4, "v6": WORLD_V6}
SMTP_PORT = 25
# Rule names (the part of each firewall resource's name) of the outbound SMTP ports: unchanged
# from earlier releases, so an existing stack keeps its rules and only loses the ones it no longer
# needs. 465 has none: it is implicit TLS, which the config refuses for the relay.
SMTP_EGRESS_NAMES = {25: "smtp", 587: "submission", 2525: "smtp-alt"}
# What every node needs on the way out besides mail: DNS, NTP, and HTTP(S) for packages and the
# cloud's own APIs (secrets, metadata where it is not link-local).
SUPPORT_EGRESS: tuple[tuple[str, str, int], ...] = (
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
    # Only between the deployment's own nodes (a fleet's TSA and xfer traffic), whatever their addresses:
    # the source of an ingress rule, the destination of an egress one. Each cloud translates it to its
    # own "these machines" (AWS the security group itself; GCP the nodes' network tag as an ingress
    # source, the nodes' subnet range as an egress destination, which GCP takes as ranges only; Azure
    # an application security group of the nodes); ``cidrs`` is then empty, so ``families()`` is too.
    from_nodes: bool = False

    @property
    def ipv4(self) -> tuple[str, ...]:
        return tuple(c for c in self.cidrs if ipaddress.ip_network(c).version == 4)

    @property
    def ipv6(self) -> tuple[str, ...]:
        return tuple(c for c in self.cidrs if ipaddress.ip_network(c).version == 6)

    def families(self) -> list[tuple[str, tuple[str, ...]]]:
        """("v4", cidrs) and ("v6", cidrs), each only when it has any: clouds refuse mixed-family rules."""
        return [(family, cidrs) for family, cidrs in (("v4", self.ipv4), ("v6", self.ipv6)) if cidrs]


def smtp_egress_ports(deployment: Deployment) -> list[int]:
    """The one outbound SMTP port the delivery mode uses: 25 to MX hosts (direct), or the
    smarthost's port (relay). Never 465: nothing delivers over implicit TLS (the config refuses it)."""
    if deployment.outbound_mode == "relay":
        relay = deployment.port25.relay
        assert relay is not None  # Deployment.check refuses relay mode without a relay
        return [relay.port]
    return [SMTP_PORT]


def firewall_rules(deployment: Deployment) -> list[Rule]:
    """Every rule a node's firewall needs. SSH only from ssh_cidrs, the API's TLS listener only from
    api_cidrs, each absent when its list is empty; the plain HTTP listener and the TSA daemon only
    from the deployment's own nodes, and only in a fleet (fleet_rules)."""
    world = (WORLD_V4, WORLD_V6)
    net = deployment.network
    rules = [Rule("smtp", "ingress", "tcp", SMTP_PORT, world, "SMTP from the internet")]
    for port in net.submission_ports:
        rules.append(Rule(f"submission-{port}", "ingress", "tcp", port, world, f"client submission on {port}"))
    if net.ssh_cidrs:
        rules.append(Rule("ssh", "ingress", "tcp", SSH_PORT, tuple(net.ssh_cidrs), "SSH from the operators' networks"))
    if net.api_cidrs:
        # Named as before (when it was the plain port): an existing stack's rules are updated, not renamed.
        rules.append(Rule("kumo-api", "ingress", "tcp", API_TLS_PORT, tuple(net.api_cidrs),
                          "KumoMTA HTTP API (TLS, basic auth) from the API clients' networks"))
    for port in smtp_egress_ports(deployment):
        name = SMTP_EGRESS_NAMES[port]
        rules.append(Rule(f"out-{name}", "egress", "tcp", port, world, f"outbound {name}"))
    for name, protocol, port in SUPPORT_EGRESS:
        rules.append(Rule(f"out-{name}", "egress", protocol, port, world, f"outbound {name}"))
    return rules + fleet_rules(deployment)


# The ports a fleet's nodes open to each other and to nothing else, by rule name: each node's TSA
# daemon (every node publishes its delivery results to all of them) and its HTTP listener (where a
# peer's queues arrive when a node is drained: fleet.xfer_target_url).
NODES_ONLY = {"tsa": (TSA_PORT, "the TSA daemon"), "xfer": (HTTP_PORT, "the KumoMTA HTTP listener (queue transfers)")}


def fleet_rules(deployment: Deployment) -> list[Rule]:
    """What the nodes of a fleet send each other, both ways, and the way out to an existing Redis
    (fleet.redis_url: any address, like the smarthost's). None for one node. The way to a managed
    Redis is the target's own (it knows the service's port and address), with the Redis."""
    if not fleet.is_fleet(deployment):
        return []
    rules = []
    for name, (port, what) in NODES_ONLY.items():
        rules.append(Rule(name, "ingress", "tcp", port, (), f"{what} from the deployment's own nodes", from_nodes=True))
        rules.append(Rule(f"out-{name}", "egress", "tcp", port, (), f"{what} of the deployment's own nodes",
                          from_nodes=True))
    port = fleet.external_redis_port(deployment)
    if port is not None:
        rules.append(Rule("out-redis", "egress", "tcp", port, (WORLD_V4, WORLD_V6), "outbound to fleet.redis_url"))
    return rules


def management_ports() -> set[int]:
    """Ports that must never be open to the world (ports.MANAGEMENT_PORTS, what the guardrails check):
    SSH, the API's TLS listener, the plain HTTP listener and the TSA daemon."""
    return set(MANAGEMENT_PORTS)


def never_opened_ports() -> set[int]:
    """Ports no rule ever opens to a network (any CIDR): the plain HTTP listener and the TSA daemon,
    which only a fleet opens, and only to its own nodes (Rule.from_nodes)."""
    return {port for port, _ in NODES_ONLY.values()}


def is_world(cidr: str) -> bool:
    return ipaddress.ip_network(cidr).prefixlen == 0

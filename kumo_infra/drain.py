"""``kumo-infra drain``: empty one node before it is replaced, without losing a message.

INTERFACE STUB (issue 12): implemented by the drain work; ``kumo_infra.roll`` calls ``drain_node``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional


@dataclass(frozen=True)
class NodeApi:
    """How the operator's machine reaches one node's KumoMTA HTTP API (issue 6: TLS + basic auth)."""

    name: str  # node1, node2 ... (the node output's name)
    base_url: str  # https://203.0.113.7:8443
    username: str
    password: str = field(repr=False)
    ca_pem: Optional[str]  # the API certificate to trust (self-signed, generated per deployment)
    private_ip: Optional[str]  # what peers transfer to (fleet.xfer_target_url)


@dataclass(frozen=True)
class DrainResult:
    drained: bool  # True only when the node holds no message
    remaining: int  # messages still on the node when the command stopped
    moved_to: Optional[str]  # the peer's xfer URL, when transferred
    message: str  # one line for the operator


def drain_node(node: NodeApi, *, to: Optional[NodeApi] = None, timeout_s: float,
               progress: Optional[Callable[[int, int], Any]] = None) -> DrainResult:
    """Stop ``node`` accepting mail, move its queues to ``to`` (or wait for them to empty), until it
    holds nothing or ``timeout_s`` passes (then it accepts mail again)."""
    raise NotImplementedError("issue 12: drain")


def register(sub: Any) -> None:
    """The ``drain`` command under kumo-infra's subcommands."""


def run(args: Any) -> int:
    raise NotImplementedError("issue 12: drain")

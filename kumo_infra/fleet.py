"""What the nodes of a deployment share: throttles in Redis, the TSA daemons, the list of peers.

Pure (no Pulumi). A deployment of one node shares nothing and needs no Redis; with several, every
per-node limit would multiply with the node count, so the throttles live in one Redis (KumoMTA's
``kumo.configure_redis_throttles``, crates/kumo-server-common/src/lib.rs) and every node publishes
its delivery results to every node's TSA daemon.

The peers' private addresses exist only once the machines do, so they reach the nodes the way the
API certificate does: stored in the target's secret store after the machines are created
(``NodeSecret.machines_wait`` False) and fetched at boot (kumo-bootstrap's secrets step retries
until it is there), then read by the policy and by tsa_init.lua.
"""

from __future__ import annotations

import urllib.parse
from typing import TYPE_CHECKING, Literal, Optional

from .ports import HTTP_PORT
from .secretspec import SECRETS_DIR

if TYPE_CHECKING:
    from .config import Deployment

# The Redis URL the nodes connect to, credentials included (rediss://:TOKEN@host:port): a secret,
# fetched at boot like the others and read by the policy with kumo.secrets.load.
REDIS_URL = "redis-url"
REDIS_URL_PATH = f"{SECRETS_DIR}/{REDIS_URL}"
# The nodes' private addresses, a JSON list of strings in node order (node1 first). Not secret,
# but it travels with the secrets because it exists only after the machines do.
FLEET_PEERS = "fleet-peers"
FLEET_PEERS_PATH = f"{SECRETS_DIR}/{FLEET_PEERS}.json"

# How `kumo-infra drain` tells a node to stop accepting mail, through KumoMTA's own admin API:
# a suspension (POST /api/admin/suspend/v1, crates/kumo-api-types/src/lib.rs SuspendV1Request) of
# a domain no message is ever sent to, so it suspends no delivery; the policy lists the
# suspensions (kumo.api.admin.suspend.list) and answers 421 to new mail while this one exists.
# Cancelling the suspension (DELETE /api/admin/suspend/v1 {id}) makes the node accept mail again.
DRAIN_SUSPENSION_DOMAIN = "drain.kumo-infra.invalid"
DRAIN_REASON = "kumo-infra drain: this node is being emptied before it is replaced"
# How long a node may go on accepting mail once the drain suspension exists: the policy lists
# the suspensions through kumo.memoize with this TTL (bootstrap/policy.py render_drain), so a
# node still holding "not draining" in its cache takes mail until it lapses. drain_node reads the
# node as empty only after this (and a poll) has passed: a message accepted meanwhile is counted.
DRAIN_CHECK_TTL_S = 3
# How long the other nodes may take to learn a replaced node's new private address: the peer
# list's refresh timer (bootstrap/files/kumo-fleet-peers.timer: every 5 min, up to 2 min late)
# plus a minute for the fetch and the restart. Until then they neither send a drain's transfers to
# it (the policy keeps them queued) nor take its: `kumo-infra roll` waits this long before draining
# into a node it replaced.
PEER_REFRESH_MAX_S = (5 + 2 + 1) * 60

# Where a peer receives the messages another node transfers to it (kumod POSTs them to
# /api/xfer/inject/v1 of the target URL, crates/kumod/src/xfer): the HTTP listener on HTTP_PORT, which in a
# fleet listens on every address, trusts loopback and the peers only, and is open in the cloud
# firewall to the deployment's own nodes only. Plain HTTP inside the deployment's private network.
# The queue KumoMTA moves a transfer's messages through is named <target URL> + this
# (crates/kumo-api-types/src/xfer.rs XFER_QUEUE_SUFFIX): drain cancels by it, the policy routes by it.
XFER_QUEUE_SUFFIX = ".xfer.kumomta.internal"


def xfer_target_url(private_ip: str) -> str:
    host = f"[{private_ip}]" if ":" in private_ip else private_ip
    return f"http://{host}:{HTTP_PORT}"


RedisSource = Literal["none", "external", "managed"]


def node_count(deployment: "Deployment") -> int:
    """How many nodes the deployment's plan has (the planner's choice, the target's, or nodes:)."""
    from .stackconfig import plan_for  # stackconfig imports the config model, which this module must not

    return plan_for(deployment).nodes


def is_fleet(deployment: "Deployment") -> bool:
    """Whether the nodes must share throttles, shaping data and a peer list: more than one node."""
    return node_count(deployment) > 1


def redis_source(deployment: "Deployment") -> RedisSource:
    """Where the shared throttles live: nowhere (one node), the operator's Redis (fleet.redis_url),
    or a managed Redis kumo-infra creates in the deployment's private network."""
    if not is_fleet(deployment):
        return "none"
    return "external" if deployment.fleet.redis_url else "managed"


# redis-rs's default port, what KumoMTA's Redis client connects to when the URL names none
# (redis crate, connection.rs DEFAULT_PORT).
REDIS_DEFAULT_PORT = 6379


def external_redis_port(deployment: "Deployment") -> Optional[int]:
    """The port of fleet.redis_url when the fleet uses it (the nodes' way out to it), else None."""
    if redis_source(deployment) != "external":
        return None
    return urllib.parse.urlsplit(deployment.fleet.redis_url).port or REDIS_DEFAULT_PORT


def redis_endpoint(url: str) -> str:
    """host:port of a Redis URL, without its credentials: what an output may show."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    return f"[{host}]:{parts.port or REDIS_DEFAULT_PORT}" if ":" in host else f"{host}:{parts.port or REDIS_DEFAULT_PORT}"


def redis_url_with_password(url: str, password: str) -> str:
    """fleet.redis_url (validated: no credentials, no query) with ``password`` as its userinfo,
    ``scheme://:PASSWORD@host:port/db``: the form KumoMTA's Redis client reads (redis-rs
    url_to_tcp_connection_info percent-decodes the password, redis/src/connection.rs), every
    character but the unreserved ones percent-encoded so none ends the userinfo early (':', '@',
    '/', '%', '#', '?')."""
    parts = urllib.parse.urlsplit(url)
    secret = urllib.parse.quote(password, safe="")
    return urllib.parse.urlunsplit((parts.scheme, f":{secret}@{parts.netloc}", parts.path, "", ""))

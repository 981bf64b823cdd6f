"""The Redis a fleet on GCP shares its throttles through: a Memorystore for Redis instance (STANDARD_HA,
1 GB) on the nodes' own network, AUTH on and TLS in transit (kumo_infra.fleet; the skeleton stores the
URL as the REDIS_URL secret).

Arguments checked against pulumi-gcp 10.2 (.venv/lib/python3.11/site-packages/pulumi_gcp/redis/instance.py).
Needs the Memorystore API (redis.googleapis.com) enabled in the project.
"""

import pulumi
from pulumi_gcp import redis

from ... import fleet
from ...component import Build, child

# DIRECT_PEERING (the provider's default) needs nothing else: Memorystore peers its own network with
# the authorized one and picks a free /29 (reserved_ip_range). PRIVATE_SERVICE_ACCESS needs an
# allocated range and a servicenetworking connection first; Shared VPC (a network of another
# project) needs it, which kumo-infra does not create.
CONNECT_MODE = "DIRECT_PEERING"
TIER = "STANDARD_HA"  # a primary and a replica in another zone, with automatic failover
MEMORY_GB = 1  # Memorystore's smallest; throttle counters are a few keys per destination
TRANSIT_ENCRYPTION = "SERVER_AUTHENTICATION"  # TLS on the instance's port (6378 with TLS)
# Memorystore signs its server certificate with a CA of the instance's own (server_ca_certs), which
# no system trust store holds. KumoMTA's Redis client (the redis crate 0.32 with tls-native-tls:
# KumoMTA Cargo.toml; OpenSSL and the system's roots) takes no CA of its own, so the nodes connect
# with rediss://...#insecure (redis-rs url_to_tcp_connection_info: "#insecure" is the only fragment
# it takes), which accepts any certificate. The consequence: traffic is encrypted and AUTH still
# guards the data, but the nodes do not prove they reach this instance; someone who can reroute the
# VPC's traffic to 6378 (a project editor adding routes) could read the AUTH string. Dropping
# "#insecure" needs the instance's CA installed in each node's system trust store first.
INSECURE_FRAGMENT = "#insecure"


def managed_redis(parent: pulumi.Resource, b: Build, zone: str) -> tuple[redis.Instance, pulumi.Output[str]]:
    """The instance, and the URL the nodes use (a Pulumi secret). The nodes' way out to it is the
    component's (GcpKumoMta._shared_redis): their egress is denied unless listed."""
    d = b.deployment
    lifecycle = d.lifecycle
    instance = redis.Instance(
        f"{b.name}-redis", project=d.gcp.project, region=d.region,
        # The primary in the nodes' zone; Memorystore picks the replica's (alternative_location_id).
        location_id=zone,
        tier=TIER, memory_size_gb=MEMORY_GB,
        authorized_network=b.network.network, connect_mode=CONNECT_MODE,
        auth_enabled=True, transit_encryption_mode=TRANSIT_ENCRYPTION,
        display_name=f"kumo-infra {b.name} shared throttles",
        labels=b.tags,
        # Unset, the provider refuses to delete the instance ("When the field is set to true or unset
        # ... a pulumi up or destroy that would delete the instance will fail", instance.py), so it is
        # always stated: on with lifecycle.protect, off otherwise (an ephemeral stack among them).
        deletion_protection=lifecycle.protect,
        opts=child(parent, protect=lifecycle.protect))
    # auth_string is a secret output (instance.py: additional_secret_outputs=["authString", ...]).
    url = pulumi.Output.all(instance.auth_string, instance.host, instance.port).apply(
        lambda values: fleet.redis_url_with_password(f"rediss://{values[1]}:{values[2]}", values[0])
        + INSECURE_FRAGMENT)
    return instance, pulumi.Output.secret(url)

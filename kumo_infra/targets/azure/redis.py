"""The Redis a fleet on Azure shares its throttles through: Azure Cache for Redis (Standard C1) with its
public endpoint disabled, reached through a private endpoint in the nodes' subnet, TLS only (kumo_infra.fleet;
the skeleton stores the URL as the REDIS_URL secret).

The nodes connect by the cache's own name, <name>.redis.cache.windows.net, which Azure's public DNS
answers with a CNAME to <name>.privatelink.redis.cache.windows.net; the private DNS zone of that name,
linked to the nodes' network, answers it with the private endpoint's address. So the name the certificate
is issued for (a public CA's, which the nodes' system trust store verifies) is the name they connect to:
connecting to the endpoint's address instead would fail the certificate's name check. This needs the
nodes to resolve through Azure's DNS (the network's default); a network whose DNS servers are the
operator's must forward privatelink.redis.cache.windows.net to Azure (168.63.129.16).

Access key, not Microsoft Entra ID: with Entra the password is an access token of the node's identity
that expires (about an hour) and must be fetched again and sent with AUTH again on every connection;
KumoMTA's Redis client takes a fixed URL (kumo.configure_redis_throttles{node=...}, crates/mod-redis
RedisConnKey), so it can only use the key. The key is read at deploy time (listRedisKeys) and kept in
Pulumi's encrypted state and the Key Vault only.

Arguments checked against pulumi-azure-native 3.29 (.venv/lib/python3.11/site-packages/pulumi_azure_native/
redis/redis.py, redis/list_redis_keys.py, network/private_endpoint.py, network/private_dns_zone_group.py,
privatedns/private_zone.py, privatedns/virtual_network_link.py).

Microsoft retires Azure Cache for Redis (Basic, Standard, Premium) on 30 September 2028 for Azure Managed
Redis, and stops creating new caches before then; its Standard C1 is still the smallest replicated cache
azure-native 3.29 creates with this API.
"""

import pulumi
from pulumi_azure_native import network, privatedns, redis

from ... import fleet
from ...component import Build, SharedRedis, child

SKU = redis.SkuArgs(name="Standard", family="C", capacity=1)  # a primary and a replica, 1 GB
MINIMUM_TLS = "1.2"
# The cache's TLS port (6379 is its plain port, kept closed: enable_non_ssl_port False).
TLS_PORT = 6380
# The private-link sub-resource of a cache, and the zone its private endpoints resolve in.
GROUP_ID = "redisCache"
PRIVATE_ZONE = "privatelink.redis.cache.windows.net"
# Private DNS zones and their links are global resources.
GLOBAL = "Global"


def shared_redis(parent: pulumi.Resource, b: Build, title: str) -> SharedRedis:
    """The cache, its private endpoint in the nodes' subnet and the private DNS the nodes find it by."""
    d, name = b.deployment, b.name
    rg = b.network.resource_group
    lifecycle = d.lifecycle
    cache = redis.Redis(
        f"{name}-redis", resource_group_name=rg, location=d.region, sku=SKU,
        enable_non_ssl_port=False, minimum_tls_version=MINIMUM_TLS,
        # Only private endpoints reach it ("If 'Disabled', private endpoints are the exclusive access method").
        public_network_access="Disabled",
        tags=b.tags, opts=child(parent, protect=lifecycle.protect))
    endpoint = network.PrivateEndpoint(
        f"{name}-redis-endpoint", resource_group_name=rg, location=d.region,
        # A plain reference: SubnetArgs would add its network-policy defaults (as for the NICs).
        subnet={"id": b.network.subnet_id},
        private_link_service_connections=[network.PrivateLinkServiceConnectionArgs(
            name=f"{name}-redis", private_link_service_id=cache.id, group_ids=[GROUP_ID])],
        tags=b.tags, opts=child(parent))
    zone = privatedns.PrivateZone(f"{name}-redis-dns", resource_group_name=rg, private_zone_name=PRIVATE_ZONE,
                                  location=GLOBAL, tags=b.tags, opts=child(parent))
    privatedns.VirtualNetworkLink(
        f"{name}-redis-dns-link", resource_group_name=rg, private_zone_name=PRIVATE_ZONE, location=GLOBAL,
        virtual_network=privatedns.SubResourceArgs(id=b.network.vnet_id), registration_enabled=False,
        tags=b.tags, opts=child(parent, depends_on=[zone]))
    # Azure writes (and removes) the endpoint's A record in the zone itself.
    network.PrivateDnsZoneGroup(
        f"{name}-redis-dns-group", resource_group_name=rg, private_endpoint_name=endpoint.name,
        private_dns_zone_group_name="default",
        private_dns_zone_configs=[network.PrivateDnsZoneConfigArgs(name="redis", private_dns_zone_id=zone.id)],
        opts=child(parent))
    # listRedisKeys needs write permission on the cache, which whoever runs pulumi up has; its answer is
    # not marked secret by the SDK (redis/list_redis_keys.py), hence Output.secret below.
    keys = redis.list_redis_keys_output(name=cache.name, resource_group_name=rg,
                                        opts=pulumi.InvokeOutputOptions(parent=parent))
    url = pulumi.Output.all(keys.primary_key, cache.host_name).apply(
        lambda values: fleet.redis_url_with_password(f"rediss://{values[1]}:{TLS_PORT}", values[0]))
    return SharedRedis(url=pulumi.Output.secret(url), resource=cache, title=title,
                       endpoint=pulumi.Output.concat(cache.host_name, f":{TLS_PORT}"))

"""The Redis a fleet on Azure shares its throttles through: Azure Managed Redis (Balanced_B0, high
availability on) with its public endpoint disabled, reached through a private endpoint in the nodes'
subnet, TLS only (kumo_infra.fleet; the skeleton stores the URL as the REDIS_URL secret).

Azure Managed Redis, not Azure Cache for Redis: Microsoft retires Azure Cache for Redis (Basic, Standard,
Premium on 30 September 2028) and, since 2026, creates new caches only for tenants that already had one
before 1 April 2026; Azure Managed Redis (resource provider Microsoft.Cache/redisEnterprise) is its
successor. Balanced_B0 is its smallest size; with high availability it is a primary and a replica.

The nodes connect by the cluster's own name, its hostName output (<name>.<region>.redis.azure.net), which
Azure's public DNS answers with a CNAME into privatelink.redis.azure.net; the private DNS zone of that
name, linked to the nodes' network, answers it with the private endpoint's address. So the name the
certificate is issued for (a public CA's, which the nodes' system trust store verifies) is the name they
connect to: connecting to the endpoint's address instead would fail the certificate's name check. This
needs the nodes to resolve through Azure's DNS (the network's default); a network whose DNS servers are
the operator's must forward privatelink.redis.azure.net to Azure (168.63.129.16). Zone and private-link
sub-resource as Microsoft lists them for "Azure Managed Redis (Microsoft.Cache/RedisEnterprise)"
(learn.microsoft.com/azure/private-link/private-endpoint-dns, 2026-05-07).

One database, EnterpriseCluster: the cluster's proxy shards behind a single endpoint that speaks the
plain Redis protocol. KumoMTA's client is a cluster client only for a list of nodes or cluster=true
(crates/mod-redis RedisConnKey::build_client); given one URL it is a plain client, which OSSCluster
(the API's default, which redirects keys to other shards) would break. NoEviction: a throttle's counter
evicted under memory pressure would silently lift the throttle; a full cache answers errors instead.

Access key, not Microsoft Entra ID (the API's default is accessKeysAuthentication Disabled, Entra only):
with Entra the password is an access token of the node's identity that expires (about an hour) and must
be fetched again and sent with AUTH again on every connection; KumoMTA's Redis client takes a fixed URL
(kumo.configure_redis_throttles{node=...}, crates/mod-redis RedisConnKey), so it can only use the key.
The key is read at deploy time (listDatabaseKeys) and kept in Pulumi's encrypted state and the Key Vault
only.

Arguments and enums checked against pulumi-azure-native 3.29, REST API 2025-07-01
(.venv/lib/python3.11/site-packages/pulumi_azure_native/redisenterprise/redis_enterprise.py, database.py,
list_database_keys.py, _enums.py, _inputs.py SkuArgs; network/private_endpoint.py,
network/private_dns_zone_group.py, privatedns/private_zone.py, privatedns/virtual_network_link.py).
"""

import pulumi
from pulumi_azure_native import network, privatedns, redisenterprise

from ... import fleet
from ...component import Build, SharedRedis, child

# SkuArgs.capacity applies to the Enterprise and EnterpriseFlash SKUs only (_inputs.py SkuArgs).
SKU = redisenterprise.SkuArgs(name=redisenterprise.SkuName.BALANCED_B0)
MINIMUM_TLS = redisenterprise.TlsVersion.TLS_VERSION_1_2
# Azure Managed Redis takes one database per cluster, named "default" (any other name: "BadRequest ... a
# single RedisEnterprise database which must be named 'default'", Azure/bicep-registry-modules#6868).
DATABASE = "default"
# The database's TLS port: client_protocol Encrypted makes it the only one.
TLS_PORT = 10000
# The private-link sub-resource of a cluster, and the zone its private endpoints resolve in.
GROUP_ID = "redisEnterprise"
PRIVATE_ZONE = "privatelink.redis.azure.net"
# Private DNS zones and their links are global resources.
GLOBAL = "Global"


def shared_redis(parent: pulumi.Resource, b: Build, title: str) -> SharedRedis:
    """The cluster and its database, its private endpoint in the nodes' subnet and the private DNS the
    nodes find it by."""
    d, name = b.deployment, b.name
    rg = b.network.resource_group
    lifecycle = d.lifecycle
    cluster = redisenterprise.RedisEnterprise(
        f"{name}-redis", resource_group_name=rg, location=d.region, sku=SKU,
        high_availability=redisenterprise.HighAvailability.ENABLED, minimum_tls_version=MINIMUM_TLS,
        # Only private endpoints reach it.
        public_network_access=redisenterprise.PublicNetworkAccess.DISABLED,
        tags=b.tags, opts=child(parent, protect=lifecycle.protect))
    database = redisenterprise.Database(
        f"{name}-redis-db", resource_group_name=rg, cluster_name=cluster.name, database_name=DATABASE,
        client_protocol=redisenterprise.Protocol.ENCRYPTED,
        clustering_policy=redisenterprise.ClusteringPolicy.ENTERPRISE_CLUSTER,
        eviction_policy=redisenterprise.EvictionPolicy.NO_EVICTION, port=TLS_PORT,
        access_keys_authentication=redisenterprise.AccessKeysAuthentication.ENABLED,
        opts=child(parent, protect=lifecycle.protect))
    endpoint = network.PrivateEndpoint(
        f"{name}-redis-endpoint", resource_group_name=rg, location=d.region,
        # A plain reference: SubnetArgs would add its network-policy defaults (as for the NICs).
        subnet={"id": b.network.subnet_id},
        private_link_service_connections=[network.PrivateLinkServiceConnectionArgs(
            name=f"{name}-redis", private_link_service_id=cluster.id, group_ids=[GROUP_ID])],
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
    # listDatabaseKeys needs write permission on the cluster, which whoever runs pulumi up has; its answer
    # is not marked secret by the SDK (redisenterprise/list_database_keys.py), hence Output.secret below.
    # The database's name (not the constant) makes the read wait for the database to exist.
    keys = redisenterprise.list_database_keys_output(cluster_name=cluster.name, database_name=database.name,
                                                     resource_group_name=rg,
                                                     opts=pulumi.InvokeOutputOptions(parent=parent))
    url = pulumi.Output.all(keys.primary_key, cluster.host_name).apply(
        lambda values: fleet.redis_url_with_password(f"rediss://{values[1]}:{TLS_PORT}", values[0]))
    return SharedRedis(url=pulumi.Output.secret(url), resource=cluster, title=title,
                       endpoint=pulumi.Output.concat(cluster.host_name, f":{TLS_PORT}"))

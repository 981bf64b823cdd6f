"""The Redis a fleet on AWS shares its throttles through: an ElastiCache (Redis OSS) replication group
in the nodes' own subnet, reachable only from the nodes' security group, TLS in transit and an AUTH
token kumo-infra generates (kumo_infra.fleet; the skeleton stores the URL as the REDIS_URL secret).

Arguments checked against pulumi-aws 7.51 (.venv/lib/python3.11/site-packages/pulumi_aws/elasticache/
replication_group.py, subnet_group.py; vpc/security_group_ingress_rule.py for referenced_security_group_id).
"""

import pulumi
import pulumi_aws as aws

from ... import fleet
from ...component import Build, SharedRedis, child, generated_password

# ElastiCache's Redis port (the provider's default too: "for Redis the default port is 6379").
REDIS_PORT = 6379
# Throttle counters are a few keys per destination: the smallest current Graviton type is plenty.
NODE_TYPE = "cache.t4g.small"
# A primary and one replica: automatic failover needs num_cache_clusters > 1 (replication_group.py,
# automatic_failover_enabled).
CACHE_CLUSTERS = 2
# ElastiCache takes 16-128 printable characters as the AUTH token; letters and digits only, so the
# token needs no escaping anywhere (64 of them: about 380 bits).
AUTH_TOKEN_LENGTH = 64


def shared_redis(parent: pulumi.Resource, b: Build, nodes_group: aws.ec2.SecurityGroup, title: str) -> SharedRedis:
    """The replication group, its subnet group and security group, and the nodes' way out to it."""
    name, lifecycle = b.name, b.deployment.lifecycle
    token = generated_password(parent, f"{name}-redis-auth-token", b.cp, length=AUTH_TOKEN_LENGTH, special=False,
                               min_upper=1, min_lower=1, min_numeric=1)
    # The nodes' own subnet (created, or aws.subnet_id): ElastiCache needs a subnet group, and the
    # cache gets no public address in any subnet (ElastiCache endpoints resolve to private addresses only).
    subnets = aws.elasticache.SubnetGroup(f"{name}-redis-subnets", subnet_ids=[b.network.subnet_id],
                                          description=f"kumo-infra {name}: the nodes' subnet",
                                          tags={**b.tags, "Name": f"{name}-redis-subnets"}, opts=child(parent))
    # No inline rules: the provider then removes AWS's default allow-all egress from the new group
    # (as for the nodes' group, component._firewall), and the one ingress rule admits the nodes only.
    group_sg = aws.ec2.SecurityGroup(f"{name}-redis-sg", vpc_id=b.network.vpc_id,
                                     description=f"Redis of the KumoMTA fleet {name}: the nodes only",
                                     tags={**b.tags, "Name": f"{name}-redis-sg"}, opts=child(parent))
    aws.vpc.SecurityGroupIngressRule(
        f"{name}-redis-sg-ingress", security_group_id=group_sg.id, referenced_security_group_id=nodes_group.id,
        ip_protocol="tcp", from_port=REDIS_PORT, to_port=REDIS_PORT, description="Redis from the KumoMTA nodes",
        tags={**b.tags, "Name": f"{name}-redis-sg-ingress"}, opts=child(parent))
    # The nodes' group denies every egress it does not list (component._firewall).
    aws.vpc.SecurityGroupEgressRule(
        b.names.firewall_rule("out-redis", "managed"), security_group_id=nodes_group.id,
        referenced_security_group_id=group_sg.id, ip_protocol="tcp", from_port=REDIS_PORT, to_port=REDIS_PORT,
        description="the fleet's Redis", tags={**b.tags, "Name": f"{name}-out-redis"}, opts=child(parent))
    group = aws.elasticache.ReplicationGroup(
        f"{name}-redis",  # replicationGroupId auto-named from it, lowercase, at most 40 characters
        description=f"KumoMTA fleet {name}: shared throttles",
        engine="redis",
        node_type=NODE_TYPE,
        port=REDIS_PORT,
        num_cache_clusters=CACHE_CLUSTERS,
        automatic_failover_enabled=True,
        # Multi-AZ places the replica in another zone; the subnet group holds the nodes' one subnet,
        # so one zone: the replica covers a failed cache node, and a lost zone takes the MTA nodes with it.
        multi_az_enabled=False,
        subnet_group_name=subnets.name,
        security_group_ids=[group_sg.id],
        transit_encryption_enabled=True,
        at_rest_encryption_enabled=True,
        # A Pulumi secret (generated_password), and the provider marks authToken secret
        # (replication_group.py: additional_secret_outputs=["authToken", "authTokenWo"]).
        auth_token=token,
        # Counters only: no snapshots (snapshot_retention_limit 0 is the default) and no final snapshot
        # on delete (final_snapshot_identifier unset), so an ephemeral stack leaves nothing behind.
        tags={**b.tags, "Name": f"{name}-redis"},
        opts=child(parent, protect=lifecycle.protect))
    # The certificate is issued by Amazon's public CA for the endpoint's name, which the nodes' system
    # trust store verifies (KumoMTA's redis crate uses native-tls: OpenSSL and its default roots).
    url = pulumi.Output.all(token, group.primary_endpoint_address).apply(
        lambda values: fleet.redis_url_with_password(f"rediss://{values[1]}:{REDIS_PORT}", values[0]))
    return SharedRedis(url=pulumi.Output.secret(url), resource=group, title=title,
                       endpoint=pulumi.Output.concat(group.primary_endpoint_address, f":{REDIS_PORT}"))

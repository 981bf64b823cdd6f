"""A fleet's managed Redis on each cloud, and the firewall rules between a fleet's nodes, under the mock
engine: the whole stack program, recorded inputs and options only.

The fleet is the contract suite's deployment (tests/contract_deployments.py: two nodes, relay, DKIM, SSH
and the API opened), so every secret the component can store is there too; its single-node twin is the
same deployment with nodes: 1.
"""

from __future__ import annotations

import json
import urllib.parse

import pytest

from kumo_infra import offline
from kumo_infra.component import EPHEMERAL_TAG
from kumo_infra.fleet import REDIS_URL
from kumo_infra.targets.azure import offline as azure_offline
from kumo_infra.targets.azure.component import security_rules
from kumo_infra.netplan import Rule
from tests.contract_deployments import case, plain
from tests.test_contract import deployment_of, occurrences, run

CLOUDS = ("aws", "azure", "gcp")
NAME = "kumo-c"  # the contract case's deployment name

# The resource types of each cloud's managed Redis and what goes with it.
AWS_GROUP = "aws:elasticache/replicationGroup:ReplicationGroup"
AWS_SUBNETS = "aws:elasticache/subnetGroup:SubnetGroup"
AWS_SG = "aws:ec2/securityGroup:SecurityGroup"
AWS_INGRESS = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
AWS_EGRESS = "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule"
AWS_VERSION = "aws:secretsmanager/secretVersion:SecretVersion"
AZURE_CLUSTER = "azure-native:redisenterprise:RedisEnterprise"
AZURE_DATABASE = "azure-native:redisenterprise:Database"
AZURE_KEYS = "azure-native:redisenterprise:listDatabaseKeys"
AZURE_ENDPOINT = "azure-native:network:PrivateEndpoint"
AZURE_ZONE = "azure-native:privatedns:PrivateZone"
AZURE_LINK = "azure-native:privatedns:VirtualNetworkLink"
AZURE_ZONE_GROUP = "azure-native:network:PrivateDnsZoneGroup"
AZURE_ASG = "azure-native:network:ApplicationSecurityGroup"
AZURE_NSG = "azure-native:network:NetworkSecurityGroup"
AZURE_NIC = "azure-native:network:NetworkInterface"
AZURE_SECRET = "azure-native:keyvault:Secret"
GCP_INSTANCE = "gcp:redis/instance:Instance"
GCP_FIREWALL = "gcp:compute/firewall:Firewall"
GCP_VERSION = "gcp:secretmanager/secretVersion:SecretVersion"
REDIS_TYPES = {
    "aws": (AWS_GROUP, AWS_SUBNETS),
    "azure": (AZURE_CLUSTER, AZURE_DATABASE, AZURE_ENDPOINT, AZURE_ZONE, AZURE_LINK, AZURE_ZONE_GROUP, AZURE_ASG),
    "gcp": (GCP_INSTANCE,),
}
REDIS_RESOURCE = {"aws": AWS_GROUP, "azure": AZURE_CLUSTER, "gcp": GCP_INSTANCE}

# The credentials each cloud's Redis takes, as the offline engine answers them.
AWS_TOKEN = f"offline-generated-password-of-{NAME}-redis-auth-token"
AZURE_KEY = azure_offline.INVOKES[AZURE_KEYS]["primaryKey"]
GCP_AUTH = f"offline-memorystore-auth-of-{NAME}-redis"
CREDENTIAL = {"aws": AWS_TOKEN, "azure": AZURE_KEY, "gcp": GCP_AUTH}


_RUNS: dict[tuple[str, str], offline.OfflineResult] = {}


def fleet(target: str, **overrides) -> offline.OfflineResult:
    """The contract case's two-node deployment (cached per target and variant when not overridden)."""
    if overrides:
        return run(target, deployment_of(case(target), **overrides))
    if (target, "fleet") not in _RUNS:
        _RUNS[(target, "fleet")] = run(target, deployment_of(case(target)))
    return _RUNS[(target, "fleet")]


def single(target: str) -> offline.OfflineResult:
    if (target, "single") not in _RUNS:
        _RUNS[(target, "single")] = run(target, deployment_of(case(target), nodes=1))
    return _RUNS[(target, "single")]


def url_holder(result: offline.OfflineResult, target: str) -> offline.RecordedResource:
    """The resource holding the REDIS_URL secret's value in the target's store."""
    if target == "azure":
        return result.named(f"{NAME}-{REDIS_URL}-secret", AZURE_SECRET)
    return result.named(f"{NAME}-{REDIS_URL}-version", AWS_VERSION if target == "aws" else GCP_VERSION)


def stored_url(result: offline.OfflineResult, target: str) -> str:
    """The REDIS_URL secret's value in the target's store."""
    inputs = plain(url_holder(result, target).inputs)
    return {"aws": lambda: inputs["secretString"], "azure": lambda: inputs["properties"]["value"],
            "gcp": lambda: inputs["secretData"]}[target]()


# -- every cloud ---------------------------------------------------------------------------------

def rules_between_nodes(result: offline.OfflineResult) -> list[str]:
    """The firewall rules whose peers are the nodes (named "-nodes": resources, or Azure's inline NSG rules)."""
    inline = [rule["name"] for nsg in result.of_type(AZURE_NSG) for rule in nsg.inputs["securityRules"]]
    return [name for name in [r.name for r in result.resources] + inline if name.endswith("-nodes")]


@pytest.mark.parametrize("target", CLOUDS)
def test_a_single_node_creates_no_redis_and_no_rule_between_nodes(target):
    result = single(target)
    assert len(result.of_type(case(target).machines[0])) == 1
    assert [r.name for r in result.resources if r.type in REDIS_TYPES[target] or "redis" in r.name] == []
    assert rules_between_nodes(result) == []
    # The twin with two nodes has them: the checks above look for what it makes.
    assert [r.type for r in fleet(target).resources if r.type == REDIS_RESOURCE[target]] == [REDIS_RESOURCE[target]]
    assert len(rules_between_nodes(fleet(target))) == 4  # TSA and transfers, both ways


@pytest.mark.parametrize("target", CLOUDS)
def test_the_redis_url_is_stored_as_a_secret_with_the_generated_credential(target):
    result = fleet(target)
    value = stored_url(result, target)
    found = occurrences(url_holder(result, target).inputs, value)
    assert found and all(found)  # inside a Pulumi secret
    url = urllib.parse.urlsplit(value)
    assert url.scheme == "rediss" and url.username == ""
    # redis-rs percent-decodes the password (url_to_tcp_connection_info): the key comes back whole.
    assert urllib.parse.unquote(url.password) == CREDENTIAL[target]


def test_an_azure_key_is_escaped_in_the_url():
    """Azure's keys are base64: '+', '/' and '=' would end or garble the userinfo unescaped."""
    value = stored_url(fleet("azure"), "azure")
    assert set("+/=") & set(AZURE_KEY) and not set("+/=") & set(value.split("@", 1)[0].split("//", 1)[1])


@pytest.mark.parametrize("target", CLOUDS)
def test_no_redis_credential_in_any_output_or_outside_a_secret(target):
    result = fleet(target)
    credential = CREDENTIAL[target]
    seen = []
    for form in {credential, urllib.parse.quote(credential, safe="")}:
        assert form not in json.dumps(result.outputs)
        holders = {r.name: occurrences(r.inputs, form) for r in result.resources}
        holders = {name: found for name, found in holders.items() if found}
        assert all(all(found) for found in holders.values()), holders
        seen += holders
    assert url_holder(result, target).name in seen  # the check found the credential where it must be
    # The output names the Redis by host and port only.
    redis = result.outputs["fleet"]["redis"]
    assert redis["source"] == "managed" and "@" not in redis["endpoint"] and redis["url_secret_name"]


@pytest.mark.parametrize("target", CLOUDS)
def test_the_redis_follows_the_lifecycle(target):
    token = REDIS_RESOURCE[target]
    protected = fleet(target, lifecycle={"protect": True}).one(token)
    ephemeral = fleet(target, lifecycle={"ephemeral": True}).one(token)
    lasting = fleet(target).one(token)
    assert protected.protect and not ephemeral.protect and not lasting.protect
    tags = "labels" if target == "gcp" else "tags"
    assert ephemeral.inputs[tags][EPHEMERAL_TAG] == "true" and EPHEMERAL_TAG not in lasting.inputs[tags]


# -- AWS -----------------------------------------------------------------------------------------

def test_aws_elasticache_is_tls_only_with_a_generated_auth_token():
    result = fleet("aws")
    group = result.one(AWS_GROUP).inputs
    assert group["engine"] == "redis" and group["nodeType"] == "cache.t4g.small"
    assert group["transitEncryptionEnabled"] is True and group["atRestEncryptionEnabled"] is True
    assert offline.is_secret(group["authToken"]) and group["authToken"]["value"] == AWS_TOKEN
    password = result.named(f"{NAME}-redis-auth-token").inputs
    # ElastiCache: 16-128 printable characters; letters and digits need no escaping anywhere.
    assert 16 <= password["length"] <= 128 and password["special"] is False
    assert group["numCacheClusters"] == 2 and group["automaticFailoverEnabled"] is True
    url = urllib.parse.urlsplit(stored_url(result, "aws"))
    assert url.hostname == "master.kumo-c-redis-0000040.offline.invalid" and url.port == 6379
    assert url.hostname == result.outputs["fleet"]["redis"]["endpoint"].rsplit(":", 1)[0]


def test_aws_elasticache_is_reachable_from_the_nodes_security_group_only():
    result = fleet("aws")
    group = result.one(AWS_GROUP).inputs
    nodes_sg, redis_sg = f"{NAME}-firewall-id", f"{NAME}-redis-sg-id"
    assert group["securityGroupIds"] == [redis_sg]
    # In the nodes' own subnet (no public address exists for an ElastiCache node).
    subnets = result.one(AWS_SUBNETS)
    assert subnets.inputs["subnetIds"] == [f"{NAME}-subnet-id"]
    assert group["subnetGroupName"].startswith(f"{subnets.name}-")  # its auto-name (targets/aws/offline.py)
    into_redis = [r.inputs for r in result.of_type(AWS_INGRESS) if r.inputs["securityGroupId"] == redis_sg]
    assert [(i["referencedSecurityGroupId"], i["fromPort"], i["toPort"]) for i in into_redis] == [(nodes_sg, 6379, 6379)]
    assert not [i for i in into_redis if "cidrIpv4" in i or "cidrIpv6" in i]
    assert not [r.name for r in result.of_type(AWS_EGRESS) if r.inputs["securityGroupId"] == redis_sg]
    # The nodes' group denies egress it does not list: the way out to the Redis is listed, to its group only.
    out = [r.inputs for r in result.of_type(AWS_EGRESS) if r.inputs.get("referencedSecurityGroupId") == redis_sg]
    assert [(i["securityGroupId"], i["fromPort"]) for i in out] == [(nodes_sg, 6379)]


def test_aws_elasticache_uses_a_given_subnet():
    result = fleet("aws", aws={"vpc_id": "vpc-0a1b2c3d", "subnet_id": "subnet-0a1b2c3d"})
    assert result.one(AWS_SUBNETS).inputs["subnetIds"] == ["subnet-0a1b2c3d"]
    assert result.named(f"{NAME}-redis-sg", AWS_SG).inputs["vpcId"] == "vpc-0a1b2c3d"


def test_aws_rules_between_nodes_name_the_nodes_security_group():
    result = fleet("aws")
    nodes_sg = f"{NAME}-firewall-id"
    for token, names in ((AWS_INGRESS, ("tsa", "xfer")), (AWS_EGRESS, ("out-tsa", "out-xfer"))):
        for rule in names:
            i = result.named(f"{NAME}-fw-{rule}-nodes", token).inputs
            assert i["securityGroupId"] == nodes_sg and i["referencedSecurityGroupId"] == nodes_sg
            assert "cidrIpv4" not in i and "cidrIpv6" not in i
    ports = {r.inputs["fromPort"] for r in result.of_type(AWS_INGRESS) if r.name.endswith("-nodes")}
    assert ports == {8008, 8000}


# -- Azure ---------------------------------------------------------------------------------------

def test_azure_managed_redis_is_tls_only_and_private():
    result = fleet("azure")
    cluster = result.one(AZURE_CLUSTER)
    i = cluster.inputs
    # Azure Managed Redis: new tenants can no longer create Azure Cache for Redis (targets/azure/redis.py).
    assert not [r.name for r in result.resources if r.type.startswith("azure-native:redis:")]
    assert i["sku"] == {"name": "Balanced_B0"} and i["highAvailability"] == "Enabled"
    assert i["minimumTlsVersion"] == "1.2" and i["publicNetworkAccess"] == "Disabled"
    database = result.one(AZURE_DATABASE).inputs
    assert database["clusterName"] == cluster.name and database["databaseName"] == "default"
    assert database["clientProtocol"] == "Encrypted" and database["port"] == 10000
    url = urllib.parse.urlsplit(stored_url(result, "azure"))
    # The cluster's own name, which its certificate names, on the database's TLS port.
    assert url.hostname == f"{cluster.name}.{i['location']}.redis.azure.net" and url.port == 10000
    assert result.outputs["fleet"]["redis"]["endpoint"] == f"{url.hostname}:10000"


def test_azure_database_is_one_endpoint_with_access_keys_and_no_eviction():
    """KumoMTA's client takes one URL and is then no cluster client (crates/mod-redis build_client): the
    database must not redirect keys (OSSCluster, the API's default); it must take the key in the URL
    (access keys, off by default); and it must not drop a throttle's counter under memory pressure."""
    database = fleet("azure").one(AZURE_DATABASE).inputs
    assert database["clusteringPolicy"] == "EnterpriseCluster"
    assert database["accessKeysAuthentication"] == "Enabled"
    assert database["evictionPolicy"] == "NoEviction"


def test_azure_managed_redis_is_reached_through_a_private_endpoint_in_the_nodes_subnet():
    result = fleet("azure")
    cluster = result.one(AZURE_CLUSTER)
    endpoint = result.one(AZURE_ENDPOINT).inputs
    assert endpoint["subnet"] == {"id": f"{NAME}-subnet-id"}
    (connection,) = endpoint["privateLinkServiceConnections"]
    assert connection["privateLinkServiceId"] == f"{cluster.name}-id" and connection["groupIds"] == ["redisEnterprise"]
    # The cluster's name resolves to the endpoint inside the nodes' network.
    zone = result.one(AZURE_ZONE)
    assert zone.inputs["privateZoneName"] == "privatelink.redis.azure.net"
    link = result.one(AZURE_LINK).inputs
    assert link["virtualNetwork"] == {"id": f"{NAME}-network-id"} and link["registrationEnabled"] is False
    assert link["privateZoneName"] == zone.inputs["privateZoneName"]
    group = result.one(AZURE_ZONE_GROUP).inputs
    assert group["privateEndpointName"] == result.one(AZURE_ENDPOINT).name
    assert [c["privateDnsZoneId"] for c in group["privateDnsZoneConfigs"]] == [f"{zone.name}-id"]


def test_azure_access_key_is_read_from_the_database_it_names():
    result = fleet("azure")
    cluster = result.one(AZURE_CLUSTER)
    (keys,) = [i for i in result.invokes if i["token"] == AZURE_KEYS]
    assert keys["args"] == {"clusterName": cluster.name, "databaseName": "default", "resourceGroupName": f"{NAME}-rg"}


def test_azure_database_follows_the_lifecycle():
    assert fleet("azure", lifecycle={"protect": True}).one(AZURE_DATABASE).protect
    assert not fleet("azure").one(AZURE_DATABASE).protect


def test_azure_dns_link_names_a_given_network():
    vnet = ("/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/net-rg/providers/Microsoft.Network"
            "/virtualNetworks/mail")
    result = fleet("azure", azure={**case("azure").deployment["azure"], "resource_group": "mail-rg",
                                   "vnet_id": vnet, "subnet_id": f"{vnet}/subnets/mta"})
    assert result.one(AZURE_LINK).inputs["virtualNetwork"] == {"id": vnet}
    assert result.one(AZURE_ENDPOINT).inputs["subnet"] == {"id": f"{vnet}/subnets/mta"}


def test_azure_rules_between_nodes_name_the_nodes_application_security_group():
    result = fleet("azure")
    asg = result.one(AZURE_ASG)
    group = [{"id": f"{asg.name}-id"}]
    rules = {r["name"]: r for r in result.one(AZURE_NSG).inputs["securityRules"]}
    for name, side in (("allow-tsa-nodes", "source"), ("allow-xfer-nodes", "source"),
                       ("allow-out-tsa-nodes", "destination"), ("allow-out-xfer-nodes", "destination")):
        rule = rules[name]
        assert rule[f"{side}ApplicationSecurityGroups"] == group
        assert f"{side}AddressPrefix" not in rule and f"{side}AddressPrefixes" not in rule
    assert {rules[n]["destinationPortRange"] for n in ("allow-tsa-nodes", "allow-xfer-nodes")} == {"8008", "8000"}
    # Every node's NIC is in the group, so the rules admit exactly the nodes.
    nics = result.of_type(AZURE_NIC)
    assert len(nics) == 2
    assert all(nic.inputs["ipConfigurations"][0]["applicationSecurityGroups"] == group for nic in nics)
    assert not [nic.name for nic in single("azure").of_type(AZURE_NIC)
                if "applicationSecurityGroups" in nic.inputs["ipConfigurations"][0]]


def test_azure_security_rules_refuse_a_rule_between_nodes_without_their_group():
    rule = Rule("tsa", "ingress", "tcp", 8008, (), "TSA", from_nodes=True)
    with pytest.raises(AssertionError):
        security_rules([rule])
    (made, *_denies) = security_rules([rule], "asg-id")
    assert made.source_application_security_groups[0].id == "asg-id"


# -- GCP -----------------------------------------------------------------------------------------

def test_gcp_memorystore_is_private_tls_and_auth():
    result = fleet("gcp")
    i = result.one(GCP_INSTANCE).inputs
    assert i["tier"] == "STANDARD_HA" and i["memorySizeGb"] == 1
    assert i["authorizedNetwork"] == f"{NAME}-network-id" and i["connectMode"] == "DIRECT_PEERING"
    assert i["authEnabled"] is True and i["transitEncryptionMode"] == "SERVER_AUTHENTICATION"
    url = urllib.parse.urlsplit(stored_url(result, "gcp"))
    assert (url.hostname, url.port) == ("192.0.2.250", 6378)
    # Memorystore's CA is the instance's own, which KumoMTA's client cannot be given (gcp/redis.py).
    assert url.fragment == "insecure"


def test_gcp_nodes_may_reach_memorystore_and_nothing_else_new():
    result = fleet("gcp")
    out = result.named(f"{NAME}-fw-out-redis-managed", GCP_FIREWALL).inputs
    assert out["direction"] == "EGRESS" and out["destinationRanges"] == ["192.0.2.248/29"]
    assert out["allows"] == [{"protocol": "tcp", "ports": ["6378"]}] and out["targetTags"] == [f"{NAME}-mta"]


def test_gcp_memorystore_deletion_protection_follows_the_lifecycle():
    assert fleet("gcp").one(GCP_INSTANCE).inputs["deletionProtection"] is False
    assert fleet("gcp", lifecycle={"ephemeral": True}).one(GCP_INSTANCE).inputs["deletionProtection"] is False
    assert fleet("gcp", lifecycle={"protect": True}).one(GCP_INSTANCE).inputs["deletionProtection"] is True


def test_gcp_rules_between_nodes_use_the_nodes_tag_and_subnet():
    result = fleet("gcp")
    tag = [f"{NAME}-mta"]
    for rule in ("tsa", "xfer"):
        i = result.named(f"{NAME}-fw-{rule}-nodes", GCP_FIREWALL).inputs
        assert i["direction"] == "INGRESS" and i["sourceTags"] == tag and i["targetTags"] == tag
        assert "sourceRanges" not in i
        out = result.named(f"{NAME}-fw-out-{rule}-nodes", GCP_FIREWALL).inputs
        assert out["direction"] == "EGRESS" and out["destinationRanges"] == ["10.42.0.0/24"]
        assert out["targetTags"] == tag


@pytest.mark.parametrize("section, where", [
    ({"network": "mail-net", "subnetwork": "mta"}, {"name": "mta", "region": "us-central1", "project": "my-kumo-project"}),
    ({"network": "projects/host-proj/global/networks/shared"},
     {"name": "shared", "region": "us-central1", "project": "host-proj"}),
    ({"network": "mail-net", "subnetwork": "projects/host-proj/regions/us-central1/subnetworks/mta"},
     {"selfLink": "projects/host-proj/regions/us-central1/subnetworks/mta"}),
])
def test_gcp_egress_between_nodes_names_a_given_subnet(section, where):
    result = fleet("gcp", gcp={**case("gcp").deployment["gcp"], **section})
    (lookup,) = [i for i in result.invokes if i["token"] == "gcp:compute/getSubnetwork:getSubnetwork"]
    assert lookup["args"] == where
    out = result.named(f"{NAME}-fw-out-tsa-nodes", GCP_FIREWALL).inputs
    assert out["destinationRanges"] == ["198.51.100.0/24"]  # the offline answer for the given subnet
    assert not [i for i in single("gcp").invokes if i["token"] == "gcp:compute/getSubnetwork:getSubnetwork"]


@pytest.mark.parametrize("target", CLOUDS)
def test_a_fleet_previews_with_the_redis_values_unknown(target):
    """A preview knows no endpoint, key or range yet: the Redis and its URL secret are still planned."""
    result = run(target, deployment_of(case(target)), preview=True)
    assert result.one(REDIS_RESOURCE[target])
    assert url_holder(result, target)

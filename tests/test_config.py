"""The stack config model: every rule, and the exact key path of every error."""

from __future__ import annotations

import pytest

from kumo_infra.config import parse_deployment
from kumo_infra.errors import ConfigError
from tests.conftest import deployment


def problems(raw) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        parse_deployment(raw)
    return {p.path: p.message for p in info.value.problems}


def test_minimal_deployment_gets_safe_defaults():
    d = parse_deployment(deployment())
    assert d.network.admin_cidrs == []          # no management access unless asked
    assert d.kumomta.relay_cidrs == []          # loopback-only relaying
    assert d.kumomta.channel == "stable"
    assert d.spool_storage == "block"
    assert d.port25.outbound == "auto" and d.outbound_mode == "direct"


def test_performance_profile_defaults_to_local_nvme():
    d = parse_deployment(deployment(sizing={"profile": "performance"}))
    assert d.spool_storage == "local_nvme"


@pytest.mark.parametrize("raw, path, fragment", [
    (deployment(sizing={"messages_per_hour": 0}), "kumo:deployment.sizing.messages_per_hour", "greater than or equal to 1"),
    (deployment(sizing={"avg_message_kb": -1}), "kumo:deployment.sizing.avg_message_kb", "greater than 0"),
    (deployment(sizing={"profile": "turbo"}), "kumo:deployment.sizing.profile", "'minimal' or 'performance'"),
    (deployment(cloud="oracle"), "kumo:deployment.cloud", "'aws', 'azure' or 'gcp'"),
    (deployment(colud="aws"), "kumo:deployment.colud", "unknown key"),
    (deployment(sizing={"mesages_per_hour": 5}), "kumo:deployment.sizing.mesages_per_hour", "unknown key"),
    (deployment(os="centos7"), "kumo:deployment.os", "end of life"),
    (deployment(os="opensuse15"), "kumo:deployment.os", "no package repository"),
    (deployment(os="windows"), "kumo:deployment.os", "supported: rocky8"),
    (deployment(hostname="not a host"), "kumo:deployment.hostname", "fully qualified"),
    (deployment(name="Kumo_Prod"), "kumo:deployment.name", "lowercase"),
    (deployment(network={"admin_cidrs": ["0.0.0.0/0"]}), "kumo:deployment.network.admin_cidrs[0]", "never opened"),
    (deployment(network={"admin_cidrs": ["::/0"]}), "kumo:deployment.network.admin_cidrs[0]", "never opened"),
    (deployment(network={"admin_cidrs": ["10.0.0.0/8", "nonsense"]}), "kumo:deployment.network.admin_cidrs[1]", "not a CIDR"),
    (deployment(kumomta={"relay_cidrs": ["0.0.0.0/0"]}), "kumo:deployment.kumomta.relay_cidrs[0]", "open relay"),
    (deployment(kumomta={"repo_url": "ftp://mirror"}), "kumo:deployment.kumomta.repo_url", "an https:// URL"),
    (deployment(nodes=0), "kumo:deployment.nodes", "greater than or equal to 1"),
    (deployment(network={"submission_ports": [465]}), "kumo:deployment.network.submission_ports", "STARTTLS"),
    (deployment(network={"submission_ports": [587, 587]}), "kumo:deployment.network.submission_ports", "twice"),
    # The address blocks of networks kumo-infra creates, checked alike on every cloud.
    (deployment(aws={"vpc_cidr": "10.0.0.0/8"}), "kumo:deployment.aws.vpc_cidr", "between /16 and /28"),
    (deployment(cloud="azure", region="westeurope", os="ubuntu22", azure={"vnet_cidr": "banana"}),
     "kumo:deployment.azure.vnet_cidr", "not a CIDR block"),
    (deployment(cloud="azure", region="westeurope", os="ubuntu22", azure={"vnet_cidr": "2001:db8::/48"}),
     "kumo:deployment.azure.vnet_cidr", "IPv4 block between /8 and /29"),
    (deployment(cloud="gcp", region="us-east1", gcp={"project": "my-kumo-project", "subnet_cidr": "0.0.0.0/0"}),
     "kumo:deployment.gcp.subnet_cidr", "IPv4 block between /8 and /29"),
])
def test_field_errors_name_the_key_path(raw, path, fragment):
    found = problems(raw)
    assert path in found, found
    assert fragment in found[path]


def test_missing_required_keys_are_each_named():
    found = problems({"cloud": "aws"})
    for key in ("region", "name", "hostname"):
        assert found[f"kumo:deployment.{key}"] == "required key is missing"


def test_not_a_mapping():
    assert "must be an object" in problems(["cloud", "aws"])["kumo:deployment"]


@pytest.mark.parametrize("raw, path, fragment", [
    (deployment(port25={"outbound": "relay"}), "kumo:deployment.port25.relay", "needs the smarthost"),
    (deployment(cloud="gcp", region="us-central1", gcp={"project": "my-kumo-project"}, port25={"outbound": "direct"}),
     "kumo:deployment.port25.outbound", "GCP blocks outbound port 25"),
    (deployment(cloud="gcp", region="us-central1", gcp={"project": "my-kumo-project"}),
     "kumo:deployment.port25.relay", "outbound: auto resolves to relay"),
    (deployment(cloud="azure", region="westeurope", port25={"outbound": "direct"}),
     "kumo:deployment.port25.outbound", "pay-as-you-go"),
    (deployment(cloud="gcp", region="us-central1", port25={"outbound": "relay", "relay": {"host": "smtp.example.net", "username": "u"}}),
     "kumo:deployment.gcp.project", "project id"),
    (deployment(gcp={"project": "my-kumo-project"}), "kumo:deployment.gcp", "cloud is 'aws'"),
    (deployment(cloud="azure", region="westeurope", os="al2023", port25={"outbound": "relay", "relay": {"host": "smtp.example.net", "username": "u"}}),
     "kumo:deployment.os", "no image on azure"),
    (deployment(sizing={"profile": "performance"}, spool={"storage": "block"}), "kumo:deployment.spool.storage", "local NVMe"),
    (deployment(aws={"subnet_id": "subnet-0abc"}), "kumo:deployment.aws.vpc_id", "give both"),
    (deployment(cloud="azure", region="westeurope", azure={"subscription_type": "ea"}),
     "kumo:deployment.azure.marketplace_terms_accepted", "az vm image terms accept --urn resf:rockylinux-x86_64:9-base"),
    (deployment(dns={"zone": "other.org"}), "kumo:deployment.dns.zone", "not inside zone"),
    (deployment(dns={"zone": "example.com"}), "kumo:deployment.aws.route53_zone_id", "needs the zone"),
])
def test_cross_field_rules(raw, path, fragment):
    found = problems(raw)
    assert path in found, found
    assert fragment in found[path]


@pytest.mark.parametrize("kind, mode", [
    ("ea", "direct"), ("mca-e", "direct"), ("dev-test", "direct"),
    ("pay-as-you-go", "relay"), ("csp", "relay"), ("msdn", "relay"), ("free", "relay"),
])
def test_azure_auto_mode_follows_subscription_type(kind, mode):
    d = parse_deployment(deployment(cloud="azure", region="westeurope", os="alma9", azure={"subscription_type": kind},
                                    port25={"relay": {"host": "smtp.example.net", "username": "u"}}))
    assert d.outbound_mode == mode


def test_all_problems_reported_at_once():
    found = problems(deployment(sizing={"messages_per_hour": 0, "avg_message_kb": 0}, os="centos7"))
    assert len(found) == 3


def test_node_hostnames():
    d = parse_deployment(deployment())
    assert d.node_hostname(0, 1) == "mta.example.com"
    assert [d.node_hostname(i, 3) for i in range(3)] == ["mta1.example.com", "mta2.example.com", "mta3.example.com"]


def test_hostname_is_normalised():
    assert parse_deployment(deployment(hostname="MTA.Example.COM.")).hostname == "mta.example.com"

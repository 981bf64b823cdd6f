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
    (deployment(cloud="oracle"), "kumo:deployment.cloud", "unknown target 'oracle'; one of aws, azure, gcp"),
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


# -- the allowed form of every string field (issue 8, point 1) -----------------------------------
# Each field: a value it accepts (and how it is written back), and values it refuses with the
# form shown. tests/test_hostile_corpus.py feeds every field the hostile payloads.

AZURE = {"cloud": "azure", "region": "westeurope", "os": "ubuntu22",
         "port25": {"relay": {"host": "smtp.relay.example.net", "username": "u"}}}
GCP = {"cloud": "gcp", "region": "us-central1", "os": "alma9",
       "port25": {"outbound": "relay", "relay": {"host": "smtp.relay.example.net", "username": "u"}}}
VNET = ("/subscriptions/6f1c1e7a-3b2d-4c5e-8f90-1a2b3c4d5e6f/resourceGroups/net-rg/providers/"
        "Microsoft.Network/virtualNetworks/mail-net")
GCP_API = "https://www.googleapis.com/compute/v1"
ED25519 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINj9KOaAzhaYUcAaG9+8mDX1dJFtI6zauD5C1V0adTdM"
ECDSA = ("ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBNJipAZQ9psDGtE8YZsTyZT0"
         "ozp1OHBWkvbFlCpBQdCczBxDH/nYuZrQhgwvwp3xlLux4xAriPuRG4S1L4iHcjA=")


def _rsa_key(bits: int) -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=bits).public_key()
    return key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


def at(raw: dict, path: str):
    d = parse_deployment(raw)
    for key in path.split("."):
        d = getattr(d, key)
    return d


@pytest.mark.parametrize("raw, path, written", [
    (deployment(region="ap-southeast-2"), "region", "ap-southeast-2"),
    (deployment(sizing={"instance_type": "m6i.large"}), "sizing.instance_type", "m6i.large"),
    (deployment(port25={"probe_hosts": ["MX1.Example.NET.", "192.0.2.25", "2001:DB8::25"]}), "port25.probe_hosts",
     ["mx1.example.net", "192.0.2.25", "2001:db8::25"]),
    (deployment(port25={"relay": {"host": "smtp.example.net", "username": "a'b\"c$d;e`f\\g"}}),
     "port25.relay.username", "a'b\"c$d;e`f\\g"),  # printable ASCII: passwords-style usernames work
    (deployment(kumomta={"version": "2025.03.19-1fbb1b18"}), "kumomta.version", "2025.03.19-1fbb1b18"),
    (deployment(kumomta={"repo_url": "https://mirror.example.net:8443/kumo/"}), "kumomta.repo_url",
     "https://mirror.example.net:8443/kumo"),
    (deployment(kumomta={"repo_url": "https://[2001:db8::7]/kumo"}), "kumomta.repo_url", "https://[2001:db8::7]/kumo"),
    (deployment(kumomta={"repo_url": "http://mirror:8080/kumo", "repo_key_fingerprint": "ab" * 20}),
     "kumomta.repo_url", "http://mirror:8080/kumo"),
    (deployment(kumomta={"repo_key_fingerprint": "0123 4567 89ab CDEF " * 2 + "0123 4567"}),
     "kumomta.repo_key_fingerprint", "0123456789ABCDEF0123456789ABCDEF01234567"),
    (deployment(dns={"zone": "Example.COM."}, aws={"route53_zone_id": "Z0EXAMPLE12345"}), "dns.zone", "example.com"),
    (deployment(dkim={"domains": ["Example.com", "mail.example.org"]}), "dkim.domains",
     ["example.com", "mail.example.org"]),
    (deployment(dkim={"selector": "s2026-a"}), "dkim.selector", "s2026-a"),
    (deployment(os_updates={"reboot_time": "23:59"}), "os_updates.reboot_time", "23:59"),
    (deployment(aws={"vpc_id": "vpc-0a1b2c3d4e5f67890", "subnet_id": "subnet-0a1b2c3d"}), "aws.subnet_id",
     "subnet-0a1b2c3d"),
    (deployment(aws={"key_name": "ops@laptop+2026=a,b.c_d"}), "aws.key_name", "ops@laptop+2026=a,b.c_d"),
    (deployment(aws={"availability_zone": "us-east-1c"}), "aws.availability_zone", "us-east-1c"),
    (deployment(aws={"availability_zone": "us-east-1-bos-1a"}), "aws.availability_zone", "us-east-1-bos-1a"),
    (deployment(**AZURE, azure={"resource_group": "Mail_(prod).rg-1"}), "azure.resource_group", "Mail_(prod).rg-1"),
    (deployment(**AZURE, azure={"vnet_id": VNET, "subnet_id": f"{VNET}/subnets/mail_1"}), "azure.subnet_id",
     f"{VNET}/subnets/mail_1"),
    (deployment(**AZURE, azure={"ssh_public_key": f"{ED25519} ops@laptop 2026"}), "azure.ssh_public_key",
     f"{ED25519} ops@laptop 2026"),
    (deployment(**AZURE, azure={"ssh_public_key": f"  {ED25519}  "}), "azure.ssh_public_key", ED25519),
    (deployment(**GCP, gcp={"project": "my-kumo-project", "zone": "us-central1-f"}), "gcp.zone", "us-central1-f"),
    (deployment(**GCP, gcp={"project": "my-kumo-project",
                            "network": f"{GCP_API}/projects/host-proj/global/networks/shared",
                            "subnetwork": "projects/host-proj/regions/us-central1/subnetworks/mail"}),
     "gcp.network", f"{GCP_API}/projects/host-proj/global/networks/shared"),
    (deployment(**GCP, gcp={"project": "my-kumo-project", "dns_managed_zone": "example-com"}), "gcp.dns_managed_zone",
     "example-com"),
])
def test_each_string_field_accepts_its_form(raw, path, written):
    assert at(raw, path) == written


def test_ssh_rsa_keys_of_2048_bits_are_accepted():
    key = _rsa_key(2048)
    assert at(deployment(**AZURE, azure={"ssh_public_key": key}), "azure.ssh_public_key") == key


@pytest.mark.parametrize("raw, path, fragment", [
    (deployment(region="us-east-1\n"), "region", "a region name of lowercase letters"),
    (deployment(name="kumo-test\n"), "name", "2-20 characters"),  # '$' alone would match before the newline
    (deployment(hostname="mta.example.com\n"), "hostname", "fully qualified DNS name"),
    (deployment(hostname="mta.ex\u212aample.com"), "hostname", "fully qualified"),  # KELVIN SIGN lowercases to k
    (deployment(hostname=f"{'m' * 61}.example.com"), "hostname", "node number"),
    (deployment(os="rocky9;reboot"), "os", "unknown OS 'rocky9;reboot'"),
    (deployment(sizing={"instance_type": "t3.medium$(x)"}), "sizing.instance_type", "an instance type name"),
    (deployment(port25={"probe_hosts": ["$(touch${IFS}/tmp/x)"]}), "port25.probe_hosts[0]",
     "neither a fully qualified DNS name"),
    (deployment(port25={"probe_hosts": ["fe80::1%eth0"]}), "port25.probe_hosts[0]", "nor an IP address"),
    (deployment(port25={"probe_hosts": []}), "port25.probe_hosts", "at least 1 item"),
    (deployment(port25={"probe_hosts": [f"mx{i}.example.net" for i in range(11)]}), "port25.probe_hosts",
     "at most 10 items"),
    (deployment(port25={"probe_hosts": ["mx.example.net", "MX.example.net"]}), "port25.probe_hosts", "list it once"),
    (deployment(port25={"relay": {"host": "smtp.example.net", "username": "user\x01"}}), "port25.relay.username",
     "printable ASCII"),
    (deployment(port25={"relay": {"host": "smtp.example.net", "username": "two words"}}), "port25.relay.username",
     "without spaces"),
    (deployment(port25={"relay": {"host": "smtp.example.net", "username": "u" * 257}}), "port25.relay.username",
     "1-256"),
    (deployment(port25={"relay": {"host": "smtp.example.net", "username": ""}}), "port25.relay.username", "1-256"),
    (deployment(port25={"relay": {"host": "smtp.example.net:587", "username": "u"}}), "port25.relay.host",
     "fully qualified"),
    (deployment(kumomta={"version": "1.0..2"}), "kumomta.version", "separated by single"),
    (deployment(kumomta={"version": "1" * 65}), "kumomta.version", "at most 64"),
    (deployment(kumomta={"repo_url": "https://user:pw@mirror.example.net"}), "kumomta.repo_url", "no user:password@"),
    (deployment(kumomta={"repo_url": "https://mirror.example.net/kumo?x=1"}), "kumomta.repo_url", "?query"),
    (deployment(kumomta={"repo_url": "https://mirror.example.net/#x"}), "kumomta.repo_url", "#fragment"),
    (deployment(kumomta={"repo_url": "https://mirror.example.net/a/../b"}), "kumomta.repo_url", "'..'"),
    (deployment(kumomta={"repo_url": "https://mirror.example.net/%2e%2e/b"}), "kumomta.repo_url", "an https:// URL"),
    (deployment(kumomta={"repo_url": "https://mirror.example.net/k\tumo"}), "kumomta.repo_url", "an https:// URL"),
    (deployment(kumomta={"repo_url": "https://[fe80::1%25eth0]/kumo"}), "kumomta.repo_url", "an https:// URL"),
    (deployment(kumomta={"repo_url": "https://mirror.example.net:0/"}), "kumomta.repo_url", ":port"),
    (deployment(kumomta={"repo_url": "https://mirror.example.net:99999/"}), "kumomta.repo_url", ":port"),
    (deployment(kumomta={"repo_url": "https://999.1.1.1/"}), "kumomta.repo_url", "an https:// URL"),
    (deployment(kumomta={"repo_url": "https:/mirror.example.net"}), "kumomta.repo_url", "an https:// URL"),
    (deployment(kumomta={"repo_url": "http://mirror.example.net"}), "kumomta.repo_url", "repo_key_fingerprint"),
    (deployment(kumomta={"repo_key_fingerprint": "\ufb00" * 20}), "kumomta.repo_key_fingerprint", "40-hex-digit"),
    (deployment(dns={"zone": "example.com;x"}), "dns.zone", "fully qualified"),
    (deployment(dkim={"domains": ["example.com", "EXAMPLE.com"]}), "dkim.domains", "list it once"),
    (deployment(dkim={"domains": ["exa mple.com"]}), "dkim.domains[0]", "fully qualified"),
    (deployment(os_updates={"reboot_time": "24:00"}), "os_updates.reboot_time", "HH:MM"),
    (deployment(aws={"vpc_id": "vpc-" + "a" * 18, "subnet_id": "subnet-0a1b2c3d"}), "aws.vpc_id", "a VPC id"),
    (deployment(aws={"key_name": "ops key"}), "aws.key_name", "an EC2 key pair name"),
    (deployment(aws={"key_name": "k" * 256}), "aws.key_name", "up to 255"),
    (deployment(aws={"availability_zone": "us-west-2a"}), "aws.availability_zone", "not a zone of region us-east-1"),
    (deployment(aws={"availability_zone": "us-east-1"}), "aws.availability_zone", "not a zone of region us-east-1"),
    (deployment(aws={"availability_zone": "us-east-1ab"}), "aws.availability_zone", "not a zone of region"),
    (deployment(aws={"route53_zone_id": "/hostedzone/Z0EXAMPLE"}), "aws.route53_zone_id", "without /hostedzone/"),
    (deployment(aws={"route53_zone_id": "z0example"}), "aws.route53_zone_id", "a Route 53 hosted zone id"),
    (deployment(**AZURE, azure={"resource_group": "rg."}), "azure.resource_group", "not ending in '.'"),
    (deployment(**AZURE, azure={"resource_group": "r" * 91}), "azure.resource_group", "1-90"),
    (deployment(**AZURE, azure={"dns_zone_resource_group": "dns rg"}), "azure.dns_zone_resource_group", "1-90"),
    (deployment(**AZURE, azure={"vnet_id": VNET.replace("6f1c1e7a-", "0-"), "subnet_id": f"{VNET}/subnets/a"}),
     "azure.vnet_id", "a virtual network resource id"),
    (deployment(**AZURE, azure={"vnet_id": VNET, "subnet_id": VNET}), "azure.subnet_id", "a subnet resource id"),
    (deployment(**AZURE, azure={"vnet_id": VNET, "subnet_id": f"{VNET[:-1]}x/subnets/mail"}), "azure.subnet_id",
     "not in the virtual network"),
    (deployment(**AZURE, azure={"ssh_public_key": "ssh-ed25519 AAAAnotakey"}), "azure.ssh_public_key",
     "does not decode"),
    (deployment(**AZURE, azure={"ssh_public_key": ECDSA}), "azure.ssh_public_key", "ssh-ed25519 AAAA... or ssh-rsa"),
    (deployment(**AZURE, azure={"ssh_public_key": f"{ED25519} it's mine"}), "azure.ssh_public_key", "comment"),
    (deployment(**AZURE, azure={"ssh_public_key": f"{ED25519}\nssh-rsa AAAA"}), "azure.ssh_public_key", "one line"),
    (deployment(**AZURE, azure={"ssh_public_key": "ssh-rsa" + ED25519[len("ssh-ed25519"):]}),
     "azure.ssh_public_key", "does not decode"),
    (deployment(**GCP, gcp={"project": "p"}), "gcp.project", "6-30 lowercase letters"),
    (deployment(**GCP, gcp={"project": "example.com:my-project"}), "gcp.project", "a GCP project id"),
    (deployment(**GCP, gcp={"project": "my-project-"}), "gcp.project", "not ending with a hyphen"),
    (deployment(**GCP, gcp={"project": "my-kumo-project", "zone": "europe-west4-a"}), "gcp.zone",
     "not a zone of region us-central1"),
    (deployment(**GCP, gcp={"project": "my-kumo-project", "network": "Shared"}), "gcp.network",
     "a VPC network name"),
    (deployment(**GCP, gcp={"project": "my-kumo-project", "network": "shared",
                            "subnetwork": "projects/my-kumo-project/regions/europe-west4/subnetworks/mail"}),
     "gcp.subnetwork", "in region europe-west4"),
    (deployment(**GCP, gcp={"project": "my-kumo-project", "network": "shared", "subnetwork": "../mail"}),
     "gcp.subnetwork", "a subnetwork name"),
    (deployment(**GCP, gcp={"project": "my-kumo-project", "dns_managed_zone": "example.com"}), "gcp.dns_managed_zone",
     "a Cloud DNS managed zone name"),
])
def test_each_string_field_refuses_other_forms_showing_the_allowed_one(raw, path, fragment):
    found = problems(raw)
    key = f"kumo:deployment.{path}"
    assert key in found, found
    assert fragment in found[key], found[key]


def test_short_rsa_keys_are_refused():
    found = problems(deployment(**AZURE, azure={"ssh_public_key": _rsa_key(1024)}))
    assert "1024 bits; Azure needs 2048 or more" in found["kumo:deployment.azure.ssh_public_key"]


@pytest.mark.parametrize("selector", ["bad_selector", "kumo.2026", "Kumo", "-kumo", "kumo-", "k/../x", "a" * 64,
                                      "kumo\n", ""])
def test_dkim_selector_with_bad_characters_is_refused_naming_the_key(selector):
    # The selector names a DNS label and the key file on the node (/opt/kumomta/etc/dkim/<domain>/<selector>.key).
    found = problems(deployment(dkim={"domains": ["example.com"], "selector": selector}))
    assert "DKIM selector" in found["kumo:deployment.dkim.selector"]


def test_error_messages_never_carry_a_raw_control_character_or_a_huge_value():
    found = problems(deployment(hostname="mta\x1b[2J.example.com" + "x" * 5000))
    message = found["kumo:deployment.hostname"]
    assert "\x1b" not in message and "\\x1b" in message and len(message) < 400

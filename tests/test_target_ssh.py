"""The ssh target: existing machines, KumoMTA installed over SSH with pulumi-command.

Config: every value of ``kumo:deployment.ssh`` is hostile until validated, and each refusal
names its key path. Component: the resources SshKumoMta registers under the mock engine, read
from the recorded inputs and options (secret markers included), as the VM test
(tests/vm/test_remote_command.py) then runs them over a real SSH connection.
"""

from __future__ import annotations

import copy
import hashlib
import json
import subprocess
import sys
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from kumo_infra import offline, port25, program, secretspec, stackconfig, targets
from kumo_infra.config import ROOT, parse_deployment
from kumo_infra.errors import ConfigError
from kumo_infra.targets.ssh import config as ssh_config
from tests.conftest import ROOT as ROOT_DIR
from tests.contract_deployments import plain

ED25519_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKoZYfLZGWV7DyQqkvFqSRe2jJp3sEA2k4etLfWd47R7"
ECDSA_KEY = ("ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBPqrFvc8IimOvIaSBCDEZmc+ZRoYzwV"
             "jnC2jqC3q5Hlj4ZhFILDiJN14GVXowKHHoOj+1/WG0VT92Y3DXGFXZR8=")


def openssh(public_key: Any) -> str:
    return public_key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


# Two hosts are a fleet: they share their throttles through the operator's Redis (no managed one here).
REDIS_URL = "rediss://redis.example.net:6380/2"


def base(**overrides: Any) -> dict:
    raw = {
        "cloud": "ssh", "name": "kumo-lab", "hostname": "mta.example.com", "os": "debian12",
        "port25": {"outbound": "direct"}, "fleet": {"redis_url": REDIS_URL},
        "ssh": {"hosts": [{"address": "192.0.2.10", "hostname": "mta1.example.com", "host_key": ED25519_KEY},
                          {"address": "192.0.2.11", "hostname": "mta2.example.com", "host_key": ECDSA_KEY,
                           "user": "deploy", "port": 2222}]},
    }
    raw.update(overrides)
    return raw


def with_host(index: int, **fields: Any) -> dict:
    raw = base()
    host = raw["ssh"]["hosts"][index]
    for key, value in fields.items():
        if value is None:
            host.pop(key, None)
        else:
            host[key] = value
    return raw


def problems(raw: dict) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        parse_deployment(raw)
    return {p.path: p.message for p in info.value.problems}


def refused(raw: dict, path: str, *words: str) -> str:
    found = problems(raw)
    assert f"{ROOT}.{path}" in found, found
    message = found[f"{ROOT}.{path}"]
    for word in words:
        assert word in message, message
    return message


# -- the section: what is accepted -------------------------------------------------------------

def test_the_target_is_registered():
    assert "ssh" in targets.PACKAGES and targets.get("ssh").catalog is None and targets.get("ssh").images is None


def test_a_valid_section_takes_the_defaults():
    d = parse_deployment(base())
    first, second = d.ssh.hosts
    assert (first.user, first.port, first.spool_device) == ("root", 22, None)
    assert (second.user, second.port) == ("deploy", 2222)
    assert d.region is None and d.nodes is None
    assert [d.node_hostname(i, 2) for i in range(2)] == ["mta1.example.com", "mta2.example.com"]


def test_a_single_host_without_a_hostname_is_named_kumo_deployment_hostname():
    raw = base()
    raw["ssh"]["hosts"] = [{"address": "192.0.2.10", "host_key": ED25519_KEY}]
    d = parse_deployment(raw)
    assert d.ssh.hosts[0].hostname is None and d.node_hostname(0, 1) == "mta.example.com"


def test_with_several_hosts_each_needs_its_own_hostname():
    # A position-numbered name would move to another machine when hosts[0] is removed.
    message = refused(with_host(1, hostname=None), "ssh.hosts[1].hostname", "more than one host", "PTR")
    assert "removed" in message
    assert f"{ROOT}.ssh.hosts[0].hostname" not in problems(with_host(1, hostname=None))


def test_a_host_key_is_kept_as_type_and_key_without_its_comment():
    d = parse_deployment(with_host(0, host_key=f"  {ED25519_KEY} root@mta1  "))
    assert d.ssh.hosts[0].host_key == ED25519_KEY


@pytest.mark.parametrize("make", [
    lambda: ed25519.Ed25519PrivateKey.generate(),
    lambda: ec.generate_private_key(ec.SECP256R1()),
    lambda: ec.generate_private_key(ec.SECP384R1()),
    lambda: ec.generate_private_key(ec.SECP521R1()),
], ids=["ed25519", "nistp256", "nistp384", "nistp521"])
def test_every_host_key_type_pulumi_command_can_pin_is_accepted(make):
    key = openssh(make().public_key())
    assert parse_deployment(with_host(0, host_key=key)).ssh.hosts[0].host_key == key


def test_addresses_may_be_ipv6_or_names_with_a_public_ip():
    d = parse_deployment(with_host(0, address="2001:DB8::10", public_ip="192.0.2.20"))
    assert d.ssh.hosts[0].address == "2001:db8::10" and d.ssh.hosts[0].mail_address == "192.0.2.20"
    d = parse_deployment(with_host(0, address="MTA1.Example.NET.", public_ip="192.0.2.20", private_address="10.0.0.10"))
    assert d.ssh.hosts[0].address == "mta1.example.net"
    d = parse_deployment(with_host(0, address="10.1.2.3", public_ip="198.51.100.7"))
    assert d.ssh.hosts[0].mail_address == "198.51.100.7"


def test_a_hostname_per_host_names_that_node():
    raw = with_host(1, hostname="smtp-b.example.net")
    d = parse_deployment(raw)
    assert [d.node_hostname(i, 2) for i in range(2)] == ["mta1.example.com", "smtp-b.example.net"]


def test_the_same_machine_on_another_port_is_another_host():
    # Another machine behind the same address (a port forward), sending mail from its own address.
    parse_deployment(with_host(1, address="192.0.2.10", port=2200, public_ip="192.0.2.20"))


# -- the section: what is refused, each naming its key --------------------------------------------

def test_the_section_is_required():
    raw = base()
    del raw["ssh"]
    refused(raw, "ssh.hosts", "kumo:sshPrivateKey", "host_key")


@pytest.mark.parametrize("hosts, words", [
    ([], ("at least 1",)),
    ([{"address": f"192.0.2.{i % 250 + 1}", "port": 1000 + i, "host_key": ED25519_KEY} for i in range(101)],
     ("at most 100",)),
])
def test_between_one_and_a_hundred_hosts(hosts, words):
    refused(base(ssh={"hosts": hosts}), "ssh.hosts", *words)


@pytest.mark.parametrize("address", [
    "192.0.2.10%eth0", "fe80::1%eth0", "mta1", "mta 1.example.com", "-oProxyCommand=x", "0.0.0.0", "::",
    "224.0.0.1", "192.0.2.10\n", "192.0.2.10; id", "", "x" * 300,
])
def test_bad_addresses_are_refused(address):
    refused(with_host(0, address=address), "ssh.hosts[0].address")


@pytest.mark.parametrize("address, why", [("mta1.example.net", "a DNS name"), ("10.0.0.5", "not a public"),
                                          ("2001:db8::10", "not a public IPv4")])
def test_an_address_that_is_no_public_ipv4_needs_public_ip(address, why):
    refused(with_host(0, address=address), "ssh.hosts[0].public_ip", why, "A, PTR and SPF")


@pytest.mark.parametrize("public_ip, words", [
    ("10.0.0.5", ("not a public address",)), ("100.64.1.1", ("not a public address",)),
    ("127.0.0.1", ("not a public",)), ("2001:db8::1", ("not an IPv4",)), ("mta.example.com", ("not an IPv4",)),
    ("192.0.2.1/32", ("not an IPv4",)),
])
def test_bad_public_ips_are_refused(public_ip, words):
    refused(with_host(0, public_ip=public_ip), "ssh.hosts[0].public_ip", *words)


@pytest.mark.parametrize("hostname", ["mta", "bad_name.example.com", "-mta.example.com", "mta.example.com\n"])
def test_bad_hostnames_are_refused(hostname):
    refused(with_host(0, hostname=hostname), "ssh.hosts[0].hostname")


@pytest.mark.parametrize("user", ["Root", "1deploy", "-oProxyCommand=x", "root;id", "root user", "a" * 33,
                                  "deploy$", "", "r\u00f6ot"])
def test_bad_users_are_refused(user):
    refused(with_host(0, user=user), "ssh.hosts[0].user")


@pytest.mark.parametrize("port", [0, 65536, -1, "22; id", 22.5, True, False, "22"])
def test_bad_ports_are_refused(port):
    refused(with_host(0, port=port), "ssh.hosts[0].port")


def test_a_port_as_the_engine_hands_it_over_is_a_port():
    # Pulumi's engine carries every number as a float (a component used from another language gets 2222.0).
    assert parse_deployment(with_host(1, port=2222.0)).ssh.hosts[1].port == 2222


def test_a_host_key_is_required_never_trusted_on_first_use():
    refused(with_host(0, host_key=None), "ssh.hosts[0].host_key", "required")


def test_an_rsa_host_key_is_refused_saying_why():
    key = openssh(rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key())
    refused(with_host(0, host_key=key), "ssh.hosts[0].host_key", "SHA-1", "ssh_host_ed25519_key.pub")


@pytest.mark.parametrize("host_key, words", [
    (f"192.0.2.10 {ED25519_KEY}", ("starts with a host name",)),
    (f"[192.0.2.10]:2222 {ED25519_KEY}", ("starts with a host name",)),
    ("ssh-ed25519 AAAAnotakey", ("does not decode",)),
    ("ssh-dss AAAAB3NzaC1kc3MAAACBAP", ("not a host key type",)),
    (f"ecdsa-sha2-nistp256 {ED25519_KEY.split()[1]}", ("does not decode",)),
    (f"{ED25519_KEY}\n{ECDSA_KEY}", ("is not",)),
    (f"{ED25519_KEY} comment\x1b[2J", ("is not",)),
    ("", ("is not",)),
])
def test_bad_host_keys_are_refused(host_key, words):
    refused(with_host(0, host_key=host_key), "ssh.hosts[0].host_key", *words)


@pytest.mark.parametrize("device, words", [
    ("/dev/sdb", ("discovery order", "/dev/disk/by-id/")),
    ("/dev/nvme1n1", ("discovery order",)),
    ("/dev/disk/by-uuid/0f6e1c1e-0d51-4b59-9b1d-1b1b1b1b1b1b", ("by-id",)),
    ("/dev/disk/by-path/pci-0000:00:10.0-scsi-0:0:1:0", ("by-id",)),
    ("/dev/disk/by-id/wwn-0x5000c500a1b2c3d4-part1", ("partition",)),
    ("/dev/disk/by-id/../../sda", ("by-id",)),
    ("/dev/disk/by-id/a b", ("by-id",)),
    ("/dev/disk/by-id/x;rm -rf /", ("by-id",)),
    ("/dev/disk/by-id/*", ("by-id",)),
    ("/dev/disk/by-id/dm-name-vg0-spool", ("logical device",)),
    ("/dev/disk/by-id/dm-uuid-LVM-abcdef0123456789", ("logical device",)),
    ("/dev/disk/by-id/md-uuid-0a1b2c3d:4e5f6a7b:8c9d0e1f:2a3b4c5d", ("logical device",)),
    ("/dev/disk/by-id/md-name-mta1:0", ("logical device",)),
    ("/dev/disk/by-id/lvm-pv-uuid-AbCdEf-0123-4567", ("logical device",)),
    ("/dev/disk/by-id/usb-SanDisk_Ultra_4C530001", ("removable",)),
    ("/dev/disk/by-id/mmc-SD32G_0x12345678", ("removable",)),
])
def test_bad_spool_devices_are_refused(device, words):
    raw = with_host(0, spool_device=device)
    raw["ssh"]["hosts"][1]["spool_device"] = "/dev/disk/by-id/wwn-0x5000c500a1b2c3e5"
    refused(raw, "ssh.hosts[0].spool_device", *words)


@pytest.mark.parametrize("device", [
    "/dev/disk/by-id/wwn-0x5000c500a1b2c3d4", "/dev/disk/by-id/nvme-Samsung_SSD_980_PRO_1TB_S5GXNF0R123456A",
    "/dev/disk/by-id/nvme-eui.002538b111b2c3d4", "/dev/disk/by-id/scsi-36000c29a1b2c3d4e5f6a7b8c9d0e1f2a",
    "/dev/disk/by-id/ata-WDC_WD40EFRX-68N32N0_WD-WCC7K1234567", "/dev/disk/by-id/virtio-spool0",
    "/dev/disk/by-id/cciss-3600508b1001c1234"])
def test_whole_disk_names_from_udevs_persistent_storage_rules_are_accepted(device):
    raw = with_host(0, spool_device=device)
    raw["ssh"]["hosts"][1]["spool_device"] = "/dev/disk/by-id/wwn-0x5000c500a1b2c3e5"
    assert parse_deployment(raw).ssh.hosts[0].spool_device == device


def test_a_spool_device_on_some_hosts_only_is_refused():
    refused(with_host(0, spool_device="/dev/disk/by-id/wwn-0x5000c500a1b2c3d4"), "ssh.hosts[1].spool_device",
            "every host or on none")


def test_the_private_key_never_goes_in_the_section():
    found = problems(with_host(0, private_key="-----BEGIN OPENSSH PRIVATE KEY-----"))
    assert found == {f"{ROOT}.ssh.hosts[0].private_key": "unknown key; check the spelling against the README's "
                                                         "configuration table"}


def test_the_same_address_and_port_twice_is_refused():
    refused(with_host(1, address="192.0.2.10", port=22), "ssh.hosts[1].address", "hosts[0]")


def test_one_spool_disk_named_by_two_hosts_is_refused():
    # A shared SAN LUN mounted by two machines corrupts its filesystem: mail lost.
    raw = with_host(0, spool_device="/dev/disk/by-id/wwn-0x5000c500a1b2c3d4")
    raw["ssh"]["hosts"][1]["spool_device"] = "/dev/disk/by-id/wwn-0x5000c500a1b2c3d4"
    refused(raw, "ssh.hosts[1].spool_device", "hosts[0]", "shared", "a disk of its own")


def test_one_host_key_under_two_hosts_is_refused():
    refused(with_host(1, host_key=ED25519_KEY), "ssh.hosts[1].host_key", "hosts[0]", "listed twice")


@pytest.mark.parametrize("fields", [{"public_ip": "192.0.2.10"}, {"address": "10.0.0.11", "public_ip": "192.0.2.10"}],
                         ids=["public_ip-is-the-other-address", "both-public_ip"])
def test_one_mail_address_under_two_hosts_is_refused(fields):
    raw = with_host(1, **fields)
    if fields.get("address") == "10.0.0.11":
        raw["ssh"]["hosts"][0].update(address="10.0.0.10", public_ip="192.0.2.10")
    refused(raw, "ssh.hosts[1].public_ip", "hosts[0]", "PTR")


def test_two_hosts_with_one_name_are_refused():
    refused(with_host(1, hostname="mta1.example.com"), "ssh.hosts[1].hostname", "hosts[0]")


@pytest.mark.parametrize("key, value, words", [
    ("nodes", 3, ("one node on each host",)),
    ("sizing", {"instance_type": "m6i.large"}, ("no instance type",)),
    ("region", "us-east-1", ("no region",)),
    ("spool", {"storage": "local_nvme"}, ("never scans",)),
    ("spool", {"size_gb": 100}, ("whole of each spool_device",)),
    ("dns", {"forward_records_exist": True}, ("sets no PTR",)),
    ("lifecycle", {"replace_on_bootstrap_change": True}, ("nothing is replaced",)),
])
def test_keys_that_mean_nothing_for_existing_machines_are_refused(key, value, words):
    path = key if not isinstance(value, dict) else f"{key}.{next(iter(value))}"
    refused(base(**{key: value}), path, *words)


def test_block_spool_needs_the_devices():
    refused(base(spool={"storage": "block"}), "ssh.hosts[0].spool_device", "/dev/disk/by-id/")


def test_dns_zone_is_refused_kumo_infra_writes_no_records_here():
    refused(base(dns={"zone": "example.com"}), "dns.zone", "writes no DNS records")


@pytest.mark.parametrize("port25", [{}, {"outbound": "auto"}])
def test_outbound_port_25_must_be_stated(port25):
    refused(base(port25=port25), "port25.outbound", "cannot know", "outbound: direct")


def test_relay_mode_is_accepted_with_its_smarthost():
    d = parse_deployment(base(port25={"outbound": "relay", "relay": {"host": "smtp.example.net", "username": "u"}}))
    assert d.outbound_mode == "relay"


# -- what the target derives from the section ----------------------------------------------------------

def test_the_spool_is_a_directory_without_devices_and_block_with_them():
    assert parse_deployment(base()).spool_storage == "directory"
    raw = with_host(0, spool_device="/dev/disk/by-id/wwn-0x5000c500a1b2c3d4")
    raw["ssh"]["hosts"][1]["spool_device"] = "/dev/disk/by-id/nvme-Samsung_SSD_980_PRO_1TB_S5GXNF0R123456A"
    d = parse_deployment(raw)
    assert d.spool_storage == "block"
    target = targets.get("ssh")
    assert target.spool_device_paths(d, "block", d.ssh.hosts[1].spool_device) == [d.ssh.hosts[1].spool_device]
    assert target.spool_device_paths(d, "block", None) == []


def test_the_performance_profile_keeps_the_spool_where_the_hosts_say():
    d = parse_deployment(base(sizing={"profile": "performance"}))
    assert d.spool_storage == "directory"


def test_the_plan_is_one_node_per_host_with_each_ones_needs():
    stack = stackconfig.from_values("lab", {ROOT: base(sizing={"messages_per_hour": 2_000_000})})
    assert stack.plan.nodes == 2 and stack.plan.instance_type == "existing"
    assert stack.plan.spool_storage == "directory"


def test_a_directory_spool_and_an_unenforced_firewall_are_warned_about():
    stack = stackconfig.from_values("lab", {ROOT: base(network={"api_cidrs": ["198.51.100.0/24"]})})
    text = "\n".join(stack.warnings)
    assert f"{ROOT}.ssh.hosts[].spool_device is unset" in text
    assert "creates no firewall on existing machines" in text
    with_disks = base()
    for i, host in enumerate(with_disks["ssh"]["hosts"]):
        host["spool_device"] = f"/dev/disk/by-id/wwn-0x5000c500a1b2c3d{i}"
    assert not any("spool_device" in w for w in stackconfig.from_values("lab", {ROOT: with_disks}).warnings)


def test_the_private_key_is_a_known_secret_key_refused_in_plain_text():
    key = ssh_config.PRIVATE_KEY_CONFIG
    stack = stackconfig.from_values("lab", {ROOT: base(), key: {"secure": "v1:abc"}})
    assert key in stack.secrets_set and not any(key in w for w in stack.warnings)
    with pytest.raises(ConfigError) as info:
        stackconfig.from_values("lab", {ROOT: base(), key: "-----BEGIN OPENSSH PRIVATE KEY-----"})
    assert [p.path for p in info.value.problems] == [key]
    unset = stackconfig.from_values("lab", {ROOT: base()})
    assert any(key in w and "pulumi config set --secret" in w for w in unset.warnings)


def test_secrets_are_delivered_and_read_from_the_first_node():
    d = parse_deployment(base(network={"api_cidrs": ["198.51.100.0/24"]}, dkim={"domains": ["example.com"]}))
    specs = {s.key: s for s in secretspec.secret_specs(d)}
    api = specs[secretspec.API_PASSWORD]
    assert secretspec.reference(d, api) == "delivered:api-password"
    assert secretspec.read_command(d, api) == f"ssh root@192.0.2.10 cat {secretspec.API_PASSWORD_PATH}"
    second_first = base()
    second_first["ssh"]["hosts"].reverse()
    d = parse_deployment({**second_first, "network": {"api_cidrs": ["198.51.100.0/24"]}})
    assert secretspec.read_command(d, api) == f"ssh -p 2222 deploy@192.0.2.11 sudo cat {secretspec.API_PASSWORD_PATH}"


def test_port25_lists_the_configured_addresses_and_the_records_to_publish():
    stack = stackconfig.from_values("lab", {ROOT: base()})
    rep = port25.report(stack.deployment, stack.plan)
    assert [n["public_ip"] for n in rep["nodes"]] == ["192.0.2.10", "192.0.2.11"]
    assert rep["records"][0] == {"hostname": "mta1.example.com", "public_ip": "192.0.2.10",
                                 "ptr_name": "10.2.0.192.in-addr.arpa"}
    text = port25.format_report(rep)
    assert "mta2.example.com. A 192.0.2.11" in text and "11.2.0.192.in-addr.arpa. PTR mta2.example.com." in text
    assert not any("firewall" in x and "allows" in x for x in rep["kumo_infra_does"])


# -- the component under the mock engine -------------------------------------------------------------

PRIVATE_KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA-test-private-key\n-----END OPENSSH PRIVATE KEY-----\n"
RELAY_PW = "s3cr3t-relay-pw-'\"$(id)"
REDIS_PW = "r3d1s:pw@/%'\"$(id)"
COPY = "command:remote:CopyToRemote"
COMMAND = "command:remote:Command"
RELAY = {"outbound": "relay", "relay": {"host": "smtp.example.net", "port": 587, "username": "kumo"}}
EVERYTHING = {"port25": RELAY, "dkim": {"domains": ["example.com", "example.org"]},
              "network": {"api_cidrs": ["198.51.100.0/24"]}}


def run_stack(raw: dict, *, private_key: str | None = PRIVATE_KEY, relay_password: str | None = RELAY_PW,
              redis_password: str | None = REDIS_PW, preview: bool = False) -> offline.OfflineResult:
    values: dict[str, Any] = {ROOT: raw}
    secret_keys = []
    for key, value in ((ssh_config.PRIVATE_KEY_CONFIG, private_key), ("kumo:relayPassword", relay_password),
                       ("kumo:redisPassword", redis_password)):
        if value is not None:
            values[key] = value
            secret_keys.append(key)
    return offline.run(program.run, values, stack="lab", secret_keys=secret_keys, preview=preview)


def by_name(result: offline.OfflineResult, token: str) -> list[offline.RecordedResource]:
    """The resources of ``token`` in node order (the engine registers them in any order)."""
    return sorted(result.of_type(token), key=lambda r: r.name)


def installer_text(copy_resource: offline.RecordedResource) -> str:
    return copy_resource.inputs["source"]["asset"]["text"]


def installed_files(text: str) -> dict[str, str]:
    """The node files an installer writes (put_file PATH MODE <<'KUMO_EOF' base64 ... KUMO_EOF)."""
    import base64
    import re
    import shlex

    found = {}
    for match in re.finditer(r"^put_file (\S+) [0-7]+ <<'KUMO_EOF'\n(.*?)^KUMO_EOF$", text, re.M | re.S):
        found[shlex.split(match.group(1))[0]] = base64.b64decode(match.group(2)).decode()
    return found


def stdin_secrets(command: offline.RecordedResource) -> dict[str, str]:
    """The secrets an install command's standard input carries (key to value)."""
    import base64

    assert offline.is_secret(command.inputs["stdin"]), "the standard input must reach the engine as a secret"
    lines = plain(command.inputs["stdin"]).splitlines()
    assert lines[0] == "kumo-infra delivered-secrets 1" and lines[-1] == f"end {len(lines) - 2}"
    return {key: base64.b64decode(value).decode() for key, value in (line.split(" ") for line in lines[1:-1])}


def test_each_host_gets_its_installer_copied_then_run():
    from kumo_infra.bootstrap import INSTALL_COMMAND, INSTALLER_REMOTE_PATH

    result = run_stack(base())
    assert result.one("kumo:index:SshKumoMta").name == "kumo-lab"
    copies, commands = by_name(result, COPY), by_name(result, COMMAND)
    assert [c.name for c in copies] == ["kumo-lab-node1-installer", "kumo-lab-node2-installer"]
    assert [c.name for c in commands] == ["kumo-lab-node1-install", "kumo-lab-node2-install"]
    for copy_resource, command in zip(copies, commands):
        assert copy_resource.parent == command.parent == "kumo-lab"
        assert copy_resource.inputs["remotePath"] == INSTALLER_REMOTE_PATH
        assert command.inputs["create"] == INSTALL_COMMAND
        assert copy_resource.urn in command.dependencies  # the command runs after its own copy
    # Nothing else: no machine, disk, network, firewall, DNS record or secret store is created.
    assert {r.type for r in result.resources} == {"kumo:index:SshKumoMta", COPY, COMMAND}


def test_each_installer_is_its_own_nodes_rendering():
    from kumo_infra.bootstrap import render_ssh_installer

    raw = base()
    for i, host in enumerate(raw["ssh"]["hosts"]):
        host["spool_device"] = f"/dev/disk/by-id/wwn-0x5000c500a1b2c3d{i}"
    result = run_stack(raw)
    stack = stackconfig.from_values("lab", {ROOT: raw})
    for i, copy_resource in enumerate(by_name(result, COPY)):
        device = raw["ssh"]["hosts"][i]["spool_device"]
        assert installer_text(copy_resource) == render_ssh_installer(stack.deployment, stack.plan, i,
                                                                     spool_volume_id=device)
        settings = installed_files(installer_text(copy_resource))["/etc/kumo-infra/bootstrap.env"]
        assert f"KUMO_HOSTNAME=mta{i + 1}.example.com\n" in settings
        assert f"KUMO_SPOOL_STORAGE=block\n" in settings and f"KUMO_SPOOL_DEVICE_PATHS={device}\n" in settings


def test_a_directory_spool_names_no_device():
    settings = installed_files(installer_text(by_name(run_stack(base()), COPY)[0]))["/etc/kumo-infra/bootstrap.env"]
    assert "KUMO_SPOOL_STORAGE=directory\n" in settings and "KUMO_SPOOL_DEVICE_PATHS=''\n" in settings


def test_the_host_key_is_pinned_on_every_connection():
    raw = base()
    result = run_stack(raw)
    for resource in by_name(result, COPY) + by_name(result, COMMAND):
        # The connection carries the private key: the whole of it reaches the engine as a secret.
        assert offline.is_secret(resource.inputs["connection"])
        conn = plain(resource.inputs["connection"])
        host = raw["ssh"]["hosts"][int(resource.name.split("-node")[1].split("-")[0]) - 1]
        assert conn["hostKey"] == host["host_key"]  # pulumi-command: ssh.FixedHostKey, never InsecureIgnoreHostKey
        assert (conn["host"], conn["port"], conn["user"]) == (host["address"], host.get("port", 22),
                                                              host.get("user", "root"))
        assert conn["privateKey"] == PRIVATE_KEY
        assert conn["dialErrorLimit"] > 0 and conn["perDialTimeout"] > 0
        assert not {"password", "proxy", "agentSocketPath", "privateKeyPassword"} & set(conn)


def test_secrets_travel_only_on_the_install_commands_stdin():
    result = run_stack(base(**EVERYTHING))
    commands = by_name(result, COMMAND)
    delivered = stdin_secrets(commands[0])
    d = parse_deployment(base(**EVERYTHING))
    assert sorted(delivered) == sorted(s.key for s in secretspec.secret_specs(d))
    assert delivered["relay-password"] == RELAY_PW
    assert delivered["api-password"].startswith("offline-generated-password-of-")
    assert "PRIVATE KEY" in delivered["dkim-example-com-kumo"] and "PRIVATE KEY" in delivered["api-tls-key"]
    assert all(stdin_secrets(c) == delivered for c in commands)  # every node gets every secret
    # The fleet's Redis URL with the password as its userinfo, percent-encoded; the peers in node order.
    assert delivered["redis-url"] == "rediss://:r3d1s%3Apw%40%2F%25%27%22%24%28id%29@redis.example.net:6380/2"
    assert json.loads(delivered["fleet-peers"]) == ["192.0.2.10", "192.0.2.11"]
    # No value, nor its base64 form, anywhere but the standard input: not in a command line, an
    # installer, a trigger, the component's inputs or any output. The certificate and the peer list are public.
    values = [v for k, v in delivered.items() if k not in ("api-tls-cert", "fleet-peers")] + [PRIVATE_KEY, REDIS_PW]
    import base64
    needles = values + [base64.b64encode(v.encode()).decode() for v in values]
    for resource in result.resources:
        for name, value in resource.inputs.items():
            if (resource.type, name) in ((COMMAND, "stdin"),) or name == "connection":
                continue
            text = json.dumps(plain(value))
            assert not any(n in text or n in json.dumps(value) for n in needles), (resource.name, name)
    for resource in by_name(result, COPY):
        assert not any(n in installer_text(resource) for n in needles)
    outputs = json.dumps(result.outputs)
    assert not any(n in outputs for n in needles)
    # The private key is in the connections alone (a secret), never on the standard input.
    assert PRIVATE_KEY not in json.dumps(delivered)


def test_the_command_that_carries_secrets_logs_nothing_and_sets_no_environment():
    for command in by_name(run_stack(base(**EVERYTHING)), COMMAND):
        assert command.inputs["logging"] == "none"
        assert "environment" not in command.inputs  # sshd refuses Setenv without AcceptEnv
        assert command.inputs["addPreviousOutputInEnv"] is False  # no earlier output sent back as Setenv
        assert {"stdout", "stderr"} <= set(command.additional_secret_outputs)
        assert command.inputs["create"] == command.inputs["create"].strip() and "$KUMO" not in command.inputs["create"]


def test_nothing_is_ever_removed_from_a_machine():
    result = run_stack(base(**EVERYTHING))
    for resource in by_name(result, COMMAND):
        assert "delete" not in resource.inputs and "update" not in resource.inputs
    for resource in by_name(result, COPY):
        assert set(resource.inputs) == {"connection", "source", "remotePath", "triggers"}


def triggers(result: offline.OfflineResult) -> list[list[str]]:
    found = []
    for copy_resource, command in zip(by_name(result, COPY), by_name(result, COMMAND)):
        assert copy_resource.inputs["triggers"] == command.inputs["triggers"]  # copied and run together
        assert "triggers[*]" in command.replace_on_changes  # a changed trigger runs the command again
        found.append(plain(command.inputs["triggers"]))
    return found


def test_triggers_are_the_installers_and_the_secrets_hashes():
    result = run_stack(base(**EVERYTHING))
    command = by_name(result, COMMAND)[0]
    installer_hash, secrets_hash = triggers(result)[0]
    assert installer_hash == hashlib.sha256(installer_text(by_name(result, COPY)[0]).encode()).hexdigest()
    assert secrets_hash == hashlib.sha256(plain(command.inputs["stdin"]).encode()).hexdigest()
    assert offline.is_secret(command.inputs["triggers"])  # the secrets' hash is kept as a secret too


def test_a_changed_installer_or_secret_changes_the_triggers():
    first = triggers(run_stack(base(**EVERYTHING)))
    assert triggers(run_stack(base(**EVERYTHING))) == first  # nothing changed: nothing runs again
    longer_logs = triggers(run_stack(base(**EVERYTHING, logs={"retention_days": 30})))
    assert all(a[0] != b[0] and a[1] == b[1] for a, b in zip(first, longer_logs))
    new_password = triggers(run_stack(base(**EVERYTHING), relay_password="another password"))
    assert all(a[0] == b[0] and a[1] != b[1] for a, b in zip(first, new_password))


def test_lifecycle_protect_covers_the_generated_secrets_never_the_install():
    result = run_stack(base(**EVERYTHING, lifecycle={"protect": True}))
    # A change runs the install again by replacing it, which protection would refuse.
    assert not any(r.protect for r in result.of_type(COMMAND) + result.of_type(COPY))
    generated = result.of_type("tls:index/privateKey:PrivateKey") + result.of_type(
        "random:index/randomPassword:RandomPassword")
    assert len(generated) == 4 and all(g.protect for g in generated)


def test_outputs_have_the_shared_shape_and_list_the_records_to_publish():
    result = run_stack(base(**EVERYTHING))
    out = result.outputs
    assert out["public_ips"] == ["192.0.2.10", "192.0.2.11"]
    first = out["nodes"][0]
    assert set(first) == {"name", "hostname", "public_ip", "private_ip", "ptr", "instance_type", "spool",
                          "forward_record", "machine_id"}
    # No cloud machine: nothing for kumo-infra ci smoke to read a console by.
    assert (first["name"], first["hostname"], first["public_ip"], first["ptr"], first["machine_id"]) == (
        "node1", "mta1.example.com", "192.0.2.10", None, None)
    assert first["instance_type"] == "existing" and first["spool"] == "directory"
    assert out["dns_records"] == [
        {"name": "mta1.example.com", "type": "A", "value": "192.0.2.10", "why": out["dns_records"][0]["why"]},
        {"name": "10.2.0.192.in-addr.arpa", "type": "PTR", "value": "mta1.example.com.",
         "why": out["dns_records"][1]["why"]},
        {"name": "mta2.example.com", "type": "A", "value": "192.0.2.11", "why": out["dns_records"][2]["why"]},
        {"name": "11.2.0.192.in-addr.arpa", "type": "PTR", "value": "mta2.example.com.",
         "why": out["dns_records"][3]["why"]},
    ]
    assert sorted(out["secret_names"]) == sorted(s.key for s in secretspec.secret_specs(parse_deployment(
        base(**EVERYTHING))))
    spf = next(r for r in out["deliverability_records"] if r["name"] == "example.com")
    assert "ip4:192.0.2.10 ip4:192.0.2.11" in spf["value"]
    api = out["api"]
    assert api["secret_reference"] == "delivered:api-password"
    assert api["read_password"] == f"ssh root@192.0.2.10 cat {secretspec.API_PASSWORD_PATH}"
    assert [e["ip_url"] for e in api["endpoints"]] == ["https://192.0.2.10:8443", "https://192.0.2.11:8443"]
    assert out["port25"]["records"][1]["ptr_name"] == "11.2.0.192.in-addr.arpa"
    assert out["sizing"]["nodes"] == 2


def test_a_public_ip_apart_from_the_ssh_address_is_the_nodes_address():
    raw = with_host(0, address="10.0.0.5", public_ip="198.51.100.7")
    result = run_stack(raw)
    assert result.outputs["public_ips"] == ["198.51.100.7", "192.0.2.11"]
    assert plain(by_name(result, COMMAND)[0].inputs["connection"])["host"] == "10.0.0.5"
    assert result.outputs["nodes"][0]["private_ip"] == "10.0.0.5"


def test_a_missing_private_key_stops_the_program_before_any_resource():
    import pulumi

    with pytest.raises(pulumi.RunError, match="kumo:sshPrivateKey"):
        run_stack(base(), private_key=None)


def test_bad_config_stops_the_program_before_any_resource():
    import pulumi

    with pytest.raises(pulumi.RunError, match=r"kumo:deployment\.ssh\.hosts\[0\]\.host_key"):
        run_stack(with_host(0, host_key="ssh-ed25519 AAAAnotakey"))


def test_a_fleet_of_hosts_peers_by_private_address_else_the_ssh_address():
    result = run_stack(with_host(1, private_address="10.0.0.11"))
    (delivered,) = {json.dumps(stdin_secrets(c), sort_keys=True) for c in by_name(result, COMMAND)}
    assert json.loads(json.loads(delivered)["fleet-peers"]) == ["192.0.2.10", "10.0.0.11"]
    fleet = result.outputs["fleet"]
    assert fleet["peers"] == ["192.0.2.10", "10.0.0.11"]
    assert fleet["redis"] == {"source": "external", "title": "your own Redis (fleet.redis_url)",
                              "endpoint": "redis.example.net:6380", "url_secret_name": "redis-url"}
    assert REDIS_PW not in json.dumps(result.outputs) and "r3d1s" not in json.dumps(result.outputs)


@pytest.mark.parametrize("value", ["mta.example.net", "0.0.0.0", "127.0.0.1", "224.0.0.1", "10.0.0.1%eth0", ""])
def test_a_private_address_is_an_ip_the_other_hosts_can_reach(value):
    refused(with_host(0, private_address=value), "ssh.hosts[0].private_address", "IP address")


def test_a_fleet_host_named_by_dns_needs_a_private_address():
    # The peer list becomes the nodes' trusted_hosts, which take IP addresses and networks only.
    raw = with_host(1, address="mta2.example.net", public_ip="192.0.2.21")
    refused(raw, "ssh.hosts[1].private_address", "DNS name", "IP address")
    assert parse_deployment(with_host(1, address="mta2.example.net", public_ip="192.0.2.21",
                                      private_address="10.0.0.11")).ssh.hosts[1].peer_address == "10.0.0.11"
    one = base(fleet={})
    one["ssh"]["hosts"] = [{**one["ssh"]["hosts"][0], "address": "mta1.example.net", "public_ip": "192.0.2.20"}]
    assert parse_deployment(one)  # a single host has no peers


def test_a_fleet_host_named_by_dns_exits_2_naming_the_key(tmp_path):
    raw = with_host(1, address="mta2.example.net", public_ip="192.0.2.21")
    stack = tmp_path / "Pulumi.lab.yaml"
    stack.write_text(yaml.safe_dump({"config": {ROOT: raw}}))
    done = subprocess.run([sys.executable, "-m", "kumo_infra.cli", "validate", "--config", str(stack)],
                          cwd=ROOT_DIR, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert f"{ROOT}.ssh.hosts[1].private_address" in done.stderr and "like 10.0.0.10" in done.stderr


def test_two_hosts_of_one_private_address_are_refused():
    raw = with_host(0, private_address="10.0.0.9")
    raw["ssh"]["hosts"][1]["private_address"] = "10.0.0.9"
    refused(raw, "ssh.hosts[1].private_address", "hosts[0]")


def test_a_fleet_of_hosts_needs_a_redis_url_and_its_password():
    raw = base()
    del raw["fleet"]
    refused(raw, "fleet.redis_url", "kumo:redisPassword", "rediss://")
    one = base()
    one["ssh"]["hosts"] = one["ssh"]["hosts"][:1]
    del one["fleet"]
    assert parse_deployment(one)  # a single host shares nothing
    import pulumi

    with pytest.raises(pulumi.RunError, match="kumo:redisPassword"):
        run_stack(base(), redis_password=None)
    unset = stackconfig.from_values("lab", {ROOT: base()})
    assert any("kumo:redisPassword is not set" in w for w in unset.warnings)
    assert any("8008" in w and "8000" in w for w in unset.warnings)


def test_a_preview_with_unknowns_completes():
    result = run_stack(base(**EVERYTHING), preview=True)
    assert len(by_name(result, COMMAND)) == 2


def test_the_example_stack_plans_offline(capsys):
    from kumo_infra import cli

    assert cli.main(["plan", "--stack", "ssh-lab", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert json.dumps(doc).count("command:remote:Command") >= 2


def test_render_prints_the_installer_the_component_copies(capsys):
    from kumo_infra import cli

    result = run_stack(stackconfig.read_values(ROOT_DIR / "stacks" / "Pulumi.ssh-lab.yaml")[ROOT])
    assert cli.main(["render", "--stack", "ssh-lab", "--node", "1"]) == 0
    printed = capsys.readouterr().out
    assert printed == installer_text(by_name(result, COPY)[1])
    assert printed.startswith("#!/bin/bash\n") and "mta2.example.com" in printed


@pytest.mark.parametrize("target", list(targets.registry().values()), ids=list(targets.registry()))
def test_the_readme_targets_table_has_every_target_as_declared(target):
    readme = (ROOT_DIR / "README.md").read_text()
    section = readme.split("\n## Targets\n", 1)[1].split("\n## ", 1)[0]
    cls = target.component.partition(":")[2]
    assert f"| `{target.name}` | {target.title} | {target.creates} | `{cls}` |" in section

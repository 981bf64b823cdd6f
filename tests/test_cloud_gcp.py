"""GcpKumoMta under the Pulumi SDK's mock engine, through the real stack program."""

from __future__ import annotations

import base64
import ipaddress
import json
import re

import pulumi
import pytest
import yaml

from kumo_infra import offline, program
from kumo_infra.bootstrap import bootstrap_script
from kumo_infra import component as common
from kumo_infra.config import parse_deployment
from kumo_infra.errors import ConfigError
from kumo_infra.netplan import firewall_rules
from kumo_infra.secretspec import dkim_key
from kumo_infra.stackconfig import plan_for
from kumo_infra.targets.gcp import component as gcp
from tests import api_tls_checks
from tests.conftest import ROOT, merged

INSTANCE = "gcp:compute/instance:Instance"
ADDRESS = "gcp:compute/address:Address"
FIREWALL = "gcp:compute/firewall:Firewall"
DISK = "gcp:compute/disk:Disk"
RECORD = "gcp:dns/recordSet:RecordSet"
ACCOUNT = "gcp:serviceaccount/account:Account"
NETWORK = "gcp:compute/network:Network"
SECRET = "gcp:secretmanager/secret:Secret"
SECRET_VERSION = "gcp:secretmanager/secretVersion:SecretVersion"
SECRET_ACCESS = "gcp:secretmanager/secretIamMember:SecretIamMember"
TLS_KEY = "tls:index/privateKey:PrivateKey"
RANDOM_PASSWORD = "random:index/randomPassword:RandomPassword"
ACCESSOR = "roles/secretmanager.secretAccessor"
RELAY_PW = "s3cr3t-relay-pw"
SUBNETWORK = "gcp:compute/subnetwork:Subnetwork"
COMPONENT = "kumo:index:GcpKumoMta"
GET_IMAGE = "gcp:compute/getImage:getImage"
IMAGE_SELF_LINK = "projects/placeholder/global/images/placeholder"

GCP_BASE = {
    "cloud": "gcp",
    "region": "us-central1",
    "name": "kumo-test",
    "hostname": "mta.example.com",
    "os": "rocky9",
    "port25": {"outbound": "relay",
               "relay": {"host": "smtp.relay.example.net", "port": 587, "username": "kumo"}},
    "gcp": {"project": "test-project"},
}


def gcp_deployment(**overrides) -> dict:
    return merged(GCP_BASE, **overrides)


def run(dep: dict, preview: bool = False, password: str = "x") -> offline.OfflineResult:
    return offline.run(program.run, {"kumo:deployment": dep, "kumo:relayPassword": password}, stack="t",
                       secret_keys=["kumo:relayPassword"], preview=preview)


def stack_config() -> dict:
    return yaml.safe_load((ROOT / "stacks" / "Pulumi.gcp-dev.yaml").read_text())["config"]


def startup_script(instance: offline.RecordedResource) -> str:
    return instance.inputs["metadata"]["startup-script"]


def decoded_files(script: str) -> dict[str, str]:
    """The files the startup script writes: path -> content, decoded from its base64 heredocs."""
    found = re.findall(r"base64 -d > (\S+)\.kumo-new <<'KUMO_EOF'\n(.*?)\nKUMO_EOF", script, re.S)
    return {path: base64.b64decode("".join(body.split())).decode() for path, body in found}


# -- the example stack --------------------------------------------------------

def test_example_stack_registers_a_complete_node():
    values = stack_config()
    values["kumo:relayPassword"] = "x"
    result = offline.run(program.run, values, stack="gcp-dev", secret_keys=["kumo:relayPassword"])
    dep = values["kumo:deployment"]
    plan = plan_for(parse_deployment(dep))
    name = dep["name"]

    # A minimal custom-mode network with the configured CIDR in the region.
    net = result.one(NETWORK)
    assert net.inputs["autoCreateSubnetworks"] is False
    subnet = result.one(SUBNETWORK)
    assert subnet.inputs["ipCidrRange"] == "10.42.0.0/24"
    assert subnet.inputs["region"] == "us-central1"
    assert subnet.inputs["network"] == f"{net.name}-id"

    vm = result.one(INSTANCE)
    i = vm.inputs
    assert vm.name == f"{name}-node1-vm"
    assert i["machineType"] == plan.instance_type == "e2-medium"
    assert i["zone"] == "us-central1-a" and i["project"] == "my-kumo-project"
    assert i["hostname"] == "mta-gcpdev.example.com"
    # Image from the OS table, looked up by family.
    lookup = [c for c in result.invokes if c["token"] == GET_IMAGE]
    assert lookup == [{"token": GET_IMAGE, "args": {"family": "almalinux-9", "project": "almalinux-cloud"},
                       "answered": True}]
    boot = i["bootDisk"]["initializeParams"]
    assert boot["image"] == IMAGE_SELF_LINK
    assert boot["size"] == plan.os_disk_gb and boot["type"] == "pd-balanced"
    # gVNIC, no Tier_1 on an e2, the static address as NAT IP, no PTR without DNS.
    nic = i["networkInterfaces"][0]
    assert nic["nicType"] == "GVNIC"
    assert nic["subnetwork"] == f"{subnet.name}-id"
    address = result.one(ADDRESS)
    assert address.inputs["addressType"] == "EXTERNAL" and address.inputs["networkTier"] == "PREMIUM"
    assert address.inputs["region"] == "us-central1"
    public_ip = result.outputs["public_ips"][0]
    assert nic["accessConfigs"] == [{"natIp": public_ip, "networkTier": "PREMIUM"}]
    assert "networkPerformanceConfig" not in i
    assert "scratchDisks" not in i
    # Block spool: a separate pd-balanced disk with the device name the bootstrap looks for.
    disk = result.one(DISK)
    assert disk.inputs["type"] == "pd-balanced" and disk.inputs["size"] == plan.spool_gb_per_node
    assert disk.inputs["zone"] == "us-central1-a"
    assert i["attachedDisks"] == [{"source": f"{disk.name}-id", "deviceName": "kumo-spool"}]
    assert i["allowStoppingForUpdate"] is True  # a persistent-disk spool survives a stop
    # Metadata: the bootstrap as startup-script, OS Login, no project-wide keys.
    assert set(i["metadata"]) == {"startup-script", "enable-oslogin", "block-project-ssh-keys"}
    assert i["metadata"]["enable-oslogin"] == "TRUE" and i["metadata"]["block-project-ssh-keys"] == "TRUE"
    assert "metadataStartupScript" not in i
    assert i["shieldedInstanceConfig"] == {"enableSecureBoot": True, "enableVtpm": True,
                                           "enableIntegrityMonitoring": True}
    assert i["deletionProtection"] is False
    labels = {"kumo-infra": name, "managed-by": "kumo-infra"}
    assert i["labels"] == labels and boot["labels"] == labels
    assert disk.inputs["labels"] == labels and address.inputs["labels"] == labels
    # Outputs, the same keys on every cloud.
    node = result.outputs["nodes"][0]
    private_ip = node["private_ip"]  # the first NIC's address, which GCP allocates (offline: a placeholder)
    assert ipaddress.ip_address(private_ip) in ipaddress.ip_network("192.0.2.0/24") and private_ip != public_ip
    # The instance's self link, by which its serial port output is read (offline: targets/gcp/offline.py).
    self_link = ("https://www.googleapis.com/compute/v1/projects/my-kumo-project/zones/us-central1-a/instances/"
                 f"{vm.name}")
    assert node == {"name": "node1", "hostname": "mta-gcpdev.example.com", "public_ip": public_ip,
                    "private_ip": private_ip, "machine_id": self_link, "ptr": None, "instance_type": "e2-medium",
                    "spool": "block",
                    "forward_record": {"name": "mta-gcpdev.example.com", "type": "A", "value": public_ip,
                                       "created": False}}
    assert ipaddress.ip_address(public_ip) in ipaddress.ip_network("192.0.2.0/24")
    assert result.outputs["dns_records"] == [
        {"name": "mta-gcpdev.example.com", "type": "A", "value": public_ip,
         "why": "publish before setting dns.forward_records_exist: the cloud checks it before setting the PTR"}]
    assert result.outputs["sizing"] == plan.to_dict()


def test_private_ip_is_the_first_nics_address():
    result = run(gcp_deployment(nodes=2))
    # The offline engine answers each instance's networkInterfaces[0].networkIp (targets/gcp/offline.py).
    ips = [n["private_ip"] for n in result.outputs["nodes"]]
    assert len(set(ips)) == 2 and all(ipaddress.ip_address(ip) in ipaddress.ip_network("192.0.2.0/24") for ip in ips)
    assert not set(ips) & set(result.outputs["public_ips"])


def test_dedicated_service_account_without_any_project_role():
    result = run(gcp_deployment())
    account = result.one(ACCOUNT)
    assert account.inputs["accountId"] == "kumo-test-mta"
    assert account.inputs["project"] == "test-project"
    email = f"{account.name}@placeholder.iam.gserviceaccount.com"
    # No project-level binding of any kind (nothing on the node writes logs or metrics to GCP).
    assert not_project_wide(result) == []
    vm = result.one(INSTANCE)
    assert vm.inputs["serviceAccount"] == {"email": email, "scopes": ["cloud-platform"]}


def not_project_wide(result: offline.OfflineResult) -> list[str]:
    """Resources granting anything above a single secret: project, folder or organization IAM."""
    return [f"{r.type} {r.name}" for r in result.resources
            if r.type.split(":")[1].split("/")[0] in ("projects", "folder", "organizations")
            or "IAM" in r.type and r.type != SECRET_ACCESS]


def test_startup_script_carries_the_bootstrap():
    result = run(gcp_deployment(), password="relay-pw-must-not-leak")
    script = startup_script(result.one(INSTANCE))
    assert script.startswith("#!/bin/bash\n")
    assert "hostnamectl set-hostname mta.example.com" in script
    assert script.rstrip("\n").splitlines()[-1] == "exec /usr/local/sbin/kumo-bootstrap all"
    files = decoded_files(script)
    assert files["/usr/local/sbin/kumo-bootstrap"] == bootstrap_script()  # as every cloud delivers it
    env = files["/etc/kumo-infra/bootstrap.env"]
    assert "KUMO_HOSTNAME=mta.example.com" in env and "KUMO_CLOUD=gcp" in env
    assert "KUMO_SPOOL_STORAGE=block" in env
    # The relay password is never rendered into the metadata (the node fetches it itself).
    assert "relay-pw-must-not-leak" not in script
    assert not any("relay-pw-must-not-leak" in body for body in files.values())


# -- machine types: NVMe and network tiers -------------------------------------

@pytest.mark.parametrize("instance_type, nvme, tier1", [
    ("n2-standard-32", 4, True),   # scratch NVMe, 32 vCPUs: Tier_1
    ("n2-standard-16", 2, False),  # scratch NVMe, below 30 vCPUs
    ("n2-standard-8", 1, False),
    ("c3-standard-44-lssd", 0, True),  # -lssd brings its own NVMe: no scratch_disks
    ("c3-standard-22-lssd", 0, False),
])
def test_local_nvme_and_tier1(instance_type, nvme, tier1):
    dep = gcp_deployment(sizing={"profile": "performance", "instance_type": instance_type})
    result = run(dep)
    i = result.one(INSTANCE).inputs
    assert i["machineType"] == instance_type
    assert i["networkInterfaces"][0]["nicType"] == "GVNIC"
    if tier1:
        assert i["networkPerformanceConfig"] == {"totalEgressBandwidthTier": "TIER_1"}
    else:
        assert "networkPerformanceConfig" not in i
    if nvme:
        assert i["scratchDisks"] == [{"interface": "NVME", "size": 375}] * nvme
    else:
        assert "scratchDisks" not in i
    # The spool is on local NVMe: no persistent spool disk, and no stop for updates (a stop wipes local SSD).
    assert result.of_type(DISK) == [] and "attachedDisks" not in i
    assert "allowStoppingForUpdate" not in i
    env = decoded_files(startup_script(result.one(INSTANCE)))["/etc/kumo-infra/bootstrap.env"]
    assert "KUMO_SPOOL_STORAGE=local_nvme" in env


def test_no_tier1_on_a_32_vcpu_e2():
    result = run(gcp_deployment(sizing={"instance_type": "e2-standard-32"}))
    i = result.one(INSTANCE).inputs
    assert i["machineType"] == "e2-standard-32"
    assert "networkPerformanceConfig" not in i and "scratchDisks" not in i


def test_n2_with_block_spool_gets_no_scratch_disks():
    dep = gcp_deployment(sizing={"instance_type": "n2-standard-8"}, spool={"storage": "block", "size_gb": 200})
    result = run(dep)
    i = result.one(INSTANCE).inputs
    assert "scratchDisks" not in i
    disk = result.one(DISK)
    assert disk.inputs["size"] == plan_for(parse_deployment(dep)).spool_gb_per_node
    assert i["attachedDisks"][0]["deviceName"] == "kumo-spool"


# -- DNS: PTR and forward records ------------------------------------------------

def test_forward_record_first_then_ptr():
    dep = gcp_deployment(nodes=2, dns={"zone": "example.com"},
                         gcp={"project": "test-project", "dns_managed_zone": "example-com"})
    result = run(dep)
    records = sorted(result.of_type(RECORD), key=lambda r: r.name)
    vms = sorted(result.of_type(INSTANCE), key=lambda r: r.name)
    assert [r.name for r in records] == ["kumo-test-node1-a", "kumo-test-node2-a"]
    for n, (record, vm, ip) in enumerate(zip(records, vms, result.outputs["public_ips"]), start=1):
        assert record.inputs == {"managedZone": "example-com", "name": f"mta{n}.example.com.", "type": "A",
                                 "ttl": 300, "rrdatas": [ip], "project": "test-project"}
        access = vm.inputs["networkInterfaces"][0]["accessConfigs"][0]
        assert access == {"natIp": ip, "networkTier": "PREMIUM", "publicPtrDomainName": f"mta{n}.example.com."}
        assert record.name in vm.depends_on_names
    assert [n["ptr"] for n in result.outputs["nodes"]] == ["mta1.example.com", "mta2.example.com"]
    assert all(n["forward_record"]["created"] for n in result.outputs["nodes"])
    assert result.outputs["dns_records"] == []


def test_ptr_without_zone_when_forward_records_exist():
    result = run(gcp_deployment(dns={"forward_records_exist": True}))
    assert result.of_type(RECORD) == []
    access = result.one(INSTANCE).inputs["networkInterfaces"][0]["accessConfigs"][0]
    assert access["publicPtrDomainName"] == "mta.example.com."
    assert result.outputs["nodes"][0]["ptr"] == "mta.example.com"


def test_no_ptr_and_no_record_without_dns():
    result = run(gcp_deployment())
    assert result.of_type(RECORD) == []
    access = result.one(INSTANCE).inputs["networkInterfaces"][0]["accessConfigs"][0]
    assert "publicPtrDomainName" not in access
    assert result.outputs["nodes"][0]["ptr"] is None
    assert [r["name"] for r in result.outputs["dns_records"]] == ["mta.example.com"]


# -- several nodes ---------------------------------------------------------------

def test_three_nodes_have_stable_names_and_their_own_addresses():
    result = run(gcp_deployment(nodes=3))
    vms = result.of_type(INSTANCE)
    addresses = result.of_type(ADDRESS)
    assert sorted(v.name for v in vms) == ["kumo-test-node1-vm", "kumo-test-node2-vm", "kumo-test-node3-vm"]
    assert sorted(a.name for a in addresses) == ["kumo-test-node1-ip", "kumo-test-node2-ip", "kumo-test-node3-ip"]
    assert sorted(d.name for d in result.of_type(DISK)) == [
        "kumo-test-node1-spool", "kumo-test-node2-spool", "kumo-test-node3-spool"]
    ips = result.outputs["public_ips"]
    assert len(set(ips)) == 3
    hostnames = [n["hostname"] for n in result.outputs["nodes"]]
    assert hostnames == ["mta1.example.com", "mta2.example.com", "mta3.example.com"]
    for k, vm in enumerate(sorted(vms, key=lambda v: v.name), start=1):
        assert vm.inputs["hostname"] == f"mta{k}.example.com"
        assert vm.inputs["networkInterfaces"][0]["accessConfigs"][0]["natIp"] == ips[k - 1]
        assert vm.inputs["attachedDisks"][0]["source"] == f"kumo-test-node{k}-spool-id"
        script = startup_script(vm)
        assert f"hostnamectl set-hostname mta{k}.example.com" in script
        assert f"KUMO_HOSTNAME=mta{k}.example.com" in decoded_files(script)["/etc/kumo-infra/bootstrap.env"]
    # One network, one service account, one set of firewall rules for all nodes.
    assert len(result.of_type(NETWORK)) == 1 and len(result.of_type(ACCOUNT)) == 1


# -- firewall ----------------------------------------------------------------------

def _ports(fw: offline.RecordedResource) -> set[int]:
    return {int(p) for a in fw.inputs.get("allows", []) for p in a.get("ports", [])}


def _ranges(fw: offline.RecordedResource) -> list[str]:
    return fw.inputs.get("sourceRanges", []) + fw.inputs.get("destinationRanges", [])


@pytest.mark.parametrize("ssh, api", [([], []), (["203.0.113.0/24", "2001:db8::/32"], ["198.51.100.0/24"])])
def test_firewall_translates_every_rule(ssh, api):
    dep = gcp_deployment(network={"ssh_cidrs": ssh, "api_cidrs": api, "submission_ports": [587]})
    result = run(dep)
    firewalls = result.of_type(FIREWALL)
    tag = result.one(INSTANCE).inputs["tags"]
    assert tag == ["kumo-test-mta"]
    for fw in firewalls:
        i = fw.inputs
        assert i["targetTags"] == tag and i["project"] == "test-project"
        assert i["network"] == "kumo-test-network-id"
        versions = {ipaddress.ip_network(c).version for c in _ranges(fw)}
        assert len(versions) == 1, f"{fw.name} mixes address families"
        if i["direction"] == "INGRESS":
            assert "destinationRanges" not in i
        else:
            assert "sourceRanges" not in i
    allows = [fw for fw in firewalls if "allows" in fw.inputs]
    # Exactly the netplan rules, one firewall per rule and address family.
    expected = {(r.direction.upper(), r.protocol, r.port, c) for r in firewall_rules(parse_deployment(dep))
                for c in r.cidrs}
    got = {(fw.inputs["direction"], a["protocol"], int(p), c)
           for fw in allows for a in fw.inputs["allows"] for p in a["ports"] for c in _ranges(fw)}
    assert got == expected
    ingress_ports = {p for fw in allows if fw.inputs["direction"] == "INGRESS" for p in _ports(fw)}
    if ssh:
        assert ingress_ports == {25, 587, 22, 8443}
        by_port = sorted((fw for fw in allows if _ports(fw) == {22}), key=lambda f: f.name)
        assert [fw.inputs["sourceRanges"] for fw in by_port] == [["203.0.113.0/24"], ["2001:db8::/32"]]
        # The API rule keeps its earlier name (an update in place, not a new rule).
        assert {fw.name for fw in allows if _ports(fw) == {8443}} == {"kumo-test-fw-kumo-api-v4"}
    else:
        assert ingress_ports == {25, 587}


@pytest.mark.parametrize("port", [587, 2525])
def test_egress_is_the_relays_port_and_never_25_or_465(port):
    dep = gcp_deployment(port25={"outbound": "relay", "relay": {"host": "smtp.relay.example.net", "port": port,
                                                                 "username": "kumo"}})
    result = run(dep)
    egress = {(a["protocol"], int(p)) for fw in result.of_type(FIREWALL) if fw.inputs["direction"] == "EGRESS"
              for a in fw.inputs.get("allows", []) for p in a["ports"]}
    assert egress == {("tcp", port), ("udp", 53), ("tcp", 53), ("udp", 123), ("tcp", 80), ("tcp", 443)}


def test_explicit_denies_sit_below_every_allow():
    result = run(gcp_deployment())
    firewalls = result.of_type(FIREWALL)
    denies = {fw.name: fw.inputs for fw in firewalls if "denies" in fw.inputs}
    assert set(denies) == {f"kumo-test-fw-deny-{d}-{f}" for d in ("in", "out") for f in ("v4", "v6")}
    for name, i in denies.items():
        assert i["denies"] == [{"protocol": "all"}] and i["priority"] == 65534
        assert _ranges(next(fw for fw in firewalls if fw.name == name)) in (["0.0.0.0/0"], ["::/0"])
        assert i["direction"] == ("INGRESS" if "-in-" in name else "EGRESS")
    allow_priorities = {fw.inputs["priority"] for fw in firewalls if "allows" in fw.inputs}
    assert max(allow_priorities) < 65534


# -- networks given by the operator ---------------------------------------------------

def test_configured_network_is_used_and_none_created():
    subnet = "projects/test-project/regions/us-central1/subnetworks/mail"
    dep = gcp_deployment(gcp={"project": "test-project", "network": "shared", "subnetwork": subnet,
                              "zone": "us-central1-c"})
    result = run(dep)
    assert result.of_type(NETWORK) == [] and result.of_type(SUBNETWORK) == []
    nic = result.one(INSTANCE).inputs["networkInterfaces"][0]
    assert nic["subnetwork"] == subnet and "network" not in nic
    assert {fw.inputs["network"] for fw in result.of_type(FIREWALL)} == {"shared"}
    assert result.one(INSTANCE).inputs["zone"] == "us-central1-c"
    assert result.one(DISK).inputs["zone"] == "us-central1-c"


def test_network_without_subnetwork_names_the_network_on_the_nic():
    result = run(gcp_deployment(gcp={"project": "test-project", "network": "default"}))
    nic = result.one(INSTANCE).inputs["networkInterfaces"][0]
    assert nic["network"] == "default" and "subnetwork" not in nic


# -- lifecycle: the bootstrap never replaces a running machine ----------------------------

def test_machine_options_ignore_the_startup_script():
    dep = parse_deployment(gcp_deployment())
    cp = common.ComponentPlan(dep, plan_for(dep), (), ())
    opts = common.machine_options(None, cp, gcp.BOOTSTRAP_PATHS)
    assert opts.ignore_changes == ['metadata["startup-script"]']
    opted_in = parse_deployment(gcp_deployment(lifecycle={"replace_on_bootstrap_change": True}))
    cp2 = common.ComponentPlan(opted_in, plan_for(opted_in), (), ())
    assert common.machine_options(None, cp2, gcp.BOOTSTRAP_PATHS).ignore_changes == []


@pytest.mark.parametrize("replace, protect", [(False, False), (True, True)])
def test_engine_receives_ignore_changes_and_deletion_protection(replace, protect):
    result = run(gcp_deployment(lifecycle={"replace_on_bootstrap_change": replace, "protect": protect}))
    vm = reg = result.one(INSTANCE)
    # A newer image of the family never replaces a running machine.
    assert "bootDisk.initializeParams.image" in reg.ignore_changes
    assert "image" in vm.inputs["bootDisk"]["initializeParams"]
    if replace:
        assert reg.ignore_changes == ["bootDisk.initializeParams.image"]
    else:
        assert reg.ignore_changes[0] == 'metadata["startup-script"]'
        # The path names the key that really holds the bootstrap.
        top, key = re.fullmatch(r'(\w+)\["([^"]+)"\]', reg.ignore_changes[0]).groups()
        assert "kumo-bootstrap all" in vm.inputs[top][key]
    assert vm.inputs["deletionProtection"] is protect  # GCP's own guard, besides Pulumi's protect


def test_a_replaced_instance_is_deleted_before_its_successor_is_created():
    # Its static address (the access config's nat_ip) and its read-write spool disk belong to one
    # instance at a time: kumo-infra roll's up --replace could not create the new one beside it.
    result = run(gcp_deployment(nodes=2))
    instances = result.of_type(INSTANCE)
    assert len(instances) == 2 and all(vm.delete_before_replace for vm in instances)
    assert all(vm.inputs["attachedDisks"] and vm.inputs["networkInterfaces"][0]["accessConfigs"][0]["natIp"]
               for vm in instances)


# -- structure and errors ------------------------------------------------------------------

def test_preview_with_unknowns_completes():
    result = run(gcp_deployment(nodes=2, dns={"zone": "example.com"},
                                gcp={"project": "test-project", "dns_managed_zone": "example-com"}),
                 preview=True)
    assert len(result.of_type(INSTANCE)) == 2


def test_bad_config_stops_the_program_before_any_resource():
    dep = gcp_deployment()
    del dep["port25"]  # GCP needs the relay
    with pytest.raises(pulumi.RunError, match=r"kumo:deployment\.port25\.relay"):
        run(dep)


@pytest.mark.parametrize("dep, match", [
    (gcp_deployment(gcp={"project": "my-project", "subnetwork": "mail"}), r"kumo:deployment\.gcp\.network"),
    ({**gcp_deployment(), "sizing": {"messages_per_hour": 0}}, r"sizing\.messages_per_hour"),
])
def test_component_refuses_bad_input_before_registering_anything(dep, match):
    registered = []

    def build():
        try:
            gcp.GcpKumoMta("kumo-test", {"deployment": dep})
        except ConfigError as exc:
            registered.append(str(exc))

    result = offline.run(build, {}, stack="t")
    assert result.resources == []
    assert len(registered) == 1 and re.search(match, registered[0])


# -- secrets (issue 5) ------------------------------------------------------------------------

def run_stack(dkim_domains: list[str] | None = None, preview: bool = False) -> tuple[
        offline.OfflineResult, dict]:
    """The example stack (stacks/Pulumi.gcp-dev.yaml) with RELAY_PW as its secret and optional DKIM domains."""
    values = stack_config()
    values["kumo:relayPassword"] = RELAY_PW
    if dkim_domains is not None:
        values["kumo:deployment"]["dkim"] = {"domains": dkim_domains}
    result = offline.run(program.run, values, stack="gcp-dev", secret_keys=["kumo:relayPassword"], preview=preview)
    return result, values["kumo:deployment"]


def _secret_value(data) -> str:
    """A SecretVersion's secretData, which must reach the engine marked secret."""
    assert offline.is_secret(data), data
    return data["value"]


def _assert_store_access(result: offline.OfflineResult, store_names: list[str], project: str) -> None:
    """One secret per store name, its version, and the service account's accessor grant on it alone."""
    secrets = {r.inputs["secretId"]: r for r in result.of_type(SECRET)}
    assert sorted(secrets) == sorted(store_names)
    for secret in secrets.values():
        assert secret.inputs["project"] == project
        assert secret.inputs["replication"] == {"auto": {}}
    versions = result.of_type(SECRET_VERSION)
    assert sorted(v.inputs["secret"] for v in versions) == sorted(f"{s.name}-id" for s in secrets.values())
    member = f"serviceAccount:{result.one(ACCOUNT).name}@placeholder.iam.gserviceaccount.com"
    grants = result.of_type(SECRET_ACCESS)
    assert sorted(g.inputs["secretId"] for g in grants) == sorted(store_names)  # one grant per secret
    for g in grants:
        assert g.inputs == {"project": project, "secretId": g.inputs["secretId"], "role": ACCESSOR,
                            "member": member}
    # No other Secret Manager grant anywhere: not on the project, not through another IAM resource.
    for r in result.resources:
        if r.type.startswith("gcp:secretmanager/"):
            assert r.type in (SECRET, SECRET_VERSION, SECRET_ACCESS), r.type
        if r.type != SECRET_ACCESS:
            assert "secretmanager" not in json.dumps(r.inputs.get("role", "")), (r.type, r.name)
    assert not_project_wide(result) == []


def test_relay_password_is_stored_in_secret_manager_and_readable_only_by_the_nodes():
    result, dep = run_stack()
    name, project = dep["name"], dep["gcp"]["project"]
    store = f"{name}-relay-password"
    _assert_store_access(result, [store], project)
    version = result.one(SECRET_VERSION)
    assert version.name == f"{name}-relay-password-version"
    assert _secret_value(version.inputs["secretData"]) == RELAY_PW
    assert result.one(SECRET).inputs["labels"] == {"kumo-infra": name, "managed-by": "kumo-infra"}
    # The node finds the secret by the reference in its secrets.list: the same project and id.
    vm = result.one(INSTANCE)
    listing = decoded_files(startup_script(vm))["/etc/kumo-infra/secrets.list"]
    assert f"gcp:{project}:{store}\t/opt/kumomta/etc/secrets/relay-password" in listing.splitlines()
    # The version and the grant are in place before the machine boots and fetches it.
    assert set(vm.depends_on_names) >= {version.name, result.one(SECRET_ACCESS).name}
    assert result.outputs["secret_names"] == [store]
    assert result.outputs["deliverability_records"] == []  # no DKIM domain, nothing to sign for
    assert result.of_type(TLS_KEY) == []


def test_dkim_keys_are_generated_stored_and_published():
    domains = ["example.com", "mail.example.org"]
    result, dep = run_stack(dkim_domains=domains)
    name, project = dep["name"], dep["gcp"]["project"]
    keys = [dkim_key(d, "kumo") for d in domains]
    stores = [f"{name}-relay-password"] + [f"{name}-{k}" for k in keys]
    _assert_store_access(result, stores, project)
    assert sorted(result.outputs["secret_names"]) == sorted(stores)
    vm = result.one(INSTANCE)
    needed = {r.name for r in result.of_type(SECRET_VERSION) + result.of_type(SECRET_ACCESS)}
    assert len(needed) == 6 and set(vm.depends_on_names) >= needed
    listing = decoded_files(startup_script(vm))["/etc/kumo-infra/secrets.list"]
    for domain, key in zip(domains, keys):
        assert f"gcp:{project}:{name}-{key}\t/opt/kumomta/etc/dkim/{domain}/kumo.key" in listing.splitlines()
        # The private key (offline: a PEM-shaped placeholder naming the key) is only in its own version.
        tls_key = next(r for r in result.of_type(TLS_KEY) if r.name == f"{name}-{key}")
        assert tls_key.inputs == {"algorithm": "RSA", "rsaBits": 2048}
        pem = f"-----BEGIN RSA PRIVATE KEY-----\nplaceholder private key of {tls_key.name}\n"
        version = f"{name}-{key}-version"
        assert _secret_value(next(r for r in result.of_type(SECRET_VERSION) if r.name == version)
                             .inputs["secretData"]).startswith(pem)
    assert "PRIVATE KEY" not in json.dumps(result.outputs)
    # SPF, DMARC and DKIM per domain, with the nodes' addresses and the public half of each key.
    records = result.outputs["deliverability_records"]
    ips = result.outputs["public_ips"]
    assert [(r["name"], r["type"]) for r in records] == [
        (n, "TXT") for d in domains for n in (d, f"_dmarc.{d}", f"kumo._domainkey.{d}")]
    spf = records[0]["value"]
    assert spf.startswith("v=spf1 ") and all(f"ip4:{ip}" in spf for ip in ips) and spf.endswith(" -all")
    assert "include:<the SPF of smtp.relay.example.net>" in spf
    assert {r["value"] for r in records if "_domainkey" in r["name"]} == {"v=DKIM1; k=rsa; p=UExBQ0VIT0xERVI="}


def test_secrets_with_three_nodes_share_one_store_and_one_grant_per_secret():
    dep = gcp_deployment(nodes=3, dkim={"domains": ["example.com"]})
    result = run(dep, password=RELAY_PW)
    stores = ["kumo-test-relay-password", "kumo-test-dkim-example-com-kumo", *FLEET_STORES]
    _assert_store_access(result, stores, "test-project")
    # All but the peer list's value, made of the machines' own addresses (NodeSecret.machines_wait).
    needed = {r.name for r in result.of_type(SECRET_VERSION) + result.of_type(SECRET_ACCESS)} - {
        "kumo-test-fleet-peers-version"}
    assert len(needed) == 2 * len(stores) - 1
    for vm in result.of_type(INSTANCE):
        assert set(vm.depends_on_names) >= needed
    spf = result.outputs["deliverability_records"][0]["value"]
    assert spf.split()[1:4] == [f"ip4:{ip}" for ip in result.outputs["public_ips"]]


def test_no_secrets_means_no_secret_manager_access_at_all(monkeypatch):
    # Every GCP deployment relays (port 25 is blocked), so it always has the relay password:
    # the secret-free case is reached by planning no secrets.
    monkeypatch.setattr(common, "secret_specs", lambda deployment: [])
    result = run(gcp_deployment(), password=RELAY_PW)
    assert [r for r in result.resources if r.type.startswith("gcp:secretmanager/") or r.type == TLS_KEY] == []
    assert RELAY_PW not in json.dumps([r.inputs for r in result.resources])
    assert not_project_wide(result) == [] and result.of_type(SECRET_ACCESS) == []
    vm = result.one(INSTANCE)
    deps = vm.depends_on_names
    assert not [d for d in deps if d.endswith(("-secret", "-version", "-access"))]
    assert result.outputs["secret_names"] == []
    assert result.outputs["deliverability_records"] == []


def test_preview_with_secrets_completes():
    result, _ = run_stack(dkim_domains=["example.com"], preview=True)
    assert len(result.of_type(SECRET)) == 2 and len(result.of_type(SECRET_ACCESS)) == 2


# -- the HTTP API's credentials (issue 8, point 6) ---------------------------------------------

API_CIDRS = ["198.51.100.0/24"]
API_PW = "offline-generated-password-of-kumo-test-api-password"  # the offline engine's answer


def test_api_password_is_generated_stored_and_readable_only_by_the_nodes():
    result = run(gcp_deployment(nodes=2, network={"api_cidrs": API_CIDRS}), password=RELAY_PW)
    generated = result.one(RANDOM_PASSWORD)
    assert generated.name == "kumo-test-api-password" and generated.parent == "kumo-test"
    assert generated.inputs == {"length": 40, "special": False, "minUpper": 1, "minLower": 1, "minNumeric": 1}
    stores = ["kumo-test-relay-password", *API_STORES, *FLEET_STORES]
    _assert_store_access(result, stores, "test-project")
    version = next(v for v in result.of_type(SECRET_VERSION) if v.name == "kumo-test-api-password-version")
    assert _secret_value(version.inputs["secretData"]) == API_PW
    for vm in result.of_type(INSTANCE):
        listing = decoded_files(startup_script(vm))["/etc/kumo-infra/secrets.list"].splitlines()
        assert "gcp:test-project:kumo-test-api-password\t/opt/kumomta/etc/secrets/api-password" in listing
        assert {version.name, "kumo-test-api-password-access"} <= set(vm.depends_on_names)


def test_api_output_names_the_urls_user_and_secret():
    result = run(gcp_deployment(nodes=2, network={"api_cidrs": API_CIDRS}))
    api = result.outputs["api"]
    assert [e["url"] for e in api["endpoints"]] == ["https://mta1.example.com:8443", "https://mta2.example.com:8443"]
    assert [e["ip_url"] for e in api["endpoints"]] == [f"https://{ip}:8443" for ip in result.outputs["public_ips"]]
    assert [e["hostname"] for e in api["endpoints"]] == ["mta1.example.com", "mta2.example.com"]
    assert api["user"] == "kumo-api" and api["secret_name"] == "kumo-test-api-password"
    assert api["read_password"] == ("gcloud secrets versions access latest --secret=kumo-test-api-password "
                                    "--project=test-project")
    assert api["allowed_from"] == API_CIDRS
    api_tls_checks.assert_api_output_names_hosts_and_certificate(api, result, "kumo-test")


def test_no_api_cidrs_no_api_password():
    result = run(gcp_deployment())
    assert result.outputs["api"] is None and result.of_type(RANDOM_PASSWORD) == []
    assert "kumo-test-api-password" not in [s.inputs["secretId"] for s in result.of_type(SECRET)]


# -- the HTTP API's TLS certificate (issue 8, point 6) -----------------------------------------

API_STORES = ["kumo-test-api-password", "kumo-test-api-tls-key", "kumo-test-api-tls-cert"]
# What every fleet (more than one node) stores besides: its Redis URL and its peer list (kumo_infra.fleet).
FLEET_STORES = ["kumo-test-redis-url", "kumo-test-fleet-peers"]


def test_api_certificate_names_every_node_hostname_and_address():
    result = run(gcp_deployment(nodes=3, network={"api_cidrs": API_CIDRS}))
    cert = api_tls_checks.assert_certificate_names_every_node(result, "kumo-test")
    # The addresses are the static ones the instances use: the certificate waits for them.
    assert {f"kumo-test-node{i}-ip" for i in (1, 2, 3)} <= set(result.named(cert.name).depends_on_names)


def test_api_tls_key_and_certificate_are_stored_and_readable_only_by_the_nodes():
    result = run(gcp_deployment(nodes=2, network={"api_cidrs": API_CIDRS}), password=RELAY_PW)
    _assert_store_access(result, ["kumo-test-relay-password", *API_STORES, *FLEET_STORES], "test-project")
    versions = {v.name: v for v in result.of_type(SECRET_VERSION)}
    key = versions["kumo-test-api-tls-key-version"]
    cert = versions["kumo-test-api-tls-cert-version"]
    # The PKCS#8 form of the key ("PRIVATE KEY"), which KumoMTA reads; the certificate's PEM.
    assert _secret_value(key.inputs["secretData"]) == api_tls_checks.key_pkcs8("kumo-test")
    assert _secret_value(cert.inputs["secretData"]) == api_tls_checks.certificate_pem("kumo-test")
    for vm in result.of_type(INSTANCE):
        listing = decoded_files(startup_script(vm))["/etc/kumo-infra/secrets.list"].splitlines()
        assert "gcp:test-project:kumo-test-api-tls-key\t/opt/kumomta/etc/secrets/api-tls-key" in listing
        assert "gcp:test-project:kumo-test-api-tls-cert\t/opt/kumomta/etc/secrets/api-tls-cert" in listing
        # The address exists before the machine: the machine waits for both values and grants.
        assert {key.name, cert.name, "kumo-test-api-tls-key-access", "kumo-test-api-tls-cert-access"} <= set(
            vm.depends_on_names)


def test_preview_with_api_tls_completes_with_the_addresses_unknown():
    result = run(gcp_deployment(nodes=2, network={"api_cidrs": API_CIDRS}), preview=True)
    assert len(result.of_type(api_tls_checks.CERT)) == 1 and len(result.of_type(SECRET_VERSION)) == 4 + len(FLEET_STORES)


def test_no_api_cidrs_no_api_tls_key_or_certificate():
    result = run(gcp_deployment(dkim={"domains": ["example.com"]}))
    assert result.of_type(api_tls_checks.CERT) == []
    assert [k.name for k in result.of_type(TLS_KEY)] == ["kumo-test-dkim-example-com-kumo"]
    assert not [s for s in result.of_type(SECRET) if "api" in s.inputs["secretId"]]
    listing = decoded_files(startup_script(result.one(INSTANCE)))["/etc/kumo-infra/secrets.list"]
    assert "api-" not in listing

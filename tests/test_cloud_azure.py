"""AzureKumoMta under the Pulumi SDK's mock engine: the real program, real SDK classes, recorded inputs."""

from __future__ import annotations

import base64
import gzip
import json
import re
import uuid

import pulumi
import pytest
import yaml
from pulumi.runtime.sync_await import _sync_await

from kumo_infra import catalog, offline, program, targets
from kumo_infra.component import machine_options, prepare
from kumo_infra.config import parse_deployment
from kumo_infra.errors import ConfigError
from kumo_infra.secretspec import reference, secret_specs
from kumo_infra.targets.azure import component as azure
from kumo_infra.targets.azure import offline as offline_azure
from kumo_infra.targets.azure import vault_name as azure_vault_name
from tests import api_tls_checks
from tests.conftest import ROOT, merged

T = "azure-native"
VM = f"{T}:compute:VirtualMachine"
DISK = f"{T}:compute:Disk"
PIP = f"{T}:network:PublicIPAddress"
NIC = f"{T}:network:NetworkInterface"
NSG = f"{T}:network:NetworkSecurityGroup"
VNET = f"{T}:network:VirtualNetwork"
SUBNET = f"{T}:network:Subnet"
RG = f"{T}:resources:ResourceGroup"
RECORD = f"{T}:dns:RecordSet"
VAULT = f"{T}:keyvault:Vault"
SECRET = f"{T}:keyvault:Secret"
ROLE = f"{T}:authorization:RoleAssignment"
CLIENT_CONFIG = offline_azure.INVOKES[f"{T}:authorization:getClientConfig"]
SECRETS_USER = (f"/subscriptions/{CLIENT_CONFIG['subscriptionId']}/providers/Microsoft.Authorization/"
                "roleDefinitions/4633458b-17de-408a-b874-0445c86b69e6")
RELAY_PW = "s3cr3t-relay-pw"
RANDOM_PASSWORD = "random:index/randomPassword:RandomPassword"
TLS_KEY = "tls:index/privateKey:PrivateKey"
COMPONENT = "kumo:index:AzureKumoMta"
TAGS = {"kumo-infra": "kumo-t", "managed-by": "kumo-infra"}
WORLD = {"0.0.0.0/0", "::/0", "*", "Internet", "Any", "any", "internet"}
ROCKY_URN = "resf:rockylinux-x86_64:9-base:latest"


def openssh_ed25519(seed: int = 7, comment: str = "ops@example") -> str:
    """A well-formed OpenSSH ed25519 public key line (the config parses the key)."""
    import struct

    def field(data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + data

    blob = field(b"ssh-ed25519") + field(bytes((seed + i) % 256 for i in range(32)))
    return f"ssh-ed25519 {base64.b64encode(blob).decode()} {comment}"


OPERATOR_KEY = openssh_ed25519()
VNET_ID = ("/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/net-rg/providers/Microsoft.Network/"
           "virtualNetworks/net")
TRUSTED_LAUNCH = {"encryptionAtHost": True, "securityType": "TrustedLaunch",
                  "uefiSettings": {"secureBootEnabled": True, "vTpmEnabled": True}}

BASE = {
    "cloud": "azure",
    "region": "westeurope",
    "name": "kumo-t",
    "hostname": "mta.example.com",
    "os": "ubuntu22",
    # Pay-as-you-go subscriptions cannot send on 25: outbound goes through the relay.
    "port25": {"relay": {"host": "smtp.relay.example.net", "port": 587, "username": "kumo"}},
}


def dep(**overrides) -> dict:
    return merged(BASE, **overrides)


def run(d: dict, preview: bool = False, password: str = "x") -> offline.OfflineResult:
    return offline.run(program.run, {"kumo:deployment": d, "kumo:relayPassword": password}, stack="t",
                       secret_keys=["kumo:relayPassword"], preview=preview)


def stack_values(stack: str) -> dict:
    return yaml.safe_load((ROOT / "stacks" / f"Pulumi.{stack}.yaml").read_text())["config"]


def run_stack(stack: str) -> offline.OfflineResult:
    values = stack_values(stack)
    values["kumo:relayPassword"] = RELAY_PW
    return offline.run(program.run, values, stack=stack, secret_keys=["kumo:relayPassword"], preview=False)


def os_profile(vm) -> dict:
    """The VM's osProfile. With a generated admin password inside, the engine gets the whole object
    as a secret (secretness covers the top-level property): {<secret signature>: ..., "value": {...}}."""
    profile = vm.inputs["osProfile"]
    return profile["value"] if offline.is_secret(profile) else profile


def decoded_custom_data(vm) -> str:
    raw = base64.b64decode(os_profile(vm)["customData"])
    return gzip.decompress(raw).decode() if raw[:2] == b"\x1f\x8b" else raw.decode()


def rules_of(result) -> list[dict]:
    return [rule for nsg in result.of_type(NSG) for rule in nsg.inputs["securityRules"]]


def sources(rule: dict) -> set[str]:
    return set(rule.get("sourceAddressPrefixes") or []) | (
        {rule["sourceAddressPrefix"]} if "sourceAddressPrefix" in rule else set())


def ports(rule: dict) -> set[str]:
    return set(rule.get("destinationPortRanges") or []) | (
        {rule["destinationPortRange"]} if "destinationPortRange" in rule else set())


def refused_before_any_resource(d: dict, match: str) -> Exception:
    """Run the program expecting the component's ConfigError (the program may re-raise it as a RunError,
    which Pulumi prints without a traceback), and prove nothing was registered before it."""
    with pytest.raises((ConfigError, pulumi.RunError), match=match) as info:
        run(d)
    assert info.value.offline_resources == []
    return info.value


# -- the example stack -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def azdev():
    return run_stack("azure-dev")


def test_example_stack_registers_every_resource_stably_named(azdev):
    name = "kumo-azdev"
    got = sorted((r.type, r.name) for r in azdev.resources)
    assert got == sorted([
        (COMPONENT, name), (RG, f"{name}-rg"), (VNET, f"{name}-network"), (SUBNET, f"{name}-subnet"),
        (NSG, f"{name}-firewall"), (RANDOM_PASSWORD, f"{name}-node1-admin-password"), (PIP, f"{name}-node1-ip"),
        (NIC, f"{name}-node1-nic"), (DISK, f"{name}-node1-spool"), (VM, f"{name}-node1-vm"),
        # Relay mode: the password in the deployment's Key Vault, readable by the VM's identity.
        (VAULT, f"{name}-vault"), (SECRET, f"{name}-relay-password-secret"),
        (ROLE, f"{name}-node1-relay-password-access"),
    ])


def test_example_stack_machine(azdev):
    d = stack_values("azure-dev")["kumo:deployment"]
    plan = azdev.outputs["sizing"]
    vm = azdev.one(VM)
    assert vm.inputs["hardwareProfile"] == {"vmSize": plan["instance_type"]} == {"vmSize": "Standard_B2ls_v2"}
    assert vm.inputs["location"] == d["region"] == "westeurope"
    assert vm.inputs["resourceGroupName"] == azdev.one(RG).inputs.get("resourceGroupName", "kumo-azdev-rg")
    storage = vm.inputs["storageProfile"]
    assert storage["imageReference"] == {"publisher": "Canonical", "offer": "0001-com-ubuntu-server-jammy",
                                         "sku": "22_04-lts-gen2", "version": "latest"}
    assert "plan" not in vm.inputs  # Canonical's image needs no marketplace plan
    assert storage["osDisk"]["createOption"] == "FromImage"
    assert storage["osDisk"]["deleteOption"] == "Delete"
    assert storage["osDisk"]["managedDisk"] == {"storageAccountType": "Premium_LRS"}
    assert storage["osDisk"]["diskSizeGB"] == max(plan["os_disk_gb"], azure.MIN_OS_DISK_GB)
    assert "diskControllerType" not in storage  # B2ls_v2 is not a v6 size
    assert vm.inputs["identity"] == {"type": "SystemAssigned"}
    assert vm.inputs["tags"] == {"kumo-infra": "kumo-azdev", "managed-by": "kumo-infra"}
    assert vm.inputs["networkProfile"]["networkInterfaces"] == [
        {"id": "kumo-azdev-node1-nic-id", "primary": True, "deleteOption": "Detach"}]
    # Ubuntu 22.04 Gen2 on a Bsv2 size: Trusted Launch and encryption at host.
    assert vm.inputs["securityProfile"] == TRUSTED_LAUNCH


def test_example_stack_os_profile_carries_the_bootstrap_and_no_ssh_key(azdev):
    vm = azdev.one(VM)
    assert offline.is_secret(vm.inputs["osProfile"])  # it holds the generated password
    profile = os_profile(vm)
    assert profile["computerName"] == "mta-azdev"
    assert profile["adminUsername"] == "kumoadmin"
    text = decoded_custom_data(vm)
    assert text.startswith("#cloud-config\n")
    assert "/usr/local/sbin/kumo-bootstrap" in text
    assert "mta-azdev.example.com" in text
    cp = prepare({"deployment": stack_values("azure-dev")["kumo:deployment"], "relay_password": "x"}, "azure")
    assert text == cp.nodes[0].user_data
    # No SSH allowed (no ssh_cidrs): no key at all, none generated into state. Azure requires a
    # password or a key, so the VM gets a generated password, sent as a secret.
    assert azdev.of_type(TLS_KEY) == []
    linux = profile["linuxConfiguration"]
    assert "ssh" not in linux
    assert linux["disablePasswordAuthentication"] is False
    assert profile["adminPassword"] == "offline-generated-password-of-kumo-azdev-node1-admin-password"
    generated = azdev.one(RANDOM_PASSWORD)
    assert generated.inputs == {"length": 40, "special": False, "minUpper": 1, "minLower": 1, "minNumeric": 1}
    # And no rule admits SSH from anywhere.
    assert not [r for r in rules_of(azdev) if r["direction"] == "Inbound" and r["access"] == "Allow"
                and ports(r) & {"22", "*"}]


def test_example_stack_block_spool_is_a_surviving_data_disk_at_lun_0(azdev):
    plan = azdev.outputs["sizing"]
    assert plan["spool_storage"] == "block"
    disk = azdev.one(DISK)
    assert disk.inputs["creationData"] == {"createOption": "Empty"}
    assert disk.inputs["diskSizeGB"] == plan["spool_gb_per_node"]
    assert disk.inputs["sku"] == {"name": "Premium_LRS"}
    assert disk.inputs["tags"]["managed-by"] == "kumo-infra"
    [data] = azdev.one(VM).inputs["storageProfile"]["dataDisks"]
    assert data["lun"] == 0
    assert data["createOption"] == "Attach"
    assert data["deleteOption"] == "Detach"  # deleting the VM leaves the queue on the disk
    assert data["managedDisk"] == {"id": f"{disk.name}-id", "storageAccountType": "Premium_LRS"}


def test_example_stack_network_and_public_ip(azdev):
    rg = azdev.one(RG)
    assert rg.inputs["location"] == "westeurope"
    vnet = azdev.one(VNET)
    assert vnet.inputs["addressSpace"] == {"addressPrefixes": ["10.42.0.0/16"]}
    subnet = azdev.one(SUBNET)
    assert subnet.inputs["addressPrefix"] == "10.42.0.0/24"
    assert subnet.inputs["virtualNetworkName"] == "kumo-azdev-network"
    pip = azdev.one(PIP)
    assert pip.inputs["sku"]["name"] == "Standard"
    assert pip.inputs["publicIPAllocationMethod"] == "Static"
    assert pip.inputs["publicIPAddressVersion"] == "IPv4"
    assert re.fullmatch(r"kumo-azdev-node1-[0-9a-f]{6}", pip.inputs["dnsSettings"]["domainNameLabel"])
    # No zone and no forward_records_exist: Azure would refuse the reverse FQDN.
    assert "reverseFqdn" not in pip.inputs["dnsSettings"]
    nic = azdev.one(NIC)
    [ipc] = nic.inputs["ipConfigurations"]
    assert ipc["subnet"] == {"id": "kumo-azdev-subnet-id"}
    assert ipc["publicIPAddress"] == {"id": "kumo-azdev-node1-ip-id"}
    assert ipc["primary"] is True
    assert nic.inputs["networkSecurityGroup"] == {"id": "kumo-azdev-firewall-id"}
    assert nic.inputs["enableAcceleratedNetworking"] is True  # the catalog says Bsv2 has it
    assert not azdev.of_type(RECORD)


def test_example_stack_outputs(azdev):
    [node] = azdev.outputs["nodes"]
    ip = azdev.outputs["public_ips"][0]
    assert re.fullmatch(r"192\.0\.2\.\d+", ip)
    assert node["public_ip"] == ip
    assert node["hostname"] == "mta-azdev.example.com"
    assert node["name"] == "node1"
    assert node["ptr"] is None
    assert node["instance_type"] == "Standard_B2ls_v2" and node["spool"] == "block"
    # From the NIC's first IP configuration (an address Azure allocates: a placeholder offline).
    assert re.fullmatch(r"192\.0\.2\.\d+", node["private_ip"]) and node["private_ip"] != ip
    assert node["forward_record"] == {"name": "mta-azdev.example.com", "type": "A", "value": ip, "created": False}
    assert azdev.outputs["dns_records"] == [{"name": "mta-azdev.example.com", "type": "A", "value": ip,
                                             "why": azdev.outputs["dns_records"][0]["why"]}]


# -- the firewall --------------------------------------------------------------------------------


def test_nsg_translates_every_rule_and_denies_the_rest():
    d = dep(network={"ssh_cidrs": ["203.0.113.0/24", "2001:db8::/32"], "api_cidrs": ["198.51.100.0/24"],
                     "submission_ports": [587]}, azure={"ssh_public_key": OPERATOR_KEY})
    result = run(d)
    rules = rules_of(result)
    cp = prepare({"deployment": d, "relay_password": "x"}, "azure")
    expected = sum(bool(r.ipv4) + bool(r.ipv6) for r in cp.rules)
    allows = [r for r in rules if r["access"] == "Allow"]
    assert len(allows) == expected
    for direction in ("Inbound", "Outbound"):
        prios = [r["priority"] for r in rules if r["direction"] == direction]
        assert len(prios) == len(set(prios)), f"{direction} priorities collide"
        assert all(100 <= p <= 4096 for p in prios)
        deny = [r for r in rules if r["direction"] == direction and r["access"] == "Deny"]
        assert len(deny) == 1 and deny[0]["priority"] == 4096 == max(prios)
    [deny_in] = [r for r in rules if r["direction"] == "Inbound" and r["access"] == "Deny"]
    assert deny_in["sourceAddressPrefix"] == "*" and deny_in["protocol"] == "*"
    assert deny_in["destinationPortRange"] == "*"
    [deny_out] = [r for r in rules if r["direction"] == "Outbound" and r["access"] == "Deny"]
    assert deny_out["destinationAddressPrefix"] == "Internet" and deny_out["protocol"] == "*"
    inbound = {(r["name"], frozenset(ports(r)), frozenset(sources(r)), r["protocol"])
               for r in allows if r["direction"] == "Inbound"}
    assert inbound == {
        ("allow-smtp-v4", frozenset({"25"}), frozenset({"0.0.0.0/0"}), "Tcp"),
        ("allow-smtp-v6", frozenset({"25"}), frozenset({"::/0"}), "Tcp"),
        ("allow-submission-587-v4", frozenset({"587"}), frozenset({"0.0.0.0/0"}), "Tcp"),
        ("allow-submission-587-v6", frozenset({"587"}), frozenset({"::/0"}), "Tcp"),
        ("allow-ssh-v4", frozenset({"22"}), frozenset({"203.0.113.0/24"}), "Tcp"),
        ("allow-ssh-v6", frozenset({"22"}), frozenset({"2001:db8::/32"}), "Tcp"),
        ("allow-kumo-api-v4", frozenset({"8443"}), frozenset({"198.51.100.0/24"}), "Tcp"),
    }
    # Relay mode (pay-as-you-go): the relay's port out, never 25 or 465.
    outbound = {(frozenset(ports(r)), r["protocol"]) for r in allows if r["direction"] == "Outbound"}
    assert {p for p, _ in outbound} == {frozenset({"587"}), frozenset({"53"}), frozenset({"123"}),
                                       frozenset({"80"}), frozenset({"443"})}
    assert (frozenset({"443"}), "Tcp") in outbound and (frozenset({"123"}), "Udp") in outbound


def test_direct_mode_egress_is_25_and_not_the_submission_ports():
    result = run(direct())
    outbound = {p for r in rules_of(result) if r["direction"] == "Outbound" and r["access"] == "Allow"
                for p in ports(r)}
    assert outbound == {"25", "53", "123", "80", "443"}


# -- PTR and forward records ------------------------------------------------------------------------


def test_ptr_set_when_forward_records_exist_without_a_zone():
    result = run(dep(dns={"forward_records_exist": True}))
    assert result.one(PIP).inputs["dnsSettings"]["reverseFqdn"] == "mta.example.com."
    assert not result.of_type(RECORD)
    [node] = result.outputs["nodes"]
    assert node["ptr"] == "mta.example.com"
    assert node["forward_record"]["created"] is False


def test_zone_first_run_creates_the_a_record_and_defers_the_ptr():
    d = dep(dns={"zone": "example.com"}, azure={"dns_zone_resource_group": "dns-rg"})
    result = run(d)
    record = result.one(RECORD)
    ip = result.outputs["public_ips"][0]
    assert record.name == "kumo-t-node1-a"
    assert record.inputs["recordType"] == "A"
    assert record.inputs["zoneName"] == "example.com"
    assert record.inputs["resourceGroupName"] == "dns-rg"
    assert record.inputs["relativeRecordSetName"] == "mta"
    assert record.inputs["aRecords"] == [{"ipv4Address": ip}]
    assert record.inputs["ttl"] == azure.RECORD_TTL
    # The record needs the address: registered only once the public IP exists.
    names = [r.name for r in result.resources]
    assert names.index("kumo-t-node1-ip") < names.index("kumo-t-node1-a")
    # Azure checks the reverse FQDN resolves before it sets it: not in the run that creates the record.
    assert "reverseFqdn" not in result.one(PIP).inputs["dnsSettings"]
    [node] = result.outputs["nodes"]
    assert node["ptr"] is None and node["forward_record"]["created"] is True
    assert result.outputs["dns_records"] == []
    # The operator is told how to get the PTR.
    assert any(m.startswith("warning: ") and "dns.forward_records_exist: true" in m for m in result.log)


def test_zone_second_run_sets_the_ptr_once_the_record_exists():
    d = dep(dns={"zone": "example.com", "forward_records_exist": True}, azure={"dns_zone_resource_group": "dns-rg"})
    result = run(d)
    assert result.one(RECORD).inputs["aRecords"] == [{"ipv4Address": result.outputs["public_ips"][0]}]
    assert result.one(PIP).inputs["dnsSettings"]["reverseFqdn"] == "mta.example.com."
    assert result.outputs["nodes"][0]["ptr"] == "mta.example.com"
    assert not any("forward_records_exist" in m for m in result.log)


def test_record_at_the_zone_apex():
    assert azure.relative_name("example.com", "example.com") == "@"
    assert azure.relative_name("mta1.mail.example.com", "example.com") == "mta1.mail"


# -- images and marketplace terms ---------------------------------------------------------------


def test_rocky_is_refused_without_marketplace_terms():
    err = refused_before_any_resource(dep(os="rocky9"),
                                      r"kumo:deployment\.azure\.marketplace_terms_accepted")
    assert f"az vm image terms accept --urn {ROCKY_URN}" in str(err)
    assert "invalid configuration: kumo:deployment.azure.marketplace_terms_accepted: " in str(err)


def test_rocky_with_accepted_terms_carries_the_marketplace_plan():
    result = run(dep(os="rocky9", azure={"marketplace_terms_accepted": True}))
    vm = result.one(VM)
    assert vm.inputs["plan"] == {"name": "9-base", "product": "rockylinux-x86_64", "publisher": "resf"}
    assert vm.inputs["storageProfile"]["imageReference"] == {
        "publisher": "resf", "offer": "rockylinux-x86_64", "sku": "9-base", "version": "latest"}
    assert "dnf" in decoded_custom_data(vm)


def test_alma_needs_no_plan():
    result = run(dep(os="alma9"))
    vm = result.one(VM)
    assert "plan" not in vm.inputs
    assert vm.inputs["storageProfile"]["imageReference"]["publisher"] == "almalinux"


# -- sizes: accelerated networking and NVMe -------------------------------------------------------


@pytest.mark.parametrize("size", ["Standard_D2s_v5", "Standard_B2s"])
def test_accelerated_networking_follows_the_catalog(size):
    result = run(dep(sizing={"instance_type": size}))
    expected = catalog.load("azure").get(size).accelerated_networking
    assert expected is (size == "Standard_D2s_v5")  # the test needs one of each
    assert result.one(NIC).inputs["enableAcceleratedNetworking"] is expected
    assert result.one(VM).inputs["hardwareProfile"]["vmSize"] == size


def test_v6_size_with_local_nvme_gets_the_nvme_controller():
    d = dep(sizing={"profile": "performance", "instance_type": "Standard_D4ads_v6"})
    result = run(d)
    assert catalog.load("azure").get("Standard_D4ads_v6").nvme_controller_required
    vm = result.one(VM)
    assert result.outputs["sizing"]["spool_storage"] == "local_nvme"
    assert vm.inputs["storageProfile"]["diskControllerType"] == "NVMe"
    assert "dataDisks" not in vm.inputs["storageProfile"]  # the spool is on the local NVMe
    assert not result.of_type(DISK)
    assert result.one(NIC).inputs["enableAcceleratedNetworking"] is True
    assert "KUMO_SPOOL_STORAGE=local_nvme" in decoded_custom_data(vm)


def test_lsv3_local_nvme_needs_no_controller_setting():
    result = run(dep(sizing={"profile": "performance", "instance_type": "Standard_L8s_v3"}))
    storage = result.one(VM).inputs["storageProfile"]
    assert "diskControllerType" not in storage and "dataDisks" not in storage


def test_v6_size_with_block_spool_keeps_nvme_controller_and_lun_0():
    result = run(dep(sizing={"instance_type": "Standard_D2ads_v6"}, spool={"storage": "block"}))
    storage = result.one(VM).inputs["storageProfile"]
    assert storage["diskControllerType"] == "NVMe"
    assert [d["lun"] for d in storage["dataDisks"]] == [0]


# -- several nodes, existing network, own SSH key ---------------------------------------------------


def test_three_nodes():
    result = run(dep(nodes=3))
    # Registration order is asynchronous; the names are what must be stable.
    vms, pips, nics, disks = (sorted(result.of_type(t), key=lambda r: r.name) for t in (VM, PIP, NIC, DISK))
    assert [v.name for v in vms] == [f"kumo-t-node{i}-vm" for i in (1, 2, 3)]
    assert [p.name for p in pips] == [f"kumo-t-node{i}-ip" for i in (1, 2, 3)]
    assert len(nics) == len(disks) == 3
    assert len(result.of_type(NSG)) == 1 and result.of_type(TLS_KEY) == []
    # One generated admin password per VM (Azure requires one without a key; see the module).
    assert sorted(p.name for p in result.of_type(RANDOM_PASSWORD)) == [
        f"kumo-t-node{i}-admin-password" for i in (1, 2, 3)]
    hostnames = [n["hostname"] for n in result.outputs["nodes"]]
    assert hostnames == ["mta1.example.com", "mta2.example.com", "mta3.example.com"]
    assert len(set(result.outputs["public_ips"])) == 3
    assert len({p.inputs["dnsSettings"]["domainNameLabel"] for p in pips}) == 3
    for vm, hostname in zip(vms, hostnames):
        text = decoded_custom_data(vm)
        assert f"fqdn: {hostname}" in text
        assert os_profile(vm)["computerName"] == hostname.split(".")[0]
    for i, vm in enumerate(vms, 1):
        assert vm.inputs["networkProfile"]["networkInterfaces"][0]["id"] == f"kumo-t-node{i}-nic-id"
        assert vm.inputs["storageProfile"]["dataDisks"][0]["managedDisk"]["id"] == f"kumo-t-node{i}-spool-id"


def test_existing_resource_group_and_subnet_are_used():
    vnet = VNET_ID
    subnet = f"{vnet}/subnets/mail"
    result = run(dep(azure={"resource_group": "mail-rg", "vnet_id": vnet, "subnet_id": subnet}))
    assert not result.of_type(RG) and not result.of_type(VNET) and not result.of_type(SUBNET)
    assert result.one(NIC).inputs["ipConfigurations"][0]["subnet"] == {"id": subnet}
    for r in result.resources:
        if r.type.startswith(T) and r.type not in (RECORD, ROLE):  # a role assignment has a scope instead
            assert r.inputs["resourceGroupName"] == "mail-rg", r.name


def test_vnet_without_subnet_is_refused():
    vnet = VNET_ID
    refused_before_any_resource(dep(azure={"vnet_id": vnet}), r"kumo:deployment\.azure\.subnet_id")


def test_given_ssh_key_is_used_and_no_password_or_key_generated():
    result = run(dep(network={"ssh_cidrs": ["198.51.100.0/24"]}, azure={"ssh_public_key": OPERATOR_KEY}))
    assert not result.of_type(TLS_KEY) and not result.of_type(RANDOM_PASSWORD)
    profile = result.one(VM).inputs["osProfile"]
    assert "adminPassword" not in profile
    linux = profile["linuxConfiguration"]
    assert linux["disablePasswordAuthentication"] is True
    [public_key] = linux["ssh"]["publicKeys"]
    assert public_key == {"path": "/home/kumoadmin/.ssh/authorized_keys", "keyData": OPERATOR_KEY}


def test_admin_password_is_only_in_the_vm_and_sent_as_a_secret():
    result = run(dep(nodes=2))
    for vm in result.of_type(VM):
        assert offline.is_secret(vm.inputs["osProfile"])  # the whole profile travels as a secret
        value = os_profile(vm)["adminPassword"]
        assert [r.name for r in result.resources if value in recorded_text(r.inputs)] == [vm.name]
        assert value not in decoded_custom_data(vm)
        assert value not in recorded_text(result.outputs)
    values = {os_profile(vm)["adminPassword"] for vm in result.of_type(VM)}
    assert len(values) == 2  # one per VM


def test_no_ssh_vm_gets_sshd_password_authentication_off_from_the_user_data():
    text = decoded_custom_data(run(dep()).one(VM))
    assert yaml.safe_load(text).get("ssh_pwauth") is False


def test_every_taggable_resource_is_tagged():
    result = run(dep(dns={"zone": "example.com"}, azure={"dns_zone_resource_group": "dns-rg"}))
    for r in result.resources:
        if r.type in (RG, VNET, NSG, PIP, NIC, DISK, VM, VAULT, SECRET):
            assert r.inputs["tags"] == TAGS, r.name
    assert result.of_type(VAULT) and result.of_type(SECRET)  # relay mode: the tag check covered them
    assert result.one(RECORD).inputs["metadata"] == TAGS


# -- the component's own attributes and options ---------------------------------------------------


def test_component_exposes_identity_and_no_private_key():
    seen = {}

    def prog():
        mta = azure.AzureKumoMta("kumo-t", {"deployment": dep(nodes=2), "relay_password": "x"})
        seen["mta"] = mta
        seen["principals"] = _sync_await(mta.identity_principal_ids.future())
        seen["rg"] = _sync_await(mta.resource_group_name.future())

    offline.run(prog, {}, stack="t")
    principals = seen["principals"]
    assert isinstance(principals, list) and len(principals) == 2 and len(set(principals)) == 2
    assert all(re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", p) for p in principals)
    assert seen["rg"] == "kumo-t-rg"
    assert not hasattr(seen["mta"], "ssh_private_key")


@pytest.mark.parametrize("replace", [False, True])
def test_vm_options_guard_the_bootstrap_and_replace_delete_first(replace):
    result = run(dep(lifecycle={"replace_on_bootstrap_change": replace}))
    vm = result.one(VM)
    # Create-only settings are never changed on a running VM, whatever the bootstrap setting.
    assert vm.ignore_changes == ([] if replace else ["osProfile.customData"]) + [
        "osProfile.adminPassword", "osProfile.linuxConfiguration", "securityProfile"]
    assert vm.delete_before_replace is True  # the NIC and spool disk attach to one VM at a time
    # The ignored path is where the bootstrap really is in the engine's inputs.
    assert "customData" in os_profile(result.one(VM))


def test_machine_options_ignore_the_custom_data_path():
    cp = prepare({"deployment": dep(), "relay_password": "x"}, "azure")
    assert machine_options(None, cp, azure.BOOTSTRAP_PATHS).ignore_changes == ["osProfile.customData"]
    cp = prepare({"deployment": dep(lifecycle={"replace_on_bootstrap_change": True}), "relay_password": "x"}, "azure")
    assert machine_options(None, cp, azure.BOOTSTRAP_PATHS).ignore_changes == []


def test_preview_completes_with_unknowns():
    result = run(dep(nodes=2, dns={"zone": "example.com"}, azure={"dns_zone_resource_group": "dns-rg"}),
                 preview=True)
    assert len(result.of_type(VM)) == 2
    assert len(result.of_type(RECORD)) == 2


# -- secrets: Key Vault, secrets and their readers (issue 5) ----------------------------------------

DKIM_DOMAINS = ["example.com", "example.org"]
# What every fleet (more than one node) stores besides: its Redis URL and its peer list (kumo_infra.fleet).
FLEET_STORES = ["redis-url", "fleet-peers"]
GUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


def direct(**overrides) -> dict:
    """An EA subscription sending on 25 itself: no relay, so no relay password."""
    d = dep(azure={"subscription_type": "ea"}, **overrides)
    d["port25"] = {"outbound": "auto"}
    return d


def run_component(d: dict, password: str | None = RELAY_PW, name: str = "kumo-t") -> tuple[
        offline.OfflineResult, dict]:
    """The component itself (not the program), with its attributes resolved."""
    seen: dict = {}

    def prog():
        args = {"deployment": d} if password is None else {"deployment": d, "relay_password": password}
        mta = azure.AzureKumoMta(name, args)
        seen["mta"] = mta
        for attr in ("identity_principal_ids", "secret_names", "deliverability_records", "nodes", "public_ips",
                     "dns_records", "sizing"):
            seen[attr] = _sync_await(getattr(mta, attr).future())

    return offline.run(prog, {}, stack="t"), seen


def secret_inputs(secret) -> dict:
    """A keyvault.Secret's properties. The value is a secret, so the engine gets the whole object as
    a secret: {<secret signature>: ..., "value": {the properties}}."""
    props = secret.inputs["properties"]
    return props["value"] if isinstance(props.get("value"), dict) else props


def recorded_text(value) -> str:
    """Recorded data as one searchable string (JSON escapes a PEM's newlines: search the same way)."""
    return json.dumps(value)


def test_example_stack_key_vault(azdev):
    d = stack_values("azure-dev")["kumo:deployment"]
    vault = azdev.one(VAULT)
    assert vault.parent == "kumo-azdev"
    assert vault.inputs["vaultName"] == azure_vault_name(parse_deployment(d))
    assert vault.inputs["resourceGroupName"] == "kumo-azdev-rg"
    assert vault.inputs["location"] == "westeurope"
    props = vault.inputs["properties"]
    assert props["tenantId"] == CLIENT_CONFIG["tenantId"]
    assert props["sku"] == {"family": "A", "name": "standard"}
    assert props["enableRbacAuthorization"] is True
    assert "accessPolicies" not in props  # RBAC only
    assert props["enableSoftDelete"] is True and props["enablePurgeProtection"] is True
    assert 7 <= props["softDeleteRetentionInDays"] <= 90
    # Data-plane access only from the nodes' subnet; no bypass for "trusted services".
    assert props["networkAcls"] == {"defaultAction": "Deny", "bypass": "None", "virtualNetworkRules": [
        {"id": "kumo-azdev-subnet-id", "ignoreMissingVnetServiceEndpoint": False}]}
    assert "ipRules" not in props["networkAcls"]
    assert props["publicNetworkAccess"] == "Enabled"  # the service endpoint reaches the public endpoint
    # The subnet kumo-infra creates carries the endpoint the virtual network rule needs.
    assert azdev.one(SUBNET).inputs["serviceEndpoints"] == [{"service": "Microsoft.KeyVault"}]
    assert [i["token"] for i in azdev.invokes].count(f"{T}:authorization:getClientConfig") == 1


def test_example_stack_secret_is_where_the_node_looks_for_it(azdev):
    cp = prepare({"deployment": stack_values("azure-dev")["kumo:deployment"], "relay_password": "x"}, "azure")
    vault = azdev.one(VAULT)
    secret = azdev.one(SECRET)
    assert secret.inputs["vaultName"] == vault.inputs["vaultName"]
    assert secret.inputs["resourceGroupName"] == vault.inputs["resourceGroupName"]
    assert secret.inputs["secretName"] == "relay-password"
    assert secret_inputs(secret)["value"] == RELAY_PW
    # The node fetches https://<vault>.vault.azure.net, secret relay-password: the same names.
    [spec] = secret_specs(cp.deployment)
    ref = reference(cp.deployment, spec)
    assert ref == f"azure:https://{vault.inputs['vaultName']}.vault.azure.net:relay-password"
    assert ref in decoded_custom_data(azdev.one(VM))


def test_example_stack_vm_identity_reads_only_the_secret(azdev):
    role = azdev.one(ROLE)
    secret = azdev.one(SECRET)
    assert role.inputs["scope"] == f"{secret.name}-id"  # the secret, not the vault
    assert role.inputs["roleDefinitionId"] == SECRETS_USER
    assert role.inputs["principalType"] == "ServicePrincipal"
    assert re.fullmatch(GUID, role.inputs["principalId"])
    assert re.fullmatch(GUID, role.inputs["roleAssignmentName"])
    assert role.parent == "kumo-azdev"
    # The VM's identity: the same deployment through the component, whose identity_principal_ids we read.
    _, seen = run_component(stack_values("azure-dev")["kumo:deployment"], name="kumo-azdev")
    assert [role.inputs["principalId"]] == seen["identity_principal_ids"]


def test_each_vm_identity_reads_exactly_the_deployments_secrets():
    d = dep(nodes=2, dkim={"domains": DKIM_DOMAINS})
    result, seen = run_component(d)
    names = ["relay-password", "dkim-example-com-kumo", "dkim-example-org-kumo", *FLEET_STORES]
    assert seen["secret_names"] == names
    secrets = result.of_type(SECRET)
    assert sorted(s.inputs["secretName"] for s in secrets) == sorted(names)
    [vault] = result.of_type(VAULT)
    assert {s.inputs["vaultName"] for s in secrets} == {vault.inputs["vaultName"]}
    secret_ids = {f"{s.name}-id" for s in secrets}
    roles = result.of_type(ROLE)
    assert len(roles) == 2 * len(names)
    principals = seen["identity_principal_ids"]
    assert len(set(principals)) == 2
    for i, principal in enumerate(principals, 1):
        mine = [r for r in roles if r.name.startswith(f"kumo-t-node{i}-")]
        assert {r.inputs["principalId"] for r in mine} == {principal}
        assert sorted(r.inputs["scope"] for r in mine) == sorted(secret_ids)  # each secret once, nothing else
    for r in roles:
        assert r.inputs["roleDefinitionId"] == SECRETS_USER
        assert r.inputs["principalType"] == "ServicePrincipal"
    # No other grant anywhere: only these role assignments, only at secret scope.
    assert {r.inputs["principalId"] for r in roles} == set(principals)
    # Stable GUID names, one per (vault, secret, node).
    guids = [r.inputs["roleAssignmentName"] for r in roles]
    assert len(set(guids)) == len(guids) and all(re.fullmatch(GUID, g) for g in guids)
    again, _ = run_component(d)
    assert sorted(r.inputs["roleAssignmentName"] for r in again.of_type(ROLE)) == sorted(guids)
    node1 = next(r for r in roles if r.name == "kumo-t-node1-relay-password-access")
    assert node1.inputs["roleAssignmentName"] == azure.role_assignment_name(
        vault.inputs["vaultName"], "relay-password", "node1")


def test_vms_depend_on_the_secrets_and_assignments_replace_delete_first():
    result = run(dep(nodes=2, dkim={"domains": DKIM_DOMAINS}))
    secrets, vms, roles = result.of_type(SECRET), result.of_type(VM), result.of_type(ROLE)
    assert len(secrets) == 3 + len(FLEET_STORES) and len(vms) == 2
    # All but the peer list, made of the machines' own addresses (NodeSecret.machines_wait).
    waited = [s for s in secrets if s.inputs["secretName"] != "fleet-peers"]
    assert len(waited) == len(secrets) - 1
    for vm in vms:
        assert {s.urn for s in waited} <= set(vm.dependencies)
    assert len(roles) == 2 * len(secrets)
    for role in roles:
        assert role.delete_before_replace is True  # a replaced VM's assignment reuses its GUID name


def test_direct_mode_without_dkim_has_no_secret_store_at_all():
    # One node: a fleet stores its Redis URL and peer list.
    result, seen = run_component(direct(nodes=1), password=None)
    assert not result.of_type(VAULT) and not result.of_type(SECRET) and not result.of_type(ROLE)
    assert not [r for r in result.resources if r.type.startswith(f"{T}:authorization")]
    assert f"{T}:authorization:getClientConfig" not in [i["token"] for i in result.invokes]
    assert seen["secret_names"] == [] and seen["deliverability_records"] == []
    assert len(result.of_type(VM)) == 1
    # And through the program, with no relay password configured.
    program_run = offline.run(program.run, {"kumo:deployment": direct()}, stack="t")
    assert not program_run.of_type(VAULT) and not program_run.of_type(ROLE)


def test_direct_mode_with_dkim_stores_only_the_dkim_keys():
    result, seen = run_component(direct(dkim={"domains": ["example.com"]}), password=None)
    [secret] = result.of_type(SECRET)
    assert secret.inputs["secretName"] == "dkim-example-com-kumo"
    assert seen["secret_names"] == ["dkim-example-com-kumo"]
    [role] = result.of_type(ROLE)
    assert role.inputs["scope"] == f"{secret.name}-id"
    assert role.inputs["principalId"] == seen["identity_principal_ids"][0]


def test_deliverability_records_publish_spf_dmarc_and_dkim_per_domain():
    result, seen = run_component(dep(nodes=2, dkim={"domains": DKIM_DOMAINS}))
    records = seen["deliverability_records"]
    ips = seen["public_ips"]
    for domain in DKIM_DOMAINS:
        [spf] = [r for r in records if r["name"] == domain]
        assert spf["type"] == "TXT" and spf["value"].startswith("v=spf1 ")
        assert all(f"ip4:{ip}" in spf["value"] for ip in ips)
        assert any(r["name"] == f"_dmarc.{domain}" and r["value"].startswith("v=DMARC1") for r in records)
        [dkim] = [r for r in records if r["name"] == f"kumo._domainkey.{domain}"]
        assert dkim["value"].startswith("v=DKIM1; k=rsa; p=") and "PRIVATE" not in dkim["value"]


# -- pure helpers --------------------------------------------------------------------------------


def test_private_ip_and_principal_extraction():
    from pulumi_azure_native.compute.outputs import VirtualMachineIdentityResponse
    from pulumi_azure_native.network.outputs import NetworkInterfaceIPConfigurationResponse

    ipc = NetworkInterfaceIPConfigurationResponse(etag="e", provisioning_state="Succeeded",
                                                  private_link_connection_properties=None,
                                                  private_ip_address="10.42.0.4")
    assert azure.first_private_ip([ipc]) == "10.42.0.4"
    assert azure.first_private_ip([{"privateIPAddress": "10.42.0.5"}]) == "10.42.0.5"
    assert azure.first_private_ip([]) is None and azure.first_private_ip(None) is None
    ident = VirtualMachineIdentityResponse(principal_id="p-1", tenant_id="t", type="SystemAssigned")
    assert azure.principal_id(ident) == "p-1"
    assert azure.principal_id({"principalId": "p-2"}) == "p-2"
    assert azure.principal_id(None) is None


def test_role_helpers():
    assert azure.secrets_user_role_id("sub-1") == (
        "/subscriptions/sub-1/providers/Microsoft.Authorization/roleDefinitions/4633458b-17de-408a-b874-0445c86b69e6")
    a = azure.role_assignment_name("kumo-t-5f2ccb", "relay-password", "node1")
    assert a == azure.role_assignment_name("kumo-t-5f2ccb", "relay-password", "node1")
    assert uuid.UUID(a).version == 5
    others = {azure.role_assignment_name(v, s, n) for v, s, n in [
        ("kumo-u-5f2ccb", "relay-password", "node1"), ("kumo-t-5f2ccb", "dkim-x", "node1"),
        ("kumo-t-5f2ccb", "relay-password", "node2")]}
    assert a not in others and len(others) == 3


def test_subnet_and_label_helpers():
    assert azure.subnet_cidr("10.42.0.0/16") == "10.42.0.0/24"
    assert azure.subnet_cidr("10.9.8.0/26") == "10.9.8.0/26"
    cp = prepare({"deployment": dep(name="a" * 20, nodes=100, sizing={"messages_per_hour": 100}), "relay_password": "x"}, "azure")
    labels = {azure.domain_label("a" * 20, n) for n in cp.nodes}
    assert len(labels) == 100
    assert all(re.fullmatch(r"[a-z][a-z0-9-]{1,61}[a-z0-9]", label) for label in labels)


def test_custom_data_is_plain_base64_and_compressed_only_when_too_big():
    assert base64.b64decode(azure.custom_data("#cloud-config\nx: 1\n")).decode() == "#cloud-config\nx: 1\n"
    big = "#cloud-config\n" + "a" * 60_000
    packed = base64.b64decode(azure.custom_data(big))
    assert gzip.decompress(packed).decode() == big


def test_offline_answers_use_documentation_addresses_only():
    text = repr(offline_azure.COMPUTED)
    for addr in re.findall(r"\d+\.\d+\.\d+\.[\d{}n]+", text):
        assert addr.startswith("192.0.2."), addr


def test_component_is_what_the_program_dispatches_to():
    assert targets.get("azure").component_class() is azure.AzureKumoMta
    from kumo_infra.clouds.azure import AzureKumoMta  # the path programs written before issue 9 use

    assert AzureKumoMta is azure.AzureKumoMta


def test_custom_data_too_big_is_refused_before_any_resource(monkeypatch):
    monkeypatch.setattr(azure, "CUSTOM_DATA_LIMIT", 1000)  # below any real bootstrap, even compressed
    err = refused_before_any_resource(dep(), r"bytes of custom data even compressed")
    assert "Azure accepts 1000" in str(err)


def test_given_subnet_is_the_one_the_vault_admits():
    vnet = VNET_ID
    subnet = f"{vnet}/subnets/mail"
    result = run(dep(azure={"resource_group": "mail-rg", "vnet_id": vnet, "subnet_id": subnet}))
    acls = result.one(VAULT).inputs["properties"]["networkAcls"]
    assert acls["defaultAction"] == "Deny"
    # Azure refuses the rule if that subnet lacks the Microsoft.KeyVault endpoint: loud, not silent.
    assert acls["virtualNetworkRules"] == [{"id": subnet, "ignoreMissingVnetServiceEndpoint": False}]


# -- Trusted Launch and encryption at host (issue 8, point 9) -----------------------------------


@pytest.mark.parametrize("os_key, trusted", [
    ("ubuntu22", True), ("ubuntu20", True), ("debian12", True), ("alma8", True), ("alma9", True),
    ("rocky9", False), ("rocky8", False), ("ubuntu24", False),
])
def test_trusted_launch_only_on_the_images_microsoft_lists(os_key, trusted):
    d = dep(os=os_key, azure={"marketplace_terms_accepted": True} if os_key.startswith("rocky") else {})
    profile = run(d).one(VM).inputs["securityProfile"]
    assert profile["encryptionAtHost"] is True  # every catalog size has it
    if trusted:
        assert profile == TRUSTED_LAUNCH
    else:
        assert profile == {"encryptionAtHost": True}


@pytest.mark.parametrize("size", ["Standard_B2s", "Standard_D2s_v5", "Standard_L8s_v3", "Standard_D4ads_v6",
                                  "Standard_D2ds_v6"])
def test_every_size_family_gets_trusted_launch_and_encryption_at_host(size):
    profile = run(dep(sizing={"instance_type": size}, spool={"storage": "block"})).one(VM).inputs["securityProfile"]
    assert profile == TRUSTED_LAUNCH


def test_every_catalog_family_is_classified():
    """A family added to the catalog must be placed in (or out of) both tables on purpose."""
    families = {t.family for t in catalog.load("azure").types}
    assert families <= azure.TRUSTED_LAUNCH_FAMILIES
    assert families <= azure.ENCRYPTION_AT_HOST_FAMILIES
    assert azure.trusted_launch_supported(parse_deployment(dep(os="ubuntu22")).image, "Fsv2") is False
    assert azure.security_profile(parse_deployment(dep(os="rocky9", azure={"marketplace_terms_accepted": True}))
                                  .image, "Fsv2") is None


def test_every_trusted_launch_image_is_a_project_image():
    images = {(i.publisher, i.offer, i.sku) for i in targets.get("azure").images.values() if i}
    assert azure.TRUSTED_LAUNCH_IMAGES <= images


# -- the HTTP API's credentials (issue 8, point 6) ---------------------------------------------

API_PW = "offline-generated-password-of-kumo-t-api-password"


API_STORES = ["api-password", "api-tls-key", "api-tls-cert"]


def test_api_password_in_the_vault_readable_only_by_each_vm():
    d = dep(nodes=2, network={"api_cidrs": ["198.51.100.0/24"]})
    result, seen = run_component(d)
    assert seen["secret_names"] == ["relay-password", *API_STORES, *FLEET_STORES]
    api_secret = next(s for s in result.of_type(SECRET) if s.inputs["secretName"] == "api-password")
    assert secret_inputs(api_secret)["value"] == API_PW
    readers = [r for r in result.of_type(ROLE) if r.inputs["scope"] == f"{api_secret.name}-id"]
    assert sorted(r.inputs["principalId"] for r in readers) == sorted(seen["identity_principal_ids"])
    generated = next(p for p in result.of_type(RANDOM_PASSWORD) if p.name == "kumo-t-api-password")
    assert generated.inputs == {"length": 40, "special": False, "minUpper": 1, "minLower": 1, "minNumeric": 1}
    for vm in result.of_type(VM):
        text = decoded_custom_data(vm)
        files = {f["path"]: f["content"] for f in yaml.safe_load(text)["write_files"]}
        assert (f"azure:https://{azure_vault_name(parse_deployment(d))}.vault.azure.net:api-password\t"
                "/opt/kumomta/etc/secrets/api-password") in files["/etc/kumo-infra/secrets.list"].splitlines()
        assert API_PW not in text


def test_api_output_names_the_vault_secret_and_how_to_read_it():
    d = dep(nodes=2, network={"api_cidrs": ["198.51.100.0/24"]})
    result = run(d)
    api = result.outputs["api"]
    vault = azure_vault_name(parse_deployment(d))
    assert [e["url"] for e in api["endpoints"]] == ["https://mta1.example.com:8443", "https://mta2.example.com:8443"]
    api_tls_checks.assert_api_output_names_hosts_and_certificate(api, result, "kumo-t")
    assert api["secret_name"] == "api-password" and api["user"] == "kumo-api"
    assert api["read_password"] == (f"az keyvault secret show --vault-name {vault} --name api-password "
                                    "--query value -o tsv")
    assert "network-rule" in api["note"] and "Key Vault Secrets User" in api["note"]
    assert run(dep()).outputs["api"] is None


# -- the HTTP API's TLS certificate (issue 8, point 6) -----------------------------------------

def test_api_certificate_names_every_node_hostname_and_address():
    result = run(dep(nodes=3, network={"api_cidrs": ["198.51.100.0/24"]}))
    api_tls_checks.assert_certificate_names_every_node(result, "kumo-t")


def test_api_tls_key_and_certificate_in_the_vault_readable_only_by_each_vm():
    d = dep(nodes=2, network={"api_cidrs": ["198.51.100.0/24"]})
    result, seen = run_component(d)
    secrets = {s.inputs["secretName"]: s for s in result.of_type(SECRET)}
    assert secret_inputs(secrets["api-tls-key"])["value"] == api_tls_checks.key_pkcs8("kumo-t")
    assert secret_inputs(secrets["api-tls-cert"])["value"] == api_tls_checks.certificate_pem("kumo-t")
    vault = azure_vault_name(parse_deployment(d))
    for store in ("api-tls-key", "api-tls-cert"):
        secret = secrets[store]
        assert secret.inputs["vaultName"] == vault
        readers = [r for r in result.of_type(ROLE) if r.inputs["scope"] == f"{secret.name}-id"]
        assert sorted(r.inputs["principalId"] for r in readers) == sorted(seen["identity_principal_ids"])
        assert {r.inputs["roleDefinitionId"] for r in readers} == {SECRETS_USER}
    for vm in result.of_type(VM):
        listing = {f["path"]: f["content"] for f in yaml.safe_load(decoded_custom_data(vm))["write_files"]}[
            "/etc/kumo-infra/secrets.list"].splitlines()
        for store in ("api-tls-key", "api-tls-cert"):
            assert f"azure:https://{vault}.vault.azure.net:{store}\t/opt/kumomta/etc/secrets/{store}" in listing
    # The public IPs exist before the VMs: each VM waits for both values.
    tls_secrets = [s for s, kv in seen["mta"].secrets if s.spec.key in ("api-tls-key", "api-tls-cert")]
    assert len(tls_secrets) == 2 and all(s.machines_wait for s in tls_secrets)
    stored = {secrets[store].urn for store in ("api-tls-key", "api-tls-cert")}
    vms = result.of_type(VM)
    assert len(vms) == 2 and all(stored <= set(vm.dependencies) for vm in vms)


def test_no_api_cidrs_no_api_tls_key_or_certificate():
    result = run(dep())
    assert result.of_type(api_tls_checks.CERT) == [] and result.of_type(TLS_KEY) == []
    assert [s.inputs["secretName"] for s in result.of_type(SECRET)] == ["relay-password"]

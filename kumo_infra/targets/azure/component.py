"""KumoMTA on Azure virtual machines: ``AzureKumoMta`` (the base component's hooks, kumo_infra.component).

One component per deployment: a resource group (the configured one, or a new
one), a virtual network and subnet (the configured ones, or a minimal new
pair), one network security group built from ``cp.rules`` and attached to every
NIC, and per node a Standard static public IP (with its PTR), a NIC, the VM
with a system-assigned managed identity and, for a ``block`` spool, a managed
data disk at LUN 0 that outlives the VM. With ``dns.zone`` the forward A
records are created in the Azure DNS zone.

Secrets (relay password, DKIM private keys, the API password) go to one Key
Vault per deployment, named ``targets.azure.vault_name`` (RBAC authorization,
soft delete, purge protection except in an ephemeral deployment, whose vault is
purged after the destroy: targets.azure.purge_after_destroy), one ``keyvault.Secret`` each; each VM's
system-assigned identity gets "Key Vault Secrets User" on exactly those secrets
(scope: the secret, not the vault). No secrets, no vault. The VMs depend on the
secrets; the role assignments need the VMs' principal ids, so they come after
the VMs, and the node's boot-time fetch retries until RBAC has propagated.

The vault's firewall admits data-plane requests only from the nodes' subnet
(a virtual network rule; the subnet carries the ``Microsoft.KeyVault`` service
endpoint when kumo-infra creates it, and must carry it when it is given). The
deployer needs no exception: ``keyvault.Secret`` is written through Azure
Resource Manager (the Microsoft.KeyVault resource provider), a control-plane
operation, and "after firewall rules are in effect, users can only perform Key
Vault data plane operations when their requests originate from allowed virtual
networks or IPv4 address ranges" (MicrosoftDocs/azure-docs
articles/key-vault/general/network-security.md): the firewall governs reads of
secret values, not ARM writes. Reading a value from elsewhere (the API password,
by an operator) needs a temporary IP rule and a data-plane role.

PTR sequencing (Azure sets the PTR as ``dnsSettings.reverseFqdn`` of the public
IP, and refuses a reverse FQDN that does not already resolve to an address of
the subscription): the A record needs the address, and the address only exists
once the public IP does, so one ``pulumi up`` cannot create the IP, then the
record, then set the PTR on that same IP. kumo-infra therefore sets
``reverseFqdn`` only when ``dns.forward_records_exist`` is true:

* with ``dns.zone``: the first run creates the IP (no PTR) and the A record;
  the operator then sets ``dns.forward_records_exist: true`` and runs again, and
  the IP is updated in place with its PTR (a warning says so);
* without a zone: publish the A records from the ``dns_records`` output, set
  ``dns.forward_records_exist: true`` and run again (as on every cloud).

A CNAME to the IP's ``<label>.<region>.cloudapp.azure.com`` name would pass
Azure's check in one run, but a mail host's name must be an address record
(RFC 5321 4.1.4: EHLO gives a primary host name) and a CNAME is impossible at
a zone apex, so it is not used.
"""


import base64
import hashlib
import uuid
from dataclasses import dataclass
from typing import Any, Optional

import pulumi
from pulumi_azure_native import authorization, compute, dns, keyvault, network, resources

from ...bootstrap import compressed
from ...component import (Address, Build, ComponentPlan, KumoMtaArgs, KumoMtaComponent, Machine, NodeBuild,
                          NodePlan, NodeSecret, SharedRedis, child, generated_password, machine_options, node_output,
                          prepare, secrets_for, spool_options, subnet_cidr, base_tags, was)
from ...config import ROOT, Deployment
from ...errors import ConfigError
from ...netplan import Rule
from . import vault_name as azure_vault_name
from .config import AzureSection
from .images import AzureImage
from .redis import shared_redis

# What ``kumo_infra.clouds.azure`` re-exports for programs written before the move.
__all__ = ["AzureKumoMta", "KumoMtaComponent", "child", "KumoMtaArgs", "TYPE", "BOOTSTRAP_PATHS",
           "FIXED_PATHS", "prepare", "machine_options", "node_output", "secrets_for", "subnet_cidr",
           "base_tags", "ComponentPlan", "NodePlan", "NodeSecret"]

TYPE = "kumo:index:AzureKumoMta"
# The engine property path of the bootstrap on the VM (custom data cannot change on a
# running VM: a change replaces it unless lifecycle.replace_on_bootstrap_change).
BOOTSTRAP_PATHS = ["osProfile.customData"]
# Set when a VM is created and never changed on a running one: Azure takes the admin credential and
# SSH keys only at creation (changed later through the VMAccess extension), and enabling encryption
# at host or Trusted Launch on an existing VM needs it deallocated ("Existing VMs must be deallocated
# and reallocated in order to be encrypted": MicrosoftDocs/azure-compute-docs
# articles/virtual-machines/includes/virtual-machines-disks-encryption-at-host-restrictions.md),
# which discards a local NVMe spool. A stack created by an earlier release keeps its VMs as they are.
FIXED_PATHS = ["osProfile.adminPassword", "osProfile.linuxConfiguration", "securityProfile"]
ADMIN_USER = "kumoadmin"
DISK_SKU = "Premium_LRS"
# Azure's Linux marketplace images ship a 30 GiB OS disk (Ubuntu, Debian, AlmaLinux) and refuse a
# smaller disk_size_gb; a Premium SSD is billed as P4 (32 GiB) up to there anyway.
MIN_OS_DISK_GB = 30
SPOOL_LUN = 0  # the bootstrap looks for /dev/disk/azure/data/by-lun/0 (or scsi1/lun0)
# Azure refuses custom data above 64 KiB (base64 text); cloud-init inflates gzip.
CUSTOM_DATA_LIMIT = 65_535
RECORD_TTL = 300
ALLOW_PRIORITY_START = 100
PRIORITY_STEP = 10
# NSG priorities run 100..4096; the explicit denies take the last one, below every allow.
DENY_PRIORITY = 4096
# The name part of an NSG rule whose peers are the nodes' application security group (Rule.from_nodes).
NODES_SLUG = "nodes"
# Built-in role "Key Vault Secrets User": read secret contents (data plane), nothing else.
SECRETS_USER_ROLE = "4633458b-17de-408a-b874-0445c86b69e6"
# The minimum Azure allows: with purge protection a deleted vault's (deterministic) name stays taken
# for this long, so re-creating a removed deployment waits a week, not three months.
SOFT_DELETE_DAYS = 7
# Namespace of the role assignments' GUID names (uuid5 of vault, secret and node: stable across runs).
ROLE_ASSIGNMENT_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/kumo-infra/role-assignments")
# Azure refuses a Linux VM with neither an SSH key nor an admin password ("Authentication using either
# SSH or by user name and password must be enabled in Linux profile", InvalidParameter on
# linuxConfiguration; quoted in hashicorp/terraform-provider-azurerm
# internal/services/compute/linux_virtual_machine_resource.go). Without ssh_public_key (and so without
# any SSH rule) each VM gets a generated password kept only as a Pulumi secret, which no one can use
# from the network: no NSG rule admits 22 from anywhere (deny-in-all sits below every allow), and boot
# diagnostics (the serial console's prerequisite) are not enabled unless the deployment is ephemeral or
# opts in (boot_diagnostics below). Azure's cloud-init datasource turns
# sshd password authentication on for such a VM (ssh_pwauth: true in cloudinit/sources/DataSourceAzure.py);
# a cloud-config "ssh_pwauth: false" in the user data overrides it (cloud-init's ConfigMerger ranks
# instance config above datasource config) and is the bootstrap's to set.
# 40 letters and digits: within Azure's 6-72 characters, and 3 of its 4 character classes.
ADMIN_PASSWORD_LENGTH = 40
# Trusted Launch (Secure Boot + vTPM) needs a Generation 2 image of an OS Microsoft lists and a size
# family it supports (MicrosoftDocs/azure-compute-docs articles/virtual-machines/trusted-launch.md:
# sizes "B-family, D-family ... L-family" supported; OSes Alma Linux 8 and 9, Debian 11 and 12, Ubuntu
# 20.04 and 22.04, and "Rocky Linux from CIQ", which is not the RESF image used here). Images as
# (publisher, offer, sku) from kumo_infra/oses.py; all of these SKUs are the Gen2 ones.
TRUSTED_LAUNCH_IMAGES = frozenset({
    ("almalinux", "almalinux-x86_64", "8-gen2"),
    ("almalinux", "almalinux-x86_64", "9-gen2"),
    ("Canonical", "0001-com-ubuntu-server-focal", "20_04-lts-gen2"),
    ("Canonical", "0001-com-ubuntu-server-jammy", "22_04-lts-gen2"),
    ("Debian", "debian-12", "12-gen2"),
})
# Not listed there, so no Trusted Launch: RESF's Rocky Linux 8/9 ("resf", "rockylinux-x86_64") and
# Ubuntu 24.04 ("ubuntu-24_04-lts", "server"). Every size family of kumo_infra/catalog/azure.toml is a
# B, D or L family.
TRUSTED_LAUNCH_FAMILIES = frozenset({"Bv1", "Bsv2", "Dsv5", "Lsv3", "Dadsv6", "Ddsv6"})
# Encryption at host (temp disk and disk caches encrypted on the host) is a per-size capability Azure
# reports as EncryptionAtHostSupported (az vm list-skus). Recorded values from the SKU API
# (Azure/karpenter-provider-azure pkg/fake/zz_generated.sku.*.go): True for standardBSFamily (Bv1),
# StandardDdsv6Family, standardDav6Family, standardDv5Family, standardDSv3Family; False only for the
# A0-A7, Dv2 and Dv3 families (no premium storage), none of which the catalog offers. Every catalog
# family is a premium-storage size of the current generations: all get it. It also needs the
# subscription feature Microsoft.Compute/EncryptionAtHost registered once (az feature register
# --namespace Microsoft.Compute --name EncryptionAtHost); without it Azure refuses the VM, naming the
# feature.
ENCRYPTION_AT_HOST_FAMILIES = frozenset({"Bv1", "Bsv2", "Dsv5", "Lsv3", "Dadsv6", "Ddsv6"})


@dataclass(frozen=True)
class _Network:
    resource_group: pulumi.Input[str]  # its name
    subnet_id: pulumi.Input[str]
    vnet_id: pulumi.Input[str]  # the subnet's network: a fleet's Redis DNS zone is linked to it


class AzureKumoMta(KumoMtaComponent):
    """KumoMTA nodes on Azure VMs (see docs/component-spec.md)."""

    TARGET = "azure"
    TYPE = TYPE

    identity_principal_ids: pulumi.Output[list[str]]
    """The principal ids of the nodes' system-assigned identities (the role assignments name them)."""

    def _before_resources(self, cp: ComponentPlan) -> dict[str, str]:
        """Each node's custom data, checked before anything is registered (a size error names the fix)."""
        d = cp.deployment
        if cp.create_forward_records and not d.dns.forward_records_exist:
            pulumi.log.warn(
                f"Azure sets a PTR only once the forward record resolves: this run creates the A records in "
                f"{d.dns.zone} without PTRs; then set {ROOT}.dns.forward_records_exist: true and run again "
                f"to set them")  # no resource=: that form logs asynchronously and can be lost at exit
        return {node.key: custom_data(node.user_data) for node in cp.nodes}

    def _section(self, b: Build) -> AzureSection:
        return b.deployment.azure or AzureSection()

    def _network(self, b: Build) -> _Network:
        az, region, name = self._section(b), b.deployment.region, b.name
        if az.resource_group:
            rg_name: pulumi.Input[str] = az.resource_group
        else:
            rg = resources.ResourceGroup(f"{name}-rg", location=region, tags=b.tags, opts=child(self))
            rg_name = rg.name
        self.resource_group_name = pulumi.Output.from_input(rg_name)
        if az.subnet_id:
            assert az.vnet_id  # the target's network_pairs: a given subnet comes with its network
            return _Network(rg_name, az.subnet_id, az.vnet_id)
        vnet = network.VirtualNetwork(
            b.names.network, resource_group_name=rg_name, location=region,
            address_space=network.AddressSpaceArgs(address_prefixes=[az.vnet_cidr]), tags=b.tags,
            opts=child(self, aliases=was(f"{name}-vnet")))
        subnet = network.Subnet(
            b.names.subnet, resource_group_name=rg_name, virtual_network_name=vnet.name,
            address_prefix=subnet_cidr(az.vnet_cidr),
            # Every node has its own Standard public IP for outbound; no implicit default outbound.
            default_outbound_access=False,
            # The Key Vault admits this subnet by a virtual network rule, which needs the endpoint.
            service_endpoints=[network.ServiceEndpointPropertiesFormatArgs(service=KEY_VAULT_ENDPOINT)],
            opts=child(self))
        return _Network(rg_name, subnet.id, vnet.id)

    def _firewall(self, b: Build) -> network.NetworkSecurityGroup:
        # The nodes' own NICs, as the peers of a rule between them (Rule.from_nodes): an application
        # security group every NIC joins (_machine), whatever else shares the subnet. Only a fleet has one.
        self.nodes_group: Optional[network.ApplicationSecurityGroup] = None
        if any(rule.from_nodes for rule in b.cp.rules):
            self.nodes_group = network.ApplicationSecurityGroup(
                f"{b.name}-nodes-asg", resource_group_name=b.network.resource_group, location=b.deployment.region,
                tags=b.tags, opts=child(self))
        self.network_security_group = network.NetworkSecurityGroup(
            b.names.firewall, resource_group_name=b.network.resource_group, location=b.deployment.region,
            security_rules=security_rules(b.cp.rules, self.nodes_group.id if self.nodes_group else None),
            tags=b.tags, opts=child(self, aliases=was(f"{b.name}-nsg")))
        return self.network_security_group

    def _shared_redis(self, b: Build) -> SharedRedis:
        return shared_redis(self, b, b.cp.target.managed_redis or "")

    def _store_secrets(self, b: Build) -> list[pulumi.Resource]:
        """One Key Vault and a secret per value; each VM's identity gets read access to each secret
        once the VM exists (_after_machine)."""
        d, name = b.deployment, b.name
        self.vault: Optional[keyvault.Vault] = None
        self.secrets: list[tuple[NodeSecret, keyvault.Secret]] = []
        self._vault_name = azure_vault_name(d)
        self._role_id: Optional[pulumi.Output[str]] = None
        if not b.secrets:
            return []
        client = authorization.get_client_config_output()
        self._role_id = client.subscription_id.apply(secrets_user_role_id)
        self.vault = keyvault.Vault(
            f"{name}-vault", vault_name=self._vault_name, resource_group_name=b.network.resource_group,
            location=d.region,
            properties=keyvault.VaultPropertiesArgs(
                tenant_id=client.tenant_id,
                sku=keyvault.SkuArgs(family="A", name="standard"),
                # Access by Azure RBAC only (role assignments below): no access policies.
                enable_rbac_authorization=True,
                enable_soft_delete=True, soft_delete_retention_in_days=SOFT_DELETE_DAYS,
                # An ephemeral deployment's vault is purged after the destroy, which purge protection
                # forbids; omitted, not false: "the property does not accept false as its value"
                # (pulumi_azure_native keyvault/_inputs.py VaultPropertiesArgs.enable_purge_protection).
                enable_purge_protection=None if d.lifecycle.ephemeral else True,
                network_acls=vault_network_rules(b.network.subnet_id),
                # The nodes reach the vault's public endpoint through their subnet's service
                # endpoint, which a disabled public access would refuse too (it admits private
                # endpoints only, "even if the firewall rules are present": azure-native
                # VaultPropertiesArgs.public_network_access); the firewall above narrows it.
                public_network_access="Enabled"),
            tags=b.tags, opts=child(self, protect=d.lifecycle.protect))
        for secret in b.secrets:
            key = secret.spec.key
            self.secrets.append((secret, keyvault.Secret(
                b.names.secret(key), vault_name=self._vault_name, secret_name=secret.name,
                resource_group_name=b.network.resource_group,
                properties=keyvault.SecretPropertiesArgs(value=secret.value),
                tags=b.tags, opts=child(self, depends_on=[self.vault], protect=d.lifecycle.protect,
                                        aliases=was(f"{name}-{key}")))))
        # The VM fetches its secrets at boot: they must exist first.
        return [kv for s, kv in self.secrets if s.machines_wait]

    def _address(self, b: Build, n: NodeBuild) -> Address:
        pip = network.PublicIPAddress(
            b.names.address(n.key), resource_group_name=b.network.resource_group, location=b.deployment.region,
            sku=network.PublicIPAddressSkuArgs(name="Standard", tier="Regional"),
            public_ip_allocation_method="Static", public_ip_address_version="IPv4",
            dns_settings=network.PublicIPAddressDnsSettingsArgs(
                domain_name_label=domain_label(b.name, n.node),
                # See the module docstring: only once the A record resolves.
                reverse_fqdn=f"{n.node.hostname}." if b.cp.set_ptr else None),
            tags=b.tags, opts=child(self))
        return Address(pip.ip_address, pip)

    def _forward_record(self, b: Build, n: NodeBuild) -> dns.RecordSet:
        d = b.deployment
        return dns.RecordSet(
            b.names.forward_record(n.key), resource_group_name=self._section(b).dns_zone_resource_group,
            zone_name=d.dns.zone, relative_record_set_name=relative_name(n.node.hostname, d.dns.zone),
            record_type="A", ttl=RECORD_TTL, a_records=[dns.ARecordArgs(ipv4_address=n.address.ip)],
            metadata=b.tags, opts=child(self))

    def _spool(self, b: Build, n: NodeBuild) -> compute.Disk:
        # The queue lives on its own managed disk: it survives the VM's deletion (delete option
        # Detach), Pulumi keeps it on replacement and stack removal (retain_on_delete; not an
        # ephemeral deployment's: spool_options), and the replacement VM attaches the same disk.
        # Platform-managed keys encrypt it at rest.
        # (Deleting a resource group kumo-infra created deletes everything in it, this disk too.)
        return compute.Disk(
            b.names.spool(n.key), resource_group_name=b.network.resource_group, location=b.deployment.region,
            creation_data=compute.CreationDataArgs(create_option="Empty"),
            disk_size_gb=b.cp.plan.spool_gb_per_node, sku=compute.DiskSkuArgs(name=DISK_SKU),
            tags=b.tags, opts=spool_options(self, b.cp))

    def _machine(self, b: Build, n: NodeBuild) -> Machine:
        cp, d, node = b.cp, b.deployment, n.node
        az, region, rg_name = self._section(b), d.region, b.network.resource_group
        image = d.image
        itype = cp.instance_type
        nic = network.NetworkInterface(
            b.names.node(n.key, "nic"), resource_group_name=rg_name, location=region,
            # The subnet is a plain reference: SubnetArgs would add its network-policy defaults.
            ip_configurations=[network.NetworkInterfaceIPConfigurationArgs(
                name="primary", primary=True, subnet={"id": b.network.subnet_id},
                public_ip_address=network.PublicIPAddressArgs(id=n.address.resource.id),
                private_ip_allocation_method="Dynamic", private_ip_address_version="IPv4",
                application_security_groups=[{"id": self.nodes_group.id}] if self.nodes_group else None)],
            network_security_group=network.NetworkSecurityGroupArgs(id=b.firewall.id),
            enable_accelerated_networking=itype.accelerated_networking,
            tags=b.tags, opts=child(self))
        data_disks = None
        if n.spool is not None:
            data_disks = [compute.DataDiskArgs(
                lun=SPOOL_LUN, create_option="Attach", caching="None", delete_option="Detach",
                managed_disk=compute.ManagedDiskParametersArgs(id=n.spool.id, storage_account_type=DISK_SKU))]
        # v6 sizes have no SCSI controller: their disks (and raw NVMe temp disks) need NVMe.
        controller = "NVMe" if itype.nvme_controller_required else None
        plan = (compute.PlanArgs(name=image.sku, product=image.offer, publisher=image.publisher)
                if image.needs_plan else None)
        # The NIC and the spool disk attach to one VM at a time: a replacement VM is created only
        # after the old one is gone.
        vm = compute.VirtualMachine(
            b.names.machine(n.key),
            resource_group_name=rg_name,
            location=region,
            hardware_profile=compute.HardwareProfileArgs(vm_size=cp.plan.instance_type),
            storage_profile=compute.StorageProfileArgs(
                image_reference=compute.ImageReferenceArgs(
                    publisher=image.publisher, offer=image.offer, sku=image.sku, version="latest"),
                # Managed disks are encrypted at rest with platform-managed keys by default; encryption
                # at host (security_profile below) adds the temp disk and the caches.
                os_disk=compute.OSDiskArgs(
                    create_option="FromImage", caching="ReadWrite", delete_option="Delete",
                    disk_size_gb=max(cp.plan.os_disk_gb, MIN_OS_DISK_GB),
                    managed_disk=compute.ManagedDiskParametersArgs(storage_account_type=DISK_SKU)),
                data_disks=data_disks,
                disk_controller_type=controller),
            plan=plan,
            os_profile=os_profile(self, f"{b.name}-{n.key}", cp, az, node.hostname, b.prepared[n.key]),
            network_profile=compute.NetworkProfileArgs(network_interfaces=[
                compute.NetworkInterfaceReferenceArgs(id=nic.id, primary=True, delete_option="Detach")]),
            # Least privilege: the identity can read only this deployment's secrets (_after_machine).
            identity=compute.VirtualMachineIdentityArgs(type="SystemAssigned"),
            security_profile=security_profile(image, itype.family),
            diagnostics_profile=diagnostics_profile(d, az),
            tags=b.tags,
            opts=machine_options(self, cp, BOOTSTRAP_PATHS, FIXED_PATHS, depends_on=b.secrets_ready,
                                 delete_before_replace=True),
        )
        return Machine(vm, nic.ip_configurations.apply(first_private_ip), vm.id)

    def _after_machine(self, b: Build, n: NodeBuild) -> None:
        """Read access to each secret, for this VM's identity only. The GUID name is fixed per
        (vault, secret, node): a replaced VM has a new principal, so the assignment is replaced
        too, deleted first since the name is reused."""
        principal = n.machine.resource.identity.apply(principal_id)
        n.extra["principal"] = principal
        for secret, kv_secret in self.secrets:
            key = secret.spec.key
            authorization.RoleAssignment(
                b.names.secret_access(key, node=n.key),
                role_assignment_name=role_assignment_name(self._vault_name, secret.name, n.key),
                scope=kv_secret.id,
                role_definition_id=self._role_id,
                principal_id=principal,
                principal_type="ServicePrincipal",
                description=f"{n.node.hostname} reads the secret {secret.name}",
                opts=child(self, delete_before_replace=True, aliases=was(f"{b.name}-{n.key}-{key}-read")))

    def _extra_outputs(self, b: Build, nodes: list[NodeBuild]) -> dict[str, pulumi.Input]:
        return {"identity_principal_ids": pulumi.Output.all(*(n.extra["principal"] for n in nodes)).apply(list)}


KEY_VAULT_ENDPOINT = "Microsoft.KeyVault"


def vault_network_rules(subnet_id: pulumi.Input[str]) -> keyvault.NetworkRuleSetArgs:
    """The vault's firewall: data-plane requests only from the nodes' subnet.

    No bypass for "trusted Microsoft services": nothing here uses one (no disk encryption set, no
    template deployment reading the vault), and each would be a path around the rule. A given subnet
    without the Microsoft.KeyVault service endpoint makes Azure refuse the rule (the check is not
    ignored), rather than leaving nodes that cannot fetch their secrets."""
    return keyvault.NetworkRuleSetArgs(
        default_action="Deny", bypass="None",
        virtual_network_rules=[keyvault.VirtualNetworkRuleArgs(id=subnet_id,
                                                               ignore_missing_vnet_service_endpoint=False)])


def os_profile(parent: pulumi.Resource, prefix: str, cp: ComponentPlan, az: AzureSection, hostname: str,
               custom: str) -> compute.OSProfileArgs:
    """The admin account: the operator's SSH key when SSH is allowed (the config requires one with
    network.ssh_cidrs), else a generated password nobody can reach (ADMIN_PASSWORD_LENGTH explains);
    no private key is ever generated into Pulumi state."""
    if az.ssh_public_key:
        linux = compute.LinuxConfigurationArgs(
            disable_password_authentication=True, provision_vm_agent=True,
            ssh=compute.SshConfigurationArgs(public_keys=[compute.SshPublicKeyArgs(
                path=f"/home/{ADMIN_USER}/.ssh/authorized_keys", key_data=az.ssh_public_key)]))
        password = None
    else:
        linux = compute.LinuxConfigurationArgs(disable_password_authentication=False, provision_vm_agent=True)
        password = generated_password(parent, f"{prefix}-admin-password", cp, length=ADMIN_PASSWORD_LENGTH,
                                      special=False, min_upper=1, min_lower=1, min_numeric=1)
    return compute.OSProfileArgs(computer_name=hostname.split(".", 1)[0], admin_username=ADMIN_USER,
                                 admin_password=password, custom_data=custom, linux_configuration=linux)


def diagnostics_profile(d: Deployment, az: AzureSection) -> Optional[compute.DiagnosticsProfileArgs]:
    """Managed boot diagnostics (no storage account: "If storageUri is not specified while enabling boot
    diagnostics, managed storage will be used", pulumi_azure_native compute/_inputs.py BootDiagnosticsArgs),
    which ``az vm boot-diagnostics get-boot-log`` reads: on every VM of an ephemeral deployment, whose
    smoke test reads the bootstrap's result there, and where azure.boot_diagnostics opts in (AzureSection
    says why not by default). None otherwise, so a lasting stack's VMs are unchanged."""
    if not (d.lifecycle.ephemeral or az.boot_diagnostics):
        return None
    return compute.DiagnosticsProfileArgs(boot_diagnostics=compute.BootDiagnosticsArgs(enabled=True))


def trusted_launch_supported(image: AzureImage, family: str) -> bool:
    return (image.publisher, image.offer, image.sku) in TRUSTED_LAUNCH_IMAGES and family in TRUSTED_LAUNCH_FAMILIES


def security_profile(image: AzureImage, family: str) -> Optional[compute.SecurityProfileArgs]:
    """Encryption at host and Trusted Launch where the size and the image support them (see the tables)."""
    settings: dict[str, Any] = {}
    if family in ENCRYPTION_AT_HOST_FAMILIES:
        settings["encryption_at_host"] = True
    if trusted_launch_supported(image, family):
        settings["security_type"] = "TrustedLaunch"
        settings["uefi_settings"] = compute.UefiSettingsArgs(secure_boot_enabled=True, v_tpm_enabled=True)
    return compute.SecurityProfileArgs(**settings) if settings else None


# -- pure helpers (unit-tested) ---------------------------------------------------------


def domain_label(name: str, node: NodePlan) -> str:
    """The public IP's DNS label, unique per region across Azure: name, node key and a hostname hash."""
    digest = hashlib.sha256(node.hostname.encode()).hexdigest()[:6]
    return f"{name}-{node.key}-{digest}"


def relative_name(hostname: str, zone: str) -> str:
    return "@" if hostname == zone else hostname[: -len(zone) - 1]


def custom_data(user_data: str) -> str:
    """The cloud-config as Azure custom data: base64, gzip-compressed only if it would not fit."""
    plain = base64.b64encode(user_data.encode()).decode()
    if len(plain) <= CUSTOM_DATA_LIMIT:
        return plain
    packed = base64.b64encode(compressed(user_data)).decode()
    if len(packed) > CUSTOM_DATA_LIMIT:
        raise ConfigError(f"the bootstrap is {len(packed)} bytes of custom data even compressed; Azure accepts "
                          f"{CUSTOM_DATA_LIMIT}", ROOT)
    return packed


def _get(obj: Any, attr: str, key: str) -> Any:
    """A field of an engine response: the SDK's output type (by attribute) or plain data (by camelCase key)."""
    if obj is None:
        return None
    if type(obj) is dict:
        return obj.get(key)
    return getattr(obj, attr, None)


def first_private_ip(ip_configurations: Any) -> Optional[str]:
    """The private address Azure gave the NIC's first IP configuration."""
    if not ip_configurations:
        return None
    return _get(ip_configurations[0], "private_ip_address", "privateIPAddress")


def principal_id(identity: Any) -> Optional[str]:
    return _get(identity, "principal_id", "principalId")


def secrets_user_role_id(subscription_id: str) -> str:
    """The built-in "Key Vault Secrets User" role definition, as the subscription sees it."""
    return f"/subscriptions/{subscription_id}/providers/Microsoft.Authorization/roleDefinitions/{SECRETS_USER_ROLE}"


def role_assignment_name(vault: str, secret: str, node_key: str) -> str:
    """Azure names a role assignment by a GUID: derived, so every run gives the same one."""
    return str(uuid.uuid5(ROLE_ASSIGNMENT_NAMESPACE, f"{vault}/{secret}/{node_key}"))


def _prefixes(field: str, cidrs: list[str]) -> dict[str, Any]:
    # Azure takes one prefix in *_address_prefix and several in *_address_prefixes, never both.
    return {f"{field}_address_prefix": cidrs[0]} if len(cidrs) == 1 else {f"{field}_address_prefixes": cidrs}


def security_rules(rules: tuple[Rule, ...] | list[Rule],
                   nodes_group_id: Optional[pulumi.Input[str]] = None) -> list[network.SecurityRuleArgs]:
    """Every rule of cp.rules, one NSG rule per address family (Azure refuses mixed v4/v6 prefixes) or,
    between the nodes (Rule.from_nodes), one naming their application security group ``nodes_group_id``
    as the source (inbound) or destination (outbound); then the explicit denies: all other inbound, and
    all other outbound to the Internet."""
    made: list[network.SecurityRuleArgs] = []
    priority = {"ingress": ALLOW_PRIORITY_START, "egress": ALLOW_PRIORITY_START}
    for rule in rules:
        inbound = rule.direction == "ingress"
        local = {"destination_address_prefix": "*"} if inbound else {"source_address_prefix": "*"}
        peers: list[tuple[str, dict[str, Any]]] = [
            (family, _prefixes("source" if inbound else "destination", list(cidrs)))
            for family, cidrs in rule.families()]
        if rule.from_nodes:
            assert nodes_group_id is not None  # _firewall makes the group whenever a rule names the nodes
            # An application security group replaces the address prefix on its side of the rule.
            group = [network.ApplicationSecurityGroupArgs(id=nodes_group_id)]
            peers = [(NODES_SLUG, {"source_application_security_groups": group} if inbound else
                      {"destination_application_security_groups": group})]
        for which, remote in peers:
            made.append(network.SecurityRuleArgs(
                name=f"allow-{rule.name}-{which}", description=rule.description,
                direction="Inbound" if inbound else "Outbound", access="Allow",
                protocol=rule.protocol.capitalize(), priority=priority[rule.direction],
                source_port_range="*", destination_port_range=str(rule.port), **remote, **local))
            priority[rule.direction] += PRIORITY_STEP
    made.append(network.SecurityRuleArgs(
        name="deny-in-all", description="deny all other inbound traffic", direction="Inbound", access="Deny",
        protocol="*", priority=DENY_PRIORITY, source_address_prefix="*", source_port_range="*",
        destination_address_prefix="*", destination_port_range="*"))
    made.append(network.SecurityRuleArgs(
        name="deny-out-internet", description="deny all other outbound traffic to the Internet",
        direction="Outbound", access="Deny", protocol="*", priority=DENY_PRIORITY, source_address_prefix="*",
        source_port_range="*", destination_address_prefix="Internet", destination_port_range="*"))
    return made


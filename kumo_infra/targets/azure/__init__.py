"""Microsoft Azure: virtual machines kumo-infra creates, with everything that differs on Azure."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any, Optional

from .. import Port25Facts, SecretStore, Target
from . import offline
from .config import AzureSection
from .images import IMAGES, AzureImage

if TYPE_CHECKING:
    from ...config import Deployment
    from ...secretspec import SecretSpec
    from ...sizing import Plan

__all__ = ["TARGET", "AzureSection", "AzureImage", "vault_name"]

DOC = "https://learn.microsoft.com/azure/virtual-network/troubleshoot-outbound-smtp-connectivity"
# Subscription types that may send on port 25 ("Troubleshoot outbound SMTP connectivity problems in Azure").
SENDING_SUBSCRIPTIONS = ("ea", "mca-e", "dev-test")


def subscription_type(d: "Deployment") -> str:
    return d.azure.subscription_type if d.azure else "pay-as-you-go"


# -- secrets: one Key Vault per deployment, read by the VMs' managed identities --------------------

def vault_name(d: "Deployment") -> str:
    """Key Vault names are global (3-24 chars): the deployment name plus a stable hash."""
    rg = d.azure.resource_group if d.azure and d.azure.resource_group else ""
    digest = hashlib.sha256(f"{d.name}|{d.region}|{rg}".encode()).hexdigest()[:6]
    return f"{d.name[:15].rstrip('-')}-{digest}"


def store_name(d: "Deployment", spec: "SecretSpec") -> str:
    return spec.key  # unique within the deployment's own vault


def reference(d: "Deployment", spec: "SecretSpec") -> str:
    return f"azure:https://{vault_name(d)}.vault.azure.net:{store_name(d, spec)}"


def read_command(d: "Deployment", spec: "SecretSpec") -> str:
    return f"az keyvault secret show --vault-name {vault_name(d)} --name {store_name(d, spec)} --query value -o tsv"


def purge_after_destroy(d: "Deployment") -> list[tuple[str, ...]]:
    """Azure keeps a deleted Key Vault, its name taken, for its soft-delete days; an ephemeral
    deployment's vault (made without purge protection) is purged as soon as the stack is destroyed.
    Run with the operator's own Azure CLI login. The vault exists only when there are secrets."""
    from ...secretspec import secret_specs

    if not d.lifecycle.ephemeral or not secret_specs(d):
        return []
    return [("az", "keyvault", "purge", "--name", vault_name(d), "--location", d.region or "")]


API_READ_NOTE = ("The Key Vault accepts data-plane reads only from the nodes' subnet: to read the password "
                 "from your machine, allow its public address for a while (az keyvault network-rule add) "
                 "and give yourself the role Key Vault Secrets User on the secret.")


# -- outbound port 25 --------------------------------------------------------------------------

def direct_allowed(d: "Deployment") -> tuple[bool, str]:
    kind = subscription_type(d)
    if kind not in SENDING_SUBSCRIPTIONS:
        return False, (f"Azure blocks outbound port 25 on '{kind}' subscriptions with no exemption "
                       "(only EA, MCA-E and, after the portal self-service, Enterprise Dev/Test can send)")
    return True, ""


def describe_port25(d: "Deployment", plan: "Plan", hostnames: list[str], ips: list[str],
                    out: dict[str, Any]) -> None:
    kind = subscription_type(d)
    allowed, why_not = direct_allowed(d)
    out["subscription_type"] = kind
    out["documentation"] = DOC
    if allowed:
        out["situation"] = ("EA and MCA-E subscriptions can send on port 25; Enterprise Dev/Test can after the "
                            "portal self-service.")
        out["operator_must"] = (["Dev/Test only: Virtual network > Diagnose and solve > 'Cannot send email "
                                 "(SMTP-Port 25)', then deallocate and start the VMs"] if kind == "dev-test"
                                else ["nothing: port 25 is open for this subscription type"])
    else:
        out["situation"] = why_not + "; Azure recommends an authenticated relay on 587."
        out["operator_must"] = ["keep the smarthost account in good standing (kumo:relayPassword)"]


# -- the section's own rules and the machines' facts ----------------------------------------------

def check(d: "Deployment") -> list[tuple[str, str]]:
    found = []
    image = IMAGES.get(d.os)
    if image is not None and image.needs_plan and not (d.azure and d.azure.marketplace_terms_accepted):
        found.append(("azure.marketplace_terms_accepted",
                      f"{d.os_spec.title} on Azure is the marketplace image {image.urn}, whose terms must be "
                      f"accepted once per subscription (azure-native cannot): run 'az vm image terms accept --urn "
                      f"{image.urn}', then set marketplace_terms_accepted: true; or choose alma9 or ubuntu22, "
                      "which need no terms"))
    if d.network.ssh_cidrs and not (d.azure and d.azure.ssh_public_key):
        found.append(("azure.ssh_public_key", "network.ssh_cidrs opens SSH, which needs your OpenSSH public key "
                                              "(ssh-ed25519 AAAA... or ssh-rsa AAAA...): kumo-infra never generates "
                                              "a private key into Pulumi state; or remove ssh_cidrs for no SSH at all"))
    az = d.azure
    if az and az.vnet_id and az.subnet_id and not az.subnet_id.lower().startswith(
            az.vnet_id.lower().rstrip("/") + "/subnets/"):
        found.append(("azure.subnet_id", "the subnet is not in the virtual network azure.vnet_id; give a subnet "
                                         "of that network (vnet_id + /subnets/NAME)"))
    return found


def sets_ptr(d: "Deployment") -> bool:
    """Azure checks that the reverse FQDN already resolves when the PTR is set, so a record created
    in the same run is not enough (clouds/azure.py explains the two runs)."""
    return d.dns.forward_records_exist


def spool_device_paths(d: "Deployment", spool_storage: str, volume_id: Optional[str]) -> list[str]:
    if spool_storage != "block":
        return []
    # LUN 0 of the data disks; older images without the azure-vm-utils rules name it scsi1/lun0.
    return ["/dev/disk/azure/data/by-lun/0", "/dev/disk/azure/scsi1/lun0"]


TARGET = Target(
    name="azure",
    title="Microsoft Azure (Virtual Machines)",
    creates=("VMs with static public IPs, managed data disks for the spool (or local NVMe), a resource group, "
             "virtual network and network security group (or yours), a Key Vault and, with dns.zone, Azure DNS "
             "records"),
    section=AzureSection,
    section_required=False,
    check=check,
    catalog="azure.toml",
    images=IMAGES,
    port25=Port25Facts(direct_allowed=direct_allowed, describe=describe_port25),
    sets_ptr=sets_ptr,
    secrets=SecretStore(title="Azure Key Vault", backend="azure", store_name=store_name, reference=reference,
                        read_command=read_command),
    spool_device_paths=spool_device_paths,
    # azure-vm-utils' udev rules name the local NVMe disks by serial and by index.
    nvme_device_globs=("/dev/disk/azure/local/by-serial/*", "/dev/disk/azure/local/by-index/*"),
    network_pairs=(("subnet_id", "vnet_id"), ("vnet_id", "subnet_id")),
    dns_zone_field="dns_zone_resource_group",
    component="kumo_infra.targets.azure.component:AzureKumoMta",
    console="kumo_infra.targets.azure.console:reader",
    machine_type="azure-native:compute:VirtualMachine",
    managed_redis="Azure Managed Redis behind a private endpoint, TLS only",
    after_destroy="kumo_infra.targets.azure:purge_after_destroy",
    offline_computed=offline.COMPUTED,
    offline_invokes=offline.INVOKES,
    api_read_note=API_READ_NOTE,
    # Pay-as-you-go subscriptions send through a smarthost; Ubuntu needs no marketplace terms.
    example={"cloud": "azure", "region": "westeurope", "name": "kumo-example", "hostname": "mta.example.com",
             "os": "ubuntu22", "port25": {"outbound": "relay", "relay": {"host": "smtp.example.net",
                                                                         "username": "kumo"}}},
)

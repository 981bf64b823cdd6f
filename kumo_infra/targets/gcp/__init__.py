"""Google Cloud: Compute Engine instances kumo-infra creates, with everything that differs on GCP."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Optional

from ...errors import shown
from .. import Port25Facts, SecretStore, Target, ptr_after_forward_record
from . import offline
from .config import GcpSection
from .images import IMAGES, GcpImage

if TYPE_CHECKING:
    from ...config import Deployment
    from ...secretspec import SecretSpec
    from ...sizing import Plan

__all__ = ["TARGET", "GcpSection", "GcpImage"]

DOC = "https://cloud.google.com/compute/docs/tutorials/sending-mail"


def project(d: "Deployment") -> str:
    return d.gcp.project if d.gcp else ""


# -- secrets: Secret Manager, read by the nodes' service account ------------------------------------

def store_name(d: "Deployment", spec: "SecretSpec") -> str:
    return f"{d.name}-{spec.key}"


def reference(d: "Deployment", spec: "SecretSpec") -> str:
    return f"gcp:{project(d)}:{store_name(d, spec)}"


def read_command(d: "Deployment", spec: "SecretSpec") -> str:
    return f"gcloud secrets versions access latest --secret={store_name(d, spec)} --project={project(d)}"


# -- outbound port 25 --------------------------------------------------------------------------

def direct_allowed(d: "Deployment") -> tuple[bool, str]:
    return False, "GCP blocks outbound port 25 for every project and has no exemption process"


def describe_port25(d: "Deployment", plan: "Plan", hostnames: list[str], ips: list[str],
                    out: dict[str, Any]) -> None:
    out["situation"] = direct_allowed(d)[1] + "; 587 and 2525 are open."
    out["documentation"] = DOC
    out["operator_must"] = ["keep the smarthost account in good standing (kumo:relayPassword)"]


# -- the section's own rules and the machines' facts ----------------------------------------------

def check(d: "Deployment") -> list[tuple[str, str]]:
    if d.gcp is None:
        return [("gcp.project", "a GCP deployment needs the project id (gcp: {project: my-project})")]
    found = []
    if d.gcp.zone and d.region and not re.fullmatch(rf"{re.escape(d.region)}-[a-z]", d.gcp.zone, re.ASCII):
        found.append(("gcp.zone", f"{shown(d.gcp.zone)} is not a zone of region {d.region} (like {d.region}-a)"))
    if d.gcp.subnetwork and "/regions/" in d.gcp.subnetwork and d.region:
        region = d.gcp.subnetwork.split("/regions/")[1].split("/")[0]
        if region != d.region:
            found.append(("gcp.subnetwork", f"the subnetwork is in region {region}, the deployment in {d.region}"))
    return found


def spool_device_paths(d: "Deployment", spool_storage: str, volume_id: Optional[str]) -> list[str]:
    if spool_storage != "block":
        return []
    # The component attaches the disk with device_name kumo-spool: Google's udev rules link it so.
    return ["/dev/disk/by-id/google-kumo-spool"]


TARGET = Target(
    name="gcp",
    title="Google Cloud (Compute Engine)",
    creates=("Compute Engine instances with static external IPs, persistent spool disks (or local NVMe SSD), "
             "a VPC network and firewall rules (or yours), a service account, Secret Manager secrets and, with "
             "dns.zone, Cloud DNS records"),
    section=GcpSection,
    section_required=True,
    check=check,
    catalog="gcp.toml",
    images=IMAGES,
    port25=Port25Facts(direct_allowed=direct_allowed, describe=describe_port25),
    sets_ptr=ptr_after_forward_record,
    secrets=SecretStore(title="GCP Secret Manager", backend="gcp", store_name=store_name, reference=reference,
                        read_command=read_command),
    spool_device_paths=spool_device_paths,
    # Local SSDs on the NVMe interface (GCP "About local SSDs": google-local-nvme-ssd-N).
    nvme_device_globs=("/dev/disk/by-id/google-local-nvme-ssd-*",),
    network_pairs=(("subnetwork", "network"),),
    dns_zone_field="dns_managed_zone",
    component="kumo_infra.targets.gcp.component:GcpKumoMta",
    console="kumo_infra.targets.gcp.console:reader",
    machine_type="gcp:compute/instance:Instance",
    managed_redis="Memorystore for Redis, TLS in transit and AUTH",
    offline_computed=offline.COMPUTED,
    offline_invokes=offline.INVOKES,
    # GCP blocks outbound 25: mail leaves through a smarthost.
    example={"cloud": "gcp", "region": "us-central1", "name": "kumo-example", "hostname": "mta.example.com",
             "gcp": {"project": "my-kumo-project"},
             "port25": {"outbound": "relay", "relay": {"host": "smtp.example.net", "username": "kumo"}}},
)

"""KumoMTA on Google Compute Engine: ``GcpKumoMta``.

One component per deployment: a network (the configured one, or a minimal
custom-mode VPC), VPC firewall rules from ``cp.rules`` aimed at this
deployment's network tag, one dedicated service account, and per node a static
external address with its PTR, an optional forward A record, the instance and,
for a ``block`` spool, a persistent disk that outlives the instance.

Secrets (the relay password, the DKIM private keys) go to Secret Manager, one
secret per value, each readable by the nodes' service account alone through a
per-secret ``roles/secretmanager.secretAccessor`` grant (no project-wide grant);
the nodes fetch them at boot, so no value is ever in the metadata.

The bootstrap travels as ``metadata["startup-script"]``: GCP runs it at every
boot on every image (its Rocky and Alma images have no cloud-init), and a
metadata key changes in place, whereas ``metadata_startup_script`` forces a new
instance.
"""

from __future__ import annotations

from typing import Optional

import pulumi
from pulumi_gcp import compute, dns, secretmanager, serviceaccount

from ..bootstrap import render_startup_script
from ..netplan import WORLD, Rule
from .common import (
    KumoMtaComponent,
    ComponentPlan,
    KumoMtaArgs,
    NodeSecret,
    child,
    machine_options,
    node_output,
    prepare,
    secrets_for,
    base_tags,
)

TYPE_TOKEN = "kumo:index:GcpKumoMta"
# The engine property path of the bootstrap, in Pulumi's property-path syntax: the key
# holds a "-", so it is written in bracket notation (same path as metadata.startup-script).
BOOTSTRAP_PATHS = ['metadata["startup-script"]']
# The image family's newest image changes over time; it must never replace a running machine.
IMAGE_PATHS = ["bootDisk.initializeParams.image"]
SPOOL_DEVICE_NAME = "kumo-spool"  # the bootstrap looks for /dev/disk/by-id/google-kumo-spool
DISK_TYPE = "pd-balanced"
SCRATCH_DISK_GB = 375  # GCP's fixed local SSD size
# Granted on each secret, never on the project: read the secret's versions and nothing else.
SECRET_ACCESSOR = "roles/secretmanager.secretAccessor"
ALLOW_PRIORITY = 1000
# GCP's implied rules sit at 65535; the explicit denies go just above them, below every allow.
DENY_PRIORITY = 65534


class GcpKumoMta(KumoMtaComponent):
    """KumoMTA nodes on Compute Engine (see docs/component-spec.md)."""


    def __init__(self, name: str, args: KumoMtaArgs, opts: Optional[pulumi.ResourceOptions] = None):
        cp = prepare(args, "gcp")
        gcp = cp.deployment.gcp
        itype = cp.instance_type
        super().__init__(TYPE_TOKEN, name, {"deployment": args["deployment"]}, opts)

        d = cp.deployment
        project = gcp.project
        region = d.region
        zone = gcp.zone or f"{region}-a"
        labels = base_tags(name)
        tag = f"{name}-mta"  # network tag: the firewall rules apply to this deployment's instances only

        # -- network -------------------------------------------------------
        if gcp.network:
            network: pulumi.Input[str] = gcp.network
            # Without a subnetwork the NIC names the network (an auto-mode network such as
            # "default" picks its subnet in the region).
            subnetwork: Optional[pulumi.Input[str]] = gcp.subnetwork
        else:
            net = compute.Network(f"{name}-net", project=project, auto_create_subnetworks=False,
                                  description=f"kumo-infra {name}", opts=child(self))
            subnet = compute.Subnetwork(f"{name}-subnet", project=project, region=region, network=net.id,
                                        ip_cidr_range=gcp.subnet_cidr, private_ip_google_access=True,
                                        description=f"kumo-infra {name}", opts=child(self))
            network, subnetwork = net.id, subnet.id

        # -- firewall ------------------------------------------------------
        self.firewalls = self._firewalls(name, cp, project, network, tag)

        # -- identity ------------------------------------------------------
        # One dedicated service account with no project-level role at all: KumoMTA logs to local files
        # and kumo-infra installs no Cloud Logging or Monitoring agent, so log/metric writer roles would
        # be unused power. Its only permission is reading this deployment's secrets, granted on each
        # secret below.
        self.service_account = serviceaccount.Account(
            f"{name}-sa", project=project, account_id=f"{name}-mta",
            display_name=f"kumo-infra {name} KumoMTA nodes", opts=child(self))

        # -- secrets -------------------------------------------------------
        secrets, dkim_public = secrets_for(self, name, cp, args)
        self.secrets = [self._secret(name, project, labels, s) for s in secrets]
        # The nodes fetch their secrets at first boot: the versions and the grants come first (every
        # value here can: the addresses the API certificate names exist before the instances).
        secret_deps: list[pulumi.Resource] = [r for s, (_, version, access) in zip(secrets, self.secrets)
                                              for r in ((version, access) if s.machines_wait else (access,))]

        image = compute.get_image_output(family=d.os_spec.gcp.family, project=d.os_spec.gcp.project,
                                         opts=pulumi.InvokeOutputOptions(parent=self))

        # -- nodes ---------------------------------------------------------
        self.instances: list[compute.Instance] = []
        node_outputs: list[pulumi.Output[dict]] = []
        addresses: list[pulumi.Output[str]] = []
        for node in cp.nodes:
            address = compute.Address(
                f"{name}-{node.key}-ip", project=project, region=region, address_type="EXTERNAL",
                network_tier="PREMIUM", labels=labels, description=f"{node.hostname} (kumo-infra)",
                opts=child(self))
            depends_on: list[pulumi.Resource] = list(secret_deps)
            if cp.create_forward_records:
                # The PTR (on the access config below) needs the forward record in place first.
                record = dns.RecordSet(
                    f"{name}-{node.key}-a", project=project, managed_zone=gcp.dns_managed_zone,
                    name=f"{node.hostname}.", type="A", ttl=300, rrdatas=[address.address], opts=child(self))
                depends_on.append(record)

            attached_disks = None
            if cp.plan.spool_storage == "block":
                # The queue lives here: a separate disk that survives replacing the instance
                # (retain_on_delete), encrypted at rest by Google's default encryption.
                spool = compute.Disk(
                    f"{name}-{node.key}-spool", project=project, zone=zone, type=DISK_TYPE,
                    size=cp.plan.spool_gb_per_node, labels=labels,
                    description=f"KumoMTA spool of {node.hostname} (kumo-infra)",
                    opts=child(self, retain_on_delete=True, protect=d.lifecycle.protect))
                attached_disks = [compute.InstanceAttachedDiskArgs(source=spool.id, device_name=SPOOL_DEVICE_NAME)]

            scratch_disks = None
            if cp.plan.spool_storage == "local_nvme" and itype.nvme_attach == "scratch":
                # N2 and similar take local SSDs as scratch disks; the -lssd types (C3 ...) come
                # with their fixed local SSDs and take none here (nvme_attach == "builtin").
                scratch_disks = [compute.InstanceScratchDiskArgs(interface="NVME", size=SCRATCH_DISK_GB)
                                 for _ in range(cp.plan.nvme_count)]

            network_performance = None
            if itype.tier1_gbps > 0:
                # Tier_1 egress: N2/N2D/C2/C2D/C3 with 30+ vCPUs and gVNIC (set below).
                network_performance = compute.InstanceNetworkPerformanceConfigArgs(
                    total_egress_bandwidth_tier="TIER_1")

            access_config = compute.InstanceNetworkInterfaceAccessConfigArgs(
                nat_ip=address.address, network_tier="PREMIUM",
                public_ptr_domain_name=f"{node.hostname}." if cp.set_ptr else None)
            nic = compute.InstanceNetworkInterfaceArgs(
                subnetwork=subnetwork, network=None if subnetwork else network,
                nic_type="GVNIC",  # every image kumo-infra offers on GCP supports gVNIC
                access_configs=[access_config])

            instance = compute.Instance(
                f"{name}-{node.key}-vm",
                project=project,
                zone=zone,
                machine_type=cp.plan.instance_type,
                hostname=node.hostname,
                boot_disk=compute.InstanceBootDiskArgs(
                    auto_delete=True,
                    # Google encrypts every persistent disk at rest by default (no key to manage).
                    initialize_params=compute.InstanceBootDiskInitializeParamsArgs(
                        image=image.self_link, size=cp.plan.os_disk_gb, type=DISK_TYPE, labels=labels)),
                attached_disks=attached_disks,
                scratch_disks=scratch_disks,
                network_interfaces=[nic],
                network_performance_config=network_performance,
                metadata={
                    "startup-script": render_startup_script(d, cp.plan, node.index),
                    "enable-oslogin": "TRUE",
                    "block-project-ssh-keys": "TRUE",
                },
                shielded_instance_config=compute.InstanceShieldedInstanceConfigArgs(
                    enable_secure_boot=True, enable_vtpm=True, enable_integrity_monitoring=True),
                service_account=compute.InstanceServiceAccountArgs(
                    email=self.service_account.email, scopes=["cloud-platform"]),
                tags=[tag],
                labels=labels,
                # Changing the machine type needs a stop. A stop keeps a persistent-disk spool but
                # discards local SSD: with a local NVMe spool a resize must fail rather than lose mail.
                allow_stopping_for_update=True if cp.plan.spool_storage == "block" else None,
                deletion_protection=d.lifecycle.protect,
                description=f"KumoMTA {node.hostname} (kumo-infra)",
                opts=machine_options(self, cp, BOOTSTRAP_PATHS, IMAGE_PATHS, depends_on=depends_on),
            )
            self.instances.append(instance)
            addresses.append(address.address)
            node_outputs.append(node_output(
                cp, node, public_ip=address.address,
                private_ip=instance.network_interfaces.apply(lambda nics: nics[0].network_ip if nics else None)))

        self._publish(cp, node_outputs, addresses, secrets, dkim_public)

    def _secret(self, name: str, project: str, labels: dict[str, str], s: NodeSecret) -> tuple[
            secretmanager.Secret, secretmanager.SecretVersion, secretmanager.SecretIamMember]:
        """One secret (id = its store name, the one the node's reference names), its value as the
        version the node reads (versions/latest), and the service account's read grant on it alone."""
        secret = secretmanager.Secret(
            f"{name}-{s.spec.key}-secret", project=project, secret_id=s.name,
            replication={"auto": {}},  # automatic replication (Google-managed locations and keys)
            labels=labels, opts=child(self))
        # secret_data is a Pulumi secret (and the SDK marks secretData secret): encrypted in state.
        version = secretmanager.SecretVersion(f"{name}-{s.spec.key}-version", secret=secret.id,
                                              secret_data=s.value, opts=child(self))
        access = secretmanager.SecretIamMember(
            f"{name}-{s.spec.key}-access", project=project, secret_id=secret.secret_id, role=SECRET_ACCESSOR,
            member=self.service_account.member, opts=child(self))
        return secret, version, access

    def _firewalls(self, name: str, cp: ComponentPlan, project: str, network: pulumi.Input[str],
                   tag: str) -> list[compute.Firewall]:
        """Every rule of cp.rules, one firewall per address family (GCP refuses mixed v4/v6 ranges)."""
        made = []
        for rule in cp.rules:
            for family, cidrs in rule.families():
                made.append(self._firewall(f"{name}-fw-{rule.name}-{family}", project, network, tag, rule,
                                           list(cidrs)))
        # Explicit denies below every allow: inbound anything else, outbound anything else.
        for direction, suffix in (("INGRESS", "deny-in"), ("EGRESS", "deny-out")):
            for family, world in WORLD.items():
                ranges = {"source_ranges": [world]} if direction == "INGRESS" else {"destination_ranges": [world]}
                made.append(compute.Firewall(
                    f"{name}-fw-{suffix}-{family}", project=project, network=network, direction=direction,
                    priority=DENY_PRIORITY, denies=[compute.FirewallDenyArgs(protocol="all")],
                    target_tags=[tag], description=f"kumo-infra {name}: deny other {direction.lower()} traffic",
                    **ranges, opts=child(self)))
        return made

    def _firewall(self, resource_name: str, project: str, network: pulumi.Input[str], tag: str, rule: Rule,
                  cidrs: list[str]) -> compute.Firewall:
        ranges = {"source_ranges": cidrs} if rule.direction == "ingress" else {"destination_ranges": cidrs}
        return compute.Firewall(
            resource_name, project=project, network=network, direction=rule.direction.upper(),
            priority=ALLOW_PRIORITY,
            allows=[compute.FirewallAllowArgs(protocol=rule.protocol, ports=[str(rule.port)])],
            target_tags=[tag], description=rule.description, **ranges, opts=child(self))

"""KumoMTA on Google Compute Engine: ``GcpKumoMta`` (the base component's hooks, kumo_infra.component).

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


from dataclasses import dataclass
from typing import Any, Optional

import pulumi
from pulumi_gcp import compute, dns, secretmanager, serviceaccount

from ...bootstrap import render_startup_script
from ...component import (Address, Build, ComponentPlan, KumoMtaArgs, KumoMtaComponent, Machine, NodeBuild,
                          NodeSecret, SharedRedis, child, machine_options, node_output, prepare, secrets_for,
                          spool_options, base_tags, was)
from ...netplan import WORLD, Rule
from .redis import managed_redis

# What ``kumo_infra.clouds.gcp`` re-exports for programs written before the move.
__all__ = ["GcpKumoMta", "KumoMtaComponent", "child", "KumoMtaArgs", "TYPE", "BOOTSTRAP_PATHS", "FIXED_PATHS",
           "prepare", "machine_options", "node_output", "secrets_for", "base_tags", "ComponentPlan"]

TYPE = "kumo:index:GcpKumoMta"
# The engine property path of the bootstrap, in Pulumi's property-path syntax: the key
# holds a "-", so it is written in bracket notation (same path as metadata.startup-script).
BOOTSTRAP_PATHS = ['metadata["startup-script"]']
# The image family's newest image changes over time; it must never replace a running machine.
FIXED_PATHS = ["bootDisk.initializeParams.image"]
SPOOL_DEVICE_NAME = "kumo-spool"  # the bootstrap looks for /dev/disk/by-id/google-kumo-spool
DISK_TYPE = "pd-balanced"
SCRATCH_DISK_GB = 375  # GCP's fixed local SSD size
# Granted on each secret, never on the project: read the secret's versions and nothing else.
SECRET_ACCESSOR = "roles/secretmanager.secretAccessor"
ALLOW_PRIORITY = 1000
# GCP's implied rules sit at 65535; the explicit denies go just above them, below every allow.
DENY_PRIORITY = 65534
# The name part of a rule whose peers are the deployment's own instances (Rule.from_nodes).
NODES_SLUG = "nodes"


@dataclass(frozen=True)
class _Network:
    network: pulumi.Input[str]
    # Without a subnetwork the NIC names the network (an auto-mode network such as "default" picks
    # its subnet in the region).
    subnetwork: Optional[pulumi.Input[str]]


class GcpKumoMta(KumoMtaComponent):
    """KumoMTA nodes on Compute Engine (see docs/component-spec.md)."""

    TARGET = "gcp"
    TYPE = TYPE

    def _project(self, b: Build) -> str:
        return b.deployment.gcp.project

    def _zone(self, b: Build) -> str:
        return b.deployment.gcp.zone or f"{b.deployment.region}-a"

    def _tag(self, b: Build) -> str:
        return f"{b.name}-mta"  # network tag: the firewall rules apply to this deployment's instances only

    def _network(self, b: Build) -> _Network:
        gcp = b.deployment.gcp
        if gcp.network:
            return _Network(gcp.network, gcp.subnetwork)
        project, name = gcp.project, b.name
        net = compute.Network(b.names.network, project=project, auto_create_subnetworks=False,
                              description=f"kumo-infra {name}", opts=child(self, aliases=was(f"{name}-net")))
        subnet = compute.Subnetwork(b.names.subnet, project=project, region=b.deployment.region, network=net.id,
                                    ip_cidr_range=gcp.subnet_cidr, private_ip_google_access=True,
                                    description=f"kumo-infra {name}", opts=child(self))
        return _Network(net.id, subnet.id)

    def _firewall(self, b: Build) -> list[compute.Firewall]:
        """Every rule of cp.rules, one firewall per address family (GCP refuses mixed v4/v6 ranges)."""
        name, project, tag = b.name, self._project(b), self._tag(b)
        made = []
        for rule in b.cp.rules:
            if rule.from_nodes:
                made.append(self._firewall_rule(b.names.firewall_rule(rule.name, NODES_SLUG), project,
                                                b.network.network, tag, rule, self._nodes_only(b, rule)))
            for family, cidrs in rule.families():
                ranges = {"source_ranges" if rule.direction == "ingress" else "destination_ranges": list(cidrs)}
                made.append(self._firewall_rule(b.names.firewall_rule(rule.name, family), project,
                                                b.network.network, tag, rule, ranges))
        # Explicit denies below every allow: inbound anything else, outbound anything else.
        for direction, suffix in (("INGRESS", "deny-in"), ("EGRESS", "deny-out")):
            for family, world in WORLD.items():
                ranges = {"source_ranges": [world]} if direction == "INGRESS" else {"destination_ranges": [world]}
                made.append(compute.Firewall(
                    b.names.firewall_rule(suffix, family), project=project, network=b.network.network,
                    direction=direction, priority=DENY_PRIORITY, denies=[compute.FirewallDenyArgs(protocol="all")],
                    target_tags=[tag], description=f"kumo-infra {name}: deny other {direction.lower()} traffic",
                    **ranges, opts=child(self)))
        self.firewalls = made
        return made

    def _firewall_rule(self, resource_name: str, project: str, network: pulumi.Input[str], tag: str, rule: Rule,
                       peers: dict[str, Any]) -> compute.Firewall:
        """One allow rule for this deployment's instances; ``peers``: its source_ranges or source_tags
        (ingress), or destination_ranges (egress)."""
        return compute.Firewall(
            resource_name, project=project, network=network, direction=rule.direction.upper(),
            priority=ALLOW_PRIORITY,
            allows=[compute.FirewallAllowArgs(protocol=rule.protocol, ports=[str(rule.port)])],
            target_tags=[tag], description=rule.description, **peers, opts=child(self))

    def _nodes_only(self, b: Build, rule: Rule) -> dict[str, Any]:
        """The deployment's own instances as a rule's peers (Rule.from_nodes): their network tag as the
        source of an ingress rule; as the destination of an egress rule, which GCP takes as ranges only
        (pulumi_gcp compute/firewall.py: target and source tags, destination_ranges), the nodes' subnet."""
        if rule.direction == "ingress":
            return {"source_tags": [self._tag(b)]}
        return {"destination_ranges": [self._nodes_range(b)]}

    def _nodes_range(self, b: Build) -> pulumi.Input[str]:
        """The primary range of the nodes' subnet: the one kumo-infra creates, else the given one's (or,
        with a network alone, the region's subnet of that auto-mode network, which GCP names after it)."""
        gcp, region = b.deployment.gcp, b.deployment.region
        if getattr(self, "_nodes_range_result", None) is None:
            if not gcp.network:
                self._nodes_range_result = pulumi.Output.from_input(gcp.subnet_cidr)
                return self._nodes_range_result
            if gcp.subnetwork and "/" in gcp.subnetwork:
                where = {"self_link": gcp.subnetwork}
            elif gcp.subnetwork:  # a name: in the instances' project, as the NIC resolves it
                where = {"name": gcp.subnetwork, "region": region, "project": gcp.project}
            else:
                where = {"name": gcp.network.rsplit("/", 1)[-1], "region": region,
                         "project": network_project(gcp.network) or gcp.project}
            self._nodes_range_result = compute.get_subnetwork_output(
                **where, opts=pulumi.InvokeOutputOptions(parent=self)).ip_cidr_range
        return self._nodes_range_result

    def _shared_redis(self, b: Build) -> SharedRedis:
        instance, url = managed_redis(self, b, self._zone(b))
        compute.Firewall(
            b.names.firewall_rule("out-redis", "managed"), project=self._project(b), network=b.network.network,
            direction="EGRESS", priority=ALLOW_PRIORITY,
            allows=[compute.FirewallAllowArgs(protocol="tcp", ports=[instance.port.apply(str)])],
            destination_ranges=[instance.reserved_ip_range], target_tags=[self._tag(b)],
            description=f"kumo-infra {b.name}: the fleet's Redis", opts=child(self))
        return SharedRedis(url=url, resource=instance, title=b.cp.target.managed_redis or "",
                           endpoint=pulumi.Output.concat(instance.host, ":", instance.port.apply(str)))

    def _identity(self, b: Build) -> serviceaccount.Account:
        # One dedicated service account with no project-level role at all: KumoMTA logs to local files
        # and kumo-infra installs no Cloud Logging or Monitoring agent, so log/metric writer roles would
        # be unused power. Its only permission is reading this deployment's secrets, granted on each
        # secret (_store_secrets).
        self.service_account = serviceaccount.Account(
            b.names.identity, project=self._project(b), account_id=f"{b.name}-mta",
            display_name=f"kumo-infra {b.name} KumoMTA nodes", opts=child(self, aliases=was(f"{b.name}-sa")))
        return self.service_account

    def _store_secrets(self, b: Build) -> list[pulumi.Resource]:
        """Per secret: the secret (id = its store name, the one the node's reference names), its value
        as the version the node reads (versions/latest), and the service account's read grant on it
        alone. The nodes fetch their secrets at first boot: the versions and the grants come first
        (every value here can: the addresses the API certificate names exist before the instances)."""
        self.secrets = [self._secret(b, s) for s in b.secrets]
        return [r for s, (_, version, access) in zip(b.secrets, self.secrets)
                for r in ((version, access) if s.machines_wait else (access,))]

    def _secret(self, b: Build, s: NodeSecret) -> tuple[
            secretmanager.Secret, secretmanager.SecretVersion, secretmanager.SecretIamMember]:
        project, key, lifecycle = self._project(b), s.spec.key, b.deployment.lifecycle
        secret = secretmanager.Secret(
            b.names.secret(key), project=project, secret_id=s.name,
            replication={"auto": {}},  # automatic replication (Google-managed locations and keys)
            # Secret Manager deletes a secret and its versions at once (no recovery window, and no
            # delayed version destruction without version_destroy_ttl), so its id is free again. The
            # provider's own guard is false by default ("Defaults to false", pulumi_gcp
            # secretmanager/secret.py); stated for an ephemeral deployment, which must be deletable,
            # and left unset otherwise so a lasting stack's inputs stay as they were.
            deletion_protection=False if lifecycle.ephemeral else None,
            labels=b.tags, opts=child(self, protect=lifecycle.protect))
        # secret_data is a Pulumi secret (and the SDK marks secretData secret): encrypted in state.
        version = secretmanager.SecretVersion(b.names.secret_version(key), secret=secret.id,
                                              secret_data=s.value, opts=child(self))
        access = secretmanager.SecretIamMember(
            b.names.secret_access(key), project=project, secret_id=secret.secret_id, role=SECRET_ACCESSOR,
            member=self.service_account.member, opts=child(self))
        return secret, version, access

    def _address(self, b: Build, n: NodeBuild) -> Address:
        address = compute.Address(
            b.names.address(n.key), project=self._project(b), region=b.deployment.region, address_type="EXTERNAL",
            network_tier="PREMIUM", labels=b.tags, description=f"{n.node.hostname} (kumo-infra)",
            opts=child(self))
        return Address(address.address, address)

    def _forward_record(self, b: Build, n: NodeBuild) -> dns.RecordSet:
        # The PTR (on the access config, _machine) needs the forward record in place first.
        return dns.RecordSet(
            b.names.forward_record(n.key), project=self._project(b), managed_zone=b.deployment.gcp.dns_managed_zone,
            name=f"{n.node.hostname}.", type="A", ttl=300, rrdatas=[n.address.ip], opts=child(self))

    def _spool(self, b: Build, n: NodeBuild) -> compute.Disk:
        # The queue lives here: a separate disk that survives replacing the instance and removing
        # the stack (retain_on_delete; not an ephemeral deployment's: spool_options), encrypted at
        # rest by Google's default encryption.
        return compute.Disk(
            b.names.spool(n.key), project=self._project(b), zone=self._zone(b), type=DISK_TYPE,
            size=b.cp.plan.spool_gb_per_node, labels=b.tags,
            description=f"KumoMTA spool of {n.node.hostname} (kumo-infra)",
            opts=spool_options(self, b.cp))

    def _machine(self, b: Build, n: NodeBuild) -> Machine:
        cp, d, node = b.cp, b.deployment, n.node
        itype = cp.instance_type
        attached_disks = None
        if n.spool is not None:
            attached_disks = [compute.InstanceAttachedDiskArgs(source=n.spool.id, device_name=SPOOL_DEVICE_NAME)]

        scratch_disks = None
        if cp.plan.spool_storage == "local_nvme" and itype.nvme_attach == "scratch":
            # N2 and similar take local SSDs as scratch disks; the -lssd types (C3 ...) come
            # with their fixed local SSDs and take none here (nvme_attach == "builtin").
            scratch_disks = [compute.InstanceScratchDiskArgs(interface="NVME", size=SCRATCH_DISK_GB)
                             for _ in range(cp.plan.nvme_count)]

        network_performance = None
        if itype.tier1_gbps > 0:
            # Tier_1 egress: N2/N2D/C2/C2D/C3 with 30+ vCPUs and gVNIC (set below).
            network_performance = compute.InstanceNetworkPerformanceConfigArgs(total_egress_bandwidth_tier="TIER_1")

        access_config = compute.InstanceNetworkInterfaceAccessConfigArgs(
            nat_ip=n.address.ip, network_tier="PREMIUM",
            public_ptr_domain_name=f"{node.hostname}." if cp.set_ptr else None)
        subnetwork = b.network.subnetwork
        nic = compute.InstanceNetworkInterfaceArgs(
            subnetwork=subnetwork, network=None if subnetwork else b.network.network,
            nic_type="GVNIC",  # every image kumo-infra offers on GCP supports gVNIC
            access_configs=[access_config])

        instance = compute.Instance(
            b.names.machine(n.key),
            project=self._project(b),
            zone=self._zone(b),
            machine_type=cp.plan.instance_type,
            hostname=node.hostname,
            boot_disk=compute.InstanceBootDiskArgs(
                auto_delete=True,
                # Google encrypts every persistent disk at rest by default (no key to manage).
                initialize_params=compute.InstanceBootDiskInitializeParamsArgs(
                    image=self._image(b).self_link, size=cp.plan.os_disk_gb, type=DISK_TYPE, labels=b.tags)),
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
            tags=[self._tag(b)],
            labels=b.tags,
            # Changing the machine type needs a stop. A stop keeps a persistent-disk spool but
            # discards local SSD: with a local NVMe spool a resize must fail rather than lose mail.
            allow_stopping_for_update=True if cp.plan.spool_storage == "block" else None,
            deletion_protection=d.lifecycle.protect,
            description=f"KumoMTA {node.hostname} (kumo-infra)",
            # The secrets' versions and grants, and the PTR's forward record, exist first. A
            # replacement (kumo-infra roll's up --replace) deletes the old instance first: while it
            # exists it holds the static address (nat_ip) and the read-write spool disk, which GCP
            # gives to one instance at a time, so the new one could not be created beside it.
            opts=machine_options(self, cp, BOOTSTRAP_PATHS, FIXED_PATHS,
                                 depends_on=[*b.secrets_ready, *([n.record] if n.record is not None else [])],
                                 delete_before_replace=True),
        )
        return Machine(instance, instance.network_interfaces.apply(lambda nics: nics[0].network_ip if nics else None),
                       instance.self_link)

    def _image(self, b: Build) -> pulumi.Output[compute.GetImageResult]:
        """The image family's newest image, looked up once per component (FIXED_PATHS: a machine keeps its own)."""
        if getattr(self, "_image_result", None) is None:
            image = b.deployment.image
            self._image_result = compute.get_image_output(family=image.family, project=image.project,
                                                          opts=pulumi.InvokeOutputOptions(parent=self))
        return self._image_result


def network_project(network: str) -> Optional[str]:
    """The project a network self-link names (projects/PROJECT/global/networks/NAME), None for a plain name."""
    parts = network.split("/")
    return parts[parts.index("projects") + 1] if "projects" in parts else None

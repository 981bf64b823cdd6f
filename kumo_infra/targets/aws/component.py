"""AWS: KumoMTA nodes on EC2, each with an Elastic IP, its reverse DNS and a spool.

Per deployment: a minimal VPC (unless ``aws.vpc_id``/``aws.subnet_id`` are given),
one security group built from the shared firewall plan (``kumo_infra.netplan``),
an IAM role + instance profile, and the deployment's secrets (relay password,
DKIM keys) in Secrets Manager with one inline policy letting that role read only
them. Per node: an EC2 instance booting the gzip-compressed kumo-bootstrap
cloud-config, an Elastic IP, optionally the forward A record and the PTR, and for
``block`` spools an encrypted gp3 volume. A fleet (several nodes) without fleet.redis_url also gets
the ElastiCache replication group its throttles live in (kumo_infra/targets/aws/redis.py).

The flow is the base component's (kumo_infra.component); this module fills in its hooks.
Everything here is checked against pulumi-aws 7.51 and runs under the mock engine
(``kumo_infra.offline``); values only AWS knows are answered by the target's offline table
(kumo_infra/targets/aws/offline.py).
"""


import base64
import json
from dataclasses import dataclass
from typing import Optional

import pulumi
import pulumi_aws as aws

from ...bootstrap import AWS_USER_DATA_LIMIT, NodeFilesBundle, compressed, node_files_bundle, render_user_data
from ...component import (Address, Build, ComponentPlan, KumoMtaArgs, KumoMtaComponent, Machine, NodeBuild,
                          NodePlan, NodeSecret, SharedRedis, child, machine_options, node_output, prepare, secrets_for,
                          spool_options, subnet_cidr, base_tags, was)
from ...errors import ConfigError
from ...netplan import Rule
from ...secretspec import SecretSpec
from .config import AwsSection
from .redis import shared_redis

# What ``kumo_infra.clouds.aws`` re-exports for programs written before the move.
__all__ = ["AwsKumoMta", "KumoMtaArgs", "KumoMtaComponent", "ComponentPlan", "NodePlan", "NodeSecret", "TYPE",
           "BOOTSTRAP_PATHS", "FIXED_PATHS", "user_data_base64", "node_files_in_store", "ami_filters", "prepare",
           "machine_options", "node_output", "secrets_for", "subnet_cidr", "base_tags", "child",
           "render_user_data", "AWS_USER_DATA_LIMIT"]

TYPE = "kumo:index:AwsKumoMta"
# The Instance properties (engine camelCase) that carry the bootstrap: a change to them
# is ignored on running machines unless lifecycle.replace_on_bootstrap_change.
BOOTSTRAP_PATHS = ["userDataBase64"]
# get_ami(most_recent=True) moves whenever the vendor publishes an image; replacing every
# machine for that would lose the mail on local NVMe spools. The image is chosen when a
# machine is created; the OS is kept current by its package manager.
FIXED_PATHS = ["ami"]
# Xen instance types name it /dev/xvdf; on Nitro the bootstrap finds it by the volume's id, which the
# NVMe controller reports as its serial number (the target's spool_device_paths).
SPOOL_DEVICE = "/dev/sdf"
# The shape of an EBS volume id ("vol-" and 17 hex digits): the user-data size check runs before any
# resource exists, with this id in place of the real one, which compresses a few bytes differently
# (measured: within 5 bytes over random ids), hence the slack.
VOLUME_ID_EXAMPLE = "vol-0123456789abcdef0"
VOLUME_ID_SLACK = 32
EC2_ASSUME_ROLE_POLICY = {
    "Version": "2012-10-17",
    "Statement": [{
        "Effect": "Allow",
        "Principal": {"Service": "ec2.amazonaws.com"},
        "Action": "sts:AssumeRole",
    }],
}
# When the user data cannot carry every node file, the files all nodes share are kept in Secrets
# Manager (64 KiB per value) and fetched first by kumo-node-files, checked against the sha256 in
# the user data. Not secret, but the store already has the node's identity, grant and fetcher.
NODE_FILES_SPEC = SecretSpec("node-files", "", "kumo-infra's node files shared by every node (not secret)")
# The one thing a node may do with the secret store: read its own deployment's secrets.
SECRET_READ_ACTION = "secretsmanager:GetSecretValue"
# Days AWS keeps a deleted secret restorable (7..30); its name stays taken meanwhile.
SECRET_RECOVERY_DAYS = 7
# An ephemeral deployment's secrets: 0 deletes at once, without recovery (ForceDeleteWithoutRecovery;
# pulumi_aws secretsmanager/secret.py: "This value can be `0` to force deletion without recovery"),
# so the next run can take the same names.
EPHEMERAL_RECOVERY_DAYS = 0


def user_data_base64(node: NodePlan, spool_volume_id: Optional[str] = None, *, reserve: int = 0,
                     node_files_from: Optional[tuple[str, str]] = None) -> str:
    """The node's cloud-config, gzip-compressed (cloud-init inflates it) and base64-encoded.

    AWS refuses user data above 16 KiB (the limit applies to the raw bytes, before base64); a
    bootstrap that does not fit, with ``reserve`` bytes to spare, is refused naming what makes it grow.
    ``node_files_from``: the shared node files' (reference, sha256) in Secrets Manager (node_files_in_store)."""
    text = (node.user_data if spool_volume_id is None and node_files_from is None else
            render_user_data(node.deployment, node.plan, node.index, spool_volume_id=spool_volume_id,
                             node_files_from=node_files_from))
    packed = compressed(text)
    if len(packed) > AWS_USER_DATA_LIMIT - reserve:
        room = f" ({reserve} of them kept for the spool volume's id)" if reserve else ""
        raise ConfigError(f"the bootstrap of {node.hostname} is {len(packed)} bytes compressed and AWS accepts "
                          f"at most {AWS_USER_DATA_LIMIT} bytes of user data{room}; the policy grows with each "
                          "dkim.domains entry: split the domains across deployments", "kumo:deployment")
    return base64.b64encode(packed).decode()


def node_files_in_store(cp: ComponentPlan) -> Optional[tuple[str, NodeFilesBundle]]:
    """Where the nodes get their shared files: None (in the user data) when every node's bootstrap
    fits AWS's limit, else the bundle to keep in Secrets Manager and its reference there. Refuses, before
    any resource, a bootstrap that fits neither way (with a block spool, the user data carries the
    volume's id, known only once the volume exists: checked with an id of the same shape)."""
    block = cp.plan.spool_storage == "block"

    def check(node_files_from: Optional[tuple[str, str]]) -> None:
        for node in cp.nodes:
            if block:
                user_data_base64(node, VOLUME_ID_EXAMPLE, reserve=VOLUME_ID_SLACK, node_files_from=node_files_from)
            else:
                user_data_base64(node, node_files_from=node_files_from)

    try:
        check(None)
        return None
    except ConfigError:
        bundle = node_files_bundle(cp.deployment, cp.plan)
        ref = cp.target.secrets.reference(cp.deployment, NODE_FILES_SPEC)
        check((ref, bundle.sha256))  # raises when even the per-node part does not fit
        return ref, bundle


def ami_filters(cp: ComponentPlan) -> tuple[list[str], list[dict]]:
    """Owners and filters of the image look-up for the planned OS and architecture."""
    image = cp.deployment.image
    assert image is not None  # Deployment.check refuses an OS without an AWS image
    arch_name = image.arch_names.get(cp.plan.arch)
    if arch_name is None:
        raise ConfigError(f"'{cp.deployment.os}' has no {cp.plan.arch} image on aws; choose an "
                          f"{'/'.join(image.arch_names)} instance type", "kumo:deployment.sizing.instance_type")
    return [image.owner], [
        {"name": "name", "values": [image.name_pattern.format(arch=arch_name)]},
        {"name": "architecture", "values": [cp.plan.arch]},
    ]


# The name part of a rule whose source or destination is the nodes' own security group (Rule.from_nodes).
NODES_SLUG = "nodes"


def _cidr_slug(cidr: str) -> str:
    """A resource-name part for a CIDR: 203.0.113.0-24, 2001_db8__-32, __-0 (::/0)."""
    return cidr.replace(":", "_").replace("/", "-")


@dataclass(frozen=True)
class _Prepared:
    owners: list[str]
    filters: list[dict]
    # The shared node files in Secrets Manager when the user data cannot carry them: (reference, bundle).
    in_store: Optional[tuple[str, NodeFilesBundle]]

    @property
    def node_files_from(self) -> Optional[tuple[str, str]]:
        return (self.in_store[0], self.in_store[1].sha256) if self.in_store else None


@dataclass(frozen=True)
class _Network:
    vpc_id: pulumi.Input[str]
    subnet_id: pulumi.Input[str]
    zone: pulumi.Input[str]  # the subnet's availability zone: the spool volumes must be in it
    ready: list[pulumi.Resource]  # what the machines and addresses wait for (internet gateway, route)


@dataclass(frozen=True)
class _Identity:
    role: aws.iam.Role
    profile: aws.iam.InstanceProfile


class AwsKumoMta(KumoMtaComponent):
    """KumoMTA nodes on EC2 (see docs/component-spec.md)."""

    # Also on the component: role (aws.iam.Role, the nodes' identity: it reads the deployment's
    # secrets and nothing else) and instance_profile; not annotated, or schema inference would
    # take them for outputs.
    TARGET = "aws"
    TYPE = TYPE

    def _before_resources(self, cp: ComponentPlan) -> _Prepared:
        owners, filters = ami_filters(cp)
        return _Prepared(owners, filters, node_files_in_store(cp))

    def _section(self, b: Build) -> AwsSection:
        return b.deployment.aws or AwsSection()

    def _named(self, b: Build, suffix: str) -> dict[str, str]:
        return {**b.tags, "Name": f"{b.name}-{suffix}"}

    def _network(self, b: Build) -> _Network:
        cfg = self._section(b)
        name, names = b.name, b.names
        if cfg.subnet_id:
            # The spool volume must live in the subnet's availability zone.
            zone = aws.ec2.get_subnet_output(id=cfg.subnet_id,
                                             opts=pulumi.InvokeOutputOptions(parent=self)).availability_zone
            return _Network(cfg.vpc_id, cfg.subnet_id, zone, [])
        vpc = aws.ec2.Vpc(names.network, cidr_block=cfg.vpc_cidr, enable_dns_support=True,
                          enable_dns_hostnames=True, tags=self._named(b, "vpc"),
                          opts=child(self, aliases=was(f"{name}-vpc")))
        az: pulumi.Input[str] = cfg.availability_zone or aws.get_availability_zones_output(
            state="available", opts=pulumi.InvokeOutputOptions(parent=self)).names[0]
        subnet = aws.ec2.Subnet(names.subnet, vpc_id=vpc.id, cidr_block=subnet_cidr(cfg.vpc_cidr),
                                availability_zone=az,
                                # Each node's public address is its Elastic IP, never an automatic one.
                                map_public_ip_on_launch=False, tags=self._named(b, "subnet"), opts=child(self))
        igw = aws.ec2.InternetGateway(f"{name}-igw", vpc_id=vpc.id, tags=self._named(b, "igw"), opts=child(self))
        rt = aws.ec2.RouteTable(f"{name}-rt", vpc_id=vpc.id,
                                routes=[{"cidr_block": "0.0.0.0/0", "gateway_id": igw.id}],
                                tags=self._named(b, "rt"), opts=child(self))
        rta = aws.ec2.RouteTableAssociation(f"{name}-rta", subnet_id=subnet.id, route_table_id=rt.id,
                                            opts=child(self))
        return _Network(vpc.id, subnet.id, subnet.availability_zone, [igw, rta])

    def _firewall(self, b: Build) -> aws.ec2.SecurityGroup:
        # No inline rules: the provider removes AWS's default allow-all egress rule from a
        # new group, so the group allows exactly the rules below (egress deny-other).
        # Traffic to the VPC's DNS resolver, IMDS and the time service is not filtered
        # by security groups. Stateful: replies need no rule.
        sg = aws.ec2.SecurityGroup(b.names.firewall, vpc_id=b.network.vpc_id,
                                   description=f"KumoMTA nodes of {b.name}", tags=self._named(b, "sg"),
                                   opts=child(self, aliases=was(f"{b.name}-sg")))
        for rule in b.cp.rules:
            self._rule(b, sg, rule)
        return sg

    def _rule(self, b: Build, sg: aws.ec2.SecurityGroup, rule: Rule) -> None:
        """One rule resource per CIDR, named by the CIDR so adding one never renames the others; a
        rule between the nodes (Rule.from_nodes) is one resource naming the nodes' own group as the
        source (ingress) or the destination (egress), whatever addresses the nodes have."""
        cls = aws.vpc.SecurityGroupIngressRule if rule.direction == "ingress" else aws.vpc.SecurityGroupEgressRule
        common = dict(security_group_id=sg.id, ip_protocol=rule.protocol, from_port=rule.port, to_port=rule.port,
                      description=rule.description, tags={**b.tags, "Name": f"{b.name}-{rule.name}"})
        if rule.from_nodes:
            cls(b.names.firewall_rule(rule.name, NODES_SLUG), referenced_security_group_id=sg.id, **common,
                opts=child(self))
            return
        for family, cidrs in rule.families():
            for cidr in cidrs:
                address = {"cidr_ipv4": cidr} if family == "v4" else {"cidr_ipv6": cidr}
                cls(b.names.firewall_rule(rule.name, _cidr_slug(cidr)), **common, **address,
                    opts=child(self, aliases=was(f"{b.name}-sg-{rule.name}-{_cidr_slug(cidr)}")))

    def _shared_redis(self, b: Build) -> SharedRedis:
        return shared_redis(self, b, b.firewall, b.cp.target.managed_redis or "")

    def _identity(self, b: Build) -> _Identity:
        # Its only permission is reading the deployment's own secrets (_store_secrets), when it has any.
        self.role = aws.iam.Role(b.names.identity, assume_role_policy=json.dumps(EC2_ASSUME_ROLE_POLICY),
                                 description=f"KumoMTA nodes of {b.name}", tags=b.tags,
                                 opts=child(self, aliases=was(f"{b.name}-role")))
        self.instance_profile = aws.iam.InstanceProfile(f"{b.name}-profile", role=self.role.name, tags=b.tags,
                                                        opts=child(self))
        return _Identity(self.role, self.instance_profile)

    def _store_secrets(self, b: Build) -> list[pulumi.Resource]:
        """A Secrets Manager secret and its value per NodeSecret (and the shared node files when the
        user data cannot carry them), and ONE inline policy letting the instance role read exactly
        those. Returns what the machines must wait for; nothing to store: no store resources and no
        policy at all.

        The relay password and the DKIM keys live in Secrets Manager, never in the user data;
        kumo-bootstrap fetches each one at boot with the instance role, by its reference."""
        d, name, names = b.deployment, b.name, b.names
        stored = list(b.secrets)
        in_store = b.prepared.in_store
        if in_store is not None:
            stored.append(NodeSecret(NODE_FILES_SPEC, b.cp.target.secrets.store_name(d, NODE_FILES_SPEC),
                                     pulumi.Output.from_input(in_store[1].text)))
        ready: list[pulumi.Resource] = []
        arns: list[pulumi.Output[str]] = []
        for s in stored:
            key = s.spec.key
            secret = aws.secretsmanager.Secret(
                names.secret(key), name=s.name, description=s.spec.description,
                recovery_window_in_days=EPHEMERAL_RECOVERY_DAYS if d.lifecycle.ephemeral else SECRET_RECOVERY_DAYS,
                # In the region the node's reference names (aws:<region>:<name>).
                region=d.region,
                tags={**b.tags, "Name": s.name},
                opts=child(self, protect=d.lifecycle.protect, aliases=was(f"{name}-secret-{key}")))
            # secret_string is a Pulumi secret (NodeSecret.value, and the SDK marks it again).
            version = aws.secretsmanager.SecretVersion(
                names.secret_version(key), secret_id=secret.id, secret_string=s.value, region=d.region,
                opts=child(self, aliases=was(f"{name}-secret-{key}-version")))
            if s.machines_wait:  # not the API certificate: it names the Elastic IPs (NodeSecret.machines_wait)
                ready.append(version)
            arns.append(secret.arn)
        if stored:
            # Exact ARNs (Secrets Manager adds a random suffix to each), no wildcard. The secrets use
            # the AWS-managed key aws/secretsmanager, which needs no kms:Decrypt grant of ours.
            document = pulumi.Output.all(*arns).apply(lambda resolved: json.dumps({
                "Version": "2012-10-17",
                "Statement": [{"Sid": "ReadKumoSecrets", "Effect": "Allow", "Action": [SECRET_READ_ACTION],
                               "Resource": list(resolved)}],
            }))
            ready.append(aws.iam.RolePolicy(names.secrets_access, role=self.role.name, policy=document,
                                            opts=child(self, aliases=was(f"{name}-secrets-read"))))
        return ready

    def _spool(self, b: Build, n: NodeBuild) -> aws.ebs.Volume:
        # The volume exists before the machine, so the machine's bootstrap can name it by its id:
        # the node then takes exactly this volume for its spool, never another one attached to it.
        prefix = f"{b.name}-{n.key}"
        return aws.ebs.Volume(
            b.names.spool(n.key), availability_zone=b.network.zone, size=b.cp.plan.spool_gb_per_node, type="gp3",
            encrypted=True, tags={**b.tags, "Name": f"{prefix}-spool"},
            # Queued mail outlives the machine: a replaced instance gets the same volume back,
            # and deleting the stack leaves it behind (not an ephemeral one's: spool_options).
            opts=spool_options(self, b.cp))

    def _machine(self, b: Build, n: NodeBuild) -> Machine:
        cfg, cp, node = self._section(b), b.cp, n.node
        node_files_from = b.prepared.node_files_from
        user_data: pulumi.Input[str]
        if n.spool is not None:
            user_data = n.spool.id.apply(lambda volume_id: user_data_base64(
                node, volume_id, node_files_from=node_files_from))
        else:
            # local_nvme: the d-types' instance store is attached automatically (block device
            # mappings do not matter); kumo-bootstrap finds it by its model name and RAIDs it.
            user_data = user_data_base64(node, node_files_from=node_files_from)
        ami = self._ami(b)
        # ENA networking comes with the AMI and the instance type: no switch on Instance.
        instance = aws.ec2.Instance(
            b.names.machine(n.key),
            ami=ami.id,
            instance_type=cp.plan.instance_type,
            subnet_id=b.network.subnet_id,
            vpc_security_group_ids=[b.firewall.id],
            iam_instance_profile=self.instance_profile.name,
            key_name=cfg.key_name,
            associate_public_ip_address=False,  # the Elastic IP is the public address
            # Ignored on a running machine (machine_options): a new release's bootstrap never replaces it.
            user_data_base64=user_data,
            user_data_replace_on_change=cp.deployment.lifecycle.replace_on_bootstrap_change,
            metadata_options={"http_tokens": "required", "http_endpoint": "enabled",
                              "http_put_response_hop_limit": 1},
            root_block_device={"volume_type": "gp3", "volume_size": cp.plan.os_disk_gb, "encrypted": True,
                               "delete_on_termination": True,
                               "tags": {**b.tags, "Name": f"{b.name}-{n.key}-root"}},
            tags={**b.tags, "Name": node.hostname},
            # The secrets and the grant exist before the machine boots and fetches them.
            opts=machine_options(self, cp, BOOTSTRAP_PATHS, FIXED_PATHS,
                                 depends_on=b.network.ready + b.secrets_ready,
                                 aliases=was(f"{b.name}-{n.key}-instance")),
        )
        return Machine(instance, instance.private_ip, instance.id)

    def _ami(self, b: Build) -> pulumi.Output[aws.ec2.GetAmiResult]:
        """The image look-up, once per component (the machine keeps the image it was created with)."""
        if getattr(self, "_ami_result", None) is None:
            self._ami_result = aws.ec2.get_ami_output(owners=b.prepared.owners, most_recent=True,
                                                      filters=b.prepared.filters,
                                                      opts=pulumi.InvokeOutputOptions(parent=self))
        return self._ami_result

    def _address(self, b: Build, n: NodeBuild) -> Address:
        # After the machine (the target's address_after_machine): the Elastic IP is associated as it is made.
        eip = aws.ec2.Eip(b.names.address(n.key), domain="vpc", instance=n.machine.resource.id,
                          tags={**b.tags, "Name": n.node.hostname},
                          # AWS: an Elastic IP may need the internet gateway before it associates.
                          opts=child(self, depends_on=b.network.ready, aliases=was(f"{b.name}-{n.key}-eip")))
        return Address(eip.public_ip, eip)

    def _forward_record(self, b: Build, n: NodeBuild) -> aws.route53.Record:
        return aws.route53.Record(b.names.forward_record(n.key), zone_id=self._section(b).route53_zone_id,
                                  name=n.node.hostname, type="A", ttl=300, records=[n.address.ip], opts=child(self))

    def _ptr(self, b: Build, n: NodeBuild) -> None:
        # AWS refuses the PTR unless the forward record already resolves to the address.
        aws.ec2.EipDomainName(b.names.ptr(n.key), allocation_id=n.address.resource.allocation_id,
                              domain_name=n.node.hostname,
                              opts=child(self, depends_on=[n.record] if n.record is not None else []))

    def _after_machine(self, b: Build, n: NodeBuild) -> None:
        if n.spool is None:
            return
        aws.ec2.VolumeAttachment(
            f"{b.names.spool(n.key)}-attach", device_name=SPOOL_DEVICE, volume_id=n.spool.id,
            instance_id=n.machine.resource.id,
            # Stop the old machine (clean unmount) before detaching; a gp3 volume attaches to one
            # instance at a time, so the old attachment must go before the new one is made.
            stop_instance_before_detaching=True,
            opts=child(self, delete_before_replace=True))

"""AWS: KumoMTA nodes on EC2, each with an Elastic IP, its reverse DNS and a spool.

Per deployment: a minimal VPC (unless ``aws.vpc_id``/``aws.subnet_id`` are given),
one security group built from the shared firewall plan (``kumo_infra.netplan``),
an IAM role + instance profile, and the deployment's secrets (relay password,
DKIM keys) in Secrets Manager with one inline policy letting that role read only
them. Per node: an EC2 instance booting the gzip-compressed kumo-bootstrap
cloud-config, an Elastic IP, optionally the forward A record and the PTR, and for
``block`` spools an encrypted gp3 volume.

Everything here is checked against pulumi-aws 7.51 and runs under the mock
engine (``kumo_infra.offline``); values only AWS knows are answered by
``kumo_infra/clouds/offline_aws.py``.
"""

from __future__ import annotations

import base64
import json
from typing import Optional

import pulumi
import pulumi_aws as aws

from ..bootstrap import AWS_USER_DATA_LIMIT, NodeFilesBundle, compressed, node_files_bundle, render_user_data
from ..config import AwsSection
from ..errors import ConfigError
from ..netplan import Rule
from ..secretspec import SecretSpec, reference, store_name
from .common import (KumoMtaComponent, ComponentPlan, KumoMtaArgs, NodePlan, NodeSecret, child, machine_options,
                     node_output, prepare, secrets_for, subnet_cidr, base_tags)

TYPE = "kumo:index:AwsKumoMta"
# The Instance properties (engine camelCase) that carry the bootstrap: a change to them
# is ignored on running machines unless lifecycle.replace_on_bootstrap_change.
BOOTSTRAP_PROPS = ["userDataBase64"]
# get_ami(most_recent=True) moves whenever the vendor publishes an image; replacing every
# machine for that would lose the mail on local NVMe spools. The image is chosen when a
# machine is created; the OS is kept current by its package manager.
IMAGE_PROPS = ["ami"]
# Xen instance types name it /dev/xvdf; on Nitro the bootstrap finds it by the volume's id, which the
# NVMe controller reports as its serial number (bootstrap.spool_device_paths).
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
        ref = reference(cp.deployment, NODE_FILES_SPEC)
        check((ref, bundle.sha256))  # raises when even the per-node part does not fit
        return ref, bundle


def ami_filters(cp: ComponentPlan) -> tuple[list[str], list[dict]]:
    """Owners and filters of the image look-up for the planned OS and architecture."""
    image = cp.deployment.os_spec.aws
    assert image is not None  # Deployment.check refuses an OS without an AWS image
    arch_name = image.arch_names.get(cp.plan.arch)
    if arch_name is None:
        raise ConfigError(f"'{cp.deployment.os}' has no {cp.plan.arch} image on aws; choose an "
                          f"{'/'.join(image.arch_names)} instance type", "kumo:deployment.sizing.instance_type")
    return [image.owner], [
        {"name": "name", "values": [image.name_pattern.format(arch=arch_name)]},
        {"name": "architecture", "values": [cp.plan.arch]},
    ]


def _cidr_slug(cidr: str) -> str:
    """A resource-name part for a CIDR: 203.0.113.0-24, 2001_db8__-32, __-0 (::/0)."""
    return cidr.replace(":", "_").replace("/", "-")


class AwsKumoMta(KumoMtaComponent):
    role: aws.iam.Role  # the nodes' identity: reads the deployment's secrets and nothing else

    def __init__(self, name: str, args: KumoMtaArgs, opts: Optional[pulumi.ResourceOptions] = None) -> None:
        # Everything that can be wrong with the input is found before anything is registered.
        cp = prepare(args, "aws")
        cfg = cp.deployment.aws or AwsSection()
        owners, filters = ami_filters(cp)
        created_subnet_cidr = None if cfg.subnet_id else subnet_cidr(cfg.vpc_cidr)
        in_store = node_files_in_store(cp)
        node_files_from = (in_store[0], in_store[1].sha256) if in_store else None

        super().__init__(TYPE, name, {"deployment": args["deployment"]}, opts)
        tags = base_tags(name)

        def named(suffix: str) -> dict[str, str]:
            return {**tags, "Name": f"{name}-{suffix}"}

        # -- network ------------------------------------------------------------------
        network_ready: list[pulumi.Resource] = []
        if cfg.subnet_id:
            vpc_id: pulumi.Input[str] = cfg.vpc_id
            subnet_id: pulumi.Input[str] = cfg.subnet_id
            # The spool volume must live in the subnet's availability zone.
            zone: pulumi.Input[str] = aws.ec2.get_subnet_output(
                id=cfg.subnet_id, opts=pulumi.InvokeOutputOptions(parent=self)).availability_zone
        else:
            vpc = aws.ec2.Vpc(f"{name}-vpc", cidr_block=cfg.vpc_cidr, enable_dns_support=True,
                              enable_dns_hostnames=True, tags=named("vpc"), opts=child(self))
            az: pulumi.Input[str] = cfg.availability_zone or aws.get_availability_zones_output(
                state="available", opts=pulumi.InvokeOutputOptions(parent=self)).names[0]
            subnet = aws.ec2.Subnet(f"{name}-subnet", vpc_id=vpc.id, cidr_block=created_subnet_cidr,
                                    availability_zone=az,
                                    # Each node's public address is its Elastic IP, never an automatic one.
                                    map_public_ip_on_launch=False, tags=named("subnet"), opts=child(self))
            igw = aws.ec2.InternetGateway(f"{name}-igw", vpc_id=vpc.id, tags=named("igw"), opts=child(self))
            rt = aws.ec2.RouteTable(f"{name}-rt", vpc_id=vpc.id,
                                    routes=[{"cidr_block": "0.0.0.0/0", "gateway_id": igw.id}],
                                    tags=named("rt"), opts=child(self))
            rta = aws.ec2.RouteTableAssociation(f"{name}-rta", subnet_id=subnet.id, route_table_id=rt.id,
                                                opts=child(self))
            vpc_id, subnet_id, zone = vpc.id, subnet.id, subnet.availability_zone
            network_ready = [igw, rta]

        # -- firewall -------------------------------------------------------------------
        # No inline rules: the provider removes AWS's default allow-all egress rule from a
        # new group, so the group allows exactly the rules below (egress deny-other).
        # Traffic to the VPC's DNS resolver, IMDS and the time service is not filtered
        # by security groups. Stateful: replies need no rule.
        sg = aws.ec2.SecurityGroup(f"{name}-sg", vpc_id=vpc_id, description=f"KumoMTA nodes of {name}",
                                   tags=named("sg"), opts=child(self))
        for rule in cp.rules:
            self._rule(name, sg, rule, tags)

        # -- identity ---------------------------------------------------------------------
        # Its only permission is reading the deployment's own secrets (below), when it has any.
        self.role = aws.iam.Role(f"{name}-role", assume_role_policy=json.dumps(EC2_ASSUME_ROLE_POLICY),
                                 description=f"KumoMTA nodes of {name}", tags=tags, opts=child(self))
        self.instance_profile = aws.iam.InstanceProfile(f"{name}-profile", role=self.role.name, tags=tags,
                                                        opts=child(self))

        # -- secrets ------------------------------------------------------------------------
        # The relay password and the DKIM keys live in Secrets Manager, never in the user data;
        # kumo-bootstrap fetches each one at boot with the instance role, by secretspec.reference.
        secrets, dkim_public = secrets_for(self, name, cp, args)
        stored = list(secrets)
        if in_store is not None:
            stored.append(NodeSecret(NODE_FILES_SPEC, store_name(cp.deployment, NODE_FILES_SPEC),
                                     pulumi.Output.from_input(in_store[1].text)))
        secrets_ready = self._secrets(name, cp, stored, tags)

        ami = aws.ec2.get_ami_output(owners=owners, most_recent=True, filters=filters,
                                     opts=pulumi.InvokeOutputOptions(parent=self))
        bootstrap_replaces = cp.deployment.lifecycle.replace_on_bootstrap_change

        node_outputs: list[pulumi.Output[dict]] = []
        public_ips: list[pulumi.Output[str]] = []
        for node in cp.nodes:
            prefix = f"{name}-{node.key}"
            spool: Optional[aws.ebs.Volume] = None
            user_data: pulumi.Input[str]
            if cp.plan.spool_storage == "block":
                # The volume exists before the machine, so the machine's bootstrap can name it by its id:
                # the node then takes exactly this volume for its spool, never another one attached to it.
                spool = self._spool_volume(prefix, cp, zone, tags)
                user_data = spool.id.apply(lambda volume_id, node=node: user_data_base64(
                    node, volume_id, node_files_from=node_files_from))
            else:
                # local_nvme: the d-types' instance store is attached automatically (block device
                # mappings do not matter); kumo-bootstrap finds it by its model name and RAIDs it.
                user_data = user_data_base64(node, node_files_from=node_files_from)
            # ENA networking comes with the AMI and the instance type: no switch on Instance.
            instance = aws.ec2.Instance(
                f"{prefix}-instance",
                ami=ami.id,
                instance_type=cp.plan.instance_type,
                subnet_id=subnet_id,
                vpc_security_group_ids=[sg.id],
                iam_instance_profile=self.instance_profile.name,
                key_name=cfg.key_name,
                associate_public_ip_address=False,  # the Elastic IP is the public address
                # Ignored on a running machine (machine_options): a new release's bootstrap never replaces it.
                user_data_base64=user_data,
                user_data_replace_on_change=bootstrap_replaces,
                metadata_options={"http_tokens": "required", "http_endpoint": "enabled",
                                  "http_put_response_hop_limit": 1},
                root_block_device={"volume_type": "gp3", "volume_size": cp.plan.os_disk_gb, "encrypted": True,
                                   "delete_on_termination": True, "tags": {**tags, "Name": f"{prefix}-root"}},
                tags={**tags, "Name": node.hostname},
                # The secrets and the grant exist before the machine boots and fetches them.
                opts=machine_options(self, cp, BOOTSTRAP_PROPS, IMAGE_PROPS,
                                     depends_on=network_ready + secrets_ready),
            )
            eip = aws.ec2.Eip(f"{prefix}-eip", domain="vpc", instance=instance.id,
                              tags={**tags, "Name": node.hostname},
                              # AWS: an Elastic IP may need the internet gateway before it associates.
                              opts=child(self, depends_on=network_ready))

            if cp.create_forward_records:
                record = aws.route53.Record(f"{prefix}-a", zone_id=cfg.route53_zone_id, name=node.hostname,
                                            type="A", ttl=300, records=[eip.public_ip], opts=child(self))
                ptr_after: list[pulumi.Resource] = [record]
            else:
                ptr_after = []
            if cp.set_ptr:
                # AWS refuses the PTR unless the forward record already resolves to the address.
                aws.ec2.EipDomainName(f"{prefix}-ptr", allocation_id=eip.allocation_id,
                                      domain_name=node.hostname, opts=child(self, depends_on=ptr_after))

            if spool is not None:
                self._attach_spool(prefix, spool, instance)

            node_outputs.append(node_output(cp, node, public_ip=eip.public_ip, private_ip=instance.private_ip))
            public_ips.append(eip.public_ip)

        self._publish(cp, node_outputs, public_ips, secrets, dkim_public)

    def _secrets(self, name: str, cp: ComponentPlan, secrets: list[NodeSecret],
                 tags: dict[str, str]) -> list[pulumi.Resource]:
        """A Secrets Manager secret and its value per NodeSecret, and ONE inline policy letting the
        instance role read exactly those secrets. Returns what the machines must wait for;
        no secrets: no store resources and no policy at all."""
        ready: list[pulumi.Resource] = []
        arns: list[pulumi.Output[str]] = []
        for s in secrets:
            secret = aws.secretsmanager.Secret(
                f"{name}-secret-{s.spec.key}", name=s.name, description=s.spec.description,
                recovery_window_in_days=SECRET_RECOVERY_DAYS,
                # In the region the node's reference names (secretspec.reference: aws:<region>:<name>).
                region=cp.deployment.region,
                tags={**tags, "Name": s.name},
                opts=child(self, protect=cp.deployment.lifecycle.protect))
            # secret_string is a Pulumi secret (NodeSecret.value, and the SDK marks it again).
            version = aws.secretsmanager.SecretVersion(
                f"{name}-secret-{s.spec.key}-version", secret_id=secret.id, secret_string=s.value,
                region=cp.deployment.region, opts=child(self))
            if s.machines_wait:  # not the API certificate: it names the Elastic IPs (NodeSecret.machines_wait)
                ready.append(version)
            arns.append(secret.arn)
        if secrets:
            # Exact ARNs (Secrets Manager adds a random suffix to each), no wildcard. The secrets use
            # the AWS-managed key aws/secretsmanager, which needs no kms:Decrypt grant of ours.
            document = pulumi.Output.all(*arns).apply(lambda resolved: json.dumps({
                "Version": "2012-10-17",
                "Statement": [{"Sid": "ReadKumoSecrets", "Effect": "Allow", "Action": [SECRET_READ_ACTION],
                               "Resource": list(resolved)}],
            }))
            ready.append(aws.iam.RolePolicy(f"{name}-secrets-read", role=self.role.name, policy=document,
                                            opts=child(self)))
        return ready

    def _rule(self, name: str, sg: aws.ec2.SecurityGroup, rule: Rule, tags: dict[str, str]) -> None:
        """One rule resource per CIDR, named by the CIDR so adding one never renames the others."""
        cls = aws.vpc.SecurityGroupIngressRule if rule.direction == "ingress" else aws.vpc.SecurityGroupEgressRule
        for family, cidrs in rule.families():
            for cidr in cidrs:
                address = {"cidr_ipv4": cidr} if family == "v4" else {"cidr_ipv6": cidr}
                cls(f"{name}-sg-{rule.name}-{_cidr_slug(cidr)}", security_group_id=sg.id, ip_protocol=rule.protocol,
                    from_port=rule.port, to_port=rule.port, description=rule.description,
                    tags={**tags, "Name": f"{name}-{rule.name}"}, **address, opts=child(self))

    def _spool_volume(self, prefix: str, cp: ComponentPlan, zone: pulumi.Input[str],
                      tags: dict[str, str]) -> aws.ebs.Volume:
        return aws.ebs.Volume(
            f"{prefix}-spool", availability_zone=zone, size=cp.plan.spool_gb_per_node, type="gp3", encrypted=True,
            tags={**tags, "Name": f"{prefix}-spool"},
            # Queued mail outlives the machine: a replaced instance gets the same volume back,
            # and deleting the stack leaves it behind.
            opts=child(self, retain_on_delete=True, protect=cp.deployment.lifecycle.protect))

    def _attach_spool(self, prefix: str, volume: aws.ebs.Volume, instance: aws.ec2.Instance) -> None:
        aws.ec2.VolumeAttachment(
            f"{prefix}-spool-attach", device_name=SPOOL_DEVICE, volume_id=volume.id, instance_id=instance.id,
            # Stop the old machine (clean unmount) before detaching; a gp3 volume attaches to one
            # instance at a time, so the old attachment must go before the new one is made.
            stop_instance_before_detaching=True,
            opts=child(self, delete_before_replace=True))

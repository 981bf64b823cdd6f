"""Amazon Web Services: EC2 instances kumo-infra creates, with everything that differs on AWS."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Optional

from ...errors import shown
from .. import Port25Facts, SecretStore, Target, ptr_after_forward_record
from . import offline
from .config import AwsSection
from .images import IMAGES, AwsImage

if TYPE_CHECKING:
    from ...config import Deployment
    from ...secretspec import SecretSpec
    from ...sizing import Plan

__all__ = ["TARGET", "AwsSection", "AwsImage"]

FORM = "https://console.aws.amazon.com/support/contacts#/rdns-limits"
DOC = "https://repost.aws/knowledge-center/ec2-port-25-throttle"


# -- secrets: Secrets Manager, read by the instance role ------------------------------------------

def store_name(d: "Deployment", spec: "SecretSpec") -> str:
    return f"kumo-infra/{d.name}/{spec.key}"


def reference(d: "Deployment", spec: "SecretSpec") -> str:
    return f"aws:{d.region}:{store_name(d, spec)}"


def read_command(d: "Deployment", spec: "SecretSpec") -> str:
    return (f"aws secretsmanager get-secret-value --region {d.region} --secret-id {store_name(d, spec)} "
            "--query SecretString --output text")


# -- outbound port 25 --------------------------------------------------------------------------

def direct_allowed(d: "Deployment") -> tuple[bool, str]:
    # Blocked until a removal request is granted, but possible: direct is a valid choice.
    return True, ""


def use_case(d: "Deployment", plan: "Plan", hostnames: list[str]) -> str:
    """A draft of the AWS form's use-case text, from what the stack config knows."""
    per_day = d.sizing.messages_per_hour * 24
    domains = ", ".join(d.dkim.domains) or "[your sending domains]"
    signing = ("messages are DKIM-signed and the domains publish SPF and DMARC" if d.dkim.domains
               else "[say how messages are DKIM-signed and which SPF and DMARC records the domains publish]")
    return (
        f"We run KumoMTA, an open-source MTA, on {plan.nodes} EC2 instance(s) in {d.region} "
        f"({', '.join(hostnames)}) to deliver mail for {domains}. Expected volume: about "
        f"{d.sizing.messages_per_hour:,} messages per hour ({per_day:,} per day), averaging "
        f"{d.sizing.avg_message_kb:g} kB. Each Elastic IP has reverse DNS set to its host name, which "
        f"resolves back to it; {signing}. "
        "[Describe how recipients opted in, how you handle bounces and complaints, and how you remove "
        "unsubscribed addresses: AWS asks for this.]"
    )


def describe_port25(d: "Deployment", plan: "Plan", hostnames: list[str], ips: list[str],
                    out: dict[str, Any]) -> None:
    out["situation"] = ("AWS blocks outbound port 25 on every EC2 instance until a removal request is granted; "
                        "there is no API for it.")
    out["request"] = {
        "form": FORM,
        "documentation": DOC,
        "region": d.region,
        "elastic_ips": ips,
        "reverse_dns": [{"elastic_ip": ip, "name": h} for h, ip in zip(hostnames, ips)],
        "use_case": use_case(d, plan, hostnames),
    }
    out["operator_must"] = (["submit the form above (same form sets the reverse DNS if kumo-infra could not)",
                             "wait for AWS's answer; until then mail to MX hosts queues (the probe says blocked)"]
                            if out["mode"] == "direct" else ["nothing for port 25: mail leaves through the smarthost"])


def format_port25(rep: dict[str, Any]) -> list[str]:
    req = rep["request"]
    lines = ["", f"AWS request to remove email sending limitations: {req['form']}", f"  region: {req['region']}"]
    lines += [f"  Elastic IP {entry['elastic_ip']} -> reverse DNS {entry['name']}" for entry in req["reverse_dns"]]
    return lines + ["  use case (draft, complete the bracketed part):", f"    {req['use_case']}"]


# -- the section's own rules and the machines' facts ----------------------------------------------

def check(d: "Deployment") -> list[tuple[str, str]]:
    found = []
    zone = d.aws.availability_zone if d.aws else None
    if zone and d.region:
        rest = zone[len(d.region):] if zone.startswith(d.region) else None
        if rest is None or not re.fullmatch(r"[a-z]|-[a-z0-9-]*[a-z0-9]", rest, re.ASCII):
            found.append(("aws.availability_zone", f"{shown(zone)} is not a zone of region {d.region} "
                                                   f"(like {d.region}a)"))
    return found


def spool_device_paths(d: "Deployment", spool_storage: str, volume_id: Optional[str]) -> list[str]:
    if spool_storage != "block":
        return []
    paths = []
    if volume_id:
        # Nitro: the NVMe controller's serial number is the volume id without its hyphen and its
        # model "Amazon Elastic Block Store" (AWS docs, "Amazon EBS and NVMe", nvme-ebs-volumes.html:
        # "sn : vol01234567890abcdef / mn : Amazon Elastic Block Store"); udev's persistent-storage
        # rules link it as by-id/nvme-<model>_<serial>, spaces turned into underscores.
        paths.append(f"/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_{volume_id.replace('-', '')}")
    # Xen instance types (t2): the component attaches the volume as /dev/sdf, which the
    # Xen block front-end names xvdf.
    return paths + ["/dev/xvdf", "/dev/sdf"]


TARGET = Target(
    name="aws",
    title="Amazon Web Services (EC2)",
    creates=("EC2 instances with Elastic IPs, EBS spool volumes (or local NVMe), a VPC and security group "
             "(or yours), an instance role, Secrets Manager secrets and, with dns.zone, Route 53 records"),
    section=AwsSection,
    section_required=False,
    check=check,
    catalog="aws.toml",
    images=IMAGES,
    port25=Port25Facts(direct_allowed=direct_allowed, describe=describe_port25, format_extra=format_port25),
    sets_ptr=ptr_after_forward_record,
    secrets=SecretStore(title="AWS Secrets Manager", backend="aws", store_name=store_name, reference=reference,
                        read_command=read_command),
    spool_device_paths=spool_device_paths,
    # Instance store NVMe: model "Amazon EC2 NVMe Instance Storage" (nvme-ebs-volumes.html).
    nvme_device_globs=("/dev/disk/by-id/nvme-Amazon_EC2_NVMe_Instance_Storage_*",),
    network_pairs=(("subnet_id", "vpc_id"), ("vpc_id", "subnet_id")),
    dns_zone_field="route53_zone_id",
    component="kumo_infra.targets.aws.component:AwsKumoMta",
    console="kumo_infra.targets.aws.console:reader",
    machine_type="aws:ec2/instance:Instance",
    managed_redis="Amazon ElastiCache (Redis OSS), TLS in transit and an AUTH token",
    offline_computed=offline.COMPUTED,
    offline_invokes=offline.INVOKES,
    # Elastic IPs are associated as they are created (Eip(instance=...)).
    address_after_machine=True,
    internet_cap_gbps=5.0,  # through an internet gateway, for instances under 32 vCPUs
    internet_cap_below_vcpu=32,
    example={"cloud": "aws", "region": "us-east-1", "name": "kumo-example", "hostname": "mta.example.com"},
)

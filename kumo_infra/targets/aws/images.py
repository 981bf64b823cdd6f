"""The AMI of every OS kumo-infra supports on AWS: one exhaustive table (None: no image here).

Sources: each publisher's AMI naming (shared/reference/clouds.md); the component looks the
newest match up (aws.ec2.get_ami) at deploy time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass(frozen=True)
class AwsImage:
    owner: str
    name_pattern: str  # ``{arch}`` is replaced by the AMI architecture name
    arch_names: dict[str, str] = field(default_factory=lambda: {"x86_64": "x86_64"})


IMAGES: dict[str, Optional[AwsImage]] = {
    "rocky8": AwsImage("792107900819", "Rocky-8-EC2-Base-8.*{arch}"),
    "rocky9": AwsImage("792107900819", "Rocky-9-EC2-Base-9.*{arch}"),
    "alma8": AwsImage("764336703387", "AlmaLinux OS 8*{arch}"),
    "alma9": AwsImage("764336703387", "AlmaLinux OS 9*{arch}"),
    "ubuntu20": AwsImage("099720109477", "ubuntu/images/hvm-ssd/ubuntu-focal-20.04-{arch}-server-*",
                         {"x86_64": "amd64"}),
    "ubuntu22": AwsImage("099720109477", "ubuntu/images/hvm-ssd*/ubuntu-jammy-22.04-{arch}-server-*",
                         {"x86_64": "amd64", "arm64": "arm64"}),
    "ubuntu24": AwsImage("099720109477", "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-{arch}-server-*",
                         {"x86_64": "amd64"}),
    "debian12": AwsImage("136693071363", "debian-12-{arch}-*", {"x86_64": "amd64"}),
    "al2023": AwsImage("amazon", "al2023-ami-2023.*-kernel-6.1-{arch}", {"x86_64": "x86_64", "arm64": "arm64"}),
    "al2": AwsImage("amazon", "amzn2-ami-hvm-*-{arch}-gp2"),
}

"""Operating systems kumo-infra can install KumoMTA on.

One table drives validation (which OS on which cloud), the bootstrap renderer
(package manager, repository file) and the image look-ups of each cloud
component, so the three can never disagree.

Sources: KumoMTA's installation docs (docs/userguide/installation/linux.md) for
packages and repositories; each cloud's image documentation for image names
(see shared/reference/clouds.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class Support(str, Enum):
    OFFICIAL = "official"  # upstream builds packages for this OS
    COMMUNITY = "community"  # works through another OS's packages; upstream does not test it
    END_OF_LIFE = "end-of-life"  # still installable, but the OS or its packages are end of life


@dataclass(frozen=True)
class AwsImage:
    owner: str
    name_pattern: str  # ``{arch}`` is replaced by the AMI architecture name
    arch_names: dict[str, str] = field(default_factory=lambda: {"x86_64": "x86_64"})


@dataclass(frozen=True)
class AzureImage:
    publisher: str
    offer: str
    sku: str
    # Marketplace images published by third parties need a purchase plan on the
    # VM and a one-time terms acceptance per subscription.
    needs_plan: bool = False


@dataclass(frozen=True)
class GcpImage:
    project: str
    family: str


@dataclass(frozen=True)
class OsSpec:
    key: str
    title: str
    family: str  # "dnf" | "yum" | "apt": the package manager the bootstrap drives
    support: Support
    # KumoMTA's repository directory for this OS under the repository host: the dev channel;
    # "<repo_dir>-stable" holds the stable one, and "<repo_dir>/public.gpg" the signing key
    # (see kumo_infra/bootstrap/packages.py for the sources).
    repo_dir: str
    arches: frozenset[str] = frozenset({"x86_64"})
    warning: str = ""
    aws: AwsImage | None = None
    azure: AzureImage | None = None
    gcp: GcpImage | None = None

    def image_for(self, cloud: str) -> AwsImage | AzureImage | GcpImage | None:
        return getattr(self, cloud)


_UBUNTU22_REPO = {"repo_dir": "kumomta-ubuntu-22"}

SUPPORTED: dict[str, OsSpec] = {
    spec.key: spec
    for spec in [
        OsSpec(
            "rocky8", "Rocky Linux 8", "dnf", Support.OFFICIAL, "kumomta-rockylinux-8",
            aws=AwsImage("792107900819", "Rocky-8-EC2-Base-8.*{arch}"),
            azure=AzureImage("resf", "rockylinux-x86_64", "8-base", needs_plan=True),
            gcp=GcpImage("rocky-linux-cloud", "rocky-linux-8"),
        ),
        OsSpec(
            "rocky9", "Rocky Linux 9", "dnf", Support.OFFICIAL, "kumomta-rockylinux-9",
            aws=AwsImage("792107900819", "Rocky-9-EC2-Base-9.*{arch}"),
            azure=AzureImage("resf", "rockylinux-x86_64", "9-base", needs_plan=True),
            gcp=GcpImage("rocky-linux-cloud", "rocky-linux-9"),
        ),
        OsSpec(
            "alma8", "AlmaLinux 8", "dnf", Support.OFFICIAL, "kumomta-rockylinux-8",
            aws=AwsImage("764336703387", "AlmaLinux OS 8*{arch}"),
            azure=AzureImage("almalinux", "almalinux-x86_64", "8-gen2"),
            gcp=GcpImage("almalinux-cloud", "almalinux-8"),
        ),
        OsSpec(
            "alma9", "AlmaLinux 9", "dnf", Support.OFFICIAL, "kumomta-rockylinux-9",
            aws=AwsImage("764336703387", "AlmaLinux OS 9*{arch}"),
            azure=AzureImage("almalinux", "almalinux-x86_64", "9-gen2"),
            gcp=GcpImage("almalinux-cloud", "almalinux-9"),
        ),
        OsSpec(
            "ubuntu20", "Ubuntu 20.04 LTS", "apt", Support.END_OF_LIFE,
            repo_dir="kumomta-ubuntu-20",
            warning="Ubuntu 20.04 left standard support in May 2025; plan a move to ubuntu22.",
            aws=AwsImage("099720109477", "ubuntu/images/hvm-ssd/ubuntu-focal-20.04-{arch}-server-*", {"x86_64": "amd64"}),
            azure=AzureImage("Canonical", "0001-com-ubuntu-server-focal", "20_04-lts-gen2"),
            gcp=GcpImage("ubuntu-os-cloud", "ubuntu-2004-lts"),
        ),
        OsSpec(
            "ubuntu22", "Ubuntu 22.04 LTS", "apt", Support.OFFICIAL, **_UBUNTU22_REPO,
            arches=frozenset({"x86_64", "arm64"}),
            aws=AwsImage("099720109477", "ubuntu/images/hvm-ssd*/ubuntu-jammy-22.04-{arch}-server-*",
                         {"x86_64": "amd64", "arm64": "arm64"}),
            azure=AzureImage("Canonical", "0001-com-ubuntu-server-jammy", "22_04-lts-gen2"),
            gcp=GcpImage("ubuntu-os-cloud", "ubuntu-2204-lts"),
        ),
        OsSpec(
            "ubuntu24", "Ubuntu 24.04 LTS", "apt", Support.COMMUNITY, **_UBUNTU22_REPO,
            warning="KumoMTA publishes no Ubuntu 24.04 repository; kumo-infra installs the Ubuntu 22.04 "
                    "package, as community installers do. Upstream does not test this combination.",
            aws=AwsImage("099720109477", "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-{arch}-server-*", {"x86_64": "amd64"}),
            azure=AzureImage("Canonical", "ubuntu-24_04-lts", "server"),
            gcp=GcpImage("ubuntu-os-cloud", "ubuntu-2404-lts-amd64"),
        ),
        OsSpec(
            "debian12", "Debian 12", "apt", Support.COMMUNITY, **_UBUNTU22_REPO,
            warning="KumoMTA publishes no Debian repository; kumo-infra installs the Ubuntu 22.04 "
                    "package. Upstream does not test this combination.",
            aws=AwsImage("136693071363", "debian-12-{arch}-*", {"x86_64": "amd64"}),
            azure=AzureImage("Debian", "debian-12", "12-gen2"),
            gcp=GcpImage("debian-cloud", "debian-12"),
        ),
        OsSpec(
            "al2023", "Amazon Linux 2023", "dnf", Support.OFFICIAL, "kumomta-amazonlinux-2023",
            arches=frozenset({"x86_64", "arm64"}),
            aws=AwsImage("amazon", "al2023-ami-2023.*-kernel-6.1-{arch}", {"x86_64": "x86_64", "arm64": "arm64"}),
        ),
        OsSpec(
            "al2", "Amazon Linux 2", "yum", Support.END_OF_LIFE, "kumomta-amazonlinux-2",
            warning="Amazon Linux 2 reached end of support on 2026-06-30 and KumoMTA no longer builds "
                    "packages for it: you get the last published build and no fixes. Move to al2023.",
            aws=AwsImage("amazon", "amzn2-ami-hvm-*-{arch}-gp2"),
        ),
    ]
}

# Operating systems an operator may ask for that kumo-infra refuses, and why.
REFUSED: dict[str, str] = {
    "centos7": "CentOS 7 is end of life (June 2024) and KumoMTA stopped building for it after "
               "release 2023.08.22; use rocky9 or alma9",
    "rhel7": "RHEL 7 packages are no longer built by KumoMTA; use rocky9 or alma9",
    "opensuse15": "KumoMTA publishes no package repository for openSUSE Leap 15 (upstream documents "
                  "only a source build or the container image), so it cannot be installed and updated "
                  "like the other systems; use rocky9, alma9, ubuntu22 or debian12",
}


def names_for(cloud: str) -> list[str]:
    """The OS keys that have an image on ``cloud``."""
    return [key for key, spec in SUPPORTED.items() if spec.image_for(cloud) is not None]

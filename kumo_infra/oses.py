"""Operating systems kumo-infra can install KumoMTA on.

One table of OS facts drives validation and the bootstrap renderer (package
manager, repository file). The image of each OS on each target is the target's
own: one exhaustive ``images`` table in kumo_infra/targets/<name>/images.py,
keyed by the OS keys here (tests/test_targets.py keeps them in step).

Sources: KumoMTA's installation docs (docs/userguide/installation/linux.md) for
packages and repositories.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from . import targets


class Support(str, Enum):
    OFFICIAL = "official"  # upstream builds packages for this OS
    COMMUNITY = "community"  # works through another OS's packages; upstream does not test it
    END_OF_LIFE = "end-of-life"  # still installable, but the OS or its packages are end of life


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


_UBUNTU22_REPO = {"repo_dir": "kumomta-ubuntu-22"}

SUPPORTED: dict[str, OsSpec] = {
    spec.key: spec
    for spec in [
        OsSpec("rocky8", "Rocky Linux 8", "dnf", Support.OFFICIAL, "kumomta-rockylinux-8"),
        OsSpec("rocky9", "Rocky Linux 9", "dnf", Support.OFFICIAL, "kumomta-rockylinux-9"),
        OsSpec("alma8", "AlmaLinux 8", "dnf", Support.OFFICIAL, "kumomta-rockylinux-8"),
        OsSpec("alma9", "AlmaLinux 9", "dnf", Support.OFFICIAL, "kumomta-rockylinux-9"),
        OsSpec(
            "ubuntu20", "Ubuntu 20.04 LTS", "apt", Support.END_OF_LIFE,
            repo_dir="kumomta-ubuntu-20",
            warning="Ubuntu 20.04 left standard support in May 2025; plan a move to ubuntu22.",
        ),
        OsSpec(
            "ubuntu22", "Ubuntu 22.04 LTS", "apt", Support.OFFICIAL, **_UBUNTU22_REPO,
            arches=frozenset({"x86_64", "arm64"}),
        ),
        OsSpec(
            "ubuntu24", "Ubuntu 24.04 LTS", "apt", Support.COMMUNITY, **_UBUNTU22_REPO,
            warning="KumoMTA publishes no Ubuntu 24.04 repository; kumo-infra installs the Ubuntu 22.04 "
                    "package, as community installers do. Upstream does not test this combination.",
        ),
        OsSpec(
            "debian12", "Debian 12", "apt", Support.COMMUNITY, **_UBUNTU22_REPO,
            warning="KumoMTA publishes no Debian repository; kumo-infra installs the Ubuntu 22.04 "
                    "package. Upstream does not test this combination.",
        ),
        OsSpec(
            "al2023", "Amazon Linux 2023", "dnf", Support.OFFICIAL, "kumomta-amazonlinux-2023",
            arches=frozenset({"x86_64", "arm64"}),
        ),
        OsSpec(
            "al2", "Amazon Linux 2", "yum", Support.END_OF_LIFE, "kumomta-amazonlinux-2",
            warning="Amazon Linux 2 reached end of support on 2026-06-30 and KumoMTA no longer builds "
                    "packages for it: you get the last published build and no fixes. Move to al2023.",
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


def names_for(target: str) -> list[str]:
    """The OS keys ``target`` can run (those with an image there; all when it takes machines as they are)."""
    return targets.get(target).os_names(SUPPORTED)


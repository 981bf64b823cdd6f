"""The image family of every OS kumo-infra supports on GCP: one exhaustive table (None: no image here).

Sources: GCP's public image list (shared/reference/clouds.md); the component looks the family's
newest image up (compute.get_image) at deploy time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class GcpImage:
    project: str
    family: str


IMAGES: dict[str, Optional[GcpImage]] = {
    "rocky8": GcpImage("rocky-linux-cloud", "rocky-linux-8"),
    "rocky9": GcpImage("rocky-linux-cloud", "rocky-linux-9"),
    "alma8": GcpImage("almalinux-cloud", "almalinux-8"),
    "alma9": GcpImage("almalinux-cloud", "almalinux-9"),
    "ubuntu20": GcpImage("ubuntu-os-cloud", "ubuntu-2004-lts"),
    "ubuntu22": GcpImage("ubuntu-os-cloud", "ubuntu-2204-lts"),
    "ubuntu24": GcpImage("ubuntu-os-cloud", "ubuntu-2404-lts-amd64"),
    "debian12": GcpImage("debian-cloud", "debian-12"),
    "al2023": None,  # Amazon Linux runs on AWS only
    "al2": None,
}

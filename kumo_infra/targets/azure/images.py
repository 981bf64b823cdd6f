"""The image of every OS kumo-infra supports on Azure: one exhaustive table (None: no image here).

Sources: the publishers' marketplace listings (shared/reference/clouds.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class AzureImage:
    publisher: str
    offer: str
    sku: str
    # Marketplace images published by third parties need a purchase plan on the
    # VM and a one-time terms acceptance per subscription.
    needs_plan: bool = False

    @property
    def urn(self) -> str:
        return f"{self.publisher}:{self.offer}:{self.sku}:latest"


IMAGES: dict[str, Optional[AzureImage]] = {
    "rocky8": AzureImage("resf", "rockylinux-x86_64", "8-base", needs_plan=True),
    "rocky9": AzureImage("resf", "rockylinux-x86_64", "9-base", needs_plan=True),
    "alma8": AzureImage("almalinux", "almalinux-x86_64", "8-gen2"),
    "alma9": AzureImage("almalinux", "almalinux-x86_64", "9-gen2"),
    "ubuntu20": AzureImage("Canonical", "0001-com-ubuntu-server-focal", "20_04-lts-gen2"),
    "ubuntu22": AzureImage("Canonical", "0001-com-ubuntu-server-jammy", "22_04-lts-gen2"),
    "ubuntu24": AzureImage("Canonical", "ubuntu-24_04-lts", "server"),
    "debian12": AzureImage("Debian", "debian-12", "12-gen2"),
    "al2023": None,  # Amazon Linux runs on AWS only
    "al2": None,
}

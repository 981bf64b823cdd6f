"""``kumo:deployment.azure``: the subscription's kind and where in Azure the nodes go."""

from __future__ import annotations

import re
from typing import Annotated, Literal, Optional

from pydantic import AfterValidator

from ...forms import (AZURE_ID_EXAMPLE, AZURE_RG, AZURE_RG_FORM, AZURE_SUBNET_ID, AZURE_VNET_ID, Strict, form,
                      network_block, ssh_public_key)

VnetCidr = Annotated[str, AfterValidator(lambda v: network_block(v, "an Azure VNet", 8, 29))]


class AzureSection(Strict):
    resource_group: Optional[Annotated[str, form(AZURE_RG, AZURE_RG_FORM)]] = None
    # What decides whether outbound port 25 can ever be open (see docs "Troubleshoot
    # outbound SMTP connectivity problems in Azure").
    subscription_type: Literal["ea", "mca-e", "dev-test", "pay-as-you-go", "csp", "msdn", "free", "other"] = "pay-as-you-go"
    # ARM resource ids; the subnet must be inside the virtual network (the target's check).
    vnet_id: Optional[Annotated[str, form(AZURE_VNET_ID, f"a virtual network resource id (like {AZURE_ID_EXAMPLE})",
                                          re.IGNORECASE)]] = None
    subnet_id: Optional[Annotated[str, form(AZURE_SUBNET_ID, f"a subnet resource id (like "
                                            f"{AZURE_ID_EXAMPLE}/subnets/mail)", re.IGNORECASE)]] = None
    ssh_public_key: Optional[Annotated[str, AfterValidator(lambda v: ssh_public_key(v))]] = None
    # Set when the marketplace terms of a planned image (e.g. Rocky Linux) were accepted
    # in this subscription, once (az vm image terms accept ...).
    marketplace_terms_accepted: bool = False
    dns_zone_resource_group: Optional[Annotated[str, form(AZURE_RG, AZURE_RG_FORM)]] = None
    vnet_cidr: VnetCidr = "10.42.0.0/16"
    # Managed boot diagnostics on every VM: its console log (az vm boot-diagnostics get-boot-log shows
    # kumo-bootstrap's result) and the serial console. Off by default: whoever holds Virtual Machine
    # Contributor on a VM could then read its console and open its serial console, a way in that skips
    # the NSG (with the generated admin password of a VM without ssh_public_key, a login). Always on in
    # an ephemeral deployment (lifecycle.ephemeral), whose smoke test reads the console.
    boot_diagnostics: bool = False

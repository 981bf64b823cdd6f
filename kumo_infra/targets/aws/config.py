"""``kumo:deployment.aws``: where on AWS the nodes go (all optional: kumo-infra creates what is not given)."""

from __future__ import annotations

from typing import Annotated, Optional

from pydantic import AfterValidator

from ...forms import Strict, form, network_block

VpcCidr = Annotated[str, AfterValidator(lambda v: network_block(v, "an AWS VPC", 16, 28))]


class AwsSection(Strict):
    # EC2 ids: the prefix and 8 (older) or 17 hexadecimal digits.
    vpc_id: Optional[Annotated[str, form(r"vpc-[0-9a-f]{1,17}", "a VPC id (like vpc-0a1b2c3d4e5f67890)")]] = None
    subnet_id: Optional[Annotated[str, form(r"subnet-[0-9a-f]{1,17}",
                                            "a subnet id (like subnet-0a1b2c3d4e5f67890)")]] = None
    # EC2 takes up to 255 ASCII characters; kumo-infra takes the usual subset (no spaces, quotes
    # or shell characters): import the key under such a name if yours has others.
    key_name: Optional[Annotated[str, form(
        r"[A-Za-z0-9][A-Za-z0-9._+=,@-]{0,254}",
        "an EC2 key pair name of up to 255 letters, digits and . _ + = , @ - (like ops-2026)")]] = None
    # Checked against the region by the target's check.
    availability_zone: Optional[Annotated[str, form(
        r"[a-z]{2}(?:-[a-z0-9]+)+", "an availability zone name (like us-east-1a or us-east-1-bos-1a)")]] = None
    route53_zone_id: Optional[Annotated[str, form(
        r"Z[A-Z0-9]{1,32}", "a Route 53 hosted zone id (like Z0123456789ABCDEFGHIJ; without /hostedzone/)")]] = None
    vpc_cidr: VpcCidr = "10.42.0.0/16"

"""``kumo:deployment.gcp``: the project (required) and where in it the nodes go."""

from __future__ import annotations

from typing import Annotated, Optional

from pydantic import AfterValidator

from ...forms import GCP_API, GCP_NAME, GCP_NAME_FORM, GCP_PROJECT, Strict, form, network_block

GcpSubnetCidr = Annotated[str, AfterValidator(lambda v: network_block(v, "a GCP subnet", 8, 29))]


class GcpSection(Strict):
    # The project id (not its display name). Domain-scoped ids (example.com:proj) are refused:
    # the node's secret references are colon-separated (gcp:PROJECT:NAME).
    project: Annotated[str, form(
        GCP_PROJECT, "a GCP project id: 6-30 lowercase letters, digits and hyphens, starting with a letter and "
                     "not ending with a hyphen (like my-kumo-project)")]
    # Checked against the region by the target's check.
    zone: Optional[Annotated[str, form(r"[a-z]+-[a-z]+[0-9]{1,2}-[a-z]", "a GCP zone (like us-central1-a)")]] = None
    # A name, or a self-link (full or from projects/...) for a network of another project (Shared VPC):
    # forms the provider parses (terraform-provider-google, google/tpgresource/field_helpers.go,
    # ParseGlobalFieldValue / ParseRegionalFieldValue), which the component hands these to unchanged.
    network: Optional[Annotated[str, form(
        rf"{GCP_NAME}|{GCP_API}projects/{GCP_PROJECT}/global/networks/{GCP_NAME}",
        f"a VPC network name ({GCP_NAME_FORM}) or projects/PROJECT/global/networks/NAME")]] = None
    subnetwork: Optional[Annotated[str, form(
        rf"{GCP_NAME}|{GCP_API}projects/{GCP_PROJECT}/regions/[a-z]+-[a-z]+[0-9]{{1,2}}/subnetworks/{GCP_NAME}",
        f"a subnetwork name ({GCP_NAME_FORM}) or projects/PROJECT/regions/REGION/subnetworks/NAME")]] = None
    dns_managed_zone: Optional[Annotated[str, form(
        GCP_NAME, f"a Cloud DNS managed zone name ({GCP_NAME_FORM})")]] = None
    subnet_cidr: GcpSubnetCidr = "10.42.0.0/24"

"""The examples/ programs run under the Pulumi SDK's mock engine, as a user would deploy them."""

from __future__ import annotations

import runpy

from kumo_infra import offline
from tests.conftest import ROOT

EXAMPLE = ROOT / "examples" / "reuse-in-your-program" / "__main__.py"


def test_reuse_example_creates_its_own_resources_and_a_kumo_node():
    result = offline.run(lambda: runpy.run_path(str(EXAMPLE)), {}, stack="dev")
    assert result.one("aws:s3/bucket:Bucket").name == "templates"
    component = result.one("kumo:index:AwsKumoMta")
    assert component.name == "mail"
    instance = result.one("aws:ec2/instance:Instance")
    assert instance.parent == "mail"
    assert result.outputs["mail_nodes"][0]["hostname"] == "mta.acme.example"
    assert result.outputs["mail_public_ips"] == [result.outputs["mail_nodes"][0]["public_ip"]]

"""`kumo-infra plan`: the real program under the mock engine, as an operator runs it.

Snapshots of the --json plan of every example stack live in tests/snapshots/;
after an intended change, regenerate them with KUMO_UPDATE_SNAPSHOTS=1 and review the diff.
"""

from __future__ import annotations

import json
import os

import pytest

from tests.conftest import ROOT, STACKS
from tests.test_cli import assert_bad_input, kumo

SNAPSHOTS = ROOT / "tests" / "snapshots"


@pytest.mark.parametrize("stack", STACKS)
def test_plan_json_matches_snapshot(stack):
    result = kumo("plan", "--stack", stack, "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert set(doc) == {"stack", "cloud", "resources", "outputs"}
    assert doc["stack"] == stack and doc["resources"]
    for resource in doc["resources"]:
        assert set(resource) == {"type", "name", "parent", "inputs"}
    snapshot = SNAPSHOTS / f"plan-{stack}.json"
    if os.environ.get("KUMO_UPDATE_SNAPSHOTS") == "1" or not snapshot.exists():
        snapshot.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
        if os.environ.get("CI"):
            pytest.fail(f"snapshot {snapshot.name} was missing in CI; generate and commit it")
    assert doc == json.loads(snapshot.read_text()), f"plan of {stack} changed; if intended, KUMO_UPDATE_SNAPSHOTS=1"


@pytest.mark.parametrize("stack", STACKS)
def test_plan_table(stack):
    result = kumo("plan", "--stack", stack)
    assert result.returncode == 0, result.stderr
    assert f"stack {stack}" in result.stdout and "resources would be created" in result.stdout
    assert "nodes:" in result.stdout


def test_plan_of_bad_config_exits_2_before_any_resource(tmp_path):
    f = tmp_path / "Pulumi.bad.yaml"
    f.write_text("config:\n  kumo:deployment: {cloud: gcp, region: us-central1, name: ab, hostname: mta.example.com,"
                 " gcp: {project: p}, port25: {outbound: direct}}\n")
    result = kumo("plan", "--config", str(f), "--json")
    assert_bad_input(result, "kumo:deployment.port25.outbound", "GCP blocks outbound port 25")
    assert result.stdout == ""


def test_plan_imports_only_the_deployments_cloud_sdk():
    probe = ("import sys, json; from kumo_infra import cli; cli.main(['plan', '--stack', 'gcp-dev', '--json']); "
             "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
             "('pulumi_aws', 'pulumi_azure_native', 'pulumi_gcp'))), file=sys.stderr)")
    import subprocess
    import sys
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=300)
    loaded = json.loads(result.stderr.strip().splitlines()[-1])
    assert any(m.startswith("pulumi_gcp") for m in loaded)
    assert not any(m.startswith(("pulumi_aws", "pulumi_azure_native")) for m in loaded), loaded


def test_plan_masks_every_secret():
    result = kumo("plan", "--stack", "gcp-dev", "--json")
    assert "[secret]" in result.stdout
    assert "kumo-plan-secret-placeholder" not in result.stdout + result.stderr
    doc = json.loads(result.stdout)
    versions = [r for r in doc["resources"] if r["type"] == "gcp:secretmanager/secretVersion:SecretVersion"]
    assert versions and all(v["inputs"]["secretData"] == "[secret]" for v in versions)

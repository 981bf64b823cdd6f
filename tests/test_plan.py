"""`kumo-infra plan`: the real program under the mock engine, as an operator runs it.

Snapshots of the --json plan of every example stack live in tests/snapshots/. The test run never
writes them: after an intended change, run `python -m tests.update_snapshots` and review the diff.
A snapshot guards against unnoticed change only; every behaviour has its own named test.
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import ROOT, STACKS
from tests.test_cli import assert_bad_input, kumo
from tests.update_snapshots import COMMAND, plan_json, snapshot_path


def compare_with_snapshot(doc: dict, stack: str, path) -> None:
    """Fail unless the snapshot at ``path`` equals ``doc``. Never writes, whatever the environment."""
    if not path.exists():
        pytest.fail(f"no snapshot {path.name} for stack {stack}: write it with `{COMMAND} {stack}`, review it and "
                    "commit it")
    assert doc == json.loads(path.read_text()), (
        f"the plan of {stack} differs from {path.name}; if the change is intended, run `{COMMAND} {stack}` and "
        "review the diff")


@pytest.mark.parametrize("stack", STACKS)
def test_plan_json_matches_snapshot(stack):
    result = plan_json(stack)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert set(doc) == {"stack", "cloud", "resources", "outputs"}
    assert doc["stack"] == stack and doc["resources"]
    for resource in doc["resources"]:
        assert set(resource) == {"type", "name", "parent", "inputs"}
    compare_with_snapshot(doc, stack, snapshot_path(stack))


def test_every_stack_has_a_snapshot_and_no_snapshot_is_orphaned():
    stored = sorted(p.name for p in (ROOT / "tests" / "snapshots").glob("plan-*.json"))
    assert stored == sorted(f"plan-{stack}.json" for stack in STACKS), f"run `{COMMAND}`"


@pytest.mark.parametrize("env", [{}, {"KUMO_UPDATE_SNAPSHOTS": "1"}, {"CI": "1", "KUMO_UPDATE_SNAPSHOTS": "1"}])
def test_a_missing_snapshot_fails_and_is_not_written(monkeypatch, tmp_path, env):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    missing = tmp_path / "plan-nowhere.json"
    with pytest.raises(pytest.fail.Exception, match=r"python -m tests\.update_snapshots nowhere"):
        compare_with_snapshot({"stack": "nowhere"}, "nowhere", missing)
    assert not missing.exists()


def test_a_different_snapshot_fails_naming_the_command(monkeypatch, tmp_path):
    monkeypatch.setenv("KUMO_UPDATE_SNAPSHOTS", "1")
    stored = tmp_path / "plan-x.json"
    stored.write_text('{"stack": "x", "resources": []}')
    with pytest.raises(AssertionError, match=r"python -m tests\.update_snapshots x"):
        compare_with_snapshot({"stack": "x", "resources": [1]}, "x", stored)
    assert stored.read_text() == '{"stack": "x", "resources": []}'  # untouched
    compare_with_snapshot({"resources": [], "stack": "x"}, "x", stored)  # equal: passes


def test_update_command_writes_the_snapshot_the_test_compares(monkeypatch, tmp_path):
    from tests import update_snapshots

    monkeypatch.setattr(update_snapshots, "SNAPSHOTS", tmp_path)
    assert update_snapshots.main(["gcp-dev"]) == 0
    written = json.loads((tmp_path / "plan-gcp-dev.json").read_text())
    assert written == json.loads(plan_json("gcp-dev").stdout)
    assert update_snapshots.main(["no-such-stack"]) == 2


@pytest.mark.parametrize("stack", STACKS)
def test_plan_table(stack):
    result = kumo("plan", "--stack", stack)
    assert result.returncode == 0, result.stderr
    assert f"stack {stack}" in result.stdout and "resources would be created" in result.stdout
    assert "nodes:" in result.stdout


def test_plan_of_bad_config_exits_2_before_any_resource(tmp_path):
    f = tmp_path / "Pulumi.bad.yaml"
    f.write_text("config:\n  kumo:deployment: {cloud: gcp, region: us-central1, name: ab, hostname: mta.example.com,"
                 " gcp: {project: my-project}, port25: {outbound: direct}}\n")
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


@pytest.mark.parametrize("stack, password", [
    ("azure-dev", "offline-generated-password-of-kumo-azdev-node1-admin-password"),
])
def test_plan_masks_generated_passwords(stack, password):
    result = kumo("plan", "--stack", stack, "--json")
    assert result.returncode == 0, result.stderr
    assert password not in result.stdout + result.stderr
    assert "offline-generated-password" not in result.stdout


API_STACK = ("config:\n  kumo:deployment: {cloud: gcp, region: us-central1, name: kumo-api, hostname: mta.example.com,"
             " gcp: {project: my-project}, network: {api_cidrs: [198.51.100.0/24]},"
             " port25: {outbound: relay, relay: {host: smtp.example.net, username: kumo}}}\n")


def test_plan_masks_the_api_password_and_shows_how_to_reach_the_api(tmp_path):
    f = tmp_path / "Pulumi.api.yaml"
    f.write_text(API_STACK)
    result = kumo("plan", "--config", str(f), "--json")
    assert result.returncode == 0, result.stderr
    assert "offline-generated-password" not in result.stdout + result.stderr
    doc = json.loads(result.stdout)
    [version] = [r for r in doc["resources"] if r["name"] == "kumo-api-api-password-version"]
    assert version["inputs"]["secretData"] == "[secret]"
    api = doc["outputs"]["api"]
    assert api["secret_name"] == "kumo-api-api-password" and api["user"] == "kumo-api"
    assert api["endpoints"][0]["url"] == "https://mta.example.com:8443"
    ip_url = api["endpoints"][0]["ip_url"]
    assert ip_url.startswith("https://192.0.2.") and ip_url.endswith(":8443")
    assert api["ca_certificate"].startswith("-----BEGIN CERTIFICATE-----")


def test_plan_never_shows_the_api_tls_private_key(tmp_path):
    f = tmp_path / "Pulumi.api.yaml"
    f.write_text(API_STACK)
    result = kumo("plan", "--config", str(f), "--json")
    assert result.returncode == 0, result.stderr
    assert "private key of" not in result.stdout + result.stderr  # neither offline form of any key
    doc = json.loads(result.stdout)
    resources = {r["name"]: r for r in doc["resources"]}
    assert resources["kumo-api-api-tls-key-version"]["inputs"]["secretData"] == "[secret]"
    assert resources["kumo-api-api-tls-cert"]["inputs"]["privateKeyPem"] == "[secret]"
    assert resources["kumo-api-api-tls-cert"]["inputs"]["dnsNames"] == ["mta.example.com"]


def test_plan_table_shows_how_to_reach_the_api(tmp_path):
    f = tmp_path / "Pulumi.api.yaml"
    f.write_text(API_STACK)
    result = kumo("plan", "--config", str(f))
    assert result.returncode == 0, result.stderr
    assert ("HTTP API (from 198.51.100.0/24): user kumo-api, password in the secret kumo-api-api-password"
            in result.stdout)
    assert "  mta.example.com: https://mta.example.com:8443 (by address: https://192.0.2." in result.stdout
    assert "certificate to trust: the api output's ca_certificate; pin: sha256//" in result.stdout
    no_api = kumo("plan", "--stack", "gcp-dev")
    assert "HTTP API" not in no_api.stdout

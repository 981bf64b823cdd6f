"""lifecycle.ephemeral under the mock engine: a destroyed ephemeral stack leaves nothing that costs
money and frees every name at once; a lasting stack keeps its spool volumes and recovery windows.

Each check runs the contract suite's deployment (tests/contract_deployments.py: two nodes, a block
spool, the relay password, a DKIM key, SSH and the API opened, so every secret the component can
store) through the real stack program and reads only recorded inputs and options. Each ephemeral
check has its lasting twin on the same deployment, so a component that ignored the flag, or applied
it to every stack, fails one of them.
"""

from __future__ import annotations

import re

import pytest

from kumo_infra import offline, targets
from kumo_infra.component import EPHEMERAL_TAG
from kumo_infra.config import parse_deployment
from kumo_infra.secretspec import secret_specs
from kumo_infra.targets import azure as azure_target
from tests.contract_deployments import case, plain
from tests.test_cloud_aws import too_many_dkim_domains
from tests.test_contract import deployment_of, run

TARGETS = list(targets.registry())
EPHEMERAL = {"lifecycle": {"ephemeral": True}}

AWS_SECRET = "aws:secretsmanager/secret:Secret"
AZURE_VAULT = "azure-native:keyvault:Vault"
AZURE_VM = "azure-native:compute:VirtualMachine"
GCP_SECRET = "gcp:secretmanager/secret:Secret"
GCP_INSTANCE = "gcp:compute/instance:Instance"
# A GCP label key and value (pulumi_gcp secretmanager/secret.py, labels: [\p{Ll}\p{Lo}][\p{Ll}\p{Lo}\p{N}_-]{0,62}
# and [\p{Ll}\p{Lo}\p{N}_-]{0,63}), here in ASCII: the one tag form every cloud takes.
GCP_LABEL_KEY = re.compile(r"[a-z][a-z0-9_-]{0,62}")
GCP_LABEL_VALUE = re.compile(r"[a-z0-9_-]{0,63}")


def both(target: str) -> tuple[offline.OfflineResult, offline.OfflineResult]:
    """The case's deployment run ephemeral and lasting (cached: each run takes seconds)."""
    if target not in _RUNS:
        c = case(target)
        _RUNS[target] = (run(target, deployment_of(c, **EPHEMERAL)), run(target, deployment_of(c)))
    return _RUNS[target]


_RUNS: dict[str, tuple[offline.OfflineResult, offline.OfflineResult]] = {}


def secrets_in_store(target: str) -> int:
    """How many secrets the case's deployment stores (relay, DKIM, API password, TLS key and certificate)."""
    return len(secret_specs(parse_deployment(deployment_of(case(target)))))


# -- every target: nothing protected, nothing retained -----------------------------------------------

@pytest.mark.parametrize("target", TARGETS)
def test_an_ephemeral_deployment_protects_and_retains_nothing(target):
    ephemeral, lasting = both(target)
    c = case(target)
    assert [r.name for r in ephemeral.resources if r.protect] == []
    assert [r.name for r in ephemeral.resources if r.retain_on_delete] == []
    # The same resources as the lasting stack (the flag changes how they go, not what is made), the
    # spool volumes among them where the target makes any.
    assert sorted((r.type, r.name) for r in ephemeral.resources) == sorted((r.type, r.name) for r in lasting.resources)
    assert len([r for r in ephemeral.resources if r.type in c.volumes]) == (2 if c.volumes else 0)


@pytest.mark.parametrize("target", [t for t in TARGETS if case(t).volumes])
def test_a_lasting_deployment_keeps_its_spool_volumes(target):
    _, lasting = both(target)
    volumes = [r for r in lasting.resources if r.type in case(target).volumes]
    assert len(volumes) == 2 and all(v.retain_on_delete for v in volumes)


# -- tags: leftovers can be found ---------------------------------------------------------------------

def tag_maps(value) -> list[dict]:
    """Every tag (label, metadata) map in recorded inputs: the maps carrying the base tag "kumo-infra"."""
    value = plain(value)
    if isinstance(value, dict):
        found = [value] if "kumo-infra" in value and "managed-by" in value else []
        return found + [m for v in value.values() for m in tag_maps(v)]
    if isinstance(value, list):
        return [m for v in value for m in tag_maps(v)]
    return []


@pytest.mark.parametrize("target", [t for t in TARGETS if case(t).machines])
def test_an_ephemeral_deployments_resources_carry_the_ephemeral_tag(target):
    ephemeral, lasting = both(target)
    tagged = [m for r in ephemeral.resources for m in tag_maps(r.inputs)]
    machines_tagged = [r.name for r in ephemeral.resources if r.type in case(target).machines and tag_maps(r.inputs)]
    assert len(machines_tagged) == 2 and len(tagged) >= 6
    assert all(m.get(EPHEMERAL_TAG) == "true" for m in tagged), [m for m in tagged if EPHEMERAL_TAG not in m]
    # One form valid on every cloud: a GCP label.
    assert GCP_LABEL_KEY.fullmatch(EPHEMERAL_TAG) and GCP_LABEL_VALUE.fullmatch("true")
    lasting_maps = [m for r in lasting.resources for m in tag_maps(r.inputs)]
    assert len(lasting_maps) == len(tagged) and not [m for m in lasting_maps if EPHEMERAL_TAG in m]


# -- the secret stores: deleted with no recovery window ------------------------------------------------

def test_aws_ephemeral_secrets_are_force_deleted():
    ephemeral, lasting = both("aws")
    windows = {s.inputs["name"]: s.inputs.get("recoveryWindowInDays") for s in ephemeral.of_type(AWS_SECRET)}
    assert set(ephemeral.outputs["secret_names"]) <= set(windows) and len(ephemeral.outputs["secret_names"]) == (
        secrets_in_store("aws"))
    assert set(windows.values()) == {0}
    assert {s.inputs.get("recoveryWindowInDays") for s in lasting.of_type(AWS_SECRET)} == {7}


def test_aws_ephemeral_node_files_bundle_is_force_deleted_too():
    """The node files kept in Secrets Manager when the user data cannot carry them are a secret like the others."""
    d = deployment_of(case("aws"), dkim={"domains": too_many_dkim_domains(60)}, **EPHEMERAL)
    result = run("aws", d)
    secrets = {s.name: s.inputs.get("recoveryWindowInDays") for s in result.of_type(AWS_SECRET)}
    assert secrets[f"{d['name']}-node-files-secret"] == 0 and set(secrets.values()) == {0}


def test_azure_ephemeral_vault_has_no_purge_protection():
    ephemeral, lasting = both("azure")
    (vault,) = ephemeral.of_type(AZURE_VAULT)
    props = plain(vault.inputs["properties"])
    # Omitted, never false: Azure refuses enablePurgeProtection false.
    assert "enablePurgeProtection" not in props
    assert props["enableSoftDelete"] is True and props["softDeleteRetentionInDays"] == 7
    (kept,) = lasting.of_type(AZURE_VAULT)
    assert plain(kept.inputs["properties"])["enablePurgeProtection"] is True
    assert len(ephemeral.of_type("azure-native:keyvault:Secret")) == secrets_in_store("azure")


def test_gcp_ephemeral_secrets_and_instances_are_deletable():
    ephemeral, lasting = both("gcp")
    secrets = ephemeral.of_type(GCP_SECRET)
    assert len(secrets) == secrets_in_store("gcp")
    assert {s.inputs.get("deletionProtection") for s in secrets} == {False}
    # Nothing GCP would keep after a delete: no delayed version destruction, no policy but DELETE.
    assert not [s.name for s in secrets if "versionDestroyTtl" in s.inputs or "deletionPolicy" in s.inputs]
    instances = ephemeral.of_type(GCP_INSTANCE)
    assert len(instances) == 2 and {i.inputs["deletionProtection"] for i in instances} == {False}
    # A lasting stack's secrets are as they were: no input added.
    assert not [s.name for s in lasting.of_type(GCP_SECRET) if "deletionProtection" in s.inputs]


# -- Azure: the console the smoke test reads ------------------------------------------------------------

BOOT_DIAGNOSTICS = {"bootDiagnostics": {"enabled": True}}  # no storageUri: managed storage


def test_azure_ephemeral_vms_have_managed_boot_diagnostics():
    ephemeral, lasting = both("azure")
    vms = ephemeral.of_type(AZURE_VM)
    assert len(vms) == 2 and all(plain(vm.inputs.get("diagnosticsProfile")) == BOOT_DIAGNOSTICS for vm in vms)
    assert not [vm.name for vm in lasting.of_type(AZURE_VM) if "diagnosticsProfile" in vm.inputs]


def test_azure_boot_diagnostics_can_be_opted_into_by_a_lasting_stack():
    c = case("azure")
    result = run("azure", deployment_of(c, azure={**c.deployment["azure"], "boot_diagnostics": True}))
    assert [plain(vm.inputs.get("diagnosticsProfile")) for vm in result.of_type(AZURE_VM)] == [BOOT_DIAGNOSTICS] * 2


# -- Azure: the soft-deleted vault is purged after the destroy --------------------------------------------

def test_azure_purge_after_destroy_names_the_vault_the_component_creates():
    ephemeral, _ = both("azure")
    d = parse_deployment(deployment_of(case("azure"), **EPHEMERAL))
    (vault,) = ephemeral.of_type(AZURE_VAULT)
    expected = [("az", "keyvault", "purge", "--name", vault.inputs["vaultName"], "--location", "westeurope")]
    assert azure_target.purge_after_destroy(d) == expected
    # As kumo_infra.ephemeral reaches it: through the registry.
    assert targets.get("azure").after_destroy_commands(d) == expected


def test_azure_purge_after_destroy_only_for_an_ephemeral_deployment_with_secrets():
    c = case("azure")
    assert azure_target.purge_after_destroy(parse_deployment(deployment_of(c))) == []
    # Direct sending (an EA subscription), no DKIM, no API, one node: no secret, so no vault to purge.
    bare = {**c.deployment, "port25": {"outbound": "direct"}, "dkim": {"domains": []},
            "azure": {**c.deployment["azure"], "subscription_type": "ea"}, "network": {}, **EPHEMERAL,
            # One node: a fleet has secrets of its own (its Redis URL and peer list, kumo_infra.fleet).
            "nodes": 1}
    result = run("azure", bare, relay_password=None)
    assert result.of_type(AZURE_VAULT) == [] and result.of_type("azure-native:compute:Disk")
    assert azure_target.purge_after_destroy(parse_deployment(bare)) == []


@pytest.mark.parametrize("target", [t for t in TARGETS if t != "azure"])
def test_other_targets_leave_nothing_to_remove_after_destroy(target):
    """Their stores delete at once (AWS force delete, GCP immediate); an existing machine is the operator's."""
    d = parse_deployment(deployment_of(case(target), **EPHEMERAL))
    assert targets.get(target).after_destroy_commands(d) == []

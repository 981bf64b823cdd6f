"""The CrossGuard policy pack ``policy/``: kumo_infra.guardrails as pulumi_policy policies.

pulumi-policy pins an older protobuf than the project's SDKs, so the pack has its own environment,
policy/venv, the one Pulumi itself creates from PulumiPolicy.yaml (built here from
policy/requirements.txt when missing or stale). tests/policy_pack_probe.py runs in it and hands the
pack recorded plans as the engine does: ``ResourceValidationArgs``/``StackValidationArgs`` built the way
pulumi_policy builds them, and the analyzer servicer answering the engine's own protobuf requests
(without its server: constructing ``PolicyPack`` serves forever). Every plan's violations are
exactly guardrails' own. What only the Pulumi CLI shows (``pulumi preview --policy-pack policy``
loading the pack) does not run here.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import subprocess
import sys
from typing import Any

import pytest
import yaml
from pulumi.runtime.rpc import UNKNOWN

from kumo_infra import guardrails, offline
from tests.conftest import ROOT
from tests.test_guardrails import BREAKS, CASES, Break, neighbours, planned

POLICY = ROOT / "policy"
VENV = POLICY / "venv"
PYTHON = VENV / "bin" / "python"
PROBE = ROOT / "tests" / "policy_pack_probe.py"
# pulumi_policy's wire signatures (pulumi_policy/deserialize.py), the engine's for an asset.
SIG_KEY, ASSET_SIG = offline.SECRET_SIG_KEY, "c44067f5952c0a294b673a41bacd8c17"
ACROSS = "-across-resources"


@functools.cache
def policy_python() -> str:
    """policy/venv, made as Pulumi makes the pack's environment, again whenever requirements.txt changes."""
    wanted = hashlib.sha256((POLICY / "requirements.txt").read_bytes()).hexdigest()
    marker = VENV / ".kumo-infra-requirements"
    if not (PYTHON.exists() and marker.exists() and marker.read_text() == wanted):
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True, capture_output=True)
        done = subprocess.run([str(PYTHON), "-m", "pip", "install", "-q", "--disable-pip-version-check", "-r",
                               str(POLICY / "requirements.txt")], capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, f"installing policy/requirements.txt failed:\n{done.stderr[-3000:]}"
        marker.write_text(wanted)
    return str(PYTHON)


def probe(mode: str, doc: Any = None) -> Any:
    done = subprocess.run([policy_python(), str(PROBE), mode], input=json.dumps(doc or {}), cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-5000:]
    return json.loads(done.stdout)


def wire(value: Any) -> Any:
    """Recorded inputs in the engine's wire form: the recorder keeps secrets as their signature maps
    already and writes an asset as {"asset": {"text": ...}}."""
    if isinstance(value, dict):
        asset = value.get("asset")
        if set(value) == {"asset"} and isinstance(asset, dict) and "text" in asset:
            return {SIG_KEY: ASSET_SIG, "text": asset["text"]}
        return {k: wire(v) for k, v in value.items()}
    if isinstance(value, list):
        return [wire(v) for v in value]
    return value


def engine_view(r: guardrails.Resource, inputs: Any = None) -> dict:
    return {"type": r.type, "name": r.name, "urn": r.urn or f"urn:test::{r.type}::{r.name}",
            "props": wire(dict(r.props) if inputs is None else inputs), "dependencies": list(r.dependencies)}


def example_plan(case: str) -> list[dict]:
    """An example's resources as recorded: secrets still in their envelopes (Azure's whole osProfile)."""
    p = planned(case)
    return [engine_view(r, p.result.named(r.name, r.type).inputs) for r in p.resources]


def broken_plan(b: Break) -> list[dict]:
    base = b.first(planned(b.case).resources)
    return [engine_view(r) for r in b.breaks(base)]


def own_violations(plan: list[dict]) -> set[tuple[str, str, str]]:
    """guardrails' own verdict on the same resources (opened), knowing no secret value, as the pack knows none."""
    resources = [guardrails.Resource(r["type"], r["name"], _opened(r["props"]), r["urn"], tuple(r["dependencies"]))
                 for r in plan]
    return {(v.rule, v.resource, v.message) for v in guardrails.check_resources(resources)}


def _opened(value: Any) -> Any:
    if isinstance(value, dict):
        if value.get(SIG_KEY) == ASSET_SIG:
            return {"asset": {"text": value["text"]}}
        if offline.is_secret(value):
            return _opened(value["value"])
        return {k: _opened(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_opened(v) for v in value]
    return value


RULES = {r.name: r for r in guardrails.RULES}


def rule_of(policy: str) -> guardrails.Rule:
    return RULES[policy.removesuffix(ACROSS)]


def reported(entry: dict) -> tuple[str, str, str]:
    """A pack report as (rule, urn, guardrails' message): the pack adds the fix, the servicer the description."""
    rule = rule_of(entry["policy"])
    message = entry["message"].removeprefix(f"{rule.description}\n")
    suffix = f"\nFix: {rule.remediation}"
    assert message.endswith(suffix), entry
    return rule.name, entry["urn"], message.removesuffix(suffix)


PLANS: dict[str, Any] = {
    **{f"example {case}": functools.partial(example_plan, case) for case in CASES},
    **{f"broken {b.id}": functools.partial(broken_plan, b) for b in BREAKS},
    "neighbours": lambda: [engine_view(r) for r in neighbours().values()],
}


@functools.cache
def pack_reports() -> tuple[dict[str, list[dict]], dict[str, Any]]:
    plans = {name: make() for name, make in PLANS.items()}
    return plans, probe("plans", {"plans": plans})


@pytest.mark.parametrize("plan", PLANS)
def test_the_pack_reports_exactly_what_guardrails_find(plan):
    """Both ways the engine calls a policy give guardrails' own violations, no more, no fewer."""
    plans, answers = pack_reports()
    expected = own_violations(plans[plan])
    answer = answers[plan]
    assert not [e for e in answer["direct"] if "unknown" in e]
    assert {reported(e) for e in answer["direct"]} == expected
    assert len(answer["direct"]) == len(expected)  # nothing reported twice
    assert {reported(e) for e in answer["served"]} == expected
    for entry in answer["served"]:
        assert entry["level"] == rule_of(entry["policy"]).level and entry["description"] == rule_of(
            entry["policy"]).description


def test_the_pack_sees_through_secrets_and_assets():
    """Not vacuous: every broken plan trips its rule in the pack too, Azure's custom data inside its secret
    osProfile and the ssh installer as an asset included."""
    plans, answers = pack_reports()
    for b in BREAKS:
        if not b.id.startswith("secret-config-value"):  # the pack knows no secret value
            assert b.rule in {rule_of(e["policy"]).name for e in answers[f"broken {b.id}"]["served"]}, b.id
    azure = next(r for r in plans["example stack azure-dev"] if r["type"] == guardrails.AZURE_VM)
    assert offline.is_secret(azure["props"]["osProfile"])
    ssh = next(r for r in plans["example stack ssh-lab"] if r["type"] == guardrails.SSH_COPY)
    assert ssh["props"]["source"][SIG_KEY] == ASSET_SIG


def unknown_at(path: str) -> list[dict]:
    """aws-prod's plan at preview: the value at ``path`` of its instance not known yet."""
    plan = example_plan("stack aws-prod")
    (vm,) = [r for r in plan if r["type"] == guardrails.AWS_INSTANCE]
    *parents, leaf = path.split(".")
    holder = vm["props"]
    for key in parents:
        holder = holder[key]
    holder[leaf] = UNKNOWN
    return plan


def test_an_unknown_value_a_rule_needs_makes_the_engine_say_it_could_not_run():
    answer = probe("plans", {"plans": {"preview": unknown_at("metadataOptions.httpTokens")}})["preview"]
    (cannot,) = [e for e in answer["served"] if "during preview" in e["message"]]
    assert cannot["policy"] == "kumo-aws-imdsv2-required" and cannot["level"] == "advisory"
    assert "string value at .metadataOptions.httpTokens can't be known during preview" in cannot["message"]
    assert {e["policy"] for e in answer["direct"] if "unknown" in e} == {"kumo-aws-imdsv2-required"}


def test_an_unknown_value_no_rule_reads_changes_nothing():
    answer = probe("plans", {"plans": {"preview": unknown_at("subnetId")}})["preview"]
    assert not [e for e in answer["served"] if "during preview" in e["message"]]
    assert {reported(e) for e in answer["served"]} == own_violations(example_plan("stack aws-prod"))


@functools.cache
def built() -> dict:
    return probe("pack")


def test_main_builds_the_pack_from_every_rule():
    pack = built()["pack"]
    assert pack["name"] == "kumo-infra" and pack["enforcement_level"] == "advisory" and pack["rest"] == []
    expected = []
    for rule in guardrails.RULES:
        if rule.check_resource:
            expected.append((rule.name, "ResourceValidationPolicy"))
        if rule.check_stack:
            expected.append((rule.name + (ACROSS if rule.check_resource else ""), "StackValidationPolicy"))
    assert [(p["name"], p["kind"]) for p in pack["policies"]] == expected
    for policy in pack["policies"]:
        rule = rule_of(policy["name"])
        assert (policy["level"], policy["description"], policy["remediation"]) == (
            rule.level, rule.description, rule.remediation)


def test_the_packs_environment_is_pulumi_policy_alone():
    """Pinned pulumi-policy, no pydantic and no cloud SDK: guardrails runs on the standard library."""
    env = built()["environment"]
    pins = dict(line.split("==") for line in (POLICY / "requirements.txt").read_text().splitlines()
                if line and not line.startswith("#"))
    assert env["pulumi_policy"] == pins["pulumi-policy"]
    assert env["importable"] == {"pydantic": False, "pulumi_aws": False, "kumo_infra.config": False}


def test_the_project_file_is_a_python_pack_in_the_environment_the_tests_build():
    project = yaml.safe_load((POLICY / "PulumiPolicy.yaml").read_text())
    assert project["runtime"] == {"name": "python", "options": {"toolchain": "pip", "virtualenv": VENV.name}}
    assert project["version"] and project["description"]
    assert (POLICY / ".gitignore").read_text().split() == [f"{VENV.name}/"]


def test_the_packs_readme_lists_every_rule_at_its_level():
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `([a-z0-9-]+)` \| (mandatory|advisory) \|",
                                                       (POLICY / "README.md").read_text(), re.M)}
    assert rows == {r.name: r.level for r in guardrails.RULES}

"""The Pulumi program itself, run under the SDK's mock engine."""

from __future__ import annotations

import json

import pulumi
import pytest
import yaml

from kumo_infra import offline, program
from kumo_infra.stackconfig import load_file
from tests.conftest import ROOT, STACKS


def stack_values(stack: str) -> dict:
    values = yaml.safe_load((ROOT / "stacks" / f"Pulumi.{stack}.yaml").read_text())["config"]
    values["kumo:relayPassword"] = "test-relay-password"
    return values


@pytest.mark.parametrize("stack", STACKS)
def test_program_exports_the_sizing_plan(stack):
    result = offline.run(program.run, stack_values(stack), stack=stack, secret_keys=["kumo:relayPassword"])
    expected = load_file(ROOT / "stacks" / f"Pulumi.{stack}.yaml").plan
    assert result.outputs["sizing"]["instance_type"] == expected.instance_type
    assert result.outputs["sizing"]["nodes"] == expected.nodes


def test_bad_config_stops_the_program_before_any_resource():
    values = stack_values("aws-dev")
    values["kumo:deployment"]["sizing"]["messages_per_hour"] = 0
    with pytest.raises(pulumi.RunError, match=r"kumo:deployment\.sizing\.messages_per_hour"):
        offline.run(program.run, values, stack="aws-dev")


def test_relay_mode_without_its_password_stops_before_any_resource():
    values = stack_values("gcp-dev")
    del values["kumo:relayPassword"]
    with pytest.raises(pulumi.RunError, match="kumo:relayPassword"):
        offline.run(program.run, values, stack="gcp-dev")


def test_duplicate_names_are_caught_like_the_real_engine():
    import pulumi_aws as aws

    def twice():
        aws.ec2.Eip("same", domain="vpc")
        aws.ec2.Eip("same", domain="vpc")

    with pytest.raises(Exception, match="duplicate resource name"):
        offline.run(twice, {}, stack="dup")


def test_components_check_a_deployment_model_built_by_the_caller():
    from kumo_infra.clouds.common import prepare
    from kumo_infra.config import Deployment
    from kumo_infra.errors import ConfigError

    # model_construct skips validation, as a caller's own code might: prepare still applies the rules.
    unchecked = Deployment.model_construct(**Deployment.model_validate(
        {"cloud": "gcp", "region": "us-central1", "name": "ab", "hostname": "mta.example.com",
         "gcp": {"project": "my-project"}, "port25": {"outbound": "relay", "relay": {"host": "smtp.example.net",
                                                                              "username": "u"}}}).__dict__)
    with pytest.raises(ConfigError, match="kumo:relayPassword"):
        prepare({"deployment": unchecked}, "gcp")
    broken = unchecked.model_copy(update={"port25": unchecked.port25.model_copy(update={"outbound": "direct"})})
    with pytest.raises(ConfigError, match="GCP blocks outbound port 25"):
        prepare({"deployment": broken, "relay_password": "x"}, "gcp")


def test_offline_plan_drops_sdk_aliases_and_records_the_same_resource(monkeypatch):
    """azure-native declares dozens of aliases per resource; the offline plan skips them (speed)."""
    import pulumi_azure_native as azure_native

    def make(made):
        def program():
            made.append(azure_native.resources.ResourceGroup("rg", location="westeurope"))
        return program

    made: list = []
    result = offline.run(make(made), {}, stack="t")
    assert made[0]._aliases == []
    assert result.one("azure-native:resources:ResourceGroup").inputs == {"location": "westeurope"}

    # Without the transformation the same resource carries the SDK's aliases: the check above can fail.
    monkeypatch.setattr(offline, "_without_aliases", lambda args: None)
    kept: list = []
    again = offline.run(make(kept), {}, stack="t")
    assert len(kept[0]._aliases) > 10
    assert again.one("azure-native:resources:ResourceGroup").to_dict() == result.one("azure-native:resources:ResourceGroup").to_dict()


def test_program_exports_how_to_reach_the_api_and_no_private_key():
    values = stack_values("gcp-dev")
    values["kumo:deployment"]["network"] = {"api_cidrs": ["198.51.100.0/24"]}
    result = offline.run(program.run, values, stack="gcp-dev", secret_keys=["kumo:relayPassword"])
    api = result.outputs["api"]
    assert api["user"] == "kumo-api" and api["secret_name"] == "kumo-gcpdev-api-password"
    assert [e["url"] for e in api["endpoints"]] == [f"https://{n['hostname']}:8443" for n in result.outputs["nodes"]]
    assert [e["ip_url"] for e in api["endpoints"]] == [f"https://{ip}:8443" for ip in result.outputs["public_ips"]]
    assert api["ca_certificate"].startswith("-----BEGIN CERTIFICATE-----")  # public, exported plainly
    assert "ssh_private_key" not in result.outputs
    assert "offline-generated-password" not in str(result.outputs)
    assert "PRIVATE KEY" not in json.dumps(result.outputs)


def test_program_exports_a_null_api_without_api_cidrs():
    result = offline.run(program.run, stack_values("gcp-dev"), stack="gcp-dev", secret_keys=["kumo:relayPassword"])
    assert result.outputs["api"] is None


def test_refusal_keeps_the_config_problems_for_the_cli():
    values = stack_values("aws-dev")
    values["kumo:deployment"]["sizing"]["messages_per_hour"] = 0
    with pytest.raises(program.StackConfigError) as info:
        offline.run(program.run, values, stack="aws-dev")
    assert isinstance(info.value, pulumi.RunError)  # Pulumi prints it without a traceback
    assert [p.path for p in info.value.config_error.problems] == ["kumo:deployment.sizing.messages_per_hour"]


def test_offline_engine_answers_a_generated_password_as_a_secret():
    """As the real engine does for pulumi-random's additionalSecretOutputs (result, bcryptHash)."""
    import pulumi_random
    from pulumi.runtime.sync_await import _sync_await

    seen = {}

    def prog():
        password = pulumi_random.RandomPassword("pw", length=12)
        seen["secret"] = _sync_await(password.result.is_secret())
        seen["value"] = _sync_await(password.result.future())
        seen["hash_secret"] = _sync_await(password.bcrypt_hash.is_secret())

    offline.run(prog, {}, stack="t")
    assert seen == {"secret": True, "value": "offline-generated-password-of-pw", "hash_secret": True}

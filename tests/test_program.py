"""The Pulumi program itself, run under the SDK's mock engine."""

from __future__ import annotations

import json

import pulumi
import pytest
import yaml

from kumo_infra import offline, program, targets
from kumo_infra.stackconfig import load_file
from tests.conftest import ROOT, STACKS


def stack_values(stack: str) -> dict:
    """The stack file's config, with a test value for every secret key a target's component takes."""
    values = yaml.safe_load((ROOT / "stacks" / f"Pulumi.{stack}.yaml").read_text())["config"]
    values["kumo:relayPassword"] = "test-relay-password"
    values["kumo:redisPassword"] = "test-redis-password"  # a fleet's own Redis (ssh-lab)
    for target in targets.registry().values():
        for key in target.secret_config.values():
            values.setdefault(key, f"test value of {key}")
    return values


@pytest.mark.parametrize("stack", STACKS)
def test_program_exports_the_sizing_plan(stack):
    result = offline.run(program.run, stack_values(stack), stack=stack,
                         secret_keys=["kumo:relayPassword", "kumo:redisPassword"])
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
    from kumo_infra.component import prepare
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


def test_offline_plan_drops_sdk_aliases_and_records_the_same_resource():
    """azure-native declares dozens of aliases per resource; the offline plan skips them (speed)."""
    import pulumi_azure_native as azure_native

    def program():
        azure_native.resources.ResourceGroup("rg", location="westeurope")

    result = offline.run(program, {}, stack="t")
    assert result.one("azure-native:resources:ResourceGroup").aliases == []
    assert result.one("azure-native:resources:ResourceGroup").inputs == {"location": "westeurope"}

    # A run that keeps every alias (prior_urns) records the SDK's: the check above can fail.
    again = offline.run(program, {}, stack="t", prior_urns=[])
    assert len(again.one("azure-native:resources:ResourceGroup").aliases) > 10
    assert again.one("azure-native:resources:ResourceGroup").to_dict() == result.one(
        "azure-native:resources:ResourceGroup").to_dict()


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


# -- what the offline engine records besides inputs -------------------------------------------------

def test_recorded_resources_carry_their_options_and_dependencies():
    import pulumi_aws as aws

    def prog():
        parent = pulumi.ComponentResource("test:index:Thing", "thing")
        vol = aws.ebs.Volume("vol", availability_zone="zone-a", size=8,
                             opts=pulumi.ResourceOptions(parent=parent, protect=True, retain_on_delete=True))
        aws.ec2.VolumeAttachment("att", device_name="/dev/sdf", volume_id=vol.id, instance_id="i-1",
                                 opts=pulumi.ResourceOptions(parent=parent, delete_before_replace=True,
                                                             ignore_changes=["instanceId"],
                                                             replace_on_changes=["deviceName"],
                                                             additional_secret_outputs=["volumeId"]))
        aws.ec2.Eip("eip", domain="vpc", opts=pulumi.ResourceOptions(depends_on=[vol]))

    r = offline.run(prog, {}, stack="t")
    vol, att, eip = r.named("vol"), r.named("att"), r.named("eip")
    assert (vol.protect, vol.retain_on_delete, vol.delete_before_replace) == (True, True, False)
    assert (att.protect, att.retain_on_delete, att.delete_before_replace) == (False, False, True)
    assert att.ignore_changes == ["instanceId"] and att.replace_on_changes == ["deviceName"]
    assert att.additional_secret_outputs == ["volumeId"]
    assert att.dependencies == [vol.urn] and att.depends_on_names == ["vol"]  # from the volume_id input
    assert eip.depends_on_names == ["vol"]  # explicit depends_on
    assert vol.parent == "thing" and vol.parent_urn == r.named("thing").urn
    assert eip.parent is None and eip.parent_urn is None
    # The engine's URNs: a child of the stack has no parent type, a grandchild its parents' types.
    assert vol.urn == "urn:pulumi:t::kumo-infra::test:index:Thing$aws:ebs/volume:Volume::vol"
    assert eip.urn == "urn:pulumi:t::kumo-infra::aws:ec2/eip:Eip::eip"


def test_assets_are_recorded_as_their_content():
    import pulumi_aws as aws

    def prog():
        aws.s3.BucketObjectv2("text", bucket="b", key="k", source=pulumi.StringAsset("hello"))
        aws.s3.BucketObjectv2("file", bucket="b", key="f", source=pulumi.FileAsset("/etc/hostname"))
        aws.lambda_.Function("fn", role="r", runtime="python3.12", handler="h.main",
                             code=pulumi.AssetArchive({"h.py": pulumi.StringAsset("def main(): pass"),
                                                       "lib": pulumi.FileArchive("/tmp")}))

    r = offline.run(prog, {}, stack="t")
    assert r.named("text").inputs["source"] == {"asset": {"text": "hello"}}
    assert r.named("file").inputs["source"] == {"asset": {"path": "/etc/hostname"}}
    assert r.named("fn").inputs["code"] == {"archive": {"assets": {
        "h.py": {"asset": {"text": "def main(): pass"}}, "lib": {"archive": {"path": "/tmp"}}}}}


def test_own_aliases_are_recorded_and_the_sdks_dropped():
    import pulumi_azure_native as azure_native

    def prog():
        azure_native.resources.ResourceGroup("rg", location="westeurope",
                                             opts=pulumi.ResourceOptions(aliases=[pulumi.Alias(name="old-rg")]))

    rg = offline.run(prog, {}, stack="t").one("azure-native:resources:ResourceGroup")
    assert rg.alias_names == ["old-rg"]
    assert len(rg.aliases) == 1  # not azure-native's ~25 type aliases


def test_prior_urns_keep_every_alias_as_a_full_urn_and_hand_over_the_state():
    """With prior_urns the SDK computes each alias URN itself (the monitor refuses alias specs), and
    a resource whose alias names a prior URN gets that resource's id and computed outputs."""
    import pulumi_aws as aws

    # Children of a component, as kumo-infra's are.
    prefix = "urn:pulumi:t::kumo-infra::test:index:Thing$aws:ec2/eip:Eip::"

    def program(*eips: tuple[str, list[str]]):
        def prog():
            parent = pulumi.ComponentResource("test:index:Thing", "thing")
            made = [aws.ec2.Eip(name, domain="vpc", opts=pulumi.ResourceOptions(
                parent=parent, aliases=[pulumi.Alias(name=a) for a in aliases])) for name, aliases in eips]
            aws.ec2.EipDomainName("ptr", allocation_id=made[0].allocation_id, domain_name="mta.example.com",
                                  opts=pulumi.ResourceOptions(parent=parent))
        return prog

    renamed = program(("new-ip", ["old-eip"]), ("other", ["never-was"]))
    adopted = offline.run(renamed, {}, stack="t", prior_urns=[prefix + "old-eip"])
    assert adopted.named("new-ip").aliases == [prefix + "old-eip"]
    assert adopted.named("other").aliases == [prefix + "never-was"]
    normal = offline.run(renamed, {}, stack="t")
    assert normal.named("new-ip").alias_names == ["old-eip"]
    assert isinstance(normal.named("new-ip").aliases[0], dict)  # a spec: the engine computes the URN
    # The PTR reads the allocation id the engine keeps from the old Elastic IP.
    before = offline.run(program(("old-eip", [])), {}, stack="t")
    assert before.named("old-eip").urn == prefix + "old-eip"
    assert adopted.named("ptr").inputs["allocationId"] == before.named("ptr").inputs["allocationId"]
    assert normal.named("ptr").inputs["allocationId"] != before.named("ptr").inputs["allocationId"]


SEEN_ARGS: dict = {}


def _probe_component():
    from kumo_infra.targets.aws.component import AwsKumoMta

    class Probe(AwsKumoMta):
        def __init__(self, name, args, opts=None):
            SEEN_ARGS.update(args)
            super().__init__(name, args, opts)

    return Probe


def test_program_passes_the_targets_secret_config_to_its_component_as_secrets(monkeypatch):
    import dataclasses

    from pulumi.runtime.sync_await import _sync_await

    from kumo_infra import targets

    aws = targets.get("aws")
    monkeypatch.setitem(targets.registry(), "aws", dataclasses.replace(aws, secret_config={"token": "kumo:apiToken"}))
    monkeypatch.setattr(type(aws), "component_class", lambda self: _probe_component())
    SEEN_ARGS.clear()
    seen = {}

    def prog():
        program.run()
        seen["secret"] = _sync_await(SEEN_ARGS["token"].is_secret())
        seen["value"] = _sync_await(SEEN_ARGS["token"].future())

    values = stack_values("aws-dev")
    values["kumo:apiToken"] = "t0ken"
    offline.run(prog, values, stack="aws-dev", secret_keys=["kumo:relayPassword", "kumo:apiToken"])
    assert seen == {"secret": True, "value": "t0ken"}
    SEEN_ARGS.clear()
    del values["kumo:apiToken"]
    offline.run(program.run, values, stack="aws-dev", secret_keys=["kumo:relayPassword"])
    assert "token" not in SEEN_ARGS  # unset: not passed (the target's checks say what is missing)


def test_program_passes_the_redis_password_to_a_fleets_component_as_a_secret(monkeypatch):
    from pulumi.runtime.sync_await import _sync_await

    from kumo_infra.targets.ssh.component import SshKumoMta

    seen = {}
    original = SshKumoMta.__init__

    def probe(self, name, args, opts=None):
        seen["secret"] = _sync_await(args["redis_password"].is_secret())
        seen["value"] = _sync_await(args["redis_password"].future())
        original(self, name, args, opts)

    monkeypatch.setattr(SshKumoMta, "__init__", probe)
    result = offline.run(program.run, stack_values("ssh-lab"), stack="ssh-lab",
                         secret_keys=["kumo:relayPassword", "kumo:redisPassword", "kumo:sshPrivateKey"])
    assert seen == {"secret": True, "value": "test-redis-password"}
    assert result.outputs["fleet"]["redis"]["endpoint"] == "redis.example.com:6379"
    assert "test-redis-password" not in json.dumps(result.outputs)

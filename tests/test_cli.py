"""The kumo-infra command as an operator runs it: real processes, exit codes, stderr."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, STACKS


def kumo(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kumo_infra.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def assert_bad_input(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


def test_example_stacks_exist():
    assert {"aws-dev", "aws-prod", "azure-dev", "gcp-dev"} <= set(STACKS)


@pytest.mark.parametrize("stack", STACKS)
def test_every_example_stack_validates(stack):
    result = kumo("validate", "--stack", stack)
    assert result.returncode == 0, result.stderr
    assert f"stack {stack}: valid" in result.stdout


def test_validate_a_file_by_path(tmp_path):
    f = tmp_path / "Pulumi.mine.yaml"
    f.write_text((ROOT / "stacks" / "Pulumi.aws-dev.yaml").read_text())
    result = kumo("validate", "--config", str(f), cwd=tmp_path)
    assert result.returncode == 0 and "stack mine: valid" in result.stdout


def test_size_json_has_the_contract_fields():
    result = kumo("size", "--cloud", "aws", "--messages-per-hour", "1000000", "--avg-message-kb", "50", "--json")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    for key in ("cloud", "instance_type", "nodes", "vcpu", "memory_gib", "local_nvme_gb", "baseline_gbps",
                "required_mbps", "price_usd_hour", "reasons"):
        assert key in plan
    assert plan["required_mbps"] == pytest.approx(111.1 * 1.5, abs=0.2)


def test_size_table_for_a_stack():
    result = kumo("size", "--stack", "aws-prod")
    assert result.returncode == 0, result.stderr
    assert "instance type" in result.stdout and "decided by" in result.stdout
    assert "local NVMe" in result.stderr  # the data-loss trade-off is always said


def test_size_performance_profile():
    result = kumo("size", "--cloud", "gcp", "--messages-per-hour", "4000000", "--avg-message-kb", "50",
                  "--profile", "performance", "--json")
    plan = json.loads(result.stdout)
    assert plan["local_nvme_gb"] > 0 and plan["baseline_gbps"] >= 10


def test_size_list_catalog():
    result = kumo("size", "--cloud", "azure", "--list")
    assert result.returncode == 0 and "Standard_L8s_v3" in result.stdout


def test_size_cloud_choices_are_the_registered_targets():
    from kumo_infra import cli, targets

    size = next(a for a in cli.build_parser()._subparsers._group_actions[0].choices["size"]._actions
                if "--cloud" in a.option_strings)
    assert tuple(size.choices) == targets.names()
    assert_bad_input(kumo("size", "--list"), "--cloud: --list needs --cloud aws|azure|gcp")


@pytest.mark.parametrize("args, fragments", [
    ((), ["the following arguments are required"]),
    (("size",), ["--cloud"]),
    (("size", "--cloud", "aws", "--messages-per-hour", "0", "--avg-message-kb", "5"), ["--messages-per-hour"]),
    (("size", "--cloud", "aws", "--messages-per-hour", "lots", "--avg-message-kb", "5"), ["invalid int value"]),
    # Flags have the limits of the stack keys they stand for.
    (("size", "--cloud", "aws", "--messages-per-hour", "5", "--avg-message-kb", "5", "--headroom", "0.5"),
     ["--headroom", "greater than or equal to 1"]),
    (("size", "--cloud", "aws", "--messages-per-hour", "5", "--avg-message-kb", "50001"), ["--avg-message-kb"]),
    (("size", "--cloud", "aws", "--messages-per-hour", "5", "--avg-message-kb", "5", "--nodes", "500"),
     ["--nodes", "less than or equal to 100"]),
    (("size", "--cloud", "aws", "--messages-per-hour", "5", "--avg-message-kb", "5", "--profile", "performance",
      "--storage", "block"), ["--storage", "local NVMe"]),
    (("size", "--cloud", "oracle", "--messages-per-hour", "5", "--avg-message-kb", "5"), ["invalid choice"]),
    (("size", "--cloud", "aws", "--messages-per-hour", "5", "--avg-message-kb", "5", "--instance-type", "x9.huge"),
     ["kumo:deployment.sizing.instance_type", "not in kumo-infra's aws catalog"]),
    (("validate",), ["one of the arguments --stack --config is required"]),
    (("validate", "--stack", "nope"), ["--stack", "known stacks: aws-dev"]),
    (("validate", "--config", "/nonexistent.yaml"), ["file not found"]),
    (("validate", "--stack", "aws-dev", "--config", "x"), ["not allowed with argument"]),
])
def test_bad_arguments_exit_2_without_traceback(args, fragments):
    assert_bad_input(kumo(*args), *fragments)


@pytest.mark.parametrize("content, fragments", [
    ("config: [", ["is not valid YAML"]),
    ("just: text\n", ["top-level 'config:' mapping"]),
    ("config:\n  kumo:deployment:\n    cloud: aws\n", ["kumo:deployment.region: required key is missing"]),
    ("config:\n  kumo:deploymnet: {}\n", ["kumo:deploymnet: unknown key", "kumo:deployment: required"]),
    ("config:\n  kumo:relayPassword: hunter2\n  kumo:deployment: {cloud: aws, region: us-east-1, name: ab,"
     " hostname: mta.example.com}\n", ["kumo:relayPassword: must be stored encrypted"]),
    ("config:\n  kumo:deployment: {cloud: aws, region: us-east-1, name: ab, hostname: mta.example.com,"
     " sizing: {messages_per_hour: -3}}\n", ["kumo:deployment.sizing.messages_per_hour"]),
    ("config:\n  kumo:deployment: {cloud: aws, region: us-east-1, name: ab, hostname: mta.example.com,"
     " os: centos7}\n", ["kumo:deployment.os", "CentOS 7 is end of life"]),
    ("config:\n  kumo:deployment: {cloud: aws, region: us-east-1, name: ab, hostname: mta.example.com,"
     " spool: {storage: local_nvme}, sizing: {instance_type: t3.medium}}\n", ["no local NVMe"]),
])
def test_bad_stack_files_exit_2_naming_the_key(tmp_path, content, fragments):
    f = tmp_path / "Pulumi.bad.yaml"
    f.write_text(content)
    assert_bad_input(kumo("validate", "--config", str(f)), *fragments)


@pytest.mark.parametrize("node", ["1", "-1", "100000000000000000000"])
def test_render_node_out_of_range_exits_2_naming_the_flag(node):
    result = kumo("render", "--stack", "aws-dev", "--node", node)
    assert_bad_input(result, "--node", "stack aws-dev has 1 node(s), numbered from 0")
    assert result.stdout == ""  # nothing rendered


def test_render_node_that_is_not_a_number_exits_2():
    assert_bad_input(kumo("render", "--stack", "aws-dev", "--node", "x"), "--node", "invalid int value")


@pytest.mark.parametrize("content, fragments", [
    # YAML keys that are not strings, at the top and inside the deployment.
    ("config:\n  1: 2\n  kumo:deployment: {cloud: aws, region: us-east-1, name: ab, hostname: mta.example.com}\n",
     ["config.1: a config key must be a string"]),
    ("config:\n  kumo:deployment: {cloud: aws, region: us-east-1, name: ab, hostname: mta.example.com, 7: x}\n",
     ["kumo:deployment[7]: Keys should be strings"]),
    # Nested deeper than PyYAML's recursive composer can go.
    ("config: " + "[" * 5000 + "]" * 5000 + "\n", ["nested too deeply"]),
    # A NUL byte in the file itself (not an escape): YAML refuses it.
    ("config:\n  kumo:deployment: {cloud: aws\x00}\n", ["is not valid YAML"]),
    ("config:\n  kumo:deployment: {cloud: aws, region: us-east-1, name: ab, hostname: mta.example.com,"
     " port25: {relay: {host: smtp.example.net, username: \"a\\x01b\"}, outbound: relay}}\n",
     ["kumo:deployment.port25.relay.username", "printable ASCII", "'a\\x01b'"]),
])
def test_hostile_stack_files_exit_2_without_traceback(tmp_path, content, fragments):
    f = tmp_path / "Pulumi.bad.yaml"
    f.write_text(content)
    for command in ("validate", "render", "port25"):
        assert_bad_input(kumo(command, "--config", str(f)), *fragments)


def test_a_control_character_in_the_relay_username_no_longer_crashes_render(tmp_path):
    # It passed validate and then raised in the Lua renderer: now refused at the boundary, naming the key.
    f = tmp_path / "Pulumi.ctl.yaml"
    f.write_text("config:\n  kumo:deployment: {cloud: aws, region: us-east-1, name: ab, hostname: mta.example.com,"
                 " port25: {outbound: relay, relay: {host: smtp.example.net, username: \"kumo\\tuser\"}}}\n")
    assert_bad_input(kumo("render", "--config", str(f)), "kumo:deployment.port25.relay.username")


def test_size_flag_values_have_the_stack_keys_forms():
    result = kumo("size", "--cloud", "gcp", "--messages-per-hour", "5", "--avg-message-kb", "5",
                  "--instance-type", "e2-medium;reboot")
    assert_bad_input(result, "--instance-type", "an instance type name")
    assert "Value error" not in result.stderr


@pytest.mark.parametrize("name", ["", "../aws-dev", ".hidden", "aws dev", "aws-dev\n", "a" * 101, "aws-dév"])
def test_stack_names_are_pulumi_stack_names(name):
    assert_bad_input(kumo("validate", "--stack", name), "--stack", "is not a stack name")


def test_a_reader_that_goes_away_gets_no_traceback():
    # kumo-infra render ... | head: the reader closes the pipe early (here at once); the command stops quietly.
    import subprocess
    import sys
    from pathlib import Path
    exe = Path(sys.executable).parent / "kumo-infra"
    result = subprocess.run(f"'{exe}' render --stack aws-prod | true", shell=True,
                            capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert "Traceback" not in result.stderr and "BrokenPipeError" not in result.stderr, result.stderr


def test_an_abbreviated_flag_is_refused_not_guessed():
    # argparse would take "--stack" for "--stack-name" and destroy whatever that names.
    result = kumo("ci", "destroy", "--stack", "aws-dev")
    assert_bad_input(result, "required: --stack-name")
    result = kumo("validate", "--stac", "aws-dev")
    assert_bad_input(result, "one of the arguments --stack --config is required")


def test_plan_policy_json_carries_each_violation_with_its_fix():
    result = kumo("plan", "--stack", "aws-dev", "--policy", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["resources"] and doc["policy"], "aws-dev has advisories (PTR not set yet, burstable type)"
    assert {v["level"] for v in doc["policy"]} == {"advisory"}
    assert all(v["rule"] and v["name"] and v["remediation"] for v in doc["policy"])

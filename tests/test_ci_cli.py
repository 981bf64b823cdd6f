"""`kumo-infra ci` as a pipeline runs it: real processes, a fake `pulumi` (and `az`) first on PATH.

tests/fake_pulumi.py answers as the real CLI would and records every argument vector in its state
file, so these tests see exactly what each command asked Pulumi to do.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from kumo_infra import ci, cli, ephemeral as eph, smoke, targets
from kumo_infra.config import parse_deployment
from kumo_infra.errors import ConfigError
from kumo_infra.targets.azure import vault_name
from tests import fake_pulumi
from tests.conftest import ROOT


class Pipeline:
    """A CI job's environment: the fake pulumi and az on PATH, a $GITHUB_OUTPUT file."""

    def __init__(self, tmp_path: Path, state: dict | None = None) -> None:
        self.state_path = tmp_path / "pulumi-state.json"
        self.az_log = tmp_path / "az.log"
        bin_dir = tmp_path / "bin"
        env = fake_pulumi.install(bin_dir, self.state_path, state)
        # The az stand-in also tells whether a secret variable reached it.
        (bin_dir / "az").write_text(f"#!/bin/sh\nprintf '%s\\n' \"$*\" >> '{self.az_log}'\n"
                                    f"env | grep -q '^KUMO_SECRET_' && echo 'saw KUMO_SECRET_' >> '{self.az_log}'\n"
                                    "exit 0\n")
        (bin_dir / "az").chmod(0o755)
        self.github_output = tmp_path / "github_output"
        # Whatever CI runs these tests must not name the stacks or lend its secrets.
        self.env = {k: v for k, v in env.items() if not k.startswith(("GITHUB_", "CI_", "KUMO_SECRET_"))}
        self.env["GITHUB_OUTPUT"] = str(self.github_output)

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "kumo_infra.cli", "ci", *args], cwd=ROOT,
                              env={**self.env, **env}, capture_output=True, text=True, timeout=300)

    @property
    def state(self) -> dict:
        return fake_pulumi.read_state(self.state_path)

    def edit_state(self, **changes) -> None:
        state = self.state
        state.update(changes)
        self.state_path.write_text(json.dumps(state))

    def verbs(self) -> list[str]:
        return fake_pulumi.verbs(self.state["calls"])

    def calls_naming(self, name: str) -> list[str]:
        return [" ".join(argv[1:3]) for argv in self.state["calls"] if name in argv]


def assert_bad_input(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


# -- up, then destroy --------------------------------------------------------------------------------------

def test_up_prints_the_name_first_and_last_streams_the_engine_and_sums_up(tmp_path):
    job = Pipeline(tmp_path)
    result = job.run("up", "--stack", "aws-dev", "--run-id", "77")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == lines[-1] == "ci-aws-dev-77"
    assert job.github_output.read_text() == "stack=ci-aws-dev-77\n"
    assert "Updating (ci-aws-dev-77):" in result.stderr  # the engine's output, streamed to stderr
    assert any(line.startswith("stack ci-aws-dev-77 is up in ") and line.endswith(": create 6") for line in lines)
    assert "  node1  mta-dev.example.com  198.51.100.7" in lines and "public IPs: 198.51.100.7" in lines
    assert "api-secret-value" not in result.stdout + result.stderr
    assert job.verbs() == ["version", "stack init"] + ["stack tag set"] * 4 + [
        "config set-all", "up", "stack output", "stack output", "stack history"]
    stack = job.state["stacks"]["ci-aws-dev-77"]
    assert stack["tags"][eph.MARK] == "true" and stack["tags"][eph.TTL] == "3h"
    assert len(stack["resources"]) == 6

    result = job.run("destroy", "--stack-name", "ci-aws-dev-77")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "stack ci-aws-dev-77 destroyed and removed\n"
    assert job.state["stacks"] == {}
    # A new process, another work directory: the marks came from the tags, nothing else was asked.
    assert job.verbs()[11:] == ["version", "stack select", "stack tag ls", "stack history", "stack export",
                                "destroy", "stack history", "stack export", "stack rm"]

    again = job.run("destroy", "--stack-name", "ci-aws-dev-77")
    assert again.returncode == 0 and again.stdout == "no stack ci-aws-dev-77: nothing to destroy\n"


def test_a_failed_up_exits_1_still_names_the_stack_and_leaves_it_to_the_destroy_step(tmp_path):
    job = Pipeline(tmp_path, fake_pulumi.new_state(fail={"up": 1}))
    result = job.run("up", "--stack", "aws-dev", "--run-id", "78", "--ttl", "90m")
    assert result.returncode == 1
    assert result.stdout.splitlines()[-1] == "ci-aws-dev-78"
    assert "up of stack ci-aws-dev-78 failed" in result.stderr
    assert "the stack is left for the step that always runs: kumo-infra ci destroy --stack-name ci-aws-dev-78" \
        in result.stderr
    assert job.state["stacks"]["ci-aws-dev-78"]["tags"][eph.TTL] == "90m"

    result = job.run("destroy", "--stack-name", "ci-aws-dev-78")
    assert result.returncode == 0, result.stderr
    assert job.state["stacks"] == {}


def test_azure_destroy_purges_the_soft_deleted_vault(tmp_path):
    job = Pipeline(tmp_path)
    assert job.run("up", "--stack", "azure-dev", "--run-id", "5", KUMO_SECRET_RELAY_PASSWORD="x").returncode == 0
    result = job.run("destroy", "--stack-name", "ci-azure-dev-5", KUMO_SECRET_RELAY_PASSWORD="x")
    assert result.returncode == 0, result.stderr
    deployment = eph.prepare(ROOT / "stacks" / "Pulumi.azure-dev.yaml", run_id="5",
                             env={"KUMO_SECRET_RELAY_PASSWORD": "x"}).deployment
    assert job.az_log.read_text() == f"keyvault purge --name {vault_name(deployment)} --location westeurope\n"


def test_a_destroy_that_keeps_failing_exits_1_naming_what_is_left_and_the_command(tmp_path):
    job = Pipeline(tmp_path)
    assert job.run("up", "--stack", "aws-dev", "--run-id", "79").returncode == 0
    job.edit_state(fail={"destroy": 1})
    result = job.run("destroy", "--stack-name", "ci-aws-dev-79", "--retries", "1")
    assert result.returncode == 1
    assert "destroy of stack ci-aws-dev-79 failed" in result.stderr
    assert "aws:ec2/instance:Instance  urn:pulumi:ci-aws-dev-79::kumo-infra-ci::aws:ec2/instance:Instance::" \
           "kumo-dev-node1" in result.stderr
    assert "finish it with: kumo-infra ci destroy --stack-name ci-aws-dev-79" in result.stderr
    assert "ci-aws-dev-79" in job.state["stacks"]


def test_destroy_refuses_a_stack_ci_up_did_not_make(tmp_path):
    state = fake_pulumi.new_state()
    state["stacks"]["prod"] = stack_entry(tags={}, config={"kumo:deployment": "{}"}, created=NOW - timedelta(days=90))
    job = Pipeline(tmp_path, state)
    assert_bad_input(job.run("destroy", "--stack-name", "prod"),
                     "--stack-name: stack prod carries no kumo-infra:ephemeral=true mark")
    assert "destroy" not in job.verbs() and "prod" in job.state["stacks"]


# -- sweep -----------------------------------------------------------------------------------------------------

NOW = datetime.now(timezone.utc)


def stack_entry(tags: dict | None, config: dict, created: datetime, project: str = eph.PROJECT) -> dict:
    """A stack as the fake backend holds it: resources, tags (None: a backend without tags), and
    one update carrying ``config``."""
    when = fake_pulumi.now_text()
    return {"tags": tags, "outputs": {}, "secret_outputs": [], "created": when, "project": project,
            "resources": [{"urn": "urn:pulumi:x::kumo-infra::pulumi:pulumi:Stack::kumo-infra-x", "custom": False,
                           "type": "pulumi:pulumi:Stack"}],
            "history": [{"version": 1, "kind": "update", "startTime": when, "endTime": when, "message": "",
                         "environment": {}, "result": "succeeded", "resourceChanges": {"create": 1},
                         "config": {k: {"value": v, "secret": False} for k, v in config.items()}}]}


def marks(created: datetime, ttl: str) -> dict:
    return {eph.MARK: "true", eph.CREATED_AT: eph.utc_text(created), eph.TTL: ttl, eph.CI_RUN: "r"}


def azure_deployment() -> str:
    return json.dumps({**yaml.safe_load((ROOT / "stacks" / "Pulumi.azure-dev.yaml").read_text())["config"]
                       ["kumo:deployment"], "name": "kumo-azdev-aa11bb", "lifecycle": {"ephemeral": True}})


def sweep_state() -> dict:
    state = fake_pulumi.new_state()
    state["stacks"] = {
        "ci-old": stack_entry(marks(NOW - timedelta(hours=10), "3h"), {}, NOW),
        "ci-fresh": stack_entry(marks(NOW - timedelta(hours=1), "3h"), {}, NOW),
        "ci-young": stack_entry(marks(NOW - timedelta(hours=2), "1h"), {}, NOW),  # ttl passed, under --older-than
        "prod": stack_entry({"owner": "mail-team"}, {"kumo:deployment": azure_deployment()}, NOW),
        # Marked by config alone (a DIY backend before Pulumi CLI v3.211.0), an Azure deployment.
        "ci-diy": stack_entry(None, {**marks(NOW - timedelta(days=2), "3h"), "kumo:deployment": azure_deployment()},
                              NOW),
        "ci-odd": stack_entry({eph.MARK: "true", eph.CREATED_AT: "yesterday", eph.TTL: "3h"}, {}, NOW),
        # Once ephemeral, then kept: its tag removed on a backend that holds tags; its history still says so.
        "ci-kept": stack_entry({"owner": "me"}, marks(NOW - timedelta(days=2), "3h"), NOW),
        # Marked and long expired, but a stack of the production project: not even listed.
        "prod-marked": stack_entry(marks(NOW - timedelta(days=30), "3h"), {}, NOW, project="kumo-infra"),
    }
    return state


def test_sweep_dry_run_lists_and_touches_nothing(tmp_path):
    job = Pipeline(tmp_path, sweep_state())
    result = job.run("sweep", "--older-than", "6h", "--dry-run")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "would destroy ci-old: created " in out and "would destroy ci-diy: created " in out
    assert "keep ci-fresh: ttl 3h not passed" in out
    assert "keep ci-young: younger than --older-than 6h" in out
    assert "keep prod: no kumo-infra:ephemeral=true mark" in out
    assert "keep ci-kept: no kumo-infra:ephemeral=true mark" in out
    assert "keep ci-odd: marked ephemeral but kumo-infra:created-at or kumo-infra:ttl unreadable" in out
    assert "prod-marked" not in out
    assert not {"destroy", "stack rm", "refresh"} & set(job.verbs())
    assert set(job.state["stacks"]) == set(sweep_state()["stacks"])


def test_sweep_destroys_only_expired_ephemeral_stacks(tmp_path):
    job = Pipeline(tmp_path, sweep_state())
    result = job.run("sweep", "--older-than", "6h")
    assert result.returncode == 0, result.stderr
    assert "destroyed ci-old" in result.stdout and "destroyed ci-diy" in result.stdout
    kept_stacks = {"ci-fresh", "ci-young", "prod", "ci-odd", "ci-kept", "prod-marked"}
    assert set(job.state["stacks"]) == kept_stacks
    for kept in kept_stacks:
        assert not {"destroy --skip-preview", "stack rm"} & set(job.calls_naming(kept)), kept
    vault = vault_name(parse_deployment(json.loads(azure_deployment())))
    assert job.az_log.read_text() == f"keyvault purge --name {vault} --location westeurope\n"  # ci-diy's alone


# -- bad input ------------------------------------------------------------------------------------------------------

def test_bad_input_exits_2_and_creates_nothing(tmp_path):
    job = Pipeline(tmp_path)
    base = yaml.safe_load((ROOT / "stacks" / "Pulumi.aws-dev.yaml").read_text())
    base["config"]["kumo:deployment"]["lifecycle"] = {"protect": True}
    protected = tmp_path / "Pulumi.protected.yaml"
    protected.write_text(yaml.safe_dump(base))
    assert_bad_input(job.run("up", "--config", str(protected)), "kumo:deployment.lifecycle.protect: is true")
    assert_bad_input(job.run("up", "--stack", "gcp-dev"), "KUMO_SECRET_RELAY_PASSWORD: is not set")
    assert_bad_input(job.run("up", "--stack", "aws-dev", "--ttl", "soon"), "argument --ttl: 'soon' is not a duration")
    assert_bad_input(job.run("up", "--stack", "aws-dev", GITHUB_RUN_ID="1 2"), "GITHUB_RUN_ID: '1 2' is not a run id")
    assert_bad_input(job.run("destroy", "--stack-name", "a b"), "'a b' is not a stack name")
    assert_bad_input(job.run("sweep", "--older-than", "3"), "'3' is not a duration")
    assert job.state["calls"] == []
    assert not job.github_output.exists()


def test_without_pulumi_on_path_up_exits_2_naming_it(tmp_path):
    job = Pipeline(tmp_path)
    assert_bad_input(job.run("up", "--stack", "aws-dev", PATH=str(tmp_path / "empty")),
                     "PATH: no pulumi command found: install the Pulumi CLI")


def test_a_name_taken_already_exits_2_and_writes_no_output(tmp_path):
    job = Pipeline(tmp_path)
    assert job.run("up", "--stack", "aws-dev", "--run-id", "80").returncode == 0
    job.github_output.unlink()
    result = job.run("up", "--stack", "aws-dev", "--run-id", "80")
    assert_bad_input(result, "stack ci-aws-dev-80 exists already")
    assert result.stdout == "" and not job.github_output.exists()  # no destroy step may take another job's stack


def test_help_documents_the_flow():
    result = subprocess.run([sys.executable, "-m", "kumo_infra.cli", "ci", "--help"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for fragment in ("kumo-infra ci up --stack", "kumo-infra ci smoke --stack-name NAME",
                     "kumo-infra ci destroy --stack-name NAME in a step that ALWAYS runs",
                     "kumo-infra ci sweep --older-than", "on a schedule", "KUMO_SECRET_RELAY_PASSWORD",
                     "Exit codes: 0 ok, 1 a failed check or operation, 2 bad input"):
        assert fragment in text, fragment


# -- smoke (the checks are kumo_infra.smoke's: a stand-in here) ----------------------------------------------------

@dataclass
class StandInReport:
    ok: bool

    def format(self) -> str:
        return "ok node1 smtp: 220" if self.ok else "FAIL node1 smtp: no answer"

    def to_dict(self) -> dict:
        return {"ok": self.ok}


def smoke_after_up(monkeypatch, tmp_path, ok: bool, *extra: str) -> tuple[int, list[tuple], str]:
    """`ci up` then `ci smoke` in this process, through the fake CLI; what run_smoke received."""
    command = fake_pulumi.FakePulumiCommand()
    monkeypatch.setenv("KUMO_SECRET_RELAY_PASSWORD", "x")
    for var in ("GITHUB_RUN_ID", "CI_PIPELINE_ID", "GITHUB_OUTPUT"):
        monkeypatch.delenv(var, raising=False)
    assert ci.run(cli.build_parser().parse_args(["ci", "up", "--stack", "gcp-dev", "--run-id", "9"]),
                  ci.Deps(pulumi_command=command)) == 0
    console = object()
    monkeypatch.setattr(targets.Target, "console_reader", lambda self, deployment: (console, deployment.name))
    received = []

    def run_smoke(deployment, nodes, *, console, deadline_s):
        received.append((deployment, nodes, console, deadline_s))
        return StandInReport(ok)

    args = cli.build_parser().parse_args(["ci", "smoke", "--stack-name", "ci-gcp-dev-9", *extra])
    before = len(command.calls)
    code = ci.run(args, ci.Deps(pulumi_command=command, run_smoke=run_smoke))
    # The smoke reads outputs and history without decrypting a single secret.
    assert [argv for argv in command.calls[before:] if "stack" in argv] and not [
        argv for argv in command.calls[before:] if "--show-secrets" in argv]
    (deployment, nodes, given_console, deadline) = received[0]
    assert given_console == (console, deployment.name)  # what the stack's own target gives
    return code, received, deadline


def test_smoke_checks_the_stacks_nodes_with_its_targets_console(monkeypatch, tmp_path, capsys):
    code, received, deadline = smoke_after_up(monkeypatch, tmp_path, True, "--deadline", "10m")
    deployment, nodes, _, _ = received[0]
    assert code == 0 and deadline == 600
    assert deployment.name.startswith("kumo-gcpdev-") and deployment.lifecycle.ephemeral
    assert nodes == fake_pulumi.DEFAULT_OUTPUTS["nodes"]
    assert capsys.readouterr().out.endswith("ok node1 smtp: 220\n")


def test_smoke_exits_1_when_a_check_fails(monkeypatch, tmp_path, capsys):
    code, _, _ = smoke_after_up(monkeypatch, tmp_path, False, "--json")
    assert code == 1
    assert capsys.readouterr().out.endswith('{\n  "ok": false\n}\n')


def test_smoke_of_an_unknown_stack_is_bad_input():
    args = cli.build_parser().parse_args(["ci", "smoke", "--stack-name", "nope"])
    with pytest.raises(ConfigError, match="--stack-name: no stack nope in this backend"):
        ci.run(args, ci.Deps(pulumi_command=fake_pulumi.FakePulumiCommand(), run_smoke=lambda *a, **k: None))


def test_smoke_runs_the_real_checks_and_names_each_failure(monkeypatch, capsys):
    # Nothing listens on port 25 here and no aws CLI is installed: both checks must fail, by name.
    nodes = [{**fake_pulumi.DEFAULT_OUTPUTS["nodes"][0], "public_ip": "127.0.0.1"}]
    command = fake_pulumi.FakePulumiCommand(fake_pulumi.FakeBackend(fake_pulumi.new_state(
        up_outputs={**fake_pulumi.DEFAULT_OUTPUTS, "nodes": nodes})))
    monkeypatch.delenv("GITHUB_OUTPUT", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    assert ci.run(cli.build_parser().parse_args(["ci", "up", "--stack", "aws-dev", "--run-id", "3"]),
                  ci.Deps(pulumi_command=command)) == 0
    capsys.readouterr()
    args = cli.build_parser().parse_args(["ci", "smoke", "--stack-name", "ci-aws-dev-3", "--deadline", "2s", "--json"])
    assert ci.run(args, ci.Deps(pulumi_command=command)) == 1
    report = json.loads(capsys.readouterr().out)
    failed = {c["name"]: c["detail"] for c in report["checks"] if not c["ok"] and c["node"] == "node1"}
    assert set(failed) == {smoke.SMTP, smoke.BOOTSTRAP}, report
    assert "aws" in failed[smoke.BOOTSTRAP]  # the AWS target's reader ran the aws CLI (absent here)


# -- what the review found: each stack on its own, marks, locks, pending operations, the environment ---------

def test_one_unreadable_stack_does_not_stop_the_sweep(tmp_path):
    state = fake_pulumi.new_state()
    state["stacks"] = {
        "a-far-future": stack_entry({eph.MARK: "true", eph.CREATED_AT: "9999-12-31T00:00:00Z", eph.TTL: "2d"}, {},
                                    NOW),
        "b-old": stack_entry(marks(NOW - timedelta(hours=10), "3h"), {}, NOW),
    }
    job = Pipeline(tmp_path, state)
    result = job.run("sweep", "--older-than", "6h")
    assert result.returncode == 0, result.stderr
    assert "keep a-far-future: marked ephemeral but kumo-infra:created-at 9999-12-31T00:00:00Z is in the future" \
        in result.stdout
    assert set(job.state["stacks"]) == {"a-far-future"}


def test_a_backend_error_on_one_stack_is_reported_and_the_sweep_goes_on(tmp_path):
    state = fake_pulumi.new_state(fail={"stack tag ls": 1})
    state["stacks"] = {"a-first": stack_entry(marks(NOW - timedelta(hours=10), "3h"), {}, NOW),
                       "b-second": stack_entry(marks(NOW - timedelta(hours=10), "3h"), {}, NOW)}
    job = Pipeline(tmp_path, state)
    result = job.run("sweep", "--older-than", "6h")
    assert result.returncode == 1
    assert "error: sweep of stack a-first failed:" in result.stderr and "Traceback" not in result.stderr
    assert "destroyed b-second" in result.stdout and result.stdout.endswith("failed: a-first\n")
    assert set(job.state["stacks"]) == {"a-first"}


def test_without_tags_the_newest_update_with_config_decides(tmp_path):
    """A backend without tags: a later run of the stack without the mark unmarks it; a ci destroy's
    record (no config: its work directory has no config file) does not."""
    def update(version: int, config: dict) -> dict:
        entry = stack_entry(None, config, NOW)["history"][0]
        return {**entry, "version": version}

    kept = stack_entry(None, {}, NOW)
    kept["history"] = [update(2, {"kumo:deployment": "{}"}), update(1, marks(NOW - timedelta(days=30), "3h"))]
    failed_destroy = stack_entry(None, {}, NOW)
    failed_destroy["history"] = [update(2, {}), update(1, marks(NOW - timedelta(days=30), "3h"))]
    state = fake_pulumi.new_state()
    state["stacks"] = {"kept-for-good": kept, "ci-half-destroyed": failed_destroy}
    job = Pipeline(tmp_path, state)
    result = job.run("sweep", "--older-than", "6h", "--dry-run")
    assert "keep kept-for-good: no kumo-infra:ephemeral=true mark" in result.stdout
    assert "would destroy ci-half-destroyed: created" in result.stdout


def test_a_stack_left_unmarked_by_a_failed_tag_is_removed_by_the_destroy_step(tmp_path):
    job = Pipeline(tmp_path, fake_pulumi.new_state(fail={"stack tag set": 1}))
    up = job.run("up", "--stack", "aws-dev", "--run-id", "1")
    assert up.returncode == 1 and up.stdout.splitlines()[-1] == "ci-aws-dev-1"
    assert job.verbs()[-2:] == ["stack init", "stack tag set"]  # the mark is the first thing tried
    result = job.run("destroy", "--stack-name", "ci-aws-dev-1")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "stack ci-aws-dev-1 had no mark, no update and no resources: removed\n"
    assert job.state["stacks"] == {}


def test_pending_operations_keep_the_stack_through_every_destroy(tmp_path):
    job = Pipeline(tmp_path, fake_pulumi.new_state(up_pending=[["aws:ec2/instance:Instance", "kumo-dev-node2"]]))
    assert job.run("up", "--stack", "aws-dev", "--run-id", "81").returncode == 0
    for _ in range(2):  # a second run finds the same record: the first destroyed nothing
        result = job.run("destroy", "--stack-name", "ci-aws-dev-81")
        assert result.returncode == 1
        assert "pending operations in ci-aws-dev-81 (1)" in result.stderr
        assert "kumo-dev-node2" in result.stderr and "kumo-infra-ephemeral=true" in result.stderr
    assert "destroy" not in job.verbs() and job.state["stacks"]["ci-aws-dev-81"]["pending_operations"]


def locked_after_up(tmp_path, run_env: dict) -> Pipeline:
    job = Pipeline(tmp_path)
    assert job.run("up", "--stack", "aws-dev", **run_env).returncode == 0
    state = job.state
    state["stacks"]["ci-aws-dev-500-1"]["locked"] = True  # the up was killed holding the lock
    job.state_path.write_text(json.dumps(state))
    return job


def test_destroy_in_the_run_that_made_the_stack_cancels_its_stale_lock(tmp_path):
    run = {"GITHUB_RUN_ID": "500", "GITHUB_RUN_ATTEMPT": "1", "GITHUB_REPOSITORY": "acme/mail"}
    job = locked_after_up(tmp_path, run)
    result = job.run("destroy", "--stack-name", "ci-aws-dev-500-1", **run)
    assert result.returncode == 0, result.stderr
    destroy_step = job.verbs()[job.verbs().index("stack select"):]
    assert destroy_step == ["stack select", "stack tag ls", "stack history", "stack export", "destroy", "cancel",
                            "destroy", "stack history", "stack export", "stack rm"]
    assert job.state["stacks"] == {}


def test_destroy_from_another_run_never_cancels_a_lock(tmp_path):
    job = locked_after_up(tmp_path, {"GITHUB_RUN_ID": "500", "GITHUB_RUN_ATTEMPT": "1"})
    result = job.run("destroy", "--stack-name", "ci-aws-dev-500-1", GITHUB_RUN_ID="501", GITHUB_RUN_ATTEMPT="1")
    assert result.returncode == 1
    assert "stack ci-aws-dev-500-1 is locked by another update" in result.stderr
    assert "pulumi cancel --yes --stack ci-aws-dev-500-1" in result.stderr
    assert "cancel" not in job.verbs() and "ci-aws-dev-500-1" in job.state["stacks"]


def test_sweep_reports_a_locked_stack_apart_and_goes_on(tmp_path):
    state = sweep_state()
    state["stacks"]["ci-old"]["locked"] = True
    job = Pipeline(tmp_path, state)
    result = job.run("sweep", "--older-than", "6h")
    assert result.returncode == 1
    assert "locked (an update running, or a lock a killed job left): ci-old" in result.stdout
    assert "destroyed ci-diy" in result.stdout and "cancel" not in job.verbs()


@pytest.mark.parametrize("args, fragment", [
    (("up", "--stack", "aws-dev", "--ttl", "8d"), "--ttl: must be longer than zero and at most 7d"),
    (("up", "--stack", "aws-dev", "--ttl", "999999d"), "--ttl: must be longer than zero and at most 7d"),
    (("destroy", "--stack-name", "x", "--retries", "11"), "'11' is not a number of attempts from 1 to 10"),
    (("sweep", "--older-than", "0s", "--retries", "99"), "'99' is not a number of attempts from 1 to 10"),
    (("destroy", "--stack-name", "org/kumo-infra/prod"), "names a stack of project 'kumo-infra'"),
])
def test_bounds_exit_2_naming_the_flag(tmp_path, args, fragment):
    job = Pipeline(tmp_path)
    assert_bad_input(job.run(*args), fragment)
    assert job.state["calls"] == []


@pytest.mark.parametrize("missing, fragment", [
    ("PULUMI_CONFIG_PASSPHRASE", "PULUMI_CONFIG_PASSPHRASE: is not set (nor PULUMI_CONFIG_PASSPHRASE_FILE)"),
    ("PULUMI_BACKEND_URL", "PULUMI_BACKEND_URL: is not set, nor PULUMI_ACCESS_TOKEN"),
])
def test_a_missing_backend_variable_exits_2_before_any_command(tmp_path, missing, fragment):
    job = Pipeline(tmp_path)
    del job.env[missing]
    for args in (("up", "--stack", "aws-dev"), ("destroy", "--stack-name", "x"), ("sweep", "--older-than", "1h")):
        assert_bad_input(job.run(*args), fragment)
    assert job.state["calls"] == []


def test_pulumi_refusing_for_a_variable_exits_2_naming_it_without_a_dump(tmp_path):
    refusal = ("error: passphrase must be set with PULUMI_CONFIG_PASSPHRASE or PULUMI_CONFIG_PASSPHRASE_FILE "
               "environment variables")
    job = Pipeline(tmp_path, fake_pulumi.new_state(fail={"stack init": 1}, fail_stderr={"stack init": refusal}))
    result = job.run("up", "--stack", "aws-dev")
    assert_bad_input(result, "PULUMI_CONFIG_PASSPHRASE: pulumi refused: " + refusal)
    assert " code: " not in result.stderr


def test_no_pulumi_process_sees_the_secret_variables(tmp_path):
    job = Pipeline(tmp_path)
    assert job.run("up", "--stack", "gcp-dev", "--run-id", "6", KUMO_SECRET_RELAY_PASSWORD="x").returncode == 0
    assert job.run("destroy", "--stack-name", "ci-gcp-dev-6", KUMO_SECRET_RELAY_PASSWORD="x").returncode == 0
    environments = job.state["environments"]
    assert len(environments) == len(job.state["calls"])
    assert all("PULUMI_CONFIG_PASSPHRASE" in names for names in environments)  # what it needs, it gets
    assert not [names for names in environments if any(name.startswith("KUMO_SECRET_") for name in names)]


def test_sigterm_to_ci_up_lets_pulumi_finish_in_flight_and_leaves_the_stack_to_the_destroy(tmp_path):
    import signal

    job = Pipeline(tmp_path, fake_pulumi.new_state(up_steps=4, up_step_s=0.5))
    process = subprocess.Popen([sys.executable, "-m", "kumo_infra.cli", "ci", "up", "--stack", "aws-dev",
                                "--run-id", "t1"], cwd=ROOT, env=job.env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    for line in process.stderr:
        if "kumo-dev-node1 creating" in line:
            process.send_signal(signal.SIGTERM)  # GitHub cancelling the job
            break
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 1
    assert stdout.splitlines()[-1] == "ci-aws-dev-t1"
    assert "pulumi asked to stop (SIGINT)" in stderr
    assert "the stack is left for the step that always runs" in stderr
    assert job.state["events"][-3:] == ["SIGINT", "up step 1 finished", "up cancelled cleanly"]
    assert job.run("destroy", "--stack-name", "ci-aws-dev-t1").returncode == 0
    assert job.state["stacks"] == {}

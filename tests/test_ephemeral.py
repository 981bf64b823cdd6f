"""kumo_infra.ephemeral driven through the real pulumi.automation library against a fake CLI.

Every `pulumi` command the library would run is answered by tests/fake_pulumi.py, which records
the argument vectors: what these tests assert is what a real CLI would have been asked to do.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from kumo_infra import ephemeral as eph
from kumo_infra import offline
from kumo_infra.config import _NAME_RE, parse_deployment
from kumo_infra.errors import ConfigError
from kumo_infra.stackconfig import load_file
from kumo_infra.targets.azure import vault_name
from tests import fake_pulumi
from tests.conftest import ROOT

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)
RELAY_SECRET = "relay-pw-7f3a9c-never-on-argv"
GCP = ROOT / "stacks" / "Pulumi.gcp-dev.yaml"  # relay mode: needs the relay password
AWS = ROOT / "stacks" / "Pulumi.aws-dev.yaml"
AZURE = ROOT / "stacks" / "Pulumi.azure-dev.yaml"  # relay, and a Key Vault purged after a destroy
# The end of every run: the state checked, the destroy (the library reads the newest update after
# it), the state checked again, the stack removed.
DESTROYED = ["stack export", "destroy", "stack history", "stack export", "stack rm"]


class Recorder:
    """The fake CLI plus what else a run touches: after-destroy commands and pauses."""

    def __init__(self, **state) -> None:
        self.command = fake_pulumi.FakePulumiCommand(fake_pulumi.FakeBackend(fake_pulumi.new_state(**state)))
        self.sleeps: list[float] = []

    @property
    def backend(self) -> fake_pulumi.FakeBackend:
        return self.command.backend

    @property
    def calls(self) -> list[list[str]]:
        return self.backend.calls

    def runner(self, argv) -> int:
        self.calls.append(["<after-destroy>", *argv])
        return 0

    def options(self, **extra) -> dict:
        return {"pulumi_command": self.command, "runner": self.runner, "sleep": self.sleeps.append,
                "run_id": "1234-1", "env": {"KUMO_SECRET_RELAY_PASSWORD": RELAY_SECRET}, "now": NOW,
                "on_output": lambda line: None, **extra}

    def verbs(self) -> list[str]:
        """The sequence at a glance; an after-destroy command as all its words."""
        return [" ".join(call) if call[0] == "<after-destroy>" else verb
                for call, verb in zip(self.calls, fake_pulumi.verbs(self.calls))]


def normalized(argv: list[str]) -> list[str]:
    return [re.sub(r"^--client=127\.0\.0\.1:\d+$", "--client=127.0.0.1:PORT", a) for a in argv]


# -- a whole run -------------------------------------------------------------------------------------

def test_a_run_sends_exactly_these_commands():
    rec = Recorder()
    with eph.ephemeral_stack(AZURE, **rec.options()) as live:
        assert live.name == "ci-azure-dev-1234-1"
        assert live.outputs["public_ips"] == ["198.51.100.7"]
        assert "api" not in live.outputs  # a secret output stays in stack.outputs()
    name = "ci-azure-dev-1234-1"
    deployment = json.loads(next(a for a in rec.calls[5] if a.startswith("kumo:deployment="))
                            .partition("=")[2])
    vault = vault_name(parse_deployment(deployment))
    assert [normalized(c) for c in rec.calls] == [
        ["--non-interactive", "stack", "init", name],
        # The mark right after init: a failure after this leaves a stack the sweep knows.
        ["--non-interactive", "stack", "tag", "set", "kumo-infra:ephemeral", "true", "--stack", name],
        ["--non-interactive", "stack", "tag", "set", "kumo-infra:created-at", "2026-11-30T12:00:00Z", "--stack", name],
        ["--non-interactive", "stack", "tag", "set", "kumo-infra:ttl", "3h", "--stack", name],
        ["--non-interactive", "stack", "tag", "set", "kumo-infra:ci-run", "1234-1", "--stack", name],
        ["--non-interactive", "config", "set-all", "--stack", name,
         "--plaintext", "azure-native:location=westeurope",
         "--plaintext", "kumo:deployment=" + json.dumps(deployment),
         "--plaintext", "kumo-infra:ephemeral=true",
         "--plaintext", "kumo-infra:created-at=2026-11-30T12:00:00Z",
         "--plaintext", "kumo-infra:ttl=3h",
         "--plaintext", "kumo-infra:ci-run=1234-1"],
        ["--non-interactive", "up", "--yes", "--skip-preview", "--client=127.0.0.1:PORT", "--exec-kind",
         "auto.inline", "--stack", name],
        ["--non-interactive", "stack", "output", "--json", "--stack", name],
        ["--non-interactive", "stack", "output", "--json", "--show-secrets", "--stack", name],
        ["--non-interactive", "stack", "history", "--json", "--show-secrets", "--page-size", "1", "--page", "1",
         "--stack", name],
        # The state before the destroy, which would drop pending operations from it: none.
        ["--non-interactive", "stack", "export", "--stack", name],
        # No program attached: the destroy runs no --client, so any CLI version can do it.
        ["--non-interactive", "destroy", "--skip-preview", "--yes", "--exec-kind", "auto.local", "--stack", name],
        ["--non-interactive", "stack", "history", "--json", "--show-secrets", "--page-size", "1", "--page", "1",
         "--stack", name],
        # Nothing left, nothing pending: only then the stack's record goes.
        ["--non-interactive", "stack", "export", "--stack", name],
        ["--non-interactive", "stack", "rm", "--yes", name],
        ["<after-destroy>", "az", "keyvault", "purge", "--name", vault, "--location", "westeurope"],
    ]
    assert deployment["lifecycle"] == {"ephemeral": True}
    assert deployment["name"] != "kumo-azdev" and deployment["name"].startswith("kumo-azdev-")
    assert rec.backend.state["stacks"] == {}


def test_the_stack_is_made_in_its_own_project_with_the_program_inline():
    rec = Recorder()
    with eph.ephemeral_stack(AWS, **rec.options()):
        files = rec.backend.state["files_at_up"]
    project = yaml.safe_load(files["Pulumi.yaml"])
    assert project["name"] == "kumo-infra-ci" and "main" not in project  # not this checkout's Pulumi.yaml
    assert set(files) == {"Pulumi.yaml", "Pulumi.ci-aws-dev-1234-1.yaml"}


def test_up_failing_still_destroys_and_removes():
    rec = Recorder(fail={"up": 1})
    with pytest.raises(eph.EphemeralError, match="up of stack ci-aws-dev-1234-1 failed"):
        with eph.ephemeral_stack(AWS, **rec.options()):
            pytest.fail("the body must not run when up failed")
    assert rec.verbs()[-5:] == DESTROYED
    assert rec.backend.state["stacks"] == {}


def test_a_failing_body_destroys_and_its_error_comes_through():
    rec = Recorder()
    with pytest.raises(AssertionError, match="smoke failed"):
        with eph.ephemeral_stack(AWS, **rec.options()):
            raise AssertionError("smoke failed")
    assert rec.verbs()[-5:] == DESTROYED


def test_destroy_is_retried_with_a_refresh_and_a_growing_pause_between_attempts():
    rec = Recorder(fail={"destroy": 2})
    with eph.ephemeral_stack(AWS, **rec.options(retries=3, backoff_s=10)):
        pass
    after_up = rec.verbs()[rec.verbs().index("up"):]
    assert after_up == ["up", "stack output", "stack output", "stack history", "stack export",
                        "destroy", "refresh", "stack history",
                        "destroy", "refresh", "stack history",
                        "destroy", "stack history", "stack export", "stack rm"]
    assert rec.sleeps == [10, 20]


def test_the_pause_between_attempts_stops_growing_at_its_cap():
    rec = Recorder(fail={"destroy": 5})
    with eph.ephemeral_stack(AWS, **rec.options(retries=6, backoff_s=15)):
        pass
    assert rec.sleeps == [15, 30, 60, eph.MAX_BACKOFF_S, eph.MAX_BACKOFF_S]


@pytest.mark.parametrize("retries", [0, eph.MAX_RETRIES + 1])
def test_retries_out_of_bounds_are_refused_before_anything_exists(retries):
    rec = Recorder()
    with pytest.raises(ConfigError, match="retries"):
        with eph.ephemeral_stack(AWS, **rec.options(retries=retries)):
            pytest.fail("the body ran")
    assert rec.calls == []
    assert rec.backend.state["stacks"] == {}


def test_destroy_failing_every_time_names_the_stack_its_leftovers_and_the_command_to_finish():
    rec = Recorder(fail={"destroy": 3})
    with pytest.raises(eph.DestroyError) as caught:
        with eph.ephemeral_stack(AWS, **rec.options(retries=3)):
            pass
    message = str(caught.value)
    name = "ci-aws-dev-1234-1"
    assert f"destroy of stack {name} failed" in message
    assert f"urn:pulumi:{name}::kumo-infra-ci::aws:ec2/instance:Instance::kumo-dev-node1" in message
    assert "aws:secretsmanager/secret:Secret" in message
    assert "pulumi:providers:aws" not in message and "pulumi:pulumi:Stack" not in message
    assert message.endswith(f"finish it with: kumo-infra ci destroy --stack-name {name}")
    deployment_name = eph.prepare(AWS, run_id="1234-1", env={}, now=NOW).deployment.name
    assert f"find them in the cloud by the tags kumo-infra-ephemeral=true and kumo-infra={deployment_name}" in message
    assert caught.value.leftovers and caught.value.stack_name == name
    assert "stack rm" not in rec.verbs()  # kept: its state is the list of what to clean
    assert name in rec.backend.state["stacks"]
    # The state was read without decrypting anything.
    assert ["--non-interactive", "stack", "export", "--stack", name] in rec.calls


def test_after_destroy_command_failing_is_reported_naming_it():
    rec = Recorder()
    with pytest.raises(eph.EphemeralError, match=r"run az keyvault purge --name kumo-azdev-\w+-\w+ --location "
                                                 "westeurope"):
        with eph.ephemeral_stack(AZURE, **rec.options(runner=lambda argv: 1)):
            pass
    assert rec.backend.state["stacks"] == {}  # destroyed and removed all the same


# -- interrupts ----------------------------------------------------------------------------------------

def test_keyboard_interrupt_in_the_body_destroys():
    rec = Recorder()
    with pytest.raises(KeyboardInterrupt):
        with eph.ephemeral_stack(AWS, **rec.options()):
            raise KeyboardInterrupt
    assert rec.verbs()[-5:] == DESTROYED


def test_a_real_sigterm_destroys_and_the_previous_handler_comes_back():
    def previous(signum, frame):
        raise AssertionError("the previous handler ran while the stack lived")

    old = signal.signal(signal.SIGTERM, previous)
    try:
        rec = Recorder()
        with pytest.raises(eph.Terminated):
            with eph.ephemeral_stack(AWS, **rec.options()):
                os.kill(os.getpid(), signal.SIGTERM)
                pytest.fail("SIGTERM did not end the body")
        assert rec.verbs()[-5:] == DESTROYED
        assert signal.getsignal(signal.SIGTERM) is previous
    finally:
        signal.signal(signal.SIGTERM, old)


def test_sigterm_during_stack_init_waits_for_the_stack_then_destroys_it():
    rec = Recorder()
    rec.backend.hooks["stack init"] = lambda argv: os.kill(os.getpid(), signal.SIGTERM)
    with pytest.raises(eph.Terminated):
        with eph.ephemeral_stack(AWS, **rec.options()):
            pytest.fail("the body ran after SIGTERM")
    assert rec.verbs() == ["stack init", *DESTROYED]


def test_sigterm_during_the_destroy_does_not_stop_it(capsys):
    rec = Recorder()
    rec.backend.hooks["destroy"] = lambda argv: os.kill(os.getpid(), signal.SIGTERM)
    with eph.ephemeral_stack(AWS, **rec.options(on_output=eph.to_stderr)):
        pass
    assert rec.verbs()[-5:] == DESTROYED
    assert "SIGTERM while destroying ci-aws-dev-1234-1: the destroy goes on" in capsys.readouterr().err


def test_outside_the_main_thread_no_handler_is_installed_and_a_warning_says_so():
    import threading

    before = signal.getsignal(signal.SIGTERM)
    seen = []
    said = []

    def body():
        rec = Recorder()
        with eph.ephemeral_stack(AWS, **rec.options(on_output=said.append)):
            seen.append(signal.getsignal(signal.SIGTERM))
        seen.append(rec.verbs()[-1])

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    assert seen == [before, "stack rm"]
    assert [line for line in said if "outside the main thread" in line and "SIGTERM ends the process without "
            "destroying it" in line]


def test_sigterm_during_a_stack_init_that_fails_is_raised_again_not_dropped():
    class Stopped(Exception):
        pass

    def previous(signum, frame):
        raise Stopped()

    old = signal.signal(signal.SIGTERM, previous)
    try:
        rec = Recorder()
        rec.backend.state["stacks"]["ci-aws-dev-1234-1"] = {"tags": {}, "resources": [], "outputs": {},
                                                           "secret_outputs": [], "history": [], "created": ""}
        rec.backend.hooks["stack init"] = lambda argv: os.kill(os.getpid(), signal.SIGTERM)
        with pytest.raises(Stopped):  # the process was asked to stop: the refusal does not swallow that
            with eph.ephemeral_stack(AWS, **rec.options()):
                pytest.fail("the body ran")
        assert rec.verbs() == ["stack init"]
        assert signal.getsignal(signal.SIGTERM) is previous
    finally:
        signal.signal(signal.SIGTERM, old)


# -- the real CLI's interrupt: a process of its own -----------------------------------------------------

@pytest.fixture
def ctrl_c_raises():
    """SIGINT as Python handles it by default: KeyboardInterrupt. A Python started as a background job
    of a non-interactive shell (`pytest ... &`, nohup) inherits SIGINT ignored and then installs no
    handler (Python's signal module does so only over SIG_DFL): a SIGINT would do nothing, and the
    up the tests interrupt would run to its end."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.usefixtures("ctrl_c_raises")
def test_an_interrupt_during_up_lets_pulumi_finish_what_is_in_flight_then_destroys(tmp_path, monkeypatch):
    """A real process (the fake CLI as an executable) up step by step; Ctrl-C while step 1 runs.
    With the library's own PulumiCommand the CLI would get no SIGINT and lose its pipes."""
    state_path = tmp_path / "state.json"
    env = fake_pulumi.install(tmp_path / "bin", state_path, fake_pulumi.new_state(up_steps=4, up_step_s=0.4))
    for key in [k for k in os.environ if k.startswith(("PULUMI_", "KUMO_"))]:
        monkeypatch.delenv(key)
    for key in ("PATH", fake_pulumi.STATE_ENV, "PULUMI_BACKEND_URL", "PULUMI_CONFIG_PASSPHRASE", "PULUMI_HOME"):
        monkeypatch.setenv(key, env[key])
    monkeypatch.setenv("KUMO_SECRET_RELAY_PASSWORD", RELAY_SECRET)
    said = []

    def on_output(line):
        said.append(line)
        if "kumo-dev-node1 creating" in line:  # step 1 in flight
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        with eph.ephemeral_stack(AWS, run_id="int1", env={}, runner=lambda argv: 0, on_output=on_output,
                                 backoff_s=0, interrupt_grace_s=60):
            pytest.fail("the body ran after an interrupted up")
    state = fake_pulumi.read_state(state_path)
    assert state["events"] == ["up step 0 started", "up step 0 finished", "up step 1 started", "SIGINT",
                               "up step 1 finished", "up cancelled cleanly"]
    verbs = fake_pulumi.verbs(state["calls"])
    assert verbs[verbs.index("up"):] == ["up", *DESTROYED]
    assert state["stacks"] == {}
    assert any("pulumi asked to stop (SIGINT)" in line for line in said)
    # No pulumi process saw the secret variables (the inline program reads them in this process).
    assert state["environments"] and not [names for names in state["environments"]
                                          if any(n.startswith("KUMO_SECRET_") for n in names)]


@pytest.mark.usefixtures("ctrl_c_raises")
def test_a_cli_that_does_not_stop_within_the_grace_is_killed(tmp_path, monkeypatch):
    state_path = tmp_path / "state.json"
    env = fake_pulumi.install(tmp_path / "bin", state_path, fake_pulumi.new_state(up_steps=2, up_step_s=30))
    for key in ("PATH", fake_pulumi.STATE_ENV, "PULUMI_BACKEND_URL", "PULUMI_CONFIG_PASSPHRASE", "PULUMI_HOME"):
        monkeypatch.setenv(key, env[key])
    said = []

    def on_output(line):
        said.append(line)
        if "creating" in line:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises((KeyboardInterrupt, eph.DestroyError)):
        with eph.ephemeral_stack(AWS, run_id="int2", env={}, runner=lambda argv: 0, on_output=on_output,
                                 backoff_s=0, retries=1, interrupt_grace_s=0.5):
            pass
    assert any("did not stop in 0.5s: killed" in line for line in said)


# -- pending operations: the record is never thrown away -------------------------------------------------

def test_pending_operations_keep_the_stack_and_are_named_with_the_cloud_tags():
    rec = Recorder(up_pending=[["aws:ec2/instance:Instance", "kumo-dev-node2"]])
    with pytest.raises(eph.DestroyError) as caught:
        with eph.ephemeral_stack(AWS, **rec.options()):
            pass
    name = "ci-aws-dev-1234-1"
    message = str(caught.value)
    assert f"pending operations in {name} (1)" in message
    assert f"creating  aws:ec2/instance:Instance  urn:pulumi:{name}::kumo-infra-ci::aws:ec2/instance:Instance::" \
           "kumo-dev-node2" in message
    assert "kumo-infra-ephemeral=true" in message
    assert f"pulumi refresh --clear-pending-creates --yes --stack {name}" in message
    assert caught.value.pending == [(f"urn:pulumi:{name}::kumo-infra-ci::aws:ec2/instance:Instance::kumo-dev-node2",
                                     "aws:ec2/instance:Instance", "creating")]
    # No destroy (it would drop them from the state), no removal: the state is their record.
    assert rec.verbs()[rec.verbs().index("up"):] == ["up", "stack output", "stack output", "stack history",
                                                     "stack export"]
    assert rec.backend.state["stacks"][name]["pending_operations"]


# -- bad input: exit 2, nothing created ----------------------------------------------------------------

def write_base(tmp_path: Path, source: Path, edit) -> Path:
    doc = yaml.safe_load(source.read_text())
    edit(doc["config"])
    path = tmp_path / "Pulumi.base.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


BAD_INPUTS = {
    "protect": (AWS, lambda c: c["kumo:deployment"].setdefault("lifecycle", {}).update(protect=True), {},
                "kumo:deployment.lifecycle.protect"),
    "missing secret": (GCP, lambda c: None, {"env": {}}, "KUMO_SECRET_RELAY_PASSWORD: is not set"),
    "foreign secret": (AWS, lambda c: c.update({"aws:secretKey": {"secure": "v1:abc"}}), {}, "aws:secretKey: is a "
                       "secret of the base stack"),
    "nested secret": (AWS, lambda c: c.update({"aws:assumeRole": {"roleArn": {"secure": "v1:abc"}}}), {},
                      "aws:assumeRole.roleArn: is a secret"),
    "mark key": (AWS, lambda c: c.update({"kumo-infra:ttl": "99d"}), {}, "kumo-infra:ttl: the kumo-infra: namespace"),
    "bad run id": (AWS, lambda c: None, {"run_id": "1;rm -rf /"}, "--run-id: '1;rm -rf /' is not a run id"),
    "hostile CI variable": (AWS, lambda c: None, {"run_id": None, "env": {"GITHUB_RUN_ID": "$(id)"}},
                            "GITHUB_RUN_ID: '$(id)' is not a run id"),
    "bad prefix": (AWS, lambda c: None, {"prefix": "a/b"}, "--prefix: 'a/b' is not a stack name prefix"),
    "ttl": (AWS, lambda c: None, {"ttl": timedelta(0)}, "--ttl: must be longer than zero"),
    "ttl too long": (AWS, lambda c: None, {"ttl": timedelta(days=8)}, "--ttl: must be longer than zero and at most 7d"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_refused_before_any_command(case, tmp_path):
    source, edit, options, expected = BAD_INPUTS[case]
    rec = Recorder()
    with pytest.raises(ConfigError) as caught:
        with eph.ephemeral_stack(write_base(tmp_path, source, edit), **rec.options(**options)):
            pytest.fail("the body ran on bad input")
    assert expected in str(caught.value)
    assert rec.calls == []


def test_a_name_taken_by_another_job_is_refused_and_that_stack_left_alone():
    rec = Recorder()
    rec.backend.state["stacks"]["ci-aws-dev-1234-1"] = {"tags": {}, "resources": [], "outputs": {},
                                                       "secret_outputs": [], "history": [], "created": ""}
    with pytest.raises(ConfigError, match="exists already, another job's: give each job its own --prefix"):
        with eph.ephemeral_stack(AWS, **rec.options()):
            pass
    assert rec.verbs() == ["stack init"]


# -- secrets --------------------------------------------------------------------------------------------

def test_secrets_never_reach_a_command_line_or_a_file():
    rec = Recorder()
    with eph.ephemeral_stack(GCP, **rec.options()):
        pass
    assert not [argv for argv in rec.calls if any(RELAY_SECRET in a for a in argv)]
    assert not [name for name, text in rec.backend.state["files_at_up"].items() if RELAY_SECRET in text]
    assert "kumo:relayPassword" not in json.dumps(rec.calls)


def secrets_in(value, inside=False):
    """(value, inside a secret envelope?) for every string of recorded inputs."""
    if offline.is_secret(value):
        yield from secrets_in(value["value"], True)
    elif isinstance(value, dict):
        for v in value.values():
            yield from secrets_in(v, inside)
    elif isinstance(value, list):
        for v in value:
            yield from secrets_in(v, inside)
    elif isinstance(value, str):
        yield value, inside


def test_the_inline_program_gets_the_secrets_as_pulumi_secrets():
    spec = eph.prepare(GCP, run_id="7", env={"KUMO_SECRET_RELAY_PASSWORD": RELAY_SECRET}, now=NOW)
    # The config exactly as the CLI hands it to the program: what set-all stored, nothing secret.
    result = offline.run(eph.inline_program(spec.secrets), spec.config, stack=spec.stack_name)
    found = [(r.type, inside) for r in result.resources for text, inside in secrets_in(r.inputs)
             if RELAY_SECRET in text]
    assert found and all(inside for _, inside in found), found


def test_without_the_secret_the_program_refuses_as_before():
    spec = eph.prepare(GCP, run_id="7", env={"KUMO_SECRET_RELAY_PASSWORD": RELAY_SECRET}, now=NOW)
    import pulumi

    with pytest.raises(pulumi.RunError, match="kumo:relayPassword"):
        offline.run(eph.inline_program({}), spec.config, stack=spec.stack_name)


@pytest.mark.parametrize("key, variable", [("kumo:relayPassword", "KUMO_SECRET_RELAY_PASSWORD"),
                                           ("kumo:sshPrivateKey", "KUMO_SECRET_SSH_PRIVATE_KEY")])
def test_secret_variables_are_named_after_the_key(key, variable):
    assert eph.secret_env_var(key) == variable


# -- names ----------------------------------------------------------------------------------------------

STACK_NAME = re.compile(r"[A-Za-z0-9_.-]{1,100}")  # pulumi sdk/go/common/tokens/stack_name.go
run_ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,38}", fullmatch=True)
prefixes = st.from_regex(r"[A-Za-z0-9_.-]{1,60}", fullmatch=True)
base_names = st.from_regex(_NAME_RE, fullmatch=True)


@settings(max_examples=300, deadline=None)
@given(prefix=prefixes, run_id=run_ids, base_name=base_names)
def test_derived_names_are_always_valid(prefix, run_id, base_name):
    name = eph.stack_name_for(prefix, run_id)
    assert STACK_NAME.fullmatch(name)
    assert _NAME_RE.fullmatch(eph.deployment_name_for(base_name, name))


@settings(max_examples=200, deadline=None)
@given(prefix=prefixes, ids=st.lists(run_ids, min_size=2, max_size=2, unique=True), base_name=base_names)
def test_each_run_id_gets_its_own_stack_and_deployment_names(prefix, ids, base_name):
    names = [eph.stack_name_for(prefix, run_id) for run_id in ids]
    assert names[0] != names[1]
    assert eph.deployment_name_for(base_name, names[0]) != eph.deployment_name_for(base_name, names[1])


@settings(max_examples=50, deadline=None)
@given(run_id=run_ids)
def test_a_prepared_deployment_validates_with_its_new_name(run_id):
    spec = eph.prepare(AWS, run_id=run_id, env={}, now=NOW)
    assert spec.deployment == parse_deployment(json.loads(spec.config["kumo:deployment"]))
    assert spec.deployment.lifecycle.ephemeral and not spec.deployment.lifecycle.protect


def test_run_id_comes_from_the_ci_environment():
    github = {"GITHUB_RUN_ID": "987654321", "GITHUB_RUN_ATTEMPT": "2", "GITHUB_REPOSITORY": "acme/mail",
              "GITHUB_SERVER_URL": "https://github.com"}
    spec = eph.prepare(AWS, env=github, now=NOW)
    assert spec.stack_name == "ci-aws-dev-987654321-2"
    assert spec.tags[eph.CI_RUN] == "https://github.com/acme/mail/actions/runs/987654321/attempts/2"
    gitlab = {"CI_PIPELINE_ID": "55", "CI_JOB_ID": "901", "CI_JOB_URL": "https://gitlab.example.com/a/b/-/jobs/901"}
    spec = eph.prepare(AWS, env=gitlab, now=NOW, prefix="mr")
    assert spec.stack_name == "mr-55-901" and spec.tags[eph.CI_RUN] == gitlab["CI_JOB_URL"]
    local = {eph.prepare(AWS, env={}, now=NOW).stack_name for _ in range(5)}
    assert len(local) == 5  # random outside CI


def test_a_base_given_as_a_loaded_stack_config_works_the_same():
    assert (eph.prepare(load_file(AWS), run_id="1", env={}, now=NOW).config
            == eph.prepare(AWS, run_id="1", env={}, now=NOW).config)


# -- durations and the sweep rule -------------------------------------------------------------------------

@given(st.integers(min_value=0, max_value=999_999), st.sampled_from("smhd"))
def test_durations_read_back_what_they_print(n, unit):
    value = eph.parse_duration(f"{n}{unit}")
    assert eph.parse_duration(eph.format_duration(value)) == value


@pytest.mark.parametrize("text", ["", "3", "h", "1.5h", "-2h", "3 hours", "2w", "1h30m"])
def test_bad_durations_are_refused(text):
    with pytest.raises(ValueError, match="is not a duration"):
        eph.parse_duration(text)


marks = st.fixed_dictionaries({}, optional={
    eph.MARK: st.sampled_from(["true", "false", "True", ""]),
    # Any date at all, any offset: a mark is data anyone could have written.
    eph.CREATED_AT: st.datetimes(timezones=st.just(timezone.utc)).map(eph.utc_text)
    | st.datetimes(timezones=st.timezones()).map(datetime.isoformat) | st.text(max_size=5),
    eph.TTL: st.sampled_from(["1h", "3h", "90m", "2d", "999999d", "soon"]),
})


@settings(max_examples=400)
@given(marks=marks, older=st.integers(min_value=0, max_value=72))
def test_sweep_destroys_only_marked_stacks_past_their_ttl_and_the_age(marks, older):
    destroy, why = eph.sweep_decision(marks, NOW, timedelta(hours=older))
    if destroy:
        created = datetime.fromisoformat(marks[eph.CREATED_AT])
        assert marks[eph.MARK] == "true"
        assert NOW >= created + min(eph.parse_duration(marks[eph.TTL]), eph.MAX_TTL)
        assert NOW - created >= timedelta(hours=older)
    elif marks.get(eph.MARK) != "true":
        assert "no kumo-infra:ephemeral=true mark" in why


def test_a_created_at_far_in_the_future_is_left_alone_and_said_so():
    destroy, why = eph.sweep_decision({eph.MARK: "true", eph.CREATED_AT: "9999-12-31T00:00:00Z", eph.TTL: "2d"},
                                      NOW, timedelta(0))
    assert not destroy and "is in the future: left for you to judge" in why


def test_a_ttl_beyond_the_bound_is_swept_at_the_bound():
    marks = {eph.MARK: "true", eph.CREATED_AT: eph.utc_text(NOW - eph.MAX_TTL), eph.TTL: "999999d"}
    assert eph.sweep_decision(marks, NOW, timedelta(0)) == (True, f"created {marks[eph.CREATED_AT]}, ttl 7d passed")


# -- marks on a backend without tags ------------------------------------------------------------------------

def test_without_tags_the_marks_are_read_from_the_history():
    from pulumi import automation as auto

    rec = Recorder(tags_supported=False)
    lines = []
    with eph.ephemeral_stack(AWS, **rec.options(on_output=lines.append)) as live:
        with eph.workspace(rec.command) as ws:  # another process's workspace: no config file of the stack
            marks = eph.read_marks(auto.Stack.select(live.name, ws))
    assert marks == {eph.MARK: "true", eph.CREATED_AT: "2026-11-30T12:00:00Z", eph.TTL: "3h", eph.CI_RUN: "1234-1"}
    assert any("holds no stack tags" in line for line in lines)
    assert rec.verbs().count("stack tag set") == 1  # one refusal, then the config marks alone


# -- the fixture in a user's own suite -----------------------------------------------------------------------

def test_the_fixture_destroys_after_a_user_suite_that_fails(tmp_path):
    state_path = tmp_path / "state.json"
    env = fake_pulumi.install(tmp_path / "bin", state_path)
    env = {k: v for k, v in env.items() if not k.startswith(("GITHUB_", "CI_", "KUMO_SECRET_"))}
    env["PYTHONPATH"] = str(ROOT)
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "conftest.py").write_text(textwrap.dedent(f"""
        import pytest
        from kumo_infra.ephemeral import stack_fixture
        kumo_stack = pytest.fixture(scope="session")(stack_fixture({str(AWS)!r}, run_id="u1", backoff_s=0))
    """))
    (suite / "test_mail.py").write_text(textwrap.dedent("""
        def test_has_an_address(kumo_stack):
            assert kumo_stack.outputs["public_ips"] == ["198.51.100.7"]

        def test_that_fails(kumo_stack):
            assert kumo_stack.name == "something else"
    """))
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(suite)],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert "1 failed, 1 passed" in result.stdout, result.stdout + result.stderr
    state = fake_pulumi.read_state(state_path)
    verbs = fake_pulumi.verbs(state["calls"])
    assert verbs.count("up") == 1  # one stack for the session
    assert verbs[-5:] == DESTROYED and state["stacks"] == {}

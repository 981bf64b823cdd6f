"""The ssh target on a real machine, over real SSH.

One Debian 12 guest stands in for a machine that already exists: sshd with a host key made for
this session, a sudo account (``deploy``) whose authorized key was made for this session too,
and nothing of kumo-infra on it. Its port 22 is forwarded to the host's loopback, and the
deployment names ``127.0.0.1`` and that port with the real host key and the secret
``kumo:sshPrivateKey``.

Nothing the machine receives is typed here: the offline engine runs the real program
(``kumo_infra.program.run``) and the test performs the ``remote.CopyToRemote`` and
``remote.Command`` it registers exactly as pulumi-command would (tests/vm/remote_command.py):
the installer text, its remote path, the command string, its standard input (the secrets) and
the connection with its pinned host key all come from the recorded inputs.

The one boot proves, in this order: a plan pinning another host key is refused before anything
is copied or run (and sshd saw no login); the real plan's bootstrap ends with
``KUMO-BOOTSTRAP OK`` and SMTP answers on port 25 from outside; the delivered secrets are files
``root:kumod 0640`` holding exactly the delivered values, and no value appears in any output,
the console, the journal or status.json; a second run of the same plan changes nothing; and
the real sshd refuses an environment entry as the runner expects (so a plan that used one would
fail here as it would for real).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import secrets as random_secrets
import time
from collections.abc import Iterator
from typing import Any

import pytest

from kumo_infra import offline, program, targets
from kumo_infra.bootstrap import INSTALL_COMMAND, INSTALLER_REMOTE_PATH
from kumo_infra.config import parse_deployment
from kumo_infra.secretspec import secret_specs

from .conftest import MirrorFactory
from .harness import GUEST_MIRROR_URL, ExistingMachine, RootImage, generate_ssh_key
from .remote_command import (COMMAND_TYPE, COPY_TYPE, Applied, Connection, HostKeyRefused, RemoteCommandFailed,
                             apply, run_command, unwrap)

pytestmark = [
    pytest.mark.vm,
    # Until the registry line lands (kumo_infra.targets.PACKAGES), like tests/test_target_ssh.py.
    pytest.mark.skipif("ssh" not in targets.PACKAGES, reason="the ssh target is not registered yet"),
]

USER = "deploy"  # an admin account with passwordless sudo, as most machines have (INSTALL_COMMAND's sudo path)
HOSTNAME = "mta-ssh.example.com"
# Documentation addresses (RFC 5737): the records name them; nothing ever connects to them.
PUBLIC_IP = "192.0.2.25"
STACK = "ssh-vm"


def deployment_config(machine: ExistingMachine, host_key_line: str, repo_key_fingerprint: str,
                      relay_password: str) -> dict[str, Any]:
    return {
        "kumo:deployment": {
            "cloud": "ssh", "name": "kumo-ssh-vm", "hostname": HOSTNAME, "os": "debian12",
            "ssh": {"hosts": [{"address": "127.0.0.1", "port": machine.ssh_port, "user": machine.user,
                               "host_key": host_key_line, "public_ip": PUBLIC_IP}]},
            # The mirror is plain http inside qemu, so its signing key is pinned by fingerprint.
            "kumomta": {"repo_url": GUEST_MIRROR_URL, "repo_key_fingerprint": repo_key_fingerprint},
            # Opens the API beyond the node: its password (generated) is delivered as a secret too.
            "network": {"api_cidrs": ["198.51.100.0/24"]},
            # Relay: the smarthost's password is delivered; nothing is reachable from the guest anyway.
            "port25": {"outbound": "relay", "relay": {"host": "smtp.example.net", "port": 587, "username": "kumo"},
                       "probe_hosts": ["192.0.2.1"], "probe_timeout_s": 3},
        },
        "kumo:sshPrivateKey": machine.private_key,
        "kumo:relayPassword": relay_password,
    }


def plan(config: dict[str, Any]) -> offline.OfflineResult:
    return offline.run(program.run, config, stack=STACK, secret_keys=["kumo:sshPrivateKey", "kumo:relayPassword"])


def delivered_values(command: offline.RecordedResource) -> dict[str, bytes]:
    """The secrets on the Command's standard input (kumo_infra.bootstrap.delivered_secrets_payload's framing)."""
    lines = unwrap(command.inputs["stdin"]).splitlines()
    assert lines[-1] == f"end {len(lines) - 2}", lines[-1]
    return {key: base64.b64decode(value) for key, value in (line.split(" ") for line in lines[1:-1])}


def guest_status(machine: ExistingMachine) -> dict[str, Any]:
    return json.loads(machine.vm.read_file("/var/lib/kumo-infra/status.json"))


def accepted_logins(machine: ExistingMachine) -> list[str]:
    journal = machine.vm.exec(["journalctl", "-b", "-o", "cat", "_COMM=sshd"], check=True).stdout
    return [line for line in journal.splitlines() if line.startswith("Accepted ")]


@dataclasses.dataclass
class Story:
    """Everything the one boot did, in order, for the tests below to examine."""

    machine: ExistingMachine
    config: dict[str, Any]
    plan: offline.OfflineResult
    refused: HostKeyRefused
    home_after_refusal: str  # ls -A of the user's home after the refused plan
    logins_after_refusal: list[str]
    first: Applied
    first_status: dict[str, Any]
    banner: str
    second: Applied
    second_status: dict[str, Any]
    replanned: offline.OfflineResult
    seconds: dict[str, float]  # how long each phase took (printed; the CI budget is measured from these)

    @property
    def command(self) -> offline.RecordedResource:
        return self.plan.one(COMMAND_TYPE)

    @property
    def copy(self) -> offline.RecordedResource:
        return self.plan.one(COPY_TYPE)


def apply_or_fail(planned: offline.OfflineResult, what: str) -> Applied:
    try:
        return apply(planned.resources)
    except RemoteCommandFailed as failed:
        failure = str(failed)  # the command's output, as pulumi-command's error shows it
    pytest.fail(f"{what}: the installer failed over SSH: {failure}", pytrace=False)


@pytest.fixture(scope="module")
def story(vm_rootfs: RootImage, node_mirror: MirrorFactory) -> Iterator[Story]:
    mirror = node_mirror()
    relay_password = f"relay-{random_secrets.token_urlsafe(18)}"
    seconds: dict[str, float] = {}
    started = time.monotonic()

    def lap(phase: str) -> None:
        seconds[phase] = round(time.monotonic() - started - sum(seconds.values()), 1)

    with ExistingMachine(vm_rootfs, user=USER, hostname="mta-ssh", mirror_port=mirror.port) as machine:
        lap("boot until sshd and cloud-init are done")
        # 1. A plan pinning another machine's key: refused before anything is copied or run.
        other_key = generate_ssh_key("root@another-machine").public_line
        wrong = plan(deployment_config(machine, other_key, mirror.fingerprint, relay_password))
        with pytest.raises(HostKeyRefused) as refused:
            apply(wrong.resources)
        home = machine.vm.exec(["ls", "-A", f"/home/{USER}"], check=True).stdout
        logins = accepted_logins(machine)
        lap("wrong host key")

        # 2. The real plan, twice: a fresh `pulumi up`, then the same command run again.
        config = deployment_config(machine, machine.host_key_line, mirror.fingerprint, relay_password)
        real = plan(config)
        first = apply_or_fail(real, "first run")
        first_status = guest_status(machine)
        banner = machine.vm.smtp_banner()
        lap("first run")
        replanned = plan(config)
        second = apply_or_fail(replanned, "second run")
        lap("second run")
        print(f"ssh target VM phases (s): {seconds}")
        yield Story(machine, config, real, refused.value, home, logins, first, first_status, banner, second,
                    guest_status(machine), replanned, seconds)


def last_line(text: str) -> str:
    return text.rstrip("\n").rsplit("\n", 1)[-1]


def test_plan_connects_with_the_host_key_pinned_and_no_secret_on_the_command_line(story: Story) -> None:
    for resource in (story.copy, story.command):
        # The whole connection is a secret in the plan (it holds the private key).
        assert offline.is_secret(resource.inputs["connection"])
        connection = Connection.from_inputs(unwrap(resource.inputs["connection"]))
        assert connection.host_key is not None
        assert connection.host_key.split()[:2] == story.machine.host_key_line.split()[:2]
        assert (connection.host, connection.port, connection.user) == ("127.0.0.1", story.machine.ssh_port, USER)
    assert unwrap(story.copy.inputs["remotePath"]) == INSTALLER_REMOTE_PATH
    command = story.command.inputs
    assert command["create"] == INSTALL_COMMAND and "environment" not in command
    assert command["logging"] == "none" and offline.is_secret(command["stdin"])
    # The command runs only once the installer is there.
    assert story.copy.urn in story.command.dependencies


def test_wrong_host_key_is_refused_before_anything_is_copied_or_run(story: Story) -> None:
    assert "host key mismatch" in str(story.refused)
    # Nothing reached the machine: no installer in the account's home, and sshd logged no login.
    assert INSTALLER_REMOTE_PATH.split("/")[0] not in story.home_after_refusal.split()
    assert story.logins_after_refusal == []
    # The refused attempt was the only thing before the real runs: they then logged in.
    assert accepted_logins(story.machine)


def test_bootstrap_over_ssh_ends_ok_and_smtp_answers_on_25(story: Story) -> None:
    (run,) = story.first.runs
    assert last_line(run.stdout).startswith(f"KUMO-BOOTSTRAP OK host={HOSTNAME}"), run.combined[-4000:]
    assert story.first_status["result"] == "ok" and story.first_status["failed_step"] is None
    assert story.banner.startswith("220 ") and HOSTNAME in story.banner
    # The installer the plan copied is on the machine byte for byte, where the command runs it.
    copied = story.machine.vm.read_file(f"/home/{USER}/{INSTALLER_REMOTE_PATH}").decode()
    assert copied == unwrap(story.copy.inputs["source"])["asset"]["text"]
    assert story.machine.vm.exec(["systemctl", "is-active", "kumomta"]).stdout.strip() == "active"


def test_second_run_of_the_same_plan_changes_nothing(story: Story) -> None:
    # The same configuration plans the same installer and secrets (the triggers are equal, so a
    # real `pulumi up` would not even run it again); run anyway, it finds nothing to do.
    assert unwrap(story.replanned.one(COPY_TYPE).inputs) == unwrap(story.copy.inputs)
    assert unwrap(story.replanned.one(COMMAND_TYPE).inputs) == unwrap(story.command.inputs)
    (run,) = story.second.runs
    assert last_line(run.stdout).startswith(f"KUMO-BOOTSTRAP OK host={HOSTNAME}"), run.combined[-4000:]
    status = story.second_status
    assert status["result"] == "ok" and status["changed"] is False
    assert [(s["name"], s["changes"]) for s in status["steps"] if s["changed"]] == []
    assert story.machine.vm.smtp_banner().startswith("220 ")


def test_delivered_secrets_are_root_kumod_0640_files_holding_exactly_the_values(story: Story) -> None:
    delivered = delivered_values(story.command)
    deployment = parse_deployment(story.config["kumo:deployment"])
    specs = secret_specs(deployment)
    assert sorted(delivered) == sorted(s.key for s in specs)
    assert delivered["relay-password"] == story.config["kumo:relayPassword"].encode()
    for spec in specs:
        mode = story.machine.vm.exec(["stat", "-c", "%U:%G %a", spec.machine_path], check=True).stdout.strip()
        assert mode == "root:kumod 640", (spec.machine_path, mode)
        assert story.machine.vm.read_file(spec.machine_path) == delivered[spec.key], spec.machine_path


def test_no_secret_value_appears_in_any_output(story: Story) -> None:
    values = {key: value.decode() for key, value in delivered_values(story.command).items()
              if key != "api-tls-cert"}  # the certificate is public (the api output carries it)
    assert {"relay-password", "api-password"} <= set(values)
    vm = story.machine.vm
    seen = {
        "installer (copied file)": unwrap(story.copy.inputs["source"])["asset"]["text"],
        "command line": story.command.inputs["create"],
        "status.json": json.dumps(story.first_status) + json.dumps(story.second_status),
        "console": vm.console_text(),
        "journal": vm.exec(["journalctl", "-b", "-o", "cat"], check=True, timeout=300).stdout,
        "plan outputs and log": json.dumps(story.plan.outputs) + "\n".join(story.plan.log),
    }
    for number, applied in (("first", story.first), ("second", story.second)):
        for run in applied.runs:
            seen[f"{number} run stdout+stderr"] = run.combined
            seen[f"{number} run logged"] = run.logged
    leaks = [(key, where) for key, value in values.items() for where, text in seen.items() if value in text]
    assert leaks == []


def test_real_sshd_refuses_an_environment_entry_as_the_runner_expects(story: Story) -> None:
    # pulumi-command sends each environment entry with Setenv and fails when sshd refuses it
    # (no AcceptEnv): the runner does the same, so a plan using `environment` fails here too.
    connection = Connection.from_inputs(unwrap(story.command.inputs["connection"]))
    with pytest.raises(RemoteCommandFailed, match="could not set environment variable 'KUMO_PROBE'"):
        run_command(connection, "true", environment={"KUMO_PROBE": "1"})
    assert run_command(connection, "id -un").stdout == USER

"""The pulumi-command runner (remote_command.py) without a VM: plans read from the offline engine,
and SSH sessions against a small paramiko server on this machine's loopback.

The booted test (test_ssh_target_vm.py) runs the real plan against a real sshd; these tests pin
the runner's own promises, fast: a pinned host key that does not match is refused before any
authentication; an environment entry the server does not accept fails the command before it
runs; standard input arrives whole and then ends; a non-zero exit fails with the output.
"""

from __future__ import annotations

import io
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import paramiko
import pulumi
import pytest
from pulumi_command import remote

from kumo_infra import offline

from .harness import SshKeyPair, generate_ssh_key
from .remote_command import (COMMAND_TYPE, COPY_TYPE, Connection, HostKeyRefused, RemoteCommandFailed, UnsupportedPlan,
                             copy_source_text, parse_public_key, remote_steps, run_command, unwrap)


def _plan(program) -> list[offline.RecordedResource]:
    return offline.run(program, {}, stack="runner").resources


def _connection(**overrides) -> remote.ConnectionArgs:
    values = {"host": "127.0.0.1", "port": 2222, "user": "deploy", "host_key": "ssh-ed25519 AAAA",
              "private_key": pulumi.Output.secret("PRIVATE")}
    return remote.ConnectionArgs(**{**values, **overrides})


# --------------------------------------------------------------------------
# Reading the plan
# --------------------------------------------------------------------------


def test_steps_follow_recorded_dependencies_and_unwrap_secrets() -> None:
    def program() -> None:
        copy = remote.CopyToRemote("copy", connection=_connection(), source=pulumi.StringAsset("#!/bin/sh\n"),
                                   remote_path=".kumo-infra/install")
        remote.Command("run", connection=_connection(), create="sh .kumo-infra/install",
                       stdin=pulumi.Output.secret("s3cret"), logging="none",
                       opts=pulumi.ResourceOptions(depends_on=[copy]))

    steps = remote_steps(_plan(program))
    assert [(s.resource.type, s.resource.name) for s in steps] == [(COPY_TYPE, "copy"), (COMMAND_TYPE, "run")]
    copy, run = steps
    assert copy_source_text(copy) == "#!/bin/sh\n"
    assert run.inputs["stdin"] == "s3cret"  # recorded as a secret, unwrapped for the run
    assert offline.is_secret(run.resource.inputs["stdin"])
    assert run.connection == Connection(host="127.0.0.1", port=2222, user="deploy", private_key="PRIVATE",
                                        host_key="ssh-ed25519 AAAA", per_dial_timeout=15)


def test_a_command_depending_on_nothing_may_run_before_the_copy() -> None:
    # Without depends_on the engine may start both at once: the runner puts the command first, so
    # a plan that forgets the dependency fails (the file is not there yet).
    def program() -> None:
        remote.CopyToRemote("copy", connection=_connection(), source=pulumi.StringAsset("x"), remote_path="x")
        remote.Command("run", connection=_connection(), create="sh x")

    assert [s.kind for s in remote_steps(_plan(program))] == ["command", "copy"]


# Overrides, not ConnectionArgs: an Output made outside a run would belong to no engine.
@pytest.mark.parametrize("overrides, refused", [
    ({"host": "192.0.2.10"}, "not a loopback address"),
    ({"proxy": {"host": "127.0.0.1"}}, "proxy"),
    ({"private_key": None, "password": "pw"}, "password"),
    ({"private_key": None}, "without privateKey"),
])
def test_what_the_runner_does_not_emulate_is_refused(overrides: dict, refused: str) -> None:
    def program() -> None:
        remote.Command("run", connection=_connection(**overrides), create="true")

    with pytest.raises(UnsupportedPlan, match=refused):
        remote_steps(_plan(program))


def test_only_text_assets_are_copied() -> None:
    def program() -> None:
        remote.CopyToRemote("copy", connection=_connection(), source=pulumi.FileAsset(__file__), remote_path="x")

    (step,) = remote_steps(_plan(program))
    with pytest.raises(UnsupportedPlan, match="only a text asset"):
        copy_source_text(step)


def test_unwrap_removes_nested_secret_envelopes() -> None:
    wrapped = {offline.SECRET_SIG_KEY: offline.SECRET_SIG,
               "value": {"a": [{offline.SECRET_SIG_KEY: offline.SECRET_SIG, "value": "x"}]}}
    assert unwrap(wrapped) == {"a": ["x"]}


def test_host_key_lines_parse_as_ssh_parses_authorized_keys() -> None:
    key = generate_ssh_key("a comment")
    assert parse_public_key(key.public_line).get_base64() == key.public_line.split()[1]
    with pytest.raises(paramiko.SSHException, match="failed to parse host key"):
        parse_public_key("ssh-dss AAAA")


# --------------------------------------------------------------------------
# Against an SSH server on the loopback
# --------------------------------------------------------------------------


@dataclass
class _Seen:
    authentications: list[str] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    environment: dict[str, str] = field(default_factory=dict)
    stdin: dict[str, bytes] = field(default_factory=dict)


class _Server(paramiko.ServerInterface):
    """Accepts one client key; AcceptEnv LANG only; each command echoes its standard input."""

    def __init__(self, client: paramiko.PKey, seen: _Seen) -> None:
        self.client, self.seen = client, seen

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        self.seen.authentications.append(username)
        return paramiko.AUTH_SUCCESSFUL if key == self.client else paramiko.AUTH_FAILED

    def check_channel_request(self, kind: str, chanid: int) -> int:
        return paramiko.OPEN_SUCCEEDED if kind == "session" else paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_env_request(self, channel: paramiko.Channel, name: bytes, value: bytes) -> bool:
        if name != b"LANG":
            return False
        self.seen.environment[name.decode()] = value.decode()
        return True

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        self.seen.commands.append(command.decode())
        threading.Thread(target=self._execute, args=(channel, command.decode()), daemon=True).start()
        return True

    def _execute(self, channel: paramiko.Channel, command: str) -> None:
        received = bytearray()
        while chunk := channel.recv(65536):  # until the client's end of input
            received += chunk
        self.seen.stdin[command] = bytes(received)
        channel.sendall(b"out:" + bytes(received) + b"\n")
        channel.sendall_stderr(b"err line\n")
        channel.send_exit_status(3 if command == "fail" else 0)
        channel.close()


@pytest.fixture
def ssh_server() -> Iterator[tuple[int, SshKeyPair, SshKeyPair, _Seen]]:
    host_key, client = generate_ssh_key("host"), generate_ssh_key("client")
    seen = _Seen()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    transports: list[paramiko.Transport] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                sock, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            transport = paramiko.Transport(sock)
            transport.add_server_key(paramiko.Ed25519Key.from_private_key(io.StringIO(host_key.private_openssh)))
            transports.append(transport)
            try:
                transport.start_server(server=_Server(parse_public_key(client.public_line), seen))
            except (paramiko.SSHException, EOFError):
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], host_key, client, seen
    finally:
        stop.set()
        thread.join(timeout=10)
        listener.close()
        for transport in transports:
            transport.close()


def _conn(port: int, host_key: str, client: SshKeyPair) -> Connection:
    return Connection("127.0.0.1", port, "deploy", client.private_openssh, host_key, 10)


def test_command_gets_its_stdin_then_end_of_input_and_output_is_captured(ssh_server) -> None:
    port, host_key, client, seen = ssh_server
    run = run_command(_conn(port, host_key.public_line, client), "install", stdin="payload\n", logging="none",
                      environment={"LANG": "C.UTF-8"})
    assert seen.stdin["install"] == b"payload\n" and seen.environment == {"LANG": "C.UTF-8"}
    assert (run.stdout, run.stderr, run.exit_status) == ("out:payload\n", "err line", 0)
    assert run.logged == ""  # logging: none
    assert run_command(_conn(port, host_key.public_line, client), "no-input").stdout == "out:"
    assert seen.stdin["no-input"] == b""


def test_pinned_host_key_mismatch_is_refused_before_authentication(ssh_server) -> None:
    port, _, client, seen = ssh_server
    other = generate_ssh_key("another machine")
    with pytest.raises(HostKeyRefused, match="host key mismatch"):
        run_command(_conn(port, other.public_line, client), "install", stdin="payload")
    assert seen.authentications == [] and seen.commands == []


def test_environment_the_server_does_not_accept_fails_before_the_command(ssh_server) -> None:
    port, host_key, client, seen = ssh_server
    with pytest.raises(RemoteCommandFailed, match="could not set environment variable 'SECRET'"):
        run_command(_conn(port, host_key.public_line, client), "install", environment={"SECRET": "x"})
    assert seen.commands == []


def test_non_zero_exit_fails_with_the_output(ssh_server) -> None:
    port, host_key, client, _ = ssh_server
    with pytest.raises(RemoteCommandFailed, match=r"Process exited with status 3: running 'fail':\n") as failed:
        run_command(_conn(port, host_key.public_line, client), "fail", stdin="x")
    assert "out:x" in str(failed.value) and "err line" in str(failed.value)

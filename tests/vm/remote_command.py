"""Run what a plan registers with pulumi-command's ``remote`` resources, the way its provider does.

The ssh target registers, per host, a ``command:remote:CopyToRemote`` and a
``command:remote:Command``. A test reads their recorded inputs from the offline plan
(:func:`kumo_infra.offline.run`: assets as ``{"asset": {"text": ...}}``, secrets in the
engine's envelope) and hands them to :func:`apply`, which performs them over a real SSH
connection with paramiko, step for step as pulumi-command's provider does (its Go source,
``provider/pkg/provider/remote/``):

* connection.go ``SSHConfig``/``Dial``: with ``hostKey`` set, ``ssh.FixedHostKey`` and the host
  key algorithms restricted to that key's type, so a server presenting another key is refused
  during the key exchange, before any authentication, file or command; without ``hostKey`` any
  key is accepted (``InsecureIgnoreHostKey``). Authentication by ``privateKey``.
* copyController.go ``copyTextContent`` (a text asset): stat ``remotePath`` (a directory is an
  error), SFTP ``MkdirAll`` of its directory, then ``Create`` (read, write, create, truncate; no
  attributes) and one write of the text.
* commandOutputs.go ``run``: a new session; ``Setenv`` for each ``environment`` entry, each one
  a request that wants a reply, so a variable the server does not accept (``AcceptEnv``) fails the
  command before it starts; ``stdin`` only when non-empty (end of input either way); ``Run`` the
  ``create`` string; stdout and stderr captured, and on a non-zero exit an error carrying both.
  ``logging`` decides what the provider would also show in Pulumi's log: :attr:`CommandRun.logged`.

Not emulated, and refused so a plan that needs them fails here rather than passing untested:
archives, file and URI assets, a proxy (bastion), password and agent authentication, and the
``update``/``delete`` commands. The provider's dial retries are not emulated: the caller waits
for the machine's sshd first.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import ipaddress
import logging
import posixpath
import select
import socket
import stat
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import paramiko
from paramiko.common import cMSG_CHANNEL_REQUEST
from paramiko.message import Message

from kumo_infra.offline import RecordedResource, is_secret

COPY_TYPE = "command:remote:CopyToRemote"
COMMAND_TYPE = "command:remote:Command"

# Connection inputs this runner understands; any other one (proxy, password, agentSocketPath,
# privateKeyPassword) makes it refuse the plan.
_CONNECTION_KEYS = {"host", "port", "user", "privateKey", "hostKey", "dialErrorLimit", "perDialTimeout"}
_COPY_KEYS = {"connection", "source", "remotePath", "triggers"}
_COMMAND_KEYS = {"connection", "create", "stdin", "environment", "logging", "triggers", "addPreviousOutputInEnv"}
# commandOutputs.go / logging.go: what the provider also writes to Pulumi's log.
_LOGGED = {"stdout": ("stdout",), "stderr": ("stderr",), "stdoutAndStderr": ("stdout", "stderr"), "none": ()}

_KEY_CLASSES: dict[str, type[paramiko.PKey]] = {
    "ssh-ed25519": paramiko.Ed25519Key,
    "ssh-rsa": paramiko.RSAKey,
    "ecdsa-sha2-nistp256": paramiko.ECDSAKey,
    "ecdsa-sha2-nistp384": paramiko.ECDSAKey,
    "ecdsa-sha2-nistp521": paramiko.ECDSAKey,
}


class UnsupportedPlan(AssertionError):
    """The recorded resource uses something this runner does not emulate."""


class HostKeyRefused(paramiko.SSHException):
    """The server presented another host key than the pinned one (refused before authentication)."""


class RemoteCommandFailed(RuntimeError):
    """The command exited non-zero (or could not start); the message carries its output, as the provider's does."""

    def __init__(self, message: str, run: "CommandRun | None" = None) -> None:
        super().__init__(message)
        self.run = run


def unwrap(value: Any) -> Any:
    """Recorded inputs without the engine's secret envelopes (at any depth)."""
    if is_secret(value):
        return unwrap(value["value"])
    if isinstance(value, dict):
        return {k: unwrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unwrap(v) for v in value]
    return value


@dataclasses.dataclass(frozen=True)
class Connection:
    """connection.go's ``connectionBase``, from the recorded (unwrapped) input."""

    host: str
    port: int
    user: str
    private_key: str
    host_key: str | None
    per_dial_timeout: int

    @classmethod
    def from_inputs(cls, raw: Mapping[str, Any]) -> "Connection":
        unknown = set(raw) - _CONNECTION_KEYS
        if unknown:
            raise UnsupportedPlan(f"connection inputs this runner does not emulate: {sorted(unknown)}")
        if not raw.get("privateKey"):
            raise UnsupportedPlan("connection without privateKey (password/agent authentication is not emulated)")
        host = str(raw["host"])
        # Workplace rule: tests only ever connect to this machine's loopback.
        if not ipaddress.ip_address(host).is_loopback:
            raise UnsupportedPlan(f"connection.host {host!r} is not a loopback address; tests connect to nothing else")
        return cls(
            host=host,
            port=int(raw.get("port", 22)),  # the SDK sends its defaults: port 22, user root, 15 s per dial
            user=str(raw.get("user", "root")),
            private_key=str(raw["privateKey"]),
            host_key=raw.get("hostKey"),
            per_dial_timeout=int(raw.get("perDialTimeout", 15)),
        )


def parse_public_key(line: str) -> paramiko.PKey:
    """An ``authorized_keys``-style line (``ssh-ed25519 AAAA... [comment]``), as ssh.ParseAuthorizedKey reads it."""
    fields = line.split()
    if len(fields) < 2 or fields[0] not in _KEY_CLASSES:
        raise paramiko.SSHException(f"failed to parse host key: {line[:40]!r}")
    return paramiko.PKey.from_type_string(fields[0], base64.b64decode(fields[1]))


def _private_key(text: str) -> paramiko.PKey:
    errors = []
    for cls in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return cls.from_private_key(io.StringIO(text))
        except (paramiko.SSHException, ValueError) as error:
            errors.append(f"{cls.__name__}: {error}")
    raise paramiko.SSHException("cannot parse the connection's privateKey: " + "; ".join(errors))


def server_host_key(host: str, port: int, timeout: float = 15.0) -> paramiko.PKey:
    """The host key an SSH server presents (key exchange only: no authentication, no session)."""
    sock = socket.create_connection((host, port), timeout=timeout)
    transport = paramiko.Transport(sock)
    try:
        transport.banner_timeout = transport.handshake_timeout = timeout
        transport.start_client(timeout=timeout)
        return transport.get_remote_server_key()
    finally:
        transport.close()


@contextmanager
def dial(connection: Connection) -> Iterator[paramiko.Transport]:
    """An authenticated SSH transport, host key pinned as connection.go pins it."""
    sock = socket.create_connection((connection.host, connection.port), timeout=connection.per_dial_timeout)
    transport = paramiko.Transport(sock)
    try:
        transport.banner_timeout = transport.handshake_timeout = connection.per_dial_timeout
        pinned = None
        if connection.host_key is not None:
            pinned = parse_public_key(connection.host_key)
            # HostKeyAlgorithms = []string{publicKey.Type()}: only the pinned key's type is offered.
            transport._preferred_keys = [pinned.get_name()]  # noqa: SLF001 (Transport.connect does the same)
        transport.start_client(timeout=connection.per_dial_timeout)
        presented = transport.get_remote_server_key()
        if pinned is not None and (presented.get_name(), presented.asbytes()) != (pinned.get_name(), pinned.asbytes()):
            # ssh.FixedHostKey: the handshake fails; nothing is authenticated, copied or run.
            raise HostKeyRefused(f"ssh: handshake failed: ssh: host key mismatch ({presented.get_name()} "
                                 f"{presented.fingerprint} presented, {pinned.fingerprint} pinned)")
        transport.auth_publickey(connection.user, _private_key(connection.private_key))
        yield transport
    finally:
        transport.close()


# --------------------------------------------------------------------------
# CopyToRemote
# --------------------------------------------------------------------------


def _sftp_mkdir_all(sftp: paramiko.SFTPClient, path: str) -> None:
    """pkg/sftp Client.MkdirAll (relative paths resolve against the login directory, as there)."""
    try:
        if stat.S_ISDIR(sftp.stat(path).st_mode or 0):
            return
        raise OSError(f"mkdir {path}: not a directory")
    except FileNotFoundError:
        pass
    i = len(path)
    while i > 0 and path[i - 1] == "/":
        i -= 1
    j = i
    while j > 0 and path[j - 1] != "/":
        j -= 1
    if j > 1:
        _sftp_mkdir_all(sftp, path[: j - 1])
    try:
        sftp.mkdir(path)  # paramiko sends mode 0777; sftp-server applies its umask, as for no attributes
    except OSError:
        if not stat.S_ISDIR(sftp.lstat(path).st_mode or 0):
            raise


def copy_text(connection: Connection, text: str, remote_path: str) -> None:
    """copyController.go copyTextContent, over a connection of its own (copyToRemote dials one)."""
    with dial(connection) as transport:
        sftp = paramiko.SFTPClient.from_transport(transport)
        assert sftp is not None
        try:
            try:
                if stat.S_ISDIR(sftp.stat(remote_path).st_mode or 0):
                    raise OSError(f"remote path {remote_path} is a directory; when using a text asset, "
                                  "remotePath must be a file path")
            except FileNotFoundError:
                pass
            _sftp_mkdir_all(sftp, posixpath.dirname(remote_path) or ".")
            # sftp.Create: O_RDWR|O_CREATE|O_TRUNC and no attributes (the server's default mode).
            with sftp.open(remote_path, "w+") as remote:
                remote.write(text.encode())
        finally:
            sftp.close()


# --------------------------------------------------------------------------
# Command
# --------------------------------------------------------------------------


@dataclasses.dataclass
class CommandRun:
    command: str
    stdout: str  # as the provider stores it: one trailing newline trimmed
    stderr: str
    combined: str  # stdout and stderr in arrival order (what the provider's error carries)
    exit_status: int
    logged: str  # what the provider would also write to Pulumi's log, per the logging input


def _setenv(channel: paramiko.Channel, name: str, value: str) -> None:
    """session.Setenv: an "env" request that wants a reply (paramiko's own does not ask for one)."""
    message = Message()
    message.add_byte(cMSG_CHANNEL_REQUEST)
    message.add_int(channel.remote_chanid)
    message.add_string("env")
    message.add_boolean(True)
    message.add_string(name)
    message.add_string(value)
    channel._event_pending()  # noqa: SLF001 (as Channel.exec_command does)
    channel.transport._send_user_message(message)  # noqa: SLF001
    try:
        channel._wait_for_event()  # noqa: SLF001: a refusal closes the channel and raises here
    except paramiko.SSHException as error:
        raise RemoteCommandFailed(
            f"could not set environment variable {name!r}: ssh: setenv failed ({error}); this only works if "
            "the SSH server accepts the variable (AcceptEnv)"
        ) from None


def run_command(
    connection: Connection, command: str, stdin: str | None = None, environment: Mapping[str, str] | None = None,
    logging: str = "stdoutAndStderr", timeout: float = 1800.0,
) -> CommandRun:
    """commandOutputs.go run: one session, Setenv, stdin if non-empty, Run; RemoteCommandFailed on failure."""
    if logging not in _LOGGED:
        raise UnsupportedPlan(f"logging {logging!r}")
    with dial(connection) as transport:
        channel = transport.open_session(timeout=connection.per_dial_timeout)
        for name, value in (environment or {}).items():
            _setenv(channel, name, value)
        channel.exec_command(command)

        def feed() -> None:
            # Go's session copies Stdin and then closes the write side; no Stdin is an empty reader.
            try:
                if stdin:
                    channel.sendall(stdin.encode())
            finally:
                channel.shutdown_write()

        writer = threading.Thread(target=feed, name="remote-command-stdin", daemon=True)
        writer.start()
        out, err, both = bytearray(), bytearray(), bytearray()
        deadline = time.monotonic() + timeout
        while True:
            select.select([channel], [], [], 5.0)
            progressed = False
            while channel.recv_ready():
                chunk = channel.recv(65536)
                out += chunk
                both += chunk
                progressed = True
            while channel.recv_stderr_ready():
                chunk = channel.recv_stderr(65536)
                err += chunk
                both += chunk
                progressed = True
            if progressed:
                continue
            # End of data on both streams, and the exit status (or the channel closed without one).
            if channel.closed or (channel.eof_received and channel.exit_status_ready()):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{command!r} still running after {timeout:.0f}s; output so far:\n{both.decode(errors='replace')}")
        status = channel.recv_exit_status()
        writer.join(timeout=30)

    def text(data: bytearray) -> str:
        return data.decode("utf-8", errors="replace")

    logged = "".join(text(b) for b in ((out if "stdout" in _LOGGED[logging] else b""),
                                       (err if "stderr" in _LOGGED[logging] else b"")))
    run = CommandRun(command, text(out).removesuffix("\n"), text(err).removesuffix("\n"), text(both), status, logged)
    if status != 0:
        # fmt.Errorf("%w: running %q:\n%s", err, cmd, stdouterrbuf.String())
        raise RemoteCommandFailed(f"Process exited with status {status}: running {command!r}:\n{text(both)}", run)
    return run


# --------------------------------------------------------------------------
# A plan's remote resources, in the order the engine may run them
# --------------------------------------------------------------------------


@dataclasses.dataclass
class Step:
    resource: RecordedResource
    connection: Connection
    inputs: dict[str, Any]  # unwrapped

    @property
    def kind(self) -> str:
        return "copy" if self.resource.type == COPY_TYPE else "command"


@dataclasses.dataclass
class Applied:
    copies: list[Step]
    runs: list[CommandRun]


def remote_steps(resources: Sequence[RecordedResource]) -> list[Step]:
    """The plan's CopyToRemote and Command resources, each after everything it depends on.

    Only recorded dependencies order them (the engine runs independent resources at once), so a
    command that does not depend on the copy it needs may run before it: :func:`apply` then fails.
    """
    remote = [r for r in resources if r.type in (COPY_TYPE, COMMAND_TYPE)]
    by_urn = {r.urn: r for r in remote}
    ordered: list[RecordedResource] = []
    placed: set[str] = set()

    def place(resource: RecordedResource, path: tuple[str, ...]) -> None:
        if resource.urn in placed:
            return
        if resource.urn in path:
            raise AssertionError(f"dependency cycle through {resource.name}")
        for urn in resource.dependencies:
            if urn in by_urn:
                place(by_urn[urn], (*path, resource.urn))
        placed.add(resource.urn)
        ordered.append(resource)

    # Commands last among equals: of two independent resources the engine may start either first,
    # so the copies come late only if nothing orders them.
    for resource in sorted(remote, key=lambda r: r.type == COPY_TYPE):
        place(resource, ())
    steps = []
    for resource in ordered:
        inputs = unwrap(resource.inputs)
        allowed = _COPY_KEYS if resource.type == COPY_TYPE else _COMMAND_KEYS
        unknown = set(inputs) - allowed
        if unknown:
            raise UnsupportedPlan(f"{resource.name}: inputs this runner does not emulate: {sorted(unknown)}")
        steps.append(Step(resource, Connection.from_inputs(inputs["connection"]), inputs))
    return steps


def copy_source_text(step: Step) -> str:
    source = step.inputs["source"]
    if not (isinstance(source, dict) and set(source) == {"asset"} and set(source["asset"]) == {"text"}):
        raise UnsupportedPlan(f"{step.resource.name}: only a text asset (StringAsset) is emulated, not {source!r:.80}")
    return str(source["asset"]["text"])


def apply(resources: Sequence[RecordedResource], timeout: float = 1800.0) -> Applied:
    """Create every remote resource of a plan, as ``pulumi up`` on an empty stack would."""
    applied = Applied([], [])
    for step in remote_steps(resources):
        if step.kind == "copy":
            copy_text(step.connection, copy_source_text(step), str(step.inputs["remotePath"]))
            applied.copies.append(step)
            continue
        inputs = step.inputs
        if inputs.get("create") is None:
            continue  # Create without a create command runs nothing
        environment = inputs.get("environment") or {}
        run = run_command(step.connection, str(inputs["create"]), inputs.get("stdin"),
                          {str(k): str(v) for k, v in environment.items()},
                          inputs.get("logging") or "stdoutAndStderr", timeout)
        applied.runs.append(run)
    return applied


def wait_for_host_key(host: str, port: int, expected: str, timeout: float, is_alive: Any = None) -> None:
    """Wait until the server on ``host:port`` presents the host key ``expected`` (a public key line).

    Only the key exchange: nothing authenticates, so the server's log shows no session. Another
    key than ``expected`` keeps the wait going (cloud-init replaces the image's keys at boot) and
    is named if it is still there at the end.
    """
    wanted = parse_public_key(expected)
    deadline = time.monotonic() + timeout
    # While sshd is not up, qemu accepts and closes at once: paramiko's transport thread would log
    # a traceback for each try.
    quiet = logging.getLogger("paramiko.transport")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        _wait_for_key(host, port, wanted, expected, deadline, is_alive)
    finally:
        quiet.setLevel(level)


def _wait_for_key(host: str, port: int, wanted: paramiko.PKey, expected: str, deadline: float, is_alive: Any) -> None:
    last = "no answer"
    while time.monotonic() < deadline:
        if is_alive is not None and not is_alive():
            raise RuntimeError(f"the machine stopped while waiting for its sshd ({last})")
        try:
            key = server_host_key(host, port, timeout=10)
            if (key.get_name(), key.asbytes()) == (wanted.get_name(), wanted.asbytes()):
                return
            last = f"presents another key: {key.get_name()} {key.get_base64()}"
        except (OSError, EOFError, paramiko.SSHException) as error:
            last = f"{type(error).__name__}: {error}"
        time.sleep(2)
    raise TimeoutError(f"sshd on {host}:{port} did not present the {expected.split()[0]} key {wanted.fingerprint}: {last}")

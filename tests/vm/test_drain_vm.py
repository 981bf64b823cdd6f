"""``kumo-infra drain`` against a booted node, run as the operator runs it.

One Debian 12 guest is a machine of the ``ssh`` target with ``network.api_cidrs``: the plan the
offline engine records is applied over SSH as pulumi-command would (tests/vm/remote_command.py),
with one change: the API's TLS pair is a real one made here for 127.0.0.1 (the offline engine's is
a placeholder), delivered like every secret on the installer's standard input. The stand-in
kumod then serves, as the rendered policy configures it, SMTP on 25 (mail held, never delivered)
and the authenticated TLS API on 8443 with KumoMTA's suspend, xfer and metrics shapes.

The command runs as a subprocess (``python -m kumo_infra.cli drain --stack ...``) in a project
directory of its own, reading the stack's outputs through the Automation API from the fake
``pulumi`` first on PATH (tests/fake_pulumi.py), whose ``nodes`` and ``api`` outputs point at the
forwarded ports. The peer is the stand-in's own xfer listener running on the host, which the guest
reaches at 10.0.2.101:8000 through a qemu guestfwd (the network is ``restrict=on``: the gateway
10.0.2.2 leads nowhere, and slirp refuses a guestfwd on it).

In order, on the one boot: mail injected over SMTP is held; ``drain --to`` moves all of it (the
peer holds exactly those messages: ids, envelopes, bodies) and the node then refuses new mail
(421); reopened, it takes mail, and ``drain`` without a peer refuses new mail while it waits, and
ends when the held mail is released; reopened again, a ``drain`` that cannot finish times out
with exit 1 naming what remains and leaves the node accepting mail.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import smtplib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kumo_infra import offline, program, targets
from kumo_infra.bootstrap import delivered_secrets_payload
from kumo_infra.drain import NodeApi, NodeClient, Queued, https_request
from kumo_infra.fleet import DRAIN_SUSPENSION_DOMAIN
from kumo_infra.ports import API_TLS_PORT
from kumo_infra.secretspec import API_PASSWORD, API_TLS_CERT, API_TLS_KEY, API_USER

from tests import fake_pulumi
from .conftest import MirrorFactory
from .harness import GUEST_MIRROR_URL, ExistingMachine, KumodApi, RootImage, make_api_certificate
from .remote_command import COMMAND_TYPE, RemoteCommandFailed, apply, unwrap

pytestmark = [
    pytest.mark.vm,
    pytest.mark.skipif("ssh" not in targets.PACKAGES, reason="the ssh target is not registered yet"),
]

REPO = Path(__file__).resolve().parents[2]
STACK = "drain-vm"
HOSTNAME = "mta-drain.example.com"
PUBLIC_IP = "192.0.2.26"  # documentation address: the records name it, nothing connects to it
# Where the guest reaches the peer (a guestfwd to the host's stand-in xfer listener).
PEER_GUEST = ("10.0.2.101", 8000)
# What qemu's user network shows the guest as the source of every forwarded connection.
QEMU_GATEWAY = "10.0.2.2"


def deployment(machine: ExistingMachine, fingerprint: str) -> dict[str, Any]:
    return {
        "cloud": "ssh", "name": "kumo-drain-vm", "hostname": HOSTNAME, "os": "debian12",
        "ssh": {"hosts": [{"address": "127.0.0.1", "port": machine.ssh_port, "user": machine.user,
                           "host_key": machine.host_key_line, "public_ip": PUBLIC_IP}]},
        "kumomta": {"repo_url": GUEST_MIRROR_URL, "repo_key_fingerprint": fingerprint,
                    # The test's SMTP client comes through qemu from the gateway address.
                    "relay_cidrs": [f"{QEMU_GATEWAY}/32"]},
        "network": {"api_cidrs": ["198.51.100.0/24"]},
        "port25": {"outbound": "direct", "probe_hosts": ["192.0.2.1"], "probe_timeout_s": 3},
    }


def with_real_api_pair(planned: offline.OfflineResult, cert: bytes, key: bytes) -> str:
    """Put a real API key and certificate on the Command's standard input in place of the offline
    placeholders; the API password it delivers (the other secrets unchanged)."""
    command = planned.one(COMMAND_TYPE)
    lines = unwrap(command.inputs["stdin"]).splitlines()
    values = {k: base64.b64decode(v) for k, v in (line.split(" ") for line in lines[1:-1])}
    values[API_TLS_CERT], values[API_TLS_KEY] = cert, key
    stdin = command.inputs["stdin"]
    stdin["value"] = delivered_secrets_payload(list(values.items()))
    return values[API_PASSWORD].decode()


@dataclasses.dataclass
class Drain:
    returncode: int
    stdout: str
    stderr: str


@dataclasses.dataclass
class Story:
    held_first: dict[str, bytes]  # spool id -> body, as SMTP answered and sent
    peer_received: list[Any]  # the peer's messages after drain --to
    node_after_xfer: Queued
    transfer: Drain
    mail_after_transfer: int  # MAIL FROM's code once the drain finished (still drained)
    mail_reopened: int
    mail_while_waiting: int
    waiting: Drain
    node_after_wait: Queued
    timed_out: Drain
    suspensions_after_timeout: list[dict[str, Any]]
    mail_after_timeout: int
    node_after_timeout: Queued
    policy_checks_drain: bool


class Node:
    def __init__(self, machine: ExistingMachine, client: NodeClient) -> None:
        self.machine, self.client = machine, client

    def send(self, body: bytes) -> str:
        """One message over SMTP; its spool id from kumod's "250 OK ids=..."."""
        with smtplib.SMTP("127.0.0.1", self.machine.vm.smtp_port, timeout=60) as smtp:
            smtp.ehlo("test.example.org")
            assert smtp.mail("sender@example.org")[0] == 250
            assert smtp.rcpt("rcpt@example.net")[0] == 250
            code, answer = smtp.data(body)
        assert code == 250, answer
        return answer.decode().removeprefix("OK ids=")

    def mail_from(self) -> int:
        """The code MAIL FROM gets now."""
        with smtplib.SMTP("127.0.0.1", self.machine.vm.smtp_port, timeout=60) as smtp:
            smtp.ehlo("test.example.org")
            code = smtp.mail("sender@example.org")[0]
            if code == 250:
                smtp.rset()
            return code

    def drain_suspensions(self) -> list[dict[str, Any]]:
        return [s for s in self.client.suspensions() if s.get("domain") == DRAIN_SUSPENSION_DOMAIN]

    def reopen(self) -> None:
        for entry in self.drain_suspensions():
            self.client.unsuspend(entry["id"])
        time.sleep(4)  # the policy memoizes its drain check 3 s (bootstrap/policy.py DRAIN_CHECK_TTL)

    def release(self) -> None:
        """The stand-in's test control, from the node's own loopback (a trusted peer)."""
        self.machine.vm.exec(["python3", "-c", "import urllib.request as u; u.urlopen(u.Request("
                                               "'http://127.0.0.1:8000/standin/release-v1', data=b'', method='POST'))"],
                             check=True)


def project(tmp: Path, config: dict[str, Any], api_port: int, ca_pem: str) -> tuple[Path, dict[str, str]]:
    """A project directory holding the stack's config, and the environment whose `pulumi` is the
    fake one, its stack's outputs pointing at the forwarded API port."""
    root = tmp / "project"
    (root / "stacks").mkdir(parents=True)
    (root / "Pulumi.yaml").write_text("name: kumo-infra\nruntime: python\nstackConfigDir: stacks\n")
    (root / "stacks" / f"Pulumi.{STACK}.yaml").write_text(yaml.safe_dump({"config": {"kumo:deployment": config}}))
    outputs = {
        "nodes": [{"name": "node1", "hostname": HOSTNAME, "public_ip": PUBLIC_IP, "private_ip": "127.0.0.1"}],
        "api": {"user": API_USER, "ca_certificate": ca_pem,
                "endpoints": [{"hostname": HOSTNAME, "url": f"https://{HOSTNAME}:{API_TLS_PORT}",
                               "ip_url": f"https://127.0.0.1:{api_port}"}]},
    }
    state = fake_pulumi.new_state(stacks={STACK: {
        "tags": {}, "resources": [], "outputs": outputs, "secret_outputs": [], "history": [],
        "created": fake_pulumi.now_text(), "project": "kumo-infra"}})
    env = fake_pulumi.install(tmp / "bin", tmp / "pulumi-state.json", state)
    return root, {**env, "PYTHONPATH": str(REPO)}


def drain_argv(*extra: str) -> list[str]:
    return [sys.executable, "-m", "kumo_infra.cli", "drain", "--stack", STACK, "--node", "node1", *extra]


def run_drain(root: Path, env: dict[str, str], *extra: str, timeout: float = 600) -> Drain:
    done = subprocess.run(drain_argv(*extra), cwd=root, env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)
    return Drain(done.returncode, done.stdout, done.stderr)


@pytest.fixture(scope="module")
def story(vm_rootfs: RootImage, node_mirror: MirrorFactory, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Story]:
    tmp = tmp_path_factory.mktemp("drain-vm")
    mirror = node_mirror()
    cert_path, key_path = make_api_certificate(tmp / "tls", ip="127.0.0.1", hostname=HOSTNAME)
    with KumodApi(spool_dir=tmp / "peer-spool") as peer:
        machine = ExistingMachine(vm_rootfs, user="deploy", hostname="mta-drain", mirror_port=mirror.port)
        machine.vm.extra_forwards[API_TLS_PORT] = 0
        machine.vm.guest_forwards[PEER_GUEST] = int(peer.url.rsplit(":", 1)[1])
        with machine:
            config = deployment(machine, mirror.fingerprint)
            planned = offline.run(program.run, {"kumo:deployment": config,
                                                "kumo:sshPrivateKey": machine.private_key},
                                  stack=STACK, secret_keys=["kumo:sshPrivateKey"])
            password = with_real_api_pair(planned, cert_path.read_bytes(), key_path.read_bytes())
            try:
                apply(planned.resources)
            except RemoteCommandFailed as failed:
                pytest.fail(f"the installer failed over SSH: {failed}", pytrace=False)
            policy = machine.vm.read_file("/opt/kumomta/etc/policy/init.lua").decode()
            api_port = machine.vm.forwarded_ports[API_TLS_PORT]
            ca_pem = cert_path.read_text()
            client = NodeClient(NodeApi("node1", f"https://127.0.0.1:{api_port}", API_USER, password, ca_pem,
                                        None), https_request)
            node = Node(machine, client)
            root, env = project(tmp, config, api_port, ca_pem)
            env["KUMO_API_PASSWORD"] = password

            # 1. Held mail, then moved to the peer.
            held = {}
            for i in range(3):
                body = f"Subject: drain {i}\r\nMessage-ID: <drain-{i}@example.org>\r\n\r\nbody {i}\r\n".encode()
                held[node.send(body)] = body
            # The peer is the host's stand-in, none of the stack's nodes: --to-any-url.
            transfer = run_drain(root, env, "--to", f"http://{PEER_GUEST[0]}:{PEER_GUEST[1]}", "--to-any-url",
                                 "--timeout", "5m")
            peer_received = peer.queue.held()
            node_after_xfer = client.queued()
            mail_after_transfer = node.mail_from()

            # 2. Reopened: mail again, and a drain that waits until the mail leaves.
            node.reopen()
            mail_reopened = node.mail_from()
            for i in range(2):
                node.send(f"Subject: wait {i}\r\n\r\nwait {i}\r\n".encode())
            waiting_process = subprocess.Popen(drain_argv("--timeout", "5m"), cwd=root, env=env, text=True,
                                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            deadline = time.monotonic() + 120
            while not node.drain_suspensions() and time.monotonic() < deadline and waiting_process.poll() is None:
                time.sleep(1)
            mail_while_waiting = node.mail_from()
            node.release()
            out, err = waiting_process.communicate(timeout=300)
            waiting = Drain(waiting_process.returncode, out, err)
            node_after_wait = client.queued()

            # 3. Reopened: a drain that cannot finish.
            node.reopen()
            node.send(b"Subject: stays\r\n\r\nstays\r\n")
            timed_out = run_drain(root, env, "--timeout", "20s")
            yield Story(held, peer_received, node_after_xfer, transfer, mail_after_transfer, mail_reopened,
                        mail_while_waiting, waiting, node_after_wait, timed_out, node.drain_suspensions(),
                        node.mail_from(), client.queued(), DRAIN_SUSPENSION_DOMAIN in policy)


def test_drain_to_a_peer_moves_exactly_the_held_messages(story: Story) -> None:
    assert story.transfer.returncode == 0, story.transfer.stderr
    assert "node1 holds no message (all moved to http://10.0.2.101:8000)" in story.transfer.stdout
    received = {m.meta["xfer_prior_id"]: m for m in story.peer_received}
    assert sorted(received) == sorted(story.held_first)  # every held message, and nothing else
    for prior_id, message in received.items():
        assert message.data == story.held_first[prior_id]
        assert (message.sender, message.recipients) == ("sender@example.org", ["rcpt@example.net"])
        assert message.id != prior_id and message.meta["xfer_prior_node"]
    assert story.node_after_xfer == Queued(0, 0, 0, 0)


def test_drained_node_keeps_refusing_new_mail_until_reopened(story: Story) -> None:
    assert story.policy_checks_drain, "the rendered policy does not check the drain suspension"
    assert story.mail_after_transfer == 421
    assert story.mail_reopened == 250


def test_drain_without_peer_refuses_mail_while_it_waits_for_the_queue_to_empty(story: Story) -> None:
    assert story.waiting.returncode == 0, story.waiting.stderr
    assert story.mail_while_waiting == 421
    assert "node1 holds no message (all delivered)" in story.waiting.stdout
    # Progress on stderr (not a terminal: one line per change), from 2 down to 0.
    counts = [int(line.split(": ")[1].split()[0]) for line in story.waiting.stderr.splitlines()
              if line.startswith("node1: ") and "remaining" in line]
    assert counts[0] == 2 and counts[-1] == 0 and counts == sorted(counts, reverse=True), story.waiting.stderr
    assert story.node_after_wait == Queued(0, 0, 0, 0)


def test_timeout_exits_1_naming_what_remains_and_leaves_the_node_accepting_mail(story: Story) -> None:
    assert story.timed_out.returncode == 1, story.timed_out.stderr
    assert ("timed out after 20s with 1 message(s) still on it (1 scheduled, 0 ready, 0 in flight)"
            in story.timed_out.stdout)
    assert "node1 accepts mail again" in story.timed_out.stdout
    assert story.suspensions_after_timeout == []
    assert story.mail_after_timeout == 250
    assert story.node_after_timeout == Queued(1, 1, 0, 0)  # the mail is still there, nothing lost

"""``kumo-infra drain`` against the stand-in kumod's API run in this process (tests/vm/harness.py
KumodApi: the same code the VM's stand-in runs, so there is one fake of KumoMTA's API), over real
TLS with basic auth; the command as a subprocess for its exit codes and messages."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from kumo_infra import drain, fleet
from kumo_infra.drain import ApiRefused, DrainError, NodeApi, ProgressReport, drain_node, https_request
from tests import fake_pulumi
from tests.conftest import ROOT
from tests.vm.harness import KumodApi, make_api_certificate, standin_kumod

PASSWORD = "correct horse battery staple"
PASSWORD_ENV_NAME = drain.PASSWORD_ENV
RCPT = "rcpt@example.net"


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_api_certificate(tmp_path_factory.mktemp("tls"), ip="127.0.0.1")


@pytest.fixture
def node(tls: tuple[Path, Path], tmp_path: Path) -> Iterator[KumodApi]:
    """A node: TLS, and every request authenticated (no trusted host)."""
    password_file = tmp_path / "api-password"
    password_file.write_text(PASSWORD + "\n")
    with KumodApi(tls=tls, password_file=password_file, trusted_hosts=[]) as api:
        yield api


@pytest.fixture
def peer(tmp_path: Path) -> Iterator[KumodApi]:
    with KumodApi(spool_dir=tmp_path / "peer-spool") as api:
        yield api


def api_of(node: KumodApi, tls: tuple[Path, Path], password: str = PASSWORD, ca: Path | None = None,
           private_ip: str | None = None) -> NodeApi:
    return NodeApi("node1", node.url, "kumo-api", password, (ca or tls[0]).read_text(), private_ip)


def hold(node: KumodApi, count: int) -> dict[str, bytes]:
    bodies = {}
    for i in range(count):
        body = f"Subject: {i}\r\n\r\nbody {i}\r\n".encode()
        bodies[node.hold("sender@example.org", [RCPT], body)] = body
    return bodies


class Recorder:
    """An Http that records each request (method, path, JSON body) and passes it on to the node."""

    def __init__(self, fail: dict[str, int] | None = None) -> None:
        self.calls: list[tuple[str, str, Any]] = []
        self.fail = fail or {}

    def __call__(self, method, url, body, headers, ca_pem, timeout):
        path = "/" + url.split("/", 3)[3]
        self.calls.append((method, path, json.loads(body) if body else None))
        if path in self.fail:
            return self.fail[path], b"injected failure"
        return https_request(method, url, body, headers, ca_pem, timeout)

    def paths(self, method: str) -> list[str]:
        return [p for m, p, _ in self.calls if m == method]


def drain_suspensions(node: KumodApi) -> list[dict[str, Any]]:
    return [s for s in node.suspensions.list() if s["domain"] == fleet.DRAIN_SUSPENSION_DOMAIN]


# -- the stand-in follows the project's constants ------------------------------------------------

def test_standin_refuses_mail_for_the_fleet_drain_domain_and_names_xfer_queues_as_drain_does() -> None:
    kumod = standin_kumod()
    assert kumod.DRAIN_SUSPENSION_DOMAIN == fleet.DRAIN_SUSPENSION_DOMAIN
    for target in ("http://10.0.0.12:8000", "https://peer.example.com:8008"):
        assert kumod.xfer_queue_name(target) == drain.xfer_queue_name(target)


@pytest.mark.parametrize("target, queue", [
    ("http://10.0.0.12:8000", "http://10.0.0.12:8000/.xfer.kumomta.internal"),
    ("http://10.0.0.12:8000/", "http://10.0.0.12:8000/.xfer.kumomta.internal"),
    ("HTTP://Peer.Example.com:80", "http://peer.example.com/.xfer.kumomta.internal"),
    ("http://[fd00::5]:8000", "http://[fd00::5]:8000/.xfer.kumomta.internal"),
])
def test_xfer_queue_name_is_the_url_as_the_url_crate_prints_it(target: str, queue: str) -> None:
    assert drain.xfer_queue_name(target) == queue


TSA_QUEUE = "http://10.0.0.12:8008.tsa.kumomta"


def test_queued_is_every_message_object_but_the_tsa_log_records() -> None:
    # docs/reference/http/sample-metrics.json's shapes (its trailing comma left out); a TSA hook's
    # scheduled queue and ready-queue service named as shaping.lua and ready_queue.rs name them.
    sample = {"message_count": {"help": "total number of Message objects", "type": "gauge", "value": 214.0},
              "scheduled_count": {"help": "", "type": "gauge", "value": {"queue": {"example.com": 7.0,
                                                                                    TSA_QUEUE: 3.0}}},
              "scheduled_count_total": {"help": "", "type": "gauge", "value": 10.0},
              "ready_count": {"help": "", "type": "gauge", "value": {"service": {
                  "smtp_client:source1->loopback.dummy-mx.example.com": 46.0,
                  "smtp_client:source2->loopback.dummy-mx.example.com": 152.0,
                  f"lua:unspecified->{TSA_QUEUE}@lua:make.{TSA_QUEUE}": 1.0}}}}
    reading = drain.queued(sample)
    # 214 objects, 4 of them TSA records: 210 messages, 7 scheduled, 198 ready, 5 being delivered.
    assert reading == drain.Queued(210, 7, 198, 4) and reading.in_flight == 5
    # No ready queue, nothing queued: nothing (the registries prune their empty labels).
    assert drain.queued({"message_count": {"value": 0.0}, "scheduled_count_total": {"value": 0.0}}) == \
        drain.Queued(0, 0, 0, 0)
    # Only a dead TSA daemon's records left: the node holds no mail.
    assert drain.queued({"message_count": {"value": 2.0}, "scheduled_count_total": {"value": 2.0},
                         "scheduled_count": {"value": {"queue": {TSA_QUEUE: 2.0}}}}).remaining == 0
    # Gauges read one after the other: never fewer than the queues hold.
    assert drain.queued({"message_count": {"value": 0.0}, "scheduled_count_total": {"value": 2.0}}).remaining == 2
    with pytest.raises(DrainError, match="no message_count"):
        drain.queued({"scheduled_count_total": {"value": 0.0}})
    with pytest.raises(DrainError, match="no scheduled_count_total"):
        drain.queued({"message_count": {"value": 0.0}, "ready_count": {"value": {"service": {}}}})
    with pytest.raises(DrainError, match="not a number"):
        drain.queued({"message_count": {"value": "many"}, "scheduled_count_total": {"value": 0.0}})


def test_the_standin_counts_a_message_being_transferred_until_the_peer_accepts_it(node, peer) -> None:
    (held,) = hold(node, 1)
    accept = threading.Event()
    inject = peer.queue.inject_xfer
    peer.queue.inject_xfer = lambda body, sender: accept.wait(10) and inject(body, sender)
    node.queue.xfer({"reason": "test", "target": peer.url})
    deadline = time.monotonic() + 10
    while held not in node.queue.in_flight and time.monotonic() < deadline:
        time.sleep(0.01)
    metrics = node.queue.metrics()
    # Taken from the ready queue by the xfer dispatcher: in no queue, still a Message object.
    assert metrics["message_count"]["value"] == 1.0 and metrics["scheduled_count_total"]["value"] == 0.0
    assert "ready_count" not in metrics
    accept.set()
    while node.queue.held() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert node.queue.metrics()["message_count"]["value"] == 0.0 and len(peer.queue.held()) == 1


# -- drain_node ----------------------------------------------------------------------------------

def test_transfer_moves_every_held_message_to_the_peer_and_the_node_stays_closed(node, peer, tls) -> None:
    held = hold(node, 3)
    seen: list[tuple[int, int, int]] = []
    result = drain_node(api_of(node, tls), target_url=peer.url, timeout_s=30, poll_s=0.02,
                        progress=lambda *reading: seen.append(reading))
    assert result.drained and result.remaining == 0 and result.moved_to == peer.url
    received = {m.meta["xfer_prior_id"]: m for m in peer.queue.held()}
    assert sorted(received) == sorted(held)
    for prior_id, message in received.items():
        assert message.data == held[prior_id] and message.recipients == [RCPT]
        assert message.id != prior_id and message.meta["xfer_prior_node"] == node.queue.node_id
    assert node.queue.held() == []
    (suspension,) = drain_suspensions(node)
    assert suspension["reason"] == fleet.DRAIN_REASON and suspension["duration"].startswith("1day")
    assert seen[0] == (3, 3, 0) and seen[-2:] == [(0, 3, 0), (0, 3, 0)]


def test_a_transfer_ends_only_once_the_peer_accepted_every_message(node, peer, tls) -> None:
    # The peer takes its time answering: meanwhile the message is in no queue of the node, only in
    # message_count. On a fake clock, so the policy's cache window passes at once.
    (held,) = hold(node, 1)
    accept = threading.Event()
    inject = peer.queue.inject_xfer
    peer.queue.inject_xfer = lambda body, sender: accept.wait(30) and inject(body, sender)
    clock = FakeClock()
    in_flight_seen = []

    def sleep(seconds: float) -> None:
        clock.now += seconds
        time.sleep(0.01)

    def progress(remaining: int, most: int, tsa: int) -> None:
        if held in node.queue.in_flight:
            in_flight_seen.append(remaining)
            if len(in_flight_seen) == 10:  # well past the settle window: let the peer answer
                accept.set()

    result = drain_node(api_of(node, tls), target_url=peer.url, timeout_s=3600, poll_s=1, progress=progress,
                        clock=clock, sleep=sleep)
    assert result.drained and in_flight_seen[:10] == [1] * 10
    assert [m.meta["xfer_prior_id"] for m in peer.queue.held()] == [held]  # accepted before drain said so


def test_transfer_to_a_peer_node_targets_its_private_address(node, tls, monkeypatch) -> None:
    hold(node, 1)
    monkeypatch.setattr(node.queue, "_start_sender", lambda queue: None)  # 10.0.0.12 is nowhere
    recorder = Recorder()
    peer = NodeApi("node2", "https://192.0.2.12:8443", "kumo-api", PASSWORD, None, "10.0.0.12")
    result = drain_node(api_of(node, tls), to=peer, timeout_s=0.3, poll_s=0.05, http=recorder)
    xfers = [body for method, path, body in recorder.calls if path == "/api/admin/xfer/v1"]
    # XferV1Request (crates/kumo-api-types/src/xfer.rs): no selector is every queue.
    assert xfers and xfers[0] == {"reason": fleet.DRAIN_REASON, "target": "http://10.0.0.12:8000"}
    assert not result.drained and result.moved_to == "http://10.0.0.12:8000"


def test_wait_ends_when_the_queue_is_empty(node, tls) -> None:
    hold(node, 2)
    seen: list[int] = []

    def progress(remaining: int, most: int, tsa: int) -> None:
        if not seen:
            node.queue.release()  # the mail starts leaving once the node is closed
        seen.append(remaining)

    result = drain_node(api_of(node, tls), timeout_s=30, poll_s=0.02, progress=progress)
    assert result.drained and result.moved_to is None and "all delivered" in result.message
    assert seen[0] == 2 and seen[-2:] == [0, 0] and seen == sorted(seen, reverse=True)
    assert len(drain_suspensions(node)) == 1


def test_messages_in_a_ready_queue_are_not_drained(node, tls) -> None:
    ids = hold(node, 2)
    node.queue.ready.update(ids)  # waiting for a connection: ready_count, not scheduled_count_total
    result = drain_node(api_of(node, tls), timeout_s=0.2, poll_s=0.05)
    assert not result.drained and result.remaining == 2
    assert "(0 scheduled, 2 ready, 0 in flight)" in result.message


def test_messages_a_dispatcher_is_delivering_are_not_drained(node, tls) -> None:
    ids = hold(node, 2)
    node.queue.in_flight.update(ids)  # popped from the ready queue: counted by message_count only
    result = drain_node(api_of(node, tls), timeout_s=0.2, poll_s=0.05)
    assert not result.drained and result.remaining == 2
    assert "(0 scheduled, 0 ready, 2 in flight)" in result.message


def test_a_dead_tsa_daemons_log_records_do_not_hold_the_drain(node, tls) -> None:
    hold(node, 2)
    node.hold_tsa_record("http://10.0.0.12:8008")  # its daemon never answers: the record stays
    seen: list[tuple[int, int, int]] = []

    def progress(remaining: int, most: int, tsa: int) -> None:
        if not seen:
            node.queue.release()
        seen.append((remaining, most, tsa))

    out = io.StringIO()
    report = ProgressReport("node1", out, tty=False)
    result = drain_node(api_of(node, tls), timeout_s=30, poll_s=0.02,
                        progress=lambda *reading: (progress(*reading), report(*reading)))
    assert result.drained and seen[0] == (2, 2, 1) and seen[-1] == (0, 2, 1)
    assert len(node.queue.held()) == 1  # the TSA record, still there
    assert "node1: 2 message(s) remaining (of 2 seen), 1 TSA log record(s) not counted" in out.getvalue()


def test_timeout_cancels_the_transfer_and_the_node_accepts_mail_again(node, tls) -> None:
    closed = KumodApi()
    closed.stop()  # a peer that does not answer: every transfer attempt fails
    hold(node, 2)
    recorder = Recorder()
    result = drain_node(api_of(node, tls), target_url=closed.url, timeout_s=0.5, poll_s=0.05, http=recorder)
    assert not result.drained and result.remaining == 2
    assert result.message.startswith("node1: timed out after 0.5s with 2 message(s) still on it (2 scheduled, 0 "
                                     "ready, 0 in flight)")
    assert f"the transfer to {closed.url} was cancelled; node1 accepts mail again" in result.message
    cancels = [body for method, path, body in recorder.calls if path == "/api/admin/xfer/cancel/v1"]
    assert cancels == [{"queue_name": f"{closed.url}/.xfer.kumomta.internal", "reason": fleet.DRAIN_REASON}]
    assert recorder.paths("DELETE") == ["/api/admin/suspend/v1"]
    assert drain_suspensions(node) == []
    # Back in their own queue, the xfer bookkeeping undone (crates/kumod/src/queue/queue.rs undo_xfer).
    assert sorted(m.queue_name for m in node.queue.held()) == ["example.net", "example.net"]
    assert all("xfer_queue_info" not in m.meta for m in node.queue.held())


def test_a_failure_during_the_drain_reopens_the_node(node, tls) -> None:
    hold(node, 1)
    recorder = Recorder(fail={"/metrics.json": 500})
    with pytest.raises(DrainError, match=r"GET /metrics.json: HTTP 500.*node1 accepts mail again"):
        drain_node(api_of(node, tls), timeout_s=5, poll_s=0.05, http=recorder)
    assert drain_suspensions(node) == []


def test_an_interrupt_during_the_drain_reopens_the_node(node, tls) -> None:
    hold(node, 1)

    def interrupt(remaining: int, most: int, tsa: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt) as interrupted:
        drain_node(api_of(node, tls), timeout_s=5, poll_s=0.05, progress=interrupt)
    assert str(interrupted.value) == "interrupted: node1 accepts mail again, its mail still on it"
    assert drain_suspensions(node) == []


def other_drain(node: KumodApi) -> str:
    """Another drain of the same node: kumod keeps one suspension per criteria, so it replaces ours."""
    return node.suspensions.add({"domain": fleet.DRAIN_SUSPENSION_DOMAIN, "reason": "the other drain",
                                 "duration": 600})


def test_a_timeout_after_another_drain_replaced_the_suspension_says_the_node_stays_closed(node, tls) -> None:
    hold(node, 1)
    replaced: list[str] = []

    def progress(remaining: int, most: int, tsa: int) -> None:
        if not replaced:
            replaced.append(other_drain(node))

    result = drain_node(api_of(node, tls), timeout_s=0.3, poll_s=0.05, progress=progress)
    assert not result.drained
    assert (f"node1 still refuses new mail: another drain's suspension {replaced[0]} replaced this one ('the other "
            "drain', '9m 5" in result.message)  # its time left
    assert f"kcli suspend-cancel --id {replaced[0]}" in result.message
    assert "accepts mail again" not in result.message
    assert [s["id"] for s in drain_suspensions(node)] == replaced  # the other drain's, untouched


def test_a_drain_whose_suspension_was_deleted_meanwhile_is_not_drained(node, tls) -> None:
    # Another drain that replaced ours gave up and deleted its suspension: the node takes mail.
    def progress(remaining: int, most: int, tsa: int) -> None:
        for entry in drain_suspensions(node):
            node.suspensions.delete(entry["id"])

    with pytest.raises(DrainError, match="its drain suspension is gone .* it takes new mail, so it is not drained"):
        drain_node(api_of(node, tls), timeout_s=30, poll_s=0.05, progress=progress)


def test_drain_suspension_is_the_one_the_node_lists(node, tls) -> None:
    assert drain.drain_suspension(api_of(node, tls)) is None
    node.suspensions.add({"domain": "example.com", "reason": "not a drain"})
    assert drain.drain_suspension(api_of(node, tls)) is None
    entry = other_drain(node)
    assert drain.drain_suspension(api_of(node, tls))["id"] == entry


class ScriptedNode:
    """A node's API on a fake clock: the suspension is created at once, and /metrics.json reports
    ``queued_at(now)`` messages. Records when each reading was taken."""

    def __init__(self, clock: "FakeClock", queued_at) -> None:
        self.clock, self.queued_at = clock, queued_at
        self.suspended_at: float | None = None
        self.readings: list[tuple[float, int]] = []

    def __call__(self, method, url, body, headers, ca_pem, timeout):
        path = "/" + url.split("/", 3)[3]
        if path == "/api/admin/suspend/v1" and method == "POST":
            self.suspended_at = self.clock.now
            return 200, b'{"id": "s-1"}'
        if path == "/metrics.json":
            count = self.queued_at(self.clock.now)
            self.readings.append((self.clock.now, count))
            return 200, json.dumps({"message_count": {"value": float(count)},
                                    "scheduled_count_total": {"value": float(count)}}).encode()
        if path == "/api/admin/suspend/v1" and method == "GET" and self.suspended_at is not None:
            return 200, json.dumps([{"id": "s-1", "domain": fleet.DRAIN_SUSPENSION_DOMAIN}]).encode()
        return 200, b"[]"


def drain_on_a_fake_clock(queued_at) -> tuple[drain.DrainResult, ScriptedNode]:
    clock = FakeClock()
    node = ScriptedNode(clock, queued_at)

    def sleep(seconds: float) -> None:
        clock.now += seconds

    api = NodeApi("node1", "https://192.0.2.10:8443", "kumo-api", PASSWORD, None, None)
    result = drain_node(api, timeout_s=600, http=node, clock=clock, sleep=sleep)
    return result, node


def test_an_empty_node_is_drained_only_once_its_policy_must_have_seen_the_suspension() -> None:
    # The policy caches "not draining" for fleet.DRAIN_CHECK_TTL_S: before that (and a poll) has
    # passed, two empty readings prove nothing.
    result, node = drain_on_a_fake_clock(lambda now: 0)
    assert result.drained
    settled = node.suspended_at + fleet.DRAIN_CHECK_TTL_S + drain.POLL_S
    assert len(node.readings) >= 2 and all(at > settled for at, _ in node.readings[-2:])
    assert node.readings[0][0] == node.suspended_at  # still read (and shown) at once


def test_a_message_accepted_before_the_policys_cache_lapses_is_waited_for() -> None:
    # Empty at first; the node accepts one more message 2.5 s in (its policy has not yet seen the
    # suspension), which leaves at 20 s.
    result, node = drain_on_a_fake_clock(lambda now: 1 if 2.5 <= now < 20 else 0)
    assert result.drained
    assert any(count == 1 for _, count in node.readings)
    assert node.readings[-2][0] >= 20


def test_the_policy_and_drain_share_one_cache_ttl() -> None:
    from kumo_infra.bootstrap.policy import render_drain

    assert f"ttl = '{fleet.DRAIN_CHECK_TTL_S} seconds'" in render_drain()


def test_a_wrong_password_is_refused_before_anything_changes(node, tls) -> None:
    hold(node, 1)
    recorder = Recorder()
    with pytest.raises(ApiRefused, match="401, the node refused user kumo-api") as refused:
        drain_node(api_of(node, tls, password="wrong"), timeout_s=5, http=recorder)
    assert refused.value.fix == "KUMO_API_PASSWORD" and "wrong" not in str(refused.value)
    assert recorder.calls == [("GET", "/api/admin/suspend/v1", None)]
    assert node.suspensions.list() == []


def test_a_node_whose_policy_grants_drain_nothing_says_upgrade_its_bootstrap_not_wrong_password(tls, tmp_path) -> None:
    password_file = tmp_path / "api-password"
    password_file.write_text(PASSWORD + "\n")
    # A policy rendered before kumo-infra drain: the API user authenticates, the ACL permits nothing.
    with KumodApi(tls=tls, password_file=password_file, trusted_hosts=[], granted=set()) as old:
        with pytest.raises(DrainError) as refused:
            drain_node(api_of(old, tls), timeout_s=5)
        assert not isinstance(refused.value, ApiRefused)
        assert ("node1: GET /api/admin/suspend/v1: 401, this node's policy does not grant the API user drain's "
                "endpoints" in str(refused.value))
        assert "upgrade its bootstrap" in str(refused.value) and PASSWORD_ENV_NAME not in str(refused.value)
        assert old.suspensions.list() == []


def test_another_certificate_is_refused_before_anything_changes(node, tls, tmp_path) -> None:
    other_ca, _ = make_api_certificate(tmp_path / "other", ip="127.0.0.1")
    with pytest.raises(ApiRefused, match="does not verify against the deployment's API certificate") as refused:
        drain_node(api_of(node, tls, ca=other_ca), timeout_s=5)
    assert refused.value.fix == "--api-ca"
    assert node.suspensions.list() == []


def test_the_password_never_goes_over_plain_http(node, tls) -> None:
    calls = []
    plain = NodeApi("node1", node.url.replace("https://", "http://"), "kumo-api", PASSWORD, None, None)
    with pytest.raises(DrainError, match="not an https URL"):
        drain_node(plain, timeout_s=5, http=lambda *a: calls.append(a))
    assert calls == []


def test_every_call_drain_makes_is_granted_to_the_api_user_by_the_rendered_policy(node, tls) -> None:
    from kumo_infra.bootstrap.policy import render_policy
    from kumo_infra.config import parse_deployment

    closed = KumodApi()
    closed.stop()
    hold(node, 1)
    recorder = Recorder()
    drain_node(api_of(node, tls), target_url=closed.url, timeout_s=0.3, poll_s=0.05, http=recorder)
    deployment = parse_deployment({**AWS, "nodes": 1})
    grants = standin_kumod().policy_grants(render_policy(deployment, "mta.example.com"))
    assert set(grants) == {"0.0.0.0:8443"}  # the TLS listener, not the loopback one
    assert {(method, path) for method, path, _ in recorder.calls} <= grants["0.0.0.0:8443"]


def test_the_node_refuses_unauthenticated_admin_calls_and_answers_liveness() -> None:
    kumod = standin_kumod()
    api = kumod.Api(kumod.Health(), kumod.MailQueue(None), kumod.Suspensions(), kumod.ApiAuth("kumo-api", None))
    assert api.handle("GET", "/api/check-liveness/v1", {}, b"", "198.51.100.9", []).status == 200
    refused = api.handle("GET", "/metrics.json", {}, b"", "198.51.100.9", [], listen="0.0.0.0:8443")
    # kumod's ACL answer to no identity at all (auth.rs auth_middleware, AuthInfo::public_descriptor).
    assert (refused.status, refused.body) == (
        401, b"<Unauthenticated>@ ip=198.51.100.9 not permitted GET on http_listener/0.0.0.0:8443/metrics.json")
    assert api.handle("GET", "/metrics.json", {"Authorization": "Basic !!"}, b"", "198.51.100.9", []).status == 400
    assert api.handle("GET", "/metrics.json", {}, b"", "127.0.0.1", kumod.LOOPBACK).status == 200


def test_the_api_user_gets_only_what_the_listener_grants(tmp_path: Path) -> None:
    import base64

    kumod = standin_kumod()
    (tmp_path / "pw").write_text(PASSWORD + "\n")
    api = kumod.Api(kumod.Health(), kumod.MailQueue(None), kumod.Suspensions(),
                    kumod.ApiAuth("kumo-api", str(tmp_path / "pw")))
    auth = {"Authorization": "Basic " + base64.b64encode(f"kumo-api:{PASSWORD}".encode()).decode()}
    granted = {("GET", "/metrics.json")}
    assert api.handle("GET", "/metrics.json", auth, b"", "198.51.100.9", [], granted).status == 200
    # Authenticated, not granted here (KumoMTA's default ACL gives an identity inject only): kumod
    # answers 401 for an ACL refusal too, never 403 (auth.rs auth_middleware, DenyByDefault).
    refused = api.handle("GET", "/metrics.json", auth, b"", "198.51.100.9", [], listen="0.0.0.0:8443")
    assert (refused.status, refused.body) == (
        401, b"id=[kumo-api]@ ip=198.51.100.9 not permitted GET on http_listener/0.0.0.0:8443/metrics.json")
    assert api.handle("POST", "/api/admin/bounce/v1", auth, b"{}", "198.51.100.9", [], granted).status == 401
    wrong = {"Authorization": "Basic " + base64.b64encode(b"kumo-api:guess").decode()}
    refused = api.handle("GET", "/metrics.json", wrong, b"", "198.51.100.9", [], granted)
    assert (refused.status, refused.body) == (401, b"HttpBasicAuth Authentication Failed for kumo-api")
    bad = api.handle("POST", "/api/admin/suspend/v1", {}, b'{"domain": "x"}', "127.0.0.1", kumod.LOOPBACK)
    assert bad.status == 422  # SuspendV1Request.reason is required


# -- progress ------------------------------------------------------------------------------------

class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_progress_is_a_bar_on_a_terminal() -> None:
    out = io.StringIO()
    report = ProgressReport("node1", out, tty=True)
    report(4, 4, 0)
    report(1, 4, 2)
    report.close()
    frames = out.getvalue().split("\r")[1:]
    assert frames[0] == f"node1 [{'.' * 30}] 4 message(s) remaining of 4, 0 TSA log record(s) not counted\x1b[K"
    assert frames[1] == (f"node1 [{'#' * 22}{'.' * 8}] 1 message(s) remaining of 4, 2 TSA log record(s) not "
                         "counted\x1b[K\n")


def test_progress_is_a_line_per_change_elsewhere() -> None:
    out, clock = io.StringIO(), FakeClock()
    report = ProgressReport("node1", out, tty=False, every_s=10, clock=clock)
    for now, remaining in ((0, 3), (2, 3), (4, 2), (6, 2), (17, 2), (18, 0)):
        clock.now = now
        report(remaining, 3, 1)
    report.close()
    assert out.getvalue().splitlines() == [f"node1: {n} message(s) remaining (of 3 seen), 1 TSA log record(s) not "
                                           "counted" for n in (3, 2, 2, 0)]


# -- the command ---------------------------------------------------------------------------------

AWS = {"cloud": "aws", "region": "us-east-1", "name": "kumo-drain", "hostname": "mta.example.com",
       "sizing": {"messages_per_hour": 50000, "avg_message_kb": 50}, "port25": {"outbound": "direct"},
       "network": {"api_cidrs": ["198.51.100.0/24"]}}
SSH = {"cloud": "ssh", "name": "kumo-drain", "hostname": "mta.example.com", "os": "debian12",
       "port25": {"outbound": "direct"}, "network": {"api_cidrs": ["198.51.100.0/24"]},
       # Two nodes share their throttles: an existing Redis (its password a secret of the stack).
       "fleet": {"redis_url": "rediss://redis.example.net:6379"},
       "ssh": {"hosts": [{"address": "10.0.0.10", "public_ip": "192.0.2.10", "hostname": "mta1.example.com",
                          "host_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKoZYfLZGWV7DyQqkvFqSRe2jJp3sEA2k4etLfWd47R7"},
                         {"address": "10.0.0.11", "public_ip": "192.0.2.11", "hostname": "mta2.example.com",
                          "host_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKoZYfLZGWV7DyQqkvFqSRe2jJp3sEA2k4etLfWd47R8"}]}}


def write_stack(directory: Path, name: str, deployment: dict[str, Any]) -> Path:
    path = directory / f"Pulumi.{name}.yaml"
    secrets = {"kumo:redisPassword": {"secure": "v1:ciphertext"}} if "fleet" in deployment else {}
    path.write_text(yaml.safe_dump({"config": {"kumo:deployment": deployment, **secrets}}))
    return path


def kumo_infra(args: list[str], env: dict[str, str] | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kumo_infra.cli", "drain", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120, check=False,
                          env={**(env or {}), "PYTHONPATH": str(ROOT), "PATH": (env or {}).get("PATH", "/usr/bin:/bin")})


def assert_bad_input(done: subprocess.CompletedProcess, *needles: str) -> None:
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    for needle in needles:
        assert needle in done.stderr


@pytest.mark.parametrize("extra, needles", [
    (["--node", "node3"], ["--node: node3 does not exist: stack", "has 2 node(s), node1 to node2"]),
    (["--node", "x"], ["argument --node: 'x' is not a node"]),
    (["--node", "0"], ["argument --node: '0' is not a node"]),
    (["--node", "1", "--to", "node1"], ["--to: node1 is the node being drained"]),
    (["--node", "1", "--to", "node7"], ["--to: node7 does not exist"]),
    (["--node", "1", "--to", "peer"], ["--to: 'peer' is not a node", "or a peer's xfer URL"]),
    (["--node", "1", "--to", "http://u:p@10.0.0.2:8000"], ["--to: 'http://u:p@10.0.0.2:8000' is not a peer's xfer"]),
    (["--node", "1", "--to", "http://10.0.0.2:8000/api"], ["is not a peer's xfer listener URL"]),
    (["--node", "1", "--to", "http://[::1"], ["--to: 'http://[::1' is not a peer's xfer listener URL"]),
    (["--node", "1", "--to", "http://10.0.0.2:99999"], ["--to: 'http://10.0.0.2:99999' is not a peer's xfer"]),
    (["--node", "1", "--to", "node2", "--to-any-url"], ["--to-any-url: goes with a --to URL"]),
    (["--node", "1", "--timeout", "0s"], ["--timeout: must be longer than 0s"]),
    (["--node", "1", "--timeout", "soon"], ["argument --timeout: 'soon' is not a duration"]),
    (["--node", "1", "--api-ca", "/nonexistent/ca.pem"], ["--api-ca: cannot read '/nonexistent/ca.pem'"]),
])
def test_bad_arguments_exit_2_naming_the_flag(tmp_path: Path, extra: list[str], needles: list[str]) -> None:
    path = write_stack(tmp_path, "lab", SSH)
    assert_bad_input(kumo_infra(["--config", str(path), *extra], {"KUMO_API_PASSWORD": PASSWORD}), *needles)


@pytest.mark.parametrize("to, needle", [
    ("http://10.0.0.10:8000", "--to: 'http://10.0.0.10:8000' is node1 itself, the node being drained"),
    ("http://192.0.2.10:8000", "is node1 itself"),  # its public address
    ("http://mta1.example.com:8000", "is node1 itself"),
    ("http://127.0.0.1:8000", "is node1 itself"),  # as the node sees it: itself
    ("http://[::1]:8000", "is node1 itself"),
    ("http://10.0.0.99:8000", "--to: 'http://10.0.0.99:8000' is none of the other nodes' private addresses "
                              "(10.0.0.11): name a node (node2), or give --to-any-url"),
    ("http://peer.example.net:8000", "is none of the other nodes' private addresses"),
])
def test_a_to_url_must_be_another_node_of_the_deployment(tmp_path: Path, tls, to: str, needle: str) -> None:
    path = write_stack(tmp_path, "lab", SSH)
    assert_bad_input(kumo_infra(["--config", str(path), "--node", "1", "--to", to, "--api-ca", str(tls[0])],
                                {"KUMO_API_PASSWORD": PASSWORD}), needle)


def resolve_args(path: Path, tls, **extra: Any):
    import argparse
    from datetime import timedelta

    return argparse.Namespace(**{"stack": None, "config": str(path), "node": 0, "to": None, "to_any_url": False,
                                 "timeout": timedelta(minutes=5), "api_ca": str(tls[0]), **extra})


def test_a_to_url_of_a_peer_or_with_to_any_url_is_taken(tmp_path: Path, tls) -> None:
    path = write_stack(tmp_path, "lab", SSH)
    env = {"KUMO_API_PASSWORD": PASSWORD}
    assert drain.resolve(resolve_args(path, tls, to="http://10.0.0.11:8000"), env)[1:] == (None,
                                                                                            "http://10.0.0.11:8000")
    outside = resolve_args(path, tls, to="http://10.0.0.99:8000", to_any_url=True)
    assert drain.resolve(outside, env)[2] == "http://10.0.0.99:8000"
    with pytest.raises(drain.ConfigError, match="is node1 itself"):  # --to-any-url never allows the node itself
        drain.resolve(resolve_args(path, tls, to="http://10.0.0.10:8000", to_any_url=True), env)


def test_a_stack_with_one_node_has_no_url_to_transfer_to(node, tls, tmp_path) -> None:
    root, env = project_with_stack(tmp_path, stack_outputs(node, tls))
    done = kumo_infra(["--stack", "prod", "--node", "1", "--to", "http://10.0.0.12:8000"],
                      {**env, "KUMO_API_PASSWORD": PASSWORD}, cwd=root)
    assert_bad_input(done, "--to: 'http://10.0.0.12:8000' is none of the other nodes' private addresses (none "
                           "listed)")
    assert node.suspensions.list() == []


def test_a_deployment_without_api_cidrs_cannot_be_drained(tmp_path: Path) -> None:
    path = write_stack(tmp_path, "lab", {**SSH, "network": {}})
    assert_bad_input(kumo_infra(["--config", str(path), "--node", "1"], {"KUMO_API_PASSWORD": PASSWORD}),
                     "kumo:deployment.network.api_cidrs: is empty")


def test_the_password_comes_from_the_environment_only(tmp_path: Path) -> None:
    path = write_stack(tmp_path, "lab", SSH)
    done = kumo_infra(["--config", str(path), "--node", "1"])
    assert_bad_input(done, "KUMO_API_PASSWORD: is not set: export it with the API password, which this prints")


def test_config_of_a_cloud_needs_the_stack_for_the_addresses(tmp_path: Path) -> None:
    path = write_stack(tmp_path, "dev", AWS)
    assert_bad_input(kumo_infra(["--config", str(path), "--node", "1"], {"KUMO_API_PASSWORD": PASSWORD}),
                     "--config: the nodes' addresses are known only once they exist: use --stack")


def test_config_of_existing_machines_needs_the_certificate(tmp_path: Path) -> None:
    path = write_stack(tmp_path, "lab", SSH)
    assert_bad_input(kumo_infra(["--config", str(path), "--node", "1"], {"KUMO_API_PASSWORD": PASSWORD}),
                     "--api-ca: with --config no stack output holds the API certificate")


def test_config_of_existing_machines_resolves_their_addresses(tmp_path: Path, tls) -> None:
    path = write_stack(tmp_path, "lab", SSH)
    node, peer, url = drain.resolve(resolve_args(path, tls, node=1, to="node1"), {"KUMO_API_PASSWORD": PASSWORD})
    assert (node.name, node.base_url, node.username, node.private_ip) == ("node2", "https://192.0.2.11:8443",
                                                                           "kumo-api", "10.0.0.11")
    assert node.ca_pem == tls[0].read_text() and node.password == PASSWORD and PASSWORD not in repr(node)
    assert peer is not None and (peer.name, peer.private_ip) == ("node1", "10.0.0.10") and url is None


def project_with_stack(tmp_path: Path, outputs: dict[str, Any], deployment: dict[str, Any] = AWS,
                       name: str = "prod") -> tuple[Path, dict[str, str]]:
    root = tmp_path / "project"
    (root / "stacks").mkdir(parents=True)
    (root / "Pulumi.yaml").write_text("name: kumo-infra\nruntime: python\nstackConfigDir: stacks\n")
    write_stack(root / "stacks", name, deployment)
    state = fake_pulumi.new_state(stacks={name: {
        "tags": {}, "resources": [], "outputs": outputs, "secret_outputs": [], "history": [],
        "created": fake_pulumi.now_text(), "project": "kumo-infra"}})
    return root, fake_pulumi.install(tmp_path / "bin", tmp_path / "state.json", state)


def stack_outputs(node: KumodApi, tls: tuple[Path, Path]) -> dict[str, Any]:
    return {"nodes": [{"name": "node1", "hostname": "mta.example.com", "public_ip": "198.51.100.7",
                       "private_ip": "10.0.0.7"}],
            "api": {"user": "kumo-api", "ca_certificate": tls[0].read_text(),
                    "endpoints": [{"hostname": "mta.example.com", "url": "https://mta.example.com:8443",
                                   "ip_url": node.url}]}}


def test_drain_of_a_stack_waits_until_empty_and_exits_0(node, tls, tmp_path) -> None:
    hold(node, 2)
    root, env = project_with_stack(tmp_path, stack_outputs(node, tls))

    def release_once_closed() -> None:
        while not drain_suspensions(node):
            time.sleep(0.05)
        time.sleep(0.5)  # a reading or two of the full queue first
        node.queue.release()

    releaser = threading.Thread(target=release_once_closed, daemon=True)
    releaser.start()
    done = kumo_infra(["--stack", "prod", "--node", "node1", "--timeout", "2m"],
                      {**env, "KUMO_API_PASSWORD": PASSWORD}, cwd=root)
    releaser.join(timeout=5)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("node1 holds no message (all delivered)")
    assert done.stderr.splitlines()[0] == f"draining node1 ({node.url}): new mail refused, waiting for its queues to empty"
    assert "node1: 2 message(s) remaining (of 2 seen), 0 TSA log record(s) not counted" in done.stderr
    assert "node1: 0 message(s) remaining (of 2 seen)" in done.stderr
    assert PASSWORD not in done.stdout + done.stderr
    # Read without decrypting a secret, and without selecting the stack for the operator.
    calls = fake_pulumi.read_state(tmp_path / "state.json")["calls"]
    assert fake_pulumi.verbs(calls) == ["version", "stack output"]
    assert [c for c in calls if "output" in c] == [["--non-interactive", "stack", "output", "--json", "--stack", "prod"]]


def test_drain_of_a_stack_that_times_out_exits_1(node, tls, tmp_path) -> None:
    hold(node, 1)
    root, env = project_with_stack(tmp_path, stack_outputs(node, tls))
    done = kumo_infra(["--stack", "prod", "--node", "1", "--timeout", "3s"], {**env, "KUMO_API_PASSWORD": PASSWORD},
                      cwd=root)
    assert done.returncode == 1, done.stderr
    assert done.stdout.strip() == ("node1: timed out after 3s with 1 message(s) still on it (1 scheduled, 0 ready, "
                                   "0 in flight); node1 accepts mail again")
    assert drain_suspensions(node) == []


def test_a_refused_password_exits_2_without_showing_it(node, tls, tmp_path) -> None:
    root, env = project_with_stack(tmp_path, stack_outputs(node, tls))
    done = kumo_infra(["--stack", "prod", "--node", "1"], {**env, "KUMO_API_PASSWORD": "not-the-password"}, cwd=root)
    assert_bad_input(done, "KUMO_API_PASSWORD: node1: GET /api/admin/suspend/v1: 401")
    assert "not-the-password" not in done.stderr
    assert node.suspensions.list() == []


def test_a_stack_unknown_to_the_backend_exits_2(tmp_path) -> None:
    root, env = project_with_stack(tmp_path, {}, name="prod")
    (root / "stacks" / "Pulumi.other.yaml").write_text((root / "stacks" / "Pulumi.prod.yaml").read_text())
    done = kumo_infra(["--stack", "other", "--node", "1"], {**env, "KUMO_API_PASSWORD": PASSWORD}, cwd=root)
    assert_bad_input(done, "--stack: no stack other in this project's backend")

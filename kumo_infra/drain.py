"""``kumo-infra drain``: empty one node before it is replaced, without losing a message.

Everything goes through KumoMTA's own HTTP API on the node, the way issue 6 opened it to
``network.api_cidrs``: ``https://<node>:8443`` (ports.API_TLS_PORT), the deployment's API
certificate trusted, HTTP basic auth as secretspec.API_USER. The request and response shapes are
kumod's (KumoCorp/kumomta crates/kumo-api-types/src/lib.rs and xfer.rs):

1. ``GET /api/admin/suspend/v1``: reachability, the certificate and the password are checked
   before anything changes on the node.
2. ``POST /api/admin/suspend/v1`` (SuspendV1Request -> SuspendV1Response {id}): a suspension of
   fleet.DRAIN_SUSPENSION_DOMAIN, which the rendered policy reads to answer 421 to new mail. It
   lasts the timeout plus HOLD_S: a drain that dies leaves the node closed for a bounded time only.
3. With a peer: ``POST /api/admin/xfer/v1`` (XferV1Request, no selector: every scheduled queue)
   moves the queues to the peer's xfer listener; repeated every REXFER_S while mail remains, since
   kumod moves only what sits in a scheduled queue at that moment (crates/kumod/src/queue/queue.rs
   xfer_all) and a failed delivery attempt puts a message back into one.
4. ``GET /metrics.json``: the messages left are ``message_count``, every Message object kumod
   holds (crates/message/src/message.rs MESSAGE_COUNT: queued, being received, or popped from a
   ready queue by a dispatcher delivering or transferring it, which ``ready_count`` no longer
   counts: crates/kumod/src/ready_queue.rs Fifo::pop), less the records of the TSA log hooks
   (shaping.lua names each hook and its scheduled queue ``<url>.tsa.kumomta``, and its ready
   queue's service ends with ``@lua:make.<url>.tsa.kumomta``: ``scheduled_count{queue}``,
   crates/kumod/src/queue/metrics.rs, and ``ready_count{service}``, crates/kumod/src/metrics_helper.rs
   and ready_queue.rs compute_queue_name): they are not mail, and a dead peer's hook queue would
   never empty. Shape as docs/reference/http/sample-metrics.json. Drained only when that reads 0
   twice in a row (a transaction in flight when the suspension began may still add one), both
   readings taken once the suspension has existed longer than the policy's cache of it
   (fleet.DRAIN_CHECK_TTL_S) plus a poll: until then the node may still accept a message; and
   only while the node still holds a drain suspension (another drain's replaces ours: kumod
   keeps one suspension per criteria, crates/kumod/src/http_server/admin_suspend_v1.rs add).
5. Drained: the suspension stays (the node must not take mail again before it is replaced).
   Timeout or failure: the transfer is cancelled (``POST /api/admin/xfer/cancel/v1``,
   XferCancelV1Request on the xfer queue ``<target>.xfer.kumomta.internal``) and the suspension
   deleted (``DELETE /api/admin/suspend/v1`` {id}): the node serves again, its mail still on it,
   unless another drain's suspension holds it (a 404: the list says which).
"""

from __future__ import annotations

import argparse
import base64
import ipaddress
import json
import os
import re
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Callable, Mapping, Optional, TextIO

from .errors import ConfigError, Problem, shown
from .fleet import DRAIN_CHECK_TTL_S, DRAIN_REASON, DRAIN_SUSPENSION_DOMAIN, XFER_QUEUE_SUFFIX, xfer_target_url
from .ports import API_TLS_PORT


@dataclass(frozen=True)
class NodeApi:
    """How the operator's machine reaches one node's KumoMTA HTTP API (issue 6: TLS + basic auth)."""

    name: str  # node1, node2 ... (the node output's name)
    base_url: str  # https://203.0.113.7:8443
    username: str
    password: str = field(repr=False)
    ca_pem: Optional[str]  # the API certificate to trust (self-signed, generated per deployment)
    private_ip: Optional[str]  # what peers transfer to (fleet.xfer_target_url)


@dataclass(frozen=True)
class DrainResult:
    drained: bool  # True only when the node holds no message
    remaining: int  # messages still on the node when the command stopped
    moved_to: Optional[str]  # the peer's xfer URL, when transferred
    message: str  # one line for the operator


PASSWORD_ENV = "KUMO_API_PASSWORD"
DEFAULT_TIMEOUT = timedelta(hours=1)
POLL_S = 2.0
REXFER_S = 30.0
# How long the suspension outlives the timeout: after a drain the node stays closed while it is
# replaced; a drain that was killed leaves it closed this long at most.
HOLD_S = 24 * 3600.0
HTTP_TIMEOUT_S = 30.0
# How every TSA log hook's queue and ready-queue service name end (assets/policy-extras/shaping.lua
# setup_with_automation: hook_name = '<publish url>.tsa.kumomta', constructor 'make.' .. hook_name).
TSA_HOOK_SUFFIX = ".tsa.kumomta"

# (method, url, JSON body or None, headers, CA PEM, timeout) -> (status, response body).
Http = Callable[[str, str, Optional[bytes], Mapping[str, str], Optional[str], float], tuple[int, bytes]]
# (messages remaining, most seen, TSA log records left out) after each reading.
Progress = Callable[[int, int, int], Any]


class DrainError(Exception):
    """The drain could not go on (the node unreachable, an answer KumoMTA would not give)."""


class ApiRefused(DrainError):
    """The node refused the credentials or the certificate did not verify: fixed by the input
    (``fix``: KUMO_API_PASSWORD, or the certificate), and raised before anything changed on the node."""

    def __init__(self, message: str, fix: str) -> None:
        super().__init__(message)
        self.fix = fix


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # the Authorization header goes to the node and nowhere else


def https_request(method: str, url: str, body: Optional[bytes], headers: Mapping[str, str],
                  ca_pem: Optional[str], timeout: float) -> tuple[int, bytes]:
    """One request, straight to the node (no proxy: the node's firewall admits api_cidrs, not a
    proxy's address; no redirect), verifying its certificate against ``ca_pem``."""
    context = ssl.create_default_context(cadata=ca_pem) if ca_pem else ssl.create_default_context()
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect(),
                                         urllib.request.HTTPSHandler(context=context))
    request = urllib.request.Request(url, data=body, method=method, headers=dict(headers))
    try:
        with opener.open(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except urllib.error.URLError as error:
        if isinstance(error.reason, ssl.SSLCertVerificationError):
            raise ApiRefused(f"{url}: the node's certificate does not verify against the deployment's API "
                             f"certificate ({error.reason.verify_message}): use the stack's api.ca_certificate",
                             "--api-ca") from None
        raise DrainError(f"cannot reach {url}: {error.reason}") from None
    except (OSError, ssl.SSLError) as error:
        raise DrainError(f"cannot reach {url}: {error}") from None


def xfer_queue_name(target: str) -> str:
    """The xfer queue kumod fills for ``target``: XferProtocol::to_queue_name, the URL as the url
    crate prints it (scheme and host lowercase, the default port dropped, "/" for an empty path)."""
    parts = urllib.parse.urlsplit(target)
    default = {"http": 80, "https": 443}.get(parts.scheme.lower())
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    port = f":{parts.port}" if parts.port is not None and parts.port != default else ""
    path = parts.path or "/"
    query = f"?{parts.query}" if parts.query else ""
    return f"{parts.scheme.lower()}://{host}{port}{path}{query}{XFER_QUEUE_SUFFIX}"


@dataclass(frozen=True)
class Queued:
    """One reading of a node's /metrics.json."""

    remaining: int  # messages on the node (mail only)
    scheduled: int  # of which in scheduled queues (the xfer queues included)
    ready: int  # of which in ready queues
    tsa_records: int  # TSA log-hook records queued, not counted: not mail

    @property
    def in_flight(self) -> int:
        """Being delivered, transferred or received: in no queue, still a Message object."""
        return self.remaining - self.scheduled - self.ready

    def detail(self) -> str:
        return f"{self.scheduled} scheduled, {self.ready} ready, {self.in_flight} in flight"


def queued(metrics: Any) -> Queued:
    """The messages on the node from /metrics.json: ``message_count`` less the TSA log-hook
    records in ``scheduled_count{queue}`` and ``ready_count{service}``; never below what its
    scheduled and ready queues hold (the gauges are not read atomically)."""
    def number(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise DrainError(f"/metrics.json: {shown(value)} is not a number")
        return value

    def gauge(name: str) -> float:
        entry = metrics.get(name)
        if not isinstance(entry, dict):
            raise DrainError(f"/metrics.json has no {name}: the node's answer is not KumoMTA's metrics")
        return number(entry.get("value"))

    def by_label(name: str, label: str) -> dict[str, float]:
        """A pruning registry's values by label (absent while no such queue exists)."""
        entry = metrics.get(name)
        values = entry.get("value") if isinstance(entry, dict) else None
        inner = values.get(label) if isinstance(values, dict) else None
        return {str(k): number(v) for k, v in inner.items()} if isinstance(inner, dict) else {}

    if not isinstance(metrics, dict):
        raise DrainError("/metrics.json is not a JSON object: the node's answer is not KumoMTA's metrics")
    messages, scheduled_total = gauge("message_count"), gauge("scheduled_count_total")
    tsa_scheduled = sum(v for k, v in by_label("scheduled_count", "queue").items() if k.endswith(TSA_HOOK_SUFFIX))
    ready_by_service = by_label("ready_count", "service")
    tsa_ready = sum(v for k, v in ready_by_service.items() if k.endswith(TSA_HOOK_SUFFIX))
    scheduled = max(0, int(scheduled_total - tsa_scheduled))
    ready = max(0, int(sum(ready_by_service.values()) - tsa_ready))
    remaining = max(int(messages - tsa_scheduled - tsa_ready), scheduled + ready)
    return Queued(remaining, scheduled, ready, int(tsa_scheduled + tsa_ready))


class NodeClient:
    """KumoMTA's admin API on one node, as the API user."""

    def __init__(self, node: NodeApi, http: Http, timeout_s: float = HTTP_TIMEOUT_S) -> None:
        if not node.base_url.lower().startswith("https://"):
            raise DrainError(f"{node.name}: {shown(node.base_url)} is not an https URL: the API password is never "
                             "sent in clear")
        self.node, self.http, self.timeout_s = node, http, timeout_s
        token = base64.b64encode(f"{node.username}:{node.password}".encode()).decode()
        self._headers = {"Authorization": f"Basic {token}", "Accept": "application/json"}

    def call(self, method: str, path: str, payload: Any = None, ok: tuple[int, ...] = (200,)) -> tuple[int, Any]:
        body = None if payload is None else json.dumps(payload).encode()
        headers = {**self._headers, **({"Content-Type": "application/json"} if body is not None else {})}
        status, data = self.http(method, self.node.base_url.rstrip("/") + path, body, headers, self.node.ca_pem,
                                 self.timeout_s)
        where = f"{self.node.name}: {method} {path}"
        if status == 401 and _ACL_REFUSAL.search(data.decode("utf-8", "replace")):
            raise DrainError(f"{where}: 401, this node's policy does not grant the API user drain's endpoints "
                             f"(kumod: {shown(data.decode('utf-8', 'replace').strip(), 200)}): upgrade its bootstrap "
                             "(its policy predates kumo-infra drain), then drain")
        if status == 401:
            raise ApiRefused(f"{where}: 401, the node refused user {self.node.username} with this password: set "
                             f"{PASSWORD_ENV} to the deployment's API password", PASSWORD_ENV)
        if status not in ok:
            raise DrainError(f"{where}: HTTP {status}: {shown(data.decode('utf-8', 'replace').strip(), 200)}")
        try:
            return status, json.loads(data) if data.strip() and status == 200 else None
        except ValueError:
            return status, data.decode("utf-8", "replace")

    def suspensions(self) -> list[dict[str, Any]]:
        _, entries = self.call("GET", "/api/admin/suspend/v1")
        if not isinstance(entries, list):
            raise DrainError(f"{self.node.name}: GET /api/admin/suspend/v1 answered no list")
        return entries

    def drain_suspension(self) -> Optional[dict[str, Any]]:
        """The drain suspension the node holds (whichever drain made it), None when it holds none."""
        return next((s for s in self.suspensions() if isinstance(s, dict) and s.get("domain") == DRAIN_SUSPENSION_DOMAIN),
                    None)

    def suspend(self, duration_s: float) -> str:
        _, answer = self.call("POST", "/api/admin/suspend/v1", {
            "domain": DRAIN_SUSPENSION_DOMAIN, "reason": DRAIN_REASON, "duration": int(duration_s)})
        if not isinstance(answer, dict) or not isinstance(answer.get("id"), str):
            raise DrainError(f"{self.node.name}: POST /api/admin/suspend/v1 answered no id")
        return answer["id"]

    def unsuspend(self, suspension_id: str) -> bool:
        """False for a 404: expired, or replaced by another drain's suspension (the list says which)."""
        status, _ = self.call("DELETE", "/api/admin/suspend/v1", {"id": suspension_id}, ok=(200, 404))
        return status == 200

    def xfer(self, target: str) -> None:
        self.call("POST", "/api/admin/xfer/v1", {"reason": DRAIN_REASON, "target": target})

    def cancel_xfer(self, target: str) -> None:
        # 404: no such xfer queue any more (everything already left): nothing to cancel.
        self.call("POST", "/api/admin/xfer/cancel/v1", {"queue_name": xfer_queue_name(target), "reason": DRAIN_REASON},
                  ok=(200, 404))

    def queued(self) -> Queued:
        _, metrics = self.call("GET", "/metrics.json")
        return queued(metrics)


# kumod's 401 for an ACL refusal rather than a failed password (crates/kumo-server-common/src/
# http_server/auth.rs auth_middleware: "<who> denied GET on <resource>" for an explicit Deny, "<who>
# not permitted GET on <resource>" when no rule grants it; "HttpBasicAuth Authentication Failed
# for <user>" for the password).
_ACL_REFUSAL = re.compile(r" (?:denied|not permitted) [A-Z]+ on http_listener")


def drain_suspension(node: NodeApi, http: Optional[Http] = None) -> Optional[dict[str, Any]]:
    """The drain suspension ``node`` holds (GET /api/admin/suspend/v1), None when it serves."""
    return NodeClient(node, http or https_request).drain_suspension()


def reopen_hint(node: str, suspension: Mapping[str, Any]) -> str:
    """How an operator deletes a drain suspension left on ``node``."""
    entry = suspension.get("id")
    return (f"on {node}, kcli suspend-cancel --id {entry} (or DELETE /api/admin/suspend/v1 "
            f"{{\"id\": \"{entry}\"}} through its API)")


def drain_node(node: NodeApi, *, to: Optional[NodeApi] = None, timeout_s: float,
               progress: Optional[Progress] = None, target_url: Optional[str] = None,
               http: Optional[Http] = None, clock: Callable[[], float] = time.monotonic,
               sleep: Callable[[float], Any] = time.sleep, poll_s: float = POLL_S,
               rexfer_s: float = REXFER_S) -> DrainResult:
    """Stop ``node`` accepting mail, move its queues to ``to`` (or ``target_url``, a peer's xfer
    listener; neither: wait for them to empty), until it holds nothing or ``timeout_s`` passes
    (then it accepts mail again). ``progress(remaining, most seen, TSA records)`` after every reading.

    Raises ApiRefused (nothing changed on the node), DrainError or DrainInterrupted; whatever stops
    the drain after the suspension began first cancels the transfer and deletes the suspension."""
    if to is not None and target_url is None:
        if not to.private_ip:
            raise DrainError(f"peer {to.name} has no private address to transfer to")
        target_url = xfer_target_url(to.private_ip)
    client = NodeClient(node, http or https_request)
    deadline = clock() + timeout_s
    client.suspensions()  # reachable, trusted, authenticated: checked before anything changes
    suspension = client.suspend(timeout_s + HOLD_S)
    # The suspension exists by now; the node's policy may not see it before its cache lapses.
    settled_at = clock() + DRAIN_CHECK_TTL_S + poll_s
    try:
        drained, reading = _until_empty(client, target_url, suspension, deadline, settled_at, progress, clock, sleep,
                                        poll_s, rexfer_s)
    except BaseException as exc:  # an error or an interrupt: the node must serve again
        after = "; ".join(_reopen(client, target_url, suspension)) or f"{node.name} accepts mail again"
        if isinstance(exc, DrainError):
            raise DrainError(f"{exc}; {after}") from None
        if isinstance(exc, KeyboardInterrupt):
            raise DrainInterrupted(f"interrupted: {after}, its mail still on it") from None
        raise
    if drained is not None:
        return DrainResult(True, 0, target_url, drained)
    notes = _reopen(client, target_url, suspension)
    moved = f"; the transfer to {target_url} was cancelled" if target_url else ""
    return DrainResult(False, reading.remaining, target_url,
                       f"{node.name}: timed out after {timeout_s:g}s with {reading.remaining} message(s) still on it "
                       f"({reading.detail()}){moved}; "
                       + ("; ".join(notes) if notes else f"{node.name} accepts mail again"))


class DrainInterrupted(KeyboardInterrupt):
    """Ctrl-C during a drain, once the node was reopened (or not: the message says)."""


def _until_empty(client: NodeClient, target: Optional[str], suspension: str, deadline: float, settled_at: float,
                 progress: Optional[Progress], clock: Callable[[], float], sleep: Callable[[float], Any],
                 poll_s: float, rexfer_s: float) -> tuple[Optional[str], Queued]:
    """(the drained message, or None when the deadline passed first; the last reading). A 0 read
    read by ``settled_at`` never counts: the node may still have been accepting mail."""
    name = client.node.name
    last_xfer = None
    most = 0
    zero_seen = False
    while True:
        settled = clock() > settled_at
        reading = client.queued()
        remaining = reading.remaining
        most = max(most, remaining)
        if progress is not None:
            progress(remaining, most, reading.tsa_records)
        if remaining == 0 and zero_seen:
            return _still_closed(client, target, suspension), reading
        zero_seen = remaining == 0 and settled
        if target and remaining and (last_xfer is None or clock() - last_xfer >= rexfer_s):
            client.xfer(target)
            last_xfer = clock()
        left = deadline - clock()
        if left <= 0:
            return None, reading
        sleep(min(poll_s, left))


def _still_closed(client: NodeClient, target: Optional[str], suspension: str) -> str:
    """The drained message, once the node is seen to hold a drain suspension still: one deleted
    meanwhile (another drain timing out, an operator) let it take mail again, so it is not drained."""
    name = client.node.name
    holding = client.drain_suspension()
    if holding is None:
        raise DrainError(f"{name}: its drain suspension is gone (deleted by another drain or an operator): it takes "
                         "new mail, so it is not drained; drain it again")
    where = f"moved to {target}" if target else "delivered"
    held_by = (f"the suspension of {DRAIN_SUSPENSION_DOMAIN} lapses after {HOLD_S / 3600:g}h" if holding.get("id") ==
               suspension else f"another drain's suspension {holding.get('id')} holds it now: if that drain gives up, "
                               "the node takes mail again")
    return f"{name} holds no message (all {where}); it answers 421 to new mail until it is replaced ({held_by})"


def _reopen(client: NodeClient, target: Optional[str], suspension: str) -> list[str]:
    """Cancel the transfer and delete the suspension; what could not be done or still keeps the
    node closed, for the operator (empty: the node takes mail again)."""
    name = client.node.name
    notes = []
    if target:
        try:
            client.cancel_xfer(target)
        except DrainError as exc:
            notes.append(f"the transfer could not be cancelled ({exc})")
    try:
        if not client.unsuspend(suspension):
            # Lapsed, or replaced by another drain's suspension of the same domain (kumod keeps one).
            other = client.drain_suspension()
            if other is not None:
                notes.append(f"{name} still refuses new mail: another drain's suspension {other.get('id')} replaced "
                             f"this one ({shown(other.get('reason'), 120)}, {shown(other.get('duration'), 40)} left); "
                             f"to reopen it: {reopen_hint(name, other)}")
    except DrainError as exc:
        notes.append(f"the suspension {suspension} could not be deleted ({exc}): {name} refuses new mail until it "
                     f"lapses or {reopen_hint(name, {'id': suspension})} succeeds")
    return notes


# -- progress ----------------------------------------------------------------------------------

class ProgressReport:
    """Messages remaining, and the TSA log records left out of them, on ``stream``: a bar redrawn
    in place on a terminal, else a line when the count changes (at most every ``every_s``) and at
    least every ``every_s``."""

    WIDTH = 30

    def __init__(self, node: str, stream: TextIO, tty: Optional[bool] = None, every_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.node, self.stream, self.every_s, self.clock = node, stream, every_s, clock
        self.tty = stream.isatty() if tty is None else tty
        self._last: Optional[tuple[int, float]] = None

    def __call__(self, remaining: int, most: int, tsa_records: int = 0) -> None:
        left_out = f"{tsa_records} TSA log record(s) not counted"
        if self.tty:
            done = most - remaining
            filled = self.WIDTH if most == 0 else self.WIDTH * done // most
            self.stream.write(f"\r{self.node} [{'#' * filled}{'.' * (self.WIDTH - filled)}] "
                              f"{remaining} message(s) remaining of {most}, {left_out}\x1b[K")
            self.stream.flush()
            return
        now = self.clock()
        if self._last is not None:
            count, at = self._last
            if count == remaining and now - at < self.every_s:
                return
        self._last = (remaining, now)
        self.stream.write(f"{self.node}: {remaining} message(s) remaining (of {most} seen), {left_out}\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


# -- the command -------------------------------------------------------------------------------

DESCRIPTION = """Empty one node before it is replaced: stop it accepting mail (an admin suspension its policy
answers with 421), then transfer its queues to a peer (--to, KumoMTA's xfer) or wait until they
are empty, showing the messages remaining (KumoMTA's metrics). Exit 0 only when the node holds no
message; it then keeps refusing mail until it is replaced. On --timeout the transfer is cancelled
and the node accepts mail again (exit 1, naming what remains)."""

EPILOG = f"""The node's API is reached as issue 6 opened it: https://NODE:{API_TLS_PORT} from
kumo:deployment.network.api_cidrs, its certificate from the stack output api.ca_certificate (with
--config: --api-ca FILE), user kumo-api, the password from {PASSWORD_ENV} (the stack output
api.read_password prints the command that reads it). Durations: 90s, 30m, 2h. Exit codes: 0 drained,
1 not drained (timeout, the node unreachable), 2 bad input (nothing changed on the node)."""

_NODE_RE = re.compile(r"(?:node)?([1-9][0-9]{0,3})", re.ASCII)


def node_index(text: str) -> int:
    """node1 / 1 -> 0."""
    match = _NODE_RE.fullmatch(text)
    if not match:
        raise argparse.ArgumentTypeError(f"{shown(text)} is not a node: give its name (node1, node2, ...) or "
                                         "its number from 1")
    return int(match.group(1)) - 1


def register(sub: Any) -> None:
    """The ``drain`` command under kumo-infra's subcommands."""
    from . import ci
    from .cli import _add_stack_source

    p = sub.add_parser("drain", help="empty a node (transfer its queues to a peer, or wait) before it is replaced",
                       description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_stack_source(p)
    p.add_argument("--node", required=True, type=node_index, metavar="N", help="the node to drain: node1 or 1")
    p.add_argument("--to", metavar="PEER", help="transfer to this node (node2 or 2: its private address) or to "
                                                "this xfer listener URL (http://10.0.0.12:8000) of another node "
                                                "of the deployment")
    p.add_argument("--to-any-url", action="store_true",
                   help="accept a --to URL whose host is none of the deployment's other nodes' private addresses "
                        "(the rendered policy keeps a transfer to such a host queued on the node)")
    p.add_argument("--timeout", type=ci.duration, default=DEFAULT_TIMEOUT, metavar="DURATION",
                   help="give up after this long and let the node serve again (default 1h)")
    p.add_argument("--api-ca", metavar="FILE", help="the API certificate (PEM): required with --config, where no "
                                                    "stack output holds it")


@dataclass(frozen=True)
class Deps:
    """What drain reaches outside this process; tests replace them."""

    pulumi_command: Any = None  # None: the pulumi on PATH
    http: Optional[Http] = None  # None: https_request
    env: Optional[Mapping[str, str]] = None  # None: os.environ
    stream: Optional[TextIO] = None  # progress; None: sys.stderr


def run(args: Any, deps: Optional[Deps] = None) -> int:
    deps = deps or Deps()
    env = os.environ if deps.env is None else deps.env
    node, to, target_url = resolve(args, env, deps.pulumi_command)
    stream = deps.stream or sys.stderr
    report = ProgressReport(node.name, stream)
    how = f"transferring its queues to {target_url}" if target_url else "waiting for its queues to empty"
    print(f"draining {node.name} ({node.base_url}): new mail refused, {how}", file=stream, flush=True)
    try:
        result = drain_node(node, to=to, target_url=target_url, timeout_s=args.timeout.total_seconds(),
                            progress=report, http=deps.http)
    except ApiRefused as exc:
        report.close()
        raise ConfigError(Problem(exc.fix, str(exc))) from None
    except DrainError as exc:
        report.close()
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except DrainInterrupted as exc:
        report.close()
        print(f"{node.name}: {exc}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        report.close()
        print(f"interrupted before {node.name} was closed to new mail", file=sys.stderr)
        return 130
    report.close()
    print(result.message)
    return 0 if result.drained else 1


def api_password(deployment: Any, env: Mapping[str, str]) -> str:
    """The API password from KUMO_API_PASSWORD (never a flag); ConfigError naming the command that
    prints it, with the operator's own credentials, when unset."""
    from .secretspec import API_PASSWORD, secret_specs

    password = env.get(PASSWORD_ENV, "")
    if not password:
        spec = next(s for s in secret_specs(deployment) if s.key == API_PASSWORD)
        raise ConfigError(Problem(PASSWORD_ENV, "is not set: export it with the API password, which this prints "
                                                "(with your own credentials): "
                                                f"{deployment.target.secrets.read_command(deployment, spec)}"))
    return password


def resolve(args: Any, env: Mapping[str, str], pulumi_command: Any = None) -> tuple[NodeApi, Optional[NodeApi], Optional[str]]:
    """(the node, the peer node or None, the peer URL or None) from the arguments; ConfigError
    (exit 2) for anything wrong, before the node is contacted."""
    from .cli import load_stack
    from .secretspec import API_USER

    stack = load_stack(args)
    d = stack.deployment
    if not d.network.api_cidrs:
        raise ConfigError(Problem("kumo:deployment.network.api_cidrs", "is empty: the nodes' API listens on their "
                                  "loopback only, so drain cannot reach it; add the network you run kumo-infra from "
                                  "and run pulumi up"))
    if args.timeout.total_seconds() <= 0:
        raise ConfigError(Problem("--timeout", "must be longer than 0s (like 30m)"))
    if args.node >= stack.plan.nodes:
        raise ConfigError(Problem("--node", f"node{args.node + 1} does not exist: stack {stack.stack} has "
                                            f"{stack.plan.nodes} node(s), node1 to node{stack.plan.nodes}"))
    peer_index, target_url = _peer(args.to, args.node, stack.plan.nodes)
    if args.to_any_url and target_url is None:
        raise ConfigError(Problem("--to-any-url", "goes with a --to URL (http://HOST:PORT) only"))
    password = api_password(d, env)
    ca_pem = _read_ca(args.api_ca) if args.api_ca else None
    outputs = _stack_outputs(args.stack, pulumi_command) if args.stack is not None else _config_outputs(stack, args)
    nodes, api = outputs.get("nodes"), outputs.get("api")
    if not isinstance(nodes, list) or len(nodes) <= max(args.node, peer_index or 0) or not isinstance(api, dict):
        raise ConfigError(Problem("--stack", f"stack {stack.stack} has no nodes or api output for node{args.node + 1}: "
                                             "has pulumi up finished since network.api_cidrs was set?"))
    if ca_pem is None:
        ca_pem = api.get("ca_certificate")
        if not isinstance(ca_pem, str) or "BEGIN CERTIFICATE" not in ca_pem:
            raise ConfigError(Problem("--api-ca", f"stack {stack.stack}'s api output holds no certificate: give it "
                                                  "with --api-ca FILE"))

    def node_api(i: int) -> NodeApi:
        entry = nodes[i] if isinstance(nodes[i], dict) else {}
        endpoints = api.get("endpoints") if isinstance(api.get("endpoints"), list) else []
        url = endpoints[i].get("ip_url") if i < len(endpoints) and isinstance(endpoints[i], dict) else None
        url = url or f"https://{entry.get('public_ip')}:{API_TLS_PORT}"
        return NodeApi(str(entry.get("name") or f"node{i + 1}"), url, API_USER, password, ca_pem,
                       entry.get("private_ip"))

    peer = node_api(peer_index) if peer_index is not None else None
    if peer is not None and not peer.private_ip:
        raise ConfigError(Problem("--to", f"{peer.name} has no private_ip in the stack's nodes output: give the "
                                          "peer's xfer URL instead (http://ADDRESS:8000)"))
    if target_url is not None:
        _check_target(target_url, args.node, nodes, args.to_any_url)
    return node_api(args.node), peer, target_url


def _same_host(a: str, b: Any) -> bool:
    if not isinstance(b, str) or not b:
        return False
    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b.strip("[]"))
    except ValueError:
        return a.lower() == b.strip("[]").lower()


def _check_target(url: str, node: int, nodes: list[Any], any_url: bool) -> None:
    """A --to URL names another node of the deployment by its private address: never the node
    itself (its own addresses or names, loopback: kumod refuses an xfer to itself), and nothing
    outside the deployment unless --to-any-url says so (the policy keeps such a transfer queued)."""
    host = urllib.parse.urlsplit(url).hostname or ""
    entries = [n if isinstance(n, dict) else {} for n in nodes]
    own = entries[node]
    try:
        address = ipaddress.ip_address(host)
        local = address.is_loopback or address.is_unspecified
    except ValueError:
        local = host.lower() == "localhost"
    if local or any(_same_host(host, own.get(key)) for key in ("private_ip", "public_ip", "hostname", "name")):
        raise ConfigError(Problem("--to", f"{shown(url)} is node{node + 1} itself, the node being drained: name "
                                          "another node (node2) or its xfer URL"))
    peers = [e.get("private_ip") for i, e in enumerate(entries) if i != node and e.get("private_ip")]
    if not any_url and not any(_same_host(host, p) for p in peers):
        known = ", ".join(str(p) for p in peers) or "none listed"
        raise ConfigError(Problem("--to", f"{shown(url)} is none of the other nodes' private addresses ({known}): "
                                          "name a node (node2), or give --to-any-url to transfer to a host outside "
                                          "the deployment (its policy keeps such a transfer queued)"))


def _peer(text: Optional[str], node: int, count: int) -> tuple[Optional[int], Optional[str]]:
    if text is None:
        return None, None
    if re.match(r"(?i)https?://", text):
        try:
            parts = urllib.parse.urlsplit(text)
            parts.port  # noqa: B018 (raises for a port out of range)
        except ValueError:  # an unclosed [IPv6 literal, a port out of range
            parts = None
        if parts is None or not parts.hostname or parts.username or parts.password or parts.query or parts.fragment \
                or parts.path not in ("", "/") or any(c.isspace() or ord(c) < 32 for c in text):
            raise ConfigError(Problem("--to", f"{shown(text)} is not a peer's xfer listener URL: "
                                              "http(s)://HOST[:PORT], nothing after it (like http://10.0.0.12:8000)"))
        return None, text
    try:
        index = node_index(text)
    except argparse.ArgumentTypeError as exc:
        raise ConfigError(Problem("--to", f"{exc}, or a peer's xfer URL (http://10.0.0.12:8000)")) from None
    if index == node:
        raise ConfigError(Problem("--to", f"node{index + 1} is the node being drained: name another one"))
    if index >= count:
        raise ConfigError(Problem("--to", f"node{index + 1} does not exist: the stack has {count} node(s)"))
    return index, None


def _read_ca(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(Problem("--api-ca", f"cannot read {shown(path)}: {exc}")) from None
    try:
        ssl.create_default_context(cadata=text)
    except (ssl.SSLError, ValueError):
        raise ConfigError(Problem("--api-ca", f"{shown(path)} holds no PEM certificate: save the stack output "
                                              "api.ca_certificate in it")) from None
    return text


def _stack_outputs(name: str, pulumi_command: Any = None) -> dict[str, Any]:
    """The stack's outputs, read in the project directory without decrypting a secret (`pulumi
    stack output --json`) and without changing which stack the project has selected."""
    from pulumi import automation as auto

    from .ephemeral import installed_pulumi, tail
    from .stackconfig import project_root

    command = pulumi_command or installed_pulumi()
    workspace = auto.LocalWorkspace(work_dir=str(project_root()), pulumi_command=command)
    env = {**({"PULUMI_HOME": workspace.pulumi_home} if workspace.pulumi_home else {}), **workspace.env_vars}
    try:
        result = command.run(["stack", "output", "--json", "--stack", name], workspace.work_dir, env)
    except auto.StackNotFoundError:
        raise ConfigError(Problem("--stack", f"no stack {name} in this project's backend (pulumi stack ls)")) from None
    except auto.CommandError as exc:
        raise ConfigError(Problem("--stack", f"pulumi could not read stack {name}'s outputs:\n{tail(exc)}")) from None
    try:
        outputs = json.loads(result.stdout)
    except ValueError:
        raise ConfigError(Problem("--stack", f"pulumi printed no JSON outputs for stack {name}")) from None
    return outputs if isinstance(outputs, dict) else {}


def _config_outputs(stack: Any, args: Any) -> dict[str, Any]:
    """The outputs the program gives offline, usable only where the config holds the nodes'
    addresses (machines that exist already); the certificate comes from --api-ca."""
    from . import planview
    from .port25 import PENDING, report

    if any(n["public_ip"] == PENDING for n in report(stack.deployment, stack.plan)["nodes"]):
        raise ConfigError(Problem("--config", "the nodes' addresses are known only once they exist: use --stack "
                                              "with the deployed stack, whose outputs hold them"))
    if not args.api_ca:
        raise ConfigError(Problem("--api-ca", "with --config no stack output holds the API certificate: save the "
                                              "stack output api.ca_certificate to a file and give it here"))
    return planview.run_offline(stack)[0].outputs

"""``kumo-infra roll``: replace a fleet's machines one at a time, draining each first.

The stack is the project's own (this checkout's Pulumi.yaml and program, its stack file
stacks/Pulumi.<stack>.yaml), driven through the Automation API on a LocalWorkspace of the project
directory, with the CLI stopped cleanly on an interrupt (ephemeral.InterruptiblePulumiCommand).
For each node in turn:

1. check: every OTHER node is healthy and holds no drain suspension (GET /api/admin/suspend/v1:
   a node a stopped roll or drain left drained still answers SMTP 220 and liveness 200, yet
   refuses mail), so at most this one is ever out of service and no drained node is a peer;
2. drain: kumo_infra.drain.drain_node, its queues transferred to the next node (by its private
   address, fleet.xfer_target_url), never to itself; a stack of one node (--allow-downtime) waits
   until its queue is empty instead;
3. replace: ``pulumi up --replace URN --target URN --target-dependents`` with URN the node's machine
   (the resource of Target.machine_type named Names.machine(node) in the exported state).
   pulumi/pulumi pkg/resource/deploy/step_generator.go: ``--replace`` makes the engine's diff of
   that resource a replacement (``diff``: isTargetedReplace) and constrains nothing else;
   ``--target`` gives every resource outside the target set a SameStep with its OLD state, not even
   diffed ("not in target group"), so no pending config change of another node is applied;
   ``--target-dependents`` adds to the set every resource depending on a targeted one (parent,
   dependsOn, property dependencies, deletedWith: isTargetedForUpdate, transitively through
   targetsActual). Those are diffed normally: the Elastic IP and the spool volume attachment that
   name the machine's id follow the new machine, dependents whose inputs do not change stay
   "same". Without it the Elastic IP would keep naming the deleted instance, and a dependent
   a delete-before-replace must recreate would be refused ("untargeted create");
4. health: SMTP 220 + STARTTLS and the bootstrap's ``KUMO-BOOTSTRAP OK`` on the console
   (kumo_infra.smoke.run_smoke for that node) and ``GET /api/check-liveness/v1`` through the API,
   within --health-timeout; and no drain suspension (a new machine's kumod holds none).

The first failure stops the roll, saying which node and step, which nodes were rolled and what
still serves (exit 1). Bad input exits 2 before anything is touched.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Sequence

from . import fleet
from .errors import ConfigError, Problem, shown

if TYPE_CHECKING:
    from pulumi import automation as auto

    from .config import Deployment
    from .drain import DrainResult, NodeApi
    from .smoke import ConsoleReader, SmokeReport
    from .stackconfig import StackConfig

DESCRIPTION = """Replace a stack's machines one node at a time, without losing mail: for each node, check that
every other node is healthy, drain it into the next node (kumo-infra drain), pulumi up with exactly
that machine (and what names it) replaced, then wait until the new machine is healthy (SMTP 220 with
STARTTLS, KUMO-BOOTSTRAP OK on its console, the API's liveness check). Never more than one node out of
service; the first failure stops the roll with the fleet still serving."""

EPILOG = """Runs the project's own program on the stack, with the Pulumi backend and credentials of pulumi
itself (and the cloud CLI logged in, to read the consoles). A stack of one node cannot stay in service
while it is replaced: --allow-downtime says so, and its queue is still emptied first. Durations: 90s,
30m, 1h. Exit codes: 0 every node rolled, 1 a step failed or the roll was interrupted (the message
says where), 2 bad input (nothing touched)."""

DEFAULT_DRAIN_TIMEOUT = timedelta(minutes=30)
DEFAULT_HEALTH_TIMEOUT = timedelta(minutes=15)
# The other nodes are checked before each drain: a healthy node answers at once; this bounds how
# long one that is rebooting or briefly unreachable gets before the roll stops.
PRECHECK_S = 60.0
LIVENESS_PATH = "/api/check-liveness/v1"
LIVENESS_POLL_S = 10.0
HTTP_TIMEOUT_S = 30.0

CHECK, DRAIN, REPLACE, HEALTH = "check", "drain", "replace", "health"


@dataclass(frozen=True)
class Health:
    ok: bool
    detail: str  # what failed (or what was seen), one line per check


# (node output entry, how its API is reached, seconds it may take) -> Health
HealthCheck = Callable[[dict, "NodeApi", float], Health]


@dataclass(frozen=True)
class Deps:
    """What a roll reaches outside this process; tests replace them."""

    pulumi_command: Optional["auto.PulumiCommand"] = None  # None: the pulumi on PATH
    drain_node: Optional[Callable[..., "DrainResult"]] = None  # None: kumo_infra.drain.drain_node
    # The nodes' API access, in node order, from the stack outputs; None: kumo_infra.drain.node_apis.
    node_apis: Optional[Callable[["Deployment", Mapping[str, Any]], list["NodeApi"]]] = None
    # None: smoke + liveness (default_health) with the target's console reader.
    check_health: Optional[HealthCheck] = None
    # The drain suspension a node holds, None when it serves; None: kumo_infra.drain.drain_suspension.
    drain_suspension: Optional[Callable[["NodeApi"], Optional[dict]]] = None
    on_output: Callable[[str], Any] = field(default=lambda line: print(line, file=sys.stderr, flush=True))
    sleep: Callable[[float], Any] = time.sleep
    clock: Callable[[], float] = time.monotonic


class RollStopped(Exception):
    """A step failed: the roll stops there, the message says where and what still serves."""


# -- the command line ---------------------------------------------------------------------------

def node_list(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",")]
    if not all(names) or not all(name.startswith("node") and name[4:].isdigit() and name[4:5] != "0"
                                 and len(name) <= 8 for name in names):
        raise argparse.ArgumentTypeError(f"{shown(text)} is not a list of node names (like node2,node3)")
    return names


def register(sub: Any) -> None:
    """The ``roll`` command under kumo-infra's subcommands."""
    from .ci import duration

    p = sub.add_parser("roll", help="replace a stack's machines one node at a time, draining each first",
                       description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stack", required=True, help="stack name: reads stacks/Pulumi.NAME.yaml, rolls that Pulumi stack")
    p.add_argument("--nodes", type=node_list, metavar="NODE,...",
                   help="the nodes to roll, in this order (default: every node, node1 first)")
    p.add_argument("--allow-downtime", action="store_true",
                   help="allow rolling a stack of one node, which serves no mail while it is replaced")
    p.add_argument("--drain-timeout", type=duration, default=DEFAULT_DRAIN_TIMEOUT, metavar="DURATION",
                   help="how long each node's drain may take (default 30m)")
    p.add_argument("--health-timeout", type=duration, default=DEFAULT_HEALTH_TIMEOUT, metavar="DURATION",
                   help="how long each new machine may take to be healthy (default 15m)")


# -- what is asked, checked before anything runs ---------------------------------------------------

def planned_nodes(stack: "StackConfig") -> list[str]:
    return [f"node{i + 1}" for i in range(stack.plan.nodes)]


def check_request(stack: "StackConfig", nodes: Optional[Sequence[str]], allow_downtime: bool) -> list[str]:
    """The nodes to roll, in order; ConfigError (exit 2) for what cannot be rolled."""
    from .config import ROOT

    target = stack.deployment.target
    if target.machine_type is None:
        raise ConfigError(Problem(f"{ROOT}.cloud", f"the {target.title} target takes machines that exist already: "
                                                   "kumo-infra creates no machine there, so it has none to replace. "
                                                   "Replace one yourself: kumo-infra drain --stack "
                                                   f"{stack.stack} --node N, then rebuild that host"))
    if stack.deployment.lifecycle.protect:
        # pulumi refuses to replace a protected resource (step_generator.go: "unable to replace resource").
        raise ConfigError(Problem(f"{ROOT}.lifecycle.protect", "is true: pulumi refuses to replace the "
                                                               "protected machines; set it to false for the roll "
                                                               "(and back after)"))
    if not stack.deployment.network.api_cidrs:
        raise ConfigError(Problem(f"{ROOT}.network.api_cidrs", "is empty: the nodes' API listens on their loopback "
                                                               "only, where neither the drain nor the health check "
                                                               "reaches it; add the network you run kumo-infra from "
                                                               "and run pulumi up"))
    every = planned_nodes(stack)
    if len(every) == 1 and not allow_downtime:
        raise ConfigError(Problem("--allow-downtime", f"stack {stack.stack} has one node: no other node serves while "
                                                      "it is replaced; give --allow-downtime to roll it anyway (its "
                                                      "queue is still emptied first)"))
    chosen = list(nodes) if nodes else every
    unknown = [n for n in chosen if n not in every]
    if unknown:
        raise ConfigError(Problem("--nodes", f"{', '.join(unknown)}: stack {stack.stack} has {', '.join(every)}"))
    repeated = sorted({n for n in chosen if chosen.count(n) > 1})
    if repeated:
        raise ConfigError(Problem("--nodes", f"{', '.join(repeated)} named more than once"))
    return chosen


def machine_urns(export: Mapping[str, Any], stack: "StackConfig", nodes: Sequence[str]) -> dict[str, str]:
    """Each node's machine URN in ``export`` (`stack export`): the one resource of the target's
    machine type named as the component names it (Names.machine). ConfigError when one is missing."""
    from .component import Names

    resources = (export.get("deployment") or {}).get("resources") or []
    machine_type = stack.deployment.target.machine_type
    names = Names(stack.deployment.name)
    found: dict[str, str] = {}
    problems = []
    for node in nodes:
        wanted = names.machine(node)
        urns = [r.get("urn", "") for r in resources
                if r.get("type") == machine_type and str(r.get("urn", "")).rsplit("::", 1)[-1] == wanted]
        if len(urns) != 1:
            problems.append(Problem("--stack", f"the state of stack {stack.stack} holds {len(urns) or 'no'} "
                                               f"{machine_type} named {wanted} ({node}'s machine): bring the stack "
                                               "up with this stack file first (pulumi up)"))
        else:
            found[node] = urns[0]
    if problems:
        raise ConfigError(problems)
    return found


def node_outputs(outputs: Mapping[str, Any], stack: "StackConfig") -> dict[str, dict]:
    """The ``nodes`` output by node name; ConfigError unless it lists exactly the planned nodes."""
    from .config import ROOT

    nodes = outputs.get("nodes")
    if not isinstance(nodes, list) or not all(isinstance(n, dict) for n in nodes):
        raise ConfigError(Problem("--stack", f"stack {stack.stack} has no nodes output: bring it up first (pulumi up)"))
    by_name = {str(n.get("name")): n for n in nodes}
    if sorted(by_name) != sorted(planned_nodes(stack)):
        raise ConfigError(Problem("--stack", f"stack {stack.stack}'s nodes output lists {', '.join(sorted(by_name))}, "
                                             f"its stack file plans {', '.join(planned_nodes(stack))}: bring it up "
                                             "with this stack file first (pulumi up)"))
    if outputs.get("api") is None:
        raise ConfigError(Problem("--stack", f"stack {stack.stack} has no api output: run pulumi up since "
                                             "network.api_cidrs was set"))
    return by_name


def next_peer(node: str, order: Sequence[str]) -> Optional[str]:
    """The node after ``node`` in the stack's order (wrapping round), never ``node`` itself."""
    if len(order) < 2:
        return None
    return order[(order.index(node) + 1) % len(order)]


# -- health -----------------------------------------------------------------------------------------

def liveness(api: "NodeApi", timeout_s: float = HTTP_TIMEOUT_S) -> tuple[bool, str]:
    """GET /api/check-liveness/v1 (KumoMTA answers 200 while it accepts work, 503 when shutting
    down or shedding load; it needs no credentials) through drain's request: straight to the node,
    its certificate checked against the deployment's own (which names every node's address)."""
    from .drain import DrainError, https_request

    url = api.base_url.rstrip("/") + LIVENESS_PATH
    try:
        status, _ = https_request("GET", url, None, {}, api.ca_pem, timeout_s)
    except DrainError as error:
        return False, str(error)
    return status == 200, f"{url} answered {status}"


def default_health(deployment: "Deployment", console: Optional["ConsoleReader"], *,
                   run_smoke: Optional[Callable[..., "SmokeReport"]] = None,
                   live: Callable[["NodeApi", float], tuple[bool, str]] = liveness,
                   clock: Callable[[], float] = time.monotonic,
                   sleep: Callable[[float], Any] = time.sleep) -> HealthCheck:
    """The health check of one node: kumo_infra.smoke's checks for it (SMTP, bootstrap result,
    outbound port 25 verdict), then liveness, retried until the same deadline."""
    if run_smoke is None:
        from .smoke import run_smoke

    def check(node: dict, api: "NodeApi", seconds: float) -> Health:
        deadline = clock() + seconds
        report = run_smoke(deployment, [node], console=console, deadline_s=seconds)
        if not report.ok:
            return Health(False, "; ".join(c.line() for c in report.failures))
        while True:
            ok, said = live(api, max(1.0, min(HTTP_TIMEOUT_S, deadline - clock())))
            if ok or clock() >= deadline:
                return Health(ok, said if ok else f"liveness: {said}")
            sleep(max(0.0, min(LIVENESS_POLL_S, deadline - clock())))

    return check


# -- the roll --------------------------------------------------------------------------------------

@dataclass
class _Roll:
    stack: "StackConfig"
    pulumi_stack: "auto.Stack"
    order: list[str]  # every node of the stack, in order
    chosen: list[str]
    urns: dict[str, str]
    nodes: dict[str, dict]  # the nodes output, by name
    apis: dict[str, "NodeApi"]
    drain: Callable[..., "DrainResult"]
    node_apis: Callable[["Deployment", Mapping[str, Any]], list["NodeApi"]]
    health: HealthCheck
    drain_suspension: Callable[["NodeApi"], Optional[dict]]
    say: Callable[[str], Any]
    drain_s: float
    health_s: float
    rolled: list[str] = field(default_factory=list)
    current: str = ""  # the node being rolled
    step: str = CHECK  # where it is
    sleep: Callable[[float], Any] = time.sleep
    clock: Callable[[], float] = time.monotonic
    replaced_at: dict[str, float] = field(default_factory=dict)  # clock() when each rolled node was healthy

    def read(self, outputs: Mapping[str, Any]) -> None:
        self.nodes = node_outputs(outputs, self.stack)
        self.apis = {api.name: api for api in self.node_apis(self.stack.deployment, outputs)}

    def drained(self, node: str) -> Optional[dict]:
        """The drain suspension ``node`` holds (out of service: it refuses mail), None when it serves."""
        from .drain import DrainError

        try:
            return self.drain_suspension(self.apis[node])
        except DrainError as exc:
            raise RollStopped(self.stopped(self.current, self.step, f"cannot tell whether {node} is drained: {exc}")
                              ) from None

    def one(self, node: str) -> None:
        from .drain import reopen_hint

        self.current, self.step = node, CHECK
        others = [n for n in self.order if n != node]
        for other in others:
            seen = self.health(self.nodes[other], self.apis[other], min(PRECHECK_S, self.health_s))
            if not seen.ok:
                raise RollStopped(self.stopped(node, CHECK, f"{other} is not healthy: {seen.detail}"))
            held = self.drained(other)
            if held is not None:
                raise RollStopped(self.stopped(node, CHECK, (
                    f"{other} is drained: it holds the drain suspension {held.get('id')} "
                    f"({shown(held.get('duration'), 40)} left) and refuses new mail, so it is out of service and "
                    f"takes no node's queues. Reopen it ({reopen_hint(other, held)}) or finish its replace "
                    f"(kumo-infra roll --stack {self.stack.stack} --nodes {other}), then roll again")))
        self.step = DRAIN
        # Every other node was just seen serving and undrained: the peer is one of them.
        peer = next_peer(node, self.order)
        if peer in self.replaced_at:
            # The peer has a new private address, which this node learns only from its peer-list
            # refresh: a transfer to an address it does not know yet stays queued on it.
            wait = self.replaced_at[peer] + fleet.PEER_REFRESH_MAX_S - self.clock()
            if wait > 0:
                self.say(f"kumo-infra: {node}: waiting {wait:.0f}s for it to learn {peer}'s new address "
                         "(the fleet's peer-list refresh)")
                self.sleep(wait)
        self.say(f"kumo-infra: {node}: draining" + (f" into {peer} ({self.apis[peer].private_ip})" if peer else
                                                     " until its queue is empty (no other node to take it)"))
        from .drain import DrainError

        try:
            result = self.drain(self.apis[node], to=self.apis[peer] if peer else None, timeout_s=self.drain_s,
                                progress=lambda left, most, tsa=0: self.say(
                                    f"kumo-infra: {node}: {left} message(s) left (of {most} seen), {tsa} TSA log "
                                    "record(s) not counted"))
        except DrainError as exc:
            raise RollStopped(self.stopped(node, DRAIN, str(exc))) from None
        if not result.drained:
            raise RollStopped(self.stopped(node, DRAIN, f"{result.message} ({result.remaining} message(s) still on "
                                                        "it)"))
        self.step = REPLACE
        urn = self.urns[node]
        self.say(f"kumo-infra: {node}: pulumi up replacing {urn}")
        from pulumi import automation as auto

        try:
            up = self.pulumi_stack.up(replace=[urn], target=[urn], target_dependents=True,
                                      on_output=self.say, on_error=self.say)
        except auto.CommandError as exc:
            from .ephemeral import tail

            raise RollStopped(self.stopped(node, REPLACE, f"pulumi up failed:\n{tail(exc)}")) from None
        self.step = HEALTH
        self.read({k: v.value for k, v in up.outputs.items() if not v.secret})
        self.say(f"kumo-infra: {node}: waiting up to {self.health_s:g}s for the new machine to be healthy")
        seen = self.health(self.nodes[node], self.apis[node], self.health_s)
        if not seen.ok:
            raise RollStopped(self.stopped(node, HEALTH, seen.detail))
        if self.drained(node) is not None:
            raise RollStopped(self.stopped(node, HEALTH, f"{node} still holds the drain suspension: its machine was "
                                                         "not replaced (a new kumod holds none)"))
        self.rolled.append(node)
        self.replaced_at[node] = self.clock()
        self.say(f"kumo-infra: {node}: rolled ({seen.detail})")

    def where(self, node: str, step: str) -> str:
        """What became of ``node`` when the roll stopped at ``step``."""
        finish = (f"pulumi up --stack {self.stack.stack} --target '{self.urns[node]}' --target-dependents")
        return {
            CHECK: f"{node} was not touched",
            DRAIN: f"{node} was not replaced (a drain that does not finish lets the node accept mail again)",
            REPLACE: f"{node} is drained and out of service, its machine possibly half replaced: finish that with "
                     f"{finish}, then roll it again",
            HEALTH: f"{node}'s new machine is out of service until it is healthy",
        }[step]

    def serving(self, node: str, step: str) -> str:
        others = [n for n in self.order if n != node]
        if not others:
            return "the stack has no other node: it serves no mail until this one is healthy" if step != CHECK else ""
        if step == CHECK:
            return "nothing was changed"
        return f"the fleet still serves: {', '.join(others)} were healthy when {node} was drained"

    def stopped(self, node: str, step: str, detail: str) -> str:
        untouched = [n for n in self.chosen if n not in self.rolled and n != node]
        lines = [f"roll of stack {self.stack.stack} stopped at {node}, step {step}: {detail}",
                 self.where(node, step),
                 f"rolled: {', '.join(self.rolled) or 'none'}; not touched: {', '.join(untouched) or 'none'}"]
        serving = self.serving(node, step)
        return "\n".join(lines + ([serving] if serving else []))


def drain_apis(deployment: "Deployment", outputs: Mapping[str, Any],
               env: Optional[Mapping[str, str]] = None) -> list["NodeApi"]:
    """Each node's API as `kumo-infra drain` reaches it (issue 6): its ip_url and the certificate
    from the api output, the API user, the password from KUMO_API_PASSWORD (ConfigError naming
    the command that prints it when unset)."""
    from .drain import NodeApi, api_password
    from .secretspec import API_USER

    password = api_password(deployment, os.environ if env is None else env)
    api = outputs.get("api") or {}
    endpoints = api.get("endpoints") if isinstance(api.get("endpoints"), list) else []
    nodes = outputs.get("nodes") or []
    if len(endpoints) != len(nodes):
        raise ConfigError(Problem("--stack", f"the api output lists {len(endpoints)} endpoint(s) for {len(nodes)} "
                                             "node(s): bring the stack up with this stack file first (pulumi up)"))
    return [NodeApi(str(node.get("name")), str(endpoint.get("ip_url")), API_USER, password,
                    api.get("ca_certificate"), node.get("private_ip")) for node, endpoint in zip(nodes, endpoints)]


def run(args: argparse.Namespace, deps: Optional[Deps] = None) -> int:
    from pulumi import automation as auto

    from . import ephemeral as eph
    from .stackconfig import load_file, project_root, stack_path

    deps = deps or Deps()
    stack = load_file(stack_path(args.stack), stack=args.stack)  # bad input exits 2 here
    for warning in stack.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    chosen = check_request(stack, args.nodes, args.allow_downtime)
    drain = deps.drain_node
    if drain is None:
        from .drain import drain_node as drain
    health = deps.check_health or default_health(stack.deployment,
                                                 stack.deployment.target.console_reader(stack.deployment))
    command = deps.pulumi_command or eph.installed_pulumi(notice=deps.on_output)
    # The project's own program, beside the Pulumi.yaml the stack file was read from.
    ws = auto.LocalWorkspace(work_dir=str(project_root()), pulumi_command=command)
    try:
        pulumi_stack = auto.Stack.select(args.stack, ws)
        if deps.drain_suspension is None:
            from .drain import drain_suspension
        else:
            drain_suspension = deps.drain_suspension
        roll = _Roll(stack, pulumi_stack, planned_nodes(stack), chosen, {}, {}, {}, drain,
                     deps.node_apis or drain_apis, health, drain_suspension, deps.on_output,
                     args.drain_timeout.total_seconds(), args.health_timeout.total_seconds())
        roll.sleep, roll.clock = deps.sleep, deps.clock
        roll.read(eph.plain_outputs(pulumi_stack))  # no secret output decrypted
        roll.urns = machine_urns(json.loads(eph.run_plain(pulumi_stack, ["stack", "export"]).stdout), stack, chosen)
    except auto.StackNotFoundError:
        raise ConfigError(Problem("--stack", f"no stack {args.stack} in this backend: bring it up first "
                                             f"(pulumi up --stack {args.stack})")) from None
    except auto.CommandError as exc:
        print(f"error: pulumi failed before anything was touched:\n{eph.tail(exc)}", file=sys.stderr)
        return 1
    node = chosen[0]
    with eph.Interrupts(args.stack, deps.on_output) as interrupts:
        interrupts.live()  # SIGTERM as Ctrl-C: pulumi finishes what it has in flight
        try:
            for node in chosen:
                roll.one(node)
        except RollStopped as stop:
            print(f"error: {stop}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print(f"error: {roll.stopped(node, roll.step, 'interrupted')}", file=sys.stderr)
            return 1
    print(f"stack {args.stack}: rolled {', '.join(roll.rolled)}: each drained, its machine replaced, healthy again")
    return 0

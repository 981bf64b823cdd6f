"""``kumo-infra ci``: ephemeral stacks in a CI pipeline (up, smoke, destroy, sweep).

The stack's life is kumo_infra.ephemeral's; this module is its command line. Nothing heavy is
imported until a ci command runs (``kumo-infra validate`` never loads the Automation API).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional

from .errors import ConfigError, Problem, shown

if TYPE_CHECKING:
    from pulumi import automation as auto

DESCRIPTION = """Ephemeral test stacks in CI: bring a real deployment up from a base stack file, check that it
accepts mail, and always tear it down. The flow of a pipeline:

  1. kumo-infra ci up --stack aws-dev        creates the stack <prefix>-<run id> (marked ephemeral, with a
                                             TTL) and runs pulumi up; prints its name as the first and the
                                             last line of stdout (and stack=NAME into $GITHUB_OUTPUT),
                                             the engine's output on stderr, then a summary
  2. kumo-infra ci smoke --stack-name NAME   every node answers 220 with its hostname on port 25 and offers
                                             STARTTLS; its bootstrap result read from the cloud's console
  3. kumo-infra ci destroy --stack-name NAME in a step that ALWAYS runs (after a failure or a cancel):
                                             destroy with retries, remove the stack, purge what the cloud
                                             keeps after a delete
  4. kumo-infra ci sweep --older-than 6h     on a schedule: destroys the stacks marked ephemeral whose TTL
                                             has passed (--dry-run lists them); never an unmarked stack"""

EPILOG = """Secrets of the ephemeral stack come from KUMO_SECRET_<KEY> variables (kumo:relayPassword:
KUMO_SECRET_RELAY_PASSWORD; kumo:sshPrivateKey: KUMO_SECRET_SSH_PRIVATE_KEY). The Pulumi backend and
its credentials as for pulumi itself: PULUMI_BACKEND_URL, PULUMI_ACCESS_TOKEN, PULUMI_CONFIG_PASSPHRASE
(give CI a backend of its own; its stacks are in the project kumo-infra-ci). An interrupt (Ctrl-C,
SIGTERM) lets pulumi finish the operations in flight before the command stops. Durations: 90m, 3h, 2d
(a TTL of at most 7d). Exit codes: 0 ok, 1 a failed check or operation, 2 bad input (nothing created)."""

_STACK_REF_RE = re.compile(r"(?:[A-Za-z0-9_.-]{1,100}/){0,2}[A-Za-z0-9_.-]{1,100}", re.ASCII)


@dataclass(frozen=True)
class Deps:
    """What a ci command reaches outside this process; tests replace them."""

    pulumi_command: Optional["auto.PulumiCommand"] = None  # None: the pulumi on PATH
    runner: Optional[Callable[[Any], int]] = None  # after-destroy commands; None: ephemeral.run_command
    sleep: Callable[[float], Any] = time.sleep
    run_smoke: Optional[Callable[..., Any]] = None  # None: kumo_infra.smoke.run_smoke
    now: Callable[[], datetime] = lambda: datetime.now(timezone.utc)
    env: Optional[Mapping[str, str]] = None  # None: os.environ


def duration(text: str) -> timedelta:
    from .ephemeral import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def stack_name(text: str) -> str:
    from .ephemeral import PROJECT

    if not _STACK_REF_RE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{shown(text)} is not a stack name (letters, digits, '-', '_' and '.'; "
                                         "as ci up printed it)")
    parts = text.split("/")
    if len(parts) == 3 and parts[1] != PROJECT:
        raise argparse.ArgumentTypeError(f"{shown(text)} names a stack of project {shown(parts[1])}: ci commands "
                                         f"work on the stacks of project {PROJECT} alone")
    return text


def retries(text: str) -> int:
    from .ephemeral import MAX_RETRIES

    if not re.fullmatch(r"[0-9]{1,2}", text) or not 1 <= int(text) <= MAX_RETRIES:
        raise argparse.ArgumentTypeError(f"{shown(text)} is not a number of attempts from 1 to {MAX_RETRIES}")
    return int(text)


def register(sub: Any) -> None:
    """The ``ci`` command group under kumo-infra's subcommands."""
    from .cli import _add_stack_source

    ci = sub.add_parser("ci", help="ephemeral stacks in CI: up, smoke, destroy (always), sweep (on a schedule)",
                        description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    steps = ci.add_subparsers(dest="ci_command", required=True, metavar="{up,smoke,destroy,sweep}")

    p = steps.add_parser("up", help="create an ephemeral stack from a base stack and bring it up")
    _add_stack_source(p)
    p.add_argument("--prefix", help="stack name prefix (default ci-<base stack name>)")
    p.add_argument("--run-id", help="the run's id in the stack name (default: from the CI environment, or random)")
    p.add_argument("--ttl", type=duration, default=timedelta(hours=3),
                   help="how long the stack may live before sweep destroys it (default 3h, at most 7d)")

    p = steps.add_parser("smoke", help="check every node of a stack: SMTP, STARTTLS, the bootstrap's result")
    p.add_argument("--stack-name", type=stack_name, required=True)
    p.add_argument("--deadline", type=duration, default=timedelta(minutes=15),
                   help="how long to wait for the nodes' bootstrap (default 15m)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")

    p = steps.add_parser("destroy", help="destroy and remove an ephemeral stack (retried); run it always")
    p.add_argument("--stack-name", type=stack_name, required=True)
    p.add_argument("--retries", type=retries, default=3, help="destroy attempts (default 3)")

    p = steps.add_parser("sweep", help="destroy the ephemeral stacks whose TTL has passed")
    p.add_argument("--older-than", type=duration, required=True, metavar="DURATION",
                   help="only stacks created at least this long ago")
    p.add_argument("--dry-run", action="store_true", help="list what would be destroyed; touch nothing")
    p.add_argument("--retries", type=retries, default=3, help="destroy attempts per stack (default 3)")


# What the CLI says when the environment lacks what backend_problems could not foresee.
CLI_INPUT_ERRORS = {
    "PULUMI_CONFIG_PASSPHRASE": "the stack's secrets are encrypted with a passphrase: set it (or "
                                "PULUMI_CONFIG_PASSPHRASE_FILE) from your CI's secret store",
    "PULUMI_ACCESS_TOKEN": "set it from your CI's secret store, or PULUMI_BACKEND_URL to a backend of your own",
}


def run(args: argparse.Namespace, deps: Optional[Deps] = None) -> int:
    from pulumi import automation as auto

    from .ephemeral import EphemeralError, tail

    deps = deps or Deps()
    command = {"up": cmd_up, "smoke": cmd_smoke, "destroy": cmd_destroy, "sweep": cmd_sweep}[args.ci_command]
    try:
        return command(args, deps)
    except EphemeralError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except auto.CommandError as exc:
        for variable, fix in CLI_INPUT_ERRORS.items():
            if variable in str(exc):
                said = tail(exc, 1).strip().removeprefix("stderr:").strip()  # str(CommandResult)'s last line
                raise ConfigError(Problem(variable, f"pulumi refused: {said}; {fix}")) from None
        print(f"error: pulumi failed:\n{tail(exc)}", file=sys.stderr)
        return 1


def _select(ws: "auto.LocalWorkspace", name: str) -> "auto.Stack":
    from pulumi import automation as auto

    try:
        return auto.Stack.select(name, ws)
    except auto.StackNotFoundError:
        raise ConfigError(Problem("--stack-name", f"no stack {name} in this backend (PULUMI_BACKEND_URL, or "
                                                  "Pulumi Cloud when unset)")) from None


def cmd_up(args: argparse.Namespace, deps: Deps) -> int:
    from pulumi import automation as auto

    from . import ephemeral as eph
    from .cli import load_stack

    env = os.environ if deps.env is None else deps.env
    spec = eph.prepare(load_stack(args), prefix=args.prefix, run_id=args.run_id, ttl=args.ttl, env=env,
                       now=deps.now())
    for warning in spec.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    started = time.monotonic()
    with eph.workspace(deps.pulumi_command) as ws, eph.Interrupts(spec.stack_name) as interrupts:
        interrupts.defer()  # until the name is out: the destroy step needs it
        stack = eph.create(spec, ws)
        print(spec.stack_name, flush=True)
        _github_output(env, spec.stack_name)
        try:
            interrupts.live()  # SIGTERM (a cancelled job) as Ctrl-C: pulumi finishes what is in flight
            eph.configure(stack, spec, eph.to_stderr)
            result = eph.up(stack, spec, eph.to_stderr)
        except (eph.EphemeralError, auto.CommandError, KeyboardInterrupt) as exc:
            print(f"error: {str(exc) or 'interrupted'}\nthe stack is left for the step that always runs: "
                  f"{eph.finish_command(spec.stack_name)}", file=sys.stderr)
            print(spec.stack_name)
            return 1
    print("\n".join(up_summary(spec.stack_name, result, time.monotonic() - started)))
    print(spec.stack_name)
    return 0


def _github_output(env: Mapping[str, str], name: str) -> None:
    """stack=NAME for the later steps of a GitHub Actions job, once the stack exists."""
    path = env.get("GITHUB_OUTPUT")
    if not path:
        return
    try:
        with open(path, "a", encoding="utf-8") as out:
            out.write(f"stack={name}\n")
    except OSError as exc:
        print(f"warning: cannot write stack={name} to $GITHUB_OUTPUT ({exc}): pass the name to the later steps "
              "yourself", file=sys.stderr)


def up_summary(name: str, result: "auto.UpResult", seconds: float) -> list[str]:
    """What came up: resource operations, duration, each node's address (non-secret outputs only)."""
    changes = result.summary.resource_changes or {}
    done = ", ".join(f"{op} {count}" for op, count in sorted(changes.items()) if count) or "no changes"
    minutes, secs = divmod(int(seconds), 60)
    lines = [f"stack {name} is up in {minutes}m{secs:02d}s: {done}"]
    nodes = result.outputs.get("nodes")
    if nodes is not None and not nodes.secret:
        for node in nodes.value or []:
            lines.append(f"  {node.get('name', '?')}  {node.get('hostname', '?')}  {node.get('public_ip', '?')}")
    ips = result.outputs.get("public_ips")
    if ips is not None and not ips.secret:
        lines.append(f"public IPs: {', '.join(map(str, ips.value or [])) or 'none'}")
    return lines


def cmd_smoke(args: argparse.Namespace, deps: Deps) -> int:
    from . import ephemeral as eph

    run_smoke = deps.run_smoke
    if run_smoke is None:
        from .smoke import run_smoke
    with eph.workspace(deps.pulumi_command) as ws:
        stack = _select(ws, args.stack_name)
        nodes = eph.plain_outputs(stack).get("nodes")  # no secret output decrypted
        deployment = eph.last_deployment(stack)
    if not nodes or not isinstance(nodes, list):
        raise eph.EphemeralError(f"stack {args.stack_name} has no nodes output: did ci up finish?")
    if deployment is None:
        raise eph.EphemeralError(f"stack {args.stack_name}'s history holds no kumo:deployment: was it made by "
                                 "kumo-infra ci up?")
    report = run_smoke(deployment, list(nodes), console=deployment.target.console_reader(deployment),
                       deadline_s=args.deadline.total_seconds())
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.format())
    return 0 if report.ok else 1


def cmd_destroy(args: argparse.Namespace, deps: Deps) -> int:
    from pulumi import automation as auto

    from . import ephemeral as eph

    env = os.environ if deps.env is None else deps.env
    with eph.workspace(deps.pulumi_command) as ws:
        try:
            stack = auto.Stack.select(args.stack_name, ws)
        except auto.StackNotFoundError:
            # The step runs always: after an up that never created the stack, or a second time.
            print(f"no stack {args.stack_name}: nothing to destroy")
            return 0
        marks = eph.read_marks(stack)
        if marks.get(eph.MARK) != "true":
            if eph.is_blank(stack):
                # ci up stopped between `stack init` and the mark: nothing to destroy, nothing lost.
                # (`stack rm` without --force refuses a stack with resources anyway.)
                ws.remove_stack(args.stack_name)
                print(f"stack {args.stack_name} had no mark, no update and no resources: removed")
                return 0
            raise ConfigError(Problem("--stack-name", f"stack {args.stack_name} carries no {eph.MARK}=true mark and "
                                                      "has a history or resources: ci destroy removes only stacks "
                                                      "ci up made (use pulumi destroy for others)"))
        eph.destroy(stack, eph.last_deployment(stack), retries=args.retries, sleep=deps.sleep,
                    runner=deps.runner or eph.run_command, own_run=_own_run(marks, env))
    print(f"stack {args.stack_name} destroyed and removed")
    return 0


def _own_run(marks: Mapping[str, str], env: Mapping[str, str]) -> bool:
    """Whether the stack's ci-run mark is this job's run: then a lock on it can only be left by
    this job's own interrupted update, and `pulumi cancel` is safe. Outside CI: never."""
    from . import ephemeral as eph

    found = eph.run_id_from_env(env)
    return found is not None and marks.get(eph.CI_RUN) == eph.ci_run_from_env(env, found[0])


def cmd_sweep(args: argparse.Namespace, deps: Deps) -> int:
    """Each stack on its own: whatever one stack does (unreadable marks, a lock, a failing
    destroy, a backend error) is reported and the sweep goes on; exit 1 at the end if any failed."""
    from pulumi import automation as auto

    from . import ephemeral as eph

    now = deps.now()
    failed: list[str] = []
    locked: list[str] = []
    with eph.workspace(deps.pulumi_command) as ws:
        for summary in ws.list_stacks():
            name = summary.name
            try:
                print(_sweep_one(ws, name, args, deps, now))
            except eph.LockedError as exc:
                locked.append(name)
                print(f"error: {exc}", file=sys.stderr)
            except eph.EphemeralError as exc:
                failed.append(name)
                print(f"error: {exc}", file=sys.stderr)
            except (auto.CommandError, OSError, ValueError, OverflowError) as exc:
                failed.append(name)
                print(f"error: sweep of stack {name} failed:\n{eph.tail(exc)}", file=sys.stderr)
    if locked:
        print(f"locked (an update running, or a lock a killed job left): {', '.join(locked)}")
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed or locked else 0


def _sweep_one(ws: "auto.LocalWorkspace", name: str, args: argparse.Namespace, deps: Deps, now: datetime) -> str:
    from pulumi import automation as auto

    from . import ephemeral as eph

    try:
        stack = auto.Stack.select(name, ws)
    except auto.StackNotFoundError:
        return f"gone {name}: removed since the listing"
    destroy, why = eph.sweep_decision(eph.read_marks(stack), now, args.older_than)
    if not destroy:
        return f"keep {name}: {why}"
    if args.dry_run:
        return f"would destroy {name}: {why}"
    eph.destroy(stack, eph.last_deployment(stack), retries=args.retries, sleep=deps.sleep,
                runner=deps.runner or eph.run_command)
    return f"destroyed {name}: {why}"

"""``kumo-infra``: validate stacks, size workloads, and show what a stack would do.

Exit codes: 0 success, 2 bad input (message on stderr, no traceback, nothing
created), 1 a failed check or operation (``plan --policy`` with a mandatory violation,
``ci smoke`` with a failed check, ``ci up``/``destroy`` failing) or an unexpected failure.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Any, Callable, Optional, Sequence

from pydantic import BaseModel, ValidationError

from . import catalog, ci, config, drain, roll, sizing, targets
from .errors import ConfigError, Problem
from .stackconfig import StackConfig, load_file, stack_path

EXIT_BAD_INPUT = 2


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on bad arguments already; keep its message and usage short."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # No abbreviated flags: "ci destroy --stack X" must not pass for --stack-name X.
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(EXIT_BAD_INPUT)


def _add_stack_source(p: argparse.ArgumentParser, required: bool = True) -> None:
    src = p.add_mutually_exclusive_group(required=required)
    src.add_argument("--stack", help="stack name: reads stacks/Pulumi.NAME.yaml")
    src.add_argument("--config", metavar="FILE", help="any file in the Pulumi stack file format")


def load_stack(args: argparse.Namespace) -> StackConfig:
    return load_file(stack_path(args.stack) if args.stack is not None else args.config, stack=args.stack)


def _warn(stack: StackConfig) -> None:
    for w in stack.warnings:
        print(f"warning: {w}", file=sys.stderr)


# -- commands ---------------------------------------------------------------

def cmd_validate(args: argparse.Namespace) -> int:
    stack = load_stack(args)
    _warn(stack)
    d, p = stack.deployment, stack.plan
    where = " ".join(part for part in (d.cloud, d.region) if part)
    print(f"stack {stack.stack}: valid ({where}, {p.nodes} x {p.instance_type}, os {d.os}, "
          f"spool on {p.spool_storage}, outbound port 25: {d.outbound_mode})")
    return 0


def cmd_size(args: argparse.Namespace) -> int:
    if args.list:
        if not args.cloud:
            raise ConfigError(Problem("--cloud", f"--list needs --cloud {'|'.join(catalog.CLOUDS)}"))
        return _list_catalog(args.cloud, args.json)
    if args.stack or args.config:
        stack = load_stack(args)
        _warn(stack)
        plan = stack.plan
    else:
        missing = [flag for flag, v in (("--cloud", args.cloud), ("--messages-per-hour", args.messages_per_hour),
                                        ("--avg-message-kb", args.avg_message_kb)) if v is None]
        if missing:
            raise ConfigError(Problem(missing[0], f"required without --stack/--config: {', '.join(missing)}"))
        # The flags go through the same models, and so the same limits, as a stack file's keys.
        workload = _from_flags(config.Sizing, profile=args.profile, messages_per_hour=args.messages_per_hour,
                               avg_message_kb=args.avg_message_kb, instance_type=args.instance_type,
                               headroom=args.headroom)
        spool = _from_flags(config.Spool, storage=args.storage)
        nodes = _from_flags(_NodesFlag, nodes=args.nodes).nodes
        if config.storage_conflict(workload, spool):
            raise ConfigError(Problem("--storage", config.PERFORMANCE_NEEDS_NVME))
        flags = sizing.Workload(
            cloud=args.cloud, messages_per_hour=workload.messages_per_hour, avg_message_kb=workload.avg_message_kb,
            profile=workload.profile, storage=config.spool_storage_for(workload, spool),
            instance_type=workload.instance_type, nodes=nodes, headroom=workload.headroom,
        )
        target = targets.get(args.cloud)
        if target.catalog is None:
            if args.instance_type:
                raise ConfigError(Problem("--instance-type", f"{target.title} has no instance catalog: the "
                                                             "machines exist already"))
            if nodes is None:
                raise ConfigError(Problem("--nodes", f"{target.title} takes machines that exist already: give "
                                                     "their number with --nodes"))
            plan = sizing.plan_without_catalog(flags)
        else:
            plan = sizing.plan(flags, catalog.load(args.cloud))
        for w in plan.warnings:
            print(f"warning: {w}", file=sys.stderr)
    if args.json:
        print(json.dumps(plan.to_dict(), indent=2))
    else:
        print(format_plan(plan))
    return 0


class _NodesFlag(BaseModel):
    nodes: Optional[int] = config.Deployment.model_fields["nodes"]


def _from_flags(model: type[BaseModel], **flags: Any) -> Any:
    """``model`` built from command-line flags; a refused value names its flag."""
    try:
        return model(**{k: v for k, v in flags.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        flag = f"--{str(first['loc'][0]).replace('_', '-')}"
        raise ConfigError(Problem(flag, first["msg"].removeprefix("Value error, "))) from None


def format_plan(plan: sizing.Plan) -> str:
    if plan.instance_type == sizing.EXISTING:
        return _format_minimum(plan)
    rows = [
        ("cloud", plan.cloud),
        ("instance type", plan.instance_type),
        ("nodes", str(plan.nodes)),
        ("per node", f"{plan.vcpu} vCPU, {plan.memory_gib:g} GiB, {plan.arch}"),
        ("network", f"{plan.sustained_gbps:g} Gbps sustained (burst {plan.burst_gbps:g})"),
        ("required", f"{plan.required_mbps:,.1f} Mbps with headroom ({plan.required_mbps_per_node:,.1f} per node)"),
        ("capacity", f"{plan.capacity_per_node_per_hour:,} messages/h per node"),
        ("spool", f"{plan.spool_storage.replace('_', ' ')}, {plan.spool_gb_per_node:,} GB per node"
                  + (f" ({plan.nvme_count} NVMe device(s))" if plan.nvme_count else "")),
        ("OS disk", f"{plan.os_disk_gb} GB"),
        ("price", f"${plan.price_usd_hour:.4f}/h per node, ${plan.total_price_usd_hour:.4f}/h in all "
                  f"({plan.price_region}, prices of {plan.price_taken})"),
        ("decided by", plan.decided_by),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"{k.ljust(width)}  {v}" for k, v in rows]
    lines += ["", "why:"] + [f"  - {r}" for r in plan.reasons]
    return "\n".join(lines)


def _format_minimum(plan: sizing.Plan) -> str:
    """A plan for machines that exist already: what each must at least have (nothing to buy)."""
    rows = [
        ("cloud", plan.cloud),
        ("machines", f"{plan.nodes} existing (no catalog: the minimum each must have)"),
        ("per node", f"at least {plan.vcpu} vCPU, {plan.memory_gib:g} GiB, {plan.arch}"),
        ("network", f"at least {plan.sustained_gbps:g} Gbps sustained"),
        ("required", f"{plan.required_mbps:,.1f} Mbps with headroom ({plan.required_mbps_per_node:,.1f} per node)"),
        ("capacity", f"{plan.capacity_per_node_per_hour:,} messages/h per node at that size"),
        ("spool", f"{plan.spool_storage.replace('_', ' ')}, {plan.spool_gb_per_node:,} GB per node"),
        ("OS disk", f"{plan.os_disk_gb} GB"),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"{k.ljust(width)}  {v}" for k, v in rows]
    lines += ["", "why:"] + [f"  - {r}" for r in plan.reasons]
    return "\n".join(lines)


def _list_catalog(cloud: str, as_json: bool) -> int:
    target = targets.get(cloud)
    if target.catalog is None:
        raise ConfigError(Problem("--cloud", f"{target.title} has no instance catalog to list: kumo-infra installs "
                                             "on machines that exist already; size a workload for them with "
                                             f"--cloud {cloud} --nodes N --messages-per-hour ... --avg-message-kb ..."))
    cat = catalog.load(cloud)
    if as_json:
        print(json.dumps([t.__dict__ for t in cat.types], indent=2))
        return 0
    print(f"{'type':<24} {'vCPU':>4} {'GiB':>6} {'arch':<7} {'Gbps':>7} {'burst':>6} {'NVMe GB':>8} {'$/h':>8}")
    for t in sorted(cat.types, key=lambda t: (t.price_usd_hour, t.name)):
        print(f"{t.name:<24} {t.vcpu:>4} {t.memory_gib:>6g} {t.arch:<7} {t.baseline_gbps:>7g} {t.burst_gbps:>6g} "
              f"{t.nvme_gb:>8} {t.price_usd_hour:>8.4f}")
    print(f"\nprices: {cat.price_basis}, {cat.price_region}, taken {cat.price_taken}")
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    from .bootstrap import render_user_data

    stack = load_stack(args)
    if not 0 <= args.node < stack.plan.nodes:
        raise ConfigError(Problem("--node", f"node {args.node} does not exist: stack {stack.stack} has "
                                            f"{stack.plan.nodes} node(s), numbered from 0"))
    _warn(stack)
    render = stack.deployment.target.render or render_user_data  # the ssh target's installer script
    sys.stdout.write(render(stack.deployment, stack.plan, args.node))
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from . import planview

    stack = load_stack(args)  # bad input exits 2 here, before any resource is registered
    _warn(stack)
    offline_run = planview.run_offline(stack)
    doc = planview.plan_document(stack, offline_run[0])
    if not args.policy:
        print(json.dumps(doc, indent=2, sort_keys=True) if args.json else planview.format_plan(doc))
        return 0
    from . import guardrails

    violations = guardrails.check_stack(stack, offline_run)  # the same run: the program runs once
    if args.json:
        doc["policy"] = [dataclasses.asdict(v) for v in violations]
        print(json.dumps(doc, indent=2, sort_keys=True))
    else:
        print(planview.format_plan(doc))
        print()
        print(guardrails.format_violations(violations))
    # Advisories are printed for the operator to weigh; only a mandatory rule fails the plan.
    return 1 if guardrails.has_mandatory(violations) else 0


def cmd_port25(args: argparse.Namespace) -> int:
    from .port25 import format_report, report

    stack = load_stack(args)
    _warn(stack)
    rep = report(stack.deployment, stack.plan)
    print(json.dumps(rep, indent=2) if args.json else format_report(rep))
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "validate": cmd_validate,
    "plan": cmd_plan,
    "port25": cmd_port25,
    "size": cmd_size,
    "render": cmd_render,
    "ci": ci.run,
    "drain": drain.run,
    "roll": roll.run,
}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="kumo-infra", description="Run KumoMTA with Pulumi on: " + ", ".join(
        target.title for target in targets.registry().values()) + ".")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("validate", help="validate a stack configuration")
    _add_stack_source(p)

    p = sub.add_parser("plan", help="show what pulumi up would create, offline (no cloud account, no Pulumi CLI)")
    _add_stack_source(p)
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument("--policy", action="store_true",
                   help="also check the plan against kumo-infra's guardrails (the rules of the policy pack in "
                        "policy/): exit 1 on a mandatory violation, advisories printed")

    p = sub.add_parser("port25", help="outbound port 25 on this cloud: the mode, and what to request or configure")
    _add_stack_source(p)
    p.add_argument("--json", action="store_true", help="print the report as JSON")

    p = sub.add_parser("render", help="print what a node receives (the cloud-init user-data; on existing machines, "
                                      "the installer)")
    _add_stack_source(p)
    p.add_argument("--node", type=int, default=0, help="node number, from 0 (default 0)")

    p = sub.add_parser("size", help="size machines for a workload")
    _add_stack_source(p, required=False)  # or the workload as flags
    p.add_argument("--cloud", choices=targets.names(), help="the target (kumo:deployment.cloud)")
    p.add_argument("--messages-per-hour", type=int, metavar="N")
    p.add_argument("--avg-message-kb", type=float, metavar="K")
    p.add_argument("--profile", choices=("minimal", "performance"), default="minimal")
    p.add_argument("--storage", choices=("local_nvme", "block"))
    p.add_argument("--instance-type")
    p.add_argument("--nodes", type=int)
    p.add_argument("--headroom", type=float, default=1.5)
    p.add_argument("--list", action="store_true", help="list the target's instance catalog")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")

    ci.register(sub)
    drain.register(sub)
    roll.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


def run() -> None:
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (kumo-infra render ... | head): stop quietly, like any Unix filter.
        # stdout goes to /dev/null so the interpreter's own flush at exit cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 1
    sys.exit(code)


if __name__ == "__main__":
    run()

"""kumo-infra's CrossGuard policy pack: kumo_infra.guardrails.RULES as Pulumi policies.

    pulumi preview --policy-pack <kumo-infra checkout>/policy    # or pulumi up

Pulumi runs this file as ``python <this directory>`` in the pack's own virtual environment
(policy/venv, from requirements.txt). Only then is the pack built (constructing ``PolicyPack``
starts the analyzer's gRPC server and never returns); imported under another name, as the tests
do, this module only defines the adapters.

Each rule's check of one resource becomes a ``ResourceValidationPolicy`` (the engine runs it before
the resource is created or updated); a check across resources becomes a ``StackValidationPolicy``
(run over the whole stack), named ``<rule>-across-resources`` when the rule has both.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional, Union

# The pack's environment holds pulumi-policy only: kumo_infra comes from the checkout around this
# directory (sys.path[0] is this directory when Pulumi runs it), unless the environment has it installed.
sys.path.append(str(Path(__file__).resolve().parent.parent))

from pulumi_policy import (  # noqa: E402
    EnforcementLevel,
    Policy,
    PolicyPack,
    PolicyResource,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)

from kumo_infra import guardrails  # noqa: E402

PACK_NAME = "kumo-infra"
LEVELS = {guardrails.MANDATORY: EnforcementLevel.MANDATORY, guardrails.ADVISORY: EnforcementLevel.ADVISORY}


def resource_of(args: Union[ResourceValidationArgs, PolicyResource]) -> guardrails.Resource:
    """The engine's view of a resource as the rules read it. ``props`` stay pulumi_policy's proxy, so a
    value unknown at preview raises only when a rule reads it. A stack's resources carry their dependencies."""
    dependencies = getattr(args, "dependencies", None) or []
    return guardrails.Resource(args.resource_type, args.name, args.props, args.urn,
                               tuple(d.urn for d in dependencies))


def _message(message: str, rule: guardrails.Rule) -> str:
    # The engine prints the description and this message; the fix is shown here too.
    return f"{message}\nFix: {rule.remediation}"


def resource_policy(rule: guardrails.Rule) -> ResourceValidationPolicy:
    assert rule.check_resource is not None
    check = rule.check_resource

    def validate(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
        for message in check(resource_of(args), guardrails.Context()):
            report_violation(_message(message, rule), None)

    return ResourceValidationPolicy(name=rule.name, description=rule.description, validate=validate,
                                    enforcement_level=LEVELS[rule.level], remediation_steps=rule.remediation)


def stack_policy(rule: guardrails.Rule, name: Optional[str] = None) -> StackValidationPolicy:
    assert rule.check_stack is not None
    check = rule.check_stack

    def validate(args: StackValidationArgs, report_violation: ReportViolation) -> None:
        for finding in check([resource_of(r) for r in args.resources], guardrails.Context()):
            report_violation(_message(finding.message, rule), finding.resource.urn or None)

    return StackValidationPolicy(name=name or rule.name, description=rule.description, validate=validate,
                                 enforcement_level=LEVELS[rule.level], remediation_steps=rule.remediation)


def policies() -> list[Policy]:
    found: list[Policy] = []
    for rule in guardrails.RULES:
        if rule.check_resource:
            found.append(resource_policy(rule))
        if rule.check_stack:
            found.append(stack_policy(rule, f"{rule.name}-across-resources" if rule.check_resource else None))
    return found


def main() -> Any:
    return PolicyPack(name=PACK_NAME, policies=policies(), enforcement_level=EnforcementLevel.ADVISORY)


if __name__ == "__main__":
    main()

"""The Pulumi program behind ``pulumi up``: config in, components and exports out.

Kept apart from ``__main__.py`` so the offline plan and the tests run exactly
this code under Pulumi's mock engine.
"""

from __future__ import annotations

import pulumi

from .config import ROOT, parse_deployment
from .errors import ConfigError
from .stackconfig import plan_for, warnings_for


def run() -> None:
    config = pulumi.Config("kumo")
    try:
        deployment = parse_deployment(config.get_object(ROOT.split(":", 1)[1]))
        plan = plan_for(deployment)
    except ConfigError as exc:
        # RunError makes Pulumi print the message alone, without a Python traceback.
        raise pulumi.RunError(str(exc)) from None
    for warning in warnings_for(deployment) + plan.warnings:
        pulumi.log.warn(warning)
    pulumi.export("sizing", plan.to_dict())

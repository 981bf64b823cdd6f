"""The Pulumi program behind ``pulumi up``: config in, the target's component and exports out.

Kept apart from ``__main__.py`` so the offline plan and the tests run exactly
this code under Pulumi's mock engine. Only the deployment's own target's SDK is
imported (the registry names its component class; kumo_infra.targets).
"""

from __future__ import annotations

import pulumi

from . import port25
from .config import ROOT, parse_deployment
from .errors import ConfigError
from .stackconfig import CORE_SECRETS, plan_for, warnings_for


class StackConfigError(pulumi.RunError):
    """Bad input found while the program runs, before any resource: Pulumi prints a RunError's
    message alone, without a Python traceback; ``config_error`` keeps the problems (key paths) for
    callers that report them themselves (``kumo-infra plan`` exits 2 with them)."""

    def __init__(self, config_error: ConfigError) -> None:
        super().__init__(str(config_error))
        self.config_error = config_error


def run() -> None:
    config = pulumi.Config("kumo")
    try:
        raw = config.get_object(ROOT.split(":", 1)[1])
        deployment = parse_deployment(raw)
        plan = plan_for(deployment)
    except ConfigError as exc:
        raise StackConfigError(exc) from None
    for warning in warnings_for(deployment) + plan.warnings:
        pulumi.log.warn(warning)

    target = deployment.target
    component_cls = target.component_class()
    args = {"deployment": raw}
    # The secrets the component takes from the stack config, each a Pulumi secret: the relay's and the
    # fleet's own Redis's passwords, and the target's own (Target.secret_config: argument -> config key).
    for arg, key in {**CORE_SECRETS, **target.secret_config}.items():
        value = config.get_secret(key.split(":", 1)[1])
        if value is not None:
            args[arg] = value
    try:
        mta = component_cls(deployment.name, args)
    except ConfigError as exc:  # found by the component (e.g. no relay password), still before any resource
        raise StackConfigError(exc) from None

    pulumi.export("sizing", plan.to_dict())
    pulumi.export("nodes", mta.nodes)
    pulumi.export("public_ips", mta.public_ips)
    pulumi.export("dns_records", mta.dns_records)
    pulumi.export("deliverability_records", mta.deliverability_records)
    pulumi.export("secret_names", mta.secret_names)
    pulumi.export("port25", mta.public_ips.apply(lambda ips: port25.report(deployment, plan, ips)))
    # How to reach the HTTP API (URLs, user, where the password is kept), or null: loopback only.
    pulumi.export("api", mta.api)
    if mta.fleet is not None:
        # What a fleet's nodes share: the Redis's host:port (never its URL or token) and the peers.
        pulumi.export("fleet", mta.fleet)

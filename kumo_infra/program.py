"""The Pulumi program behind ``pulumi up``: config in, one cloud component and exports out.

Kept apart from ``__main__.py`` so the offline plan and the tests run exactly
this code under Pulumi's mock engine. Only the deployment's own cloud SDK is
imported.
"""

from __future__ import annotations

import importlib

import pulumi

from . import port25
from .config import RELAY_PASSWORD_KEY, ROOT, parse_deployment
from .errors import ConfigError
from .stackconfig import plan_for, warnings_for

COMPONENTS = {
    "aws": ("kumo_infra.clouds.aws", "AwsKumoMta"),
    "azure": ("kumo_infra.clouds.azure", "AzureKumoMta"),
    "gcp": ("kumo_infra.clouds.gcp", "GcpKumoMta"),
}


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

    module, cls = COMPONENTS[deployment.cloud]
    component_cls = getattr(importlib.import_module(module), cls)
    args = {"deployment": raw}
    relay_password = config.get_secret(RELAY_PASSWORD_KEY.split(":", 1)[1])
    if relay_password is not None:
        args["relay_password"] = relay_password
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

"""kumo-infra as a Pulumi component provider: every target's component, usable from any Pulumi language.

    pulumi package add <kumo-infra checkout>/provider        # or <git URL>.git/provider[@<tag>]

Pulumi runs this directory as ``python <this directory> <engine address>`` in the plugin's own
virtual environment (provider/venv, made from requirements.txt: PulumiPlugin.yaml). Only then does
it serve: ``component_provider_host`` starts the provider's gRPC server and never returns. Imported
under another name, as the tests do, this module only names what it would host.

The schema every SDK is generated from is inferred from the components' typed arguments and
outputs (kumo_infra/component_args.py); provider/schema.json is its checked-in copy
(``python -m tests.update_snapshots provider-schema`` writes it, tests/test_component_package.py
compares it).
"""

from importlib import metadata

from pulumi import ComponentResource
from pulumi.provider.experimental import component_provider_host
from pulumi.provider.experimental.component import ComponentProvider

from kumo_infra import targets

# The package name: the components' type tokens are kumo:index:<Class>, and the SDKs Pulumi
# generates are named after it (@pulumi/kumo, pulumi_kumo, Pulumi.Kumo).
NAME = "kumo"


def components() -> list[type[ComponentResource]]:
    """Every registered target's component, in the registry's order: a new target is hosted by registering."""
    return [target.component_class() for target in targets.registry().values()]


def version() -> str:
    """The installed kumo-infra's version (requirements.txt installs this checkout): the SDKs carry it."""
    return metadata.version("kumo-infra")


def provider() -> ComponentProvider:
    """What ``component_provider_host`` serves, built without serving: the schema is its ``schema``."""
    return ComponentProvider(components(), NAME, version=version())


if __name__ == "__main__":
    component_provider_host(components(), NAME, version=version())

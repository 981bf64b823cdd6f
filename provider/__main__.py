"""kumo-infra as a Pulumi component provider: every target's component, usable from any Pulumi language.

    pulumi package add <kumo-infra checkout>/provider        # or <git URL>.git/provider[@<tag>]

Pulumi runs this directory as ``python <this directory> <engine address>`` in the plugin's own
virtual environment (provider/venv, made from requirements.txt: PulumiPlugin.yaml). Only then does
it serve: ``pulumi.provider.main`` starts the provider's gRPC server and never returns, as in
``component_provider_host``, whose provider this module extends. Imported under another name, as
the tests do, this module only names what it would host.

The schema every SDK is generated from is inferred from the components' typed arguments and
outputs (kumo_infra/component_args.py), then completed where pulumi 3.272's inference falls short
(:class:`KumoProvider`); provider/schema.json is its checked-in copy (``python -m
tests.update_snapshots provider-schema`` writes it, tests/test_component_package.py compares it).
"""

import inspect
import json
import sys
from importlib import metadata

from pulumi import ComponentResource
from pulumi.provider import main
from pulumi.provider.experimental.component import ComponentProvider
from pulumi.provider.experimental.util import camel_case

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


def secret_inputs() -> set[str]:
    """The component arguments that carry a secret: the relay and Redis passwords, which every target takes,
    and each target's own secret stack config (Target.secret_config: component argument -> key)."""
    return {"relay_password", "redis_password",
            *(arg for target in targets.registry().values() for arg in target.secret_config)}


class KumoProvider(ComponentProvider):
    """The SDK's component provider, serving the inferred schema completed with what pulumi 3.272's
    inference cannot express (.venv/.../pulumi/provider/experimental/):

    - an output declared on a base class (each shared output is, once, on KumoMtaComponent) gets
      the docstring under its declaration there, read as the SDK reads docstrings: the analyzer
      looks only in the source of the class it analyses (analyzer.py get_docstring, called with
      the concrete component), so it finds none for an inherited output;
    - the secret inputs are marked ``secret: true`` (schema.py Property has no such field), so an
      SDK generated from the schema makes the value a secret in the caller's program.

    Only the schema it serves differs: construct, the input mapping and the outputs are the SDK's.
    """

    def __init__(self, components: list[type[ComponentResource]], name: str, version: str) -> None:
        super().__init__(components, name, version=version)
        doc = json.loads(self.schema)
        secret = {camel_case(arg) for arg in secret_inputs()}
        for cls in components:
            resource = doc["resources"][f"{name}:index:{cls.__name__}"]
            self._describe_inherited_outputs(cls, resource["properties"])
            for key in secret & set(resource["inputProperties"]):
                resource["inputProperties"][key]["secret"] = True
        self.schema = json.dumps(doc)

    def _describe_inherited_outputs(self, cls: type[ComponentResource], outputs: dict) -> None:
        """Each output still undescribed gets the docstring of the nearest class declaring it."""
        # The classes the analyzer collects annotations from (analyzer.py analyze_type), nearest first.
        for declaring in (c for c in cls.__mro__ if issubclass(c, ComponentResource) and c is not ComponentResource):
            for attr in inspect.get_annotations(declaring):
                prop = outputs.get(camel_case(attr))
                if prop is not None and not prop.get("description"):
                    found = self.analyzer.get_docstring(declaring, attr)
                    if found:
                        prop["description"] = found


def provider() -> KumoProvider:
    """What ``__main__`` serves, built without serving: the schema is its ``schema``."""
    return KumoProvider(components(), NAME, version=version())


if __name__ == "__main__":
    # component_provider_host's own call, with this provider: pulumi/provider/experimental/host.py
    # passes its arguments after the plugin's directory (the engine address, flags) to main.
    main(provider(), sys.argv[1:])

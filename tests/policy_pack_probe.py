"""Runs in the policy pack's own environment (policy/venv), never under pytest: hands resources to the
pack's policies the ways the Pulumi engine does and prints, as JSON, what they report.

    policy/venv/bin/python tests/policy_pack_probe.py {plans|pack} < input.json

``plans``: stdin ``{"plans": {id: [{"type", "name", "urn", "props", "dependencies"}]}}``, props in the
engine's wire form (secrets and assets as signature maps, unknowns as their sentinels). For each plan,
``direct``: every policy's ``validate`` called with ``ResourceValidationArgs`` / ``StackValidationArgs``
built as pulumi_policy builds them (deserialize_properties, unknown_checking_proxy); ``served``: the
pack's analyzer servicer answering ``Analyze`` and ``AnalyzeStack`` requests whose properties are
protobuf Structs, the engine's own messages, without starting its server.

``pack``: runs policy/__main__.py as Pulumi does (``__main__``), with ``PolicyPack`` replaced by a
recorder, and prints what the pack was built with.
"""

from __future__ import annotations

import importlib.util
import json
import runpy
import sys
from pathlib import Path
from typing import Any

import pulumi_policy
from google.protobuf import json_format, struct_pb2
from pulumi.runtime.proto import analyzer_pb2
from pulumi_policy import (EnforcementLevel, PolicyCustomTimeouts, PolicyResource, PolicyResourceOptions,
                           ResourceValidationArgs, ResourceValidationPolicy, StackValidationArgs)
from pulumi_policy.deserialize import deserialize_properties
from pulumi_policy.policy import _PolicyAnalyzerServicer
from pulumi_policy.proxy import UnknownValueError, unknown_checking_proxy
from pulumi_policy.version import VERSION

PACK = Path(__file__).resolve().parent.parent / "policy" / "__main__.py"


def load_pack() -> Any:
    """policy/__main__.py imported under another name: its adapters, without building the pack."""
    spec = importlib.util.spec_from_file_location("kumo_policy_pack", PACK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def props_of(wire: dict) -> Any:
    return unknown_checking_proxy(deserialize_properties(wire))


def no_options() -> PolicyResourceOptions:
    return PolicyResourceOptions(False, [], None, [], PolicyCustomTimeouts(0, 0, 0), [], None)


def direct(pack: Any, resources: list[dict]) -> list[dict]:
    reported: list[dict] = []
    for policy in pack.policies():
        def report(message: str, urn: Any = None, *, name: str = policy.name, default: str = "") -> None:
            reported.append({"policy": name, "urn": urn or default, "message": message})

        try:
            if isinstance(policy, ResourceValidationPolicy):
                for r in resources:
                    args = ResourceValidationArgs(r["type"], props_of(r["props"]), r["urn"], r["name"], no_options(),
                                                  None)
                    policy.validate(args, lambda m, u=None, urn=r["urn"]: report(m, u, default=urn))
            else:
                by_urn = {r["urn"]: PolicyResource(r["type"], props_of(r["props"]), r["urn"], r["name"], no_options(),
                                                   None, None, [], {}) for r in resources}
                for r in resources:
                    by_urn[r["urn"]].dependencies = [by_urn[d] for d in r["dependencies"] if d in by_urn]
                policy.validate(StackValidationArgs(list(by_urn.values())), report)
        except UnknownValueError as exc:
            reported.append({"policy": policy.name, "unknown": exc.message})
    return reported


def struct(props: dict) -> struct_pb2.Struct:
    return json_format.ParseDict(props, struct_pb2.Struct())


def served(pack: Any, resources: list[dict]) -> list[dict]:
    servicer = _PolicyAnalyzerServicer(pack.PACK_NAME, "0.1.0", pack.policies(), EnforcementLevel.ADVISORY)
    diagnostics = []
    for r in resources:
        request = analyzer_pb2.AnalyzeRequest(type=r["type"], urn=r["urn"], name=r["name"],
                                              properties=struct(r["props"]))
        diagnostics += [(d, r["urn"]) for d in servicer.Analyze(request, None).diagnostics]
    stack = analyzer_pb2.AnalyzeStackRequest(resources=[
        analyzer_pb2.AnalyzerResource(type=r["type"], urn=r["urn"], name=r["name"], properties=struct(r["props"]),
                                      dependencies=r["dependencies"]) for r in resources])
    diagnostics += [(d, "") for d in servicer.AnalyzeStack(stack, None).diagnostics]
    return [{"policy": d.policyName, "urn": d.urn or urn, "message": d.message, "description": d.description,
             "level": analyzer_pb2.EnforcementLevel.Name(d.enforcementLevel).lower()} for d, urn in diagnostics]


def plans(doc: dict) -> dict:
    pack = load_pack()
    return {plan: {"direct": direct(pack, resources), "served": served(pack, resources)}
            for plan, resources in doc["plans"].items()}


def built_pack() -> dict:
    """What policy/__main__.py builds when Pulumi runs it: PolicyPack's arguments, recorded."""
    built: dict = {}

    class Recorder:
        def __init__(self, name: str, policies: list, enforcement_level: Any = None, **rest: Any) -> None:
            built.update(name=name, enforcement_level=enforcement_level.value, rest=sorted(rest), policies=[
                {"name": p.name, "kind": type(p).__name__, "level": p.enforcement_level.value,
                 "description": p.description, "remediation": p.remediation_steps} for p in policies])

    pulumi_policy.PolicyPack = Recorder
    runpy.run_path(str(PACK.parent), run_name="__main__")
    return built


def environment() -> dict:
    found = {}
    for module in ("pydantic", "pulumi_aws", "kumo_infra.config"):
        try:
            importlib.import_module(module)
            found[module] = True
        except ImportError:
            found[module] = False
    return {"pulumi_policy": VERSION, "importable": found}


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "plans":
        answer = plans(json.load(sys.stdin))
    elif mode == "pack":
        answer = {"pack": built_pack(), "environment": environment()}
    else:
        raise SystemExit(f"unknown mode {mode!r}: plans or pack")
    json.dump(answer, sys.stdout)

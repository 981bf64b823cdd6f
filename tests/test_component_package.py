"""kumo-infra as a Pulumi component package for every language (issue 11, part 3).

- provider/: ``PulumiPlugin.yaml`` (runtime python, its own provider/venv), ``requirements.txt`` (the
  project's pins and this checkout) and ``__main__.py``, which hosts every registered target's
  component as ``component_provider_host`` does, with the SDK's ComponentProvider extended to
  complete the schema. Imported under another name it serves nothing: the tests read what it would
  host, and run it once as Pulumi runs it (``python provider <engine>``, in a child process they
  stop) to ask its gRPC server for the schema, as ``pulumi package add`` does.
- provider/schema.json: the checked-in schema, equal to the served one; written only by
  ``python -m tests.update_snapshots provider-schema``. Structurally valid: every ``$ref`` resolves,
  every required name exists, every input, output and type property is described, and the secret
  inputs are marked secret. The SDK's inference alone does neither of the last two for kumo's
  components (strict xfails in tests/test_component_schema.py): the served schema is the inferred
  one plus those descriptions and ``secret`` flags, nothing else.
- examples/yaml and examples/typescript: every property they pass and every output they read is
  checked against the schema (names, types, enum values, required inputs), their secrets come from
  secret config, and their inputs, sent as the engine sends them, build the component under the mock
  engine through the provider's own ``construct``, passing the guardrails' mandatory rules.

What only the Pulumi CLI shows: ``pulumi package add`` generating an SDK (so index.ts is not
type-checked here: @pulumi/kumo does not exist without it), ``pulumi install`` creating provider/venv,
and a real ``pulumi up`` through the provider.
"""

from __future__ import annotations

import functools
import json
import re
import runpy
import select
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import grpc
import pulumi
import pytest
import yaml
from google.protobuf import empty_pb2
from pulumi.provider.experimental.component import ComponentProvider
from pulumi.provider.experimental.util import camel_case
from pulumi.runtime.proto import provider_pb2, provider_pb2_grpc

from kumo_infra import guardrails, offline, targets
from tests import component_tables
from tests.conftest import ROOT
from tests.test_component_schema import SECRET_INPUTS, _as_engine_sends
from tests.update_snapshots import COMMAND, PROVIDER, PROVIDER_SCHEMA, SCHEMA, provider_entry, provider_schema, render

YAML_EXAMPLE = ROOT / "examples" / "yaml"
TS_EXAMPLE = ROOT / "examples" / "typescript"
REGENERATE = f"{COMMAND} {SCHEMA}"
# What an example's secret config holds while the tests build it.
EXAMPLE_SECRET = "example-relay-password"


@functools.cache
def entry():
    return provider_entry()


@functools.cache
def inferred() -> dict:
    return provider_schema()


def stored() -> dict:
    if not PROVIDER_SCHEMA.exists():
        pytest.fail(f"no {PROVIDER_SCHEMA.relative_to(ROOT)}: write it with `{REGENERATE}`, review it and commit it")
    return json.loads(PROVIDER_SCHEMA.read_text())


# -- provider/: the plugin Pulumi runs ------------------------------------------------------------------

def test_plugin_manifest_runs_python_in_its_own_directory_and_virtualenv():
    manifest = yaml.safe_load((PROVIDER / "PulumiPlugin.yaml").read_text())
    assert manifest["runtime"] == {"name": "python", "options": {"toolchain": "pip", "virtualenv": "venv"}}
    # Pulumi runs a Python plugin as `python <its directory>`: the checkout's root holds the project's program.
    assert (PROVIDER / "__main__.py").exists() and not (PROVIDER / "Pulumi.yaml").exists()
    assert "venv/" in (PROVIDER / ".gitignore").read_text().split()


def _pins(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines()
            if line.strip() and not line.lstrip().startswith(("#", "-"))]


def test_plugin_requirements_hold_the_projects_pins_and_install_this_checkout_with_every_target():
    assert _pins(PROVIDER / "requirements.txt") == _pins(ROOT / "requirements.txt")
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    installs = [line.split() for line in (PROVIDER / "requirements.txt").read_text().splitlines()
                if line.startswith("-e ")]
    # pip reads the path from its working directory, which Pulumi sets to provider/ (toolchain/pip.go).
    assert installs == [["-e", f"..[{','.join(extras)}]"]]
    assert set(extras) >= set(targets.names()), "a target's SDK extra is missing from pyproject.toml"


def test_the_provider_hosts_every_registered_target_component_under_its_schema_token():
    hosted = entry().components()
    assert hosted == [t.component_class() for t in targets.registry().values()]
    assert all(issubclass(cls, pulumi.ComponentResource) for cls in hosted)
    # construct() finds the class by the token's last segment; the class registers under its own TYPE.
    assert [cls.TYPE for cls in hosted] == [f"{entry().NAME}:index:{cls.__name__}" for cls in hosted]
    assert sorted(inferred()["resources"]) == sorted(cls.TYPE for cls in hosted)


def test_the_schema_carries_the_package_name_and_kumo_infras_version():
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert (inferred()["name"], inferred()["version"]) == ("kumo", version)


def test_importing_the_entry_point_serves_nothing_and_running_it_hosts_the_components(monkeypatch):
    calls = []
    monkeypatch.setattr("pulumi.provider.main", lambda *args, **kwargs: calls.append((args, kwargs)))
    # As the language host runs it: the plugin's directory, then the engine's address and flags.
    monkeypatch.setattr(sys, "argv", [str(PROVIDER), "127.0.0.1:1", "--logtostderr"])
    imported = provider_entry()
    assert calls == []
    runpy.run_path(str(PROVIDER), run_name="__main__")
    assert len(calls) == 1
    (served, argv), kwargs = calls[0]
    assert (argv, kwargs) == (["127.0.0.1:1", "--logtostderr"], {})
    assert isinstance(served, ComponentProvider)
    assert (served.version, json.loads(served.schema)) == (imported.version(), inferred())


def _read_port(process: subprocess.Popen, timeout: float) -> int:
    """The port the provider prints once serving (pulumi/provider/server.py main)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], 1)
        if ready:
            line = process.stdout.readline()
            if line.strip().isdigit():
                return int(line)
            if not line:
                break
        elif process.poll() is not None:
            break
    process.kill()
    pytest.fail(f"the provider printed no port: {process.stderr.read()[-3000:]}")


def test_the_provider_run_as_pulumi_runs_it_serves_the_stored_schema():
    """`python provider <engine address>`, what the Python language host runs: GetSchema and
    GetPluginInfo need no engine, so its gRPC server answers them as it answers `pulumi package add`."""
    process = subprocess.Popen([sys.executable, str(PROVIDER), "127.0.0.1:1"], cwd=PROVIDER,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        port = _read_port(process, timeout=120)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = provider_pb2_grpc.ResourceProviderStub(channel)
            served = json.loads(stub.GetSchema(provider_pb2.GetSchemaRequest(version=0), timeout=60).schema)
            info = stub.GetPluginInfo(empty_pb2.Empty(), timeout=60)
    finally:
        process.kill()
        process.wait(timeout=30)
        process.stdout.close()
        process.stderr.close()
    assert served == stored()
    assert structure_problems(served) == [] and secret_problems(served) == []
    assert info.version == stored()["version"]


# -- provider/schema.json ---------------------------------------------------------------------------

def test_schema_snapshot_is_the_served_schema():
    assert stored() == inferred(), (f"provider/schema.json differs from the schema the provider serves; if the "
                                    f"change is intended, run `{REGENERATE}` and review the diff")
    assert PROVIDER_SCHEMA.read_text() == render(inferred()), f"run `{REGENERATE}`"


def test_the_update_command_writes_the_schema_the_test_compares(monkeypatch, tmp_path):
    from tests import update_snapshots

    target = tmp_path / "schema.json"
    monkeypatch.setattr(update_snapshots, "PROVIDER_SCHEMA", target)
    assert update_snapshots.main([SCHEMA]) == 0
    assert json.loads(target.read_text()) == inferred()


def _walk(value: Any, where: str = ""):
    """Every (path, mapping) below ``value``."""
    if isinstance(value, dict):
        yield where, value
        for key, item in value.items():
            yield from _walk(item, f"{where}/{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _walk(item, f"{where}/{i}")


PRIMITIVES = {"string", "integer", "number", "boolean"}


def _property_problems(prop: dict, doc: dict, where: str) -> list[str]:
    if "$ref" in prop:
        return [] if prop["$ref"].removeprefix("#/types/") in doc.get("types", {}) else [
            f"{where}: $ref {prop['$ref']} resolves to no type"]
    kind = prop.get("type")
    if kind == "array":
        return _property_problems(prop.get("items") or {}, doc, f"{where}[]")
    if kind == "object" and "additionalProperties" in prop:
        return _property_problems(prop["additionalProperties"], doc, f"{where}.*")
    return [] if kind in PRIMITIVES else [f"{where}: no type the SDKs can generate ({kind!r})"]


def _object_problems(obj: dict, doc: dict, where: str, props: str, required: str) -> list[str]:
    problems = [p for key, prop in obj.get(props, {}).items()
                for p in _property_problems(prop, doc, f"{where}.{key}")]
    problems += [f"{where}: required {key} is no property" for key in obj.get(required, [])
                 if key not in obj.get(props, {})]
    problems += [f"{where}.{key}: no description" for key, prop in obj.get(props, {}).items()
                 if not (prop.get("description") or "").strip()]
    return problems


def structure_problems(doc: dict) -> list[str]:
    """How ``doc`` fails as a package schema: a reference to nothing, a required name that is no
    property, a property of no generable type, an enum value of another type, a missing description."""
    problems = [f"{where}: $ref {node['$ref']} is not a type of this package" for where, node in _walk(doc)
                if "$ref" in node and node["$ref"].removeprefix("#/types/") not in doc.get("types", {})]
    for token, resource in doc.get("resources", {}).items():
        if not resource.get("isComponent"):
            problems.append(f"{token}: not a component")
        if not (resource.get("description") or "").strip():
            problems.append(f"{token}: no description")
        problems += _object_problems(resource, doc, f"{token} input", "inputProperties", "requiredInputs")
        problems += _object_problems(resource, doc, f"{token} output", "properties", "required")
    for token, typ in doc.get("types", {}).items():
        if not (typ.get("description") or "").strip():
            problems.append(f"{token}: no description")
        if "enum" in typ:
            python_type = {"string": str, "integer": int}.get(typ["type"])
            problems += [f"{token}: {e['value']!r} is not {typ['type']}" for e in typ["enum"]
                         if python_type is None or type(e["value"]) is not python_type]
        else:
            problems += _object_problems(typ, doc, token, "properties", "required")
    return problems


def test_schema_is_structurally_valid_and_describes_every_input_output_and_type():
    assert structure_problems(stored()) == []


def secret_problems(doc: dict) -> list[str]:
    """Each component input that holds a secret and is not marked ``secret: true``, and each input
    marked secret that holds none (SECRET_INPUTS and every target's secret stack config argument)."""
    secrets = {camel_case(arg) for arg in set(SECRET_INPUTS).union(*(t.secret_config for t in targets.registry().values()))}
    return [f"{token} input.{key}: {'not marked secret' if key in secrets else 'marked secret, holds no secret'}"
            for token, resource in doc.get("resources", {}).items()
            for key, prop in resource.get("inputProperties", {}).items()
            if (key in secrets) != (prop.get("secret") is True)]


def test_schema_marks_exactly_the_secret_inputs_secret():
    assert secret_problems(stored()) == []
    for resource in stored()["resources"].values():
        assert {k for k, p in resource["inputProperties"].items() if p.get("secret")} == {
            camel_case(arg) for arg in SECRET_INPUTS}
        assert not [k for k, p in resource["properties"].items() if p.get("secret")]  # no output holds one


def test_the_description_and_secret_checks_fail_on_a_schema_missing_one():
    doc = json.loads(json.dumps(stored()))
    aws = doc["resources"]["kumo:index:AwsKumoMta"]
    del aws["properties"]["secretNames"]["description"]
    del aws["inputProperties"]["sshPrivateKey"]["secret"]
    aws["inputProperties"]["deployment"]["secret"] = True
    assert structure_problems(doc) == ["kumo:index:AwsKumoMta output.secretNames: no description"]
    assert secret_problems(doc) == ["kumo:index:AwsKumoMta input.deployment: marked secret, holds no secret",
                                    "kumo:index:AwsKumoMta input.sshPrivateKey: not marked secret"]


def test_outputs_declared_on_the_base_component_carry_its_docstrings():
    base = component_tables.base_component()
    for token, resource in stored()["resources"].items():
        for key in component_tables.declared_outputs(base):
            described = " ".join(resource["properties"][camel_case(key)]["description"].split())
            assert described == component_tables.docstring(base, key), f"{token}.{camel_case(key)}"
    # A component's own output keeps the description the SDK inferred from its class.
    for name, cls in component_tables.component_classes().items():
        resource = stored()["resources"][f"kumo:index:{cls.__name__}"]
        for key in component_tables.declared_outputs(cls):
            assert " ".join(resource["properties"][camel_case(key)]["description"].split()) == (
                component_tables.docstring(cls, key))


def _served_additions(served: dict, sdk: dict, where: str = "") -> list[str]:
    """Where ``served`` differs from ``sdk`` other than by a description or a ``secret`` the SDK left out."""
    if isinstance(served, dict) and isinstance(sdk, dict):
        problems = [f"{where}/{k}: dropped" for k in sdk if k not in served]
        for key, value in served.items():
            if key not in sdk:
                if not (key == "description" or (key == "secret" and value is True)):
                    problems.append(f"{where}/{key}: added")
            else:
                problems += _served_additions(value, sdk[key], f"{where}/{key}")
        return problems
    return [] if served == sdk else [f"{where}: {sdk!r} served as {served!r}"]


def test_the_served_schema_is_the_sdks_inference_plus_descriptions_and_secret_flags():
    """construct maps inputs and outputs through the SDK's own definitions: the schema the SDKs are
    generated from must name and type them exactly as those do."""
    sdk = json.loads(ComponentProvider(entry().components(), entry().NAME, version=entry().version()).schema)
    assert _served_additions(inferred(), sdk) == []
    assert inferred() != sdk
    assert _served_additions({"a": {"type": "string", "plain": True}}, {"a": {"type": "integer"}}) == [
        "/a/type: 'integer' served as 'string'", "/a/plain: added"]


def test_every_type_in_the_schema_is_reached_from_a_component():
    doc = stored()
    reached = {node["$ref"].removeprefix("#/types/") for _, node in _walk(doc["resources"]) if "$ref" in node}
    pending = list(reached)
    while pending:
        for _, node in _walk(doc["types"][pending.pop()]):
            token = node.get("$ref", "").removeprefix("#/types/")
            if token and token not in reached:
                reached.add(token)
                pending.append(token)
    assert reached == set(doc["types"])


def test_the_structure_check_names_each_kind_of_fault():
    broken = {
        "resources": {"kumo:index:X": {
            "isComponent": True, "description": "x",
            "inputProperties": {"a": {"$ref": "#/types/kumo:index:Gone", "description": "a"},
                                "b": {"type": "array", "items": {"type": "thing"}, "description": "b"}},
            "requiredInputs": ["c"], "properties": {"d": {"type": "string"}}, "required": []}},
        "types": {"kumo:index:E": {"type": "integer", "description": "e",
                                   "enum": [{"name": "A", "value": "587"}]}},
    }
    assert structure_problems(broken) == [
        "/resources/kumo:index:X/inputProperties/a: $ref #/types/kumo:index:Gone is not a type of this package",
        "kumo:index:X input.a: $ref #/types/kumo:index:Gone resolves to no type",
        "kumo:index:X input.b[]: no type the SDKs can generate ('thing')",
        "kumo:index:X input: required c is no property",
        "kumo:index:X output.d: no description",
        "kumo:index:E: '587' is not integer",
    ]


# -- checking a program's properties against the schema ------------------------------------------------

@dataclass(frozen=True)
class Expression:
    """A value the program computes (a config read, an interpolation): typed by where it comes from."""

    text: str
    type: Optional[str] = None  # the schema type it is known to have; None: not known here
    secret: bool = False


def value_problems(value: Any, prop: dict, doc: dict, where: str) -> list[str]:
    """How ``value`` fails the schema property ``prop``: an unknown name, a wrong type, an enum value
    the type does not list, a missing required property."""
    if isinstance(value, Expression):
        if value.type is None or "$ref" in prop or value.type == prop.get("type"):
            return []
        return [f"{where}: {value.text} is a {value.type}, the schema takes {prop.get('type')}"]
    if "$ref" in prop:
        typ = doc["types"][prop["$ref"].removeprefix("#/types/")]
        if "enum" in typ:
            allowed = [e["value"] for e in typ["enum"]]
            return [] if value in allowed and type(value) is type(allowed[0]) else [
                f"{where}: {value!r} is none of {allowed}"]
        if not isinstance(value, dict):
            return [f"{where}: {value!r} is not an object"]
        return object_problems(value, typ.get("properties", {}), typ.get("required", []), doc, where)
    kind = prop["type"]
    if kind == "array":
        if not isinstance(value, list):
            return [f"{where}: {value!r} is not a list"]
        return [p for i, item in enumerate(value) for p in value_problems(item, prop["items"], doc, f"{where}[{i}]")]
    python = {"string": (str,), "integer": (int,), "number": (int, float), "boolean": (bool,)}[kind]
    if not isinstance(value, python) or (kind != "boolean" and isinstance(value, bool)):
        return [f"{where}: {value!r} is not {kind}"]
    return []


def object_problems(values: dict, props: dict, required: list[str], doc: dict, where: str) -> list[str]:
    problems = [f"{where}.{key}: no such property (the schema has {sorted(props)})" for key in values
                if key not in props]
    problems += [f"{where}.{key}: required, missing" for key in required if key not in values]
    return problems + [p for key, value in values.items() if key in props
                       for p in value_problems(value, props[key], doc, f"{where}.{key}")]


def resource_problems(token: str, properties: dict, doc: dict) -> list[str]:
    resource = doc["resources"].get(token)
    if resource is None:
        return [f"{token}: no such component in the package (it has {sorted(doc['resources'])})"]
    return object_problems(properties, resource["inputProperties"], resource["requiredInputs"], doc, token)


def test_the_property_check_names_each_kind_of_fault():
    doc = stored()
    problems = resource_problems("kumo:index:AwsKumoMta", {
        "deployment": {"cloud": "moon", "name": 3, "sizing": {"messagesPerHour": "many"}, "nodez": 2,
                       "network": {"sshCidrs": "10.0.0.0/8"}, "port25": {"relay": {"port": "587"}}},
        "relayPassword": Expression("${count}", type="integer"),
    }, doc)
    assert problems == [
        "kumo:index:AwsKumoMta.deployment.nodez: no such property (the schema has "
        f"{sorted(doc['types']['kumo:index:DeploymentConfig']['properties'])})",
        "kumo:index:AwsKumoMta.deployment.hostname: required, missing",
        "kumo:index:AwsKumoMta.deployment.cloud: 'moon' is none of ['aws', 'azure', 'gcp', 'ssh']",
        "kumo:index:AwsKumoMta.deployment.name: 3 is not string",
        "kumo:index:AwsKumoMta.deployment.sizing.messagesPerHour: 'many' is not integer",
        "kumo:index:AwsKumoMta.deployment.network.sshCidrs: '10.0.0.0/8' is not a list",
        "kumo:index:AwsKumoMta.deployment.port25.relay.host: required, missing",
        "kumo:index:AwsKumoMta.deployment.port25.relay.username: required, missing",
        "kumo:index:AwsKumoMta.deployment.port25.relay.port: '587' is none of [587, 465, 2525]",
        "kumo:index:AwsKumoMta.relayPassword: ${count} is a integer, the schema takes string",
    ]
    assert resource_problems("kumo:index:Nope", {}, doc)[0].startswith("kumo:index:Nope: no such component")


@dataclass(frozen=True)
class ExampleUse:
    """One component an example program creates, as the test reads it."""

    token: str
    name: str
    properties: dict  # Expression for what the program computes
    outputs_read: list[str]


def _built(use: ExampleUse) -> tuple[dict, offline.OfflineResult]:
    """``use`` built through the provider's own construct (the code the engine calls), its inputs as the
    engine sends them and each computed value the secret the example's config holds: the state it
    returns to the engine, resolved, and the run."""
    provider = entry().provider()

    def program() -> None:
        inputs = {key: pulumi.Output.secret(EXAMPLE_SECRET) if isinstance(value, Expression) else
                  _as_engine_sends(value) for key, value in use.properties.items()}
        for key, value in provider.construct(use.name, use.token, inputs, None).state.items():
            pulumi.export(key, value)

    result = offline.run(program, {}, stack="example")
    return result.outputs, result


def _check_built(use: ExampleUse) -> dict:
    """Build ``use``; its state (the outputs as the engine receives them) after the common checks."""
    state, result = _built(use)
    assert result.one(use.token).name == use.name
    nodes = len(state["nodes"])
    cls = targets.get(use.properties["deployment"]["cloud"]).component_class()
    assert cls.TYPE == use.token, "the deployment's cloud is another component's"
    assert nodes >= 1 and len(state["publicIps"]) == nodes
    optional = set(stored()["resources"][use.token]["properties"]) - set(stored()["resources"][use.token]["required"])
    assert set(use.outputs_read) - set(state) <= optional  # a null output is left out of the state
    violations = guardrails.check_offline(result, {"the example's relay password": EXAMPLE_SECRET})
    assert [v for v in violations if v.level == guardrails.MANDATORY] == []
    return state


# -- examples/yaml --------------------------------------------------------------------------------

_YAML_REFERENCE = re.compile(r"^\$\{([A-Za-z_][\w-]*)(?:\.([A-Za-z_]\w*))?\}$")


def _yaml_value(value: Any, program: dict) -> Any:
    """The example's value with each whole-value interpolation of config as an Expression."""
    if isinstance(value, dict):
        return {k: _yaml_value(v, program) for k, v in value.items()}
    if isinstance(value, list):
        return [_yaml_value(v, program) for v in value]
    if isinstance(value, str) and (found := _YAML_REFERENCE.match(value)):
        config = program.get("config", {}).get(found.group(1))
        assert config is not None and found.group(2) is None, f"{value}: not a config value of the program"
        return Expression(value, type=config.get("type"), secret=bool(config.get("secret")))
    assert not (isinstance(value, str) and "${" in value), f"{value}: an interpolation this test does not read"
    return value


def yaml_uses() -> list[ExampleUse]:
    program = yaml.safe_load((YAML_EXAMPLE / "Pulumi.yaml").read_text())
    uses = []
    for name, resource in program["resources"].items():
        reads = [m.group(2) for text in program.get("outputs", {}).values()
                 if (m := _YAML_REFERENCE.match(text)) and m.group(1) == name]
        uses.append(ExampleUse(resource["type"], name, _yaml_value(resource.get("properties", {}), program), reads))
    return uses


def test_yaml_example_declares_the_package_and_runs_yaml():
    program = yaml.safe_load((YAML_EXAMPLE / "Pulumi.yaml").read_text())
    assert program["runtime"] == "yaml"
    assert (YAML_EXAMPLE / program["packages"]["kumo"]).resolve() == PROVIDER
    assert [u.token for u in yaml_uses()] == ["kumo:index:AwsKumoMta"]


# -- examples/typescript ---------------------------------------------------------------------------

_TS_TOKEN = re.compile(r"""\s+|//[^\n]*|/\*.*?\*/|"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*'|-?\d+(?:\.\d+)?(?![\w.])"""
                       r"""|[A-Za-z_$][\w$]*|\S""", re.S)
_TS_CLOSERS = {"{": "}", "[": "]", "(": ")"}


def ts_tokens(text: str) -> list[str]:
    return [t for t in _TS_TOKEN.findall(text) if not t.isspace() and not t.startswith(("//", "/*"))]


class _TsLiteral:
    """Reads a TypeScript object literal of plain data; anything else (a call, a name) is an Expression."""

    def __init__(self, tokens: list[str]) -> None:
        self.tokens, self.at = tokens, 0

    def take(self, expected: Optional[str] = None) -> str:
        token = self.tokens[self.at]
        assert expected is None or token == expected, f"expected {expected!r}, found {token!r} in the literal"
        self.at += 1
        return token

    def value(self) -> Any:
        token = self.tokens[self.at]
        if token == "{":
            self.take("{")
            found = {}
            while self.tokens[self.at] != "}":
                key = self.take()
                found[json.loads(key) if key.startswith('"') else key] = (self.take(":"), self.value())[1]
                if self.tokens[self.at] == ",":
                    self.take(",")
            self.take("}")
            return found
        if token == "[":
            self.take("[")
            items = []
            while self.tokens[self.at] != "]":
                items.append(self.value())
                if self.tokens[self.at] == ",":
                    self.take(",")
            self.take("]")
            return items
        if token.startswith('"'):
            return json.loads(self.take())
        if re.fullmatch(r"-?\d+", token):
            return int(self.take())
        if re.fullmatch(r"-?\d+\.\d+", token):
            return float(self.take())
        if token in ("true", "false"):
            return self.take() == "true"
        return self.expression()

    def expression(self) -> Expression:
        start, depth = self.at, []
        while depth or self.tokens[self.at] not in (",", "}", "]"):
            token = self.take()
            if token in _TS_CLOSERS:
                depth.append(_TS_CLOSERS[token])
            elif depth and token == depth[-1]:
                depth.pop()
        text = "".join(self.tokens[start:self.at])
        # Pulumi's Config: requireSecret/getSecret give a secret string.
        return Expression(text, type="string" if re.match(r"config\.(require|get)(Secret)?\(", text) else None,
                          secret=bool(re.match(r"config\.(requireSecret|getSecret)\(", text)))


def ts_uses(text: str) -> list[ExampleUse]:
    uses = []
    for found in re.finditer(r"const\s+(\w+)\s*=\s*new\s+kumo\.(\w+)\(\s*\"([^\"]+)\"\s*,", text):
        variable, cls, name = found.groups()
        properties = _TsLiteral(ts_tokens(text[found.end():])).value()
        reads = re.findall(rf"\b{variable}\.(\w+)", text[found.end():])
        uses.append(ExampleUse(f"kumo:index:{cls}", name, properties, reads))
    return uses


def test_the_typescript_reader_reads_plain_data_and_keeps_expressions():
    (use,) = ts_uses('const m = new kumo.X("n", {\n  a: "s://x", // c\n  b: [1, 2.5, true], c: { "d": -3 },\n'
                     '  e: config.requireSecret("p"), f: f(1, [2]),\n});\nexport const o = m.out;')
    assert use == ExampleUse("kumo:index:X", "n", {
        "a": "s://x", "b": [1, 2.5, True], "c": {"d": -3},
        "e": Expression('config.requireSecret("p")', type="string", secret=True),
        "f": Expression("f(1,[2])")}, ["out"])


def test_typescript_example_is_a_nodejs_program_of_the_package():
    program = yaml.safe_load((TS_EXAMPLE / "Pulumi.yaml").read_text())
    assert program["runtime"]["name"] == "nodejs"
    assert (TS_EXAMPLE / program["packages"]["kumo"]).resolve() == PROVIDER
    text = (TS_EXAMPLE / "index.ts").read_text()
    # The SDK Pulumi generates: @pulumi/<package name> (no namespace), imported as its camel-cased name.
    assert 'import * as kumo from "@pulumi/kumo";' in text
    package = json.loads((TS_EXAMPLE / "package.json").read_text())
    assert package["main"] == "index.ts" and "@pulumi/pulumi" in package["dependencies"]
    assert json.loads((TS_EXAMPLE / "tsconfig.json").read_text())["files"] == ["index.ts"]


# -- both examples ---------------------------------------------------------------------------------

EXAMPLES = {"yaml": yaml_uses, "typescript": lambda: ts_uses((TS_EXAMPLE / "index.ts").read_text())}


@pytest.mark.parametrize("example", EXAMPLES)
def test_example_properties_and_outputs_match_the_schema(example):
    doc = stored()
    uses = EXAMPLES[example]()
    assert uses, f"the {example} example creates no kumo component"
    for use in uses:
        assert resource_problems(use.token, use.properties, doc) == []
        assert use.outputs_read and set(use.outputs_read) <= set(doc["resources"][use.token]["properties"])


@pytest.mark.parametrize("example", EXAMPLES)
def test_example_passes_each_secret_input_from_secret_config(example):
    for use in EXAMPLES[example]():
        passed = {camel_case(k) for k in SECRET_INPUTS} & set(use.properties)
        assert passed, "the example shows no secret input"
        assert all(isinstance(use.properties[k], Expression) and use.properties[k].secret for k in passed)


@pytest.mark.parametrize("example", EXAMPLES)
def test_example_builds_through_the_provider(example):
    for use in EXAMPLES[example]():
        state = _check_built(use)
        if "nodes" in use.properties["deployment"]:
            assert len(state["nodes"]) == use.properties["deployment"]["nodes"]


@pytest.mark.parametrize("example", EXAMPLES)
def test_example_uses_the_names_every_target_component_shares(example):
    """A program switches targets by switching the class: the inputs and the outputs the examples read
    are the same on every component."""
    for use in EXAMPLES[example]():
        for resource in stored()["resources"].values():
            assert set(use.properties) <= set(resource["inputProperties"])
            assert set(use.outputs_read) <= set(resource["properties"])

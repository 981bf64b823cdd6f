"""Run the real Pulumi program offline, under the Pulumi SDK's own mock engine.

No cloud account and no Pulumi CLI: every resource is registered through the
real SDK classes (which check every argument), and what the engine would
receive is recorded. Values only a cloud can know (image ids, addresses) are
answered with documentation placeholders and marked as such.

The same engine drives ``kumo-infra plan`` and the tests.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Collection

import pulumi
from pulumi.runtime import mocks as _mocks
from pulumi.runtime import rpc as _rpc
from pulumi.runtime import settings as _settings
from pulumi.runtime.proto import resource_pb2
from pulumi.runtime.stack import run_pulumi_func
from pulumi.runtime.sync_await import _sync_await

from . import targets
from .clouds import offline_common

PROJECT = "kumo-infra"
STACK_TYPE = "pulumi:pulumi:Stack"
# Pulumi's wire form of a secret value, as recorded inputs carry it: {SECRET_SIG_KEY: SECRET_SIG, "value": ...}.
SECRET_SIG_KEY = _rpc._special_sig_key
SECRET_SIG = _rpc._special_secret_sig


def is_secret(value: Any) -> bool:
    return isinstance(value, dict) and value.get(SECRET_SIG_KEY) == SECRET_SIG


# Outputs a provider computes and answers to data-source look-ups (invokes), given
# offline so downstream code has a value: the providers every component uses
# (kumo_infra/clouds/offline_common.py), then each target's own (Target.offline_computed,
# Target.offline_invokes); addresses come from the documentation ranges (RFC 5737),
# never a real host.
_COMPUTED: dict[str, dict[str, Any]] = dict(offline_common.COMPUTED)
_INVOKES: dict[str, dict[str, Any]] = dict(offline_common.INVOKES)
for _target in targets.registry().values():
    _COMPUTED.update(_target.offline_computed)
    _INVOKES.update(_target.offline_invokes)


class DuplicateResourceError(RuntimeError):
    pass


@dataclass
class RecordedResource:
    """One resource as the engine received it: its inputs and the options that decide what the
    engine does with it (protect, what it waits for, which changes replace or are ignored)."""

    type: str
    name: str
    parent: str | None  # the parent's name; None: the stack
    inputs: dict[str, Any]  # camelCase, as the provider gets them (_plain: secrets keep their envelope)
    custom: bool  # False: a component resource (no provider)
    urn: str = ""
    parent_urn: str | None = None  # None: the stack
    protect: bool = False
    retain_on_delete: bool = False
    delete_before_replace: bool = False
    ignore_changes: list[str] = field(default_factory=list)  # property paths (engine syntax)
    replace_on_changes: list[str] = field(default_factory=list)
    additional_secret_outputs: list[str] = field(default_factory=list)
    # URNs this resource waits for: explicit depends_on and the resources its inputs come from
    # (a component stands for its children), as the SDK sends them.
    dependencies: list[str] = field(default_factory=list)
    # The resource's own aliases (kumo-infra's renames; the SDKs' type aliases are dropped unless the
    # run keeps them, see run(prior_urns=)). Full URNs when the SDK computed them, else the alias spec
    # as sent: {"name", "type", "stack", "project", "parentUrn", "noParent"}, unset fields left out.
    aliases: list[str | dict[str, Any]] = field(default_factory=list)

    @property
    def depends_on_names(self) -> list[str]:
        """The names of the resources in ``dependencies``."""
        return [urn.split("::")[-1] for urn in self.dependencies]

    @property
    def alias_names(self) -> list[str]:
        """The names this resource had before (from its aliases, URNs or specs)."""
        return [a.split("::")[-1] if isinstance(a, str) else a.get("name", self.name) for a in self.aliases]

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "name": self.name, "parent": self.parent, "inputs": self.inputs}

    def options(self) -> dict[str, Any]:
        """The recorded options as plain data (tests that run the program in a child process)."""
        return {"urn": self.urn, "parent_urn": self.parent_urn, "protect": self.protect,
                "retain_on_delete": self.retain_on_delete, "delete_before_replace": self.delete_before_replace,
                "ignore_changes": self.ignore_changes, "replace_on_changes": self.replace_on_changes,
                "additional_secret_outputs": self.additional_secret_outputs,
                "dependencies": self.dependencies, "aliases": self.aliases}

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> "RecordedResource":
        """The inverse of ``{**to_dict(), **options(), "custom": ...}``."""
        return cls(doc["type"], doc["name"], doc["parent"], doc["inputs"], doc.get("custom", True),
                   **{k: doc[k] for k in ("urn", "parent_urn", "protect", "retain_on_delete",
                                          "delete_before_replace", "ignore_changes", "replace_on_changes",
                                          "additional_secret_outputs", "dependencies", "aliases") if k in doc})


@dataclass
class OfflineResult:
    stack: str
    resources: list[RecordedResource]
    outputs: dict[str, Any]
    invokes: list[dict[str, Any]] = field(default_factory=list)
    log: list[str] = field(default_factory=list)  # what the program logged (pulumi.log.*)

    def of_type(self, token: str) -> list[RecordedResource]:
        return [r for r in self.resources if r.type == token]

    def one(self, token: str) -> RecordedResource:
        found = self.of_type(token)
        if len(found) != 1:
            raise AssertionError(f"expected one {token}, found {[r.name for r in found]}")
        return found[0]

    def named(self, name: str, token: str | None = None) -> RecordedResource:
        """The resource called ``name`` (of type ``token``, when names repeat across types)."""
        found = [r for r in self.resources if r.name == name and token in (None, r.type)]
        if len(found) != 1:
            raise AssertionError(f"expected one resource named {name!r}, found {[(r.type, r.name) for r in found]}")
        return found[0]


class _Recorder(pulumi.runtime.Mocks):
    def __init__(self) -> None:
        self.resources: list[RecordedResource] = []
        self.invokes: list[dict[str, Any]] = []
        self._seen: set[tuple[str, str]] = set()
        # Set by the monitor just before it hands a registration to new_resource.
        self._pending: dict[tuple[str, str], RecordedResource] = {}
        # (type, name) -> the name of the earlier resource whose state it takes over (run(prior_urns=)).
        self._adopted: dict[tuple[str, str], str] = {}

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict]:
        key = (args.typ, args.name)
        # The real engine refuses two resources of one type and name; the mock engine does not.
        if key in self._seen:
            raise DuplicateResourceError(f"duplicate resource name: {args.typ} '{args.name}'")
        self._seen.add(key)
        recorded = self._pending.pop(key, None) or RecordedResource(args.typ, args.name, None, {}, bool(args.custom))
        recorded.inputs = _plain(args.inputs)
        self.resources.append(recorded)
        # The engine gives an aliased resource the state of the one it was: its id and computed outputs.
        state_name = self._adopted.pop(key, args.name)
        # Derived from the name, not the registration order (which varies run to run),
        # so the same program always gets the same placeholders.
        n = 10 + zlib.crc32(f"{args.typ}::{state_name}".encode()) % 240
        state = dict(args.inputs)
        # A template names n, the resource's name, or one of its own plain string inputs (a GCP self
        # link names the instance's project and zone).
        fields = {**{k: v for k, v in args.inputs.items() if isinstance(v, str)}, "n": n, "name": state_name}
        for prop, template in _COMPUTED.get(args.typ, {}).items():
            filled = _fill(template, fields)
            state[prop] = _merge(state[prop], filled) if prop in state else filled
        return f"{state_name}-id", state

    def call(self, args: pulumi.runtime.MockCallArgs) -> dict:
        answer = _INVOKES.get(args.token)
        self.invokes.append({"token": args.token, "args": _plain(args.args), "answered": answer is not None})
        if answer is None:
            raise RuntimeError(f"the offline plan has no answer for the look-up {args.token}")
        return dict(answer)


class _ParentRecordingMonitor(_mocks.MockMonitor):
    """Records what each registration carries besides its inputs (MockResourceArgs has only the
    inputs): parent, options, dependencies, aliases and the URN the engine gives it.

    ``prior_urns``: URNs an earlier run registered (run(prior_urns=)). The SDK is then told the
    engine cannot take alias specs, so it computes every alias as a full URN itself
    (pulumi.runtime.resource.all_aliases), and a resource one of whose aliases is a prior URN takes
    over that resource's state, as the engine does."""

    def __init__(self, recorder: _Recorder, prior_urns: Collection[str] | None = None) -> None:
        super().__init__(recorder)
        self._recorder = recorder
        self._prior = None if prior_urns is None else frozenset(prior_urns)

    def make_urn(self, parent: str, type_: str, name: str) -> str:
        """The URN the engine gives: the type after the parent's whole qualified type, none for a
        child of the stack. (The SDK's mock prefixes the stack's type and only the parent's last type;
        the SDK computes alias URNs from the parent's URN the engine's way, and they must match.)"""
        if parent:
            qualified = parent.split("::")[2]
            if qualified != STACK_TYPE:
                type_ = f"{qualified}${type_}"
        return "::".join([f"urn:pulumi:{pulumi.get_stack()}", pulumi.get_project(), type_, name])

    def SupportsFeature(self, request):  # noqa: N802 (gRPC method name)
        if self._prior is not None and request.id == "aliasSpecs":
            return type("SupportsFeatureResponse", (object,), {"hasSupport": False})
        return super().SupportsFeature(request)

    def GetDeploymentInfo(self, request):  # noqa: N802 (gRPC method name)
        info = super().GetDeploymentInfo(request)
        if self._prior is not None:
            features = [f for f in info.supportedFeatures if f != resource_pb2.RESOURCE_MONITOR_FEATURE_ALIAS_SPECS]
            info = resource_pb2.DeploymentInfo(supportedFeatures=features)
        return info

    def RegisterResource(self, request):  # noqa: N802 (gRPC method name)
        key = (request.type, request.name)
        parent = request.parent.split("::")[-1] if request.parent else None
        stack_parent = not request.parent or request.parent.split("::")[2] == STACK_TYPE
        aliases: list[str | dict[str, Any]] = list(request.aliasURNs) + [_alias_spec(a) for a in request.aliases]
        self._recorder._pending[key] = RecordedResource(
            request.type, request.name, None if stack_parent else parent, {}, bool(request.custom),
            parent_urn=None if stack_parent else request.parent,
            protect=bool(request.protect), retain_on_delete=bool(request.retainOnDelete),
            delete_before_replace=bool(request.deleteBeforeReplace),
            ignore_changes=list(request.ignoreChanges), replace_on_changes=list(request.replaceOnChanges),
            additional_secret_outputs=list(request.additionalSecretOutputs),
            dependencies=sorted(set(request.dependencies)), aliases=aliases)
        if self._prior is not None:
            taken = [a for a in aliases if isinstance(a, str) and a in self._prior]
            if taken:
                self._recorder._adopted[key] = taken[0].split("::")[-1]
        response = super().RegisterResource(request)
        for recorded in reversed(self._recorder.resources):
            if (recorded.type, recorded.name) == key:
                recorded.urn = response.urn
                break
        return response


def _alias_spec(alias: Any) -> str | dict[str, Any]:
    """An alias as the SDK sends it with alias specs: a URN, or the spec's set fields."""
    if alias.urn:
        return alias.urn
    spec = alias.spec
    found = {f: getattr(spec, f) for f in ("name", "type", "stack", "project", "parentUrn") if getattr(spec, f)}
    if spec.noParent:
        found["noParent"] = True
    return found


def _fill(template: Any, fields: dict[str, Any]) -> Any:
    if isinstance(template, str):
        return template.format_map(fields)
    if isinstance(template, list):
        return [_fill(t, fields) for t in template]
    if isinstance(template, dict):
        return {k: _fill(v, fields) for k, v in template.items()}
    return template


def _merge(value: Any, computed: Any) -> Any:
    """Fill keys a provider computes inside input structures (GCP networkInterfaces[].networkIp)."""
    if isinstance(value, dict) and isinstance(computed, dict):
        return {**computed, **{k: _merge(v, computed[k]) if k in computed else v for k, v in value.items()}}
    if isinstance(value, list) and isinstance(computed, list) and computed:
        return [_merge(v, computed[min(i, len(computed) - 1)]) for i, v in enumerate(value)]
    return value


def _plain(value: Any) -> Any:
    """Engine values as JSON-able data: assets and archives as their content, unknowns and
    resource references as strings."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, pulumi.Resource):
        return f"<resource {getattr(value, '_name', '?')}>"
    if isinstance(value, (pulumi.Asset, pulumi.Archive)):
        return _asset(value)
    return str(value)


def _asset(value: pulumi.Asset | pulumi.Archive) -> dict[str, Any]:
    """An asset or archive as what it holds: {"asset": {"text"|"path"|"uri": ...}} or
    {"archive": {"assets": {name: asset or archive}} | {"path"|"uri": ...}}."""
    kind = "asset" if isinstance(value, pulumi.Asset) else "archive"
    if isinstance(value, pulumi.AssetArchive):
        return {kind: {"assets": {k: _asset(v) for k, v in value.assets.items()}}}
    for attr in ("text", "path", "uri"):
        if hasattr(value, attr):
            return {kind: {attr: getattr(value, attr)}}
    raise TypeError(f"an unknown kind of {kind}: {type(value).__name__}")


def _without_aliases(args: pulumi.ResourceTransformationArgs) -> pulumi.ResourceTransformationResult | None:
    """Drop the SDKs' aliases: they only match a resource to older state, and an offline plan has none.

    azure-native declares ~36 aliases (older API versions) on every resource, and the SDK
    turns each into several Outputs at construction: most of the Azure plan's time per
    node. Inputs, names and parents, which is all a plan records, are unchanged. kumo-infra's
    own aliases (a renamed child: they set a name) are few and kept, so a plan shows them.
    """
    if not args.opts.aliases:
        return None
    own = [a for a in args.opts.aliases if isinstance(a, pulumi.Alias) and isinstance(a.name, str)]
    if len(own) == len(args.opts.aliases):
        return None
    opts = pulumi.ResourceOptions.merge(args.opts, pulumi.ResourceOptions())
    opts.aliases = own or None
    return pulumi.ResourceTransformationResult(args.props, opts)


def run(program: Callable[[], None], config: dict[str, Any], *, stack: str, secret_keys: list[str] | None = None,
        preview: bool = False, prior_urns: Collection[str] | None = None) -> OfflineResult:
    """Run ``program`` with ``config`` (``kumo:deployment`` etc.; structured values are JSON-encoded).

    ``prior_urns``: the URNs a stack already holds (an earlier release's resources). Every alias is
    then kept and sent as a full URN computed by the SDK itself, and a resource whose alias is one
    of them takes over that resource's id and computed outputs, as the engine does: the run shows
    what an update of that stack would register (tests/test_aliases.py).

    An exception from the program carries ``offline_resources``: what was registered before it."""
    recorder = _Recorder()
    engine_log = _EngineLog()
    _settings.ROOT.set(None)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    pulumi.runtime.set_mocks(recorder, project=PROJECT, stack=stack, preview=preview,
                             monitor=_ParentRecordingMonitor(recorder, prior_urns), logger=engine_log.logger)
    encoded = {k: v if isinstance(v, str) else json.dumps(v) for k, v in config.items()}
    pulumi.runtime.set_all_config(encoded, secret_keys or [])
    outputs: dict[str, Any] = {}

    def body() -> None:
        if prior_urns is None:
            pulumi.runtime.register_stack_transformation(_without_aliases)
        program()
        root = _settings.get_root_resource()
        exported = dict(getattr(root, "outputs", {}))
        resolved = _sync_await(pulumi.Output.from_input(exported).future(with_unknowns=True))
        if resolved is not None:
            outputs.update(_plain(resolved))

    try:
        _sync_await(run_pulumi_func(body))
    except Exception as exc:
        # What was registered before the failure: a refusal must come before any resource.
        exc.offline_resources = list(recorder.resources)  # type: ignore[attr-defined]
        raise
    finally:
        # A failed run leaves RPCs and output tasks bound to this loop; the next run in
        # the same process (tests) would wait on them after the loop is closed.
        _settings.SETTINGS.rpc_manager.clear()
        with _settings.SETTINGS.lock:
            _settings.SETTINGS.outputs.clear()
        loop.close()
        # A failed run leaves futures whose exception nobody read; collected later (pytest's summary),
        # CPython 3.11 can crash formatting their tracebacks ("AST constructor recursion depth
        # mismatch", gh-106905). Collected here, while the run's frames are still sound.
        gc.collect()
    return OfflineResult(stack, recorder.resources, outputs, recorder.invokes, engine_log.messages)


class _EngineLog(logging.Handler):
    """Keeps what the program logs instead of printing it: callers decide what to show."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []
        # Not registered with logging (getLogger would keep every run's logger and messages).
        self.logger = logging.Logger("kumo_infra.offline")
        self.logger.propagate = False
        self.logger.setLevel(logging.INFO)
        self.logger.addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(f"{record.levelname.lower()}: {record.getMessage()}")

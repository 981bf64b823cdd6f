"""Run the real Pulumi program offline, under the Pulumi SDK's own mock engine.

No cloud account and no Pulumi CLI: every resource is registered through the
real SDK classes (which check every argument), and what the engine would
receive is recorded. Values only a cloud can know (image ids, addresses) are
answered with documentation placeholders and marked as such.

The same engine drives ``kumo-infra plan`` and the tests.
"""

from __future__ import annotations

import asyncio
import json
import logging
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable

import pulumi
from pulumi.runtime import mocks as _mocks
from pulumi.runtime import rpc as _rpc
from pulumi.runtime import settings as _settings
from pulumi.runtime.stack import run_pulumi_func
from pulumi.runtime.sync_await import _sync_await

from .clouds import offline_aws, offline_azure, offline_common, offline_gcp

PROJECT = "kumo-infra"
# Pulumi's wire form of a secret value, as recorded inputs carry it: {SECRET_SIG_KEY: SECRET_SIG, "value": ...}.
SECRET_SIG_KEY = _rpc._special_sig_key
SECRET_SIG = _rpc._special_secret_sig


def is_secret(value: Any) -> bool:
    return isinstance(value, dict) and value.get(SECRET_SIG_KEY) == SECRET_SIG


# Outputs a provider computes and answers to data-source look-ups (invokes), given
# offline so downstream code has a value. Each cloud keeps its own table in
# kumo_infra/clouds/offline_<cloud>.py; addresses come from the documentation
# ranges (RFC 5737), never a real host.
_COMPUTED: dict[str, dict[str, Any]] = {}
_INVOKES: dict[str, dict[str, Any]] = {}
for _answers in (offline_common, offline_aws, offline_azure, offline_gcp):
    _COMPUTED.update(_answers.COMPUTED)
    _INVOKES.update(_answers.INVOKES)


class DuplicateResourceError(RuntimeError):
    pass


@dataclass
class RecordedResource:
    type: str
    name: str
    parent: str | None
    inputs: dict[str, Any]
    custom: bool
    urn: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "name": self.name, "parent": self.parent, "inputs": self.inputs}


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


class _Recorder(pulumi.runtime.Mocks):
    def __init__(self) -> None:
        self.resources: list[RecordedResource] = []
        self.invokes: list[dict[str, Any]] = []
        self._seen: set[tuple[str, str]] = set()
        self._pending_parents: dict[tuple[str, str], str | None] = {}

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict]:
        key = (args.typ, args.name)
        # The real engine refuses two resources of one type and name; the mock engine does not.
        if key in self._seen:
            raise DuplicateResourceError(f"duplicate resource name: {args.typ} '{args.name}'")
        self._seen.add(key)
        parent = self._pending_parents.pop(key, None)
        self.resources.append(RecordedResource(args.typ, args.name, parent, _plain(args.inputs), bool(args.custom)))
        # Derived from the name, not the registration order (which varies run to run),
        # so the same program always gets the same placeholders.
        n = 10 + zlib.crc32(f"{args.typ}::{args.name}".encode()) % 240
        state = dict(args.inputs)
        for prop, template in _COMPUTED.get(args.typ, {}).items():
            filled = _fill(template, n, args.name)
            state[prop] = _merge(state[prop], filled) if prop in state else filled
        return f"{args.name}-id", state

    def call(self, args: pulumi.runtime.MockCallArgs) -> dict:
        answer = _INVOKES.get(args.token)
        self.invokes.append({"token": args.token, "args": _plain(args.args), "answered": answer is not None})
        if answer is None:
            raise RuntimeError(f"the offline plan has no answer for the look-up {args.token}")
        return dict(answer)


class _ParentRecordingMonitor(_mocks.MockMonitor):
    """Captures each registration's parent, which MockResourceArgs does not carry."""

    def __init__(self, recorder: _Recorder) -> None:
        super().__init__(recorder)
        self._recorder = recorder

    def RegisterResource(self, request):  # noqa: N802 (gRPC method name)
        parent = request.parent.split("::")[-1] if request.parent else None
        if parent and request.parent.split("::")[-2].endswith("pulumi:pulumi:Stack"):
            parent = None
        self._recorder._pending_parents[(request.type, request.name)] = parent
        response = super().RegisterResource(request)
        for recorded in reversed(self._recorder.resources):
            if (recorded.type, recorded.name) == (request.type, request.name):
                recorded.urn = response.urn
                break
        return response


def _fill(template: Any, n: int, name: str) -> Any:
    if isinstance(template, str):
        return template.format(n=n, name=name)
    if isinstance(template, list):
        return [_fill(t, n, name) for t in template]
    if isinstance(template, dict):
        return {k: _fill(v, n, name) for k, v in template.items()}
    return template


def _merge(value: Any, computed: Any) -> Any:
    """Fill keys a provider computes inside input structures (GCP networkInterfaces[].networkIp)."""
    if isinstance(value, dict) and isinstance(computed, dict):
        return {**computed, **{k: _merge(v, computed[k]) if k in computed else v for k, v in value.items()}}
    if isinstance(value, list) and isinstance(computed, list) and computed:
        return [_merge(v, computed[min(i, len(computed) - 1)]) for i, v in enumerate(value)]
    return value


def _plain(value: Any) -> Any:
    """Engine values as JSON-able data: unknowns and resource references become strings."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, pulumi.Resource):
        return f"<resource {getattr(value, '_name', '?')}>"
    return str(value)


def _without_aliases(args: pulumi.ResourceTransformationArgs) -> pulumi.ResourceTransformationResult | None:
    """Drop aliases: they only match a resource to older state, and an offline plan has none.

    azure-native declares ~36 aliases (older API versions) on every resource, and the SDK
    turns each into several Outputs at construction: most of the Azure plan's time per
    node. Inputs, names and parents, which is all a plan records, are unchanged.
    """
    if not args.opts.aliases:
        return None
    opts = pulumi.ResourceOptions.merge(args.opts, pulumi.ResourceOptions())
    opts.aliases = None
    return pulumi.ResourceTransformationResult(args.props, opts)


def run(program: Callable[[], None], config: dict[str, Any], *, stack: str, secret_keys: list[str] | None = None,
        preview: bool = False) -> OfflineResult:
    """Run ``program`` with ``config`` (``kumo:deployment`` etc.; structured values are JSON-encoded)."""
    recorder = _Recorder()
    engine_log = _EngineLog()
    _settings.ROOT.set(None)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    pulumi.runtime.set_mocks(recorder, project=PROJECT, stack=stack, preview=preview,
                             monitor=_ParentRecordingMonitor(recorder), logger=engine_log.logger)
    encoded = {k: v if isinstance(v, str) else json.dumps(v) for k, v in config.items()}
    pulumi.runtime.set_all_config(encoded, secret_keys or [])
    outputs: dict[str, Any] = {}

    def body() -> None:
        pulumi.runtime.register_stack_transformation(_without_aliases)
        program()
        root = _settings.get_root_resource()
        exported = dict(getattr(root, "outputs", {}))
        resolved = _sync_await(pulumi.Output.from_input(exported).future(with_unknowns=True))
        if resolved is not None:
            outputs.update(_plain(resolved))

    try:
        _sync_await(run_pulumi_func(body))
    finally:
        # A failed run leaves RPCs and output tasks bound to this loop; the next run in
        # the same process (tests) would wait on them after the loop is closed.
        _settings.SETTINGS.rpc_manager.clear()
        with _settings.SETTINGS.lock:
            _settings.SETTINGS.outputs.clear()
        loop.close()
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

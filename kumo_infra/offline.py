"""Run the real Pulumi program offline, under the Pulumi SDK's own mock engine.

No cloud account and no Pulumi CLI: every resource is registered through the
real SDK classes (which check every argument), and what the engine would
receive is recorded. Values only a cloud can know (image ids, addresses) are
answered with documentation placeholders and marked as such.

The same engine drives ``kumo-infra plan`` and the tests.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from dataclasses import dataclass, field
from typing import Any, Callable

import pulumi
from pulumi.runtime import mocks as _mocks
from pulumi.runtime import settings as _settings
from pulumi.runtime.stack import run_pulumi_func
from pulumi.runtime.sync_await import _sync_await

PROJECT = "kumo-infra"
PLACEHOLDER = "(placeholder)"

# Outputs a provider computes, answered offline so downstream code has a value.
# Addresses come from the documentation ranges (RFC 5737), never a real host.
_COMPUTED: dict[str, dict[str, Any]] = {
    "aws:ec2/eip:Eip": {"publicIp": "192.0.2.{n}", "allocationId": "eipalloc-{n:08x}"},
    "aws:ec2/instance:Instance": {"privateIp": "10.0.1.{n}", "publicIp": "", "arn": "arn:aws:ec2:::instance/i-{n:08x}"},
    "aws:ec2/vpc:Vpc": {"arn": "arn:aws:ec2:::vpc/vpc-{n:08x}"},
    "aws:secretsmanager/secret:Secret": {"arn": "arn:aws:secretsmanager:::secret:{name}"},
    "aws:iam/role:Role": {"arn": "arn:aws:iam:::role/{name}"},
    "azure-native:network:PublicIPAddress": {"ipAddress": "192.0.2.{n}"},
    "azure-native:network:NetworkInterface": {"ipConfigurations": [{"privateIPAddress": "10.0.1.{n}"}]},
    "azure-native:keyvault:Vault": {"properties": {"vaultUri": "https://{name}.vault.azure.net/"}},
    "azure-native:compute:VirtualMachine": {"identity": {"principalId": "00000000-0000-0000-0000-{n:012x}"}},
    "gcp:compute/address:Address": {"address": "192.0.2.{n}"},
    "gcp:compute/instance:Instance": {"networkInterfaces": [{"networkIp": "10.0.1.{n}"}]},
    "gcp:serviceaccount/account:Account": {"email": "{name}@project.iam.gserviceaccount.com"},
}

# Answers to data-source look-ups (invokes) that need the cloud.
_INVOKES: dict[str, dict[str, Any]] = {
    "aws:ec2/getAmi:getAmi": {"id": "ami-00000000placeholder", "imageId": "ami-00000000placeholder",
                              "name": PLACEHOLDER, "architecture": "x86_64"},
    "aws:index/getAvailabilityZones:getAvailabilityZones": {"names": ["zone-a", "zone-b"], "zoneIds": ["z1", "z2"]},
    "aws:index/getCallerIdentity:getCallerIdentity": {"accountId": "123456789012", "arn": PLACEHOLDER,
                                                      "userId": PLACEHOLDER},
    "aws:index/getPartition:getPartition": {"partition": "aws", "dnsSuffix": "amazonaws.com"},
    "aws:index/getRegion:getRegion": {"name": "region", "region": "region"},
    "gcp:compute/getImage:getImage": {"selfLink": "projects/placeholder/global/images/placeholder",
                                      "name": PLACEHOLDER},
    "azure-native:authorization:getClientConfig": {"tenantId": "00000000-0000-0000-0000-000000000000",
                                                   "subscriptionId": "00000000-0000-0000-0000-000000000000",
                                                   "objectId": "00000000-0000-0000-0000-000000000000",
                                                   "clientId": "00000000-0000-0000-0000-000000000000"},
}


class DuplicateResourceError(RuntimeError):
    pass


@dataclass
class RecordedResource:
    type: str
    name: str
    parent: str | None
    inputs: dict[str, Any]
    custom: bool

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "name": self.name, "parent": self.parent, "inputs": self.inputs}


@dataclass
class OfflineResult:
    stack: str
    resources: list[RecordedResource]
    outputs: dict[str, Any]
    invokes: list[dict[str, Any]] = field(default_factory=list)

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
        self._counter = itertools.count(10)
        self._pending_parents: dict[tuple[str, str], str | None] = {}

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict]:
        key = (args.typ, args.name)
        # The real engine refuses two resources of one type and name; the mock engine does not.
        if key in self._seen:
            raise DuplicateResourceError(f"duplicate resource name: {args.typ} '{args.name}'")
        self._seen.add(key)
        parent = self._pending_parents.pop(key, None)
        self.resources.append(RecordedResource(args.typ, args.name, parent, _plain(args.inputs), bool(args.custom)))
        n = next(self._counter)
        state = dict(args.inputs)
        for prop, template in _COMPUTED.get(args.typ, {}).items():
            state.setdefault(prop, _fill(template, n, args.name))
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
        return super().RegisterResource(request)


def _fill(template: Any, n: int, name: str) -> Any:
    if isinstance(template, str):
        return template.format(n=n, name=name)
    if isinstance(template, list):
        return [_fill(t, n, name) for t in template]
    if isinstance(template, dict):
        return {k: _fill(v, n, name) for k, v in template.items()}
    return template


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


def run(program: Callable[[], None], config: dict[str, Any], *, stack: str, secret_keys: list[str] | None = None,
        preview: bool = False) -> OfflineResult:
    """Run ``program`` with ``config`` (``kumo:deployment`` etc.; structured values are JSON-encoded)."""
    recorder = _Recorder()
    _settings.ROOT.set(None)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    pulumi.runtime.set_mocks(recorder, project=PROJECT, stack=stack, preview=preview,
                             monitor=_ParentRecordingMonitor(recorder))
    encoded = {k: v if isinstance(v, str) else json.dumps(v) for k, v in config.items()}
    pulumi.runtime.set_all_config(encoded, secret_keys or [])
    outputs: dict[str, Any] = {}

    def body() -> None:
        program()
        root = _settings.get_root_resource()
        exported = dict(getattr(root, "outputs", {}))
        resolved = _sync_await(pulumi.Output.from_input(exported).future(with_unknowns=True))
        if resolved is not None:
            outputs.update(_plain(resolved))

    try:
        _sync_await(run_pulumi_func(body))
    finally:
        _settings.SETTINGS.rpc_manager.clear()
        loop.close()
    return OfflineResult(stack, recorder.resources, outputs, recorder.invokes)

"""Deployment targets as plug-ins: one package per target, one registry, no branch on a name.

A target is where KumoMTA nodes run: a cloud kumo-infra creates machines on (aws, azure,
gcp) or machines that already exist (ssh). Each package ``kumo_infra/targets/<name>/``
declares one :class:`Target` named ``TARGET`` holding every fact that differs between
targets; the core (config, sizing, secrets, port 25, the bootstrap renderer, the offline
engine, the CLI) asks :func:`get` and never compares a target's name. A new target is a new
package and one line in :data:`PACKAGES`.

Pure: no Pulumi import. The component class is named as ``module:Class`` and imported only
when a program builds it, so ``kumo-infra validate`` never loads a cloud SDK.
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional

if TYPE_CHECKING:
    from pydantic import BaseModel

    from ..config import Deployment
    from ..secretspec import SecretSpec
    from ..sizing import Plan

# The registry: every target kumo-infra knows, in the order the CLI lists them.
PACKAGES = ("aws", "azure", "gcp", "ssh")

# What an offline answer holds where only the target could know the value (an image name, an id).
OFFLINE_PLACEHOLDER = "(placeholder)"


@dataclass(frozen=True)
class SecretStore:
    """Where the target keeps the deployment's secrets and how a node reads them.

    ``backend`` names the node-side fetch in kumo-fetch-secret's backend table (the reference's
    prefix); ``delivered`` means the component writes each secret onto the node itself (the
    ssh target, over the SSH connection) and the node fetches nothing.
    """

    title: str  # "AWS Secrets Manager"
    backend: str
    store_name: Callable[["Deployment", "SecretSpec"], str]  # the secret's name in the store
    reference: Callable[["Deployment", "SecretSpec"], str]  # "<backend>:..." the node fetches by
    read_command: Callable[["Deployment", "SecretSpec"], str]  # prints the value, operator's credentials


@dataclass(frozen=True)
class Port25Facts:
    """What the target allows on outbound port 25, and what the operator must do about it."""

    # (possible, why not): whether direct delivery can ever work here.
    direct_allowed: Callable[["Deployment"], tuple[bool, str]]
    # Adds the target's own keys (situation, operator_must, documentation, request ...) to the
    # report port25.report builds; receives (deployment, plan, hostnames, ips, report).
    describe: Callable[["Deployment", "Plan", list[str], list[str], dict[str, Any]], None]
    # True when outbound: auto is not allowed (kumo-infra cannot know the network).
    must_be_stated: bool = False
    # Lines ``kumo-infra port25`` prints for the target's own keys of the report (after "you must:").
    format_extra: Callable[[dict[str, Any]], list[str]] = lambda report: []


@dataclass(frozen=True)
class Target:
    name: str  # the value of kumo:deployment.cloud, and the key of its config section
    title: str  # "Amazon Web Services (EC2)"
    creates: str  # one line for the README's Targets table: what the component creates
    # The config section model (``kumo:deployment.<name>``) and whether it must be present.
    section: type["BaseModel"]
    section_required: bool
    # Cross-field rules of the section: (key path below kumo:deployment, message).
    check: Callable[["Deployment"], list[tuple[str, str]]]
    # The instance catalog's file name in kumo_infra/catalog/ ("aws.toml"); None: machines exist
    # already, and sizing.plan_without_catalog states what each must at least have.
    catalog: Optional[str]
    # The OS image per OS key (oses.SUPPORTED); None: the machine brings its own OS, any supported one.
    images: Optional[dict[str, Any]]
    port25: Port25Facts
    # Whether kumo-infra sets the PTR, given the deployment (after the forward record exists).
    sets_ptr: Callable[["Deployment"], bool]
    secrets: SecretStore
    # Exact device paths a block spool appears as on the target's machines, called as
    # (deployment, spool_storage, volume_id): volume_id when the component knows it (already checked
    # as letters, digits and hyphens by the caller); [] for a spool that is not "block". The
    # bootstrap reads them from its settings (KUMO_SPOOL_DEVICE_PATHS), never a pattern.
    spool_device_paths: Callable[["Deployment", str, Optional[str]], list[str]]
    # Stable names of local NVMe instance storage (globs, for the bootstrap's settings), tried
    # before a scan of unused NVMe; () when the target has none.
    nvme_device_globs: tuple[str, ...]
    # An existing network is named by both ids: (given, needed) pairs in the section.
    network_pairs: tuple[tuple[str, str], ...]
    # The section key naming the DNS zone kumo-infra writes forward records into; None: none.
    dns_zone_field: Optional[str]
    component: str  # "module:Class" of the Pulumi component
    # Offline engine answers: computed outputs by resource type, data-source look-ups by token.
    offline_computed: dict[str, dict[str, Any]] = field(default_factory=dict)
    offline_invokes: dict[str, dict[str, Any]] = field(default_factory=dict)
    # True when the public address exists only once the machine does (AWS Elastic IPs are
    # associated to the instance): values naming the addresses cannot gate the machine.
    address_after_machine: bool = False
    # A note for the api output on how the operator reads the API password from here.
    api_read_note: str = ""
    # Whether kumo:deployment.region means something here (a cloud's region). The model takes it
    # as optional; Deployment.check requires it, naming kumo:deployment.region, where this is True.
    needs_region: bool = True
    # The target caps internet-bound traffic of machines below ``internet_cap_below_vcpu`` vCPUs
    # at this many Gbps whatever their NIC (AWS: 5 Gbps through an internet gateway under 32
    # vCPUs); sizing.sustained_gbps applies it. None: no such cap.
    internet_cap_gbps: Optional[float] = None
    internet_cap_below_vcpu: int = 0
    # The node count the target dictates (ssh: one node per configured host), or None: the
    # planner decides, or kumo:deployment.nodes does. stackconfig.workload_for reads it.
    node_count: Optional[Callable[["Deployment"], int]] = None
    # A small valid kumo:deployment for this target (as a stack file's value): the contract tests
    # (tests/test_targets.py) run every target's facts on it, so a new target is tested by registering.
    example: dict[str, Any] = field(default_factory=dict)
    # Secret stack config keys the target's component takes, {component argument: config key}
    # (ssh: {"ssh_private_key": "kumo:sshPrivateKey"}): the program passes each one set as a
    # Pulumi secret; stackconfig accepts them only encrypted and warns when one is unset.
    secret_config: dict[str, str] = field(default_factory=dict)
    # What the operator should know about a valid deployment here (stackconfig.warnings_for adds
    # them; each names its key path).
    warnings: Callable[["Deployment"], list[str]] = lambda deployment: []
    # The nodes' hostnames when the target names its machines itself (ssh: each host's own
    # hostname, if given), else None: Deployment.node_hostname numbers kumo:deployment.hostname.
    node_hostnames: Optional[Callable[["Deployment"], list[str]]] = None
    # Where the spool lives when the target decides it (ssh: "block" on the disk each host names,
    # "directory" on the OS disk without one), else None: spool.storage, or the profile's default.
    spool_storage: Optional[Callable[["Deployment"], str]] = None
    # What node ``index`` receives, as ``kumo-infra render`` prints it and the component sends it
    # (ssh: the installer script), given (deployment, plan, index); None: the cloud-config user data.
    render: Optional[Callable[["Deployment", "Plan", int], str]] = None
    # How ``kumo-infra ci smoke`` reads a node's console (its boot log) without SSH: "module:function",
    # the function taking the Deployment and returning a kumo_infra.smoke.ConsoleReader. None: the
    # target has no console to read (existing machines: the installer's result is pulumi up's output).
    console: Optional[str] = None
    # What the cloud keeps after a destroy of an ephemeral stack, and how to remove it at once:
    # "module:function", the function taking the Deployment and returning the argument vectors
    # kumo_infra.ephemeral runs after the destroy (Azure: purge the soft-deleted Key Vault).
    # None: a destroy leaves nothing.
    after_destroy: Optional[str] = None
    # The managed Redis kumo-infra creates for a fleet's shared throttles on this target (a title, like
    # "Amazon ElastiCache (Redis OSS)"), or None: the target has none, and a deployment of several
    # nodes must name an existing one (kumo:deployment.fleet.redis_url).
    managed_redis: Optional[str] = None
    # The Pulumi type token of the resource that IS a node's machine (aws:ec2/instance:Instance):
    # `kumo-infra roll` replaces exactly that resource of one node at a time. None: nothing to replace.
    machine_type: Optional[str] = None

    def image_for(self, os_key: str) -> Any:
        """The image of ``os_key`` on this target; None when it has none (or the target takes
        machines as they are: ``images`` None)."""
        return None if self.images is None else self.images.get(os_key)

    def os_names(self, supported: Iterable[str]) -> list[str]:
        """The OS keys of ``supported`` this target can run: every one when it has no images."""
        if self.images is None:
            return list(supported)
        return [k for k in supported if self.images.get(k) is not None]

    def component_class(self) -> type:
        return resolve(self.component)

    def console_reader(self, deployment: "Deployment") -> Any:
        """A kumo_infra.smoke.ConsoleReader for ``deployment``'s nodes, or None (no console)."""
        return None if self.console is None else resolve(self.console)(deployment)

    def after_destroy_commands(self, deployment: "Deployment") -> list[tuple[str, ...]]:
        """The argument vectors that remove what a destroy of ``deployment`` leaves (none: [])."""
        return [] if self.after_destroy is None else [tuple(argv) for argv in resolve(self.after_destroy)(deployment)]


def resolve(spec: str) -> Any:
    """The object a "module:name" string names, imported only now (a cloud SDK loads only when used)."""
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def ptr_after_forward_record(d: "Deployment") -> bool:
    """The PTR policy of a target whose provider checks the forward record when the PTR is set:
    set it when kumo-infra creates that record in the same run (dns.zone) or it already exists."""
    return bool(d.dns.zone) or d.dns.forward_records_exist


class UnknownTarget(KeyError):
    """A target name no package declares; the message names the known ones."""

    def __str__(self) -> str:  # KeyError would show the message quoted, as a key
        return str(self.args[0]) if self.args else ""


@functools.cache
def registry() -> dict[str, Target]:
    """Every target, by name (imports each package's declaration once)."""
    found = {}
    for package in PACKAGES:
        target = importlib.import_module(f"{__name__}.{package}").TARGET
        if target.name != package:
            raise RuntimeError(f"kumo_infra.targets.{package} declares target {target.name!r}")
        found[package] = target
    return found


def names() -> tuple[str, ...]:
    return PACKAGES


def get(name: str) -> Target:
    """The target called ``name``; UnknownTarget (naming the known ones) otherwise."""
    try:
        return registry()[name]
    except KeyError:
        raise UnknownTarget(f"unknown target {name!r}; one of {', '.join(PACKAGES)}") from None

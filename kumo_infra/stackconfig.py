"""Reading a stack: a ``Pulumi.<stack>.yaml`` file, or the config Pulumi hands a running program.

Both paths end in ``StackConfig``: the validated deployment plus which secrets
are set. Secret values never pass through here when read from a file (they are
ciphertext there); the Pulumi program reads them itself as secrets.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from . import catalog, sizing, targets
from .config import REDIS_PASSWORD_KEY, RELAY_PASSWORD_KEY, ROOT, Deployment, parse_deployment
from .errors import ConfigError, Problem, shown

# The secrets every target's component takes, {component argument: config key}: the relay's
# password (relay mode) and the password of the fleet's own Redis (fleet.redis_url).
CORE_SECRETS = {"relay_password": RELAY_PASSWORD_KEY, "redis_password": REDIS_PASSWORD_KEY}
# Every key kumo-infra reads from the ``kumo`` namespace; anything else there is a typo. The
# secret ones: the core's, and those a target's component takes (Target.secret_config).
SECRET_KEYS = (*CORE_SECRETS.values(), *sorted({key for target in targets.registry().values()
                                                for key in target.secret_config.values()} - set(CORE_SECRETS.values())))
KNOWN_KEYS = (ROOT, *SECRET_KEYS)
# Where an ephemeral stack (kumo_infra.ephemeral) takes each secret key's value from:
# KUMO_SECRET_<KEY> in the environment; kumo-infra keeps these from every process it starts.
SECRET_ENV_PREFIX = "KUMO_SECRET_"


def without_stack_secrets(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` without the KUMO_SECRET_* variables: what a process kumo-infra starts may see."""
    return {key: value for key, value in env.items() if not key.startswith(SECRET_ENV_PREFIX)}


@dataclass(frozen=True)
class StackConfig:
    stack: str
    deployment: Deployment
    plan: sizing.Plan
    secrets_set: frozenset[str] = field(default_factory=frozenset)
    warnings: tuple[str, ...] = ()
    # The config mapping as read (secrets still {secure: ...}): what the Pulumi program gets.
    values: dict[str, Any] = field(default_factory=dict)


def project_root() -> Path:
    """The directory holding Pulumi.yaml: the working directory if it has one, else this checkout."""
    cwd = Path.cwd()
    if (cwd / "Pulumi.yaml").exists():
        return cwd
    return Path(__file__).resolve().parent.parent


def stack_path(stack: str) -> Path:
    # Pulumi's stack names: letters, digits, '-', '_' and '.'; not starting with '.', so never a path.
    if not re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}", stack, re.ASCII):
        raise ConfigError(Problem("--stack", f"{shown(stack)} is not a stack name (letters, digits, '-', '_' and "
                                             "'.', like aws-dev)"))
    path = project_root() / "stacks" / f"Pulumi.{stack}.yaml"
    if not path.exists():
        known = sorted(p.name[len("Pulumi."):-len(".yaml")] for p in path.parent.glob("Pulumi.*.yaml"))
        raise ConfigError(Problem("--stack", f"no stack file {path}; known stacks: {', '.join(known) or 'none'}"))
    return path


def read_values(path: Path | str) -> dict[str, Any]:
    """The ``config:`` mapping of a Pulumi stack file."""
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(Problem("--config", f"file not found: {path}")) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(Problem("--config", f"cannot read {path}: {exc}")) from None
    except yaml.YAMLError as exc:
        raise ConfigError(Problem(str(path), f"is not valid YAML: {exc}")) from None
    except RecursionError:  # PyYAML composes nested collections recursively
        raise ConfigError(Problem(str(path), "is nested too deeply to be a stack file")) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("config"), dict):
        raise ConfigError(Problem(str(path), "must be a Pulumi stack file with a top-level 'config:' mapping"))
    return doc["config"]


def load_file(path: Path | str, stack: str | None = None) -> StackConfig:
    path = Path(path)
    name = stack or path.name.removeprefix("Pulumi.").removesuffix(".yaml")
    return from_values(name, read_values(path))


def from_values(stack: str, values: dict[str, Any]) -> StackConfig:
    """Validate the ``kumo:`` keys of a stack's config (as in the file: secrets as {secure: ...})."""
    problems: list[Problem] = []
    for key in values:
        if not isinstance(key, str):
            problems.append(Problem(f"config.{key!r}", "a config key must be a string (like kumo:deployment)"))
        elif key.startswith("kumo:") and key not in KNOWN_KEYS:
            problems.append(Problem(key, f"unknown key; kumo-infra reads {', '.join(KNOWN_KEYS)}"))
    secrets = set()
    for key in SECRET_KEYS:
        if key not in values:
            continue
        value = values[key]
        if isinstance(value, dict) and set(value) == {"secure"}:
            secrets.add(key)
        else:
            problems.append(Problem(key, f"must be stored encrypted: pulumi config set --secret {key} ..."))
    if ROOT not in values:
        problems.append(Problem(ROOT, "required key is missing"))
    deployment = None
    try:
        deployment = parse_deployment(values.get(ROOT)) if ROOT in values else None
    except ConfigError as exc:
        problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems)
    assert deployment is not None
    plan = plan_for(deployment)
    warnings = warnings_for(deployment) + plan.warnings
    for key in needed_secret_keys(deployment):
        # Not an error here: stack files are often validated before their secrets are set.
        # The component refuses to deploy without any of them.
        if key not in secrets:
            source = "" if key in CORE_SECRETS.values() else " < FILE"
            warnings.append(f"{key} is not set; before pulumi up run: pulumi config set --secret {key}{source}")
    return StackConfig(stack, deployment, plan, frozenset(secrets), tuple(warnings), values)


def needs_relay_password(deployment: Deployment) -> bool:
    return deployment.outbound_mode == "relay"


def needs_redis_password(deployment: Deployment) -> bool:
    """A fleet sharing its throttles through the operator's own Redis (fleet.redis_url) logs in to it."""
    from . import fleet  # fleet reads the plan from here

    return fleet.redis_source(deployment) == "external"


def needed_secret_keys(deployment: Deployment) -> list[str]:
    """The secret config keys ``deployment`` cannot be deployed without: the core's, then the target's own."""
    core = [key for key, needed in ((RELAY_PASSWORD_KEY, needs_relay_password(deployment)),
                                    (REDIS_PASSWORD_KEY, needs_redis_password(deployment))) if needed]
    return core + [key for key in deployment.target.secret_config.values() if key not in core]


def warnings_for(deployment: Deployment) -> list[str]:
    warnings = []
    if deployment.os_spec.warning:
        warnings.append(f"{ROOT}.os: {deployment.os_spec.warning}")
    if deployment.network.admin_cidrs:
        warnings.append(f"{ROOT}.network.admin_cidrs is deprecated: it sets both network.ssh_cidrs (SSH) and "
                        "network.api_cidrs (the KumoMTA HTTP API); write those keys instead")
    if deployment.kumomta.repo_key_fingerprint is None:
        warnings.append(f"{ROOT}.kumomta.repo_key_fingerprint is unset: KumoMTA publishes no fingerprint of its "
                        "signing key, so each node trusts the key served over https on first use and pins it "
                        "(status.json: repo_key_fingerprint); set it to that fingerprint to pin the whole fleet")
    if deployment.fleet.redis_url and not _several_nodes(deployment):
        warnings.append(f"{ROOT}.fleet.redis_url is unused: a single node keeps its throttles itself and connects to "
                        "no Redis; remove it (and kumo:redisPassword), or keep it for when the deployment grows")
    return warnings + deployment.target.warnings(deployment)


def _several_nodes(deployment: Deployment) -> bool:
    from . import fleet  # fleet reads the plan from here

    try:
        return fleet.is_fleet(deployment)
    except ConfigError:  # no plan: its own error is reported where the plan is made
        return False


def workload_for(deployment: Deployment) -> sizing.Workload:
    node_count = deployment.target.node_count
    return sizing.Workload(
        cloud=deployment.cloud,
        messages_per_hour=deployment.sizing.messages_per_hour,
        avg_message_kb=deployment.sizing.avg_message_kb,
        profile=deployment.sizing.profile,
        storage=deployment.spool_storage,
        headroom=deployment.sizing.headroom,
        hold_hours=deployment.spool.hold_hours,
        log_retention_days=deployment.logs.retention_days,
        arches=deployment.os_spec.arches,
        instance_type=deployment.sizing.instance_type,
        nodes=node_count(deployment) if node_count else deployment.nodes,
        spool_size_gb=deployment.spool.size_gb,
        external_redis=deployment.fleet.redis_url is not None,
    )


def plan_for(deployment: Deployment) -> sizing.Plan:
    """The sizing plan of a validated deployment (raises ConfigError when nothing fits): chosen from the
    target's catalog, or, for machines that exist already, what each must at least have."""
    if deployment.target.catalog is None:
        return sizing.plan_without_catalog(workload_for(deployment))
    return sizing.plan(workload_for(deployment), catalog.load(deployment.cloud))

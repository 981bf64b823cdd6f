"""Ephemeral stacks: bring a real deployment up from a base stack file, use it, always destroy it.

Built on Pulumi's Automation API (``pulumi.automation``): a ``LocalWorkspace`` in a temporary
directory with project ``kumo-infra-ci`` (not ``kumo-infra``, the project of the production
stacks: ``stack ls`` lists one project's stacks, so the sweep never even sees those), the
program run inline (``kumo_infra.program.run``), so this works from an installed wheel anywhere,
without this repository's ``Pulumi.yaml``. The backend and its credentials come from the
environment as for ``pulumi`` itself (PULUMI_BACKEND_URL, PULUMI_ACCESS_TOKEN,
PULUMI_CONFIG_PASSPHRASE), checked before the first command (:func:`backend_problems`); give CI
a backend (or Pulumi organization) of its own. The CLI runs through
:class:`InterruptiblePulumiCommand`: an interrupt lets it finish what is in flight.

From a base stack file, :func:`prepare` derives, before anything exists:

- a stack name ``<prefix>-<run id>``: the run id from the CI environment (GitHub Actions:
  GITHUB_RUN_ID-GITHUB_RUN_ATTEMPT; GitLab: CI_PIPELINE_ID-CI_JOB_ID), given, or random;
- a ``kumo:deployment.name`` of the base's name and a hash of the stack name, so the secret
  store names and every cloud resource name derived from it are the run's own;
- ``kumo:deployment.lifecycle.ephemeral: true`` (a base with ``protect: true`` is refused);
- the base's non-secret config, every namespace; its secrets come from environment variables
  ``KUMO_SECRET_<KEY>`` (kumo:relayPassword: KUMO_SECRET_RELAY_PASSWORD), since a base's
  ``{secure: ...}`` values are encrypted for that stack alone. They are handed to the inline
  program in this process (:func:`inline_program`) and never set as stack config: the Automation
  API's ``config set`` would put them on the ``pulumi`` command line.

Every problem with that input is a ConfigError (exit 2) raised before the first ``pulumi``
command. The mark sweep looks for: stack tags ``kumo-infra:ephemeral=true``,
``kumo-infra:created-at`` (UTC), ``kumo-infra:ttl``, ``kumo-infra:ci-run``. DIY backends (file://,
s3://, gs://, azblob://) hold stack tags only since Pulumi CLI v3.211.0 (pulumi/pulumi
pkg/backend/diy/stack_tags.go, #19882: a ``<stack>.pulumi-tags`` file beside the checkpoint);
before, ``UpdateStackTags`` answered "stack tags not supported in diy mode"
(pkg/backend/diy/backend.go) and ``stack tag ls`` printed null. So the same four values are also
stack config under the project's namespace (``kumo-infra:...``), which every backend records with
each update (``stack history --json``: each update's ``config``; pkg/cmd/pulumi/stack/
stack_history.go, and the DIY backend's UpdateInfo{Config: update.Target.Config} in
pkg/backend/diy/backend.go ``apply``): :func:`read_marks` takes the tags when the backend holds
tags (then nothing else: a stack whose tag was removed is no longer ephemeral), else the newest
update that ran with any config. (The stack's config file itself lives only in the temporary
work directory.)

:func:`ephemeral_stack` is the context manager for test suites (and :func:`stack_fixture` the
pytest fixture built on it): the stack is destroyed on success, failure, KeyboardInterrupt and,
in the main thread, SIGTERM (Python runs signal handlers there only: elsewhere a warning says
so), with retries and a refresh between attempts, then removed; then the target's after-destroy
commands run (Azure purges the soft-deleted Key Vault). If the destroy still fails, or the state
holds pending operations (resources Pulumi does not know exist), :class:`DestroyError` names the
stack, what is left, the cloud tags to find it by, and the command that finishes it; the stack
is kept, its state being the record.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence, Union

from pulumi import automation as auto

from .config import ROOT, Deployment, parse_deployment
from .errors import ConfigError, Problem, shown
from .stackconfig import (SECRET_ENV_PREFIX, SECRET_KEYS, StackConfig, from_values, load_file, warnings_for,
                          without_stack_secrets)

PROJECT = "kumo-infra-ci"

# The marks, as stack tags and as config of the project's namespace (the same names).
MARK = "kumo-infra:ephemeral"
CREATED_AT = "kumo-infra:created-at"
TTL = "kumo-infra:ttl"
CI_RUN = "kumo-infra:ci-run"
MARK_KEYS = (MARK, CREATED_AT, TTL, CI_RUN)

DEFAULT_TTL = timedelta(hours=3)
# A longer TTL is a stack nobody sweeps: bounded for ci up, and for marks set by hand.
MAX_TTL = timedelta(days=7)
DEFAULT_RETRIES = 3
MAX_RETRIES = 10
DEFAULT_BACKOFF_S = 15.0
MAX_BACKOFF_S = 120.0
# How long an interrupted pulumi may take to finish the operations it has in flight.
DEFAULT_INTERRUPT_GRACE_S = 120.0
# A created-at further ahead of the sweeper's clock is no clock skew: a mark to look at.
CLOCK_SKEW = timedelta(hours=1)


# Pulumi's stack names (sdk/go/common/tokens/stack_name.go ParseStackName): at most 100 of these.
_STACK_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,100}", re.ASCII)
PREFIX_MAX = 60
RUN_ID_MAX = 39  # with the '-', a name of at most 100 characters
_RUN_ID_RE = re.compile(rf"[A-Za-z0-9][A-Za-z0-9_.-]{{0,{RUN_ID_MAX - 1}}}", re.ASCII)
# kumo:deployment.name (config._NAME_RE): 2-20 characters; the hash keeps 13 of the base name.
_NAME_HASH_CHARS = 6
_NAME_MAX = 20
# Stack tag values: at most 256 characters (pkg/util/validation/stack.go ValidateStackTags).
_TAG_VALUE_MAX = 256
_DURATION_RE = re.compile(r"([0-9]{1,6})([smhd])", re.ASCII)
_DURATION_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
# What the CLI answers when the backend cannot hold tags (DIY before v3.211.0).
TAGS_UNSUPPORTED = "stack tags not supported"
# Backends whose stacks' secrets provider defaults to a passphrase (pulumi/pulumi pkg/backend/diy).
DIY_SCHEMES = ("file://", "s3://", "gs://", "azblob://")
PASSPHRASE_VARIABLES = ("PULUMI_CONFIG_PASSPHRASE", "PULUMI_CONFIG_PASSPHRASE_FILE")

# The run id's sources, tried in order: the first variable present names the CI; the others
# of its group are added when set (a re-run attempt is a new stack).
CI_RUN_VARIABLES = (
    ("GITHUB_RUN_ID", "GITHUB_RUN_ATTEMPT"),
    ("CI_PIPELINE_ID", "CI_JOB_ID"),
)

OnOutput = Callable[[str], Any]
Runner = Callable[[Sequence[str]], int]
Base = Union[StackConfig, str, Path]


class EphemeralError(Exception):
    """An operation on an ephemeral stack failed (the CLI exits 1)."""


@dataclass(frozen=True)
class StateLeft:
    """What a stack's state still holds: its resources but the stack itself and its providers
    (URN, type), the operations an interrupted CLI never finished (URN, type, operation), and how
    many resources the state holds in all."""

    resources: list[tuple[str, str]]
    pending: list[tuple[str, str, str]]
    total: int


class DestroyError(EphemeralError):
    """The stack could not be destroyed and removed: it is kept, what it still holds is named."""

    def __init__(self, stack_name: str, left: Optional[StateLeft], cause: str,
                 deployment_name: Optional[str] = None) -> None:
        from .component import EPHEMERAL_TAG

        self.stack_name = stack_name
        self.leftovers = left.resources if left else []
        self.pending = left.pending if left else []
        lines = [f"destroy of stack {stack_name} failed: {cause}"]
        if left is None:
            lines.append(f"the state of {stack_name} could not be read: its resources may still exist")
        if self.pending:
            lines.append(f"pending operations in {stack_name} ({len(self.pending)}): an interrupted pulumi never "
                         "learned whether these exist; the stack is kept, untouched, as their record:")
            lines += [f"  {operation}  {kind}  {urn}" for urn, kind, operation in self.pending]
        if self.leftovers:
            lines.append(f"resources left in {stack_name} ({len(self.leftovers)}):")
            lines += [f"  {kind}  {urn}" for urn, kind in self.leftovers]
        tags = f"{EPHEMERAL_TAG}=true" + (f" and kumo-infra={deployment_name}" if deployment_name else "")
        lines.append(f"find them in the cloud by the tags {tags} (GCP: labels)")
        if self.pending:
            lines.append("delete (or import) what exists, then drop the pending operations with: "
                         + shlex.join(["pulumi", "refresh", "--clear-pending-creates", "--yes", "--stack", stack_name]))
        lines.append(f"finish it with: {finish_command(stack_name)}")
        super().__init__("\n".join(lines))


class LockedError(EphemeralError):
    """Another update holds the stack's lock: a job still running, or one killed that left it."""

    def __init__(self, stack_name: str, cause: str) -> None:
        self.stack_name = stack_name
        super().__init__(f"stack {stack_name} is locked by another update ({cause}); if no job runs it any more: "
                         f"{shlex.join(['pulumi', 'cancel', '--yes', '--stack', stack_name])}, then "
                         f"{finish_command(stack_name)}")


class Terminated(KeyboardInterrupt):
    """SIGTERM while an ephemeral stack lives: raised like an interrupt, so whatever cleans up
    on Ctrl-C (this module's destroy, pytest's teardown) also runs when a CI job is cancelled."""


def finish_command(stack_name: str) -> str:
    return shlex.join(["kumo-infra", "ci", "destroy", "--stack-name", stack_name])


# -- names and durations (pure) ---------------------------------------------------------------

def parse_duration(text: str) -> timedelta:
    """'90m', '3h', '2d' (also seconds: '30s'); ValueError naming the form otherwise."""
    match = _DURATION_RE.fullmatch(text.strip()) if isinstance(text, str) else None
    if not match:
        raise ValueError(f"{shown(text)} is not a duration: a whole number and a unit s, m, h or d (like 90m, 3h, 2d)")
    return timedelta(**{_DURATION_UNITS[match.group(2)]: int(match.group(1))})


def format_duration(value: timedelta) -> str:
    """The shortest exact form parse_duration reads back ('3h', '90m')."""
    seconds = int(value.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def secret_env_var(key: str) -> str:
    """The variable holding a secret config key's value: kumo:relayPassword -> KUMO_SECRET_RELAY_PASSWORD."""
    name = key.partition(":")[2]
    snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name)
    return SECRET_ENV_PREFIX + re.sub(r"[^A-Za-z0-9]", "_", snake).upper()


def stack_name_for(prefix: str, run_id: str) -> str:
    return f"{prefix}-{run_id}"


def deployment_name_for(base_name: str, stack_name: str) -> str:
    """The base's kumo:deployment.name with a hash of the stack name: 2-20 characters of
    [a-z0-9-], a letter first (the base name's), and different for every stack name."""
    digest = hashlib.sha256(stack_name.encode()).hexdigest()[:_NAME_HASH_CHARS]
    return f"{base_name[:_NAME_MAX - _NAME_HASH_CHARS - 1].rstrip('-')}-{digest}"


def default_prefix(base_stack: str) -> str:
    """ci-<base stack name>, cut to a valid prefix."""
    return ("ci-" + re.sub(r"[^A-Za-z0-9_.-]", "-", base_stack))[:PREFIX_MAX]


def run_id_from_env(env: Mapping[str, str]) -> Optional[tuple[str, str]]:
    """(run id, the variables it came from) from the CI environment, or None outside CI."""
    for group in CI_RUN_VARIABLES:
        if env.get(group[0]):
            used = [name for name in group if env.get(name)]
            return "-".join(env[name] for name in used), "+".join(used)
    return None


def ci_run_from_env(env: Mapping[str, str], run_id: str) -> str:
    """Where the run can be found (its URL on GitHub and GitLab), for the ci-run tag."""
    if env.get("GITHUB_RUN_ID") and env.get("GITHUB_REPOSITORY"):
        url = (f"{env.get('GITHUB_SERVER_URL') or 'https://github.com'}/{env['GITHUB_REPOSITORY']}/actions/runs/"
               f"{env['GITHUB_RUN_ID']}")
        if env.get("GITHUB_RUN_ATTEMPT"):
            url += f"/attempts/{env['GITHUB_RUN_ATTEMPT']}"
    else:
        url = env.get("CI_JOB_URL") or run_id
    # A tag value is data for people: printable ASCII only, within the backend's limit.
    return url if len(url) <= _TAG_VALUE_MAX and url.isascii() and url.isprintable() else run_id


def utc_text(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- the plan of an ephemeral stack -----------------------------------------------------------

@dataclass(frozen=True)
class EphemeralSpec:
    """Everything an ephemeral stack will be, computed before any command runs."""

    stack_name: str
    base_stack: str
    deployment: Deployment
    # Config as `pulumi config set-all --plaintext` takes it (structured values as JSON), marks included.
    config: dict[str, str]
    tags: dict[str, str]
    warnings: tuple[str, ...] = ()
    # Secret config values by key, from KUMO_SECRET_* variables: given to the inline program only.
    secrets: dict[str, str] = field(default_factory=dict, repr=False)


def _secure_paths(value: Any, path: str) -> list[str]:
    """Key paths of the {secure: ...} values inside ``value`` (Pulumi allows them nested, --path)."""
    if isinstance(value, dict):
        if set(value) == {"secure"}:
            return [path]
        return [p for k, v in value.items() for p in _secure_paths(v, f"{path}.{k}")]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _secure_paths(v, f"{path}[{i}]")]
    return []


def prepare(base: Base, *, prefix: Optional[str] = None, run_id: Optional[str] = None, ttl: timedelta = DEFAULT_TTL,
            env: Optional[Mapping[str, str]] = None, now: Optional[datetime] = None) -> EphemeralSpec:
    """The ephemeral stack made from ``base`` (a StackConfig, or a stack file's path).

    Raises ConfigError naming every problem (flag, variable or key, and the fix); nothing exists yet.
    """
    from .planview import stack_config_values

    env = os.environ if env is None else env
    base = base if isinstance(base, StackConfig) else load_file(base)
    problems: list[Problem] = []

    if base.deployment.lifecycle.protect:
        problems.append(Problem(f"{ROOT}.lifecycle.protect", "is true in the base stack: an ephemeral stack is "
                                                              "destroyed by design; use a base with protect: false"))
    if ttl <= timedelta(0) or ttl > MAX_TTL:
        problems.append(Problem("--ttl", f"must be longer than zero and at most {format_duration(MAX_TTL)} (like 3h): "
                                         "a stack living longer is no test stack"))
    if prefix is None:
        prefix = default_prefix(base.stack)
    elif not (len(prefix) <= PREFIX_MAX and _STACK_NAME_RE.fullmatch(prefix)):
        problems.append(Problem("--prefix", f"{shown(prefix)} is not a stack name prefix: at most {PREFIX_MAX} "
                                            "letters, digits, '-', '_' and '.'"))
    if run_id is not None:
        source = "--run-id"
    else:
        found = run_id_from_env(env)
        run_id, source = found if found else (secrets.token_hex(4), "")
    if not _RUN_ID_RE.fullmatch(run_id):
        problems.append(Problem(source, f"{shown(run_id)} is not a run id: at most {RUN_ID_MAX} letters, digits, "
                                        "'-', '_' and '.', a letter or digit first (or give --run-id)"))

    wanted = set(stack_config_values(base)[1])
    config: dict[str, str] = {}
    for key, value in base.values.items():
        if key in SECRET_KEYS:
            continue  # from the environment below
        if key in MARK_KEYS or key.startswith("kumo-infra:"):
            problems.append(Problem(key, "the kumo-infra: namespace holds an ephemeral stack's marks; remove the key "
                                         "from the base stack"))
        elif "=" in key or key[:1] in "\"'":
            # `config set-all` splits KEY=VALUE at the first '=' (pkg/cmd/pulumi/config/io.go parseKeyValuePair).
            problems.append(Problem(key, "a config key with '=' or a leading quote cannot be copied"))
        for path in _secure_paths(value, key):
            problems.append(Problem(path, "is a secret of the base stack, encrypted for that stack alone: an "
                                          "ephemeral stack cannot copy it. Drop it from the base, or give the "
                                          "provider its value from the CI environment (its own variables)"))
        if not isinstance(value, str):
            value = json.dumps(value)
        config[key] = value
    secret_values: dict[str, str] = {}
    for key in SECRET_KEYS:
        variable = secret_env_var(key)
        if env.get(variable):
            secret_values[key] = env[variable]
        elif key in wanted:
            problems.append(Problem(variable, f"is not set: it holds {key} for the ephemeral stack (the base's "
                                              "value is encrypted for the base alone); set it from your CI's "
                                              "secret store"))
    if problems:
        raise ConfigError(problems)

    stack_name = stack_name_for(prefix, run_id)
    raw = copy.deepcopy(base.values[ROOT])
    raw["name"] = deployment_name_for(base.deployment.name, stack_name)
    raw.setdefault("lifecycle", {})["ephemeral"] = True
    ephemeral = from_values(stack_name, {ROOT: raw})  # every rule again, on what will be deployed
    config[ROOT] = json.dumps(raw)

    created = utc_text(now or datetime.now(timezone.utc))
    marks = {MARK: "true", CREATED_AT: created, TTL: format_duration(ttl), CI_RUN: ci_run_from_env(env, run_id)}
    warnings = warnings_for(ephemeral.deployment) + list(ephemeral.plan.warnings)
    if ephemeral.deployment.dns.zone:
        warnings.append(f"{ROOT}.dns.zone is set: every ephemeral stack of this base writes the same DNS records; "
                        "runs at the same time overwrite each other's (give CI a base without a zone, or its own)")
    return EphemeralSpec(stack_name, base.stack, ephemeral.deployment, {**config, **marks}, marks, tuple(warnings),
                         secret_values)


def inline_program(secret_values: Mapping[str, str]) -> Callable[[], None]:
    """kumo_infra.program.run, with the secrets set as config inside this process only.

    The Automation API's config commands pass values as `pulumi config set ... -- VALUE`
    (pulumi/automation/_local_workspace.py set_config, set_all_config): on a command line any
    local user can read. Here they go from this process's environment straight into the
    program's config map, where ``Config.get_secret`` wraps them as secrets as it would a
    stack's encrypted value. A destroy does not run the program, so it needs none of them.
    """
    import pulumi

    from . import program

    def run() -> None:
        for key, value in secret_values.items():
            pulumi.runtime.set_config(key, value)
        program.run()

    return run


# -- the workspace and the stack's life ----------------------------------------------------------

def child_env(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` without the KUMO_SECRET_* variables: the inline program reads the secrets in this
    process, and no child (pulumi, its plugins and providers, az, aws, gcloud) needs them."""
    return without_stack_secrets(env)


def _credentials(env: Mapping[str, str]) -> dict[str, Any]:
    """What `pulumi login` recorded (PULUMI_HOME or ~/.pulumi, credentials.json), or {}."""
    home = Path(env.get("PULUMI_HOME") or Path.home() / ".pulumi")
    try:
        found = json.loads((home / "credentials.json").read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def backend_problems(env: Mapping[str, str]) -> list[Problem]:
    """What the pulumi CLI will refuse for want of a variable, known before it runs: no backend
    at all (non-interactive, it cannot log in), Pulumi Cloud without a token, or a DIY backend,
    whose stacks encrypt their secrets with a passphrase, without one."""
    credentials = _credentials(env)
    url = env.get("PULUMI_BACKEND_URL") or str(credentials.get("current") or "")
    if not url and not env.get("PULUMI_ACCESS_TOKEN"):
        return [Problem("PULUMI_BACKEND_URL", "is not set, nor PULUMI_ACCESS_TOKEN, and pulumi is logged in nowhere: "
                                              "set PULUMI_BACKEND_URL to the state backend of CI (s3://BUCKET, "
                                              "azblob://CONTAINER, gs://BUCKET, file://DIR), or PULUMI_ACCESS_TOKEN "
                                              "for Pulumi Cloud")]
    if url.startswith(("https://", "http://")) and not env.get("PULUMI_ACCESS_TOKEN") and not (
            credentials.get("accessTokens") or {}).get(url):
        return [Problem("PULUMI_ACCESS_TOKEN", f"is not set and pulumi holds no token for {url}: set it from your "
                                               "CI's secret store")]
    if url.startswith(DIY_SCHEMES) and not any(name in env for name in PASSPHRASE_VARIABLES):
        return [Problem("PULUMI_CONFIG_PASSPHRASE", f"is not set (nor PULUMI_CONFIG_PASSPHRASE_FILE): the stacks of "
                                                    f"{url.split('://')[0]}:// backends encrypt their secrets with a "
                                                    "passphrase; set it from your CI's secret store")]
    return []


def _drain(stream: Any, callback: Optional[OnOutput], lines: list[str]) -> None:
    for line in iter(stream.readline, ""):
        line = line.rstrip()
        if callback:
            callback(line)
        lines.append(line)
    stream.close()


class InterruptiblePulumiCommand(auto.PulumiCommand):
    """The pulumi CLI, stopped the way Pulumi stops cleanly when this process is interrupted.

    PulumiCommand.run (pulumi/automation/_cmd.py) runs the CLI in this process's group and, on a
    KeyboardInterrupt, leaves its ``with Popen``: the pipes close and a CLI in the middle of
    creating resources dies at its next write (SIGPIPE) before recording them. Here the CLI runs
    in a session of its own, so a terminal's Ctrl-C or a CI runner's signal to the group reaches
    this process alone; on an interrupt (KeyboardInterrupt, Terminated) the CLI gets ONE SIGINT,
    Pulumi's own cancel (no new operation starts, those in flight finish and are recorded), its
    output is still read, and this waits up to ``grace_s`` for it (then SIGKILL to its group)
    before the interrupt goes on. No child sees the KUMO_SECRET_* variables."""

    def __init__(self, root: Optional[str] = None, *, grace_s: float = DEFAULT_INTERRUPT_GRACE_S,
                 notice: Optional[OnOutput] = None) -> None:
        # As PulumiCommand.__init__ (pulumi/automation/_cmd.py), with the same version check, but
        # `pulumi version` too runs without the secrets in its environment.
        from pulumi.automation._cmd import _parse_and_validate_pulumi_version
        from pulumi.automation._env import _SKIP_VERSION_CHECK_VAR
        from pulumi.automation._minimum_version import _MINIMUM_VERSION

        self.command = os.path.join(root, "bin", "pulumi") if root else "pulumi"
        self.grace_s = grace_s
        self.notice = notice or to_stderr
        env = {**child_env(os.environ), "PULUMI_SKIP_UPDATE_CHECK": "true"}
        current = subprocess.check_output([self.command, "version"], env=env).decode("utf-8").strip()
        self.version = _parse_and_validate_pulumi_version(
            min_version=_MINIMUM_VERSION, current_version=current.removeprefix("v"),
            opt_out=os.getenv(_SKIP_VERSION_CHECK_VAR) is not None)

    def run(self, args: list[str], cwd: str, additional_env: Mapping[str, str], on_output: Optional[OnOutput] = None,
            on_error: Optional[OnOutput] = None) -> auto.CommandResult:
        from pulumi.automation.errors import create_command_error

        # As PulumiCommand.run: --non-interactive first, before any "--".
        separator = args.index("--") if "--" in args else len(args)
        if "--non-interactive" not in args[:separator]:
            args.insert(0, "--non-interactive")
        env = {**child_env(os.environ), **additional_env, "PULUMI_AUTOMATION_API": "true"}
        if os.path.isabs(self.command):  # the plugins bundled beside it first, as _cmd._fixup_path
            env["PATH"] = os.pathsep.join([os.path.dirname(self.command), env.get("PATH", "")])
        stdout: list[str] = []
        stderr: list[str] = []
        process: Optional[subprocess.Popen] = None
        readers: list[threading.Thread] = []
        try:
            process = subprocess.Popen([self.command, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       cwd=cwd, env=env, encoding="utf-8", start_new_session=True)
            readers = [threading.Thread(target=_drain, args=(process.stdout, on_output, stdout), daemon=True),
                       threading.Thread(target=_drain, args=(process.stderr, on_error, stderr), daemon=True)]
            for reader in readers:
                reader.start()
            for reader in readers:
                reader.join()
            code = process.wait()
        except BaseException:
            if process is not None:
                self._stop(process, readers)
            raise
        result = auto.CommandResult(stdout="\n".join(stdout), stderr="\n".join(stderr), code=code)
        if code != 0:
            raise create_command_error(result)
        return result

    def _stop(self, process: subprocess.Popen, readers: list[threading.Thread]) -> None:
        """One SIGINT, then wait (reading on) until it exits or the grace is over: then SIGKILL."""
        if process.poll() is None:
            self.notice(f"kumo-infra: interrupted: pulumi asked to stop (SIGINT): it finishes the operations in "
                        f"flight and records them; waiting up to {self.grace_s:g}s")
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGINT)
            deadline = time.monotonic() + self.grace_s
            while True:
                try:
                    process.wait(timeout=max(deadline - time.monotonic(), 0))
                    break
                except subprocess.TimeoutExpired:
                    self.notice(f"kumo-infra: pulumi did not stop in {self.grace_s:g}s: killed; what it had in "
                                "flight is left as pending operations")
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
                    break
                except KeyboardInterrupt:  # a second Ctrl-C or SIGTERM: a kill now would orphan resources
                    self.notice("kumo-infra: still waiting for pulumi to finish the operations in flight")
        for reader in readers:
            reader.join(timeout=5)


def installed_pulumi(grace_s: float = DEFAULT_INTERRUPT_GRACE_S,
                     notice: Optional[OnOutput] = None) -> auto.PulumiCommand:
    """The `pulumi` on PATH; a ConfigError (exit 2, nothing created) when there is none, or when
    the environment it will run in lacks what it needs to reach the backend."""
    problems = backend_problems(os.environ)
    if problems:
        raise ConfigError(problems)
    try:
        return InterruptiblePulumiCommand(grace_s=grace_s, notice=notice)
    except FileNotFoundError:
        raise ConfigError(Problem("PATH", "no pulumi command found: install the Pulumi CLI "
                                          "(https://www.pulumi.com/docs/install/) or put it on PATH")) from None
    except (subprocess.CalledProcessError, auto.InvalidVersionError) as exc:
        raise ConfigError(Problem("PATH", f"the pulumi command on PATH is not usable: {exc}")) from None


@contextlib.contextmanager
def workspace(pulumi_command: Optional[auto.PulumiCommand] = None, grace_s: float = DEFAULT_INTERRUPT_GRACE_S,
              notice: Optional[OnOutput] = None) -> Iterator[auto.LocalWorkspace]:
    """A LocalWorkspace of project kumo-infra-ci in a temporary directory, removed afterwards.

    No program is attached: only `up` runs one (inline). Destroy and refresh then run without
    `--client`, as any Pulumi CLI does; with an inline program attached they would need v3.181+
    (pulumi/automation/_stack.py _check_inline_support)."""
    work_dir = tempfile.mkdtemp(prefix="kumo-infra-")
    try:
        command = pulumi_command or installed_pulumi(grace_s, notice)
        yield auto.LocalWorkspace(work_dir=work_dir, pulumi_command=command,
                                  project_settings=auto.ProjectSettings(name=PROJECT, runtime="python"))
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


def create(spec: EphemeralSpec, ws: auto.LocalWorkspace) -> auto.Stack:
    """`stack init` of the spec's name; a name taken already is bad input (another job's stack)."""
    try:
        return auto.Stack.create(spec.stack_name, ws)
    except auto.StackAlreadyExistsError:
        raise ConfigError(Problem("--run-id", f"stack {spec.stack_name} exists already, another job's: give each "
                                              "job its own --prefix or --run-id")) from None


def configure(stack: auto.Stack, spec: EphemeralSpec, on_output: OnOutput) -> None:
    """The mark tags first, right after `stack init` (a stack is never unmarked longer than it
    must be), then the config, marks included."""
    for key, value in spec.tags.items():
        try:
            stack.set_tag(key, value)
        except auto.CommandError as exc:
            if TAGS_UNSUPPORTED not in str(exc):
                raise
            on_output(f"kumo-infra: this backend holds no stack tags (a DIY backend before Pulumi CLI v3.211.0): "
                      f"{stack.name} is marked by its config ({MARK}) alone, which sweep reads from its history")
            break
    stack.set_all_config({key: auto.ConfigValue(value) for key, value in spec.config.items()})


def up(stack: auto.Stack, spec: EphemeralSpec, on_output: OnOutput) -> auto.UpResult:
    try:
        return stack.up(program=inline_program(spec.secrets), on_output=on_output, on_error=on_output)
    except auto.CommandError as exc:
        raise EphemeralError(f"up of stack {stack.name} failed: {tail(exc)}") from None


def tail(exc: BaseException, lines: int = 12) -> str:
    """The end of a CLI error (its stdout was streamed already; the cause is at the end)."""
    text = [line for line in str(exc).splitlines() if line.strip()]
    return "\n".join(text[-lines:])


def run_command(argv: Sequence[str]) -> int:
    """Run one after-destroy command (an argument vector, no shell, no secret variables); its exit code."""
    try:
        return subprocess.run(list(argv), check=False, env=child_env(os.environ)).returncode
    except FileNotFoundError:
        print(f"kumo-infra: {argv[0]}: command not found", file=sys.stderr)
        return 127


def run_plain(stack: auto.Stack, args: list[str]) -> auto.CommandResult:
    """A pulumi command on ``stack`` exactly as given: the Automation API's export and outputs add
    --show-secrets (pulumi/automation/_local_workspace.py export_stack, stack_outputs), which
    decrypts every secret for nothing when only URNs, types or non-secret outputs are read."""
    ws = stack.workspace
    env = {**({"PULUMI_HOME": ws.pulumi_home} if ws.pulumi_home else {}), **ws.env_vars}
    return ws.pulumi_command.run([*args, "--stack", stack.name], ws.work_dir, env)


def plain_outputs(stack: auto.Stack) -> dict[str, Any]:
    """The stack's outputs, a secret one as "[secret]" (`stack output --json` without --show-secrets)."""
    return json.loads(run_plain(stack, ["stack", "output", "--json"]).stdout)


def state_left(stack: auto.Stack) -> StateLeft:
    """What the stack's state holds (`stack export`, no secret decrypted): resources but the
    stack itself and its providers, and the pending operations (DeploymentV3.pending_operations,
    each {resource, type}; sdk/go/common/apitype/core.go OperationV2)."""
    deployment = json.loads(run_plain(stack, ["stack", "export"]).stdout).get("deployment") or {}
    resources = deployment.get("resources") or []
    pending = [((op.get("resource") or {}).get("urn", "?"), (op.get("resource") or {}).get("type", "?"),
                str(op.get("type", "?"))) for op in deployment.get("pending_operations") or []]
    return StateLeft([(r["urn"], r["type"]) for r in resources
                      if r.get("type") != "pulumi:pulumi:Stack"
                      and not str(r.get("type", "")).startswith("pulumi:providers:")], pending, len(resources))


def leftovers(stack: auto.Stack) -> Optional[StateLeft]:
    """state_left, or None when the state cannot be read."""
    try:
        return state_left(stack)
    except (auto.CommandError, ValueError, KeyError, TypeError, AttributeError):
        return None


def destroy(stack: auto.Stack, deployment: Optional[Deployment], *, retries: int = DEFAULT_RETRIES,
            backoff_s: float = DEFAULT_BACKOFF_S, sleep: Callable[[float], Any] = time.sleep,
            runner: Runner = run_command, on_output: Optional[OnOutput] = None, own_run: bool = False) -> None:
    """Destroy ``stack`` (``retries`` attempts, a refresh and a growing pause of at most
    MAX_BACKOFF_S between them), remove it, then run the target's after-destroy commands for
    ``deployment``.

    The stack is kept, and DestroyError raised, when its state holds pending operations (checked
    before the destroy, which would drop them from the state, and again before the removal), when
    the destroy never succeeds, or when resources are left: its state is then the list of what to
    clean. A lock held by another update raises LockedError, unless ``own_run`` (the stack's
    ci-run mark is the caller's run: the lock can only be its own interrupted update's), when
    `pulumi cancel` clears it once."""
    if not 1 <= retries <= MAX_RETRIES:
        raise ValueError(f"retries must be from 1 to {MAX_RETRIES}, not {retries}")
    on_output = on_output or to_stderr
    name = deployment.name if deployment else None
    before = leftovers(stack)
    if before is None or before.pending:
        raise DestroyError(stack.name, before, "its state holds pending operations" if before else
                           "its state could not be read (stack export)", name)
    cause = ""
    cancelled = False
    for attempt in range(1, retries + 1):
        try:
            stack.destroy(on_output=on_output, on_error=on_output)
            break
        except auto.ConcurrentUpdateError as exc:
            if not own_run or cancelled:
                raise LockedError(stack.name, tail(exc, 2)) from None
            on_output(f"kumo-infra: {stack.name} is locked by an update of this same run, interrupted: pulumi cancel")
            try:
                stack.cancel()
            except auto.CommandError as cancel_failed:
                raise LockedError(stack.name, tail(cancel_failed, 2)) from None
            cancelled = True
            try:  # at once: the lock was the trouble, not the cloud
                stack.destroy(on_output=on_output, on_error=on_output)
                break
            except auto.CommandError as again:
                cause = tail(again)
        except auto.CommandError as exc:
            cause = tail(exc)
        on_output(f"kumo-infra: destroy of {stack.name} failed (attempt {attempt} of {retries})")
        if attempt >= retries:
            raise DestroyError(stack.name, leftovers(stack), cause, name)
        sleep(min(backoff_s * 2 ** (attempt - 1), MAX_BACKOFF_S))
        with contextlib.suppress(auto.CommandError):  # the next attempt says what is wrong
            stack.refresh(on_output=on_output, on_error=on_output)
    after = leftovers(stack)
    if after is None or after.pending or after.resources:
        raise DestroyError(stack.name, after, "the destroy finished but the state is not empty", name)
    stack.workspace.remove_stack(stack.name)
    failed = []
    for argv in deployment.target.after_destroy_commands(deployment) if deployment else []:
        on_output(f"kumo-infra: {shlex.join(argv)}")
        if runner(argv) != 0:
            failed.append(shlex.join(argv))
    if failed:
        raise EphemeralError(f"stack {stack.name} is destroyed and removed, but what the cloud keeps after a "
                             "destroy is not: run " + " and ".join(failed))


def is_blank(stack: auto.Stack) -> bool:
    """No update in its history and nothing in its state: a `stack init` and nothing after it."""
    left = state_left(stack)
    return not stack.history(page_size=1, show_secrets=False) and not left.total and not left.pending


def to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# -- marks: what an existing stack says about itself ---------------------------------------------

def _history_config(stack: auto.Stack, key: str) -> Optional[Mapping[str, auto.ConfigValue]]:
    """The config of the newest update that holds ``key`` (secrets not decrypted), or None."""
    for update in stack.history(show_secrets=False):
        if key in update.config:
            return update.config
    return None


def read_marks(stack: auto.Stack) -> dict[str, str]:
    """The stack's kumo-infra marks.

    A backend that holds tags: the tags alone (an operator who removes the mark keeps the stack).
    One without (`stack tag ls` prints null): the config of the newest update that ran with any
    config. A `ci destroy` runs in a work directory without the stack's config file, so its update
    records none and is passed over; any other run of the stack (with a config) decides."""
    tags = stack.workspace.list_tags(stack.name)
    if tags is not None:
        return {key: tags[key] for key in MARK_KEYS if key in tags}
    for update in stack.history(show_secrets=False):
        if update.config:
            return {key: update.config[key].value for key in MARK_KEYS if key in update.config}
    return {}


def last_deployment(stack: auto.Stack) -> Optional[Deployment]:
    """The kumo:deployment of the stack's newest update (the config file stayed with `ci up`)."""
    config = _history_config(stack, ROOT)
    if config is None:
        return None
    try:
        return parse_deployment(json.loads(config[ROOT].value))
    except (ConfigError, ValueError):
        return None


def sweep_decision(marks: Mapping[str, str], now: datetime, older_than: timedelta) -> tuple[bool, str]:
    """(destroy?, why): only a stack marked ephemeral whose TTL (at most MAX_TTL) has passed and
    older than ``older_than``. Marks that cannot be read, or a created-at in the future, leave
    the stack alone, said so."""
    if marks.get(MARK) != "true":
        return False, f"no {MARK}=true mark"
    try:
        created = datetime.fromisoformat(marks.get(CREATED_AT, ""))
        if created.tzinfo is None:
            created = created.replace(tzinfo=timezone.utc)
        ttl = min(parse_duration(marks.get(TTL, "")), MAX_TTL)
        if created > now + CLOCK_SKEW:
            return False, f"marked ephemeral but {CREATED_AT} {marks[CREATED_AT]} is in the future: left for you to judge"
        created_text = utc_text(created)
        expired = now >= created + ttl
        old_enough = now - created >= older_than
    except (ValueError, OverflowError):
        return False, f"marked ephemeral but {CREATED_AT} or {TTL} unreadable: left for you to judge"
    if not expired:
        return False, f"ttl {format_duration(ttl)} not passed (created {created_text})"
    if not old_enough:
        return False, f"younger than --older-than {format_duration(older_than)} (created {created_text})"
    return True, f"created {created_text}, ttl {format_duration(ttl)} passed"


# -- interrupts ------------------------------------------------------------------------------------

class Interrupts:
    """Signals while an ephemeral stack exists, in the main thread only (Python runs handlers
    there; elsewhere ``on_output`` gets a warning that SIGTERM ends the process without a destroy).

    live: SIGTERM raises Terminated (SIGINT is Python's KeyboardInterrupt); deferred (`stack init`
    running): both wait until the stack exists, then are raised where the destroy is certain to
    follow; if the stack never came to exist, the signal is raised again on exit under the
    previous handlers. cleanup (destroying): the first of each is reported and the destroy goes
    on; a second SIGINT abandons it. The previous handlers come back on exit."""

    def __init__(self, stack_name: str, on_output: Optional[OnOutput] = None) -> None:
        self.stack_name = stack_name
        self.on_output = on_output or to_stderr
        self.enabled = threading.current_thread() is threading.main_thread()
        self.previous: dict[int, Any] = {}
        self.pending: Optional[int] = None
        self.noted: set[int] = set()

    def __enter__(self) -> "Interrupts":
        if self.enabled:
            self.previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        else:
            self.on_output(f"warning: {self.stack_name} lives outside the main thread, where Python cannot handle "
                           "SIGTERM: a SIGTERM ends the process without destroying it (the sweep will); have the "
                           "main thread's handler raise instead, like signal.signal(signal.SIGTERM, lambda *_: "
                           "sys.exit(143))")
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        pending, self.pending = self.pending, None
        if pending is not None:
            signal.raise_signal(pending)

    def defer(self) -> None:
        self._install(self._defer, self._defer)

    def live(self) -> None:
        self._install(self.previous.get(signal.SIGINT), self._raise)
        pending, self.pending = self.pending, None
        if pending is not None:
            raise Terminated() if pending == signal.SIGTERM else KeyboardInterrupt()

    def cleanup(self) -> None:
        self._install(self._note, self._note)

    def _install(self, on_int: Any, on_term: Any) -> None:
        if self.enabled:
            signal.signal(signal.SIGINT, on_int if on_int is not None else signal.default_int_handler)
            signal.signal(signal.SIGTERM, on_term)

    def _raise(self, signum: int, frame: Any) -> None:
        raise Terminated()

    def _defer(self, signum: int, frame: Any) -> None:
        self.pending = signum

    def _note(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and signum in self.noted:
            to_stderr(f"kumo-infra: destroy of {self.stack_name} abandoned; finish it with: "
                      f"{finish_command(self.stack_name)}")
            raise KeyboardInterrupt()
        self.noted.add(signum)
        to_stderr(f"kumo-infra: {signal.Signals(signum).name} while destroying {self.stack_name}: the destroy goes "
                  "on" + (" (Ctrl-C again abandons it)" if signum == signal.SIGINT else ""))


# -- the context manager and the fixture ---------------------------------------------------------------

@dataclass(frozen=True)
class EphemeralStack:
    """A live ephemeral stack: its name, the deployment it runs and its non-secret outputs
    (secret ones stay in ``stack.outputs()``, so a test report never prints them)."""

    name: str
    deployment: Deployment
    outputs: dict[str, Any]
    stack: auto.Stack = field(repr=False)


@contextlib.contextmanager
def ephemeral_stack(base: Base, *, prefix: Optional[str] = None, run_id: Optional[str] = None,
                    ttl: timedelta = DEFAULT_TTL, env: Optional[Mapping[str, str]] = None,
                    pulumi_command: Optional[auto.PulumiCommand] = None, runner: Runner = run_command,
                    retries: int = DEFAULT_RETRIES, backoff_s: float = DEFAULT_BACKOFF_S,
                    sleep: Callable[[float], Any] = time.sleep, on_output: Optional[OnOutput] = None,
                    now: Optional[datetime] = None,
                    interrupt_grace_s: float = DEFAULT_INTERRUPT_GRACE_S) -> Iterator[EphemeralStack]:
    """An ephemeral stack of ``base``, up for the ``with`` body and destroyed after it: on success,
    failure and KeyboardInterrupt; on SIGTERM too when it runs in the main thread (Python handles
    signals there only; elsewhere a warning says so, and a SIGTERM ends the process without the
    destroy: the sweep finds the stack by its TTL). An interrupt during `up` lets pulumi finish
    what it has in flight (up to ``interrupt_grace_s``) before the destroy.

    ``with ephemeral_stack("stacks/Pulumi.aws-dev.yaml") as live: check(live.outputs["nodes"])``

    Bad input raises ConfigError before anything exists. A failed `up` raises EphemeralError
    after the destroy; a failed destroy, or pending operations in the state, raise DestroyError
    (chained to whatever ended the body) and keep the stack.
    """
    if not 1 <= retries <= MAX_RETRIES:
        raise ConfigError(Problem("retries", f"{retries}: give 1 to {MAX_RETRIES} destroy attempts"))
    spec = prepare(base, prefix=prefix, run_id=run_id, ttl=ttl, env=env, now=now)
    on_output = on_output or to_stderr
    for warning in spec.warnings:
        on_output(f"warning: {warning}")
    with workspace(pulumi_command, interrupt_grace_s, on_output) as ws, \
            Interrupts(spec.stack_name, on_output) as interrupts:
        interrupts.defer()
        stack = create(spec, ws)
        try:
            interrupts.live()
            configure(stack, spec, on_output)
            result = up(stack, spec, on_output)
            yield EphemeralStack(spec.stack_name, spec.deployment,
                                 {k: v.value for k, v in result.outputs.items() if not v.secret}, stack)
        finally:
            interrupts.cleanup()
            destroy(stack, spec.deployment, retries=retries, backoff_s=backoff_s, sleep=sleep, runner=runner,
                    on_output=on_output)


def stack_fixture(base: Base, **options: Any) -> Callable[[], Iterator[EphemeralStack]]:
    """A pytest fixture function over :func:`ephemeral_stack`; the caller picks its name and scope:

        # conftest.py
        import pytest
        from kumo_infra.ephemeral import stack_fixture
        kumo_stack = pytest.fixture(scope="session")(stack_fixture("stacks/Pulumi.aws-dev.yaml"))

    kumo-infra does not import pytest itself (not one of its dependencies)."""

    def fixture() -> Iterator[EphemeralStack]:
        with ephemeral_stack(base, **options) as live:
            yield live

    return fixture

"""Ephemeral stacks: bring a real deployment up from a base stack file, use it, always destroy it.

Built on Pulumi's Automation API (``pulumi.automation``): a ``LocalWorkspace`` in a temporary
directory with project ``kumo-infra``, the program run inline (``kumo_infra.program.run``), so
this works from an installed wheel anywhere, without this repository's ``Pulumi.yaml``. The
backend and its credentials come from the environment as for ``pulumi`` itself
(PULUMI_BACKEND_URL, PULUMI_ACCESS_TOKEN, PULUMI_CONFIG_PASSPHRASE).

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
pkg/backend/diy/backend.go ``apply``): :func:`read_marks` takes the tags, else the newest update
carrying them. (The stack's config file itself lives only in the temporary work directory.)

:func:`ephemeral_stack` is the context manager for test suites (and :func:`stack_fixture` the
pytest fixture built on it): the stack is destroyed on success, failure, KeyboardInterrupt and
SIGTERM, with retries and a refresh between attempts, then removed; then the target's
after-destroy commands run (Azure purges the soft-deleted Key Vault). If the destroy still
fails, :class:`DestroyError` names the stack, the resources left and the command that finishes it.
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
from .stackconfig import SECRET_KEYS, StackConfig, from_values, load_file, warnings_for

PROJECT = "kumo-infra"

# The marks, as stack tags and as config of the project's namespace (the same names).
MARK = "kumo-infra:ephemeral"
CREATED_AT = "kumo-infra:created-at"
TTL = "kumo-infra:ttl"
CI_RUN = "kumo-infra:ci-run"
MARK_KEYS = (MARK, CREATED_AT, TTL, CI_RUN)

DEFAULT_TTL = timedelta(hours=3)
DEFAULT_RETRIES = 3
DEFAULT_BACKOFF_S = 15.0

SECRET_ENV_PREFIX = "KUMO_SECRET_"

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


class DestroyError(EphemeralError):
    """The destroy failed after every retry: the stack and what it still holds are named."""

    def __init__(self, stack_name: str, leftovers: list[tuple[str, str]], cause: str) -> None:
        self.stack_name = stack_name
        self.leftovers = leftovers
        lines = [f"destroy of stack {stack_name} failed: {cause}"]
        if leftovers:
            lines.append(f"resources left in {stack_name} ({len(leftovers)}):")
            lines += [f"  {kind}  {urn}" for urn, kind in leftovers]
        else:
            lines.append(f"the state of {stack_name} could not be read: its resources may still exist")
        lines.append(f"finish it with: {finish_command(stack_name)}")
        super().__init__("\n".join(lines))


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
    if ttl <= timedelta(0):
        problems.append(Problem("--ttl", "must be longer than zero (like 3h)"))
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

def installed_pulumi() -> auto.PulumiCommand:
    """The `pulumi` on PATH; a ConfigError (exit 2, nothing created) when there is none."""
    try:
        return auto.PulumiCommand()
    except FileNotFoundError:
        raise ConfigError(Problem("PATH", "no pulumi command found: install the Pulumi CLI "
                                          "(https://www.pulumi.com/docs/install/) or put it on PATH")) from None
    except (subprocess.CalledProcessError, auto.InvalidVersionError) as exc:
        raise ConfigError(Problem("PATH", f"the pulumi command on PATH is not usable: {exc}")) from None


@contextlib.contextmanager
def workspace(pulumi_command: Optional[auto.PulumiCommand] = None) -> Iterator[auto.LocalWorkspace]:
    """A LocalWorkspace of project kumo-infra in a temporary directory, removed afterwards.

    No program is attached: only `up` runs one (inline). Destroy and refresh then run without
    `--client`, as any Pulumi CLI does; with an inline program attached they would need v3.181+
    (pulumi/automation/_stack.py _check_inline_support)."""
    work_dir = tempfile.mkdtemp(prefix="kumo-infra-")
    try:
        command = pulumi_command or installed_pulumi()
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
    """The config (marks included) and the mark tags."""
    stack.set_all_config({key: auto.ConfigValue(value) for key, value in spec.config.items()})
    for key, value in spec.tags.items():
        try:
            stack.set_tag(key, value)
        except auto.CommandError as exc:
            if TAGS_UNSUPPORTED not in str(exc):
                raise
            on_output(f"kumo-infra: this backend holds no stack tags (a DIY backend before Pulumi CLI v3.211.0): "
                      f"{stack.name} is marked by its config ({MARK}) alone, which sweep reads from its history")
            return


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
    """Run one after-destroy command (an argument vector, no shell); its exit code."""
    try:
        return subprocess.run(list(argv), check=False).returncode
    except FileNotFoundError:
        print(f"kumo-infra: {argv[0]}: command not found", file=sys.stderr)
        return 127


def leftovers(stack: auto.Stack) -> list[tuple[str, str]]:
    """(URN, type) of every resource the state still holds but the stack itself and its providers.

    Read with `stack export` without --show-secrets (Workspace.export_stack adds it): only
    URNs and types are needed, no secret is decrypted."""
    ws = stack.workspace
    env = {**({"PULUMI_HOME": ws.pulumi_home} if ws.pulumi_home else {}), **ws.env_vars}
    result = ws.pulumi_command.run(["stack", "export", "--stack", stack.name], ws.work_dir, env)
    resources = (json.loads(result.stdout).get("deployment") or {}).get("resources") or []
    return [(r["urn"], r["type"]) for r in resources
            if r.get("type") != "pulumi:pulumi:Stack" and not str(r.get("type", "")).startswith("pulumi:providers:")]


def destroy(stack: auto.Stack, deployment: Optional[Deployment], *, retries: int = DEFAULT_RETRIES,
            backoff_s: float = DEFAULT_BACKOFF_S, sleep: Callable[[float], Any] = time.sleep,
            runner: Runner = run_command, on_output: Optional[OnOutput] = None) -> None:
    """Destroy ``stack`` (``retries`` attempts, a refresh and a growing pause between them), remove
    it, then run the target's after-destroy commands for ``deployment``. DestroyError when the
    destroy never succeeds (the stack is kept: its state is the list of what to clean)."""
    on_output = on_output or to_stderr
    cause = ""
    for attempt in range(1, max(retries, 1) + 1):
        try:
            stack.destroy(on_output=on_output, on_error=on_output)
            break
        except auto.CommandError as exc:
            cause = tail(exc)
            on_output(f"kumo-infra: destroy of {stack.name} failed (attempt {attempt} of {retries})")
            if attempt >= retries:
                try:
                    left = leftovers(stack)
                except (auto.CommandError, ValueError, KeyError):
                    left = []
                raise DestroyError(stack.name, left, cause) from None
            sleep(backoff_s * 2 ** (attempt - 1))
            with contextlib.suppress(auto.CommandError):  # the next attempt says what is wrong
                stack.refresh(on_output=on_output, on_error=on_output)
    stack.workspace.remove_stack(stack.name)
    failed = []
    for argv in deployment.target.after_destroy_commands(deployment) if deployment else []:
        on_output(f"kumo-infra: {shlex.join(argv)}")
        if runner(argv) != 0:
            failed.append(shlex.join(argv))
    if failed:
        raise EphemeralError(f"stack {stack.name} is destroyed and removed, but what the cloud keeps after a "
                             "destroy is not: run " + " and ".join(failed))


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
    """The stack's kumo-infra marks: its tags, else the config of its newest update carrying them."""
    tags = stack.workspace.list_tags(stack.name) or {}  # null from a DIY backend before v3.211.0
    if MARK in tags:
        return {key: tags[key] for key in MARK_KEYS if key in tags}
    config = _history_config(stack, MARK)
    return {key: config[key].value for key in MARK_KEYS if key in config} if config else {}


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
    """(destroy?, why): only a stack marked ephemeral whose TTL has passed and older than ``older_than``."""
    if marks.get(MARK) != "true":
        return False, f"no {MARK}=true mark"
    try:
        created = datetime.fromisoformat(marks.get(CREATED_AT, ""))
        ttl = parse_duration(marks.get(TTL, ""))
    except ValueError:
        return False, f"marked ephemeral but {CREATED_AT} or {TTL} unreadable: left for you to judge"
    if created.tzinfo is None:
        created = created.replace(tzinfo=timezone.utc)
    age = now - created
    if now < created + ttl:
        return False, f"ttl {format_duration(ttl)} not passed (created {utc_text(created)})"
    if age < older_than:
        return False, f"younger than --older-than {format_duration(older_than)} (created {utc_text(created)})"
    return True, f"created {utc_text(created)}, ttl {format_duration(ttl)} passed"


# -- interrupts ------------------------------------------------------------------------------------

class _Interrupts:
    """Signals while an ephemeral stack exists, in the main thread only (Python runs handlers there).

    live: SIGTERM raises Terminated (SIGINT is Python's KeyboardInterrupt); deferred (`stack init`
    running): both wait until the stack exists, then are raised where the destroy is certain to
    follow; cleanup (destroying): the first of each is reported and the destroy goes on; a second
    SIGINT abandons it. The previous handlers come back on exit."""

    def __init__(self, stack_name: str) -> None:
        self.stack_name = stack_name
        self.enabled = threading.current_thread() is threading.main_thread()
        self.previous: dict[int, Any] = {}
        self.pending: Optional[int] = None
        self.noted: set[int] = set()

    def __enter__(self) -> "_Interrupts":
        if self.enabled:
            self.previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

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
                    now: Optional[datetime] = None) -> Iterator[EphemeralStack]:
    """An ephemeral stack of ``base``, up for the ``with`` body and destroyed after it, whatever happens.

    ``with ephemeral_stack("stacks/Pulumi.aws-dev.yaml") as live: check(live.outputs["nodes"])``

    Bad input raises ConfigError before anything exists. A failed `up` raises EphemeralError
    after the destroy; a failed destroy raises DestroyError (chained to whatever ended the body).
    """
    spec = prepare(base, prefix=prefix, run_id=run_id, ttl=ttl, env=env, now=now)
    on_output = on_output or to_stderr
    for warning in spec.warnings:
        on_output(f"warning: {warning}")
    with workspace(pulumi_command) as ws, _Interrupts(spec.stack_name) as interrupts:
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

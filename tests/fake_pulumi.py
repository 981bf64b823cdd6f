"""A stand-in for the `pulumi` CLI, for the real ``pulumi.automation`` library to drive.

The Automation API runs the CLI for every operation, and the CLI cannot be installed here. This
fake answers the commands kumo_infra.ephemeral sends, in the shapes the real CLI prints and the
library parses (pulumi/pulumi at 1b59498, pkg/cmd/pulumi/...):

- ``version``: ``v3.272.0`` (the library strips the v; pulumi/automation/_cmd.py)
- ``stack ls --json``: [{name, current, lastUpdate, resourceCount}] (stack/stack_list.go stackSummaryJSON;
  times as cmd.FormatTime, "2006-01-02T15:04:05.000Z07:00", which the library reads as %Y-%m-%dT%H:%M:%S.%fZ)
- ``stack history --json``: newest first, [{version, kind, startTime, message, environment, config:
  {key: {value, secret}}, result, endTime, resourceChanges}] (stack/stack_history.go updateInfoJSON;
  a secret's value only with --show-secrets)
- ``stack output --json``: {name: value}, a secret as "[secret]" without --show-secrets
  (stack/stack_output.go, display.MassageSecrets)
- ``stack export``: {version: 3, deployment: {manifest, secrets_providers, resources: [{urn, custom, type,
  id, parent}], pending_operations: [{resource, type}]}} (sdk/go/common/apitype/core.go
  UntypedDeployment, DeploymentV3, ResourceV3, OperationV2); a later update or destroy drops the
  pending operations from the state (the engine warns and goes on), as here
- ``stack ls --json`` lists the stacks of the working directory's project only (as the CLI without
  --all); a stack belongs to the project it was made in
- a locked stack (``locked``: an update running, or a lock a killed CLI left) fails up, destroy and
  refresh with the DIY backend's "the stack is currently locked by 1 lock(s)" (the library's
  ConcurrentUpdateError); ``cancel --yes`` clears it
- ``up`` with ``up_steps`` set runs step by step (``up_step_s`` each), one resource a step, each
  line on stdout as it happens; run as an executable, a SIGINT is Pulumi's clean cancel: the step in
  flight finishes and is recorded, no other starts, exit 255 "update canceled". ``events`` records
  it all (steps started and finished, the SIGINT, a write that failed)
- ``stack tag ls --json``: {name: value}; ``null`` from a DIY backend before v3.211.0, whose
  ``stack tag set`` failed with "stack tags not supported in diy mode" (pkg/backend/diy/backend.go
  before #19882), as ``tags_supported=False`` does here
- ``up --replace URN --target URN --target-dependents`` (each flag repeatable, as the CLI's
  StringArrayVar flags in pkg/cmd/pulumi/operations/up.go): every URN given must be in the state, else
  "one or more targets could not be found in the stack" (pkg/resource/deploy/deployment_executor.go
  checkTargets); a replaced resource gets a new id; with --target nothing outside the state is created
  (the engine's skipped creates). ``up_replaced`` records the URNs each up replaced, in order
- errors on stderr as "error: ..." with the backend's messages: "no stack named 'X' found",
  "stack 'X' already exists" (pkg/backend/backenderr/backenderr.go), "'X' still has resources;
  removal rejected" (stack/stack_remove.go), which the library maps to its error classes.

Stack config lives where the CLI keeps it, in ``Pulumi.<stack>.yaml`` of the working directory;
every other fact in a JSON-able state (stacks, tags, resources, outputs, history, every argv
received). Used two ways: :class:`FakePulumiCommand` (a ``PulumiCommand`` for
``LocalWorkspace(pulumi_command=...)``), and as an executable ``pulumi`` first on PATH
(:func:`install`), its state in the JSON file named by FAKE_PULUMI_STATE, so kumo-infra runs
as users run it. Any command or flag it does not know fails loudly (exit 2).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional

import yaml

VERSION = "3.272.0"
STATE_ENV = "FAKE_PULUMI_STATE"

# What `up` creates (type, name) and exports, unless a test says otherwise.
DEFAULT_RESOURCES = [
    ["kumo:index:AwsKumoMta", "kumo-dev"],
    ["aws:ec2/instance:Instance", "kumo-dev-node1"],
    ["aws:ec2/eip:Eip", "kumo-dev-node1-ip"],
    ["aws:secretsmanager/secret:Secret", "kumo-dev-api-password"],
]
DEFAULT_OUTPUTS = {
    "nodes": [{"name": "node1", "hostname": "mta-dev.example.com", "public_ip": "198.51.100.7",
               "machine_id": "i-0123456789abcdef0"}],
    "public_ips": ["198.51.100.7"],
    "api": {"user": "kumo", "password": "api-secret-value"},
}
DEFAULT_SECRET_OUTPUTS = ["api"]

# Flags taking a value, per command (`config set-all` takes --plaintext/--secret KEY=VALUE).
_VALUE_FLAGS = {"--stack", "--page-size", "--page", "--secrets-provider", "--exec-kind", "--event-log", "--message",
                "--color", "--parallel", "--file", "--client"}
_SET_ALL_FLAGS = {"--plaintext", "--secret"}
_BOOL_FLAGS = {"--non-interactive", "--json", "--show-secrets", "--yes", "--skip-preview", "--force", "--all",
               "--preserve-config", "--plaintext", "--secret", "--path", "--target-dependents"}
# up's repeatable URN flags.
_UP_URN_FLAGS = frozenset({"--replace", "--target"})
# The service's tag names (pkg/util/validation/stack.go validateStackTagName).
_TAG_NAME_RE = re.compile(r"[a-zA-Z0-9-_.:]{1,40}")


class Usage(Exception):
    """A command or flag this fake does not know: the test must learn about it."""


class NoStack(Exception):
    """The stack named does not exist (the backend's StackNotFound)."""


def now_text() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def new_state(**overrides: Any) -> dict[str, Any]:
    state = {"version": VERSION, "tags_supported": True, "stacks": {}, "current": None, "calls": [], "fail": {},
             "up_resources": DEFAULT_RESOURCES, "up_outputs": DEFAULT_OUTPUTS,
             "up_secret_outputs": DEFAULT_SECRET_OUTPUTS, "files_at_up": {},
             # (type, name) left as pending "creating" operations by the next up (a CLI killed mid-create)
             "up_pending": [], "up_steps": 0, "up_step_s": 0.0, "events": [],
             "fail_stderr": {},  # command -> what its failure (``fail``) says on stderr
             "up_replaced": []}  # per up with --replace: the URNs it replaced
    state.update(overrides)
    return state


def parse(argv: list[str], value_flags: set[str], multi: frozenset[str] = frozenset()) -> tuple[list[str], dict]:
    """(positional words, flags): the last value of a flag, or all of them (a list) for ``multi`` flags."""
    words: list[str] = []
    flags: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        token = argv[i]
        if token == "--":
            words += argv[i + 1:]
            break
        if token.startswith("--"):
            name, eq, value = token.partition("=")
            if not eq and name in value_flags:
                i += 1
                value = argv[i]
            elif not eq:
                if name not in _BOOL_FLAGS:
                    raise Usage(f"unknown flag {name}")
                value = True
            elif name not in value_flags:
                raise Usage(f"unknown flag {name}")
            flags.setdefault(name, []).append(value)
        else:
            words.append(token)
        i += 1
    return words, {k: v if k in multi else v[-1] for k, v in flags.items()}


class FakeBackend:
    """The state behind the fake CLI and what each command does to it."""

    def __init__(self, state: Optional[dict[str, Any]] = None,
                 hooks: Optional[dict[str, Callable[[list[str]], None]]] = None,
                 emit: Optional[Callable[[str], None]] = None) -> None:
        self.state = state if state is not None else new_state()
        # command ("up", "destroy", "stack init", ...) -> called with the argv before it is handled
        self.hooks = hooks or {}
        # Where a stepped up writes each line as it happens (the executable's stdout); None: with the rest.
        self.emit = emit

    @property
    def calls(self) -> list[list[str]]:
        return self.state["calls"]

    def handle(self, argv: list[str], cwd: str) -> tuple[str, str, int]:
        self.calls.append(list(argv))
        words = [a for a in argv if a != "--non-interactive"]
        command = " ".join(words[:2]) if words[:1] in (["stack"], ["config"]) else (words[0] if words else "")
        if words[:2] == ["stack", "tag"]:
            command = " ".join(words[:3])
        if command in self.hooks:
            self.hooks[command](argv)
        try:
            if self._should_fail(command):
                return self._failure(command, words, cwd)
            handler = getattr(self, "cmd_" + command.replace(" ", "_").replace("-", "_"), None)
            if handler is None:
                raise Usage(f"unknown command {command!r}")
            return handler(*self._parse(command, words), cwd)
        except Usage as exc:
            return "", f"fake pulumi: {exc}: {argv}", 2
        except NoStack as exc:
            return "", f"error: no stack named '{exc}' found", 255

    # -- helpers ---------------------------------------------------------------------------------

    def _parse(self, command: str, words: list[str]) -> tuple[list[str], dict]:
        rest = words[len(command.split()):]
        if command == "config set-all":
            return parse(rest, _VALUE_FLAGS | _SET_ALL_FLAGS, _SET_ALL_FLAGS)
        if command == "up":
            return parse(rest, _VALUE_FLAGS | _UP_URN_FLAGS, _UP_URN_FLAGS)
        return parse(rest, _VALUE_FLAGS)

    def _should_fail(self, command: str) -> bool:
        left = self.state["fail"].get(command, 0)
        if left:
            self.state["fail"][command] = left - 1
        return bool(left)

    def _failure(self, command: str, words: list[str], cwd: str) -> tuple[str, str, int]:
        positional, flags = self._parse(command, words)
        name = flags.get("--stack") or self.state["current"]
        if command == "up":  # the first resource was created before the failure
            self._create(name, self.state["up_resources"][:1], cwd)
            self._history(name, "update", "failed", cwd, {"create": 1})
        if command == "destroy":
            self._history(name, "destroy", "failed", cwd, {})
        stack = self.state["stacks"].get(name, {})
        urn = stack.get("resources", [{}])[-1].get("urn", "?") if stack.get("resources") else "?"
        return (f"{'Updating' if command == 'up' else 'Destroying'} ({name}):\n"
                f"    error: deleting {urn}: operation timed out\n",
                self.state.get("fail_stderr", {}).get(command, f"error: {command}: 1 error occurred"), 255)

    def stack(self, name: Optional[str]) -> dict[str, Any]:
        name = name or self.state["current"]
        if name not in self.state["stacks"]:
            raise NoStack(name)
        return self.state["stacks"][name]

    def _locked(self, name: str) -> Optional[tuple[str, str, int]]:
        if not self.stack(name).get("locked"):
            return None
        return "", (f"error: the stack is currently locked by 1 lock(s). Either wait for the other process(es) to "
                    f"end or delete the lock file with `pulumi cancel`.\n  file://~/.pulumi/locks/{name}/fake.json: "
                    "created by runner@ci (pid 4242) at 2026-11-30T11:00:00Z"), 255

    def _config_file(self, cwd: str, name: str) -> Path:
        return Path(cwd) / f"Pulumi.{name}.yaml"

    def _config(self, cwd: str, name: str) -> dict[str, Any]:
        path = self._config_file(cwd, name)
        doc = yaml.safe_load(path.read_text()) if path.exists() else None
        return (doc or {}).get("config") or {}

    def _project(self, cwd: str) -> str:
        return yaml.safe_load((Path(cwd) / "Pulumi.yaml").read_text())["name"]

    def _urn(self, name: str, cwd: str, kind: str, resource: str) -> str:
        return f"urn:pulumi:{name}::{self._project(cwd)}::{kind}::{resource}"

    def _create(self, name: str, resources: list[list[str]], cwd: str) -> int:
        """Add ``resources`` (and the stack's root and provider) not there yet; how many were added."""
        stack = self.stack(name)
        root = self._urn(name, cwd, "pulumi:pulumi:Stack", f"{self._project(cwd)}-{name}")
        wanted = [("pulumi:pulumi:Stack", root, None),
                  ("pulumi:providers:aws", self._urn(name, cwd, "pulumi:providers:aws", "default_7_0_0"), None)]
        wanted += [(kind, self._urn(name, cwd, kind, resource), root) for kind, resource in resources]
        have = {r["urn"] for r in stack["resources"]}
        added = [{"urn": urn, "custom": not kind.startswith(("kumo:", "pulumi:pulumi:")), "type": kind,
                  "id": f"id-{len(have) + i}", **({"parent": parent} if parent else {})}
                 for i, (kind, urn, parent) in enumerate(wanted) if urn not in have]
        stack["resources"] += added
        return len(added)

    def _history(self, name: str, kind: str, result: str, cwd: str, changes: dict[str, int]) -> None:
        stack = self.stack(name)
        config = {k: {"value": v if isinstance(v, str) else json.dumps(v), "secret": False}
                  for k, v in self._config(cwd, name).items()}
        stack["history"].insert(0, {"version": len(stack["history"]) + 1, "kind": kind, "startTime": now_text(),
                                    "message": "", "environment": {}, "config": config, "result": result,
                                    "endTime": now_text(), "resourceChanges": changes})

    # -- commands ----------------------------------------------------------------------------------

    def cmd_version(self, positional, flags, cwd):
        return f"v{self.state['version']}\n", "", 0

    def cmd_stack_init(self, positional, flags, cwd):
        (name,) = positional
        if name in self.state["stacks"]:
            return "", f"error: stack '{name}' already exists", 255
        self.state["stacks"][name] = {"tags": {}, "resources": [], "outputs": {}, "secret_outputs": [],
                                      "history": [], "created": now_text(), "project": self._project(cwd)}
        self.state["current"] = name
        self._config_file(cwd, name).write_text("encryptionsalt: v1:fake-salt\n")
        return f"Created stack '{name}'\n", "", 0

    def cmd_stack_select(self, positional, flags, cwd):
        name = flags["--stack"]
        self.stack(name)
        self.state["current"] = name
        return "", "", 0

    def cmd_stack_ls(self, positional, flags, cwd):
        rows = []
        for name, stack in self.state["stacks"].items():
            if stack.get("project", self._project(cwd)) != self._project(cwd):
                continue
            row = {"name": name, "current": name == self.state["current"]}
            if stack["history"]:
                row["lastUpdate"] = stack["history"][0]["endTime"]
                row["resourceCount"] = len(stack["resources"])
            rows.append(row)
        return json.dumps(rows, indent=4) + "\n", "", 0

    def cmd_stack_rm(self, positional, flags, cwd):
        name = positional[0] if positional else flags.get("--stack") or self.state["current"]
        stack = self.stack(name)
        if stack["resources"] and "--force" not in flags:
            return "", (f"error: '{name}' still has resources; removal rejected. Possible actions:\n"
                        f"- Run `pulumi destroy` to delete the resources, then run `pulumi stack rm`"), 255
        del self.state["stacks"][name]
        self._config_file(cwd, name).unlink(missing_ok=True)
        if self.state["current"] == name:
            self.state["current"] = None
        return f"Stack '{name}' has been removed!\n", "", 0

    def cmd_stack_tag_set(self, positional, flags, cwd):
        key, value = positional
        stack = self.stack(flags.get("--stack"))
        if not self.state["tags_supported"]:
            return "", "error: stack tags not supported in diy mode", 255
        if not _TAG_NAME_RE.fullmatch(key):
            return "", ("error: stack tag names may only contain alphanumerics, hyphens, underscores, periods, or "
                        "colons"), 255
        stack["tags"][key] = value
        return "", "", 0

    def cmd_stack_tag_ls(self, positional, flags, cwd):
        stack = self.stack(flags.get("--stack"))
        # A stack whose tags are None was made on a backend without tags (a DIY one before v3.211.0).
        return json.dumps(stack["tags"] if self.state["tags_supported"] else None) + "\n", "", 0

    def cmd_stack_history(self, positional, flags, cwd):
        history = self.stack(flags.get("--stack"))["history"]
        if "--page-size" in flags:
            size, page = int(flags["--page-size"]), int(flags.get("--page", 1))
            history = history[(page - 1) * size:page * size]
        if "--show-secrets" not in flags:
            history = [{**h, "config": {k: ({"secret": True} if v["secret"] else v) for k, v in h["config"].items()}}
                       for h in history]
        return json.dumps(history, indent=4) + "\n", "", 0

    def cmd_stack_output(self, positional, flags, cwd):
        stack = self.stack(flags.get("--stack"))
        shown = {k: (v if "--show-secrets" in flags or k not in stack["secret_outputs"] else "[secret]")
                 for k, v in stack["outputs"].items()}
        return json.dumps(shown, indent=4) + "\n", "", 0

    def cmd_stack_export(self, positional, flags, cwd):
        stack = self.stack(flags.get("--stack"))
        deployment = {"manifest": {"time": now_text(), "magic": "fake", "version": f"v{self.state['version']}"},
                      "secrets_providers": {"type": "passphrase", "state": {"salt": "v1:fake-salt"}},
                      "resources": stack["resources"]}
        if stack.get("pending_operations"):
            deployment["pending_operations"] = stack["pending_operations"]
        return json.dumps({"version": 3, "deployment": deployment}, indent=4) + "\n", "", 0

    def cmd_cancel(self, positional, flags, cwd):
        name = flags.get("--stack") or self.state["current"]
        stack = self.stack(name)
        if not stack.get("locked"):
            return "", f"error: stack '{name}' has no update in progress", 255
        stack["locked"] = False
        return f"The currently running update for '{name}' has been canceled!\n", "", 0

    def cmd_config_set_all(self, positional, flags, cwd):
        name = flags["--stack"]
        self.stack(name)
        path = self._config_file(cwd, name)
        doc = (yaml.safe_load(path.read_text()) if path.exists() else None) or {}
        config = doc.setdefault("config", {})
        for secret, pairs in ((False, flags.get("--plaintext", [])), (True, flags.get("--secret", []))):
            for pair in pairs:
                key, _, value = pair.partition("=")
                config[key] = {"secure": "v1:fake-ciphertext"} if secret else value
        path.write_text(yaml.safe_dump(doc))
        return "", "", 0

    def cmd_up(self, positional, flags, cwd):
        name = flags["--stack"]
        if self._locked(name):
            return self._locked(name)
        self.stack(name).pop("pending_operations", None)
        if flags.get("--exec-kind") == "auto.inline":
            # The library's inline-program server must be listening where --client says.
            host, _, port = flags["--client"].rpartition(":")
            socket.create_connection((host, int(port)), timeout=5).close()
        self.state["files_at_up"] = {p.name: p.read_text() for p in Path(cwd).iterdir() if p.is_file()}
        stack = self.stack(name)
        if self.state["up_steps"]:
            return self._stepped_up(name, cwd)
        have = {r["urn"]: r for r in stack["resources"]}
        named = flags.get("--replace", []) + flags.get("--target", [])
        if any(urn not in have for urn in named):
            return "", "error: one or more targets could not be found in the stack", 255
        for urn in flags.get("--replace", []):
            have[urn]["id"] = f"{have[urn]['id']}-replaced"
        if flags.get("--replace"):
            self.state["up_replaced"].append(flags["--replace"])
        created = 0 if flags.get("--target") else self._create(name, self.state["up_resources"], cwd)
        stack["pending_operations"] = [
            {"resource": {"urn": self._urn(name, cwd, kind, resource), "custom": True, "type": kind}, "type": "creating"}
            for kind, resource in self.state["up_pending"]]
        stack["outputs"] = self.state["up_outputs"]
        stack["secret_outputs"] = self.state["up_secret_outputs"]
        changes = {"create": created, **({"replace": len(flags["--replace"])} if flags.get("--replace") else {})}
        self._history(name, "update", "succeeded", cwd, changes)
        lines = [f"Updating ({name}):"] + [f" +  {r['type']} {r['urn'].rsplit('::', 1)[1]} created"
                                          for r in stack["resources"]]
        lines += ["Resources:", f"    + {created} created", "Duration: 1s"]
        return "\n".join(lines) + "\n", "", 0

    def _stepped_up(self, name: str, cwd: str) -> tuple[str, str, int]:
        """One resource a step; a SIGINT (executable mode) lets the step in flight finish, then stops."""
        events = self.state["events"]
        interrupted: list[int] = []
        if self.emit is not None:
            signal.signal(signal.SIGINT, lambda signum, frame: (interrupted.append(signum), events.append("SIGINT")))
        lines = [f"Updating ({name}):"]
        created = 0
        for step, resource in enumerate(self.state["up_resources"][:self.state["up_steps"]]):
            events.append(f"up step {step} started")
            self._say(lines, f" +  {resource[0]} {resource[1]} creating")
            time.sleep(self.state["up_step_s"])
            created += self._create(name, [resource], cwd)
            events.append(f"up step {step} finished")
            self._say(lines, f" +  {resource[0]} {resource[1]} created")
            if interrupted:
                events.append("up cancelled cleanly")
                self._history(name, "update", "failed", cwd, {"create": created})
                return "\n".join(lines) + "\n", "error: update canceled", 255
        self._history(name, "update", "succeeded", cwd, {"create": created})
        events.append("up finished")
        return "\n".join(lines + ["Resources:", f"    + {created} created"]) + "\n", "", 0

    def _say(self, lines: list[str], line: str) -> None:
        if self.emit is None:
            lines.append(line)
            return
        try:
            self.emit(line)
        except OSError as exc:  # the reader went away: the real CLI dies here (SIGPIPE) mid-operation
            self.state["events"].append(f"write failed: {type(exc).__name__}")
            raise

    def cmd_destroy(self, positional, flags, cwd):
        name = flags["--stack"]
        if self._locked(name):
            return self._locked(name)
        stack = self.stack(name)
        stack.pop("pending_operations", None)  # dropped from the state, whatever became of them
        deleted = len(stack["resources"])
        lines = [f"Destroying ({name}):"] + [f" -  {r['type']} deleted" for r in reversed(stack["resources"])]
        stack["resources"] = []
        stack["outputs"] = {}
        self._history(name, "destroy", "succeeded", cwd, {"delete": deleted})
        return "\n".join(lines + ["Resources:", f"    - {deleted} deleted"]) + "\n", "", 0

    def cmd_refresh(self, positional, flags, cwd):
        name = flags["--stack"]
        if self._locked(name):
            return self._locked(name)
        self._history(name, "refresh", "succeeded", cwd, {"same": len(self.stack(name)["resources"])})
        return f"Refreshing ({name}):\n", "", 0


def command_class():
    """FakePulumiCommand, defined on first use: the executable mode needs no Automation API."""
    from pulumi.automation import CommandResult, PulumiCommand
    from pulumi.automation.errors import create_command_error
    from semver import VersionInfo

    class FakePulumiCommand(PulumiCommand):
        """A PulumiCommand answering from a FakeBackend instead of running a process."""

        def __init__(self, backend: Optional[FakeBackend] = None) -> None:  # no `pulumi version` process
            self.backend = backend or FakeBackend()
            self.command = "pulumi"
            self.version = VersionInfo.parse(self.backend.state["version"])

        def run(self, args, cwd, additional_env, on_output=None, on_error=None):
            # As PulumiCommand.run: --non-interactive first, before any "--" (pulumi/automation/_cmd.py).
            sep = args.index("--") if "--" in args else len(args)
            if "--non-interactive" not in args[:sep]:
                args.insert(0, "--non-interactive")
            stdout, stderr, code = self.backend.handle(list(args), cwd)
            for callback, text in ((on_output, stdout), (on_error, stderr)):
                for line in text.splitlines():
                    if callback:
                        callback(line)
            result = CommandResult(stdout=stdout.rstrip("\n"), stderr=stderr, code=code)
            if code != 0:
                raise create_command_error(result)
            return result

        @property
        def calls(self) -> list[list[str]]:
            return self.backend.calls

    return FakePulumiCommand


def FakePulumiCommand(backend: Optional[FakeBackend] = None):  # noqa: N802 (used like the class)
    return command_class()(backend)


def install(bin_dir: Path, state_path: Path, state: Optional[dict[str, Any]] = None) -> dict[str, str]:
    """Put an executable ``pulumi`` (this fake) in ``bin_dir``; the environment that puts it first on PATH."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    state_path.write_text(json.dumps(state if state is not None else new_state()))
    script = bin_dir / "pulumi"
    script.write_text(f"#!/bin/sh\nexec '{sys.executable}' '{Path(__file__).resolve()}' \"$@\"\n")
    script.chmod(0o755)
    # A DIY backend with its passphrase, as a CI job must have; nothing of the host's Pulumi login.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULUMI_")}
    return {**env, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", STATE_ENV: str(state_path),
            "PULUMI_BACKEND_URL": f"file://{state_path.parent}", "PULUMI_CONFIG_PASSPHRASE": "fake-passphrase",
            "PULUMI_HOME": str(state_path.parent / ".pulumi")}


def verbs(calls: list[list[str]]) -> list[str]:
    """Each call as its command words ("stack tag set", "up"), flags and values dropped."""
    out = []
    for argv in calls:
        words = [a for a in argv if a != "--non-interactive"]
        n = 3 if words[:2] == ["stack", "tag"] else 2 if words[0] in ("stack", "config") else 1
        out.append(" ".join(words[:n]))
    return out


def read_state(state_path: Path) -> dict[str, Any]:
    return json.loads(state_path.read_text())


def _print_now(line: str) -> None:
    print(line, flush=True)


def main(argv: list[str]) -> int:
    path = Path(os.environ[STATE_ENV])
    backend = FakeBackend(json.loads(path.read_text()), emit=_print_now)
    backend.state.setdefault("environments", []).append(
        sorted(k for k in os.environ if k.startswith(("KUMO_", "PULUMI_"))))
    try:
        stdout, stderr, code = backend.handle(argv, os.getcwd())
    finally:  # what happened is recorded even when the fake dies of a closed pipe
        path.write_text(json.dumps(backend.state))
    sys.stdout.write(stdout)
    sys.stderr.write(stderr + ("\n" if stderr else ""))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Run a KumoMTA policy in Lua 5.4 against the strict `kumo` test double (tests/lua/).

tests/lua/run_policy.lua loads the policy with tests/lua/kumo_double.lua as `kumo`, fires
init and the scenario's events, and prints what happened as JSON; see its header for the
scenarios. The double is built from tests/lua/kumo_api_facts.lua, generated from KumoMTA's
source by tests/lua/gen_kumo_api_facts.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

LUA_DIR = Path(__file__).resolve().parent / "lua"


def lua() -> str:
    path = shutil.which("lua5.4")
    if path is None:
        pytest.fail("lua5.4 is not installed; run the suite with `bash scripts/test`, which installs it")
    return path


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str

    def result(self) -> dict:
        assert self.returncode == 0, self.stderr
        return json.loads(self.stdout)


def run_lua(policy_text: str, tmp_path: Path, *scenario: str, root: Path | None = None,
            daemon: str = "kumod") -> Run:
    """Run the policy; ``root`` stands for / when the double reads a file; ``daemon``: kumod, or
    tsa for tsa_init.lua."""
    policy = tmp_path / "init.lua"
    policy.write_text(policy_text)
    env = {k: v for k, v in os.environ.items() if k not in ("KUMO_DOUBLE_ROOT", "KUMO_DOUBLE_DAEMON")}
    env["KUMO_DOUBLE_DAEMON"] = daemon
    if root is not None:
        env["KUMO_DOUBLE_ROOT"] = str(root)
    done = subprocess.run([lua(), str(LUA_DIR / "run_policy.lua"), str(policy), *scenario],
                          capture_output=True, text=True, env=env, timeout=60)
    return Run(done.returncode, done.stdout, done.stderr)


def run_policy(policy_text: str, tmp_path: Path, *scenario: str, root: Path | None = None,
               daemon: str = "kumod") -> dict:
    """The JSON report of a run that must succeed (the policy and the double raised nothing)."""
    return run_lua(policy_text, tmp_path, *scenario, root=root, daemon=daemon).result()


def refused(policy_text: str, tmp_path: Path, *scenario: str, root: Path | None = None) -> str:
    """The error of a run that must fail (the double, like kumod, raised for the policy)."""
    run = run_lua(policy_text, tmp_path, *scenario, root=root)
    assert run.returncode != 0, f"the double accepted it:\n{policy_text}\n{run.stdout}"
    return run.stderr


def calls(result: dict, fn: str) -> list[dict]:
    return [c["args"] for c in result["calls"] if c["fn"] == fn]


REDIS_URL = "rediss://:t0ken@redis.internal:6379"


def node_root(root: Path, hostname: str = "mta.example.com", address: str = "10.0.0.5",
              peers: list[str] | None = None) -> Path:
    """A scratch / holding what kumo-bootstrap writes before kumod loads the policy: the node's
    source address and, for a fleet, the peers' addresses and the Redis URL (with a newline, as
    a fetched secret may end)."""
    from kumo_infra.bootstrap.policy import SOURCE_ADDRESS_PATH
    from kumo_infra.fleet import FLEET_PEERS_PATH, REDIS_URL_PATH

    write_file(root, SOURCE_ADDRESS_PATH, json.dumps({"source": {hostname: {"source_address": address}}}))
    write_file(root, FLEET_PEERS_PATH, json.dumps(peers if peers is not None else ["10.0.0.5", "10.0.0.6"]))
    write_file(root, REDIS_URL_PATH, REDIS_URL + "\n")
    return root


def write_file(root: Path, path: str, content: str | bytes) -> Path:
    """A file at the absolute ``path`` under the scratch ``root``."""
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(content.encode() if isinstance(content, str) else content)
    return target

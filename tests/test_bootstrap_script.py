"""kumo-bootstrap's own helpers, sourced into a real bash on the host.

The booted-VM test proves the whole script; these pin down the parts whose
mistakes are subtle: JSON the status file is made of, number comparison beyond
64 bits, the step runner's bookkeeping, and "nothing to install" being empty.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from kumo_infra.bootstrap import FILES

SCRIPT = FILES / "kumo-bootstrap.sh"


def bash(body: str, tmp_path: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    prelude = f"""
set -uo pipefail
. {SCRIPT}
WORK={tmp_path}/work; mkdir -p "$WORK"
STATE_DIR={tmp_path}/state; mkdir -p "$STATE_DIR"
STATUS=$STATE_DIR/status.json
LOG={tmp_path}/bootstrap.log
STARTED=2026-01-01T00:00:00Z
KUMO_HOSTNAME=mta.example.com KUMO_CLOUD=aws KUMO_OS=debian12
"""
    full_env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **(env or {})}
    return subprocess.run(["bash", "-c", prelude + body], capture_output=True, text=True, env=full_env, timeout=60)


@pytest.mark.parametrize("text", ['plain', 'quote " and back\\slash', "tab\there\nnew line", "ünïcode"])
def test_json_str_round_trips(text, tmp_path):
    result = bash('json_str "$VALUE"', tmp_path, {"VALUE": text})
    assert json.loads(result.stdout) == text


def test_json_array_empty_and_full(tmp_path):
    out = bash('a=(); json_array ${a[@]+"${a[@]}"}; echo; json_array x "y z"', tmp_path).stdout.splitlines()
    assert json.loads(out[0]) == [] and json.loads(out[1]) == ["x", "y z"]


@pytest.mark.parametrize("a, b, gt", [
    ("18446744073692774399", "68719476736", True),  # kernel.shmmax default, beyond bash arithmetic
    ("9223372036854775807", "250000", True),
    ("65530", "768000", False),
    ("768000", "768000", False),
])
def test_num_gt_any_size(a, b, gt, tmp_path):
    assert (bash(f"num_gt {a} {b}", tmp_path).returncode == 0) is gt


def test_spool_tools_prints_nothing_when_nothing_is_missing(tmp_path):
    tools = tmp_path / "bin"
    tools.mkdir()
    for name in ("mkfs.xfs", "mdadm"):
        (tools / name).write_text("#!/bin/sh\n")
        (tools / name).chmod(0o755)
    env = {"PATH": f"{tools}:/usr/bin:/bin"}
    out = bash('KUMO_SPOOL_FS=xfs KUMO_SPOOL_DEVICES=2; mapfile -t t < <(spool_tools); echo "${#t[@]}"', tmp_path, env)
    assert out.stdout.strip() == "0"
    missing = bash('KUMO_SPOOL_FS=xfs KUMO_SPOOL_DEVICES=2; spool_tools', tmp_path, {"PATH": "/nonexistent:/bin"})
    assert missing.stdout.split() == ["xfsprogs", "mdadm"] or missing.stdout.split() == ["mdadm"]


def test_step_runner_records_changes_facts_and_failures(tmp_path):
    body = """
step_good() { changed "wrote a file"; fact answer 42; }
step_quiet() { :; }
step_bad() { false; echo never; }
step_refused() { die "the repository is unreachable"; }
run_step good step_good; run_step quiet step_quiet
run_step bad step_bad
FAILED_STEP=""; run_step refused step_refused
write_status failed
cat "$STATUS"
"""
    result = bash(body, tmp_path)
    status = json.loads(result.stdout[result.stdout.index("{"):])
    steps = {s["name"]: s for s in status["steps"]}
    assert steps["good"]["changed"] is True and steps["good"]["changes"] == ["wrote a file"]
    assert steps["quiet"]["changed"] is False and steps["quiet"]["changes"] == []
    # errexit works inside steps: the failing command stops the step and is named.
    assert steps["bad"]["status"] == "failed" and "false" in steps["bad"]["detail"]
    assert "never" not in (tmp_path / "bootstrap.log").read_text()
    assert steps["refused"]["status"] == "failed" and steps["refused"]["detail"] == "the repository is unreachable"
    assert status["facts"]["answer"] == 42 and status["result"] == "failed" and status["failed_step"] == "refused"
    assert status["changed"] is True and status["hostname"] == "mta.example.com"


# mount, mountpoint and findmnt stand-ins: $T/mounted holds the source once "mounted".
MOUNT_STUBS = """
T={tmp}; SPOOL=$T/spool
mountpoint() {{ [ -s "$T/mounted" ]; }}
findmnt() {{ cat "$T/mounted"; }}
sleep() {{ :; }}
mount() {{ {mount_body}; }}
step_mount() {{ mount_spool /dev/nvme0n1; }}
run_step spool step_mount; echo "rc=$?"
"""


@pytest.mark.parametrize("mount_body, ok, detail", [
    # systemd mounted the re-created filesystem first: our mount says "already mounted".
    ('echo /dev/nvme0n1 >"$T/mounted"; return 32', True, ""),
    ('echo /dev/nvme0n1 >"$T/mounted"', True, ""),
    # The mount keeps failing: a clear failure, never a silent success.
    ("return 32", False, "cannot mount"),
    # Something else sits on the spool path: refuse to hand kumod the wrong disk.
    ('echo /dev/nvme1n1 >"$T/mounted"; return 32', False, "not the spool device /dev/nvme0n1"),
])
def test_mount_spool_survives_systemd_winning_the_race(mount_body, ok, detail, tmp_path):
    result = bash(MOUNT_STUBS.format(tmp=tmp_path, mount_body=mount_body), tmp_path)
    assert ("rc=0" in result.stdout) is ok, result.stdout + result.stderr
    assert detail in result.stdout

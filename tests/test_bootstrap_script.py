"""kumo-bootstrap's own helpers, sourced into a real bash on the host.

The booted-VM test proves the whole script; these pin down the parts whose
mistakes are subtle: JSON the status file is made of, number comparison beyond
64 bits, the step runner's bookkeeping, and "nothing to install" being empty.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from kumo_infra.bootstrap import FILES

SCRIPT = FILES / "kumo-bootstrap.sh"


def bash(body: str, tmp_path: Path, env: dict[str, str] | None = None, stdin: str = "") -> subprocess.CompletedProcess:
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
    return subprocess.run(["bash", "-c", prelude + body], capture_output=True, text=True, env=full_env, timeout=60,
                          input=stdin)


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
    out = bash('KUMO_SPOOL_STORAGE=local_nvme KUMO_SPOOL_FS=xfs KUMO_SPOOL_DEVICES=2; mapfile -t t < <(spool_tools); echo "${#t[@]}"', tmp_path, env)
    assert out.stdout.strip() == "0"
    missing = bash('KUMO_SPOOL_STORAGE=local_nvme KUMO_SPOOL_FS=xfs KUMO_SPOOL_DEVICES=2; spool_tools', tmp_path, {"PATH": "/nonexistent:/bin"})
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


# -- point 1: the outbound-25 probe passes each host as data ---------------------------------

@pytest.mark.parametrize("payload", [
    # (probe_hosts are space-separated: each payload is one host, so without a space)
    "$(touch${IFS}%(marker)s)",
    "`touch${IFS}%(marker)s`",
    "x;touch${IFS}%(marker)s",
    "x/25;touch${IFS}%(marker)s;#",
    "x'\"$(touch${IFS}%(marker)s)\"'",
    "*",
])
def test_probe_host_is_never_code(payload, tmp_path):
    marker = tmp_path / "marker"
    host = payload % {"marker": marker}
    # `timeout` is wrapped to record its argv exactly (NUL-separated) before the real one runs it.
    tools = tmp_path / "bin"
    tools.mkdir()
    wrapper = tools / "timeout"
    wrapper.write_text(f'#!/bin/bash\nprintf "%s\\0" "$@" >>{tmp_path}/argv\nexec /usr/bin/timeout "$@"\n')
    wrapper.chmod(0o755)
    body = """
KUMO_PROBE_HOSTS=$HOSTS KUMO_PROBE_TIMEOUT_S=2 KUMO_OUTBOUND_MODE=relay
run_step probe25 step_probe25
write_status ok; cat "$STATUS"
"""
    result = bash(body, tmp_path, {"HOSTS": host, "PATH": f"{tools}:/usr/sbin:/usr/bin:/sbin:/bin"})
    status = json.loads(result.stdout[result.stdout.index("{"):])
    assert not marker.exists(), "a probe host ran as code"
    assert status["facts"]["outbound_25"] == "blocked"
    calls = (tmp_path / "argv").read_bytes().split(b"\0")[:-1]
    # One probe per space-separated host, the host as its own argument after the inner script.
    assert [c.decode() for c in calls] == ["2", "bash", "-c", 'exec 3<>"/dev/tcp/$1/25"', "kumo-probe", host]


def test_probe_hosts_split_on_spaces_without_pathname_expansion(tmp_path):
    (tmp_path / "a-file-a-glob-would-find").write_text("")
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "timeout").write_text(f'#!/bin/bash\nprintf "%s\\n" "${{@: -1}}" >>{tmp_path}/hosts\nexit 1\n')
    (tools / "timeout").chmod(0o755)
    body = f'cd {tmp_path}; KUMO_PROBE_HOSTS="mx1.example.net *  192.0.2.1" KUMO_PROBE_TIMEOUT_S=1 KUMO_OUTBOUND_MODE=relay\n' \
           "run_step probe25 step_probe25"
    bash(body, tmp_path, {"PATH": f"{tools}:/usr/bin:/bin"})
    assert (tmp_path / "hosts").read_text().split("\n")[:-1] == ["mx1.example.net", "*", "192.0.2.1"]


# -- point 4: the spool never touches a disk kumo-infra did not make ---------------------------

# Fake block devices: $T/dev/NAME files; what the tools would see is in $T/meta/NAME.*:
#   .sigs   one signature type per line (what wipefs -n lists)   .label  blkid LABEL
#   .pttype blkid PTTYPE    .mount  a mount point    .parts  partition names    .holder  a holder
DISK_STUBS = r"""
T={tmp}
SYSFS=$T/sys DEVDIR=$T/dev SPOOL=$T/spool
is_block_device() {{ [ -f "$1" ]; }}
meta() {{ cat "$T/meta/$(basename "$1").$2" 2>/dev/null || true; }}
wipefs() {{ local dev=${{*: -1}}; [ -e "$dev" ] || return 1; meta "$dev" sigs; }}
blkid() {{
  local key="" dev=${{*: -1}}
  while [ $# -gt 0 ]; do [ "$1" = -s ] && key=$2; shift; done
  case "$key" in LABEL) meta "$dev" label ;; PTTYPE) meta "$dev" pttype ;; TYPE) meta "$dev" sigs | head -n 1 ;; esac
}}
lsblk() {{
  local dev=${{*: -1}}
  case "$*" in
    *MOUNTPOINT*) meta "$dev" mount; echo ;;
    *NAME*) basename "$dev"; meta "$dev" parts ;;
  esac
}}
"""


def make_disks(tmp_path: Path, disks: dict[str, dict[str, str]]) -> None:
    (tmp_path / "dev").mkdir(exist_ok=True)
    (tmp_path / "meta").mkdir(exist_ok=True)
    for name, meta in disks.items():
        (tmp_path / "dev" / name).write_text("")
        (tmp_path / "sys/block" / name / "device").mkdir(parents=True, exist_ok=True)
        (tmp_path / "sys/block" / name / "device/model").write_text(meta.pop("model", "QEMU NVMe Ctrl") + "\n")
        holders = tmp_path / "sys/class/block" / name / "holders"
        holders.mkdir(parents=True, exist_ok=True)
        if meta.pop("holder", ""):
            (holders / "md127").write_text("")
        for key, value in meta.items():
            (tmp_path / "meta" / f"{name}.{key}").write_text(value + "\n")


def find_devices(tmp_path: Path, settings: str) -> tuple[list[str], dict[str, str]]:
    body = DISK_STUBS.format(tmp=tmp_path) + settings + """
find_spool_devices >"$T/found"
cat "$T/found"; echo ---; cat "$WORK/spool-refused"
"""
    result = bash(body, tmp_path)
    found, refused = result.stdout.split("---\n")
    return ([Path(line).name for line in found.splitlines()],
            {Path(line.split("\t")[0]).name: line.split("\t")[1] for line in refused.splitlines()})


LOCAL_AWS = ("KUMO_SPOOL_STORAGE=local_nvme KUMO_SPOOL_DEVICES={n} KUMO_SPOOL_DEVICE_PATHS='' "
             "KUMO_NVME_DEVICE_GLOBS=''\n")


@pytest.mark.parametrize("meta, reason", [
    ({"sigs": "xfs", "label": "oldspool"}, "holds xfs labelled oldspool, not made by kumo-infra"),
    ({"sigs": "ext4"}, "holds ext4, not made by kumo-infra"),
    ({"sigs": "gpt\nPMBR", "pttype": "gpt"}, "holds PMBR,gpt, not made by kumo-infra"),
    ({"pttype": "dos"}, "holds dos, not made by kumo-infra"),
    ({"sigs": "linux_raid_member", "label": "otherhost:data"}, "not made by kumo-infra"),
    ({"sigs": "LVM2_member"}, "holds LVM2_member"),
    # Our label beside another signature is not ours either.
    ({"sigs": "xfs\nLVM2_member", "label": "kumospool"}, "not made by kumo-infra"),
    ({"mount": "/srv/data"}, "in use"),
    ({"parts": "nvme1n1p1"}, "in use"),
    ({"holder": "1"}, "in use"),
])
def test_local_nvme_refuses_every_disk_that_is_not_blank_or_ours(meta, reason, tmp_path):
    make_disks(tmp_path, {"nvme1n1": meta, "nvme2n1": {}})
    found, refused = find_devices(tmp_path, LOCAL_AWS.format(n=2))
    assert found == ["nvme2n1"]
    assert reason in refused["nvme1n1"]


@pytest.mark.parametrize("meta", [
    {},
    {"sigs": "xfs", "label": "kumospool"},
    {"sigs": "ext4", "label": "kumospool"},
    {"sigs": "linux_raid_member", "label": "mta1:kumospool"},
])
def test_local_nvme_takes_blank_disks_and_its_own(meta, tmp_path):
    make_disks(tmp_path, {"nvme1n1": meta})
    assert find_devices(tmp_path, LOCAL_AWS.format(n=1)) == (["nvme1n1"], {})


def test_local_nvme_never_takes_an_ebs_volume_or_more_than_the_plan(tmp_path):
    make_disks(tmp_path, {"nvme0n1": {"model": "Amazon Elastic Block Store"}, "nvme1n1": {}, "nvme2n1": {},
                          "nvme3n1": {}})
    found, _ = find_devices(tmp_path, LOCAL_AWS.format(n=2))
    assert found == ["nvme1n1", "nvme2n1"]


def test_block_spool_is_only_its_exact_paths_never_a_scan(tmp_path):
    make_disks(tmp_path, {"nvme1n1": {}, "nvme2n1": {}})
    settings = "KUMO_SPOOL_STORAGE=block KUMO_SPOOL_DEVICES=1 " \
               f"KUMO_SPOOL_DEVICE_PATHS='{tmp_path}/dev/by-id-absent {tmp_path}/dev/xvdf'\n"
    # Free, blank disks exist, but none at the volume's own paths: nothing is taken.
    assert find_devices(tmp_path, settings) == ([], {})
    (tmp_path / "dev/by-id-absent").symlink_to(tmp_path / "dev/nvme2n1")
    assert find_devices(tmp_path, settings) == (["nvme2n1"], {})


def test_block_volume_holding_foreign_data_is_refused_at_once(tmp_path):
    make_disks(tmp_path, {"xvdf": {"sigs": "xfs", "label": "somebodys"}})
    body = DISK_STUBS.format(tmp=tmp_path) + f"""
KUMO_SPOOL_STORAGE=block KUMO_SPOOL_DEVICES=1 KUMO_SPOOL_DEVICE_PATHS={tmp_path}/dev/xvdf
KUMO_SPOOL_FS=xfs KUMO_DEVICE_WAIT_S=600
id() {{ :; }}; mountpoint() {{ return 1; }}; sleep() {{ echo slept >>"$T/slept"; }}
run_step spool step_spool; write_status failed; cat "$STATUS"
"""
    result = bash(body, tmp_path)
    status = json.loads(result.stdout[result.stdout.index("{"):])
    (spool,) = status["steps"]
    assert spool["status"] == "failed" and "xvdf holds xfs labelled somebodys" in spool["detail"]
    assert not (tmp_path / "slept").exists()  # no waiting for a volume that will not change


RAID_BODY = r"""
KUMO_SPOOL_STORAGE=local_nvme KUMO_SPOOL_DEVICES=2 KUMO_SPOOL_DEVICE_PATHS='' KUMO_NVME_DEVICE_GLOBS=''
KUMO_SPOOL_FS=xfs
KUMO_DEVICE_WAIT_S=0
id() { :; }; mountpoint() { return 1; }; udevadm() { :; }
mdadm() {
  case "$1" in
    --examine) return 1 ;;
    --create) printf '%s\n' "$*" >>"$T/mdadm.log"; readlink /proc/self/fd/0 >>"$T/mdadm.stdin"; return 1 ;;
  esac
}
run_step spool step_spool; write_status failed; cat "$STATUS"
"""


def test_raid_is_created_without_run_and_with_stdin_closed(tmp_path):
    make_disks(tmp_path, {"nvme1n1": {}, "nvme2n1": {}})
    # Whatever the bootstrap's own stdin holds (here a "yes"), mdadm must not read it.
    bash(DISK_STUBS.format(tmp=tmp_path) + RAID_BODY, tmp_path, stdin="y\n")
    (create,) = (tmp_path / "mdadm.log").read_text().splitlines()
    assert create.startswith("--create ") and "--level=0" in create and "--raid-devices=2" in create
    assert "--run" not in create.split() and "-R" not in create.split() and "--force" not in create.split()
    assert create.endswith(f"{tmp_path}/dev/nvme1n1 {tmp_path}/dev/nvme2n1")
    # mdadm reads "no" from a closed stdin when it finds data (Create.c: ask() on EOF).
    assert (tmp_path / "mdadm.stdin").read_text().strip() == "/dev/null"


def test_raid_members_are_checked_again_right_before_mdadm(tmp_path):
    make_disks(tmp_path, {"nvme1n1": {}, "nvme2n1": {}})
    # Blank at the scan; a filesystem appears before mdadm would run.
    stubs = DISK_STUBS.format(tmp=tmp_path) + r"""
wipefs() {
  local dev=${*: -1} n
  n=$(cat "$T/wipefs-calls" 2>/dev/null || echo 0); echo $((n + 1)) >"$T/wipefs-calls"
  if [ "$n" -ge 2 ] && [ "$(basename "$dev")" = nvme2n1 ]; then echo ext4; fi
}
"""
    result = bash(stubs + RAID_BODY, tmp_path)
    status = json.loads(result.stdout[result.stdout.index("{"):])
    (spool,) = status["steps"]
    assert spool["status"] == "failed" and "nvme2n1 is not blank (ext4)" in spool["detail"]
    assert not (tmp_path / "mdadm.log").exists()


def test_single_device_is_checked_again_right_before_mkfs(tmp_path):
    make_disks(tmp_path, {"nvme1n1": {}})
    stubs = DISK_STUBS.format(tmp=tmp_path) + r"""
wipefs() {
  local n; n=$(cat "$T/wipefs-calls" 2>/dev/null || echo 0); echo $((n + 1)) >"$T/wipefs-calls"
  if [ "$n" -ge 1 ]; then echo gpt; fi
}
mkfs.xfs() { echo "$*" >>"$T/mkfs.log"; }
"""
    body = stubs + """
KUMO_SPOOL_STORAGE=local_nvme KUMO_SPOOL_DEVICES=1 KUMO_SPOOL_DEVICE_PATHS='' KUMO_NVME_DEVICE_GLOBS=''
KUMO_SPOOL_FS=xfs
KUMO_DEVICE_WAIT_S=0
id() { :; }; mountpoint() { return 1; }; udevadm() { :; }
run_step spool step_spool; write_status failed; cat "$STATUS"
"""
    result = bash(body, tmp_path)
    status = json.loads(result.stdout[result.stdout.index("{"):])
    assert "is not blank (gpt); refusing to format it" in status["steps"][0]["detail"]
    assert not (tmp_path / "mkfs.log").exists()


# -- point 11: mutants of the spool mount and the install step -------------------------------

def test_spool_fstab_line_mounts_noatime_by_label(tmp_path):
    fstab = tmp_path / "fstab"
    fstab.write_text("/dev/vda / ext4 defaults 0 1\n/dev/old /var/spool/kumomta xfs defaults 0 2\n"
                     "# /var/spool/kumomta stays a comment\n")
    body = f"""
FSTAB={fstab} SPOOL=/var/spool/kumomta KUMO_SPOOL_FS=xfs
run_step fstab ensure_spool_fstab; run_step again ensure_spool_fstab; write_status ok; cat "$STATUS"
"""
    result = bash(body, tmp_path)
    status = json.loads(result.stdout[result.stdout.index("{"):])
    lines = fstab.read_text().splitlines()
    assert lines[:2] == ["/dev/vda / ext4 defaults 0 1", "# /var/spool/kumomta stays a comment"]
    source, mount_point, fstype, options, dump, passno = lines[2].split()
    assert (source, mount_point, fstype) == ("LABEL=kumospool", "/var/spool/kumomta", "xfs")
    # noatime: KumoMTA's spool must not write an inode for every read; nofail: a wiped local
    # disk must not stop the boot.
    assert options.split(",") == ["noatime", "nofail"]
    assert (dump, passno) == ("0", "2")
    assert [s["changed"] for s in status["steps"]] == [True, False]


INSTALL_STUBS = r"""
T={tmp}
KUMO_PKG_FAMILY=apt KUMO_PACKAGE=kumomta KUMO_OTHER_PACKAGE=kumomta-dev KUMO_VERSION={version}
KUMO_SPOOL_STORAGE=block KUMO_SPOOL_FS=xfs KUMO_SPOOL_DEVICES=1 KUMO_REPO_KEY_URL=http://192.0.2.1/k KUMO_REPO_KEY_FINGERPRINT={fpr}
KUMO_REPO_WAIT_S=0
dpkg-query() {{ case "${{*: -1}}" in kumomta) echo "ii 2026.03.04-1fbb1b18" ;; esac; }}
command() {{ [ "$2" = mkfs.xfs ] || builtin command "$@"; }}
apt-get() {{ echo "apt-get $*" >>"$T/pkg.log"; }}
dnf() {{ echo "dnf $*" >>"$T/pkg.log"; }}
curl() {{ echo "curl $*" >>"$T/pkg.log"; return 1; }}
id() {{ :; }}
run_step install step_install; write_status ok; cat "$STATUS"
"""


@pytest.mark.parametrize("version", ["", "2026.03.04-1fbb1b18", "2026.03.04"])
def test_install_leaves_the_wanted_version_alone(version, tmp_path):
    result = bash(INSTALL_STUBS.format(tmp=tmp_path, version=version, fpr="A" * 40), tmp_path)
    status = json.loads(result.stdout[result.stdout.index("{"):])
    (install,) = status["steps"]
    assert install["status"] == "ok" and install["changed"] is False and install["changes"] == []
    assert not (tmp_path / "pkg.log").exists(), (tmp_path / "pkg.log").read_text()
    assert status["facts"]["kumomta_version"] == "2026.03.04-1fbb1b18"


def test_install_of_another_version_goes_to_the_repository(tmp_path):
    # The control for the test above: with another version wanted, the stubs do see the attempt.
    result = bash(INSTALL_STUBS.format(tmp=tmp_path, version="2027.01.01", fpr="A" * 40), tmp_path)
    status = json.loads(result.stdout[result.stdout.index("{"):])
    assert status["steps"][0]["status"] == "failed"
    assert "curl" in (tmp_path / "pkg.log").read_text()


def test_install_without_a_fingerprint_over_http_is_refused(tmp_path):
    # Trust on first use needs verified https; config refuses http without a fingerprint too.
    result = bash(INSTALL_STUBS.format(tmp=tmp_path, version="2027.01.01", fpr="''"), tmp_path)
    status = json.loads(result.stdout[result.stdout.index("{"):])
    assert status["steps"][0]["status"] == "failed"
    assert "is not https: set kumomta.repo_key_fingerprint" in status["steps"][0]["detail"]
    assert not (tmp_path / "pkg.log").exists()  # nothing fetched, nothing installed


# -- point 7: the repository key is trusted only with the pinned fingerprint ------------------

@pytest.fixture(scope="module")
def two_keys(tmp_path_factory) -> dict[str, tuple[str, Path]]:
    """Two real OpenPGP signing keys: name -> (fingerprint, armored public key file)."""
    home = tmp_path_factory.mktemp("gnupg")
    home.chmod(0o700)
    env = {"GNUPGHOME": str(home), "PATH": "/usr/bin:/bin"}
    gpg = ["gpg", "--batch", "--quiet", "--pinentry-mode", "loopback", "--passphrase", ""]
    keys = {}
    try:
        for name in ("mirror", "other"):
            subprocess.run([*gpg, "--quick-gen-key", f"{name} <{name}@kumo-infra.invalid>", "ed25519", "sign", "never"],
                           check=True, env=env, capture_output=True)
            listing = subprocess.run([*gpg, "--with-colons", "--fingerprint", f"{name}@kumo-infra.invalid"],
                                     check=True, env=env, capture_output=True, text=True).stdout
            fpr = next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))
            armored = home / f"{name}.asc"
            armored.write_text(subprocess.run([*gpg, "--armor", "--export", fpr], check=True, env=env,
                                              capture_output=True, text=True).stdout)
            keys[name] = (fpr, armored)
        signed = home / "Release"
        signed.write_text("Origin: test\n")
        subprocess.run([*gpg, "--local-user", keys["mirror"][0], "--detach-sign", "-o", f"{signed}.gpg", str(signed)],
                       check=True, env=env)
        keys["signed"] = ("", signed)
    finally:
        subprocess.run(["gpgconf", "--kill", "all"], env=env, check=False)
    return keys


def trust(tmp_path: Path, key_file: Path, expected: str, armor: str = "") -> tuple[dict, Path]:
    out = tmp_path / "kumomta.gpg"
    body = f"""
KUMO_REPO_KEY_URL=https://mirror.example.net/kumomta-ubuntu-22/public.gpg
step_key() {{ trust_repo_key {key_file} {expected} {out} {armor}; }}
run_step install step_key; write_status failed; cat "$STATUS"
"""
    result = bash(body, tmp_path)
    return json.loads(result.stdout[result.stdout.index("{"):])["steps"][0], out


def test_repository_key_with_the_pinned_fingerprint_is_trusted(two_keys, tmp_path):
    fpr, key = two_keys["mirror"]
    step, keyring = trust(tmp_path, key, fpr)
    assert step["status"] == "ok", step
    # apt's signed-by keyring: gpgv verifies the mirror's signature with it (and only with it).
    _, release = two_keys["signed"]
    ok = subprocess.run(["gpgv", "--keyring", str(keyring), f"{release}.gpg", str(release)], capture_output=True)
    assert ok.returncode == 0, ok.stderr
    step, armored = trust(tmp_path, key, fpr, "--armor")
    assert armored.read_text().startswith("-----BEGIN PGP PUBLIC KEY BLOCK-----")


def test_repository_key_with_another_fingerprint_fails_naming_both(two_keys, tmp_path):
    served, key = two_keys["other"]
    pinned = two_keys["mirror"][0]
    step, keyring = trust(tmp_path, key, pinned)
    assert step["status"] == "failed" and step["name"] == "install"
    assert f"expected {pinned}" in step["detail"] and f"is {served}" in step["detail"]
    assert not keyring.exists()


def test_repository_key_file_with_a_second_key_is_refused(two_keys, tmp_path):
    both = tmp_path / "both.asc"
    both.write_text(two_keys["mirror"][1].read_text() + two_keys["other"][1].read_text())
    step, keyring = trust(tmp_path, both, two_keys["mirror"][0])
    assert step["status"] == "failed" and "holds 2 keys" in step["detail"]
    assert not keyring.exists()


def test_repository_key_that_is_no_key_is_refused(tmp_path):
    junk = tmp_path / "public.gpg"
    junk.write_text("<html>404</html>\n")
    step, keyring = trust(tmp_path, junk, "A" * 40)
    assert step["status"] == "failed" and "is not an OpenPGP key" in step["detail"]
    assert not keyring.exists()


# -- point 8: SSH password logins are turned off --------------------------------------------

SSHD_STUB = r"""#!/bin/bash
# sshd stand-in: -T prints the effective PasswordAuthentication the way sshd resolves it (first
# value wins; drop-ins where the Include line is); -t checks the syntax.
conf=$SSHD_CONF_UNDER_TEST
case "$1" in
  -t) ! grep -q BROKEN "$conf" $(dirname "$conf")/sshd_config.d/*.conf 2>/dev/null ;;
  -T) files=()
      while read -r line; do
        case "$line" in Include*) files+=($(dirname "$conf")/sshd_config.d/*.conf) ;; *) files+=(/dev/null) ;; esac
      done <"$conf"
      value=$( { for f in "$conf.first" "${files[@]}" "$conf"; do cat "$f" 2>/dev/null; done; } \
        | awk 'tolower($1) == "passwordauthentication" { print tolower($2); exit }')
      # Like sshd: the answer among many more lines (written after a reader could have gone).
      echo "passwordauthentication ${value:-yes}"; sleep 0.2; seq -f "setting%g value" 1 2000 ;;
esac
"""


@pytest.mark.parametrize("include", [True, False])
def test_ssh_password_authentication_is_turned_off(include, tmp_path):
    etc = tmp_path / "ssh"
    (etc / "sshd_config.d").mkdir(parents=True)
    conf = etc / "sshd_config"
    conf.write_text(("Include /etc/ssh/sshd_config.d/*.conf\n" if include else "") + "PasswordAuthentication yes\n")
    (etc / "sshd_config.d/50-cloud-init.conf").write_text("PasswordAuthentication yes\n")
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "sshd").write_text(SSHD_STUB)
    (tools / "sshd").chmod(0o755)
    body = f"""
SSHD_CONFIG={conf} SSHD_DROPIN={etc}/sshd_config.d/01-kumo-infra.conf
systemctl() {{ echo "systemctl $*" >>"{tmp_path}/systemctl.log"; [ "$1" != is-active ] || [ "$3" = ssh ]; }}
run_step ssh step_ssh; run_step again step_ssh; write_status ok; cat "$STATUS"
"""
    env = {"PATH": f"{tools}:/usr/bin:/bin", "SSHD_CONF_UNDER_TEST": str(conf)}
    result = bash(body, tmp_path, env)
    status = json.loads(result.stdout[result.stdout.index("{"):])
    first, again = status["steps"]
    assert first["status"] == "ok" and first["changes"] == ["SSH password authentication turned off"], first
    assert again["changed"] is False  # the second run finds it off
    assert status["facts"]["ssh_password_authentication"] == "no"
    if include:
        assert (etc / "sshd_config.d/01-kumo-infra.conf").read_text().splitlines()[1:] == [
            "PasswordAuthentication no", "KbdInteractiveAuthentication no"]
    else:
        assert conf.read_text().splitlines()[1] == "PasswordAuthentication no"
    assert "systemctl reload ssh" in (tmp_path / "systemctl.log").read_text()


def test_other_mtas_stops_the_mtas_and_leaves_qpidd_an_amqp_broker_alone(tmp_path):
    body = f"""
systemctl() {{ echo "$*" >>"{tmp_path}/systemctl.log"
  case "$1" in list-unit-files) echo "$2 enabled" ;; is-active|is-enabled) [ "${{2:-}}" != --quiet ] || return 0; echo enabled ;; esac; }}
run_step other_mtas step_other_mtas; write_status ok; cat "$STATUS"
"""
    result = bash(body, tmp_path)
    status = json.loads(result.stdout[result.stdout.index("{"):])
    assert status["facts"]["other_mtas_disabled"] == ["postfix", "exim4", "sendmail"]
    calls = (tmp_path / "systemctl.log").read_text()
    assert "mask postfix" in calls and "disable --now sendmail" in calls
    assert "qpidd" not in calls


# -- point 8: the updates step drives each family's tool -----------------------------------

UPDATES_STUBS = r"""
T={tmp}
KUMO_PKG_FAMILY={family} KUMO_OS_UPDATES={automatic} KUMO_OS_REBOOT={reboot}
installed_version() {{ [ -e "$T/installed.$1" ] && echo 1.0-1; return 0; }}
pkg_install() {{ echo "install $*" >>"$T/log"; for p in "$@"; do : >"$T/installed.$p"; done; }}
install_config() {{ echo "config $1 -> $2" >>"$T/log"; changed "$2"; }}
systemctl() {{
  echo "systemctl $*" >>"$T/log"
  case "$1" in
    is-enabled) [ -e "$T/enabled.${{*: -1}}" ] && {{ echo enabled; return 0; }}; echo disabled; return 1 ;;
    is-active) return 1 ;;
    enable) : >"$T/enabled.$2" ;;
    disable) rm -f "$T/enabled.$3" ;;
  esac
}}
{setup}
run_step updates step_updates; write_status ok; cat "$STATUS"
"""


def run_updates(tmp_path: Path, family: str, automatic: str, reboot: str = "never", setup: str = "") -> tuple[dict, list[str]]:
    body = UPDATES_STUBS.format(tmp=tmp_path, family=family, automatic=automatic, reboot=reboot, setup=setup)
    result = bash(body, tmp_path)
    status = json.loads(result.stdout[result.stdout.index("{"):])
    log = (tmp_path / "log").read_text().splitlines() if (tmp_path / "log").exists() else []
    return status, log


@pytest.mark.parametrize("family, tool, config, unit", [
    ("dnf", "dnf-automatic", "/etc/dnf/automatic.conf", "dnf-automatic.timer"),
    ("yum", "yum-cron", "/etc/yum/yum-cron.conf", "yum-cron.service"),
])
def test_updates_installs_configures_and_enables_the_familys_tool(family, tool, config, unit, tmp_path):
    status, log = run_updates(tmp_path, family, "security")
    assert status["steps"][0]["status"] == "ok", status
    assert f"install {tool}" in log
    assert f"config /etc/kumo-infra/os-updates.conf -> {config}" in log
    assert f"systemctl enable {unit}" in log and f"systemctl start {unit}" in log
    assert "systemctl enable kumo-os-reboot.timer" not in log  # reboot: never
    assert status["facts"]["os_updates"]["units"] == {unit: "enabled", "kumo-os-reboot.timer": "disabled"}


def test_updates_reboot_window_enables_the_reboot_timer(tmp_path):
    status, log = run_updates(tmp_path, "dnf", "security", "window")
    assert "install dnf-plugins-core" in log  # needs-restarting -r
    assert "systemctl enable kumo-os-reboot.timer" in log and "systemctl start kumo-os-reboot.timer" in log
    assert status["facts"]["os_updates"]["units"]["kumo-os-reboot.timer"] == "enabled"


def test_updates_off_installs_nothing_and_disables_the_tool(tmp_path):
    setup = f'T={tmp_path}; : >"$T/installed.dnf-automatic"; : >"$T/enabled.dnf-automatic.timer"'
    status, log = run_updates(tmp_path, "dnf", "off", setup=setup)
    assert not any(line.startswith(("install ", "config ")) for line in log), log
    assert "systemctl disable --now dnf-automatic.timer" in log
    assert status["facts"]["os_updates"]["units"]["dnf-automatic.timer"] == "disabled"
    # apt: the configuration itself says Unattended-Upgrade "0"; nothing is installed.
    (tmp_path / "log").unlink()
    status, log = run_updates(tmp_path, "apt", "off")
    assert [line for line in log if not line.startswith("systemctl is-")] == [
        "config /etc/kumo-infra/os-updates.conf -> /etc/apt/apt.conf.d/52kumo-infra-os-updates"]


# -- trust on first use: KumoMTA publishes no fingerprint, so without a configured one the key
# served over https is trusted once and pinned on the node ------------------------------------

FIRST_USE_STUBS = r"""
T={tmp}
KUMO_PKG_FAMILY=apt KUMO_PACKAGE=kumomta KUMO_OTHER_PACKAGE=kumomta-dev KUMO_VERSION=2027.01.01
KUMO_SPOOL_STORAGE=block KUMO_SPOOL_FS=xfs KUMO_SPOOL_DEVICES=1 KUMO_REPO_KEY_URL=https://openrepo.example.net/k/public.gpg
KUMO_REPO_KEY_FINGERPRINT='' KUMO_REPO_WAIT_S=0 APT_KEYRING=$T/kumomta.gpg CONF_DIR=$T
dpkg-query() {{ case "${{*: -1}}" in kumomta|curl|gnupg|ca-certificates) echo "ii 2026.03.04-1fbb1b18" ;; esac; }}
command() {{ [ "$2" = mkfs.xfs ] || builtin command "$@"; }}
apt-get() {{ echo "apt-get $*" >>"$T/pkg.log"; }}
curl() {{ cp {key} "$WORK/repo-key"; }}
install() {{ echo "install $*" >>"$T/install.log"; }}
id() {{ :; }}
run_step install step_install; write_status ok; cat "$STATUS"
"""


def install_serving(tmp_path: Path, key: Path) -> dict:
    result = bash(FIRST_USE_STUBS.format(tmp=tmp_path, key=key), tmp_path)
    return json.loads(result.stdout[result.stdout.index("{"):])


def test_first_use_trusts_the_one_key_served_over_https_and_pins_it(two_keys, tmp_path):
    fpr, key = two_keys["mirror"]
    status = install_serving(tmp_path, key)
    (install,) = status["steps"]
    assert install["status"] == "ok", install
    assert status["facts"]["repo_key_trust"] == "first-use"
    assert status["facts"]["repo_key_fingerprint"] == fpr
    assert (tmp_path / "state" / "repo-key.fingerprint").read_text().strip() == fpr
    assert f"pinned repository key {fpr} (trusted on first use)" in install["changes"]
    _, release = two_keys["signed"]
    ok = subprocess.run(["gpgv", "--keyring", str(tmp_path / "kumomta.gpg"), f"{release}.gpg", str(release)],
                        capture_output=True)
    assert ok.returncode == 0, ok.stderr


def test_after_first_use_another_key_is_refused_naming_both(two_keys, tmp_path):
    pinned, key = two_keys["mirror"]
    assert install_serving(tmp_path, key)["steps"][0]["status"] == "ok"
    keyring = (tmp_path / "kumomta.gpg").read_bytes()
    served, other = two_keys["other"]
    (install,) = install_serving(tmp_path, other)["steps"]
    assert install["status"] == "failed"
    assert f"expected {pinned}" in install["detail"] and f"is {served}" in install["detail"]
    assert (tmp_path / "kumomta.gpg").read_bytes() == keyring  # the trusted key is untouched
    again = install_serving(tmp_path, key)
    assert again["steps"][0]["status"] == "ok" and again["facts"]["repo_key_trust"] == "pinned-at-first-use"


def test_first_use_refuses_a_file_with_two_keys(two_keys, tmp_path):
    both = tmp_path / "both.asc"
    both.write_text(two_keys["mirror"][1].read_text() + two_keys["other"][1].read_text())
    (install,) = install_serving(tmp_path, both)["steps"]
    assert install["status"] == "failed" and "holds 2 keys" in install["detail"]
    assert not (tmp_path / "state" / "repo-key.fingerprint").exists()


def test_first_use_pin_is_written_before_the_repository_is_used(two_keys, tmp_path):
    # apt-get update fails after the key was trusted: the pin must already be there, or the next
    # run would trust whatever key it is then served.
    fpr, key = two_keys["mirror"]
    body = FIRST_USE_STUBS.format(tmp=tmp_path, key=key).replace(
        'apt-get() {', 'apt-get() { case "$*" in *update*) return 1 ;; esac;', 1)
    result = bash(body, tmp_path)
    (install,) = json.loads(result.stdout[result.stdout.index("{"):])["steps"]
    assert install["status"] == "failed" and "apt-get update failed" in install["detail"]
    assert (tmp_path / "state" / "repo-key.fingerprint").read_text().strip() == fpr


@pytest.mark.parametrize("wanted", ["2026.03.0", "2026", "2026.03.04-1fbb1b1"])
def test_install_never_takes_a_version_prefix_for_the_wanted_version(wanted, tmp_path):
    # Installed: 2026.03.04-1fbb1b18. Only that exact version, or it without its release suffix,
    # is the wanted one; anything else goes to the repository.
    result = bash(INSTALL_STUBS.format(tmp=tmp_path, version=wanted, fpr="A" * 40), tmp_path)
    status = json.loads(result.stdout[result.stdout.index("{"):])
    assert status["steps"][0]["status"] == "failed"  # the stubbed repository does not answer
    assert "curl" in (tmp_path / "pkg.log").read_text()


def test_al2023_updates_follow_new_releases(tmp_path):
    releasever = tmp_path / "vars" / "releasever"
    setup = f"KUMO_OS=al2023 DNF_RELEASEVER={releasever}"
    status, _ = run_updates(tmp_path, "dnf", "security", setup=setup)
    assert status["steps"][0]["status"] == "ok", status
    assert releasever.read_text() == "latest\n"
    # Rocky, Alma: their repositories follow the minor release by themselves; nothing written.
    other = tmp_path / "other"
    other.mkdir()
    status, _ = run_updates(other, "dnf", "security", setup=f"KUMO_OS=rocky9 DNF_RELEASEVER={other}/releasever")
    assert status["steps"][0]["status"] == "ok" and not (other / "releasever").exists()


MOUNTED_SPOOL_STUBS = r"""
T={tmp}
KUMO_SPOOL_STORAGE={storage} KUMO_SPOOL_DEVICE_PATHS="$T/by-id/vol0abc $T/xvdf" SPOOL=$T/spool DEVDIR=$T/dev SYSFS=$T/sys
mkdir -p "$SPOOL" "$T/dev" "$T/by-id" "$T/sys/block/nvme2n1/device"
: >"$T/dev/nvme1n1"; : >"$T/dev/nvme2n1"; ln -sf "$T/dev/nvme1n1" "$T/by-id/vol0abc"
echo "Amazon Elastic Block Store" >"$T/sys/block/nvme2n1/device/model"
id() {{ :; }}; mountpoint() {{ return 0; }}; chown() {{ :; }}; chmod() {{ :; }}
findmnt() {{ case "$*" in *SOURCE*) echo "$T/dev/{mounted}" ;; *) echo x ;; esac; }}
run_step spool step_spool; write_status ok; cat "$STATUS"
"""


@pytest.mark.parametrize("storage, mounted, ours", [
    ("block", "nvme1n1", True),        # the exact volume the component attached
    ("block", "nvme2n1", False),       # another kumo-infra spool, attached to drain it, same label
    ("local_nvme", "nvme2n1", False),  # an EBS volume is never a local NVMe spool
])
def test_an_already_mounted_spool_must_be_this_nodes_device(storage, mounted, ours, tmp_path):
    result = bash(MOUNTED_SPOOL_STUBS.format(tmp=tmp_path, storage=storage, mounted=mounted), tmp_path)
    (spool,) = json.loads(result.stdout[result.stdout.index("{"):])["steps"]
    if ours:
        assert spool["status"] == "ok", spool
    else:
        assert spool["status"] == "failed"
        assert "not this node's spool device" in spool["detail"] and mounted in spool["detail"]


SECRETS_STUBS = r"""
T={tmp}
CONF_DIR=$T KUMO_SECRET_WAIT_S=600
printf 'aws:us-east-1:kumo-infra/x/relay-password\t%s/secrets/relay-password\n' "$T" >"$T/secrets.list"
python_bin() {{ echo "$T/fake-python"; }}
printf '#!/bin/sh\necho "kumo-fetch-secret: {message}" >&2\nexit {code}\n' >"$T/fake-python"; chmod +x "$T/fake-python"
install() {{ :; }}; sleep() {{ echo "sleep $*" >>"$T/sleep.log"; SECONDS=$((SECONDS + 700)); }}
run_step secrets step_secrets; write_status ok; cat "$STATUS"
"""


@pytest.mark.parametrize("code, retried", [(2, False), (1, True)])
def test_secrets_step_retries_only_what_waiting_can_fix(code, retried, tmp_path):
    # Exit 1 (a grant still propagating, the service down) is retried until the deadline; exit 2
    # (a malformed reference, a refused environment) fails at once.
    body = SECRETS_STUBS.format(tmp=tmp_path, code=code, message=f"failure {code}")
    result = bash(body, tmp_path)
    (step,) = json.loads(result.stdout[result.stdout.index("{"):])["steps"]
    assert step["status"] == "failed" and f"failure {code}" in step["detail"]
    assert (tmp_path / "sleep.log").exists() is retried


# -- issue 9: target facts come from the settings, never from KUMO_CLOUD ----------------------

def test_local_nvme_stable_names_are_the_settings_globs_expanded_one_by_one(tmp_path):
    make_disks(tmp_path, {"nvme1n1": {}, "nvme2n1": {}, "nvme3n1": {}})
    links = tmp_path / "by-id"
    links.mkdir()
    # A match with a blank in its name stays one word; a pattern with no match adds nothing.
    (links / "store_b").symlink_to(tmp_path / "dev/nvme2n1")
    (links / "store a").symlink_to(tmp_path / "dev/nvme1n1")
    (links / "store_a-part1").symlink_to(tmp_path / "dev/nvme3n1")  # a partition's name is skipped
    marker = tmp_path / "marker"
    globs = f"{links}/store* {tmp_path}/absent/* $(touch${{IFS}}{marker})*"
    settings = (f"KUMO_SPOOL_STORAGE=local_nvme KUMO_SPOOL_DEVICES=3 KUMO_SPOOL_DEVICE_PATHS='' "
                f"KUMO_NVME_DEVICE_GLOBS='{globs}'\n")
    # Found through the globs (in their sorted order), so the scan of every NVMe disk never runs:
    # nvme3n1, free and blank, is not taken.
    assert find_devices(tmp_path, settings) == (["nvme1n1", "nvme2n1"], {})
    assert not marker.exists()


def test_the_script_decides_nothing_by_the_cloud():
    # KUMO_CLOUD is information for status.json only: a new target changes no condition here.
    lines = [line.strip() for line in SCRIPT.read_text().splitlines() if "KUMO_CLOUD" in line]
    code = [line for line in lines if not line.startswith("#")]
    assert code == ['"$(json_str "$MODE")" "$(json_str "$KUMO_HOSTNAME")" "$(json_str "$KUMO_CLOUD")" '
                    '"$(json_str "$KUMO_OS")" "$result" \\']
    assert not re.search(r"\b(case|if|elif|while|until)\b[^\n]*\bKUMO_CLOUD|\[\[?[^\n]*KUMO_CLOUD", SCRIPT.read_text())


# -- issue 9: the machine's own size ---------------------------------------------------------

MACHINE_STUBS = r"""
T={tmp}
PROC=$T/proc SYSFS=$T/sys SPOOL=/var/spool/kumomta
mkdir -p "$PROC" "$SYSFS/class/net/eth0"
printf 'MemTotal:       {mem_kb} kB\nMemFree:        1000 kB\n' >"$PROC/meminfo"
for i in $(seq 0 $(({cpus} - 1))); do printf 'processor\t: %s\nmodel name\t: x\n\n' "$i"; done >"$PROC/cpuinfo"
{speed_setup}
ip() {{ echo "default via 192.0.2.1 dev eth0 proto dhcp src 192.0.2.10 metric 100"; }}
# df -Pk PATH: the root filesystem, and /var on a filesystem of its own when $T/var-fs says so.
df() {{
  local path=${{*: -1}}
  echo "Filesystem 1024-blocks Used Available Capacity Mounted on"
  if [[ "$path" == /var* ]] && [ -s "$T/var-fs" ]; then echo "/dev/sdb1 $(cat "$T/var-fs") 0 0 0% /var"
  else echo "/dev/sda1 {root_kb} 0 0 0% /"; fi
}}
KUMO_MIN_MEMORY_GIB=4 KUMO_MIN_DISK_GB=20 KUMO_SPOOL_STORAGE={storage}
KUMO_PLAN_VCPU={plan_vcpu} KUMO_PLAN_MEMORY_GIB={plan_gib} KUMO_PLAN_MBPS_PER_NODE={plan_mbps}
{setup}
run_step machine step_machine; write_status ok; cat "$STATUS"
"""

GIB_KB = 1024 * 1024
GB_KB = 10**9 / 1024  # one GB (10^9 bytes) in KiB


def machine(tmp_path: Path, *, mem_kb: int = 8 * GIB_KB, cpus: int = 2, root_kb: int = int(30 * GB_KB),
            speed: str | None = "10000", storage: str = "block", plan_vcpu: int = 2, plan_gib: float = 4,
            plan_mbps: float = 16.7, setup: str = "") -> dict:
    speed_setup = "" if speed is None else f"echo '{speed}' >\"$SYSFS/class/net/eth0/speed\""
    body = MACHINE_STUBS.format(tmp=tmp_path, mem_kb=mem_kb, cpus=cpus, root_kb=root_kb, speed_setup=speed_setup,
                                storage=storage, plan_vcpu=plan_vcpu, plan_gib=plan_gib, plan_mbps=plan_mbps,
                                setup=setup)
    result = bash(body, tmp_path)
    return json.loads(result.stdout[result.stdout.index("{"):])


def test_machine_facts_are_recorded(tmp_path):
    status = machine(tmp_path, mem_kb=7_864_320, cpus=4, root_kb=int(32 * GB_KB))
    (step,) = status["steps"]
    assert step["status"] == "ok" and step["changed"] is False, step
    facts = status["facts"]
    assert facts["cpu_count"] == 4 and facts["memory_mib"] == 7680
    assert facts["filesystem_bytes"] == {"/": int(32 * GB_KB) * 1024}
    assert facts["nic"] == "eth0" and facts["nic_speed_mbps"] == 10000
    assert status["warnings"] == []


@pytest.mark.parametrize("speed", ["-1", "", None, "unknown"])
def test_a_virtual_nics_speed_is_unknown_not_slow(speed, tmp_path):
    status = machine(tmp_path, speed=speed, plan_mbps=100000)
    assert status["facts"]["nic_speed_mbps"] == "unknown"
    assert status["warnings"] == []  # no comparison with a speed nobody knows


@pytest.mark.parametrize("mem_kb, ok", [
    (3_670_016, True),        # 3.5 GiB: the least a 4 GiB machine may show (7/8 of it)
    (3_955_000, True),        # what a 4 GiB cloud machine shows (firmware, kernel, crash kernel)
    (3_670_015, False),       # one kB less
    (2 * GIB_KB - 60_000, False),
])
def test_memory_under_the_minimum_fails_naming_memory(mem_kb, ok, tmp_path):
    status = machine(tmp_path, mem_kb=mem_kb, plan_gib=4)
    (step,) = status["steps"]
    assert (step["status"] == "ok") is ok, step
    if not ok:
        assert step["detail"].startswith("machine too small for KumoMTA; memory ")
        assert f"memory {mem_kb // 1024} MiB, needs 4 GiB" in step["detail"] and "disk" not in step["detail"]
    assert status["facts"]["memory_mib"] == mem_kb // 1024  # recorded either way


@pytest.mark.parametrize("root_kb, ok", [
    (17_578_125, True),       # 18 GB as df counts it: what a 20 GB disk keeps after boot partitions
    (17_578_124, False),
    (int(16 * GB_KB), False),
])
def test_a_root_filesystem_under_the_minimum_fails_naming_the_disk(root_kb, ok, tmp_path):
    status = machine(tmp_path, root_kb=root_kb)
    (step,) = status["steps"]
    assert (step["status"] == "ok") is ok, step
    if not ok:
        assert "disk: filesystem / " in step["detail"] and "needs 20 GB" in step["detail"]
        assert "memory" not in step["detail"]


def test_memory_and_disk_are_both_named(tmp_path):
    (step,) = machine(tmp_path, mem_kb=GIB_KB, root_kb=int(8 * GB_KB))["steps"]
    assert step["status"] == "failed"
    assert "memory 1024 MiB, needs 4 GiB" in step["detail"] and "disk: filesystem / 8 GB, needs 20 GB" in step["detail"]


def test_a_directory_spool_on_a_small_filesystem_of_its_own_fails(tmp_path):
    # /var on a 10 GB filesystem of its own: the spool directory would live there.
    status = machine(tmp_path, storage="directory", setup=f'echo {int(10 * GB_KB)} >"$T/var-fs"')
    (step,) = status["steps"]
    assert step["status"] == "failed" and "disk: filesystem /var 10 GB, needs 20 GB" in step["detail"]
    assert set(status["facts"]["filesystem_bytes"]) == {"/", "/var"}
    # On the root filesystem, the directory is checked once, with the root.
    other = tmp_path / "other"
    other.mkdir()
    status = machine(other, storage="directory")
    assert status["steps"][0]["status"] == "ok" and list(status["facts"]["filesystem_bytes"]) == ["/"]
    # A block spool is not on the OS disk: /var is not checked.
    third = tmp_path / "third"
    third.mkdir()
    status = machine(third, storage="block", setup=f'echo {int(10 * GB_KB)} >"$T/var-fs"')
    assert status["steps"][0]["status"] == "ok"


def test_a_machine_smaller_than_the_plan_warns_and_never_fails(tmp_path):
    status = machine(tmp_path, cpus=2, mem_kb=4 * GIB_KB, speed="1000", plan_vcpu=8, plan_gib=16, plan_mbps=2500)
    (step,) = status["steps"]
    assert step["status"] == "ok"
    assert status["warnings"] == ["2 CPUs, the plan sizes nodes for 8",
                                  "memory 4096 MiB, the plan sizes nodes for 16 GiB",
                                  "eth0 at 1000 Mbit/s, the plan needs 2500 Mbit/s per node"]
    # As large as the plan (memory with the kernel's share counted in): no warning.
    other = tmp_path / "other"
    other.mkdir()
    status = machine(other, cpus=8, mem_kb=15_800_000, speed="2500", plan_vcpu=8, plan_gib=16, plan_mbps=2500)
    assert status["warnings"] == []


def test_warnings_reach_the_console_before_the_result_line(tmp_path):
    body = """
step_warns() { warn "first"; warn "second"; }
run_step w step_warns; console_warnings; result_line "KUMO-BOOTSTRAP OK host=x changed=false"
"""
    lines = bash(body, tmp_path).stdout.splitlines()
    assert lines[-3:] == ["KUMO-BOOTSTRAP WARNING: first", "KUMO-BOOTSTRAP WARNING: second",
                          "KUMO-BOOTSTRAP OK host=x changed=false"]


def test_the_result_is_the_last_line_of_the_output():
    # What a caller over SSH reads (pulumi-command's stdout): main ends with the result line.
    main = SCRIPT.read_text().split("\nmain() {", 1)[1]
    assert main.count('result_line "KUMO-BOOTSTRAP OK host=$KUMO_HOSTNAME changed=$ANY_CHANGED') == 1
    tail = main[main.index('result_line "KUMO-BOOTSTRAP OK'):].splitlines()
    assert tail[1:3] == ["exit 0", "}"]


# -- issue 9: a spool directory on the OS disk ------------------------------------------------

DIRECTORY_SPOOL = r"""
T={tmp}
KUMO_SPOOL_STORAGE=directory KUMO_SPOOL_DEVICE_PATHS='' KUMO_NVME_DEVICE_GLOBS='' KUMO_SPOOL_DEVICES=1
KUMO_SPOOL_FS=xfs KUMO_DEVICE_WAIT_S=0 SPOOL=$T/spool FSTAB=$T/fstab
echo "/dev/sda1 / ext4 defaults 0 1" >"$FSTAB"
id() {{ :; }}
for tool in mkfs.xfs mkfs.ext4 mdadm mount wipefs udevadm; do eval "$tool() {{ echo $tool >>\"$T/touched\"; }}"; done
findmnt() {{ echo /; }}
stat() {{
  echo "$(cat "$T/owner" 2>/dev/null || echo root:root:755)" | cut -d: -f"$([ "$2" = %U:%G ] && echo 1-2 || echo 1-3)"
}}
chown() {{ echo "kumod:kumod:2770" >"$T/owner"; echo chown >>"$T/owned"; }}; chmod() {{ :; }}
{mounted}
run_step spool step_spool; run_step again step_spool; write_status ok; cat "$STATUS"
"""


@pytest.mark.parametrize("mounted", ["mountpoint() { return 1; }", "mountpoint() { return 0; }"])
def test_a_directory_spool_is_never_formatted_or_mounted(mounted, tmp_path):
    result = bash(DIRECTORY_SPOOL.format(tmp=tmp_path, mounted=mounted), tmp_path)
    status = json.loads(result.stdout[result.stdout.index("{"):])
    first, again = status["steps"]
    assert first["status"] == "ok" and again["status"] == "ok", status
    assert not (tmp_path / "touched").exists()  # no mkfs, mdadm, mount, wipefs
    assert (tmp_path / "fstab").read_text() == "/dev/sda1 / ext4 defaults 0 1\n"
    assert (tmp_path / "spool").is_dir()
    assert first["changed"] is True and again["changed"] is False  # ownership set once
    assert status["facts"]["spool_mounted"] is False and status["facts"]["spool_filesystem"] == "/"
    assert status["warnings"] and all("the spool is a directory on the filesystem at /" in w
                                      for w in status["warnings"])


def test_a_directory_spool_needs_no_filesystem_tools(tmp_path):
    out = bash('KUMO_SPOOL_STORAGE=directory KUMO_SPOOL_FS=xfs KUMO_SPOOL_DEVICES=1; spool_tools', tmp_path,
               {"PATH": "/nonexistent:/bin"})
    assert out.stdout == ""


@pytest.mark.parametrize("signatures", [{"sigs": "ext4", "label": "data"}, {"pttype": "gpt", "sigs": "gpt"},
                                        {"sigs": "LVM2_member"}])
def test_an_operators_disk_holding_data_is_refused_never_formatted(signatures, tmp_path):
    # The ssh target's spool_device: a /dev/disk/by-id/ name the operator gave, as a block spool.
    make_disks(tmp_path, {"sdb": dict(signatures)})
    by_id = tmp_path / "by-id"
    by_id.mkdir()
    (by_id / "wwn-0x5000c500a1b2c3d4").symlink_to(tmp_path / "dev/sdb")
    body = DISK_STUBS.format(tmp=tmp_path) + f"""
KUMO_SPOOL_STORAGE=block KUMO_SPOOL_DEVICES=1 KUMO_SPOOL_DEVICE_PATHS={by_id}/wwn-0x5000c500a1b2c3d4
KUMO_NVME_DEVICE_GLOBS='' KUMO_SPOOL_FS=xfs KUMO_DEVICE_WAIT_S=600
id() {{ :; }}; mountpoint() {{ return 1; }}; sleep() {{ echo slept >>"$T/slept"; }}
mkfs.xfs() {{ echo mkfs >>"$T/mkfs"; }}
run_step spool step_spool; write_status failed; cat "$STATUS"
"""
    result = bash(body, tmp_path)
    (spool,) = json.loads(result.stdout[result.stdout.index("{"):])["steps"]
    assert spool["status"] == "failed" and "not made by kumo-infra" in spool["detail"]
    assert not (tmp_path / "mkfs").exists() and not (tmp_path / "slept").exists()


# -- issue 9: delivered secrets ----------------------------------------------------------------

DELIVERED_SECRETS = r"""
T={tmp}
CONF_DIR=$T KUMO_SECRET_WAIT_S=600 DELIVERED_DIR=$T/delivered
printf 'delivered:relay-password\t%s/secrets/relay-password\n' "$T" >"$T/secrets.list"
printf 'delivered:dkim-example-com-s1\t%s/secrets/dkim.key\n' "$T" >>"$T/secrets.list"
mkdir -p "$T/secrets"
python_bin() {{ echo {python}; }}
# The real kumo-fetch-secret (its delivered backend), whatever path the step names.
{python}() {{ shift; KUMO_FETCH_SECRET_TEST_MODE=1 KUMO_DELIVERED_DIR="$T/delivered" command {python} {fetcher} "$@"; }}
install() {{ case "$1" in -d) shift 6; mkdir -p "$1" ;; *) command cp "${{@: -2:1}}" "${{@: -1}}" ;; esac; }}
sleep() {{ echo "sleep $*" >>"$T/sleep.log"; }}
{setup}
run_step secrets step_secrets; write_status ok; cat "$STATUS"
"""


def delivered_secrets(tmp_path: Path, setup: str) -> tuple[dict, subprocess.CompletedProcess]:
    import sys
    body = DELIVERED_SECRETS.format(tmp=tmp_path, python=sys.executable,
                                    fetcher=FILES / "kumo-fetch-secret.py", setup=setup)
    result = bash(body, tmp_path, {"PATH": f"{Path(sys.executable).parent}:/usr/sbin:/usr/bin:/sbin:/bin"})
    return json.loads(result.stdout[result.stdout.index("{"):]), result


STAGE_BOTH = ('mkdir -p "$T/delivered"; printf "pw\\0with NUL" >"$T/delivered/relay-password"; '
              'printf "KEY" >"$T/delivered/dkim-example-com-s1"')


def test_delivered_secrets_are_installed_and_their_staged_copies_removed(tmp_path):
    status, result = delivered_secrets(tmp_path, STAGE_BOTH)
    (step,) = status["steps"]
    assert step["status"] == "ok", step
    assert (tmp_path / "secrets/relay-password").read_bytes() == b"pw\0with NUL"
    assert (tmp_path / "secrets/dkim.key").read_bytes() == b"KEY"
    assert not (tmp_path / "delivered").exists()
    assert status["facts"]["secrets_fetched"] == 2
    assert "pw" not in result.stdout + result.stderr + (tmp_path / "bootstrap.log").read_text()


def test_a_secret_not_delivered_this_run_keeps_the_installed_copy(tmp_path):
    # kumo-bootstrap run by hand: nothing on standard input, nothing staged; no retry, no change.
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets/relay-password").write_text("installed")
    (tmp_path / "secrets/dkim.key").write_text("installed key")
    status, _ = delivered_secrets(tmp_path, "")
    (step,) = status["steps"]
    assert step["status"] == "ok" and step["changed"] is False, step
    assert "2 secret(s) not delivered in this run" in step["detail"]
    assert (tmp_path / "secrets/relay-password").read_text() == "installed"
    assert not (tmp_path / "sleep.log").exists()


def test_a_secret_never_delivered_fails_at_once(tmp_path):
    status, _ = delivered_secrets(tmp_path, 'mkdir -p "$T/delivered"; printf KEY >"$T/delivered/dkim-example-com-s1"')
    (step,) = status["steps"]
    assert step["status"] == "failed" and "relay-password was never delivered" in step["detail"]
    assert not (tmp_path / "sleep.log").exists()


# -- issue 9: the ssh target's installer: secrets on standard input ----------------------------

INSTALL_LIBRARY = FILES / "kumo-ssh-install.sh"
HOSTILE_VALUES = {
    "relay-password": "line one\nline two\r\n\"quotes' $(touch /tmp/kumo-pwned) `id` \\ \t end",
    "dkim-example-com-s1": "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIP\n-----END PRIVATE KEY-----\n",
    "nul-and-bytes": "a\0b\0\xff\u00e9",  # NUL never cuts a value short: base64 carries it
    "empty": "",
    "api-password": "x" * 70_000,  # longer than any line buffer
}


@pytest.fixture
def staging(tmp_path_factory) -> Path:
    """A directory on tmpfs (the installer refuses any other), removed afterwards."""
    import shutil
    import tempfile
    if Path("/dev/shm").is_dir() and subprocess.run(["stat", "-f", "-c", "%T", "/dev/shm"], capture_output=True,
                                                     text=True).stdout.strip() == "tmpfs":
        base = Path(tempfile.mkdtemp(dir="/dev/shm", prefix="kumo-test-"))
    else:
        pytest.fail("no tmpfs at /dev/shm to stage secrets in")
    yield base / "run-kumo-infra" / "delivered"
    shutil.rmtree(base, ignore_errors=True)


def receive(payload: bytes, staging: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    body = f'set -euo pipefail; . {INSTALL_LIBRARY}; receive_delivered_secrets "{staging}"; echo "rc=$?"'
    return subprocess.run(["bash", "-c", body], input=payload, capture_output=True, timeout=60,
                          env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}, cwd=tmp_path)


def test_secrets_round_trip_through_standard_input_byte_for_byte(staging, tmp_path):
    from kumo_infra.bootstrap import delivered_secrets_payload
    payload = delivered_secrets_payload(list(HOSTILE_VALUES.items()))
    result = receive(payload.encode(), staging, tmp_path)
    assert result.returncode == 0 and b"rc=0" in result.stdout, result.stderr
    assert sorted(p.name for p in staging.iterdir()) == sorted(HOSTILE_VALUES)
    for key, value in HOSTILE_VALUES.items():
        assert (staging / key).read_bytes() == value.encode(), key
        assert oct((staging / key).stat().st_mode & 0o777) == "0o600"
    assert oct(staging.stat().st_mode & 0o777) == "0o700"
    assert result.stdout.decode().splitlines()[0] == "kumo-infra installer: 5 secret(s) received on standard input"
    output = result.stdout + result.stderr
    assert not any(v.encode() in output for v in HOSTILE_VALUES.values() if len(v) > 3)
    assert not Path("/tmp/kumo-pwned").exists()


GOOD = b"kumo-infra delivered-secrets 1\nrelay-password cHc=\nend 1\n"


@pytest.mark.parametrize("payload, says", [
    (b"kumo-infra delivered-secrets 2\nend 0\n", "line 1 is not 'kumo-infra delivered-secrets 1'"),
    (b"relay-password cHc=\nend 1\n", "line 1 is not"),
    (b"kumo-infra delivered-secrets 1\nrelay-password cHc=\n",
     "ended before its end line: the secrets arrived cut short"),
    (b"kumo-infra delivered-secrets 1\nrelay-password cH", "ended before its end line"),
    (b"kumo-infra delivered-secrets 1\nrelay-password cHc=\nend 2\n", "its end line counts 2 secrets, 1 came"),
    (b"kumo-infra delivered-secrets 1\n../etc/shadow cHc=\nend 1\n", "line 2 is not 'KEY BASE64'"),
    (b"kumo-infra delivered-secrets 1\nrelay-password s3cr3t value\nend 1\n", "line 2 is not 'KEY BASE64'"),
    (b"kumo-infra delivered-secrets 1\nrelay-password cHc\nend 1\n", "secret relay-password is not base64 (line 2)"),
    (b"kumo-infra delivered-secrets 1\nrelay-password cHc=\nrelay-password cHc=\nend 2\n", "comes twice (line 3)"),
    (GOOD + b"api-password cHc=\n", "goes on after its end line (line 4)"),
    (b"kumo-infra delivered-secrets 1\nrelay-password cHc=\r\nend 1\n", "line 2 is not 'KEY BASE64'"),
])
def test_a_garbled_or_cut_secrets_stream_fails_without_showing_it(payload, says, staging, tmp_path):
    result = receive(payload, staging, tmp_path)
    assert result.returncode == 1 and b"rc=0" not in result.stdout
    out = result.stdout.decode()
    assert out.startswith("KUMO-BOOTSTRAP FAILED step=installer host=unknown: ") and says in out, out
    assert b"s3cr3t" not in result.stdout + result.stderr and b"cHc" not in result.stdout + result.stderr


def test_empty_standard_input_delivers_nothing_and_keeps_the_installed_secrets(staging, tmp_path):
    result = receive(b"", staging, tmp_path)
    assert result.returncode == 0 and b"no secrets on standard input; the installed ones stay" in result.stdout
    assert list(staging.iterdir()) == []


def test_secrets_are_never_staged_on_a_disk(tmp_path):
    # tmp_path is not a tmpfs here (the test needs that to mean something).
    kind = subprocess.run(["stat", "-f", "-c", "%T", str(tmp_path)], capture_output=True, text=True).stdout.strip()
    if kind == "tmpfs":
        pytest.fail("tmp_path is on tmpfs: this test cannot show the refusal")
    result = receive(GOOD, tmp_path / "delivered", tmp_path)
    assert result.returncode == 1
    assert b"is not a tmpfs: refusing to write the deployment's secrets to a disk" in result.stdout
    assert not (tmp_path / "delivered").exists()


def test_stale_staged_secrets_are_replaced_not_merged(staging, tmp_path):
    staging.mkdir(parents=True)
    (staging / "old-key").write_text("stale")
    assert receive(GOOD, staging, tmp_path).returncode == 0
    assert [p.name for p in staging.iterdir()] == ["relay-password"]


def library(body: str, tmp_path: Path, stdin: bytes = b"", path: str = "/usr/sbin:/usr/bin:/sbin:/bin"):
    script = f"set -euo pipefail\n. {INSTALL_LIBRARY}\n{body}\n"
    return subprocess.run(["bash", "-c", script], input=stdin, capture_output=True, timeout=60,
                          env={"PATH": path}, cwd=tmp_path)


def test_put_file_writes_once_and_leaves_an_unchanged_file_alone(tmp_path):
    target = tmp_path / "etc/kumo-infra/bootstrap.env"
    content = base64.b64encode(b"KUMO_HOSTNAME=mta.example.com\n")
    first = library(f"put_file {target} 0600", tmp_path, content)
    assert first.returncode == 0 and first.stdout.decode() == f"kumo-infra installer: wrote {target}\n"
    assert target.read_bytes() == b"KUMO_HOSTNAME=mta.example.com\n" and oct(target.stat().st_mode & 0o777) == "0o600"
    inode = target.stat().st_ino
    again = library(f"put_file {target} 0600", tmp_path, content)
    assert again.returncode == 0 and again.stdout == b"" and target.stat().st_ino == inode
    assert sorted(p.name for p in target.parent.iterdir()) == ["bootstrap.env"]  # no leftover .kumo-new
    # Another mode alone is a change too.
    changed = library(f"put_file {target} 0644", tmp_path, content).stdout.decode()
    assert changed.startswith("kumo-infra installer: wrote")
    assert oct(target.stat().st_mode & 0o777) == "0o644"


def test_begin_install_refuses_a_user_who_is_not_root(tmp_path):
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "id").write_text("#!/bin/sh\necho 1000\n")
    (tools / "id").chmod(0o755)
    result = library("begin_install mta1.example.com /dev/shm/never", tmp_path, GOOD,
                     f"{tools}:/usr/sbin:/usr/bin:/sbin:/bin")
    assert result.returncode == 1
    assert result.stdout.decode() == ("KUMO-BOOTSTRAP FAILED step=installer host=mta1.example.com: not root "
                                      "(kumo-infra runs it as root, or with sudo -n)\n")
    assert not Path("/dev/shm/never").exists()


def test_begin_install_stages_first_closes_the_stream_and_cleans_up_at_exit(staging, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("begin_install refuses anyone but root")
    body = (f'begin_install mta1.example.com "{staging}"\n'
            f'ls "{staging}" >"{tmp_path}/staged"\n'
            f'cat >"{tmp_path}/rest-of-stdin"\n')
    result = library(body, tmp_path, GOOD + b"")
    assert result.returncode == 0, result
    assert (tmp_path / "staged").read_text() == "relay-password\n"
    assert (tmp_path / "rest-of-stdin").read_bytes() == b""  # later commands read nothing
    assert not staging.exists()  # gone when the installer ends, whatever happened


def test_finish_install_names_the_machine_once_and_ends_with_kumo_bootstraps_result(tmp_path):
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "hostnamectl").write_text(f'#!/bin/sh\necho "$@" >>{tmp_path}/hostnamectl\n')
    (tools / "hostnamectl").chmod(0o755)
    bootstrap = tmp_path / "kumo-bootstrap"
    bootstrap.write_text("#!/bin/sh\necho \"kumo-bootstrap $*\"\necho 'KUMO-BOOTSTRAP OK host=mta1.example.com "
                         "changed=false deliverability=ok'\n")
    bootstrap.chmod(0o755)
    result = library(f"KUMO_BOOTSTRAP={bootstrap}\nfinish_install mta1.example.com", tmp_path, b"",
                     f"{tools}:/usr/bin:/bin")
    lines = result.stdout.decode().splitlines()
    assert lines[-2:] == ["kumo-bootstrap all",
                          "KUMO-BOOTSTRAP OK host=mta1.example.com changed=false deliverability=ok"]
    current = Path("/etc/hostname").read_text().strip() if Path("/etc/hostname").exists() else ""
    if current != "mta1.example.com":
        assert (tmp_path / "hostnamectl").read_text() == "set-hostname mta1.example.com\n"
        assert "kumo-infra installer: hostname set to mta1.example.com" in lines


def test_kumo_bootstrap_runs_under_umask_022_not_the_installers_077(tmp_path):
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "hostnamectl").write_text("#!/bin/sh\n")
    (tools / "hostnamectl").chmod(0o755)
    bootstrap = tmp_path / "kumo-bootstrap"
    bootstrap.write_text("#!/bin/sh\necho \"umask $(umask)\"\n")
    bootstrap.chmod(0o755)
    # begin_install's umask 077 (the secrets' staging) is in force when finish_install starts.
    result = library(f"umask 077\nKUMO_BOOTSTRAP={bootstrap}\nfinish_install mta1.example.com", tmp_path, b"",
                     f"{tools}:/usr/bin:/bin")
    assert result.returncode == 0, result
    assert result.stdout.decode().splitlines()[-1] == "umask 0022"


def test_the_installer_library_is_shellcheck_clean():
    check = subprocess.run(["shellcheck", "--severity=style", str(INSTALL_LIBRARY)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout


# -- issue 12: the TSA daemon, the node's source address, its node id ----------------------------

START_STUBS = r"""
T={tmp}
systemctl() {{
  echo "systemctl $*" >>"$T/log"
  case "$1" in
    is-enabled) [ -e "$T/enabled.$2" ] ;;
    is-active) [ "$2" = --quiet ] && shift; [ -e "$T/active.$2" ] || [ -e "$T/active.${{2%.service}}" ] ;;
    enable) : >"$T/enabled.$2" ;;
    start|restart) [ -e "$T/broken.$2" ] || : >"$T/active.$2" ;;
  esac
}}
journalctl() {{ echo "tsa-daemon: cannot read its policy"; }}
KUMO_FLEET_PEERS_PATH=''
{setup}
run_step start step_start; write_status ok; cat "$STATUS"
"""


def run_start(tmp_path: Path, setup: str = "") -> tuple[dict, list[str]]:
    result = bash(START_STUBS.format(tmp=tmp_path, setup=setup), tmp_path)
    status = json.loads(result.stdout[result.stdout.index("{"):])
    return status, (tmp_path / "log").read_text().splitlines()


def test_start_enables_and_starts_the_tsa_daemon_before_kumod(tmp_path):
    status, log = run_start(tmp_path)
    assert status["steps"][0]["status"] == "ok", status
    assert "systemctl enable kumo-tsa-daemon.service" in log
    start_tsa = log.index("systemctl start kumo-tsa-daemon.service")
    assert start_tsa < log.index("systemctl start kumomta")
    # Checked active after its start, before kumod's.
    assert "systemctl is-active --quiet kumo-tsa-daemon.service" in log[start_tsa + 1:log.index("systemctl start kumomta")]


def test_a_tsa_daemon_that_does_not_run_fails_the_start_before_kumod(tmp_path):
    status, log = run_start(tmp_path, setup=f': >"{tmp_path}/broken.kumo-tsa-daemon.service"')
    (step,) = status["steps"]
    assert step["status"] == "failed" and "kumo-tsa-daemon.service is not running" in step["detail"]
    assert "systemctl start kumomta" not in log


def test_a_changed_policy_restarts_the_tsa_daemon_with_kumod(tmp_path):
    setup = (f'T={tmp_path}; : >"$T/active.kumo-tsa-daemon.service"; : >"$T/active.kumomta"; '
             f': >"$T/enabled.kumo-tsa-daemon.service"; : >"$STATE_DIR/restart-needed"')
    status, log = run_start(tmp_path, setup=setup)
    assert "systemctl restart kumo-tsa-daemon.service" in log and "systemctl restart kumomta" in log
    assert log.index("systemctl restart kumo-tsa-daemon.service") < log.index("systemctl restart kumomta")


SOURCE_STUBS = r"""
T={tmp}
SOURCES=$T/sources.json
ip() {{ case "$2" in -4) printf '%s\n' "$IP4" ;; -6) printf '%s\n' "$IP6" ;; esac; }}
install() {{ command cp "${{@: -2:1}}" "${{@: -1}}"; }}
run_step source step_source; write_status ok; cat "$STATUS"
"""


def run_source(tmp_path: Path, ip4: str, ip6: str = "") -> tuple[dict, Path]:
    result = bash(SOURCE_STUBS.format(tmp=tmp_path), tmp_path, {"IP4": ip4, "IP6": ip6})
    return json.loads(result.stdout.splitlines()[-1]), tmp_path / "sources.json"


@pytest.mark.parametrize("route, address", [
    ("1.1.1.1 via 10.0.0.1 dev eth0 src 10.0.0.5 uid 0", "10.0.0.5"),
    ("1.1.1.1 dev ens5 src 172.31.7.200 uid 0 \\    cache", "172.31.7.200"),
])
def test_the_source_address_is_the_routes_and_written_as_json_data(tmp_path, route, address):
    status, sources = run_source(tmp_path, route)
    assert status["steps"][0]["status"] == "ok", status
    assert json.loads(sources.read_text()) == {"source": {"mta.example.com": {"source_address": address}}}
    assert status["facts"]["source_address"] == address


def test_an_ipv6_only_machine_takes_its_ipv6_source(tmp_path):
    status, sources = run_source(tmp_path, "", "2606:4700:4700::1111 from :: via fe80::1 dev eth0 src 2001:db8::5 metric 100")
    assert json.loads(sources.read_text())["source"]["mta.example.com"]["source_address"] == "2001:db8::5"


@pytest.mark.parametrize("src", ['$(touch${IFS}/tmp/kumo-src-marker)', '10.0.0.5";x="', "10.0.0.5\\nx", "`id`"])
def test_a_source_address_that_is_no_ip_is_refused_and_never_run(tmp_path, src):
    marker = Path("/tmp/kumo-src-marker")
    marker.unlink(missing_ok=True)
    status, sources = run_source(tmp_path, f"1.1.1.1 via 10.0.0.1 dev eth0 src {src} uid 0")
    assert status["steps"][0]["status"] == "failed" and not sources.exists()
    assert not marker.exists()


def test_no_route_fails_the_step_naming_it(tmp_path):
    status, sources = run_source(tmp_path, "")
    assert "no route to the internet" in status["steps"][0]["detail"] and not sources.exists()


NODE_ID = r"""
T={tmp}
NODE_ID_FILE=$T/nodeid MACHINE_ID_FILE=$T/machine-id PROC=$T/proc
mkdir -p "$T/proc/sys/kernel/random"; printf '%s\n' "$NEW_UUID" >"$T/proc/sys/kernel/random/uuid"
install() {{ command cp "${{@: -2:1}}" "${{@: -1}}"; }}
step_id() {{ ensure_node_id; }}
run_step id step_id; write_status ok; cat "$STATUS"
"""

UUID_A, UUID_B = "6f1c1e7a-3b2d-4c5e-8f90-1a2b3c4d5e6f", "0b9d8c7a-1111-4222-8333-444455556666"


def node_id(tmp_path: Path, machine: str, new_uuid: str) -> dict:
    (tmp_path / "machine-id").write_text(machine + "\n")
    result = bash(NODE_ID.format(tmp=tmp_path), tmp_path, {"NEW_UUID": new_uuid})
    return json.loads(result.stdout[result.stdout.index("{"):])


def test_a_node_id_is_made_for_the_machine_without_a_newline(tmp_path):
    status = node_id(tmp_path, "m1", UUID_A)
    assert (tmp_path / "nodeid").read_text() == UUID_A  # kumod parses the whole file as the UUID
    assert status["facts"]["node_id"] == UUID_A and status["steps"][0]["changed"] is True
    assert (tmp_path / "state/restart-needed").exists()


def test_the_node_id_stays_on_its_machine_and_changes_on_a_clone(tmp_path):
    node_id(tmp_path, "m1", UUID_A)
    again = node_id(tmp_path, "m1", UUID_B)
    assert (tmp_path / "nodeid").read_text() == UUID_A and again["steps"][0]["changed"] is False
    clone = node_id(tmp_path, "m2", UUID_B)  # the same disk contents on another machine
    assert (tmp_path / "nodeid").read_text() == UUID_B and clone["steps"][0]["changed"] is True


def test_a_node_id_kumod_made_before_kumo_infra_is_kept(tmp_path):
    (tmp_path / "nodeid").write_text(UUID_A)
    status = node_id(tmp_path, "m1", UUID_B)
    assert (tmp_path / "nodeid").read_text() == UUID_A and status["steps"][0]["changed"] is False


def runnable_script(tmp_path: Path) -> Path:
    """kumo-bootstrap with the state and lock paths of a real node moved under tmp_path."""
    script = tmp_path / "kumo-bootstrap"
    script.write_text(SCRIPT.read_text().replace("STATE_DIR=/var/lib/kumo-infra", f"STATE_DIR={tmp_path}/state")
                      .replace("LOG=/var/log/kumo-infra-bootstrap.log", f"LOG={tmp_path}/log")
                      .replace("/run/kumo-bootstrap.lock", f"{tmp_path}/lock")
                      .replace("mktemp -d /run/kumo-bootstrap.XXXXXX", f"mktemp -d {tmp_path}/work.XXXXXX"))
    return script


def test_source_mode_never_keeps_kumod_from_starting(tmp_path):
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "bootstrap.env").write_text("KUMO_HOSTNAME=mta.example.com\nKUMO_CLOUD=aws\nKUMO_OS=debian12\n")
    stubs = tmp_path / "bin"
    stubs.mkdir()
    (stubs / "ip").write_text("#!/bin/sh\nexit 2\n")
    (stubs / "ip").chmod(0o755)
    script = runnable_script(tmp_path)
    done = subprocess.run(["bash", str(script), "source"], capture_output=True, text=True, timeout=60,
                          env={"PATH": f"{stubs}:/usr/bin:/bin", "KUMO_CONF_DIR": str(conf)})
    assert done.returncode == 0, done.stderr
    assert "source address not refreshed" in done.stdout.splitlines()[-1]
    assert json.loads((tmp_path / "state/source-status.json").read_text())["failed_step"] == "source"


# -- issue 12 review: the fleet's peer list fetched again (kumo-bootstrap peers) ----------------

OLD_PEERS, NEW_PEERS = '["10.0.1.11", "10.0.1.12"]', '["10.0.1.21", "10.0.1.12"]'
PEERS_STUBS = {
    # kumo-fetch-secret through python3: the store's value, or a failure.
    "python3": '#!/bin/bash\necho "python3 $*" >>"$T/fetch.log"\n'
               '[ -z "${FETCH_FAILS:-}" ] || { echo "kumo-fetch-secret: AccessDenied" >&2; exit 1; }\n'
               'printf "%s" "$STORED_PEERS"\n',
    "systemctl": '#!/bin/bash\necho "systemctl $*" >>"$T/systemctl.log"\n',
    # kumod's GET /api/admin/suspend/v1 on loopback.
    "curl": '#!/bin/bash\necho "curl $*" >>"$T/curl.log"\n[ -z "${CURL_FAILS:-}" ] || exit 7\n'
            'printf "%s" "${SUSPENSIONS:-[]}"\n',
    # root:kumod ownership is the node's; here the file is only copied.
    "install": '#!/bin/bash\ncp "${@: -2:1}" "${@: -1}"\n',
}


def run_peers(tmp_path: Path, stored: str, **env: str) -> tuple[subprocess.CompletedProcess, Path]:
    conf, stubs, secrets = tmp_path / "conf", tmp_path / "bin", tmp_path / "secrets"
    for d in (conf, stubs, secrets):
        d.mkdir(exist_ok=True)
    peers = secrets / "fleet-peers.json"
    if not peers.exists():
        peers.write_text(OLD_PEERS)
    (conf / "bootstrap.env").write_text(
        "KUMO_HOSTNAME=mta1.example.com\nKUMO_CLOUD=aws\nKUMO_OS=debian12\nKUMO_HTTP_PORT=8000\n"
        f"KUMO_FLEET_PEERS_PATH={peers}\nKUMO_DRAIN_DOMAIN=drain.kumo-infra.invalid\n")
    (conf / "secrets.list").write_text(f"# secrets\naws:us-east-1:kumo/redis-url\t{secrets}/redis-url\n"
                                       f"aws:us-east-1:kumo/fleet-peers\t{peers}\n")
    for name, body in PEERS_STUBS.items():
        (stubs / name).write_text(body)
        (stubs / name).chmod(0o755)
    script = runnable_script(tmp_path)
    done = subprocess.run(["bash", str(script), "peers"], capture_output=True, text=True, timeout=60,
                          env={"PATH": f"{stubs}:/usr/bin:/bin", "KUMO_CONF_DIR": str(conf), "T": str(tmp_path),
                               "STORED_PEERS": stored, **env})
    return done, peers


def restarts(tmp_path: Path) -> list[str]:
    log = tmp_path / "systemctl.log"
    return [line for line in log.read_text().splitlines() if "restart" in line] if log.exists() else []


def test_a_changed_peer_list_replaces_the_file_and_restarts_the_tsa_daemon_then_kumod(tmp_path):
    done, peers = run_peers(tmp_path, NEW_PEERS)
    assert done.returncode == 0, done.stdout + done.stderr
    assert peers.read_text() == NEW_PEERS
    # Only the peer list is fetched, by its reference in secrets.list.
    assert (tmp_path / "fetch.log").read_text().split()[-1] == "aws:us-east-1:kumo/fleet-peers"
    assert restarts(tmp_path) == ["systemctl try-restart kumo-tsa-daemon.service", "systemctl try-restart kumomta"]
    status = json.loads((tmp_path / "state/peers-status.json").read_text())
    assert status["result"] == "ok" and status["changed"] is True
    assert not (tmp_path / "state/restart-needed").exists()


def test_the_same_peer_list_touches_nothing(tmp_path):
    done, peers = run_peers(tmp_path, OLD_PEERS)
    assert done.returncode == 0, done.stdout + done.stderr
    assert peers.read_text() == OLD_PEERS and restarts(tmp_path) == []
    assert json.loads((tmp_path / "state/peers-status.json").read_text())["changed"] is False


def test_a_failed_fetch_touches_nothing_and_exits_non_zero(tmp_path):
    done, peers = run_peers(tmp_path, NEW_PEERS, FETCH_FAILS="1")
    assert done.returncode != 0
    assert peers.read_text() == OLD_PEERS and restarts(tmp_path) == []
    status = json.loads((tmp_path / "state/peers-status.json").read_text())
    assert status["result"] == "failed" and "AccessDenied" in status["steps"][0]["detail"]
    assert "AccessDenied" in done.stdout.splitlines()[-1]


def test_an_empty_fetch_touches_nothing(tmp_path):
    done, peers = run_peers(tmp_path, "")
    assert done.returncode != 0 and peers.read_text() == OLD_PEERS and restarts(tmp_path) == []


def test_a_changed_peer_list_waits_while_the_node_is_being_drained(tmp_path):
    # kumod keeps kumo-infra drain's suspension in memory only: a restart would reopen the node.
    drained = '[{"id":"s-1","domain":"drain.kumo-infra.invalid","reason":"kumo-infra drain"}]'
    done, peers = run_peers(tmp_path, NEW_PEERS, SUSPENSIONS=drained)
    assert done.returncode == 0, done.stdout + done.stderr
    assert peers.read_text() == OLD_PEERS and restarts(tmp_path) == []
    assert "http://127.0.0.1:8000/api/admin/suspend/v1" in (tmp_path / "curl.log").read_text()
    # Applied once the drain is over (the node replaced, or the drain cancelled).
    done, peers = run_peers(tmp_path, NEW_PEERS)
    assert peers.read_text() == NEW_PEERS and len(restarts(tmp_path)) == 2


def test_a_running_kumod_that_cannot_say_whether_it_is_drained_keeps_its_peer_list(tmp_path):
    done, peers = run_peers(tmp_path, NEW_PEERS, CURL_FAILS="1")
    assert done.returncode != 0 and peers.read_text() == OLD_PEERS and restarts(tmp_path) == []
    assert "whether it is being drained" in done.stdout.splitlines()[-1]


def test_start_enables_the_peer_list_timer_on_fleet_nodes_only(tmp_path):
    _, log = run_start(tmp_path)
    assert not any("kumo-fleet-peers.timer" in line for line in log)
    fleet = tmp_path / "fleet"
    fleet.mkdir()
    (fleet / "work").mkdir()
    status, log = run_start(fleet, setup="KUMO_FLEET_PEERS_PATH=/etc/kumomta/secrets/fleet-peers.json")
    assert status["steps"][0]["status"] == "ok", status
    assert "systemctl enable kumo-fleet-peers.timer" in log and "systemctl start kumo-fleet-peers.timer" in log

"""Tests of the VM harness itself: the stand-in package, the mirror, one boot."""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from .conftest import MirrorFactory, StandinDebs
from .harness import (GUEST_MIRROR_URL, GUEST_NIC_NAME, RootImage, Vm, existing_machine_user_data, generate_ssh_key,
                      make_xfs_disk, sha256_of)

# --------------------------------------------------------------------------
# Without a VM
# --------------------------------------------------------------------------


def _deb_info(deb: Path) -> str:
    return subprocess.run(["dpkg-deb", "-I", str(deb)], capture_output=True, text=True, check=True).stdout


def _deb_field(deb: Path, field: str) -> str:
    return subprocess.run(
        ["dpkg-deb", "-f", str(deb), field], capture_output=True, text=True, check=True
    ).stdout.strip()


def _extract(deb: Path, target: Path) -> Path:
    subprocess.run(["dpkg-deb", "-x", str(deb), str(target)], check=True)
    return target


def test_standin_deb_control_fields(standin_debs: StandinDebs) -> None:
    stable, dev = standin_debs["kumomta"], standin_debs["kumomta-dev"]
    assert _deb_field(stable, "Package") == "kumomta"
    assert _deb_field(stable, "Conflicts") == "kumomta-dev"
    assert _deb_field(dev, "Package") == "kumomta-dev"
    assert _deb_field(dev, "Conflicts") == "kumomta"
    for deb in (stable, dev):
        assert _deb_field(deb, "Architecture") == "all"
        assert _deb_field(deb, "Version") == "2026.11.01-standin"
        assert "python3" in _deb_field(deb, "Depends")
        info = _deb_info(deb)
        for script in ("preinst", "postinst", "prerm", "postrm"):
            assert f" {script} " in info, info


def test_standin_deb_contents(standin_debs: StandinDebs, tmp_path: Path) -> None:
    deb = standin_debs["kumomta"]
    listing = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True).stdout
    for path in (
        "./opt/kumomta/sbin/kumod",
        "./opt/kumomta/sbin/tsa-daemon",
        "./opt/kumomta/share/minimal-init.lua",
        "./usr/lib/systemd/system/kumomta.service",
        "./usr/lib/systemd/system/kumo-tsa-daemon.service",
    ):
        assert path in listing, listing
    # The package must not ship what it creates only when absent (the trap).
    for path in ("./var/spool/kumomta", "./opt/kumomta/etc/policy/init.lua"):
        assert path not in listing
    assert "rwxr-xr-x root/root" in next(l for l in listing.splitlines() if l.endswith("sbin/kumod"))

    root = _extract(deb, tmp_path / "x")
    unit = (root / "usr/lib/systemd/system/kumomta.service").read_text()
    assert ("ExecStart=/opt/kumomta/sbin/kumod --policy /opt/kumomta/etc/policy/init.lua --user kumod") in unit
    for line in (
        "Restart=always",
        "TimeoutStopSec=300",
        "EnvironmentFile=-/opt/kumomta/etc/kumo-common.env",
        "EnvironmentFile=-/opt/kumomta/etc/kumod.env",
        "WantedBy=multi-user.target",
    ):
        assert line in unit.splitlines()

    control = tmp_path / "control"
    subprocess.run(["dpkg-deb", "-e", str(deb), str(control)], check=True)
    preinst = (control / "preinst").read_text()
    assert "useradd --system -g kumod" in preinst
    assert '[ -d "$dir" ] || install -d --mode 2770 --owner kumod --group kumod' in preinst
    postinst = (control / "postinst").read_text()
    assert 'if [ ! -f "/opt/kumomta/etc/policy/init.lua" ]' in postinst
    assert "deb-systemd-helper enable kumomta.service" in postinst
    assert "systemctl start" not in postinst


def test_mirror_layout_and_signature(apt_mirror: MirrorFactory, tmp_path: Path) -> None:
    mirror = apt_mirror()
    stable, dev = mirror.repo_dir, mirror.dev_repo_dir
    assert (stable.name, dev.name) == ("kumomta-ubuntu-22-stable", "kumomta-ubuntu-22")
    packages = (stable / "dists/stable/main/binary-amd64/Packages").read_text()
    assert "Package: kumomta\n" in packages and "Package: kumomta-dev\n" not in packages
    assert "Filename: pool/main/kumomta_2026.11.01-standin_all.deb" in packages
    assert "Package: kumomta-dev\n" in (dev / "dists/stable/main/binary-amd64/Packages").read_text()
    assert (stable / "dists/stable/main/binary-amd64/Packages.gz").is_file()
    assert (mirror.root / "files/kumomta-ubuntu22.list").read_text() == (
        f"deb [signed-by=/usr/share/keyrings/kumomta.gpg] {GUEST_MIRROR_URL}/kumomta-ubuntu-22/ stable main\n"
        f"deb [signed-by=/usr/share/keyrings/kumomta.gpg] {GUEST_MIRROR_URL}/kumomta-ubuntu-22-stable/ stable main\n"
    )

    # Verify InRelease the way apt does: gpgv against the dearmored public.gpg, whose
    # fingerprint is the one the mirror announces.
    key = (dev / "public.gpg").read_text()
    assert key.startswith("-----BEGIN PGP PUBLIC KEY BLOCK-----") and (stable / "public.gpg").read_text() == key
    keyring = tmp_path / "kumomta.gpg"
    env = {**os.environ, "GNUPGHOME": tempfile.mkdtemp(dir=tmp_path)}
    subprocess.run(["gpg", "--batch", "--dearmor", "-o", str(keyring), str(dev / "public.gpg")], check=True, env=env)
    shown = subprocess.run(["gpg", "--batch", "--with-colons", "--show-keys", str(dev / "public.gpg")],
                           check=True, env=env, capture_output=True, text=True).stdout
    assert next(line.split(":")[9] for line in shown.splitlines() if line.startswith("fpr:")) == mirror.fingerprint
    for repo in (stable, dev):
        subprocess.run(["gpgv", "--keyring", str(keyring), str(repo / "dists/stable/InRelease")],
                       check=True, env=env, capture_output=True)
    subprocess.run(["gpgconf", "--kill", "all"], env=env, check=False)

    # Served over HTTP, with the request logged; stopped and served again on the same port.
    url = f"{mirror.host_url}/kumomta-ubuntu-22-stable/dists/stable/InRelease"
    with urllib.request.urlopen(url, timeout=10) as response:
        assert b"Codename: stable" in response.read()
    assert mirror.served("-stable/dists/stable/InRelease")
    mirror.stop()
    with pytest.raises(OSError):
        urllib.request.urlopen(url, timeout=5)
    port = mirror.port
    mirror.serve_again()
    assert mirror.port == port
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200


def test_mirror_carries_extra_debian_packages(apt_mirror: MirrorFactory, standin_debs: StandinDebs) -> None:
    mirror = apt_mirror([standin_debs["kumomta"]], extra_debs=[standin_debs["kumomta-dev"]])
    for repo in (mirror.repo_dir, mirror.dev_repo_dir):
        assert "Package: kumomta-dev\n" in (repo / "dists/stable/main/binary-amd64/Packages").read_text()


def test_xfs_disk_image_holds_its_files(tmp_path: Path) -> None:
    if shutil.which("mkfs.xfs") is None:
        pytest.skip("mkfs.xfs (Debian package xfsprogs) is not installed")
    disk = make_xfs_disk(tmp_path / "old-spool.img", {"letter.eml": b"queued mail\n"}, label="oldspool")
    probe = subprocess.run(["blkid", "-p", "-o", "export", str(disk)], capture_output=True, text=True, check=True)
    assert "TYPE=xfs" in probe.stdout and "LABEL=oldspool" in probe.stdout and "PTTYPE" not in probe.stdout
    if shutil.which("xfs_db"):
        listing = subprocess.run(["xfs_db", "-r", "-c", "ls /", str(disk)], capture_output=True, text=True,
                                 check=True).stdout
        assert "letter.eml" in listing
    assert sha256_of(disk) == hashlib.sha256(disk.read_bytes()).hexdigest()


@pytest.mark.parametrize("user", ["root", "deploy"])
def test_existing_machine_user_data_is_valid_and_carries_exactly_the_session_keys(tmp_path: Path, user: str) -> None:
    if shutil.which("cloud-init") is None:
        pytest.skip("cloud-init (for its schema check) is not installed")
    host_key, client = generate_ssh_key("root@machine"), generate_ssh_key("client")
    text = existing_machine_user_data(host_key, client.public_line, user)
    (tmp_path / "user-data").write_text(text)
    schema = subprocess.run(["cloud-init", "schema", "--config-file", str(tmp_path / "user-data")],
                            capture_output=True, text=True)
    assert schema.returncode == 0 and "Valid cloud-config" in schema.stdout, schema
    doc = yaml.safe_load(text)
    # The image's own host keys go and no other is generated: sshd can present only this one.
    assert (doc["ssh_deletekeys"], doc["ssh_genkeytypes"]) == (True, ["ed25519"])
    assert doc["ssh_keys"] == {"ed25519_private": host_key.private_openssh, "ed25519_public": host_key.public_line}
    (account,) = doc["users"]
    assert "PRIVATE KEY" not in json.dumps(account)
    assert account["name"] == user and account["ssh_authorized_keys"] == [client.public_line]
    assert account["lock_passwd"] is True and doc["ssh_pwauth"] is False
    assert account.get("sudo") == (None if user == "root" else "ALL=(ALL) NOPASSWD:ALL")


def _standin_kumod(standin_debs: StandinDebs, tmp_path: Path) -> Path:
    return _extract(standin_debs["kumomta"], tmp_path / "pkg") / "opt/kumomta/sbin/kumod"


def test_standin_kumod_validate(standin_debs: StandinDebs, tmp_path: Path) -> None:
    if shutil.which("luac5.4") is None:
        pytest.skip("luac5.4 (Debian package lua5.4) is not installed")
    kumod = _standin_kumod(standin_debs, tmp_path)

    def validate(policy: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(kumod), "--policy", str(policy), "--validate"],
            check=False,
            capture_output=True,
            text=True,
            timeout=30,
        )

    good = tmp_path / "pkg/opt/kumomta/share/minimal-init.lua"
    assert validate(good).returncode == 0

    broken = tmp_path / "broken.lua"
    broken.write_text("kumo.on('init', function()\n  kumo.start_esmtp_listener {\nend)\n")
    result = validate(broken)
    assert result.returncode != 0
    assert "failed to parse" in result.stderr and "broken.lua" in result.stderr

    missing = validate(tmp_path / "absent.lua")
    assert missing.returncode != 0 and "cannot read policy" in missing.stderr


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_http(port: int, timeout: float = 20) -> tuple[int, str]:
    import http.client

    deadline = time.monotonic() + timeout
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/api/check-liveness/v1")
            response = conn.getresponse()
            return response.status, response.read().decode()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.mark.parametrize("spool_writable", [True, False])
def test_standin_kumod_serves_and_reports_spool(
    standin_debs: StandinDebs, tmp_path: Path, spool_writable: bool
) -> None:
    """Run the stand-in on the host on high ports: banner, liveness, the trap."""
    kumod = _standin_kumod(standin_debs, tmp_path)
    spool = tmp_path / "spool"
    spool.mkdir(mode=0o755)
    # kumod refuses to run as root without --user; as ourselves it stays put.
    user_args = ["--user", pwd.getpwuid(os.geteuid()).pw_name]
    if not spool_writable:
        # Reproduce the ownership trap: a root-owned spool and kumod dropping
        # to an unprivileged account. Only root can switch users.
        if os.geteuid() != 0:
            pytest.skip("needs root to drop to another account")
        user_args = ["--user", "nobody"]
        tmp_path.chmod(0o755)  # so nobody can read the policy and the script
    smtp_port, http_port = _free_port(), _free_port()
    policy = tmp_path / "init.lua"
    policy.write_text(
        "kumo.on('init', function()\n"
        f"  kumo.start_esmtp_listener {{ listen = '127.0.0.1:{smtp_port}',"
        " relay_hosts = { '127.0.0.1' } }\n"
        f"  kumo.start_http_listener {{ listen = '127.0.0.1:{http_port}' }}\n"
        f"  kumo.define_spool {{ name = 'data', path = '{spool}/data' }}\n"
        "end)\n"
    )
    for path in (policy, kumod):
        path.chmod(0o755)
    process = subprocess.Popen(
        [sys.executable, str(kumod), "--policy", str(policy), *user_args], stderr=subprocess.PIPE, text=True
    )
    try:
        status, body = _wait_http(http_port)
        with socket.create_connection(("127.0.0.1", smtp_port), timeout=5) as sock:
            banner = sock.makefile("rb").readline().decode()
        if spool_writable:
            assert (status, banner[:4]) == (200, "220 "), body
            assert "ESMTP KumoMTA-standin" in banner
            assert (spool / "data/.kumod-standin-probe").is_file()
        else:
            assert status == 503 and "cannot write to" in body
            assert banner.startswith("421")
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=10)
    assert "ready as uid" in stderr


# --------------------------------------------------------------------------
# One real boot
# --------------------------------------------------------------------------

SMOKE_MARKER = "KUMO-SMOKE-RC="

# Hand-written on purpose: this tests the harness, not the renderer. The
# repository is added exactly as upstream documents it for Ubuntu 22.04.
SMOKE_USER_DATA = f"""#cloud-config
write_files:
  - path: /usr/local/sbin/kumo-smoke.sh
    permissions: '0755'
    content: |
      #!/bin/sh
      set -eux
      curl -fsSL {GUEST_MIRROR_URL}/kumomta-ubuntu-22/public.gpg \\
        | gpg --batch --yes --dearmor -o /usr/share/keyrings/kumomta.gpg
      chmod 644 /usr/share/keyrings/kumomta.gpg
      curl -fsSL -o /etc/apt/sources.list.d/kumomta.list \\
        {GUEST_MIRROR_URL}/files/kumomta-ubuntu22.list
      apt-get update
      DEBIAN_FRONTEND=noninteractive apt-get install -y kumomta
      systemctl enable --now kumomta
runcmd:
  - [sh, -c, '/usr/local/sbin/kumo-smoke.sh > /var/log/kumo-smoke.log 2>&1; echo "{SMOKE_MARKER}$?" > /dev/ttyS0']
"""


@pytest.mark.vm
def test_vm_installs_standin_from_mirror(
    vm_rootfs: RootImage, apt_mirror: MirrorFactory, record_property: Callable[[str, object], None]
) -> None:
    mirror = apt_mirror()
    with Vm(vm_rootfs, SMOKE_USER_DATA, mirror_port=mirror.port) as vm:
        match = vm.wait_for_console(rf"{SMOKE_MARKER}(\d+)", timeout=900)
        boot_seconds = time.monotonic() - vm.started_at
        record_property("boot_to_marker_seconds", round(boot_seconds))
        print(f"boot to marker: {boot_seconds:.0f}s")
        if match.group(1) != "0":
            log = vm.read_file("/var/log/kumo-smoke.log").decode(errors="replace")
            pytest.fail(f"bootstrap script exited {match.group(1)}:\n{log[-6000:]}")

        # cloud-init itself must be clean: the image's own modules must not fail.
        status = vm.exec(["cloud-init", "status", "--wait", "--long"], timeout=600)
        assert status.returncode == 0 and "status: done" in status.stdout, status.stdout

        # DHCP came up on the virtio NIC under its predictable name.
        addr = vm.exec(["ip", "-o", "-4", "addr", "show", "dev", GUEST_NIC_NAME], check=True)
        assert "inet 10.0.2.15/24" in addr.stdout

        banner = vm.smtp_banner(timeout=120)
        assert banner.startswith("220"), banner
        assert "ESMTP KumoMTA-standin" in banner

        ident = vm.exec(["id", "kumod"])
        assert ident.returncode == 0 and "(kumod)" in ident.stdout, ident
        owner = vm.exec(["stat", "-c", "%U:%G %a", "/var/spool/kumomta"], check=True)
        assert owner.stdout.strip() == "kumod:kumod 2770"
        probe = vm.read_file("/var/spool/kumomta/data/.kumod-standin-probe")
        assert b"written by kumod-standin" in probe

        # The minimal policy's HTTP listener is on the guest's loopback, so
        # http_port (hostfwd to the guest's 8000) cannot reach it: ask inside.
        live = vm.exec(["curl", "-s", "-w", " %{http_code}", "http://127.0.0.1:8000/api/check-liveness/v1"], check=True)
        assert live.stdout.endswith(" 200"), live.stdout

        # The NVMe device the bootstrap will format is there.
        assert vm.exec(["test", "-b", "/dev/nvme0n1"]).returncode == 0

    assert mirror.served("/kumomta_2026.11.01-standin_all.deb"), mirror.requests
    assert mirror.served("/kumomta-ubuntu-22/public.gpg")
    assert mirror.served("/files/kumomta-ubuntu22.list")

"""The rendered bootstrap on a real booted machine.

A Debian 12 guest under qemu (real kernel, real cloud-init, real systemd, real
NVMe controllers) receives exactly the user-data kumo-infra renders for a
``debian12`` node, installs a stand-in ``kumomta`` package (and unattended-upgrades)
from a signed local apt mirror laid out like KumoMTA's repository host, trusting
its key only by the pinned fingerprint, and must end healthy. Beside the spool
device(s) sits a foreign unpartitioned disk holding an XFS filesystem with a
file: it must come out byte-identical. The guest's network is isolated (qemu
``restrict=on``): the only way out is the mirror, and the outbound port 25 probe
targets a documentation address only.

Boots (each several minutes under TCG): one node end to end (the smoke checks of
``kumo-infra ci smoke`` from the first second of its boot, rerun, wiped NVMe, reboot),
one striped over two NVMe devices, one whose repository is first unreachable and then
signed by another key.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from kumo_infra.bootstrap import Timeouts, render_user_data
from kumo_infra.config import Deployment, parse_deployment
from kumo_infra.smoke import run_smoke
from kumo_infra.stackconfig import plan_for

from .harness import GUEST_MIRROR_URL, SerialLogConsole, Vm, generate_signing_key, make_xfs_disk, sha256_of
from .harness import STATIC_NETWORK_CONFIG as NETWORK_CONFIG

pytestmark = pytest.mark.vm

HOSTNAME = "mta-vm.example.com"
RESULT = r"KUMO-BOOTSTRAP (OK|FAILED)[^\r\n]*"
# A stand-in for an MTA shipped with the image: it holds port 25, so kumod could
# not start unless the bootstrap really stops and disables it.
FAKE_POSTFIX = """[Unit]
Description=stand-in for a preinstalled MTA holding port 25
[Service]
ExecStart=/usr/bin/python3 -c "import socket,time; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('0.0.0.0', 25)); s.listen(); time.sleep(1e9)"
[Install]
WantedBy=multi-user.target
"""


def node_deployment(repo_key_fingerprint: str, instance_type: str | None = None,
                    outbound: str = "direct") -> Deployment:
    return parse_deployment({
        "cloud": "aws", "region": "us-east-1", "name": "kumo-vm", "hostname": HOSTNAME, "os": "debian12",
        "spool": {"storage": "local_nvme"},
        "sizing": {"instance_type": instance_type} if instance_type else {},
        # No ssh_cidrs / api_cidrs: the API stays on the node's loopback (checked below).
        # The mirror is plain http inside qemu, so its signing key is pinned by fingerprint.
        "kumomta": {"repo_url": GUEST_MIRROR_URL, "repo_key_fingerprint": repo_key_fingerprint},
        # Documentation address (RFC 5737): nothing real is ever probed from a test.
        "port25": {"outbound": outbound, "probe_hosts": ["192.0.2.1"], "probe_timeout_s": 3,
                   **({"relay": {"host": "smtp.relay.example.net", "username": "kumo"}} if outbound == "relay"
                      else {})},
    })


def node_user_data(repo_key_fingerprint: str, repository_s: int = 120,
                   instance_type: str | None = None, ssh_pwauth_from_cloud_init: bool = True) -> tuple[str, dict]:
    deployment = node_deployment(repo_key_fingerprint, instance_type)
    plan = plan_for(deployment)
    user_data = render_user_data(deployment, plan, 0, Timeouts(network_s=120, repository_s=repository_s, health_s=180))
    doc = yaml.safe_load(user_data)
    assert doc["ssh_pwauth"] is False
    if not ssh_pwauth_from_cloud_init:
        # An image or datasource that leaves SSH password login on: the ssh step must turn it off.
        del doc["ssh_pwauth"]
    # Where a package puts its unit (an admin unit in /etc cannot be masked).
    doc["write_files"].append({"path": "/usr/lib/systemd/system/postfix.service", "content": FAKE_POSTFIX})
    doc["runcmd"] = [["systemctl", "daemon-reload"], ["systemctl", "enable", "--now", "postfix"], *doc["runcmd"]]
    return "#cloud-config\n" + yaml.safe_dump(doc, sort_keys=False, width=1000), doc


def status(vm: Vm, name: str = "status.json") -> dict:
    return json.loads(vm.read_file(f"/var/lib/kumo-infra/{name}"))


def steps(st: dict) -> dict[str, dict]:
    return {s["name"]: s for s in st["steps"]}


def disks_by_serial(vm: Vm) -> dict[str, str]:
    """/dev path of each disk by its NVMe serial (the kernel may number controllers in any order)."""
    out = vm.exec(["lsblk", "-dn", "-o", "NAME,SERIAL"], check=True).stdout
    return {serial: f"/dev/{name}" for name, serial in (line.split() for line in out.splitlines() if len(line.split()) == 2)}


def foreign_disk(tmp_path: Path) -> Path:
    """An old spool someone attached to drain it: unpartitioned, XFS, a message on it."""
    return make_xfs_disk(tmp_path / "old-spool.img", {"queued-0001.eml": b"From: a@example.com\r\n\r\nkeep me\r\n"},
                         label="oldspool")


def assert_refused_foreign(facts: dict, device: str) -> None:
    (refusal,) = [r for r in facts["spool_devices_refused"] if r.startswith(device + " ")]
    assert "holds xfs labelled oldspool, not made by kumo-infra" in refusal


def smoke_during_boot(vm: Vm, repo_key_fingerprint: str) -> None:
    """run_smoke over the booting VM, every verdict checked."""
    deployment = node_deployment(repo_key_fingerprint)
    node = {"name": "node0", "hostname": HOSTNAME, "public_ip": "127.0.0.1", "machine_id": None}
    options = {"console": SerialLogConsole(vm), "smtp_port": vm.smtp_port, "address": lambda n: "127.0.0.1",
               "poll_s": 5.0}
    report = run_smoke(deployment, [node], deadline_s=1200, **options)
    checks = {c.name: c for c in report.checks}
    assert checks["smtp"].ok and checks["bootstrap"].ok, report.format()
    assert ("certificate subject 'CN=rcgen self signed cert', issuer 'CN=rcgen self signed cert', "
            f"self-signed: yes, names {HOSTNAME}: yes") in checks["smtp"].detail
    assert checks["bootstrap"].detail.startswith(f"'KUMO-BOOTSTRAP OK host={HOSTNAME} changed=true")
    # The probe finds outbound 25 blocked (the network is isolated): with direct delivery, a failure
    # named for the node; with relay delivery, what is expected (same console, nothing booted again).
    assert [c.line() for c in report.failures] == [checks["outbound25"].line()]
    assert checks["outbound25"].line().startswith("FAIL node0 outbound25: deliverability=FAILED (outbound port 25 "
                                                  "is blocked, and delivery is direct")
    relay = run_smoke(node_deployment(repo_key_fingerprint, outbound="relay"), [node], deadline_s=120, **options)
    assert relay.ok, relay.format()
    # A stack expecting another hostname: every check fails, each naming the node.
    other = run_smoke(deployment, [{**node, "hostname": "other.example.com"}], deadline_s=120, settle_s=0,
                      **options)
    assert [c.line().split(":", 1)[0] for c in other.failures] == [
        "FAIL node0 smtp", "FAIL node0 bootstrap", "FAIL node0 outbound25"], other.format()
    assert "does not name other.example.com" in other.failures[0].detail
    assert f"names host={HOSTNAME}, the stack says other.example.com" in other.failures[1].detail


def test_bootstrap_installs_tunes_starts_and_survives_rerun_and_wiped_nvme(vm_rootfs, node_mirror, tmp_path):
    mirror = node_mirror()
    foreign = foreign_disk(tmp_path)
    foreign_before = sha256_of(foreign)
    user_data, doc = node_user_data(mirror.fingerprint)
    with Vm(vm_rootfs, user_data, hostname="mta-vm", network_config=NETWORK_CONFIG, mirror_port=mirror.port,
            nvme_sizes=["2G"], extra_disks=[foreign]) as vm:
        # The smoke `kumo-infra ci smoke` runs against a cloud, from the first second of the boot:
        # port 25 held silent by the image's MTA, then closed, then kumod's; the console read
        # through a ConsoleReader (here the serial log file) until the bootstrap's result line.
        smoke_during_boot(vm, mirror.fingerprint)
        result = vm.wait_for_console(RESULT, timeout=60)
        console = vm.console_text()
        assert result.group(1) == "OK", vm.console_tail()
        disks = disks_by_serial(vm)
        spool_device, foreign_device = disks["kumonvme0"], disks["kumoextra0"]

        # From outside the guest: SMTP banner on 25. The API answers on the node's loopback
        # only: the forwarded port 8000 finds nothing listening outside it.
        banner = vm.smtp_banner()
        assert banner.startswith("220 ") and HOSTNAME in banner
        live = vm.exec(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:8000/api/check-liveness/v1"])
        assert live.stdout == "200"
        with pytest.raises(ConnectionResetError):
            vm.http_get("/api/check-liveness/v1")

        st = status(vm)
        assert st["result"] == "ok" and st["failed_step"] is None and st["hostname"] == HOSTNAME
        by_name = steps(st)
        for name in ("network", "other_mtas", "time_sync", "ssh", "install", "updates", "spool", "tuning", "policy",
                     "start", "health"):
            assert by_name[name]["status"] == "ok", by_name[name]
        facts = st["facts"]
        # The spool is the spool NVMe namespace, xfs, noatime, kumod-owned (the ownership trap
        # avoided); the foreign XFS disk beside it was looked at and refused.
        assert facts["spool_source"] == spool_device and facts["spool_devices"] == [spool_device]
        assert_refused_foreign(facts, foreign_device)
        assert facts["spool_fstype"] == "xfs" and "noatime" in facts["spool_options"]
        assert (facts["spool_owner"], facts["spool_mode"]) == ("kumod:kumod", "2770")
        assert "LABEL=kumospool /var/spool/kumomta xfs noatime,nofail" in vm.read_file("/etc/fstab").decode()
        # sysctl: raised where the kernel was lower, never lowered.
        assert int(facts["sysctl"]["vm.max_map_count"]) >= 768000
        assert facts["sysctl"]["net.ipv4.tcp_tw_reuse"] == "1"
        assert facts["sysctl"]["net.ipv4.ip_local_port_range"].split() == ["5000", "63000"]
        assert vm.exec(["sysctl", "-n", "vm.max_map_count"]).stdout.strip() == facts["sysctl"]["vm.max_map_count"]
        assert facts["nofile_limit"] == "1048576"
        # The preinstalled MTA is stopped, disabled and masked; kumod owns port 25.
        assert facts["other_mtas_disabled"] == ["postfix"]
        assert vm.exec(["systemctl", "is-enabled", "postfix"]).stdout.strip() == "masked"
        assert vm.exec(["systemctl", "is-active", "kumomta"]).stdout.strip() == "active"
        assert facts["kumomta_version"].endswith("standin")
        # Outbound 25 is blocked here (isolated network): reported, not fatal.
        assert facts["outbound_25"] == "blocked" and facts["deliverability"] == "failed"
        assert by_name["probe25"]["status"] == "failed"
        assert "deliverability=FAILED" in console
        # The policy kumod runs is exactly the rendered one (hostname, loopback-only relaying), and
        # the TSA daemon runs its own rendered policy.
        policy = vm.read_file("/opt/kumomta/etc/policy/init.lua").decode()
        rendered = {f["path"]: f["content"] for f in doc["write_files"]}
        assert policy == rendered["/etc/kumo-infra/init.lua"]
        assert f"local HOSTNAME = '{HOSTNAME}'" in policy and "relay_hosts = { '127.0.0.1', '::1' }" in policy
        assert vm.read_file("/opt/kumomta/etc/policy/tsa_init.lua").decode() == rendered["/etc/kumo-infra/tsa_init.lua"]
        assert vm.exec(["systemctl", "is-active", "kumo-tsa-daemon"]).stdout.strip() == "active"

        # Supply chain: the key was trusted by its pinned fingerprint, the list is the rendered
        # one (never the repository host's), and apt verified the signed index with that key.
        assert facts["repo_key_fingerprint"] == mirror.fingerprint
        keyring = vm.exec(["gpg", "--batch", "--with-colons", "--show-keys", "/usr/share/keyrings/kumomta.gpg"],
                          check=True).stdout
        assert next(line.split(":")[9] for line in keyring.splitlines() if line.startswith("fpr:")) == mirror.fingerprint
        rendered_list = next(f["content"] for f in doc["write_files"] if f["path"] == "/etc/kumo-infra/kumomta.list")
        assert vm.read_file("/etc/apt/sources.list.d/kumomta.list").decode() == rendered_list
        assert mirror.served("kumomta-ubuntu-22/public.gpg")
        assert mirror.served("kumomta-ubuntu-22-stable/dists/stable/InRelease")
        assert not mirror.served("files/kumomta-ubuntu22.list")

        # OS updates: unattended-upgrades installed from the repository, security origins only,
        # no reboot, apt's timers enabled; unattended-upgrade itself reads those origins.
        assert facts["os_updates"] == {
            "automatic": "security", "reboot": "never", "tool": "unattended-upgrades",
            "config": "/etc/apt/apt.conf.d/52kumo-infra-os-updates",
            "units": {"apt-daily.timer": "enabled", "apt-daily-upgrade.timer": "enabled"}}
        assert "installed unattended-upgrades" in by_name["updates"]["changes"]
        for timer in ("apt-daily.timer", "apt-daily-upgrade.timer"):
            assert vm.exec(["systemctl", "is-active", timer]).stdout.strip() == "active"
        apt = vm.exec(["apt-config", "dump"], check=True).stdout.splitlines()
        assert 'APT::Periodic::Unattended-Upgrade "1";' in apt
        assert 'Unattended-Upgrade::Automatic-Reboot "false";' in apt
        assert [line for line in apt if line.startswith("Unattended-Upgrade::Origins-Pattern:: ")] == [
            'Unattended-Upgrade::Origins-Pattern:: "origin=Debian,codename=${distro_codename}-security,label=Debian-Security";',
            'Unattended-Upgrade::Origins-Pattern:: "origin=Debian,codename=${distro_codename},label=Debian-Security";']
        dry = vm.exec(["unattended-upgrade", "--dry-run", "--debug"], timeout=600)
        allowed = next(line for line in (dry.stdout + dry.stderr).splitlines() if "Allowed origins are:" in line)
        assert allowed.split("Allowed origins are: ", 1)[1].split(", ") == [
            "origin=Debian,codename=bookworm-security,label=Debian-Security",
            "origin=Debian,codename=bookworm,label=Debian-Security"], allowed
        # Time sync: the image's systemd-timesyncd runs (nothing to sync with in here).
        assert facts["time_sync"]["service"] == "systemd-timesyncd" and facts["time_sync"]["active"] is True
        assert facts["time_sync"]["synchronized"] in ("yes", "no")
        # SSH: Debian's sshd allows passwords by default; the cloud-config's ssh_pwauth: false had
        # cloud-init turn them off before the bootstrap, whose ssh step then finds nothing to do
        # (the step itself is proven in the repository-failure boot, without ssh_pwauth).
        assert facts["ssh_password_authentication"] == "no"
        assert by_name["ssh"]["status"] == "ok" and by_name["ssh"]["changes"] == []
        assert "passwordauthentication no" in vm.exec(["sshd", "-T"], check=True).stdout.splitlines()
        assert vm.exec(["systemctl", "is-active", "ssh"]).stdout.strip() == "active"

        # Idempotent: a second run changes nothing and ends healthy.
        rerun = vm.exec(["/usr/local/sbin/kumo-bootstrap", "all"], timeout=600)
        assert rerun.returncode == 0, rerun.stdout + rerun.stderr
        again = status(vm)
        assert [(s["name"], s["changes"]) for s in again["steps"] if s["changed"]] == []
        assert again["result"] == "ok" and again["changed"] is False
        assert vm.smtp_banner().startswith("220 ")

        # The cloud wipes local NVMe on stop/start: at the next boot the spool is re-created,
        # on the spool device again, never on the foreign disk.
        wipe = vm.exec(["bash", "-c", f"systemctl stop kumomta && umount /var/spool/kumomta && wipefs -a {spool_device}"])
        assert wipe.returncode == 0, wipe.stderr
        vm.reboot()
        assert vm.smtp_banner(timeout=300).startswith("220 ")
        disks = disks_by_serial(vm)
        spool = status(vm, "spool-status.json")
        assert spool["result"] == "ok" and steps(spool)["spool"]["changed"] is True
        assert spool["facts"]["spool_source"] == disks["kumonvme0"]
        assert_refused_foreign(spool["facts"], disks["kumoextra0"])
        assert spool["facts"]["spool_owner"] == "kumod:kumod"
        assert vm.exec(["findmnt", "-no", "FSTYPE", "/var/spool/kumomta"]).stdout.strip() == "xfs"
    # Two full bootstraps and a spool re-creation later, not one byte of the foreign disk changed.
    assert sha256_of(foreign) == foreign_before


def test_unreachable_or_wrongly_signed_repository_fails_loudly_naming_the_step(vm_rootfs, node_mirror, tmp_path):
    mirror = node_mirror()
    # The node pins a key that is not the one the mirror signs with.
    pinned = generate_signing_key(tmp_path / "gnupg", "a key the mirror does not use")
    assert pinned != mirror.fingerprint
    mirror.stop()
    user_data, _ = node_user_data(pinned, repository_s=20, ssh_pwauth_from_cloud_init=False)
    with Vm(vm_rootfs, user_data, hostname="mta-vm", network_config=NETWORK_CONFIG, mirror_port=mirror.port,
            nvme_sizes=["1G"]) as vm:
        # 1. The repository does not answer.
        result = vm.wait_for_console(RESULT, timeout=900)
        assert result.group(1) == "FAILED", vm.console_tail()
        assert "step=install" in result.group(0) and "repository unreachable" in result.group(0)
        assert "KUMO-BOOTSTRAP OK" not in vm.console_text()
        st = status(vm)
        # The ssh step ran before install: without ssh_pwauth in the cloud-config, Debian's sshd
        # allowed passwords, and the step turned them off with a drop-in and a reload.
        assert steps(st)["ssh"]["status"] == "ok"
        assert "SSH password authentication turned off" in steps(st)["ssh"]["changes"]
        assert st["facts"]["ssh_password_authentication"] == "no"
        assert "passwordauthentication no" in vm.exec(["sshd", "-T"], check=True).stdout.splitlines()
        assert st["result"] == "failed" and st["failed_step"] == "install"
        assert steps(st)["install"]["status"] == "failed"
        assert "spool" not in steps(st)  # nothing after the failed step ran
        assert vm.exec(["systemctl", "is-active", "kumomta"]).stdout.strip() != "active"

        # 2. It answers, signed with another key than the pinned one: refused before any trust.
        mirror.serve_again()
        mark = vm.console_mark()
        rerun = vm.exec(["/usr/local/sbin/kumo-bootstrap", "all"], timeout=600)
        assert rerun.returncode == 1, rerun.stdout + rerun.stderr
        line = vm.wait_for_console(RESULT, timeout=60, since=mark).group(0)
        assert line.startswith("KUMO-BOOTSTRAP FAILED step=install ")
        assert f"expected {pinned}" in line and f"is {mirror.fingerprint}" in line, line
        st = status(vm)
        assert st["failed_step"] == "install" and "fingerprint mismatch" in steps(st)["install"]["detail"]
        # Nothing of the repository was trusted or used: no keyring, no list, no index fetched.
        for path in ("/usr/share/keyrings/kumomta.gpg", "/etc/apt/sources.list.d/kumomta.list"):
            assert vm.exec(["test", "-e", path]).returncode != 0, path
        assert mirror.served("kumomta-ubuntu-22/public.gpg")
        assert not mirror.served("InRelease") and not mirror.served(".deb")
        assert vm.exec(["dpkg-query", "-W", "kumomta"]).returncode != 0


def test_several_nvme_devices_are_striped_and_a_foreign_disk_left_alone(vm_rootfs, node_mirror, tmp_path):
    # i4i.8xlarge has two instance-store NVMe devices: the plan asks for both.
    mirror = node_mirror()
    user_data, doc = node_user_data(mirror.fingerprint, instance_type="i4i.8xlarge")
    assert "KUMO_SPOOL_DEVICES=2" in next(f["content"] for f in doc["write_files"] if f["path"].endswith("bootstrap.env"))
    foreign = foreign_disk(tmp_path)
    foreign_before = sha256_of(foreign)
    with Vm(vm_rootfs, user_data, hostname="mta-vm", network_config=NETWORK_CONFIG, mirror_port=mirror.port,
            nvme_sizes=["1G", "1G"], extra_disks=[foreign]) as vm:
        result = vm.wait_for_console(RESULT, timeout=1200)
        assert result.group(1) == "OK", vm.console_tail()
        disks = disks_by_serial(vm)
        facts = status(vm)["facts"]
        assert sorted(facts["spool_devices"]) == sorted([disks["kumonvme0"], disks["kumonvme1"]])
        assert_refused_foreign(facts, disks["kumoextra0"])
        assert facts["spool_source"].startswith("/dev/md")
        detail = vm.exec(["mdadm", "--detail", facts["spool_source"]]).stdout
        assert "raid0" in detail and "Raid Devices : 2" in detail
        assert disks["kumoextra0"] not in detail
        assert (facts["spool_owner"], facts["spool_mode"]) == ("kumod:kumod", "2770")
        # Both devices serve the spool: about 2 GB, not 1.
        assert int(facts["spool_size_bytes"]) > 1.9e9
        assert vm.smtp_banner().startswith("220 ")
    assert sha256_of(foreign) == foreign_before

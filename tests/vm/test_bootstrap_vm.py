"""The rendered bootstrap on a real booted machine.

A Debian 12 guest under qemu (real kernel, real cloud-init, real systemd, a real
NVMe controller) receives exactly the user-data kumo-infra renders for a
``debian12`` node, installs a stand-in ``kumomta`` package from a signed local
apt mirror laid out like KumoMTA's repository host, and must end healthy. The
guest's network is isolated (qemu ``restrict=on``): the only way out is the
mirror, and the outbound port 25 probe targets a documentation address only.
"""

from __future__ import annotations

import json

import pytest
import yaml

from kumo_infra.bootstrap import Timeouts, render_user_data
from kumo_infra.config import parse_deployment
from kumo_infra.stackconfig import plan_for

from .harness import GUEST_MIRROR_URL, Vm

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


# qemu's restricted user network hands out no router by DHCP; every cloud does. A static
# address with qemu's gateway gives the guest the default route a cloud machine has
# (restrict=on still drops every packet that would leave qemu).
NETWORK_CONFIG = """version: 1
config:
  - type: physical
    name: ens3
    subnets:
      - type: static
        address: 10.0.2.15/24
        gateway: 10.0.2.2
"""


def node_user_data(repository_s: int = 120, instance_type: str | None = None) -> tuple[str, dict]:
    deployment = parse_deployment({
        "cloud": "aws", "region": "us-east-1", "name": "kumo-vm", "hostname": HOSTNAME, "os": "debian12",
        "spool": {"storage": "local_nvme"},
        "sizing": {"instance_type": instance_type} if instance_type else {},
        # The host reaches the API through qemu's forward, seen in the guest as 10.0.2.2.
        "network": {"admin_cidrs": ["10.0.2.2/32"]},
        "kumomta": {"repo_url": GUEST_MIRROR_URL},
        # Documentation address (RFC 5737): nothing real is ever probed from a test.
        "port25": {"outbound": "direct", "probe_hosts": ["192.0.2.1"], "probe_timeout_s": 3},
    })
    plan = plan_for(deployment)
    user_data = render_user_data(deployment, plan, 0, Timeouts(network_s=120, repository_s=repository_s, health_s=180))
    doc = yaml.safe_load(user_data)
    # Where a package puts its unit (an admin unit in /etc cannot be masked).
    doc["write_files"].append({"path": "/usr/lib/systemd/system/postfix.service", "content": FAKE_POSTFIX})
    doc["runcmd"] = [["systemctl", "daemon-reload"], ["systemctl", "enable", "--now", "postfix"], *doc["runcmd"]]
    return "#cloud-config\n" + yaml.safe_dump(doc, sort_keys=False, width=1000), doc


def status(vm: Vm, name: str = "status.json") -> dict:
    return json.loads(vm.read_file(f"/var/lib/kumo-infra/{name}"))


def steps(st: dict) -> dict[str, dict]:
    return {s["name"]: s for s in st["steps"]}


def test_bootstrap_installs_tunes_starts_and_survives_rerun_and_wiped_nvme(vm_rootfs, apt_mirror):
    mirror = apt_mirror()
    user_data, _ = node_user_data()
    with Vm(vm_rootfs, user_data, hostname="mta-vm", network_config=NETWORK_CONFIG, mirror_port=mirror.port, nvme_sizes=["2G"]) as vm:
        result = vm.wait_for_console(RESULT, timeout=1200)
        console = vm.console_text()
        assert result.group(1) == "OK", vm.console_tail()

        # From outside the guest: SMTP banner on 25 and liveness on the API.
        banner = vm.smtp_banner()
        assert banner.startswith("220 ") and HOSTNAME in banner
        assert vm.http_get("/api/check-liveness/v1")[0] == 200

        st = status(vm)
        assert st["result"] == "ok" and st["failed_step"] is None and st["hostname"] == HOSTNAME
        by_name = steps(st)
        for name in ("network", "other_mtas", "install", "spool", "tuning", "policy", "start", "health"):
            assert by_name[name]["status"] == "ok", by_name[name]
        facts = st["facts"]
        # The spool is the NVMe namespace, xfs, noatime, kumod-owned (the ownership trap avoided).
        assert facts["spool_source"] == "/dev/nvme0n1"
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
        # The package came from the mirror the upstream way (key + list + signed index).
        assert mirror.served("kumomta-ubuntu-22/public.gpg") and mirror.served("files/kumomta-ubuntu22.list")
        policy = vm.read_file("/opt/kumomta/etc/policy/init.lua").decode()
        assert f"hostname = '{HOSTNAME}'" in policy and "relay_hosts = { '127.0.0.1', '::1' }" in policy

        # Idempotent: a second run changes nothing and ends healthy.
        rerun = vm.exec(["/usr/local/sbin/kumo-bootstrap", "all"], timeout=600)
        assert rerun.returncode == 0, rerun.stdout + rerun.stderr
        again = status(vm)
        assert [(s["name"], s["changes"]) for s in again["steps"] if s["changed"]] == []
        assert again["result"] == "ok" and again["changed"] is False
        assert vm.smtp_banner().startswith("220 ")

        # The cloud wipes local NVMe on stop/start: at the next boot the spool is re-created.
        wipe = vm.exec(["bash", "-c", "systemctl stop kumomta && umount /var/spool/kumomta && wipefs -a /dev/nvme0n1"])
        assert wipe.returncode == 0, wipe.stderr
        vm.reboot()
        assert vm.smtp_banner(timeout=300).startswith("220 ")
        spool = status(vm, "spool-status.json")
        assert spool["result"] == "ok" and steps(spool)["spool"]["changed"] is True
        assert spool["facts"]["spool_source"] == "/dev/nvme0n1"
        assert spool["facts"]["spool_owner"] == "kumod:kumod"
        assert vm.exec(["findmnt", "-no", "FSTYPE", "/var/spool/kumomta"]).stdout.strip() == "xfs"


def test_unreachable_repository_fails_loudly_naming_the_step(vm_rootfs, apt_mirror):
    mirror = apt_mirror()
    mirror.stop()
    user_data, _ = node_user_data(repository_s=20)
    with Vm(vm_rootfs, user_data, hostname="mta-vm", network_config=NETWORK_CONFIG, mirror_port=mirror.port, nvme_sizes=["1G"]) as vm:
        result = vm.wait_for_console(RESULT, timeout=900)
        assert result.group(1) == "FAILED", vm.console_tail()
        assert "step=install" in result.group(0) and "repository unreachable" in result.group(0)
        assert "KUMO-BOOTSTRAP OK" not in vm.console_text()
        st = status(vm)
        assert st["result"] == "failed" and st["failed_step"] == "install"
        assert steps(st)["install"]["status"] == "failed"
        assert "spool" not in steps(st)  # nothing after the failed step ran
        assert vm.exec(["systemctl", "is-active", "kumomta"]).stdout.strip() != "active"


def test_several_nvme_devices_are_striped(vm_rootfs, apt_mirror):
    # i4i.8xlarge has two instance-store NVMe devices: the plan asks for both.
    user_data, doc = node_user_data(instance_type="i4i.8xlarge")
    assert "KUMO_SPOOL_DEVICES=2" in next(f["content"] for f in doc["write_files"] if f["path"].endswith("bootstrap.env"))
    mirror = apt_mirror()
    with Vm(vm_rootfs, user_data, hostname="mta-vm", network_config=NETWORK_CONFIG, mirror_port=mirror.port,
            nvme_sizes=["1G", "1G"]) as vm:
        result = vm.wait_for_console(RESULT, timeout=1200)
        assert result.group(1) == "OK", vm.console_tail()
        facts = status(vm)["facts"]
        assert sorted(facts["spool_devices"]) == ["/dev/nvme0n1", "/dev/nvme1n1"]
        assert facts["spool_source"].startswith("/dev/md")
        detail = vm.exec(["mdadm", "--detail", facts["spool_source"]]).stdout
        assert "raid0" in detail and "Raid Devices : 2" in detail
        assert (facts["spool_owner"], facts["spool_mode"]) == ("kumod:kumod", "2770")
        # Both devices serve the spool: about 2 GB, not 1.
        assert int(facts["spool_size_bytes"]) > 1.9e9
        assert vm.smtp_banner().startswith("220 ")

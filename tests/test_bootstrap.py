"""The bootstrap renderer: every OS x cloud x spool mode, checked by the real tools.

cloud-init's own schema validator, shellcheck and a Lua 5.4 parser/interpreter
(Debian packages installed by scripts/test) judge what is rendered.
"""

from __future__ import annotations

import base64
import gzip
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from kumo_infra import oses
from kumo_infra.bootstrap import (AWS_USER_DATA_LIMIT, FILES, compressed, render_startup_script, render_user_data,
                                  spool_device_paths)
from kumo_infra.bootstrap.policy import render_policy
from kumo_infra.config import parse_deployment
from kumo_infra.stackconfig import plan_for
from tests.conftest import deployment

LUA_DIR = Path(__file__).resolve().parent / "lua"
RELAY = {"relay": {"host": "smtp.relay.example.net", "port": 587, "username": "kumo"}}
REGIONS = {"aws": "us-east-1", "azure": "westeurope", "gcp": "us-central1"}


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed; run the suite with `bash scripts/test`, which installs it")
    return path


def combos():
    for cloud in ("aws", "azure", "gcp"):
        for os_key in oses.names_for(cloud):
            for storage in ("block", "local_nvme"):
                yield pytest.param(cloud, os_key, storage, id=f"{cloud}-{os_key}-{storage}")


def build(cloud: str, os_key: str, storage: str, **extra):
    raw = deployment(cloud=cloud, region=REGIONS[cloud], os=os_key, spool={"storage": storage}, port25=RELAY, **extra)
    if cloud == "gcp":
        raw["gcp"] = {"project": "p"}
    if cloud == "azure":
        raw["azure"] = {"marketplace_terms_accepted": True}
    d = parse_deployment(raw)
    return d, plan_for(d)


def write_files(user_data: str) -> dict[str, str]:
    doc = yaml.safe_load(user_data)
    return {f["path"]: f["content"] for f in doc["write_files"]}


def source_env(env_text: str, tmp_path: Path) -> dict[str, str]:
    f = tmp_path / "bootstrap.env"
    f.write_text(env_text)
    out = subprocess.run(["bash", "-c", f'set -a -u; . "{f}"; env -0'], capture_output=True, check=True).stdout
    return dict(item.split("=", 1) for item in out.decode().split("\0") if item.startswith("KUMO_"))


@pytest.mark.parametrize("cloud, os_key, storage", list(combos()))
def test_render_every_combination(cloud, os_key, storage, tmp_path):
    d, plan = build(cloud, os_key, storage)
    user_data = render_user_data(d, plan)
    assert user_data.startswith("#cloud-config\n")

    ud = tmp_path / "user-data"
    ud.write_text(user_data)
    schema = subprocess.run([tool("cloud-init"), "schema", "--config-file", str(ud)], capture_output=True, text=True)
    assert schema.returncode == 0 and "Valid cloud-config" in schema.stdout, schema

    doc = yaml.safe_load(user_data)
    assert doc["runcmd"] == [["/usr/local/sbin/kumo-bootstrap", "all"]]
    assert doc["fqdn"] == "mta.example.com"
    files = write_files(user_data)
    assert files["/usr/local/sbin/kumo-bootstrap"] == (FILES / "kumo-bootstrap.sh").read_text()

    env = source_env(files["/etc/kumo-infra/bootstrap.env"], tmp_path)
    spec = oses.SUPPORTED[os_key]
    assert env["KUMO_PKG_FAMILY"] == spec.family and env["KUMO_REPO_FILE"] == spec.repo_file
    assert env["KUMO_SPOOL_STORAGE"] == storage and env["KUMO_CLOUD"] == cloud
    assert env["KUMO_PACKAGE"] == "kumomta" and env["KUMO_OTHER_PACKAGE"] == "kumomta-dev"
    if storage == "local_nvme":
        assert int(env["KUMO_SPOOL_DEVICES"]) == max(1, plan.nvme_count)

    policy = tmp_path / "init.lua"
    policy.write_text(files["/etc/kumo-infra/init.lua"])
    subprocess.run([tool("luac5.4"), "-p", str(policy)], check=True)

    # AWS takes at most 16 KiB of user data; the AWS component sends it gzipped.
    assert len(compressed(user_data)) < AWS_USER_DATA_LIMIT
    assert gzip.decompress(compressed(user_data)).decode() == user_data


def test_bootstrap_script_and_units_pass_shellcheck(tmp_path):
    d, plan = build("aws", "rocky9", "block")
    env = tmp_path / "bootstrap.env"
    env.write_text(write_files(render_user_data(d, plan))["/etc/kumo-infra/bootstrap.env"])
    script = subprocess.run([tool("shellcheck"), "--severity=style", str(FILES / "kumo-bootstrap.sh")],
                            capture_output=True, text=True)
    assert script.returncode == 0, script.stdout
    # The settings file is only data for the script: "assigned but unused" does not apply.
    settings = subprocess.run([tool("shellcheck"), "--severity=style", "--shell=bash", "--exclude=SC2034", str(env)],
                              capture_output=True, text=True)
    assert settings.returncode == 0, settings.stdout


def test_script_and_settings_agree_on_every_variable(tmp_path):
    d, plan = build("aws", "rocky9", "block")
    files = write_files(render_user_data(d, plan))
    defined = set(source_env(files["/etc/kumo-infra/bootstrap.env"], tmp_path))
    script = (FILES / "kumo-bootstrap.sh").read_text() + (FILES / "kumo-log-retention.service").read_text()
    used = set(re.findall(r"\b(KUMO_[A-Z0-9_]+)\b", script)) - {"KUMO_CONF_DIR"}
    assert used == defined, (used - defined, defined - used)


def test_version_and_channel_reach_the_machine(tmp_path):
    d, plan = build("aws", "ubuntu22", "block", kumomta={"channel": "dev", "version": "2026.03.04-abc",
                                                        "repo_url": "http://mirror.internal/kumo/",
                                                        "repo_key_fingerprint": "A" * 40})
    env = source_env(write_files(render_user_data(d, plan))["/etc/kumo-infra/bootstrap.env"], tmp_path)
    assert env["KUMO_PACKAGE"] == "kumomta-dev" and env["KUMO_OTHER_PACKAGE"] == "kumomta"
    assert env["KUMO_VERSION"] == "2026.03.04-abc"
    assert env["KUMO_REPO_URL"] == "http://mirror.internal/kumo"
    assert env["KUMO_APT_KEY_DIR"] == "kumomta-ubuntu-22"


@pytest.mark.parametrize("os_key, key_dir, repo_file", [
    ("ubuntu20", "kumomta-ubuntu-20", "files/kumomta-ubuntu20.list"),
    ("ubuntu24", "kumomta-ubuntu-22", "files/kumomta-ubuntu22.list"),
    ("debian12", "kumomta-ubuntu-22", "files/kumomta-ubuntu22.list"),
    ("al2023", "", "files/kumomta-amazon2023.repo"),
    ("al2", "", "files/kumomta-amazon.repo"),
    ("alma8", "", "files/kumomta-rocky.repo"),
])
def test_repository_per_os(os_key, key_dir, repo_file, tmp_path):
    d, plan = build("aws", os_key, "block")
    env = source_env(write_files(render_user_data(d, plan))["/etc/kumo-infra/bootstrap.env"], tmp_path)
    assert (env["KUMO_APT_KEY_DIR"], env["KUMO_REPO_FILE"]) == (key_dir, repo_file)


def test_every_node_gets_its_own_hostname():
    d = parse_deployment(deployment(nodes=3))
    plan = plan_for(d)
    names = [yaml.safe_load(render_user_data(d, plan, n))["fqdn"] for n in range(3)]
    assert names == ["mta1.example.com", "mta2.example.com", "mta3.example.com"]
    with pytest.raises(ValueError, match="node 3 does not exist"):
        render_user_data(d, plan, 3)


def run_policy(policy_text: str, tmp_path: Path, scenario: str = "") -> dict:
    policy = tmp_path / "init.lua"
    policy.write_text(policy_text)
    args = [tool("lua5.4"), str(LUA_DIR / "run_policy.lua"), str(policy)] + ([scenario] if scenario else [])
    result = subprocess.run(args, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def calls(result: dict, fn: str) -> list[dict]:
    return [c["args"] for c in result["calls"] if c["fn"] == fn]


def test_policy_is_no_open_relay_and_api_is_loopback_by_default(tmp_path):
    d, _ = build("aws", "rocky9", "block")
    result = run_policy(render_policy(d, "mta.example.com"), tmp_path)
    (smtp,) = calls(result, "start_esmtp_listener")
    assert smtp["listen"] == "0.0.0.0:25" and smtp["hostname"] == "mta.example.com"
    assert smtp["relay_hosts"] == ["127.0.0.1", "::1"]
    (http,) = calls(result, "start_http_listener")
    assert http["listen"] == "127.0.0.1:8000" and http["trusted_hosts"] == ["127.0.0.1", "::1"]
    spools = {s["name"]: s for s in calls(result, "define_spool")}
    assert spools["data"]["path"] == "/var/spool/kumomta/data" and spools["data"]["kind"] == "RocksDB"
    assert spools["meta"]["path"] == "/var/spool/kumomta/meta"
    (logs,) = calls(result, "configure_local_logs")
    assert logs["log_dir"] == "/var/log/kumomta"


def test_policy_relay_and_admin_networks(tmp_path):
    d, _ = build("aws", "rocky9", "block", kumomta={"relay_cidrs": ["10.1.0.0/16"]},
                 network={"admin_cidrs": ["198.51.100.0/24"], "submission_ports": [587]})
    result = run_policy(render_policy(d, "mta.example.com"), tmp_path)
    listeners = calls(result, "start_esmtp_listener")
    assert [x["listen"] for x in listeners] == ["0.0.0.0:25", "0.0.0.0:587"]
    assert all(x["relay_hosts"] == ["127.0.0.1", "::1", "10.1.0.0/16"] for x in listeners)
    (http,) = calls(result, "start_http_listener")
    assert http["listen"] == "0.0.0.0:8000"
    assert http["trusted_hosts"] == ["127.0.0.1", "::1", "198.51.100.0/24"]


@pytest.mark.parametrize("cloud, volume_id, paths", [
    ("aws", "vol-0123456789abcdef0", ["/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol0123456789abcdef0",
                                      "/dev/xvdf", "/dev/sdf"]),
    ("aws", None, ["/dev/xvdf", "/dev/sdf"]),
    ("azure", None, ["/dev/disk/azure/data/by-lun/0", "/dev/disk/azure/scsi1/lun0"]),
    ("gcp", None, ["/dev/disk/by-id/google-kumo-spool"]),
])
def test_block_spool_is_found_by_its_exact_identity(cloud, volume_id, paths, tmp_path):
    os_key = "rocky9"
    d, plan = build(cloud, os_key, "block")
    assert spool_device_paths(cloud, "block", volume_id) == paths
    renderer = render_startup_script if cloud == "gcp" else render_user_data
    rendered = renderer(d, plan, spool_volume_id=volume_id)
    env_text = (write_files(rendered)["/etc/kumo-infra/bootstrap.env"] if cloud != "gcp"
                else _startup_file(rendered, "/etc/kumo-infra/bootstrap.env"))
    env = source_env(env_text, tmp_path)
    assert env["KUMO_SPOOL_DEVICE_PATHS"].split() == paths
    # Never a pattern: each path names exactly one device.
    assert not any(ch in p for p in paths for ch in "*?[")


def test_local_nvme_carries_no_exact_paths():
    assert spool_device_paths("aws", "local_nvme", "vol-0123456789abcdef0") == []


@pytest.mark.parametrize("bad", ["vol-1 x", "vol-1/../x", "vol-$(id)", ""])
def test_spool_volume_id_must_be_an_id(bad):
    if bad == "":
        # An empty id is "unknown yet" (Xen names only), not an error.
        assert spool_device_paths("aws", "block", bad) == ["/dev/xvdf", "/dev/sdf"]
        return
    with pytest.raises(ValueError, match="spool_volume_id"):
        spool_device_paths("aws", "block", bad)


def _startup_file(script: str, path: str) -> str:
    """The content the GCP startup script writes to ``path`` (it carries files base64-encoded)."""
    lines = script.splitlines()
    start = lines.index(f"base64 -d > {path}.kumo-new <<'KUMO_EOF'") + 1
    end = lines.index("KUMO_EOF", start)
    return base64.b64decode("".join(lines[start:end])).decode()

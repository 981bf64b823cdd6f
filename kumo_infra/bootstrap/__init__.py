"""Render the machine bootstrap: cloud-init user-data that installs, tunes and starts KumoMTA.

Pure and cloud-neutral: the clouds only carry the text this returns (AWS
user_data, Azure custom_data, GCP metadata). The work on the machine is done by
one static, shellcheck-clean script (``files/kumo-bootstrap.sh``) reading a
rendered settings file, so what runs can be read and re-run by hand.

No secret is ever rendered here: secrets are fetched on the machine with its
own cloud identity.
"""

from __future__ import annotations

import gzip
import shlex
from dataclasses import dataclass
from pathlib import Path

import yaml

from .. import __version__
from ..config import Deployment
from ..sizing import Plan
from .policy import HTTP_PORT, render_policy
from .tuning import sysctl_wanted

FILES = Path(__file__).resolve().parent / "files"
# AWS refuses user data above 16 KiB; cloud-init reads gzip-compressed user data.
AWS_USER_DATA_LIMIT = 16 * 1024


@dataclass(frozen=True)
class Timeouts:
    """How long the bootstrap waits for the network, the repository and KumoMTA's health."""

    network_s: int = 300
    repository_s: int = 180
    health_s: int = 180


def _file(name: str) -> str:
    return (FILES / name).read_text()


def settings_env(deployment: Deployment, plan: Plan, hostname: str, timeouts: Timeouts) -> str:
    spec = deployment.os_spec
    package = "kumomta" if deployment.kumomta.channel == "stable" else "kumomta-dev"
    other = "kumomta-dev" if package == "kumomta" else "kumomta"
    values = {
        "KUMO_HOSTNAME": hostname,
        "KUMO_CLOUD": deployment.cloud,
        "KUMO_OS": deployment.os,
        "KUMO_PKG_FAMILY": spec.family,
        "KUMO_REPO_URL": deployment.kumomta.repo_url,
        "KUMO_REPO_FILE": spec.repo_file,
        "KUMO_APT_KEY_DIR": spec.apt_key_dir,
        "KUMO_PACKAGE": package,
        "KUMO_OTHER_PACKAGE": other,
        "KUMO_VERSION": deployment.kumomta.version or "",
        "KUMO_SPOOL_STORAGE": plan.spool_storage,
        "KUMO_SPOOL_FS": deployment.spool.filesystem,
        "KUMO_SPOOL_DEVICES": str(max(1, plan.nvme_count) if plan.spool_storage == "local_nvme" else 1),
        "KUMO_LOG_RETENTION_DAYS": str(deployment.logs.retention_days),
        "KUMO_HTTP_PORT": str(HTTP_PORT),
        "KUMO_OUTBOUND_MODE": deployment.outbound_mode,
        "KUMO_PROBE_HOSTS": " ".join(deployment.port25.probe_hosts),
        "KUMO_PROBE_TIMEOUT_S": str(deployment.port25.probe_timeout_s),
        "KUMO_NET_WAIT_S": str(timeouts.network_s),
        "KUMO_REPO_WAIT_S": str(timeouts.repository_s),
        "KUMO_HEALTH_WAIT_S": str(timeouts.health_s),
    }
    lines = [f"# kumo-bootstrap settings for {hostname}, rendered by kumo-infra {__version__}. No secrets."]
    lines += [f"{key}={shlex.quote(value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


class _Literal(str):
    """A string dumped as a YAML block literal, so files stay readable in the user-data."""


def _literal_representer(dumper: yaml.SafeDumper, data: _Literal) -> yaml.Node:
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|")


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(_Literal, _literal_representer)


def _write(path: str, content: str, permissions: str = "0644") -> dict:
    return {"path": path, "owner": "root:root", "permissions": permissions, "content": _Literal(content)}


def render_user_data(deployment: Deployment, plan: Plan, node: int = 0, timeouts: Timeouts = Timeouts()) -> str:
    """The cloud-config for node ``node`` (0-based), exactly as the machine receives it."""
    if not 0 <= node < plan.nodes:
        raise ValueError(f"node {node} does not exist: the plan has {plan.nodes} node(s)")
    hostname = deployment.node_hostname(node, plan.nodes)
    doc = {
        "fqdn": hostname,
        "hostname": hostname.split(".", 1)[0],
        "prefer_fqdn_over_hostname": True,
        "write_files": [
            _write("/etc/kumo-infra/bootstrap.env", settings_env(deployment, plan, hostname, timeouts)),
            _write("/etc/kumo-infra/init.lua", render_policy(deployment, hostname), "0600"),
            _write("/etc/kumo-infra/kumod.env", "KUMOD_LOG=kumod=info\n"),
            _write("/etc/kumo-infra/sysctl.wanted", sysctl_wanted()),
            _write("/usr/local/sbin/kumo-bootstrap", _file("kumo-bootstrap.sh"), "0755"),
            _write("/etc/systemd/system/kumo-spool.service", _file("kumo-spool.service")),
            _write("/etc/systemd/system/kumomta.service.d/10-kumo-infra.conf", _file("kumomta-dropin.conf")),
            _write("/etc/systemd/system/kumo-log-retention.service", _file("kumo-log-retention.service")),
            _write("/etc/systemd/system/kumo-log-retention.timer", _file("kumo-log-retention.timer")),
        ],
        "runcmd": [["/usr/local/sbin/kumo-bootstrap", "all"]],
    }
    header = (f"#cloud-config\n# KumoMTA node {hostname} ({node + 1} of {plan.nodes}), rendered by kumo-infra "
              f"{__version__}.\n# Contains no secrets. Progress: /var/log/kumo-infra-bootstrap.log; "
              "result: /var/lib/kumo-infra/status.json\n")
    return header + yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=1000, allow_unicode=True)


def compressed(user_data: str) -> bytes:
    """Gzip for clouds with a small user-data limit (AWS); cloud-init detects and inflates it."""
    return gzip.compress(user_data.encode(), compresslevel=9, mtime=0)

"""Render the machine bootstrap: cloud-init user-data that installs, tunes and starts KumoMTA.

Pure and target-neutral: the targets only carry the text this returns (AWS
user_data, Azure custom_data, GCP metadata, the ssh target's installer). The work
on the machine is done by one static, shellcheck-clean script
(``files/kumo-bootstrap.sh``) reading a rendered settings file, so what runs can
be read and re-run by hand; what differs between targets reaches it as settings.

No secret is ever rendered here: a cloud's node fetches each secret with its own
identity; the ssh target sends them on the installer's standard input
(``delivered_secrets_payload``), never in a file or on a command line.
"""

from __future__ import annotations

import ast
import base64
import functools
import gzip
import hashlib
import io
import re
import shlex
import tarfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from .. import __version__
from ..config import Deployment
from ..fleet import DRAIN_SUSPENSION_DOMAIN, FLEET_PEERS_PATH, is_fleet
from ..secretspec import SecretSpec, secret_specs, secrets_list
from ..sizing import MIN_DISK_GB, MIN_MEMORY_GIB, Plan
from . import packages
from .policy import HTTP_PORT, render_policy, render_shaping_custom, render_tsa_init
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
    device_s: int = 180  # a cloud may attach the spool volume after the machine starts
    secret_s: int = 600  # a new read grant can take minutes to apply (Azure RBAC)


def refreshes_peers(deployment: Deployment) -> bool:
    """Whether the nodes fetch the fleet's peer list again every few minutes (kumo-fleet-peers.timer):
    a fleet's nodes that fetch their secrets. Where the component delivers them (the ssh target) it
    runs the installer again when the list changes, and there is nothing to fetch."""
    return is_fleet(deployment) and deployment.target.secrets.backend != "delivered"


@functools.cache
def _file(name: str) -> str:
    return (FILES / name).read_text()


def python_for_node(source: str) -> str:
    """A Python script as the node receives it: the same program without comments, docstrings,
    annotations and blank lines, its shebang kept.

    Written back from its syntax tree (ast.unparse) with every docstring (a body's only one
    becomes ``pass``) and every annotation removed: neither changes what the script does (the
    node scripts never read them). tests/test_bootstrap.py proves the trees equal and the result
    readable by Python 3.6 (Rocky and Alma 8's platform python).
    """
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            node.returns = None
            arguments = node.args
            for arg in [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs,
                        *filter(None, (arguments.vararg, arguments.kwarg))]:
                arg.annotation = None
        elif isinstance(node, ast.AnnAssign):
            raise ValueError(f"line {node.lineno}: an annotated assignment; the node scripts use type comments")
    shebang = source.split("\n", 1)[0]
    return (shebang + "\n" if shebang.startswith("#!") else "") + ast.unparse(tree) + "\n"


def lua_without_comments(policy: str) -> str:
    """The policy as the node receives it: its header comment kept, every other comment line
    emptied, no line indented.

    The reasons stay in kumo_infra/bootstrap/policy.py; on AWS every byte of user data counts.
    Lines are emptied, not removed, so kumod's messages name the same line numbers. Only whole
    ``--`` lines and leading blanks go, and nothing at all in a policy holding a long bracket
    (``[[``, ``[=``), whose lines could be inside a long string or comment; tests/test_bootstrap.py
    proves luac5.4 compiles both to the same bytecode.
    """
    if "[[" in policy or "[=" in policy:
        return policy
    lines = policy.splitlines(keepends=True)
    header = 0
    while header < len(lines) and lines[header].startswith("--"):
        header += 1
    body = ["\n" if line.lstrip().startswith("--") and not line.lstrip().startswith("--[") else line.lstrip(" \t")
            for line in lines[header:]]
    return "".join(lines[:header] + body)


def unit_without_comments(unit: str) -> str:
    """A systemd unit as the node receives it: its first line (who wrote it) and no other comment.

    systemd reads '#' and ';' only as whole-line comments; the reasons stay in
    kumo_infra/bootstrap/files, and on AWS every byte of user data counts.
    """
    first, *rest = unit.splitlines(keepends=True)
    return first + "".join(line for line in rest if not line.lstrip().startswith(("#", ";")))


@functools.cache
def bootstrap_script() -> str:
    """kumo-bootstrap as the node receives it: without comment lines, indentation or blank lines.

    AWS takes at most 16 KiB of (gzipped) user data, and comments and indentation are a third
    of the script. Only whole lines lose their leading blanks or go (the script has no heredoc
    or multi-line string); tests/test_bootstrap.py proves that bash reads the same functions
    and values from both.
    """
    shebang, *lines = _file("kumo-bootstrap.sh").splitlines()
    note = f"# kumo-bootstrap (kumo-infra {__version__}) without comments; source: kumo_infra/bootstrap/files\n"
    kept = [stripped for line in lines if (stripped := line.lstrip()) and not stripped.startswith("#")]
    return shebang + "\n" + note + "\n".join(kept) + "\n"


# A device path as the settings carry it (space-separated, read by kumo-bootstrap as words):
# absolute under /dev, no blank, no shell or glob character, no "." or ".." component.
_DEVICE_PATH = re.compile(r"/dev(/[A-Za-z0-9_+:@,=.-]+)+")


def spool_device_paths(deployment: Deployment, spool_storage: str, spool_volume_id: str | None = None) -> list[str]:
    """The exact device paths a block spool may appear as on the deployment's target; empty otherwise.

    The target names them (``Target.spool_device_paths``); each names the one volume the component
    attached (or the disk the operator named), never a pattern that matches every volume: another
    volume (an old spool attached to drain it) must never be taken. Every path is checked here, so
    no target's volume id can steer the bootstrap to another device.
    """
    paths = deployment.target.spool_device_paths(deployment, spool_storage, spool_volume_id or None)
    for path in paths:
        if not _DEVICE_PATH.fullmatch(path) or any(part in (".", "..") for part in path.split("/")):
            raise ValueError(f"spool device path {path!r} (spool_volume_id {spool_volume_id!r}) is not an exact "
                             "device path: /dev/... of letters, digits and _+:@,=.-, without . or .. components")
    return paths


def settings_env(deployment: Deployment, plan: Plan, hostname: str, timeouts: Timeouts,
                 *, spool_volume_id: str | None = None) -> str:
    spec = deployment.os_spec
    package = "kumomta" if deployment.kumomta.channel == "stable" else "kumomta-dev"
    other = "kumomta-dev" if package == "kumomta" else "kumomta"
    values = {
        "KUMO_HOSTNAME": hostname,
        "KUMO_CLOUD": deployment.cloud,
        "KUMO_OS": deployment.os,
        "KUMO_PKG_FAMILY": spec.family,
        "KUMO_REPO_KEY_URL": packages.repo_key_url(deployment),
        "KUMO_REPO_KEY_FINGERPRINT": packages.repo_key_fingerprint(deployment),
        "KUMO_PACKAGE": package,
        "KUMO_OTHER_PACKAGE": other,
        "KUMO_VERSION": deployment.kumomta.version or "",
        "KUMO_SPOOL_STORAGE": plan.spool_storage,
        "KUMO_SPOOL_FS": deployment.spool.filesystem,
        "KUMO_SPOOL_DEVICES": str(max(1, plan.nvme_count) if plan.spool_storage == "local_nvme" else 1),
        "KUMO_SPOOL_DEVICE_PATHS": " ".join(spool_device_paths(deployment, plan.spool_storage, spool_volume_id)),
        # The target's stable names of local NVMe (globs, expanded on the node one by one).
        "KUMO_NVME_DEVICE_GLOBS": " ".join(deployment.target.nvme_device_globs)
                                  if plan.spool_storage == "local_nvme" else "",
        # The machine's own size is checked against KumoMTA's minimums (a failure) and the plan's
        # per-node needs (a warning): kumo-bootstrap's machine step.
        "KUMO_MIN_MEMORY_GIB": f"{MIN_MEMORY_GIB:g}",
        "KUMO_MIN_DISK_GB": str(MIN_DISK_GB),
        "KUMO_PLAN_VCPU": str(plan.vcpu),
        "KUMO_PLAN_MEMORY_GIB": f"{plan.memory_gib:g}",
        "KUMO_PLAN_MBPS_PER_NODE": f"{plan.required_mbps_per_node:g}",
        "KUMO_LOG_RETENTION_DAYS": str(deployment.logs.retention_days),
        "KUMO_HTTP_PORT": str(HTTP_PORT),
        "KUMO_OUTBOUND_MODE": deployment.outbound_mode,
        "KUMO_PROBE_HOSTS": " ".join(deployment.port25.probe_hosts),
        "KUMO_OS_UPDATES": deployment.os_updates.automatic,
        "KUMO_OS_REBOOT": deployment.os_updates.reboot,
        "KUMO_PROBE_TIMEOUT_S": str(deployment.port25.probe_timeout_s),
        "KUMO_NET_WAIT_S": str(timeouts.network_s),
        "KUMO_REPO_WAIT_S": str(timeouts.repository_s),
        "KUMO_HEALTH_WAIT_S": str(timeouts.health_s),
        "KUMO_DEVICE_WAIT_S": str(timeouts.device_s),
        "KUMO_SECRET_WAIT_S": str(timeouts.secret_s),
        # kumo-bootstrap peers (kumo-fleet-peers.timer): the secret it fetches again, empty where
        # nothing is refreshed, and the drain suspension a restart would drop.
        "KUMO_FLEET_PEERS_PATH": FLEET_PEERS_PATH if refreshes_peers(deployment) else "",
        "KUMO_DRAIN_DOMAIN": DRAIN_SUSPENSION_DOMAIN,
    }
    lines = [f"# kumo-bootstrap settings for {hostname} (kumo-infra {__version__}); no secrets"]
    lines += [f"{key}={shlex.quote(value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


class _Literal(str):
    """A string dumped as a YAML block literal, so files stay readable in the user-data."""


def _literal_representer(dumper: yaml.SafeDumper, data: _Literal) -> yaml.Node:
    return dumper.represent_scalar("tag:yaml.org,2002:str", str(data), style="|")


# libyaml's emitter when PyYAML has it (the wheels do): the pure-Python one costs ~80 ms a node.
class _Dumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):  # type: ignore[misc]
    pass


_Dumper.add_representer(_Literal, _literal_representer)


@dataclass(frozen=True)
class NodeFile:
    path: str
    content: str
    permissions: str = "0644"


FETCH_SECRET_PATH = "/usr/local/sbin/kumo-fetch-secret"


def fetch_secret_file(deployment: Deployment) -> NodeFile:
    """kumo-fetch-secret with only the deployment's own secret store."""
    return NodeFile(FETCH_SECRET_PATH, fetch_secret_script(deployment.target.secrets.backend), "0755")


def node_files(deployment: Deployment, plan: Plan, hostname: str, timeouts: Timeouts = Timeouts(),
               *, spool_volume_id: str | None = None) -> list[NodeFile]:
    """Every file the bootstrap puts on a node, whichever way the cloud delivers them.

    In the order that compresses smallest (measured: kumo-fetch-secret first and kumo-bootstrap
    last save ~130 bytes of AWS's 16 KiB user data); nothing depends on it. kumo-fetch-secret only
    for a deployment with secrets (kumo-bootstrap runs it once per secrets.list line): ~2.8 KB of
    AWS's user data, which a deployment without secrets then carries whole, with no secret store.
    """
    files = [
        *([fetch_secret_file(deployment)] if secret_specs(deployment) else []),
        NodeFile("/etc/kumo-infra/bootstrap.env",
                 settings_env(deployment, plan, hostname, timeouts, spool_volume_id=spool_volume_id)),
        NodeFile("/etc/kumo-infra/init.lua", lua_without_comments(render_policy(deployment, hostname)), "0600"),
        NodeFile("/etc/kumo-infra/kumod.env", "KUMOD_LOG=kumod=info\n"),
        NodeFile("/etc/kumo-infra/shaping_custom.toml", render_shaping_custom(deployment)),
        NodeFile("/etc/kumo-infra/tsa_init.lua", lua_without_comments(render_tsa_init(deployment))),
        NodeFile("/etc/kumo-infra/sysctl.wanted", sysctl_wanted(with_reasons=False)),
        NodeFile("/etc/kumo-infra/secrets.list", secrets_list(deployment)),
        NodeFile("/etc/systemd/system/kumo-spool.service", unit_without_comments(_file("kumo-spool.service"))),
        NodeFile("/etc/systemd/system/kumomta.service.d/10-kumo-infra.conf",
                 unit_without_comments(_file("kumomta-dropin.conf"))),
        NodeFile("/etc/systemd/system/kumo-tsa-daemon.service.d/10-kumo-infra.conf",
                 unit_without_comments(_file("kumo-tsa-daemon-dropin.conf"))),
        NodeFile("/etc/systemd/system/kumo-log-retention.service",
                 unit_without_comments(_file("kumo-log-retention.service"))),
        NodeFile("/etc/systemd/system/kumo-log-retention.timer",
                 unit_without_comments(_file("kumo-log-retention.timer"))),
        NodeFile(*packages.repository_definition(deployment)),
        NodeFile(packages.OS_UPDATES_CONF, packages.os_updates_config(deployment)),
    ]
    if refreshes_peers(deployment):
        files += [NodeFile(f"/etc/systemd/system/{unit}", unit_without_comments(_file(unit)))
                  for unit in ("kumo-fleet-peers.service", "kumo-fleet-peers.timer")]
    if deployment.os_spec.family != "apt" and deployment.os_updates.reboot == "window":
        # The maintenance-window reboot of the dnf/yum families (apt: unattended-upgrades' own).
        files += [
            NodeFile("/etc/systemd/system/kumo-os-reboot.timer", packages.reboot_timer(deployment)),
            NodeFile("/etc/systemd/system/kumo-os-reboot.service",
                     unit_without_comments(_file("kumo-os-reboot.service"))),
            NodeFile("/usr/local/sbin/kumo-reboot-if-needed", _file("kumo-reboot-if-needed.sh"), "0755"),
        ]
    return files + [NodeFile("/usr/local/sbin/kumo-bootstrap", bootstrap_script(), "0755")]


# What stays in the user data when the other node files come from the secret store: the files
# that differ per node, and what fetches the rest.
PER_NODE_FILES = ("/etc/kumo-infra/bootstrap.env", "/etc/kumo-infra/init.lua", "/etc/kumo-infra/secrets.list",
                  FETCH_SECRET_PATH)
NODE_FILES_FETCHER = "/usr/local/sbin/kumo-node-files"


@dataclass(frozen=True)
class NodeFilesBundle:
    """The node files every node of a deployment shares, as the secret store keeps them."""

    text: str  # base64 of a deterministic tar.gz: the value stored in the secret
    sha256: str  # of ``text``: the user data pins it, so the store can only deliver exactly this
    paths: tuple[str, ...]


def node_files_bundle(deployment: Deployment, plan: Plan, timeouts: Timeouts = Timeouts()) -> NodeFilesBundle:
    """The shared node files as one archive (AWS, when the user data cannot carry them all).

    Deterministic (sorted, mtime 0, root-owned), so the stored value changes only when a file does.
    """
    hostname = _hostname_for(deployment, plan, 0)
    shared = [f for f in node_files(deployment, plan, hostname, timeouts) if f.path not in PER_NODE_FILES]
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for f in sorted(shared, key=lambda f: f.path):
            data = f.content.encode()
            info = tarfile.TarInfo(f.path.lstrip("/"))
            info.size, info.mode, info.mtime = len(data), int(f.permissions, 8), 0
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            tar.addfile(info, io.BytesIO(data))
    text = base64.b64encode(gzip.compress(raw.getvalue(), compresslevel=9, mtime=0)).decode()
    return NodeFilesBundle(text, hashlib.sha256(text.encode()).hexdigest(), tuple(f.path for f in shared))


_BACKEND_SECTION = re.compile(r"# == backend ([a-z0-9-]+)[: ]")


@functools.cache
def fetch_secret_script(backend: str) -> str:
    """kumo-fetch-secret as a node receives it: only the secret store ``backend`` of its target.

    The source holds one section per store (``# == backend NAME``, up to the next ``# ==`` line),
    each adding its entry to BACKENDS; a node can only ever read its own target's store, and
    each section another target's nodes carried would cost AWS's 16 KiB of user data.
    tests/test_bootstrap.py proves each copy keeps exactly its own backend.
    """
    kept, sections, keep = [], set(), True
    for line in _file("kumo-fetch-secret.py").splitlines(keepends=True):
        if line.startswith("# =="):
            section = _BACKEND_SECTION.match(line)
            keep = section is None or section.group(1) == backend
            if section:
                sections.add(section.group(1))
        if keep:
            kept.append(line)
    if backend not in sections:
        raise ValueError(f"kumo-fetch-secret has no backend {backend!r}; it has {', '.join(sorted(sections))}")
    return python_for_node("".join(kept))


def _hostname_for(deployment: Deployment, plan: Plan, node: int) -> str:
    if not 0 <= node < plan.nodes:
        raise ValueError(f"node {node} does not exist: the plan has {plan.nodes} node(s)")
    return deployment.node_hostname(node, plan.nodes)


def _header(hostname: str, node: int, plan: Plan) -> str:
    return (f"# KumoMTA node {hostname} ({node + 1} of {plan.nodes}), rendered by kumo-infra {__version__}.\n"
            f"# Contains no secrets. Progress: /var/log/kumo-infra-bootstrap.log; "
            "result: /var/lib/kumo-infra/status.json\n")


def render_user_data(deployment: Deployment, plan: Plan, node: int = 0, timeouts: Timeouts = Timeouts(),
                     *, spool_volume_id: str | None = None, node_files_from: tuple[str, str] | None = None) -> str:
    """The cloud-config for node ``node`` (0-based), exactly as the machine receives it (AWS, Azure).

    ``spool_volume_id``: the id of the node's block spool volume on AWS (``vol-...``), known
    once the volume exists; without it an AWS block spool is found only by its Xen names.
    ``node_files_from``: ``(secret reference, sha256)`` of the deployment's ``node_files_bundle``
    in the cloud's secret store; the user data then carries only the per-node files and
    ``kumo-node-files``, which puts the rest in place (checked against the sha256) first.
    """
    hostname = _hostname_for(deployment, plan, node)
    files = node_files(deployment, plan, hostname, timeouts, spool_volume_id=spool_volume_id)
    runcmd = [["/usr/local/sbin/kumo-bootstrap", "all"]]
    if node_files_from is not None:
        reference, sha256 = node_files_from
        files = [f for f in files if f.path in PER_NODE_FILES]
        if not any(f.path == FETCH_SECRET_PATH for f in files):  # kumo-node-files fetches the bundle with it
            files.insert(0, fetch_secret_file(deployment))
        files.append(NodeFile(NODE_FILES_FETCHER, _file("kumo-node-files.sh"), "0755"))
        # As an argument list, never a shell line: the reference and the hash are data.
        runcmd.insert(0, [NODE_FILES_FETCHER, reference, sha256])
    doc = {
        "fqdn": hostname,
        "hostname": hostname.split(".", 1)[0],
        "prefer_fqdn_over_hostname": True,
        # Azure's datasource turns SSH password login on for a VM created with a password (the
        # generated admin password of a VM without SSH); user-data config overrides the
        # datasource's, so password login stays off on every cloud (the ssh step checks it too).
        "ssh_pwauth": False,
        "write_files": [
            {"path": f.path, "owner": "root:root", "permissions": f.permissions, "content": _Literal(f.content)}
            for f in files
        ],
        "runcmd": runcmd,
    }
    return ("#cloud-config\n" + _header(hostname, node, plan)
            + yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=1000, allow_unicode=True))


def render_startup_script(deployment: Deployment, plan: Plan, node: int = 0, timeouts: Timeouts = Timeouts(),
                          *, spool_volume_id: str | None = None) -> str:
    """The same bootstrap as a shell script, for GCP's startup-script.

    GCP runs it at every boot on every image, with or without cloud-init (its Rocky
    and Alma images have none); kumo-bootstrap is idempotent, so every boot ends healthy.
    """
    hostname = _hostname_for(deployment, plan, node)
    lines = ["#!/bin/bash", _header(hostname, node, plan).rstrip("\n"), "set -euo pipefail",
             "umask 022", f"hostnamectl set-hostname {shlex.quote(hostname)}"]
    for f in node_files(deployment, plan, hostname, timeouts, spool_volume_id=spool_volume_id):
        lines += [f"install -d -m 0755 {shlex.quote(str(Path(f.path).parent))}",
                  f"base64 -d > {shlex.quote(f.path)}.kumo-new <<'KUMO_EOF'",
                  *base64.encodebytes(f.content.encode()).decode().splitlines(), "KUMO_EOF",
                  f"chmod {f.permissions} {shlex.quote(f.path)}.kumo-new",
                  f"mv -f {shlex.quote(f.path)}.kumo-new {shlex.quote(f.path)}"]
    lines.append("exec /usr/local/sbin/kumo-bootstrap all")
    return "\n".join(lines) + "\n"


# -- machines that already exist (the ssh target): the installer run over SSH ----------------

# Where the installer lands: relative to the SSH user's home, where pulumi-command's CopyToRemote
# (SFTP) creates it and where sshd starts the command.
INSTALLER_REMOTE_PATH = "kumo-infra/install.sh"
# The one command run over SSH, the same for every deployment: no value of the config is ever
# in it (values travel in the installer's file and on its standard input). As root, or through
# sudo without a password prompt (-n: fail at once rather than wait for one); either way the
# standard input, the secrets, reaches the installer.
INSTALL_COMMAND = (f'if [ "$(id -u)" -eq 0 ]; then exec bash {INSTALLER_REMOTE_PATH}; '
                   f"else exec sudo -n bash {INSTALLER_REMOTE_PATH}; fi")
# Where the installer stages the secrets it reads (tmpfs, root only): kumo-fetch-secret's
# delivered backend reads them there, kumo-bootstrap's secrets step removes them.
DELIVERED_DIR = "/run/kumo-infra/delivered"
# The first line of the secrets' framing on standard input; the node refuses any other.
DELIVERED_SECRETS_HEADER = "kumo-infra delivered-secrets 1"
_DELIVERED_KEY = re.compile(r"[a-z0-9][a-z0-9-]{0,127}")


def delivered_secrets_payload(pairs: list[tuple[SecretSpec | str, str | bytes]]) -> str:
    """The secrets as the installer reads them from standard input.

    ``pairs``: (the secret's spec or key, its value). One header line, one ``KEY BASE64`` line per
    secret and ``end COUNT``: base64 carries any byte (newlines, quotes, NUL) as letters, and the
    count proves on the node that nothing was cut short. Never logged: the caller keeps it a
    Pulumi secret.
    """
    lines, seen = [DELIVERED_SECRETS_HEADER], set()
    for spec, value in pairs:
        key = spec if isinstance(spec, str) else spec.key
        if not _DELIVERED_KEY.fullmatch(key):
            raise ValueError(f"secret key {key!r} is not 1-128 lowercase letters, digits and hyphens")
        if key in seen:
            raise ValueError(f"secret {key} is given twice")
        seen.add(key)
        data = value.encode() if isinstance(value, str) else bytes(value)
        lines.append(f"{key} {base64.b64encode(data).decode()}")
    lines.append(f"end {len(seen)}")
    return "\n".join(lines) + "\n"


def render_ssh_installer(deployment: Deployment, plan: Plan, node: int = 0, timeouts: Timeouts = Timeouts(),
                         *, spool_volume_id: str | None = None) -> str:
    """kumo-infra/install.sh for node ``node`` of the ssh target: one self-contained bash script.

    Run as root by INSTALL_COMMAND with ``delivered_secrets_payload`` on its standard input, it
    stages the secrets first (files/kumo-ssh-install.sh), writes every node file (a file already
    as rendered is left alone), names the machine and runs ``kumo-bootstrap all``, whose last
    output line is the result (``KUMO-BOOTSTRAP OK host=... changed=...``). Holds no secret.
    ``spool_volume_id``: the host's spool disk (ssh.hosts[].spool_device), for a block spool.
    """
    hostname = _hostname_for(deployment, plan, node)
    library = _file("kumo-ssh-install.sh").split("\n", 1)[1]
    lines = ["#!/bin/bash", _header(hostname, node, plan).rstrip("\n"),
             f"# Run by kumo-infra over SSH, the secrets on standard input: {INSTALL_COMMAND}",
             "set -euo pipefail", library.rstrip("\n"), "",
             f"begin_install {shlex.quote(hostname)} {DELIVERED_DIR}"]
    for f in node_files(deployment, plan, hostname, timeouts, spool_volume_id=spool_volume_id):
        lines += [f"put_file {shlex.quote(f.path)} {f.permissions} <<'KUMO_EOF'",
                  *base64.encodebytes(f.content.encode()).decode().splitlines(), "KUMO_EOF"]
    lines.append(f"finish_install {shlex.quote(hostname)}")
    return "\n".join(lines) + "\n"


def compressed(user_data: str) -> bytes:
    """Gzip for clouds with a small user-data limit (AWS); cloud-init detects and inflates it."""
    # Level 6: within 0.2% of level 9 in size, at less than half the time per node.
    return gzip.compress(user_data.encode(), compresslevel=6, mtime=0)

"""The bootstrap renderer: every OS x cloud x spool mode, checked by the real tools.

cloud-init's own schema validator, shellcheck and a Lua 5.4 parser/interpreter
(Debian packages installed by scripts/test) judge what is rendered.
"""

from __future__ import annotations

import ast
import base64
import gzip
import io
import json
import re
import shlex
import shutil
import subprocess
import tokenize
from pathlib import Path

import pytest
import yaml

from kumo_infra import oses
from kumo_infra.bootstrap import (
    AWS_USER_DATA_LIMIT,
    FILES,
    bootstrap_script,
    compressed,
    fetch_secret_script,
    lua_without_comments,
    node_files,
    node_files_bundle,
    python_for_node,
    render_startup_script,
    render_user_data,
    spool_device_paths,
)
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
        raw["gcp"] = {"project": "kumo-test-project"}
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
    assert files["/usr/local/sbin/kumo-bootstrap"] == bootstrap_script()

    env = source_env(files["/etc/kumo-infra/bootstrap.env"], tmp_path)
    spec = oses.SUPPORTED[os_key]
    assert env["KUMO_PKG_FAMILY"] == spec.family
    assert env["KUMO_REPO_KEY_URL"] == f"https://openrepo.kumomta.com/{spec.repo_dir}/public.gpg"
    assert env["KUMO_SPOOL_STORAGE"] == storage and env["KUMO_CLOUD"] == cloud
    assert env["KUMO_PACKAGE"] == "kumomta" and env["KUMO_OTHER_PACKAGE"] == "kumomta-dev"
    if storage == "local_nvme":
        assert int(env["KUMO_SPOOL_DEVICES"]) == max(1, plan.nvme_count)

    policy = tmp_path / "init.lua"
    policy.write_text(files["/etc/kumo-infra/init.lua"])
    subprocess.run([tool("luac5.4"), "-p", str(policy)], check=True)

    # AWS takes at most 16 KiB of user data; the AWS component sends it gzipped, and when the
    # node's files do not all fit (they no longer do since shaping, TSA and the fleet's files,
    # issue 12), the shared ones from Secrets Manager (node_files_bundle): the per-node part must
    # fit, kept 1 KiB below: the policy grows with each DKIM domain (Azure and GCP take far more).
    if cloud == "aws":
        bundle = node_files_bundle(d, plan)
        per_node = render_user_data(d, plan, node_files_from=("aws-sm:arn:aws:secretsmanager:x", bundle.sha256))
        assert min(len(compressed(user_data)), len(compressed(per_node))) < AWS_USER_DATA_LIMIT - 1024
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


def _bash_definitions(script: Path) -> str:
    """Every function and variable bash defines from ``script`` (sourced: main does not run)."""
    out = subprocess.run(["bash", "-c", f'. "{script}"; declare -f; declare -p | grep -v -E "^declare -[^ ]* (BASH|_=)"'],
                         capture_output=True, text=True, check=True, env={"PATH": "/usr/bin:/bin"})
    return out.stdout


def test_delivered_script_is_the_source_without_comments(tmp_path):
    delivered = tmp_path / "kumo-bootstrap"
    delivered.write_text(bootstrap_script())
    assert "\n#" not in bootstrap_script().split("\n", 3)[3]  # no comment line left after the note
    assert _bash_definitions(delivered) == _bash_definitions(FILES / "kumo-bootstrap.sh")
    assert len(bootstrap_script()) < 0.8 * len((FILES / "kumo-bootstrap.sh").read_text())


def _without_docstrings_and_annotations(tree: ast.AST) -> str:
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body
                and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
        if isinstance(node, ast.FunctionDef):
            node.returns = None
        if isinstance(node, ast.arg):
            node.annotation = None
    return ast.dump(tree)


@pytest.mark.parametrize("source", [
    (FILES / "kumo-fetch-secret.py").read_text(),
    # Comment-like and blank lines inside a string stay; a body's only docstring becomes pass.
    '#!/usr/bin/env python3\n"""Doc."""\n\nX = """a\n# not a comment\n\nb"""  # trailing\n'
    'def f(a: int, *r: str, k: "x" = 1, **kw: dict) -> None:\n    """Only statement."""\n\n\n'
    'class C:\n    """Only statement."""\n\n\ndef g():\n    """Doc."""\n    # note\n    return X\n',
])
def test_delivered_python_has_the_same_syntax_tree(source):
    delivered = python_for_node(source)
    assert delivered.startswith("#!/usr/bin/env python3\n")
    assert _without_docstrings_and_annotations(ast.parse(source)) == ast.dump(ast.parse(delivered))
    comments = [t.string for t in tokenize.generate_tokens(io.StringIO(delivered).readline)
                if t.type == tokenize.COMMENT]
    assert comments == ["#!/usr/bin/env python3"]  # a "#" inside a string stays; no comment does
    assert len(delivered) < len(source)


def test_delivered_python_refuses_what_it_cannot_strip_safely():
    # An annotated assignment would need its value kept and its annotation dropped: the node
    # scripts use type comments instead, and the renderer refuses rather than guess.
    with pytest.raises(ValueError, match="annotated assignment"):
        python_for_node("X: int = 1\n")


BACKEND_REFERENCES = {"aws": "aws:eu-west-1:kumo-infra/kumo/relay-password",
                      "azure": "azure:https://kumo-abc123.vault.azure.net:relay-password",
                      "gcp": "gcp:my-proj:kumo-relay-password", "delivered": "delivered:relay-password"}


def _delivered_fetcher(backend: str, tmp_path: Path):
    import importlib.util
    script = tmp_path / f"kumo-fetch-secret-{backend}.py"
    script.write_text(fetch_secret_script(backend))
    spec = importlib.util.spec_from_file_location(f"fetch_{backend}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("backend", sorted(BACKEND_REFERENCES))
def test_a_node_gets_only_its_targets_secret_store(backend, tmp_path):
    delivered = fetch_secret_script(backend)
    ast.parse(delivered, feature_version=(3, 6))  # Rocky/Alma 8's platform python
    # Python 3.6 refuses a backslash inside an f-string's expressions, which its parse above
    # does not look into: what ast.unparse wrote must have none.
    for token in tokenize.generate_tokens(io.StringIO(delivered).readline):
        if token.type == tokenize.STRING and re.match(r"[rRbB]*[fF]", token.string):
            assert not any("\\" in part for part in re.findall(r"\{([^{}]*)\}", token.string)), token.string
    module = _delivered_fetcher(backend, tmp_path)
    assert set(module.BACKENDS) == {backend}
    others = set(BACKEND_REFERENCES) - {backend}
    for other in others:
        with pytest.raises(ValueError, match=f"unknown secret store '{other}' \\(known: {backend}\\)"):
            module.fetch(BACKEND_REFERENCES[other])
    # Every store's code but its own is gone, not only its table entry.
    names = {n.name for n in ast.walk(ast.parse(delivered)) if isinstance(n, ast.FunctionDef)}
    assert {f"_{other}" for other in others}.isdisjoint(names) and f"_{backend}" in names


def test_every_targets_secret_backend_is_in_the_fetcher():
    from kumo_infra import targets
    for target in targets.registry().values():
        fetch_secret_script(target.secrets.backend)  # raises for a backend without its section
    with pytest.raises(ValueError, match="no backend 'oracle'"):
        fetch_secret_script("oracle")


FETCH_SECRET = "/usr/local/sbin/kumo-fetch-secret"
# Each way a deployment comes to have secrets (secretspec.secret_specs).
WITH_SECRETS = {"relay": {"port25": {"outbound": "relay", **RELAY}}, "dkim": {"dkim": {"domains": ["example.com"]}},
                "api": {"network": {"api_cidrs": ["198.51.100.0/24"]}}, "fleet": {"nodes": 2}}


def _node_files_of(raw: dict) -> dict[str, str]:
    d = parse_deployment(raw)
    return {f.path: f.content for f in node_files(d, plan_for(d), "mta.example.com")}


def test_a_deployment_without_secrets_carries_no_secret_fetcher():
    # Nothing to fetch: the fetcher (~2.8 KB of AWS's 16 KiB user data) stays off the node.
    files = _node_files_of(deployment())
    assert FETCH_SECRET not in files
    assert "/usr/local/sbin/kumo-bootstrap" in files  # the node files themselves are there


@pytest.mark.parametrize("extra", list(WITH_SECRETS.values()), ids=list(WITH_SECRETS))
def test_a_deployment_with_secrets_carries_the_fetcher_of_its_own_store(extra):
    assert _node_files_of(deployment(**extra))[FETCH_SECRET] == fetch_secret_script("aws")


@pytest.mark.parametrize("extra", [{}, *WITH_SECRETS.values()], ids=["no-secrets", *WITH_SECRETS])
def test_node_files_from_the_store_always_come_with_the_fetcher(extra):
    """kumo-node-files fetches the bundle with kumo-fetch-secret: the user data carries it once,
    even for a deployment that has no secret of its own."""
    d = parse_deployment(deployment(**extra))
    plan = plan_for(d)
    bundle = node_files_bundle(d, plan)
    user_data = render_user_data(d, plan, node_files_from=("aws:us-east-1:kumo-infra/kumo-test/node-files",
                                                           bundle.sha256))
    paths = [f["path"] for f in yaml.safe_load(user_data)["write_files"]]
    assert paths.count(FETCH_SECRET) == 1
    assert write_files(user_data)[FETCH_SECRET] == fetch_secret_script("aws")
    assert FETCH_SECRET not in bundle.paths  # per node, never in the bundle it fetches


def _bytecode(lua: str, tmp_path: Path, name: str) -> bytes:
    source, out = tmp_path / f"{name}.lua", tmp_path / f"{name}.luac"
    source.write_text(lua)
    subprocess.run([tool("luac5.4"), "-s", "-o", str(out), str(source)], check=True)  # -s: no line numbers
    return out.read_bytes()


@pytest.mark.parametrize("stack", ["aws-prod", "aws-dev", "azure-dev", "gcp-dev"])
def test_delivered_policy_compiles_to_the_same_bytecode(stack, tmp_path):
    from kumo_infra.stackconfig import load_file, stack_path
    sc = load_file(stack_path(stack), stack)
    policy = render_policy(sc.deployment, "mta.example.com")
    delivered = lua_without_comments(policy)
    assert _bytecode(delivered, tmp_path, "delivered") == _bytecode(policy, tmp_path, "rendered")
    assert delivered.startswith(policy.split("\n", 1)[0])  # the header stays
    assert len(delivered) < len(policy)
    # Lines are emptied, not removed: kumod's line numbers stay those of the rendered policy.
    assert delivered.count("\n") == policy.count("\n")
    # A policy with a long string or comment, which a line could be inside, is left whole.
    tricky = "-- head\nlocal s = [[\n-- kept\n]]\n  -- dropped\nreturn s\n"
    assert lua_without_comments(tricky) == tricky
    assert lua_without_comments("-- head\nlocal s = 1\n  -- dropped\nreturn s\n") == "-- head\nlocal s = 1\n\nreturn s\n"


def test_delivered_sysctl_settings_are_the_same_settings(tmp_path):
    from kumo_infra.bootstrap.tuning import sysctl_wanted
    settings = lambda text: [line for line in text.splitlines() if line and not line.startswith("#")]
    assert settings(sysctl_wanted(with_reasons=False)) == settings(sysctl_wanted())
    d, plan = build("aws", "rocky9", "block")
    assert _node_file(d, plan, "/etc/kumo-infra/sysctl.wanted") == sysctl_wanted(with_reasons=False)


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
    assert env["KUMO_REPO_KEY_URL"] == "http://mirror.internal/kumo/kumomta-ubuntu-22/public.gpg"
    assert env["KUMO_REPO_KEY_FINGERPRINT"] == "A" * 40
    # The dev channel's own repository directory, never the stable one.
    assert write_files(render_user_data(d, plan))["/etc/kumo-infra/kumomta.list"].splitlines()[-1] == (
        "deb [signed-by=/usr/share/keyrings/kumomta.gpg] http://mirror.internal/kumo/kumomta-ubuntu-22/ stable main")


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
    # The API is reached from outside only over TLS on 8443 with authentication: no address is
    # trusted beyond loopback (tests/test_policy.py covers the authentication).
    local, api = calls(result, "start_http_listener")
    assert local == {"listen": "127.0.0.1:8000", "trusted_hosts": ["127.0.0.1", "::1"]}
    assert api["listen"] == "0.0.0.0:8443" and api["use_tls"] is True
    assert api["trusted_hosts"] == ["127.0.0.1", "::1"]


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
    assert spool_device_paths(d, "block", volume_id) == paths
    renderer = render_startup_script if cloud == "gcp" else render_user_data
    rendered = renderer(d, plan, spool_volume_id=volume_id)
    env_text = (write_files(rendered)["/etc/kumo-infra/bootstrap.env"] if cloud != "gcp"
                else _startup_file(rendered, "/etc/kumo-infra/bootstrap.env"))
    env = source_env(env_text, tmp_path)
    assert env["KUMO_SPOOL_DEVICE_PATHS"].split() == paths
    # Never a pattern: each path names exactly one device.
    assert not any(ch in p for p in paths for ch in "*?[")


def test_local_nvme_carries_no_exact_paths():
    d, _ = build("aws", "rocky9", "local_nvme")
    assert spool_device_paths(d, "local_nvme", "vol-0123456789abcdef0") == []


@pytest.mark.parametrize("bad", ["vol-1 x", "vol-1/../x", "vol-$(id)", "vol-1/./x", "vol-*", ""])
def test_spool_volume_id_must_be_an_id(bad):
    d, _ = build("aws", "rocky9", "block")
    if bad == "":
        # An empty id is "unknown yet" (Xen names only), not an error.
        assert spool_device_paths(d, "block", bad) == ["/dev/xvdf", "/dev/sdf"]
        return
    with pytest.raises(ValueError, match="spool_volume_id"):
        spool_device_paths(d, "block", bad)


def _startup_file(script: str, path: str) -> str:
    """The content the GCP startup script writes to ``path`` (it carries files base64-encoded)."""
    lines = script.splitlines()
    start = lines.index(f"base64 -d > {path}.kumo-new <<'KUMO_EOF'") + 1
    end = lines.index("KUMO_EOF", start)
    return base64.b64decode("".join(lines[start:end])).decode()


# -- supply chain: the repository definition is kumo-infra's, the key pinned ------------------

def _node_file(d, plan, path: str) -> str | None:
    return write_files(render_user_data(d, plan)).get(path)


@pytest.mark.parametrize("os_key, channel, line", [
    ("ubuntu22", "stable", "deb [signed-by=/usr/share/keyrings/kumomta.gpg] "
                           "https://openrepo.kumomta.com/kumomta-ubuntu-22-stable/ stable main"),
    ("debian12", "dev", "deb [signed-by=/usr/share/keyrings/kumomta.gpg] "
                        "https://openrepo.kumomta.com/kumomta-ubuntu-22/ stable main"),
    ("ubuntu20", "stable", "deb [signed-by=/usr/share/keyrings/kumomta.gpg] "
                           "https://openrepo.kumomta.com/kumomta-ubuntu-20-stable/ stable main"),
])
def test_apt_repository_is_rendered_signed_by_the_checked_key(os_key, channel, line):
    d, plan = build("aws", os_key, "block", kumomta={"channel": channel})
    listing = _node_file(d, plan, "/etc/kumo-infra/kumomta.list")
    assert [x for x in listing.splitlines() if not x.startswith("#")] == [line]
    assert _node_file(d, plan, "/etc/kumo-infra/kumomta.repo") is None


@pytest.mark.parametrize("os_key, channel, baseurl", [
    ("rocky9", "stable", "https://openrepo.kumomta.com/kumomta-rockylinux-9-stable"),
    ("alma8", "dev", "https://openrepo.kumomta.com/kumomta-rockylinux-8"),
    ("al2023", "stable", "https://openrepo.kumomta.com/kumomta-amazonlinux-2023-stable"),
    ("al2", "stable", "https://openrepo.kumomta.com/kumomta-amazonlinux-2-stable"),
])
def test_rpm_repository_checks_packages_and_metadata_with_the_checked_key(os_key, channel, baseurl):
    import configparser
    d, plan = build("aws", os_key, "block", kumomta={"channel": channel})
    repo = configparser.ConfigParser(interpolation=None)
    repo.read_string(_node_file(d, plan, "/etc/kumo-infra/kumomta.repo"))
    (section,) = repo.sections()
    assert section == f"kumomta-{channel}"
    assert dict(repo[section]) == {"name": f"KumoMTA {channel}", "baseurl": baseurl, "enabled": "1",
                                   "gpgcheck": "1", "repo_gpgcheck": "1",
                                   "gpgkey": "file:///etc/pki/rpm-gpg/RPM-GPG-KEY-kumomta"}


def test_no_fingerprint_is_invented_for_kumomtas_key(tmp_path):
    # KumoMTA publishes none (see kumo_infra/bootstrap/packages.py): the node gets an empty one
    # and trusts the https key on first use, then pins it (tests/test_bootstrap_script.py).
    from kumo_infra.bootstrap import packages
    assert packages.KUMOMTA_SIGNING_KEY_FINGERPRINT is None
    d, plan = build("aws", "rocky9", "block")
    assert source_env(_node_file(d, plan, "/etc/kumo-infra/bootstrap.env"), tmp_path)["KUMO_REPO_KEY_FINGERPRINT"] == ""
    d, plan = build("aws", "rocky9", "block", kumomta={"repo_key_fingerprint": ("ab12 " * 10).strip()})
    env = source_env(_node_file(d, plan, "/etc/kumo-infra/bootstrap.env"), tmp_path)
    assert env["KUMO_REPO_KEY_FINGERPRINT"] == "AB12" * 10


# -- OS updates: each family's tool, configured from deployment.os_updates ---------------------

def _apt_config(text: str, tmp_path: Path) -> dict[str, list[str]]:
    """The configuration apt itself reads from ``text`` (apt-config dump), key -> values."""
    conf = tmp_path / "52kumo-infra-os-updates"
    conf.write_text(text)
    dump = subprocess.run([tool("apt-config"), "-c", str(conf), "dump"], capture_output=True, text=True, check=True)
    values: dict[str, list[str]] = {}
    for line in dump.stdout.splitlines():
        key, _, value = line.partition(" ")
        # A list item's key ends in "::" (Key:: "item";).
        values.setdefault(key, []).append(value.rstrip(";").strip('"'))
    return values


@pytest.mark.parametrize("os_key, automatic, patterns", [
    ("debian12", "security", ["origin=Debian,codename=${distro_codename}-security,label=Debian-Security",
                              "origin=Debian,codename=${distro_codename},label=Debian-Security"]),
    ("debian12", "all", ["origin=Debian,codename=${distro_codename}-security,label=Debian-Security",
                         "origin=Debian,codename=${distro_codename},label=Debian-Security",
                         "origin=Debian,codename=${distro_codename},label=Debian",
                         "origin=Debian,codename=${distro_codename}-updates,label=Debian"]),
    ("ubuntu22", "security", ["origin=Ubuntu,archive=${distro_codename}-security",
                              "origin=UbuntuESMApps,archive=${distro_codename}-apps-security",
                              "origin=UbuntuESM,archive=${distro_codename}-infra-security"]),
    ("ubuntu24", "off", []),
])
def test_unattended_upgrades_config(os_key, automatic, patterns, tmp_path):
    d, plan = build("aws", os_key, "block", os_updates={"automatic": automatic})
    apt = _apt_config(_node_file(d, plan, "/etc/kumo-infra/os-updates.conf"), tmp_path)
    assert apt["APT::Periodic::Unattended-Upgrade"] == ["0" if automatic == "off" else "1"]
    assert apt["APT::Periodic::Update-Package-Lists"] == ["1"]
    assert apt.get("Unattended-Upgrade::Origins-Pattern::", []) == patterns
    assert apt["Unattended-Upgrade::Package-Blacklist::"] == ["kumomta$", "kumomta-dev$"]
    assert apt["Unattended-Upgrade::Automatic-Reboot"] == ["false"]
    assert "Unattended-Upgrade::Automatic-Reboot-Time" not in apt
    text = _node_file(d, plan, "/etc/kumo-infra/os-updates.conf")
    # Set after the package's own lists are cleared, so only these origins count.
    assert text.index("#clear Unattended-Upgrade::Origins-Pattern;") < text.index("Unattended-Upgrade::Origins-Pattern {")
    assert "#clear Unattended-Upgrade::Allowed-Origins;" in text


def test_unattended_upgrades_reboot_window(tmp_path):
    d, plan = build("aws", "debian12", "block", os_updates={"reboot": "window", "reboot_time": "04:15"})
    apt = _apt_config(_node_file(d, plan, "/etc/kumo-infra/os-updates.conf"), tmp_path)
    assert apt["Unattended-Upgrade::Automatic-Reboot"] == ["true"]
    assert apt["Unattended-Upgrade::Automatic-Reboot-Time"] == ["04:15"]
    # apt's own mechanism: no kumo-os-reboot timer on this family.
    assert _node_file(d, plan, "/etc/systemd/system/kumo-os-reboot.timer") is None


@pytest.mark.parametrize("os_key, automatic, section, key, value, exclude", [
    ("rocky9", "security", "commands", "upgrade_type", "security", "excludepkgs"),
    ("alma8", "all", "commands", "upgrade_type", "default", "excludepkgs"),
    ("al2023", "security", "commands", "upgrade_type", "security", "excludepkgs"),
    ("al2", "security", "commands", "update_cmd", "security", "exclude"),
    ("al2", "all", "commands", "update_cmd", "default", "exclude"),
])
def test_dnf_automatic_and_yum_cron_config(os_key, automatic, section, key, value, exclude):
    import configparser
    d, plan = build("aws", os_key, "block", os_updates={"automatic": automatic})
    conf = configparser.ConfigParser(interpolation=None)
    conf.read_string(_node_file(d, plan, "/etc/kumo-infra/os-updates.conf"))
    assert conf[section][key] == value
    assert conf["commands"]["apply_updates"] == "yes" and conf["commands"]["download_updates"] == "yes"
    assert conf["base"][exclude].split() == ["kumomta", "kumomta-dev"]
    assert "reboot" not in conf["commands"]  # not every dnf knows it: the window is kumo-os-reboot.timer


@pytest.mark.parametrize("os_key", ["rocky8", "al2"])
def test_rpm_families_reboot_in_the_window_by_timer(os_key, tmp_path):
    d, plan = build("aws", os_key, "block", os_updates={"reboot": "window", "reboot_time": "22:05"})
    timer = _node_file(d, plan, "/etc/systemd/system/kumo-os-reboot.timer")
    on_calendar = next(line.split("=", 1)[1] for line in timer.splitlines() if line.startswith("OnCalendar="))
    assert on_calendar == "*-*-* 22:05:00"
    normalized = subprocess.run([tool("systemd-analyze"), "calendar", on_calendar], capture_output=True, text=True)
    assert normalized.returncode == 0 and "Normalized form: *-*-* 22:05:00" in normalized.stdout
    assert "Persistent=false" in timer.splitlines()  # a missed window never reboots at boot
    assert "ExecStart=/usr/local/sbin/kumo-reboot-if-needed" in _node_file(
        d, plan, "/etc/systemd/system/kumo-os-reboot.service")
    helper = tmp_path / "kumo-reboot-if-needed"
    helper.write_text(_node_file(d, plan, "/usr/local/sbin/kumo-reboot-if-needed"))
    check = subprocess.run([tool("shellcheck"), "--severity=style", str(helper)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout
    # Without the window, nothing reboots the machine.
    d, plan = build("aws", os_key, "block")
    assert _node_file(d, plan, "/etc/systemd/system/kumo-os-reboot.timer") is None


@pytest.mark.parametrize("needs_restarting_rc, rebooted", [(1, True), (0, False), (2, False)])
def test_reboot_helper_reboots_only_when_an_update_needs_it(needs_restarting_rc, rebooted, tmp_path):
    tools = tmp_path / "bin"
    tools.mkdir()
    for name, body in {"dnf": f"exit {needs_restarting_rc}", "systemctl": f'echo "$*" >{tmp_path}/reboot',
                       "logger": "true"}.items():
        (tools / name).write_text(f"#!/bin/sh\n{body}\n")
        (tools / name).chmod(0o755)
    subprocess.run(["sh", str(FILES / "kumo-reboot-if-needed.sh")], env={"PATH": f"{tools}:/usr/bin:/bin"}, check=True)
    assert ((tmp_path / "reboot").exists() and (tmp_path / "reboot").read_text().strip() == "reboot") is rebooted


def test_kumod_never_starts_without_the_spool_kumo_infra_accepted():
    # Parsed as systemd reads a unit file (configparser's INI subset suffices for this one).
    import configparser
    from kumo_infra.bootstrap import FILES
    unit = configparser.ConfigParser(strict=False)
    unit.read_string((FILES / "kumomta-dropin.conf").read_text())
    assert unit["Unit"]["RequiresMountsFor"] == "/var/spool/kumomta"
    assert unit["Unit"]["Requires"] == "kumo-spool.service"
    assert unit["Unit"]["After"] == "kumo-spool.service"


# -- issue 9: target facts reach the node through its settings ---------------------------------

@pytest.mark.parametrize("cloud", ["aws", "azure", "gcp"])
@pytest.mark.parametrize("storage", ["block", "local_nvme"])
def test_settings_carry_the_targets_device_facts(cloud, storage, tmp_path):
    from kumo_infra import targets
    d, plan = build(cloud, "ubuntu22", storage)
    target = targets.get(cloud)
    env = source_env(write_files(render_user_data(d, plan))["/etc/kumo-infra/bootstrap.env"], tmp_path)
    assert env["KUMO_SPOOL_DEVICE_PATHS"].split() == target.spool_device_paths(d, storage, None)
    expected_globs = list(target.nvme_device_globs) if storage == "local_nvme" else []
    assert env["KUMO_NVME_DEVICE_GLOBS"].split() == expected_globs
    assert not (storage == "local_nvme" and not expected_globs)  # every cloud names its NVMe


def test_every_targets_nvme_names_are_single_words():
    # The settings carry them separated by spaces, and the node reads them as words.
    from kumo_infra import targets
    for target in targets.registry().values():
        assert all(glob.startswith("/dev/") and not re.search(r"\s", glob) for glob in target.nvme_device_globs)


def test_settings_carry_the_minimums_and_the_plans_needs_per_node(tmp_path):
    from kumo_infra.sizing import MIN_DISK_GB, MIN_MEMORY_GIB
    d, plan = build("aws", "debian12", "block")
    env = source_env(write_files(render_user_data(d, plan))["/etc/kumo-infra/bootstrap.env"], tmp_path)
    assert float(env["KUMO_MIN_MEMORY_GIB"]) == MIN_MEMORY_GIB and int(env["KUMO_MIN_DISK_GB"]) == MIN_DISK_GB
    assert int(env["KUMO_PLAN_VCPU"]) == plan.vcpu
    assert float(env["KUMO_PLAN_MEMORY_GIB"]) == plan.memory_gib
    assert float(env["KUMO_PLAN_MBPS_PER_NODE"]) == pytest.approx(plan.required_mbps_per_node, rel=1e-5)


@pytest.mark.parametrize("name", ["kumo-spool.service", "kumomta-dropin.conf", "kumo-log-retention.service",
                                  "kumo-log-retention.timer", "kumo-os-reboot.service"])
def test_delivered_units_are_the_same_units_without_comments(name):
    import configparser

    from kumo_infra.bootstrap import unit_without_comments

    def parsed(text: str) -> dict:
        unit = configparser.ConfigParser(strict=False, interpolation=None, comment_prefixes=("#", ";"))
        unit.optionxform = str  # systemd keys are case-sensitive
        unit.read_string(text)
        return {section: dict(unit[section]) for section in unit.sections()}

    source = (FILES / name).read_text()
    delivered = unit_without_comments(source)
    assert parsed(delivered) == parsed(source) and parsed(source)
    assert delivered.splitlines()[0] == source.splitlines()[0]  # who wrote it
    assert not any(line.startswith(("#", ";")) for line in delivered.splitlines()[1:])


# -- issue 9: the ssh target's installer and its secrets payload -------------------------------

def test_delivered_secrets_payload_frames_each_secret_as_base64():
    from kumo_infra.bootstrap import delivered_secrets_payload
    from kumo_infra.secretspec import SecretSpec
    spec = SecretSpec("relay-password", "/opt/kumomta/etc/secrets/relay-password", "relay")
    payload = delivered_secrets_payload([(spec, "a\nb\0c"), ("dkim-example-com-s1", b"\xff")])
    assert payload == ("kumo-infra delivered-secrets 1\n"
                       f"relay-password {base64.b64encode(b'a' + bytes([10]) + b'b' + bytes([0]) + b'c').decode()}\n"
                       "dkim-example-com-s1 /w==\nend 2\n")
    assert delivered_secrets_payload([]) == "kumo-infra delivered-secrets 1\nend 0\n"  # never empty: stdin is sent


@pytest.mark.parametrize("pairs, says", [
    ([("relay-password", "a"), ("relay-password", "b")], "given twice"),
    ([("../etc/shadow", "a")], "is not 1-128 lowercase"),
    ([("Relay", "a")], "is not 1-128 lowercase"),
    ([("a b", "a")], "is not 1-128 lowercase"),
    ([("", "a")], "is not 1-128 lowercase"),
])
def test_delivered_secrets_payload_refuses_what_the_node_would(pairs, says):
    from kumo_infra.bootstrap import delivered_secrets_payload
    with pytest.raises(ValueError, match=says):
        delivered_secrets_payload(pairs)


def test_node_and_renderer_agree_on_the_delivered_secrets_constants():
    from kumo_infra import bootstrap
    library = (FILES / "kumo-ssh-install.sh").read_text()
    assert f"DELIVERED_SECRETS_HEADER='{bootstrap.DELIVERED_SECRETS_HEADER}'" in library.splitlines()
    assert f"DELIVERED_DIR={bootstrap.DELIVERED_DIR}" in (FILES / "kumo-bootstrap.sh").read_text().splitlines()
    assert f'DELIVERED_DIR = "{bootstrap.DELIVERED_DIR}"' in (FILES / "kumo-fetch-secret.py").read_text().splitlines()


def test_the_install_command_is_fixed_and_holds_no_value():
    from kumo_infra.bootstrap import INSTALL_COMMAND, INSTALLER_REMOTE_PATH
    assert INSTALLER_REMOTE_PATH == "kumo-infra/install.sh"
    assert INSTALL_COMMAND == ('if [ "$(id -u)" -eq 0 ]; then exec bash kumo-infra/install.sh; '
                               'else exec sudo -n bash kumo-infra/install.sh; fi')
    for shell in ("sh", "bash", "dash"):
        if shutil.which(shell):
            assert subprocess.run([shell, "-n", "-c", INSTALL_COMMAND]).returncode == 0, shell


@pytest.mark.parametrize("uid, ran", [("0", "bash kumo-infra/install.sh"),
                                      ("1000", "sudo -n bash kumo-infra/install.sh")])
def test_the_install_command_runs_the_installer_as_root_with_its_standard_input(uid, ran, tmp_path):
    from kumo_infra.bootstrap import INSTALL_COMMAND
    tools = tmp_path / "bin"
    tools.mkdir()
    for name, body in {"id": f"echo {uid}", "bash": f'echo "bash $*" >{tmp_path}/ran; cat >{tmp_path}/stdin',
                       "sudo": f'echo "sudo $*" >{tmp_path}/ran; cat >{tmp_path}/stdin'}.items():
        (tools / name).write_text(f"#!/bin/sh\n{body}\n")
        (tools / name).chmod(0o755)
    # As sshd runs it: the user's shell, in the user's home, the secrets on standard input.
    subprocess.run(["sh", "-c", INSTALL_COMMAND], input=b"kumo-infra delivered-secrets 1\nend 0\n", check=True,
                   cwd=tmp_path, env={"PATH": f"{tools}:/usr/bin:/bin", "HOME": str(tmp_path)})
    assert (tmp_path / "ran").read_text().strip() == ran
    assert (tmp_path / "stdin").read_bytes() == b"kumo-infra delivered-secrets 1\nend 0\n"


def _installer_files(installer: str) -> list[tuple[str, str, bytes]]:
    """(path, mode, content) of every put_file in the installer, in order."""
    lines, found, i = installer.splitlines(), [], 0
    while i < len(lines):
        if lines[i].startswith("put_file "):
            _, path, mode, _ = shlex.split(lines[i].replace("<<'KUMO_EOF'", "HEREDOC"))
            end = lines.index("KUMO_EOF", i)
            found.append((path, mode, base64.b64decode("".join(lines[i + 1:end]))))
            i = end
        i += 1
    return found


def test_the_ssh_installer_writes_every_node_file_then_runs_the_bootstrap(tmp_path):
    from kumo_infra.bootstrap import DELIVERED_DIR, node_files, render_ssh_installer
    d, plan = build("aws", "debian12", "block", dkim={"domains": ["example.com"]})
    installer = render_ssh_installer(d, plan, 0)
    path = tmp_path / "install.sh"
    path.write_text(installer)
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
    check = subprocess.run([tool("shellcheck"), "--severity=style", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout
    expected = [(f.path, f.permissions, f.content.encode()) for f in node_files(d, plan, "mta.example.com")]
    assert _installer_files(installer) == expected
    calls = [line for line in installer.splitlines()
             if line.startswith(("begin_install ", "put_file ", "finish_install "))]
    # The secrets are read before anything else; the bootstrap runs last.
    assert calls[0] == f"begin_install mta.example.com {DELIVERED_DIR}"
    assert calls[-1] == "finish_install mta.example.com" and installer.splitlines()[-1] == calls[-1]
    assert len([c for c in calls if c.startswith(("begin_install ", "finish_install "))]) == 2


def test_the_ssh_installer_run_twice_changes_no_file(tmp_path):
    # The rendered calls run against a stand-in library that writes under a scratch root.
    from kumo_infra.bootstrap import node_files, render_ssh_installer
    d, plan = build("aws", "debian12", "block")
    installer = render_ssh_installer(d, plan, 0)
    library = (FILES / "kumo-ssh-install.sh").read_text().split("\n", 1)[1].rstrip("\n")
    assert library in installer
    root = tmp_path / "root"
    stand_in = (f'. {FILES / "kumo-ssh-install.sh"}\n'
                f'put_file() {{ local p="{root}$1"; install -d "$(dirname "$p")"; base64 -d >"$p.new"; '
                'chmod "$2" "$p.new"; '
                'if cmp -s "$p.new" "$p" && [ "$(stat -c %a "$p")" = "$(stat -c %a "$p.new")" ]; then rm -f "$p.new"; '
                'else mv -f "$p.new" "$p"; echo "wrote $1"; fi; }\n'
                'begin_install() { echo "begin $*"; }\nfinish_install() { echo "finish $*"; }')
    script = tmp_path / "install.sh"
    script.write_text(installer.replace(library, stand_in))
    first = subprocess.run(["bash", str(script)], capture_output=True, text=True, check=True).stdout.splitlines()
    files = node_files(d, plan, "mta.example.com")
    assert first == ["begin mta.example.com /run/kumo-infra/delivered"] + [f"wrote {f.path}" for f in files] + [
        "finish mta.example.com"]
    for f in files:
        assert (root / f.path.lstrip("/")).read_text() == f.content
    again = subprocess.run(["bash", str(script)], capture_output=True, text=True, check=True).stdout.splitlines()
    assert again == ["begin mta.example.com /run/kumo-infra/delivered", "finish mta.example.com"]


def test_the_ssh_installer_holds_no_secret_and_quotes_every_value():
    from kumo_infra.bootstrap import render_ssh_installer
    d, plan = build("aws", "debian12", "block", dkim={"domains": ["example.com"]},
                    network={"api_cidrs": ["198.51.100.0/24"]})
    installer = render_ssh_installer(d, plan, 0)
    assert "PRIVATE KEY" not in installer
    # Outside the base64 blocks, every line is the fixed library or a call with quoted values.
    for line in installer.splitlines():
        if line.startswith(("begin_install ", "put_file ", "finish_install ")):
            assert shlex.join(shlex.split(line.replace("<<'KUMO_EOF'", ""))) == line.replace(" <<'KUMO_EOF'", "")


# -- issue 9: the ssh target's node files ----------------------------------------------------

SSH_HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKoZYfLZGWV7DyQqkvFqSRe2jJp3sEA2k4etLfWd47R7"
SSH_HOST_KEY_2 = ("ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBPqrFvc8IimOvIaSBCDEZmc+ZRoYz"
                  "wVjnC2jqC3q5Hlj4ZhFILDiJN14GVXowKHHoOj+1/WG0VT92Y3DXGFXZR8=")
SSH_DEVICES = ["/dev/disk/by-id/wwn-0x5000c500a1b2c3d4",
               "/dev/disk/by-id/nvme-Samsung_SSD_980_PRO_1TB_S5GXNF0R123456A"]


def _ssh_registered() -> bool:
    from kumo_infra import targets
    return "ssh" in targets.PACKAGES


ssh_only = pytest.mark.skipif(not _ssh_registered(), reason="the ssh target is not registered yet")


def ssh_build(devices: bool):
    hosts = [{"address": "192.0.2.10", "host_key": SSH_HOST_KEY, "hostname": "mta1.example.com"},
             {"address": "192.0.2.11", "host_key": SSH_HOST_KEY_2, "hostname": "relay.example.net"}]
    if devices:
        for host, device in zip(hosts, SSH_DEVICES):
            host["spool_device"] = device
    d = parse_deployment({"cloud": "ssh", "name": "kumo-lab", "hostname": "mta.example.com", "os": "debian12",
                          "port25": RELAY | {"outbound": "relay"}, "dkim": {"domains": ["example.com"]},
                          "fleet": {"redis_url": "rediss://redis.example.net:6379"}, "ssh": {"hosts": hosts}})
    return d, plan_for(d)


def _installer_file(installer: str, path: str) -> str:
    return next(content for p, _, content in _installer_files(installer) if p == path).decode()


@ssh_only
def test_ssh_without_spool_devices_renders_a_directory_spool(tmp_path):
    from kumo_infra.bootstrap import render_ssh_installer
    d, plan = ssh_build(devices=False)
    for node, hostname in enumerate(["mta1.example.com", "relay.example.net"]):
        installer = render_ssh_installer(d, plan, node)
        env = source_env(_installer_file(installer, "/etc/kumo-infra/bootstrap.env"), tmp_path)
        assert env["KUMO_HOSTNAME"] == hostname and env["KUMO_CLOUD"] == "ssh"
        assert env["KUMO_SPOOL_STORAGE"] == "directory"
        assert env["KUMO_SPOOL_DEVICE_PATHS"] == "" and env["KUMO_NVME_DEVICE_GLOBS"] == ""
        assert int(env["KUMO_PLAN_VCPU"]) == plan.vcpu and float(env["KUMO_PLAN_MEMORY_GIB"]) == plan.memory_gib
        assert installer.splitlines()[-1] == f"finish_install {hostname}"


@ssh_only
def test_ssh_spool_device_is_the_hosts_one_exact_disk(tmp_path):
    from kumo_infra.bootstrap import render_ssh_installer
    d, plan = ssh_build(devices=True)
    for node, device in enumerate(SSH_DEVICES):
        installer = render_ssh_installer(d, plan, node, spool_volume_id=device)
        env = source_env(_installer_file(installer, "/etc/kumo-infra/bootstrap.env"), tmp_path)
        assert env["KUMO_SPOOL_STORAGE"] == "block" and env["KUMO_SPOOL_DEVICE_PATHS"] == device


@ssh_only
def test_ssh_secrets_are_delivered_and_the_node_reads_nothing_else(tmp_path):
    from kumo_infra.bootstrap import render_ssh_installer
    d, plan = ssh_build(devices=False)
    installer = render_ssh_installer(d, plan, 0)
    references = [line.split("\t")[0] for line in _installer_file(installer, "/etc/kumo-infra/secrets.list")
                  .splitlines() if line and not line.startswith("#")]
    # Two hosts: a fleet, with its Redis URL and peer list (kumo_infra/fleet.py).
    assert references == ["delivered:relay-password", "delivered:dkim-example-com-kumo", "delivered:redis-url",
                          "delivered:fleet-peers"]
    script = tmp_path / "kumo-fetch-secret.py"
    script.write_text(_installer_file(installer, "/usr/local/sbin/kumo-fetch-secret"))
    module = _delivered_fetcher("delivered", tmp_path)
    assert set(module.BACKENDS) == {"delivered"}
    path = tmp_path / "install.sh"
    path.write_text(installer)
    check = subprocess.run([tool("shellcheck"), "--severity=style", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout


# -- issue 12 review: the fleet's peer list fetched again (kumo-fleet-peers.timer) ----------------

PEERS_UNITS = ("/etc/systemd/system/kumo-fleet-peers.service", "/etc/systemd/system/kumo-fleet-peers.timer")


def test_only_a_fleet_that_fetches_its_secrets_gets_the_peer_list_timer(tmp_path):
    from kumo_infra.bootstrap import PER_NODE_FILES
    from kumo_infra.fleet import DRAIN_SUSPENSION_DOMAIN, FLEET_PEERS_PATH

    one = _node_files_of(deployment())
    assert not set(PEERS_UNITS) & set(one)
    assert source_env(one["/etc/kumo-infra/bootstrap.env"], tmp_path)["KUMO_FLEET_PEERS_PATH"] == ""

    fleet = _node_files_of(deployment(nodes=2))
    env = source_env(fleet["/etc/kumo-infra/bootstrap.env"], tmp_path)
    assert env["KUMO_FLEET_PEERS_PATH"] == FLEET_PEERS_PATH and env["KUMO_DRAIN_DOMAIN"] == DRAIN_SUSPENSION_DOMAIN
    # The step finds the secret to fetch again by its path in secrets.list.
    assert [line.split("\t")[1] for line in fleet["/etc/kumo-infra/secrets.list"].splitlines()
            if "\t" in line and not line.startswith("#")].count(FLEET_PEERS_PATH) == 1
    service, timer = (fleet[path] for path in PEERS_UNITS)
    assert "ExecStart=/usr/local/sbin/kumo-bootstrap peers" in service and "Type=oneshot" in service
    assert "OnUnitActiveSec=5min" in timer and "RandomizedDelaySec=" in timer and "WantedBy=timers.target" in timer
    # Shared by every node: AWS carries them in the node-files bundle, not in each user data.
    assert not set(PEERS_UNITS) & set(PER_NODE_FILES)

    # The ssh target delivers the list itself (and runs the installer again when it changes).
    if _ssh_registered():
        d, plan = ssh_build(devices=False)
        ssh_files = {f.path: f.content for f in node_files(d, plan, "mta1.example.com")}
        assert not set(PEERS_UNITS) & set(ssh_files)
        assert source_env(ssh_files["/etc/kumo-infra/bootstrap.env"], tmp_path)["KUMO_FLEET_PEERS_PATH"] == ""


def test_a_fleets_shared_node_files_are_the_same_on_every_node():
    # node_files_bundle is built from node 1 and given to every node: only PER_NODE_FILES may differ.
    from kumo_infra.bootstrap import PER_NODE_FILES

    d = parse_deployment(deployment(nodes=3))
    plan = plan_for(d)
    per_node = [{f.path: f.content for f in node_files(d, plan, d.node_hostname(i, 3)) if f.path not in PER_NODE_FILES}
                for i in range(3)]
    assert per_node[0] == per_node[1] == per_node[2]
    assert set(PEERS_UNITS) <= set(per_node[0])
    bundle = node_files_bundle(d, plan)
    assert set(PEERS_UNITS) <= set(bundle.paths)

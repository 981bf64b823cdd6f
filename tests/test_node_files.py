"""kumo-node-files: the shared node files fetched from the secret store when AWS's user data cannot
carry them, checked against the sha256 rendered into the user data, and unpacked exactly.

The real script and the real kumo-fetch-secret run against a local stand-in of AWS's metadata
service and Secrets Manager (tests/test_fetch_secret.py's FakeCloud), unpacking into a scratch root.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from kumo_infra.bootstrap import FILES, node_files, node_files_bundle
from kumo_infra.config import parse_deployment
from kumo_infra.stackconfig import plan_for
from tests.conftest import deployment
from tests.test_fetch_secret import FakeCloud, stand_in_env, standins  # noqa: F401 (fixture)

REFERENCE = "aws:eu-west-1:kumo-infra/kumo/node-files"


def bundle_for():
    d = parse_deployment(deployment(region="eu-west-1", name="kumo", os="debian12",
                                    os_updates={"automatic": "all"}))
    plan = plan_for(d)
    return d, plan, node_files_bundle(d, plan)


@pytest.fixture
def store(standins):
    d, plan, bundle = bundle_for()

    class Store(FakeCloud):
        def do_POST(self):  # noqa: N802
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.requests.append(("POST", self.path, dict(self.headers)))
            if json.loads(body) == {"SecretId": "kumo-infra/kumo/node-files"} \
                    and "/eu-west-1/secretsmanager/aws4_request" in self.headers.get("Authorization", ""):
                return self.reply(200, json.dumps({"SecretString": bundle.text}))
            self.reply(400, json.dumps({"__type": "ResourceNotFoundException"}))

    return standins(Store), d, plan, bundle


def unpack(tmp_path: Path, url: str, sha256: str) -> tuple[subprocess.CompletedProcess, Path]:
    sbin = tmp_path / "sbin"
    sbin.mkdir()
    shutil.copy(FILES / "kumo-node-files.sh", sbin / "kumo-node-files")
    shutil.copy(FILES / "kumo-fetch-secret.py", sbin / "kumo-fetch-secret")
    root = tmp_path / "root"
    root.mkdir()
    env = stand_in_env(url, KUMO_NODE_FILES_ROOT=str(root), KUMO_NODE_FILES_WAIT_S="0")
    result = subprocess.run(["sh", str(sbin / "kumo-node-files"), REFERENCE, sha256], capture_output=True,
                            text=True, env=env, timeout=60)
    return result, root


def test_node_files_are_unpacked_exactly_as_rendered(store, tmp_path):
    cloud, d, plan, bundle = store
    result, root = unpack(tmp_path, cloud.url, bundle.sha256)
    assert result.returncode == 0, result.stderr
    rendered = {f.path: f for f in node_files(d, plan, d.node_hostname(0, plan.nodes))}
    unpacked = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert unpacked == sorted(path.lstrip("/") for path in bundle.paths)
    for path in bundle.paths:
        on_disk = root / path.lstrip("/")
        assert on_disk.read_text() == rendered[path].content, path
        assert oct(on_disk.stat().st_mode & 0o7777) == oct(int(rendered[path].permissions, 8)), path
        assert on_disk.stat().st_uid == os.getuid()  # --no-same-owner: never the archive's owner


def test_a_bundle_with_another_hash_is_refused_and_nothing_unpacked(store, tmp_path):
    cloud, *_ = store
    result, root = unpack(tmp_path, cloud.url, "0" * 64)
    assert result.returncode == 1
    assert "refusing it" in result.stderr and "0" * 64 in result.stderr
    assert list(root.iterdir()) == []


def test_the_bundle_is_the_same_for_every_node_and_every_render():
    d = parse_deployment(deployment(nodes=3, dkim={"domains": ["example.com"]}))
    plan = plan_for(d)
    first = node_files_bundle(d, plan)
    assert node_files_bundle(d, plan) == first  # deterministic: no timestamps, sorted
    # No shared file names a node: each node's own files stay in its user data.
    for node in range(plan.nodes):
        hostname = d.node_hostname(node, plan.nodes)
        shared = [f for f in node_files(d, plan, hostname) if f.path in first.paths]
        assert all(hostname not in f.content for f in shared)


def test_the_fetcher_is_shellcheck_clean_and_the_user_data_valid_cloud_config(tmp_path):
    from kumo_infra.bootstrap import render_user_data
    check = subprocess.run(["shellcheck", "-s", "sh", str(FILES / "kumo-node-files.sh")], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout
    d, plan, bundle = bundle_for()
    user_data = tmp_path / "user-data"
    user_data.write_text(render_user_data(d, plan, 0, node_files_from=(REFERENCE, bundle.sha256)))
    schema = subprocess.run(["cloud-init", "schema", "--config-file", str(user_data)], capture_output=True, text=True)
    assert schema.returncode == 0 and "Valid cloud-config" in schema.stdout, schema

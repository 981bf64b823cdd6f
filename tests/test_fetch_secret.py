"""kumo-fetch-secret: the node-side fetch of a secret with the machine's own identity.

The script runs as a real process against local stand-ins for each cloud's
metadata service and secret store (HTTP servers on 127.0.0.1), selected through
its KUMO_*_URL variables. AWS request signing is checked against AWS's published
Signature Version 4 test vector.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from kumo_infra.bootstrap import FILES

SCRIPT = FILES / "kumo-fetch-secret.py"
SECRET = "s3cr3t-relay-pw"


def load_module():
    spec = importlib.util.spec_from_file_location("kumo_fetch_secret", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sigv4_matches_the_published_aws_test_vector():
    # aws-sig-v4-test-suite "get-vanilla".
    headers = load_module().sigv4_headers(
        "GET", "https://example.amazonaws.com/", "us-east-1", "service", b"", {},
        "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "20150830T123600Z")
    assert headers["authorization"] == (
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
        "SignedHeaders=host;x-amz-date, "
        "Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31")


def test_sigv4_query_is_sorted_like_the_published_vector():
    headers = load_module().sigv4_headers(
        "GET", "https://example.amazonaws.com/?Param2=value2&Param1=value1", "us-east-1", "service", b"", {},
        "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "20150830T123600Z")
    assert headers["authorization"].endswith("b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500")


class FakeCloud(BaseHTTPRequestHandler):
    """Metadata services and secret stores of all three clouds, strict about what they accept."""

    requests: list[tuple[str, str, dict]] = []
    granted = True

    def log_message(self, *args):  # keep test output clean
        pass

    def reply(self, status: int, body: bytes | str, ctype: str = "application/json") -> None:
        data = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_PUT(self):  # noqa: N802
        self.requests.append(("PUT", self.path, dict(self.headers)))
        if self.path == "/latest/api/token" and self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
            return self.reply(200, "imds-token", "text/plain")
        self.reply(403, "{}")

    def do_GET(self):  # noqa: N802
        h = self.headers
        self.requests.append(("GET", self.path, dict(h)))
        if self.path.startswith("/latest/meta-data/"):
            if h.get("X-aws-ec2-metadata-token") != "imds-token":
                return self.reply(401, "{}")  # IMDSv2 only
            if self.path.endswith("/security-credentials/"):
                return self.reply(200, "kumo-role\n", "text/plain")
            return self.reply(200, json.dumps({"AccessKeyId": "AKIATEST", "SecretAccessKey": "sk", "Token": "st"}))
        if self.path.startswith("/metadata/identity/oauth2/token"):
            assert h.get("Metadata") == "true" and "resource=https%3A%2F%2Fvault.azure.net" in self.path
            return self.reply(200, json.dumps({"access_token": "az-token"}))
        if self.path.startswith("/secrets/relay-password"):
            if h.get("Authorization") != "Bearer az-token" or not self.granted:
                return self.reply(403, "{}")
            return self.reply(200, json.dumps({"value": SECRET}))
        if self.path == "/computeMetadata/v1/instance/service-accounts/default/token":
            assert h.get("Metadata-Flavor") == "Google"
            return self.reply(200, json.dumps({"access_token": "gcp-token"}))
        if self.path == "/v1/projects/proj/secrets/kumo-relay-password/versions/latest:access":
            if h.get("Authorization") != "Bearer gcp-token":
                return self.reply(403, "{}")
            return self.reply(200, json.dumps({"payload": {"data": base64.b64encode(SECRET.encode()).decode()}}))
        self.reply(404, "{}")

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        h = self.headers
        self.requests.append(("POST", self.path, dict(h)))
        auth = h.get("Authorization", "")
        ok = (h.get("X-Amz-Target") == "secretsmanager.GetSecretValue"
              and "Credential=AKIATEST/" in auth and "/eu-west-1/secretsmanager/aws4_request" in auth
              and h.get("X-Amz-Security-Token") == "st"
              and json.loads(body) == {"SecretId": "kumo-infra/kumo/relay-password"})
        if not ok or not self.granted:
            return self.reply(400, json.dumps({"__type": "AccessDeniedException"}))
        self.reply(200, json.dumps({"SecretString": SECRET}))


@pytest.fixture
def cloud():
    FakeCloud.requests = []
    FakeCloud.granted = True
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeCloud)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}"
    yield url
    server.shutdown()
    server.server_close()


def fetch(reference: str, url: str) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "KUMO_AWS_METADATA_URL": url, "KUMO_AWS_SECRETS_URL": url + "/",
           "KUMO_AZURE_METADATA_URL": url, "KUMO_AZURE_VAULT_URL": url, "KUMO_GCP_METADATA_URL": url,
           "KUMO_GCP_SECRETS_URL": url}
    return subprocess.run([sys.executable, str(SCRIPT), reference], capture_output=True, text=True, env=env,
                          timeout=60)


def test_aws_secrets_manager_with_imdsv2_role_credentials(cloud):
    result = fetch("aws:eu-west-1:kumo-infra/kumo/relay-password", cloud)
    assert result.returncode == 0, result.stderr
    assert result.stdout == SECRET  # exactly the value: no newline added
    methods = [(m, p) for m, p, _ in FakeCloud.requests]
    assert methods[0] == ("PUT", "/latest/api/token")


def test_azure_key_vault_with_managed_identity(cloud):
    result = fetch("azure:https://kumo-abc123.vault.azure.net:relay-password", cloud)
    assert result.returncode == 0, result.stderr
    assert result.stdout == SECRET


def test_gcp_secret_manager_with_service_account(cloud):
    result = fetch("gcp:proj:kumo-relay-password", cloud)
    assert result.returncode == 0, result.stderr
    assert result.stdout == SECRET


def test_a_missing_grant_fails_with_a_useful_message(cloud):
    FakeCloud.granted = False
    result = fetch("azure:https://kumo-abc123.vault.azure.net:relay-password", cloud)
    assert result.returncode == 1 and result.stdout == ""
    assert "HTTP 403" in result.stderr and "read access" in result.stderr
    assert SECRET not in result.stderr


@pytest.mark.parametrize("reference", ["", "aws:only-region", "azure:http://plain:x", "gcp::name", "oracle:a:b"])
def test_malformed_references_exit_2(reference, cloud):
    result = fetch(reference, cloud)
    assert result.returncode == 2 and "malformed secret reference" in result.stderr


def test_script_stays_compatible_with_python_3_6():
    # Rocky/Alma 8 offer only /usr/libexec/platform-python (3.6): no PEP 563/585/604, no walrus.
    import ast
    source = SCRIPT.read_text()
    ast.parse(source, feature_version=(3, 6))
    assert "from __future__ import annotations" not in source
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
            pytest.fail("PEP 604 union in the script")
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id in ("dict", "list"):
            pytest.fail("PEP 585 generic in the script")

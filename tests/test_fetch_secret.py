"""kumo-fetch-secret: the node-side fetch of a secret with the machine's own identity.

The script runs as a real process against local stand-ins for each cloud's
metadata service and secret store (HTTP and HTTPS servers on 127.0.0.1), selected
through its KUMO_*_URL variables in its test mode. AWS request signing is checked
against AWS's published Signature Version 4 test vector.

Never run here without test mode and overrides: the script would then reach the
real metadata addresses. The tests of the refusals run it in-process with its
network function replaced.
"""

from __future__ import annotations

import ast
import base64
import datetime
import importlib.util
import ipaddress
import json
import ssl
import subprocess
import sys
import urllib.request
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kumo_infra.bootstrap import FILES
from tests.http_standin import StandIn

SCRIPT = FILES / "kumo-fetch-secret.py"
SECRET = "s3cr3t-relay-pw"
AWS_REF = "aws:eu-west-1:kumo-infra/kumo/relay-password"
AZURE_REF = "azure:https://kumo-abc123.vault.azure.net:relay-password"
GCP_REF = "gcp:my-proj:kumo-relay-password"
STORE_VARIABLE = {"aws": "KUMO_AWS_SECRETS_URL", "azure": "KUMO_AZURE_VAULT_URL", "gcp": "KUMO_GCP_SECRETS_URL"}
REFERENCE = {"aws": AWS_REF, "azure": AZURE_REF, "gcp": GCP_REF}


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


# -- stand-ins ---------------------------------------------------------------------------------------------------


class FakeCloud(BaseHTTPRequestHandler):
    """Metadata services and secret stores of all three clouds, strict about what they accept.

    ``redirects`` maps (method, path prefix) to (status, location): such a request is answered with a redirect.
    Each fixture use gets its own subclass, so its class attributes are per test.
    """

    requests: list[tuple[str, str, dict]] = []
    granted = True
    redirects: dict[tuple[str, str], tuple[int, str]] = {}

    def log_message(self, *args):  # keep test output clean
        pass

    def reply(self, status: int, body: bytes | str, ctype: str = "application/json") -> None:
        data = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def redirected(self) -> bool:
        for (method, prefix), (status, location) in self.redirects.items():
            if self.command == method and self.path.startswith(prefix):
                self.send_response(status)
                self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return True
        return False

    def do_PUT(self):  # noqa: N802
        self.requests.append(("PUT", self.path, dict(self.headers)))
        if self.redirected():
            return
        if self.path == "/latest/api/token" and self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
            return self.reply(200, "imds-token", "text/plain")
        self.reply(403, "{}")

    def do_GET(self):  # noqa: N802
        h = self.headers
        self.requests.append(("GET", self.path, dict(h)))
        if self.redirected():
            return
        if self.path.startswith("/latest/meta-data/"):
            if h.get("X-aws-ec2-metadata-token") != "imds-token":
                return self.reply(401, "{}")  # IMDSv2 only
            if self.path.endswith("/security-credentials/"):
                return self.reply(200, "kumo-role\n", "text/plain")
            return self.reply(200, json.dumps({"AccessKeyId": "AKIATEST", "SecretAccessKey": "sk", "Token": "st"}))
        if self.path.startswith("/metadata/identity/oauth2/token"):
            assert h.get("Metadata") == "true", "Azure IMDS needs the Metadata: true header"
            assert "resource=https%3A%2F%2Fvault.azure.net" in self.path, "the token must be for Key Vault"
            return self.reply(200, json.dumps({"access_token": "az-token"}))
        if self.path.startswith("/secrets/relay-password"):
            if h.get("Authorization") != "Bearer az-token" or not self.granted:
                return self.reply(403, "{}")
            return self.reply(200, json.dumps({"value": SECRET}))
        if self.path == "/computeMetadata/v1/instance/service-accounts/default/token":
            assert h.get("Metadata-Flavor") == "Google", "GCP metadata needs the Metadata-Flavor: Google header"
            return self.reply(200, json.dumps({"access_token": "gcp-token"}))
        if self.path == "/v1/projects/my-proj/secrets/kumo-relay-password/versions/latest:access":
            if h.get("Authorization") != "Bearer gcp-token":
                return self.reply(403, "{}")
            return self.reply(200, json.dumps({"payload": {"data": base64.b64encode(SECRET.encode()).decode()}}))
        self.reply(404, "{}")

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        h = self.headers
        self.requests.append(("POST", self.path, dict(h)))
        if self.redirected():
            return
        auth = h.get("Authorization", "")
        ok = (h.get("X-Amz-Target") == "secretsmanager.GetSecretValue"
              and "Credential=AKIATEST/" in auth and "/eu-west-1/secretsmanager/aws4_request" in auth
              and h.get("X-Amz-Security-Token") == "st"
              and json.loads(body) == {"SecretId": "kumo-infra/kumo/relay-password"})
        if not ok or not self.granted:
            return self.reply(400, json.dumps({"__type": "AccessDeniedException"}))
        self.reply(200, json.dumps({"SecretString": SECRET}))


class Recorder(BaseHTTPRequestHandler):
    """Records whatever reaches it (a redirect target, a proxy) and answers 502."""

    requests: list[tuple[str, str, dict]] = []

    def log_message(self, *args):
        pass

    def _record(self):
        self.requests.append((self.command, self.path, dict(self.headers)))
        self.send_response(502)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_PUT = do_POST = do_HEAD = do_CONNECT = _record  # noqa: N815


@pytest.fixture
def standins():
    """Start stand-ins with ``standins(handler, tls=None)``; a handler failure fails the test at teardown."""
    started: list[StandIn] = []

    def start(handler: type[BaseHTTPRequestHandler], tls: ssl.SSLContext | None = None) -> StandIn:
        # A fresh subclass: class-level records (requests, redirects) belong to this test only.
        fresh = type(handler.__name__, (handler,), {"requests": [], "redirects": {}, "granted": True})
        standin = StandIn(fresh, tls)
        standin.handler = fresh
        started.append(standin)
        return standin

    yield start
    for standin in started:
        standin.stop()
    for standin in started:
        standin.check()


@pytest.fixture
def cloud(standins) -> StandIn:
    return standins(FakeCloud)


def stand_in_env(url: str, **extra: str) -> dict[str, str]:
    env = {"PATH": "/usr/bin:/bin", "KUMO_FETCH_SECRET_TEST_MODE": "1",
           "KUMO_AWS_METADATA_URL": url, "KUMO_AWS_SECRETS_URL": url + "/", "KUMO_AZURE_METADATA_URL": url,
           "KUMO_AZURE_VAULT_URL": url, "KUMO_GCP_METADATA_URL": url, "KUMO_GCP_SECRETS_URL": url}
    env.update(extra)
    return env


def fetch(reference: str, cloud: StandIn, *others: StandIn, **env: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, str(SCRIPT), reference], capture_output=True, text=True,
                            env=stand_in_env(cloud.url, **env), timeout=60)
    for standin in (cloud, *others):
        standin.check()  # an assertion inside a handler fails here, with its message
    return result


# -- the happy paths ---------------------------------------------------------------------------------------------


def test_aws_secrets_manager_with_imdsv2_role_credentials(cloud):
    result = fetch(AWS_REF, cloud)
    assert result.returncode == 0, result.stderr
    assert result.stdout == SECRET  # exactly the value: no newline added
    methods = [(m, p) for m, p, _ in cloud.handler.requests]
    assert methods[0] == ("PUT", "/latest/api/token")


def test_azure_key_vault_with_managed_identity(cloud):
    result = fetch(AZURE_REF, cloud)
    assert result.returncode == 0, result.stderr
    assert result.stdout == SECRET


def test_gcp_secret_manager_with_service_account(cloud):
    result = fetch(GCP_REF, cloud)
    assert result.returncode == 0, result.stderr
    assert result.stdout == SECRET


def test_a_missing_grant_fails_with_a_useful_message(cloud):
    cloud.handler.granted = False
    result = fetch(AZURE_REF, cloud)
    assert result.returncode == 1 and result.stdout == ""
    assert "HTTP 403" in result.stderr and "read access" in result.stderr
    assert SECRET not in result.stderr


@pytest.mark.parametrize("reference", [
    "", "aws:only-region", "azure:http://plain:x", "gcp::name", "oracle:a:b",
    # A region or vault URL is part of a host name: anything but the cloud's own form could steer
    # a signed request or a bearer token elsewhere.
    "aws:evil.example/x:name", "aws:eu-west-1:name with space",
    "azure:https://evil.example:relay-password", "azure:https://kumo.vault.azure.net.evil.example:x",
    "gcp:my-proj/../other:name", "gcp:my-proj:name/../../x", "gcp:p:name",
])
def test_malformed_references_exit_2(reference, cloud):
    result = fetch(reference, cloud)
    assert result.returncode == 2 and "malformed secret reference" in result.stderr
    assert cloud.handler.requests == []


# -- no redirects, no proxies ------------------------------------------------------------------------------------


@pytest.mark.parametrize("reference, method, path, status", [
    (AWS_REF, "GET", "/latest/meta-data/iam/security-credentials/", 302),  # carries the IMDSv2 token
    (AWS_REF, "POST", "/", 302),  # the signed Secrets Manager request
    (AZURE_REF, "GET", "/metadata/identity/oauth2/token", 302),
    (AZURE_REF, "GET", "/secrets/relay-password", 307),  # carries the bearer token
    (GCP_REF, "GET", "/computeMetadata/v1/instance/service-accounts/default/token", 301),
    (GCP_REF, "GET", "/v1/projects/my-proj/secrets/", 302),  # carries the bearer token
])
def test_a_redirect_is_refused_and_nothing_reaches_its_target(reference, method, path, status, cloud, standins):
    target = standins(Recorder)
    cloud.handler.redirects = {(method, path): (status, target.url + "/stolen")}
    result = fetch(reference, cloud, target)
    assert result.returncode == 1 and result.stdout == ""
    assert f"HTTP {status} redirecting to {target.url}/stolen: refused" in result.stderr
    assert target.handler.requests == []
    assert (method, path) in {(m, p[:len(path)]) for m, p, _ in cloud.handler.requests}  # really redirected


@pytest.mark.parametrize("reference", [AWS_REF, AZURE_REF, GCP_REF])
def test_proxy_variables_are_ignored(reference, cloud, standins):
    proxy = standins(Recorder)
    proxies = {name: proxy.url for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy",
                                            "ALL_PROXY")}
    result = fetch(reference, cloud, proxy, **proxies)
    assert result.returncode == 0, result.stderr
    assert result.stdout == SECRET
    assert proxy.handler.requests == []


# -- TLS: verified, always ---------------------------------------------------------------------------------------


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(subject: str, key, issuer_name: str, issuer_key, *, ca: bool, sans: list[x509.GeneralName]):
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer_name))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                              critical=False))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False, encipher_only=False,
            decipher_only=False), critical=True)
    else:
        builder = (builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False))
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(cert) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _server_context(directory: Path, cert, key) -> ssl.SSLContext:
    cert_file, key_file = directory / "server.pem", directory / "server.key"
    cert_file.write_bytes(_pem(cert))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    return context


LOCALHOST_IP = [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]


@pytest.fixture
def trusted_ca(tmp_path):
    """A CA trusted only through the script's test-mode bundle: (bundle path, issue(sans) -> server context)."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("kumo-infra test CA", ca_key, "kumo-infra test CA", ca_key, ca=True, sans=[])
    bundle = tmp_path / "ca.pem"
    bundle.write_bytes(_pem(ca))

    def issue(sans: list[x509.GeneralName]) -> ssl.SSLContext:
        key = ec.generate_private_key(ec.SECP256R1())
        leaf = _certificate("stand-in", key, "kumo-infra test CA", ca_key, ca=False, sans=sans)
        return _server_context(tmp_path, leaf, key)

    return bundle, issue


@pytest.mark.parametrize("cloud_name", sorted(STORE_VARIABLE))
def test_secret_store_over_https_with_a_trusted_certificate(cloud_name, cloud, standins, trusted_ca):
    bundle, issue = trusted_ca
    store = standins(FakeCloud, tls=issue(LOCALHOST_IP))
    url = store.url + ("/" if cloud_name == "aws" else "")
    result = fetch(REFERENCE[cloud_name], cloud, store, **{STORE_VARIABLE[cloud_name]: url,
                                                           "KUMO_FETCH_SECRET_TEST_CA": str(bundle)})
    assert result.returncode == 0, result.stderr
    assert result.stdout == SECRET
    assert store.handler.requests  # the secret came over TLS from the HTTPS stand-in


@pytest.mark.parametrize("cloud_name", sorted(STORE_VARIABLE))
def test_tls_verification_refuses_a_self_signed_certificate(cloud_name, cloud, standins, tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    self_signed = _certificate("stand-in", key, "stand-in", key, ca=False, sans=LOCALHOST_IP)
    store = standins(FakeCloud, tls=_server_context(tmp_path, self_signed, key))
    url = store.url + ("/" if cloud_name == "aws" else "")
    result = fetch(REFERENCE[cloud_name], cloud, store, **{STORE_VARIABLE[cloud_name]: url})
    assert result.returncode == 1 and result.stdout == ""
    assert "CERTIFICATE_VERIFY_FAILED" in result.stderr
    assert store.handler.requests == []  # no request, and so no token, went over the unverified connection


def test_tls_verification_refuses_a_certificate_for_another_host(cloud, standins, trusted_ca):
    bundle, issue = trusted_ca
    store = standins(FakeCloud, tls=issue([x509.DNSName("secretmanager.googleapis.com")]))
    result = fetch(GCP_REF, cloud, store, KUMO_GCP_SECRETS_URL=store.url, KUMO_FETCH_SECRET_TEST_CA=str(bundle))
    assert result.returncode == 1 and "CERTIFICATE_VERIFY_FAILED" in result.stderr
    assert "127.0.0.1" in result.stderr  # OpenSSL names the host mismatch
    assert store.handler.requests == []


# -- endpoint overrides exist only in test mode ------------------------------------------------------------------


@pytest.fixture
def offline_script(monkeypatch):
    """The script in-process with its network replaced: a request is recorded and fails, never sent."""
    module = load_module()
    sent: list[str] = []

    def no_network(url, **kwargs):
        sent.append(url)
        raise OSError("network disabled in this test")

    monkeypatch.setattr(module, "_request", no_network)
    for name in (*module.ENDPOINT_VARIABLES, module.TEST_CA_VARIABLE, module.TEST_MODE_VARIABLE,
                 module.DELIVERED_DIR_VARIABLE):
        monkeypatch.delenv(name, raising=False)
    return module, sent


@pytest.mark.parametrize("variable", ["KUMO_AWS_METADATA_URL", "KUMO_AWS_SECRETS_URL", "KUMO_AZURE_METADATA_URL",
                                      "KUMO_AZURE_VAULT_URL", "KUMO_GCP_METADATA_URL", "KUMO_GCP_SECRETS_URL",
                                      "KUMO_FETCH_SECRET_TEST_CA"])
def test_an_override_without_test_mode_is_refused(variable, offline_script, monkeypatch, capsys):
    module, sent = offline_script
    assert variable in (*module.ENDPOINT_VARIABLES, module.TEST_CA_VARIABLE)
    monkeypatch.setenv(variable, "http://127.0.0.1:9")
    assert module.main(["kumo-fetch-secret", GCP_REF]) == 2
    err = capsys.readouterr().err
    assert f"{variable} is set" in err and "KUMO_FETCH_SECRET_TEST_MODE=1" in err
    assert sent == []


@pytest.mark.parametrize("mode", ["", "0", "true", "yes"])
def test_only_test_mode_1_enables_overrides(mode, offline_script, monkeypatch):
    module, sent = offline_script
    monkeypatch.setenv("KUMO_FETCH_SECRET_TEST_MODE", mode)
    monkeypatch.setenv("KUMO_GCP_METADATA_URL", "http://127.0.0.1:9")
    assert module.main(["kumo-fetch-secret", GCP_REF]) == 2
    assert sent == []


def test_endpoints_ignore_the_environment_outside_test_mode(offline_script, monkeypatch):
    # The second guard: even past the refusal, no override is read without test mode.
    module, _ = offline_script
    monkeypatch.setenv("KUMO_GCP_METADATA_URL", "http://127.0.0.1:9")
    assert module.endpoint("KUMO_GCP_METADATA_URL", "http://metadata.google.internal") == \
        "http://metadata.google.internal"
    monkeypatch.setenv("KUMO_FETCH_SECRET_TEST_MODE", "1")
    assert module.endpoint("KUMO_GCP_METADATA_URL", "http://metadata.google.internal") == "http://127.0.0.1:9"


def test_the_test_ca_bundle_is_read_only_in_test_mode(offline_script, monkeypatch, tmp_path):
    module, _ = offline_script
    monkeypatch.setenv("KUMO_FETCH_SECRET_TEST_CA", str(tmp_path / "absent.pem"))
    module.build_opener()  # the system's trust store: the bundle is not even opened
    monkeypatch.setenv("KUMO_FETCH_SECRET_TEST_MODE", "1")
    with pytest.raises(FileNotFoundError):
        module.build_opener()


@pytest.mark.parametrize("url", ["http://192.0.2.1", "http://metadata.google.internal", "https://evil.example",
                                 "http://127.0.0.1.evil.example:80"])
def test_test_mode_endpoints_must_be_on_this_machine(url, offline_script, monkeypatch, capsys):
    module, sent = offline_script
    monkeypatch.setenv("KUMO_FETCH_SECRET_TEST_MODE", "1")
    monkeypatch.setenv("KUMO_GCP_SECRETS_URL", url)
    assert module.main(["kumo-fetch-secret", GCP_REF]) == 2
    assert "KUMO_GCP_SECRETS_URL" in capsys.readouterr().err and sent == []


def test_without_overrides_the_real_endpoints_are_used(offline_script):
    module, sent = offline_script
    assert module.main(["kumo-fetch-secret", GCP_REF]) == 1  # the replaced network refuses
    assert sent == ["http://metadata.google.internal/computeMetadata/v1/instance/service-accounts/default/token"]


def test_the_opener_has_no_proxy_no_redirect_and_verifies_tls(offline_script, monkeypatch):
    module, _ = offline_script
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")
    opener = module.build_opener()
    handlers = {type(h).__name__: h for h in opener.handlers}
    # ProxyHandler({}) has no proxy to open, so the opener keeps no proxy handler at all (and adds no default one).
    assert not any(isinstance(h, urllib.request.ProxyHandler) for h in opener.handlers)
    assert "_RefuseRedirects" in handlers and "HTTPRedirectHandler" not in handlers
    context = handlers["HTTPSHandler"]._context
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


# -- the stand-ins themselves ------------------------------------------------------------------------------------


def test_an_assertion_in_a_stand_in_handler_fails_the_test_with_its_message(standins):
    class Asserting(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):  # noqa: N802
            assert self.path == "/expected", f"unexpected path {self.path}"

    standin = standins(Asserting)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with pytest.raises(OSError):
        opener.open(standin.url + "/other", timeout=10)
    with pytest.raises(pytest.fail.Exception, match="unexpected path /other"):
        standin.check()
    standin.failures.clear()  # seen: the fixture's teardown would fail this test otherwise


def test_script_stays_compatible_with_python_3_6():
    # Rocky/Alma 8 offer only /usr/libexec/platform-python (3.6): no PEP 563/585/604, no walrus.
    source = SCRIPT.read_text()
    ast.parse(source, feature_version=(3, 6))
    assert "from __future__ import annotations" not in source
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
            pytest.fail("PEP 604 union in the script")
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id in ("dict", "list"):
            pytest.fail("PEP 585 generic in the script")


class GarbledCloud(FakeCloud):
    """The metadata service answers garbage, or the instance has no role."""

    mode = "garbled"

    def do_GET(self):  # noqa: N802
        self.requests.append(("GET", self.path, dict(self.headers)))
        if self.path.endswith("/security-credentials/") and self.mode == "no-role":
            return self.reply(200, "", "text/plain")
        if self.path.startswith("/latest/meta-data/iam/security-credentials/kumo-role"):
            return self.reply(200, "{not json", "text/plain")
        if self.path.startswith("/computeMetadata/v1/instance/service-accounts/default/token"):
            return self.reply(200, json.dumps({"access_token": "gcp-token"}))
        if self.path.endswith(":access"):
            return self.reply(200, json.dumps({"payload": {"data": "%%%not-base64"}}))
        return super().do_GET()


@pytest.mark.parametrize("mode, reference, says", [
    ("garbled", AWS_REF, "JSONDecodeError"),
    ("no-role", AWS_REF, "no IAM role"),
])
def test_a_garbled_answer_or_a_missing_identity_is_a_retryable_failure_not_bad_input(mode, reference, says, standins):
    # Exit 2 means "this reference or environment is wrong" (retrying cannot help); a garbled
    # answer from the service or an instance without its role is exit 1, never a traceback.
    cloud = standins(type("Cloud", (GarbledCloud,), {"mode": mode}))
    result = fetch(reference, cloud)
    assert result.returncode == 1, (result.returncode, result.stderr)
    assert says in result.stderr and "Traceback" not in result.stderr


# -- the backend table and the delivered backend (issue 9) ------------------------------------------------------


def test_an_unknown_store_is_refused_naming_the_known_ones(offline_script, capsys):
    module, sent = offline_script
    assert set(module.BACKENDS) == {"aws", "azure", "gcp", "delivered"}
    assert module.main(["kumo-fetch-secret", "oracle:vault:name"]) == 2
    err = capsys.readouterr().err
    assert "unknown secret store 'oracle' (known: aws, azure, delivered, gcp)" in err and sent == []


def run_delivered(reference: str, staged: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), reference], capture_output=True, env={
        "PATH": "/usr/bin:/bin", "KUMO_FETCH_SECRET_TEST_MODE": "1", "KUMO_DELIVERED_DIR": str(staged), **env},
        timeout=60)


def test_a_delivered_secret_is_read_from_the_staging_directory_byte_for_byte(tmp_path):
    value = b"line one\nquote ' \" $(id) \x00 \xff end"
    (tmp_path / "dkim-example-com-s1").write_bytes(value)
    result = run_delivered("delivered:dkim-example-com-s1", tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == value


def test_a_secret_not_delivered_exits_3_and_says_so(tmp_path):
    result = run_delivered("delivered:relay-password", tmp_path)
    assert result.returncode == 3 and result.stdout == b""
    assert b"delivered:relay-password: nothing was delivered in this run" in result.stderr


@pytest.mark.parametrize("reference", ["delivered:", "delivered:../etc/shadow", "delivered:/etc/shadow",
                                       "delivered:Relay", "delivered:a b", "delivered:-x"])
def test_a_delivered_key_is_a_key_never_a_path(reference, tmp_path):
    result = run_delivered(reference, tmp_path)
    assert result.returncode == 2 and b"malformed secret reference" in result.stderr
    assert b"(delivered:KEY)" in result.stderr


def test_the_staging_directory_is_a_test_mode_override_only(offline_script, monkeypatch, tmp_path, capsys):
    module, _ = offline_script
    monkeypatch.setenv("KUMO_DELIVERED_DIR", str(tmp_path))
    assert module.main(["kumo-fetch-secret", "delivered:relay-password"]) == 2
    assert "KUMO_DELIVERED_DIR is set" in capsys.readouterr().err
    # Outside test mode the node's own directory is read, whatever the environment says.
    assert module.endpoint(module.DELIVERED_DIR_VARIABLE, module.DELIVERED_DIR) == "/run/kumo-infra/delivered"

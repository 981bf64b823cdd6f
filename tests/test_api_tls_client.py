"""What the api output tells a client to do, done with the real curl against a real TLS server.

The server is Python's ssl module (OpenSSL), not KumoMTA: it serves a key and certificate of the
shape kumo-infra has pulumi_tls make (ECDSA P-256, PKCS#8 key; self-signed, not a CA, key usage
digital signature, extended key usage server auth, the nodes' names and addresses as SANs; the
template of hashicorp/terraform-provider-tls internal/provider/resource_self_signed_cert.go and
common_cert.go createCertificate). It shows that the documented client commands verify such a
certificate (curl --cacert, by hostname and by address), refuse a name it does not carry and an
unpinned key, and that common.public_key_pin is curl's --pinnedpubkey form (the recipe of curl's
documentation, computed by openssl).
"""

from __future__ import annotations

import base64
import datetime
import http.server
import ipaddress
import shutil
import ssl
import subprocess
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kumo_infra.component import API_TLS_CURVE, API_TLS_USES, public_key_pin
from kumo_infra.secretspec import API_USER

HOSTS = ["mta1.example.com", "mta2.example.com"]
ADDRESS = "127.0.0.1"  # the test server's; stands for a node's public address
PASSWORD = "Generated0password0of0forty0characters00"


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed (Debian package {name}); tests/debian-packages.txt lists it")
    return path


def make_pair(directory: Path) -> tuple[Path, Path, str]:
    """A key and a certificate of the shape kumo-infra generates; returns the paths and the public PEM."""
    assert API_TLS_CURVE == "P256" and set(API_TLS_USES) == {"server_auth", "digital_signature"}
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOSTS[0]),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "kumo-infra test")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName([*map(x509.DNSName, HOSTS),
                                                        x509.IPAddress(ipaddress.ip_address(ADDRESS))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    key_path, cert_path = directory / "api-tls-key", directory / "api-ca.pem"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return key_path, cert_path, public


class _Api(http.server.BaseHTTPRequestHandler):
    """Answers 200 to the API user with the password, 401 otherwise (what the policy's check does)."""

    def do_POST(self):  # noqa: N802 (http.server's name)
        expected = "Basic " + base64.b64encode(f"{API_USER}:{PASSWORD}".encode()).decode()
        self.send_response(200 if self.headers.get("Authorization") == expected else 401)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    directory = tmp_path_factory.mktemp("api-tls")
    key_path, cert_path, public = make_pair(directory)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    httpd = http.server.HTTPServer((ADDRESS, 0), _Api)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield {"port": httpd.server_address[1], "ca": cert_path, "public": public}
    httpd.shutdown()
    httpd.server_close()


def curl(server: dict, host: str, *options: str, password: str = PASSWORD) -> subprocess.CompletedProcess:
    """POST /api/inject/v1 as the API user, reaching ``host`` (a name resolved to the server, or its address)."""
    port = server["port"]
    resolve = [] if host == ADDRESS else ["--resolve", f"{host}:{port}:{ADDRESS}"]
    return subprocess.run([tool("curl"), "--silent", "--show-error", "--output", "/dev/null", "--write-out",
                           "%{http_code}", "--max-time", "20", *resolve, *options, "-u", f"{API_USER}:{password}",
                           "-X", "POST", f"https://{host}:{port}/api/inject/v1"],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("host", [*HOSTS, ADDRESS], ids=["hostname-1", "hostname-2", "address"])
def test_cacert_verifies_the_certificate_by_every_name_it_carries(server, host):
    done = curl(server, host, "--cacert", str(server["ca"]))
    assert (done.returncode, done.stdout) == (0, "200"), done.stderr


def test_cacert_refuses_a_name_the_certificate_does_not_carry(server):
    done = curl(server, "mta3.example.com", "--cacert", str(server["ca"]))
    assert done.returncode == 60, (done.returncode, done.stderr)  # CURLE_PEER_FAILED_VERIFICATION


def test_without_the_certificate_the_client_refuses(server):
    done = curl(server, HOSTS[0])
    assert done.returncode == 60, (done.returncode, done.stderr)


def test_wrong_password_is_refused_over_a_verified_connection(server):
    done = curl(server, HOSTS[0], "--cacert", str(server["ca"]), password=PASSWORD + "x")
    assert (done.returncode, done.stdout) == (0, "401"), done.stderr


def test_public_key_pin_is_the_form_curl_and_openssl_compute(server, tmp_path):
    pin = public_key_pin(server["public"])
    # curl's documented recipe: openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | base64
    public = tmp_path / "public.pem"
    public.write_text(server["public"])
    der = subprocess.run([tool("openssl"), "pkey", "-pubin", "-in", str(public), "-outform", "der"],
                         capture_output=True, check=True, timeout=30).stdout
    digest = subprocess.run([tool("openssl"), "dgst", "-sha256", "-binary"], input=der, capture_output=True,
                            check=True, timeout=30).stdout
    assert pin == "sha256//" + base64.b64encode(digest).decode()
    # With --insecure, curl still checks the pin: it accepts this key and refuses another.
    done = curl(server, HOSTS[0], "--insecure", "--pinnedpubkey", pin)
    assert (done.returncode, done.stdout) == (0, "200"), done.stderr
    other = public_key_pin(ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode())
    done = curl(server, HOSTS[0], "--insecure", "--pinnedpubkey", other)
    assert done.returncode == 90, (done.returncode, done.stderr)  # CURLE_SSL_PINNEDPUBKEYNOTMATCH

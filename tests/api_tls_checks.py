"""Checks of the HTTP API's TLS key and certificate shared by the per-cloud tests (issue 8, point 6).

The offline engine answers each pulumi_tls output with a placeholder naming its resource
(kumo_infra/clouds/offline_common.py), so a test can tell which form of the key reached where.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from kumo_infra import component as common
from kumo_infra import offline
from kumo_infra.clouds.offline_common import COMPUTED

KEY = "tls:index/privateKey:PrivateKey"
CERT = "tls:index/selfSignedCert:SelfSignedCert"


def key_pkcs8(deployment_name: str) -> str:
    """The offline PKCS#8 PEM of the deployment's API key: the form the node gets."""
    return COMPUTED[KEY]["privateKeyPemPkcs8"]["value"].format(name=f"{deployment_name}-api-tls-key")


def key_sec1(deployment_name: str) -> str:
    """The offline privateKeyPem of the API key: the form the certificate is signed with."""
    return COMPUTED[KEY]["privateKeyPem"]["value"].format(name=f"{deployment_name}-api-tls-key")


def certificate_pem(deployment_name: str) -> str:
    return COMPUTED[CERT]["certPem"].format(name=f"{deployment_name}-api-tls-cert")


def text(value) -> str:
    """Recorded data as one searchable string; search for json_needle(x), as JSON escapes newlines."""
    return json.dumps(value)


def json_needle(value: str) -> str:
    return json.dumps(value)[1:-1]


def holders(result: offline.OfflineResult, value: str) -> list[str]:
    """The resources whose recorded inputs carry ``value``."""
    return sorted(r.name for r in result.resources if json_needle(value) in text(r.inputs))


def assert_certificate_names_every_node(result: offline.OfflineResult, deployment_name: str,
                                        protect: bool = False) -> offline.RecordedResource:
    """One API key (ECDSA P-256) and one self-signed certificate signed by it, naming every node's
    hostname (DNS SANs) and public address (IP SANs), for server authentication only, renewed early."""
    keys = [k for k in result.of_type(KEY) if k.name == f"{deployment_name}-api-tls-key"]
    assert [k.inputs for k in keys] == [{"algorithm": "ECDSA", "ecdsaCurve": "P256"}]
    cert = result.one(CERT)
    nodes = result.outputs["nodes"]
    assert len(nodes) >= 2 and len({n["public_ip"] for n in nodes}) == len(nodes), "need distinct addresses"
    i = cert.inputs
    assert i["dnsNames"] == [n["hostname"] for n in nodes]
    assert i["ipAddresses"] == [n["public_ip"] for n in nodes] == result.outputs["public_ips"]
    assert i["allowedUses"] == ["server_auth", "digital_signature"]
    assert i["validityPeriodHours"] == common.API_TLS_VALIDITY_HOURS == 3 * 365 * 24
    assert i["earlyRenewalHours"] == common.API_TLS_EARLY_RENEWAL_HOURS == 180 * 24
    assert "isCaCertificate" not in i  # a server certificate, never a CA that could sign others
    assert i["subject"]["commonName"] == nodes[0]["hostname"]
    # Signed by the API key; the SDK sends the key to the engine as a secret.
    assert offline.is_secret(i["privateKeyPem"]) and i["privateKeyPem"]["value"] == key_sec1(deployment_name)
    assert cert.parent == deployment_name
    return cert


def assert_api_output_names_hosts_and_certificate(api: dict, result: offline.OfflineResult,
                                                  deployment_name: str) -> None:
    nodes = result.outputs["nodes"]
    assert api["endpoints"] == [{"hostname": n["hostname"], "url": f"https://{n['hostname']}:8443",
                                 "ip_url": f"https://{n['public_ip']}:8443"} for n in nodes]
    assert api["ca_certificate"] == certificate_pem(deployment_name)
    public = COMPUTED[KEY]["publicKeyPem"]
    assert api["pinned_public_key"] == common.public_key_pin(public)
    assert "--cacert api-ca.pem" in api["example"] and f"https://{nodes[0]['hostname']}:8443/api/inject/v1" in \
        api["example"]
    assert "forward A records" in api["note"] and "only inject" in api["note"]
    assert "kumo-bootstrap all" in api["certificate_renewal"]


# -- running a program that could hang -------------------------------------------------------------

def recorded_run(values: dict, *, stack: str = "t", timeout: int = 180) -> dict:
    """The program under the mock engine in a child process, with each resource's recorded options.

    A machine that waits for a value made from the machines would hang the run (the engine waits
    for ever): here that fails the test after ``timeout`` seconds, naming the likely cause."""
    root = Path(__file__).resolve().parent.parent
    try:
        done = subprocess.run([sys.executable, "-c", "from tests.api_tls_checks import _dump; _dump()"],
                              input=json.dumps({"values": values, "stack": stack}), capture_output=True,
                              text=True, cwd=root, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the program did not finish in {timeout} s: a resource waits for one that waits "
                             "for it (a machine depending on a value made from the machines? see "
                             "NodeSecret.machines_wait)") from None
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _dump() -> None:
    """Child side of recorded_run: print the resources (with their recorded options) and outputs."""
    from kumo_infra import program

    request = json.loads(sys.stdin.read())
    result = offline.run(program.run, request["values"], stack=request["stack"])
    print(json.dumps({
        "resources": [{**r.to_dict(), **r.options(), "custom": r.custom} for r in result.resources],
        "outputs": result.outputs,
    }))


def Recorded(doc: dict) -> offline.OfflineResult:  # noqa: N802 (reads like the class it was)
    """recorded_run's answer as the OfflineResult it was in the child process."""
    return offline.OfflineResult("t", [offline.RecordedResource.from_dict(r) for r in doc["resources"]],
                                 doc["outputs"])

"""The HTTP API's TLS key and certificate on AWS (issue 8, point 6), under the mock engine.

On AWS the certificate names the Elastic IPs, which are associated as they are created and so
exist only after the machines: the machines must not wait for the certificate's value. Every
run with api_cidrs goes through api_tls_checks.recorded_run, which fails instead of hanging if
a machine waits for it.
"""

from __future__ import annotations

import base64
import gzip
import json

import pytest
import yaml

from kumo_infra import offline, program
from tests import api_tls_checks
from tests.conftest import deployment

INSTANCE = "aws:ec2/instance:Instance"
EIP = "aws:ec2/eip:Eip"
SECRET = "aws:secretsmanager/secret:Secret"
VERSION = "aws:secretsmanager/secretVersion:SecretVersion"
ROLE_POLICY = "aws:iam/rolePolicy:RolePolicy"
STORE = "kumo-infra/kumo-test/"
KEY_VERSION = "kumo-test-api-tls-key-version"
CERT_VERSION = "kumo-test-api-tls-cert-version"
API = {"ssh_cidrs": ["198.51.100.10/32"], "api_cidrs": ["198.51.100.0/24"]}
# Stored besides a fleet's own secrets: its Redis URL and peer list (kumo_infra.fleet), and the
# shared node files its bootstrap (with kumo-fetch-secret) no longer fits AWS's 16 KiB of user data
# without (the aws component's node_files_in_store).
FLEET_STORES = [STORE + "fleet-peers", STORE + "redis-url"]
NODE_FILES_STORE = STORE + "node-files"


def user_data(instance) -> str:
    return gzip.decompress(base64.b64decode(instance.inputs["userDataBase64"])).decode()


def secret_value(version) -> str:
    value = version.inputs["secretString"]
    assert offline.is_secret(value), value
    return value["value"]


@pytest.fixture(scope="module")
def three_nodes() -> offline.OfflineResult:
    return api_tls_checks.Recorded(api_tls_checks.recorded_run(
        {"kumo:deployment": deployment(nodes=3, network=API)}))


def test_api_certificate_names_every_node_hostname_and_elastic_ip(three_nodes):
    cert = api_tls_checks.assert_certificate_names_every_node(three_nodes, "kumo-test")
    eips = {r.name for r in three_nodes.of_type(EIP)}
    assert len(eips) == 3 and eips <= set(cert.depends_on_names)


def test_machines_wait_for_the_key_but_not_for_the_certificate_that_names_their_addresses(three_nodes):
    for vm in three_nodes.of_type(INSTANCE):
        deps = set(vm.depends_on_names)
        assert KEY_VERSION in deps and "kumo-test-api-password-version" in deps
        assert CERT_VERSION not in deps  # it waits for the Elastic IPs, which wait for the machine
        # The role may read the certificate's secret before its value exists: the node's fetch retries.
        assert "kumo-test-secrets-access" in deps


def test_api_tls_key_and_certificate_are_stored_and_readable_only_by_the_role(three_nodes):
    secrets = {s.inputs["name"]: s for s in three_nodes.of_type(SECRET)}
    assert sorted(secrets) == sorted([STORE + "api-password", STORE + "api-tls-cert", STORE + "api-tls-key",
                                      *FLEET_STORES, NODE_FILES_STORE])
    versions = {v.name: v for v in three_nodes.of_type(VERSION)}
    assert secret_value(versions[KEY_VERSION]) == api_tls_checks.key_pkcs8("kumo-test")
    assert secret_value(versions[CERT_VERSION]) == api_tls_checks.certificate_pem("kumo-test")
    assert versions[KEY_VERSION].inputs["secretId"] == f"{secrets[STORE + 'api-tls-key'].name}-id"
    assert versions[CERT_VERSION].inputs["secretId"] == f"{secrets[STORE + 'api-tls-cert'].name}-id"
    # One inline policy: GetSecretValue on exactly the deployment's secrets, by their ARNs.
    (statement,) = json.loads(three_nodes.one(ROLE_POLICY).inputs["policy"])["Statement"]
    assert statement["Action"] == ["secretsmanager:GetSecretValue"]
    arns = sorted(f"arn:aws:secretsmanager:placeholder:000000000000:secret:{s.name}-" for s in secrets.values())
    assert sorted(a[:a.rindex("-") + 1] for a in statement["Resource"]) == arns
    for vm in three_nodes.of_type(INSTANCE):
        files = {f["path"]: f["content"] for f in yaml.safe_load(user_data(vm))["write_files"]}
        listing = files["/etc/kumo-infra/secrets.list"].splitlines()
        assert f"aws:us-east-1:{STORE}api-tls-key\t/opt/kumomta/etc/secrets/api-tls-key" in listing
        assert f"aws:us-east-1:{STORE}api-tls-cert\t/opt/kumomta/etc/secrets/api-tls-cert" in listing


def test_api_output_names_the_hosts_and_the_certificate(three_nodes):
    api = three_nodes.outputs["api"]
    api_tls_checks.assert_api_output_names_hosts_and_certificate(api, three_nodes, "kumo-test")
    assert [e["url"] for e in api["endpoints"]] == [f"https://mta{i}.example.com:8443" for i in (1, 2, 3)]


def test_no_api_cidrs_no_api_tls_key_or_certificate():
    result = offline.run(program.run, {"kumo:deployment": deployment(nodes=2, dkim={"domains": ["example.com"]})},
                         stack="t")
    assert result.of_type(api_tls_checks.CERT) == []
    assert [k.name for k in result.of_type(api_tls_checks.KEY)] == ["kumo-test-dkim-example-com-kumo"]
    assert sorted(s.inputs["name"] for s in result.of_type(SECRET)) == sorted(
        [STORE + "dkim-example-com-kumo", *FLEET_STORES, NODE_FILES_STORE])
    assert not [s for s in result.of_type(SECRET) if "api-" in s.inputs["name"]]
    assert result.outputs["api"] is None

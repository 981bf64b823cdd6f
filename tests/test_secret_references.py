"""Every secret a deployment stores reaches the node: kumo-fetch-secret accepts each reference
secretspec renders into secrets.list and asks the right cloud for the store name the component uses.

A reference the fetcher refused would stop kumo-bootstrap at its secrets step after the full
KUMO_SECRET_WAIT_S; the API's TLS key and certificate (issue 8, point 6) are among them.
"""

from __future__ import annotations

import importlib.util

import pytest

from kumo_infra.bootstrap import FILES
from kumo_infra.config import parse_deployment
from kumo_infra.secretspec import API_TLS_CERT, API_TLS_KEY, reference, secret_specs, store_name
from kumo_infra.targets.azure import vault_name as azure_vault_name
from tests.conftest import deployment

RELAY = {"outbound": "relay", "relay": {"host": "smtp.example.net", "username": "kumo"}}
DEPLOYMENTS = {
    "aws": deployment(nodes=2, port25=RELAY),
    "azure": deployment(cloud="azure", region="westeurope", os="ubuntu22", nodes=2, port25=RELAY),
    "gcp": deployment(cloud="gcp", region="us-central1", nodes=2, gcp={"project": "my-project"}, port25=RELAY),
}


def fetcher():
    spec = importlib.util.spec_from_file_location("kumo_fetch_secret", FILES / "kumo-fetch-secret.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("cloud", sorted(DEPLOYMENTS))
def test_every_stored_secret_has_a_reference_the_fetcher_follows(cloud, monkeypatch):
    d = parse_deployment({**DEPLOYMENTS[cloud], "network": {"api_cidrs": ["198.51.100.0/24"]},
                          "dkim": {"domains": ["example.com"]}})
    specs = secret_specs(d)
    assert {API_TLS_KEY, API_TLS_CERT} <= {s.key for s in specs}
    module = fetcher()
    asked: list[tuple] = []
    for name in ("fetch_aws", "fetch_azure", "fetch_gcp"):
        monkeypatch.setattr(module, name, lambda *args, name=name: asked.append((name, *args)) or "value")
    for s in specs:
        assert module.fetch(reference(d, s)) == "value"
    where = {"aws": d.region, "azure": f"https://{azure_vault_name(d)}.vault.azure.net", "gcp": "my-project"}[cloud]
    assert asked == [(f"fetch_{cloud}", where, store_name(d, s)) for s in specs]

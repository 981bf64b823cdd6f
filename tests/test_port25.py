"""Outbound port 25: every mode x cloud x subscription type, and `kumo-infra port25`."""

from __future__ import annotations

import json

import pytest

from kumo_infra import planview
from kumo_infra.config import parse_deployment
from kumo_infra.errors import ConfigError
from kumo_infra.port25 import report
from kumo_infra.targets.aws import FORM as AWS_FORM
from kumo_infra.stackconfig import from_values, plan_for
from tests.conftest import STACKS, deployment
from tests.test_cli import assert_bad_input, kumo

RELAY = {"host": "smtp.relay.example.net", "port": 587, "username": "kumo"}
REGION = {"aws": "us-east-1", "azure": "westeurope", "gcp": "us-central1"}
AZURE_KINDS = ["ea", "mca-e", "dev-test", "pay-as-you-go", "csp", "msdn", "free", "other"]


def combos():
    for mode in ("auto", "direct", "relay"):
        for with_relay in (True, False):
            yield "aws", None, mode, with_relay
            yield "gcp", None, mode, with_relay
            for kind in AZURE_KINDS:
                yield "azure", kind, mode, with_relay


def expected(cloud, kind, mode, with_relay):
    """(allowed, resolved mode) from the clouds' published rules."""
    direct_ok = cloud == "aws" or (cloud == "azure" and kind in ("ea", "mca-e", "dev-test"))
    if mode == "direct":
        return (direct_ok, "direct")
    if mode == "relay":
        return (with_relay, "relay")
    return (direct_ok or with_relay, "direct" if direct_ok else "relay")


def raw(cloud, kind, mode, with_relay):
    port25 = {"outbound": mode, **({"relay": RELAY} if with_relay else {})}
    extra = {"azure": {"subscription_type": kind}, "os": "ubuntu22"} if cloud == "azure" else {}
    if cloud == "gcp":
        extra = {"gcp": {"project": "my-project"}}
    return deployment(cloud=cloud, region=REGION[cloud], port25=port25, **extra)


@pytest.mark.parametrize("cloud, kind, mode, with_relay", list(combos()))
def test_every_mode_cloud_and_subscription_type(cloud, kind, mode, with_relay):
    allowed, resolved = expected(cloud, kind, mode, with_relay)
    values = {"kumo:deployment": raw(cloud, kind, mode, with_relay)}
    if not allowed:
        with pytest.raises(ConfigError) as info:
            from_values("t", values)
        paths = {p.path for p in info.value.problems}
        assert paths & {"kumo:deployment.port25.outbound", "kumo:deployment.port25.relay"}
        assert any("relay" in p.message for p in info.value.problems)  # each names the fix
        return
    stack = from_values("t", values)
    assert stack.deployment.outbound_mode == resolved
    doc = planview.run_plan(stack)  # allowed ones plan, offline
    assert doc["outputs"]["port25"]["mode"] == resolved
    assert len(doc["outputs"]["nodes"]) == stack.plan.nodes


def test_relay_on_465_is_refused_with_the_reason():
    with pytest.raises(ConfigError, match="STARTTLS"):
        parse_deployment(deployment(port25={"outbound": "relay", "relay": {**RELAY, "port": 465}}))


def test_aws_report_prepares_the_removal_request():
    d = parse_deployment(deployment(nodes=2, dkim={"domains": ["example.com"]}))
    rep = report(d, plan_for(d), ["192.0.2.10", "192.0.2.11"])
    req = rep["request"]
    assert req["form"] == AWS_FORM and req["region"] == "us-east-1"
    assert req["reverse_dns"] == [{"elastic_ip": "192.0.2.10", "name": "mta1.example.com"},
                                  {"elastic_ip": "192.0.2.11", "name": "mta2.example.com"}]
    assert "example.com" in req["use_case"] and "100,000 messages per hour" in req["use_case"]
    assert rep["mode"] == "direct"


@pytest.mark.parametrize("stack", STACKS)
def test_port25_command_for_every_example_stack(stack):
    result = kumo("port25", "--stack", stack, "--json")
    assert result.returncode == 0, result.stderr
    rep = json.loads(result.stdout)
    assert rep["mode"] in ("direct", "relay") and rep["situation"] and rep["operator_must"]
    assert ("request" in rep) == (rep["cloud"] == "aws")
    table = kumo("port25", "--stack", stack)
    assert table.returncode == 0 and "you must:" in table.stdout


def test_port25_command_bad_input():
    assert_bad_input(kumo("port25", "--stack", "nope"), "--stack")
    assert_bad_input(kumo("port25"), "one of the arguments --stack --config is required")


@pytest.mark.parametrize("port", [587, 2525])
def test_relay_report_says_the_firewall_allows_only_the_relays_port(port):
    d = parse_deployment(deployment(port25={"outbound": "relay", "relay": {**RELAY, "port": port}}))
    does = report(d, plan_for(d))["kumo_infra_does"]
    assert (f"allows outbound mail in the firewall only to port {port} (no outbound 25: the probe reports blocked)"
            in does)
    assert "allows outbound 25 in the firewall" not in does


def test_direct_report_says_the_firewall_allows_outbound_25():
    d = parse_deployment(deployment(port25={"outbound": "direct"}))
    assert "allows outbound 25 in the firewall" in report(d, plan_for(d))["kumo_infra_does"]

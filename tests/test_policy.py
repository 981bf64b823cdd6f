"""The rendered init.lua run in a real Lua 5.4 interpreter against a test double of `kumo`.

tests/lua/kumo_double.lua follows KumoMTA's documented API (event names and
argument order, make_egress_path / make_queue_config keys, dkim signer fields);
tests/lua/run_policy.lua loads the policy, fires init and, for the 'message'
scenario, a received and a generated message, then reports everything as JSON.
"""

from __future__ import annotations

import pytest

from kumo_infra.bootstrap.policy import render_policy
from kumo_infra.config import parse_deployment
from kumo_infra.secretspec import RELAY_PASSWORD_PATH
from tests.conftest import deployment
from tests.test_bootstrap import run_policy

RELAY = {"outbound": "relay", "relay": {"host": "smtp.relay.example.net", "port": 2525, "username": "kumo-user"}}


def policy_result(tmp_path, **overrides) -> dict:
    d = parse_deployment(deployment(**overrides))
    return run_policy(render_policy(d, "mta.example.com"), tmp_path, "message")


def test_relay_mode_routes_every_message_through_the_smarthost(tmp_path):
    result = policy_result(tmp_path, port25=RELAY)
    for msg in (result["received"], result["generated"]):
        assert msg["meta"]["routing_domain"] == "smtp.relay.example.net"
    egress = result["egress"]
    assert egress["smtp_port"] == 2525 and egress["enable_tls"] == "Required"
    assert egress["smtp_auth_plain_username"] == "kumo-user"
    # A keysource file path: the password itself is never in the policy.
    assert egress["smtp_auth_plain_password"] == RELAY_PASSWORD_PATH
    assert result["queue"]["protocol"]["smtp"]["mx_list"] == ["smtp.relay.example.net"]
    assert "protocol" not in result["other_queue"]  # other routing domains keep MX resolution


def test_direct_mode_reroutes_nothing(tmp_path):
    result = policy_result(tmp_path, port25={"outbound": "direct"})
    assert not result["received"]["meta"] and not result["generated"]["meta"]  # (an empty Lua table)
    assert "get_egress_path_config" not in result["events"] and "get_queue_config" not in result["events"]
    assert "egress" not in result


def test_dkim_signs_last_with_the_domains_key(tmp_path):
    result = policy_result(tmp_path, port25=RELAY, dkim={"domains": ["example.com"], "selector": "s2026"})
    for msg in (result["received"], result["generated"]):
        assert msg["order"] == ["set_meta:routing_domain", "dkim_sign"]
        (signed,) = msg["signed"]
        signer = signed["signer"]
        assert (signer["domain"], signer["selector"]) == ("example.com", "s2026")
        assert signer["key"] == "/opt/kumomta/etc/dkim/example.com/s2026.key"
        assert "From" in signer["headers"]


def test_dkim_leaves_other_domains_unsigned(tmp_path):
    result = policy_result(tmp_path, port25={"outbound": "direct"}, dkim={"domains": ["other.org"]})
    assert not result["received"]["signed"] and not result["received"]["order"]


@pytest.mark.parametrize("port", [587, 2525])
def test_relay_port_reaches_the_egress_path(tmp_path, port):
    relay = {"outbound": "relay", "relay": {**RELAY["relay"], "port": port}}
    assert policy_result(tmp_path, port25=relay)["egress"]["smtp_port"] == port

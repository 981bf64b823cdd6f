"""The rendered init.lua run in a real Lua 5.4 interpreter against the strict `kumo` double.

tests/lua/kumo_double.lua is as strict as kumod for what the policy uses (its own tests are
tests/test_kumo_double.py): unknown or mistyped parameters raise, From headers are really
parsed and raise where KumoMTA raises, a second handler for a Single event raises.
"""

from __future__ import annotations

import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kumo_infra.bootstrap.policy import API_TLS_PORT, HTTP_PORT, lua_str, render_policy
from kumo_infra.config import parse_deployment
from kumo_infra.secretspec import (API_PASSWORD_PATH, API_TLS_CERT, API_TLS_CERT_PATH, API_TLS_KEY, API_TLS_KEY_PATH,
                                  API_USER, RELAY_PASSWORD_PATH, SECRETS_DIR, secret_specs)
from kumo_infra.stackconfig import load_file, stack_path
from tests.conftest import STACKS, deployment
from tests.policy_lua import calls, lua, node_root, run_lua, run_policy, write_file

RELAY = {"outbound": "relay", "relay": {"host": "smtp.relay.example.net", "port": 2525, "username": "kumo-user"}}
DKIM = {"domains": ["example.com"], "selector": "s2026"}
KEY_PATH = "/opt/kumomta/etc/dkim/example.com/s2026.key"
LOOPBACK = ["127.0.0.1", "::1"]


def render(**overrides) -> str:
    return render_policy(parse_deployment(deployment(**overrides)), "mta.example.com")


def with_dkim_key(tmp_path):
    root = tmp_path / "root"
    write_file(root, KEY_PATH, "-----BEGIN PRIVATE KEY----- example.com")
    return root


def messages(tmp_path, *froms, root=None, **overrides) -> dict:
    return run_policy(render(**overrides), tmp_path, "message", *froms, root=root)


@pytest.mark.parametrize("stack", STACKS)
def test_every_example_stacks_policy_runs_in_the_strict_double(tmp_path, stack):
    d = load_file(stack_path(stack)).deployment
    policy = render_policy(d, d.hostname)
    root = node_root(tmp_path / "root", d.hostname)
    result = run_policy(policy, tmp_path, "message", "news@example.com", "a@x.com, b@y.com", "<<<", "-", root=root)
    assert len(result["messages"]) == 4
    if d.network.api_cidrs:
        assert run_policy(policy, tmp_path, "auth", API_USER, "wrong", root=root)["auth"] == {"raised": False, "value": False}
    assert run_policy(policy, tmp_path, "delivery", root=root)["sources"][d.hostname]["ehlo_domain"] == d.hostname


# --- routing
def test_relay_mode_routes_every_message_through_the_smarthost(tmp_path):
    result = messages(tmp_path, port25=RELAY)
    (msg,) = result["messages"]
    for state in (msg["received"], msg["generated"]):
        assert state["meta"]["routing_domain"] == "smtp.relay.example.net"
    egress = result["egress"]
    assert egress["smtp_port"] == 2525 and egress["enable_tls"] == "Required"
    assert egress["smtp_auth_plain_username"] == "kumo-user"
    # A keysource file path: the password itself is never in the policy.
    assert egress["smtp_auth_plain_password"] == RELAY_PASSWORD_PATH
    assert result["queue"]["protocol"]["smtp"]["mx_list"] == ["smtp.relay.example.net"]
    assert "protocol" not in result["other_queue"]  # other routing domains keep MX resolution


def test_direct_mode_reroutes_nothing(tmp_path):
    result = messages(tmp_path, port25={"outbound": "direct"})
    (msg,) = result["messages"]
    assert not msg["received"]["meta"] and not msg["generated"]["meta"]  # (an empty Lua table)
    assert "egress" not in result
    # The queues keep MX resolution: only the pool is named.
    delivery = run_policy(render(port25={"outbound": "direct"}), tmp_path, "delivery", root=node_root(tmp_path / "r"))
    assert delivery["queues"]["gmail.com"] == {"egress_pool": "kumo-infra"}


@pytest.mark.parametrize("port", [587, 2525])
def test_relay_port_reaches_the_egress_path(tmp_path, port):
    relay = {"outbound": "relay", "relay": {**RELAY["relay"], "port": port}}
    assert messages(tmp_path, port25=relay)["egress"]["smtp_port"] == port


# --- DKIM
def test_dkim_signs_last_with_the_domains_key(tmp_path):
    result = messages(tmp_path, root=with_dkim_key(tmp_path), port25=RELAY, dkim=DKIM)
    (msg,) = result["messages"]
    for state in (msg["received"], msg["generated"]):
        assert state["order"] == ["set_meta:routing_domain", "dkim_sign"]
        (signed,) = state["signed"]
        assert (signed["signer"]["domain"], signed["signer"]["selector"]) == ("example.com", "s2026")
        assert signed["signer"]["key"] == KEY_PATH
        assert signed["key_data"] == "-----BEGIN PRIVATE KEY----- example.com"
        assert "From" in signed["signer"]["headers"]
    assert result["logs"] == []


@pytest.mark.parametrize("from_value", ["x@Example.COM", "News <NEWS@EXAMPLE.COM>"])
def test_dkim_domain_match_is_case_insensitive(tmp_path, from_value):
    result = messages(tmp_path, from_value, root=with_dkim_key(tmp_path), port25={"outbound": "direct"}, dkim=DKIM)
    for state in (result["messages"][0]["received"], result["messages"][0]["generated"]):
        (signed,) = state["signed"]
        assert signed["signer"]["domain"] == "example.com" and signed["signer"]["key"] == KEY_PATH


def test_dkim_leaves_other_domains_unsigned_without_a_word(tmp_path):
    result = messages(tmp_path, "news@other.org", root=with_dkim_key(tmp_path), port25={"outbound": "direct"},
                      dkim=DKIM)
    assert not result["messages"][0]["received"]["signed"] and not result["messages"][0]["received"]["order"]
    assert result["logs"] == []


# --- no mail refused for its headers (KumoMTA raises on these From headers; the handler must not)
HOSTILE_FROMS = {
    "several addresses": "a@x.com, b@example.com",
    "a group": "undisclosed-recipients:;",
    "garbage": "<<<",
    "no From header": "-",
}


@pytest.mark.parametrize("mode", [RELAY, {"outbound": "direct"}], ids=["relay", "direct"])
@pytest.mark.parametrize("case", HOSTILE_FROMS)
def test_unusable_from_header_is_accepted_and_sent_unsigned_with_a_log_line(tmp_path, case, mode):
    result = messages(tmp_path, HOSTILE_FROMS[case], root=with_dkim_key(tmp_path), port25=mode, dkim=DKIM)
    (msg,) = result["messages"]  # the handlers returned: KumoMTA accepts the message
    for state in (msg["received"], msg["generated"]):
        assert state["signed"] == []
        if mode is RELAY:
            assert state["meta"]["routing_domain"] == "smtp.relay.example.net"  # still routed
        (line,) = [log for log in result["logs"] if state["id"] in log["message"]]
        assert line["level"] == "warn" and "sent unsigned" in line["message"]


def test_a_signer_that_cannot_be_built_leaves_the_message_unsigned_with_an_error_line(tmp_path):
    # No key file under the scratch root: kumo.dkim.rsa_sha256_signer raises, as kumod does.
    result = messages(tmp_path, root=tmp_path / "empty", port25=RELAY, dkim=DKIM)
    (msg,) = result["messages"]
    assert msg["received"]["signed"] == [] and msg["received"]["meta"]["routing_domain"]
    assert [log["level"] for log in result["logs"]] == ["error", "error"]
    assert KEY_PATH in result["logs"][0]["message"]


def test_without_dkim_domains_headers_are_never_read(tmp_path):
    result = messages(tmp_path, "<<<", port25=RELAY)
    assert result["messages"][0]["received"]["meta"]["routing_domain"] == "smtp.relay.example.net"
    assert result["logs"] == []


def test_the_unprotected_header_access_main_had_is_refused_by_the_double(tmp_path):
    # The double would have shown the 421 loop: main's sign() read from_header().domain bare.
    policy = render(port25=RELAY, dkim=DKIM).replace("pcall(from_domain, msg)", "true, from_domain(msg)")
    assert "is not a simple single address" in run_lua(policy, tmp_path, "message", "a@x.com, b@y.com").stderr


# --- listeners
def test_submission_listeners_share_port_25s_relay_rules(tmp_path):
    result = run_policy(render(kumomta={"relay_cidrs": ["10.1.0.0/16"]}, network={"submission_ports": [587, 2525]}),
                        tmp_path)
    listeners = calls(result, "start_esmtp_listener")
    assert [x["listen"] for x in listeners] == ["0.0.0.0:25", "0.0.0.0:587", "0.0.0.0:2525"]
    assert all(x["relay_hosts"] == [*LOOPBACK, "10.1.0.0/16"] for x in listeners)
    assert all(x["hostname"] == "mta.example.com" for x in listeners)


# --- the HTTP API
def test_without_api_cidrs_the_api_is_loopback_only_and_has_no_auth(tmp_path):
    result = run_policy(render(), tmp_path)
    assert calls(result, "start_http_listener") == [{"listen": f"127.0.0.1:{HTTP_PORT}", "trusted_hosts": LOOPBACK}]
    assert "http_server_validate_auth_basic" not in result["events"]


@pytest.mark.parametrize("network", [{"api_cidrs": ["198.51.100.0/24"]},
                                     {"admin_cidrs": ["198.51.100.0/24"]},
                                     {"ssh_cidrs": ["203.0.113.0/24"], "api_cidrs": ["198.51.100.0/24"]}])
def test_api_cidrs_add_a_tls_listener_and_trust_stays_loopback(tmp_path, network):
    result = run_policy(render(network=network), tmp_path)
    assert calls(result, "start_http_listener") == [
        {"listen": f"127.0.0.1:{HTTP_PORT}", "trusted_hosts": LOOPBACK},
        {"listen": f"0.0.0.0:{API_TLS_PORT}", "hostname": "mta.example.com", "use_tls": True,
         "tls_certificate": API_TLS_CERT_PATH, "tls_private_key": API_TLS_KEY_PATH, "trusted_hosts": LOOPBACK},
    ]
    assert "http_server_validate_auth_basic" in result["events"]


def test_api_listener_serves_the_generated_certificate_and_only_it_names_tls_files(tmp_path):
    d = parse_deployment(deployment(network={"api_cidrs": ["198.51.100.0/24"], "submission_ports": [587]}))
    result = run_policy(render_policy(d, "mta.example.com"), tmp_path)
    listeners = calls(result, "start_http_listener") + calls(result, "start_esmtp_listener")
    with_tls_files = [x for x in listeners if {"tls_certificate", "tls_private_key"} & set(x)]
    assert [x["listen"] for x in with_tls_files] == [f"0.0.0.0:{API_TLS_PORT}"]
    (api,) = with_tls_files
    # Plain strings: KeySource file paths, the very files kumo-bootstrap fetches the generated
    # key and certificate into (secrets.list lines of the api-tls-* specs).
    fetched = {s.key: s.machine_path for s in secret_specs(d)}
    assert api["tls_certificate"] == fetched[API_TLS_CERT] == API_TLS_CERT_PATH
    assert api["tls_private_key"] == fetched[API_TLS_KEY] == API_TLS_KEY_PATH
    assert api["use_tls"] is True
    assert API_TLS_KEY_PATH.startswith(f"{SECRETS_DIR}/") and API_TLS_CERT_PATH.startswith(f"{SECRETS_DIR}/")


def test_without_api_cidrs_no_tls_files_are_named_or_fetched(tmp_path):
    d = parse_deployment(deployment(network={"ssh_cidrs": ["203.0.113.0/24"]}))
    policy = render_policy(d, "mta.example.com")
    assert "tls_certificate" not in policy and "tls_private_key" not in policy
    assert not {API_TLS_KEY, API_TLS_CERT} & {s.key for s in secret_specs(d)}


def test_ssh_cidrs_alone_open_no_api(tmp_path):
    result = run_policy(render(network={"ssh_cidrs": ["203.0.113.0/24"]}), tmp_path)
    assert [x["listen"] for x in calls(result, "start_http_listener")] == [f"127.0.0.1:{HTTP_PORT}"]
    assert "http_server_validate_auth_basic" not in result["events"]


API_PASSWORD = "Zq7-generated-password-9f"


def auth(tmp_path, *credentials, password_file: str | None = API_PASSWORD) -> dict:
    root = tmp_path / "root"
    root.mkdir(exist_ok=True)
    if password_file is not None:
        write_file(root, API_PASSWORD_PATH, password_file)
    policy = render(network={"api_cidrs": ["198.51.100.0/24"]})
    return run_policy(policy, tmp_path, "auth", *credentials, root=root)


def test_api_auth_accepts_the_api_user_with_the_password_from_its_file(tmp_path):
    result = auth(tmp_path, API_USER, API_PASSWORD)
    assert result["auth"] == {"raised": False, "value": True}


def test_api_auth_accepts_a_password_file_ending_in_a_newline(tmp_path):
    assert auth(tmp_path, API_USER, API_PASSWORD, password_file=API_PASSWORD + "\n")["auth"]["value"] is True


@pytest.mark.parametrize("credentials", [
    (API_USER, API_PASSWORD + "x"),  # wrong password
    (API_USER, API_PASSWORD[:-1]),  # a prefix of it
    (API_USER, API_PASSWORD.upper()),
    ("admin", API_PASSWORD),  # wrong user
    (API_USER.upper(), API_PASSWORD),
    (API_USER, ""),  # empty password
    (API_USER,),  # user name only: KumoMTA passes nil
], ids=["wrong-password", "prefix", "case", "wrong-user", "user-case", "empty-password", "no-password"])
def test_api_auth_refuses_wrong_credentials(tmp_path, credentials):
    assert auth(tmp_path, *credentials)["auth"] == {"raised": False, "value": False}


@pytest.mark.parametrize("password_file", [None, "", "\n"], ids=["missing", "empty", "newline-only"])
def test_api_auth_refuses_without_a_usable_password_file_and_does_not_raise(tmp_path, password_file):
    result = auth(tmp_path, API_USER, "", password_file=password_file)
    assert result["auth"] == {"raised": False, "value": False}
    result = auth(tmp_path, API_USER, API_PASSWORD, password_file=password_file)
    assert result["auth"] == {"raised": False, "value": False}
    if password_file is None:
        (line,) = result["logs"]
        assert line["level"] == "error" and API_PASSWORD_PATH in line["message"]


# --- values reach Lua byte-identical (lua_str)
HOSTILE_USERNAME = "o'k\\\"]]--[[\\\\x'\\"


def test_relay_username_with_quotes_and_backslashes_comes_back_unchanged(tmp_path):
    d = parse_deployment(deployment(port25=RELAY))
    # Whatever the config lets through, lua_str must carry; this does not depend on its rule.
    relay = d.port25.relay.model_copy(update={"username": HOSTILE_USERNAME})
    d = d.model_copy(update={"port25": d.port25.model_copy(update={"relay": relay})})
    result = run_policy(render_policy(d, "mta.example.com"), tmp_path, "message")
    assert result["egress"]["smtp_auth_plain_username"] == HOSTILE_USERNAME


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=st.characters(min_codepoint=32, exclude_categories=("Cs",)), max_size=40))
def test_lua_str_round_trips_any_text_without_control_characters(tmp_path_factory, value):
    script = tmp_path_factory.mktemp("lua") / "echo.lua"
    script.write_text(f"io.write({lua_str(value)})\n", encoding="utf-8")
    out = subprocess.run([lua(), str(script)], capture_output=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout == value.encode("utf-8")


@pytest.mark.parametrize("value", ["a\nb", "a\rb", "a\0b", "\x1b[0m"])
def test_lua_str_refuses_control_characters(value):
    with pytest.raises(ValueError, match="control character"):
        lua_str(value)

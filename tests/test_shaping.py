"""Traffic shaping, TSA, sources, bounce classification, Redis throttles, the drain marker and the
API user's ACL: the rendered policy, tsa_init.lua and shaping_custom.toml, run in Lua 5.4 against
the strict double (tests/lua/) or parsed (tomllib), never compared as whole text.
"""

from __future__ import annotations

import subprocess
import tomllib

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from kumo_infra.bootstrap import FILES, PER_NODE_FILES, node_files
from kumo_infra.bootstrap.policy import (API_USER_GRANTS, BOUNCE_RULES, EGRESS_POOL, PEER_XFER_PATH,
                                         SHAPING_COMMUNITY_RULES, SHAPING_CUSTOM_PATH, SHAPING_DEFAULT_RULES,
                                         SOURCE_ADDRESS_PATH, TSA_INIT_PATH, XFER_CONNECTION_LIMIT, render_policy,
                                         render_shaping_custom, render_tsa_init, shaping_files, toml_str)
from kumo_infra.config import SHAPING_LIMITS, parse_deployment
from kumo_infra.drain import xfer_queue_name
from kumo_infra.fleet import DRAIN_SUSPENSION_DOMAIN, FLEET_PEERS_PATH, REDIS_URL_PATH, xfer_target_url
from kumo_infra.ports import API_TLS_PORT, HTTP_PORT, TSA_PORT
from kumo_infra.secretspec import API_USER
from kumo_infra.stackconfig import plan_for
from tests.conftest import deployment
from tests.policy_lua import REDIS_URL, calls, node_root, refused, run_lua, run_policy

HOST = "mta.example.com"
PEERS = ["10.0.0.5", "10.0.0.6", "fd00::7"]
RELAY = {"outbound": "relay", "relay": {"host": "smtp.relay.example.net", "port": 2525, "username": "kumo-user"}}
OVERRIDES = [
    {"domain": "gmail.com", "connection_limit": 5, "max_message_rate": "20/s"},
    {"provider": "yahoo", "max_connection_rate": "10/min", "max_deliveries_per_connection": 50},
]


def d_of(**overrides):
    return parse_deployment(deployment(**overrides))


def run(tmp_path, d, *scenario, peers=PEERS, daemon="kumod", policy=None):
    root = node_root(tmp_path / "root", HOST, peers=peers)
    text = policy if policy is not None else (render_tsa_init(d) if daemon == "tsa" else render_policy(d, HOST))
    return run_policy(text, tmp_path, *scenario, root=root, daemon=daemon)


# --- shaping: the file list, the same in kumod and the TSA daemon
def test_shaping_files_are_kumomtas_rules_then_the_community_rules_then_the_overrides():
    assert shaping_files(d_of()) == (SHAPING_DEFAULT_RULES, SHAPING_COMMUNITY_RULES, SHAPING_CUSTOM_PATH)
    assert shaping_files(d_of(shaping={"community_rules": False})) == (SHAPING_DEFAULT_RULES, SHAPING_CUSTOM_PATH)


@pytest.mark.parametrize("nodes", [1, 3])
@pytest.mark.parametrize("community", [True, False])
def test_kumod_and_the_tsa_daemon_load_the_same_shaping_files(tmp_path, nodes, community):
    d = d_of(nodes=nodes, shaping={"community_rules": community})
    shaper = run(tmp_path, d, "delivery")["shaping_setup"]  # what setup_with_automation computed
    tsa = run(tmp_path, d, "tsa_shaping", daemon="tsa")
    (tsa_files,) = calls(tsa, "shaping.load")
    # kumod adds the local TSA's generated rules (shaping.lua: one per subscribed URL).
    assert shaper["file_names"] == [*tsa_files, f"http://127.0.0.1:{TSA_PORT}/get_config_v1/shaping.toml"]
    assert tsa_files == list(shaping_files(d))


# --- the overrides reach shaping_custom.toml
def test_overrides_reach_shaping_custom_toml_as_domain_and_provider_sections():
    data = tomllib.loads(render_shaping_custom(d_of(shaping={"overrides": OVERRIDES})))
    assert data == {
        "gmail.com": {"connection_limit": 5, "max_message_rate": "20/s"},
        "provider": {"yahoo": {"max_connection_rate": "10/min", "max_deliveries_per_connection": 50}},
    }


def test_a_provider_override_names_no_match_so_kumomtas_provider_keeps_its_own():
    # ProviderEntry.matches is appended on merge (shaping.rs merge_from): an empty list adds nothing.
    data = tomllib.loads(render_shaping_custom(d_of(shaping={"overrides": OVERRIDES})))
    assert "match" not in data["provider"]["yahoo"] and "replace_base" not in data["provider"]["yahoo"]


def test_without_overrides_shaping_custom_toml_is_an_empty_document():
    assert tomllib.loads(render_shaping_custom(d_of())) == {}


@settings(max_examples=200, deadline=None)
@given(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x7f",
                             min_codepoint=32), max_size=80))
def test_toml_strings_round_trip_through_a_real_toml_parser(value):
    assume(value != "provider")  # the provider table's own name, never a domain (a hostname has a dot)
    assert tomllib.loads(f"k = {toml_str(value)}\n") == {"k": value}
    assert tomllib.loads(f"[{toml_str(value)}]\nx = 1\n[provider.{toml_str(value)}]\ny = 2\n") == {
        value: {"x": 1}, "provider": {value: {"y": 2}}}


@pytest.mark.parametrize("value", ["a\nb", "\x00", "\x1b[2J", "x\x7f"])
def test_toml_str_refuses_control_characters(value):
    with pytest.raises(ValueError):
        toml_str(value)


def test_every_valid_limit_kind_reaches_the_toml_with_its_type():
    override = {"domain": "example.org", **{k: v for k, v in zip(SHAPING_LIMITS, (7, "5/h", "9/d", 11))}}
    (section,) = tomllib.loads(render_shaping_custom(d_of(shaping={"overrides": [override]}))).values()
    assert section == {k: override[k] for k in SHAPING_LIMITS}


# --- the policy: shaping bound, composed with the relay, sources, classifier
def test_the_shaper_is_set_up_once_with_tsa_and_binds_the_egress_paths(tmp_path):
    result = run(tmp_path, d_of(), "delivery")
    opts = result["shaping_setup"]["options"]
    assert opts["publish"] == [f"http://127.0.0.1:{TSA_PORT}"] and opts["subscribe"] == [f"http://127.0.0.1:{TSA_PORT}"]
    assert opts["no_default_files"] is True
    # The shipped "default" section (the double's shaping data) reaches gmail.com's path.
    assert result["egress"]["gmail.com"]["connection_limit"] == 10
    assert result["egress"]["gmail.com"]["refresh_strategy"] == "Epoch"
    # setup_publish ran in init: one log hook per TSA, the subscriber and the config monitor.
    assert [h["name"] for h in calls(result, "configure_log_hook")] == [f"http://127.0.0.1:{TSA_PORT}.tsa.kumomta"]
    assert {t["event_name"] for t in calls(result, "spawn_task")} == {"kumo.tsa.suspension.subscriber",
                                                                      "kumo.tsa.config.monitor"}


@pytest.mark.parametrize("nodes, hook_count", [(1, 1), (3, len(PEERS))])
def test_the_tsa_hook_queues_keep_shapings_queue_config_and_get_the_shipped_limits(tmp_path, nodes, hook_count):
    # KumoMTA's rules for its local TSA hook (assets/policy-extras/shaping.toml:232-242), for
    # every TSA daemon, whatever the shaper's default section says.
    result = run(tmp_path, d_of(nodes=nodes), "delivery")
    hooks = [h for h in result["queues"] if h.endswith(".tsa.kumomta")]
    assert len(hooks) == hook_count
    for hook in hooks:
        assert result["queues"][hook]["protocol"] == {"custom_lua": {"constructor": f"make.{hook}"}}
        assert "egress_pool" not in result["queues"][hook]
        assert result["egress"][hook] == {"connection_limit": "local:5", "max_deliveries_per_connection": 8192,
                                          "max_ready": 10000, "system_shutdown_timeout": "30s"}


def test_relay_mode_still_routes_through_the_smarthost_with_the_shapers_limits(tmp_path):
    result = run(tmp_path, d_of(port25=RELAY), "delivery", "smtp.relay.example.net")
    queue = result["queues"]["smtp.relay.example.net"]
    assert queue["protocol"]["smtp"]["mx_list"] == ["smtp.relay.example.net"] and queue["egress_pool"] == EGRESS_POOL
    egress = result["egress"]["smtp.relay.example.net"]
    assert egress["smtp_port"] == 2525 and egress["enable_tls"] == "Required"
    assert egress["smtp_auth_plain_username"] == "kumo-user"
    assert egress["connection_limit"] == 10  # the shaper's, for the smarthost too
    messages = run(tmp_path, d_of(port25=RELAY), "message")["messages"]
    assert messages[0]["received"]["meta"]["routing_domain"] == "smtp.relay.example.net"


def test_a_second_get_egress_path_config_handler_is_refused_as_kumod_refuses_it(tmp_path):
    policy = render_policy(d_of(), HOST) + "\nkumo.on('get_egress_path_config', function() end)\n"
    err = refused(policy, tmp_path, root=node_root(tmp_path / "root", HOST))
    assert "get_egress_path_config event already has a handler" in err


def test_all_mail_uses_the_nodes_one_source_with_its_hostname_and_address(tmp_path):
    result = run(tmp_path, d_of(), "delivery")
    assert result["queues"]["gmail.com"] == {"egress_pool": EGRESS_POOL}
    assert result["pool"] == {"name": EGRESS_POOL, "entries": [{"name": HOST, "weight": 1}]}
    assert result["sources"][HOST] == {"name": HOST, "ehlo_domain": HOST, "source_address": "10.0.0.5"}
    assert result["sources_files"][-1] == SOURCE_ADDRESS_PATH


def test_a_source_address_that_is_no_ip_is_refused_by_make_egress_source(tmp_path):
    root = node_root(tmp_path / "root", HOST, address="10.0.0.5; rm -rf /")
    run_ = run_lua(render_policy(d_of(), HOST), tmp_path, "delivery", root=root)
    assert run_.returncode != 0 and "invalid IP address syntax" in run_.stderr


def test_bounces_are_classified_by_the_rules_kumomta_ships(tmp_path):
    result = run(tmp_path, d_of())
    assert calls(result, "configure_bounce_classifier") == [{"files": list(BOUNCE_RULES)}]


# --- one node versus a fleet
def test_one_node_has_no_redis_no_peers_and_listens_on_loopback(tmp_path):
    d = d_of()
    result = run(tmp_path, d, peers=[])
    assert calls(result, "configure_redis_throttles") == []
    assert REDIS_URL_PATH not in render_policy(d, HOST) and FLEET_PEERS_PATH not in render_policy(d, HOST)
    (http,) = calls(result, "start_http_listener")
    assert http == {"listen": f"127.0.0.1:{HTTP_PORT}", "trusted_hosts": ["127.0.0.1", "::1"]}
    (tsa,) = calls(run(tmp_path, d, daemon="tsa"), "tsa.start_http_listener")
    assert tsa == {"listen": f"127.0.0.1:{TSA_PORT}", "trusted_hosts": ["127.0.0.1", "::1"]}


def test_a_fleet_shares_throttles_in_redis_and_publishes_to_every_peers_tsa(tmp_path):
    d = d_of(nodes=3)
    result = run(tmp_path, d, "delivery")
    assert calls(result, "configure_redis_throttles") == [{"node": REDIS_URL}]  # the newline stripped
    assert result["shaping_setup"]["options"]["publish"] == [
        "http://10.0.0.5:8008", "http://10.0.0.6:8008", "http://[fd00::7]:8008"]
    assert result["shaping_setup"]["options"]["subscribe"] == [f"http://127.0.0.1:{TSA_PORT}"]
    (tsa,) = calls(run(tmp_path, d, daemon="tsa"), "tsa.start_http_listener")
    assert tsa == {"listen": f"0.0.0.0:{TSA_PORT}", "trusted_hosts": ["127.0.0.1", "::1", *PEERS]}


def test_a_fleet_without_its_peer_list_does_not_load(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    assert "fleet-peers.json" in refused(render_policy(d_of(nodes=2), HOST), tmp_path, root=root)


def test_the_api_listener_keeps_trusting_loopback_only_in_a_fleet(tmp_path):
    result = run(tmp_path, d_of(nodes=2, network={"api_cidrs": ["198.51.100.0/24"]}))
    api = [x for x in calls(result, "start_http_listener") if x.get("use_tls")]
    assert [x["trusted_hosts"] for x in api] == [["127.0.0.1", "::1"]]


def test_tsa_init_runs_only_as_the_tsa_daemons_policy(tmp_path):
    err = refused(render_tsa_init(d_of()), tmp_path, root=node_root(tmp_path / "root", HOST))
    assert "never raised by kumod" in err or "module 'tsa' not found" in err


# --- the drain marker
ACCEPTED = {"smtp": "accepted", "data": "accepted", "http": "accepted", "generated": "accepted"}
DRAIN_REPLY = f"4.3.2 {HOST} is being drained: try another node or later"


@pytest.mark.parametrize("nodes", [1, 2])
def test_new_mail_is_refused_while_the_drain_suspension_exists(tmp_path, nodes):
    drain = run(tmp_path, d_of(nodes=nodes), "drain")["drain"]
    assert drain["before"] == ACCEPTED
    marked = drain["marked"]
    assert marked["smtp"]["code"] == 421 and marked["smtp"]["error"].endswith(f"421 {DRAIN_REPLY}")
    assert marked["data"]["code"] == 451 and marked["data"]["error"].endswith(f"451 {DRAIN_REPLY}")
    assert marked["http"]["status"] == 500 and "is being drained" in marked["http"]["error"]
    # Memoized: the marker reaches new sessions once the cached list expires, not per message.
    assert drain["marked_cached"] == ACCEPTED
    assert drain["unmarked"] == ACCEPTED


def test_a_session_past_mail_from_when_the_drain_begins_gets_451_at_data(tmp_path):
    # kumod answers the DATA with the reject's code for the whole transaction and spools nothing
    # (crates/kumod/src/smtp_server.rs, the smtp_server_message_received call); 451 is temporary.
    late = run(tmp_path, d_of(), "drain")["drain"]["late_data"]
    assert late["mail_from"] == "accepted"
    assert late["data"]["code"] == 451 and late["data"]["error"].endswith(f"451 {DRAIN_REPLY}")


@pytest.mark.parametrize("nodes", [1, 2])
def test_http_message_generated_never_refuses_accepted_mail_while_draining(tmp_path, nodes):
    # With deferred_generation the client already has its 200 when the messages are generated
    # (crates/kumod/src/http_server/inject_v1.rs queue_deferred): a refusal there drops them.
    drain = run(tmp_path, d_of(nodes=nodes, port25=RELAY), "drain")["drain"]
    assert drain["marked"]["generated"] == "accepted"


def test_another_suspension_does_not_stop_the_node_accepting_mail(tmp_path):
    drain = run(tmp_path, d_of(), "drain", "gmail.com")["drain"]
    assert drain["marked"] == ACCEPTED and drain["late_data"]["data"] == "accepted"


def test_the_drain_check_is_memoized_under_a_user_cache_name(tmp_path):
    (memo,) = [m for m in calls(run(tmp_path, d_of()), "memoize") if "drain" in m["name"]]
    assert memo["name"].startswith("user.") and memo["ttl"] == "3 seconds"
    assert DRAIN_SUSPENSION_DOMAIN in render_policy(d_of(), HOST)


# --- HTTP access: the API user, the fleet's peers, a drained node
LISTEN = f"0.0.0.0:{API_TLS_PORT}"
FLEET_HTTP = f"0.0.0.0:{HTTP_PORT}"
API = {"api_cidrs": ["198.51.100.0/24"]}


def decisions(tmp_path, *checks, d=None, scenario="acl"):
    return run(tmp_path, d or d_of(network=API), scenario, *checks)["acl"]


def acl(tmp_path, *checks, d=None, scenario="acl"):
    return [a["access"] for a in decisions(tmp_path, *checks, d=d, scenario=scenario)]


def test_the_api_user_may_do_exactly_what_drain_needs_on_the_tls_listener(tmp_path):
    granted = [f"{LISTEN}|{path}|{method}|{API_USER}|0" for path, methods in API_USER_GRANTS.items()
               for method in methods]
    assert acl(tmp_path, *granted) == ["Allow"] * len(granted)
    assert acl(tmp_path, f"{LISTEN}|/api/check-liveness/v1|GET|{API_USER}|0") == ["Allow"]  # KumoMTA's default
    assert acl(tmp_path, f"{LISTEN}|/api/inject/v1|POST|{API_USER}|0") == ["Allow"]  # KumoMTA's default


@pytest.mark.parametrize("check", [
    f"{LISTEN}|/api/admin/bounce/v1|POST|{API_USER}|0",
    f"{LISTEN}|/api/admin/rebind/v1|POST|{API_USER}|0",
    f"{LISTEN}|/api/admin/suspend-ready-q/v1|POST|{API_USER}|0",
    f"{LISTEN}|/api/admin/xfer/v1|GET|{API_USER}|0",
    f"{LISTEN}|/api/admin/xfer/v1|DELETE|{API_USER}|0",
    f"{LISTEN}|/metrics|GET|{API_USER}|0",
    f"{LISTEN}|/api/machine-info|GET|{API_USER}|0",
    f"{LISTEN}|/api/admin/suspend/v1|PUT|{API_USER}|0",
    f"{LISTEN}|/api/admin/suspend/v1|GET|someone-else|0",
    f"{LISTEN}|/api/admin/suspend/v1|GET|-|0",
    f"127.0.0.1:{HTTP_PORT}|/api/admin/suspend/v1|GET|{API_USER}|0",  # another listener
])
def test_the_api_user_gets_nothing_more(tmp_path, check):
    assert acl(tmp_path, check) == ["DenyByDefault"]


def test_trusted_hosts_keep_kumomtas_default_admin_rights(tmp_path):
    checks = [f"127.0.0.1:{HTTP_PORT}|/api/admin/suspend/v1|POST|-|1", f"127.0.0.1:{HTTP_PORT}|/metrics.json|GET|-|1",
              f"{LISTEN}|/metrics.json|GET|-|1", f"{FLEET_HTTP}|/api/xfer/inject/v1|POST|-|1"]
    assert acl(tmp_path, *checks) == ["Allow"] * 4


def test_without_api_cidrs_the_api_user_has_no_grant(tmp_path):
    assert acl(tmp_path, f"{LISTEN}|/api/admin/suspend/v1|GET|{API_USER}|0", d=d_of()) == ["DenyByDefault"]


@pytest.mark.parametrize("network", [{}, API])
def test_a_fleets_http_listener_trusts_loopback_only(tmp_path, network):
    # A trusted host gets all of /api/admin (bounce, suspend, ...: assets/acls/default.toml).
    (http,) = [x for x in calls(run(tmp_path, d_of(nodes=3, network=network)), "start_http_listener")
               if x["listen"] == FLEET_HTTP]
    assert http["trusted_hosts"] == ["127.0.0.1", "::1"]


@pytest.mark.parametrize("peer", PEERS)
def test_a_peer_may_post_transferred_messages_and_nothing_else(tmp_path, peer):
    d = d_of(nodes=3, network=API)
    # '?': trusted or not as the policy's own listener decides.
    assert acl(tmp_path, f"{FLEET_HTTP}|{PEER_XFER_PATH}|POST|-|?|{peer}", d=d) == ["Allow"]
    refused = [f"{FLEET_HTTP}|{path}|{method}|-|?|{peer}" for method, path in [
        ("POST", "/api/admin/bounce/v1"), ("POST", "/api/admin/suspend/v1"), ("GET", "/api/admin/suspend/v1"),
        ("POST", "/api/admin/xfer/v1"), ("POST", "/api/admin/rebind/v1"), ("GET", "/metrics.json"),
        ("GET", "/metrics"), ("GET", "/api/machine-info"), ("POST", "/api/inject/v1"), ("GET", PEER_XFER_PATH)]]
    refused.append(f"{LISTEN}|{PEER_XFER_PATH}|POST|-|?|{peer}")  # not on the API listener either
    assert acl(tmp_path, *refused, d=d) == ["DenyByDefault"] * len(refused)


@pytest.mark.parametrize("machine", ["10.0.0.7", "198.51.100.7", "fd00::8", "10.0.0.0"])
def test_a_machine_outside_the_fleet_may_not_transfer_messages_in(tmp_path, machine):
    assert acl(tmp_path, f"{FLEET_HTTP}|{PEER_XFER_PATH}|POST|-|?|{machine}", d=d_of(nodes=3)) == ["DenyByDefault"]


def test_loopback_keeps_kumomtas_default_rights_on_the_fleets_listener(tmp_path):
    checks = [f"{FLEET_HTTP}|{PEER_XFER_PATH}|POST|-|?|127.0.0.1", f"{FLEET_HTTP}|/api/admin/suspend/v1|POST|-|?|::1"]
    assert acl(tmp_path, *checks, d=d_of(nodes=3)) == ["Allow", "Allow"]


def test_one_node_grants_no_machine_anything(tmp_path):
    one = f"127.0.0.1:{HTTP_PORT}"
    checks = [f"{one}|{PEER_XFER_PATH}|POST|-|?|10.0.0.6", f"{one}|/api/admin/suspend/v1|GET|-|?|10.0.0.6"]
    assert acl(tmp_path, *checks, d=d_of()) == ["DenyByDefault"] * 2


@pytest.mark.parametrize("nodes", [1, 3])
def test_while_draining_every_http_injection_fails_its_acl_check_and_nothing_else_does(tmp_path, nodes):
    # The error fails the check before the request is accepted: kumod answers 500 "try again
    # later" (crates/kumo-server-common/src/http_server/auth.rs auth_middleware).
    http = FLEET_HTTP if nodes > 1 else f"127.0.0.1:{HTTP_PORT}"
    checks = [f"{LISTEN}|/api/inject/v1|POST|{API_USER}|0", f"{http}|/api/inject/v1|POST|-|1",
              f"{http}|/api/inject/v1/x|POST|-|1",
              # what kumo-infra drain needs meanwhile, and the peers' transfers
              f"{LISTEN}|/api/admin/suspend/v1|DELETE|{API_USER}|0", f"{LISTEN}|/metrics.json|GET|{API_USER}|0",
              f"{LISTEN}|/api/admin/xfer/cancel/v1|POST|{API_USER}|0", f"{http}|/api/xfer/inject/v1|POST|-|1",
              f"{LISTEN}|/api/check-liveness/v1|GET|-|0", f"{http}|/api/injection|POST|-|1"]
    answers = decisions(tmp_path, *checks, d=d_of(nodes=nodes, network=API), scenario="acl_draining")
    assert [a["access"] for a in answers] == ["Error"] * 3 + ["Allow"] * 5 + ["DenyByDefault"]
    assert {a["status"] for a in answers[:3]} == {500}
    # Not draining: the same injections are allowed.
    assert acl(tmp_path, *checks[:3], d=d_of(nodes=nodes, network=API)) == ["Allow"] * 3


# --- xfer: to the fleet's nodes only, without the shaper's limits
SUFFIX = ".xfer.kumomta.internal"  # crates/kumo-api-types/src/xfer.rs XFER_QUEUE_SUFFIX


def routing_domain(queue: str) -> str:
    """The routing domain kumod passes get_egress_path_config for a queue without MX: the queue
    name as crates/message/src/queue_name.rs parse splits it (after '@', then after '!')."""
    domain = queue.split("@", 1)[1] if "@" in queue else queue
    return domain.split("!", 1)[1] if "!" in domain else domain


def egress(tmp_path, d, *queues):
    domains = [routing_domain(q) for q in queues]
    result = run(tmp_path, d, "egress", *domains)["egress"]
    return [result[domain] for domain in domains]


def peer_queue(ip: str) -> str:
    """The xfer queue kumod fills for `kumo-infra drain --to` a peer (drain's own computation)."""
    return xfer_queue_name(xfer_target_url(ip))


@pytest.mark.parametrize("port25", [None, RELAY])
def test_an_xfer_to_a_peer_gets_a_per_node_connection_limit_and_none_of_the_shapers_limits(tmp_path, port25):
    d = d_of(nodes=3, **({"port25": port25} if port25 else {}))
    paths = egress(tmp_path, d, *(peer_queue(peer) for peer in PEERS))
    # The shaper's default (100/s, 10 connections, Redis-shared in a fleet) would cap a drain.
    assert paths == [{"connection_limit": XFER_CONNECTION_LIMIT}] * len(PEERS)
    assert XFER_CONNECTION_LIMIT.startswith("local:")


# Queue names as kumod makes them from an xfer target (the URL as the url crate prints it).
@pytest.mark.parametrize("queue", [
    "http://198.51.100.9:8000/" + SUFFIX,  # not a node of the fleet
    "http://127.0.0.1:8000/" + SUFFIX,  # this node's loopback
    "https://10.0.0.6:8000/" + SUFFIX,  # a peer, but not its xfer listener
    "http://10.0.0.6:8001/" + SUFFIX,
    "http://10.0.0.6:8000/elsewhere" + SUFFIX,
    "http://user@10.0.0.6:8000/" + SUFFIX,  # kumod's routing domain is what follows the '@'
    "http://10.0.0.6:8000/!x" + SUFFIX,  # ... and what follows a '!'
])
def test_an_xfer_to_anything_but_a_peer_raises_so_its_messages_stay_queued(tmp_path, queue):
    # kumod requeues them as a transient failure and sends nothing (policy.py XFER_CONNECTION_LIMIT);
    # kumo-infra drain's cancel (POST /api/admin/xfer/cancel/v1) returns them to their queues.
    (path,) = egress(tmp_path, d_of(nodes=3), queue)
    assert "xfer only to a node of this fleet" in path["error"]


def test_one_node_transfers_to_no_target_not_even_its_own_address(tmp_path):
    paths = egress(tmp_path, d_of(), peer_queue("10.0.0.5"), peer_queue("10.0.0.6"), "http://127.0.0.1:8000/" + SUFFIX)
    assert all("xfer only to a node of this fleet" in p["error"] for p in paths)


def test_other_routing_domains_keep_the_shapers_limits(tmp_path):
    (path,) = run(tmp_path, d_of(nodes=3), "egress", "xfer.kumomta.internal.example.com")["egress"].values()
    assert path["connection_limit"] == 10 and path["max_message_rate"] == "100/s"


# --- the node files
def test_shaping_custom_and_tsa_init_are_shared_node_files(tmp_path):
    d = d_of(nodes=3, shaping={"overrides": OVERRIDES})
    plan = plan_for(d)
    per_node = [{f.path: f.content for f in node_files(d, plan, d.node_hostname(i, plan.nodes))}
                for i in range(plan.nodes)]
    for path in ("/etc/kumo-infra/shaping_custom.toml", "/etc/kumo-infra/tsa_init.lua",
                 "/etc/systemd/system/kumo-tsa-daemon.service.d/10-kumo-infra.conf"):
        assert path not in PER_NODE_FILES
        assert len({files[path] for files in per_node}) == 1
    assert len({files["/etc/kumo-infra/init.lua"] for files in per_node}) == plan.nodes
    assert tomllib.loads(per_node[0]["/etc/kumo-infra/shaping_custom.toml"])["gmail.com"]["connection_limit"] == 5


def test_the_bootstrap_installs_the_files_where_the_policy_names_them():
    script = (FILES / "kumo-bootstrap.sh").read_text()
    assert f"SHAPING_CUSTOM={SHAPING_CUSTOM_PATH}\n" in script
    assert f"TSA_POLICY={TSA_INIT_PATH}\n" in script
    assert f"SOURCES={SOURCE_ADDRESS_PATH}\n" in script


def test_the_tsa_daemon_waits_for_the_spool_its_database_lives_on():
    unit = (FILES / "kumo-tsa-daemon-dropin.conf").read_text()
    assert "RequiresMountsFor=/var/spool/kumomta" in unit and "Before=kumomta.service" in unit


def test_tsa_init_is_valid_lua(tmp_path):
    from tests.policy_lua import lua

    for d in (d_of(), d_of(nodes=2)):
        f = tmp_path / "tsa_init.lua"
        f.write_text(render_tsa_init(d))
        subprocess.run([lua().replace("lua5.4", "luac5.4"), "-p", str(f)], check=True)

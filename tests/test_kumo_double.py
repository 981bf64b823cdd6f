"""The `kumo` test double is as strict as kumod for everything the policy uses.

Each rule gets a bad policy the double must refuse (and, where it matters, the good twin it
must accept), so a double that silently loosened would fail here rather than let a broken
policy pass tests/test_policy.py. Each rule cites the KumoMTA source (KumoCorp/kumomta) it
follows; the double's tables come from tests/lua/kumo_api_facts.lua, generated from it.
"""

from __future__ import annotations

import subprocess

import pytest

from tests.lua import gen_kumo_api_facts as gen
from tests.policy_lua import LUA_DIR, calls, lua, refused, run_policy, write_file

HEAD = "local kumo = require 'kumo'\n"


def in_init(body: str) -> str:
    return HEAD + "kumo.on('init', function()\n" + body + "\nend)\n"


def on_message(body: str) -> str:
    """A policy whose smtp_server_message_received handler runs ``body`` with ``msg``."""
    return HEAD + "kumo.on('smtp_server_message_received', function(msg)\n" + body + "\nend)\n"


GOOD_LISTENER = "kumo.start_http_listener { listen = '127.0.0.1:8000', trusted_hosts = { '127.0.0.1', '::1' } }"


def test_a_good_policy_runs_and_is_recorded(tmp_path):
    result = run_policy(in_init(GOOD_LISTENER), tmp_path)
    assert calls(result, "start_http_listener") == [{"listen": "127.0.0.1:8000", "trusted_hosts": ["127.0.0.1", "::1"]}]


# --- structs with #[serde(deny_unknown_fields)]: an unknown key is an error in kumod.
@pytest.mark.parametrize("call, struct", [
    ("kumo.start_esmtp_listener { listen = '0.0.0.0:25', relay_host = { '127.0.0.1' } }", "EsmtpListenerParams"),
    ("kumo.start_http_listener { listen = '0.0.0.0:8000', trusted_host = { '127.0.0.1' } }", "HttpListenerParams"),
    ("kumo.define_spool { name = 'data', path = '/s', kind = 'RocksDB', flsuh = true }", "DefineSpoolParams"),
    ("kumo.configure_local_logs { log_dir = '/l', max_segment = '1 minute' }", "LogFileParams"),
    ("kumo.make_queue_config { retry = '5m' }", "QueueConfig"),
    ("kumo.make_egress_path { smtp_auth_username = 'u' }", "EgressPathConfig"),
])
def test_unknown_key_raises_where_kumod_denies_unknown_fields(tmp_path, call, struct):
    assert f"{struct} has deny_unknown_fields" in refused(in_init(call), tmp_path)


def test_signer_ignores_unknown_keys_like_kumod_but_notes_them(tmp_path):
    # crates/message/src/dkim.rs SignerConfig has no deny_unknown_fields.
    root = tmp_path / "root"
    write_file(root, "/k/example.com.key", "KEY")
    policy = on_message("msg:dkim_sign(kumo.dkim.rsa_sha256_signer { domain = 'example.com', selector = 's', "
                        "headers = { 'From' }, key = '/k/example.com.key', algo = 'rsa' })")
    result = run_policy(policy, tmp_path, "message", root=root)
    assert result["ignored_keys"] == ["kumo.dkim.rsa_sha256_signer.algo"]
    (signer,) = result["messages"][0]["received"]["signed"]
    assert signer["key_data"] == "KEY"


# --- required fields (no #[serde(default)]) missing.
@pytest.mark.parametrize("call, field", [
    ("kumo.define_spool { name = 'data', kind = 'RocksDB' }", "path"),
    ("kumo.define_spool { path = '/s', kind = 'RocksDB' }", "name"),
    ("kumo.configure_local_logs { max_segment_duration = '1 minute' }", "log_dir"),
])
def test_missing_required_field_raises(tmp_path, call, field):
    assert f"missing field '{field}'" in refused(in_init(call), tmp_path)


@pytest.mark.parametrize("missing", ["domain", "selector", "headers", "key"])
def test_signer_missing_required_field_raises(tmp_path, missing):
    fields = {"domain": "'example.com'", "selector": "'s'", "headers": "{ 'From' }", "key": "'/k/key'"}
    del fields[missing]
    table = ", ".join(f"{k} = {v}" for k, v in fields.items())
    policy = on_message(f"kumo.dkim.rsa_sha256_signer {{ {table} }}")
    assert f"missing field '{missing}'" in refused(policy, tmp_path, "message")


# --- value types, as serde deserializes the Rust field type.
@pytest.mark.parametrize("call, expected", [
    ("kumo.start_http_listener { listen = 8000 }", "expected a string"),
    ("kumo.start_http_listener { use_tls = 'yes' }", "expected a boolean"),
    ("kumo.start_http_listener { trusted_hosts = '127.0.0.1' }", "expected a list of IPs/CIDRs"),
    ("kumo.start_esmtp_listener { relay_hosts = { '10.1.0.0/8' } }", "host bits set"),
    ("kumo.start_esmtp_listener { relay_hosts = { 'localhost' } }", "not an IP address or CIDR"),
    ("kumo.define_spool { name = 'data', path = '/s', kind = 'Rocks' }", "unknown variant Rocks"),
    ("kumo.configure_local_logs { log_dir = '/l', max_segment_duration = 'forever' }", "is not a duration"),
    ("kumo.make_egress_path { smtp_port = '587' }", "expected u16"),
    ("kumo.make_egress_path { smtp_port = 70000 }", "expected u16"),
    ("kumo.make_egress_path { enable_tls = 'required' }", "unknown variant required"),
    ("kumo.make_egress_path { smtp_auth_plain_password = 42 }", "expected a keysource"),
    ("kumo.make_egress_path { smtp_auth_plain_password = { password = 'x' } }", "untagged enum KeySource"),
    ("kumo.make_queue_config { protocol = { smtp = { mx_list = 'relay.example.net' } } }", "expected a table"),
    ("kumo.make_queue_config { protocol = { smpt = {} } }", "untagged enum DeliveryProto"),
    ("kumo.start_http_listener { 'positional' }", "positional entry"),
])
def test_wrong_value_type_raises(tmp_path, call, expected):
    assert expected in refused(in_init(call), tmp_path)


def test_the_good_twins_of_the_typed_values_pass(tmp_path):
    body = "\n".join([
        "kumo.start_http_listener { listen = '0.0.0.0:8443', use_tls = true, trusted_hosts = { '127.0.0.1', '::1' } }",
        "kumo.start_esmtp_listener { relay_hosts = { '10.0.0.0/8', '192.0.2.7', 'fd00::/8' } }",
        "kumo.configure_local_logs { log_dir = '/l', max_segment_duration = 60 }",
        "kumo.make_egress_path { smtp_port = 587, enable_tls = 'Required',"
        " smtp_auth_plain_password = { key_data = 'x' } }",
        "kumo.make_queue_config { protocol = { smtp = { mx_list = { 'relay.example.net' } } } }",
    ])
    assert len(run_policy(in_init(body), tmp_path)["calls"]) == 5


# --- addresses and CIDRs as Rust parses them (std::net, crates/cidr-map/src/map.rs parse_cidr).
@pytest.mark.parametrize("entry, problem", [
    ("fd00::1/8", "host bits set"), ("1::2::3", "not an IP address or CIDR"), ("::ffff:1.2.3.4.5", "not an IP"),
    ("010.0.0.1", "not an IP"), ("10.0.0.0/33", "prefix longer than 32"), ("1:2:3:4:5:6:7:8:9", "not an IP"),
    ("12345::", "not an IP"),
])
def test_cidr_lists_refuse_what_rust_refuses(tmp_path, entry, problem):
    assert problem in refused(in_init(f"kumo.start_http_listener {{ listen = '0.0.0.0:8000', trusted_hosts = {{ '{entry}' }} }}"),
                              tmp_path)


# --- LimitSpec (crates/throttle/src/lib.rs).
@pytest.mark.parametrize("limit, problem", [
    ("'0'", "limit must be greater than 0"), ("'local:0'", "limit must be greater than 0"), ("'10/s'", "invalid limit"),
    ("'remote:5'", "invalid limit"), ("0", "limit must be"), ("'ten'", "invalid limit"), ("1.5", "expected a string"),
])
def test_connection_limit_must_be_a_limit_spec(tmp_path, limit, problem):
    assert problem in refused(in_init(f"kumo.make_egress_path {{ connection_limit = {limit} }}"), tmp_path)


def test_the_good_limit_specs_pass(tmp_path):
    body = "\n".join(f"kumo.make_egress_path {{ connection_limit = {v} }}" for v in ("5", "'local:5'", "'1_000'", "'local:1,000'"))
    assert len(calls(run_policy(in_init(body), tmp_path), "make_egress_path")) == 4


# --- ACLs (crates/kumo-server-common/src/authn_authz.rs, http_server/auth.rs).
def acl_policy(identity: str, extra: str = "") -> str:
    return in_init("kumo.start_http_listener { listen = '0.0.0.0:8000' }") + (
        "local ACL = kumo.aaa.make_access_control_list { { criteria = { Identity = " + identity + " }, "
        "privilege = 'POST', access = 'Allow' } }\n"
        "kumo.on('get_acl_definition', function(resource)\n" + extra +
        "  if resource == 'http_listener/0.0.0.0:8000/api/x' then return ACL end\nend)\n")


@pytest.mark.parametrize("machine_set, problem", [
    ("'10.0.0.5'", "expected a list of IPs/CIDRs"), ("{ '10.0.0.5/8' }", "host bits set"),
    ("{ 'node1' }", "not an IP address or CIDR"), ("{ a = '10.0.0.5' }", "expected a sequence"),
])
def test_a_machine_set_is_a_list_of_cidrs(tmp_path, machine_set, problem):
    assert problem in refused(acl_policy(f"{{ MachineSet = {machine_set} }}"), tmp_path)


@pytest.mark.parametrize("peer, access", [
    ("10.0.0.5", "Allow"), ("10.1.2.3", "Allow"), ("fd00::7", "Allow"), ("FD00:0:0::7", "Allow"),
    ("11.0.0.1", "DenyByDefault"), ("fd00::8", "DenyByDefault"), ("::ffff:10.0.0.5", "DenyByDefault"),
])
def test_a_machine_set_matches_the_peer_address_in_its_own_family(tmp_path, peer, access):
    policy = acl_policy("{ MachineSet = { '10.0.0.0/8', 'fd00::7' } }")
    result = run_policy(policy, tmp_path, "acl", f"0.0.0.0:8000|/api/x|POST|-|0|{peer}")
    assert [a["access"] for a in result["acl"]] == [access]


def test_an_error_in_get_acl_definition_fails_the_check_with_500(tmp_path):
    policy = acl_policy("'Any'", "  error('no')\n")
    (answer,) = run_policy(policy, tmp_path, "acl", "0.0.0.0:8000|/api/x|POST|-|1")["acl"]
    assert answer["access"] == "Error" and answer["status"] == 500


@pytest.mark.parametrize("listener, peer, trusted", [
    ("", "127.0.0.1", True), ("", "::1", True), ("", "10.0.0.5", False),  # default: loopback
    (", trusted_hosts = { '10.0.0.0/8' }", "10.0.0.5", True), (", trusted_hosts = { '10.0.0.0/8' }", "127.0.0.1", False),
])
def test_trust_comes_from_the_listeners_trusted_hosts(tmp_path, listener, peer, trusted):
    policy = in_init(f"kumo.start_http_listener {{ listen = '0.0.0.0:8000'{listener} }}")
    (answer,) = run_policy(policy, tmp_path, "acl", f"0.0.0.0:8000|/api/admin/bounce/v1|POST|-|?|{peer}")["acl"]
    assert answer["access"] == ("Allow" if trusted else "DenyByDefault")


# --- kumo.on (crates/kumo-server-common/src/lib.rs).
def test_second_handler_for_a_single_event_raises(tmp_path):
    policy = HEAD + "kumo.on('smtp_server_message_received', function(msg) end)\n" * 2
    assert "smtp_server_message_received event already has a handler" in refused(policy, tmp_path)


def test_several_handlers_for_a_multiple_event_are_fine(tmp_path):
    policy = HEAD + "kumo.on('get_queue_config', function() end)\n" * 2
    run_policy(policy, tmp_path)


def test_misspelt_event_fails_the_test_where_kumod_would_never_fire_it(tmp_path):
    policy = HEAD + "kumo.on('smtp_server_message_recieved', function(msg) end)\n"
    assert "is not an event KumoMTA raises" in refused(policy, tmp_path)


def test_event_of_another_daemon_raises(tmp_path):
    assert "never raised by kumod" in refused(HEAD + "kumo.on('tsa_init', function() end)\n", tmp_path)


def test_kumo_on_inside_a_handler_raises(tmp_path):
    policy = in_init("kumo.on('get_queue_config', function() end)")
    assert "from within the event handler 'init'" in refused(policy, tmp_path)


def test_handler_declaring_more_parameters_than_the_event_passes_raises(tmp_path):
    policy = HEAD + "kumo.on('http_server_validate_auth_basic', function(user, password, peer) return false end)\n"
    assert "declares more parameters than the event passes" in refused(policy, tmp_path)


# --- what kumod accepts from a handler (the event's return type).
def test_config_event_returning_a_plain_table_raises(tmp_path):
    policy = HEAD + "kumo.on('smtp_server_message_received', function(msg) msg:set_meta('routing_domain', 'r') end)\n" \
                    "kumo.on('get_egress_path_config', function() return { smtp_port = 587 } end)\n"
    assert "cannot use as EgressPathConfig" in refused(policy, tmp_path, "message")


def test_auth_event_returning_a_string_raises(tmp_path):
    policy = HEAD + "kumo.on('http_server_validate_auth_basic', function(user, password) return 'yes' end)\n"
    result = run_policy(policy, tmp_path, "auth", "u", "p")
    assert result["auth"]["raised"] and "AuthKindResult" in result["auth"]["error"]


# --- the module: names kumod registers, and only those.
def test_unknown_kumo_function_raises(tmp_path):
    assert "is not a function kumod registers" in refused(in_init("kumo.start_smtp_listener {}"), tmp_path)


def test_real_but_unimplemented_function_raises_when_called(tmp_path):
    assert "does not implement" in refused(in_init("kumo.configure_accounting_db_path('/tmp/x')"), tmp_path)


# --- messages and their From header (crates/message/src/message.rs, address.rs).
@pytest.mark.parametrize("from_value, error", [
    ("a@x.com, b@y.com", "is not a simple single address"),
    ("undisclosed-recipients:;", "is not a simple address"),
    ("Team: a@x.com, b@y.com;", "is not a simple address"),
])
def test_domain_of_several_addresses_or_a_group_raises(tmp_path, from_value, error):
    assert error in refused(on_message("local d = msg:from_header().domain"), tmp_path, "message", from_value)


@pytest.mark.parametrize("from_value", ["<<<", "a@", "@x.com", "a@x.com,", "a b c", "\"unterminated@x.com", ""])
def test_from_header_that_does_not_parse_raises(tmp_path, from_value):
    assert "failed to parse header From" in refused(on_message("msg:from_header()"), tmp_path, "message", from_value)


def test_no_from_header_gives_nil(tmp_path):
    run_policy(on_message("assert(msg:from_header() == nil)"), tmp_path, "message", "-")


@pytest.mark.parametrize("from_value, user, domain, name", [
    ("x@Example.COM", "x", "Example.COM", None),
    ("News Desk <news@example.com>", "news", "example.com", "News Desk"),
    ("\"Desk, News\" <news@example.com>", "news", "example.com", "Desk, News"),
    ("Who (time lord) <who@example.com>", "who", "example.com", "Who"),
    ("\"a b\"@example.com", "a b", "example.com", None),
])
def test_single_address_fields_read_like_kumod(tmp_path, from_value, user, domain, name):
    body = ("local f = msg:from_header()\n"
            "msg:set_meta('user', f.user); msg:set_meta('domain', f.domain); msg:set_meta('name', f.name)")
    meta = run_policy(on_message(body), tmp_path, "message", from_value)["messages"][0]["received"]["meta"]
    assert (meta.get("user"), meta.get("domain"), meta.get("name")) == (user, domain, name)


def test_list_flattens_groups_and_addresses(tmp_path):
    body = ("local out = {}\n"
            "for _, a in ipairs(msg:from_header().list) do table.insert(out, a.email) end\n"
            "msg:set_meta('emails', table.concat(out, ' '))")
    meta = run_policy(on_message(body), tmp_path, "message", "Team: a@x.com, b@y.com;, c@z.com")["messages"][0]
    assert meta["received"]["meta"]["emails"] == "a@x.com b@y.com c@z.com"


def test_unknown_field_of_the_address_list_raises(tmp_path):
    assert "attempt to get an unknown field 'domian'" in refused(
        on_message("local d = msg:from_header().domian"), tmp_path, "message")


def test_kumod_errors_are_not_strings(tmp_path):
    # mlua raises userdata errors: concatenating one raises again, outside any pcall.
    body = "local ok, err = pcall(function() return msg:from_header().domain end)\nlocal text = 'x' .. err"
    assert "attempt to concatenate" in refused(on_message(body), tmp_path, "message", "a@x.com, b@y.com")


def test_unknown_message_method_raises(tmp_path):
    assert "attempt to get an unknown field 'from'" in refused(on_message("msg:from()"), tmp_path, "message")


def test_message_method_called_without_colon_raises(tmp_path):
    assert "call it as msg:set_meta" in refused(on_message("msg.set_meta('k', 'v')"), tmp_path, "message")


def test_dkim_sign_needs_a_signer(tmp_path):
    assert "expected a Signer" in refused(on_message("msg:dkim_sign({ domain = 'x' })"), tmp_path, "message")


def test_signer_with_a_key_that_cannot_be_loaded_raises(tmp_path):
    policy = on_message("kumo.dkim.rsa_sha256_signer { domain = 'x.com', selector = 's', headers = { 'From' }, "
                        "key = '/no/such.key' }")
    assert "KeySource failed to load data from file `/no/such.key`" in refused(policy, tmp_path, "message",
                                                                               root=tmp_path / "root")


def test_secrets_load_reads_below_the_scratch_root(tmp_path):
    root = tmp_path / "root"
    write_file(root, "/etc/secret", "s3cret")
    policy = on_message("msg:set_meta('secret', kumo.secrets.load('/etc/secret'))")
    result = run_policy(policy, tmp_path, "message", root=root)
    assert result["messages"][0]["received"]["meta"]["secret"] == "s3cret"


# --- the facts file and its generator.
def test_facts_name_the_kumomta_commit_and_sources():
    head = (LUA_DIR / "kumo_api_facts.lua").read_text().splitlines()[:3]
    assert head[0].startswith("-- GENERATED by tests/lua/gen_kumo_api_facts.py")
    assert "KumoMTA commit" in head[1] and "KumoCorp/kumomta" in head[1]


@pytest.mark.parametrize("rust, kind", [
    ({"type": "Option<u16>"}, {"kind": "integer", "min": 0, "max": 65535, "rust": "u16"}),
    ({"type": "String"}, {"kind": "string"}),
    ({"type": "PathBuf"}, {"kind": "string"}),
    ({"type": "Option<Duration>", "duration": True}, {"kind": "duration"}),
    ({"type": "CidrSet"}, {"kind": "cidrs"}),
    ({"type": "Option<KeySource>"}, {"kind": "keysource"}),
    ({"type": "Vec<String>"}, {"kind": "strings"}),
    ({"type": "Tls"}, {"kind": "enum", "variants": ["Required"], "enum": "Tls"}),
    ({"type": "MinFree"}, {"kind": "unchecked", "rust": "MinFree"}),
])
def test_generator_reduces_rust_types_to_lua_checks(rust, kind):
    assert gen.field_kind(rust, {"Tls": {"variants": ["Required"]}}) == kind


def test_generated_lua_loads(tmp_path):
    api = {"kumomta_commit": "0" * 40, "enums": {}, "notes": {k: "n" for k in
                                                            ("kumo.on", "signer", "keysource", "duration", "cidrset")},
           "functions": {name: {"sources": ["s.rs:1"], "kumod": True, "struct": "S@s.rs"}
                         for name in gen.STRUCT_FUNCTIONS},
           "structs": {"S@s.rs": {"name": "S", "source": "s.rs:1", "deny_unknown_fields": True,
                                  "fields": {"it's": {"type": "String", "required": True}}}},
           "nested": {"kumo.make_queue_config.protocol": {"source": "p.rs", "keys": ["smtp"]},
                      "kumo.make_queue_config.protocol.smtp": {"struct": "S@s.rs"}},
           "events": {"init": {"source": "m.rs:1", "kumod": True}},
           "message_methods": {"id": "m.rs:2"}, "header_address_list_fields": {"domain": "a.rs:3"}}
    out = tmp_path / "facts.lua"
    out.write_text(gen.render(api))
    probe = tmp_path / "probe.lua"
    probe.write_text("local f = dofile(arg[1])\n"
                     "print(f.structs['kumo.define_spool'].fields[\"it's\"].required, f.events.init.multiple)\n")
    done = subprocess.run([lua(), str(probe), str(out)], capture_output=True, text=True)
    assert done.stdout.split() == ["true", "false"], done.stderr

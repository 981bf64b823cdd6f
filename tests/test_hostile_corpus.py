"""Every string in the config model, fed hostile values: refused naming the key, or proven inert.

The corpus is generated from the model itself (``Deployment.model_fields``, walked
through nested sections, Optional, Annotated and list fields), so a string field added
later is in it without anyone remembering. For every such field and every payload
(command substitution, backticks, ';', both quotes, newline, tab, NUL, '../', 5000
characters, non-ASCII, ...) the value is either

* refused by ``kumo-infra validate --config FILE``: exit 2, the field's key path in the
  message, no traceback; or
* the field is listed in INERT and the value is proven inert: rendered, it changes
  nothing but the KumoMTA policy, where Lua 5.4 hands it back byte-identical.

A field accepting a payload without being in INERT fails the test. The full matrix runs
in-process through ``cli.main`` (the code path of the installed command); every field
also goes once through the real command as a subprocess, and every command (validate,
size, render, port25, plan) runs over corpus files without a traceback.
"""

from __future__ import annotations

import copy
import subprocess
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import pytest
import yaml
from pydantic import BaseModel

from kumo_infra import cli, targets
from kumo_infra.bootstrap import node_files, render_startup_script, render_user_data
from kumo_infra.config import ROOT, Deployment
from kumo_infra.stackconfig import load_file
from tests.conftest import deployment
from tests.test_bootstrap import run_policy

REPO = Path(__file__).resolve().parent.parent

# -- the model, walked ---------------------------------------------------------------------------


def _section_model(tp: Any) -> Any:
    """The model inside Optional[...], Annotated[...] and list[...] (the type itself otherwise)."""
    while True:
        origin = get_origin(tp)
        if origin in (Union, types.UnionType):
            args = [a for a in get_args(tp) if a is not type(None)]
            if len(args) != 1:
                return tp
            tp = args[0]
        elif origin in (typing.Annotated, list):
            tp = get_args(tp)[0]
        else:
            return tp


def _keys(path: str) -> list[str | int]:
    """ssh.hosts[0].address -> ["ssh", "hosts", 0, "address"]."""
    keys: list[str | int] = []
    for part in path.split("."):
        name, _, index = part.partition("[")
        keys.append(name)
        if index:
            keys.append(int(index.rstrip("]")))
    return keys


def string_fields(model: type[BaseModel] = Deployment, prefix: tuple[str, ...] = ()) -> dict[str, str]:
    """Key path -> "str" or "list" for every field holding strings, nested sections included."""
    found: dict[str, str] = {}
    for name, field in model.model_fields.items():
        found.update(_walk(field.annotation, prefix + (name,)))
    return found


def _walk(tp: Any, path: tuple[str, ...]) -> dict[str, str]:
    origin = get_origin(tp)
    if origin is typing.Annotated:
        return _walk(get_args(tp)[0], path)
    if origin in (Union, types.UnionType):
        return {k: v for arg in get_args(tp) if arg is not type(None) for k, v in _walk(arg, path).items()}
    if origin is list:
        (item,) = get_args(tp)
        section = _section_model(item)
        if isinstance(section, type) and issubclass(section, BaseModel):
            # A list of sections (ssh.hosts): each field once, in the list's first entry.
            head = path[:-1] + (f"{path[-1]}[0]",)
            return string_fields(section, head)
        inner = _walk(item, path)
        assert set(inner.values()) <= {"str"}, f"{'.'.join(path)}: a list of sections; teach the walker"
        return {k: "list" for k in inner}
    if origin is Literal:
        return {".".join(path): "str"} if all(isinstance(a, str) for a in get_args(tp)) else {}
    if tp is str:
        return {".".join(path): "str"}
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return string_fields(tp, path)
    assert tp in (int, float, bool), f"{'.'.join(path)}: type {tp!r} unknown to the hostile corpus; teach the walker"
    return {}


FIELDS = string_fields()

# At least these; a new string field joins the corpus by itself.
EXPECTED = {
    "cloud", "region", "name", "hostname", "os",
    "sizing.profile", "sizing.instance_type", "spool.storage", "spool.filesystem",
    "network.ssh_cidrs", "network.api_cidrs", "network.admin_cidrs",
    "port25.outbound", "port25.relay.host", "port25.relay.username", "port25.probe_hosts",
    "kumomta.channel", "kumomta.version", "kumomta.repo_url", "kumomta.relay_cidrs", "kumomta.repo_key_fingerprint",
    "dns.zone", "os_updates.automatic", "os_updates.reboot", "os_updates.reboot_time",
    "dkim.domains", "dkim.selector",
    "aws.vpc_id", "aws.subnet_id", "aws.key_name", "aws.availability_zone", "aws.route53_zone_id", "aws.vpc_cidr",
    "azure.resource_group", "azure.subscription_type", "azure.vnet_id", "azure.subnet_id", "azure.ssh_public_key",
    "azure.dns_zone_resource_group", "azure.vnet_cidr",
    "gcp.project", "gcp.zone", "gcp.network", "gcp.subnetwork", "gcp.dns_managed_zone", "gcp.subnet_cidr",
}

# Fields that legitimately take shell and Lua metacharacters, and where they go. Each value
# one of these accepts is proven inert by prove_inert below.
INERT = {
    "port25.relay.username": "an SMTP AUTH username: reaches the policy only, as an escaped Lua string",
}

# -- the values ---------------------------------------------------------------------------------

MARKER = "/tmp/kumo-hostile-marker"
PAYLOADS = {
    "command-substitution": f"$(touch${{IFS}}{MARKER})",
    "backticks": f"`touch${{IFS}}{MARKER}`",
    "semicolon": f";touch${{IFS}}{MARKER}",
    "single-quote": "'",
    "double-quote": '"',
    "backslash": "\\",
    "newline": "\nx",
    "trailing-newline": "\n",  # "$" in a Python pattern also matches before it
    "carriage-return": "\rx",
    "tab": "\tx",
    "nul": "\x00x",
    "dot-dot-slash": "../../etc/passwd",
    "very-long": "a" * 5000,
    "non-ascii": "é",
    "bidi-override": "\u202e",
}

VNET = ("/subscriptions/6f1c1e7a-3b2d-4c5e-8f90-1a2b3c4d5e6f/resourceGroups/net-rg/providers/"
        "Microsoft.Network/virtualNetworks/mail-net")
SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINj9KOaAzhaYUcAaG9+8mDX1dJFtI6zauD5C1V0adTdM ops@example"
RELAY = {"host": "smtp.relay.example.net", "port": 587, "username": "kumo-user"}
COMMON = dict(
    sizing={"profile": "minimal", "messages_per_hour": 20000, "avg_message_kb": 50},
    spool={"storage": "block", "filesystem": "xfs"},
    network={"ssh_cidrs": ["203.0.113.0/24"], "api_cidrs": ["198.51.100.0/24", "2001:db8:1::/48"],
             "submission_ports": [587]},
    port25={"outbound": "relay", "relay": RELAY, "probe_hosts": ["mx1.example.net", "192.0.2.25"]},
    kumomta={"channel": "stable", "version": "2025.03.19-1fbb1b18", "repo_url": "https://openrepo.kumomta.com",
             "relay_cidrs": ["10.20.0.0/16"], "repo_key_fingerprint": "0123456789ABCDEF0123456789ABCDEF01234567"},
    dns={"zone": "example.com"},
    dkim={"domains": ["example.com"], "selector": "s2026"},
    os_updates={"automatic": "security", "reboot": "window", "reboot_time": "03:30"},
)


def _base(**overrides: Any) -> dict:
    return deployment(**copy.deepcopy({**COMMON, **overrides}))


BASES = {
    "aws": _base(sizing={**COMMON["sizing"], "instance_type": "t3.medium"}, aws={
        "vpc_id": "vpc-0a1b2c3d4e5f67890", "subnet_id": "subnet-0a1b2c3d4e5f67890", "key_name": "ops-2026",
        "availability_zone": "us-east-1a", "route53_zone_id": "Z0EXAMPLE12345", "vpc_cidr": "10.42.0.0/16"}),
    "azure": _base(cloud="azure", region="westeurope", os="ubuntu22", azure={
        "resource_group": "mail-rg", "subscription_type": "pay-as-you-go", "vnet_id": VNET,
        "subnet_id": f"{VNET}/subnets/mail", "ssh_public_key": SSH_KEY, "dns_zone_resource_group": "dns-rg",
        "vnet_cidr": "10.42.0.0/16"}),
    "gcp": _base(cloud="gcp", region="us-central1", os="alma9", gcp={
        "project": "my-kumo-project", "zone": "us-central1-a", "network": "shared",
        "subnetwork": "projects/my-kumo-project/regions/us-central1/subnetworks/mail",
        "dns_managed_zone": "example-com", "subnet_cidr": "10.42.0.0/24"}),
}
# A target registered later is walked too (its section is in the model): its own example deployment
# (Target.example) is the base of its section's fields.
BASES.update({name: copy.deepcopy(target.example) for name, target in targets.registry().items()
              if name not in BASES})
# The shaping overrides and the fleet's Redis (issue 12): an override names a domain or a provider,
# never both, so each has a base; a Redis URL needs a fleet.
for name, section in {
    "shaping": {"shaping": {"overrides": [{"domain": "gmail.com", "max_connection_rate": "20/min",
                                           "max_message_rate": "100/s"}]}},
    "shaping-provider": {"shaping": {"overrides": [{"provider": "yahoo", "connection_limit": 5}]}},
    "fleet": {"nodes": 2, "fleet": {"redis_url": "rediss://redis.example.net:6379"}},
}.items():
    BASES[name] = copy.deepcopy(BASES["aws"]) | copy.deepcopy(section)
# admin_cidrs is refused beside ssh_cidrs/api_cidrs: it gets a base of its own.
BASES["aws-admin"] = copy.deepcopy(BASES["aws"])
BASES["aws-admin"]["network"] = {"admin_cidrs": ["203.0.113.0/24"]}


def base_for(path: str) -> dict:
    section = path.split(".")[0]
    if path == "network.admin_cidrs":
        return BASES["aws-admin"]
    if path == "shaping.overrides[0].provider":
        return BASES["shaping-provider"]
    return BASES[section] if section in BASES else BASES["aws"]


def valid_value(path: str) -> Any:
    """The field's value in its base deployment, else its model default."""
    node: Any = base_for(path)
    for key in _keys(path):
        present = (key < len(node) if isinstance(node, list) else False) if isinstance(key, int) else (
            isinstance(node, dict) and key in node)
        if not present:
            node = None
            break
        node = node[key]
    if node is None:
        model: Any = Deployment
        for key in _keys(path)[:-1]:
            if not isinstance(key, int):
                model = _section_model(model.model_fields[key].annotation)
        node = model.model_fields[_keys(path)[-1]].get_default(call_default_factory=True)
    assert node, f"{path}: no valid value in the corpus bases and no default; add one to BASES"
    return node[0] if isinstance(node, list) else node


def with_value(path: str, value: Any, base: dict | None = None) -> dict:
    raw = copy.deepcopy(base or base_for(path))
    node = raw
    *parents, leaf = _keys(path)
    for key in parents:
        node = node[key] if isinstance(key, int) else node.setdefault(key, {})
    node[leaf] = value
    return raw


def hostile_values(path: str) -> list[tuple[str, Any]]:
    """(case id, the field's value) for every payload: appended to a valid value, and alone."""
    valid = valid_value(path)
    cases = []
    for kind, payload in PAYLOADS.items():
        for position, text in (("appended", f"{valid}{payload}"), ("alone", payload)):
            cases.append((f"{kind}-{position}", [text] if FIELDS[path] == "list" else text))
    return cases


def write_stack(tmp_path: Path, raw: dict, name: str = "hostile") -> Path:
    f = tmp_path / f"Pulumi.{name}.yaml"
    # Double-quoted YAML escapes keep every control character (NUL included) in the value.
    f.write_text(yaml.safe_dump({"config": {"aws:region": "us-east-1", ROOT: raw}}, allow_unicode=False,
                                default_style='"', width=100000))
    return f


def key_named(path: str, stderr: str) -> bool:
    key = f"{ROOT}.{path}"
    return f"{key}:" in stderr or f"{key}[0]:" in stderr


def run_in_process(capsys, *argv: str) -> tuple[int, str]:
    code = cli.main(list(argv))  # an exception here is the traceback an operator would see
    captured = capsys.readouterr()
    return code, captured.err


# -- the model walk itself ----------------------------------------------------------------------

def test_walker_finds_every_string_field_of_the_model():
    missing = EXPECTED - set(FIELDS)
    assert not missing, f"the walker lost fields: {sorted(missing)}"
    assert FIELDS["port25.probe_hosts"] == "list" and FIELDS["dkim.domains"] == "list"
    assert FIELDS["network.ssh_cidrs"] == "list" and FIELDS["port25.relay.username"] == "str"
    assert set(INERT) <= set(FIELDS)
    # Non-string fields are not strings: ports and counts are checked as numbers.
    assert "network.submission_ports" not in FIELDS and "nodes" not in FIELDS


def test_walker_sees_a_field_added_later():
    from pydantic import create_model

    section = create_model("Extra", __base__=BaseModel, note=(str, ...), tags=(list[str], []), count=(int, 0))
    model = create_model("Grown", __base__=Deployment, extra=(typing.Optional[section], None))
    grown = string_fields(model)
    assert grown["extra.note"] == "str" and grown["extra.tags"] == "list" and "extra.count" not in grown


@pytest.mark.parametrize("name", sorted(BASES))
def test_every_corpus_base_is_valid(tmp_path, capsys, name):
    code, err = run_in_process(capsys, "validate", "--config", str(write_stack(tmp_path, BASES[name])))
    assert code == 0, err


# -- the full matrix, in-process ----------------------------------------------------------------

@pytest.mark.parametrize("path", sorted(FIELDS))
def test_every_hostile_value_is_refused_naming_its_key_or_proven_inert(tmp_path, capsys, path):
    accepted = []
    for case, value in hostile_values(path):
        f = write_stack(tmp_path, with_value(path, value), name=case)
        code, err = run_in_process(capsys, "validate", "--config", str(f))
        if code == 2:
            assert key_named(path, err), f"{path} {case}: refused without naming the key:\n{err}"
            continue
        assert code == 0, f"{path} {case}: exit {code}\n{err}"
        assert path in INERT, (f"{path} accepted the {case} value {value!r}: give the field an explicit pattern in "
                               "kumo_infra/config.py, or list it in INERT with a proof")
        accepted.append((case, value))
    for case, value in accepted:
        prove_inert(path, value, tmp_path / case)


# -- inert: what an accepted value reaches -------------------------------------------------------

def prove_inert(path: str, value: Any, scratch: Path) -> None:
    assert path == "port25.relay.username", f"{path}: no inertness proof written for this field"
    scratch.mkdir()
    raw = with_value(path, value)
    hostile = load_file(write_stack(scratch, raw)).deployment
    baseline = load_file(write_stack(scratch, base_for(path), name="baseline")).deployment
    stack = load_file(write_stack(scratch, raw))
    # Everything rendered for the node but the policy is byte-identical to a harmless username's:
    # the value reaches no shell-consumed file (bootstrap.env, secrets.list, the scripts, units).
    hostile_files = {f.path: f.content for f in node_files(hostile, stack.plan, "mta.example.com")}
    baseline_files = {f.path: f.content for f in node_files(baseline, stack.plan, "mta.example.com")}
    differing = {p for p in hostile_files if hostile_files[p] != baseline_files[p]}
    assert differing <= {"/etc/kumo-infra/init.lua"}, differing
    # The whole user-data and GCP startup script carry it only inside that file (the script base64-encodes it).
    user_data = yaml.safe_load(render_user_data(hostile, stack.plan))
    written = {f["path"]: f["content"] for f in user_data["write_files"]}
    assert written == hostile_files and user_data["runcmd"] == [["/usr/local/sbin/kumo-bootstrap", "all"]]
    if value.startswith("kumo-user"):  # a distinctive value: searchable in the text as a whole
        assert value not in render_startup_script(hostile, stack.plan)
    # The policy hands it to KumoMTA unchanged: Lua 5.4 reads back exactly the configured bytes.
    result = run_policy(hostile_files["/etc/kumo-infra/init.lua"], scratch, "message")
    assert result["egress"]["smtp_auth_plain_username"] == value
    assert not Path(MARKER).exists(), "a payload ran"


def test_relay_username_metacharacters_are_proven_inert(tmp_path):
    """The inert path itself, for the payloads a username may legitimately contain."""
    proven = 0
    for kind in ("command-substitution", "backticks", "semicolon", "single-quote", "double-quote", "backslash",
                 "dot-dot-slash"):
        value = f"kumo-user{PAYLOADS[kind]}"
        prove_inert("port25.relay.username", value, tmp_path / kind)
        proven += 1
    prove_inert("port25.relay.username", "x'\\'\"]]..[[`$", tmp_path / "lua-breakers")
    assert proven == 7


# -- the real command, once per field ------------------------------------------------------------

def kumo(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kumo_infra.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("index, path", list(enumerate(sorted(FIELDS))))
def test_the_real_command_refuses_each_field(tmp_path, index, path):
    # A different payload per field, so every payload kind also goes through the real command.
    refusable = [k for k in PAYLOADS if path not in INERT or k in ("newline", "nul", "very-long", "non-ascii")]
    kind = refusable[index % len(refusable)]
    value = f"{valid_value(path)}{PAYLOADS[kind]}"
    f = write_stack(tmp_path, with_value(path, [value] if FIELDS[path] == "list" else value))
    result = kumo("validate", "--config", str(f))
    assert result.returncode == 2, (kind, result)
    assert "Traceback" not in result.stderr
    assert key_named(path, result.stderr), (kind, result.stderr)


# -- every command, over the corpus ---------------------------------------------------------------

COMMANDS = [("validate",), ("size",), ("render",), ("render", "--node", "1"), ("port25",), ("port25", "--json")]


def test_no_command_raises_on_any_corpus_file(tmp_path, capsys):
    """validate, size, render and port25 over every (field, payload) file: exit 2 naming the key, or 0."""
    runs = 0
    for path in sorted(FIELDS):
        for case, value in hostile_values(path):
            if not case.endswith("appended"):
                continue
            f = str(write_stack(tmp_path, with_value(path, value), name=case))
            for command in COMMANDS:
                code, err = run_in_process(capsys, command[0], "--config", f, *command[1:])
                if command == ("render", "--node", "1") and code == 2 and "--node" in err:
                    continue  # a one-node stack: the accepted values end here, named
                assert code == 2 and key_named(path, err) or (code == 0 and path in INERT), (command, path, case, err)
                runs += 1
    assert runs > len(FIELDS) * len(PAYLOADS) * len(COMMANDS) * 0.9


def test_plan_refuses_or_plans_every_payload_kind(tmp_path, capsys):
    """plan registers resources offline: run it for every payload on one refused field and on the inert one."""
    for path in ("port25.probe_hosts", "port25.relay.username"):
        for case, value in hostile_values(path):
            if not case.endswith("appended"):
                continue
            # On GCP: the startup script has no size limit, so the plan runs to its end.
            raw = with_value(path, value, BASES["gcp"])
            code, err = run_in_process(capsys, "plan", "--config", str(write_stack(tmp_path, raw, name=case)))
            assert code == 2 and key_named(path, err) or (code == 0 and path in INERT), (path, case, err)


@pytest.mark.parametrize("command", [("validate",), ("size",), ("render",), ("port25",), ("plan",)])
@pytest.mark.parametrize("path, kind", [
    ("port25.probe_hosts", "command-substitution"),
    ("gcp.project", "newline"),
    ("port25.relay.username", "nul"),
    ("port25.relay.username", "single-quote"),  # accepted: the command succeeds
])
def test_the_real_commands_never_print_a_traceback(tmp_path, command, path, kind):
    value = f"{valid_value(path)}{PAYLOADS[kind]}"
    f = write_stack(tmp_path, with_value(path, [value] if FIELDS[path] == "list" else value, BASES["gcp"]))
    result = kumo(*command, "--config", str(f))
    assert "Traceback" not in result.stderr, result.stderr
    if kind == "single-quote":
        assert result.returncode == 0, result.stderr
    else:
        assert result.returncode == 2 and key_named(path, result.stderr), result.stderr


@pytest.mark.parametrize("kind", ["command-substitution", "newline", "very-long", "non-ascii"])
def test_size_flags_refuse_hostile_instance_types(capsys, kind):
    code, err = run_in_process(capsys, "size", "--cloud", "aws", "--messages-per-hour", "5", "--avg-message-kb", "5",
                               "--instance-type", f"t3.medium{PAYLOADS[kind]}")
    assert code == 2 and "--instance-type" in err

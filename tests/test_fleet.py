"""Fleets share their throttles (issue 12, part 2): the target-neutral core under the mock engine.

A deployment of several nodes gets two more secrets, REDIS_URL (the Redis every node logs in to)
and FLEET_PEERS (every node's private address, stored once the machines exist), a ``fleet`` output
that names the Redis without its credentials, and the config rules that make a fleet deployable.
A single node gets none of it. The managed Redis a target creates is the target's own
(tests/test_managed_redis.py); here a stand-in ``_shared_redis`` proves what the skeleton does
with whatever a target returns.
"""

from __future__ import annotations

import copy
import json
import urllib.parse
from typing import Any

import pulumi
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pulumi.runtime import settings as runtime_settings
from pulumi.runtime.sync_await import _sync_await

from kumo_infra import component, fleet, offline, planview, program, sizing, stackconfig, targets
from kumo_infra.config import REDIS_PASSWORD_KEY, ROOT, parse_deployment
from kumo_infra.errors import ConfigError
from tests.conftest import ROOT as ROOT_DIR
from tests.conftest import STACKS
from tests.contract_deployments import case

TARGETS = list(targets.registry())
MANAGED = [name for name, target in targets.registry().items() if target.managed_redis]
REDIS_URL = "rediss://redis.example.net:6380/3"
# Every character that could end a URL's userinfo early, or be read as an escape.
HOSTILE_PASSWORD = "p:a@s/s%w?o#r[d] '\"$(id)\u00e9"
RELAY_PW = "fleet-relay-password"
MANAGED_URL = "rediss://:managed-redis-token@redis.internal.example:6379"


def fleet_deployment(target: str, **fleet_keys: Any) -> dict:
    """The target's contract deployment (two nodes: a fleet), with ``fleet_keys`` as its fleet section."""
    d = copy.deepcopy(case(target).deployment)
    d["fleet"] = dict(fleet_keys)
    return d


def single_node(target: str) -> dict:
    d = fleet_deployment(target)
    del d["fleet"]
    if target == "ssh":
        d["ssh"] = {"hosts": d["ssh"]["hosts"][:1]}
    else:
        d["nodes"] = 1
    return d


def run(target: str, d: dict, *, redis_password: str | None = HOSTILE_PASSWORD, preview: bool = False,
        probe: bool = True) -> tuple[offline.OfflineResult, dict[str, Any]]:
    """The stack program over ``d``; with ``probe``, what the skeleton handed the target's store
    (each NodeSecret's key, machines_wait and resolved value) and whether each export is a secret."""
    c = case(target)
    config: dict[str, Any] = {ROOT: d, "kumo:relayPassword": RELAY_PW,
                              **{k: v for k, v in c.config.items() if k != REDIS_PASSWORD_KEY}}
    secret_keys = ["kumo:relayPassword", *(k for k in c.secret_keys if k != REDIS_PASSWORD_KEY)]
    if redis_password is not None:
        config[REDIS_PASSWORD_KEY] = redis_password
        secret_keys.append(REDIS_PASSWORD_KEY)
    seen: dict[str, Any] = {"stored": {}, "values": {}, "secret_exports": {}}

    def prog() -> None:
        program.run()
        root = runtime_settings.get_root_resource()
        for key, value in dict(getattr(root, "outputs", {})).items():
            seen["secret_exports"][key] = _sync_await(pulumi.Output.from_input(value).is_secret())

    cls = targets.get(target).component_class()
    original = cls._store_secrets

    def store(self, b):
        for s in b.secrets:
            seen["stored"][s.spec.key] = s.machines_wait
            s.value.apply(lambda v, key=s.spec.key: seen["values"].__setitem__(key, v))
        return original(self, b)

    with pytest.MonkeyPatch.context() as mp:
        if probe:
            mp.setattr(cls, "_store_secrets", store)
        result = offline.run(prog, config, stack="fleet", secret_keys=secret_keys, preview=preview)
    return result, seen


def stand_in_redis(monkeypatch: pytest.MonkeyPatch, target: str) -> list[Any]:
    """Replace the target's _shared_redis by a stand-in (a component resource, a secret URL); the
    list records each Build it was called with and what the network and firewall were by then."""
    calls: list[Any] = []

    def shared(self, b):
        calls.append((b.network, b.firewall, list(b.secrets)))
        made = pulumi.ComponentResource("test:index:StandInRedis", f"{b.name}-redis", opts=component.child(self))
        return component.SharedRedis(url=pulumi.Output.secret(MANAGED_URL), resource=made,
                                     title="stand-in managed Redis",
                                     endpoint=pulumi.Output.from_input("redis.internal.example:6379"))

    monkeypatch.setattr(targets.get(target).component_class(), "_shared_redis", shared)
    return calls


def every_secret_value(result: offline.OfflineResult) -> set[str]:
    """Every string inside a Pulumi secret in any recorded input (config secrets, generated keys, stored values)."""
    found: set[str] = set()

    def walk(value: Any, inside: bool) -> None:
        if offline.is_secret(value):
            walk(value["value"], True)
        elif isinstance(value, dict):
            for v in value.values():
                walk(v, inside)
        elif isinstance(value, list):
            for v in value:
                walk(v, inside)
        elif inside and isinstance(value, str) and len(value) >= 8:
            found.add(value)

    for r in result.resources:
        walk(r.inputs, False)
    return found


# -- the URL of the operator's own Redis ------------------------------------------------------------

@pytest.mark.parametrize("password", [HOSTILE_PASSWORD, ":", "@", "/", "%", "%41", "a b", "#?", "\u00e9\u00e8"])
def test_the_password_is_the_urls_userinfo_and_decodes_to_itself(password):
    url = fleet.redis_url_with_password(REDIS_URL, password)
    parts = urllib.parse.urlsplit(url)
    # What redis-rs reads (url::Url, then percent_decode of the password): the same host, port and db.
    assert (parts.scheme, parts.hostname, parts.port, parts.path) == ("rediss", "redis.example.net", 6380, "/3")
    assert parts.username == "" and urllib.parse.unquote(parts.password) == password
    assert url.count("@") == 1 and not (set(parts.password) & set(":@/?#[] "))


@settings(max_examples=200, deadline=None)
@given(password=st.text(min_size=1, max_size=64))
def test_any_password_survives_the_url(password):
    parts = urllib.parse.urlsplit(fleet.redis_url_with_password("redis://10.0.0.5", password))
    assert (parts.hostname, parts.port) == ("10.0.0.5", None)
    assert urllib.parse.unquote(parts.password, errors="strict") == password


def test_the_endpoint_never_carries_credentials_and_names_the_default_port():
    assert fleet.redis_endpoint(REDIS_URL) == "redis.example.net:6380"
    assert fleet.redis_endpoint("redis://[fd00::5]/1") == "[fd00::5]:6379"
    assert "@" not in fleet.redis_endpoint(fleet.redis_url_with_password(REDIS_URL, "x@y"))


# -- config ------------------------------------------------------------------------------------------

def test_a_fleet_where_no_redis_can_be_created_needs_redis_url(monkeypatch):
    import dataclasses

    aws = targets.get("aws")
    monkeypatch.setitem(targets.registry(), "aws", dataclasses.replace(aws, managed_redis=None))
    with pytest.raises(ConfigError) as info:
        parse_deployment(fleet_deployment("aws"))
    (problem,) = info.value.problems
    assert problem.path == f"{ROOT}.fleet.redis_url"
    assert "2 nodes" in problem.message and REDIS_PASSWORD_KEY in problem.message
    assert parse_deployment(fleet_deployment("aws", redis_url=REDIS_URL))  # the fix it names
    assert parse_deployment(single_node("aws"))  # one node needs no Redis


def test_redis_password_is_a_secret_key_accepted_only_encrypted_and_warned_about_when_unset():
    d = fleet_deployment("ssh", redis_url=REDIS_URL)
    stack = stackconfig.from_values("s", {ROOT: d, REDIS_PASSWORD_KEY: {"secure": "v1:abc"}})
    assert REDIS_PASSWORD_KEY in stack.secrets_set and not any(REDIS_PASSWORD_KEY in w for w in stack.warnings)
    with pytest.raises(ConfigError) as info:
        stackconfig.from_values("s", {ROOT: d, REDIS_PASSWORD_KEY: "plain"})
    assert [p.path for p in info.value.problems] == [REDIS_PASSWORD_KEY]
    assert "--secret" in info.value.problems[0].message
    unset = stackconfig.from_values("s", {ROOT: d})
    assert [w for w in unset.warnings if w.startswith(REDIS_PASSWORD_KEY)] == [
        f"{REDIS_PASSWORD_KEY} is not set; before pulumi up run: pulumi config set --secret {REDIS_PASSWORD_KEY}"]
    # A managed Redis (or none) needs no password of the operator's.
    assert not any(REDIS_PASSWORD_KEY in w for w in stackconfig.from_values("s", {ROOT: fleet_deployment("aws")}).warnings)


def test_a_redis_url_for_a_single_node_is_unused_and_said_so():
    d = single_node("aws")
    d["fleet"] = {"redis_url": REDIS_URL}
    warnings = stackconfig.from_values("s", {ROOT: d}).warnings
    assert any(w.startswith(f"{ROOT}.fleet.redis_url is unused") for w in warnings)
    assert not any("redisPassword is not set" in w for w in warnings)  # not needed: nothing connects
    assert not any("unused" in w for w in stackconfig.from_values("s", {ROOT: fleet_deployment(
        "aws", redis_url=REDIS_URL)}).warnings)


def test_the_offline_plan_passes_the_redis_password_as_a_masked_secret():
    stack = stackconfig.from_values("s", {ROOT: fleet_deployment("ssh", redis_url=REDIS_URL)})
    values, keys = planview.stack_config_values(stack)
    assert REDIS_PASSWORD_KEY in keys and values[REDIS_PASSWORD_KEY] == planview.SECRET_PLACEHOLDER
    single = stackconfig.from_values("s", {ROOT: single_node("ssh")})
    assert REDIS_PASSWORD_KEY not in planview.stack_config_values(single)[1]


@pytest.mark.parametrize("target", TARGETS)
def test_the_component_refuses_an_external_redis_without_its_password_before_any_resource(target):
    with pytest.raises(pulumi.RunError, match=REDIS_PASSWORD_KEY) as info:
        run(target, fleet_deployment(target, redis_url=REDIS_URL), redis_password=None, probe=False)
    assert info.value.offline_resources == []


def test_the_ssh_lab_stack_is_a_valid_fleet():
    stack = stackconfig.load_file(ROOT_DIR / "stacks" / "Pulumi.ssh-lab.yaml")
    assert stack.plan.nodes == 2 and fleet.redis_source(stack.deployment) == "external"


# -- the secrets and the output of a fleet ------------------------------------------------------------

@pytest.mark.parametrize("target", TARGETS)
def test_a_fleet_with_its_own_redis_stores_the_url_with_the_password_and_the_peers(target):
    result, seen = run(target, fleet_deployment(target, redis_url=REDIS_URL))
    stored = list(seen["stored"])
    assert stored[-2:] == [fleet.REDIS_URL, fleet.FLEET_PEERS]
    assert seen["stored"][fleet.REDIS_URL] is True  # needs no machine: the machines wait for it
    assert seen["stored"][fleet.FLEET_PEERS] is False  # made from the machines: they cannot wait for it
    assert seen["values"][fleet.REDIS_URL] == fleet.redis_url_with_password(REDIS_URL, HOSTILE_PASSWORD)
    peers = json.loads(seen["values"][fleet.FLEET_PEERS])
    nodes = result.outputs["nodes"]
    assert peers == [n["private_ip"] for n in nodes] and len(set(peers)) == len(nodes) == 2  # node order
    out = result.outputs["fleet"]
    assert out == {"nodes": 2, "redis": {"source": "external", "title": "your own Redis (fleet.redis_url)",
                                         "endpoint": "redis.example.net:6380",
                                         "url_secret_name": out["redis"]["url_secret_name"]},
                   "peers": peers, "peers_secret_name": out["peers_secret_name"]}
    assert {out["redis"]["url_secret_name"], out["peers_secret_name"]} <= set(result.outputs["secret_names"])


@pytest.mark.parametrize("target", MANAGED)
def test_a_fleet_stores_the_managed_redis_url_after_the_network_and_the_machines_wait_for_it(target, monkeypatch):
    calls = stand_in_redis(monkeypatch, target)
    result, seen = run(target, fleet_deployment(target), redis_password=None)
    ((network, firewall, secrets_then),) = calls
    assert network is not None and firewall is not None and secrets_then == []  # after both, before the secrets
    assert seen["values"][fleet.REDIS_URL] == MANAGED_URL
    assert seen["stored"][fleet.REDIS_URL] is True and seen["stored"][fleet.FLEET_PEERS] is False
    assert result.outputs["fleet"]["redis"] == {
        "source": "managed", "title": "stand-in managed Redis", "endpoint": "redis.internal.example:6379",
        "url_secret_name": result.outputs["fleet"]["redis"]["url_secret_name"]}
    assert "managed-redis-token" not in json.dumps(result.outputs)


def test_the_base_component_names_the_target_that_creates_no_redis():
    from kumo_infra.targets.ssh.component import SshKumoMta

    class NoRedis(SshKumoMta):
        pass

    b = type("B", (), {"cp": type("CP", (), {"target": targets.get("ssh")})()})()
    with pytest.raises(NotImplementedError, match="NoRedis.*fleet.redis_url"):
        component.KumoMtaComponent._shared_redis(NoRedis.__new__(NoRedis), b)


@pytest.mark.parametrize("source", ["external", "managed"])
@pytest.mark.parametrize("target", TARGETS)
def test_no_secret_reaches_any_output(target, source, monkeypatch):
    if source == "managed":
        if target not in MANAGED:
            pytest.skip(f"{target} creates no Redis")
        stand_in_redis(monkeypatch, target)
        d, password = fleet_deployment(target), None
    else:
        d, password = fleet_deployment(target, redis_url=REDIS_URL), HOSTILE_PASSWORD
    d["network"] = {"api_cidrs": ["203.0.113.0/24"]}
    result, seen = run(target, d, redis_password=password)
    assert "fleet" in result.outputs and seen["secret_exports"]
    assert not [k for k, is_secret in seen["secret_exports"].items() if is_secret]
    outputs = json.dumps(result.outputs)
    secrets = every_secret_value(result) | {v for k, v in seen["values"].items()
                                            if k not in ("api-tls-cert", fleet.FLEET_PEERS)}
    assert seen["values"][fleet.REDIS_URL] in secrets
    # Public by design, though they travel inside secrets: the peer list (stored with the secrets because
    # it exists only after the machines) and the nodes' addresses (an ssh connection is one secret).
    public = {seen["values"][fleet.FLEET_PEERS]} | {n[k] for n in result.outputs["nodes"] for k in ("public_ip",
                                                                                                    "private_ip")}
    leaked = sorted(s for s in secrets - public if s in outputs and "CERTIFICATE" not in s)
    assert leaked == []
    for needle in (HOSTILE_PASSWORD, urllib.parse.quote(HOSTILE_PASSWORD, safe=""), "managed-redis-token"):
        assert needle not in outputs


@pytest.mark.parametrize("target", TARGETS)
def test_a_preview_of_a_fleet_completes_with_unknown_addresses(target):
    result, _ = run(target, fleet_deployment(target, redis_url=REDIS_URL), preview=True, probe=False)
    assert result.one(targets.get(target).component_class().TYPE)


# -- a single node ------------------------------------------------------------------------------------

@pytest.mark.parametrize("target", TARGETS)
def test_a_single_node_has_no_redis_no_peers_and_no_fleet_output(target):
    result, seen = run(target, single_node(target), redis_password=None)
    assert fleet.REDIS_URL not in seen["stored"] and fleet.FLEET_PEERS not in seen["stored"]
    assert "fleet" not in result.outputs
    assert not [r.name for r in result.resources if "redis" in r.name or "peers" in r.name or "-fw-tsa" in r.name
                or "-fw-xfer" in r.name]


@pytest.mark.parametrize("stack", STACKS)
def test_the_shipped_single_node_stacks_are_unchanged_by_fleets(stack):
    loaded = stackconfig.load_file(ROOT_DIR / "stacks" / f"Pulumi.{stack}.yaml")
    if loaded.plan.nodes > 1:
        pytest.skip("a fleet")
    assert fleet.redis_source(loaded.deployment) == "none"
    assert not [r for r in component.prepare({"deployment": loaded.values[ROOT], "relay_password": "x"},
                                             loaded.deployment.target).rules if r.from_nodes]


# -- sizing ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cloud", MANAGED)
def test_the_sizing_says_a_fleet_shares_its_throttles_and_what_the_managed_redis_costs(cloud):
    from kumo_infra import catalog

    cat = catalog.load(cloud)
    assert cat.redis is not None and cat.redis.price_usd_month == round(cat.redis.price_usd_hour * 730, 2)
    many = sizing.plan(sizing.Workload(cloud=cloud, messages_per_hour=1_000_000, avg_message_kb=50, nodes=3), cat)
    line = next(r for r in many.reasons if "fleet" in r)
    assert line.startswith("3 nodes make a fleet") and "Redis" in line
    assert cat.redis.title in line and f"${cat.redis.price_usd_month:,.2f}/month" in line
    own = sizing.plan(sizing.Workload(cloud=cloud, messages_per_hour=1_000_000, avg_message_kb=50, nodes=3,
                                      external_redis=True), cat)
    assert any("your own (fleet.redis_url)" in r and "$" not in r and "price" not in r for r in own.reasons)
    one = sizing.plan(sizing.Workload(cloud=cloud, messages_per_hour=1_000, avg_message_kb=50), cat)
    assert one.nodes == 1 and any(r.startswith("1 node:") and "no Redis" in r for r in one.reasons)
    assert not any("fleet" in r for r in one.reasons)


def test_every_target_that_creates_a_redis_prices_it_and_no_other_does():
    from kumo_infra import catalog

    for name in catalog.CLOUDS:
        assert (catalog.load(name).redis is not None) == (name in MANAGED), name


def test_machines_that_exist_already_name_your_own_redis():
    plan = sizing.plan_without_catalog(sizing.Workload(cloud="ssh", messages_per_hour=10_000, avg_message_kb=50,
                                                       nodes=2))
    assert any(r.startswith("2 nodes make a fleet") and "your own (fleet.redis_url)" in r for r in plan.reasons)


def test_the_catalogs_redis_entry_is_checked():
    from kumo_infra import catalog

    good = {"title": "t", "instance": "i", "price_usd_hour": 0.1, "price_taken": "2026-01-01", "source": "s"}
    assert catalog._redis("aws", good).price_usd_month == 73.0
    for bad in ({**good, "price_usd_hour": 0}, {**good, "price_usd_hour": True}, {**good, "extra": 1},
                {k: v for k, v in good.items() if k != "source"}):
        with pytest.raises(catalog.CatalogError, match=r"\[redis\]"):
            catalog._redis("aws", bad)

"""The contract every target's component keeps, checked for every target in the registry.

A target gets these checks by registering (kumo_infra.targets.PACKAGES) and describing its
resources in a contract case (tests/contract_deployments.py); a registered target without a
case fails here. Each check runs the real stack program under the mock engine and reads only
recorded inputs and options (kumo_infra.offline), never an SDK internal.
"""

from __future__ import annotations

import base64
import copy
import json

import pulumi
import pytest

from kumo_infra import offline, program, targets
from kumo_infra.bootstrap.policy import API_TLS_PORT, HTTP_PORT
from kumo_infra.clouds.offline_common import COMPUTED
from kumo_infra.component import KumoMtaComponent
from kumo_infra.config import parse_deployment
from kumo_infra.errors import ConfigError
from kumo_infra.netplan import SSH_PORT
from kumo_infra.stackconfig import CORE_SECRETS, plan_for
from kumo_infra.ports import TSA_PORT
from tests.contract_deployments import NODES, ContractCase, case, world_covered

TARGETS = list(targets.registry())
RELAY_PW = "contract-relay-password-value"
SSH_CIDRS = ["198.51.100.0/24", "2001:db8:1::/48"]
API_CIDRS = ["203.0.113.0/24", "2001:db8:2::/48"]
OPEN = {"ssh_cidrs": SSH_CIDRS, "api_cidrs": API_CIDRS}


def deployment_of(c: ContractCase, **overrides) -> dict:
    d = copy.deepcopy(c.deployment)
    d["network"] = {**d.get("network", {}), **OPEN}
    for key, value in overrides.items():
        d[key] = {**d.get(key, {}), **value} if isinstance(value, dict) and key != "network" else value
    return d


def run(target: str, d: dict, *, preview: bool = False, relay_password: str | None = RELAY_PW) -> offline.OfflineResult:
    c = case(target)
    config = {"kumo:deployment": d, **c.config}
    secret_keys = list(c.secret_keys)
    if relay_password is not None:
        config["kumo:relayPassword"] = relay_password
        secret_keys.append("kumo:relayPassword")
    return offline.run(program.run, config, stack="contract", secret_keys=secret_keys, preview=preview)


_RUNS: dict[str, offline.OfflineResult] = {}


def full(target: str) -> offline.OfflineResult:
    """The case's deployment with SSH and the API open: every kind of resource and secret."""
    if target not in _RUNS:
        _RUNS[target] = run(target, deployment_of(case(target)))
    return _RUNS[target]


def secret_values(name: str) -> dict[str, tuple[str, ...]]:
    """Each secret value of deployment ``name`` (offline placeholders for the generated ones) and the
    types besides the store's value holders that may carry it, as a Pulumi secret."""
    key = COMPUTED["tls:index/privateKey:PrivateKey"]
    return {
        RELAY_PW: (),
        key["privateKeyPem"]["value"].format(name=f"{name}-dkim-example-com-kumo"): (),
        COMPUTED["random:index/randomPassword:RandomPassword"]["result"]["value"].format(
            name=f"{name}-api-password"): (),
        key["privateKeyPemPkcs8"]["value"].format(name=f"{name}-api-tls-key"): (),
        # The API key's other form signs the certificate (pulumi_tls takes it as a secret input).
        key["privateKeyPem"]["value"].format(name=f"{name}-api-tls-key"): ("tls:index/selfSignedCert:SelfSignedCert",),
    }


def forms(value: str) -> tuple[str, ...]:
    """The value as a resource may carry it: as it is, or base64-encoded whole (a delivered store's
    payload), and the key material of a PEM alone (its lines between the markers)."""
    found = [value, base64.b64encode(value.encode()).decode()]
    found += [line for line in value.splitlines() if line and "-----" not in line and line != value]
    return tuple(found)


def occurrences(value, needle: str, in_secret: bool = False) -> list[bool]:
    """Where ``needle`` (in any of its forms) is inside recorded data: one entry per string holding it,
    True when that string is inside a Pulumi secret."""
    if offline.is_secret(value):
        return occurrences(value["value"], needle, True)
    if isinstance(value, dict):
        return [f for k, v in value.items() for f in occurrences(k, needle, in_secret) + occurrences(v, needle, in_secret)]
    if isinstance(value, list):
        return [f for v in value for f in occurrences(v, needle, in_secret)]
    return [in_secret] if isinstance(value, str) and any(form in value for form in forms(needle)) else []


# -- the registry ------------------------------------------------------------------------------

@pytest.mark.parametrize("target", TARGETS)
def test_every_target_has_a_case_and_a_component_of_its_own(target):
    c = case(target)  # fails loudly without one
    assert c.deployment["cloud"] == target
    cls = targets.get(target).component_class()
    assert issubclass(cls, KumoMtaComponent) and cls.TARGET == target
    assert cls.TYPE.startswith("kumo:index:") and len({targets.get(t).component_class().TYPE for t in TARGETS}) == len(
        TARGETS)


# -- management ports ------------------------------------------------------------------------

NETWORKS = {
    "closed": {},
    "ssh-and-api-both-families": OPEN,
    "deprecated-admin-cidrs": {"admin_cidrs": ["198.51.100.0/24"]},
}


@pytest.mark.parametrize("network", NETWORKS)
@pytest.mark.parametrize("target", TARGETS)
def test_management_ports_never_open_to_the_world(target, network):
    """22 only from ssh_cidrs, the API's 8443 only from api_cidrs, neither from the whole internet
    (0.0.0.0/0, ::/0, a tag meaning it, or CIDRs covering it) on IPv4 or IPv6; the plain HTTP listener
    (8000) and the TSA daemon (8008) from the deployment's own nodes only, and only in a fleet (the
    case's two nodes are one)."""
    c = case(target)
    d = copy.deepcopy(c.deployment)
    d["network"] = NETWORKS[network]
    result = run(target, d)
    openings = c.ingress(result)
    if openings is None:
        pytest.skip(f"{target} has no firewall of its own: the machines' own network decides")
    net = parse_deployment(d).network
    assert openings, "no inbound rule recorded: the check would prove nothing"
    for opening in openings:
        for port in (HTTP_PORT, TSA_PORT):
            if opening.admits(port):  # a group of the nodes, never a network
                assert opening.sources and all(s == NODES or s.startswith("asg:") for s in opening.sources), opening
        for port, allowed in ((SSH_PORT, net.ssh_cidrs), (API_TLS_PORT, net.api_cidrs)):
            if opening.admits(port):
                assert not world_covered(opening.sources), opening
                assert opening.sources <= set(allowed), opening
    for port, allowed in ((SSH_PORT, net.ssh_cidrs), (API_TLS_PORT, net.api_cidrs)):
        opened = {s for o in openings if o.admits(port) for s in o.sources}
        assert opened == set(allowed), (port, opened)  # every configured source, and none when none is
    for port in (HTTP_PORT, TSA_PORT):  # the peers reach each other
        assert [o for o in openings if o.admits(port) and o.ports is not None], port


def test_world_covered_sees_the_whole_internet_in_any_form():
    assert world_covered(frozenset({"0.0.0.0/0"})) and world_covered(frozenset({"::/0"}))
    assert world_covered(frozenset({"0.0.0.0/1", "128.0.0.0/1"}))
    assert world_covered(frozenset({"*"})) and world_covered(frozenset({"Internet"}))
    assert not world_covered(frozenset({"0.0.0.0/1", "2001:db8::/32"}))


# -- secrets -----------------------------------------------------------------------------------

@pytest.mark.parametrize("target", TARGETS)
def test_secret_values_are_only_in_the_store_as_pulumi_secrets(target):
    """Each value is in the store's value resources (a delivered store: the command that writes it
    on the node) and nowhere else, and always inside a Pulumi secret."""
    c, result = case(target), full(target)
    name = c.deployment["name"]
    for needle, also in secret_values(name).items():
        holders = {r.name: occurrences(r.inputs, needle) for r in result.resources}
        holders = {k: v for k, v in holders.items() if v}
        assert holders, f"{needle!r} is stored nowhere: the case must make every secret"
        for holder, found in holders.items():
            resource = result.named(holder)
            assert resource.type in (*c.value_holders, *also), (needle, holder)
            assert all(found), f"{holder} carries {needle!r} outside a Pulumi secret"


@pytest.mark.parametrize("target", TARGETS)
def test_stored_secrets_are_readable_only_by_the_nodes(target):
    case(target).assert_only_nodes_read(full(target))


@pytest.mark.parametrize("target", TARGETS)
def test_no_secret_value_in_any_output_or_machine_text(target):
    c, result = case(target), full(target)
    texts = c.machine_texts(result)
    assert len(texts) >= 2, "the case has two nodes: their texts must be found"
    for needle in secret_values(c.deployment["name"]):
        assert not occurrences(result.outputs, needle)
        assert not [t for t in texts if any(form in t for form in forms(needle))]
    assert "PRIVATE KEY" not in json.dumps(result.outputs)
    assert not [t for t in texts if "PRIVATE KEY-----\n" in t and "placeholder" in t]


# -- outputs -------------------------------------------------------------------------------------

NODE_KEYS = {"name", "hostname", "public_ip", "private_ip", "machine_id", "ptr", "instance_type", "spool",
             "forward_record"}
RECORD_KEYS = {"name", "type", "value", "why"}
API_KEYS = {"user", "secret_name", "secret_reference", "read_password", "allowed_from", "tls", "example", "note",
            "certificate_renewal", "endpoints", "ca_certificate", "pinned_public_key"}


@pytest.mark.parametrize("target", TARGETS)
def test_outputs_have_the_documented_shape(target):
    """docs/component-spec.md, "Outputs"."""
    c, result = case(target), full(target)
    d = deployment_of(c)
    plan = plan_for(parse_deployment(d))
    out = result.outputs
    assert out["sizing"] == json.loads(json.dumps(plan.to_dict()))
    nodes = out["nodes"]
    assert [n["name"] for n in nodes] == [f"node{i}" for i in range(1, plan.nodes + 1)]
    for node in nodes:
        assert set(node) == NODE_KEYS
        assert node["instance_type"] == plan.instance_type and node["spool"] == plan.spool_storage
        assert set(node["forward_record"]) == {"name", "type", "value", "created"}
        assert node["forward_record"]["value"] == node["public_ip"] and node["forward_record"]["type"] == "A"
        assert node["machine_id"] == c.machine_id(result, node["name"]), node["name"]
    assert out["public_ips"] == [n["public_ip"] for n in nodes] and len(set(out["public_ips"])) == len(nodes)
    assert [n["hostname"] for n in nodes] == ["mta1.example.com", "mta2.example.com"]
    for key in ("dns_records", "deliverability_records"):
        assert all(set(r) == RECORD_KEYS for r in out[key]), key
    assert {r["type"] for r in out["deliverability_records"]} == {"TXT"}
    assert all(isinstance(s, str) for s in out["secret_names"]) and out["secret_names"]
    assert set(out["api"]) == API_KEYS
    assert [e["hostname"] for e in out["api"]["endpoints"]] == [n["hostname"] for n in nodes]
    assert out["api"]["secret_name"] in out["secret_names"]
    closed = copy.deepcopy(c.deployment)
    closed["network"] = {}
    assert run(target, closed).outputs["api"] is None


# -- lifecycle ---------------------------------------------------------------------------------

@pytest.mark.parametrize("protect", [True, False])
@pytest.mark.parametrize("target", TARGETS)
def test_protect_and_retain_follow_lifecycle(target, protect):
    """Machines, spool volumes and the store's secrets are protected exactly when lifecycle.protect
    says so; spool volumes are always retained (queued mail outlives the stack; an ephemeral stack's
    are not: tests/test_ephemeral_lifecycle.py); the generated keys and the API password follow
    lifecycle.protect; the certificate never (renewal replaces it)."""
    c = case(target)
    result = run(target, deployment_of(c, lifecycle={"protect": protect}))
    for kinds, what in ((c.machines, "machine"), (c.volumes, "spool volume"), (c.secret_store, "secret")):
        found = [r for r in result.resources if r.type in kinds]
        assert found or not kinds, f"no {what} recorded"  # a case names none where the target creates none
        for r in found:
            assert r.protect is protect, (what, r.name)
    volumes = [r for r in result.resources if r.type in c.volumes]
    assert all(v.retain_on_delete for v in volumes), [v.name for v in volumes if not v.retain_on_delete]
    generated = result.of_type("tls:index/privateKey:PrivateKey") + result.of_type(
        "random:index/randomPassword:RandomPassword")
    assert len(generated) >= 3 and all(g.protect is protect for g in generated)
    assert result.one("tls:index/selfSignedCert:SelfSignedCert").protect is False


# -- structure ---------------------------------------------------------------------------------

@pytest.mark.parametrize("target", TARGETS)
def test_every_child_is_parented_to_the_component(target):
    c, result = case(target), full(target)
    name = c.deployment["name"]
    component = result.one(targets.get(target).component_class().TYPE)
    assert component.name == name and component.parent is None and component.custom is False
    children = [r for r in result.resources if r is not component]
    assert len(children) >= 5
    for r in children:
        assert r.parent == name and r.parent_urn == component.urn, r.name
        assert r.urn.startswith(f"urn:pulumi:contract::kumo-infra::{component.type}$"), r.urn
        assert r.name.startswith(f"{name}-"), r.name


def component_args(target: str, d: dict, **more) -> dict:
    """The component's arguments as the program passes them: the deployment, the relay password and
    the target's own secrets (Target.secret_config), from the case's stack config."""
    config = case(target).config
    return {"deployment": d, "relay_password": pulumi.Output.secret(RELAY_PW),
            **{arg: pulumi.Output.secret(config[key])
               for arg, key in {**CORE_SECRETS, **targets.get(target).secret_config}.items() if key in config}, **more}


@pytest.mark.parametrize("target", TARGETS)
def test_two_components_of_one_name_are_refused(target):
    c = case(target)
    cls = targets.get(target).component_class()

    def twice():
        args = component_args(target, deployment_of(c))
        cls("same", args)
        cls("same", args)

    with pytest.raises(Exception, match="duplicate resource name") as info:
        offline.run(twice, c.config, stack="contract", secret_keys=list(c.secret_keys))
    assert isinstance(info.value, offline.DuplicateResourceError) or "DuplicateResourceError" in repr(info.value)


def _refused_before_any_resource(program_fn, config: dict, match: str) -> None:
    with pytest.raises((ConfigError, pulumi.RunError), match=match) as info:
        offline.run(program_fn, config, stack="contract")
    assert info.value.offline_resources == []


@pytest.mark.parametrize("target", TARGETS)
def test_component_refuses_another_targets_deployment(target):
    other = next(t for t in TARGETS if t != target)
    cls = targets.get(target).component_class()
    d = deployment_of(case(other))
    _refused_before_any_resource(lambda: cls("x", component_args(target, d)), case(other).config,
                                 r"kumo:deployment\.cloud")


@pytest.mark.parametrize("target", TARGETS)
def test_relay_without_its_password_fails_before_any_resource(target):
    c = case(target)
    cls = targets.get(target).component_class()
    d = deployment_of(c)

    def without_password():
        args = component_args(target, d)  # Outputs are made inside the run, on its event loop
        del args["relay_password"]
        cls("x", args)

    _refused_before_any_resource(without_password, c.config, "kumo:relayPassword")


@pytest.mark.parametrize("target", TARGETS)
def test_preview_with_unknown_values_completes(target):
    c = case(target)
    result = run(target, deployment_of(c), preview=True)
    assert len([r for r in result.resources if r.type in c.machines]) == (2 if c.machines else 0)
    assert result.one(targets.get(target).component_class().TYPE)

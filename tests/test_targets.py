"""The target registry's contract for the pure facts (no Pulumi): every registered target gets
these tests by registering, and the core never branches on a target's name.

Each target is exercised on its own ``Target.example`` deployment. A target of machines that
exist already (no catalog, no images, no region, port 25 to be stated) is proven possible with a
stand-in registered for the test (``bare``), before the ssh target exists.
"""

from __future__ import annotations

import ast
import dataclasses
import subprocess
import sys
import typing
from typing import Any, Optional

import pytest
import yaml
from pydantic import BaseModel

from kumo_infra import catalog, cli, oses, port25, secretspec, sizing, targets
from kumo_infra.config import ROOT, Deployment, parse_deployment
from kumo_infra.errors import ConfigError
from kumo_infra.stackconfig import from_values, plan_for
from kumo_infra.targets import Port25Facts, SecretStore, Target, UnknownTarget
from tests.conftest import ROOT as REPO
from tests.test_cli import assert_bad_input, kumo

TARGETS = list(targets.registry().values())
BY_NAME = pytest.mark.parametrize("target", TARGETS, ids=[t.name for t in TARGETS])
GLOB_CHARACTERS = set("*?[]{}")
EVERY_SECRET = {"network": {"api_cidrs": ["198.51.100.0/24"]}, "dkim": {"domains": ["example.com"]}}


def example(target: Target, **overrides: Any) -> Deployment:
    return parse_deployment({**target.example, **overrides})


# -- the registry ----------------------------------------------------------------------------------

def test_the_registry_holds_every_package_under_its_own_name():
    assert tuple(targets.registry()) == targets.PACKAGES == targets.names()
    for name, target in targets.registry().items():
        assert target.name == name and targets.get(name) is target


def test_an_unknown_target_is_refused_naming_the_known_ones():
    with pytest.raises(UnknownTarget) as info:
        targets.get("nope")
    assert str(info.value) == f"unknown target 'nope'; one of {', '.join(targets.PACKAGES)}"


def test_an_unknown_cloud_in_the_config_names_the_key_and_the_targets():
    with pytest.raises(ConfigError) as info:
        parse_deployment({**TARGETS[0].example, "cloud": "nope"})
    (problem,) = info.value.problems
    assert problem.path == f"{ROOT}.cloud"
    assert problem.message == f"unknown target 'nope'; one of {', '.join(targets.PACKAGES)}"


def test_an_unknown_cloud_in_a_stack_file_exits_2(tmp_path):
    f = tmp_path / "Pulumi.nope.yaml"
    f.write_text("config:\n  kumo:deployment: {cloud: nope, region: us-east-1, name: ab, hostname: mta.example.com}\n")
    assert_bad_input(kumo("validate", "--config", str(f)), f"{ROOT}.cloud: unknown target 'nope'; one of ")


# -- every target's facts --------------------------------------------------------------------------

@BY_NAME
def test_every_field_is_set_and_callable_where_it_is_a_function(target):
    hints = typing.get_type_hints(Target, globalns=vars(targets), localns={
        "BaseModel": BaseModel, "Deployment": Deployment, "SecretSpec": secretspec.SecretSpec, "Plan": sizing.Plan})
    for field in dataclasses.fields(Target):
        value = getattr(target, field.name)
        hint = hints[field.name]
        optional = type(None) in typing.get_args(hint)
        if value is None:
            assert optional, f"{target.name}.{field.name} is None but not optional"
            continue
        if typing.get_origin(hint) is typing.get_origin(typing.Callable) or any(
                typing.get_origin(a) is typing.get_origin(typing.Callable) for a in typing.get_args(hint)):
            assert callable(value), f"{target.name}.{field.name} must be callable"
    for text in (target.title, target.creates, target.secrets.title, target.secrets.backend):
        assert text.strip()
    for facts in (target.secrets, target.port25):
        for field in dataclasses.fields(facts):
            if "Callable" in str(field.type):
                assert callable(getattr(facts, field.name)), f"{target.name}: {field.name}"
    module, _, cls = target.component.partition(":")
    assert module.startswith("kumo_infra.") and cls.isidentifier()  # imported only by the program (Pulumi)
    assert target.example, "give the target an example deployment (Target.example)"


@BY_NAME
def test_the_section_key_is_the_target_name(target):
    field = Deployment.model_fields[target.name]
    assert typing.get_args(field.annotation) == (target.section, type(None)) and field.default is None
    assert issubclass(target.section, BaseModel)
    # Every key the core reads from the section by name exists in it.
    named = [*(k for pair in target.network_pairs for k in pair), target.dns_zone_field]
    for key in filter(None, named):
        assert key in target.section.model_fields, f"{target.name}.{key}"


@BY_NAME
def test_the_example_deployment_is_valid_and_sized(target):
    d = example(target)
    assert d.target is target and d.section is getattr(d, target.name)
    plan = plan_for(d)
    assert plan.cloud == target.name and plan.nodes >= 1
    if target.needs_region:
        assert d.region
        with pytest.raises(ConfigError) as info:
            parse_deployment({k: v for k, v in target.example.items() if k != "region"})
        assert f"{ROOT}.region" in {p.path for p in info.value.problems}


@BY_NAME
def test_images_are_one_table_per_target_over_the_supported_os_keys(target):
    if target.images is None:  # the machines bring their own OS: any supported one
        assert target.os_names(oses.SUPPORTED) == list(oses.SUPPORTED)
        return
    # Exhaustive (None where the target has no image): a new OS makes every target decide.
    assert set(target.images) == set(oses.SUPPORTED)
    present = [key for key, image in target.images.items() if image is not None]
    assert present and target.os_names(oses.SUPPORTED) == [k for k in oses.SUPPORTED if k in present]
    assert len({type(target.images[key]) for key in present}) == 1, "one image class per target"
    assert oses.names_for(target.name) == target.os_names(oses.SUPPORTED)


@BY_NAME
def test_an_os_without_an_image_is_refused_naming_the_choices(target):
    missing = [key for key in oses.SUPPORTED if target.image_for(key) is None]
    if target.images is None or not missing:
        pytest.skip("every supported OS runs here")
    with pytest.raises(ConfigError) as info:
        example(target, os=missing[0])
    found = {p.path: p.message for p in info.value.problems}
    assert f"has no image on {target.name}; choose one of {', '.join(oses.names_for(target.name))}" in \
        found[f"{ROOT}.os"]


@BY_NAME
def test_secret_references_start_with_the_backend(target):
    d = example(target, **EVERY_SECRET)
    specs = secretspec.secret_specs(d)
    assert len(specs) >= 4  # a DKIM key, the API password, its TLS key and certificate (and the relay's)
    for spec in specs:
        ref = secretspec.reference(d, spec)
        assert ref.startswith(f"{target.secrets.backend}:") and secretspec.store_name(d, spec) in ref
        assert "\n" not in ref and "\t" not in ref  # one line of secrets.list each
        command = secretspec.read_command(d, spec)
        assert isinstance(command, str) and command.strip()
    names = [secretspec.store_name(d, spec) for spec in specs]
    assert len(set(names)) == len(names)


@BY_NAME
def test_spool_device_paths_are_exact_paths(target):
    d = example(target)
    for volume_id in (None, "vol-0123456789abcdef0"):
        paths = target.spool_device_paths(d, "block", volume_id)
        if target.catalog is not None:  # kumo-infra attaches the volume, so it knows its names
            assert paths
        for path in paths:
            assert path.startswith("/dev/") and not GLOB_CHARACTERS & set(path), path
        assert target.spool_device_paths(d, "local_nvme", volume_id) == []
    for glob in target.nvme_device_globs:
        assert glob.startswith("/dev/") and " " not in glob


@BY_NAME
def test_port25_facts_give_a_full_report(target):
    d = example(target)
    allowed, why_not = target.port25.direct_allowed(d)
    assert isinstance(allowed, bool) and (allowed or why_not)
    rep = port25.report(d, plan_for(d))
    for key in ("cloud", "requested", "mode", "nodes", "probe", "situation", "operator_must", "kumo_infra_does"):
        assert rep[key], key
    assert rep["cloud"] == target.name and "you must:" in port25.format_report(rep)
    if target.port25.must_be_stated:
        with pytest.raises(ConfigError) as info:
            example(target, port25={"outbound": "auto"})
        assert f"{ROOT}.port25.outbound" in {p.path for p in info.value.problems}


@BY_NAME
def test_checks_and_policies_answer_for_the_example(target):
    d = example(target)
    assert target.check(d) == []
    assert isinstance(target.sets_ptr(d), bool)
    assert isinstance(target.address_after_machine, bool) and isinstance(target.api_read_note, str)
    if target.internet_cap_gbps is not None:
        assert target.internet_cap_gbps > 0 and target.internet_cap_below_vcpu > 0


@BY_NAME
def test_the_catalog_is_the_targets_own(target):
    if target.catalog is None:
        assert target.name not in catalog.CLOUDS
        return
    assert (catalog.CATALOG_DIR / target.catalog).is_file() and target.name in catalog.CLOUDS
    assert catalog.load(target.name).cloud == target.name


@BY_NAME
def test_offline_answers_are_keyed_by_resource_type_tokens(target):
    for token, answers in {**target.offline_computed, **target.offline_invokes}.items():
        assert token.count(":") == 2 and isinstance(answers, dict), token


@BY_NAME
def test_a_section_of_another_target_is_refused(target):
    other = next((t for t in TARGETS if t is not target), None)
    if other is None:
        pytest.skip("one target")
    with pytest.raises(ConfigError) as info:
        example(target, **{other.name: {}})
    found = {p.path: p.message for p in info.value.problems}
    assert found[f"{ROOT}.{other.name}"] == (f"this section is for cloud '{other.name}' but cloud is "
                                              f"'{target.name}'; remove it")


# -- a target of machines that exist already, before the ssh target does -----------------------------

@pytest.fixture
def bare(monkeypatch):
    """A target with no catalog, no images, no region, port 25 to be stated, secrets delivered and
    one node per machine: registered for the test only."""
    base = targets.get(targets.PACKAGES[0])
    fake = dataclasses.replace(
        base, name="bare", title="Existing machines (test)", catalog=None, images=None, needs_region=False,
        section_required=False, check=lambda d: [], dns_zone_field=None, network_pairs=(),
        port25=Port25Facts(direct_allowed=lambda d: (True, ""),
                           describe=lambda d, plan, hosts, ips, out: out.update(
                               situation="the network decides", operator_must=["know your network"]),
                           must_be_stated=True),
        secrets=SecretStore(title="delivered over SSH", backend="delivered",
                            store_name=lambda d, s: s.key, reference=lambda d, s: f"delivered:{s.key}",
                            read_command=lambda d, s: f"sudo cat {s.machine_path}"),
        spool_device_paths=lambda d, storage, volume: [], nvme_device_globs=(), node_count=lambda d: 3,
        secret_config={"bare_key": "kumo:bareKey"}, warnings=lambda d: ["kumo:deployment: bare machines"],
        node_hostnames=lambda d: ["a.example.com", "b.example.com", "c.example.com"],
        spool_storage=lambda d: "directory", render=lambda d, plan, index: f"installer of node {index}\n",
        example={"cloud": "bare", "name": "kumo-bare", "hostname": "mta.example.com",
                 "port25": {"outbound": "direct"}},
        internet_cap_gbps=None)
    monkeypatch.setitem(targets.registry(), "bare", fake)
    monkeypatch.setattr(targets, "PACKAGES", (*targets.PACKAGES, "bare"))
    return fake


def test_a_target_without_region_takes_none_and_any_supported_os(bare):
    for os_key in oses.SUPPORTED:
        d = parse_deployment({**bare.example, "os": os_key})
        assert d.region is None and d.section is None and d.image is None


def test_a_target_whose_port25_must_be_stated_refuses_auto_naming_the_key(bare):
    with pytest.raises(ConfigError) as info:
        parse_deployment({**bare.example, "port25": {}})
    found = {p.path: p.message for p in info.value.problems}
    assert "state outbound: direct" in found[f"{ROOT}.port25.outbound"]


def test_a_target_without_dns_zone_field_refuses_dns_zone(bare):
    with pytest.raises(ConfigError) as info:
        parse_deployment({**bare.example, "dns": {"zone": "example.com"}})
    assert "writes no DNS records" in {p.path: p.message for p in info.value.problems}[f"{ROOT}.dns.zone"]


def test_a_target_without_catalog_plans_the_minimum_per_machine(bare):
    stack = from_values("bare", {ROOT: {**bare.example, "sizing": {"messages_per_hour": 3_000_000}}})
    plan = stack.plan
    assert plan.instance_type == sizing.EXISTING and plan.nodes == 3  # Target.node_count, not the planner
    assert plan.vcpu == sizing.vcpu_needed(3_000_000 * 1.5 / 3) and plan.memory_gib == sizing.MIN_MEMORY_GIB
    assert plan.required_mbps_per_node == pytest.approx(sizing.bandwidth_mbps(3_000_000, 50) * 1.5 / 3, abs=0.001)


def test_a_target_without_catalog_has_no_list_to_show(bare, capsys):
    assert cli.main(["size", "--cloud", "bare", "--list"]) == 2
    err = capsys.readouterr().err
    assert "--cloud: Existing machines (test) has no instance catalog to list" in err and "Traceback" not in err


def test_a_target_without_catalog_sizes_by_the_number_of_machines(bare, capsys):
    flags = ["size", "--cloud", "bare", "--messages-per-hour", "1000000", "--avg-message-kb", "50"]
    assert cli.main(flags) == 2 and "--nodes: " in capsys.readouterr().err
    assert cli.main([*flags, "--nodes", "2"]) == 0
    out = capsys.readouterr().out
    assert "2 existing (no catalog: the minimum each must have)" in out and "price" not in out


def test_a_target_names_its_machines_and_decides_where_the_spool_lives(bare):
    stack = from_values("bare", {ROOT: bare.example})
    d = stack.deployment
    assert [d.node_hostname(i, stack.plan.nodes) for i in range(3)] == ["a.example.com", "b.example.com",
                                                                        "c.example.com"]
    assert d.spool_storage == stack.plan.spool_storage == "directory"
    rep = port25.report(d, stack.plan)
    assert [n["hostname"] for n in rep["nodes"]] == ["a.example.com", "b.example.com", "c.example.com"]


def test_a_targets_warnings_and_unset_secret_config_are_said(bare):
    warnings = from_values("bare", {ROOT: bare.example}).warnings
    assert "kumo:deployment: bare machines" in warnings
    assert ("kumo:bareKey is not set; before pulumi up run: pulumi config set --secret kumo:bareKey < FILE"
            in warnings)


def test_render_prints_what_the_target_sends(bare, tmp_path, capsys):
    f = tmp_path / "Pulumi.bare.yaml"
    f.write_text(yaml.safe_dump({"config": {ROOT: bare.example}}))
    assert cli.main(["render", "--config", str(f), "--node", "2"]) == 0
    assert capsys.readouterr().out == "installer of node 2\n"


# -- the core never branches on a target's name -------------------------------------------------------

# The names a module outside kumo_infra/targets/ must not compare with or index by (ssh: the next one).
TARGET_NAMES = {*targets.PACKAGES, "ssh"}
PACKAGE = REPO / "kumo_infra"
# Node-side scripts: their fetch table is keyed by SecretStore.backend, the reference's prefix, which
# for the clouds happens to be spelled like the target.
NODE_SCRIPTS = PACKAGE / "bootstrap" / "files"


def _names_a_target(node: Optional[ast.AST]) -> bool:
    if isinstance(node, ast.Constant):
        return node.value in TARGET_NAMES
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return any(_names_a_target(e) for e in node.elts)
    return False


def branches_on_a_target_name(source: str) -> list[tuple[int, str]]:
    """(line, what) for every comparison with, index by, dict key, getattr or case of a target name."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare) and any(map(_names_a_target, [node.left, *node.comparators])):
            found.append((node.lineno, "compares with a target name"))
        elif isinstance(node, ast.Subscript) and _names_a_target(node.slice):
            found.append((node.lineno, "indexes by a target name"))
        elif isinstance(node, ast.Dict) and any(map(_names_a_target, node.keys)):
            found.append((node.lineno, "a dict keyed by a target name"))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr")
              and len(node.args) > 1 and _names_a_target(node.args[1])):
            found.append((node.lineno, "an attribute named after a target"))
        elif isinstance(node, ast.MatchValue) and _names_a_target(node.value):
            found.append((node.lineno, "a case of a target name"))
    return found


def test_the_guard_sees_each_kind_of_branch():
    source = ('if d.cloud == "aws": pass\nx = {"gcp": 1}["gcp"]\ny = cloud in ("azure", "other")\n'
              'z = getattr(d, "ssh")\nmatch c:\n    case "aws": pass\nok = prepare(args, "aws")\n')
    assert sorted(line for line, _ in branches_on_a_target_name(source)) == [1, 2, 2, 3, 4, 6]


def test_no_module_outside_the_targets_branches_on_a_target_name():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        if path.is_relative_to(PACKAGE / "targets") or path.is_relative_to(NODE_SCRIPTS):
            continue
        found += [f"{rel}:{line}: {what}" for line, what in branches_on_a_target_name(path.read_text())]
    assert not found, "ask kumo_infra.targets.get(name) instead:\n" + "\n".join(found)


def test_the_registry_and_the_config_model_load_no_pulumi():
    # validate, size and port25 run without any cloud SDK: the targets name their components as text.
    probe = ("import sys; from kumo_infra import targets, stackconfig, port25, cli; targets.registry(); "
             "print(sorted(m for m in sys.modules if m.split('.')[0].startswith('pulumi')))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result

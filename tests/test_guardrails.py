"""kumo_infra.guardrails: the rules the policy pack and ``kumo-infra plan --policy`` enforce.

Every example stack and every target's example deployment, run through the real program under the
mock engine, has no mandatory violation, and its advisories are exactly what its own outputs say
(nodes without PTR, on local NVMe, on a burstable type). Each rule is tripped, alone, by plans
broken by hand (the example plans' recorded resources edited, user data re-encoded as the target
encodes it) and by neighbours' resources registered through the real provider SDKs. The names the
rules read are the engine's, checked against the provider SDKs' own tables.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import functools
import gzip
import importlib
import ipaddress
import itertools
import re
import subprocess
import sys
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Callable, Optional

import pulumi
import pytest
from pulumi import _types as pulumi_types
from pulumi.runtime import rpc

from kumo_infra import catalog, cli, guardrails, netplan, offline, planview, program, stackconfig, targets
from kumo_infra.addresses import LARGEST_PUBLIC_PREFIX, list_problem
from kumo_infra.errors import ConfigError, Problem
from kumo_infra.guardrails import ADVISORY, MANDATORY, RULES, Resource
from tests.conftest import ROOT, STACKS
from tests.test_cli import kumo

PORTS = "kumo-management-ports-not-public"
IMDS = "kumo-aws-imdsv2-required"
DISKS = "kumo-disks-encrypted"
SECRETS = "kumo-no-secrets-in-machine-data"
RELAY = "kumo-no-open-relay"
PTR = "kumo-ptr-set"
NVME = "kumo-spool-survives-stop"
BURSTABLE = "kumo-no-burstable-instances"

KEY_BODY = "MIIEowIBAAKCAQEAguardrailsTestKeyBodyNeverShown"
PEM = f"-----BEGIN RSA PRIVATE KEY-----\n{KEY_BODY}\n-----END RSA PRIVATE KEY-----\n"


# -- the example plans ------------------------------------------------------------------------------

CASES = [f"stack {s}" for s in STACKS] + [f"target {name}" for name in targets.registry()]


def stack_of(case: str) -> stackconfig.StackConfig:
    kind, _, name = case.partition(" ")
    if kind == "stack":
        return stackconfig.load_file(stackconfig.stack_path(name), name)
    return stackconfig.from_values(f"{name}-example", {"kumo:deployment": targets.get(name).example})


@dataclasses.dataclass(frozen=True)
class Planned:
    stack: stackconfig.StackConfig
    result: offline.OfflineResult
    resources: list[Resource]
    known: dict[str, str]  # the plan's secret placeholder, a known secret value

    def violations(self, resources: Optional[list[Resource]] = None) -> list[guardrails.Violation]:
        return guardrails.check_resources(self.resources if resources is None else resources, self.known)


@functools.cache
def planned(case: str) -> Planned:
    stack = stack_of(case)
    values, keys = planview.stack_config_values(stack)
    result = offline.run(program.run, values, stack=stack.stack, secret_keys=keys)
    return Planned(stack, result, guardrails.resources_of(result), {"the plan's secret": planview.SECRET_PLACEHOLDER})


def of_rule(violations, rule: str) -> list[guardrails.Violation]:
    return [v for v in violations if v.rule == rule]


# -- the rules themselves ---------------------------------------------------------------------------

def test_the_rules_are_the_issues_five_mandatory_and_three_advisory():
    assert {r.name: r.level for r in RULES} == {
        PORTS: MANDATORY, IMDS: MANDATORY, DISKS: MANDATORY, SECRETS: MANDATORY, RELAY: MANDATORY,
        PTR: ADVISORY, NVME: ADVISORY, BURSTABLE: ADVISORY}


@pytest.mark.parametrize("rule", RULES, ids=[r.name for r in RULES])
def test_every_rule_says_what_it_checks_and_how_to_fix_it(rule):
    assert re.fullmatch(r"kumo-[a-z0-9-]+", rule.name)
    assert len(rule.description) > 60 and len(rule.remediation) > 40
    assert rule.check_resource or rule.check_stack


def test_the_management_ports_are_kumo_infras_own():
    assert set(guardrails.MANAGEMENT_PORTS) == netplan.management_ports()


@pytest.mark.parametrize("cloud", catalog.CLOUDS)
def test_the_burstable_pattern_is_the_catalogs_burstable_flag(cloud):
    types = catalog.load(cloud).types
    assert any(t.burstable_cpu for t in types) and not all(t.burstable_cpu for t in types)
    assert {t.name: bool(guardrails.BURSTABLE.fullmatch(t.name)) for t in types} == {
        t.name: t.burstable_cpu for t in types}


@pytest.mark.parametrize("sources", [
    ["0.0.0.0/0"], ["::/0"], ["Internet"], ["*"], ["Any"], ["0.0.0.0/1", "128.0.0.0/1"], ["::/1", "8000::/1"],
    ["10.0.0.0/8", "0.0.0.0/0"], ["203.0.113.0/24", "0.0.0.0/1"],
])
def test_the_internet_in_any_form_is_seen(sources):
    assert guardrails.covers_the_internet(sources)


@pytest.mark.parametrize("sources", [
    [], ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"], ["203.0.113.0/24", "2001:db8::/48"],
    ["VirtualNetwork", "AzureLoadBalancer"], ["sg-0123456789"],
])
def test_own_networks_and_names_are_not_the_internet(sources):
    assert not guardrails.covers_the_internet(sources)


@pytest.mark.parametrize("version", [4, 6])
def test_the_internet_starts_where_kumo_infras_config_stops(version):
    """The widest public list the config accepts (256 of the largest blocks) is not the internet; one more
    block is: both sides of addresses.list_problem's budget."""
    prefix = LARGEST_PUBLIC_PREFIX[version]
    first = ipaddress.ip_network("12.0.0.0/7" if version == 4 else "2400::/7")
    blocks = [str(n) for n in itertools.islice(first.subnets(new_prefix=prefix), 257)]
    assert list_problem(blocks[:256]) is None and list_problem(blocks) is not None
    assert not guardrails.covers_the_internet(blocks[:256]) and guardrails.covers_the_internet(blocks)


def test_guardrails_load_neither_pulumi_nor_pydantic():
    """The policy pack's environment has neither: only the standard library and kumo_infra's pure modules."""
    probe = ("import sys, kumo_infra.guardrails; "
             "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pulumi', 'pydantic', 'yaml', 'kumo_infra')))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert eval(out) == ["kumo_infra", "kumo_infra.addresses", "kumo_infra.errors", "kumo_infra.guardrails",
                         "kumo_infra.ports"]


# -- the examples ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", CASES)
def test_no_example_breaks_a_mandatory_rule(case):
    assert [v for v in planned(case).violations() if v.level == MANDATORY] == []


@pytest.mark.parametrize("case", CASES)
def test_the_examples_advisories_are_what_their_own_outputs_say(case):
    """Independent oracles: the nodes the component outputs (ptr, spool) and the catalog's burstable flag."""
    p = planned(case)
    nodes = p.result.outputs["nodes"]
    violations = p.violations()
    makes_addresses = any(r.type in guardrails.PTR_SET for r in p.resources)
    assert len(of_rule(violations, PTR)) == (sum(n["ptr"] is None for n in nodes) if makes_addresses else 0)
    assert len(of_rule(violations, NVME)) == sum(n["spool"] == "local_nvme" for n in nodes)
    target = p.stack.deployment.target
    types = catalog.load(target.name) if target.catalog else None
    assert len(of_rule(violations, BURSTABLE)) == sum(bool(types and types.get(n["instance_type"]).burstable_cpu)
                                                      for n in nodes)
    assert {v.level for v in violations} <= {ADVISORY}


@pytest.mark.parametrize("case", CASES)
def test_the_relay_rule_reads_the_policy_every_node_boots(case):
    """Not vacuous: in each node's machine text (user data, custom data, metadata or installer, decoded) the
    rule finds the rendered init.lua's relay_hosts, and its bootstrap.env spool line."""
    p = planned(case)
    with_policy = []
    for r in p.resources:
        texts = [text for _, text in guardrails.machine_texts(r)]
        lists = [name for text in texts for name, _ in guardrails.kumo_host_lists(text)]
        if "relay_hosts" in lists:
            with_policy.append(r.name)
            assert any(re.search(r"^\s*KUMO_SPOOL_STORAGE=", t, re.M) for t in texts), r.name
    assert len(with_policy) == len(p.result.outputs["nodes"]), with_policy


@pytest.mark.parametrize("case", ["stack aws-dev", "stack ssh-lab"])
def test_check_stack_is_the_offline_check_of_the_stacks_plan(case):
    assert guardrails.check_stack(stack_of(case)) == planned(case).violations()


def test_check_stack_knows_the_plans_secret_placeholder(monkeypatch):
    """The offline plan carries each secret config value as planview's placeholder: check_stack looks for
    it in every machine text. A placeholder that every node's bootstrap.env holds shows it."""
    assert planned("stack gcp-dev").stack.deployment.outbound_mode == "relay"  # it has a secret: the relay's password
    monkeypatch.setattr(planview, "SECRET_PLACEHOLDER", "KUMO_SPOOL_STORAGE")
    found = of_rule(guardrails.check_stack(stack_of("stack gcp-dev")), SECRETS)
    assert [(v.name, v.message) for v in found] == [
        ("kumo-gcpdev-node1-vm", "metadata holds the value of the secret config (kumo:relayPassword)")]


def test_check_stack_raises_the_config_error_the_program_refuses_with(monkeypatch):
    """As planview.run_plan does, so the CLI exits 2 naming the key."""
    refusal = ConfigError(Problem("kumo:deployment.name", "refused for the test"))

    def refuse() -> None:
        raise program.StackConfigError(refusal)

    monkeypatch.setattr(program, "run", refuse)
    with pytest.raises(ConfigError) as info:
        guardrails.check_stack(stack_of("stack aws-dev"))
    assert info.value is refusal


# -- plans broken by hand ------------------------------------------------------------------------------------

def rewrite(text: str, old: str, new: str) -> str:
    """``text`` with ``old`` replaced in whichever layer holds it, re-encoded as the target encoded it: the
    whole value base64 (gzip inside: AWS user data, Azure custom data) or files in heredocs of wrapped
    base64 (GCP's startup script, the ssh installer)."""
    if old in text:
        return text.replace(old, new)
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError:
        raw = None
    if raw is not None:
        packed = raw[:2] == b"\x1f\x8b"
        inner = (gzip.decompress(raw) if packed else raw).decode()
        changed = rewrite(inner, old, new)
        data = changed.encode()
        return base64.b64encode(gzip.compress(data) if packed else data).decode()

    def file(m: re.Match) -> str:
        body = base64.b64decode(m.group(2)).decode()
        return m.group(1) + base64.encodebytes(rewrite(body, old, new).encode()).decode().rstrip("\n") + m.group(3)

    return re.sub(r"(<<'KUMO_EOF'\n)(.*?)(\nKUMO_EOF)", file, text, flags=re.S)


def at(props: dict, path: str) -> tuple[dict, str]:
    *parents, leaf = path.split(".")
    for key in parents:
        props = props[int(key)] if isinstance(props, list) else props[key]
    return props, leaf


def edit(name: str, change: Callable[[dict], None]) -> Callable[[list[Resource]], list[Resource]]:
    """The resources with resource ``name``'s properties changed (on a copy)."""
    def apply(resources: list[Resource]) -> list[Resource]:
        assert name in [r.name for r in resources], name
        return [dataclasses.replace(r, props=_changed(r.props, change)) if r.name == name else r for r in resources]
    return apply


def _changed(props: Mapping, change: Callable[[dict], None]) -> dict:
    copied = copy.deepcopy(dict(props))
    change(copied)
    return copied


def setting(path: str, value: Any) -> Callable[[dict], None]:
    def change(props: dict) -> None:
        parent, leaf = at(props, path)
        parent[leaf] = value
    return change


def removing(path: str) -> Callable[[dict], None]:
    def change(props: dict) -> None:
        parent, leaf = at(props, path)
        del parent[leaf]
    return change


def text_edit(path: str, old: str, new: str) -> Callable[[dict], None]:
    def change(props: dict) -> None:
        parent, leaf = at(props, path)
        changed = rewrite(parent[leaf], old, new)
        assert changed != parent[leaf], f"{old!r} is nowhere in {path}"
        parent[leaf] = changed
    return change


def nsg_rule(rule_name: str, **values: Any) -> Callable[[dict], None]:
    def change(props: dict) -> None:
        (rule,) = [r for r in props["securityRules"] if r["name"] == rule_name]
        rule.update(values)
    return change


def adding(name: str, copy_of: str, change: Callable[[dict], None]) -> Callable[[list[Resource]], list[Resource]]:
    def apply(resources: list[Resource]) -> list[Resource]:
        (source,) = [r for r in resources if r.name == copy_of]
        return resources + [dataclasses.replace(source, name=name, urn=source.urn.replace(copy_of, name),
                                                props=_changed(source.props, change))]
    return apply


def dropping(name: str) -> Callable[[list[Resource]], list[Resource]]:
    def apply(resources: list[Resource]) -> list[Resource]:
        assert name in [r.name for r in resources], name
        return [r for r in resources if r.name != name]
    return apply


def both(*steps: Callable[[list[Resource]], list[Resource]]) -> Callable[[list[Resource]], list[Resource]]:
    return lambda resources: functools.reduce(lambda rs, step: step(rs), steps, resources)


@dataclasses.dataclass(frozen=True)
class Break:
    id: str
    rule: str
    case: str
    breaks: Callable[[list[Resource]], list[Resource]]
    # Applied to the base and the broken plan alike: makes the example comply first where it does not.
    first: Callable[[list[Resource]], list[Resource]] = lambda resources: resources


AWS_SSH = "kumo-prod-fw-ssh-198.51.100.10-32"
AWS_API = "kumo-prod-fw-kumo-api-198.51.100.0-24"
GCP_SMTP_V4, GCP_SMTP_V6 = "kumo-gcpdev-fw-smtp-v4", "kumo-gcpdev-fw-smtp-v6"
GCP_SCRIPT = "metadata.startup-script"
SSH_INSTALLER = "source.asset.text"
RELAY_LIST = "relay_hosts = { '127.0.0.1', '::1' }"
TRUSTED_LIST = "trusted_hosts = { '127.0.0.1', '::1' }"
AZURE_RULE = {"access": "Allow", "direction": "Inbound", "protocol": "Tcp", "sourcePortRange": "*",
              "destinationAddressPrefix": "*", "priority": 200.0}

BREAKS = [
    # management ports
    Break("ssh-from-the-ipv4-internet", PORTS, "stack aws-prod", edit(AWS_SSH, setting("cidrIpv4", "0.0.0.0/0"))),
    Break("api-tls-from-the-ipv6-internet", PORTS, "stack aws-prod",
          edit(AWS_API, lambda p: (p.pop("cidrIpv4"), p.update(cidrIpv6="::/0")))),
    # Each /9 alone is within what the config lets one list open (2^24 addresses); the three together are not.
    Break("ssh-spread-over-three-rules", PORTS, "stack aws-prod", both(
        edit(AWS_SSH, setting("cidrIpv4", "12.0.0.0/9")),
        adding("second", AWS_SSH, setting("cidrIpv4", "12.128.0.0/9")),
        adding("third", AWS_SSH, setting("cidrIpv4", "13.0.0.0/9")))),
    Break("azure-port-range-covering-ssh", PORTS, "stack azure-dev",
          edit("kumo-azdev-firewall", nsg_rule("allow-smtp-v4", destinationPortRange="20-30"))),
    Break("azure-internet-tag-to-the-loopback-api-port", PORTS, "stack azure-dev", edit("kumo-azdev-firewall",
          lambda p: p["securityRules"].append({**AZURE_RULE, "name": "api", "sourceAddressPrefix": "Internet",
                                               "destinationPortRange": "8000"}))),
    Break("gcp-ssh-from-the-ipv6-internet", PORTS, "stack gcp-dev",
          edit(GCP_SMTP_V6, setting("allows", [{"protocol": "tcp", "ports": ["22"]}]))),
    Break("gcp-internet-as-two-halves-in-one-rule", PORTS, "stack gcp-dev", edit(GCP_SMTP_V4, lambda p: p.update(
        sourceRanges=["0.0.0.0/1", "128.0.0.0/1"], allows=[{"protocol": "tcp", "ports": ["8443"]}]))),
    Break("gcp-every-protocol", PORTS, "stack gcp-dev", edit(GCP_SMTP_V4, setting("allows", [{"protocol": "all"}]))),
    # IMDSv2
    Break("http-tokens-optional", IMDS, "stack aws-prod",
          edit("kumo-prod-node1-vm", setting("metadataOptions.httpTokens", "optional"))),
    Break("no-metadata-options", IMDS, "stack aws-dev", edit("kumo-dev-node1-vm", removing("metadataOptions"))),
    # disks
    Break("aws-root-unencrypted", DISKS, "stack aws-prod",
          edit("kumo-prod-node1-vm", setting("rootBlockDevice.encrypted", False))),
    Break("aws-spool-volume-without-encrypted", DISKS, "stack aws-dev",
          edit("kumo-dev-node1-spool", removing("encrypted"))),
    Break("azure-without-encryption-at-host", DISKS, "stack azure-dev",
          edit("kumo-azdev-node1-vm", setting("securityProfile.encryptionAtHost", False))),
    # secrets in what machines boot
    Break("key-in-aws-user-data", SECRETS, "stack aws-dev",
          edit("kumo-dev-node1-vm", text_edit("userDataBase64", "#cloud-config\n", "#cloud-config\n" + PEM))),
    Break("key-in-azure-custom-data", SECRETS, "stack azure-dev",
          edit("kumo-azdev-node1-vm", text_edit("osProfile.customData", "#cloud-config\n", "#cloud-config\n" + PEM))),
    Break("key-in-a-file-gcps-startup-script-writes", SECRETS, "stack gcp-dev", edit("kumo-gcpdev-node1-vm",
          text_edit(GCP_SCRIPT, "local kumo = require 'kumo'", f"local kumo = require 'kumo'\n--[[{PEM}]]"))),
    Break("key-in-the-ssh-installer", SECRETS, "stack ssh-lab", edit("kumo-lab-node1-installer",
          text_edit(SSH_INSTALLER, "set -euo pipefail\n", f"set -euo pipefail\n: '{PEM}'\n"))),
    Break("secret-config-value-in-aws-user-data", SECRETS, "stack aws-dev", edit("kumo-dev-node1-vm", text_edit(
        "userDataBase64", "#cloud-config\n", f"#cloud-config\n# {planview.SECRET_PLACEHOLDER}\n"))),
    # open relay
    Break("relay-to-the-ipv4-internet-in-aws-user-data", RELAY, "stack aws-prod", edit("kumo-prod-node1-vm", text_edit(
        "userDataBase64", "'10.20.0.0/16' }", "'10.20.0.0/16', '0.0.0.0/0' }"))),
    Break("trusted-ipv6-internet-in-a-file-gcp-writes", RELAY, "stack gcp-dev", edit("kumo-gcpdev-node1-vm", text_edit(
        GCP_SCRIPT, TRUSTED_LIST, "trusted_hosts = { '127.0.0.1', '::1', '::/0' }"))),
    Break("relay-to-two-halves-in-the-ssh-installer", RELAY, "stack ssh-lab", edit(
        "kumo-lab-node2-installer",
        text_edit(SSH_INSTALLER, RELAY_LIST, "relay_hosts = { '127.0.0.1', '::1', '0.0.0.0/1', '128.0.0.0/1' }"))),
    Break("relay-in-azure-custom-data", RELAY, "stack azure-dev", edit("kumo-azdev-node1-vm", text_edit(
        "osProfile.customData", RELAY_LIST, "relay_hosts = { '*' }"))),
    Break("relay-cidrs-of-the-component", RELAY, "stack aws-dev",
          edit("kumo-dev", setting("deployment.kumomta", {"relay_cidrs": ["0.0.0.0/0"]}))),
    # PTR
    Break("aws-address-without-its-domain-name", PTR, "stack aws-prod", dropping("kumo-prod-node1-ptr")),
    Break("azure-address-without-reverse-fqdn", PTR, "stack azure-dev",
          edit("kumo-azdev-node1-ip", removing("dnsSettings.reverseFqdn")),
          first=edit("kumo-azdev-node1-ip", setting("dnsSettings.reverseFqdn", "mta-azdev.example.com."))),
    Break("gcp-access-config-without-ptr", PTR, "stack gcp-dev",
          edit("kumo-gcpdev-node1-vm", removing("networkInterfaces.0.accessConfigs.0.publicPtrDomainName")),
          first=edit("kumo-gcpdev-node1-vm", setting("networkInterfaces.0.accessConfigs.0.publicPtrDomainName",
                                                     "mta-gcpdev.example.com."))),
    # spool on local NVMe
    Break("aws-spool-on-local-nvme", NVME, "stack aws-dev", edit("kumo-dev-node1-vm", text_edit(
        "userDataBase64", "KUMO_SPOOL_STORAGE=block", "KUMO_SPOOL_STORAGE=local_nvme"))),
    Break("azure-spool-on-local-nvme", NVME, "stack azure-dev", edit("kumo-azdev-node1-vm", text_edit(
        "osProfile.customData", "KUMO_SPOOL_STORAGE=block", "KUMO_SPOOL_STORAGE=local_nvme"))),
    Break("gcp-spool-on-local-nvme", NVME, "stack gcp-dev", edit("kumo-gcpdev-node1-vm", text_edit(
        GCP_SCRIPT, "KUMO_SPOOL_STORAGE=block", "KUMO_SPOOL_STORAGE=local_nvme"))),
    # burstable machines
    Break("aws-t3", BURSTABLE, "stack aws-prod", edit("kumo-prod-node1-vm", setting("instanceType", "t3.large"))),
    Break("azure-b-series", BURSTABLE, "stack azure-dev",
          edit("kumo-azdev-node1-vm", setting("hardwareProfile.vmSize", "Standard_B2s")),
          first=edit("kumo-azdev-node1-vm", setting("hardwareProfile.vmSize", "Standard_D2s_v5"))),
    Break("gcp-shared-core-named-by-url", BURSTABLE, "stack gcp-dev",
          edit("kumo-gcpdev-node1-vm", setting("machineType", "zones/us-central1-a/machineTypes/e2-small")),
          first=edit("kumo-gcpdev-node1-vm", setting("machineType", "n2-standard-2"))),
]


def broken_plans() -> list[tuple[Break, list[Resource], list[Resource]]]:
    """(break, base, broken) for every entry of BREAKS."""
    found = []
    for b in BREAKS:
        base = b.first(planned(b.case).resources)
        found.append((b, base, b.breaks(base)))
    return found


def diff(case: str, base: list[Resource], broken: list[Resource]) -> tuple[set, set]:
    p = planned(case)
    before, after = set(p.violations(base)), set(p.violations(broken))
    return after - before, before - after


def test_every_rule_is_broken_by_hand_on_every_target_it_reads():
    broken = {(b.rule, planned(b.case).stack.deployment.cloud) for b in BREAKS}
    machines = {t for t in targets.registry() if targets.get(t).catalog}
    for rule in (PORTS, DISKS, SECRETS, RELAY, PTR, NVME, BURSTABLE):
        assert {cloud for r, cloud in broken if r == rule} >= (machines if rule != DISKS else {"aws", "azure"}), rule
    assert {cloud for r, cloud in broken if r in (SECRETS, RELAY)} >= set(targets.registry())


@pytest.mark.parametrize("b", BREAKS, ids=[b.id for b in BREAKS])
def test_a_plan_broken_by_hand_trips_exactly_its_rule(b):
    base = b.first(planned(b.case).resources)
    new, gone = diff(b.case, base, b.breaks(base))
    assert new and {v.rule for v in new} == {b.rule}, sorted(new)
    assert not gone, sorted(gone)
    assert not of_rule(planned(b.case).violations(base), b.rule) or b.rule in (NVME, BURSTABLE, PTR)


def test_a_range_spread_over_rules_is_reported_on_each_naming_the_others():
    b = next(b for b in BREAKS if b.id == "ssh-spread-over-three-rules")
    new, _ = diff(b.case, planned(b.case).resources, b.breaks(planned(b.case).resources))
    assert sorted(v.name for v in new) == sorted([AWS_SSH, "second", "third"])
    names = ", ".join(sorted([AWS_SSH, "second", "third"]))
    together = f"with {names} together from 12.0.0.0/9, 12.128.0.0/9, 13.0.0.0/9"
    assert all(v.message.startswith("the rule admits SSH (22/tcp) from 1") and v.message.endswith(together)
               for v in new), new


# -- neighbours: other resources of a program, registered through the provider SDKs ------------------------------

def _aws_neighbours() -> dict[str, pulumi.Resource]:
    import pulumi_aws as aws

    ec2 = aws.ec2
    safe_metadata = ec2.LaunchTemplateMetadataOptionsArgs(http_tokens="required")

    def launch_configuration(name: str, http_tokens: str = "required", **extra: Any) -> ec2.LaunchConfiguration:
        return ec2.LaunchConfiguration(
            name, image_id="ami-0", instance_type="m6i.large",
            metadata_options=ec2.LaunchConfigurationMetadataOptionsArgs(http_tokens=http_tokens),
            root_block_device=ec2.LaunchConfigurationRootBlockDeviceArgs(encrypted=True), **extra)

    return {
        "sg-every-protocol-from-the-ipv6-internet": ec2.SecurityGroup("nb-sg-open", ingress=[
            ec2.SecurityGroupIngressArgs(protocol="-1", from_port=0, to_port=0, ipv6_cidr_blocks=["::/0"])]),
        "sg-smtp-from-the-internet": ec2.SecurityGroup("nb-sg-smtp", ingress=[
            ec2.SecurityGroupIngressArgs(protocol="tcp", from_port=25, to_port=25, cidr_blocks=["0.0.0.0/0"])]),
        "sg-rule-ssh-range-from-the-internet": ec2.SecurityGroupRule(
            "nb-rule-ssh", type="ingress", protocol="tcp", from_port=20, to_port=30, cidr_blocks=["0.0.0.0/0"],
            security_group_id="sg-0"),
        "sg-rule-udp-22-from-the-internet": ec2.SecurityGroupRule(
            "nb-rule-udp", type="ingress", protocol="udp", from_port=22, to_port=22, cidr_blocks=["0.0.0.0/0"],
            security_group_id="sg-0"),
        "sg-rule-ssh-out-to-the-internet": ec2.SecurityGroupRule(
            "nb-rule-egress", type="egress", protocol="tcp", from_port=22, to_port=22, cidr_blocks=["0.0.0.0/0"],
            security_group_id="sg-0"),
        "launch-template-imdsv1": ec2.LaunchTemplate(
            "nb-lt-imds", instance_type="m6i.large",
            metadata_options=ec2.LaunchTemplateMetadataOptionsArgs(http_tokens="optional")),
        "launch-template-unencrypted-ebs": ec2.LaunchTemplate(
            "nb-lt-ebs", instance_type="m6i.large", metadata_options=safe_metadata, block_device_mappings=[
                ec2.LaunchTemplateBlockDeviceMappingArgs(
                    device_name="/dev/xvda", ebs=ec2.LaunchTemplateBlockDeviceMappingEbsArgs(encrypted="false"))]),
        "launch-template-encrypted-ebs": ec2.LaunchTemplate(
            "nb-lt-ok", instance_type="m6i.large", metadata_options=safe_metadata, block_device_mappings=[
                ec2.LaunchTemplateBlockDeviceMappingArgs(
                    device_name="/dev/xvda", ebs=ec2.LaunchTemplateBlockDeviceMappingEbsArgs(encrypted="true"))]),
        "launch-template-burstable": ec2.LaunchTemplate("nb-lt-t4g", instance_type="t4g.small",
                                                         metadata_options=safe_metadata),
        "launch-template-key-in-user-data": ec2.LaunchTemplate(
            "nb-lt-key", instance_type="m6i.large", metadata_options=safe_metadata,
            user_data=base64.b64encode(f"#!/bin/sh\ncat > /root/key <<EOF\n{PEM}EOF\n".encode()).decode()),
        "instance-from-a-launch-template": ec2.Instance(
            "nb-vm-template", instance_type="m6i.large", launch_template=ec2.InstanceLaunchTemplateArgs(id="lt-0")),
        "instance-unencrypted-ebs-device": ec2.Instance(
            "nb-vm-ebs", ami="ami-0", instance_type="m6i.large",
            metadata_options=ec2.InstanceMetadataOptionsArgs(http_tokens="required"),
            root_block_device=ec2.InstanceRootBlockDeviceArgs(encrypted=True),
            ebs_block_devices=[ec2.InstanceEbsBlockDeviceArgs(device_name="/dev/sdg", encrypted=False)]),
        "instance-without-metadata-service": ec2.Instance(
            "nb-vm-no-imds", ami="ami-0", instance_type="m6i.large",
            metadata_options=ec2.InstanceMetadataOptionsArgs(http_endpoint="disabled"),
            root_block_device=ec2.InstanceRootBlockDeviceArgs(encrypted=True)),
        "default-sg-ssh-from-the-internet": ec2.DefaultSecurityGroup("nb-default-sg", ingress=[
            ec2.DefaultSecurityGroupIngressArgs(protocol="tcp", from_port=22, to_port=22, cidr_blocks=["0.0.0.0/0"])]),
        "spot-instance-imdsv1": ec2.SpotInstanceRequest(
            "nb-spot-imds", ami="ami-0", instance_type="m6i.large",
            metadata_options=ec2.SpotInstanceRequestMetadataOptionsArgs(http_tokens="optional"),
            root_block_device=ec2.SpotInstanceRequestRootBlockDeviceArgs(encrypted=True)),
        "spot-instance-unencrypted-root": ec2.SpotInstanceRequest(
            "nb-spot-root", ami="ami-0", instance_type="m6i.large",
            metadata_options=ec2.SpotInstanceRequestMetadataOptionsArgs(http_tokens="required")),
        "launch-configuration-imdsv1": launch_configuration("nb-lc-imds", http_tokens="optional"),
        "launch-configuration-unencrypted-ebs": launch_configuration("nb-lc-ebs", ebs_block_devices=[
            ec2.LaunchConfigurationEbsBlockDeviceArgs(device_name="/dev/sdg", encrypted=False)]),
        "launch-configuration-key-in-user-data": launch_configuration("nb-lc-key", user_data=f"# {PEM}"),
        "instance-key-in-plain-user-data": ec2.Instance(
            "nb-vm-key", ami="ami-0", instance_type="m6i.large",
            metadata_options=ec2.InstanceMetadataOptionsArgs(http_tokens="required"),
            root_block_device=ec2.InstanceRootBlockDeviceArgs(encrypted=True), user_data=f"#cloud-config\n# {PEM}"),
    }


def _azure_neighbours() -> dict[str, pulumi.Resource]:
    import pulumi_azure_native as azure

    def rule(name: str, access: str) -> azure.network.SecurityRule:
        return azure.network.SecurityRule(
            name, resource_group_name="rg", network_security_group_name="nsg", access=access, direction="Inbound",
            protocol="*", source_address_prefix="*", source_port_range="*", destination_address_prefix="*",
            destination_port_ranges=["22", "80"], priority=100)

    return {
        "azure-rule-anyone-to-ssh": rule("nb-az-allow", "Allow"),
        "azure-rule-denying-anyone-ssh": rule("nb-az-deny", "Deny"),
        "azure-rule-ssh-in-the-list-beside-a-single-port": azure.network.SecurityRule(
            "nb-az-both-ports", resource_group_name="rg", network_security_group_name="nsg", access="Allow",
            direction="Inbound", protocol="Tcp", source_address_prefix="*", source_port_range="*",
            destination_address_prefix="*", destination_port_range="80", destination_port_ranges=["22"],
            priority=110),
        "azure-rule-internet-in-the-list-beside-a-single-source": azure.network.SecurityRule(
            "nb-az-both-sources", resource_group_name="rg", network_security_group_name="nsg", access="Allow",
            direction="Inbound", protocol="Tcp", source_address_prefix="10.0.0.0/8",
            source_address_prefixes=["Internet"], source_port_range="*", destination_address_prefix="*",
            destination_port_range="22", priority=120),
        "azure-scale-set-key-in-custom-data": azure.compute.VirtualMachineScaleSet(
            "nb-az-vmss", resource_group_name="rg", sku=azure.compute.SkuArgs(name="Standard_D2s_v5"),
            virtual_machine_profile=azure.compute.VirtualMachineScaleSetVMProfileArgs(
                os_profile=azure.compute.VirtualMachineScaleSetOSProfileArgs(
                    custom_data=base64.b64encode(gzip.compress(PEM.encode())).decode()))),
        "azure-scale-set-b-series": azure.compute.VirtualMachineScaleSet(
            "nb-az-vmss-b", resource_group_name="rg", sku=azure.compute.SkuArgs(name="Standard_B2ms")),
    }


def _gcp_neighbours() -> dict[str, pulumi.Resource]:
    import pulumi_gcp as gcp

    compute = gcp.compute

    def template(name: str, machine_type: str, metadata: dict[str, str]) -> compute.InstanceTemplate:
        return compute.InstanceTemplate(
            name, machine_type=machine_type, metadata=metadata,
            disks=[compute.InstanceTemplateDiskArgs(source_image="debian-cloud/debian-12")],
            network_interfaces=[compute.InstanceTemplateNetworkInterfaceArgs(network="default")])

    return {
        "gcp-disabled-rule-for-ssh": compute.Firewall(
            "nb-gcp-off", network="default", disabled=True, source_ranges=["0.0.0.0/0"],
            allows=[compute.FirewallAllowArgs(protocol="tcp", ports=["22"])]),
        "gcp-rule-ssh-by-number-from-the-internet": compute.Firewall(
            "nb-gcp-ssh", network="default", source_ranges=["0.0.0.0/0"],
            allows=[compute.FirewallAllowArgs(protocol="6", ports=["22"])]),
        "gcp-rule-ssh-without-sources": compute.Firewall(
            "nb-gcp-no-source", network="default", allows=[compute.FirewallAllowArgs(protocol="tcp", ports=["22"])]),
        "gcp-rule-ssh-from-tagged-machines": compute.Firewall(
            "nb-gcp-tags", network="default", source_tags=["bastion"],
            allows=[compute.FirewallAllowArgs(protocol="tcp", ports=["22"])]),
        "gcp-rule-ssh-from-service-accounts": compute.Firewall(
            "nb-gcp-accounts", network="default", source_service_accounts=["bastion@p.iam.gserviceaccount.com"],
            allows=[compute.FirewallAllowArgs(protocol="tcp", ports=["22"])]),
        "gcp-rule-ssh-beside-an-infinite-port": compute.Firewall(
            "nb-gcp-inf", network="default", source_ranges=["0.0.0.0/0"],
            allows=[compute.FirewallAllowArgs(protocol="tcp", ports=["1e999", "22"])]),
        "gcp-template-key-in-user-data": template("nb-gcp-key", "n2-standard-2",
                                                  {"user-data": f"#cloud-config\n# {PEM}"}),
        "gcp-template-shared-core": template("nb-gcp-micro", "e2-micro", {}),
    }


def _ssh_neighbours() -> dict[str, pulumi.Resource]:
    from pulumi_command import remote

    return {
        "remote-command-writing-a-key": remote.Command(
            "nb-cmd-key", connection=remote.ConnectionArgs(host="192.0.2.1"),
            create=f"printf '%s' '{PEM}' > /root/key"),
        "remote-command-without-a-key": remote.Command(
            "nb-cmd-ok", connection=remote.ConnectionArgs(host="192.0.2.1"), create="systemctl restart kumomta"),
    }


NEIGHBOURS: dict[str, Optional[str]] = {
    "sg-every-protocol-from-the-ipv6-internet": PORTS, "sg-smtp-from-the-internet": None,
    "sg-rule-ssh-range-from-the-internet": PORTS, "sg-rule-udp-22-from-the-internet": None,
    "sg-rule-ssh-out-to-the-internet": None, "launch-template-imdsv1": IMDS,
    "launch-template-unencrypted-ebs": DISKS, "launch-template-encrypted-ebs": None,
    "launch-template-burstable": BURSTABLE, "launch-template-key-in-user-data": SECRETS,
    "instance-from-a-launch-template": IMDS, "instance-unencrypted-ebs-device": DISKS,
    "instance-without-metadata-service": None, "instance-key-in-plain-user-data": SECRETS,
    "azure-rule-anyone-to-ssh": PORTS, "azure-rule-denying-anyone-ssh": None,
    "azure-scale-set-key-in-custom-data": SECRETS, "azure-scale-set-b-series": BURSTABLE,
    "gcp-disabled-rule-for-ssh": None, "gcp-rule-ssh-by-number-from-the-internet": PORTS,
    "gcp-template-key-in-user-data": SECRETS, "gcp-template-shared-core": BURSTABLE,
    "remote-command-writing-a-key": SECRETS, "remote-command-without-a-key": None,
    "default-sg-ssh-from-the-internet": PORTS, "spot-instance-imdsv1": IMDS, "spot-instance-unencrypted-root": DISKS,
    "launch-configuration-imdsv1": IMDS, "launch-configuration-unencrypted-ebs": DISKS,
    "launch-configuration-key-in-user-data": SECRETS,
    "azure-rule-ssh-in-the-list-beside-a-single-port": PORTS,
    "azure-rule-internet-in-the-list-beside-a-single-source": PORTS,
    "gcp-rule-ssh-without-sources": PORTS, "gcp-rule-ssh-from-tagged-machines": None,
    "gcp-rule-ssh-from-service-accounts": None, "gcp-rule-ssh-beside-an-infinite-port": PORTS,
}


@functools.cache
def neighbours() -> dict[str, Resource]:
    """Each neighbour as the engine receives it, by its NEIGHBOURS key."""
    made: dict[str, pulumi.Resource] = {}

    def program_of_neighbours() -> None:
        for build in (_aws_neighbours, _azure_neighbours, _gcp_neighbours, _ssh_neighbours):
            made.update(build())

    result = offline.run(program_of_neighbours, {}, stack="neighbours")
    by_name = {r.name: r for r in guardrails.resources_of(result)}
    assert set(made) == set(NEIGHBOURS)
    return {key: by_name[resource._name] for key, resource in made.items()}


@pytest.mark.parametrize("key", NEIGHBOURS)
def test_a_neighbours_resource_trips_exactly_its_rule_or_none(key):
    found = guardrails.check_resources([neighbours()[key]])
    assert {v.rule for v in found} == ({NEIGHBOURS[key]} if NEIGHBOURS[key] else set()), found


def test_an_instance_whose_launch_template_is_in_the_program_takes_its_checked_options():
    """The instance without metadataOptions is reported while its template is outside the program (the
    neighbour above), and not once the template it depends on is in the stack: the template is judged itself."""
    import pulumi_aws as aws

    made: dict[str, pulumi.Resource] = {}

    def program_with_its_template() -> None:
        ec2 = aws.ec2
        template = ec2.LaunchTemplate("lt-in-stack", instance_type="m6i.large",
                                      metadata_options=ec2.LaunchTemplateMetadataOptionsArgs(http_tokens="required"))
        made["vm"] = ec2.Instance("vm-from-lt", instance_type="m6i.large",
                                  launch_template=ec2.InstanceLaunchTemplateArgs(id=template.id))

    result = offline.run(program_with_its_template, {}, stack="template-in-stack")
    resources = guardrails.resources_of(result)
    assert {r.type for r in resources} >= {guardrails.AWS_LAUNCH_TEMPLATE, guardrails.AWS_INSTANCE}
    assert of_rule(guardrails.check_resources(resources), IMDS) == []
    instance = [r for r in resources if r.type == guardrails.AWS_INSTANCE]
    assert {v.rule for v in guardrails.check_resources(instance)} == {IMDS}


def _azure_classic_rule(**overrides: Any) -> dict[str, Any]:
    return {"access": "Allow", "direction": "Inbound", "protocol": "Tcp", "sourceAddressPrefix": "*",
            "sourcePortRange": "*", "destinationAddressPrefix": "*", "destinationPortRange": "22", "priority": 100,
            **overrides}


# The classic Azure provider (pulumi_azure) is not installed: its resources are written by hand, with the
# names its registry page (pulumi.com/registry/packages/azure/api-docs/network/networksecurityrule) and the
# azurerm_network_security_rule/_group schema it bridges give them.
AZURE_CLASSIC: dict[str, tuple[Resource, Optional[str]]] = {
    "classic-rule-anyone-to-ssh": (Resource(guardrails.AZURE_CLASSIC_SECURITY_RULE, "cl-rule", _azure_classic_rule()),
                                   PORTS),
    "classic-rule-ssh-from-own-network": (Resource(guardrails.AZURE_CLASSIC_SECURITY_RULE, "cl-own", _azure_classic_rule(
        sourceAddressPrefix=None, sourceAddressPrefixes=["10.0.0.0/8"])), None),
    "classic-rule-outbound": (Resource(guardrails.AZURE_CLASSIC_SECURITY_RULE, "cl-out", _azure_classic_rule(
        direction="Outbound")), None),
    "classic-nsg-internet-to-the-api": (Resource(guardrails.AZURE_CLASSIC_NSG, "cl-nsg", {"securityRules": [
        _azure_classic_rule(name="api", sourceAddressPrefix="Internet", destinationPortRange=None,
                            destinationPortRanges=["8443"])]}), PORTS),
    "classic-nsg-denying-anyone-ssh": (Resource(guardrails.AZURE_CLASSIC_NSG, "cl-deny", {"securityRules": [
        _azure_classic_rule(name="deny", access="Deny")]}), None),
}


@pytest.mark.parametrize("key", AZURE_CLASSIC)
def test_a_classic_azure_rule_trips_exactly_its_rule_or_none(key):
    resource, rule = AZURE_CLASSIC[key]
    assert {v.rule for v in guardrails.check_resources([resource])} == ({rule} if rule else set())


@pytest.mark.parametrize("key", ["relay_cidrs", "relayCidrs"])
def test_a_components_relay_list_is_read_by_its_python_or_its_schema_name(key):
    """A component declared from another language (examples/yaml) carries the schema's relayCidrs."""
    component = Resource("kumo:index:AwsKumoMta", "other-language",
                         {"deployment": {"kumomta": {key: ["0.0.0.0/1", "128.0.0.0/1"]}}})
    found = guardrails.check_resources([component])
    assert [(v.rule, v.message.split(" ")[0]) for v in found] == [(RELAY, f"deployment.kumomta.{key}")]


def test_a_schema_name_the_rules_read_is_the_components_schema_name():
    assert _schema_resolves("kumo:index:AwsKumoMta", "deployment.kumomta.relayCidrs")
    assert not _schema_resolves("kumo:index:AwsKumoMta", "deployment.kumomta.relay_cidrs")


@functools.cache
def _schema() -> dict[str, Any]:
    import json

    return json.loads((ROOT / "provider" / "schema.json").read_text())


def _schema_resolves(token: str, path: str) -> bool:
    """Whether ``path`` names an input of a component in provider/schema.json (what another language sends)."""
    spec: Any = {"properties": _schema()["resources"][token]["inputProperties"]}
    for segment in path.split("."):
        prop = spec.get("properties", {}).get(segment.removesuffix("[]"))
        if prop is None:
            return False
        if segment.endswith("[]"):
            prop = prop.get("items", {})
        ref = prop.get("$ref", "")
        spec = _schema()["types"].get(ref.removeprefix("#/types/"), prop)
    return True


# -- the engine's names ------------------------------------------------------------------------------------------------

@functools.cache
def _sdk_table() -> dict[str, tuple[str, str]]:
    """Type token -> (module, class name), from the provider SDKs' own registration tables."""
    import pulumi_aws  # noqa: F401  (each registers its resource modules when imported)
    import pulumi_azure_native  # noqa: F401
    import pulumi_command  # noqa: F401
    import pulumi_gcp  # noqa: F401

    found = {}
    for modules in rpc._RESOURCE_MODULES.values():
        for module in modules:
            info = getattr(module, "mod_info", None) or {}
            found.update({token: (info["fqn"], name) for token, name in info.get("classes", {}).items()})
    return found


@functools.cache
def sdk_class(token: str) -> type:
    fqn, name = _sdk_table()[token]
    return getattr(importlib.import_module(fqn), name)


def engine_names(token: str) -> dict[str, str]:
    """A resource's engine property names -> their Python names: its outputs and its Args' inputs (some
    inputs, such as Azure's resourceGroupName, are no output)."""
    cls = sdk_class(token)
    module = sys.modules[cls.__module__]
    # Named <Class>InitArgs where <Class>Args is taken by an input type of the same name.
    args = getattr(module, f"{cls.__name__}InitArgs", None) or getattr(module, f"{cls.__name__}Args")
    return {name: python for tp in (cls, args) for python, name, _ in pulumi_types._py_properties(tp)}


def _unwrapped(tp: Any) -> list[Any]:
    """The types inside Output[...], Optional/Union, Input aliases."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, pulumi.Output) or (isinstance(origin, type) and issubclass(origin, pulumi.Output)):
        return [t for arg in typing.get_args(tp) for t in _unwrapped(arg)]
    if tp is type(None):
        return []
    return [tp]


def _fields(tp: Any) -> Optional[dict[str, Any]]:
    """Engine property name -> type of an SDK resource or output type, or of a kumo TypedDict; None if neither."""
    if isinstance(tp, type) and (issubclass(tp, pulumi.Resource) or pulumi_types.is_output_type(tp)):
        return {name: typing.get_type_hints(prop.fget)["return"]
                for _, name, prop in pulumi_types._py_properties(tp)}
    if typing.is_typeddict(tp):
        return {name: _typeddict_field(tp, name) for name in tp.__annotations__}
    return None


def _typeddict_field(tp: Any, name: str) -> Any:
    """One field's type: evaluated alone, since pulumi.Input fields of the component's args do not
    evaluate outside the SDK (typing.get_type_hints fails on the whole class)."""
    annotation = tp.__annotations__[name]
    if isinstance(annotation, typing.ForwardRef):
        annotation = annotation.__forward_arg__
    if isinstance(annotation, str):
        try:
            annotation = eval(annotation, vars(sys.modules[tp.__module__]))
        except NameError:
            return Any
    if typing.get_origin(annotation) in (typing.NotRequired, typing.Required):
        annotation = typing.get_args(annotation)[0]
    return annotation


def resolve(root: Any, path: str) -> Optional[str]:
    """Why ``path`` (dotted; ``[]`` after a list) names no property of ``root``, or None when it does."""
    current = [root]
    for segment in path.split("."):
        name, is_item = segment.removesuffix("[]"), segment.endswith("[]")
        nxt = []
        for tp in current:
            origin = typing.get_origin(tp)
            if origin is not None and isinstance(origin, type) and issubclass(origin, Mapping):
                nxt += _unwrapped(typing.get_args(tp)[1])  # a map's keys are data (GCP metadata, tags)
                continue
            if isinstance(tp, type) and issubclass(tp, (pulumi.Asset, pulumi.Archive)):
                return None  # below an asset is the asset's own form
            fields = _fields(tp)
            if fields is not None and name in fields:
                nxt += _unwrapped(fields[name])
        if not nxt:
            return f"{segment} is not a property of {current}"
        if is_item:
            nxt = [t for tp in nxt for t in (_unwrapped(typing.get_args(tp)[0]) if typing.get_origin(tp) in (
                list, Sequence, typing.Sequence, typing.List) else [tp])]
        current = nxt
    return None


def component_args(token: str) -> Any:
    (cls,) = [t.component_class() for t in targets.registry().values() if t.component_class().TYPE == token]
    return typing.get_type_hints(cls.__init__)["args"]


def root_type(token: str) -> Any:
    return component_args(token) if token.startswith(guardrails.KUMO_COMPONENT_PREFIX) else sdk_class(token)


class Reads:
    """Mapping and Sequence views of recorded properties that note every property path read, as
    pulumi_policy's proxies would see it read."""

    def __init__(self) -> None:
        self.paths: set[tuple[str, str]] = set()

    def wrap(self, token: str, value: Any, path: str = "") -> Any:
        if isinstance(value, dict):
            return _ReadMapping(self, token, value, path)
        if isinstance(value, list):
            return _ReadSequence(self, token, value, path)
        return value


class _ReadMapping(Mapping):
    def __init__(self, reads: Reads, token: str, data: dict, path: str) -> None:
        self._reads, self._token, self._data, self._path = reads, token, data, path

    def __getitem__(self, key: str) -> Any:
        path = f"{self._path}.{key}" if self._path else key
        self._reads.paths.add((self._token, path))
        return self._reads.wrap(self._token, self._data[key], path)

    def __iter__(self):
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


class _ReadSequence(Sequence):
    def __init__(self, reads: Reads, token: str, data: list, path: str) -> None:
        self._reads, self._token, self._data, self._path = reads, token, data, path

    def __getitem__(self, index: int) -> Any:
        return self._reads.wrap(self._token, self._data[index], f"{self._path}[]")

    def __len__(self) -> int:
        return len(self._data)


def test_recorded_inputs_carry_the_engines_names_not_pythons():
    """The offline engine records what the Python SDKs send the engine, which is also what the engine
    hands a policy: each custom resource's top-level inputs are its SDK's engine names (camelCase)."""
    seen = 0
    for case in CASES:
        for r in planned(case).resources:
            if r.type in _sdk_table():
                names = engine_names(r.type)
                assert set(r.props) <= set(names), (r.type, set(r.props) - set(names))
                seen += sum(names[k] != k for k in r.props)  # names whose Python spelling differs
    assert seen > 100


def test_every_property_the_rules_read_is_named_as_the_engine_names_it():
    """Every path the rules read, over the examples, the broken plans and the neighbours (as recorded by
    Mapping views like pulumi_policy's), resolves in the provider SDK's tables (kumo's components: their
    args TypedDicts). A snake_case read, or a misspelt one, would name nothing."""
    reads = Reads()
    plans = [planned(c).resources for c in CASES] + [broken for _, _, broken in broken_plans()]
    plans.append(list(neighbours().values()))
    for resources in plans:
        viewed = [dataclasses.replace(r, props=reads.wrap(r.type, dict(r.props))) for r in resources]
        guardrails.check_resources(viewed, planned(CASES[0]).known)
    read_types = {token for token, _ in reads.paths}
    assert {guardrails.AWS_INSTANCE, guardrails.AZURE_NSG, guardrails.GCP_FIREWALL, guardrails.SSH_COPY} <= read_types
    problems = [(token, path, resolve(root_type(token), path)) for token, path in sorted(reads.paths)
                if not (token.startswith(guardrails.KUMO_COMPONENT_PREFIX) and _schema_resolves(token, path))]
    assert [p for p in problems if p[2]] == []
    assert ("aws:ec2/instance:Instance", "metadataOptions.httpTokens") in reads.paths


@pytest.mark.parametrize("table", ["MACHINE_TEXT_PATHS", "MACHINE_TYPE_PATHS"])
def test_the_declared_property_paths_are_engine_names(table):
    declared = getattr(guardrails, table)
    for token, paths in declared.items():
        for path in (paths if isinstance(paths, tuple) else (paths,)):
            assert resolve(sdk_class(token), path) is None, (token, path)


def test_a_python_name_would_name_nothing():
    assert resolve(sdk_class(guardrails.AWS_INSTANCE), "metadataOptions.httpTokens") is None
    assert resolve(sdk_class(guardrails.AWS_INSTANCE), "metadata_options.http_tokens") is not None
    assert resolve(sdk_class(guardrails.AZURE_NSG), "securityRules[].sourceAddressPrefix") is None
    assert resolve(sdk_class(guardrails.AZURE_NSG), "securityRules[].source_address_prefix") is not None
    assert resolve(component_args("kumo:index:AwsKumoMta"), "deployment.kumomta.relay_cidrs") is None
    assert resolve(component_args("kumo:index:AwsKumoMta"), "deployment.kumomta.relayCidrs") is not None


# -- what the operator reads ------------------------------------------------------------------------------------------

def test_violations_name_the_rule_the_resource_and_the_fix_mandatory_first():
    b = next(b for b in BREAKS if b.id == "ssh-from-the-ipv4-internet")
    violations = planned(b.case).violations(b.breaks(planned(b.case).resources))
    (ports,) = of_rule(violations, PORTS)
    assert ports == guardrails.Violation(
        PORTS, MANDATORY, planned(b.case).result.named(AWS_SSH).urn, "aws:vpc/securityGroupIngressRule:"
        "SecurityGroupIngressRule", AWS_SSH, "the rule admits SSH (22/tcp) from 0.0.0.0/0",
        next(r.remediation for r in RULES if r.name == PORTS))
    assert violations[0] == ports  # aws-prod has advisories too: they come after
    text = guardrails.format_violations(violations)
    assert text.splitlines()[:3] == [
        f"MANDATORY {PORTS}: aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule {AWS_SSH}",
        "  the rule admits SSH (22/tcp) from 0.0.0.0/0", f"  fix: {ports.remediation}"]
    assert text.splitlines()[-1] == f"policy: 1 mandatory, {len(violations) - 1} advisory violation(s) of 8 rules"
    assert guardrails.has_mandatory(violations)
    assert not guardrails.has_mandatory(planned("stack aws-dev").violations())


@pytest.mark.parametrize("b", [b for b in BREAKS if b.rule == SECRETS], ids=lambda b: b.id)
def test_a_found_secret_is_named_never_shown(b):
    base = planned(b.case).resources
    new, _ = diff(b.case, base, b.breaks(base))
    text = guardrails.format_violations(sorted(new, key=str))
    assert KEY_BODY not in text and planview.SECRET_PLACEHOLDER not in text
    assert all(v.message.endswith(("holds a RSA PRIVATE KEY (a PEM block)", "holds the value of the plan's secret"))
               for v in new)


# -- kumo-infra plan --policy ---------------------------------------------------------------------------------

def test_plan_policy_prints_the_advisories_and_exits_0_without_a_mandatory_one():
    result = kumo("plan", "--stack", "aws-dev", "--policy")
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    assert "resources would be created" in result.stdout
    for v in planned("stack aws-dev").violations():
        assert f"{v.level.upper()} {v.rule}: {v.type} {v.name}" in output
    assert "policy: 0 mandatory, 2 advisory violation(s) of 8 rules" in output


def test_plan_policy_exits_1_on_a_mandatory_violation(monkeypatch, capsys):
    def trip(r: Resource, context: guardrails.Context) -> list[str]:
        return ["tripped"] if r.type == guardrails.AWS_INSTANCE else []

    tripwire = guardrails.Rule("kumo-test-tripwire", MANDATORY, "every AWS instance, for the test",
                               "nothing to fix: a test rule", check_resource=trip)
    monkeypatch.setattr(guardrails, "RULES", (*RULES, tripwire))
    assert cli.main(["plan", "--stack", "aws-dev", "--policy"]) == 1
    output = capsys.readouterr()
    assert f"MANDATORY kumo-test-tripwire: {guardrails.AWS_INSTANCE} kumo-dev-node1-vm" in output.out + output.err


def test_plan_without_policy_runs_no_rule(monkeypatch, capsys):
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a rule ran without --policy")

    monkeypatch.setattr(guardrails, "check_resources", refuse)
    assert cli.main(["plan", "--stack", "aws-dev"]) == 0
    assert "policy:" not in capsys.readouterr().out
    with pytest.raises(AssertionError, match="a rule ran"):  # not vacuous: --policy does reach the rules
        cli.main(["plan", "--stack", "aws-dev", "--policy"])


# -- a fleet's node-only rules (netplan.Rule.from_nodes) -----------------------------------------------

def _node_only(port: int) -> dict[str, Resource]:
    """A rule admitting ``port`` from the deployment's own nodes, as each cloud says "these machines":
    AWS the security group itself, GCP the nodes' tag, Azure the nodes' subnet (or its virtual network)."""
    return {
        "aws-own-group": Resource(guardrails.AWS_INGRESS_RULE, "aws-own", {
            "ipProtocol": "tcp", "fromPort": port, "toPort": port, "securityGroupId": "sg-0nodes",
            "referencedSecurityGroupId": "sg-0nodes"}),
        "gcp-own-tag": Resource(guardrails.GCP_FIREWALL, "gcp-own", {
            "direction": "INGRESS", "allows": [{"protocol": "tcp", "ports": [str(port)]}],
            "sourceTags": ["kumo-nodes"], "targetTags": ["kumo-nodes"]}),
        "azure-own-subnet": Resource(guardrails.AZURE_NSG, "az-own", {"securityRules": [
            {"name": "tsa", "access": "Allow", "direction": "Inbound", "protocol": "Tcp",
             "sourceAddressPrefix": "10.0.0.0/24", "destinationPortRange": str(port), "priority": 200},
            {"name": "xfer", "access": "Allow", "direction": "Inbound", "protocol": "Tcp",
             "sourceAddressPrefix": "VirtualNetwork", "destinationPortRange": str(port), "priority": 201},
            {"name": "asg", "access": "Allow", "direction": "Inbound", "protocol": "Tcp",
             "sourceApplicationSecurityGroups": [{"id": "nodes-asg"}], "destinationPortRange": str(port),
             "priority": 202}]}),
    }


@pytest.mark.parametrize("port", [netplan.TSA_PORT, netplan.HTTP_PORT])
@pytest.mark.parametrize("shape", ["aws-own-group", "gcp-own-tag", "azure-own-subnet"])
def test_a_rule_from_the_nodes_alone_is_never_internet_open(shape, port):
    resource = _node_only(port)[shape]
    assert guardrails.openings(resource), "the rule must be read, or the check proves nothing"
    assert guardrails.check_resources([resource]) == []


@pytest.mark.parametrize("shape, open_it", [
    ("aws-own-group", lambda p: p.update(cidrIpv4="0.0.0.0/0", referencedSecurityGroupId=None)),
    ("gcp-own-tag", lambda p: p.update(sourceRanges=["0.0.0.0/0"])),
    ("gcp-own-tag", lambda p: p.pop("sourceTags")),  # no source at all: GCP admits every IPv4 address
    ("azure-own-subnet", lambda p: p["securityRules"][0].update(sourceAddressPrefix="Internet")),
])
def test_the_tsa_port_open_to_the_internet_is_flagged(shape, open_it):
    resource = _node_only(netplan.TSA_PORT)[shape]
    props = copy.deepcopy(dict(resource.props))
    open_it(props)
    found = guardrails.check_resources([dataclasses.replace(resource, props=props)])
    assert [v.rule for v in found] == [PORTS] and "TSA" in found[0].message and "8008" in found[0].message

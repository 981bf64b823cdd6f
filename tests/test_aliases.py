"""Existing stacks keep every resource through the renames of issue 9 (aliases), proven under the mock engine.

tests/fixtures/urns-before-targets.json holds, for ten configurations, every URN the program
registered at commit 6f5516e (before any rename) with its type and inputs' digest;
tests/fixtures/urn-paths-before-targets.json the same runs' digest per input property path.
Each configuration is replayed against today's code as an update of that stack would run it:
``offline.run(prior_urns=...)`` keeps every alias and has the SDK compute it as a full URN
(pulumi.runtime.resource.all_aliases; the monitor answers that it takes no alias specs), and a
resource whose alias is an old URN gets that resource's state (id, computed outputs), as the
engine does. Then:

- every old URN is a new resource's URN, or in exactly one new resource's aliases (the engine
  moves it: nothing is deleted);
- that resource has the old type and the old inputs (nothing is replaced or changed), except
  properties it ignores through ignoreChanges (the engine does not act on them);
- no new resource claims two old URNs (two resources would merge into one);
- a resource only in today's code is listed below with its reason (nothing is created unplanned).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cache

import pulumi
import pytest

from kumo_infra import offline, program
from tests.conftest import ROOT, merged
from tests.gen_urn_baseline import digest, flat, path_digests

FIXTURES = ROOT / "tests" / "fixtures"

# Why issue 12 adds resources: the baseline's two-node configurations (aws-full, azure-full,
# gcp-full, and gcp-nvme-existing-net, whose sizing plans two nodes) are now fleets that share their
# throttles through a Redis, and an AWS deployment with secrets no longer fits its bootstrap in the user data.
FLEET_SECRET = "a fleet's Redis URL or peer list, stored like its other secrets and fetched at boot (kumo_infra.fleet)"
FLEET_SECRET_ACCESS = "the node's read access to the fleet's Redis URL or peer list, as to its other secrets"
NODE_RULE = ("TSA (8008) and xfer (8000) traffic between the fleet's own nodes only, in and out "
             "(netplan.Rule.from_nodes)")
MANAGED_REDIS = "the managed Redis the fleet's nodes share their throttles through"
REDIS_REACH = "the managed Redis reachable from the fleet's nodes only, over the private network"
NODE_FILES = ("the node files every node shares, kept in Secrets Manager: the bootstrap of a deployment with "
              "secrets (shaping, TSA, kumo-fetch-secret) no longer fits AWS's 16 KiB of user data")
FLEET_SECRETS = {"redis-url-secret": FLEET_SECRET, "fleet-peers-secret": FLEET_SECRET}
NODE_RULES = {f"fw{out}-{port}-nodes": NODE_RULE for out in ("", "-out") for port in ("tsa", "xfer")}


def named(prefix: str, reasons: dict[str, str]) -> dict[str, str]:
    """``reasons`` by the resource's name: the configuration's name prefix and each suffix."""
    return {f"{prefix}-{suffix}": reason for suffix, reason in reasons.items()}


def gcp_fleet(prefix: str) -> dict[str, str]:
    return named(prefix, {
        **FLEET_SECRETS, "redis-url-version": FLEET_SECRET, "fleet-peers-version": FLEET_SECRET,
        "redis-url-access": FLEET_SECRET_ACCESS, "fleet-peers-access": FLEET_SECRET_ACCESS, **NODE_RULES,
        "redis": MANAGED_REDIS + " (Memorystore)", "fw-out-redis-managed": REDIS_REACH})


# Resources today's code registers that no earlier release did, by configuration, each with its
# reason (issue 9 renamed children and added none). By name only: the type of a new resource is
# the target's choice (Azure's managed Redis changed from Azure Cache for Redis to Azure Managed Redis).
NEW_RESOURCES: dict[str, dict[str, str]] = {
    "aws-full": named("kumo-a", {
        **FLEET_SECRETS, "redis-url-version": FLEET_SECRET, "fleet-peers-version": FLEET_SECRET, **NODE_RULES,
        "redis": MANAGED_REDIS + " (an ElastiCache replication group)",
        "redis-auth-token": "the ElastiCache replication group's generated AUTH token",
        "redis-subnets": "the subnets the ElastiCache replication group lives in",
        "redis-sg": REDIS_REACH + " (its own security group)", "redis-sg-ingress": REDIS_REACH,
        "fw-out-redis-managed": REDIS_REACH + " (the nodes' egress to it)"}),
    "azure-full": named("kumo-z", {
        **FLEET_SECRETS,
        **{f"node{n}-{key}-access": FLEET_SECRET_ACCESS for n in (1, 2) for key in ("redis-url", "fleet-peers")},
        "nodes-asg": "the application security group of the fleet's nodes, the source and destination of "
                     "the rules between them",
        "redis": MANAGED_REDIS + " (Azure Managed Redis)", "redis-db": MANAGED_REDIS + ": its database",
        "redis-endpoint": REDIS_REACH + " (a private endpoint; public access off)",
        "redis-dns": REDIS_REACH + ": the private DNS zone its name resolves in",
        "redis-dns-link": REDIS_REACH + ": the private DNS zone linked to the network",
        "redis-dns-group": REDIS_REACH + ": the private endpoint's record in that zone"}),
    "gcp-full": gcp_fleet("kumo-g"),
    "gcp-nvme-existing-net": gcp_fleet("kumo-h"),
    "stack-aws-prod": named("kumo-prod", {"node-files-secret": NODE_FILES, "node-files-version": NODE_FILES}),
}

# Inputs a release changes on purpose and the engine updates, by (type, the old name's end) and
# property path, each with its reason. Nothing a rename may change; nothing that replaces a machine,
# a volume or a secret holding an operator's value.
RELEASE_CHANGES: dict[tuple[str, str], dict[str, str]] = {
    ("aws:secretsmanager/secretVersion:SecretVersion", "-node-files-version"): {
        "secretString": "the node files every AWS node shares when its user data cannot carry them (the "
                        "bootstrap itself, a new one with each release, like the user data the machines "
                        "ignore): a new version of the same secret, fetched by kumo-node-files at the next "
                        "bootstrap; the machines keep running",
    },
    ("aws:iam/rolePolicy:RolePolicy", "-secrets-read"): {
        "policy": "the role reads exactly the deployment's stored secrets by their ARNs, and a release adds some "
                  "(a fleet's Redis URL and peer list, the node files): the inline policy is updated in place "
                  "(only its name and role replace it)",
    },
    # azure-full is the baseline's only Azure fleet: a single node's firewall and interface stay checked.
    ("azure-native:network:NetworkSecurityGroup", "::kumo-z-nsg"): {
        "securityRules": "the fleet's rules between its own nodes (NODE_RULE), from and to their application "
                         "security group: the group's rules are updated in place",
    },
    **{("azure-native:network:NetworkInterface", f"::kumo-z-node{n}-nic"): {
        "ipConfigurations": "the node's interface joins the fleet's application security group, which Azure "
                            "updates on the existing interface (`az network nic ip-config update --asgs`): the "
                            "machine keeps its interface and is not touched",
    } for n in (1, 2)},
}


@cache
def baseline() -> dict:
    return json.loads((FIXTURES / "urns-before-targets.json").read_text())


@cache
def baseline_paths() -> dict:
    return json.loads((FIXTURES / "urn-paths-before-targets.json").read_text())


def engine_urn(urn: str) -> str:
    """A baseline URN as the engine forms it. The baseline was recorded with the SDK mock's URNs, which
    put the stack's type before a top-level resource's type (only the component is top-level); the
    engine does not, and kumo_infra.offline now forms URNs the engine's way."""
    return urn.replace("::pulumi:pulumi:Stack$", "::", 1)


def ignored_paths(ignore_changes: list[str]) -> list[tuple[str, ...]]:
    """ignoreChanges property paths (``a.b``, ``a["b-c"]``, ``a[0]``) as key tuples."""
    return [tuple(key or quoted for key, quoted, _ in re.findall(r'([^.\[\]"]+)|\["([^"]+)"\]|\[(\d+)\]', path))
            for path in ignore_changes]


@dataclass
class Proof:
    """What one replay found; empty lists: every old resource is kept as it was."""

    lost: list[str] = field(default_factory=list)  # old URNs no new resource takes
    claimed_twice: list[str] = field(default_factory=list)  # old URNs two new resources take
    merged: list[str] = field(default_factory=list)  # new resources taking two old URNs
    retyped: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)  # inputs the engine would act on
    new: list[str] = field(default_factory=list)  # new resources taking no old URN
    renamed: dict[str, str] = field(default_factory=dict)  # old URN -> new URN, through an alias

    def problems(self, expected_new: set[str]) -> list[str]:
        return ([f"lost (deleted by an update): {u}" for u in self.lost]
                + [f"claimed by two resources: {u}" for u in self.claimed_twice]
                + [f"claims two old resources: {u}" for u in self.merged]
                + [f"changed type: {u}" for u in self.retyped]
                + [f"changed inputs: {u}" for u in self.changed]
                + [f"new, not listed in NEW_RESOURCES: {u}" for u in self.new if u.split("::")[-1] not in expected_new])


def prove(old: list[dict], old_paths: dict[str, dict[str, str]], new: offline.OfflineResult) -> Proof:
    """Map each old resource to the new one the engine would give its state to, and check it."""
    proof = Proof()
    claims: dict[str, list[offline.RecordedResource]] = {}
    for resource in new.resources:
        taken = [u for u in (resource.urn, *resource.aliases) if isinstance(u, str)]
        for urn in taken:
            claims.setdefault(urn, []).append(resource)
    old_urns = {engine_urn(o["urn"]) for o in old}
    for resource in new.resources:
        mine = [u for u in (resource.urn, *(a for a in resource.aliases if isinstance(a, str))) if u in old_urns]
        if len(set(mine)) > 1:
            proof.merged.append(f"{resource.urn} <- {sorted(set(mine))}")
        if not mine:
            proof.new.append(resource.urn)
    for entry in old:
        urn = engine_urn(entry["urn"])
        found = {id(r): r for r in claims.get(urn, [])}
        if not found:
            proof.lost.append(urn)
            continue
        if len(found) > 1:
            proof.claimed_twice.append(urn)
            continue
        (resource,) = found.values()
        if resource.urn != urn:
            proof.renamed[urn] = resource.urn
        if resource.type != entry["type"]:
            proof.retyped.append(f"{urn}: {entry['type']} -> {resource.type}")
        if digest(resource.inputs) == entry["inputs"]:
            continue
        if not resource.custom:
            # A component has no provider: the engine records its inputs and never diffs them to
            # replace or update anything (its children carry the resources). Its inputs are the
            # component's arguments, which the typed interface may reshape.
            continue
        before, after = old_paths[entry["urn"]], path_digests(resource.inputs)
        differing = {p for p in set(before) | set(after) if before.get(p) != after.get(p)}
        # ignoreChanges: the engine keeps the old value for these paths and acts on no change to them
        # (the machines' bootstrap and image: a new release's bootstrap never replaces a machine).
        ignored = [".".join(p) for p in ignored_paths(resource.ignore_changes)]
        acted_on = {p for p in differing if not any(p == i or p.startswith(i + ".") for i in ignored)}
        acted_on -= {p for (kind, end), paths in RELEASE_CHANGES.items()
                     if entry["type"] == kind and urn.endswith(end) for p in paths}
        if acted_on:
            proof.changed.append(f"{urn}: {sorted(acted_on)}")
    return proof


def replay(variant: str) -> offline.OfflineResult:
    """The variant's configuration through today's program, as an update of the stack the baseline holds."""
    deployment = baseline()[variant]["deployment"]
    config: dict = {"kumo:deployment": merged(deployment)}
    secret_keys = []
    if deployment.get("port25", {}).get("relay"):
        config["kumo:relayPassword"] = "baseline-relay-password"
        secret_keys.append("kumo:relayPassword")
    prior = [engine_urn(r["urn"]) for r in baseline()[variant]["resources"]]
    return offline.run(program.run, config, stack="baseline", secret_keys=secret_keys, prior_urns=prior)


@cache
def replayed(variant: str) -> tuple[offline.OfflineResult, Proof]:
    result = replay(variant)
    return result, prove(baseline()[variant]["resources"], baseline_paths()[variant], result)


VARIANTS = sorted(json.loads((FIXTURES / "urns-before-targets.json").read_text()))


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_old_resource_is_kept_unchanged(variant):
    _, proof = replayed(variant)
    assert proof.problems(set(NEW_RESOURCES.get(variant, {}))) == []


def test_every_listed_new_resource_is_new():
    """NEW_RESOURCES names only what a replay creates: a stale entry would let that name in unplanned."""
    for variant, listed in NEW_RESOURCES.items():
        assert set(listed) <= {u.split("::")[-1] for u in replayed(variant)[1].new}, variant


def test_the_baseline_covers_every_target_and_the_renames():
    """The proof means something: every target is replayed, and renames happen (aliases are used)."""
    from kumo_infra import targets

    covered = {baseline()[v]["deployment"]["cloud"] for v in VARIANTS}
    clouds = {name for name, target in targets.registry().items() if target.catalog}
    assert clouds <= covered
    renamed = {old.split("::")[-1]: new.split("::")[-1] for v in VARIANTS for old, new in replayed(v)[1].renamed.items()}
    assert renamed["kumo-a-node1-instance"] == "kumo-a-node1-vm"
    assert renamed["kumo-z-relay-password"] == "kumo-z-relay-password-secret"


def test_the_baseline_paths_describe_the_same_inputs():
    """Both fixtures name the same resources (urn-paths-before-targets.json was checked against the
    other's digests when it was recorded, at the same commit)."""
    for variant in VARIANTS:
        assert set(baseline_paths()[variant]) == {r["urn"] for r in baseline()[variant]["resources"]}


# -- the proof can fail -------------------------------------------------------------------------

def test_a_rename_without_an_alias_is_caught(monkeypatch):
    """A child renamed without its old name as an alias: the old URN is lost (the engine would delete
    it and create another) and the new one is unlisted."""
    from kumo_infra import component

    monkeypatch.setattr(component.Names, "spool", lambda self, node: f"{self.name}-{node}-queue")
    result = replay("gcp-full")
    proof = prove(baseline()["gcp-full"]["resources"], baseline_paths()["gcp-full"], result)
    lost = {u.split("::")[-1] for u in proof.lost}
    assert lost == {"kumo-g-node1-spool", "kumo-g-node2-spool"}
    unlisted = {u.split("::")[-1] for u in proof.new} - set(NEW_RESOURCES["gcp-full"])
    assert unlisted == {"kumo-g-node1-queue", "kumo-g-node2-queue"}
    assert proof.problems(set(NEW_RESOURCES["gcp-full"]))


def test_a_rename_with_its_alias_passes_and_a_changed_input_is_caught(monkeypatch):
    """The same rename with the old name as an alias keeps the disk; changing what it holds does not."""
    from kumo_infra import component
    from kumo_infra.targets.gcp import component as gcp

    monkeypatch.setattr(component.Names, "spool", lambda self, node: f"{self.name}-{node}-queue")
    original = gcp.compute.Disk

    def disk(name, *args, opts=None, size=None, **kwargs):
        opts = opts.merge(pulumi.ResourceOptions(aliases=component.was(name.replace("-queue", "-spool"))))
        return original(name, *args, size=size + grow, opts=opts, **kwargs)

    monkeypatch.setattr(gcp.compute, "Disk", disk)
    grow = 0
    proof = prove(baseline()["gcp-full"]["resources"], baseline_paths()["gcp-full"], replay("gcp-full"))
    assert proof.problems(set(NEW_RESOURCES["gcp-full"])) == []
    assert {v.split("::")[-1] for v in proof.renamed.values()} >= {"kumo-g-node1-queue", "kumo-g-node2-queue"}
    grow = 1
    proof = prove(baseline()["gcp-full"]["resources"], baseline_paths()["gcp-full"], replay("gcp-full"))
    assert sorted(c.split("::")[-1] for c in proof.changed) == [
        "kumo-g-node1-spool: ['size']", "kumo-g-node2-spool: ['size']"]


def test_two_resources_claiming_one_old_urn_are_caught(monkeypatch):
    from kumo_infra import component
    from kumo_infra.targets.gcp import component as gcp

    original = gcp.compute.Address

    def address(name, *args, opts=None, **kwargs):
        # Every node's address claims node1's old one.
        opts = opts.merge(pulumi.ResourceOptions(aliases=component.was("kumo-g-node1-ip")))
        return original(name, *args, opts=opts, **kwargs)

    monkeypatch.setattr(gcp.compute, "Address", address)
    proof = prove(baseline()["gcp-full"]["resources"], baseline_paths()["gcp-full"], replay("gcp-full"))
    assert [u.split("::")[-1] for u in proof.claimed_twice] == ["kumo-g-node1-ip"]
    assert [u.split(" ")[0].split("::")[-1] for u in proof.merged] == ["kumo-g-node2-ip"]


def test_an_ignored_change_passes_and_only_that():
    """ignoreChanges paths, as the engine writes them, name exactly the recorded leaves they cover."""
    assert ignored_paths(['metadata["startup-script"]', "osProfile.customData", "ami"]) == [
        ("metadata", "startup-script"), ("osProfile", "customData"), ("ami",)]
    inputs = {"metadata": {"startup-script": "x", "enable-oslogin": "TRUE"},
              "osProfile": {offline.SECRET_SIG_KEY: offline.SECRET_SIG, "value": {"customData": "y"}}}
    assert set(flat(inputs)) == {("metadata", "startup-script"), ("metadata", "enable-oslogin"),
                                 ("osProfile", "customData")}

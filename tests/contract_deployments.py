"""What the contract suite (tests/test_contract.py) needs to know of each target, keyed by the registry.

One :class:`ContractCase` per registered target: a minimal valid deployment that makes every
kind of resource the component can create (two nodes, a block spool, the relay password, a DKIM
key, SSH and the API opened to given networks), and how to read the target's own resources: its
machines, spool volumes and secret store, where secret values may be kept, the inbound openings
of its firewall, the text each machine runs, and who may read the stored secrets.

The three clouds' cases are below. A new target puts its case in ``tests/contract_<name>.py``
(``CASE = ContractCase(...)``) next to its own tests; :func:`case` finds it there. A registered
target with neither fails the suite, naming both places.
"""

from __future__ import annotations

import base64
import gzip
import importlib
import ipaddress
import json
import re
from dataclasses import dataclass, field
from typing import Callable, Optional

from kumo_infra import offline

# A firewall opening: the ports it admits (None: every port) from which sources (CIDRs or a
# target's tags such as "*" or "Internet"; the deployment's own nodes as NODES, or "asg:<id>" for an
# Azure application security group, whose members the NSG alone does not show).
PORT_ALL = None
NODES = "the deployment's own nodes"


@dataclass(frozen=True)
class Opening:
    ports: Optional[frozenset[int]]
    sources: frozenset[str]
    what: str  # the resource (and rule) it comes from, for the failure message

    def admits(self, port: int) -> bool:
        return self.ports is PORT_ALL or port in self.ports


@dataclass(frozen=True)
class ContractCase:
    deployment: dict  # a kumo:deployment opening SSH and the API (the suite sets network itself)
    machines: tuple[str, ...]  # type tokens: what lifecycle.protect must protect
    volumes: tuple[str, ...]  # the spool volumes: protected per lifecycle.protect, always retained
    secret_store: tuple[str, ...]  # the store's secrets: protected per lifecycle.protect
    # The only resource types whose inputs may carry a secret value, always as a Pulumi secret
    # (the store's value resource; for a delivered store, the command that writes it on the node).
    value_holders: tuple[str, ...]
    # The firewall's inbound openings; None: the target has no firewall of its own.
    ingress: Callable[[offline.OfflineResult], Optional[list[Opening]]]
    # Every text a machine runs or is given (user data, startup script and the files it writes, commands).
    machine_texts: Callable[[offline.OfflineResult], list[str]]
    # Asserts that the stored secrets are readable by the nodes' identity and nobody else.
    assert_only_nodes_read: Callable[[offline.OfflineResult], None]
    # The machine_id output a node must have (given the node's key: node1, ...): the recorded machine's
    # id as the cloud knows it (offline: the engine's id or the provider's computed answer); None where
    # the target creates no machine.
    machine_id: Callable[[offline.OfflineResult, str], Optional[str]]
    config: dict = field(default_factory=dict)  # further stack config (e.g. a target's own secret)
    secret_keys: tuple[str, ...] = ()


def case(target: str) -> ContractCase:
    """The contract case of ``target``: from CASES, else from tests/contract_<target>.py."""
    if target in CASES:
        return CASES[target]
    try:
        module = importlib.import_module(f"tests.contract_{target}")
    except ModuleNotFoundError as exc:
        if exc.name != f"tests.contract_{target}":
            raise
        raise AssertionError(f"target {target!r} is registered but has no contract case: add CASE to "
                             f"tests/contract_{target}.py (or an entry to CASES in tests/contract_deployments.py)")
    return module.CASE


# -- reading recorded resources ------------------------------------------------------------------

def plain(value) -> object:
    """Recorded inputs with every secret envelope opened."""
    if offline.is_secret(value):
        return plain(value["value"])
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def port_range(spec) -> Optional[frozenset[int]]:
    """"22", "20-30", "*", 22 as the ports they cover (None: all)."""
    text = str(spec)
    if text in ("*", "-1", "all"):
        return PORT_ALL
    low, _, high = text.partition("-")
    return frozenset(range(int(low), int(high or low) + 1))


def _union(ranges) -> Optional[frozenset[int]]:
    found: set[int] = set()
    for r in ranges:
        if r is PORT_ALL:
            return PORT_ALL
        found |= r
    return frozenset(found)


# -- AWS -----------------------------------------------------------------------------------------

def aws_ingress(result: offline.OfflineResult) -> list[Opening]:
    found = []
    for rule in result.of_type("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"):
        i = rule.inputs
        ports = PORT_ALL if i.get("ipProtocol") == "-1" else frozenset(range(int(i["fromPort"]), int(i["toPort"]) + 1))
        group = i.get("referencedSecurityGroupId")
        # The rule's own security group as its source: the machines in it, the nodes.
        own = NODES if group and group == i.get("securityGroupId") else group
        found.append(Opening(ports, frozenset(filter(None, [i.get("cidrIpv4"), i.get("cidrIpv6"), own])), rule.name))
    for sg in result.of_type("aws:ec2/securityGroup:SecurityGroup"):  # inline rules, were there any
        for i in sg.inputs.get("ingress", []):
            ports = PORT_ALL if i.get("protocol") == "-1" else frozenset(range(int(i["fromPort"]), int(i["toPort"]) + 1))
            found.append(Opening(ports, frozenset(i.get("cidrBlocks", []) + i.get("ipv6CidrBlocks", [])), sg.name))
    return found


def aws_texts(result: offline.OfflineResult) -> list[str]:
    return [gzip.decompress(base64.b64decode(vm.inputs["userDataBase64"])).decode()
            for vm in result.of_type("aws:ec2/instance:Instance")]


def machine_of(result: offline.OfflineResult, token: str, node: str) -> offline.RecordedResource:
    """The node's machine: the one resource of type ``token`` named for the node (Names.machine)."""
    (machine,) = [r for r in result.of_type(token) if r.name.endswith(f"-{node}-vm")]
    return machine


def engine_id(token: str) -> Callable[[offline.OfflineResult, str], str]:
    """The machine's id as the engine gives it (offline: its name and "-id"): the EC2 instance id, the
    Azure VM's resource id."""
    return lambda result, node: f"{machine_of(result, token, node).name}-id"


def gcp_self_link(result: offline.OfflineResult, node: str) -> str:
    """The instance's URI, from its own project and zone (the offline answer, targets/gcp/offline.py)."""
    vm = machine_of(result, "gcp:compute/instance:Instance", node)
    return (f"https://www.googleapis.com/compute/v1/projects/{vm.inputs['project']}/zones/{vm.inputs['zone']}"
            f"/instances/{vm.name}")


def aws_only_nodes_read(result: offline.OfflineResult) -> None:
    """One inline policy on the instance role: GetSecretValue on exactly the deployment's secrets."""
    secrets = result.of_type("aws:secretsmanager/secret:Secret")
    (grant,) = result.of_type("aws:iam/rolePolicy:RolePolicy")
    (profile,) = result.of_type("aws:iam/instanceProfile:InstanceProfile")
    assert grant.inputs["role"] == profile.inputs["role"]
    # Auto-named: the profile's resource name and a random suffix.
    assert all(vm.inputs["iamInstanceProfile"].startswith(f"{profile.name}-")
               for vm in result.of_type("aws:ec2/instance:Instance"))
    (statement,) = json.loads(grant.inputs["policy"])["Statement"]
    assert set(statement) == {"Sid", "Effect", "Action", "Resource"}
    assert statement["Effect"] == "Allow" and statement["Action"] == ["secretsmanager:GetSecretValue"]
    # The offline ARN ends in the secret resource's name and Secrets Manager's random suffix.
    named = sorted(arn.split(":secret:", 1)[1].rsplit("-", 1)[0] for arn in statement["Resource"])
    assert named == sorted(s.name for s in secrets)
    assert not [s.name for s in secrets if "policy" in s.inputs]  # no resource policy opens one further
    assert {r.type for r in result.resources if r.type.startswith("aws:iam/")} == {
        "aws:iam/role:Role", "aws:iam/instanceProfile:InstanceProfile", "aws:iam/rolePolicy:RolePolicy"}
    role = result.one("aws:iam/role:Role")
    assert "managedPolicyArns" not in role.inputs and "inlinePolicies" not in role.inputs


# -- Azure ---------------------------------------------------------------------------------------

def azure_ingress(result: offline.OfflineResult) -> list[Opening]:
    found = []
    for nsg in result.of_type("azure-native:network:NetworkSecurityGroup"):
        for rule in nsg.inputs["securityRules"]:
            if rule["direction"] != "Inbound" or rule["access"] != "Allow":
                continue
            ports = _union(port_range(p) for p in ([rule["destinationPortRange"]] if "destinationPortRange" in rule
                                                   else rule.get("destinationPortRanges", [])))
            sources = set(rule.get("sourceAddressPrefixes") or []) | (
                {rule["sourceAddressPrefix"]} if "sourceAddressPrefix" in rule else set()) | {
                f"asg:{g['id']}" for g in rule.get("sourceApplicationSecurityGroups") or []}
            found.append(Opening(ports, frozenset(sources), f"{nsg.name} {rule['name']}"))
    return found


def azure_texts(result: offline.OfflineResult) -> list[str]:
    texts = []
    for vm in result.of_type("azure-native:compute:VirtualMachine"):
        raw = base64.b64decode(plain(vm.inputs["osProfile"])["customData"])
        texts.append(gzip.decompress(raw).decode() if raw[:2] == b"\x1f\x8b" else raw.decode())
    return texts


def azure_only_nodes_read(result: offline.OfflineResult) -> None:
    """Each VM's own identity gets "Key Vault Secrets User" on each secret, scoped to that secret."""
    secrets = {f"{s.name}-id" for s in result.of_type("azure-native:keyvault:Secret")}
    vms = result.of_type("azure-native:compute:VirtualMachine")
    assignments = result.of_type("azure-native:authorization:RoleAssignment")
    assert secrets and {a.inputs["scope"] for a in assignments} == secrets  # the secrets only, never the vault
    principals = {scope: sorted(a.inputs["principalId"] for a in assignments if a.inputs["scope"] == scope)
                  for scope in secrets}
    readers = next(iter(principals.values()))
    assert len(set(readers)) == len(readers) == len(vms) and all(p == readers for p in principals.values())
    assert {a.inputs["roleDefinitionId"].rsplit("/", 1)[1] for a in assignments} == {
        "4633458b-17de-408a-b874-0445c86b69e6"}
    assert {a.inputs["principalType"] for a in assignments} == {"ServicePrincipal"}
    (vault,) = result.of_type("azure-native:keyvault:Vault")
    props = plain(vault.inputs["properties"])
    assert props["enableRbacAuthorization"] is True and "accessPolicies" not in props
    assert props["networkAcls"]["defaultAction"] == "Deny" and props["networkAcls"]["bypass"] == "None"


# -- GCP -----------------------------------------------------------------------------------------

def gcp_ingress(result: offline.OfflineResult) -> list[Opening]:
    found = []
    for fw in result.of_type("gcp:compute/firewall:Firewall"):
        i = fw.inputs
        if i["direction"] != "INGRESS" or "allows" not in i:
            continue
        ports = _union(PORT_ALL if a["protocol"] == "all" or not a.get("ports") else
                       _union(port_range(p) for p in a["ports"]) for a in i["allows"])
        # Source tags equal to the rule's target tags: the nodes themselves.
        tags = i.get("sourceTags") or []
        own = [NODES] if tags and set(tags) <= set(i.get("targetTags") or []) else tags
        found.append(Opening(ports, frozenset(i.get("sourceRanges", []) + own), fw.name))
    return found


def gcp_texts(result: offline.OfflineResult) -> list[str]:
    texts = []
    for vm in result.of_type("gcp:compute/instance:Instance"):
        script = vm.inputs["metadata"]["startup-script"]
        texts.append(script)
        texts += [base64.b64decode("".join(body.split())).decode() for body in
                  re.findall(r"base64 -d > \S+ <<'KUMO_EOF'\n(.*?)\nKUMO_EOF", script, re.S)]
    return texts


def gcp_only_nodes_read(result: offline.OfflineResult) -> None:
    """One accessor grant per secret, to the nodes' own service account; nothing project-wide."""
    (account,) = result.of_type("gcp:serviceaccount/account:Account")
    member = f"serviceAccount:{account.name}@placeholder.iam.gserviceaccount.com"
    secrets = result.of_type("gcp:secretmanager/secret:Secret")
    grants = result.of_type("gcp:secretmanager/secretIamMember:SecretIamMember")
    assert sorted(g.inputs["secretId"] for g in grants) == sorted(s.inputs["secretId"] for s in secrets)
    assert {(g.inputs["role"], g.inputs["member"]) for g in grants} == {("roles/secretmanager.secretAccessor", member)}
    assert {vm.inputs["serviceAccount"]["email"] for vm in result.of_type("gcp:compute/instance:Instance")} == {
        member.split(":", 1)[1]}
    assert not [r.type for r in result.resources if r.type.startswith(("gcp:projects/", "gcp:organizations/",
                                                                       "gcp:folder/"))]


RELAY = {"outbound": "relay", "relay": {"host": "smtp.relay.example.net", "port": 587, "username": "kumo"}}
COMMON = {"hostname": "mta.example.com", "nodes": 2, "port25": RELAY, "dkim": {"domains": ["example.com"]},
          "name": "kumo-c"}
SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG5tJwNH3p6TjJVpQ9bwQb1h3k9r3QGgJH8o5f0X9Q1m op"

CASES: dict[str, ContractCase] = {
    "aws": ContractCase(
        deployment={**COMMON, "cloud": "aws", "region": "us-east-1", "os": "rocky9"},
        machines=("aws:ec2/instance:Instance",),
        volumes=("aws:ebs/volume:Volume",),
        secret_store=("aws:secretsmanager/secret:Secret",),
        value_holders=("aws:secretsmanager/secretVersion:SecretVersion",),
        ingress=aws_ingress, machine_texts=aws_texts, assert_only_nodes_read=aws_only_nodes_read,
        machine_id=engine_id("aws:ec2/instance:Instance")),
    "azure": ContractCase(
        deployment={**COMMON, "cloud": "azure", "region": "westeurope", "os": "ubuntu22",
                    "azure": {"ssh_public_key": SSH_KEY}},
        machines=("azure-native:compute:VirtualMachine",),
        volumes=("azure-native:compute:Disk",),
        secret_store=("azure-native:keyvault:Secret", "azure-native:keyvault:Vault"),
        value_holders=("azure-native:keyvault:Secret",),
        ingress=azure_ingress, machine_texts=azure_texts, assert_only_nodes_read=azure_only_nodes_read,
        machine_id=engine_id("azure-native:compute:VirtualMachine")),
    "gcp": ContractCase(
        deployment={**COMMON, "cloud": "gcp", "region": "us-central1", "os": "rocky9",
                    "gcp": {"project": "my-kumo-project"}},
        machines=("gcp:compute/instance:Instance",),
        volumes=("gcp:compute/disk:Disk",),
        secret_store=("gcp:secretmanager/secret:Secret",),
        value_holders=("gcp:secretmanager/secretVersion:SecretVersion",),
        ingress=gcp_ingress, machine_texts=gcp_texts, assert_only_nodes_read=gcp_only_nodes_read,
        machine_id=gcp_self_link),
}


def world_covered(sources: frozenset[str]) -> bool:
    """Whether ``sources`` admit the whole internet in either family: a world tag, 0.0.0.0/0 or ::/0,
    or CIDRs that together cover one of them (0.0.0.0/1 and 128.0.0.0/1)."""
    if sources & {"*", "Internet", "internet", "Any", "any"}:
        return True
    networks = []
    for source in sources:
        try:
            networks.append(ipaddress.ip_network(source, strict=False))
        except ValueError:
            continue
    for version in (4, 6):
        merged = list(ipaddress.collapse_addresses(n for n in networks if n.version == version))
        if any(n.prefixlen == 0 for n in merged):
            return True
    return False

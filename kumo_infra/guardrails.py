"""Guardrails: what kumo-infra promises of a deployment, checked over the resources of any Pulumi program.

One set of rules serves two callers:

* the CrossGuard policy pack ``policy/`` (its ``__main__.py`` adapts each :class:`Rule` to a
  ``pulumi_policy`` policy), which the Pulumi engine runs at ``preview`` and ``up`` over every
  resource of a program: kumo-infra's own and its neighbours';
* ``kumo-infra plan --policy``: :func:`check_stack` over the offline plan.

Rules read resources as the engine hands them to a policy: property names as the provider's schema
spells them (camelCase: ``metadataOptions.httpTokens``), which is also what the offline engine
records (kumo_infra.offline). They read properties through ``Mapping``/``Sequence`` access only, so
pulumi_policy's proxies work unchanged: a value still unknown at preview raises its
``UnknownValueError`` when, and only when, a rule needs that value (the engine then reports that the
rule could not run).

Standard library only (and kumo_infra.addresses, itself pure): the pack's environment holds
pulumi-policy, no pydantic and no cloud SDK.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Optional, Sequence

from .addresses import PUBLIC_BUDGET, public_coverage
from .ports import MANAGEMENT_PORTS

if TYPE_CHECKING:
    from .offline import OfflineResult
    from .stackconfig import StackConfig

MANDATORY = "mandatory"
ADVISORY = "advisory"


# Resource type tokens, as the engine names them.
AWS_INSTANCE = "aws:ec2/instance:Instance"
AWS_SPOT_INSTANCE = "aws:ec2/spotInstanceRequest:SpotInstanceRequest"
AWS_LAUNCH_CONFIGURATION = "aws:ec2/launchConfiguration:LaunchConfiguration"
AWS_LAUNCH_TEMPLATE = "aws:ec2/launchTemplate:LaunchTemplate"
AWS_VOLUME = "aws:ebs/volume:Volume"
AWS_SECURITY_GROUP = "aws:ec2/securityGroup:SecurityGroup"
AWS_DEFAULT_SECURITY_GROUP = "aws:ec2/defaultSecurityGroup:DefaultSecurityGroup"
AWS_SECURITY_GROUP_RULE = "aws:ec2/securityGroupRule:SecurityGroupRule"
AWS_INGRESS_RULE = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
AWS_EIP = "aws:ec2/eip:Eip"
AWS_EIP_DOMAIN_NAME = "aws:ec2/eipDomainName:EipDomainName"
AZURE_VM = "azure-native:compute:VirtualMachine"
AZURE_SCALE_SET = "azure-native:compute:VirtualMachineScaleSet"
AZURE_NSG = "azure-native:network:NetworkSecurityGroup"
AZURE_SECURITY_RULE = "azure-native:network:SecurityRule"
AZURE_PUBLIC_IP = "azure-native:network:PublicIPAddress"
# The classic (Terraform-bridged) provider: its rules carry the same names as azure-native's.
AZURE_CLASSIC_NSG = "azure:network/networkSecurityGroup:NetworkSecurityGroup"
AZURE_CLASSIC_SECURITY_RULE = "azure:network/networkSecurityRule:NetworkSecurityRule"
GCP_INSTANCE = "gcp:compute/instance:Instance"
GCP_INSTANCE_TEMPLATE = "gcp:compute/instanceTemplate:InstanceTemplate"
GCP_FIREWALL = "gcp:compute/firewall:Firewall"
SSH_COPY = "command:remote:CopyToRemote"
SSH_COMMAND = "command:remote:Command"
KUMO_COMPONENT_PREFIX = "kumo:index:"

# Where each kind of machine carries what it boots or runs: user data, custom data, metadata, the
# ssh target's installer and remote commands. A value may be a text, a map of texts (GCP metadata),
# an asset, and base64- or gzip-encoded (AWS user data, Azure custom data, the files GCP's startup
# script writes): machine_texts decodes every layer.
MACHINE_TEXT_PATHS: dict[str, tuple[str, ...]] = {
    AWS_INSTANCE: ("userData", "userDataBase64"),
    AWS_SPOT_INSTANCE: ("userData", "userDataBase64"),
    AWS_LAUNCH_CONFIGURATION: ("userData", "userDataBase64"),
    AWS_LAUNCH_TEMPLATE: ("userData",),
    AZURE_VM: ("osProfile.customData", "userData"),
    AZURE_SCALE_SET: ("virtualMachineProfile.osProfile.customData", "virtualMachineProfile.userData"),
    GCP_INSTANCE: ("metadata", "metadataStartupScript"),
    GCP_INSTANCE_TEMPLATE: ("metadata", "metadataStartupScript"),
    SSH_COPY: ("source",),
    SSH_COMMAND: ("create", "update", "delete"),
}

# The machine type of each kind of machine.
MACHINE_TYPE_PATHS: dict[str, str] = {
    AWS_INSTANCE: "instanceType",
    AWS_SPOT_INSTANCE: "instanceType",
    AWS_LAUNCH_CONFIGURATION: "instanceType",
    AWS_LAUNCH_TEMPLATE: "instanceType",
    AZURE_VM: "hardwareProfile.vmSize",
    AZURE_SCALE_SET: "sku.name",
    GCP_INSTANCE: "machineType",
    GCP_INSTANCE_TEMPLATE: "machineType",
}

# CPU-credit (burstable) and shared-core machine types: AWS t2/t3/t3a/t4g, Azure B-series, GCP's
# shared-core e2-micro/small/medium, f1-micro and g1-small. tests/test_guardrails.py holds these equal
# to the catalogs' burstable_cpu flags.
BURSTABLE = re.compile(r"t\d+[a-z]*\..+|Standard_B\d.*|e2-(micro|small|medium)|f1-micro|g1-small", re.IGNORECASE)

# Sources meaning "anywhere": Azure's service tag and wildcards (GCP and AWS take CIDRs only).
WORLD_TAGS = frozenset({"*", "internet", "any"})
# Protocols that carry SSH and HTTP: TCP by name or number, or every protocol (AWS -1, GCP all, Azure *).
TCP_PROTOCOLS = frozenset({"tcp", "6", "-1", "all", "*"})

_PEM_PRIVATE_KEY = re.compile(r"-----BEGIN ([A-Z0-9 ]*PRIVATE KEY)-----")
# A secret shorter than this would be found inside unrelated text.
MIN_KNOWN_SECRET_LENGTH = 8
_LUA_HOST_LIST = re.compile(r"\b(relay_hosts|trusted_hosts)\s*=\s*\{([^}]*)\}")
_LUA_STRING = re.compile(r"'((?:[^'\\]|\\.)*)'|\"((?:[^\"\\]|\\.)*)\"")
# bootstrap.env's line, as kumo-bootstrap reads it (indented inside a cloud-config).
_SPOOL_ON_LOCAL_NVME = re.compile(r"^\s*KUMO_SPOOL_STORAGE=['\"]?local_nvme\b", re.MULTILINE)
# A line of base64 only (one value: AWS user data, Azure custom data; or one line of a wrapped block,
# the files GCP's startup script writes), or a long run inside a line (`echo ... | base64 -d`).
_BASE64_LINE = re.compile(r"[A-Za-z0-9+/]{8,}={0,2}")
_BASE64_RUN = re.compile(r"[A-Za-z0-9+/]{64,}={0,2}")
_DECODE_DEPTH = 3
_MAX_DECODED = 16 * 1024 * 1024  # a gzip bomb in a neighbour's user data stops here


# -- resources as the rules see them ----------------------------------------------------------------

@dataclass(frozen=True)
class Resource:
    """One resource: its type token, name, properties (the engine's names; secrets opened) and, where
    known, its URN and the URNs it depends on (a stack-wide rule links resources by them)."""

    type: str
    name: str
    props: Mapping[str, Any]
    urn: str = ""
    dependencies: tuple[str, ...] = ()

    @property
    def ref(self) -> str:
        return self.urn or f"{self.type}::{self.name}"


@dataclass(frozen=True)
class Context:
    """What a run knows besides the resources: secret values (by what they are) that no machine text
    may hold. The policy pack knows none; the offline check knows the stack's secret config."""

    known_secrets: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Finding:
    resource: Resource
    message: str


ResourceCheck = Callable[[Resource, Context], Iterable[str]]
StackCheck = Callable[[Sequence[Resource], Context], Iterable[Finding]]


@dataclass(frozen=True)
class Rule:
    """A guardrail: ``check_resource`` judges one resource alone (the pack runs it before the resource
    is created); ``check_stack`` what only several resources together show (the pack runs it over the
    whole stack)."""

    name: str
    level: str  # MANDATORY or ADVISORY
    description: str
    remediation: str
    check_resource: Optional[ResourceCheck] = None
    check_stack: Optional[StackCheck] = None


@dataclass(frozen=True)
class Violation:
    rule: str
    level: str
    resource: str  # the URN (type::name where the resource has none)
    type: str
    name: str
    message: str
    remediation: str


# -- reading properties -------------------------------------------------------------------------------

def get(value: Any, path: str, default: Any = None) -> Any:
    """The value at a dotted path of mappings, or ``default`` where a key is missing."""
    for key in path.split("."):
        if not isinstance(value, Mapping) or key not in value:
            return default
        value = value[key]
    return value


def items(value: Any) -> list[Any]:
    """The elements of a list property (none when absent or not a list)."""
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return list(value)
    return []


def _strings(value: Any) -> list[str]:
    return [str(v) for v in items(value) if v is not None]


def _is_true(value: Any) -> bool:
    # Launch templates carry booleans as strings ("true").
    return value is True or (isinstance(value, str) and value.strip().lower() == "true")


def _number(value: Any) -> Optional[int]:
    try:
        return int(float(value))
    except (TypeError, ValueError, OverflowError):  # OverflowError: "1e999" is infinite
        return None


# -- the internet ---------------------------------------------------------------------------------------

def covers_the_internet(sources: Iterable[str]) -> bool:
    """Whether ``sources`` admit the internet: a wildcard or Azure's ``Internet`` tag, ``0.0.0.0/0`` or
    ``::/0``, or ranges whose public addresses together exceed what kumo-infra's config lets one list
    open (kumo_infra.addresses: 256 /16 blocks of IPv4, 256 /32 blocks of IPv6), so ``0.0.0.0/1`` with
    ``128.0.0.0/1`` counts as the whole internet. Other names (service tags, groups) are not ranges."""
    networks = []
    for source in sources:
        text = str(source).strip()
        if text.lower() in WORLD_TAGS:
            return True
        try:
            networks.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            continue
    return any(public_coverage([n for n in networks if n.version == version]) > budget
               for version, budget in PUBLIC_BUDGET.items())


# -- firewall openings ------------------------------------------------------------------------------------

PortRange = tuple[int, int]
ALL_PORTS: Optional[tuple[PortRange, ...]] = None


@dataclass(frozen=True)
class Opening:
    """An inbound allow rule: the TCP ports it admits (ALL_PORTS: every port) from which sources."""

    resource: Resource
    what: str
    ports: Optional[tuple[PortRange, ...]]
    sources: tuple[str, ...]

    def admits(self, port: int) -> bool:
        return self.ports is ALL_PORTS or any(low <= port <= high for low, high in self.ports)


def _port_spec(spec: Any) -> Optional[tuple[PortRange, ...]]:
    """Azure's "22", "20-30" or "*" and GCP's "22" or "20-30" as port ranges."""
    text = str(spec).strip()
    if text in ("*", ""):
        return ALL_PORTS
    low, _, high = text.partition("-")
    first, last = _number(low), _number(high or low)
    return () if first is None or last is None else ((first, last),)


def _union(specs: Iterable[Optional[tuple[PortRange, ...]]]) -> Optional[tuple[PortRange, ...]]:
    found: list[PortRange] = []
    for spec in specs:
        if spec is ALL_PORTS:
            return ALL_PORTS
        found += spec
    return tuple(found)


def _tcp(protocol: Any) -> bool:
    return str(protocol).strip().lower() in TCP_PROTOCOLS


def _aws_ports(rule: Any, protocol_key: str) -> Optional[tuple[PortRange, ...]]:
    if str(get(rule, protocol_key)).strip().lower() in ("-1", "all"):
        return ALL_PORTS
    first, last = _number(get(rule, "fromPort")), _number(get(rule, "toPort"))
    return () if first is None or last is None else ((first, last),)


def _aws_ingress_rule(r: Resource) -> list[Opening]:
    if not _tcp(get(r.props, "ipProtocol")):
        return []
    sources = tuple(str(s) for s in (get(r.props, "cidrIpv4"), get(r.props, "cidrIpv6")) if s)
    return [Opening(r, "the rule", _aws_ports(r.props, "ipProtocol"), sources)]


def _aws_security_group_rule(r: Resource) -> list[Opening]:
    if get(r.props, "type") != "ingress" or not _tcp(get(r.props, "protocol")):
        return []
    sources = tuple(_strings(get(r.props, "cidrBlocks")) + _strings(get(r.props, "ipv6CidrBlocks")))
    return [Opening(r, "the rule", _aws_ports(r.props, "protocol"), sources)]


def _aws_security_group(r: Resource) -> list[Opening]:
    found = []
    for i, rule in enumerate(items(get(r.props, "ingress"))):
        if _tcp(get(rule, "protocol")):
            sources = tuple(_strings(get(rule, "cidrBlocks")) + _strings(get(rule, "ipv6CidrBlocks")))
            found.append(Opening(r, f"ingress[{i}]", _aws_ports(rule, "protocol"), sources))
    return found


def _azure_rule(r: Resource, rule: Any, what: str) -> list[Opening]:
    if (str(get(rule, "access")).lower() != "allow" or str(get(rule, "direction")).lower() != "inbound"
            or not _tcp(get(rule, "protocol"))):
        return []
    # A rule may set both the single and the list form: Azure admits their union.
    single = get(rule, "destinationPortRange")
    specs = ([single] if single is not None else []) + items(get(rule, "destinationPortRanges"))
    single_source = get(rule, "sourceAddressPrefix")
    sources = _strings(get(rule, "sourceAddressPrefixes")) + ([str(single_source)] if single_source else [])
    return [Opening(r, what, _union(_port_spec(s) for s in specs), tuple(sources))]


def _azure_nsg(r: Resource) -> list[Opening]:
    return [o for rule in items(get(r.props, "securityRules"))
            for o in _azure_rule(r, rule, f"security rule {get(rule, 'name', '?')}")]


def _azure_security_rule(r: Resource) -> list[Opening]:
    return _azure_rule(r, r.props, "the rule")


# An ingress firewall without sourceRanges, sourceTags or sourceServiceAccounts admits every IPv4
# address (GCP's documented default; IPv6 only when listed).
GCP_DEFAULT_INGRESS_SOURCE = "0.0.0.0/0"


def _gcp_firewall(r: Resource) -> list[Opening]:
    if str(get(r.props, "direction", "INGRESS")).upper() != "INGRESS" or _is_true(get(r.props, "disabled")):
        return []
    allowed = [a for a in items(get(r.props, "allows")) if _tcp(get(a, "protocol"))]
    if not allowed:
        return []
    ports = _union(ALL_PORTS if not items(get(a, "ports")) else _union(_port_spec(p) for p in items(get(a, "ports")))
                   for a in allowed)
    sources = _strings(get(r.props, "sourceRanges"))
    if not sources and not items(get(r.props, "sourceTags")) and not items(get(r.props, "sourceServiceAccounts")):
        sources = [GCP_DEFAULT_INGRESS_SOURCE]
    return [Opening(r, "the rule", ports, tuple(sources))]


# Every kind of firewall rule the clouds have, read into openings. Azure's NSGs keep a deny-all below the
# allows, and a lower-numbered deny can shadow an allow: an allow is judged alone, as if nothing shadowed it.
OPENINGS: dict[str, Callable[[Resource], list[Opening]]] = {
    AWS_INGRESS_RULE: _aws_ingress_rule,
    AWS_SECURITY_GROUP_RULE: _aws_security_group_rule,
    AWS_SECURITY_GROUP: _aws_security_group,
    AWS_DEFAULT_SECURITY_GROUP: _aws_security_group,
    AZURE_NSG: _azure_nsg,
    AZURE_SECURITY_RULE: _azure_security_rule,
    AZURE_CLASSIC_NSG: _azure_nsg,
    AZURE_CLASSIC_SECURITY_RULE: _azure_security_rule,
    GCP_FIREWALL: _gcp_firewall,
}


def openings(r: Resource) -> list[Opening]:
    read = OPENINGS.get(r.type)
    return read(r) if read else []


def _ports_named(opening: Opening) -> list[str]:
    return [f"{what} ({port}/tcp)" for port, what in MANAGEMENT_PORTS.items() if opening.admits(port)]


def _management_ports_alone(r: Resource, context: Context) -> Iterator[str]:
    for opening in openings(r):
        named = _ports_named(opening)
        if named and covers_the_internet(opening.sources):
            yield f"{opening.what} admits {', '.join(named)} from {', '.join(opening.sources)}"


def _management_ports_together(resources: Sequence[Resource], context: Context) -> Iterator[Finding]:
    """A range split over several rules (0.0.0.0/1 in one, 128.0.0.0/1 in another): the union of every
    rule's sources per port, across the stack. Rules open on their own are reported by the resource check."""
    every = [o for r in resources for o in openings(r)]
    for port, what in MANAGEMENT_PORTS.items():
        admitting = [o for o in every if o.admits(port) and not covers_the_internet(o.sources)]
        sources = sorted({s for o in admitting for s in o.sources})
        if len(admitting) > 1 and covers_the_internet(sources):
            names = sorted({o.resource.name for o in admitting})
            for opening in admitting:
                yield Finding(opening.resource, f"{opening.what} admits {what} ({port}/tcp) from "
                                                f"{', '.join(opening.sources)}; with {', '.join(names)} together "
                                                f"from {', '.join(sources)}")


# -- machines -------------------------------------------------------------------------------------------

# The AWS machines that reach the instance metadata service (a launch template's instances take its options).
IMDS_TYPES = frozenset({AWS_INSTANCE, AWS_SPOT_INSTANCE, AWS_LAUNCH_TEMPLATE, AWS_LAUNCH_CONFIGURATION})


def _imds_v2(r: Resource, context: Context) -> Iterator[str]:
    if r.type not in IMDS_TYPES:
        return
    options = get(r.props, "metadataOptions")
    if options is None and get(r.props, "launchTemplate") is not None:
        return  # the launch template's options apply: the stack check finds the template, or reports it
    if get(options, "httpEndpoint") == "disabled":
        return  # no metadata service at all
    tokens = get(options, "httpTokens")
    if tokens != "required":
        yield (f"metadataOptions.httpTokens is {tokens!r}" if tokens is not None else "metadataOptions.httpTokens "
               "is not set") + ": the instance metadata service answers IMDSv1, without a session token"


def _template_in_stack(r: Resource, template: Resource) -> bool:
    reference = get(r.props, "launchTemplate")
    name = get(template.props, "name")
    return bool(template.urn and template.urn in r.dependencies) or (
        name is not None and name in (get(reference, "name"), get(reference, "id")))


def _imds_v2_of_outside_templates(resources: Sequence[Resource], context: Context) -> Iterator[Finding]:
    """A machine taking its metadata options from a launch template outside the program: that template's
    options cannot be seen, so IMDSv2 is not shown to be required."""
    templates = [t for t in resources if t.type == AWS_LAUNCH_TEMPLATE]
    for r in resources:
        if (r.type in IMDS_TYPES and get(r.props, "metadataOptions") is None
                and get(r.props, "launchTemplate") is not None
                and not any(_template_in_stack(r, t) for t in templates)):
            yield Finding(r, "metadataOptions is not set and launchTemplate names a template outside the program: "
                             "whether the instance metadata service requires IMDSv2 cannot be seen")


def _aws_instance_disks(r: Resource) -> Iterator[str]:
    root = get(r.props, "rootBlockDevice")
    if root is not None or get(r.props, "launchTemplate") is None:
        if not _is_true(get(root, "encrypted")):
            yield "rootBlockDevice.encrypted is not true"
    for i, device in enumerate(items(get(r.props, "ebsBlockDevices"))):
        if not _is_true(get(device, "encrypted")):
            yield f"ebsBlockDevices[{i}] ({get(device, 'deviceName', '?')}) is not encrypted"


def _aws_launch_template_disks(r: Resource) -> Iterator[str]:
    for i, mapping in enumerate(items(get(r.props, "blockDeviceMappings"))):
        ebs = get(mapping, "ebs")
        if ebs is not None and not _is_true(get(ebs, "encrypted")):
            yield f"blockDeviceMappings[{i}] ({get(mapping, 'deviceName', '?')}): ebs.encrypted is not true"


def _aws_volume_disks(r: Resource) -> Iterator[str]:
    if not _is_true(get(r.props, "encrypted")):
        yield "encrypted is not true"


def _azure_vm_disks(r: Resource) -> Iterator[str]:
    if not _is_true(get(r.props, "securityProfile.encryptionAtHost")):
        yield ("securityProfile.encryptionAtHost is not true: the temp disk (a local NVMe spool) and the "
               "disks' host caches are stored unencrypted")


# Managed disks on Azure and every GCP disk (persistent and local SSD) are encrypted at rest by the
# cloud with no way to turn it off, and AWS encrypts instance-store NVMe in hardware: nothing to check.
DISKS: dict[str, Callable[[Resource], Iterator[str]]] = {
    AWS_INSTANCE: _aws_instance_disks,
    AWS_SPOT_INSTANCE: _aws_instance_disks,
    AWS_LAUNCH_CONFIGURATION: _aws_instance_disks,
    AWS_LAUNCH_TEMPLATE: _aws_launch_template_disks,
    AWS_VOLUME: _aws_volume_disks,
    AZURE_VM: _azure_vm_disks,
}


def _disks_encrypted(r: Resource, context: Context) -> Iterator[str]:
    check = DISKS.get(r.type)
    return check(r) if check else iter(())


def _machine_type(r: Resource) -> Optional[str]:
    path = MACHINE_TYPE_PATHS.get(r.type)
    value = get(r.props, path) if path else None
    # GCP may name it by URL: zones/us-central1-a/machineTypes/e2-medium.
    return str(value).rsplit("/", 1)[-1] if value else None


def _not_burstable(r: Resource, context: Context) -> Iterator[str]:
    machine_type = _machine_type(r)
    if machine_type and BURSTABLE.fullmatch(machine_type):
        yield (f"{machine_type} is a burstable (CPU credit or shared-core) type: it throttles to its baseline "
               "when the credits run out, and a mail server's load is sustained")


# -- what machines boot ------------------------------------------------------------------------------------

def _texts_in(value: Any) -> list[str]:
    """The texts inside a property: itself, each value of a map, an asset's text."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, Mapping):
        return [t for key in value for t in _texts_in(value[key])]
    if isinstance(value, Sequence) and not isinstance(value, bytes):
        return [t for v in value for t in _texts_in(v)]
    text = getattr(value, "text", None)  # pulumi.StringAsset, as pulumi_policy hands an asset over
    return [text] if isinstance(text, str) else []


def _decoded(blob: str) -> Optional[str]:
    """``blob`` base64-decoded (and gunzipped) when that gives text, else None."""
    try:
        raw = base64.b64decode("".join(blob.split()), validate=True)
    except (binascii.Error, ValueError):
        return None
    if raw[:2] == b"\x1f\x8b":
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            raw = inflater.decompress(raw, _MAX_DECODED)
        except zlib.error:
            return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text if "\x00" not in text else None


def _base64_blobs(text: str) -> list[str]:
    """Candidate base64 values in ``text``: each run of base64-only lines joined, and long runs inside
    other lines."""
    blobs: list[str] = []
    block: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if _BASE64_LINE.fullmatch(stripped):
            block.append(stripped)
            continue
        if block:
            blobs.append("".join(block))
            block = []
        blobs += _BASE64_RUN.findall(line)
    if block:
        blobs.append("".join(block))
    return blobs


def _layers(text: str, depth: int = 0) -> list[str]:
    found = [text]
    if depth < _DECODE_DEPTH:
        for blob in _base64_blobs(text):
            decoded = _decoded(blob)
            if decoded is not None:
                found += _layers(decoded, depth + 1)
    return found


def machine_texts(r: Resource) -> list[tuple[str, str]]:
    """(property path, text) for every text the machine boots or runs, each encoded layer decoded."""
    return [(path, layer) for path in MACHINE_TEXT_PATHS.get(r.type, ())
            for text in _texts_in(get(r.props, path)) for layer in _layers(text)]


def kumo_host_lists(text: str) -> list[tuple[str, list[str]]]:
    """The ``relay_hosts`` and ``trusted_hosts`` lists of a KumoMTA policy (init.lua) in ``text``."""
    return [(m.group(1), [a if a else b for a, b in _LUA_STRING.findall(m.group(2))])
            for m in _LUA_HOST_LIST.finditer(text)]


def _no_secrets(r: Resource, context: Context) -> list[str]:
    secrets = {what: value for what, value in context.known_secrets.items() if len(value) >= MIN_KNOWN_SECRET_LENGTH}
    found = set()
    for path, text in machine_texts(r):  # one finding per property, however many layers hold it
        # The marker names the key's kind; the key itself is never shown.
        found |= {f"{path} holds a {kind} (a PEM block)" for kind in _PEM_PRIVATE_KEY.findall(text)}
        found |= {f"{path} holds the value of {what}" for what, value in secrets.items() if value in text}
    return sorted(found)


def _no_open_relay(r: Resource, context: Context) -> Iterator[str]:
    if r.type.startswith(KUMO_COMPONENT_PREFIX):
        # relayCidrs: the schema's name, as a component declared from another language carries it.
        for path in ("deployment.kumomta.relay_cidrs", "deployment.kumomta.relayCidrs"):
            cidrs = _strings(get(r.props, path))
            if covers_the_internet(cidrs):
                yield f"{path} lets the internet relay: {', '.join(cidrs)}"
    yield from sorted({f"the KumoMTA policy in {path} has {name} covering the internet: {', '.join(hosts)}"
                       for path, text in machine_texts(r) for name, hosts in kumo_host_lists(text)
                       if covers_the_internet(hosts)})


def _spool_survives_stop(r: Resource, context: Context) -> Iterator[str]:
    if any(_SPOOL_ON_LOCAL_NVME.search(text) for _, text in machine_texts(r)):
        yield ("the KumoMTA spool is on local NVMe: queued mail is lost when the machine stops, is deallocated or "
               "moves host")


# -- reverse DNS ---------------------------------------------------------------------------------------------

def _aws_ptr(r: Resource, resources: Sequence[Resource]) -> bool:
    allocation = get(r.props, "allocationId")
    return any((r.urn and r.urn in d.dependencies) or (allocation and get(d.props, "allocationId") == allocation)
               for d in resources if d.type == AWS_EIP_DOMAIN_NAME)


def _azure_ptr(r: Resource, resources: Sequence[Resource]) -> bool:
    return bool(get(r.props, "dnsSettings.reverseFqdn"))


def _gcp_ptr(r: Resource, resources: Sequence[Resource]) -> bool:
    configs = [c for nic in items(get(r.props, "networkInterfaces")) for c in items(get(nic, "accessConfigs"))]
    return all(get(c, "publicPtrDomainName") for c in configs)


# The public addresses a program makes, and whether it sets each one's PTR. (The ssh target's machines
# have addresses no resource holds: its dns_records output lists the PTRs to request.)
PTR_SET: dict[str, Callable[[Resource, Sequence[Resource]], bool]] = {
    AWS_EIP: _aws_ptr,
    AZURE_PUBLIC_IP: _azure_ptr,
    GCP_INSTANCE: _gcp_ptr,
}


def _ptr_set(resources: Sequence[Resource], context: Context) -> Iterator[Finding]:
    for r in resources:
        check = PTR_SET.get(r.type)
        if check and not check(r, resources):
            yield Finding(r, "this public address gets no PTR (reverse DNS) record from the program: mailbox "
                             "providers reject or junk mail from an address whose PTR does not name the sender")


# -- the rules --------------------------------------------------------------------------------------------------

RULES: tuple[Rule, ...] = (
    Rule("kumo-management-ports-not-public", MANDATORY,
         "No firewall rule (AWS security groups and their rules, Azure NSGs and security rules, GCP firewalls, "
         "whose ingress without sources admits 0.0.0.0/0) "
         "admits SSH (22) or the KumoMTA HTTP API (8000, 8443) from the internet: 0.0.0.0/0, ::/0, Azure's "
         "Internet or *, or ranges covering more public addresses than kumo-infra's config admits.",
         "Admit the management ports only from your own networks (kumo-infra: network.ssh_cidrs and "
         "network.api_cidrs); the API's loopback port 8000 never needs a rule.",
         check_resource=_management_ports_alone, check_stack=_management_ports_together),
    Rule("kumo-aws-imdsv2-required", MANDATORY,
         "AWS instances, spot requests, launch templates and launch configurations require IMDSv2 "
         "(metadataOptions.httpTokens: required), so a request forged through the machine cannot read its role's "
         "credentials. An instance taking its options from a launch template outside the program is reported.",
         "Set metadata_options=InstanceMetadataOptionsArgs(http_tokens=\"required\") (or turn the metadata "
         "endpoint off).",
         check_resource=_imds_v2, check_stack=_imds_v2_of_outside_templates),
    Rule("kumo-disks-encrypted", MANDATORY,
         "Root and spool disks are encrypted: AWS root and EBS devices and volumes say encrypted; Azure VMs use "
         "encryption at host (managed disks are always encrypted at rest; the temp disk, where a local NVMe "
         "spool lives, and the caches only with it). GCP encrypts every disk, with no way to turn it off.",
         "AWS: encrypted=True on root_block_device, every EBS device and volume (encrypted=\"true\" in launch "
         "templates). Azure: security_profile.encryption_at_host=True (register the subscription's "
         "EncryptionAtHost feature once).",
         check_resource=_disks_encrypted),
    Rule("kumo-no-secrets-in-machine-data", MANDATORY,
         "No private key (a PEM block) and no known secret value in what a machine boots or runs: user data, "
         "custom data, metadata, the ssh target's installer and remote commands, including their base64 and "
         "gzip layers. Anyone who can describe the machine reads these.",
         "Keep secrets in the secret store and let the machine fetch them with its own identity (kumo-infra's "
         "nodes do), or send them on the remote command's standard input.",
         check_resource=_no_secrets),
    Rule("kumo-no-open-relay", MANDATORY,
         "KumoMTA's relay_hosts and trusted_hosts (in the policy a machine boots, or a kumo-infra component's "
         "kumomta.relay_cidrs) do not cover the internet: an open relay sends anyone's spam from your addresses.",
         "List only your own networks in kumomta.relay_cidrs; trusted_hosts stays loopback.",
         check_resource=_no_open_relay),
    Rule("kumo-ptr-set", ADVISORY,
         "Every public address the program makes gets a PTR record naming its host (AWS EipDomainName, Azure "
         "dnsSettings.reverseFqdn, GCP accessConfigs publicPtrDomainName).",
         "Publish the node's A record, then set its PTR: kumo-infra does both with dns.zone (on Azure with "
         "dns.forward_records_exist); otherwise the dns_records output lists what to request.",
         check_stack=_ptr_set),
    Rule("kumo-spool-survives-stop", ADVISORY,
         "The KumoMTA spool is not on local NVMe, whose contents are lost when the machine stops or is "
         "deallocated.",
         "Drain a node before stopping it, or set spool.storage: block so queued mail survives a stop.",
         check_resource=_spool_survives_stop),
    Rule("kumo-no-burstable-instances", ADVISORY,
         "Machines are not burstable (CPU credit or shared-core) types: AWS t2/t3/t3a/t4g, Azure B-series, "
         "GCP e2-micro/small/medium, f1-micro, g1-small. A mail server's load is sustained.",
         "Choose a fixed-performance type (kumo-infra: sizing.profile performance, or sizing.instance_type).",
         check_resource=_not_burstable),
)


# -- running them ----------------------------------------------------------------------------------------------

def check_resources(resources: Sequence[Resource],
                    known_secrets: Optional[Mapping[str, str]] = None) -> list[Violation]:
    """Every violation of :data:`RULES` in ``resources``, mandatory ones first."""
    context = Context(dict(known_secrets or {}))
    found: list[Violation] = []
    for rule in RULES:
        if rule.check_resource:
            found += [_violation(rule, r, message) for r in resources for message in rule.check_resource(r, context)]
        if rule.check_stack:
            found += [_violation(rule, f.resource, f.message) for f in rule.check_stack(resources, context)]
    return sorted(found, key=lambda v: (v.level != MANDATORY, v.rule, v.resource, v.message))


def _violation(rule: Rule, r: Resource, message: str) -> Violation:
    return Violation(rule.name, rule.level, r.ref, r.type, r.name, message, rule.remediation)


def _opened(value: Any, is_secret: Callable[[Any], bool]) -> Any:
    if is_secret(value):
        return _opened(value["value"], is_secret)
    if isinstance(value, dict):
        return {k: _opened(v, is_secret) for k, v in value.items()}
    if isinstance(value, list):
        return [_opened(v, is_secret) for v in value]
    return value


def resources_of(result: "OfflineResult") -> list[Resource]:
    """The resources an offline run recorded, as the engine hands them to a policy: secrets opened."""
    from .offline import is_secret

    return [Resource(r.type, r.name, _opened(r.inputs, is_secret), r.urn, tuple(r.dependencies))
            for r in result.resources]


def check_offline(result: "OfflineResult", known_secrets: Optional[Mapping[str, str]] = None) -> list[Violation]:
    return check_resources(resources_of(result), known_secrets)


def check_stack(stack: "StackConfig", offline_run: Optional[tuple[Any, Sequence[str]]] = None) -> list[Violation]:
    """The violations of ``stack``'s offline plan (``kumo-infra plan --policy``), from ``offline_run``
    (``planview.run_offline(stack)``, when the caller has it already) or a run of its own. The plan's
    secret config values are placeholders: the placeholder in a machine's text is a secret config value
    there. Raises ConfigError, as ``planview.run_offline`` does, for input the program refuses."""
    from . import planview

    result, secret_keys = offline_run if offline_run is not None else planview.run_offline(stack)
    known = {f"the secret config ({', '.join(secret_keys)})": planview.SECRET_PLACEHOLDER} if secret_keys else {}
    return check_offline(result, known)


def has_mandatory(violations: Iterable[Violation]) -> bool:
    return any(v.level == MANDATORY for v in violations)


def format_violations(violations: Sequence[Violation]) -> str:
    """The violations for a terminal: each with its resource, what is wrong and the fix; then the count."""
    lines = []
    for v in violations:
        lines += [f"{v.level.upper()} {v.rule}: {v.type} {v.name}", f"  {v.message}", f"  fix: {v.remediation}"]
    mandatory = sum(v.level == MANDATORY for v in violations)
    lines.append(f"policy: {mandatory} mandatory, {len(violations) - mandatory} advisory violation(s) "
                 f"of {len(RULES)} rules")
    return "\n".join(lines)

"""The typed stack configuration: ``kumo:deployment`` and its secrets.

Pulumi hands structured config over as plain JSON and checks nothing, so this
model is where every rule lives, checked once: types and ranges by pydantic,
rules that span fields in ``Deployment.check``. Every error names the exact
key path (``kumo:deployment.sizing.messages_per_hour``), what was wrong and
what is allowed. No Pulumi import here: the CLI and tests use it directly.
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from typing import Annotated, Any, Literal, Optional

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from . import addresses, oses
from .errors import ConfigError, Problem, shown

ROOT = "kumo:deployment"
# Secrets are separate top-level keys so Pulumi keeps them encrypted end to end
# (a secret leaf inside a structured object comes back as plain text).
RELAY_PASSWORD_KEY = "kumo:relayPassword"

Cloud = Literal["aws", "azure", "gcp"]

DEFAULT_REPO_URL = "https://openrepo.kumomta.com"

_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
# fullmatch everywhere, and ASCII classes: "$" alone also matches before a trailing newline.
_HOSTNAME_RE = re.compile(rf"{_LABEL}(\.{_LABEL})+", re.ASCII)
_NAME_RE = re.compile(r"[a-z][a-z0-9-]{0,18}[a-z0-9]", re.ASCII)


# -- the allowed form of every string --------------------------------------
# Treat every value as hostile: each string field has one of these, so nothing but the
# listed characters ever reaches a file, a command line, Lua or a cloud API. The error
# shows the allowed form in words.

def _form(pattern: str, form: str, flags: int = 0) -> AfterValidator:
    compiled = re.compile(pattern, re.ASCII | flags)

    def check(value: str) -> str:
        if not compiled.fullmatch(value):
            raise ValueError(f"{shown(value)} is not {form}")
        return value
    return AfterValidator(check)


def _hostname(value: str) -> str:
    name = value.lower().rstrip(".") if value.isascii() else value
    if len(name) > 253 or not _HOSTNAME_RE.fullmatch(name):
        raise ValueError(f"{shown(value)} is not a fully qualified DNS name (like mta.example.com): "
                         "labels of letters, digits and inner hyphens, each at most 63 characters, 253 in all")
    return name


def _host_or_ip(value: str) -> str:
    """A DNS name or an IP address literal (without an IPv6 scope id, which carries any text)."""
    if re.fullmatch(r"[0-9A-Fa-f.:]+", value, re.ASCII):
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            pass
    try:
        return _hostname(value)
    except ValueError:
        raise ValueError(f"{shown(value)} is neither a fully qualified DNS name (like mx1.example.net) nor an IP "
                         "address (like 192.0.2.25 or 2001:db8::25)") from None


Hostname = Annotated[str, AfterValidator(_hostname)]
# GCP resource names (RFC 1035 labels): networks, subnetworks, managed zones.
_GCP_NAME = r"[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?"
_GCP_NAME_FORM = "lowercase letters, digits and hyphens, starting with a letter, at most 63 characters"
_GCP_PROJECT = r"[a-z][a-z0-9-]{4,28}[a-z0-9]"
_GCP_API = r"(?:https://www\.googleapis\.com/compute/(?:v1|beta)/)?"
# Azure resource group names (1-90: letters, digits, _ - . ( ), not ending in a period). Azure also
# accepts non-ASCII letters; kumo-infra takes ASCII only.
_AZURE_RG = r"[A-Za-z0-9_.()-]{0,89}[A-Za-z0-9_()-]"
_AZURE_RG_FORM = ("an Azure resource group name: 1-90 letters, digits, '_', '-', '.', '(' or ')', not ending "
                  "in '.'")
_GUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
# Virtual network names: 2-64 characters; subnet names: 1-80. Letters, digits, '_', '.', '-';
# starting with a letter or digit, ending with a letter, digit or '_'.
_AZURE_VNET_ID = (rf"/subscriptions/{_GUID}/resourceGroups/{_AZURE_RG}/providers/Microsoft\.Network/"
                  r"virtualNetworks/[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,62}[A-Za-z0-9_])")
_AZURE_SUBNET_ID = rf"{_AZURE_VNET_ID}/subnets/[A-Za-z0-9](?:[A-Za-z0-9_.-]{{0,78}}[A-Za-z0-9_])?"
_AZURE_ID_EXAMPLE = ("/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/net-rg/providers/"
                     "Microsoft.Network/virtualNetworks/net")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Sizing(_Strict):
    profile: Literal["minimal", "performance"] = "minimal"
    messages_per_hour: int = Field(100_000, ge=1, le=1_000_000_000)
    avg_message_kb: float = Field(50.0, gt=0, le=50_000)
    # Checked against the cloud's catalog by the planner; this is only its shape.
    instance_type: Optional[Annotated[str, _form(
        r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}",
        "an instance type name of letters, digits, '.', '_' and '-' (like m6i.large, Standard_D4s_v5, "
        "n2-standard-8)")]] = None
    # Plan for peaks above the average rate; 1.5 leaves a third of every
    # resource free at the stated rate.
    headroom: float = Field(1.5, ge=1.0, le=10.0)


class Spool(_Strict):
    # Default follows the profile: performance needs local NVMe, minimal uses a block volume.
    storage: Optional[Literal["local_nvme", "block"]] = None
    size_gb: Optional[int] = Field(None, ge=20, le=64_000)
    # Hours of traffic the spool must absorb when delivery stalls (remote outage,
    # throttling) before mail is refused.
    hold_hours: float = Field(4.0, gt=0, le=168)
    filesystem: Literal["xfs", "ext4"] = "xfs"


def spool_storage_for(sizing: Sizing, spool: Spool) -> str:
    """The spool's storage: as configured, else what the profile implies."""
    if spool.storage:
        return spool.storage
    return "local_nvme" if sizing.profile == "performance" else "block"


PERFORMANCE_NEEDS_NVME = "the performance profile keeps the spool on local NVMe"


def storage_conflict(sizing: Sizing, spool: Spool) -> bool:
    return sizing.profile == "performance" and spool.storage == "block"


class Logs(_Strict):
    # KumoMTA never deletes its logs; the bootstrap removes segments older than this.
    retention_days: int = Field(7, ge=1, le=3650)


def _cidr_list(values: list[str]) -> list[str]:
    problem = addresses.list_problem(values)
    if problem:
        raise ValueError(problem)
    return values


# Entries are checked one by one (the error names the entry), then the list as a whole
# (duplicates, overlaps, how much of the internet it covers): see kumo_infra/addresses.py.
AdminCidr = Annotated[str, AfterValidator(lambda v: str(addresses.parse_entry(
    v, "management ports (SSH, the KumoMTA HTTP API) are never opened to the whole internet; "
       "list the operators' own networks")))]
RelayCidr = Annotated[str, AfterValidator(lambda v: str(addresses.parse_entry(
    v, "an entry covering every address makes an open relay; list only the networks of your own "
       "injecting applications")))]
AdminCidrs = Annotated[list[AdminCidr], AfterValidator(_cidr_list)]
RelayCidrs = Annotated[list[RelayCidr], AfterValidator(_cidr_list)]


class Network(_Strict):
    # Who may reach SSH (22). Empty: no SSH rule at all.
    ssh_cidrs: AdminCidrs = Field(default_factory=list)
    # Who may reach the KumoMTA HTTP API from outside the node (TLS + basic auth). Empty: the
    # API listens on loopback only.
    api_cidrs: AdminCidrs = Field(default_factory=list)
    # Deprecated: sets both ssh_cidrs and api_cidrs (a warning names the new keys).
    admin_cidrs: AdminCidrs = Field(default_factory=list)
    # Message submission from clients (587, 2525) is off unless asked for.
    submission_ports: list[Literal[465, 587, 2525]] = Field(default_factory=list)

    @field_validator("submission_ports")
    @classmethod
    def _starttls_listeners(cls, value: list[int]) -> list[int]:
        if 465 in value:
            raise ValueError("465 expects implicit TLS (SMTPS) from the first byte, and the listener kumo-infra "
                             "configures speaks SMTP with STARTTLS; offer submission on 587 or 2525")
        if len(set(value)) != len(value):
            raise ValueError("a port is listed twice")
        return value

    @model_validator(mode="after")
    def _admin_cidrs_fill_both(self) -> "Network":
        # The old single list keeps working for both, unless the new keys are used beside it
        # (Deployment.check refuses that combination, naming the keys).
        if self.admin_cidrs and not (self.ssh_cidrs or self.api_cidrs):
            self.__dict__["ssh_cidrs"] = list(self.admin_cidrs)
            self.__dict__["api_cidrs"] = list(self.admin_cidrs)
        return self


class Relay(_Strict):
    host: Hostname
    port: Literal[587, 465, 2525] = 587
    # Printable ASCII: a smarthost's username may hold quotes, '$', ';' or '\\'. It reaches the
    # policy only, as an escaped Lua string (tests/test_hostile_corpus.py runs it through Lua).
    username: Annotated[str, _form(
        r"[\x21-\x7e]{1,256}",
        "a username of 1-256 printable ASCII characters, without spaces or control characters")]

    @field_validator("port")
    @classmethod
    def _starttls_port(cls, value: int) -> int:
        if value == 465:
            raise ValueError("465 is implicit TLS (SMTPS), and KumoMTA's SMTP client negotiates TLS only with "
                             "STARTTLS (enable_tls); use the smarthost's 587 or 2525 STARTTLS port")
        return value


class Port25(_Strict):
    outbound: Literal["auto", "direct", "relay"] = "auto"
    relay: Optional[Relay] = None
    # Hosts the boot-time probe tries on TCP 25; MX hosts of large mailbox providers.
    probe_hosts: list[Annotated[str, AfterValidator(_host_or_ip)]] = Field(
        default_factory=lambda: ["gmail-smtp-in.l.google.com", "mx1.mail.yahoo.com",
                                 "outlook-com.olc.protection.outlook.com"],
        min_length=1, max_length=10)
    probe_timeout_s: int = Field(5, ge=1, le=60)

    @field_validator("probe_hosts")
    @classmethod
    def _once_each(cls, value: list[str]) -> list[str]:
        return _no_repeats(value)


class KumoMta(_Strict):
    channel: Literal["stable", "dev"] = "stable"
    # A package version as the repository spells it (like 2025.03.19-1fbb1b18).
    version: Optional[Annotated[str, _form(
        r"(?=.{1,64}$)[0-9][0-9A-Za-z]*(?:[.+~_-][0-9A-Za-z]+)*",
        "a package version of at most 64 letters and digits, separated by single '.', '+', '~', '_' or '-', "
        "starting with a digit (like 2025.03.19-1fbb1b18)")]] = None
    # A host laid out like KumoMTA's repository host (per OS <dir>/ for dev, <dir>-stable/ for
    # stable, and the signing key at <dir>/public.gpg), e.g. a private mirror.
    repo_url: Annotated[str, AfterValidator(lambda v: _repo_url(v))] = DEFAULT_REPO_URL
    relay_cidrs: RelayCidrs = Field(default_factory=list)
    # The OpenPGP fingerprint the repository's signing key must have, checked before the key is
    # trusted. Unset: KumoMTA publishes none, so each node trusts the key served over https on
    # first use and pins it (a warning says so); required for a mirror over http.
    repo_key_fingerprint: Optional[str] = None

    @field_validator("repo_key_fingerprint")
    @classmethod
    def _fingerprint(cls, value: Optional[str]) -> Optional[str]:
        if value is None:
            return None
        compact = value.replace(" ", "").upper()
        if not (value.isascii() and re.fullmatch(r"[0-9A-F]{40}", compact)):
            raise ValueError("must be the 40-hex-digit OpenPGP fingerprint of the repository's signing key "
                             "(gpg --show-keys --with-colons KEYFILE, the 'fpr' line)")
        return compact


_URL_PATH = re.compile(r"(?:/[A-Za-z0-9._~-]+)*/?", re.ASCII)
REPO_URL_FORM = ("an https:// URL of a host (DNS name or IP address) with an optional :port and a path of letters, "
                 "digits and . _ ~ - / (like https://mirror.example.net/kumomta); no user:password@, ?query, "
                 "#fragment or '..'")


def _repo_url(value: str) -> str:
    """The repository URL, trailing slash removed. http:// is checked in Deployment.check (needs a fingerprint)."""
    bad = ValueError(f"{shown(value)} is not {REPO_URL_FORM}")
    # urlsplit silently drops tabs and newlines and strips spaces: refuse them before it sees the text.
    # '%' would let an IPv6 scope id or a percent-encoded '..' through.
    if not (len(value) <= 255 and re.fullmatch(r"[\x21-\x7e]+", value, re.ASCII)) or "%" in value:
        raise bad
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("https", "http") or not value.startswith(f"{parts.scheme}://"):
        raise bad
    if parts.query or parts.fragment or "?" in value or "#" in value or "@" in parts.netloc or ";" in value:
        raise bad
    try:
        port = parts.port  # ValueError when not a number in 0-65535
    except ValueError:
        raise bad from None
    if port == 0 or parts.hostname is None:
        raise bad
    host = parts.hostname
    if parts.netloc.startswith("["):
        try:
            host = str(ipaddress.IPv6Address(host))
        except ValueError:
            raise bad from None
    elif re.fullmatch(r"[0-9.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise bad from None
    elif not re.fullmatch(rf"{_LABEL}(\.{_LABEL})*", host, re.ASCII) or len(host) > 253:
        raise bad  # a private mirror may have a single-label name (http://mirror:8080 inside a VPC)
    if not _URL_PATH.fullmatch(parts.path) or any(seg in (".", "..") for seg in parts.path.split("/")):
        raise bad
    return value.rstrip("/")


class Dns(_Strict):
    # When set (with the cloud's zone id: aws.route53_zone_id, azure.dns_zone_resource_group,
    # gcp.dns_managed_zone), kumo-infra creates the forward A records before the PTR.
    zone: Optional[Hostname] = None
    # Every cloud checks (or requires) the forward record before it sets a PTR. Without a
    # zone, deploy once, publish the A records kumo-infra outputs, then set this and deploy again.
    forward_records_exist: bool = False


class Lifecycle(_Strict):
    # A changed bootstrap is ignored on running machines by default: replacing a machine
    # loses the mail queued on its local spool. Roll nodes deliberately (see README).
    replace_on_bootstrap_change: bool = False
    # Pulumi's protect option on machines and spool volumes.
    protect: bool = False


class OsUpdates(_Strict):
    # Security updates only by default: a KumoMTA node's OS keeps itself patched without
    # taking feature updates nobody reviewed. 'all' applies every update; 'off' none.
    automatic: Literal["security", "all", "off"] = "security"
    # Never reboot automatically by default (a reboot of a local-NVMe node loses its spool
    # only on stop/start, but interrupts delivery). 'window' reboots when an update needs it,
    # at reboot_time (UTC, HH:MM).
    reboot: Literal["never", "window"] = "never"
    reboot_time: Annotated[str, _form(r"(?:[01][0-9]|2[0-3]):[0-5][0-9]",
                                      "a UTC time of day as HH:MM (like 03:30)")] = "03:30"


class Dkim(_Strict):
    domains: list[Hostname] = Field(default_factory=list)
    # A DNS label: the key is published at <selector>._domainkey.<domain>, and the selector
    # names the key file on the node (/opt/kumomta/etc/dkim/<domain>/<selector>.key).
    selector: Annotated[str, _form(
        r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?",
        "a DKIM selector: one DNS label of 1-63 lowercase letters, digits and inner hyphens "
        "(like kumo or s2026)")] = "kumo"

    @field_validator("domains")
    @classmethod
    def _once_each(cls, value: list[str]) -> list[str]:
        return _no_repeats(value)


def _network_block(value: str, what: str, largest: int, smallest: int) -> str:
    """A created network's IPv4 address block, within the sizes its cloud accepts."""
    try:
        net = ipaddress.ip_network(value)
    except ValueError:
        raise ValueError(f"{shown(value)} is not a CIDR block (like 10.42.0.0/16)") from None
    if net.version != 4 or not largest <= net.prefixlen <= smallest:
        raise ValueError(f"{shown(value)}: {what} needs an IPv4 block between /{largest} and /{smallest}")
    return str(net)


VpcCidr = Annotated[str, AfterValidator(lambda v: _network_block(v, "an AWS VPC", 16, 28))]
VnetCidr = Annotated[str, AfterValidator(lambda v: _network_block(v, "an Azure VNet", 8, 29))]
GcpSubnetCidr = Annotated[str, AfterValidator(lambda v: _network_block(v, "a GCP subnet", 8, 29))]


class AwsSection(_Strict):
    # EC2 ids: the prefix and 8 (older) or 17 hexadecimal digits.
    vpc_id: Optional[Annotated[str, _form(r"vpc-[0-9a-f]{1,17}", "a VPC id (like vpc-0a1b2c3d4e5f67890)")]] = None
    subnet_id: Optional[Annotated[str, _form(r"subnet-[0-9a-f]{1,17}",
                                             "a subnet id (like subnet-0a1b2c3d4e5f67890)")]] = None
    # EC2 takes up to 255 ASCII characters; kumo-infra takes the usual subset (no spaces, quotes
    # or shell characters): import the key under such a name if yours has others.
    key_name: Optional[Annotated[str, _form(
        r"[A-Za-z0-9][A-Za-z0-9._+=,@-]{0,254}",
        "an EC2 key pair name of up to 255 letters, digits and . _ + = , @ - (like ops-2026)")]] = None
    # Checked against the region in Deployment.check.
    availability_zone: Optional[Annotated[str, _form(
        r"[a-z]{2}(?:-[a-z0-9]+)+", "an availability zone name (like us-east-1a or us-east-1-bos-1a)")]] = None
    route53_zone_id: Optional[Annotated[str, _form(
        r"Z[A-Z0-9]{1,32}", "a Route 53 hosted zone id (like Z0123456789ABCDEFGHIJ; without /hostedzone/)")]] = None
    vpc_cidr: VpcCidr = "10.42.0.0/16"


class AzureSection(_Strict):
    resource_group: Optional[Annotated[str, _form(_AZURE_RG, _AZURE_RG_FORM)]] = None
    # What decides whether outbound port 25 can ever be open (see docs "Troubleshoot
    # outbound SMTP connectivity problems in Azure").
    subscription_type: Literal["ea", "mca-e", "dev-test", "pay-as-you-go", "csp", "msdn", "free", "other"] = "pay-as-you-go"
    # ARM resource ids; the subnet must be inside the virtual network (Deployment.check).
    vnet_id: Optional[Annotated[str, _form(_AZURE_VNET_ID, f"a virtual network resource id (like {_AZURE_ID_EXAMPLE})",
                                           re.IGNORECASE)]] = None
    subnet_id: Optional[Annotated[str, _form(_AZURE_SUBNET_ID, f"a subnet resource id (like "
                                             f"{_AZURE_ID_EXAMPLE}/subnets/mail)", re.IGNORECASE)]] = None
    ssh_public_key: Optional[Annotated[str, AfterValidator(lambda v: _ssh_public_key(v))]] = None
    # Set when the marketplace terms of a planned image (e.g. Rocky Linux) were accepted
    # in this subscription, once (az vm image terms accept ...).
    marketplace_terms_accepted: bool = False
    dns_zone_resource_group: Optional[Annotated[str, _form(_AZURE_RG, _AZURE_RG_FORM)]] = None
    vnet_cidr: VnetCidr = "10.42.0.0/16"


class GcpSection(_Strict):
    # The project id (not its display name). Domain-scoped ids (example.com:proj) are refused:
    # the node's secret references are colon-separated (gcp:PROJECT:NAME).
    project: Annotated[str, _form(
        _GCP_PROJECT, "a GCP project id: 6-30 lowercase letters, digits and hyphens, starting with a letter and "
                      "not ending with a hyphen (like my-kumo-project)")]
    # Checked against the region in Deployment.check.
    zone: Optional[Annotated[str, _form(r"[a-z]+-[a-z]+[0-9]{1,2}-[a-z]", "a GCP zone (like us-central1-a)")]] = None
    # A name, or a self-link (full or from projects/...) for a network of another project (Shared VPC):
    # forms the provider parses (terraform-provider-google, google/tpgresource/field_helpers.go,
    # ParseGlobalFieldValue / ParseRegionalFieldValue), which gcp.py hands these to unchanged.
    network: Optional[Annotated[str, _form(
        rf"{_GCP_NAME}|{_GCP_API}projects/{_GCP_PROJECT}/global/networks/{_GCP_NAME}",
        f"a VPC network name ({_GCP_NAME_FORM}) or projects/PROJECT/global/networks/NAME")]] = None
    subnetwork: Optional[Annotated[str, _form(
        rf"{_GCP_NAME}|{_GCP_API}projects/{_GCP_PROJECT}/regions/[a-z]+-[a-z]+[0-9]{{1,2}}/subnetworks/{_GCP_NAME}",
        f"a subnetwork name ({_GCP_NAME_FORM}) or projects/PROJECT/regions/REGION/subnetworks/NAME")]] = None
    dns_managed_zone: Optional[Annotated[str, _form(
        _GCP_NAME, f"a Cloud DNS managed zone name ({_GCP_NAME_FORM})")]] = None
    subnet_cidr: GcpSubnetCidr = "10.42.0.0/24"


class Deployment(_Strict):
    cloud: Cloud
    region: Annotated[str, _form(r"[a-z][a-z0-9-]{1,38}[a-z0-9]",
                                 "a region name of lowercase letters, digits and hyphens (like us-east-1, "
                                 "westeurope or us-central1)")]
    name: str
    hostname: str
    os: str = "rocky9"
    nodes: Optional[int] = Field(None, ge=1, le=100)
    sizing: Sizing = Field(default_factory=Sizing)
    spool: Spool = Field(default_factory=Spool)
    logs: Logs = Field(default_factory=Logs)
    network: Network = Field(default_factory=Network)
    port25: Port25 = Field(default_factory=Port25)
    kumomta: KumoMta = Field(default_factory=KumoMta)
    dns: Dns = Field(default_factory=Dns)
    dkim: Dkim = Field(default_factory=Dkim)
    lifecycle: Lifecycle = Field(default_factory=Lifecycle)
    os_updates: OsUpdates = Field(default_factory=OsUpdates)
    aws: Optional[AwsSection] = None
    azure: Optional[AzureSection] = None
    gcp: Optional[GcpSection] = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME_RE.fullmatch(value):
            raise ValueError("must be 2-20 characters of lowercase letters, digits and hyphens, starting with "
                             "a letter (it prefixes every cloud resource name)")
        return value

    @field_validator("hostname")
    @classmethod
    def _hostname(cls, value: str) -> str:
        name = _hostname(value)
        if len(name.partition(".")[0]) > 60:
            # mta.example.com becomes mta1 ... mta100 with several nodes: still one DNS label.
            raise ValueError(f"the first label of {shown(value)} is longer than 60 characters, leaving no room for "
                             "the node number of a multi-node deployment (mta1.example.com ...)")
        return name

    @field_validator("os")
    @classmethod
    def _os(cls, value: str) -> str:
        if value in oses.REFUSED:
            raise ValueError(f"'{value}' is not supported: {oses.REFUSED[value]}")
        if value not in oses.SUPPORTED:
            raise ValueError(f"unknown OS {shown(value)}; supported: {', '.join(oses.SUPPORTED)}")
        return value

    # -- derived values ----------------------------------------------------
    @property
    def spool_storage(self) -> str:
        return spool_storage_for(self.sizing, self.spool)

    @property
    def os_spec(self) -> oses.OsSpec:
        return oses.SUPPORTED[self.os]

    @property
    def outbound_mode(self) -> str:
        """The resolved outbound port 25 mode: ``direct`` or ``relay``."""
        if self.port25.outbound != "auto":
            return self.port25.outbound
        return "direct" if direct_allowed(self)[0] else "relay"

    def node_hostname(self, index: int, count: int) -> str:
        """mta.example.com for one node; mta1.example.com, mta2... for several."""
        if count == 1:
            return self.hostname
        first, _, rest = self.hostname.partition(".")
        return f"{first}{index + 1}.{rest}"

    def check(self) -> list[Problem]:
        """Rules that span fields. Returns every problem, empty when the deployment is sound."""
        problems: list[Problem] = []

        def bad(path: str, message: str) -> None:
            problems.append(Problem(f"{ROOT}.{path}" if path else ROOT, message))

        # Exactly the cloud's own section may be present.
        for other in ("aws", "azure", "gcp"):
            if other != self.cloud and getattr(self, other) is not None:
                bad(other, f"this section is for cloud '{other}' but cloud is '{self.cloud}'; remove it")
        if self.cloud == "gcp" and self.gcp is None:
            bad("gcp.project", "a GCP deployment needs the project id (gcp: {project: my-project})")

        spec = self.os_spec
        if spec.image_for(self.cloud) is None:
            bad("os", f"'{self.os}' has no image on {self.cloud}; choose one of {', '.join(oses.names_for(self.cloud))}")
        elif self.cloud == "azure" and spec.azure and spec.azure.needs_plan and not (
                self.azure and self.azure.marketplace_terms_accepted):
            urn = f"{spec.azure.publisher}:{spec.azure.offer}:{spec.azure.sku}:latest"
            bad("azure.marketplace_terms_accepted",
                f"{spec.title} on Azure is the marketplace image {urn}, whose terms must be accepted once per "
                f"subscription (azure-native cannot): run 'az vm image terms accept --urn {urn}', then set "
                "marketplace_terms_accepted: true; or choose alma9 or ubuntu22, which need no terms")

        net = self.network
        if net.admin_cidrs and ("ssh_cidrs" in net.model_fields_set or "api_cidrs" in net.model_fields_set):
            bad("network.admin_cidrs", "admin_cidrs is the old key for both ssh_cidrs and api_cidrs; with the new "
                                       "keys present, move its entries into them and remove admin_cidrs")
        if self.cloud == "azure" and net.ssh_cidrs and not (self.azure and self.azure.ssh_public_key):
            bad("azure.ssh_public_key", "network.ssh_cidrs opens SSH, which needs your OpenSSH public key "
                                        "(ssh-ed25519 AAAA... or ssh-rsa AAAA...): kumo-infra never generates "
                                        "a private key into Pulumi state; or remove ssh_cidrs for no SSH at all")
        km = self.kumomta
        if not km.repo_url.startswith("https://") and km.repo_key_fingerprint is None:
            bad("kumomta.repo_url", f"'{km.repo_url}' is not https: packages would come over a channel anyone on "
                                    "the path can change; use https://, or pin the mirror's signing key with "
                                    "kumomta.repo_key_fingerprint")

        if storage_conflict(self.sizing, self.spool):
            bad("spool.storage", f"{PERFORMANCE_NEEDS_NVME}; use storage: local_nvme or profile: minimal")

        p25 = self.port25
        direct_ok, direct_why = direct_allowed(self)
        if p25.outbound == "relay" and p25.relay is None:
            bad("port25.relay", "outbound: relay needs the smarthost: relay: {host: smtp.example.net, port: 587, "
                                "username: ...} and the password as the secret kumo:relayPassword")
        if p25.outbound == "direct" and not direct_ok:
            bad("port25.outbound", f"direct delivery on port 25 is impossible here: {direct_why}; use outbound: "
                                   "relay with an authenticated smarthost")
        if p25.outbound == "auto" and p25.relay is None and not direct_ok:
            bad("port25.relay", f"outbound: auto resolves to relay because {direct_why}, and no relay "
                                "is configured: add relay: {host, port, username} and the secret kumo:relayPassword")

        # Sections of other clouds were refused above: only the deployment's own can be set.
        section = getattr(self, self.cloud)
        # An existing network is named by both ids (GCP: a subnetwork needs its network, not the reverse).
        pairs = {"aws": [("subnet_id", "vpc_id"), ("vpc_id", "subnet_id")],
                 "azure": [("subnet_id", "vnet_id"), ("vnet_id", "subnet_id")],
                 "gcp": [("subnetwork", "network")]}[self.cloud]
        for given, needed in pairs:
            if section is not None and getattr(section, given) and not getattr(section, needed):
                bad(f"{self.cloud}.{needed}", f"{given} is given without {needed}; give both or neither")
        for path, message in _placement_problems(self):
            bad(path, message)
        if self.dns.zone and not (self.hostname == self.dns.zone or self.hostname.endswith("." + self.dns.zone)):
            bad("dns.zone", f"hostname '{self.hostname}' is not inside zone '{self.dns.zone}'")
        zone_field = {"aws": "route53_zone_id", "azure": "dns_zone_resource_group", "gcp": "dns_managed_zone"}[self.cloud]
        if self.dns.zone and (section is None or not getattr(section, zone_field)):
            bad(f"{self.cloud}.{zone_field}", f"dns.zone is set, so kumo-infra creates the forward records and "
                                              f"needs the zone's {zone_field}")
        return problems


def _placement_problems(d: Deployment) -> list[tuple[str, str]]:
    """Zones and given networks that are not in the deployment's region (or network)."""
    found = []
    if d.aws and d.aws.availability_zone:
        zone = d.aws.availability_zone
        rest = zone[len(d.region):] if zone.startswith(d.region) else None
        if rest is None or not re.fullmatch(r"[a-z]|-[a-z0-9-]*[a-z0-9]", rest, re.ASCII):
            found.append(("aws.availability_zone", f"{shown(zone)} is not a zone of region {d.region} "
                                                   f"(like {d.region}a)"))
    if d.gcp and d.gcp.zone and not re.fullmatch(rf"{re.escape(d.region)}-[a-z]", d.gcp.zone, re.ASCII):
        found.append(("gcp.zone", f"{shown(d.gcp.zone)} is not a zone of region {d.region} (like {d.region}-a)"))
    if d.gcp and d.gcp.subnetwork and "/regions/" in d.gcp.subnetwork:
        region = d.gcp.subnetwork.split("/regions/")[1].split("/")[0]
        if region != d.region:
            found.append(("gcp.subnetwork", f"the subnetwork is in region {region}, the deployment in {d.region}"))
    if d.azure and d.azure.vnet_id and d.azure.subnet_id and not d.azure.subnet_id.lower().startswith(
            d.azure.vnet_id.lower().rstrip("/") + "/subnets/"):
        found.append(("azure.subnet_id", "the subnet is not in the virtual network azure.vnet_id; give a subnet "
                                         "of that network (vnet_id + /subnets/NAME)"))
    return found


def direct_allowed(deployment: Deployment) -> tuple[bool, str]:
    """Whether this cloud and account can ever deliver on outbound port 25, and why not."""
    if deployment.cloud == "gcp":
        return False, "GCP blocks outbound port 25 for every project and has no exemption process"
    if deployment.cloud == "azure":
        kind = (deployment.azure.subscription_type if deployment.azure else "pay-as-you-go")
        if kind not in ("ea", "mca-e", "dev-test"):
            return False, (f"Azure blocks outbound port 25 on '{kind}' subscriptions with no exemption "
                           "(only EA, MCA-E and, after the portal self-service, Enterprise Dev/Test can send)")
    return True, ""


def _no_repeats(values: list[str]) -> list[str]:
    for j, value in enumerate(values):
        if value in values[:j]:
            raise ValueError(f"entries [{values.index(value)}] and [{j}] are both {shown(value)}: list it once")
    return values


# Azure accepts RSA keys of 2048 bits or more and Ed25519 keys ("Supported SSH key formats",
# learn.microsoft.com/azure/virtual-machines/linux/create-ssh-keys-detailed); ECDSA is refused there.
# The comment is kept (it names the key in authorized_keys) but only of plain words: Azure's
# agent writes it into a file on the machine, so no quotes, '$', ';' or control characters.
_SSH_KEY_LINE = re.compile(r"(ssh-ed25519|ssh-rsa) (AAAA[A-Za-z0-9+/]+={0,2})"
                           r"(?: ((?=.{1,100}$)[A-Za-z0-9._@+=:,-]+(?: [A-Za-z0-9._@+=:,-]+)*))?", re.ASCII)
SSH_KEY_FORM = ("an OpenSSH public key on one line: ssh-ed25519 AAAA... or ssh-rsa AAAA... (2048 bits or more), "
                "optionally followed by a comment of up to 100 letters, digits, spaces and . _ @ + = : , - "
                "(the contents of ~/.ssh/id_ed25519.pub)")


def _ssh_public_key(value: str) -> str:
    """The key as Azure writes it to authorized_keys: parsed, so only a real key (and a plain comment) passes."""
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
    from cryptography.hazmat.primitives.serialization import load_ssh_public_key

    line = _SSH_KEY_LINE.fullmatch(value.strip(" "))
    if not line:
        raise ValueError(f"{shown(value)} is not {SSH_KEY_FORM}")
    kind, body, comment = line.groups()
    try:
        key = load_ssh_public_key(f"{kind} {body}".encode())
    except (ValueError, TypeError):  # cryptography raises both for damaged keys
        raise ValueError(f"{shown(value)} does not decode as an OpenSSH {kind} public key; paste the whole line "
                         "of the .pub file") from None
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < 2048:
        raise ValueError(f"the RSA key has {key.key_size} bits; Azure needs 2048 or more (ssh-keygen -t ed25519 "
                         "makes a better one)")
    if not isinstance(key, (rsa.RSAPublicKey, ed25519.Ed25519PublicKey)):
        raise ValueError(f"{shown(value)} is not {SSH_KEY_FORM}")
    return " ".join(p for p in (kind, body, comment) if p)


def _format_loc(loc: tuple[Any, ...]) -> str:
    path = ROOT
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def parse_deployment(raw: Any) -> Deployment:
    """Validate ``kumo:deployment`` (already JSON/YAML-decoded). Raises ConfigError with every problem."""
    if not isinstance(raw, dict):
        raise ConfigError(Problem(ROOT, "must be an object (a YAML mapping) with at least cloud, region, name "
                                        "and hostname"))
    try:
        deployment = Deployment.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key; check the spelling against the README's configuration table"
            elif err["type"] == "missing":
                msg = "required key is missing"
            problems.append(Problem(_format_loc(tuple(err["loc"])), msg))
        raise ConfigError(problems) from None
    problems = deployment.check()
    if problems:
        raise ConfigError(problems)
    return deployment

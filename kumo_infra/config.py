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
from typing import Annotated, Any, Literal, Optional

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from . import oses
from .errors import ConfigError, Problem

ROOT = "kumo:deployment"
# Secrets are separate top-level keys so Pulumi keeps them encrypted end to end
# (a secret leaf inside a structured object comes back as plain text).
RELAY_PASSWORD_KEY = "kumo:relayPassword"

Cloud = Literal["aws", "azure", "gcp"]

DEFAULT_REPO_URL = "https://openrepo.kumomta.com"

_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_HOSTNAME_RE = re.compile(rf"^{_LABEL}(\.{_LABEL})+$")
_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,18}[a-z0-9]$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Sizing(_Strict):
    profile: Literal["minimal", "performance"] = "minimal"
    messages_per_hour: int = Field(100_000, ge=1, le=1_000_000_000)
    avg_message_kb: float = Field(50.0, gt=0, le=50_000)
    instance_type: Optional[str] = None
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


def _cidr(value: str, refuse_world: str) -> str:
    try:
        net = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(f"'{value}' is not a CIDR block (like 203.0.113.0/24)") from None
    if net.prefixlen == 0:
        raise ValueError(f"'{value}' is refused: {refuse_world}")
    return str(net)


AdminCidr = Annotated[str, AfterValidator(lambda v: _cidr(
    v, "management ports (SSH, the KumoMTA HTTP API) are never opened to the whole internet; "
       "list the operators' own networks"))]
RelayCidr = Annotated[str, AfterValidator(lambda v: _cidr(
    v, "an entry covering every address makes an open relay; list only the networks of your own "
       "injecting applications"))]


class Network(_Strict):
    # Who may reach SSH (22). Empty: no SSH rule at all.
    ssh_cidrs: list[AdminCidr] = Field(default_factory=list)
    # Who may reach the KumoMTA HTTP API from outside the node (TLS + basic auth). Empty: the
    # API listens on loopback only.
    api_cidrs: list[AdminCidr] = Field(default_factory=list)
    # Deprecated: sets both ssh_cidrs and api_cidrs (a warning names the new keys).
    admin_cidrs: list[AdminCidr] = Field(default_factory=list)
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
    host: str
    port: Literal[587, 465, 2525] = 587
    username: str

    @field_validator("host")
    @classmethod
    def _hostname(cls, value: str) -> str:
        return _hostname(value)

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
    probe_hosts: list[str] = Field(
        default_factory=lambda: ["gmail-smtp-in.l.google.com", "mx1.mail.yahoo.com",
                                 "outlook-com.olc.protection.outlook.com"])
    probe_timeout_s: int = Field(5, ge=1, le=60)


class KumoMta(_Strict):
    channel: Literal["stable", "dev"] = "stable"
    version: Optional[str] = Field(None, pattern=r"^[0-9][0-9A-Za-z.+~_-]*$")
    # A host laid out like KumoMTA's repository host (files/*.repo, files/*.list,
    # kumomta-ubuntu-22/public.gpg ...), e.g. a private mirror.
    repo_url: str = Field(DEFAULT_REPO_URL, pattern=r"^https?://[^\s'\"]+$")
    relay_cidrs: list[RelayCidr] = Field(default_factory=list)
    # The OpenPGP fingerprint of the repository's signing key, for a private mirror signed
    # with its own key; unset: KumoMTA's published key. Checked before the key is trusted.
    repo_key_fingerprint: Optional[str] = None

    @field_validator("repo_key_fingerprint")
    @classmethod
    def _fingerprint(cls, value: Optional[str]) -> Optional[str]:
        if value is None:
            return None
        compact = value.replace(" ", "").upper()
        if not re.fullmatch(r"[0-9A-F]{40}", compact):
            raise ValueError("must be the 40-hex-digit OpenPGP fingerprint of the repository's signing key "
                             "(gpg --show-keys --with-colons KEYFILE, the 'fpr' line)")
        return compact

    @field_validator("repo_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.rstrip("/")


class Dns(_Strict):
    # When set (with the cloud's zone id: aws.route53_zone_id, azure.dns_zone_resource_group,
    # gcp.dns_managed_zone), kumo-infra creates the forward A records before the PTR.
    zone: Optional[str] = None
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
    reboot_time: str = Field("03:30", pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")


class Dkim(_Strict):
    domains: list[str] = Field(default_factory=list)
    selector: str = Field("kumo", pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")

    @field_validator("domains")
    @classmethod
    def _domains(cls, value: list[str]) -> list[str]:
        return [_hostname(v) for v in value]


def _network_block(value: str, what: str, largest: int, smallest: int) -> str:
    """A created network's IPv4 address block, within the sizes its cloud accepts."""
    try:
        net = ipaddress.ip_network(value)
    except ValueError:
        raise ValueError(f"'{value}' is not a CIDR block (like 10.42.0.0/16)") from None
    if net.version != 4 or not largest <= net.prefixlen <= smallest:
        raise ValueError(f"'{value}': {what} needs an IPv4 block between /{largest} and /{smallest}")
    return str(net)


VpcCidr = Annotated[str, AfterValidator(lambda v: _network_block(v, "an AWS VPC", 16, 28))]
VnetCidr = Annotated[str, AfterValidator(lambda v: _network_block(v, "an Azure VNet", 8, 29))]
GcpSubnetCidr = Annotated[str, AfterValidator(lambda v: _network_block(v, "a GCP subnet", 8, 29))]


class AwsSection(_Strict):
    vpc_id: Optional[str] = Field(None, pattern=r"^vpc-[0-9a-f]+$")
    subnet_id: Optional[str] = Field(None, pattern=r"^subnet-[0-9a-f]+$")
    key_name: Optional[str] = None
    availability_zone: Optional[str] = None
    route53_zone_id: Optional[str] = None
    vpc_cidr: VpcCidr = "10.42.0.0/16"


class AzureSection(_Strict):
    resource_group: Optional[str] = None
    # What decides whether outbound port 25 can ever be open (see docs "Troubleshoot
    # outbound SMTP connectivity problems in Azure").
    subscription_type: Literal["ea", "mca-e", "dev-test", "pay-as-you-go", "csp", "msdn", "free", "other"] = "pay-as-you-go"
    vnet_id: Optional[str] = None
    subnet_id: Optional[str] = None
    ssh_public_key: Optional[str] = None
    # Set when the marketplace terms of a planned image (e.g. Rocky Linux) were accepted
    # in this subscription, once (az vm image terms accept ...).
    marketplace_terms_accepted: bool = False
    dns_zone_resource_group: Optional[str] = None
    vnet_cidr: VnetCidr = "10.42.0.0/16"


class GcpSection(_Strict):
    project: str
    zone: Optional[str] = None
    network: Optional[str] = None
    subnetwork: Optional[str] = None
    dns_managed_zone: Optional[str] = None
    subnet_cidr: GcpSubnetCidr = "10.42.0.0/24"


class Deployment(_Strict):
    cloud: Cloud
    region: str = Field(pattern=r"^[a-z0-9-]+$")
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
        if not _NAME_RE.match(value):
            raise ValueError("must be 2-20 characters of lowercase letters, digits and hyphens, starting with "
                             "a letter (it prefixes every cloud resource name)")
        return value

    @field_validator("hostname")
    @classmethod
    def _hostname(cls, value: str) -> str:
        return _hostname(value)

    @field_validator("os")
    @classmethod
    def _os(cls, value: str) -> str:
        if value in oses.REFUSED:
            raise ValueError(f"'{value}' is not supported: {oses.REFUSED[value]}")
        if value not in oses.SUPPORTED:
            raise ValueError(f"unknown OS '{value}'; supported: {', '.join(oses.SUPPORTED)}")
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
        if self.dns.zone and not (self.hostname == self.dns.zone or self.hostname.endswith("." + self.dns.zone)):
            bad("dns.zone", f"hostname '{self.hostname}' is not inside zone '{self.dns.zone}'")
        zone_field = {"aws": "route53_zone_id", "azure": "dns_zone_resource_group", "gcp": "dns_managed_zone"}[self.cloud]
        if self.dns.zone and (section is None or not getattr(section, zone_field)):
            bad(f"{self.cloud}.{zone_field}", f"dns.zone is set, so kumo-infra creates the forward records and "
                                              f"needs the zone's {zone_field}")
        return problems


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


def _hostname(value: str) -> str:
    value = value.lower().rstrip(".")
    if len(value) > 253 or not _HOSTNAME_RE.match(value):
        raise ValueError(f"'{value}' is not a fully qualified DNS name (like mta.example.com)")
    return value


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

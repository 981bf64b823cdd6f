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

from pydantic import AfterValidator, Field, ValidationError, create_model, field_validator, model_validator

from . import addresses, forms, oses, targets
from .errors import ConfigError, Problem, shown
# The string forms live in kumo_infra/forms.py (the targets' sections use them too); these names
# stay importable from here.
from .forms import LABEL as _LABEL
from .forms import SSH_KEY_FORM, Hostname
from .forms import REGION as _REGION_FORM
from .forms import Strict as _Strict
from .forms import form as _form
from .forms import host_or_ip as _host_or_ip
from .forms import hostname as _hostname
from .forms import network_block as _network_block
from .forms import ssh_public_key as _ssh_public_key

__all__ = ["ROOT", "RELAY_PASSWORD_KEY", "REDIS_PASSWORD_KEY", "Deployment", "parse_deployment", "direct_allowed", "Hostname",
           "SSH_KEY_FORM", "_form", "_hostname", "_host_or_ip", "_network_block", "_ssh_public_key"]

ROOT = "kumo:deployment"
# Secrets are separate top-level keys so Pulumi keeps them encrypted end to end
# (a secret leaf inside a structured object comes back as plain text).
RELAY_PASSWORD_KEY = "kumo:relayPassword"
# The password of an existing Redis a fleet shares its throttles through (fleet.redis_url).
REDIS_PASSWORD_KEY = "kumo:redisPassword"

DEFAULT_REPO_URL = "https://openrepo.kumomta.com"

_NAME_RE = re.compile(r"[a-z][a-z0-9-]{0,18}[a-z0-9]", re.ASCII)


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
    # A stack made to be destroyed (kumo_infra.ephemeral sets it for CI): nothing protected or
    # retained (block spool volumes go with their machines), secrets deleted with no recovery
    # window, so a destroyed stack leaves nothing that costs money. Never for production mail.
    ephemeral: bool = False

    @model_validator(mode="after")
    def _ephemeral_is_not_protected(self) -> "Lifecycle":
        if self.ephemeral and self.protect:
            raise ValueError("ephemeral: true and protect: true contradict each other: an ephemeral stack is "
                             "destroyed by design; set protect: false (or drop ephemeral for a lasting stack)")
        return self


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


# A KumoMTA throttle as its parser reads it (crates/throttle/src/lib.rs, ThrottleSpec::try_from):
# a positive limit per period; the shorter forms of the period are spelled out the same way.
THROTTLE_FORM = ("a rate as KumoMTA writes it: a positive whole number, '/', and a period of s, min, h or d "
                 "(like 100/s, 20/min, 5000/h)")
ThrottleRate = Annotated[str, _form(r"[1-9][0-9]{0,9}/(?:s|sec|second|m|min|minute|h|hr|hour|d|day)",
                                    THROTTLE_FORM)]
PROVIDER_NAME = Annotated[str, _form(
    r"[a-z0-9](?:[a-z0-9_.-]{0,62}[a-z0-9])?",
    "a provider name as KumoMTA's shaping rules name them: 1-64 lowercase letters, digits, '_', '.' and '-' "
    "(like google, yahoo, microsoft)")]


class ShapingOverride(_Strict):
    """The deployment's own limits for one destination domain or one provider (a group of MX
    hosts that KumoMTA's shaping rules name), layered over the rules KumoMTA ships."""

    domain: Optional[Hostname] = None
    provider: Optional[PROVIDER_NAME] = None
    # Keys of kumo.make_egress_path (crates/kumo-api-types/src/egress_path.rs EgressPathConfig).
    connection_limit: Optional[int] = Field(None, ge=1, le=100_000)
    max_connection_rate: Optional[ThrottleRate] = None
    max_message_rate: Optional[ThrottleRate] = None
    max_deliveries_per_connection: Optional[int] = Field(None, ge=1, le=1_000_000)

    @model_validator(mode="after")
    def _one_destination_some_limit(self) -> "ShapingOverride":
        if (self.domain is None) == (self.provider is None):
            raise ValueError("name exactly one destination: domain: gmail.com, or provider: google")
        if all(getattr(self, key) is None for key in SHAPING_LIMITS):
            raise ValueError(f"set at least one limit: {', '.join(SHAPING_LIMITS)}")
        return self

    @property
    def destination(self) -> str:
        return f"domain {self.domain}" if self.domain else f"provider {self.provider}"


SHAPING_LIMITS = ("connection_limit", "max_connection_rate", "max_message_rate", "max_deliveries_per_connection")


class Shaping(_Strict):
    # KumoMTA's community shaping rules (/opt/kumomta/share/community/shaping.toml: per-provider
    # limits for Gmail, Yahoo, Microsoft ...) on top of its default rules; off: the defaults only.
    community_rules: bool = True
    # The deployment's own limits, applied after KumoMTA's rules (the last file wins).
    overrides: list[ShapingOverride] = Field(default_factory=list, max_length=500)

    @field_validator("overrides")
    @classmethod
    def _each_destination_once(cls, value: list[ShapingOverride]) -> list[ShapingOverride]:
        _no_repeats([o.destination for o in value])
        return value


REDIS_URL_FORM = ("a redis:// or rediss:// (TLS) URL of a host and optional :port and /database number, without "
                  "credentials (like rediss://redis.internal:6379/0); the password goes in the secret "
                  "kumo:redisPassword")


def _redis_url(value: str) -> str:
    parts = urllib.parse.urlsplit(value)
    ok = (len(value) <= 255 and re.fullmatch(r"[\x21-\x7e]+", value, re.ASCII) is not None
          and parts.scheme in ("redis", "rediss") and value.startswith(f"{parts.scheme}://")
          and not (parts.query or parts.fragment or "@" in parts.netloc or "?" in value or "#" in value)
          and re.fullmatch(r"(?:/[0-9]{1,2})?/?", parts.path) is not None)
    try:
        port = parts.port
    except ValueError:
        ok = False
    else:
        ok = ok and port != 0 and parts.hostname is not None
    if ok:
        try:
            _host_or_ip(parts.hostname or "")
        except ValueError:
            ok = False
    if not ok:
        raise ValueError(f"{shown(value)} is not {REDIS_URL_FORM}")
    return value.rstrip("/")


class Fleet(_Strict):
    # An existing Redis the nodes share their throttles through (the only way on machines that
    # already exist); unset: kumo-infra creates a managed one for a deployment of several nodes.
    # Its password is the secret kumo:redisPassword. A single node keeps its throttles itself.
    redis_url: Optional[Annotated[str, AfterValidator(_redis_url)]] = None


class DeploymentBase(_Strict):
    """Every key of ``kumo:deployment`` but the targets' own sections (``Deployment`` adds those)."""

    cloud: str  # a target's name: checked against the registry (kumo_infra.targets)
    # Required by the check for targets that have regions (Target.needs_region).
    region: Optional[Annotated[str, _REGION_FORM]] = None
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
    shaping: Shaping = Field(default_factory=Shaping)
    fleet: Fleet = Field(default_factory=Fleet)
    lifecycle: Lifecycle = Field(default_factory=Lifecycle)
    os_updates: OsUpdates = Field(default_factory=OsUpdates)

    @field_validator("cloud")
    @classmethod
    def _cloud(cls, value: str) -> str:
        if value not in targets.registry():
            raise ValueError(f"unknown target {shown(value)}; one of {', '.join(targets.names())}")
        return value

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
    def target(self) -> targets.Target:
        """Everything that differs where the nodes run (kumo_infra/targets/<cloud>/)."""
        return targets.get(self.cloud)

    @property
    def section(self) -> Any:
        """The target's own section (``kumo:deployment.<cloud>``), None when not given."""
        return getattr(self, self.cloud, None)

    @property
    def image(self) -> Any:
        """The OS image on the target (its ``images`` table's entry); None when it has none."""
        return self.target.image_for(self.os)

    @property
    def spool_storage(self) -> str:
        """Where the spool lives: as the target decides (Target.spool_storage), else spool.storage or
        what the profile implies."""
        decide = self.target.spool_storage
        return decide(self) if decide else spool_storage_for(self.sizing, self.spool)

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
        """mta.example.com for one node; mta1.example.com, mta2... for several; or the name the
        target gives the machine (Target.node_hostnames)."""
        named = self.target.node_hostnames
        if named:
            names = named(self)
            if index < len(names):
                return names[index]
        return forms.numbered_hostname(self.hostname, index, count)

    def check(self) -> list[Problem]:
        """Rules that span fields. Returns every problem, empty when the deployment is sound."""
        problems: list[Problem] = []

        def bad(path: str, message: str) -> None:
            problems.append(Problem(f"{ROOT}.{path}" if path else ROOT, message))

        target = self.target
        # Exactly the target's own section may be present.
        for other in targets.registry():
            if other != self.cloud and getattr(self, other, None) is not None:
                bad(other, f"this section is for cloud '{other}' but cloud is '{self.cloud}'; remove it")
        if target.needs_region and self.region is None:
            bad("region", REQUIRED)
        # The target's own rules (its required section, zones in the region, ...).
        own = target.check(self)
        if target.section_required and self.section is None and not any(
                path.split(".")[0] == self.cloud for path, _ in own):
            bad(self.cloud, f"a {target.title} deployment needs this section (see the README's configuration table)")

        if target.images is not None and target.image_for(self.os) is None:
            bad("os", f"'{self.os}' has no image on {self.cloud}; choose one of {', '.join(oses.names_for(self.cloud))}")
        for path, message in own:
            bad(path, message)

        net = self.network
        if net.admin_cidrs and ("ssh_cidrs" in net.model_fields_set or "api_cidrs" in net.model_fields_set):
            bad("network.admin_cidrs", "admin_cidrs is the old key for both ssh_cidrs and api_cidrs; with the new "
                                       "keys present, move its entries into them and remove admin_cidrs")
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
        if p25.outbound == "auto" and target.port25.must_be_stated:
            bad("port25.outbound", f"on {target.title} kumo-infra cannot know whether the network lets port 25 "
                                   "out: state outbound: direct (it does) or outbound: relay with relay: {host, "
                                   "port, username} and the secret kumo:relayPassword")
        elif p25.outbound == "auto" and p25.relay is None and not direct_ok:
            bad("port25.relay", f"outbound: auto resolves to relay because {direct_why}, and no relay "
                                "is configured: add relay: {host, port, username} and the secret kumo:relayPassword")

        # Sections of other targets were refused above: only the deployment's own can be set.
        section = self.section
        # An existing network is named by both ids (GCP: a subnetwork needs its network, not the reverse).
        for given, needed in target.network_pairs:
            if section is not None and getattr(section, given) and not getattr(section, needed):
                bad(f"{self.cloud}.{needed}", f"{given} is given without {needed}; give both or neither")
        if self.dns.zone and not (self.hostname == self.dns.zone or self.hostname.endswith("." + self.dns.zone)):
            bad("dns.zone", f"hostname '{self.hostname}' is not inside zone '{self.dns.zone}'")
        zone_field = target.dns_zone_field
        if self.dns.zone and zone_field is None:
            bad("dns.zone", f"kumo-infra writes no DNS records on {target.title}: remove dns.zone and publish the "
                            "records kumo-infra lists (the dns_records output)")
        elif self.dns.zone and (section is None or not getattr(section, zone_field)):
            bad(f"{self.cloud}.{zone_field}", f"dns.zone is set, so kumo-infra creates the forward records and "
                                              f"needs the zone's {zone_field}")
        if not problems and target.managed_redis is None and self.fleet.redis_url is None:
            # Only a sound deployment has a plan to count its nodes by.
            from . import fleet  # fleet imports this module (through secretspec)

            try:
                nodes = fleet.node_count(self)
            except ConfigError:  # the plan's own problem, reported where the plan is made
                nodes = 1
            if nodes > 1:
                bad("fleet.redis_url", f"{nodes} nodes share their throttles through a Redis, and kumo-infra creates "
                                       f"none on {target.title}: give an existing one reachable from every node, "
                                       "fleet: {redis_url: rediss://redis.example.net:6379}, and its password as the "
                                       f"secret {REDIS_PASSWORD_KEY} (pulumi config set --secret {REDIS_PASSWORD_KEY} ...)")
        return problems


REQUIRED = "required key is missing"

# The deployment model: the shared keys plus one optional section per registered target
# (``kumo:deployment.<name>``, the target's ``section`` model), in the registry's order.
Deployment = create_model(
    "Deployment", __base__=DeploymentBase, __module__=__name__,
    **{name: (Optional[target.section], None) for name, target in targets.registry().items()})


def direct_allowed(deployment: DeploymentBase) -> tuple[bool, str]:
    """Whether this target and account can ever deliver on outbound port 25, and why not."""
    return deployment.target.port25.direct_allowed(deployment)


def _no_repeats(values: list[str]) -> list[str]:
    for j, value in enumerate(values):
        if value in values[:j]:
            raise ValueError(f"entries [{values.index(value)}] and [{j}] are both {shown(value)}: list it once")
    return values


_FIELD_ORDER = {name: i for i, name in enumerate(Deployment.model_fields)}


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
                msg = REQUIRED
            problems.append(Problem(_format_loc(tuple(err["loc"])), msg))
        # The model takes region as optional (not every target has one); name it missing beside
        # the other errors, where the check would have, for a target that needs it.
        cloud = raw.get("cloud")
        target = targets.registry().get(cloud) if isinstance(cloud, str) else None
        if target is not None and target.needs_region and "region" not in raw:
            problems.append(Problem(f"{ROOT}.region", REQUIRED))
        problems.sort(key=lambda p: _FIELD_ORDER.get(p.path.removeprefix(ROOT + ".").split(".")[0].split("[")[0],
                                                     len(_FIELD_ORDER)))
        raise ConfigError(problems) from None
    problems = deployment.check()
    if problems:
        raise ConfigError(problems)
    return deployment

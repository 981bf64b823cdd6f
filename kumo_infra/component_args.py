"""The typed interface of every KumoMTA component: its arguments and the shape of its outputs.

Pulumi infers a component's schema from these declarations (``pulumi.provider.experimental``,
used by ``component_provider_host`` so other Pulumi languages can use the components):

- ``__init__(self, name, args: KumoMtaArgs, opts=None)``: the analyzer follows ``args`` into
  these TypedDicts (only TypedDicts: a class fails at run time).
- A field's description is the string literal right after it in the class body (a parenthesized
  concatenation is one literal to ``ast``): the analyzer reads the class's source with ``ast``
  (analyzer.py ``get_docstring``). Comments are not read.
- ``Literal`` and ``Union`` are refused (analyzer.py ``analyze_property``): a choice is a str
  Enum (an int Enum for ports). A list of choices is a list of the plain type, its values named
  in the description: the provider turns each item of a list of enums into an empty object
  (component.py ``map_input_properties``, arrays of complex types).
- This module must not use ``from __future__ import annotations``: the analyzer reads the raw
  annotations (``inspect.get_annotations`` without ``eval_str``), and a string is no type.

The pydantic model in ``kumo_infra.config`` stays the only validator: the component parses
``deployment`` with it at run time. These TypedDicts describe its shape, and
tests/test_component_schema.py fails when the two differ (a field, whether it is required,
a choice, the nesting). No Pulumi import beyond ``pulumi.Input``: importing this module
creates nothing.
"""

from enum import IntEnum, StrEnum
from typing import NotRequired, Optional, TypedDict

import pulumi

from . import oses
from .targets import PACKAGES

# -- choices ------------------------------------------------------------------------------

# Built from the registry, so a new target needs no line here (members have no descriptions:
# the analyzer reads those from a class body).
Cloud = StrEnum("Cloud", {name.upper().replace("-", "_"): name for name in PACKAGES})
Cloud.__doc__ = "The deployment target: one package under kumo_infra/targets/ (kumo_infra.targets.PACKAGES)."

OperatingSystem = StrEnum("OperatingSystem", {key.upper(): key for key in oses.SUPPORTED})
OperatingSystem.__doc__ = "An operating system kumo-infra installs KumoMTA on (kumo_infra.oses.SUPPORTED)."


class SizingProfile(StrEnum):
    """What the planner optimises for."""

    MINIMAL = "minimal"
    """The cheapest machine that carries the workload; the spool on a block volume."""
    PERFORMANCE = "performance"
    """Local NVMe spool, at least 10 Gbps sustained network and 4 vCPU."""


class SpoolStorage(StrEnum):
    """Where the spool (the queued mail) lives."""

    LOCAL_NVME = "local_nvme"
    """The machine's local NVMe: fastest, and lost when the machine stops or is replaced."""
    BLOCK = "block"
    """A block volume kept when the machine is replaced or deleted."""


class SpoolFilesystem(StrEnum):
    """The spool's filesystem."""

    XFS = "xfs"
    EXT4 = "ext4"


class OutboundMode(StrEnum):
    """How mail leaves the nodes."""

    AUTO = "auto"
    """Direct where the target allows outbound port 25, else relay."""
    DIRECT = "direct"
    """Straight to each recipient's MX on port 25."""
    RELAY = "relay"
    """Through the authenticated smarthost port25.relay."""


class RelayPort(IntEnum):
    """The smarthost's submission port (STARTTLS)."""

    PORT_587 = 587
    PORT_465 = 465
    """Refused with an error: 465 is implicit TLS, and KumoMTA's client speaks STARTTLS only."""
    PORT_2525 = 2525


class KumoMtaChannel(StrEnum):
    """Which KumoMTA package the nodes install."""

    STABLE = "stable"
    """The kumomta package."""
    DEV = "dev"
    """The kumomta-dev package (nightly builds)."""


class AutomaticUpdates(StrEnum):
    """Which OS updates the node applies by itself."""

    SECURITY = "security"
    ALL = "all"
    OFF = "off"


class RebootPolicy(StrEnum):
    """Whether the node reboots by itself when an update needs it."""

    NEVER = "never"
    WINDOW = "window"
    """At os_updates.reboot_time (UTC)."""


class AzureSubscriptionType(StrEnum):
    """The Azure subscription's offer type: it decides whether outbound port 25 can ever open."""

    EA = "ea"
    MCA_E = "mca-e"
    DEV_TEST = "dev-test"
    PAY_AS_YOU_GO = "pay-as-you-go"
    CSP = "csp"
    MSDN = "msdn"
    FREE = "free"
    OTHER = "other"


# -- kumo:deployment ----------------------------------------------------------------------

class SizingConfig(TypedDict):
    """kumo:deployment.sizing: the workload the planner sizes the nodes for."""

    profile: NotRequired[SizingProfile]
    """minimal (default) or performance."""
    messages_per_hour: NotRequired[int]
    """The planned mail rate, 1 to 1,000,000,000 (default 100,000)."""
    avg_message_kb: NotRequired[float]
    """The average message size in kB, above 0 and at most 50,000 (default 50)."""
    instance_type: NotRequired[str]
    """An explicit machine type, in the target's catalog and passing every constraint (default: the planner's)."""
    headroom: NotRequired[float]
    """Multiplier over the stated rate for peaks, 1 to 10 (default 1.5)."""


class SpoolConfig(TypedDict):
    """kumo:deployment.spool: where queued mail is kept."""

    storage: NotRequired[SpoolStorage]
    """local_nvme or block (default: local_nvme with the performance profile, block with minimal)."""
    size_gb: NotRequired[int]
    """The block volume's size in GB, 20 to 64,000 (default: from the planner)."""
    hold_hours: NotRequired[float]
    """Hours of traffic the spool must absorb when delivery stalls, above 0 and at most 168 (default 4)."""
    filesystem: NotRequired[SpoolFilesystem]
    """xfs (default) or ext4."""


class LogsConfig(TypedDict):
    """kumo:deployment.logs: KumoMTA's own logs on each node."""

    retention_days: NotRequired[int]
    """Days of log segments kept, 1 to 3650 (default 7); KumoMTA never deletes its logs itself."""


class NetworkConfig(TypedDict):
    """kumo:deployment.network: who may reach the management and submission ports."""

    ssh_cidrs: NotRequired[list[str]]
    """Networks (CIDR) that may reach SSH on 22; empty (default): no SSH rule at all. Never the whole internet."""
    api_cidrs: NotRequired[list[str]]
    """Networks (CIDR) that may reach KumoMTA's HTTP API on 8443 (TLS, basic auth); empty (default): loopback only."""
    admin_cidrs: NotRequired[list[str]]
    """Deprecated: sets both ssh_cidrs and api_cidrs; refused beside either."""
    submission_ports: NotRequired[list[int]]
    """Client submission ports to open: 587 and/or 2525 (465, implicit TLS, is refused); default none."""


class RelayConfig(TypedDict):
    """kumo:deployment.port25.relay: the authenticated smarthost (its password is the secret relay_password)."""

    host: str
    """The smarthost's DNS name."""
    port: NotRequired[RelayPort]
    """587 (default) or 2525, STARTTLS."""
    username: str
    """The smarthost username: 1-256 printable ASCII characters, no spaces."""


class Port25Config(TypedDict):
    """kumo:deployment.port25: outbound delivery on port 25."""

    outbound: NotRequired[OutboundMode]
    """auto (default), direct or relay."""
    relay: NotRequired[RelayConfig]
    """The smarthost, needed in relay mode (and in auto mode where the target blocks port 25)."""
    probe_hosts: NotRequired[list[str]]
    """1-10 DNS names or IP addresses the boot-time probe tries on TCP 25 (default: large providers' MX hosts)."""
    probe_timeout_s: NotRequired[int]
    """Seconds per probe, 1 to 60 (default 5)."""


class KumoMtaConfig(TypedDict):
    """kumo:deployment.kumomta: the KumoMTA packages and who may relay."""

    channel: NotRequired[KumoMtaChannel]
    """stable (default) or dev."""
    version: NotRequired[str]
    """A package version to pin, as the repository spells it (like 2025.03.19-1fbb1b18); default the latest."""
    repo_url: NotRequired[str]
    ("A host laid out like KumoMTA's repository host, e.g. a private mirror; https:// unless "
     "repo_key_fingerprint is set (default https://openrepo.kumomta.com).")
    relay_cidrs: NotRequired[list[str]]
    """Networks (CIDR) allowed to relay besides loopback; never an open relay (default none)."""
    repo_key_fingerprint: NotRequired[str]
    ("The 40-hex-digit OpenPGP fingerprint the repository's signing key must have; unset: the key is trusted "
     "on first use and pinned.")


class DnsConfig(TypedDict):
    """kumo:deployment.dns: forward records and PTRs."""

    zone: NotRequired[str]
    ("The zone kumo-infra creates the forward A records in (with the target's zone field); unset: the "
     "operator publishes them.")
    forward_records_exist: NotRequired[bool]
    """The operator has published the A records, so the PTRs can be set (default false)."""


class DkimConfig(TypedDict):
    """kumo:deployment.dkim: domains kumo-infra generates DKIM keys for."""

    domains: NotRequired[list[str]]
    """The sending domains to sign, each listed once (default none)."""
    selector: NotRequired[str]
    """The DKIM selector, one DNS label (default kumo)."""


class LifecycleConfig(TypedDict):
    """kumo:deployment.lifecycle: what a change may do to running machines."""

    replace_on_bootstrap_change: NotRequired[bool]
    """Let a changed bootstrap replace running machines (default false: queued mail on a local spool would be lost)."""
    protect: NotRequired[bool]
    """Pulumi's protect on machines, spool volumes and secrets (default false)."""
    ephemeral: NotRequired[bool]
    """A stack made to be destroyed, as kumo_infra.ephemeral creates for CI: nothing protected or retained, secrets deleted with no recovery window (default false; refused with protect)."""


class ShapingOverrideConfig(TypedDict):
    """One destination's own limits, layered over KumoMTA's shaping rules: exactly one of domain or provider."""

    domain: NotRequired[str]
    """A destination domain (like gmail.com)."""
    provider: NotRequired[str]
    """A provider as KumoMTA's shaping rules name it (like google, yahoo, microsoft)."""
    connection_limit: NotRequired[int]
    """Connections open at once to the destination, per node (or fleet-wide with Redis)."""
    max_connection_rate: NotRequired[str]
    """New connections per period, like 20/min."""
    max_message_rate: NotRequired[str]
    """Messages per period, like 100/s."""
    max_deliveries_per_connection: NotRequired[int]
    """Messages sent on one connection before it is closed."""


class ShapingConfig(TypedDict):
    """kumo:deployment.shaping: how fast each destination is sent to."""

    community_rules: NotRequired[bool]
    """Load KumoMTA's community shaping rules on top of its defaults (default true)."""
    overrides: NotRequired[list[ShapingOverrideConfig]]
    """The deployment's own limits per domain or provider, applied last (default none)."""


class FleetConfig(TypedDict):
    """kumo:deployment.fleet: what several nodes share."""

    redis_url: NotRequired[str]
    """An existing Redis for the shared throttles, redis:// or rediss:// without credentials (password: the secret redis_password); unset: a managed Redis kumo-infra creates for a fleet."""


class OsUpdatesConfig(TypedDict):
    """kumo:deployment.os_updates: the node's own OS updates."""

    automatic: NotRequired[AutomaticUpdates]
    """security (default), all or off."""
    reboot: NotRequired[RebootPolicy]
    """never (default) or window."""
    reboot_time: NotRequired[str]
    """The reboot window's start, UTC, HH:MM (default 03:30)."""


class AwsConfig(TypedDict):
    """kumo:deployment.aws: where on AWS the nodes go; kumo-infra creates what is not given."""

    vpc_id: NotRequired[str]
    """An existing VPC (with subnet_id: both or neither)."""
    subnet_id: NotRequired[str]
    """An existing public subnet of vpc_id."""
    key_name: NotRequired[str]
    """An EC2 key pair for SSH."""
    availability_zone: NotRequired[str]
    """A zone of the region (default: the region's first)."""
    route53_zone_id: NotRequired[str]
    """The Route 53 hosted zone of dns.zone, where kumo-infra creates the forward records."""
    vpc_cidr: NotRequired[str]
    """The block of a VPC kumo-infra creates, /16 to /28 (default 10.42.0.0/16)."""


class AzureConfig(TypedDict):
    """kumo:deployment.azure: where on Azure the nodes go; kumo-infra creates what is not given."""

    resource_group: NotRequired[str]
    """An existing resource group (default: kumo-infra creates one)."""
    subscription_type: NotRequired[AzureSubscriptionType]
    """The subscription's offer type, which decides whether outbound port 25 can open (default pay-as-you-go)."""
    vnet_id: NotRequired[str]
    """An existing virtual network's resource id (with subnet_id: both or neither)."""
    subnet_id: NotRequired[str]
    """A subnet of vnet_id, by resource id."""
    ssh_public_key: NotRequired[str]
    ("The operator's OpenSSH public key (ssh-ed25519, or ssh-rsa of 2048 bits or more); needed with "
     "network.ssh_cidrs.")
    marketplace_terms_accepted: NotRequired[bool]
    """The marketplace terms of the planned image were accepted in this subscription (Rocky Linux); default false."""
    dns_zone_resource_group: NotRequired[str]
    """The resource group of dns.zone's Azure DNS zone, where kumo-infra creates the forward records."""
    vnet_cidr: NotRequired[str]
    """The block of a virtual network kumo-infra creates, /8 to /29 (default 10.42.0.0/16)."""
    boot_diagnostics: NotRequired[bool]
    ("Managed boot diagnostics on every VM: its console log (az vm boot-diagnostics get-boot-log) and the "
     "serial console, open to whoever holds Virtual Machine Contributor (default false; always on with "
     "lifecycle.ephemeral).")


class GcpConfig(TypedDict):
    """kumo:deployment.gcp: the GCP project and where in it the nodes go."""

    project: str
    """The project id (not its display name)."""
    zone: NotRequired[str]
    """A zone of the region (like us-central1-a)."""
    network: NotRequired[str]
    """An existing VPC network, by name or projects/PROJECT/global/networks/NAME (Shared VPC)."""
    subnetwork: NotRequired[str]
    """An existing subnetwork of network, by name or projects/PROJECT/regions/REGION/subnetworks/NAME."""
    dns_managed_zone: NotRequired[str]
    """The Cloud DNS managed zone of dns.zone, where kumo-infra creates the forward records."""
    subnet_cidr: NotRequired[str]
    """The block of a subnetwork kumo-infra creates, /8 to /29 (default 10.42.0.0/24)."""


class SshHostConfig(TypedDict):
    """One machine that already exists, and how kumo-infra reaches it."""

    address: str
    """Where kumo-infra connects: an IP address or a fully qualified DNS name."""
    public_ip: NotRequired[str]
    """The public IPv4 address the internet sees this host's mail come from (default: address, when that is one)."""
    hostname: NotRequired[str]
    """The node's DNS name (default: kumo:deployment.hostname numbered like every target's nodes)."""
    user: NotRequired[str]
    """The login name (default root)."""
    port: NotRequired[int]
    """The SSH port, 1 to 65535 (default 22)."""
    host_key: str
    """The machine's OpenSSH public host key (ssh-ed25519 or ecdsa-sha2-nistp*); never trusted on first use."""
    spool_device: NotRequired[str]
    """A whole disk by its /dev/disk/by-id/ name for the spool; unset: a directory on the OS disk."""
    private_address: NotRequired[str]
    """The IP address the other nodes of a fleet reach this host on (default: address)."""


class SshConfig(TypedDict):
    """kumo:deployment.ssh: the machines that already exist (the private key is the secret ssh_private_key)."""

    hosts: list[SshHostConfig]
    """1-100 hosts, one node each, in this order (node1 is hosts[0])."""


class DeploymentConfig(TypedDict):
    """The kumo:deployment object: what to deploy, where, and for which workload."""

    cloud: Cloud
    """The target: the name of a package under kumo_infra/targets/."""
    region: NotRequired[str]
    """The target's region (like us-east-1, westeurope or us-central1); required by targets that have regions."""
    name: str
    """Prefix of every resource name: 2-20 lowercase letters, digits and hyphens, starting with a letter."""
    hostname: str
    """The MTA's public DNS name; with several nodes the base (mta.example.com gives mta1.example.com, mta2...)."""
    os: NotRequired[OperatingSystem]
    """The operating system (default rocky9); the target must have an image of it."""
    nodes: NotRequired[int]
    """A fixed node count, 1 to 100 (default: the planner's)."""
    sizing: NotRequired[SizingConfig]
    """The workload the planner sizes the nodes for."""
    spool: NotRequired[SpoolConfig]
    """Where queued mail is kept."""
    logs: NotRequired[LogsConfig]
    """KumoMTA's logs on each node."""
    network: NotRequired[NetworkConfig]
    """Who may reach the management and submission ports."""
    port25: NotRequired[Port25Config]
    """Outbound delivery on port 25."""
    kumomta: NotRequired[KumoMtaConfig]
    """The KumoMTA packages and who may relay."""
    dns: NotRequired[DnsConfig]
    """Forward records and PTRs."""
    dkim: NotRequired[DkimConfig]
    """Domains to sign with DKIM."""
    shaping: NotRequired[ShapingConfig]
    """Traffic shaping: KumoMTA's rules and the deployment's own limits."""
    fleet: NotRequired[FleetConfig]
    """What several nodes share (their throttles' Redis)."""
    lifecycle: NotRequired[LifecycleConfig]
    """What a change may do to running machines."""
    os_updates: NotRequired[OsUpdatesConfig]
    """The node's own OS updates."""
    aws: NotRequired[AwsConfig]
    """AWS settings; only with cloud aws."""
    azure: NotRequired[AzureConfig]
    """Azure settings; only with cloud azure."""
    gcp: NotRequired[GcpConfig]
    """GCP settings; required with cloud gcp, refused otherwise."""
    ssh: NotRequired[SshConfig]
    """The machines of the ssh target; required with cloud ssh, refused otherwise."""


class KumoMtaArgs(TypedDict):
    """Arguments of every KumoMTA component (AwsKumoMta, AzureKumoMta, GcpKumoMta, ...)."""

    deployment: DeploymentConfig
    ("The kumo:deployment object as plain data (it decides which resources exist, so it cannot be an unresolved "
     "Output); validated by kumo_infra.config.")
    relay_password: NotRequired[pulumi.Input[str]]
    """The smarthost password as a Pulumi secret (secret kumo:relayPassword); needed in relay mode."""
    ssh_private_key: NotRequired[pulumi.Input[str]]
    """The ssh target's private key (secret kumo:sshPrivateKey), as a Pulumi secret."""
    redis_password: NotRequired[pulumi.Input[str]]
    """The password of the Redis in fleet.redis_url as a Pulumi secret (secret kumo:redisPassword)."""


# -- outputs ------------------------------------------------------------------------------

class ForwardRecord(TypedDict):
    """A node's forward A record and whether kumo-infra created it."""

    name: str
    """The node's hostname."""
    type: str
    """A."""
    value: str
    """The node's public IPv4 address."""
    created: bool
    """True when kumo-infra created it in dns.zone; false: the operator publishes it (dns_records)."""


class Node(TypedDict):
    """One node of the deployment."""

    name: str
    """The node's stable key in resource names: node1, node2, ..."""
    hostname: str
    """The node's DNS name (its PTR once set)."""
    public_ip: str
    """The node's static public IPv4 address."""
    private_ip: str
    """The node's address inside its network (an existing machine: the address kumo-infra connects to)."""
    machine_id: Optional[str]
    ("The cloud's id of the node's machine, what its console output is read by: the EC2 instance id (i-...), "
     "the Azure VM's resource id, the GCP instance's self link; null for an existing machine (ssh).")
    ptr: Optional[str]
    """The reverse DNS name set on the public address; null until it can be set (the forward record first)."""
    instance_type: str
    """The machine type the planner chose."""
    spool: str
    """Where the spool is: local_nvme, block, or directory (on the OS disk of an existing machine)."""
    forward_record: ForwardRecord
    """The node's forward A record."""


class DnsRecord(TypedDict):
    """A DNS record the operator must publish."""

    name: str
    """The record's owner name."""
    type: str
    """The record type: A, PTR (where the target sets none itself) or TXT."""
    value: str
    """The record's value."""
    why: str
    """What the record is for."""


class ApiEndpoint(TypedDict):
    """One node's HTTP API endpoint."""

    hostname: str
    """The node's hostname."""
    url: str
    """https://<hostname>:8443, once the forward record resolves."""
    ip_url: str
    """https://<public address>:8443, which the certificate also names."""


class ApiAccess(TypedDict):
    """How to reach KumoMTA's HTTP API from network.api_cidrs; never the password itself."""

    user: str
    """The basic-auth user."""
    secret_name: str
    """The password's name in the target's secret store."""
    secret_reference: str
    """The reference a node fetches the password by."""
    read_password: str
    """A command that prints the password with the operator's own credentials."""
    allowed_from: list[str]
    """network.api_cidrs."""
    tls: str
    """How to trust the API's self-signed certificate."""
    example: str
    """An example injection call with curl."""
    note: str
    """Names, addresses and what the API user may do."""
    certificate_renewal: str
    """When the certificate is renewed and what clients do then."""
    endpoints: list[ApiEndpoint]
    """Every node's URLs."""
    ca_certificate: str
    """The self-signed certificate (PEM) clients trust."""
    pinned_public_key: str
    """curl's --pinnedpubkey value of the API key (sha256//...), which survives renewal."""


class FleetRedis(TypedDict):
    """Where a fleet's shared throttles live; never the URL with its credentials."""

    source: str
    """managed (kumo-infra created it) or external (fleet.redis_url)."""
    title: str
    """What the Redis is."""
    endpoint: str
    """host:port the nodes connect to with TLS."""
    url_secret_name: str
    """The name of the secret in the target's store holding the URL with its credentials."""


class FleetShared(TypedDict):
    """What the nodes of a fleet share; absent for a single node."""

    nodes: int
    """How many nodes."""
    redis: FleetRedis
    """The Redis of the shared throttles."""
    peers: list[str]
    """Every node's private address, in node order: where each publishes to the TSA daemons."""
    peers_secret_name: str
    """The name of the secret in the target's store holding that list, which the nodes fetch at boot."""


class SizingPlan(TypedDict):
    """The sizing plan (kumo_infra.sizing.Plan, as kumo-infra size --json prints it)."""

    cloud: str
    """The target planned for."""
    instance_type: str
    """The chosen machine type."""
    nodes: int
    """How many nodes."""
    vcpu: int
    """vCPUs per node."""
    memory_gib: float
    """Memory per node, GiB."""
    arch: str
    """CPU architecture (x86_64 or arm64)."""
    local_nvme_gb: int
    """Local NVMe per node, GB (0 without)."""
    nvme_count: int
    """Local NVMe devices per node."""
    nvme_attach: str
    """How the target attaches local NVMe for this type."""
    baseline_gbps: float
    """The type's baseline network bandwidth, Gbps."""
    burst_gbps: float
    """The type's burst network bandwidth, Gbps."""
    sustained_gbps: float
    """Sustained internet-bound bandwidth, Gbps (capped where the target caps it)."""
    required_mbps: float
    """Bandwidth the workload needs with headroom, Mbps, all nodes."""
    required_mbps_per_node: float
    """The same per node."""
    messages_per_hour: int
    """The planned rate."""
    capacity_per_node_per_hour: int
    """Messages per hour one node carries."""
    spool_storage: str
    """local_nvme, block or directory."""
    spool_gb_per_node: int
    """Spool size per node, GB."""
    os_disk_gb: int
    """OS disk per node, GB (logs included)."""
    price_usd_hour: float
    """Price of one node, USD per hour (the catalog's, on-demand)."""
    total_price_usd_hour: float
    """Price of all nodes, USD per hour."""
    price_region: str
    """The region the catalog's price is from."""
    price_taken: str
    """When the catalog's price was taken."""
    decided_by: str
    """The constraint that decided the type and count."""
    reasons: list[str]
    """Why the planner chose this."""
    warnings: list[str]
    """What the operator should know about the plan."""

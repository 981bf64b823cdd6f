"""The base of every KumoMTA component: one per-node skeleton, its arguments, its outputs.

``KumoMtaComponent.__init__`` is the whole flow, the same on every target:

    prepare          validate the arguments and plan the nodes (ConfigError before any resource)
    _before_resources  the target's own checks that need the plan (still before any resource)
    network          _network:   where the machines live (None: the target creates none)
    firewall         _firewall:  cp.rules translated (None: the machines bring their own)
    identity         _identity:  what the nodes read their secrets as (None: no identity)
    shared Redis     _shared_redis: a fleet's managed Redis (only when fleet.redis_source is "managed")
    secrets          secrets_for (keys and passwords) then _store_secrets (the target's store)
    per node         _address, _forward_record (with dns.zone), _spool (block spools), _machine,
                     _ptr (when cp.set_ptr), _after_machine, then the node's outputs
    peers            a fleet's peer list (FLEET_PEERS) from every machine's private address
    publish          _publish: the shared outputs and the target's _extra_outputs

A fleet (more than one node, kumo_infra.fleet) shares its throttles through one Redis: the
operator's (fleet.redis_url and the secret kumo:redisPassword, the REDIS_URL secret composed here)
or one the target creates. The contract with a target that creates one (Target.managed_redis set):
``_shared_redis(b)`` is called after ``_network`` and ``_firewall`` (the Redis goes in the nodes'
private network, reachable from the nodes only, TLS in transit, its auth token kept in the state
as a secret) and before the secrets, and returns a :class:`SharedRedis`. Its ``url`` becomes the
REDIS_URL secret, which the machines wait for (NodeSecret.machines_wait True): a managed Redis
can take tens of minutes to create, longer than a node's boot-time fetch waits
(KUMO_SECRET_WAIT_S, 600 s), and the URL needs no machine, so waiting costs no cycle. The nodes'
way out to the Redis's port is the target's to open, with the Redis (netplan opens the way to
fleet.redis_url only).

A target's component (``kumo_infra/targets/<name>/component.py``) sets ``TARGET`` (its registry
name) and ``TYPE`` (its type token) and implements the hooks: the abstract ones are what every
target must create (the machine); the others default to creating nothing, which is what a target
of existing machines (ssh) needs. Resource names come from :class:`Names`, the same on every
target; a child renamed from an earlier release carries ``aliases=was(old_name)`` so existing
stacks keep it (tests/test_aliases.py proves each one).

No ``from __future__ import annotations`` here or in a target's component module: Pulumi's schema
inference reads the component's ``__init__`` and output annotations as objects, never strings.
"""

import base64
import functools
import hashlib
import ipaddress
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

import pulumi

from . import catalog, fleet, targets
from .bootstrap import render_user_data
from .bootstrap.policy import API_TLS_PORT
from .component_args import ApiAccess, DnsRecord, FleetShared, KumoMtaArgs, Node, SizingPlan
from .config import REDIS_PASSWORD_KEY, Deployment, parse_deployment
from .errors import ConfigError
from .netplan import Rule, firewall_rules
from .secretspec import API_PASSWORD, API_TLS_CERT, API_TLS_KEY, API_USER, RELAY_PASSWORD, SecretSpec, secret_specs
from .sizing import Plan
from .stackconfig import needs_redis_password, needs_relay_password, plan_for

if TYPE_CHECKING:
    import pulumi_tls


# -- names: the same on every target ------------------------------------------------------------

@dataclass(frozen=True)
class Names:
    """Every child's resource name, from the component's name (stable: a changed name is a new
    resource to the engine unless the child carries the old one as an alias)."""

    name: str

    @property
    def network(self) -> str:
        return f"{self.name}-network"

    @property
    def subnet(self) -> str:
        return f"{self.name}-subnet"

    @property
    def firewall(self) -> str:
        return f"{self.name}-firewall"

    def firewall_rule(self, rule: str, which: str) -> str:
        """One firewall rule resource: ``which`` tells the rule's parts apart (a family, a CIDR)."""
        return f"{self.name}-fw-{rule}-{which}"

    @property
    def identity(self) -> str:
        return f"{self.name}-identity"

    def secret(self, key: str) -> str:
        return f"{self.name}-{key}-secret"

    def secret_version(self, key: str) -> str:
        """The secret's value in the store, where the store keeps it apart from the secret."""
        return f"{self.name}-{key}-version"

    def secret_access(self, key: str, node: Optional[str] = None) -> str:
        """The grant letting the nodes (or one node) read the secret."""
        return f"{self.name}-{node}-{key}-access" if node else f"{self.name}-{key}-access"

    @property
    def secrets_access(self) -> str:
        """One grant covering every secret, where the store grants that way (an IAM policy)."""
        return f"{self.name}-secrets-access"

    def generated(self, key: str) -> str:
        """A key or password the component generates (DKIM keys, the API password and TLS key)."""
        return f"{self.name}-{key}"

    def node(self, node: str, part: str) -> str:
        return f"{self.name}-{node}-{part}"

    def machine(self, node: str) -> str:
        return self.node(node, "vm")

    def address(self, node: str) -> str:
        return self.node(node, "ip")

    def forward_record(self, node: str) -> str:
        return self.node(node, "a")

    def ptr(self, node: str) -> str:
        return self.node(node, "ptr")

    def spool(self, node: str) -> str:
        return self.node(node, "spool")


def was(*old_names: str) -> list[pulumi.Alias]:
    """Aliases for a child renamed from ``old_names`` (same parent, same type): the engine moves the
    existing resource to the new name instead of replacing it."""
    return [pulumi.Alias(name=old) for old in old_names]


# -- the plan a component follows ---------------------------------------------------------------

@dataclass(frozen=True)
class NodePlan:
    index: int  # 0-based
    key: str  # stable resource-name part: "node1", "node2", ...
    hostname: str
    deployment: Deployment
    plan: Plan

    @functools.cached_property
    def user_data(self) -> str:
        """The node's cloud-config, rendered on first use (GCP carries a startup-script instead)."""
        return render_user_data(self.deployment, self.plan, self.index)


@dataclass(frozen=True)
class ComponentPlan:
    """Everything a component decides before it creates a resource."""

    deployment: Deployment
    plan: Plan
    nodes: tuple[NodePlan, ...]
    rules: tuple[Rule, ...]

    @property
    def target(self) -> targets.Target:
        return self.deployment.target

    @property
    def set_ptr(self) -> bool:
        """Whether kumo-infra sets the nodes' PTRs (the target's rule: each needs the forward record first)."""
        return self.target.sets_ptr(self.deployment)

    @property
    def create_forward_records(self) -> bool:
        return bool(self.deployment.dns.zone)

    @functools.cached_property
    def instance_type(self) -> catalog.InstanceType:
        """The planned machine type's catalog entry (NIC acceleration, NVMe attachment)."""
        spec = catalog.load(self.deployment.cloud).get(self.plan.instance_type)
        if spec is None:  # the planner only picks catalog types; a guard, not a path
            raise ConfigError(f"'{self.plan.instance_type}' is not in the {self.deployment.cloud} catalog",
                              "kumo:deployment.sizing.instance_type")
        return spec


def prepare(args: KumoMtaArgs, target: Union[targets.Target, str]) -> ComponentPlan:
    """Validate the arguments for ``target``'s component and plan the nodes. Raises ConfigError on bad input."""
    if isinstance(target, str):
        target = targets.get(target)
    raw = args.get("deployment")
    if raw is None:
        raise ConfigError("the component needs args['deployment'] (the kumo:deployment object)", "deployment")
    if isinstance(raw, Deployment):
        problems = raw.check()  # a model built by the caller has not been through parse_deployment
        if problems:
            raise ConfigError(problems)
        deployment = raw
    else:
        deployment = parse_deployment(raw)
    if deployment.cloud != target.name:
        raise ConfigError(f"this is the {target.name} component but the deployment's cloud is "
                          f"'{deployment.cloud}'", "kumo:deployment.cloud")
    if needs_relay_password(deployment) and args.get("relay_password") is None:
        raise ConfigError("relay mode needs the smarthost password (args['relay_password'], from the secret "
                          "kumo:relayPassword: pulumi config set --secret kumo:relayPassword ...)", "kumo:relayPassword")
    if needs_redis_password(deployment) and args.get("redis_password") is None:
        raise ConfigError(f"fleet.redis_url needs the Redis's password (args['redis_password'], from the secret "
                          f"{REDIS_PASSWORD_KEY}: pulumi config set --secret {REDIS_PASSWORD_KEY} ...)",
                          REDIS_PASSWORD_KEY)
    plan = plan_for(deployment)
    nodes = tuple(NodePlan(i, f"node{i + 1}", deployment.node_hostname(i, plan.nodes), deployment, plan)
                  for i in range(plan.nodes))
    return ComponentPlan(deployment, plan, nodes, tuple(firewall_rules(deployment)))


# -- what the skeleton hands the hooks ------------------------------------------------------------

@dataclass(frozen=True)
class NodeSecret:
    """One secret the component stores for the nodes (in the target's store, or on the node itself)."""

    spec: SecretSpec
    name: str  # the name in the store (the target's SecretStore.store_name)
    value: pulumi.Output[str]  # always a Pulumi secret
    # False when the value is made from the machines themselves (the API certificate names the
    # nodes' public addresses, which on AWS exist only once each machine does): the machines must not
    # wait for it, or neither would ever be created; the node's boot-time fetch retries until it is
    # stored (kumo-bootstrap step_secrets, up to KUMO_SECRET_WAIT_S).
    machines_wait: bool = True


@dataclass
class Address:
    """A node's public address."""

    ip: pulumi.Input[str]
    resource: Optional[pulumi.Resource] = None  # None: the address exists already (a machine over SSH)


@dataclass
class Machine:
    """A node's machine: what the target created (or configured) for it."""

    resource: pulumi.Resource
    private_ip: pulumi.Input[Optional[str]]
    # The cloud's own id of the machine, what its console output is read by (kumo_infra.smoke's
    # readers): AWS the instance id, Azure the VM's resource id, GCP the instance's self link;
    # None where kumo-infra creates no machine (an existing one over SSH).
    machine_id: pulumi.Input[Optional[str]]


@dataclass
class SharedRedis:
    """A fleet's managed Redis, as the target's ``_shared_redis`` created it."""

    # The URL every node connects with, credentials included (rediss://:TOKEN@host:port): a Pulumi
    # secret, stored as the REDIS_URL secret; never in an output.
    url: pulumi.Output[str]
    resource: pulumi.Resource  # what the nodes' URL names (the replication group, cache, instance)
    title: str  # what it is, for the fleet output ("Amazon ElastiCache (Redis OSS)")
    # host:port without credentials, for the fleet output.
    endpoint: pulumi.Output[str]


@dataclass
class Build:
    """What the component has built so far, handed to every hook. ``network``, ``firewall``,
    ``identity`` and ``prepared`` hold whatever the target's own hooks returned (None: nothing)."""

    name: str
    names: Names
    cp: ComponentPlan
    args: KumoMtaArgs
    tags: dict[str, str]  # base_tags(...): on every resource that takes tags (GCP: labels)
    prepared: Any = None  # _before_resources' answer
    network: Any = None
    firewall: Any = None
    identity: Any = None
    secrets: list[NodeSecret] = field(default_factory=list)  # the deployment's, for the store
    # What every machine waits for so its boot-time fetch finds the secrets (_store_secrets' answer).
    secrets_ready: list[pulumi.Resource] = field(default_factory=list)
    redis: Optional[SharedRedis] = None  # a fleet's managed Redis (_shared_redis' answer)

    @property
    def deployment(self) -> Deployment:
        return self.cp.deployment


@dataclass
class NodeBuild:
    """One node as the skeleton builds it: the plan, then each part as its hook returns it."""

    node: NodePlan
    address: Optional[Address] = None
    record: Optional[pulumi.Resource] = None  # the forward A record (with dns.zone)
    spool: Optional[pulumi.Resource] = None  # the block spool volume
    machine: Optional[Machine] = None
    extra: dict[str, Any] = field(default_factory=dict)  # the target's own per-node values

    @property
    def key(self) -> str:
        return self.node.key


class KumoMtaComponent(pulumi.ComponentResource):
    """The outputs every target's component publishes, with the same keys (docs/component-spec.md),
    and the flow that makes them."""

    nodes: pulumi.Output[list[Node]]
    ("Every node: its name, hostname, addresses, the cloud's id of its machine, PTR, machine type, spool and "
     "forward record.")
    public_ips: pulumi.Output[list[str]]
    """The nodes' static public IPv4 addresses."""
    dns_records: pulumi.Output[list[DnsRecord]]
    ("DNS records the operator must publish: the forward A records kumo-infra did not create, and the PTRs "
     "where the target sets none itself.")
    sizing: pulumi.Output[SizingPlan]
    """The sizing plan the nodes were built from."""
    secret_names: pulumi.Output[list[str]]
    """Names of the deployment's secrets in the target's store, never their values."""
    deliverability_records: pulumi.Output[list[DnsRecord]]
    """SPF, DMARC and DKIM TXT records to publish for each sending domain."""
    api: Optional[pulumi.Output[ApiAccess]]
    """How to reach the HTTP API from network.api_cidrs (api_access); null without api_cidrs."""
    fleet: Optional[pulumi.Output[FleetShared]]
    """What the nodes of a fleet share (their Redis, the peers); null for a single node."""

    # Set by each target's component, unannotated: Pulumi's schema inference takes every public
    # annotation of a component class for an output.
    TARGET = ""  # the target's registry name ("aws"): prepare refuses another target's deployment
    TYPE = ""  # the component's type token ("kumo:index:AwsKumoMta")

    # The API's key and certificate (secrets_for makes them with network.api_cidrs); _publish gives
    # the certificate the nodes' addresses, which the certificate waits for until then.
    _api_tls: Optional["ApiTls"] = None
    # A fleet's peer list (secrets_for makes its secret), given the machines' private addresses once
    # they exist.
    _name_peers: Optional[Callable[[pulumi.Output[str]], None]] = None

    def __init__(self, name: str, args: KumoMtaArgs, opts: Optional[pulumi.ResourceOptions] = None) -> None:
        # Everything that can be wrong with the input is found before anything is registered.
        cp = prepare(args, self.TARGET)
        prepared = self._before_resources(cp)
        super().__init__(self.TYPE, name, {"deployment": args["deployment"]}, opts)
        b = Build(name, Names(name), cp, args, base_tags(name, ephemeral=cp.deployment.lifecycle.ephemeral), prepared)
        b.network = self._network(b)
        b.firewall = self._firewall(b)
        b.identity = self._identity(b)
        if fleet.redis_source(cp.deployment) == "managed":
            b.redis = self._shared_redis(b)
        b.secrets, dkim_public = secrets_for(self, name, cp, args, b.redis)
        b.secrets_ready = self._store_secrets(b)

        address_after_machine = cp.target.address_after_machine
        built: list[NodeBuild] = []
        for node in cp.nodes:
            n = NodeBuild(node)
            if not address_after_machine:
                self._address_and_record(b, n)
            if cp.plan.spool_storage == "block":
                n.spool = self._spool(b, n)
            n.machine = self._machine(b, n)
            if address_after_machine:
                self._address_and_record(b, n)
            if cp.set_ptr:
                self._ptr(b, n)
            self._after_machine(b, n)
            built.append(n)
        private_ips = [n.machine.private_ip for n in built if n.machine is not None]
        if self._name_peers is not None:
            self._name_peers(peers_json(private_ips))
        self.fleet = fleet_output(cp, b.redis, private_ips)

        node_outputs = [node_output(cp, n.node, public_ip=n.address.ip, private_ip=n.machine.private_ip,
                                    machine_id=n.machine.machine_id)
                        for n in built if n.address is not None and n.machine is not None]
        self._publish(cp, node_outputs, [n.address.ip for n in built if n.address is not None], b.secrets,
                      dkim_public, **self._extra_outputs(b, built))

    def _address_and_record(self, b: Build, n: NodeBuild) -> None:
        n.address = self._address(b, n)
        if b.cp.create_forward_records:
            n.record = self._forward_record(b, n)

    # -- hooks: what each target creates ------------------------------------------------------

    def _before_resources(self, cp: ComponentPlan) -> Any:
        """The target's own checks that need the plan, raising ConfigError before any resource
        exists; the answer is kept as Build.prepared."""
        return None

    def _network(self, b: Build) -> Any:
        """Create or look up where the machines live; None when the target needs none."""
        return None

    def _firewall(self, b: Build) -> Any:
        """Translate every rule of ``b.cp.rules`` (and nothing more); None when the target has no firewall."""
        return None

    def _identity(self, b: Build) -> Any:
        """The identity the nodes read their secrets with; None when there is none to create."""
        return None

    def _shared_redis(self, b: Build) -> SharedRedis:
        """A fleet's managed Redis (called only when fleet.redis_source is "managed", after _network and
        _firewall, before the secrets): see the module docstring for what it must be."""
        raise NotImplementedError(f"{type(self).__name__} creates no managed Redis for a fleet on "
                                  f"{b.cp.target.title}; set fleet.redis_url (and the secret {REDIS_PASSWORD_KEY})")

    def _store_secrets(self, b: Build) -> list[pulumi.Resource]:
        """Store ``b.secrets`` where only the nodes can read them; return what every machine must wait for
        (NodeSecret.machines_wait says which values it may). No secrets: create nothing."""
        return []

    def _address(self, b: Build, n: NodeBuild) -> Address:
        """The node's public address; called before the machine, or after it when the target's
        address_after_machine (then ``n.machine`` is set)."""
        raise NotImplementedError(f"{type(self).__name__} gives no public address")

    def _forward_record(self, b: Build, n: NodeBuild) -> Optional[pulumi.Resource]:
        """The node's A record in dns.zone (called only with a zone), after ``n.address``."""
        raise NotImplementedError(f"{type(self).__name__} cannot create forward records")

    def _spool(self, b: Build, n: NodeBuild) -> Optional[pulumi.Resource]:
        """The node's block spool volume (called only for block spools), before the machine; None when
        the machine brings the disk itself (an existing machine's, named in its settings)."""
        return None

    def _machine(self, b: Build, n: NodeBuild) -> Machine:
        """The node's machine, booting (or running) its bootstrap."""
        raise NotImplementedError(f"{type(self).__name__} must create the node's machine")

    def _ptr(self, b: Build, n: NodeBuild) -> None:
        """Set the node's PTR to its hostname (called when cp.set_ptr, after the address and the
        record); nothing where the address or the machine carries it."""

    def _after_machine(self, b: Build, n: NodeBuild) -> None:
        """What needs the node's machine (a volume attachment, grants to the machine's identity)."""

    def _extra_outputs(self, b: Build, nodes: list[NodeBuild]) -> dict[str, pulumi.Input[Any]]:
        """The target's outputs beyond the shared ones (attribute name to value)."""
        return {}

    # -- the last step ---------------------------------------------------------------------------

    def _publish(self, cp: "ComponentPlan", node_outputs: list[pulumi.Output[dict]],
                 public_ips: list[pulumi.Input[str]], secrets: list["NodeSecret"],
                 dkim_public: dict[str, pulumi.Output[str]], **extra: pulumi.Input[Any]) -> None:
        """Set the shared outputs (and a target's ``extra`` ones), then register them: the component's last step."""
        self.nodes = pulumi.Output.all(*node_outputs).apply(list)
        self.public_ips = pulumi.Output.all(*public_ips).apply(list)
        self.dns_records = dns_records_to_publish(node_outputs)
        self.sizing = pulumi.Output.from_input(cp.plan.to_dict())
        self.secret_names = pulumi.Output.from_input([s.name for s in secrets])
        self.deliverability_records = deliverability_records(cp, self.public_ips, dkim_public)
        if self._api_tls is not None:
            self._api_tls.name_addresses(self.public_ips)  # the certificate's IP SANs: every node's address
        self.api = api_access(cp, self.public_ips, self._api_tls)
        for key, value in extra.items():
            setattr(self, key, value)
        self.register_outputs({"nodes": self.nodes, "public_ips": self.public_ips, "dns_records": self.dns_records,
                               "sizing": self.sizing, "secret_names": self.secret_names,
                               "deliverability_records": self.deliverability_records,
                               **{k: v for k, v in {"api": self.api, "fleet": self.fleet, **extra}.items()
                                  if v is not None}})


def node_output(cp: ComponentPlan, node: NodePlan, *, public_ip: pulumi.Input[str],
                private_ip: pulumi.Input[Optional[str]],
                machine_id: pulumi.Input[Optional[str]]) -> pulumi.Output[dict]:
    """One node's outputs, the same keys on every target."""
    return pulumi.Output.all(public_ip, private_ip, machine_id).apply(lambda ids: {
        "name": node.key,
        "hostname": node.hostname,
        "public_ip": ids[0],
        "private_ip": ids[1],
        "machine_id": ids[2],
        "ptr": node.hostname if cp.set_ptr else None,
        "instance_type": cp.plan.instance_type,
        "spool": cp.plan.spool_storage,
        "forward_record": {"name": node.hostname, "type": "A", "value": ids[0],
                           "created": cp.create_forward_records},
    })


def dns_records_to_publish(nodes: list[pulumi.Output[dict]]) -> pulumi.Output[list[dict]]:
    """The records the operator must publish: forward A records kumo-infra did not create."""
    def pending(resolved: list[dict]) -> list[dict]:
        return [{"name": n["hostname"], "type": "A", "value": n["public_ip"],
                 "why": "publish before setting dns.forward_records_exist: the cloud checks it before setting the PTR"}
                for n in resolved if not n["forward_record"]["created"]]
    return pulumi.Output.all(*nodes).apply(pending)


def child(parent: pulumi.Resource, **kwargs: Any) -> pulumi.ResourceOptions:
    return pulumi.ResourceOptions(parent=parent, **kwargs)


def machine_options(parent: pulumi.Resource, cp: ComponentPlan, user_data_props: list[str],
                    fixed_props: Optional[list[str]] = None,
                    depends_on: Optional[list[pulumi.Resource]] = None, **more: Any) -> pulumi.ResourceOptions:
    """Options for a machine: a changed bootstrap never replaces it unless the operator opts in,
    and ``fixed_props`` never do: a newer image of the OS (the look-up follows the vendor's latest
    image; the running machine keeps its own and is patched by its package manager), and settings
    a target takes only when the machine is created. ``more``: further options (aliases ...)."""
    ignore = [] if cp.deployment.lifecycle.replace_on_bootstrap_change else list(user_data_props)
    ignore += list(fixed_props or [])
    return pulumi.ResourceOptions(parent=parent, ignore_changes=ignore, protect=cp.deployment.lifecycle.protect,
                                  depends_on=depends_on or [], **more)


def spool_options(parent: pulumi.Resource, cp: ComponentPlan) -> pulumi.ResourceOptions:
    """Options for a block spool volume: queued mail outlives the machine and the stack (removing it
    leaves the volume behind, retain_on_delete), except in an ephemeral deployment, whose volumes are
    deleted with it (nothing left that costs money)."""
    lifecycle = cp.deployment.lifecycle
    return child(parent, retain_on_delete=not lifecycle.ephemeral, protect=lifecycle.protect)


# -- secrets and deliverability records (issue 5) -----------------------------------------

# The API's basic-auth password: letters and digits only (no character a shell, a URL or the
# "user:password" form treats specially), 40 of them: about 238 bits.
API_PASSWORD_LENGTH = 40


def generated_password(parent: pulumi.Resource, resource_name: str, cp: ComponentPlan, *, length: int,
                       **rules: Any) -> pulumi.Output[str]:
    """A password generated at deploy time by pulumi-random, kept only in Pulumi's encrypted state
    (the provider marks ``result`` secret; it is wrapped again here so nothing can unmark it)."""
    import pulumi_random as random  # imported here: only deployments that need a password load it

    password = random.RandomPassword(resource_name, length=length, **rules,
                                     opts=child(parent, protect=cp.deployment.lifecycle.protect))
    return pulumi.Output.secret(password.result)


def secrets_for(parent: KumoMtaComponent, name: str, cp: ComponentPlan, args: KumoMtaArgs,
                redis: Optional[SharedRedis] = None) -> tuple[list[NodeSecret], dict[str, pulumi.Output[str]]]:
    """The deployment's secrets as Pulumi secrets, and each DKIM domain's public key (PEM).

    The relay and Redis passwords come from the caller (Pulumi secrets); each DKIM key pair, the API
    password and the API's TLS key are generated here and kept only in Pulumi's encrypted state
    and the target's secret store. The API certificate names the nodes' public addresses, which
    the component creates later: ``_publish`` hands them over (ApiTls.name_addresses). A fleet's
    peer list is the machines' private addresses, handed over once they exist (parent._name_peers).
    """
    import pulumi_tls as tls  # imported here: only deployments that store secrets need it

    names = Names(name)
    d = cp.deployment
    secrets: list[NodeSecret] = []
    dkim_public: dict[str, pulumi.Output[str]] = {}
    api_tls = api_tls_for(parent, name, cp) if d.network.api_cidrs else None
    parent._api_tls = api_tls
    for spec in secret_specs(d):
        machines_wait = True
        if spec.key == RELAY_PASSWORD:
            value = pulumi.Output.secret(args["relay_password"])  # prepare() refused its absence
        elif spec.key == API_PASSWORD:
            value = generated_password(parent, names.generated(spec.key), cp, length=API_PASSWORD_LENGTH,
                                       special=False, min_upper=1, min_lower=1, min_numeric=1)
        elif spec.key in (API_TLS_KEY, API_TLS_CERT):
            assert api_tls is not None  # both specs exist exactly when network.api_cidrs does
            if spec.key == API_TLS_KEY:
                # PKCS#8 ("PRIVATE KEY"), the form of the key KumoMTA makes for itself (PrivatePkcs8KeyDer in
                # crates/kumo-server-common/src/tls_helpers.rs); its PrivateKeyDer::from_pem_slice reads SEC1
                # and PKCS#1 too (rustls/pki-types src/lib.rs, impl PemObject for PrivateKeyDer).
                value = pulumi.Output.secret(api_tls.key.private_key_pem_pkcs8)
            else:
                value = pulumi.Output.secret(api_tls.certificate.cert_pem)  # public; stored like the key
                machines_wait = not cp.target.address_after_machine
        elif spec.key == fleet.REDIS_URL:
            value = redis_url_secret(d, args, redis)
        elif spec.key == fleet.FLEET_PEERS:
            # An Output resolved later from another (pulumi.deferred_output, as the API certificate's
            # addresses): the machines' private addresses exist only once they do, so they cannot wait for it.
            peers, parent._name_peers = pulumi.deferred_output()
            value = pulumi.Output.secret(peers)
            machines_wait = False
        else:
            key = tls.PrivateKey(names.generated(spec.key), algorithm="RSA", rsa_bits=2048,
                                 opts=child(parent, protect=d.lifecycle.protect))
            value = pulumi.Output.secret(key.private_key_pem)
            dkim_public[spec.dkim_domain or ""] = key.public_key_pem
        secrets.append(NodeSecret(spec, cp.target.secrets.store_name(d, spec), value, machines_wait))
    return secrets, dkim_public


def redis_url_secret(d: Deployment, args: KumoMtaArgs, redis: Optional[SharedRedis]) -> pulumi.Output[str]:
    """The REDIS_URL secret's value: the managed Redis's URL, or fleet.redis_url with the password
    (args['redis_password'], which prepare() refused to go without) as its userinfo."""
    if redis is not None:
        return pulumi.Output.secret(redis.url)
    url = d.fleet.redis_url
    assert url is not None  # secret_specs has REDIS_URL only for a fleet, which without a managed Redis names one
    return pulumi.Output.secret(pulumi.Output.from_input(args["redis_password"]).apply(
        lambda password: fleet.redis_url_with_password(url, password)))


def peers_json(private_ips: list[pulumi.Input[Optional[str]]]) -> pulumi.Output[str]:
    """FLEET_PEERS' value: every node's private address in node order, as a JSON list."""
    return pulumi.Output.all(*private_ips).apply(lambda ips: json.dumps(list(ips)))


def fleet_output(cp: ComponentPlan, redis: Optional[SharedRedis],
                 private_ips: list[pulumi.Input[Optional[str]]]) -> Optional[pulumi.Output[dict]]:
    """What a fleet's nodes share, for the operator: where the Redis is (host:port, never its URL or
    token), the peers each node publishes to, and where each reads them. None for a single node."""
    d = cp.deployment
    source = fleet.redis_source(d)
    if source == "none":
        return None
    if redis is not None:
        title, endpoint = redis.title, redis.endpoint
    else:
        assert d.fleet.redis_url is not None  # an external source is fleet.redis_url
        title, endpoint = "your own Redis (fleet.redis_url)", pulumi.Output.from_input(fleet.redis_endpoint(d.fleet.redis_url))
    store = cp.target.secrets
    secrets = {spec.key: store.store_name(d, spec) for spec in secret_specs(d)}

    def build(resolved: list[Any]) -> dict:
        where, *peers = resolved
        return {"nodes": len(peers), "redis": {"source": source, "title": title, "endpoint": where,
                                               "url_secret_name": secrets[fleet.REDIS_URL]},
                "peers": list(peers), "peers_secret_name": secrets[fleet.FLEET_PEERS]}

    return pulumi.Output.all(endpoint, *private_ips).apply(build)


def pem_body(pem: str) -> str:
    """The base64 body of a PEM block on one line (for a public key: its DER SubjectPublicKeyInfo)."""
    return "".join(line.strip() for line in pem.strip().splitlines() if "-----" not in line)


def dkim_txt_value(public_key_pem: str) -> str:
    """The DKIM TXT value for a PEM public key (SubjectPublicKeyInfo, base64 on one line)."""
    return f"v=DKIM1; k=rsa; p={pem_body(public_key_pem)}"


def deliverability_records(cp: ComponentPlan, public_ips: pulumi.Output[list[str]],
                           dkim_public: dict[str, pulumi.Output[str]]) -> pulumi.Output[list[dict]]:
    """SPF, DMARC and DKIM records to publish for each sending domain."""
    selector = cp.deployment.dkim.selector
    relay = cp.deployment.port25.relay if cp.deployment.outbound_mode == "relay" else None
    domains = list(cp.deployment.dkim.domains)
    keys = [dkim_public[d] for d in domains]

    def build(resolved: list[Any]) -> list[dict]:
        ips, pems = resolved[0], resolved[1:]
        records = []
        for domain, pem in zip(domains, pems):
            spf = " ".join(["v=spf1", *(f"ip4:{ip}" for ip in ips)]
                           + ([f"include:<the SPF of {relay.host}>"] if relay else []) + ["-all"])
            records += [
                {"name": domain, "type": "TXT", "value": spf,
                 "why": "SPF: the nodes' addresses" + (" and the smarthost's sending hosts" if relay else "")},
                {"name": f"_dmarc.{domain}", "type": "TXT",
                 "value": f"v=DMARC1; p=none; rua=mailto:dmarc-reports@{domain}",
                 "why": "DMARC: start with p=none and tighten once reports are clean"},
                {"name": f"{selector}._domainkey.{domain}", "type": "TXT", "value": dkim_txt_value(pem),
                 "why": "DKIM: the public half of the key kumo-infra generated"},
            ]
        return records

    return pulumi.Output.all(public_ips, *keys).apply(build)


# -- the HTTP API's TLS certificate ---------------------------------------------------------

# ECDSA P-256 with SHA-256, what KumoMTA makes for itself without a certificate (rcgen's default key
# pair in tls_helpers.rs make_server_config) and what every TLS client accepts.
API_TLS_ALGORITHM = "ECDSA"
API_TLS_CURVE = "P256"
API_TLS_VALIDITY_HOURS = 3 * 365 * 24
# The provider replaces the certificate when a plan runs this close to its expiry
# (terraform-provider-tls internal/provider/common_cert.go modifyPlanIfCertificateReadyForRenewal).
API_TLS_EARLY_RENEWAL_HOURS = 180 * 24
# An ECDSA key signs (digital_signature); key_encipherment is RSA key transport, not for this key.
API_TLS_USES = ("server_auth", "digital_signature")


@dataclass
class ApiTls:
    """The API listener's key and self-signed certificate, and how the certificate learns the
    nodes' public addresses (created after the secrets on every target)."""

    key: "pulumi_tls.PrivateKey"
    certificate: "pulumi_tls.SelfSignedCert"
    name_addresses: Callable[[pulumi.Output[list[str]]], None]


def api_tls_for(parent: pulumi.Resource, name: str, cp: ComponentPlan) -> ApiTls:
    """A key and a self-signed certificate for every node's hostname (DNS SANs) and public address
    (IP SANs), so a client that trusts this one certificate can verify any node by either name."""
    import pulumi_tls as tls

    names = Names(name)
    # An Output resolved later from another, carrying its resources as dependencies (pulumi/pulumi#17793,
    # in every SDK pyproject's pulumi>=3.200 admits).
    addresses, name_addresses = pulumi.deferred_output()
    # Protected like the DKIM keys: a new key changes what clients pinned. The certificate is not:
    # renewal and a changed set of nodes replace it, which protection would refuse.
    key = tls.PrivateKey(names.generated(API_TLS_KEY), algorithm=API_TLS_ALGORITHM, ecdsa_curve=API_TLS_CURVE,
                         opts=child(parent, protect=cp.deployment.lifecycle.protect))
    certificate = tls.SelfSignedCert(
        names.generated(API_TLS_CERT),
        private_key_pem=key.private_key_pem,
        subject=tls.SelfSignedCertSubjectArgs(common_name=cp.nodes[0].hostname,
                                              organization=f"kumo-infra {name}"),
        dns_names=[node.hostname for node in cp.nodes],
        ip_addresses=addresses,
        allowed_uses=list(API_TLS_USES),
        validity_period_hours=API_TLS_VALIDITY_HOURS,
        early_renewal_hours=API_TLS_EARLY_RENEWAL_HOURS,
        opts=child(parent))
    return ApiTls(key, certificate, name_addresses)


def public_key_pin(public_key_pem: str) -> str:
    """curl's --pinnedpubkey form of a PEM public key: sha256// and the base64 SHA-256 of its DER
    SubjectPublicKeyInfo. It names the key, so it survives the certificate's renewal."""
    return "sha256//" + base64.b64encode(hashlib.sha256(base64.b64decode(pem_body(public_key_pem))).digest()).decode()


API_TLS_NOTE = ("TLS with a certificate kumo-infra generated for this deployment, self-signed (no public CA "
                "vouches for it): save it (pulumi stack output api --json | jq -r .ca_certificate > api-ca.pem) "
                "and give it to the client (curl --cacert api-ca.pem); or pin pinned_public_key, which survives "
                "renewal (curl --pinnedpubkey checks the pin even with --insecure)")
API_ACCESS_NOTE = ("The hostname URLs need the nodes' forward A records (dns_records lists the ones to publish); "
                   "until they resolve, use ip_url: the certificate names every node's hostname and public "
                   "address. With KumoMTA's default ACL (assets/acls/default.toml) the API user may only inject "
                   "(POST /api/inject/v1); admin endpoints (bounce, suspend, metrics) answer only on each node's "
                   "loopback listener (kcli on the node), and /api/check-liveness answers anyone.")
API_RENEWAL_NOTE = (f"The certificate is valid {API_TLS_VALIDITY_HOURS // (365 * 24)} years; the first pulumi up "
                    f"in its last {API_TLS_EARLY_RENEWAL_HOURS // 24} days replaces it, as does a change of the "
                    "nodes' names or addresses. Nodes serve a new certificate once kumo-bootstrap runs again: "
                    "sudo /usr/local/sbin/kumo-bootstrap all on each node (on GCP a reboot also runs it). Clients "
                    "then need the new ca_certificate; pinned_public_key stays the same (the key is kept).")


def api_password_spec(deployment: Deployment) -> Optional[SecretSpec]:
    return next((s for s in secret_specs(deployment) if s.key == API_PASSWORD), None)


def read_password_command(deployment: Deployment, spec: SecretSpec) -> str:
    """The command that prints the secret (with the operator's own credentials)."""
    return deployment.target.secrets.read_command(deployment, spec)


def api_access(cp: ComponentPlan, public_ips: pulumi.Output[list[str]],
               api_tls: Optional[ApiTls]) -> Optional[pulumi.Output[dict]]:
    """How to reach the HTTP API from network.api_cidrs: one URL per node (by hostname, as the
    certificate names it, and by address), the user, where the password is kept (never the
    password), the certificate to trust. None when the API listens on loopback only."""
    d = cp.deployment
    spec = api_password_spec(d)
    if spec is None or api_tls is None:
        return None
    hostnames = [node.hostname for node in cp.nodes]
    note = API_ACCESS_NOTE + (f" {cp.target.api_read_note}" if cp.target.api_read_note else "")
    store = cp.target.secrets
    access: dict[str, Any] = {
        "user": API_USER,
        "secret_name": store.store_name(d, spec),
        "secret_reference": store.reference(d, spec),
        "read_password": read_password_command(d, spec),
        "allowed_from": list(d.network.api_cidrs),
        "tls": API_TLS_NOTE,
        "example": (f'curl --cacert api-ca.pem -u {API_USER}:"$PASSWORD" '
                    f"https://{hostnames[0]}:{API_TLS_PORT}/api/inject/v1 -H 'Content-Type: application/json' "
                    "-d @message.json"),
        "note": note,
        "certificate_renewal": API_RENEWAL_NOTE,
    }

    def build(resolved: list[Any]) -> dict:
        ips, certificate, public_key = resolved
        return {
            **access,
            "endpoints": [{"hostname": host, "url": f"https://{host}:{API_TLS_PORT}",
                           "ip_url": f"https://{ip}:{API_TLS_PORT}"} for host, ip in zip(hostnames, ips)],
            "ca_certificate": certificate,
            "pinned_public_key": public_key_pin(public_key),
        }

    return pulumi.Output.all(public_ips, api_tls.certificate.cert_pem, api_tls.key.public_key_pem).apply(build)


def subnet_cidr(network_block: str) -> str:
    """The nodes' subnet in a network kumo-infra creates: its first /24, or the whole block when smaller.

    ``network_block`` was validated with the config (an IPv4 block of the sizes the target accepts)."""
    net = ipaddress.ip_network(network_block)
    return str(next(net.subnets(new_prefix=max(net.prefixlen, 24))))


# Marks every taggable resource of an ephemeral deployment, so what a failed destroy left behind can
# be found by it (aws resourcegroupstaggingapi, az resource list --tag, gcloud --filter=labels.KEY).
# One form on every cloud: a GCP label key takes lowercase letters, digits, "-" and "_" only (no ":"),
# starting with a letter.
EPHEMERAL_TAG = "kumo-infra-ephemeral"


def base_tags(component_name: str, *, ephemeral: bool = False) -> dict[str, str]:
    """Tags (GCP: labels) on every resource of a component that takes them."""
    tags = {"kumo-infra": component_name, "managed-by": "kumo-infra"}
    return {**tags, EPHEMERAL_TAG: "true"} if ephemeral else tags

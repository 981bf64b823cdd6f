"""What every cloud component shares: its arguments, its node plan and its outputs.

``AwsKumoMta``, ``AzureKumoMta`` and ``GcpKumoMta`` take the same arguments
(the ``kumo:deployment`` object and the relay password) and publish the same
outputs, so a program can switch clouds by switching the class.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional, TypedDict

import pulumi

from .. import catalog
from ..bootstrap import render_user_data
from ..bootstrap.policy import API_TLS_PORT
from ..config import Deployment, parse_deployment
from ..errors import ConfigError
from ..netplan import Rule, firewall_rules
from ..secretspec import (API_PASSWORD, API_TLS_CERT, API_TLS_KEY, API_USER, RELAY_PASSWORD, SecretSpec,
                          azure_vault_name, reference, secret_specs, store_name)

if TYPE_CHECKING:
    import pulumi_tls
from ..sizing import Plan
from ..stackconfig import needs_relay_password, plan_for


class KumoMtaArgs(TypedDict, total=False):
    """Arguments of every KumoMTA component.

    deployment: the ``kumo:deployment`` object as plain data (the stack config's shape);
        it decides which resources exist, so it cannot be an unresolved Output.
    relay_password: the smarthost password, as a Pulumi secret (relay mode only).
    """

    deployment: dict[str, Any]
    relay_password: pulumi.Input[str]


class KumoMtaComponent(pulumi.ComponentResource):
    """The outputs every cloud's component publishes, with the same keys (docs/component-spec.md)."""

    nodes: pulumi.Output[list[dict]]
    public_ips: pulumi.Output[list[str]]
    dns_records: pulumi.Output[list[dict]]  # forward A records the operator must publish
    sizing: pulumi.Output[dict]
    secret_names: pulumi.Output[list[str]]  # names in the cloud's secret store, never values
    deliverability_records: pulumi.Output[list[dict]]  # SPF, DMARC and DKIM TXT records to publish
    api: Optional[pulumi.Output[dict]]  # how to reach the HTTP API (api_access); None without network.api_cidrs
    # The API's key and certificate (secrets_for makes them with network.api_cidrs); _publish gives
    # the certificate the nodes' addresses, which the certificate waits for until then.
    _api_tls: Optional["ApiTls"] = None

    def _publish(self, cp: "ComponentPlan", node_outputs: list[pulumi.Output[dict]],
                 public_ips: list[pulumi.Input[str]], secrets: list["NodeSecret"],
                 dkim_public: dict[str, pulumi.Output[str]], **extra: pulumi.Input[Any]) -> None:
        """Set the shared outputs (and a cloud's ``extra`` ones), then register them: the component's last step."""
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
                               **{k: v for k, v in {"api": self.api, **extra}.items() if v is not None}})


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
    """Everything a cloud component decides before it creates a resource."""

    deployment: Deployment
    plan: Plan
    nodes: tuple[NodePlan, ...]
    rules: tuple[Rule, ...]

    @property
    def set_ptr(self) -> bool:
        """PTRs need the forward record first: set them when kumo-infra creates it or it exists.

        Azure checks that the reverse FQDN already resolves when the PTR is set, so there a
        record created in the same run is not enough (clouds/azure.py explains the two runs)."""
        if self.deployment.cloud == "azure":
            return self.deployment.dns.forward_records_exist
        return bool(self.deployment.dns.zone) or self.deployment.dns.forward_records_exist

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


def prepare(args: KumoMtaArgs, cloud: str) -> ComponentPlan:
    """Validate the arguments and plan the nodes. Raises ConfigError on bad input."""
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
    if deployment.cloud != cloud:
        raise ConfigError(f"this is the {cloud} component but the deployment's cloud is '{deployment.cloud}'",
                          "kumo:deployment.cloud")
    if needs_relay_password(deployment) and args.get("relay_password") is None:
        raise ConfigError("relay mode needs the smarthost password (args['relay_password'], from the secret "
                          "kumo:relayPassword: pulumi config set --secret kumo:relayPassword ...)", "kumo:relayPassword")
    plan = plan_for(deployment)
    nodes = tuple(NodePlan(i, f"node{i + 1}", deployment.node_hostname(i, plan.nodes), deployment, plan)
                  for i in range(plan.nodes))
    return ComponentPlan(deployment, plan, nodes, tuple(firewall_rules(deployment)))


def node_output(cp: ComponentPlan, node: NodePlan, *, public_ip: pulumi.Input[str],
                private_ip: pulumi.Input[str]) -> pulumi.Output[dict]:
    """One node's outputs, the same keys on every cloud."""
    return pulumi.Output.all(public_ip, private_ip).apply(lambda ips: {
        "name": node.key,
        "hostname": node.hostname,
        "public_ip": ips[0],
        "private_ip": ips[1],
        "ptr": node.hostname if cp.set_ptr else None,
        "instance_type": cp.plan.instance_type,
        "spool": cp.plan.spool_storage,
        "forward_record": {"name": node.hostname, "type": "A", "value": ips[0],
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
                    depends_on: Optional[list[pulumi.Resource]] = None) -> pulumi.ResourceOptions:
    """Options for a machine: a changed bootstrap never replaces it unless the operator opts in,
    and ``fixed_props`` never do: a newer image of the OS (the look-up follows the vendor's latest
    image; the running machine keeps its own and is patched by its package manager), and settings
    a cloud takes only when the machine is created."""
    ignore = [] if cp.deployment.lifecycle.replace_on_bootstrap_change else list(user_data_props)
    ignore += list(fixed_props or [])
    return pulumi.ResourceOptions(parent=parent, ignore_changes=ignore, protect=cp.deployment.lifecycle.protect,
                                  depends_on=depends_on or [])


# -- secrets and deliverability records (issue 5) -----------------------------------------

@dataclass(frozen=True)
class NodeSecret:
    """One secret the component stores in the cloud's secret store for the nodes to fetch."""

    spec: SecretSpec
    name: str  # the name in the store (secretspec.store_name)
    value: pulumi.Output[str]  # always a Pulumi secret
    # False when the value is made from the machines themselves (the API certificate names the
    # nodes' public addresses, which on AWS exist only once each machine does): the machines must not
    # wait for it, or neither would ever be created; the node's boot-time fetch retries until it is
    # stored (kumo-bootstrap step_secrets, up to KUMO_SECRET_WAIT_S).
    machines_wait: bool = True


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


def secrets_for(parent: KumoMtaComponent, name: str, cp: ComponentPlan, args: KumoMtaArgs) -> tuple[
        list[NodeSecret], dict[str, pulumi.Output[str]]]:
    """The deployment's secrets as Pulumi secrets, and each DKIM domain's public key (PEM).

    The relay password comes from the caller (a Pulumi secret); each DKIM key pair, the API
    password and the API's TLS key are generated here and kept only in Pulumi's encrypted state
    and the cloud's secret store. The API certificate names the nodes' public addresses, which
    the component creates later: ``_publish`` hands them over (ApiTls.name_addresses).
    """
    import pulumi_tls as tls  # imported here: only deployments that store secrets need it

    secrets: list[NodeSecret] = []
    dkim_public: dict[str, pulumi.Output[str]] = {}
    api_tls = api_tls_for(parent, name, cp) if cp.deployment.network.api_cidrs else None
    parent._api_tls = api_tls
    for spec in secret_specs(cp.deployment):
        machines_wait = True
        if spec.key == RELAY_PASSWORD:
            value = pulumi.Output.secret(args["relay_password"])  # prepare() refused its absence
        elif spec.key == API_PASSWORD:
            value = generated_password(parent, f"{name}-{spec.key}", cp, length=API_PASSWORD_LENGTH,
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
                machines_wait = cp.deployment.cloud not in ADDRESS_AFTER_MACHINE
        else:
            key = tls.PrivateKey(f"{name}-{spec.key}", algorithm="RSA", rsa_bits=2048,
                                 opts=child(parent, protect=cp.deployment.lifecycle.protect))
            value = pulumi.Output.secret(key.private_key_pem)
            dkim_public[spec.dkim_domain or ""] = key.public_key_pem
        secrets.append(NodeSecret(spec, store_name(cp.deployment, spec), value, machines_wait))
    return secrets, dkim_public


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

# Clouds where a node's public address exists only once its machine does (AWS: the Elastic IP is
# associated as it is created, Eip(instance=...)); elsewhere the address comes first.
ADDRESS_AFTER_MACHINE = frozenset({"aws"})
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
    nodes' public addresses (created after the secrets on every cloud)."""

    key: "pulumi_tls.PrivateKey"
    certificate: "pulumi_tls.SelfSignedCert"
    name_addresses: Callable[[pulumi.Output[list[str]]], None]


def api_tls_for(parent: pulumi.Resource, name: str, cp: ComponentPlan) -> ApiTls:
    """A key and a self-signed certificate for every node's hostname (DNS SANs) and public address
    (IP SANs), so a client that trusts this one certificate can verify any node by either name."""
    import pulumi_tls as tls

    # An Output resolved later from another, carrying its resources as dependencies (pulumi/pulumi#17793,
    # in every SDK pyproject's pulumi>=3.200 admits).
    addresses, name_addresses = pulumi.deferred_output()
    # Protected like the DKIM keys: a new key changes what clients pinned. The certificate is not:
    # renewal and a changed set of nodes replace it, which protection would refuse.
    key = tls.PrivateKey(f"{name}-{API_TLS_KEY}", algorithm=API_TLS_ALGORITHM, ecdsa_curve=API_TLS_CURVE,
                         opts=child(parent, protect=cp.deployment.lifecycle.protect))
    certificate = tls.SelfSignedCert(
        f"{name}-{API_TLS_CERT}",
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
    """The cloud CLI command that prints the secret (with the operator's own credentials)."""
    name = store_name(deployment, spec)
    if deployment.cloud == "aws":
        return (f"aws secretsmanager get-secret-value --region {deployment.region} --secret-id {name} "
                "--query SecretString --output text")
    if deployment.cloud == "azure":
        return f"az keyvault secret show --vault-name {azure_vault_name(deployment)} --name {name} --query value -o tsv"
    project = deployment.gcp.project if deployment.gcp else ""
    return f"gcloud secrets versions access latest --secret={name} --project={project}"


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
    note = API_ACCESS_NOTE
    if d.cloud == "azure":
        note += (" The Key Vault accepts data-plane reads only from the nodes' subnet: to read the password "
                 "from your machine, allow its public address for a while (az keyvault network-rule add) "
                 "and give yourself the role Key Vault Secrets User on the secret.")
    access: dict[str, Any] = {
        "user": API_USER,
        "secret_name": store_name(d, spec),
        "secret_reference": reference(d, spec),
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

    ``network_block`` was validated with the config (an IPv4 block of the sizes the cloud accepts)."""
    net = ipaddress.ip_network(network_block)
    return str(next(net.subnets(new_prefix=max(net.prefixlen, 24))))


def base_tags(component_name: str) -> dict[str, str]:
    """Tags (GCP: labels) on every resource of a component that takes them."""
    return {"kumo-infra": component_name, "managed-by": "kumo-infra"}

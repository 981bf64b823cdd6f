"""What every cloud component shares: its arguments, its node plan and its outputs.

``AwsKumoMta``, ``AzureKumoMta`` and ``GcpKumoMta`` take the same arguments
(the ``kumo:deployment`` object and the relay password) and publish the same
outputs, so a program can switch clouds by switching the class.
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass
from typing import Any, Optional, TypedDict

import pulumi

from .. import catalog
from ..bootstrap import render_user_data
from ..bootstrap.policy import API_TLS_PORT
from ..config import Deployment, parse_deployment
from ..errors import ConfigError
from ..netplan import Rule, firewall_rules
from ..secretspec import (API_PASSWORD, API_USER, RELAY_PASSWORD, SecretSpec, azure_vault_name, reference,
                          secret_specs, store_name)
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
        self.api = api_access(cp, self.public_ips)
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


def secrets_for(parent: pulumi.Resource, name: str, cp: ComponentPlan, args: KumoMtaArgs) -> tuple[
        list[NodeSecret], dict[str, pulumi.Output[str]]]:
    """The deployment's secrets as Pulumi secrets, and each DKIM domain's public key (PEM).

    The relay password comes from the caller (a Pulumi secret); each DKIM key pair and the
    API password are generated here and kept only in Pulumi's encrypted state and the cloud's
    secret store.
    """
    import pulumi_tls as tls  # imported here: only deployments that store secrets need it

    secrets: list[NodeSecret] = []
    dkim_public: dict[str, pulumi.Output[str]] = {}
    for spec in secret_specs(cp.deployment):
        if spec.key == RELAY_PASSWORD:
            value = pulumi.Output.secret(args["relay_password"])  # prepare() refused its absence
        elif spec.key == API_PASSWORD:
            value = generated_password(parent, f"{name}-{spec.key}", cp, length=API_PASSWORD_LENGTH,
                                       special=False, min_upper=1, min_lower=1, min_numeric=1)
        else:
            key = tls.PrivateKey(f"{name}-{spec.key}", algorithm="RSA", rsa_bits=2048,
                                 opts=child(parent, protect=cp.deployment.lifecycle.protect))
            value = pulumi.Output.secret(key.private_key_pem)
            dkim_public[spec.dkim_domain or ""] = key.public_key_pem
        secrets.append(NodeSecret(spec, store_name(cp.deployment, spec), value))
    return secrets, dkim_public


def dkim_txt_value(public_key_pem: str) -> str:
    """The DKIM TXT value for a PEM public key (SubjectPublicKeyInfo, base64 on one line)."""
    body = "".join(line.strip() for line in public_key_pem.strip().splitlines() if "-----" not in line)
    return f"v=DKIM1; k=rsa; p={body}"


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


# KumoMTA's HTTP listener with use_tls and no tls_certificate "dynamically allocate[s] a self-signed
# certificate" (KumoCorp/kumomta docs/reference/kumo/start_http_listener/tls_certificate.md).
API_TLS_NOTE = ("TLS with a self-signed certificate that KumoMTA generates itself: no public CA vouches for it, "
                "so a client must be told to trust it (or to skip verification knowingly)")


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


def api_access(cp: ComponentPlan, public_ips: pulumi.Output[list[str]]) -> Optional[pulumi.Output[dict]]:
    """How to reach the HTTP API from network.api_cidrs: one URL per node, the user, where the
    password is kept (never the password). None when the API listens on loopback only."""
    d = cp.deployment
    spec = api_password_spec(d)
    if spec is None:
        return None
    hostnames = [node.hostname for node in cp.nodes]
    access: dict[str, Any] = {
        "user": API_USER,
        "secret_name": store_name(d, spec),
        "secret_reference": reference(d, spec),
        "read_password": read_password_command(d, spec),
        "allowed_from": list(d.network.api_cidrs),
        "tls": API_TLS_NOTE,
    }
    if d.cloud == "azure":
        access["note"] = ("the Key Vault accepts data-plane reads only from the nodes' subnet: to read the password "
                          "from your machine, allow its public address for a while (az keyvault network-rule add) "
                          "and give yourself the role Key Vault Secrets User on the secret")
    return public_ips.apply(lambda ips: {
        **access,
        "endpoints": [{"hostname": host, "url": f"https://{ip}:{API_TLS_PORT}"} for host, ip in zip(hostnames, ips)],
    })


def subnet_cidr(network_block: str) -> str:
    """The nodes' subnet in a network kumo-infra creates: its first /24, or the whole block when smaller.

    ``network_block`` was validated with the config (an IPv4 block of the sizes the cloud accepts)."""
    net = ipaddress.ip_network(network_block)
    return str(next(net.subnets(new_prefix=max(net.prefixlen, 24))))


def base_tags(component_name: str) -> dict[str, str]:
    """Tags (GCP: labels) on every resource of a component that takes them."""
    return {"kumo-infra": component_name, "managed-by": "kumo-infra"}

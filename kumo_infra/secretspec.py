"""Which secrets a deployment has, where the cloud keeps them and where the node puts them.

Pure: no Pulumi. Secret *values* never pass through here or through the
rendered bootstrap: the node fetches each one at boot from its cloud's secret
store, with its own identity, by the reference computed here. Names are
deterministic, so the bootstrap can be rendered before any resource exists.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from .config import Deployment

SECRETS_DIR = "/opt/kumomta/etc/secrets"
DKIM_DIR = "/opt/kumomta/etc/dkim"
RELAY_PASSWORD = "relay-password"
RELAY_PASSWORD_PATH = f"{SECRETS_DIR}/{RELAY_PASSWORD}"


@dataclass(frozen=True)
class SecretSpec:
    key: str  # stable id, also the secret's name in the store: [a-z0-9-]
    machine_path: str  # where kumo-bootstrap writes the value (root:kumod 0640)
    description: str
    dkim_domain: str | None = None


def dkim_key(domain: str, selector: str) -> str:
    return "dkim-" + re.sub(r"[^a-z0-9]+", "-", f"{domain}-{selector}".lower()).strip("-")


def secret_specs(deployment: Deployment) -> list[SecretSpec]:
    specs = []
    if deployment.outbound_mode == "relay":
        specs.append(SecretSpec(RELAY_PASSWORD, RELAY_PASSWORD_PATH,
                                f"password of the smarthost {deployment.port25.relay.host if deployment.port25.relay else ''}"))
    selector = deployment.dkim.selector
    for domain in deployment.dkim.domains:
        specs.append(SecretSpec(dkim_key(domain, selector), f"{DKIM_DIR}/{domain}/{selector}.key",
                                f"DKIM private key of {domain} (selector {selector})", domain))
    return specs


def store_name(deployment: Deployment, spec: SecretSpec) -> str:
    """The secret's name in the cloud's store."""
    if deployment.cloud == "aws":
        return f"kumo-infra/{deployment.name}/{spec.key}"
    if deployment.cloud == "gcp":
        return f"{deployment.name}-{spec.key}"
    return spec.key  # Azure: unique within the deployment's own vault


def azure_vault_name(deployment: Deployment) -> str:
    """Key Vault names are global (3-24 chars): the deployment name plus a stable hash."""
    rg = deployment.azure.resource_group if deployment.azure and deployment.azure.resource_group else ""
    digest = hashlib.sha256(f"{deployment.name}|{deployment.region}|{rg}".encode()).hexdigest()[:6]
    return f"{deployment.name[:15].rstrip('-')}-{digest}"


def reference(deployment: Deployment, spec: SecretSpec) -> str:
    """What the node needs to fetch the secret with its own identity (no credential in it)."""
    if deployment.cloud == "aws":
        return f"aws:{deployment.region}:{store_name(deployment, spec)}"
    if deployment.cloud == "azure":
        return f"azure:https://{azure_vault_name(deployment)}.vault.azure.net:{store_name(deployment, spec)}"
    project = deployment.gcp.project if deployment.gcp else ""
    return f"gcp:{project}:{store_name(deployment, spec)}"


def secrets_list(deployment: Deployment) -> str:
    """/etc/kumo-infra/secrets.list: one 'reference<TAB>path' line per secret; no values."""
    lines = ["# Secrets kumo-bootstrap fetches with this machine's identity: reference<TAB>path. No values."]
    lines += [f"{reference(deployment, s)}\t{s.machine_path}" for s in secret_specs(deployment)]
    return "\n".join(lines) + "\n"

"""``kumo-infra plan``: what ``pulumi up`` would create, computed offline.

Runs the real program (kumo_infra.program) under the Pulumi SDK's mock engine
(kumo_infra.offline). Secrets are replaced by a placeholder that never leaves
this module unmasked.
"""

from __future__ import annotations

import json
from typing import Any

from . import offline, program
from .stackconfig import SECRET_KEYS, StackConfig, needed_secret_keys

SECRET_PLACEHOLDER = "kumo-plan-secret-placeholder"
SECRET_SHOWN = "[secret]"

# Inputs worth a glance in the table, by the engine's (camelCase) name.
KEY_INPUTS = (
    "instanceType", "machineType", "hardwareProfile", "ami", "bootDisk", "storageProfile", "rootBlockDevice",
    "size", "type", "sizeGb", "diskSizeGB", "cidrBlock", "addressSpace", "addressPrefix", "ipCidrRange",
    "fromPort", "toPort", "ipProtocol", "cidrIpv4", "cidrIpv6", "securityRules", "allows", "denies",
    "sourceRanges", "destinationRanges", "direction", "domainName", "dnsSettings", "records", "rrdatas",
    "metadataOptions", "networkInterfaces", "enableAcceleratedNetworking", "scratchDisks", "attachedDisks",
    "networkPerformanceConfig", "deviceName", "domain", "securityProfile", "serviceEndpoints",
)


def stack_config_values(stack: StackConfig) -> tuple[dict[str, Any], list[str]]:
    """The stack's config with every secret replaced by a placeholder the plan can carry."""
    values = {k: v for k, v in stack.values.items() if k not in SECRET_KEYS}
    secret_keys = []
    needed = needed_secret_keys(stack.deployment)
    for key in SECRET_KEYS:
        if key in stack.secrets_set or key in needed:
            values[key] = SECRET_PLACEHOLDER
            secret_keys.append(key)
    return values, secret_keys


def _mask(value: Any) -> Any:
    if offline.is_secret(value):  # whatever the value, a secret shows as [secret]
        return SECRET_SHOWN
    if isinstance(value, str):
        return value.replace(SECRET_PLACEHOLDER, SECRET_SHOWN)
    if isinstance(value, list):
        return [_mask(v) for v in value]
    if isinstance(value, dict):
        return {k: _mask(v) for k, v in value.items()}
    return value


def run_offline(stack: StackConfig) -> tuple["offline.OfflineResult", tuple[str, ...]]:
    """The program run offline over ``stack`` (secret config values as placeholders), and the keys of
    those secrets. Raises ConfigError (the CLI exits 2) for input the program or a component refuses,
    such as a bootstrap above AWS's user-data limit."""
    values, secret_keys = stack_config_values(stack)
    try:
        return offline.run(program.run, values, stack=stack.stack, secret_keys=secret_keys), tuple(secret_keys)
    except program.StackConfigError as exc:
        raise exc.config_error from None


def run_plan(stack: StackConfig) -> dict[str, Any]:
    """The plan of ``stack``. Raises ConfigError as run_offline does."""
    return plan_document(stack, run_offline(stack)[0])


def plan_document(stack: StackConfig, result: "offline.OfflineResult") -> dict[str, Any]:
    """The plan document (secrets masked) of an offline run over ``stack``."""
    return _mask({
        "stack": stack.stack,
        "cloud": stack.deployment.cloud,
        # Registration order depends on when outputs resolve; sorted, the plan is stable.
        "resources": [r.to_dict() for r in sorted(result.resources, key=lambda r: (r.name, r.type))],
        "outputs": result.outputs,
    })


def _ints(value: Any) -> Any:
    """The engine carries every number as a float; show 25 rather than 25.0."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_ints(v) for v in value]
    if isinstance(value, dict):
        return {k: _ints(v) for k, v in value.items()}
    return value


def _brief(value: Any, limit: int = 60) -> str:
    value = _ints(value)
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"), sort_keys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def format_plan(doc: dict[str, Any]) -> str:
    rows = []
    for r in doc["resources"]:
        settings = [f"{k}={_brief(r['inputs'][k])}" for k in KEY_INPUTS if k in r["inputs"]][:4]
        rows.append((r["type"], r["name"], "; ".join(settings)))
    tw = max(len(t) for t, _, _ in rows)
    nw = max(len(n) for _, n, _ in rows)
    lines = [f"stack {doc['stack']} ({doc['cloud']}): {len(rows)} resources would be created", ""]
    lines.append(f"{'TYPE'.ljust(tw)}  {'NAME'.ljust(nw)}  KEY SETTINGS")
    lines += [f"{t.ljust(tw)}  {n.ljust(nw)}  {s}" for t, n, s in rows]
    outputs = doc["outputs"]
    lines += ["", "nodes:"]
    for node in outputs.get("nodes", []):
        lines.append(f"  {node['hostname']}: {node['instance_type']}, public {node['public_ip']}, "
                     f"PTR {node['ptr'] or 'not set by kumo-infra'}, spool {node['spool']}")
    for rec in outputs.get("dns_records", []):
        lines.append(f"  publish: {rec['name']} {rec['type']} {rec['value']}")
    api = outputs.get("api")
    if api:
        lines += ["", f"HTTP API (from {', '.join(api['allowed_from'])}): user {api['user']}, password in the secret "
                      f"{api['secret_name']} ({api['read_password']}); {api['tls']}"]
        lines += [f"  {e['hostname']}: {e['url']} (by address: {e['ip_url']})" for e in api["endpoints"]]
        lines.append(f"  certificate to trust: the api output's ca_certificate; pin: {api['pinned_public_key']}")
    lines += ["", "Values only a cloud can know (image ids, addresses) are placeholders "
                  "(192.0.2.x, '(placeholder)'); secrets show as [secret]."]
    return "\n".join(lines)

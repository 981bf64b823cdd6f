"""Outbound port 25: what each target allows, what kumo-infra does, and what the operator must do.

Pure: used by ``kumo-infra port25`` (before anything exists) and by the stack output
``port25`` (with the real addresses). The keys every report has are built here; each target
adds its own (Target.port25.describe): no cloud has an API to lift the block, so AWS's
prepares every answer its "Request to remove email sending limitations" form asks.
"""

from __future__ import annotations

from typing import Any

from . import targets
from .config import Deployment
from .sizing import Plan

PENDING = "allocated by pulumi up (see the stack output port25)"


def report(deployment: Deployment, plan: Plan, public_ips: list[str] | None = None) -> dict[str, Any]:
    hostnames = [deployment.node_hostname(i, plan.nodes) for i in range(plan.nodes)]
    ips = list(public_ips) if public_ips else [PENDING] * plan.nodes
    mode = deployment.outbound_mode
    out: dict[str, Any] = {
        "cloud": deployment.cloud,
        "requested": deployment.port25.outbound,
        "mode": mode,
        "nodes": [{"hostname": h, "public_ip": ip, "reverse_dns": h} for h, ip in zip(hostnames, ips)],
        "probe": "at every first boot each node tries TCP 25 to "
                 f"{', '.join(deployment.port25.probe_hosts)} and records open/blocked in "
                 "/var/lib/kumo-infra/status.json and on the console",
    }
    relay = deployment.port25.relay
    relay_text = (f"every message goes through {relay.host}:{relay.port} with STARTTLS required and AUTH PLAIN as "
                  f"{relay.username}; the password is fetched at boot from the cloud's secret store") if relay else ""
    # The target's own keys: the situation there, what the operator must do, where it is documented.
    deployment.target.port25.describe(deployment, plan, hostnames, ips, out)
    out.setdefault("kumo_infra_does", (  # a target may say otherwise (describe sets it)
        ["opens inbound 25", "allows outbound 25 in the firewall",
         "reserves a static IP per node and sets its PTR once the forward record exists",
         "delivers directly to MX hosts", "reports the probe result"] if mode == "direct" else
        ["opens inbound 25", relay_text,
         f"allows outbound mail in the firewall only to port {relay.port if relay else '(the relay port)'} "
         "(no outbound 25: the probe reports blocked)",
         "stores the relay password in the secret store, readable only by the nodes",
         "reports the probe result (blocked is expected and harmless in relay mode)"]))
    return out


def format_report(rep: dict[str, Any]) -> str:
    lines = [f"cloud: {rep['cloud']}   outbound port 25 mode: {rep['mode']} (asked: {rep['requested']})", "",
             rep["situation"], ""]
    lines.append("kumo-infra does:")
    lines += [f"  - {x}" for x in rep["kumo_infra_does"]]
    lines.append("you must:")
    lines += [f"  - {x}" for x in rep["operator_must"]]
    lines += targets.get(rep["cloud"]).port25.format_extra(rep)
    lines += ["", f"probe: {rep['probe']}"]
    return "\n".join(lines)

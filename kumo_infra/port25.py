"""Outbound port 25: what each cloud allows, what kumo-infra does, and what the operator must do.

Pure: used by ``kumo-infra port25`` (before anything exists) and by the stack output
``port25`` (with the real addresses). No cloud has an API to lift the block, so for AWS
this prepares every answer the "Request to remove email sending limitations" form asks.
"""

from __future__ import annotations

from typing import Any

from .config import Deployment, direct_allowed
from .sizing import Plan

AWS_FORM = "https://console.aws.amazon.com/support/contacts#/rdns-limits"
AWS_DOC = "https://repost.aws/knowledge-center/ec2-port-25-throttle"
AZURE_DOC = "https://learn.microsoft.com/azure/virtual-network/troubleshoot-outbound-smtp-connectivity"
GCP_DOC = "https://cloud.google.com/compute/docs/tutorials/sending-mail"
PENDING = "allocated by pulumi up (see the stack output port25)"


def use_case(deployment: Deployment, plan: Plan, hostnames: list[str]) -> str:
    """A draft of the AWS form's use-case text, from what the stack config knows."""
    per_day = deployment.sizing.messages_per_hour * 24
    domains = ", ".join(deployment.dkim.domains) or "[your sending domains]"
    signing = ("messages are DKIM-signed and the domains publish SPF and DMARC" if deployment.dkim.domains
               else "[say how messages are DKIM-signed and which SPF and DMARC records the domains publish]")
    return (
        f"We run KumoMTA, an open-source MTA, on {plan.nodes} EC2 instance(s) in {deployment.region} "
        f"({', '.join(hostnames)}) to deliver mail for {domains}. Expected volume: about "
        f"{deployment.sizing.messages_per_hour:,} messages per hour ({per_day:,} per day), averaging "
        f"{deployment.sizing.avg_message_kb:g} kB. Each Elastic IP has reverse DNS set to its host name, which "
        f"resolves back to it; {signing}. "
        "[Describe how recipients opted in, how you handle bounces and complaints, and how you remove "
        "unsubscribed addresses: AWS asks for this.]"
    )


def report(deployment: Deployment, plan: Plan, public_ips: list[str] | None = None) -> dict[str, Any]:
    hostnames = [deployment.node_hostname(i, plan.nodes) for i in range(plan.nodes)]
    ips = list(public_ips) if public_ips else [PENDING] * plan.nodes
    mode = deployment.outbound_mode
    allowed, why_not = direct_allowed(deployment)
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
    if deployment.cloud == "aws":
        out["situation"] = ("AWS blocks outbound port 25 on every EC2 instance until a removal request is granted; "
                            "there is no API for it.")
        out["request"] = {
            "form": AWS_FORM,
            "documentation": AWS_DOC,
            "region": deployment.region,
            "elastic_ips": ips,
            "reverse_dns": [{"elastic_ip": ip, "name": h} for h, ip in zip(hostnames, ips)],
            "use_case": use_case(deployment, plan, hostnames),
        }
        out["operator_must"] = (["submit the form above (same form sets the reverse DNS if kumo-infra could not)",
                                 "wait for AWS's answer; until then mail to MX hosts queues (the probe says blocked)"]
                                if mode == "direct" else ["nothing for port 25: mail leaves through the smarthost"])
    elif deployment.cloud == "azure":
        kind = deployment.azure.subscription_type if deployment.azure else "pay-as-you-go"
        out["subscription_type"] = kind
        out["documentation"] = AZURE_DOC
        if allowed:
            out["situation"] = ("EA and MCA-E subscriptions can send on port 25; Enterprise Dev/Test can after the "
                                "portal self-service.")
            out["operator_must"] = (["Dev/Test only: Virtual network > Diagnose and solve > 'Cannot send email "
                                     "(SMTP-Port 25)', then deallocate and start the VMs"] if kind == "dev-test"
                                    else ["nothing: port 25 is open for this subscription type"])
        else:
            out["situation"] = why_not + "; Azure recommends an authenticated relay on 587."
            out["operator_must"] = ["keep the smarthost account in good standing (kumo:relayPassword)"]
    else:
        out["situation"] = why_not + "; 587 and 2525 are open."
        out["documentation"] = GCP_DOC
        out["operator_must"] = ["keep the smarthost account in good standing (kumo:relayPassword)"]
    out["kumo_infra_does"] = (
        ["opens inbound 25", "allows outbound 25 in the firewall",
         "reserves a static IP per node and sets its PTR once the forward record exists",
         "delivers directly to MX hosts", "reports the probe result"] if mode == "direct" else
        ["opens inbound 25", relay_text,
         f"allows outbound mail in the firewall only to port {relay.port if relay else '(the relay port)'} "
         "(no outbound 25: the probe reports blocked)",
         "stores the relay password in the secret store, readable only by the nodes",
         "reports the probe result (blocked is expected and harmless in relay mode)"])
    return out


def format_report(rep: dict[str, Any]) -> str:
    lines = [f"cloud: {rep['cloud']}   outbound port 25 mode: {rep['mode']} (asked: {rep['requested']})", "",
             rep["situation"], ""]
    lines.append("kumo-infra does:")
    lines += [f"  - {x}" for x in rep["kumo_infra_does"]]
    lines.append("you must:")
    lines += [f"  - {x}" for x in rep["operator_must"]]
    if "request" in rep:
        req = rep["request"]
        lines += ["", f"AWS request to remove email sending limitations: {req['form']}",
                  f"  region: {req['region']}"]
        for entry in req["reverse_dns"]:
            lines.append(f"  Elastic IP {entry['elastic_ip']} -> reverse DNS {entry['name']}")
        lines += ["  use case (draft, complete the bracketed part):", f"    {req['use_case']}"]
    lines += ["", f"probe: {rep['probe']}"]
    return "\n".join(lines)

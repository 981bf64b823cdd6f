"""Machines that already exist (VMware, bare metal, any VM): KumoMTA installed over SSH.

kumo-infra creates no machine, disk, network, firewall or DNS record here. For each host in
``kumo:deployment.ssh.hosts`` it copies the rendered installer over SSH (the host key pinned,
never trusted on first use) and runs it, the deployment's secrets on its standard input; the
A and PTR records are listed for the operator to publish. Deleting the stack changes nothing
on the machines (README, "Existing machines over SSH").
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Any, Callable, Optional

from ...forms import numbered_hostname
from .. import Port25Facts, SecretStore, Target
from . import offline
from .config import PRIVATE_KEY_CONFIG, SshHost, SshSection, ip_literal, parse_spool_device

if TYPE_CHECKING:
    from ...config import Deployment
    from ...secretspec import SecretSpec
    from ...sizing import Plan

__all__ = ["TARGET", "SshSection", "SshHost", "PRIVATE_KEY_CONFIG", "hosts", "node_hostnames"]

TITLE = "Existing machines over SSH (VMware, bare metal, any VM)"
# A small valid deployment (tests/test_targets.py runs the target's facts on it, the hostile
# corpus takes each host field's valid value from it): one host, every field of it given.
EXAMPLE = {
    "cloud": "ssh", "name": "kumo-ssh", "hostname": "mta.example.com", "os": "debian12",
    "port25": {"outbound": "direct"},
    "ssh": {"hosts": [{
        "address": "10.0.0.10", "public_ip": "192.0.2.10", "hostname": "mta1.example.com", "user": "deploy",
        "port": 2222, "private_address": "10.0.1.10", "spool_device": "/dev/disk/by-id/wwn-0x5000c500a1b2c3d4",
        "host_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKoZYfLZGWV7DyQqkvFqSRe2jJp3sEA2k4etLfWd47R7"}]},
}


def hosts(d: "Deployment") -> list[SshHost]:
    return list(d.ssh.hosts) if getattr(d, "ssh", None) else []


def node_hostnames(d: "Deployment") -> list[str]:
    """Each host's node name: its own hostname, else kumo:deployment.hostname numbered as on every target."""
    given = hosts(d)
    count = max(1, len(given))
    return [h.hostname or numbered_hostname(d.hostname, i, count) for i, h in enumerate(given)] or [d.hostname]


def node_count(d: "Deployment") -> int:
    return max(1, len(hosts(d)))


# -- secrets: delivered over the SSH connection, kept in Pulumi state and on the node ---------------

def store_name(d: "Deployment", spec: "SecretSpec") -> str:
    return spec.key


def reference(d: "Deployment", spec: "SecretSpec") -> str:
    # kumo-fetch-secret's "delivered" backend: the value the installer staged from its standard input.
    return f"delivered:{spec.key}"


def read_command(d: "Deployment", spec: "SecretSpec") -> str:
    """Where the value lives besides Pulumi's encrypted state: on every node, root:kumod 0640."""
    first = hosts(d)[0] if hosts(d) else None
    if first is None:
        return f"sudo cat {spec.machine_path}"
    port = f"-p {first.port} " if first.port != 22 else ""
    read = f"cat {spec.machine_path}" if first.user == "root" else f"sudo cat {spec.machine_path}"
    return f"ssh {port}{first.user}@{first.address} {read}"


API_READ_NOTE = ("The API password exists only in Pulumi's encrypted state and on each node (root:kumod 0640): "
                 "read_password prints it from the first node over SSH, with your own login.")


# -- outbound port 25 --------------------------------------------------------------------------

def direct_allowed(d: "Deployment") -> tuple[bool, str]:
    # Possible on some networks and not on others: port25.outbound states which (must_be_stated).
    return True, ""


def reverse_dns(d: "Deployment") -> list[dict[str, Any]]:
    """Each node's A and PTR record as the operator publishes them (the PTR by the address's owner)."""
    rows = []
    for host, name in zip(hosts(d), node_hostnames(d)):
        ip = host.mail_address
        rows.append({"hostname": name, "public_ip": ip,
                     "ptr_name": ipaddress.ip_address(ip).reverse_pointer if ip else None})
    return rows


def describe_port25(d: "Deployment", plan: "Plan", hostnames: list[str], ips: list[str],
                    out: dict[str, Any]) -> None:
    mode = out["mode"]
    records = reverse_dns(d)
    # The addresses are known before anything runs: the configured ones, not "allocated by pulumi up".
    out["nodes"] = [{"hostname": r["hostname"], "public_ip": r["public_ip"], "reverse_dns": r["hostname"]}
                    for r in records]
    out["records"] = records
    out["situation"] = (f"These machines exist already: kumo-infra cannot know whether their network lets them "
                        f"connect out to port 25, so port25.outbound states it ({mode}).")
    publish = ("publish each node's A record, and have the owner of its address (your hosting provider, ISP or "
               "whoever runs its reverse zone) set the PTR to the node's name: kumo-infra sets neither here")
    firewall = ("allow inbound 25 (and the submission ports you listed) in your own firewall: kumo-infra manages "
                "none on existing machines")
    if mode == "direct":
        out["operator_must"] = [
            "make sure each host may connect out to TCP port 25 (many ISPs and hosting providers block it until "
            "asked); the probe reports open or blocked", publish, firewall]
        out["kumo_infra_does"] = ["configures KumoMTA to deliver directly to MX hosts", "reports the probe result"]
    else:
        relay = d.port25.relay
        where = f"{relay.host}:{relay.port}" if relay else "the smarthost"
        out["operator_must"] = [f"make sure each host may connect out to {where}",
                                "keep the smarthost account in good standing (kumo:relayPassword)", publish, firewall]
        out["kumo_infra_does"] = [
            f"sends every message through {where} with STARTTLS required and AUTH PLAIN as "
            f"{relay.username if relay else '(the relay user)'}; the password travels to each node over SSH, "
            "on the installer's standard input",
            "reports the probe result (blocked is harmless in relay mode)"]


def format_port25(rep: dict[str, Any]) -> list[str]:
    lines = ["", "records to publish (kumo-infra writes no DNS here):"]
    for row in rep.get("records", []):
        lines.append(f"  {row['hostname']}. A {row['public_ip']}")
        lines.append(f"  {row['ptr_name']}. PTR {row['hostname']}.  (set by the address's owner)")
    return lines


# -- the section's own rules ---------------------------------------------------------------------

def _first_uses(values: list[Any]) -> list[Optional[int]]:
    """For each value, the index of an earlier entry holding it (None: first use, or no value)."""
    first: dict[Any, int] = {}
    found: list[Optional[int]] = []
    for i, value in enumerate(values):
        found.append(None if value is None else first.get(value))
        if value is not None:
            first.setdefault(value, i)
    return found


def check(d: "Deployment") -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    if getattr(d, "ssh", None) is None:
        return [("ssh.hosts", "an ssh deployment lists its machines: ssh: {hosts: [{address: 192.0.2.10, "
                              "host_key: ssh-ed25519 AAAA...}]} and the secret kumo:sshPrivateKey")]
    given = hosts(d)
    names = node_hostnames(d)
    # One machine, disk or mail address under two hosts: two nodes would format and mount one shared
    # disk (a SAN LUN: the filesystem corrupted, mail lost), install twice on one machine, or claim one
    # address's single PTR record. Each rule: the key, what a host holds, and the message naming the first.
    unique: list[tuple[str, list[Any], Callable[[Any, int], str]]] = [
        ("host_key", [h.host_key for h in given],
         lambda _, j: f"hosts[{j}] has this host key too: one machine listed twice (under two addresses?); "
                      "list each machine once"),
        ("spool_device", [h.spool_device for h in given],
         lambda _, j: f"hosts[{j}] names this disk too: a disk shared by two machines (a SAN LUN) mounted by "
                      "both corrupts its filesystem and loses mail; give each host a disk of its own"),
        ("public_ip", [h.mail_address for h in given],
         lambda value, j: f"{value} is the mail address of hosts[{j}] too: its one PTR record can name only "
                          "one node; give each host its own public IPv4 address"),
        ("address", [h.endpoint for h in given],
         lambda value, j: f"{value} is hosts[{j}] already: list each machine once"),
        ("private_address", [h.private_address for h in given],
         lambda value, j: f"{value} is the private address of hosts[{j}] too: the peers would reach one machine "
                          "for two; give each host its own"),
        ("hostname", names,
         lambda value, j: f"'{value}' is the name of hosts[{j}] too: every node needs its own name"),
    ]
    firsts = [(key, values, message, _first_uses(values)) for key, values, message in unique]
    for i, host in enumerate(given):
        if len(given) > 1 and host.hostname is None:
            found.append((f"ssh.hosts[{i}].hostname", "with more than one host, give each its own hostname: a name "
                                                      "numbered by list position would move to another machine when "
                                                      "a host before it is removed (its PTR record would no longer "
                                                      "match)"))
        for key, values, message, first in firsts:
            if first[i] is not None:
                found.append((f"ssh.hosts[{i}].{key}", message(values[i], first[i])))
        if len(given) > 1 and host.private_address is None and ip_literal(host.address) is None:
            # The peer list becomes trusted_hosts (the HTTP and TSA listeners), which take addresses only.
            found.append((f"ssh.hosts[{i}].private_address", f"address {host.address} is a DNS name, and a fleet's "
                                                             "nodes trust and publish to each other by IP address: "
                                                             "give the IP address the other hosts reach this one at "
                                                             "(like 10.0.0.10)"))
        if host.mail_address is None:
            why = "a DNS name" if ip_literal(host.address) is None else "not a public IPv4 address"
            found.append((f"ssh.hosts[{i}].public_ip", f"address {host.address} is {why}: give the public IPv4 "
                                                       "address this host's mail leaves from (its A, PTR and SPF "
                                                       "records name it)"))
    if len([h for h in given if h.spool_device]) not in (0, len(given)):
        missing = next(i for i, h in enumerate(given) if not h.spool_device)
        found.append((f"ssh.hosts[{missing}].spool_device", "give a spool device on every host or on none (then "
                                                            "every spool is a directory on the OS disk)"))
    if d.nodes is not None:
        found.append(("nodes", "the ssh target installs one node on each host in ssh.hosts; remove nodes"))
    if d.sizing.instance_type is not None:
        found.append(("sizing.instance_type", "existing machines have no instance type; remove it (kumo-infra "
                                              "compares each machine with the workload's needs instead)"))
    if d.region is not None:
        found.append(("region", "existing machines have no region here; remove it"))
    if d.spool.storage == "local_nvme":
        found.append(("spool.storage", "kumo-infra never scans an existing machine for unused NVMe: name the disk "
                                       "as ssh.hosts[].spool_device (or leave both unset for a directory spool)"))
    if d.spool.storage == "block" and not any(h.spool_device for h in given):
        found.append(("ssh.hosts[0].spool_device", "spool.storage: block needs each host's spool disk "
                                                    "(/dev/disk/by-id/...)"))
    if d.spool.size_gb is not None:
        found.append(("spool.size_gb", "the spool takes the whole of each spool_device (or the OS disk's free "
                                       "space): remove size_gb"))
    if d.dns.forward_records_exist:
        found.append(("dns.forward_records_exist", "kumo-infra sets no PTR on existing machines (the address's "
                                                   "owner does): remove it"))
    if d.lifecycle.replace_on_bootstrap_change:
        found.append(("lifecycle.replace_on_bootstrap_change", "nothing is replaced on existing machines: a changed "
                                                               "installer runs again on the same machine; remove it"))
    return found


def warnings(d: "Deployment") -> list[str]:
    found = []
    if hosts(d) and not any(h.spool_device for h in hosts(d)):
        found.append("kumo:deployment.ssh.hosts[].spool_device is unset: each spool is a directory on the host's OS "
                     "disk, where logs, packages and the OS compete with queued mail for space; give each host a "
                     "spool disk (/dev/disk/by-id/...) for production")
    if len(hosts(d)) > 1:
        found.append("kumo:deployment.ssh.hosts: a fleet's hosts publish to each other's TSA daemon (8008) and "
                     "transfer queues to each other's HTTP listener (8000); allow both in your own firewall between "
                     "the hosts only (ssh.hosts[].private_address, else address), and each host's way to "
                     "fleet.redis_url")
    if d.network.ssh_cidrs or d.network.api_cidrs:
        found.append("kumo:deployment.network: kumo-infra creates no firewall on existing machines; allow SSH and "
                     "the API (8443) only from network.ssh_cidrs and network.api_cidrs in your own firewall")
    return found


def sets_ptr(d: "Deployment") -> bool:
    return False


def spool_device_paths(d: "Deployment", spool_storage: str, volume_id: Optional[str]) -> list[str]:
    """The one disk the host names: ``volume_id`` is its ssh.hosts[].spool_device, as the installer for
    that host passes it (the only identity of an existing machine's disk kumo-infra knows)."""
    if spool_storage != "block" or not volume_id:
        return []
    try:
        return [parse_spool_device(volume_id)]
    except ValueError:
        return []  # no disk of this target is named otherwise: the bootstrap finds none and fails loudly


def render_installer(d: "Deployment", plan: "Plan", index: int) -> str:
    """Host ``index``'s installer, exactly as the component copies it (its spool disk named)."""
    from ...bootstrap import render_ssh_installer  # the renderer imports the config, which imports this

    given = hosts(d)
    device = given[index].spool_device if 0 <= index < len(given) else None
    return render_ssh_installer(d, plan, index, spool_volume_id=device)


def spool_storage(d: "Deployment") -> str:
    """A block spool on the disk each host names, else a directory on the OS disk."""
    return "block" if any(h.spool_device for h in hosts(d)) else "directory"


TARGET = Target(
    name="ssh",
    title=TITLE,
    creates=("no machine, disk, network, firewall or DNS record: on each host you list, an installer copied over "
             "SSH (host key pinned) and run, the secrets on its standard input; the A and PTR records listed for "
             "you to publish"),
    section=SshSection,
    section_required=True,
    check=check,
    catalog=None,
    images=None,
    port25=Port25Facts(direct_allowed=direct_allowed, describe=describe_port25, must_be_stated=True,
                       format_extra=format_port25),
    sets_ptr=sets_ptr,
    secrets=SecretStore(title="Pulumi state, delivered over SSH", backend="delivered", store_name=store_name,
                        reference=reference, read_command=read_command),
    spool_device_paths=spool_device_paths,
    # Never scan an existing machine for unused disks: only the one named is ever taken.
    nvme_device_globs=(),
    network_pairs=(),
    dns_zone_field=None,
    component="kumo_infra.targets.ssh.component:SshKumoMta",
    offline_computed=offline.COMPUTED,
    offline_invokes=offline.INVOKES,
    api_read_note=API_READ_NOTE,
    needs_region=False,
    node_count=node_count,
    example=EXAMPLE,
    secret_config={"ssh_private_key": PRIVATE_KEY_CONFIG},
    warnings=warnings,
    node_hostnames=node_hostnames,
    spool_storage=spool_storage,
    render=render_installer,
)

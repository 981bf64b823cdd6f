"""KumoMTA on machines that already exist: ``SshKumoMta``.

Per host, two pulumi-command resources and nothing else:

- ``<name>-<node>-installer`` (``remote.CopyToRemote``): the rendered installer (no secret in
  it) copied over SFTP to ``INSTALLER_REMOTE_PATH``;
- ``<name>-<node>-install`` (``remote.Command``): the fixed ``INSTALL_COMMAND``, run after the
  copy, with every secret of the deployment on its standard input (a Pulumi secret), never on
  its command line or in its environment (sshd refuses Setenv without AcceptEnv), its output
  never logged and kept in state only as a secret.

Both connect with the host key pinned: pulumi-command checks it with ssh.FixedHostKey, and
without ``hostKey`` would accept any key, so the config refuses a host without one. Both carry
the same triggers, the sha256 of the installer and of the secrets (the latter a Pulumi secret):
a change to either copies and runs again, on the same machine (the engine replaces both, so
neither is protected: lifecycle.protect covers the generated keys and password). Neither has a
delete command: destroying the stack leaves each machine as it is (README, "Existing machines
over SSH").
"""

import hashlib
import ipaddress
from typing import Any, Optional

import pulumi
from pulumi_command import remote

from ...bootstrap import INSTALL_COMMAND, INSTALLER_REMOTE_PATH, delivered_secrets_payload
from ...component import (Address, Build, ComponentPlan, KumoMtaArgs, KumoMtaComponent, Machine, NodeBuild, NodeSecret,
                           child)
from ...errors import ConfigError
from . import hosts, render_installer
from .config import PRIVATE_KEY_CONFIG, SshHost

__all__ = ["SshKumoMta", "TYPE", "PRIVATE_KEY_ARG", "connection", "records_to_publish"]

TYPE = "kumo:index:SshKumoMta"
# The component argument carrying the private key (from the secret kumo:sshPrivateKey).
PRIVATE_KEY_ARG = "ssh_private_key"
# pulumi-command retries a refused or timed-out connection: 6 dials of at most 20 s each ride out
# an sshd restart or a short network blip, and give up on a wrong address within about two minutes.
DIAL_ERROR_LIMIT = 6
PER_DIAL_TIMEOUT_S = 20
# What pulumi-command keeps in state from the run: kept as secrets, although kumo-bootstrap never
# prints a secret (its standard input carries them all).
SECRET_OUTPUTS = ["stdout", "stderr"]


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def connection(host: SshHost, private_key: pulumi.Input[str]) -> remote.ConnectionArgs:
    """How pulumi-command reaches ``host``: its key pinned, the private key a Pulumi secret."""
    return remote.ConnectionArgs(
        host=host.address, port=host.port, user=host.user,
        private_key=pulumi.Output.secret(private_key),
        host_key=host.host_key,
        dial_error_limit=DIAL_ERROR_LIMIT, per_dial_timeout=PER_DIAL_TIMEOUT_S)


def secrets_payload(secrets: list[NodeSecret]) -> pulumi.Output[str]:
    """Every secret framed for the installer's standard input, as one Pulumi secret."""
    specs = [s.spec for s in secrets]
    values = pulumi.Output.all(*[s.value for s in secrets])
    return pulumi.Output.secret(values.apply(lambda vs: delivered_secrets_payload(list(zip(specs, vs)))))


def records_to_publish(cp: ComponentPlan) -> list[dict]:
    """Each node's A record, and the PTR its address's owner sets: kumo-infra writes no DNS here."""
    records = []
    for node, host in zip(cp.nodes, hosts(cp.deployment)):
        address = host.mail_address
        records.append({"name": node.hostname, "type": "A", "value": address,
                        "why": "the node's name: receivers check it against the PTR, clients against the API "
                               "certificate"})
        records.append({"name": ipaddress.ip_address(address).reverse_pointer, "type": "PTR",
                        "value": f"{node.hostname}.",
                        "why": "reverse DNS, set by whoever owns the address (hosting provider, ISP or your own "
                               "reverse zone): receivers check it names the A record above"})
    return records


class SshKumoMta(KumoMtaComponent):
    """KumoMTA installed over SSH on machines that already exist (docs/component-spec.md)."""

    # Not annotated: Pulumi's schema inference takes every public class annotation for an output.
    TARGET = "ssh"
    TYPE = TYPE

    def __init__(self, name: str, args: KumoMtaArgs, opts: Optional[pulumi.ResourceOptions] = None) -> None:
        self._args = args
        self._installers: list[remote.CopyToRemote] = []
        self._installs: list[remote.Command] = []
        super().__init__(name, args, opts)

    def _before_resources(self, cp: ComponentPlan) -> Any:
        """The private key, checked once the config is (both before any resource)."""
        private_key = self._args.get(PRIVATE_KEY_ARG)
        if private_key is None:
            raise ConfigError(f"the ssh target logs in with your private key: pulumi config set --secret "
                              f"{PRIVATE_KEY_CONFIG.split(':', 1)[1]} < ~/.ssh/id_ed25519 (component argument "
                              f"{PRIVATE_KEY_ARG})", PRIVATE_KEY_CONFIG)
        return private_key

    def _store_secrets(self, b: Build) -> list[pulumi.Resource]:
        # Nothing is stored anywhere but Pulumi's state: each install carries the secrets on its stdin.
        self._payload = secrets_payload(b.secrets)
        self._payload_sha = pulumi.Output.secret(self._payload.apply(sha256))
        return []

    def _address(self, b: Build, n: NodeBuild) -> Address:
        address = hosts(b.deployment)[n.node.index].mail_address
        assert address is not None  # the config refuses a host without a public IPv4 address
        return Address(address)

    def _spool(self, b: Build, n: NodeBuild) -> None:
        # The disk exists already: the host names it (ssh.hosts[].spool_device) and kumo-bootstrap
        # formats it only when it holds nothing at all.
        return None

    def _machine(self, b: Build, n: NodeBuild) -> Machine:
        host = hosts(b.deployment)[n.node.index]
        installer = render_installer(b.deployment, b.cp.plan, n.node.index)
        # The same triggers on both: a changed installer or secret copies and runs again, together.
        triggers: list[Any] = [sha256(installer), self._payload_sha]
        conn = connection(host, b.prepared)
        copy = remote.CopyToRemote(
            b.names.node(n.key, "installer"), connection=conn, source=pulumi.StringAsset(installer),
            remote_path=INSTALLER_REMOTE_PATH, triggers=triggers, opts=child(self))
        install = remote.Command(
            b.names.node(n.key, "install"), connection=conn, create=INSTALL_COMMAND, stdin=self._payload,
            logging=remote.Logging.NONE, add_previous_output_in_env=False, triggers=triggers,
            # Never protected, whatever lifecycle.protect says: a change runs it again by replacing it (its
            # triggers), which protection would refuse; and deleting it does nothing to the machine.
            opts=child(self, depends_on=[copy], additional_secret_outputs=SECRET_OUTPUTS))
        self._installers.append(copy)
        self._installs.append(install)
        # No machine id: the machine is no cloud's, and its console is the operator's own. The private
        # address is where the other nodes reach this one (the fleet's peer list, built from it).
        return Machine(install, host.peer_address, None)

    def _extra_outputs(self, b: Build, nodes: list[NodeBuild]) -> dict[str, pulumi.Input[Any]]:
        # The A and PTR records, in place of the shared forward records only: kumo-infra sets no PTR here.
        return {"dns_records": records_to_publish(b.cp)}

"""The ssh target's case for the contract suite (tests/test_contract.py).

Existing machines: no firewall, spool volume or secret store of kumo-infra's own. The secrets'
only holder is each host's install command (its standard input, a Pulumi secret), and "readable
only by the nodes" means each goes over a connection to one of the configured hosts, its host
key pinned.
"""

from __future__ import annotations

import base64
import re

from kumo_infra import offline
from kumo_infra.config import REDIS_PASSWORD_KEY
from kumo_infra.targets.ssh.config import PRIVATE_KEY_CONFIG
from tests.contract_deployments import COMMON, ContractCase, plain

COPY = "command:remote:CopyToRemote"
COMMAND = "command:remote:Command"
HOSTS = [
    # Each names itself: with several hosts the config requires it (a position-numbered name would move).
    {"address": "192.0.2.10", "hostname": "mta1.example.com",
     "spool_device": "/dev/disk/by-id/wwn-0x5000c500a1b2c3d4",
     "host_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKoZYfLZGWV7DyQqkvFqSRe2jJp3sEA2k4etLfWd47R7"},
    {"address": "192.0.2.11", "hostname": "mta2.example.com",
     "spool_device": "/dev/disk/by-id/wwn-0x5000c500a1b2c3e5", "user": "deploy", "port": 2222,
     "host_key": "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBPqrFvc8IimOvIaSBCDEZm"
                 "c+ZRoYzwVjnC2jqC3q5Hlj4ZhFILDiJN14GVXowKHHoOj+1/WG0VT92Y3DXGFXZR8="},
]
PRIVATE_KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\ncontract-ssh-private-key\n-----END OPENSSH PRIVATE KEY-----\n"
# Two hosts are a fleet, and the ssh target creates no Redis: the operator's own, its password a secret.
REDIS_PASSWORD = "contract-redis-password:@/%"


def texts(result: offline.OfflineResult) -> list[str]:
    """Each host's installer, the files it writes (decoded) and the command that runs it."""
    found = []
    for copy in result.of_type(COPY):
        script = copy.inputs["source"]["asset"]["text"]
        found.append(script)
        found += [base64.b64decode("".join(body.split())).decode()
                  for body in re.findall(r"<<'KUMO_EOF'\n(.*?)\nKUMO_EOF", script, re.S)]
    found += [command.inputs["create"] for command in result.of_type(COMMAND)]
    return found


def only_nodes_read(result: offline.OfflineResult) -> None:
    """Every command carrying the secrets connects to a configured host, that host's key pinned;
    one per host, and no other resource carries them."""
    pinned = {(h["address"], h.get("port", 22)): h["host_key"] for h in HOSTS}
    carriers = [c for c in result.of_type(COMMAND) if "stdin" in c.inputs]
    assert len(carriers) == len(HOSTS)
    seen = set()
    for command in carriers:
        assert offline.is_secret(command.inputs["stdin"])
        conn = plain(command.inputs["connection"])
        endpoint = (conn["host"], int(conn["port"]))
        assert conn["hostKey"] == pinned[endpoint], command.name
        seen.add(endpoint)
    assert seen == set(pinned)
    assert not [r.name for r in result.resources if r.type != COMMAND and "stdin" in r.inputs]


CASE = ContractCase(
    deployment={**{k: v for k, v in COMMON.items() if k != "nodes"}, "cloud": "ssh", "os": "debian12",
                "fleet": {"redis_url": "rediss://redis.example.net:6379"}, "ssh": {"hosts": HOSTS}},
    # The machines exist outside Pulumi. The install commands are not them: a change replaces them
    # (their triggers), which protection would refuse, and deleting one does nothing to its machine.
    machines=(),
    volumes=(),  # the spool disks exist already; kumo-infra never deletes anything on them
    secret_store=(),  # Pulumi's state and the nodes themselves
    value_holders=(COMMAND,),
    ingress=lambda result: None,  # the machines' own network and firewall decide
    machine_texts=texts,
    assert_only_nodes_read=only_nodes_read,
    machine_id=lambda result, node: None,  # no machine of a cloud's: nothing to read a console by
    config={PRIVATE_KEY_CONFIG: PRIVATE_KEY, REDIS_PASSWORD_KEY: REDIS_PASSWORD},
    secret_keys=(PRIVATE_KEY_CONFIG, REDIS_PASSWORD_KEY),
)

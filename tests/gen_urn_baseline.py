"""Record every resource URN (and its inputs' digest) the program registered at a given commit.

Run once, before a change that renames child resources, to keep what existing stacks hold:
``.venv/bin/python -m tests.gen_urn_baseline > tests/fixtures/urns-before-targets.json``.
tests/test_aliases.py replays the same configurations against today's code and proves every
old URN is today's URN or one of its aliases, with unchanged inputs (nothing replaced).
The variants cover every child resource the three clouds can create.

``--paths`` writes, for the same runs, one digest per input property path
(tests/fixtures/urn-paths-before-targets.json): where a resource's inputs differ, the proof
can then tell a change the engine ignores (ignoreChanges) from one it acts on. Both files were
recorded at commit 6f5516e, before any rename; ``--paths`` checks that its runs give exactly the
digests of urns-before-targets.json, so both describe the same inputs. Never regenerate either
from later code: they are what existing stacks hold.
"""

from __future__ import annotations

import hashlib
import json
import sys

from kumo_infra import offline, program
from tests.conftest import merged

# Every optional resource: several nodes, block and NVMe spools, DNS zone and PTR, relay
# (relay password), DKIM, the API (password, TLS key and certificate), existing networks.
VARIANTS: dict[str, dict] = {
    "aws-full": {
        "cloud": "aws", "region": "us-east-1", "name": "kumo-a", "hostname": "mta.example.com", "os": "rocky9",
        "nodes": 2, "dns": {"zone": "example.com"}, "dkim": {"domains": ["example.com"]},
        "network": {"ssh_cidrs": ["198.51.100.0/24"], "api_cidrs": ["198.51.100.0/24"]},
        "port25": {"outbound": "relay", "relay": {"host": "smtp.relay.example.net", "username": "u"}},
        "aws": {"route53_zone_id": "Z0123456789ABCDEFGHIJ"},
    },
    "aws-nvme-existing-net": {
        "cloud": "aws", "region": "us-east-1", "name": "kumo-b", "hostname": "mta.example.com", "os": "ubuntu22",
        "sizing": {"profile": "performance", "messages_per_hour": 2000000},
        "dns": {"forward_records_exist": True},
        "aws": {"vpc_id": "vpc-0123456789abcdef0", "subnet_id": "subnet-0123456789abcdef0"},
    },
    "azure-full": {
        "cloud": "azure", "region": "westeurope", "name": "kumo-z", "hostname": "mta.example.com", "os": "alma9",
        "nodes": 2, "dns": {"zone": "example.com", "forward_records_exist": True},
        "dkim": {"domains": ["example.com"]},
        "network": {"ssh_cidrs": ["198.51.100.0/24"], "api_cidrs": ["198.51.100.0/24"]},
        "port25": {"outbound": "relay", "relay": {"host": "smtp.relay.example.net", "username": "u"}},
        "azure": {"dns_zone_resource_group": "dns-rg",
                  "ssh_public_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG5tJwNH3p6TjJVpQ9bwQb1h3k9r3QGgJH8o5f0X9Q1m op"},
    },
    "azure-nvme": {
        "cloud": "azure", "region": "westeurope", "name": "kumo-y", "hostname": "mta.example.com", "os": "ubuntu22",
        "sizing": {"profile": "performance", "messages_per_hour": 2000000},
        "port25": {"outbound": "relay", "relay": {"host": "smtp.relay.example.net", "username": "u"}},
    },
    "gcp-full": {
        "cloud": "gcp", "region": "us-central1", "name": "kumo-g", "hostname": "mta.example.com", "os": "alma9",
        "nodes": 2, "dns": {"zone": "example.com"}, "dkim": {"domains": ["example.com"]},
        "network": {"ssh_cidrs": ["198.51.100.0/24"], "api_cidrs": ["198.51.100.0/24"]},
        "port25": {"outbound": "relay", "relay": {"host": "smtp.relay.example.net", "username": "u"}},
        "gcp": {"project": "my-kumo-project", "dns_managed_zone": "example-zone"},
    },
    "gcp-nvme-existing-net": {
        "cloud": "gcp", "region": "us-central1", "name": "kumo-h", "hostname": "mta.example.com", "os": "ubuntu22",
        "sizing": {"profile": "performance", "messages_per_hour": 2000000},
        "port25": {"outbound": "relay", "relay": {"host": "smtp.relay.example.net", "username": "u"}},
        "gcp": {"project": "my-kumo-project", "network": "default"},
    },
}


def digest(inputs: dict) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


SECRET_SIG_KEY = "4dabf18193072939515e22adb298388d"  # Pulumi's wire form of a secret (rpc._special_sig_key)


def flat(inputs: dict, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], object]:
    """Every leaf of recorded inputs by its property path (object keys; a list is one leaf). A secret
    envelope is looked through, as ignoreChanges paths are (osProfile.customData inside a secret osProfile)."""
    found: dict[tuple[str, ...], object] = {}
    for key, value in inputs.items():
        path = prefix + (key,)
        if isinstance(value, dict) and SECRET_SIG_KEY in value:
            value = value.get("value")
        if isinstance(value, dict) and value:
            found.update(flat(value, path))
        else:
            found[path] = value
    return found


def path_digests(inputs: dict) -> dict[str, str]:
    """{"a.b.c": digest} per leaf of ``inputs`` (keys joined with "." for the JSON file)."""
    return {".".join(path): hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:12]
            for path, value in flat(inputs).items()}


def record(deployment: dict) -> list[dict]:
    """[{urn, type, inputs}] for every resource the program registers for ``deployment``."""
    config = {"kumo:deployment": deployment}
    secret_keys = []
    if deployment.get("port25", {}).get("relay"):
        config["kumo:relayPassword"] = "baseline-relay-password"
        secret_keys.append("kumo:relayPassword")
    result = offline.run(program.run, config, stack="baseline", secret_keys=secret_keys)
    return [{"urn": r.urn, "type": r.type, "inputs": r.inputs} for r in result.resources]


def variants() -> dict[str, dict]:
    """VARIANTS and the shipped stack files."""
    from kumo_infra import stackconfig
    from tests.conftest import ROOT, STACKS

    found = dict(VARIANTS)
    for stack in STACKS:
        found[f"stack-{stack}"] = stackconfig.read_values(ROOT / "stacks" / f"Pulumi.{stack}.yaml")["kumo:deployment"]
    return found


def main(argv: list[str]) -> int:
    if argv == ["--paths"]:
        return main_paths()
    out = {}
    for name, dep in variants().items():
        out[name] = {"deployment": dep,
                     "resources": [{"urn": r["urn"], "type": r["type"], "inputs": digest(r["inputs"])}
                                   for r in record(merged(dep))]}
    json.dump(out, sys.stdout, indent=1, sort_keys=True)
    print()
    return 0


def main_paths() -> int:
    from tests.conftest import ROOT

    baseline = json.loads((ROOT / "tests" / "fixtures" / "urns-before-targets.json").read_text())
    out = {}
    for name, dep in variants().items():
        recorded = record(merged(dep))
        expected = {r["urn"]: r["inputs"] for r in baseline[name]["resources"]}
        got = {r["urn"]: digest(r["inputs"]) for r in recorded}
        if got != expected:
            print(f"{name}: these runs do not give urns-before-targets.json's digests: run at its commit",
                  file=sys.stderr)
            return 1
        out[name] = {r["urn"]: path_digests(r["inputs"]) for r in recorded}
    json.dump(out, sys.stdout, indent=0, sort_keys=True)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

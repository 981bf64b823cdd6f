"""`kumo-infra roll` driven through the real pulumi.automation library against the fake CLI.

The fake `pulumi` (tests/fake_pulumi.py) holds the stack's state and records every argument
vector; the drain, the health checks and the nodes' API access are fakes writing to the same log
as the fake CLI's `up`, so the tests see the exact order of what a roll does to the fleet.
"""

from __future__ import annotations

import dataclasses
import functools
import http.server
import json
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kumo_infra import cli, roll
from kumo_infra import fleet as fleet_module
from kumo_infra.drain import PASSWORD_ENV, DrainError, DrainResult, NodeApi
from kumo_infra.fleet import DRAIN_SUSPENSION_DOMAIN
from kumo_infra.smoke import Check, SmokeReport
from kumo_infra.stackconfig import read_values
from tests import fake_pulumi
from tests.conftest import ROOT
from tests.http_standin import StandIn
from tests.test_api_tls_client import make_pair

STACK = "fleet"
PROJECT = "kumo-infra"
# Per target: the base stack file, the component's type and name, the machine's type.
TARGETS = {
    "aws": ("aws-dev", "kumo:index:AwsKumoMta", "kumo-dev", "aws:ec2/instance:Instance"),
    "azure": ("azure-dev", "kumo:index:AzureKumoMta", "kumo-azdev", "azure-native:compute:VirtualMachine"),
    "gcp": ("gcp-dev", "kumo:index:GcpKumoMta", "kumo-gcpdev", "gcp:compute/instance:Instance"),
}
# What else each node has in the state, by type and name suffix: none of it is the machine.
NEIGHBOURS = [("aws:ec2/eip:Eip", "ip"), ("aws:ebs/volume:Volume", "spool"),
              ("aws:ec2/volumeAttachment:VolumeAttachment", "spool-attach"),
              ("azure-native:network:NetworkInterface", "nic"), ("gcp:compute/address:Address", "ip")]
PRECHECK = roll.PRECHECK_S
HEALTH_S = roll.DEFAULT_HEALTH_TIMEOUT.total_seconds()


def write_project(tmp_path: Path, base: str, **deployment: object) -> Path:
    """A project directory: this checkout's Pulumi.yaml, and stacks/Pulumi.fleet.yaml made from
    stacks/Pulumi.<base>.yaml with ``deployment``'s keys set in kumo:deployment (a mapping merged)."""
    values = read_values(ROOT / "stacks" / f"Pulumi.{base}.yaml")
    d = values["kumo:deployment"]
    for key, value in deployment.items():
        d[key] = {**d[key], **value} if isinstance(value, dict) and isinstance(d.get(key), dict) else value
    project = tmp_path / "project"
    (project / "stacks").mkdir(parents=True)
    (project / "Pulumi.yaml").write_text((ROOT / "Pulumi.yaml").read_text())
    (project / "stacks" / f"Pulumi.{STACK}.yaml").write_text(yaml.safe_dump({"config": values}))
    return project


def urn(component_type: str, kind: str, name: str) -> str:
    return f"urn:pulumi:{STACK}::{PROJECT}::{component_type}${kind}::{name}"


class Fleet:
    """A project directory (Pulumi.yaml, stacks/Pulumi.fleet.yaml) as the working directory, the
    fake CLI holding the stack's state, and fakes for the drain, the health checks and the APIs."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, cloud: str = "aws", nodes: int = 3,
                 **deployment: object) -> None:
        self.now = 0.0
        base, self.component_type, self.component, self.machine_type = TARGETS[cloud]
        self.project = write_project(tmp_path, base, **{"nodes": nodes, "network": {"api_cidrs": ["203.0.113.0/24"]},
                                                        **deployment})
        monkeypatch.chdir(self.project)
        self.names = [f"node{i + 1}" for i in range(nodes)]
        self.generation = {name: 0 for name in self.names}
        self.log: list[str] = []
        self.drain_results: dict[str, DrainResult] = {}
        self.unhealthy: set[str] = set()  # "check node2" or "health node1": answered unhealthy
        self.drained: dict[str, dict] = {}  # the drain suspension each node holds, by node name
        self.suspension_reads: list[str] = []
        self.lines: list[str] = []
        self.command = fake_pulumi.FakePulumiCommand(fake_pulumi.FakeBackend(fake_pulumi.new_state(
            stacks={STACK: self.stack_state()}, up_resources=[], up_outputs=self.outputs(), up_secret_outputs=[]),
            hooks={"up": self.on_up}))

    # -- what the stack holds -------------------------------------------------------------------

    def machine_urn(self, node: str) -> str:
        return urn(self.component_type, self.machine_type, f"{self.component}-{node}-vm")

    def stack_state(self) -> dict:
        root = f"urn:pulumi:{STACK}::{PROJECT}::pulumi:pulumi:Stack::{PROJECT}-{STACK}"
        resources = [{"urn": root, "custom": False, "type": "pulumi:pulumi:Stack"},
                     {"urn": f"urn:pulumi:{STACK}::{PROJECT}::{self.component_type}::{self.component}",
                      "custom": False, "type": self.component_type, "parent": root}]
        for node in self.names:
            resources.append({"urn": self.machine_urn(node), "custom": True, "type": self.machine_type,
                              "id": f"machine-{node}"})
            resources += [{"urn": urn(self.component_type, kind, f"{self.component}-{node}-{part}"), "custom": True,
                           "type": kind, "id": f"{part}-{node}"} for kind, part in NEIGHBOURS]
        return {"tags": {}, "resources": resources, "outputs": self.outputs(), "secret_outputs": [], "history": [],
                "created": fake_pulumi.now_text(), "project": PROJECT}

    def outputs(self) -> dict:
        """The stack outputs: each node's private address and machine id change with each replacement."""
        nodes = [{"name": name, "hostname": f"mta{i + 1}.example.com", "public_ip": f"198.51.100.{i + 1}",
                  "private_ip": f"10.0.{self.generation[name]}.{i + 1}",
                  "machine_id": f"machine-{name}-{self.generation[name]}"} for i, name in enumerate(self.names)]
        return {"nodes": nodes, "public_ips": [n["public_ip"] for n in nodes],
                "api": {"user": "kumo-api", "ca_certificate": "CA PEM",
                        "endpoints": [{"hostname": n["hostname"], "url": f"https://{n['hostname']}:8443",
                                       "ip_url": f"https://{n['public_ip']}:8443"} for n in nodes]}}

    # -- the fakes --------------------------------------------------------------------------------

    def on_up(self, argv: list[str]) -> None:
        replaced = [argv[i + 1] for i, a in enumerate(argv) if a == "--replace"]
        self.log.append("up --replace " + " ".join(replaced))
        for name in self.names:
            if self.machine_urn(name) in replaced:
                self.generation[name] += 1
        self.command.backend.state["up_outputs"] = self.outputs()

    def node_apis(self, deployment, outputs) -> list[NodeApi]:
        endpoints = outputs["api"]["endpoints"]
        api = outputs["api"]
        return [NodeApi(n["name"], e["ip_url"], api["user"], "api-password", api["ca_certificate"], n["private_ip"])
                for n, e in zip(outputs["nodes"], endpoints)]

    def drain(self, node: NodeApi, *, to: NodeApi | None = None, timeout_s: float, progress=None) -> DrainResult:
        self.log.append(f"drain {node.name} -> " + (f"{to.name} {to.private_ip}" if to else "nobody")
                        + f" within {timeout_s:g}s")
        if progress:
            progress(0, 7, 2)
        return self.drain_results.get(node.name, DrainResult(True, 0, None, "drained"))

    def drain_suspension(self, api: NodeApi) -> dict | None:
        self.suspension_reads.append(api.name)
        return self.drained.get(api.name)

    def health(self, node: dict, api: NodeApi, seconds: float) -> roll.Health:
        assert api.name == node["name"] and api.base_url.endswith(f"{node['public_ip']}:8443")
        what = f"check {node['name']}" if seconds == PRECHECK else f"health {node['name']}"
        self.log.append(what if seconds == PRECHECK else f"{what} {node['machine_id']} within {seconds:g}s")
        if what in self.unhealthy:
            return roll.Health(False, f"FAIL {node['name']} smtp: 198.51.100.9:25 greeted 554")
        return roll.Health(True, "ok")

    def deps(self) -> roll.Deps:
        return roll.Deps(pulumi_command=self.command, drain_node=self.drain, node_apis=self.node_apis,
                         check_health=self.health, drain_suspension=self.drain_suspension,
                         on_output=self.lines.append, sleep=self.sleep, clock=lambda: self.now)

    def sleep(self, seconds: float) -> None:
        """The roll's waits, on a clock of its own: logged, never slept."""
        self.log.append(f"wait {seconds:g}s")
        self.now += seconds

    def run(self, monkeypatch: pytest.MonkeyPatch, *flags: str) -> int:
        """`kumo-infra roll --stack fleet FLAGS` through cli.main (its exit codes), with these fakes."""
        monkeypatch.setitem(cli.COMMANDS, "roll", functools.partial(roll.run, deps=self.deps()))
        return cli.main(["roll", "--stack", STACK, *flags])

    @property
    def calls(self) -> list[list[str]]:
        return self.command.calls

    def ups(self) -> list[list[str]]:
        return [c for c in self.calls if "up" in c[:2]]


def every_step(node: str, others: list[str], peer: str | None, peer_ip: str, generation: int = 1,
               wait: float = 0) -> list[str]:
    return ([f"check {o}" for o in others] + ([f"wait {wait:g}s"] if wait else [])
            + [f"drain {node} -> " + (f"{peer} {peer_ip}" if peer else "nobody") + " within 1800s"]
            + [f"up --replace {{{node}}}", f"health {node} machine-{node}-{generation} within {HEALTH_S:g}s"])


def test_a_node_drains_into_a_replaced_peer_only_once_it_can_have_learnt_its_address(tmp_path, monkeypatch):
    fleet = Fleet(tmp_path, monkeypatch, nodes=2)
    assert fleet.run(monkeypatch) == 0
    # node2 drains into node1, replaced moments ago: it waits the whole refresh period first ...
    assert fleet.log.index(f"wait {fleet_module.PEER_REFRESH_MAX_S:g}s") == fleet.log.index(
        "drain node2 -> node1 10.0.1.1 within 1800s") - 1
    # ... and only what is left of it when time has passed since (a long health check, say).
    fleet = Fleet(tmp_path / "again", monkeypatch, nodes=2)
    original = fleet.health

    def slow_health(node, api, seconds):
        fleet.now += 100
        return original(node, api, seconds)

    fleet.health = slow_health
    assert fleet.run(monkeypatch) == 0
    assert f"wait {fleet_module.PEER_REFRESH_MAX_S - 100:g}s" in fleet.log


def test_the_refresh_wait_covers_the_peer_list_timer():
    timer = (Path(roll.__file__).parent / "bootstrap" / "files" / "kumo-fleet-peers.timer").read_text()
    minutes = {k: int(v.removesuffix("min")) for k, v in
               (line.split("=", 1) for line in timer.splitlines() if line.startswith(("OnUnitActiveSec", "Randomized")))}
    assert fleet_module.PEER_REFRESH_MAX_S > (minutes["OnUnitActiveSec"] + minutes["RandomizedDelaySec"]) * 60


def with_urns(fleet: Fleet, steps: list[str]) -> list[str]:
    return [s.format(**{n: fleet.machine_urn(n) for n in fleet.names}) for s in steps]


# -- the order ------------------------------------------------------------------------------------

def test_each_node_in_turn_others_checked_drained_into_the_next_replaced_then_healthy(tmp_path, monkeypatch, capsys):
    fleet = Fleet(tmp_path, monkeypatch)
    assert fleet.run(monkeypatch) == 0
    assert fleet.log == with_urns(fleet, [
        *every_step("node1", ["node2", "node3"], "node2", "10.0.0.2"),
        # node1 is back (its new machine's address), node3 untouched: node2 drains into node3.
        *every_step("node2", ["node1", "node3"], "node3", "10.0.0.3"),
        # The last drains into the first, at the address its new machine has, once the fleet's
        # peer-list refresh has told it that address (nothing passes on the fake clock but waits).
        *every_step("node3", ["node1", "node2"], "node1", "10.0.1.1", wait=fleet_module.PEER_REFRESH_MAX_S),
    ])
    out = capsys.readouterr()
    assert out.out == "stack fleet: rolled node1, node2, node3: each drained, its machine replaced, healthy again\n"
    # The drain's progress, shown.
    assert "kumo-infra: node1: 0 message(s) left (of 7 seen), 2 TSA log record(s) not counted" in fleet.lines
    # Whether each node holds a drain suspension: every other node before a drain, the new one after.
    assert fleet.suspension_reads[:3] == ["node2", "node3", "node1"]


def test_the_up_replaces_and_targets_exactly_that_machine_with_its_dependents(tmp_path, monkeypatch):
    fleet = Fleet(tmp_path, monkeypatch, nodes=2)
    assert fleet.run(monkeypatch) == 0
    for node, up in zip(["node1", "node2"], fleet.ups()):
        machine = fleet.machine_urn(node)
        assert up == ["--non-interactive", "up", "--yes", "--skip-preview", "--replace", machine, "--target", machine,
                      "--target-dependents", "--exec-kind", "auto.local", "--stack", STACK]
    assert fleet.command.backend.state["up_replaced"] == [[fleet.machine_urn("node1")], [fleet.machine_urn("node2")]]
    # The project's own program: the workspace is the project directory, nothing inline.
    assert set(fleet.command.backend.state["files_at_up"]) == {"Pulumi.yaml"}
    # Outputs read at the start without decrypting secrets, and the state exported once.
    verbs = fake_pulumi.verbs(fleet.calls)
    assert verbs[:3] == ["stack select", "stack output", "stack export"] and verbs.count("stack export") == 1
    assert fleet.calls[1] == ["--non-interactive", "stack", "output", "--json", "--stack", STACK]


@pytest.mark.parametrize("cloud", sorted(TARGETS))
def test_the_urn_is_that_nodes_machine_on_each_target(tmp_path, monkeypatch, cloud):
    fleet = Fleet(tmp_path, monkeypatch, cloud=cloud)
    assert fleet.run(monkeypatch, "--nodes", "node2") == 0
    _, component_type, component, machine_type = TARGETS[cloud]
    expected = f"urn:pulumi:fleet::kumo-infra::{component_type}${machine_type}::{component}-node2-vm"
    (up,) = fleet.ups()
    assert [up[i + 1] for i, a in enumerate(up) if a in ("--replace", "--target")] == [expected, expected]


def test_nodes_are_rolled_in_the_order_given(tmp_path, monkeypatch):
    fleet = Fleet(tmp_path, monkeypatch)
    assert fleet.run(monkeypatch, "--nodes", "node3,node1") == 0
    assert fleet.log == with_urns(fleet, [
        *every_step("node3", ["node1", "node2"], "node1", "10.0.0.1"),
        *every_step("node1", ["node2", "node3"], "node2", "10.0.0.2"),
    ])


def test_timeouts_reach_the_drain_and_the_health_check(tmp_path, monkeypatch):
    fleet = Fleet(tmp_path, monkeypatch, nodes=2)
    assert fleet.run(monkeypatch, "--nodes", "node1", "--drain-timeout", "5m", "--health-timeout", "20m") == 0
    assert fleet.log[1] == "drain node1 -> node2 10.0.0.2 within 300s"
    assert fleet.log[-1] == "health node1 machine-node1-1 within 1200s"


# -- stopping at the first failure ----------------------------------------------------------------

def test_a_failed_health_check_stops_before_the_next_node_is_touched(tmp_path, monkeypatch, capsys):
    fleet = Fleet(tmp_path, monkeypatch)
    fleet.unhealthy.add("health node2")
    assert fleet.run(monkeypatch) == 1
    assert fleet.log == with_urns(fleet, [
        *every_step("node1", ["node2", "node3"], "node2", "10.0.0.2"),
        *every_step("node2", ["node1", "node3"], "node3", "10.0.0.3"),
    ])  # nothing of node3: no drain, no up
    assert len(fleet.ups()) == 2
    err = capsys.readouterr().err
    assert "roll of stack fleet stopped at node2, step health: FAIL node2 smtp: 198.51.100.9:25 greeted 554" in err
    assert "node2's new machine is out of service until it is healthy" in err
    assert "rolled: node1; not touched: node3" in err
    assert "the fleet still serves: node1, node3 were healthy when node2 was drained" in err


def test_a_failed_drain_stops_before_any_up(tmp_path, monkeypatch, capsys):
    fleet = Fleet(tmp_path, monkeypatch)
    fleet.drain_results["node1"] = DrainResult(False, 42, None, "timed out after 1800s")
    assert fleet.run(monkeypatch) == 1
    assert fleet.log == ["check node2", "check node3", "drain node1 -> node2 10.0.0.2 within 1800s"]
    assert fleet.ups() == []
    err = capsys.readouterr().err
    assert "stopped at node1, step drain: timed out after 1800s (42 message(s) still on it)" in err
    assert "node1 was not replaced" in err and "rolled: none; not touched: node2, node3" in err


def test_a_drain_error_stops_before_any_up(tmp_path, monkeypatch, capsys):
    fleet = Fleet(tmp_path, monkeypatch)

    def unreachable(node, **kwargs):
        raise DrainError(f"cannot reach {node.base_url}/api/admin/suspend/v1: timed out")

    monkeypatch.setattr(fleet, "drain", unreachable)
    assert fleet.run(monkeypatch) == 1
    assert fleet.ups() == []
    assert ("stopped at node1, step drain: cannot reach https://198.51.100.1:8443/api/admin/suspend/v1: timed out"
            in capsys.readouterr().err)


def test_a_failed_up_stops_with_the_node_drained_and_how_to_finish(tmp_path, monkeypatch, capsys):
    fleet = Fleet(tmp_path, monkeypatch)
    fleet.command.backend.state["fail"] = {"up": 1}
    assert fleet.run(monkeypatch) == 1
    assert fleet.log == ["check node2", "check node3", "drain node1 -> node2 10.0.0.2 within 1800s",
                         f"up --replace {fleet.machine_urn('node1')}"]  # then no health, nothing of node2
    assert len(fleet.ups()) == 1
    err = capsys.readouterr().err
    assert "stopped at node1, step replace: pulumi up failed:" in err and "error: up: 1 error occurred" in err
    assert (f"node1 is drained and out of service, its machine possibly half replaced: finish that with pulumi up "
            f"--stack fleet --target '{fleet.machine_urn('node1')}' --target-dependents, then roll it again") in err
    assert "the fleet still serves: node2, node3 were healthy when node1 was drained" in err


def test_an_unhealthy_other_node_stops_before_the_node_is_drained(tmp_path, monkeypatch, capsys):
    fleet = Fleet(tmp_path, monkeypatch)
    fleet.unhealthy.add("check node1")  # seen while checking the others for node2
    assert fleet.run(monkeypatch) == 1
    assert fleet.log == with_urns(fleet, [*every_step("node1", ["node2", "node3"], "node2", "10.0.0.2"),
                                          "check node1"])
    err = capsys.readouterr().err
    assert "stopped at node2, step check: node1 is not healthy: FAIL node1 smtp" in err
    assert "node2 was not touched" in err and "rolled: node1; not touched: node3" in err


DRAINED = {"id": "5b7c1f0e-0000-4000-8000-000000000003", "domain": DRAIN_SUSPENSION_DOMAIN,
           "reason": "kumo-infra drain", "duration": "23h 59m"}


def test_a_node_left_drained_stops_the_roll_and_is_never_a_peer(tmp_path, monkeypatch, capsys):
    # node3 was left drained (a roll stopped at its replace): SMTP 220 and liveness 200, yet it
    # refuses mail. Rolling node2 would drain node2 into node3: two nodes out of service.
    fleet = Fleet(tmp_path, monkeypatch)
    fleet.drained["node3"] = DRAINED
    assert fleet.run(monkeypatch, "--nodes", "node2") == 1
    assert fleet.log == ["check node1", "check node3"]  # no drain, no up
    err = capsys.readouterr().err
    assert ("stopped at node2, step check: node3 is drained: it holds the drain suspension "
            f"{DRAINED['id']} ('23h 59m' left) and refuses new mail, so it is out of service") in err
    assert f"on node3, kcli suspend-cancel --id {DRAINED['id']}" in err
    assert "or finish its replace (kumo-infra roll --stack fleet --nodes node3)" in err
    assert "node2 was not touched" in err


def test_a_machine_still_drained_after_the_up_is_not_healthy(tmp_path, monkeypatch, capsys):
    fleet = Fleet(tmp_path, monkeypatch, nodes=2)
    real_up = fleet.on_up

    def up_that_left_the_machine(argv):
        real_up(argv)
        fleet.drained["node1"] = DRAINED  # the same kumod: nothing was replaced

    fleet.command.backend.hooks["up"] = up_that_left_the_machine
    assert fleet.run(monkeypatch) == 1
    err = capsys.readouterr().err
    assert "stopped at node1, step health: node1 still holds the drain suspension: its machine was not replaced" in err
    assert len(fleet.ups()) == 1


def test_a_node_whose_suspensions_cannot_be_read_stops_the_roll(tmp_path, monkeypatch, capsys):
    fleet = Fleet(tmp_path, monkeypatch)

    def unreadable(api):
        raise DrainError(f"{api.name}: GET /api/admin/suspend/v1: HTTP 500: try again later")

    monkeypatch.setattr(fleet, "drain_suspension", unreadable)
    assert fleet.run(monkeypatch) == 1
    assert ("stopped at node1, step check: cannot tell whether node2 is drained: node2: GET /api/admin/suspend/v1: "
            "HTTP 500" in capsys.readouterr().err)
    assert fleet.log == ["check node2"]


def test_the_roll_asks_each_nodes_api_whether_it_is_drained(tmp_path, monkeypatch, capsys):
    # The default check: GET /api/admin/suspend/v1 on the stand-in kumod, as the API user.
    from tests.vm.harness import KumodApi, make_api_certificate

    cert, key = make_api_certificate(tmp_path / "tls", ip="127.0.0.1")
    (tmp_path / "pw").write_text("api-password\n")
    fleet = Fleet(tmp_path, monkeypatch, nodes=2)
    with KumodApi(tls=(cert, key), password_file=tmp_path / "pw", trusted_hosts=[]) as node2:
        node2.suspensions.add({"domain": DRAIN_SUSPENSION_DOMAIN, "reason": "left by a roll"})
        apis = lambda deployment, outputs: [  # noqa: E731
            NodeApi(n["name"], node2.url, "kumo-api", "api-password", cert.read_text(), n["private_ip"])
            for n in outputs["nodes"]]
        def healthy(node, api, seconds):  # SMTP and liveness fine: only the suspension tells
            fleet.log.append(f"check {node['name']}")
            return roll.Health(True, "ok")

        deps = dataclasses.replace(fleet.deps(), node_apis=apis, check_health=healthy, drain_suspension=None)
        monkeypatch.setitem(cli.COMMANDS, "roll", functools.partial(roll.run, deps=deps))
        assert cli.main(["roll", "--stack", STACK, "--nodes", "node1"]) == 1
    assert "stopped at node1, step check: node2 is drained: it holds the drain suspension" in capsys.readouterr().err
    assert fleet.log == ["check node2"]


# -- one node --------------------------------------------------------------------------------------

def test_a_single_node_is_refused_without_allow_downtime_before_anything(tmp_path, monkeypatch, capsys):
    fleet = Fleet(tmp_path, monkeypatch, nodes=1)
    assert fleet.run(monkeypatch) == 2
    err = capsys.readouterr().err
    assert "--allow-downtime: stack fleet has one node" in err and "Traceback" not in err
    assert fleet.calls == [] and fleet.log == []


def test_a_single_node_with_allow_downtime_is_emptied_without_a_peer_then_replaced(tmp_path, monkeypatch, capsys):
    fleet = Fleet(tmp_path, monkeypatch, nodes=1)
    assert fleet.run(monkeypatch, "--allow-downtime") == 0
    assert fleet.log == with_urns(fleet, every_step("node1", [], None, ""))
    assert "kumo-infra: node1: draining until its queue is empty (no other node to take it)" in fleet.lines


def test_a_single_node_failing_health_says_it_serves_nothing(tmp_path, monkeypatch, capsys):
    fleet = Fleet(tmp_path, monkeypatch, nodes=1)
    fleet.unhealthy.add("health node1")
    assert fleet.run(monkeypatch, "--allow-downtime") == 1
    assert "the stack has no other node: it serves no mail until this one is healthy" in capsys.readouterr().err


# -- bad input: exit 2, nothing touched ----------------------------------------------------------------

@pytest.mark.parametrize("flags, fragment", [
    (["--nodes", "node4"], "--nodes: node4: stack fleet has node1, node2, node3"),
    (["--nodes", "node2,node2"], "--nodes: node2 named more than once"),
])
def test_nodes_the_stack_does_not_have_exit_2_before_pulumi(tmp_path, monkeypatch, capsys, flags, fragment):
    fleet = Fleet(tmp_path, monkeypatch)
    assert fleet.run(monkeypatch, *flags) == 2
    assert fragment in capsys.readouterr().err
    assert fleet.calls == [] and fleet.log == []


@pytest.mark.parametrize("flags, fragment", [
    (["--nodes", "node1,;rm -rf"], "is not a list of node names"),
    (["--nodes", "node0"], "is not a list of node names"),
    (["--health-timeout", "soon"], "is not a duration"),
])
def test_malformed_flags_exit_2_before_pulumi(tmp_path, monkeypatch, capsys, flags, fragment):
    fleet = Fleet(tmp_path, monkeypatch)
    with pytest.raises(SystemExit) as exited:
        fleet.run(monkeypatch, *flags)
    assert exited.value.code == 2
    assert fragment in capsys.readouterr().err
    assert fleet.calls == [] and fleet.log == []


def test_protected_machines_are_refused(tmp_path, monkeypatch, capsys):
    fleet = Fleet(tmp_path, monkeypatch, lifecycle={"protect": True})
    assert fleet.run(monkeypatch) == 2
    assert "kumo:deployment.lifecycle.protect: is true: pulumi refuses to replace" in capsys.readouterr().err
    assert fleet.calls == []


def test_existing_machines_over_ssh_are_refused(tmp_path, monkeypatch, capsys):
    fleet = Fleet(tmp_path, monkeypatch, nodes=2)
    values = read_values(ROOT / "stacks" / "Pulumi.ssh-lab.yaml")
    (fleet.project / "stacks" / f"Pulumi.{STACK}.yaml").write_text(yaml.safe_dump({"config": values}))
    assert fleet.run(monkeypatch) == 2
    err = capsys.readouterr().err
    assert ("kumo:deployment.cloud: the Existing machines over SSH (VMware, bare metal, any VM) target takes "
            "machines that exist already: kumo-infra creates no machine there, so it has none to replace. Replace "
            "one yourself: kumo-infra drain --stack fleet --node N, then rebuild that host") in err
    assert fleet.calls == []


def test_a_machine_missing_from_the_state_is_bad_input_before_any_drain(tmp_path, monkeypatch, capsys):
    fleet = Fleet(tmp_path, monkeypatch)
    state = fleet.command.backend.state["stacks"][STACK]
    state["resources"] = [r for r in state["resources"] if r["urn"] != fleet.machine_urn("node3")]
    assert fleet.run(monkeypatch) == 2
    err = capsys.readouterr().err
    assert ("the state of stack fleet holds no aws:ec2/instance:Instance named kumo-dev-node3-vm (node3's machine)"
            in err)
    assert fake_pulumi.verbs(fleet.calls) == ["stack select", "stack output", "stack export"] and fleet.log == []


def test_a_stack_without_the_api_output_is_bad_input(tmp_path, monkeypatch, capsys):
    fleet = Fleet(tmp_path, monkeypatch)
    fleet.command.backend.state["stacks"][STACK]["outputs"]["api"] = None
    assert fleet.run(monkeypatch) == 2
    assert "--stack: stack fleet has no api output: run pulumi up since network.api_cidrs was set" \
        in capsys.readouterr().err
    assert fleet.log == []


def test_a_stack_file_without_api_cidrs_is_refused_before_pulumi(tmp_path, monkeypatch, capsys):
    fleet = Fleet(tmp_path, monkeypatch, network={"api_cidrs": []})
    assert fleet.run(monkeypatch) == 2
    assert "kumo:deployment.network.api_cidrs: is empty: the nodes' API listens on their loopback only" \
        in capsys.readouterr().err
    assert fleet.calls == []


def test_outputs_of_another_node_count_are_bad_input(tmp_path, monkeypatch, capsys):
    fleet = Fleet(tmp_path, monkeypatch)
    outputs = fleet.command.backend.state["stacks"][STACK]["outputs"]
    outputs["nodes"] = outputs["nodes"][:2]
    assert fleet.run(monkeypatch) == 2
    assert "nodes output lists node1, node2, its stack file plans node1, node2, node3" in capsys.readouterr().err
    assert fleet.log == []


# -- interrupts ------------------------------------------------------------------------------------

def test_an_interrupt_during_the_up_says_where_it_stopped(tmp_path, monkeypatch, capsys):
    fleet = Fleet(tmp_path, monkeypatch)

    def interrupted(argv):
        raise KeyboardInterrupt()

    fleet.command.backend.hooks["up"] = interrupted
    assert fleet.run(monkeypatch) == 1
    err = capsys.readouterr().err
    assert "roll of stack fleet stopped at node1, step replace: interrupted" in err
    assert f"--target '{fleet.machine_urn('node1')}' --target-dependents" in err
    assert "rolled: none; not touched: node2, node3" in err
    assert fleet.log[-1].startswith("drain node1")


def test_an_interrupt_during_a_drain_stops_before_the_up(tmp_path, monkeypatch, capsys):
    fleet = Fleet(tmp_path, monkeypatch)

    def drain(node, **kwargs):
        raise KeyboardInterrupt()

    monkeypatch.setattr(fleet, "drain", drain)
    assert fleet.run(monkeypatch) == 1
    assert "stopped at node1, step drain: interrupted" in capsys.readouterr().err
    assert fleet.ups() == []


# -- the health check itself ---------------------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


API = NodeApi("node1", "https://198.51.100.1:8443", "kumo-api", "pw", "CA PEM", "10.0.0.1")
NODE = {"name": "node1", "hostname": "mta1.example.com", "public_ip": "198.51.100.1", "machine_id": "i-1"}


def test_health_is_smoke_then_liveness_within_one_deadline(tmp_path):
    seen = []
    clock = Clock()

    def smoke(deployment, nodes, *, console, deadline_s):
        seen.append(("smoke", nodes, console, deadline_s))
        clock.now += 100
        return SmokeReport((Check("node1", "smtp", True, "220"), Check("node1", "bootstrap", True, "OK")))

    answers = iter([(False, "answered 503"), (True, "answered 200")])

    def live(api, timeout):
        seen.append(("live", api.name))
        return next(answers)

    check = roll.default_health("DEPLOYMENT", "CONSOLE", run_smoke=smoke, live=live, clock=clock, sleep=clock.sleep)
    assert check(NODE, API, 900.0) == roll.Health(True, "answered 200")
    assert seen == [("smoke", [NODE], "CONSOLE", 900.0), ("live", "node1"), ("live", "node1")]


def test_health_fails_on_a_smoke_failure_without_asking_liveness():
    def smoke(deployment, nodes, *, console, deadline_s):
        return SmokeReport((Check("node1", "bootstrap", False, "FAILED step=spool: no disk"),))

    def live(api, timeout):
        pytest.fail("liveness asked after a failed smoke")

    check = roll.default_health("D", None, run_smoke=smoke, live=live)
    assert check(NODE, API, 60.0) == roll.Health(False, "FAIL node1 bootstrap: FAILED step=spool: no disk")


def test_health_fails_when_liveness_never_answers_200_by_the_deadline():
    clock = Clock()

    def smoke(deployment, nodes, *, console, deadline_s):
        return SmokeReport((Check("node1", "smtp", True, "220"),))

    check = roll.default_health("D", None, run_smoke=smoke, live=lambda api, t: (False, "answered 503"),
                                clock=clock, sleep=clock.sleep)
    assert check(NODE, API, 30.0) == roll.Health(False, "liveness: answered 503")
    assert clock.now == 30.0


class _Live(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        self.send_response(200 if self.path == roll.LIVENESS_PATH else 404)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_liveness_trusts_the_deployments_certificate_and_nothing_else(tmp_path):
    (tmp_path / "node").mkdir()
    (tmp_path / "other").mkdir()
    key, cert, _ = make_pair(tmp_path / "node")
    _, other_cert, _ = make_pair(tmp_path / "other")
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    server = StandIn(_Live, tls)
    try:
        api = NodeApi("node1", server.url, "kumo-api", "pw", cert.read_text(), "10.0.0.1")
        assert roll.liveness(api, 5.0) == (True, f"{server.url}{roll.LIVENESS_PATH} answered 200")
        ok, said = roll.liveness(NodeApi("node1", server.url, "kumo-api", "pw", other_cert.read_text(), None), 5.0)
        assert not ok and "the node's certificate does not verify against the deployment's API certificate" in said
        server.check()
    finally:
        server.stop()


def test_liveness_reports_a_refused_connection():
    ok, said = roll.liveness(NodeApi("node1", "https://127.0.0.1:9", "kumo-api", "pw", None, None), 5.0)
    assert not ok and said.startswith("cannot reach https://127.0.0.1:9/api/check-liveness/v1: ")


# -- the command as users run it ------------------------------------------------------------------------

def test_cli_single_node_refusal_runs_no_pulumi_at_all(tmp_path):
    project, env, state_path = _project(tmp_path, nodes=1)
    result = subprocess.run([sys.executable, "-m", "kumo_infra.cli", "roll", "--stack", STACK], cwd=project, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result
    assert "--allow-downtime: stack fleet has one node" in result.stderr and "Traceback" not in result.stderr
    assert fake_pulumi.read_state(state_path)["calls"] == []


def test_cli_a_stack_missing_from_the_backend_exits_2_after_asking_pulumi(tmp_path):
    project, env, state_path = _project(tmp_path, nodes=2)
    result = subprocess.run([sys.executable, "-m", "kumo_infra.cli", "roll", "--stack", STACK], cwd=project, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result
    assert "--stack: no stack fleet in this backend: bring it up first (pulumi up --stack fleet)" in result.stderr
    assert "Traceback" not in result.stderr
    assert fake_pulumi.verbs(fake_pulumi.read_state(state_path)["calls"]) == ["version", "stack select"]


def _project(tmp_path: Path, nodes: int) -> tuple[Path, dict, Path]:
    project = write_project(tmp_path, "aws-dev", nodes=nodes, network={"api_cidrs": ["203.0.113.0/24"]})
    state_path = tmp_path / "pulumi-state.json"
    env = fake_pulumi.install(tmp_path / "bin", state_path)
    env["PYTHONPATH"] = str(ROOT)
    return project, env, state_path


def test_the_state_json_shape_is_what_the_fake_exports(tmp_path, monkeypatch):
    """machine_urns reads `stack export` as the CLI prints it (apitype.UntypedDeployment)."""
    fleet = Fleet(tmp_path, monkeypatch, nodes=2)
    exported = json.loads(fleet.command.backend.cmd_stack_export([], {"--stack": STACK}, str(fleet.project))[0])
    from kumo_infra.stackconfig import load_file

    stack = load_file(fleet.project / "stacks" / f"Pulumi.{STACK}.yaml", stack=STACK)
    assert roll.machine_urns(exported, stack, ["node2", "node1"]) == {
        "node2": fleet.machine_urn("node2"), "node1": fleet.machine_urn("node1")}


def test_cli_without_the_api_password_exits_2_after_reading_the_outputs_only(tmp_path):
    project, env, state_path = _project(tmp_path, nodes=2)
    state = fake_pulumi.new_state(stacks={STACK: {"tags": {}, "resources": [], "history": [], "secret_outputs": [],
                                                  "created": fake_pulumi.now_text(), "project": PROJECT,
                                                  "outputs": _two_node_outputs()}})
    state_path.write_text(json.dumps(state))
    env.pop(PASSWORD_ENV, None)
    result = subprocess.run([sys.executable, "-m", "kumo_infra.cli", "roll", "--stack", STACK], cwd=project, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result
    assert f"{PASSWORD_ENV}: is not set: export it with the API password, which this prints" in result.stderr
    assert "aws secretsmanager get-secret-value" in result.stderr and "Traceback" not in result.stderr
    assert fake_pulumi.verbs(fake_pulumi.read_state(state_path)["calls"]) == ["version", "stack select",
                                                                              "stack output"]


def _two_node_outputs() -> dict:
    nodes = [{"name": f"node{i}", "hostname": f"mta{i}.example.com", "public_ip": f"198.51.100.{i}",
              "private_ip": f"10.0.0.{i}", "machine_id": f"i-{i}"} for i in (1, 2)]
    return {"nodes": nodes, "api": {"user": "kumo-api", "ca_certificate": "PEM",
                                    "endpoints": [{"ip_url": f"https://{n['public_ip']}:8443"} for n in nodes]}}


def test_drain_apis_are_each_nodes_ip_url_certificate_and_private_address():
    from kumo_infra.stackconfig import from_values

    values = read_values(ROOT / "stacks" / "Pulumi.aws-dev.yaml")
    values["kumo:deployment"].update(nodes=2, network={"api_cidrs": ["203.0.113.0/24"]})
    deployment = from_values(STACK, values).deployment
    apis = roll.drain_apis(deployment, _two_node_outputs(), env={PASSWORD_ENV: "the-password"})
    assert apis == [NodeApi("node1", "https://198.51.100.1:8443", "kumo-api", "the-password", "PEM", "10.0.0.1"),
                    NodeApi("node2", "https://198.51.100.2:8443", "kumo-api", "the-password", "PEM", "10.0.0.2")]
    assert "the-password" not in repr(apis)

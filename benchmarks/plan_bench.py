#!/usr/bin/env python3
"""Whole-process time and peak memory of `kumo-infra plan`, against each cloud SDK's import floor.

    python benchmarks/plan_bench.py                 # 1, 10 and 100 nodes on each cloud, 3 runs each
    python benchmarks/plan_bench.py --nodes 1 5 --runs 1

Targets (issue 4): a 1-node plan within 1.5x of its cloud's floor; each extra node under 10 ms.
The floor is `python -c "import <sdk>; <sdk>.<Instance class>"`: what any program that
creates a machine on that cloud pays before doing anything. A second floor imports every
SDK module the plan itself loads (a VM on Azure needs the network module for its NIC, the
component needs IAM and the secret store): the difference between that floor and the plan
is kumo-infra's own cost. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
FLOORS = {
    "aws": "import pulumi_aws; pulumi_aws.ec2.Instance",
    "azure": "import pulumi_azure_native.compute as c; c.VirtualMachine",
    "gcp": "import pulumi_gcp; pulumi_gcp.compute.Instance",
}
STACKS = {"aws": "aws-dev", "azure": "azure-dev", "gcp": "gcp-dev"}

# Runs a command as the only child, then reports its wall time and peak RSS (KiB).
_MEASURE = r"""
import resource, subprocess, sys, time, json
t = time.perf_counter()
rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
wall = time.perf_counter() - t
print(json.dumps({"rc": rc, "seconds": wall, "peak_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""


def measure(argv: list[str]) -> dict:
    out = subprocess.run([PYTHON, "-c", _MEASURE, *argv], capture_output=True, text=True, check=True, cwd=ROOT)
    result = json.loads(out.stdout)
    if result["rc"] != 0:
        raise SystemExit(f"command failed: {' '.join(argv)}")
    return result


def best_of(argv: list[str], runs: int) -> dict:
    samples = [measure(argv) for _ in range(runs)]
    return {"seconds": min(s["seconds"] for s in samples),
            "median_seconds": statistics.median(s["seconds"] for s in samples),
            "peak_mib": max(s["peak_kib"] for s in samples) / 1024}


# Which SDK modules a plan loads: the plan runs in-process, then sys.modules is read.
_SDK_MODULES = r"""
import contextlib, io, json, sys
from kumo_infra import cli
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    rc = cli.main(["plan", "--config", sys.argv[1], "--json"])
sdks = ("pulumi_aws", "pulumi_azure_native", "pulumi_gcp", "pulumi_tls")
# The SDKs register every submodule lazily; only those still lazy were never used.
loaded = [name for name, mod in list(sys.modules.items()) if name.split(".")[0] in sdks and name.count(".") <= 1
          and not name.split(".")[-1].startswith("_") and type(mod).__name__ != "_LazyModule"]
print(json.dumps({"rc": rc, "modules": sorted(loaded)}))
"""


def sdk_modules_floor(stack: Path) -> str:
    out = subprocess.run([PYTHON, "-c", _SDK_MODULES, str(stack)], capture_output=True, text=True, check=True, cwd=ROOT)
    result = json.loads(out.stdout)
    if result["rc"] != 0:
        raise SystemExit(f"plan failed for {stack}")
    # Lazy SDK packages load a submodule on first access to an attribute that is not module
    # metadata (dir() is not enough): ask each one for a name it does not have.
    return "import importlib\n" + "\n".join(f"hasattr(importlib.import_module({m!r}), '_load')" for m in result["modules"])


def stack_with_nodes(cloud: str, nodes: int, directory: Path) -> Path:
    doc = yaml.safe_load((ROOT / "stacks" / f"Pulumi.{STACKS[cloud]}.yaml").read_text())
    doc["config"]["kumo:deployment"]["nodes"] = nodes
    path = directory / f"Pulumi.bench-{cloud}-{nodes}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clouds", nargs="+", default=list(FLOORS), choices=list(FLOORS))
    parser.add_argument("--nodes", nargs="+", type=int, default=[1, 10, 100])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    env_note = f"python {sys.version.split()[0]}, {os.cpu_count()} cpu"
    print(f"kumo-infra plan benchmark ({env_note}; best of {args.runs} runs)")
    print(f"{'cloud':<6} {'what':<16} {'seconds':>8} {'peak MiB':>9} {'vs floor':>9} {'per extra node':>15} {'vs SDK used':>11}")
    with tempfile.TemporaryDirectory() as tmp:
        for cloud in args.clouds:
            floor = best_of([PYTHON, "-c", FLOORS[cloud]], args.runs)
            print(f"{cloud:<6} {'import floor':<16} {floor['seconds']:>8.2f} {floor['peak_mib']:>9.0f}")
            used = best_of([PYTHON, "-c", sdk_modules_floor(stack_with_nodes(cloud, 1, Path(tmp)))], args.runs)
            print(f"{cloud:<6} {'SDK modules used':<16} {used['seconds']:>8.2f} {used['peak_mib']:>9.0f} "
                  f"{used['seconds'] / floor['seconds']:>8.2f}x")
            first = None
            for n in sorted(args.nodes):
                stack = stack_with_nodes(cloud, n, Path(tmp))
                r = best_of([PYTHON, "-m", "kumo_infra.cli", "plan", "--config", str(stack), "--json"], args.runs)
                if first is None:
                    first = (n, r["seconds"])
                per_node = "" if n == first[0] else f"{(r['seconds'] - first[1]) / (n - first[0]) * 1000:.1f} ms"
                print(f"{cloud:<6} {f'plan {n} node(s)':<16} {r['seconds']:>8.2f} {r['peak_mib']:>9.0f} "
                      f"{r['seconds'] / floor['seconds']:>8.2f}x {per_node:>15} "
                      f"{r['seconds'] / used['seconds']:>8.2f}x")


if __name__ == "__main__":
    main()

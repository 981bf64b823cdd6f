#!/usr/bin/env python3
"""The Pulumi SDK's own cost per node, without kumo-infra: a reference for plan_bench.py.

Registers, under the same offline mock engine as `kumo-infra plan`, the four resources
an AWS node of the aws-dev stack has (Elastic IP, instance, EBS spool volume, attachment)
with minimal inputs, for 1 and N nodes, and prints the time per extra node. Whatever
kumo-infra does per node comes on top of this.

    python benchmarks/sdk_per_node.py [--nodes 101] [--runs 3]
"""

from __future__ import annotations

import argparse
import subprocess
import sys

_PROGRAM = r"""
import sys, time
import pulumi_aws as aws
from kumo_infra import offline

n = int(sys.argv[1])


def program():
    for i in range(n):
        aws.ec2.Eip(f"eip{i}", domain="vpc")
        vm = aws.ec2.Instance(f"vm{i}", ami="ami-placeholder", instance_type="t3.medium",
                              metadata_options={"http_tokens": "required"}, root_block_device={"encrypted": True})
        vol = aws.ebs.Volume(f"vol{i}", availability_zone="eu-west-1a", size=20, encrypted=True)
        aws.ec2.VolumeAttachment(f"att{i}", device_name="/dev/sdf", volume_id=vol.id, instance_id=vm.id)


start = time.perf_counter()
offline.run(program, {}, stack="bench")
print(time.perf_counter() - start)
"""


def seconds(nodes: int, runs: int) -> float:
    samples = []
    for _ in range(runs):
        out = subprocess.run([sys.executable, "-c", _PROGRAM, str(nodes)], capture_output=True, text=True, check=True)
        samples.append(float(out.stdout.strip().splitlines()[-1]))
    return min(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=101)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    one, many = seconds(1, args.runs), seconds(args.nodes, args.runs)
    print(f"Pulumi SDK alone, 4 AWS resources per node, offline engine (best of {args.runs}):")
    print(f"  1 node: {one:.2f} s   {args.nodes} nodes: {many:.2f} s   "
          f"per extra node: {(many - one) / (args.nodes - 1) * 1000:.1f} ms")


if __name__ == "__main__":
    main()

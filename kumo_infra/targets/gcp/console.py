"""A Compute Engine instance's serial port output, read with the gcloud CLI the CI runner is
logged in to.

``gcloud compute instances get-serial-port-output NAME --zone Z --project P`` prints the
output of serial port 1 (the console) as it is, on standard output (the command's display
format is ``value[no-quote](contents)``; its note "Specify --start=N in the next
get-serial-port-output invocation ..." goes to standard error: googlecloudsdk surface
compute/instances/get_serial_port_output.py). The API returns the last 1 MB, which ends with the
bootstrap's result line.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from ...smoke import CliConsole, CliRunner, checked_id, run_cli

if TYPE_CHECKING:
    from ...config import Deployment

# The instance's self link, the node output machine_id: .../projects/P/zones/Z/instances/NAME.
# Project ids may carry a domain prefix ("example.com:project"); names and zones are RFC 1035 labels.
SELF_LINK = re.compile(
    r"https://(?:www|compute)\.googleapis\.com/compute/(?:v1|beta)/"
    r"projects/(?P<project>(?:[a-z0-9][-a-z0-9.]*[a-z0-9]:)?[a-z][-a-z0-9]{4,28}[a-z0-9])/"
    r"zones/(?P<zone>[a-z]+-[a-z]+[0-9]+-[a-z])/"
    r"instances/(?P<name>[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?)")


class GcpConsole(CliConsole):
    def argv(self, node: dict) -> list[str]:
        link = checked_id(node.get("machine_id"), SELF_LINK, "a Compute Engine instance self link",
                          "https://www.googleapis.com/compute/v1/projects/my-project/zones/us-central1-a/"
                          "instances/kumo-1")
        return ["gcloud", "compute", "instances", "get-serial-port-output", link["name"], "--zone", link["zone"],
                "--project", link["project"]]


def reader(deployment: "Deployment", run: CliRunner = run_cli) -> GcpConsole:
    return GcpConsole(run)

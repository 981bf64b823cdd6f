"""An Azure VM's serial log from boot diagnostics, read with the az CLI the CI runner is logged
in to.

``az vm boot-diagnostics get-boot-log --ids ID`` (learn.microsoft.com/cli/azure/vm/boot-diagnostics)
prints the log itself when boot diagnostics write to the user's storage account, but with
managed storage (what kumo-infra enables) the command returns the log as a JSON string, escapes
and NUL padding included (Azure/azure-cli issues 29374 and 29890, open): both shapes are read.
The log blob is written by the platform a few minutes behind the console.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING

from ...smoke import CliConsole, CliRunner, checked_id, run_cli

if TYPE_CHECKING:
    from ...config import Deployment

# The VM's resource id, the node output machine_id. Resource group names take letters, digits,
# '_', '-', '.', '(' and ')' (not ending in '.'), VM names letters, digits, '_', '-' and '.'.
VM_ID = re.compile(
    r"/subscriptions/[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}"
    r"/resourceGroups/[-\w.()]{0,89}[-\w()]"
    r"/providers/Microsoft\.Compute/virtualMachines/[-\w.]{1,64}", re.IGNORECASE)


def boot_log_text(out: str) -> str:
    """The log in what the command printed: a JSON string (managed storage) or the text itself."""
    if out.lstrip().startswith('"'):
        try:
            decoded = json.loads(out)
        except ValueError:
            decoded = None
        if isinstance(decoded, str):
            out = decoded
    return out.replace("\x00", "")


class AzureConsole(CliConsole):
    def argv(self, node: dict) -> list[str]:
        vm = checked_id(node.get("machine_id"), VM_ID, "an Azure VM resource id",
                        "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/kumo/providers/"
                        "Microsoft.Compute/virtualMachines/kumo-1")
        return ["az", "vm", "boot-diagnostics", "get-boot-log", "--ids", vm.group(0)]

    def parse(self, out: str) -> str:
        return boot_log_text(out)


def reader(deployment: "Deployment", run: CliRunner = run_cli) -> AzureConsole:
    return AzureConsole(run)

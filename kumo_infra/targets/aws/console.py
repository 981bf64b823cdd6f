"""An EC2 instance's console output, read with the AWS CLI the CI runner is logged in to.

``aws ec2 get-console-output --instance-id ID --region R --latest --output json`` answers
``{"InstanceId": ..., "Timestamp": ..., "Output": ...}``. The API sends Output base64-encoded
and the CLI decodes it before printing (AWS CLI v2, awscli/botocore/handlers.py
decode_console_output, registered for 'after-call.ec2.GetConsoleOutput'; the service model says
"If you are using a command line tool, the tool decodes the output for you"); Output is absent
until the instance has written something. ``--latest`` asks for the output as it is now rather
than the output buffered at the last state change (GetConsoleOutputRequest.Latest); only Nitro
instances have it, so where the call fails (t2.medium in the catalog is Xen) the buffered output
is read instead, at every read: a passing failure on Nitro must not leave it on the stale copy.
The CLI pages only to a terminal (awscli/utils.py OutputStreamFactory), never here.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING

from ...errors import shown
from ...smoke import CliConsole, CliRunner, ConsoleError, checked_id, run_cli

if TYPE_CHECKING:
    from ...config import Deployment

INSTANCE_ID = re.compile(r"i-(?:[0-9a-f]{8}|[0-9a-f]{17})")
REGION = re.compile(r"[a-z]{2}(?:-[a-z]+)+-[0-9]{1,2}")


class AwsConsole(CliConsole):
    def __init__(self, region: str, run: CliRunner = run_cli) -> None:
        super().__init__(run)
        self.region = region

    def argv(self, node: dict) -> list[str]:
        instance = checked_id(node.get("machine_id"), INSTANCE_ID, "an EC2 instance id", "i-0123456789abcdef0")
        if not isinstance(self.region, str) or not REGION.fullmatch(self.region):
            raise ConsoleError(f"kumo:deployment.region {shown(self.region)} is not an AWS region (like us-east-1)",
                               final=True)
        return ["aws", "ec2", "get-console-output", "--instance-id", instance.group(0), "--region", self.region,
                "--latest", "--output", "json"]

    def read(self, node: dict) -> str:
        try:
            return super().read(node)
        except ConsoleError as latest_failed:
            if latest_failed.final:
                raise
            buffered = [arg for arg in self.argv(node) if arg != "--latest"]
            try:
                return self.parse(self.run(buffered, self.timeout_s))
            except ConsoleError:
                raise latest_failed from None

    def parse(self, out: str) -> str:
        try:
            answer = json.loads(out)
        except ValueError:
            raise ConsoleError(f"aws ec2 get-console-output printed no JSON: {shown(out, 200)}") from None
        if not isinstance(answer, dict) or not isinstance(answer.get("Output", ""), str):
            raise ConsoleError(f"aws ec2 get-console-output answered {shown(out, 200)}, without an Output text")
        return answer.get("Output", "")


def reader(deployment: "Deployment", run: CliRunner = run_cli) -> AwsConsole:
    return AwsConsole(deployment.region, run)

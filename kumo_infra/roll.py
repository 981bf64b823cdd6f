"""``kumo-infra roll``: replace a fleet's machines one at a time, draining each first.

INTERFACE STUB (issue 12): implemented by the roll work.
"""

from __future__ import annotations

from typing import Any


def register(sub: Any) -> None:
    """The ``roll`` command under kumo-infra's subcommands."""


def run(args: Any) -> int:
    raise NotImplementedError("issue 12: roll")

"""Moved to kumo_infra/targets/aws/offline.py (TARGET.offline_computed, TARGET.offline_invokes).

A re-export until kumo_infra/offline.py reads the answers from the target registry (issue 9).
"""

from ..targets.aws.offline import COMPUTED, INVOKES

__all__ = ["COMPUTED", "INVOKES"]

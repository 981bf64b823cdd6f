"""Kept for existing programs: ``from kumo_infra.clouds.gcp import GcpKumoMta`` keeps working.

The component lives in kumo_infra/targets/gcp/component.py (issue 9: one package per target);
new code imports it from there.
"""

from ..targets.gcp.component import *  # noqa: F401,F403
from ..targets.gcp.component import __all__  # noqa: F401

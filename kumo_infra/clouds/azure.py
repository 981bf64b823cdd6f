"""Kept for existing programs: ``from kumo_infra.clouds.azure import AzureKumoMta`` keeps working.

The component lives in kumo_infra/targets/azure/component.py (issue 9: one package per target);
new code imports it from there.
"""

from ..targets.azure.component import *  # noqa: F401,F403
from ..targets.azure.component import __all__  # noqa: F401

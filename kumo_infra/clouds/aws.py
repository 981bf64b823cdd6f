"""Kept for existing programs: ``from kumo_infra.clouds.aws import AwsKumoMta`` keeps working.

The component lives in kumo_infra/targets/aws/component.py (issue 9: one package per target);
new code imports it from there.
"""

from ..targets.aws.component import *  # noqa: F401,F403
from ..targets.aws.component import __all__  # noqa: F401

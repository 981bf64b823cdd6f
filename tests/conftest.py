from __future__ import annotations

import copy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STACKS = sorted(p.name[len("Pulumi."):-len(".yaml")] for p in (ROOT / "stacks").glob("Pulumi.*.yaml"))

BASE = {
    "cloud": "aws",
    "region": "us-east-1",
    "name": "kumo-test",
    "hostname": "mta.example.com",
    "os": "rocky9",
}


def deployment(**overrides) -> dict:
    """A minimal valid kumo:deployment dict with nested overrides (sizing={...} merges)."""
    return merged(BASE, **overrides)


def merged(base: dict, **overrides) -> dict:
    """A copy of ``base`` with ``overrides``; a dict override merges into a dict value."""
    d = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(d.get(key), dict):
            d[key].update(value)
        else:
            d[key] = value
    return d


@pytest.fixture
def project_root() -> Path:
    return ROOT

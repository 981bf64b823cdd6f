"""The curated instance-type catalog: data files in ``kumo_infra/catalog/``.

Figures (vCPU, memory, sustained and burst network, local NVMe, price) live in
one TOML file per target that creates machines (Target.catalog names it) so they
can be reviewed and refreshed without touching code. This module only loads and
checks them.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from . import targets

# The targets with a catalog, in the registry's order (a target of existing machines has none).
CLOUDS = tuple(name for name, target in targets.registry().items() if target.catalog)
CATALOG_DIR = Path(__file__).resolve().parent / "catalog"


@dataclass(frozen=True)
class InstanceType:
    cloud: str
    name: str
    family: str
    vcpu: int
    memory_gib: float
    arch: str
    burstable_cpu: bool
    baseline_gbps: float
    burst_gbps: float
    nvme_count: int
    nvme_gb_each: int
    nvme_attach: str  # none | builtin | scratch
    price_usd_hour: float
    nvme_price_usd_hour: float = 0.0
    nvme_controller_required: bool = False
    accelerated_networking: bool = False
    tier1_gbps: float = 0.0
    notes: str = ""

    @property
    def has_nvme(self) -> bool:
        return self.nvme_attach != "none" and self.nvme_count > 0

    @property
    def nvme_gb(self) -> int:
        return self.nvme_count * self.nvme_gb_each if self.has_nvme else 0

    def price_with(self, storage: str) -> float:
        """Hourly price of one machine, counting separately billed NVMe when the spool uses it."""
        extra = self.nvme_price_usd_hour if storage == "local_nvme" else 0.0
        return round(self.price_usd_hour + extra, 6)


# Hours in a month as the clouds' own calculators count them (365 * 24 / 12).
HOURS_PER_MONTH = 730


@dataclass(frozen=True)
class ManagedRedis:
    """The managed Redis a fleet's nodes share their throttles through, as the target's component
    creates it (Target.managed_redis): its class, and what it costs in the catalog's region."""

    title: str  # "Amazon ElastiCache (Redis OSS)"
    instance: str  # what is created, as the cloud bills it: "cache.t4g.small, primary and 1 replica"
    price_usd_hour: float  # every node of it, on demand
    price_taken: str
    source: str

    @property
    def price_usd_month(self) -> float:
        return round(self.price_usd_hour * HOURS_PER_MONTH, 2)


@dataclass(frozen=True)
class Catalog:
    cloud: str
    price_region: str
    price_taken: str
    price_basis: str
    sources: tuple[str, ...]
    types: tuple[InstanceType, ...]
    redis: ManagedRedis | None = None  # [redis]: None where the target creates no Redis

    def get(self, name: str) -> InstanceType | None:
        return next((t for t in self.types if t.name == name), None)


_REQUIRED = {
    "name": str, "family": str, "vcpu": int, "memory_gib": (int, float), "arch": str, "burstable_cpu": bool,
    "baseline_gbps": (int, float), "burst_gbps": (int, float), "nvme_count": int, "nvme_gb_each": int,
    "nvme_attach": str, "price_usd_hour": (int, float),
}
_OPTIONAL = {
    "nvme_price_usd_hour": (int, float), "nvme_controller_required": bool, "accelerated_networking": bool,
    "tier1_gbps": (int, float), "notes": str,
}


class CatalogError(ValueError):
    pass


def _is(value: object, kind: type | tuple[type, ...]) -> bool:
    """isinstance, except that a TOML boolean is never taken for a number (bool is an int)."""
    if isinstance(value, bool):
        return kind is bool
    return isinstance(value, kind)


def parse(cloud: str, data: dict) -> Catalog:
    """Build a catalog from decoded TOML, refusing any entry that breaks the schema."""
    source = data.get("source", {})
    if source.get("cloud") != cloud:
        raise CatalogError(f"{cloud}.toml: [source].cloud must be '{cloud}'")
    types = []
    seen = set()
    for i, entry in enumerate(data.get("types", [])):
        where = f"{cloud}.toml types[{i}] ({entry.get('name', '?')})"
        for key, kind in _REQUIRED.items():
            if not _is(entry.get(key), kind):
                raise CatalogError(f"{where}: '{key}' missing or of the wrong type")
        for key, kind in _OPTIONAL.items():
            if key in entry and not _is(entry[key], kind):
                raise CatalogError(f"{where}: '{key}' of the wrong type")
        for key in entry:
            if key not in _REQUIRED and key not in _OPTIONAL:
                raise CatalogError(f"{where}: unknown key '{key}'")
        if entry["name"] in seen:
            raise CatalogError(f"{where}: duplicate name")
        seen.add(entry["name"])
        if entry["nvme_attach"] not in ("none", "builtin", "scratch"):
            raise CatalogError(f"{where}: nvme_attach must be none, builtin or scratch")
        if (entry["nvme_attach"] == "none") != (entry["nvme_count"] == 0):
            raise CatalogError(f"{where}: nvme_attach and nvme_count disagree")
        if entry["baseline_gbps"] > entry["burst_gbps"]:
            raise CatalogError(f"{where}: baseline_gbps above burst_gbps")
        if entry["arch"] not in ("x86_64", "arm64"):
            raise CatalogError(f"{where}: arch must be x86_64 or arm64")
        types.append(InstanceType(cloud=cloud, **{**entry, "memory_gib": float(entry["memory_gib"])}))
    if not types:
        raise CatalogError(f"{cloud}.toml: no [[types]]")
    redis = _redis(cloud, data["redis"]) if "redis" in data else None
    return Catalog(
        cloud=cloud,
        price_region=source.get("price_region", ""),
        price_taken=source.get("price_taken", ""),
        price_basis=source.get("price_basis", ""),
        sources=tuple(source.get("sources", ())),
        types=tuple(types),
        redis=redis,
    )


_REDIS = {"title": str, "instance": str, "price_usd_hour": (int, float), "price_taken": str, "source": str}


def _redis(cloud: str, entry: dict) -> ManagedRedis:
    if set(entry) != set(_REDIS):
        raise CatalogError(f"{cloud}.toml [redis]: needs exactly {', '.join(_REDIS)}")
    for key, kind in _REDIS.items():
        if not _is(entry[key], kind):
            raise CatalogError(f"{cloud}.toml [redis]: '{key}' of the wrong type")
    if entry["price_usd_hour"] <= 0:
        raise CatalogError(f"{cloud}.toml [redis]: price_usd_hour must be positive")
    return ManagedRedis(**{**entry, "price_usd_hour": float(entry["price_usd_hour"])})


class NoCatalog(CatalogError):
    """The target takes machines as they are: there is no catalog to choose from."""


@cache
def load(cloud: str) -> Catalog:
    target = targets.registry().get(cloud)
    if target is None:
        raise CatalogError(f"unknown cloud '{cloud}'")
    if target.catalog is None:
        raise NoCatalog(f"{target.title} has no instance catalog: kumo-infra installs on machines that exist "
                        "already, so there are no types to list or choose from")
    with open(CATALOG_DIR / target.catalog, "rb") as f:
        return parse(cloud, tomllib.load(f))

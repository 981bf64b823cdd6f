"""The sizing planner: from a mail workload to an instance type and a node count.

Pure Python, no Pulumi. Every candidate type in the target's catalog is checked
against hard constraints (memory and disk floors, profile, architecture, local
NVMe) and then given the smallest node count that carries the workload
(message rate, sustained bandwidth, spool capacity). The cheapest fleet wins;
the plan says which constraint ruled out the next cheaper type.

A target of machines that exist already has no catalog: ``plan_without_catalog``
states what each of its machines must at least have for the workload.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from . import targets
from .catalog import Catalog, InstanceType, ManagedRedis
from .errors import ConfigError, Problem

MIN_MEMORY_GIB = 4.0
MIN_DISK_GB = 20
PERFORMANCE_MIN_VCPU = 4
PERFORMANCE_MIN_NIC_GBPS = 10.0
# KumoMTA reserves this much per message in the spool beyond its body.
SPOOL_OVERHEAD_BYTES = 512
# define_spool refuses new mail below 10% free space by default.
SPOOL_MIN_FREE = 0.10
# About 2 KB of log per message (KumoMTA performance docs).
LOG_BYTES_PER_MESSAGE = 2_000
OS_DISK_BASE_GB = 20
MAX_NODES = 100

# KumoMTA's published throughput (messages/hour, 100 KB messages) by vCPU count:
# 2/4/8/16 vCPU from the sink benchmark; 32/64/96 from the AWS runs with DKIM and
# RocksDB (c5a.8xlarge, c6g.16xlarge, c5.24xlarge). Interpolated linearly between
# points and flat beyond the ends; never extrapolated upwards.
PUBLISHED_THROUGHPUT: tuple[tuple[int, float], ...] = (
    (2, 2_700_000), (4, 4_400_000), (8, 4_900_000), (16, 5_100_000),
    (32, 5_100_000), (64, 6_090_000), (96, 6_830_000),
)
# Shared-core and credit-based types sustain only a fraction of their vCPUs
# (t3.medium: 20% per vCPU); plan them at that baseline, not their burst.
BURSTABLE_CPU_FACTOR = 0.2


def bandwidth_mbps(messages_per_hour: float, avg_message_kb: float) -> float:
    """Mean bandwidth of a workload: 1 M/h of 50 kB is about 111 Mbps."""
    return messages_per_hour * avg_message_kb * 1000 * 8 / 3600 / 1e6


def published_throughput(vcpu: int) -> float:
    points = PUBLISHED_THROUGHPUT
    if vcpu <= points[0][0]:
        return points[0][1] * vcpu / points[0][0]
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if vcpu <= x1:
            return y0 + (y1 - y0) * (vcpu - x0) / (x1 - x0)
    return points[-1][1]


def node_capacity_per_hour(t: InstanceType) -> float:
    rate = published_throughput(t.vcpu)
    return rate * BURSTABLE_CPU_FACTOR if t.burstable_cpu else rate


def sustained_gbps(t: InstanceType) -> float:
    """Sustained internet-bound bandwidth: the baseline, capped where the target caps it
    (Target.internet_cap_gbps)."""
    target = targets.get(t.cloud)
    if target.internet_cap_gbps is not None and t.vcpu < target.internet_cap_below_vcpu:
        return min(t.baseline_gbps, target.internet_cap_gbps)
    return t.baseline_gbps


@dataclass(frozen=True)
class Workload:
    cloud: str
    messages_per_hour: int
    avg_message_kb: float
    profile: str = "minimal"
    storage: str = "block"  # local_nvme | block
    headroom: float = 1.5
    hold_hours: float = 4.0
    log_retention_days: int = 7
    arches: frozenset[str] = frozenset({"x86_64"})
    instance_type: str | None = None
    nodes: int | None = None
    spool_size_gb: int | None = None
    # The fleet's Redis is the operator's own (fleet.redis_url), not one the target creates.
    external_redis: bool = False


@dataclass
class Plan:
    cloud: str
    instance_type: str
    nodes: int
    vcpu: int
    memory_gib: float
    arch: str
    local_nvme_gb: int
    nvme_count: int
    nvme_attach: str
    baseline_gbps: float
    burst_gbps: float
    sustained_gbps: float
    required_mbps: float
    required_mbps_per_node: float
    messages_per_hour: int
    capacity_per_node_per_hour: int
    spool_storage: str
    spool_gb_per_node: int
    os_disk_gb: int
    price_usd_hour: float
    total_price_usd_hour: float
    price_region: str
    price_taken: str
    decided_by: str
    reasons: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Fit:
    type: InstanceType
    nodes: int = 0
    needed: int = 0  # nodes the workload needs of this type, whatever nodes says
    failure: str = ""  # the first constraint this type fails, empty when it fits
    constraint: str = ""

    @property
    def fits(self) -> bool:
        return not self.failure


def _spool_need_gb(w: Workload, nodes: int) -> float:
    held = w.messages_per_hour / nodes * w.hold_hours
    return held * (w.avg_message_kb * 1000 + SPOOL_OVERHEAD_BYTES) / 1e9 / (1 - SPOOL_MIN_FREE)


def _os_disk_gb(w: Workload, nodes: int) -> int:
    logs = w.messages_per_hour / nodes * 24 * w.log_retention_days * LOG_BYTES_PER_MESSAGE / 1e9
    return max(MIN_DISK_GB, math.ceil(OS_DISK_BASE_GB + logs))


def _type_constraint(w: Workload, t: InstanceType) -> tuple[str, str]:
    """Hard per-type constraints: (constraint, why it fails) or ("", "")."""
    if t.memory_gib < MIN_MEMORY_GIB:
        return "memory", f"{t.memory_gib:g} GiB is below KumoMTA's {MIN_MEMORY_GIB:g} GiB minimum"
    if t.arch not in w.arches:
        return "architecture", f"KumoMTA publishes no {t.arch} package for this OS"
    if w.storage == "local_nvme" and not t.has_nvme:
        return "local NVMe", "it has no local NVMe for the spool"
    if w.profile == "performance":
        if t.vcpu < PERFORMANCE_MIN_VCPU:
            return "vCPU", f"{t.vcpu} vCPU is below the performance profile's {PERFORMANCE_MIN_VCPU}"
        if t.baseline_gbps < PERFORMANCE_MIN_NIC_GBPS:
            return "network", (f"its sustained {t.baseline_gbps:g} Gbps is below the performance profile's "
                               f"{PERFORMANCE_MIN_NIC_GBPS:g} Gbps (burst {t.burst_gbps:g} Gbps does not count)")
        if t.burstable_cpu:
            return "vCPU", "burstable CPU is not for the performance profile"
    return "", ""


def _nodes_needed(w: Workload, t: InstanceType) -> tuple[int, str]:
    """Smallest node count for which type ``t`` carries the workload, with the binding constraint."""
    need_rate = w.messages_per_hour * w.headroom
    by_rate = math.ceil(need_rate / node_capacity_per_hour(t))
    need_gbps = bandwidth_mbps(w.messages_per_hour, w.avg_message_kb) * w.headroom / 1000
    by_bw = math.ceil(need_gbps / sustained_gbps(t)) if sustained_gbps(t) > 0 else MAX_NODES + 1
    nodes, binding = max((by_rate, "throughput"), (by_bw, "bandwidth"), (1, "floor"))
    if w.storage == "local_nvme":
        while nodes <= MAX_NODES and _spool_need_gb(w, nodes) > t.nvme_gb:
            nodes, binding = nodes + 1, "spool capacity"
    return nodes, binding


def plan(w: Workload, catalog: Catalog, price_path: str = "") -> Plan:
    """Choose the cheapest fleet for ``w``. Raises ConfigError when nothing fits."""
    fits: list[_Fit] = []
    override = None
    if w.instance_type:
        override = catalog.get(w.instance_type)
        if override is None:
            raise ConfigError(Problem("kumo:deployment.sizing.instance_type",
                                      f"'{w.instance_type}' is not in kumo-infra's {catalog.cloud} catalog, so its "
                                      f"memory, network and NVMe cannot be checked; choose a listed type "
                                      f"(kumo-infra size --cloud {catalog.cloud} --list) or leave it unset"))
    candidates = [override] if override else list(catalog.types)
    for t in candidates:
        fit = _Fit(t)
        fit.constraint, fit.failure = _type_constraint(w, t)
        if fit.fits:
            fit.needed, fit.constraint = _nodes_needed(w, t)
            fit.nodes = fit.needed if w.nodes is None else w.nodes
            if fit.needed > MAX_NODES:
                fit.failure = f"it would need more than {MAX_NODES} nodes"
            elif fit.nodes < fit.needed:
                fit.failure = f"the workload needs {fit.needed} nodes of it ({fit.constraint}) but nodes is {w.nodes}"
        fits.append(fit)

    too_few_nodes = [f for f in fits if f.needed and f.nodes < f.needed <= MAX_NODES]
    if override and not fits[0].fits:
        fit = fits[0]
        path = "kumo:deployment.nodes" if fit in too_few_nodes else "kumo:deployment.sizing.instance_type"
        raise ConfigError(Problem(path, f"'{override.name}' cannot be used: {fit.failure}"))
    ok = [f for f in fits if f.fits]
    if not ok and too_few_nodes:
        least = min(f.needed for f in too_few_nodes)
        raise ConfigError(Problem("kumo:deployment.nodes",
                                  f"the workload needs at least {least} nodes on any catalog type but nodes is "
                                  f"{w.nodes}; raise nodes to {least} or remove it to let the planner decide"))
    if not ok:
        reasons = sorted({f"{f.type.name}: {f.failure}" for f in fits})[:4]
        raise ConfigError(Problem("kumo:deployment.sizing", "no instance type in the catalog fits this workload, "
                                  "e.g. " + "; ".join(reasons)))

    def cost(f: _Fit) -> tuple[float, int, float]:
        return (f.nodes * f.type.price_with(w.storage), f.nodes, -f.type.baseline_gbps)

    best = min(ok, key=cost)
    t = best.type
    best_cost = cost(best)[0]
    cheaper = sorted((f for f in fits if not f.fits and f.type.price_with(w.storage) < best_cost), key=lambda f: -f.type.price_with(w.storage))
    need_mbps = bandwidth_mbps(w.messages_per_hour, w.avg_message_kb)
    spool_gb = w.spool_size_gb or math.ceil(max(MIN_DISK_GB, _spool_need_gb(w, best.nodes)))
    if w.storage == "local_nvme":
        spool_gb = t.nvme_gb

    reasons = [
        f"workload: {w.messages_per_hour:,} messages/h x {w.avg_message_kb:g} kB = {need_mbps:,.1f} Mbps mean; "
        f"planned with {w.headroom:g}x headroom",
        f"{len(ok)} of {len(fits)} catalog types fit ({w.profile} profile, spool on {w.storage.replace('_', ' ')})",
        f"{t.name}: {t.vcpu} vCPU, {t.memory_gib:g} GiB, {sustained_gbps(t):g} Gbps sustained"
        + (f" (burst {t.burst_gbps:g} Gbps not counted)" if t.burst_gbps > t.baseline_gbps else "")
        + f", {node_capacity_per_hour(t):,.0f} messages/h per node from KumoMTA's published measurements",
        f"{best.nodes} node(s), bound by {best.constraint}",
        fleet_reason(w, best.nodes, catalog.redis, catalog.price_region),
    ]
    if override:
        decided_by = "explicit instance_type"
    elif cheaper:
        first = cheaper[0]
        decided_by = first.constraint
        reasons.append(f"cheaper {first.type.name} (${first.type.price_with(w.storage):.4f}/h) is ruled out: {first.failure}")
    else:
        decided_by = "price"
        reasons.append("cheapest type that fits")

    warnings = []
    if t.burstable_cpu:
        warnings.append(f"{t.name} has burstable CPU: planned at {BURSTABLE_CPU_FACTOR:.0%} of its vCPUs; sustained "
                        "load above that exhausts its credits")
    if w.storage == "local_nvme":
        warnings.append("the spool is on local NVMe: queued mail on a node is lost if that machine is stopped "
                        "or replaced; drain a node before stopping it")
    if w.spool_size_gb and w.storage == "block" and w.spool_size_gb < _spool_need_gb(w, best.nodes):
        warnings.append(f"spool.size_gb {w.spool_size_gb} is below the {_spool_need_gb(w, best.nodes):.0f} GB needed "
                        f"to hold {w.hold_hours:g} h of traffic")

    return Plan(
        cloud=catalog.cloud, instance_type=t.name, nodes=best.nodes, vcpu=t.vcpu, memory_gib=t.memory_gib,
        arch=t.arch, local_nvme_gb=t.nvme_gb, nvme_count=t.nvme_count if t.has_nvme else 0,
        nvme_attach=t.nvme_attach, baseline_gbps=t.baseline_gbps, burst_gbps=t.burst_gbps,
        sustained_gbps=sustained_gbps(t), required_mbps=round(need_mbps * w.headroom, 3),
        required_mbps_per_node=round(need_mbps * w.headroom / best.nodes, 3),
        messages_per_hour=w.messages_per_hour, capacity_per_node_per_hour=int(node_capacity_per_hour(t)),
        spool_storage=w.storage, spool_gb_per_node=spool_gb, os_disk_gb=_os_disk_gb(w, best.nodes),
        price_usd_hour=t.price_with(w.storage), total_price_usd_hour=round(best.nodes * t.price_with(w.storage), 4),
        price_region=catalog.price_region, price_taken=catalog.price_taken,
        decided_by=decided_by, reasons=reasons, warnings=warnings,
    )


def fleet_reason(w: Workload, nodes: int, redis: ManagedRedis | None, price_region: str) -> str:
    """Whether the plan is a fleet, and the Redis its nodes share their throttles through: the
    managed one the target creates (``redis``, the catalog's [redis] entry, with its price) or the
    operator's own (fleet.redis_url; the only way where the target creates none)."""
    if nodes == 1:
        return "1 node: it keeps its throttles itself, with no Redis"
    shared = (f"{nodes} nodes make a fleet: each node's limits would multiply by {nodes}, so the nodes share "
              "their throttles (and connection limits) through one Redis")
    if w.external_redis or redis is None:
        return f"{shared}: your own (fleet.redis_url), its cost not counted here"
    return (f"{shared}: {redis.title}, {redis.instance}, ${redis.price_usd_month:,.2f}/month ({price_region}, "
            f"prices of {redis.price_taken}), besides the machines' price")


# The instance type of a plan for machines that exist already (a target without a catalog).
EXISTING = "existing"


def vcpu_needed(messages_per_hour: float) -> int:
    """The fewest vCPUs whose published throughput carries ``messages_per_hour``, from the smallest
    measured count (2: no catalog type has fewer); the largest measured count when none does
    (published_throughput is flat beyond it)."""
    smallest, largest = PUBLISHED_THROUGHPUT[0][0], PUBLISHED_THROUGHPUT[-1][0]
    return next((v for v in range(smallest, largest + 1) if published_throughput(v) >= messages_per_hour),
                largest)


def plan_without_catalog(w: Workload) -> Plan:
    """The plan for ``w.nodes`` machines that exist already: what each must at least have.

    No type is chosen (instance_type is EXISTING, no price): ``vcpu``, ``memory_gib`` and
    ``required_mbps_per_node`` (with ``sustained_gbps`` the same figure in Gbps) are the minimum
    a node needs for its share of the workload, as the planner would choose a type, so the node
    can compare its real facts with them. Raises ConfigError without a node count.
    """
    if w.nodes is None:
        raise ConfigError(Problem("kumo:deployment.nodes", "machines that exist already are sized by their "
                                  "number: give the node count (one node per machine)"))
    nodes = w.nodes
    need_mbps = bandwidth_mbps(w.messages_per_hour, w.avg_message_kb)
    rate_per_node = w.messages_per_hour * w.headroom / nodes
    vcpu = vcpu_needed(rate_per_node)
    if w.profile == "performance":
        vcpu = max(vcpu, PERFORMANCE_MIN_VCPU)
    mbps_per_node = need_mbps * w.headroom / nodes
    gbps = round(mbps_per_node / 1000, 3)
    if w.profile == "performance":
        gbps = max(gbps, PERFORMANCE_MIN_NIC_GBPS)
    spool_gb = w.spool_size_gb or math.ceil(max(MIN_DISK_GB, _spool_need_gb(w, nodes)))
    os_disk_gb = _os_disk_gb(w, nodes)
    capacity = published_throughput(vcpu)
    reasons = [
        f"workload: {w.messages_per_hour:,} messages/h x {w.avg_message_kb:g} kB = {need_mbps:,.1f} Mbps mean; "
        f"planned with {w.headroom:g}x headroom",
        f"{nodes} existing machine(s), no catalog: each carries {rate_per_node:,.0f} messages/h and "
        f"{mbps_per_node:,.1f} Mbps",
        f"each needs at least {vcpu} vCPU ({capacity:,.0f} messages/h from KumoMTA's published measurements), "
        f"{MIN_MEMORY_GIB:g} GiB memory, {gbps:g} Gbps sustained, {os_disk_gb} GB on the OS disk and "
        f"{spool_gb:,} GB for the spool",
        fleet_reason(w, nodes, None, ""),
    ]
    warnings = []
    if capacity < rate_per_node:
        warnings.append(f"{rate_per_node:,.0f} messages/h per machine is beyond KumoMTA's largest published "
                        f"measurement ({capacity:,.0f} at {vcpu} vCPU): add machines")
    if w.storage == "local_nvme":
        warnings.append("the spool is on local NVMe: queued mail on a node is lost if that machine is stopped "
                        "or replaced; drain a node before stopping it")
    if w.spool_size_gb and w.storage == "block" and w.spool_size_gb < _spool_need_gb(w, nodes):
        warnings.append(f"spool.size_gb {w.spool_size_gb} is below the {_spool_need_gb(w, nodes):.0f} GB needed "
                        f"to hold {w.hold_hours:g} h of traffic")
    return Plan(
        cloud=w.cloud, instance_type=EXISTING, nodes=nodes, vcpu=vcpu, memory_gib=MIN_MEMORY_GIB,
        arch=" or ".join(sorted(w.arches)), local_nvme_gb=0, nvme_count=0, nvme_attach="none",
        baseline_gbps=gbps, burst_gbps=gbps, sustained_gbps=gbps, required_mbps=round(need_mbps * w.headroom, 3),
        required_mbps_per_node=round(mbps_per_node, 3), messages_per_hour=w.messages_per_hour,
        capacity_per_node_per_hour=int(capacity), spool_storage=w.storage, spool_gb_per_node=spool_gb,
        os_disk_gb=os_disk_gb, price_usd_hour=0.0, total_price_usd_hour=0.0, price_region="", price_taken="",
        decided_by="existing machines", reasons=reasons, warnings=warnings,
    )

"""The sizing planner: worked examples, error cases and properties over the real catalogs."""

from __future__ import annotations

import collections
import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kumo_infra import catalog, sizing
from kumo_infra.catalog import Catalog, InstanceType
from kumo_infra.errors import ConfigError, Problem


def workload(**kw) -> sizing.Workload:
    base = dict(cloud="aws", messages_per_hour=100_000, avg_message_kb=50.0)
    base.update(kw)
    return sizing.Workload(**base)


def test_bandwidth_matches_kumomta_worked_example():
    # 1 M/h of 50 kB is about 111 Mbps (KumoMTA's performance docs).
    assert sizing.bandwidth_mbps(1_000_000, 50) == pytest.approx(111.1, abs=0.1)


def test_published_throughput_interpolates_and_never_extrapolates_up():
    assert sizing.published_throughput(2) == 2_700_000
    assert sizing.published_throughput(6) == pytest.approx((4_400_000 + 4_900_000) / 2)
    assert sizing.published_throughput(192) == sizing.PUBLISHED_THROUGHPUT[-1][1]


def test_minimal_workload_gets_a_floor_sized_machine():
    plan = sizing.plan(workload(), catalog.load("aws"))
    assert plan.memory_gib >= 4 and plan.nodes == 1
    assert plan.os_disk_gb >= 20 and plan.spool_gb_per_node >= 20


def test_performance_profile_demands_nvme_10gbps_and_4_vcpu():
    for cloud in catalog.CLOUDS:
        plan = sizing.plan(workload(cloud=cloud, profile="performance", storage="local_nvme",
                                    messages_per_hour=2_000_000), catalog.load(cloud))
        assert plan.local_nvme_gb > 0 and plan.vcpu >= 4 and plan.baseline_gbps >= 10, plan


def test_burst_figure_never_counts():
    # c6id.4xlarge: "up to 12.5 Gbps" but 6.25 Gbps baseline; the performance profile must not take it.
    plan = sizing.plan(workload(profile="performance", storage="local_nvme", messages_per_hour=2_000_000),
                       catalog.load("aws"))
    assert plan.instance_type != "c6id.4xlarge"
    with pytest.raises(ConfigError, match="burst 12.5 Gbps does not count"):
        sizing.plan(workload(profile="performance", storage="local_nvme", instance_type="c6id.4xlarge"),
                    catalog.load("aws"))


def test_aws_internet_cap_below_32_vcpu():
    t = catalog.load("aws").get("c6id.16xlarge")
    assert t.vcpu >= 32 and sizing.sustained_gbps(t) == t.baseline_gbps
    small = catalog.load("aws").get("c6id.4xlarge")
    assert small.baseline_gbps > 5 and sizing.sustained_gbps(small) == 5.0


def test_workload_beyond_one_node_says_how_many():
    plan = sizing.plan(workload(messages_per_hour=20_000_000, profile="performance", storage="local_nvme"),
                       catalog.load("aws"))
    assert plan.nodes >= 2
    assert plan.nodes * plan.capacity_per_node_per_hour >= 20_000_000 * 1.5
    assert any(f"{plan.nodes} node(s)" in r for r in plan.reasons)


def test_unknown_instance_type_is_an_error_naming_the_key():
    with pytest.raises(ConfigError) as info:
        sizing.plan(workload(instance_type="t9.gigantic"), catalog.load("aws"))
    assert info.value.problems[0].path == "kumo:deployment.sizing.instance_type"
    assert "not in kumo-infra's aws catalog" in str(info.value)


def test_local_nvme_on_a_type_without_nvme_is_refused():
    with pytest.raises(ConfigError, match="no local NVMe"):
        sizing.plan(workload(storage="local_nvme", instance_type="c6i.large"), catalog.load("aws"))


def test_explicit_type_below_the_floor_is_refused():
    tiny = InstanceType("aws", "t3.small", "t3", 2, 2.0, "x86_64", True, 0.128, 5.0, 0, 0, "none", 0.02)
    big = InstanceType("aws", "m6i.large", "m6i", 2, 8.0, "x86_64", False, 0.781, 12.5, 0, 0, "none", 0.096)
    cat = Catalog("aws", "us-east-1", "2026-01-01", "test", (), (tiny, big))
    with pytest.raises(ConfigError, match="below KumoMTA's 4 GiB minimum"):
        sizing.plan(workload(instance_type="t3.small"), cat)
    assert sizing.plan(workload(), cat).instance_type == "m6i.large"


def test_explicit_nodes_below_the_need_names_both_numbers():
    with pytest.raises(ConfigError) as info:
        sizing.plan(workload(messages_per_hour=40_000_000, nodes=2), catalog.load("gcp"))
    problem = info.value.problems[0]
    assert problem.path == "kumo:deployment.nodes"
    assert "nodes is 2" in problem.message and "at least" in problem.message


def test_explicit_type_and_too_few_nodes():
    with pytest.raises(ConfigError) as info:
        sizing.plan(workload(messages_per_hour=3_000_000, instance_type="t3.medium", nodes=1), catalog.load("aws"))
    assert info.value.problems[0].path == "kumo:deployment.nodes"
    assert "but nodes is 1" in info.value.problems[0].message


def test_explicit_nodes_above_need_are_kept():
    assert sizing.plan(workload(nodes=3), catalog.load("aws")).nodes == 3


def test_spool_capacity_can_add_nodes():
    # c6id.large holds 118 GB of NVMe: a long hold time of big messages does not fit on one.
    plan = sizing.plan(workload(storage="local_nvme", instance_type="c6id.large", messages_per_hour=100_000,
                                avg_message_kb=200, hold_hours=24), catalog.load("aws"))
    assert plan.nodes > 1
    assert "spool capacity" in " ".join(plan.reasons)


def test_decided_by_names_the_constraint_that_excluded_a_cheaper_type():
    plan = sizing.plan(workload(), catalog.load("aws"))
    # t4g.medium is cheaper but arm64, and Rocky has no arm64 KumoMTA package.
    assert plan.decided_by == "architecture"
    arm_ok = sizing.plan(workload(arches=frozenset({"x86_64", "arm64"})), catalog.load("aws"))
    assert arm_ok.instance_type == "t4g.medium"


clouds = st.sampled_from(catalog.CLOUDS)
rates = st.integers(min_value=1, max_value=30_000_000)
sizes = st.floats(min_value=1, max_value=2_000, allow_nan=False)
profiles = st.sampled_from(["minimal", "performance"])
holds = st.floats(min_value=0.5, max_value=168, allow_nan=False)  # the config's bounds for hold_hours


def eligible(w: sizing.Workload, t: InstanceType) -> bool:
    """The planner's hard per-type rules, restated: memory floor, architecture, NVMe, performance profile."""
    if t.memory_gib < sizing.MIN_MEMORY_GIB or t.arch not in w.arches:
        return False
    if w.storage == "local_nvme" and not t.has_nvme:
        return False
    if w.profile == "performance":
        return (t.vcpu >= sizing.PERFORMANCE_MIN_VCPU and t.baseline_gbps >= sizing.PERFORMANCE_MIN_NIC_GBPS
                and not t.burstable_cpu)
    return True


def carried_within_max_nodes(w: sizing.Workload, t: InstanceType) -> bool:
    """Whether MAX_NODES nodes of ``t`` carry the workload's rate, bandwidth and (on NVMe) spool."""
    n = sizing.MAX_NODES
    if n * sizing.node_capacity_per_hour(t) < w.messages_per_hour * w.headroom:
        return False
    if n * sizing.sustained_gbps(t) * 1000 < sizing.bandwidth_mbps(w.messages_per_hour, w.avg_message_kb) * w.headroom:
        return False
    return w.storage != "local_nvme" or sizing._spool_need_gb(w, n) <= t.nvme_gb


def plan_or_refusal(w: sizing.Workload) -> sizing.Plan | None:
    """The plan, or None when the planner refuses a workload that is really infeasible.

    Any other error, or a refusal of a workload some type could carry, fails the test: a
    property test must not pass by the planner raising.
    """
    cat = catalog.load(w.cloud)
    try:
        return sizing.plan(w, cat)
    except ConfigError as exc:
        (problem,) = exc.problems
        if w.instance_type:
            assert problem.path == "kumo:deployment.sizing.instance_type", problem
            assert problem.message.startswith(f"'{w.instance_type}' cannot be used: "), problem
            candidates = [cat.get(w.instance_type)]
        else:
            assert problem.path == "kumo:deployment.sizing", problem
            assert problem.message.startswith("no instance type in the catalog fits this workload"), problem
            candidates = list(cat.types)
        feasible = [t.name for t in candidates if eligible(w, t) and carried_within_max_nodes(w, t)]
        assert not feasible, f"refused, yet {feasible[:3]} carry it within {sizing.MAX_NODES} nodes: {problem}"
        return None


def test_every_plan_meets_every_constraint():
    outcomes: collections.Counter = collections.Counter()

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(cloud=clouds, mph=rates, kb=sizes, profile=profiles, hold=holds)
    def check(cloud, mph, kb, profile, hold):
        storage = "local_nvme" if profile == "performance" else "block"
        w = workload(cloud=cloud, messages_per_hour=mph, avg_message_kb=kb, profile=profile, storage=storage,
                     hold_hours=hold)
        plan = plan_or_refusal(w)
        outcomes["refused" if plan is None else "planned"] += 1
        if plan is None:
            return
        t = catalog.load(cloud).get(plan.instance_type)
        assert plan.memory_gib >= sizing.MIN_MEMORY_GIB
        assert plan.os_disk_gb >= sizing.MIN_DISK_GB
        assert plan.nodes * sizing.node_capacity_per_hour(t) >= mph * w.headroom
        assert plan.nodes * sizing.sustained_gbps(t) * 1000 >= sizing.bandwidth_mbps(mph, kb) * w.headroom - 1e-6
        if profile == "performance":
            assert t.has_nvme and t.vcpu >= 4 and t.baseline_gbps >= 10 and not t.burstable_cpu
            assert plan.nodes * t.nvme_gb >= sizing._spool_need_gb(w, plan.nodes) * plan.nodes - 1e-6
        if cloud == "aws" and t.vcpu < 32:
            assert plan.sustained_gbps <= 5.0

    check()
    # Most examples must really be planned: a planner that refused everything would pass the body.
    assert outcomes["planned"] >= 100, outcomes


def test_plan_is_the_cheapest_fleet():
    outcomes: collections.Counter = collections.Counter()

    @settings(max_examples=60, deadline=None)
    @given(cloud=clouds, mph=st.integers(min_value=1, max_value=8_000_000), kb=sizes)
    def check(cloud, mph, kb):
        plan = plan_or_refusal(workload(cloud=cloud, messages_per_hour=mph, avg_message_kb=kb))
        assert plan is not None  # up to 8 M/h on block storage, every cloud has a fleet
        outcomes["planned"] += 1
        for t in catalog.load(cloud).types:
            other = plan_or_refusal(workload(cloud=cloud, messages_per_hour=mph, avg_message_kb=kb,
                                             instance_type=t.name))
            outcomes["alternative refused" if other is None else "alternative compared"] += 1
            if other is not None:
                assert plan.total_price_usd_hour <= other.total_price_usd_hour + 1e-9, (plan.instance_type, t.name)

    check()
    assert outcomes["planned"] >= 50 and outcomes["alternative compared"] >= 50 * 10, outcomes


def test_more_mail_never_costs_less():
    outcomes: collections.Counter = collections.Counter()

    @settings(max_examples=80, deadline=None)
    @given(cloud=clouds, a=rates, b=rates, kb=sizes)
    def check(cloud, a, b, kb):
        lo, hi = sorted((a, b))
        p_lo = plan_or_refusal(workload(cloud=cloud, messages_per_hour=lo, avg_message_kb=kb))
        p_hi = plan_or_refusal(workload(cloud=cloud, messages_per_hour=hi, avg_message_kb=kb))
        if p_lo and p_hi:
            outcomes["compared"] += 1
            assert p_hi.total_price_usd_hour >= p_lo.total_price_usd_hour - 1e-9
        else:
            assert p_hi is None or p_lo is not None, "refused less mail but planned more"

    check()
    assert outcomes["compared"] >= 60, outcomes


def test_refusals_of_infeasible_workloads_are_told_apart_from_other_errors(monkeypatch):
    # The helper the properties rely on: a really infeasible workload counts as refused...
    beyond = workload(cloud="gcp", messages_per_hour=30_000_000, avg_message_kb=2_000, profile="performance",
                      storage="local_nvme", hold_hours=168)
    assert plan_or_refusal(beyond) is None
    # ...a feasible one refused with the same words does not...
    def refuse_everything(w, cat):
        raise ConfigError(Problem("kumo:deployment.sizing", "no instance type in the catalog fits this workload"))

    monkeypatch.setattr(sizing, "plan", refuse_everything)
    with pytest.raises(AssertionError, match="carry it within 100 nodes"):
        plan_or_refusal(workload())

    # ...and neither does any other error.
    def wrong_key(w, cat):
        raise ConfigError(Problem("kumo:deployment.nodes", "nodes is 0"))

    monkeypatch.setattr(sizing, "plan", wrong_key)
    with pytest.raises(AssertionError, match="kumo:deployment.nodes"):
        plan_or_refusal(workload())


def test_catalogs_cover_floors_nvme_families_and_64_vcpu():
    names = {c: {t.name for t in catalog.load(c).types} for c in catalog.CLOUDS}
    assert {"t2.medium", "t3.medium"} <= names["aws"]
    assert "Standard_B2s" in names["azure"] and "e2-medium" in names["gcp"]
    for family in ("c6id", "m6id", "r6id", "i4i", "m7gd"):
        assert any(n.startswith(family + ".") for n in names["aws"]), family
    assert any(n.startswith("Standard_L") and n.endswith("s_v3") for n in names["azure"])
    assert any(t.nvme_controller_required for t in catalog.load("azure").types)
    assert any(t.nvme_attach == "scratch" and t.family == "n2" for t in catalog.load("gcp").types)
    assert any(n.endswith("-lssd") and n.startswith("c3-") for n in names["gcp"])
    for cloud in catalog.CLOUDS:
        assert max(t.vcpu for t in catalog.load(cloud).types) >= 64
        src = catalog.load(cloud)
        assert src.price_region and src.price_taken and src.sources


def test_catalog_schema_is_enforced():
    good = {"source": {"cloud": "aws"}, "types": [dict(
        name="x.large", family="x", vcpu=2, memory_gib=8, arch="x86_64", burstable_cpu=False, baseline_gbps=1.0,
        burst_gbps=1.0, nvme_count=0, nvme_gb_each=0, nvme_attach="none", price_usd_hour=0.1)]}
    assert catalog.parse("aws", good).types[0].memory_gib == 8.0
    for change, fragment in [
        ({"vcpu": "2"}, "'vcpu'"), ({"burstable_cpu": 1}, "'burstable_cpu'"), ({"vcpu": True}, "'vcpu'"),
        ({"nvme_attach": "builtin"}, "disagree"), ({"baseline_gbps": 2.0}, "above burst"),
        ({"colour": "red"}, "unknown key"), ({"arch": "sparc"}, "arch"), ({"tier1_gbps": "fast"}, "tier1_gbps"),
    ]:
        bad = {"source": good["source"], "types": [{**good["types"][0], **change}]}
        with pytest.raises(catalog.CatalogError, match=fragment):
            catalog.parse("aws", bad)
    with pytest.raises(catalog.CatalogError, match="duplicate"):
        catalog.parse("aws", {"source": good["source"], "types": good["types"] * 2})


# -- the internet cap is the target's fact; machines that exist already ---------------------------

def test_the_internet_cap_is_the_targets_fact(monkeypatch):
    from kumo_infra import targets

    small = catalog.load("aws").get("c6id.4xlarge")
    assert sizing.sustained_gbps(small) == targets.get("aws").internet_cap_gbps < small.baseline_gbps
    # Without the fact, the same type is planned at its baseline: nothing in sizing knows the target.
    monkeypatch.setitem(targets.registry(), "aws", dataclasses.replace(targets.get("aws"), internet_cap_gbps=None))
    assert sizing.sustained_gbps(small) == small.baseline_gbps


def test_vcpu_needed_is_the_fewest_that_carry_the_rate():
    for rate in (1, 1_000_000, 2_700_000, 2_700_001, 4_450_000, 6_000_000):
        v = sizing.vcpu_needed(rate)
        assert sizing.published_throughput(v) >= rate
        assert v == sizing.PUBLISHED_THROUGHPUT[0][0] or sizing.published_throughput(v - 1) < rate
    assert sizing.vcpu_needed(1) == 2  # the smallest measured machine, as no catalog type has fewer vCPUs
    assert sizing.vcpu_needed(10 ** 9) == sizing.PUBLISHED_THROUGHPUT[-1][0]  # beyond what was measured


@pytest.mark.parametrize("profile", ["minimal", "performance"])
def test_plan_without_catalog_states_the_minimum_per_machine(profile):
    w = workload(cloud="bare-metal", messages_per_hour=6_000_000, avg_message_kb=80, nodes=3, profile=profile,
                 storage="local_nvme" if profile == "performance" else "block")
    plan = sizing.plan_without_catalog(w)
    assert plan.instance_type == sizing.EXISTING and plan.nodes == 3 and plan.price_usd_hour == 0
    per_node_mbps = sizing.bandwidth_mbps(6_000_000, 80) * 1.5 / 3
    assert plan.required_mbps_per_node == pytest.approx(per_node_mbps, abs=0.001)
    assert plan.memory_gib == sizing.MIN_MEMORY_GIB and plan.os_disk_gb >= sizing.MIN_DISK_GB
    assert plan.capacity_per_node_per_hour >= 6_000_000 * 1.5 / 3
    if profile == "performance":
        assert plan.vcpu >= sizing.PERFORMANCE_MIN_VCPU and plan.sustained_gbps >= sizing.PERFORMANCE_MIN_NIC_GBPS
    else:
        assert plan.vcpu == sizing.vcpu_needed(2_000_000 * 1.5)
        assert plan.sustained_gbps == pytest.approx(per_node_mbps / 1000, abs=0.001)


def test_plan_without_catalog_warns_beyond_the_published_measurements():
    plan = sizing.plan_without_catalog(workload(messages_per_hour=30_000_000, nodes=1))
    assert any("beyond KumoMTA's largest published measurement" in w for w in plan.warnings)


def test_plan_without_catalog_needs_the_node_count():
    with pytest.raises(ConfigError) as info:
        sizing.plan_without_catalog(workload(nodes=None))
    assert info.value.problems[0].path == "kumo:deployment.nodes"

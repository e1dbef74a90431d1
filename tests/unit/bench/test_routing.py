"""The routing simulation behind `splitasr bench routing`: its replicas' LRU and both policies."""

from __future__ import annotations

from splitasr.bench.routing import SimReplica, run, simulate


def test_replica_keeps_the_most_recent_adapters():
    replica = SimReplica(slots=2, max_ongoing=1)
    assert [replica.use(a) for a in (1, 2, 1, 3, 2, 1)] == [False, False, True, False, False, False]
    assert list(replica.resident) == [2, 1]


def test_every_adapter_loads_once_when_the_cluster_holds_them_all():
    # 4 replicas x 16 slots and 40 tenants: affine routing never needs to evict
    result = simulate("multiplexed", tenants=40, replicas=4, slots=16, requests=4000, seed=3)
    assert result["cold_loads_per_1000"] * 4 <= 40 * 4 + 40  # ~one load per adapter (hot ones on a few replicas)
    assert result["hit_rate"] > 0.95


def test_affine_routing_beats_round_robin_on_a_zipf_mix():
    report = run(tenants=200, replicas=4, slots=16, requests=6000, seed=1)
    multiplexed, round_robin = report["multiplexed"], report["round_robin"]
    assert multiplexed["cold_loads_per_1000"] < 0.7 * round_robin["cold_loads_per_1000"]
    assert multiplexed["affinity"] > round_robin["affinity"]
    assert report["simulated"] is True and report["setup"]["replicas"] == 4

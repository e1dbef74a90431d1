"""Adapter-affine routing versus round-robin, on simulated replicas (no model, no Ray).

Each replica holds ``slots`` adapters (LRU, like :class:`~splitasr.adapters.pool.SlotPool` and
``@serve.multiplexed``) and runs at most ``max_ongoing`` requests. Tenants are drawn from a Zipf
law; each tenant has one adapter. Requests arrive as a Poisson process at ``load`` times the
cluster's capacity and take an exponential service time (mean 1), plus ``cold_load`` when their
adapter is not resident.

``multiplexed`` follows Ray Serve's request router (``ray/serve/_private/request_router``): the
candidates are the replicas that hold the request's model id, else those holding the fewest models;
the less loaded of two random candidates with room wins, and when every holder is full the request
goes, after the matching timeout (negligible here), to the fewest-models replicas, then to any.
``round_robin`` is what a plain load balancer in front of independent servers does.
"""

from __future__ import annotations

import heapq
import random
from collections import Counter, OrderedDict
from dataclasses import dataclass, field


@dataclass
class SimReplica:
    slots: int
    max_ongoing: int
    resident: OrderedDict = field(default_factory=OrderedDict)  # adapter -> None, least recent first
    ongoing: int = 0

    def use(self, adapter: int) -> bool:
        """Touch ``adapter``; True on a hit, False on a cold load (evicting the least recent)."""
        if adapter in self.resident:
            self.resident.move_to_end(adapter)
            return True
        if len(self.resident) >= self.slots:
            self.resident.popitem(last=False)
        self.resident[adapter] = None
        return False


def zipf_weights(n: int, s: float) -> list[float]:
    return [1.0 / (rank ** s) for rank in range(1, n + 1)]


def _two_choices(rng: random.Random, replicas: list[SimReplica], ids: list[int]) -> int | None:
    free = [i for i in ids if replicas[i].ongoing < replicas[i].max_ongoing]
    if not free:
        return None
    pick = rng.sample(free, min(2, len(free)))
    return min(pick, key=lambda i: replicas[i].ongoing)


def choose_multiplexed(rng: random.Random, replicas: list[SimReplica], adapter: int) -> int | None:
    holders = [i for i, r in enumerate(replicas) if adapter in r.resident]
    chosen = _two_choices(rng, replicas, holders) if holders else None
    if chosen is None:
        fewest = min(len(r.resident) for r in replicas)
        chosen = _two_choices(rng, replicas, [i for i, r in enumerate(replicas) if len(r.resident) == fewest])
    if chosen is None:
        chosen = _two_choices(rng, replicas, list(range(len(replicas))))
    return chosen


def simulate(policy: str, *, tenants: int = 200, replicas: int = 4, slots: int = 16, requests: int = 20000,
             zipf_s: float = 1.1, load: float = 0.7, max_ongoing: int = 64, cold_load: float = 0.05,
             seed: int = 0) -> dict:
    """Run one policy; returns hit rate, cold loads per 1000 requests and per-tenant affinity."""
    rng = random.Random(seed)
    pool = [SimReplica(slots, max_ongoing) for _ in range(replicas)]
    weights = zipf_weights(tenants, zipf_s)
    rate = load * replicas * max_ongoing  # requests per unit of service time
    now, hits, misses, next_rr = 0.0, 0, 0, 0
    finishing: list[tuple[float, int]] = []
    placed: dict[int, Counter] = {}
    queue: list[int] = []  # requests waiting for room anywhere (FIFO)
    arrivals = iter(rng.choices(range(tenants), weights, k=requests))
    pending = next(arrivals, None)
    arrival_at = rng.expovariate(rate)
    while pending is not None or queue or finishing:
        if finishing and (pending is None or finishing[0][0] <= arrival_at):
            now, index = heapq.heappop(finishing)
            pool[index].ongoing -= 1
        elif pending is not None:
            now = arrival_at
            queue.append(pending)
            pending = next(arrivals, None)
            arrival_at = now + rng.expovariate(rate)
        while queue:
            adapter = queue[0]
            if policy == "round_robin":
                index = next_rr % replicas
                if pool[index].ongoing >= max_ongoing:
                    break
                next_rr += 1
            else:
                index = choose_multiplexed(rng, pool, adapter)
                if index is None:
                    break
            queue.pop(0)
            hit = pool[index].use(adapter)
            hits += hit
            misses += not hit
            pool[index].ongoing += 1
            placed.setdefault(adapter, Counter())[index] += 1
            service = rng.expovariate(1.0) + (0.0 if hit else cold_load)
            heapq.heappush(finishing, (now + service, index))
    on_main = sum(c.most_common(1)[0][1] for c in placed.values())
    return {
        "policy": policy,
        "hit_rate": round(hits / requests, 4),
        "cold_loads_per_1000": round(1000 * misses / requests, 1),
        "affinity": round(on_main / requests, 4),  # share of requests on their adapter's main replica
    }


def run(*, tenants: int = 200, replicas: int = 4, slots: int = 16, requests: int = 20000, zipf_s: float = 1.1,
        load: float = 0.7, max_ongoing: int = 64, seed: int = 0) -> dict:
    """Both policies on the same arrivals (same seed)."""
    setup = {"tenants": tenants, "replicas": replicas, "slots": slots, "requests": requests, "zipf_s": zipf_s,
             "load": load, "max_ongoing": max_ongoing, "seed": seed}
    results = {p: simulate(p, tenants=tenants, replicas=replicas, slots=slots, requests=requests, zipf_s=zipf_s,
                           load=load, max_ongoing=max_ongoing, seed=seed) for p in ("multiplexed", "round_robin")}
    return {"bench": "routing", "simulated": True, "setup": setup, **results}

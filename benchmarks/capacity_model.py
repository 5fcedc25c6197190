"""The capacity model (docs/capacity.md): measured CPU per event -> hosts and shards per rate.

Each group (API, workers, Redis) is CPU-bound and spends a fixed CPU time per event that does
not depend on how many hosts share the load: the API and the workers keep no state between
requests, and a Redis shard spends per event what one Redis spends (the store's keys of one
tenant and event type sit in one shard). So a group needs rate x CPU-per-event cores, spread
over hosts run below full use. Plain arithmetic on measured figures, no I/O: `make
bench-capacity` feeds it what it measured and prints the tables.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

RATES = (10_000, 100_000, 1_000_000)


@dataclass(frozen=True)
class Costs:
    """CPU seconds per event of each group, and Redis memory per event kept."""
    api: float
    worker: float
    redis: float
    redis_bytes: float = 0.0  # used_memory per judged event while its job is kept (VIGIL_JOB_TTL)

    def mixed(self, other: Costs, share_of_other: float) -> Costs:
        """Per event of a mix where `share_of_other` of the events cost `other`."""
        def blend(a: float, b: float) -> float:
            return (1 - share_of_other) * a + share_of_other * b
        return Costs(blend(self.api, other.api), blend(self.worker, other.worker),
                     blend(self.redis, other.redis), blend(self.redis_bytes, other.redis_bytes))


@dataclass(frozen=True)
class Assumptions:
    cores_per_host: int = 16  # API and worker hosts alike: one API or worker process per core
    host_use: float = 0.6  # share of a host's cores planned busy: bursts, restarts, deploys
    spare_hosts: int = 1  # per group, so one host can fail or be drained at peak (N+1)
    shard_use: float = 0.5  # share of a shard's one core planned busy: AOF rewrites, failover
    shard_memory_gb: float = 16.0  # data per shard: half a 32 GB host (fork copy-on-write)
    job_ttl_s: float = 86_400.0  # VIGIL_JOB_TTL: how long each verdict stays in Redis


@dataclass(frozen=True)
class Plan:
    api_hosts: int
    worker_hosts: int
    shards_cpu: int  # Redis shards for CPU
    shards_memory: int  # Redis shards to hold rate x TTL events' jobs and verdicts

    @property
    def shards(self) -> int:
        return max(self.shards_cpu, self.shards_memory)


def per_core(cpu_s_per_event: float) -> float:
    """Events/s one fully busy core sustains."""
    return math.inf if cpu_s_per_event <= 0 else 1.0 / cpu_s_per_event


def hosts(rate: float, cpu_s_per_event: float, a: Assumptions) -> int:
    """Hosts of a group for `rate` events/s: the cores it keeps busy, at a.host_use of
    a.cores_per_host per host, plus the spare."""
    cores = rate * cpu_s_per_event
    return math.ceil(cores / (a.cores_per_host * a.host_use)) + a.spare_hosts


def plan(rate: float, costs: Costs, a: Assumptions) -> Plan:
    memory_gb = rate * a.job_ttl_s * costs.redis_bytes / 1e9
    return Plan(api_hosts=hosts(rate, costs.api, a), worker_hosts=hosts(rate, costs.worker, a),
                shards_cpu=max(1, math.ceil(rate * costs.redis / a.shard_use)),
                shards_memory=max(1, math.ceil(memory_gb / a.shard_memory_gb)))


def predicted_rate(bounds: dict[str, tuple[float, float]]) -> tuple[float, str]:
    """The events/s a set of groups sustains, and which group limits it: each group
    (name -> (cores it may use, its CPU seconds per event)) sustains cores / cost; the
    slowest sets the rate."""
    rates = {name: (cores / cost if cost > 0 else math.inf) for name, (cores, cost) in bounds.items()}
    name = min(rates, key=rates.__getitem__)
    return rates[name], name

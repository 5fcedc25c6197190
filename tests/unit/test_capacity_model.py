"""The capacity model's arithmetic (benchmarks/capacity_model.py, docs/capacity.md): the hosts
and shards a rate needs, the slowest group setting the rate, and a mix's cost per event."""

from __future__ import annotations

import math

from benchmarks.capacity_model import Assumptions, Costs, per_core, plan, predicted_rate

A = Assumptions(cores_per_host=16, host_use=0.5, spare_hosts=1, shard_use=0.5,
                shard_memory_gb=10.0, job_ttl_s=100.0)


def test_hosts_are_the_busy_cores_over_the_usable_cores_of_a_host_plus_the_spare():
    # 100,000 events/s x 0.4 ms = 40 cores busy; 8 usable per host -> 5 hosts, + 1 spare.
    # 100,000 x 0.1 ms = 10 cores -> 2 hosts (1.25 rounded up), + 1.
    p = plan(100_000, Costs(api=0.0004, worker=0.0001, redis=0.0), A)
    assert (p.api_hosts, p.worker_hosts) == (6, 3)


def test_redis_shards_for_cpu_and_for_memory():
    # 100,000 x 20 us = 2 cores busy at 50% per shard -> 4 shards. Memory: 100,000 events/s kept
    # 100 s at 2,000 bytes = 20 GB, 10 GB a shard -> 2 shards. The larger one is the plan's.
    p = plan(100_000, Costs(api=0.0, worker=0.0, redis=0.00002, redis_bytes=2000), A)
    assert (p.shards_cpu, p.shards_memory, p.shards) == (4, 2, 4)
    # A day's TTL instead: 1,728 shards for memory, which then decide.
    day = plan(100_000, Costs(0.0, 0.0, 0.00002, 2000), Assumptions(shard_memory_gb=10.0,
                                                                     job_ttl_s=86_400.0))
    assert day.shards == day.shards_memory == 1728


def test_at_least_one_shard_and_the_spare_host_even_for_a_trickle():
    p = plan(1, Costs(api=0.001, worker=0.001, redis=0.0001, redis_bytes=100), A)
    assert (p.api_hosts, p.worker_hosts, p.shards) == (2, 2, 1)


def test_the_slowest_group_sets_the_rate():
    rate, limit = predicted_rate({"workers": (0.2, 0.00004), "api": (2.0, 0.00004),
                                  "redis": (1.0, 0.000005)})
    assert limit == "workers" and math.isclose(rate, 5000)
    # Twice the worker cores: still the workers, at twice the rate.
    rate2, limit2 = predicted_rate({"workers": (0.4, 0.00004), "api": (2.0, 0.00004),
                                    "redis": (1.0, 0.000005)})
    assert limit2 == "workers" and math.isclose(rate2, 10_000)
    # Until another group is slower: the API at a tenth of a core.
    rate3, limit3 = predicted_rate({"workers": (0.4, 0.00004), "api": (0.1, 0.00004)})
    assert limit3 == "api" and math.isclose(rate3, 2500)


def test_a_mix_costs_the_weighted_mean_per_event():
    single, batch = Costs(0.0008, 0.0004, 0.0002, 1300), Costs(0.00004, 0.00004, 0.000008, 30)
    mixed = batch.mixed(single, 0.1)
    assert math.isclose(mixed.api, 0.9 * 0.00004 + 0.1 * 0.0008)
    assert math.isclose(mixed.redis_bytes, 0.9 * 30 + 0.1 * 1300)


def test_events_per_core():
    assert math.isclose(per_core(0.00025), 4000)
    assert per_core(0.0) == math.inf

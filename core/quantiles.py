"""Quantiles from a Prometheus histogram's cumulative buckets, as PromQL's histogram_quantile
computes them: linear within the bucket the rank falls in. Used where a figure is shown beside
the histogram (api.ui, the benchmark), so they agree with a Grafana panel on the same data.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence

from prometheus_client.core import Metric

Buckets = list[tuple[float, float]]  # (upper bound, cumulative count), +Inf last


def quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """The q-quantile (0 < q < 1) of the observations; None without any. A rank in the +Inf
    bucket answers the highest finite bound (the histogram knows no more)."""
    ordered = sorted(buckets)
    total = ordered[-1][1] if ordered else 0
    if total <= 0:
        return None
    rank, lower, below = q * total, 0.0, 0.0
    for upper, count in ordered:
        if count >= rank:
            if math.isinf(upper):
                return lower
            if count == below:
                return upper
            return lower + (upper - lower) * (rank - below) / (count - below)
        lower, below = upper, count
    return lower


def histogram_buckets(families: Iterable[Metric], name: str, label: str) -> dict[str, Buckets]:
    """{value of ``label``: cumulative buckets} of histogram ``name`` (without _bucket), summed
    over its other labels."""
    summed: dict[str, dict[float, float]] = defaultdict(lambda: defaultdict(float))
    for family in families:
        for sample in family.samples:
            if sample.name == f"{name}_bucket" and label in sample.labels:
                summed[sample.labels[label]][float(sample.labels["le"])] += sample.value
    return {key: sorted(bounds.items()) for key, bounds in summed.items()}


def difference(after: Buckets, before: Buckets) -> Buckets:
    """The buckets of what was observed between two reads of the same histogram."""
    earlier = dict(before)
    return [(le, count - earlier.get(le, 0.0)) for le, count in after]

"""Running moments merged exactly, and z-scores of new values against them."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

# The largest magnitude a checked value may have. Merging squares differences of values, and
# M2 sums n of those squares: at |x| <= 1e100 a difference squared is at most 4e200, so M2
# stays finite for any count up to about 4e107 (float64 ends at 1.8e308), while every real
# measurement (nanosecond timestamps are ~1.8e18) is far inside the bound. At 1e154 a single
# difference squared overflows already.
MAX_MAGNITUDE = 1e100


def _two_sum(a: float, b: float) -> tuple[float, float]:
    """a + b as the float nearest it and the exact rounding error (Knuth's TwoSum)."""
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


@dataclass(frozen=True)
class Moments:
    """Count, mean and sum of squared deviations (M2) of a set of values.

    M2 rather than a sum of squares: merging M2s (Chan et al.) stays exact where
    sum(x^2) - n*mean^2 cancels catastrophically for large, nearly equal values.

    The mean is also kept as ``ref + offset``: a reference near the values (the rounded
    mean) and what rounding the mean to one float loses. A merge works on offsets from the
    reference (small numbers, exact differences of close references), so a field whose
    values sit far from zero (1e13 +/- 1) merges with the precision of one that sits at 0.
    ``Moments(n, mean, m2)`` is its own reference with offset 0; ``.mean`` is the mean.
    """

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0
    ref: float | None = None
    offset: float = 0.0

    def __post_init__(self) -> None:
        if self.ref is None:
            object.__setattr__(self, "ref", self.mean)

    @classmethod
    def about(cls, n: int, ref: float, offset: float, m2: float) -> Moments:
        """Moments whose mean is ref + offset (carried exactly, as a pair of floats)."""
        ref, offset = _two_sum(ref, offset)
        return cls(n, ref + offset, m2, ref, offset)

    @classmethod
    def of(cls, values: np.ndarray | pd.Series) -> Moments:
        arr = np.asarray(values, dtype=float)
        arr = arr[np.isfinite(arr)]
        if arr.size <= 1:  # a single event's batch: the common case, without numpy passes
            return cls(1, float(arr[0])) if arr.size else cls()
        # About the first value: differences of nearby floats are exact (Sterbenz), so the
        # offset and M2 are computed on small numbers with full relative precision.
        ref = float(arr[0])
        shifted = arr - ref
        offset = float(shifted.mean())
        return cls.about(int(arr.size), ref, offset, float(((shifted - offset) ** 2).sum()))

    def merge(self, other: Moments) -> Moments:
        if other.n == 0:
            return self
        if self.n == 0:
            return other
        n = self.n + other.n
        # other's mean about self's reference; the references are close where precision
        # matters, and then their difference is exact.
        delta = ((other.ref - self.ref) + other.offset) - self.offset
        offset = self.offset + delta * (other.n / n)
        # delta * (delta * w), w <= min(n_a, n_b): no intermediate larger than the result.
        m2 = self.m2 + other.m2 + delta * (delta * (self.n * other.n / n))
        if not (math.isfinite(offset) and math.isfinite(m2)):
            raise OverflowError(f"merged moments overflow (values beyond +/-{MAX_MAGNITUDE:g}?)")
        return Moments.about(n, self.ref, offset, m2)

    @property
    def variance(self) -> float:
        """Population variance (ddof=0): the spread of the history itself."""
        return self.m2 / self.n if self.n else float("nan")

    @property
    def std(self) -> float:
        return float(np.sqrt(self.variance)) if self.n else float("nan")


def frame_moments(frame: pd.DataFrame) -> dict[str, Moments]:
    """Moments of every column, ignoring missing values; columns with no values are left out."""
    return column_moments(frame.to_numpy(dtype=float), list(frame.columns))


def column_moments(matrix: np.ndarray, columns: Sequence[str]) -> dict[str, Moments]:
    """frame_moments on a float matrix with its column names (no pandas: cheap for the
    one-row batches of single events)."""
    result = {}
    for column, values in zip(columns, matrix.T):
        moments = Moments.of(values)
        if moments.n:
            result[column] = moments
    return result


def baseline_frame(baselines: dict[str, Moments]) -> pd.DataFrame:
    """Index: field; columns n, mean, std."""
    return pd.DataFrame(
        {"n": [m.n for m in baselines.values()],
         "mean": [m.mean for m in baselines.values()],
         "std": [m.std for m in baselines.values()]},
        index=pd.Index(list(baselines), dtype=object),
    )


# Relative size of float rounding error in a mean or std of many values: 2**-40 is 4096
# units in the last place, room for the rounding a mean and M2 gather over many merges,
# and still a millionth of a standard deviation for any history whose spread is more than
# about 1e-6 of its magnitude (1e12 +/- 100, nanosecond timestamps, meter readings).
ROUNDING = 2.0 ** -40


def zscores(values: pd.DataFrame, baseline: pd.DataFrame) -> pd.DataFrame:
    """(value - mean) / std for every cell, against the baseline row of its column.

    NaN where the value is missing or the field has no baseline. Where the history is
    constant (std 0) a value equal to it scores 0 and any other value +/-inf: it is as far
    from a history that never varied as a value can be. A std or a difference within
    rounding error (ROUNDING of the magnitudes involved) counts as none, so a history of
    0.1s, whose float mean and std may carry rounding noise, is constant and 0.1 matches it.
    """
    # Positions and numpy rather than .loc and column assignment: a micro-batch of a few
    # events spent most of its z-score time in pandas indexing.
    where = baseline.index.get_indexer(values.columns)  # -1: no baseline for that column
    have = np.flatnonzero(where >= 0)
    z = np.full(values.shape, np.nan)
    if have.size:
        mean = baseline["mean"].to_numpy(dtype=float)[where[have]]
        std = baseline["std"].to_numpy(dtype=float)[where[have]]
        std = np.where(std > ROUNDING * np.abs(mean), std, 0.0)
        cells = values.to_numpy(dtype=float)[:, have]
        diff = cells - mean
        noise = ROUNDING * np.maximum(np.abs(mean), np.abs(cells))  # NaN (missing) stays NaN
        diff = np.where(np.abs(diff) <= noise, 0.0, diff)
        with np.errstate(divide="ignore", invalid="ignore"):
            scored = np.where(std > 0, diff / np.where(std > 0, std, 1.0),
                              np.where(diff == 0, 0.0, np.sign(diff) * np.inf))
        scored[np.isnan(diff)] = np.nan
        z[:, have] = scored
    return pd.DataFrame(z, index=values.index, columns=values.columns)


def zscore(value: float, mean: float, std: float) -> float:
    """One cell of ``zscores``, same rules, without building frames (verdict evidence)."""
    diff = value - mean
    if abs(diff) <= ROUNDING * max(abs(mean), abs(value)):
        return 0.0
    if std > ROUNDING * abs(mean):
        return diff / std
    return float(np.sign(diff) * np.inf)

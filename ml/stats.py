"""Running moments merged exactly, and z-scores of new values against them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Moments:
    """Count, mean and sum of squared deviations (M2) of a set of values.

    M2 rather than a sum of squares: merging M2s (Chan et al.) stays exact where
    sum(x^2) - n*mean^2 cancels catastrophically for large, nearly equal values.
    """

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0

    @classmethod
    def of(cls, values: np.ndarray | pd.Series) -> Moments:
        arr = np.asarray(values, dtype=float)
        arr = arr[np.isfinite(arr)]
        if arr.size == 0:
            return cls()
        mean = float(arr.mean())
        return cls(int(arr.size), mean, float(((arr - mean) ** 2).sum()))

    def merge(self, other: Moments) -> Moments:
        if other.n == 0:
            return self
        if self.n == 0:
            return other
        n = self.n + other.n
        delta = other.mean - self.mean
        mean = self.mean + delta * other.n / n
        m2 = self.m2 + other.m2 + delta * delta * self.n * other.n / n
        return Moments(n, mean, m2)

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


# Relative size of float rounding error in a mean or std of many values.
ROUNDING = 1e-9


def zscores(values: pd.DataFrame, baseline: pd.DataFrame) -> pd.DataFrame:
    """(value - mean) / std for every cell, against the baseline row of its column.

    NaN where the value is missing or the field has no baseline. Where the history is
    constant (std 0) a value equal to it scores 0 and any other value +/-inf: it is as far
    from a history that never varied as a value can be. Differences within rounding error
    of the mean (relative 1e-9) count as none, so a history of 0.1s, whose float mean and
    std carry rounding noise, is constant and 0.1 matches it.
    """
    # Positions and numpy rather than .loc and column assignment: a micro-batch of a few
    # events spent most of its z-score time in pandas indexing.
    where = baseline.index.get_indexer(values.columns)  # -1: no baseline for that column
    have = np.flatnonzero(where >= 0)
    z = np.full(values.shape, np.nan)
    if have.size:
        mean = baseline["mean"].to_numpy(dtype=float)[where[have]]
        std = baseline["std"].to_numpy(dtype=float)[where[have]]
        noise = ROUNDING * np.abs(mean)
        std = np.where(std > noise, std, 0.0)
        diff = values.to_numpy(dtype=float)[:, have] - mean
        diff = np.where(np.abs(diff) <= noise, 0.0, diff)  # NaN (missing) stays NaN
        with np.errstate(divide="ignore", invalid="ignore"):
            scored = np.where(std > 0, diff / np.where(std > 0, std, 1.0),
                              np.where(diff == 0, 0.0, np.sign(diff) * np.inf))
        scored[np.isnan(diff)] = np.nan
        z[:, have] = scored
    return pd.DataFrame(z, index=values.index, columns=values.columns)


def zscore(value: float, mean: float, std: float) -> float:
    """One cell of ``zscores``, same rules, without building frames (verdict evidence)."""
    noise = ROUNDING * abs(mean)
    diff = value - mean
    if abs(diff) <= noise:
        return 0.0
    if std > noise:
        return diff / std
    return float(np.sign(diff) * np.inf)

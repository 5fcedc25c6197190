"""Alert budget and earned seasonality: thresholds calibrated on an event type's own history.

Pure: arrays in, numbers out. The z-rule's threshold for a field is chosen so that about
``rate`` of values like its history would be flagged, measured by replaying the history
through the same baselines the service keeps (tasks/store/lua/apply_batch.lua): each value is
scored against the all-time moments and the recent (exponentially weighted, clipped) baseline
built from the values before it, exactly as it would have been judged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from ml.features import SECONDS_PER_DAY
from ml.stats import zscore

# Fewer scored values than this and the tail is not estimated (a 50-row history with one wild
# value would otherwise set a threshold of 40): the Gaussian z stands.
MIN_CALIBRATION_VALUES = 200
# The empirical quantile is trusted when at least this many values lie beyond it; otherwise
# the tail beyond the 95% quantile is extrapolated (peaks over threshold).
MIN_EXCEEDANCES = 10
TAIL_SHARE = 0.05
# Seasonal (time-of-day) features need the history to cover this many full days.
SEASONAL_CYCLES = 2


def gaussian_z(rate: float) -> float:
    """The two-sided z beyond which ``rate`` of Gaussian values lie (0.0003 -> 3.62)."""
    return NormalDist().inv_cdf(1.0 - rate / 2.0)


@dataclass(frozen=True)
class Calibration:
    """A field's z threshold and what it implies on the history it was calibrated on.

    method: "quantile" (the empirical one), "peaks over threshold" (tail extrapolated),
    "gaussian floor" (the data's tail is lighter than Gaussian: the Gaussian z stands) or
    "gaussian" (too few values to calibrate on). values: |z| scored in the replay.
    """
    threshold: float
    method: str
    values: int
    implied_rate: float | None


def replay_absz(values: np.ndarray, *, min_history: int, alpha: float, clip: float,
                mode: str = "both") -> np.ndarray:
    """|z| of each value after the first ``min_history``, as the z-rule would have scored it
    against the baselines built from the values before it (time order).

    all-time: exact running moments (population std). recent: weight max(1/n, alpha), values
    clipped to mean +/- clip*std once ``min_history`` were seen (tasks/store/lua/apply_batch.lua, kept
    about the first value as it keeps them about a reference, for precision). mode "both":
    min(|z_all|, |z_recent|); "all_time"/"recent": that one; "robust": against the median and
    1.4826*MAD of all the values (the model's training sample is the history).
    """
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if x.size <= min_history:
        return np.empty(0)
    if mode == "robust":
        median = float(np.median(x))
        spread = 1.4826 * float(np.median(np.abs(x - median)))
        return np.abs([zscore(float(v), median, spread) for v in x[min_history:]])
    ref = float(x[0])
    shifted = (x - ref).tolist()
    mean, m2 = 0.0, 0.0          # all-time (Welford), about ref
    r_mean, r_var = 0.0, 0.0     # recent, about ref; both have seen n values
    out = []
    for n, (raw, v) in enumerate(zip(x.tolist(), shifted)):
        if n >= min_history:
            z_all = abs(zscore(raw, ref + mean, math.sqrt(m2 / n)))
            z_recent = abs(zscore(raw, ref + r_mean, math.sqrt(r_var)))
            out.append(z_all if mode == "all_time" else z_recent if mode == "recent"
                       else min(z_all, z_recent))
        d = v - mean
        mean += d / (n + 1)
        m2 += d * (v - mean)
        clipped = v
        if n >= min_history:
            band = clip * math.sqrt(r_var)
            clipped = min(max(v, r_mean - band), r_mean + band)
        w = max(1.0 / (n + 1), alpha)
        d = clipped - r_mean
        r_mean += w * d
        r_var = (1.0 - w) * (r_var + w * d * d)
    return np.asarray(out, dtype=float)


def tail_threshold(absz: np.ndarray, rate: float) -> tuple[float, str]:
    """The |z| exceeded by ``rate`` of values like ``absz``, never below the Gaussian z.

    Infinite |z| (a value after a constant stretch) say nothing about the tail: left out.
    """
    finite = absz[np.isfinite(absz)]
    floor = gaussian_z(rate)
    if finite.size < MIN_CALIBRATION_VALUES:
        return floor, "gaussian"
    if finite.size * rate >= MIN_EXCEEDANCES:
        found, method = float(np.quantile(finite, 1.0 - rate)), "quantile"
    else:
        # Peaks over threshold with an exponential tail: beyond u, exceedances decay with
        # mean beta, so P(|z| > u + t) = TAIL_SHARE * exp(-t / beta).
        u = float(np.quantile(finite, 1.0 - TAIL_SHARE))
        excess = finite[finite > u] - u
        beta = float(excess.mean()) if excess.size else 0.0
        found, method = u + beta * math.log(TAIL_SHARE / rate), "peaks over threshold"
    return (found, method) if found > floor else (floor, "gaussian floor")


def implied_rate(absz: np.ndarray, threshold: float) -> float | None:
    """Share of the replayed |z| above the threshold (what the rule would have flagged)."""
    return float(np.mean(absz > threshold)) if absz.size else None


def calibrate(values: np.ndarray, rate: float, *, min_history: int, alpha: float,
              clip: float, mode: str = "both", fixed: float | None = None) -> Calibration:
    """A field's z threshold for a flag rate ``rate`` (or the ``fixed`` one, whose implied
    rate is still measured), from its history in time order."""
    absz = replay_absz(values, min_history=min_history, alpha=alpha, clip=clip, mode=mode)
    threshold, method = (fixed, "fixed") if fixed is not None else tail_threshold(absz, rate)
    return Calibration(threshold, method, int(absz.size), implied_rate(absz, threshold))


def seasonality(timestamps: np.ndarray, cycles: int = SEASONAL_CYCLES,
                period: float = SECONDS_PER_DAY) -> tuple[bool, str]:
    """Whether a history of these timestamps (epoch seconds) earns time-of-day features:
    it must span ``cycles`` full periods, or the model learns the hours it happened to see
    and flags every other hour. Returns (earned, why)."""
    ts = np.asarray(timestamps, dtype=float)
    days = float(ts.max() - ts.min()) / period if ts.size else 0.0
    if days >= cycles:
        return True, f"history spans {days:.3g} days (needs {cycles})"
    return False, f"history spans {days:.3g} days; needs {cycles}"

"""Turn event payloads into a numeric DataFrame, one column per numeric leaf."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from numbers import Real

import numpy as np
import pandas as pd

SEPARATOR = "."


def numeric_leaves(payload: Mapping, prefix: str = "") -> dict[str, float]:
    """The finite numeric leaves of a nested mapping, keyed by dotted path (``cart.total``).

    Booleans, strings, lists and non-finite numbers are not measurements and are left out.
    """
    leaves: dict[str, float] = {}
    for key, value in payload.items():
        kind = type(value)
        # Exact float and int first: what JSON gives, without the costlier ABC checks.
        if kind is float:
            if math.isfinite(value):
                leaves[f"{prefix}{key}"] = value
        elif kind is dict or (kind is not int and isinstance(value, Mapping)):
            leaves.update(numeric_leaves(value, f"{prefix}{key}{SEPARATOR}"))
        elif kind is int or (isinstance(value, Real) and not isinstance(value, bool)):
            try:
                number = float(value)
            except OverflowError:  # an integer beyond float range is not a usable measurement
                continue
            if math.isfinite(number):
                leaves[f"{prefix}{key}"] = number
    return leaves


def payload_frame(payloads: Sequence[Mapping]) -> pd.DataFrame:
    """One row per payload, one float column per numeric leaf seen in any of them (NaN if absent)."""
    frame = pd.DataFrame.from_records([numeric_leaves(p) for p in payloads],
                                      index=range(len(payloads)))
    return frame.astype(float)


# Derived features get an '@' prefix: payload keys are the user's, these are Vigil's (the
# API refuses payload fields whose path starts with it, so the two never collide).
DERIVED_PREFIX = "@"
TIME_OF_DAY = (f"{DERIVED_PREFIX}time_of_day.sin", f"{DERIVED_PREFIX}time_of_day.cos")
DELTA_PREFIX = f"{DERIVED_PREFIX}delta."
SECONDS_PER_DAY = 86_400


def time_of_day(timestamps: Sequence[float], index: pd.Index | None = None) -> pd.DataFrame:
    """Time of day (UTC) on the unit circle, so 23:59 and 00:01 are neighbours."""
    angle = 2 * np.pi * (np.asarray(timestamps, dtype=float) % SECONDS_PER_DAY) / SECONDS_PER_DAY
    return pd.DataFrame({TIME_OF_DAY[0]: np.sin(angle), TIME_OF_DAY[1]: np.cos(angle)},
                        index=index)


def deltas(values: pd.DataFrame, previous: Mapping[str, float]) -> pd.DataFrame:
    """Change of each field from its previous value; rows must be in time order.

    The first row of a field is compared with ``previous`` (its latest value before these
    rows) and is NaN when there is none. A missing value leaves the previous one in place.
    """
    columns = {}
    for field in values.columns:
        column = values[field]
        before = column.ffill().shift(1)
        if field in previous:
            before = before.fillna(previous[field])
        columns[DELTA_PREFIX + str(field)] = column - before
    return pd.DataFrame(columns, index=values.index)


def model_frame(values: pd.DataFrame, timestamps: Sequence[float],
                previous: Mapping[str, float], derived: Sequence[str]) -> pd.DataFrame:
    """The anomaly model's input: raw numeric fields plus the derived features asked for."""
    parts = [values]
    if "delta" in derived:
        parts.append(deltas(values, previous))
    if "time_of_day" in derived:
        parts.append(time_of_day(timestamps, values.index))
    return pd.concat(parts, axis=1) if len(parts) > 1 else values

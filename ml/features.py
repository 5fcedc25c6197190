"""Turn event payloads into a numeric DataFrame, one column per numeric leaf."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from numbers import Real

import pandas as pd

SEPARATOR = "."


def numeric_leaves(payload: Mapping, prefix: str = "") -> dict[str, float]:
    """The finite numeric leaves of a nested mapping, keyed by dotted path (``cart.total``).

    Booleans, strings, lists and non-finite numbers are not measurements and are left out.
    """
    leaves: dict[str, float] = {}
    for key, value in payload.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            leaves.update(numeric_leaves(value, name + SEPARATOR))
        elif isinstance(value, Real) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:  # an integer beyond float range is not a usable measurement
                continue
            if math.isfinite(number):
                leaves[name] = number
    return leaves


def payload_frame(payloads: Sequence[Mapping]) -> pd.DataFrame:
    """One row per payload, one float column per numeric leaf seen in any of them (NaN if absent)."""
    frame = pd.DataFrame.from_records([numeric_leaves(p) for p in payloads],
                                      index=range(len(payloads)))
    return frame.astype(float)

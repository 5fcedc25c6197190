"""Level shifts: K consecutive out-of-range values of a field on the same side.

A value out of range is either a wild one (it stays an alert and moves no baseline) or the
first of a new level. K of them in a row, all above or all below the range, are taken as a
new level: the recent baseline re-seeds from them (``reseed``), and later values are judged
against it. Anything else (a value in range, a value on the other side) ends the run, so a
single wild value, or wild values alternating sides, never makes a shift.

Pure: the sides of a field's values in time order and the run carried over from the values
before them in; the position of the first shift and the run after out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Run:
    """The out-of-range values of one field in a row so far, all on ``side`` (+1 above the
    range, -1 below; 0 with no values: no run)."""

    side: int = 0
    values: tuple[float, ...] = ()

    def as_dict(self) -> dict:
        return {"side": self.side, "values": list(self.values)}

    @classmethod
    def from_dict(cls, raw: dict | None) -> Run:
        if not raw or not raw.get("values"):
            return cls()
        return cls(int(raw["side"]), tuple(float(x) for x in raw["values"]))


@dataclass(frozen=True)
class Scan:
    """What ``first_shift`` found: ``position`` of the value that completed a run of K (None:
    none did), the K values of that run (``completed``), and the run carried on after the
    scanned values (empty right after a shift: the next run starts with the next value)."""

    position: int | None
    completed: tuple[float, ...]
    run: Run


def extend(run: Run, side: int, value: float) -> Run:
    """The run after one more value of the field: ``side`` +1/-1 out of range above/below,
    0 in range (ends the run)."""
    if side == 0:
        return Run()
    if side == run.side:
        return Run(side, (*run.values, value))
    return Run(side, (value,))  # the other side: a new run starts with this value


def first_shift(sides: Sequence[int | None], values: Sequence[float], run: Run,
                k: int) -> Scan:
    """Walk a field's values in time order from ``run`` until one completes a run of ``k``.

    sides: per value +1 / -1 (out of range above / below), 0 (in range) or None (the event
    has no such field: it neither extends nor ends the run). k < 2: never a shift (no run
    is kept either).
    """
    if k < 2:
        return Scan(None, (), Run())
    for position, (side, value) in enumerate(zip(sides, values)):
        if side is None:
            continue
        run = extend(run, side, float(value))
        if len(run.values) >= k:
            return Scan(position, run.values[-k:], Run())
    return Scan(None, (), run)


def reseed(values: Sequence[float], previous_var: float) -> tuple[float, float]:
    """The new level's (mean, variance): the mean of the run's values, and their variance or
    the previous one, whichever is larger (K values alone may be too tight a spread)."""
    arr = np.asarray(values, dtype=float)
    var = float(arr.var()) if arr.size else 0.0
    if np.isfinite(previous_var):
        var = max(var, float(previous_var))
    return float(arr.mean()), var

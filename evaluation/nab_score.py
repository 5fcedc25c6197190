"""The NAB score of binary detections (Lavin & Ahmad 2015, "Evaluating Real-time Anomaly
Detection Algorithms - the Numenta Anomaly Benchmark"), ported from numenta/NAB.

What was ported, and from where in numenta/NAB:
- `scaled_sigmoid` is nab/sweeper.py `scaledSigmoid`: 2 / (1 + e^(5 y)) - 1, and -1 beyond 3.
- `raw_score` is what nab/sweeper.py `Sweeper.calcSweepScore` + `calcScoreByThreshold` add up
  for the rows at or above the threshold:
  * a detection in a window scores tpWeight * S(-(right - i + 1) / width) / S(-1): 1 x tpWeight
    at the window's first row, falling towards 0 at its end; only the window's best (its
    first) detection counts;
  * a window without a detection costs fnWeight;
  * a detection outside every window costs fpWeight * S((i - right) / (width - 1)) of the
    closest window that ended before it (about 0 just after a window, -1 x fpWeight from 3
    widths on), and the full fpWeight when no window precedes it;
  * rows of the probationary period are not scored, and a window with no row after it
    is not scored at all.
- `PROFILES` is config/profiles.json's cost matrices.
- `FamilyScore.normalised` is nab/runner.py `Runner.normalize`: 100 * (raw - null) /
  (perfect - null), on sums over the files, null being the detector that never detects
  (-fnWeight per window) and perfect tpWeight per window.

Where this differs, all of it deliberate:
- No threshold sweep (nab/optimizer.py): Vigil's verdicts are binary, so the detections are
  scored as given (NAB with 0/1 anomaly scores at threshold 1.0 gives the same number).
- The caller says how many leading rows are probationary; NAB's own length is
  `probation_length` (15% of the rows, at most 750); the eval passes the rows it imported as
  history instead, which Vigil gives no verdict on.
- `perfect` counts the windows that are scored (NAB counts every labelled window; the same
  when no window lies wholly in the probationary period).
- A window is the rows whose timestamps lie within its limits (nab/scorer.py `Window`), so
  limits need not be row timestamps exactly, and rows need not be sorted.
- After a window of a single row NAB would divide by zero; here an FP after it is at
  position 2.0 (what NAB's earlier nab/scorer.py did).

Checked by tests/unit/test_nab_score.py: NAB's own scorer test cases (tests/unit/
scorer_test.py, tests/integration/scorer_test.py, true_positive_test.py,
false_positive_test.py, sweeper_test.py) with their inputs and expected values, and a
hand-computed case.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class CostMatrix:
    tp: float
    fp: float
    fn: float


PROFILES: dict[str, CostMatrix] = {
    "standard": CostMatrix(tp=1.0, fp=0.11, fn=1.0),
    "reward_low_FP_rate": CostMatrix(tp=1.0, fp=0.22, fn=1.0),
    "reward_low_FN_rate": CostMatrix(tp=1.0, fp=0.11, fn=2.0),
}


def scaled_sigmoid(position: float) -> float:
    """-1 (window start) -> 0.9866, 0 (window end) -> 0, 1 (a width after) -> -0.9866."""
    if position > 3.0:
        return -1.0
    return 2.0 / (1.0 + math.exp(5.0 * position)) - 1.0


MAX_TP = scaled_sigmoid(-1.0)


def probation_length(rows: int, share: float = 0.15) -> int:
    """NAB's probationary period: `share` of the rows, at most share * 5000 rows."""
    return int(min(math.floor(share * rows), share * 5000))


def window_spans(timestamps: Sequence | pd.Series,
                 windows: Sequence[Sequence]) -> list[tuple[int, int]]:
    """(first row, last row) of each window, by position; windows holding no row are left out."""
    times = pd.to_datetime(pd.Series(timestamps)).to_numpy()
    spans = []
    for start, end in windows:
        rows = np.flatnonzero((times >= pd.Timestamp(start).to_datetime64())
                              & (times <= pd.Timestamp(end).to_datetime64()))
        if rows.size:
            spans.append((int(rows[0]), int(rows[-1])))
    return sorted(spans)


def scored_windows(spans: Sequence[tuple[int, int]], probation: int = 0) -> int:
    """Windows with at least one row after the probationary period: the ones NAB scores."""
    return sum(right >= probation for _, right in spans)


def _window_score(detections: np.ndarray, left: int, right: int, probation: int,
                  cost: CostMatrix) -> float:
    first_scored = max(left, probation)
    hits = np.flatnonzero(detections[first_scored:right + 1])
    if hits.size == 0:
        return -cost.fn
    # Only the earliest detection counts: the sigmoid falls along the window, so it is the max.
    first = first_scored + int(hits[0])
    width = right - left + 1
    return scaled_sigmoid(-(right - first + 1) / width) * cost.tp / MAX_TP


def _false_positive_score(row: int, spans: Sequence[tuple[int, int]], cost: CostMatrix) -> float:
    before = [(left, right) for left, right in spans if right < row]
    if not before:
        return -cost.fp
    left, right = before[-1]
    width = right - left + 1
    position = (row - right) / (width - 1) if width > 1 else 2.0
    return scaled_sigmoid(position) * cost.fp


def raw_score(detections: Sequence[bool] | np.ndarray, spans: Sequence[tuple[int, int]],
              cost: CostMatrix, probation: int = 0) -> float:
    """The NAB raw score of one series: detections per row, windows as row spans."""
    detections = np.asarray(detections, dtype=bool)
    spans = sorted(spans)
    inside = np.zeros(detections.size, dtype=bool)
    total = 0.0
    for left, right in spans:
        inside[left:right + 1] = True
        if right >= probation:
            total += _window_score(detections, left, right, probation, cost)
    outside_hits = np.flatnonzero(detections & ~inside)
    for row in outside_hits[outside_hits >= probation]:
        total += _false_positive_score(int(row), spans, cost)
    return total


@dataclass
class FamilyScore:
    """Raw, null and perfect NAB scores, summed over series as NAB sums over files."""

    raw: float = 0.0
    null: float = 0.0
    perfect: float = 0.0

    def __add__(self, other: FamilyScore) -> FamilyScore:
        return FamilyScore(self.raw + other.raw, self.null + other.null,
                           self.perfect + other.perfect)

    @property
    def normalised(self) -> float | None:
        """100 * (raw - null) / (perfect - null); None when there is no window to score."""
        if self.perfect == self.null:
            return None
        return 100.0 * (self.raw - self.null) / (self.perfect - self.null)


def score_series(detections: Sequence[bool] | np.ndarray, spans: Sequence[tuple[int, int]],
                 cost: CostMatrix, probation: int = 0) -> FamilyScore:
    """One series' raw score with its null (no detection) and perfect figures."""
    windows = scored_windows(spans, probation)
    return FamilyScore(raw=raw_score(detections, spans, cost, probation),
                       null=-cost.fn * windows, perfect=cost.tp * windows)

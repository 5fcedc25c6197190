"""Turn z-scores and model scores into per-event verdicts with the evidence behind them.

Pure: frames and a fitted model in, plain dicts out (what the job store and webhooks carry).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ml.anomaly import AnomalyModel, top_contributors
from ml.stats import Moments, baseline_frame, zscores


@dataclass(frozen=True)
class Judge:
    z_threshold: float
    min_history: int
    model_min_rows: int


def _finite_or_none(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _out_of_range(field: str, value: float, mean: float, std: float, z: float,
                  limit: float) -> dict:
    low, high = mean - limit * std, mean + limit * std
    if math.isfinite(z):
        message = (f"{field}={value:g} is {z:+.2f} standard deviations from its mean {mean:g} "
                   f"(std {std:g}); expected within [{low:g}, {high:g}]")
    else:
        message = f"{field}={value:g} but every value in its history was {mean:g}"
    return {"code": "out_of_range", "field": field, "message": message, "value": value,
            "mean": mean, "std": std, "z": _finite_or_none(z), "expected_range": [low, high]}


def judge_events(values: pd.DataFrame, baseline: dict[str, Moments], rules: Judge,
                 model: AnomalyModel | None = None,
                 model_version: int | None = None) -> list[dict]:
    """One verdict per row of ``values`` (numeric fields of events of one type).

    A verdict: ``valid``, ``warnings`` (each made it invalid), ``notes`` (said, not failed),
    ``anomaly_score`` (None when no model judged it).
    """
    ready = {f: m for f, m in baseline.items() if m.n >= rules.min_history}
    z = zscores(values, baseline_frame(ready)) if ready else None
    verdicts = [{"valid": True, "warnings": [], "notes": [], "anomaly_score": None}
                for _ in range(len(values))]

    present = values.notna().to_numpy()
    for col, field in enumerate(values.columns):
        if field in ready:
            continue
        count = baseline[field].n if field in baseline else 0
        note = {"code": "insufficient_history", "field": field,
                "message": f"{field} has {count} values of history; "
                           f"{rules.min_history} are needed before it is checked",
                "count": count, "needed": rules.min_history}
        for row in np.flatnonzero(present[:, col]):
            verdicts[row]["notes"].append(note)

    if z is not None:
        zs = z.to_numpy(dtype=float)
        with np.errstate(invalid="ignore"):
            rows, cols = np.nonzero(np.abs(zs) > rules.z_threshold)
        for row, col in zip(rows, cols):
            field = values.columns[col]
            m = ready[field]
            verdicts[row]["warnings"].append(_out_of_range(
                field, float(values.iat[row, col]), m.mean, m.std, float(zs[row, col]),
                rules.z_threshold))

    if model is None:
        note = {"code": "no_model",
                "message": "no anomaly model for this event type yet; one is trained once "
                           f"{rules.model_min_rows} events of history exist"}
        for verdict in verdicts:
            verdict["notes"].append(note)
    elif len(values):
        scores = model.score(values)
        flagged = np.flatnonzero(scores > model.threshold_)
        # Explanations cost one scoring per field, so only for the rows that need one.
        explained = model.explain(values.iloc[flagged]) if flagged.size else None
        for row, score in enumerate(scores):
            verdicts[row]["anomaly_score"] = round(float(score), 6)
        for pos, row in enumerate(flagged):
            contributors = top_contributors(explained.iloc[pos])
            named = ", ".join(c["field"] for c in contributors) or "the combination of fields"
            verdicts[row]["warnings"].append({
                "code": "anomaly", "field": None,
                "message": f"the anomaly model (v{model_version}) scores this event "
                           f"{scores[row]:.3f}, above its threshold {model.threshold_:.3f}; "
                           f"most unusual: {named}",
                "score": round(float(scores[row]), 6),
                "threshold": round(float(model.threshold_), 6),
                "model_version": model_version, "contributors": contributors})

    for verdict in verdicts:
        verdict["valid"] = not verdict["warnings"]
    return verdicts

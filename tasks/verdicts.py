"""Turn z-scores and model scores into per-event verdicts with the evidence behind them.

Pure: frames and a fitted model in, plain dicts out (what the job store and webhooks carry).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from core.config import Z_SHARE, Settings
from ml.anomaly import AnomalyModel, top_contributors
from ml.calibration import gaussian_z
from ml.stats import Moments, baseline_frame, zscore, zscores

log = logging.getLogger(__name__)


# A field's z threshold when it has no calibrated one and the caller names no fallback: the
# Gaussian z of the z-rule's share of the default alert budget (about 3.62).
DEFAULT_FALLBACK = gaussian_z(Z_SHARE * Settings.alert_rate)


@dataclass(frozen=True)
class Judge:
    # One fixed z threshold for every field (VIGIL_Z_THRESHOLD); None: per field, below.
    z_threshold: float | None
    min_history: int
    model_min_rows: int
    # "both": out of range of the all-time and the recent baseline; "all_time", "recent" or
    # "robust" (median and MAD of the model's training sample): that one alone.
    baseline_mode: str = "all_time"
    # Per field: the threshold calibrated on the type's history when its model was trained.
    thresholds: Mapping[str, float] = dataclasses.field(default_factory=dict)
    # A field without one (no model yet, or a field the model never saw).
    fallback: float = DEFAULT_FALLBACK

    @classmethod
    def from_settings(cls, cfg: Settings) -> Judge:
        """The rules of these settings, before any calibration (tasks.models.z_thresholds
        gives the calibrated ones: dataclasses.replace(judge, thresholds=...))."""
        return cls(cfg.z_threshold, cfg.min_history, cfg.model_min_rows, cfg.baseline_mode,
                   fallback=gaussian_z(cfg.z_rate))

    def limit(self, field: str) -> float:
        """The |z| beyond which a value of ``field`` is out of range."""
        if self.z_threshold is not None:
            return self.z_threshold
        return self.thresholds.get(field, self.fallback)


BASELINE_NAMES = {"all_time": "all-time", "recent": "recent", "robust": "robust (median/MAD)"}


def _finite_or_none(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _figures(m: Moments, value: float, limit: float) -> dict:
    z = zscore(value, m.mean, m.std)
    return {"n": m.n, "mean": m.mean, "std": m.std, "z": _finite_or_none(z),
            "expected_range": [m.mean - limit * m.std, m.mean + limit * m.std], "_z": z}


def _describe(name: str, field: str, value: float, f: dict) -> str:
    if f["z"] is None:
        return f"every value in its {name} history was {f['mean']:g}"
    low, high = f["expected_range"]
    return (f"{f['z']:+.2f} standard deviations from its {name} mean {f['mean']:g} "
            f"(std {f['std']:g}; expected within [{low:g}, {high:g}])")


def _out_of_range(field: str, value: float, judged: dict[str, dict], limit: float) -> dict:
    """Warning for a value out of range of every baseline in ``judged`` (name -> figures),
    judged with the z threshold ``limit`` (reported as ``threshold``).

    The top-level figures are those of the first baseline; each baseline's own figures are
    under ``baselines`` so the verdict can be reproduced.
    """
    first = next(iter(judged.values()))
    reasons = "; ".join(_describe(BASELINE_NAMES[name], field, value, f)
                        for name, f in judged.items())
    return {"code": "out_of_range", "field": field,
            "message": f"{field}={value:g}: {reasons}; its threshold is {limit:.3g} "
                       "standard deviations",
            "threshold": float(limit),
            "value": value, "mean": first["mean"], "std": first["std"], "z": first["z"],
            "expected_range": first["expected_range"], "baseline": "+".join(judged),
            "baselines": {name: {k: v for k, v in f.items() if k != "_z"}
                          for name, f in judged.items()}}


def level_shift_warning(field: str, value: float, side: int, run: int,
                        before: tuple[float, float], after: tuple[float, float]) -> dict:
    """Warning for the value that completed a level shift of ``field``: ``run`` values in a
    row out of range on ``side`` (+1 above, -1 below). before / after: (mean, std) of the
    recent baseline it was judged against and of the one re-seeded from the run's values."""
    direction = "above" if side > 0 else "below"
    return {"code": "level_shift", "field": field,
            "message": f"{field}={value:g}: {run} values in a row {direction} the expected "
                       f"range: a new level. The recent baseline re-seeds from them (mean "
                       f"{before[0]:g}, std {before[1]:g} -> mean {after[0]:g}, std "
                       f"{after[1]:g}); later values are judged against it, the all-time "
                       "baseline keeps its figures",
            "value": value, "run": run,
            "before": {"mean": float(before[0]), "std": float(before[1])},
            "after": {"mean": float(after[0]), "std": float(after[1])}}


def model_opinions(model: AnomalyModel, model_version: int | None,
                   scored: pd.DataFrame) -> list[tuple[float, dict | None]]:
    """(anomaly score, its warning or None) per row of ``scored``; raises whatever the model
    raises, before any verdict was touched (the caller falls back to the z-check alone)."""
    scores = np.asarray(model.score(scored), dtype=float)
    if scores.shape != (len(scored),):  # scores of other rows would be pinned on these
        raise ValueError(f"the model returned {scores.shape} scores for {len(scored)} rows")
    flagged = np.flatnonzero(scores > model.threshold_)
    # Explanations cost one scoring per field, so only for the rows that need one.
    explained = model.explain(scored.iloc[flagged]).to_numpy() if flagged.size else None
    opinions: list[tuple[float, dict | None]] = [(round(float(score), 6), None)
                                                 for score in scores]
    for pos, row in enumerate(flagged):
        contributors = top_contributors(explained[pos], model.features_)
        named = ", ".join(c["field"] for c in contributors) or "the combination of fields"
        opinions[row] = (opinions[row][0], {
            "code": "anomaly", "field": None,
            "message": f"the anomaly model (v{model_version}) scores this event "
                       f"{scores[row]:.3f}, above its threshold {model.threshold_:.3f}; "
                       f"most unusual: {named}",
            "score": round(float(scores[row]), 6),
            "threshold": round(float(model.threshold_), 6),
            "model_version": model_version, "contributors": contributors})
    return opinions


def model_error_note(model_version: int | None, error: BaseException | None) -> dict:
    """The note of an event the anomaly model could not score (a note: nothing failed)."""
    model = f"the anomaly model v{model_version}" if model_version else "the anomaly model"
    return {"code": "model_error",
            "message": f"{model} could not score this event: "
                       f"{type(error).__name__}: {error}; judged by the z-check alone"}


def judge_events(values: pd.DataFrame, baseline: dict[str, Moments], rules: Judge,
                 model: AnomalyModel | None = None, model_version: int | None = None, *,
                 recent: dict[str, Moments] | None = None,
                 robust: dict[str, Moments] | None = None,
                 model_input: pd.DataFrame | None = None,
                 model_error: BaseException | None = None,
                 model_note: dict | None = None) -> list[dict]:
    """One verdict per row of ``values`` (numeric fields of events of one type).

    baseline: all-time moments per field; recent: the drift-aware ones (as Moments);
    robust: median and scaled MAD as Moments (mean=median, std=1.4826*MAD);
    model_input: what the model scores (``values`` plus derived features), default ``values``.
    model_error: why the model (``model_version``) could not be loaded or prepared. A model
    that cannot score, for that reason or its own, fails nothing: every event is judged by the
    z-check alone, with a ``model_error`` note saying so. model_note: with no model, why
    (default: a ``no_model`` note).
    A verdict: ``valid``, ``warnings`` (each made it invalid), ``notes`` (said, not failed),
    ``anomaly_score`` (None when no model judged it).
    """
    ready = {f: m for f, m in baseline.items() if m.n >= rules.min_history}
    # The second opinion: the recent baseline, or the robust one in "robust" mode.
    other_name = "robust" if rules.baseline_mode == "robust" else "recent"
    other = robust if other_name == "robust" else recent
    recent_ready = {f: m for f, m in (other or {}).items() if m.n >= rules.min_history}
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
        # Per field (column): its calibrated threshold, or the fixed one.
        limits = np.array([rules.limit(f) for f in values.columns], dtype=float)
        with np.errstate(invalid="ignore"):
            out_all = (np.abs(z.to_numpy(dtype=float)) > limits)
            if recent_ready:
                z_recent = zscores(values, baseline_frame(recent_ready)).to_numpy(dtype=float)
                has_recent = ~np.isnan(z_recent) | values.isna().to_numpy()
                out_recent = np.abs(z_recent) > limits
            else:
                has_recent = out_recent = np.zeros(values.shape, dtype=bool)
        # A field without a recent baseline yet is judged by the all-time one alone.
        if rules.baseline_mode == "both":
            flagged = out_all & (out_recent | ~has_recent)
        elif rules.baseline_mode in ("recent", "robust"):
            flagged = np.where(has_recent, out_recent, out_all)
        else:
            flagged = out_all
        for row, col in zip(*np.nonzero(flagged)):
            field, value = values.columns[col], float(values.iat[row, col])
            limit = float(limits[col])
            judged = {}
            if rules.baseline_mode in ("both", "all_time") or not has_recent[row, col]:
                judged["all_time"] = _figures(ready[field], value, limit)
            if rules.baseline_mode != "all_time" and has_recent[row, col]:
                judged[other_name] = _figures(recent_ready[field], value, limit)
            verdicts[row]["warnings"].append(_out_of_range(field, value, judged, limit))

    if model is None and model_error is None:
        note = model_note or {
            "code": "no_model",
            "message": "no anomaly model for this event type yet; one is trained once "
                       f"{rules.model_min_rows} events of history exist"}
        for verdict in verdicts:
            verdict["notes"].append(note)
    elif len(values):
        opinions = None
        if model is not None:
            scored = values if model_input is None else model_input
            try:
                opinions = model_opinions(model, model_version, scored)
            except Exception as exc:  # any model failure: the z-check still judges the events
                log.warning("anomaly model could not score; judged by the z-check alone",
                            exc_info=True, extra={"model_version": model_version})
                model_error = exc
        if opinions is None:
            note = model_error_note(model_version, model_error)
            for verdict in verdicts:
                verdict["notes"].append(note)
        else:
            for verdict, (score, warning) in zip(verdicts, opinions):
                verdict["anomaly_score"] = score
                if warning is not None:
                    verdict["warnings"].append(warning)

    for verdict in verdicts:
        verdict["valid"] = not verdict["warnings"]
    return verdicts

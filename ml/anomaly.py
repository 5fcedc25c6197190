"""An IsolationForest over an event type's numeric fields: fit, score, explain."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.ensemble import IsolationForest


class AnomalyModel(BaseEstimator):
    """Scores how unusual a row of numeric fields is, on a 0-1 scale (higher is stranger).

    The decision threshold is the (1 - contamination) quantile of the training scores, so
    about ``contamination`` of rows like the history are flagged.
    """

    def __init__(self, contamination: float = 0.005, n_estimators: int = 100,
                 max_samples: int = 256, random_state: int | None = 0):
        self.contamination = contamination
        self.n_estimators = n_estimators
        self.max_samples = max_samples
        self.random_state = random_state

    def fit(self, X: pd.DataFrame, y: None = None) -> AnomalyModel:
        X = X.rename(columns=str).astype(float).dropna(axis="columns", how="all")
        if X.shape[0] < 2 or X.shape[1] == 0:
            raise ValueError("need at least 2 rows and 1 numeric column to fit")
        self.features_: list[str] = list(X.columns)
        # A missing field is filled with its typical value, so absence alone is not an anomaly.
        self.medians_: np.ndarray = X.median().to_numpy(dtype=float)
        # Median absolute deviation per feature: a spread that heavy tails do not inflate.
        self.mads_: np.ndarray = (X - self.medians_).abs().median().to_numpy(dtype=float)
        self.n_rows_: int = int(X.shape[0])
        self.forest_ = IsolationForest(
            n_estimators=self.n_estimators,
            max_samples=min(self.max_samples, self.n_rows_),
            random_state=self.random_state,
        ).fit(self._matrix(X))
        self.threshold_: float = float(np.quantile(self.score(X), 1.0 - self.contamination))
        return self

    def _matrix(self, X: pd.DataFrame) -> np.ndarray:
        matrix = X.rename(columns=str).reindex(columns=self.features_).to_numpy(dtype=float)
        missing = np.isnan(matrix)
        if missing.any():
            matrix = np.where(missing, self.medians_, matrix)
        return matrix

    def score(self, X: pd.DataFrame) -> np.ndarray:
        """Anomaly score per row in (0, 1]; about 0.5 and below is ordinary."""
        return -self.forest_.score_samples(self._matrix(X))

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        """True where a row scores above the learned threshold."""
        return self.score(X) > self.threshold_

    def explain(self, X: pd.DataFrame) -> pd.DataFrame:
        """How much each field raises each row's score: its score minus the score it would
        have with that field at its typical (median) value. Positive pushed towards anomaly."""
        base = self._matrix(X)
        n_rows, n_features = base.shape
        # Every (row, feature) variant in one scoring call: rows repeated, one feature reset.
        variants = np.repeat(base, n_features, axis=0)
        feature_of = np.tile(np.arange(n_features), n_rows)
        variants[np.arange(variants.shape[0]), feature_of] = self.medians_[feature_of]
        scores = -self.forest_.score_samples(np.vstack([base, variants]))
        with_median = scores[n_rows:].reshape(n_rows, n_features)
        return pd.DataFrame(scores[:n_rows, None] - with_median, index=X.index,
                            columns=self.features_)


def robust_moments(model: AnomalyModel) -> dict[str, tuple[int, float, float]]:
    """Per raw feature: (rows, median, 1.4826 * MAD), the normal-consistent robust spread.

    Empty for a model saved before MADs were learnt (it predates the robust option).
    """
    if not hasattr(model, "mads_"):
        return {}
    return {f: (model.n_rows_, float(med), float(1.4826 * mad))
            for f, med, mad in zip(model.features_, model.medians_, model.mads_)
            if not f.startswith("@")}


def top_contributors(contributions: pd.Series, limit: int = 3) -> list[dict]:
    """The fields that pushed one row's score up most, largest first."""
    positive = contributions[contributions > 0].sort_values(ascending=False).head(limit)
    return [{"field": str(f), "contribution": round(float(c), 4)} for f, c in positive.items()]


def training_frame(rows: Sequence[dict]) -> pd.DataFrame:
    """History rows (dicts of field -> number) as a float DataFrame."""
    return pd.DataFrame.from_records(list(rows)).astype(float)

"""AnomalyModel: an sklearn estimator that flags about `contamination` of typical rows."""

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone

from ml.anomaly import AnomalyModel, top_contributors

COV = [[1.0, 0.8, 0.3], [0.8, 1.0, 0.2], [0.3, 0.2, 1.0]]
MEAN = [10.0, -5.0, 100.0]


def sample(rng, n):
    return pd.DataFrame(rng.multivariate_normal(MEAN, COV, size=n), columns=["a", "b", "c"])


@pytest.fixture(scope="module")
def model():
    return AnomalyModel(contamination=0.005).fit(sample(np.random.default_rng(0), 2000))


def extreme(sigmas, fields=("a", "b", "c")):
    row = dict(zip("abc", MEAN))
    for f in fields:
        row[f] += sigmas  # every feature has std 1
    return pd.DataFrame([row])


def test_follows_the_sklearn_estimator_contract():
    params = {"contamination": 0.01, "n_estimators": 50, "max_samples": 128, "random_state": 3}
    unfitted = AnomalyModel(**params)
    assert unfitted.get_params() == params
    assert vars(unfitted) == params  # __init__ stores its params and nothing else
    copy = clone(unfitted)
    assert copy is not unfitted and copy.get_params() == params

    X = sample(np.random.default_rng(1), 300)
    fitted = AnomalyModel(**params)
    assert fitted.fit(X) is fitted
    learned = set(vars(fitted)) - set(params)
    assert {"features_", "medians_", "threshold_", "forest_"} <= learned
    assert all(name.endswith("_") for name in learned)
    assert not set(vars(clone(fitted))) - set(params)  # clone drops what was learned


def test_typical_held_out_rows_are_flagged_near_contamination(model):
    rate = model.predict(sample(np.random.default_rng(99), 5000)).mean()
    assert 0.0005 <= rate <= 0.02


def test_row_extreme_in_every_feature_is_flagged(model):
    row = extreme(8.0)
    assert model.score(row)[0] > model.threshold_
    assert model.predict(row).tolist() == [True]


def test_missing_feature_is_scored_as_its_median(model):
    partial = pd.DataFrame({"a": [MEAN[0]], "b": [MEAN[1]]})
    filled = partial.assign(c=model.medians_[model.features_.index("c")])
    assert model.score(partial)[0] == model.score(filled)[0]
    assert model.predict(partial).tolist() == [False]


def test_explain_blames_the_field_that_was_made_extreme(model):
    rows = pd.concat([extreme(6.0, "b"), extreme(6.0, "c")], ignore_index=True)
    contributions = model.explain(rows)
    assert list(contributions.columns) == ["a", "b", "c"]
    assert list(contributions.index) == [0, 1]
    assert contributions.loc[0].idxmax() == "b" and contributions.at[0, "b"] > 0
    assert contributions.loc[1].idxmax() == "c" and contributions.at[1, "c"] > 0


def test_scores_are_sklearns_own(model):
    """The fast path must give exactly what IsolationForest.score_samples gives, for a
    batch, a single row and a model loaded without the precomputed path lengths."""
    rows = pd.concat([sample(np.random.default_rng(5), 500), extreme(7.0)], ignore_index=True)
    expected = -model.forest_.score_samples(rows.to_numpy())
    np.testing.assert_array_equal(model.score(rows), expected)
    np.testing.assert_array_equal(model.score(rows.iloc[[500]]), expected[[500]])
    old = clone(model)
    old.__dict__.update({k: v for k, v in vars(model).items() if k != "path_lengths_"})
    np.testing.assert_array_equal(old.score(rows), expected)


def test_top_contributors_orders_by_contribution_and_drops_non_positive():
    fields = ["a", "b", "c", "d", "e"]
    contributions = np.array([0.1, 0.30004, -0.2, 0.0, 0.2])
    assert top_contributors(contributions, fields) == [
        {"field": "b", "contribution": 0.3},
        {"field": "e", "contribution": 0.2},
        {"field": "a", "contribution": 0.1},
    ]
    assert [c["field"] for c in top_contributors(contributions, fields, limit=2)] == ["b", "e"]
    assert top_contributors(np.array([-1.0, 0.0]), ["a", "b"]) == []


@pytest.mark.parametrize("X", [
    pd.DataFrame({"a": [1.0]}),
    pd.DataFrame(index=range(10)),
    pd.DataFrame({"a": [np.nan] * 10}),
], ids=["one-row", "no-columns", "all-nan-column"])
def test_fit_refuses_too_little_data(X):
    with pytest.raises(ValueError):
        AnomalyModel().fit(X)


def test_fit_with_integer_column_labels_still_separates_outliers():
    X = pd.DataFrame(np.random.default_rng(0).normal(size=(500, 2)))
    model = AnomalyModel().fit(X)
    assert model.predict(pd.DataFrame([[8.0, 8.0]])).tolist() == [True]

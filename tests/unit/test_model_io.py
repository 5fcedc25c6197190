"""Model files round-trip exactly and never load a type Vigil does not trust."""

import collections

import numpy as np
import pandas as pd
import pytest
import skops.io as sio
from sklearn.linear_model import LinearRegression

from ml.anomaly import AnomalyModel
from ml.model_io import UntrustedModelError, dump_model, load_model


@pytest.fixture(scope="module")
def data():
    return pd.DataFrame(np.random.default_rng(5).normal(size=(400, 3)), columns=["a", "b", "c"])


@pytest.fixture(scope="module")
def model(data):
    return AnomalyModel(n_estimators=30).fit(data)


def test_round_trip_gives_identical_scores(model, data):
    loaded = load_model(dump_model(model))
    assert isinstance(loaded, AnomalyModel)
    assert loaded.features_ == model.features_ and loaded.threshold_ == model.threshold_
    probe = pd.concat([data.head(50), pd.DataFrame({"a": [9.0], "b": [-9.0]})], ignore_index=True)
    np.testing.assert_array_equal(loaded.score(probe), model.score(probe))


def test_blob_of_another_estimator_is_refused(data):
    regression = LinearRegression().fit(data[["a", "b"]], data["c"])
    blob = sio.dumps(regression)
    assert sio.get_untrusted_types(data=blob) == []  # skops would load it happily...
    with pytest.raises(UntrustedModelError, match="LinearRegression"):
        load_model(blob)  # ...but it is not an AnomalyModel


def test_blob_naming_an_untrusted_type_is_refused(model):
    assert "collections.Counter" in sio.get_untrusted_types(data=sio.dumps(collections.Counter()))
    with pytest.raises(UntrustedModelError, match="collections.Counter"):
        load_model(sio.dumps(collections.Counter(a=1)))

    tampered = AnomalyModel(n_estimators=30)
    tampered.__dict__.update(vars(model), extra_=collections.Counter(a=1))
    with pytest.raises(UntrustedModelError, match="collections.Counter"):
        load_model(dump_model(tampered))


@pytest.mark.parametrize("blob", [b"", b"not a model", b"PK\x03\x04" + bytes(100)])
def test_garbage_bytes_raise(blob):
    with pytest.raises(Exception):  # noqa: B017 - any error will do, as long as it is raised
        load_model(blob)

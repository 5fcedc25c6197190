"""Payloads become float columns named by dotted path; anything non-numeric is not a value."""

import math

import numpy as np

from ml.features import numeric_leaves, payload_frame


def test_numeric_leaves_flattens_and_keeps_only_finite_numbers():
    payload = {
        "amount": 3, "rate": 2.5,
        "cart": {"items": 4, "shipping": {"cost": -1.25}, "empty": {}},
        "flag": True, "off": False, "name": "7", "tags": [1, 2], "none": None,
        "nan": math.nan, "inf": math.inf, "ninf": -math.inf,
        "deep": {"flag": True, "text": "x"},
    }
    leaves = numeric_leaves(payload)
    assert leaves == {"amount": 3.0, "rate": 2.5, "cart.items": 4.0, "cart.shipping.cost": -1.25}
    assert all(type(v) is float for v in leaves.values())


def test_payload_frame_aligns_columns_and_keeps_row_order():
    frame = payload_frame([{"a": 1}, {"b": {"c": 2}}, {"a": 3, "b": {"c": 4}}, {"z": "text"}])
    assert sorted(frame.columns) == ["a", "b.c"]
    assert list(frame.index) == [0, 1, 2, 3]
    assert all(dtype == np.float64 for dtype in frame.dtypes)
    assert frame["a"].tolist()[0::2] == [1.0, 3.0]
    assert np.isnan(frame.at[1, "a"]) and np.isnan(frame.at[3, "a"])
    assert np.isnan(frame.at[0, "b.c"]) and frame.at[1, "b.c"] == 2.0 and frame.at[2, "b.c"] == 4.0


def test_non_numeric_value_for_a_field_is_absent_not_checked():
    frame = payload_frame([{"a": 1.5}, {"a": "oops"}, {"a": True}, {"a": None}, {"a": 2}])
    assert frame["a"].tolist()[0] == 1.5 and frame["a"].tolist()[4] == 2.0
    assert frame["a"].iloc[1:4].isna().all()


def test_payloads_without_numbers_still_give_one_row_each():
    frame = payload_frame([{}, {"s": "x"}, {"b": False}])
    assert frame.shape == (3, 0)


def test_integer_too_large_for_float_is_left_out():
    assert numeric_leaves({"big": 10**400, "ok": 1}) == {"ok": 1.0}

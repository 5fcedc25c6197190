"""Level shifts through the running service: a lasting change is one alert, then quiet.

VIGIL_LEVEL_SHIFT_RUN is the default (5) and the baseline mode "both" (the default).
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import wait_for, wait_until

from tasks.store import baselines

K = 5
T0 = 1_790_000_000  # epoch seconds
DAYS = 3 * 86_400


def seed(client, event_type: str, n: int = 1000) -> None:
    """n events of history, x ~ N(100, 5), over three days."""
    values = np.random.default_rng(21).normal(100.0, 5.0, n)
    events = [{"timestamp": T0 + i * DAYS // n, "payload": {"x": float(v)}}
              for i, v in enumerate(values)]
    response = client.post(f"/v1/event-types/{event_type}/history", json={"events": events})
    assert response.status_code == 202, response.text
    assert wait_for(client, response.json()["status_url"])["status"] == "succeeded"


def send(client, event_type: str, values, start: int) -> list[dict]:
    """One job of events x = values, one second apart from T0 + DAYS + start; its results."""
    events = [{"event_type": event_type, "timestamp": T0 + DAYS + start + i,
               "payload": {"x": float(v)}} for i, v in enumerate(values)]
    response = client.post("/v1/jobs", json={"events": events})
    assert response.status_code == 202, response.text
    job = wait_for(client, response.json()["status_url"])
    assert job["status"] == "succeeded", job
    return job["results"]


def send_one(client, event_type: str, value: float, at: int) -> dict:
    """One event through POST /v1/events/validate (the micro-batch path), awaited."""
    response = client.post("/v1/events/validate", json={
        "event_type": event_type, "timestamp": T0 + DAYS + at, "payload": {"x": float(value)}})
    assert response.status_code == 202, response.text
    [result] = wait_for(client, response.json()["status_url"])["results"]
    return result


def all_time(client, event_type: str) -> dict:
    [field] = client.get(f"/v1/event-types/{event_type}/baseline").json()["fields"]
    return {k: field[k] for k in ("count", "mean", "std")}


def recent(redis_server, event_type: str):
    return baselines.load_recent(redis_server.client(), "alpha", event_type, ["x"])["x"]


def shift_codes(results: list[dict]) -> list[int]:
    return [i for i, r in enumerate(results)
            if any(w["code"] == "level_shift" for w in r["warnings"])]


def test_a_lasting_shift_is_one_level_shift_then_quiet(alpha, event_type, redis_server):
    seed(alpha, event_type)
    before = all_time(alpha, event_type)
    rng = np.random.default_rng(22)

    # The shift's first events: each out of range above, the K-th makes it a new level.
    run = rng.normal(160.0, 5.0, K)
    results = send(alpha, event_type, run, 0)
    assert [r["valid"] for r in results] == [False] * K
    assert shift_codes(results) == [K - 1]
    warning = next(w for w in results[-1]["warnings"] if w["code"] == "level_shift")
    assert warning["field"] == "x" and warning["run"] == K
    assert warning["value"] == pytest.approx(run[-1])
    assert warning["before"]["mean"] == pytest.approx(100.0, abs=1.0)
    assert warning["after"]["mean"] == pytest.approx(run.mean())
    assert warning["after"]["std"] >= warning["before"]["std"] * 0.999
    # The all-time baseline keeps its figures; the recent one is at the new level.
    assert all_time(alpha, event_type) == before
    assert recent(redis_server, event_type).mean == pytest.approx(run.mean(), rel=1e-9)

    # Then quiet: the new level is valid (judged against the re-seeded recent baseline).
    later = send(alpha, event_type, rng.normal(160.0, 5.0, 600), K)
    invalid = [i for i, r in enumerate(later) if not r["valid"]]
    assert len(invalid) <= 2, [later[i]["warnings"] for i in invalid]
    assert shift_codes(later) == []
    assert later[0]["baseline"]["x"]["recent_mean"] == pytest.approx(run.mean())
    assert recent(redis_server, event_type).mean == pytest.approx(160.0, abs=2.0)


def test_a_shift_within_one_job_leaves_only_its_run_invalid(alpha, event_type):
    seed(alpha, event_type)
    rng = np.random.default_rng(23)
    values = np.concatenate([rng.normal(100.0, 5.0, 50), rng.normal(160.0, 5.0, 500)])
    results = send(alpha, event_type, values, 0)
    invalid = [i for i, r in enumerate(results) if not r["valid"]]
    assert invalid[:K] == list(range(50, 50 + K)) and len(invalid) <= K + 2
    assert shift_codes(results) == [50 + K - 1]
    # The verdicts after the shift name the recent baseline they were judged against.
    assert results[60]["baseline"]["x"]["recent_mean"] == pytest.approx(160.0, abs=5.0)


def test_a_single_wild_value_is_flagged_and_moves_neither_baseline(alpha, event_type,
                                                                   redis_server):
    seed(alpha, event_type)
    before, recent_before = all_time(alpha, event_type), recent(redis_server, event_type)
    result = send_one(alpha, event_type, 1000.0, 0)
    assert not result["valid"]
    assert [w["code"] for w in result["warnings"]] == ["out_of_range"]
    assert all_time(alpha, event_type) == before
    # The recent baseline clips it: a step of at most alpha * clip * std (here ~0.01), not
    # the 0.6 that 1000 itself would have moved it.
    assert abs(recent(redis_server, event_type).mean - recent_before.mean) < 0.05
    # Ordinary values then, and wild ones again: a run starts over, no shift from 1 + K-1.
    results = send(alpha, event_type, [100.0, *([1000.0] * (K - 1)), 100.0], 1)
    assert shift_codes(results) == []


def test_alternating_sides_never_make_a_shift(alpha, event_type):
    seed(alpha, event_type)
    before = all_time(alpha, event_type)
    results = send(alpha, event_type, [1000.0, -800.0] * 20, 0)
    assert all(not r["valid"] for r in results)
    assert shift_codes(results) == []
    assert all_time(alpha, event_type) == before


def test_a_shift_across_single_events_carries_its_run_between_micro_batches(alpha,
                                                                           event_type):
    seed(alpha, event_type)
    results = [send_one(alpha, event_type, 160.0 + i, i) for i in range(K + 5)]
    assert [r["valid"] for r in results] == [False] * K + [True] * 5
    assert shift_codes(results) == [K - 1]


def test_the_merge_re_seeds_the_recent_baseline_and_writes_runs_once(redis_server, settings,
                                                                      event_type):
    """tasks.store.baselines.apply_batch's re-seed and tasks.level_shifts' run write, on Redis: both
    apply with the batch, and a redelivered batch changes neither again."""
    from ml.level_shift import Run
    from ml.stats import Moments
    from tasks.level_shifts import Shifts, load_runs, queue_write

    r = redis_server.client()
    tenant = "store-test"
    history = np.random.default_rng(24).normal(100.0, 5.0, 200)
    baselines.apply_batch(r, settings, tenant, event_type, "history", {"x": Moments.of(history)},
                      [], recent={"x": list(history)})
    n_before = baselines.load_recent(r, tenant, event_type, ["x"])["x"].n

    def merge(batch_id: str, run: Run) -> list:
        pipe = r.pipeline(transaction=True)
        queue_write(pipe, tenant, event_type, Shifts([], {"x": run}, True), [batch_id])
        baselines.apply_batch(pipe, settings, tenant, event_type, batch_id, {}, [],
                          recent={"x": [150.0, 161.0, 159.0, 160.0]},
                          reseeds={"x": [(1, 160.0, 30.0)]})
        return pipe.execute()

    assert merge("job-1:x:0", Run(1, (159.0, 160.0))) == [1, 1]
    found = baselines.load_recent(r, tenant, event_type, ["x"])["x"]
    # Re-seeded after the 2nd value (mean 160, var 30), then 159 and 160 at the new level.
    mean, var = 160.0, 30.0
    for n, x in ((n_before + 3, 159.0), (n_before + 4, 160.0)):  # within the clip band
        w = max(1 / n, settings.recent_alpha)
        d = x - mean
        mean, var = mean + w * d, (1 - w) * (var + w * d * d)
    assert found.n == n_before + 4
    assert found.mean == pytest.approx(mean, rel=1e-12)
    assert found.variance == pytest.approx(var, rel=1e-9)
    assert load_runs(r, tenant, event_type, ["x"]) == {"x": Run(1, (159.0, 160.0))}

    # Redelivered: neither the baseline nor the run changes again.
    assert merge("job-1:x:0", Run(-1, (1.0,))) == [0, 0]
    assert baselines.load_recent(r, tenant, event_type, ["x"])["x"] == found
    assert load_runs(r, tenant, event_type, ["x"]) == {"x": Run(1, (159.0, 160.0))}
    # A run that ended is deleted.
    assert merge("job-2:x:0", Run()) == [1, 1]
    assert load_runs(r, tenant, event_type, ["x"]) == {}


def test_a_shift_sets_the_model_aside_until_one_learns_the_new_level(alpha, event_type):
    """The model learnt the old level: after the shift it judges nothing (a model_outdated
    note says so) until a model is trained on the new level's history alone."""
    from core.config import Settings
    from tasks.models import rows_for_new_level

    seed(alpha, event_type)
    assert alpha.get(f"/v1/event-types/{event_type}/model").json()["version"] == 1
    rng = np.random.default_rng(25)
    # The shift, then the new level in the same job: the model's opinion is dropped from the
    # event after the shift on.
    results = send(alpha, event_type, rng.normal(160.0, 5.0, 20), 0)
    assert shift_codes(results) == [K - 1]
    assert results[K - 2]["anomaly_score"] is not None
    for result in results[K:]:
        assert result["anomaly_score"] is None and result["valid"], result
        assert [n["code"] for n in result["notes"]] == ["model_outdated"]
    # Later jobs: set aside until the new level has enough history, then a new model.
    needed = rows_for_new_level(Settings())
    later = send(alpha, event_type, rng.normal(160.0, 5.0, needed), 20)
    assert all(r["notes"] and r["notes"][0]["code"] == "model_outdated" for r in later)
    assert sum(not r["valid"] for r in later) <= 2

    def retrained() -> dict | None:
        card = alpha.get(f"/v1/event-types/{event_type}/model").json()
        return card if card.get("version", 1) > 1 else None

    card = wait_until(retrained, 30)
    assert card, "no model was trained on the new level"
    assert card["trained_from"] == T0 + DAYS + K - 1  # the event that completed the shift
    assert card["rows"] >= needed - 2
    after = send(alpha, event_type, rng.normal(160.0, 5.0, 200), 20 + needed)
    assert all(r["anomaly_score"] is not None and r["model_version"] == card["version"]
               for r in after)
    assert sum(not r["valid"] for r in after) <= 2

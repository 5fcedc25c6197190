"""ml.episodes: consecutive flagged events form one episode, closed by enough valid ones."""

from __future__ import annotations

import pytest

from ml.episodes import State, Step, advance, episode_id, peak_of, rule_of


def z_warning(field: str, z: float | None, value: float = 0.0, code: str = "out_of_range") -> dict:
    return {"code": code, "field": field, "value": value, "z": z, "message": "..."}


def anomaly(score: float) -> dict:
    return {"code": "anomaly", "field": None, "score": score, "threshold": 0.6, "message": "..."}


def steps(pattern: str, start: float = 0.0, warnings: dict[int, list[dict]] | None = None
          ) -> list[Step]:
    """'.' a valid event, 'x' a flagged one (an out_of_range of |z| 4 unless given)."""
    out = []
    for i, c in enumerate(pattern):
        if c == ".":
            out.append(Step(start + i, False))
        else:
            found = (warnings or {}).get(i, [z_warning("x", 4.0)])
            out.append(Step(start + i, True, rule_of(found), peak_of(found), f"ep_{i}"))
    return out


def test_a_burst_is_one_episode_closed_after_quiet_valid_events():
    outcome = advance(State(), steps("..xx.x...", warnings={
        3: [z_warning("x", -9.0, value=1.0)], 5: [z_warning("x", 5.0)]}), quiet=3,
        event_type="t")
    assert outcome.ids == [None, None, "ep_2", "ep_2", None, "ep_2", None, None, None]
    [(opened, at_open), (closed, episode)] = outcome.transitions
    assert (opened, closed) == ("opened", "closed")
    assert at_open == {"id": "ep_2", "event_type": "t", "opened_at": 2.0, "last_flagged_at": 2.0,
                       "closed_at": None, "count": 1, "rule": "out_of_range",
                       "peak": {"code": "out_of_range", "field": "x", "value": 0.0, "z": 4.0}}
    assert episode["count"] == 3
    assert episode["last_flagged_at"] == 5.0
    assert episode["closed_at"] == 8.0  # the third valid event after the last flagged one
    assert episode["peak"] == {"code": "out_of_range", "field": "x", "value": 1.0, "z": -9.0}
    assert outcome.state == State(None, 0)
    assert outcome.changed == {"ep_2": episode}


def test_fewer_valid_events_than_quiet_keep_it_open_across_calls():
    first = advance(State(), steps("x.."), quiet=3, event_type="t")
    assert first.transitions == [("opened", first.transitions[0][1])]
    assert first.state.quiet == 2 and first.state.open["id"] == "ep_0"
    # The next chunk starts from the stored state: one more valid event closes it.
    second = advance(State.from_dict(first.state.as_dict()), steps(".", start=3), quiet=3,
                     event_type="t")
    assert second.ids == [None]
    [(transition, episode)] = second.transitions
    assert transition == "closed" and episode["id"] == "ep_0" and episode["closed_at"] == 3.0
    # A flagged event before the quiet stretch ends extends it and restarts the count.
    third = advance(State.from_dict(first.state.as_dict()), steps("x", start=3), quiet=3,
                    event_type="t")
    assert third.ids == ["ep_0"] and third.transitions == []
    assert third.state.quiet == 0 and third.state.open["count"] == 2


def test_a_second_burst_after_the_close_is_a_second_episode():
    outcome = advance(State(), steps("x..x"), quiet=2, event_type="t")
    assert outcome.ids == ["ep_0", None, None, "ep_3"]
    assert [(t, e["id"]) for t, e in outcome.transitions] == [
        ("opened", "ep_0"), ("closed", "ep_0"), ("opened", "ep_3")]
    assert outcome.state.open["id"] == "ep_3"


def test_valid_events_without_an_open_episode_change_nothing():
    outcome = advance(State(), steps("....."), quiet=2, event_type="t")
    assert outcome.ids == [None] * 5
    assert outcome.state == State() and not outcome.changed and not outcome.transitions


def test_the_input_state_is_not_modified():
    state = State({"id": "ep_a", "event_type": "t", "opened_at": 0.0, "last_flagged_at": 0.0,
                   "closed_at": None, "count": 1, "peak": None, "rule": "anomaly"}, 0)
    advance(state, steps("x."), quiet=1, event_type="t")
    assert state.open["count"] == 1 and state.open["closed_at"] is None and state.quiet == 0


def test_peak_prefers_z_over_model_scores_and_rule_names_the_most_specific():
    warnings = [anomaly(0.9), z_warning("a", 3.5), z_warning("b", None, value=7.0)]
    assert peak_of(warnings) == {"code": "out_of_range", "field": "b", "value": 7.0, "z": None}
    assert peak_of([anomaly(0.7), anomaly(0.8)])["score"] == 0.8
    assert peak_of([]) is None
    assert rule_of([anomaly(0.7), z_warning("a", 4.0)]) == "out_of_range"
    assert rule_of([z_warning("a", 4.0), z_warning("a", 5.0, code="level_shift")]) == "level_shift"
    assert rule_of([anomaly(0.7)]) == "anomaly"
    # A level shift's warning has no z: the out_of_range beside it is the peak.
    shift = {"code": "level_shift", "field": "a", "value": 9.0, "run": 5,
             "before": {"mean": 0.0, "std": 1.0}, "after": {"mean": 9.0, "std": 1.0}}
    assert peak_of([shift, z_warning("a", 9.0, value=9.0)])["code"] == "out_of_range"
    assert peak_of([shift]) == {"code": "level_shift", "field": "a", "value": 9.0}
    # An episode of model warnings takes a later z warning as its peak.
    outcome = advance(State(), steps("xx", warnings={0: [anomaly(0.9)], 1: [z_warning("a", 3.1)]}),
                      quiet=1, event_type="t")
    assert outcome.state.open["peak"]["z"] == 3.1 and outcome.state.open["rule"] == "anomaly"


def test_episode_ids_are_deterministic_and_distinct():
    assert episode_id("alpha", "t", "job", 3) == episode_id("alpha", "t", "job", 3)
    assert episode_id("alpha", "t", "job", 3) != episode_id("beta", "t", "job", 3)
    assert episode_id("alpha", "t", "job", 3).startswith("ep_")
    assert len(episode_id("a")) == 3 + 16


def test_quiet_must_be_positive():
    with pytest.raises(ValueError):
        advance(State(), [], quiet=0, event_type="t")

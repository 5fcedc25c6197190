"""Judge an event type's stored events again, moving nothing: replay (today's baselines,
model and settings, against the verdicts they had) and backtest (current against proposed
settings, side by side).

The stored events are what the service keeps of a type: its history (accepted events, the
latest VIGIL_HISTORY_MAX_ROWS) and its flagged events (the latest 1,000). Both judge them
against today's all-time and recent baselines, as a new event would be judged now; a
backtest fits a model and calibrates thresholds on the history under each settings, as
training would, so identical settings give identical figures. Level shifts are not replayed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import orjson
import redis
from celery import shared_task

from core.config import Settings
from ml.anomaly import AnomalyModel, robust_moments, training_frame
from ml.episodes import State, Step, advance, rule_of
from ml.features import model_frame
from ml.stats import Moments
from tasks import feedback, type_settings
from tasks.lifecycle import JOB_TASK_OPTIONS, JobError, run_job
from tasks.models import calibrated_thresholds, current_model, derived_in, fit
from tasks.store import baselines
from tasks.validate import checked_fields
from tasks.verdicts import Judge, judge_events

# Changed verdicts listed by default (changed_limit).
CHANGED_LISTED = 50


@dataclass(frozen=True)
class Stored:
    """One stored event: when, its values, the codes it was flagged with (None: it was
    valid), and the feedback given on it (None: none)."""
    ts: float
    values: dict[str, float]
    codes: tuple[str, ...] | None
    label: str | None = None


def _identity(ts: float, values: dict) -> bytes:
    # As floats: the flagged list is encoded by Redis' cjson, which writes 400.0 as 400.
    return orjson.dumps([float(ts), {f: float(x) for f, x in values.items()}],
                        option=orjson.OPT_SORT_KEYS)


def stored_events(r: redis.Redis, tenant: str, event_type: str, since: float | None = None,
                  until: float | None = None) -> list[Stored]:
    """The type's stored events in [since, until], time order, with their feedback. A false
    alarm is in both lists (its values joined the history): it counts once, as flagged."""
    labels = {_identity(x["ts"], x.get("v", {})): x["label"]
              for x in feedback.labels(r, tenant, event_type).values()}
    found: dict[bytes, Stored] = {}
    for row in baselines.history_rows(r, tenant, event_type):
        found[_identity(row["ts"], row["v"])] = Stored(row["ts"], row["v"], None)
    for row in baselines.flagged_rows(r, tenant, event_type):
        found[_identity(row["ts"], row["v"])] = Stored(row["ts"], row["v"],
                                                       tuple(row.get("codes", ())))
    events = [replace(event, label=labels.get(identity)) for identity, event in found.items()
              if (since is None or event.ts >= since) and (until is None or event.ts <= until)]
    return sorted(events, key=lambda event: event.ts)


@dataclass
class Judging:
    """What judges: settings, baselines and (if any) a model with its z thresholds."""
    cfg: Settings
    baseline: dict[str, Moments]
    recent: dict[str, Moments]
    model: AnomalyModel | None = None
    model_version: int | None = None
    thresholds: dict[str, float] | None = None


def judge(events: Sequence[Stored], how: Judging) -> list[dict]:
    """A verdict per stored event, as judge_chunk would give it now (no level shifts)."""
    if not events:
        return []
    values = checked_fields(training_frame([e.values for e in events]), how.cfg)
    timestamps = [e.ts for e in events]
    rules = replace(Judge.from_settings(how.cfg), thresholds=how.thresholds or {})
    model_input, robust = None, None
    if how.model is not None:
        model_input = model_frame(values, timestamps, {}, derived_in(how.model))
        if how.cfg.baseline_mode == "robust":
            robust = {f: Moments(n, med, spread * spread * n)
                      for f, (n, med, spread) in robust_moments(how.model).items()}
    return judge_events(values, how.baseline, rules, how.model, how.model_version,
                        recent=how.recent, robust=robust, model_input=model_input)


def figures(events: Sequence[Stored], verdicts: Sequence[dict], cfg: Settings,
            event_type: str) -> dict[str, Any]:
    """What a set of verdicts amounts to: events flagged per rule, the alert rate, episodes,
    and how many of the events marked false alarms / confirmed anomalies it flags."""
    flagged = [not v["valid"] for v in verdicts]
    rules = Counter(w["code"] for v in verdicts for w in v["warnings"])
    steps = [Step(e.ts, bad, rule_of(v["warnings"]) if bad else None, key=f"bt{k}")
             for k, (e, v, bad) in enumerate(zip(events, verdicts, flagged))]
    episodes = advance(State(), steps, cfg.episode_quiet, event_type)
    labelled = Counter((e.label, bad) for e, bad in zip(events, flagged) if e.label)
    return {"events": len(events), "flagged": sum(flagged),
            "alert_rate": round(sum(flagged) / len(events), 6) if events else None,
            "by_rule": dict(rules),
            "episodes": sum(1 for kind, _ in episodes.transitions if kind == "opened"),
            "false_alarms_flagged": labelled[(feedback.FALSE_ALARM, True)],
            "false_alarms_marked": sum(n for (label, _), n in labelled.items()
                                       if label == feedback.FALSE_ALARM),
            "confirmed_flagged": labelled[(feedback.CONFIRMED, True)],
            "confirmed_marked": sum(n for (label, _), n in labelled.items()
                                    if label == feedback.CONFIRMED)}


def evidence(verdict: dict) -> dict:
    """A verdict in brief: valid, and per warning its rule and figures."""
    keep = ("code", "field", "value", "z", "threshold", "score", "expected_range")
    return {"valid": verdict["valid"],
            "warnings": [{k: w[k] for k in keep if k in w} for w in verdict["warnings"]]}


def current_baselines(r: redis.Redis, tenant: str, event_type: str, fields: Sequence[str]
              ) -> tuple[dict[str, Moments], dict[str, Moments]]:
    """Today's all-time and recent baselines of these fields."""
    return (baselines.load_baseline(r, tenant, event_type, fields),
            baselines.load_recent(r, tenant, event_type, fields))


def today(r: redis.Redis, cfg: Settings, tenant: str, event_type: str,
          fields: Sequence[str]) -> Judging:
    """What judges a new event of the type now: its settings, baselines, model, thresholds."""
    found = current_model(r, cfg.redis_url, tenant, event_type)
    version, model = found if found else (None, None)
    return Judging(cfg, *current_baselines(r, tenant, event_type, fields), model, version,
                   calibrated_thresholds(r, cfg, tenant, event_type, version))


def fitted(cfg: Settings, history: list[dict], baseline: dict[str, Moments],
           recent: dict[str, Moments]) -> Judging:
    """What would judge with settings ``cfg``: these (today's) baselines, and a model and
    thresholds fitted on the history as training would fit them."""
    made = fit(cfg, history) if len(history) >= cfg.model_min_rows else None
    model, meta = made if made else (None, {})
    thresholds = {f: float(c["threshold"]) for f, c in meta.get("z_thresholds", {}).items()}
    return Judging(cfg, baseline, recent, model, None,
                   {} if cfg.z_threshold is not None else thresholds)


def _fields(events: Sequence[Stored]) -> list[str]:
    return sorted({f for e in events for f in e.values})


def _limit(job: dict) -> int:
    return int((job.get("params") or {}).get("changed_limit", CHANGED_LISTED))


def _range(job: dict) -> tuple[float | None, float | None]:
    params = job.get("params") or {}
    return params.get("since"), params.get("until")


def revalidate(r: redis.Redis, cfg: Settings, tenant: str,
               job: dict[str, Any]) -> tuple[dict, None]:
    """Re-judge the stored events in the job's range with today's baselines, model and
    settings; report the verdicts that changed and why, in figures."""
    event_type = job["event_type"]
    events = stored_events(r, tenant, event_type, *_range(job))
    if not events:
        raise JobError(f"No stored events of {event_type!r} in that range.")
    typed, settings_version = type_settings.effective(r, cfg, tenant, event_type)
    how = today(r, typed, tenant, event_type, _fields(events))
    verdicts = judge(events, how)
    before = [{"valid": e.codes is None, "warnings": [{"code": c} for c in e.codes or ()]}
              for e in events]
    changed = [{"ts": e.ts, "values": e.values, "feedback": e.label,
                "before": {"valid": e.codes is None, "codes": list(e.codes or ())},
                "after": evidence(v)}
               for e, v in zip(events, verdicts) if v["valid"] != (e.codes is None)]
    return {"event_type": event_type, "model_version": how.model_version,
            "settings_version": settings_version,
            "before": figures(events, before, typed, event_type),
            "after": figures(events, verdicts, typed, event_type),
            "changed": len(changed), "changed_events": changed[:_limit(job)]}, None


def backtest(r: redis.Redis, cfg: Settings, tenant: str,
             job: dict[str, Any]) -> tuple[dict, None]:
    """The type's stored events judged under its current settings and under the proposed
    ones, side by side; nothing is stored but this answer."""
    event_type, params = job["event_type"], job.get("params") or {}
    history = sorted(baselines.history_rows(r, tenant, event_type), key=lambda row: row["ts"])
    current, settings_version = type_settings.effective(r, cfg, tenant, event_type)
    if len(history) < current.min_history:
        raise JobError(f"{event_type!r} has {len(history)} events of history; a backtest "
                       f"needs at least {current.min_history}.")
    proposed = cfg.for_type(params.get("settings", {}))
    events = stored_events(r, tenant, event_type, *_range(job))
    if not events:
        raise JobError(f"No stored events of {event_type!r} in that range.")
    # One read of the baselines for both sides.
    baseline, recent = current_baselines(r, tenant, event_type, _fields(events))
    sides = {name: judge(events, fitted(s, history, baseline, recent))
             for name, s in (("current", current), ("proposed", proposed))}
    changed = [{"ts": e.ts, "values": e.values, "feedback": e.label,
                "current": evidence(a), "proposed": evidence(b)}
               for e, a, b in zip(events, sides["current"], sides["proposed"])
               if a["valid"] != b["valid"]]
    return {"event_type": event_type, "settings_version": settings_version,
            "current": {"settings": current.type_defaults(),
                        **figures(events, sides["current"], current, event_type)},
            "proposed": {"settings": proposed.type_defaults(),
                         **figures(events, sides["proposed"], proposed, event_type)},
            "changed": len(changed), "changed_events": changed[:_limit(job)]}, None


@shared_task(name="vigil.revalidate_job", **JOB_TASK_OPTIONS)
def revalidate_job(tenant: str, job_id: str) -> str | None:
    return run_job(tenant, job_id, revalidate)


@shared_task(name="vigil.backtest_job", **JOB_TASK_OPTIONS)
def backtest_job(tenant: str, job_id: str) -> str | None:
    return run_job(tenant, job_id, backtest)


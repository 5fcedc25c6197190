"""The validation task: a job's events against their baselines and anomaly models."""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import redis
from celery import shared_task

from core.config import Settings
from ml.anomaly import AnomalyModel, robust_moments
from ml.features import model_frame, payload_frame
from ml.stats import Moments, column_moments
from tasks import episodes, level_shifts, type_settings
from tasks.lifecycle import JOB_TASK_OPTIONS, JobError, run_job
from tasks.models import (
    calibrated_thresholds,
    current_model,
    derived_in,
    level_shift_at,
    meta_of,
    no_model_note,
    outdated,
    outdated_note,
    schedule_training,
    wants_training,
)
from tasks.store import baselines, job_data, jobs, model_blobs
from tasks.verdicts import Judge, judge_events
from tasks.webhooks import announce_episodes

log = logging.getLogger(__name__)

# Events judged and merged per step: bounds memory and shows progress on large jobs.
CHUNK = 1000


def accepted_rows(values: pd.DataFrame, timestamps: list[float]) -> list[dict]:
    """History rows for accepted events: timestamp and the fields each one has."""
    columns = list(values.columns)
    return [{"ts": ts, "v": {c: float(x) for c, x in zip(columns, row) if x == x}}
            for ts, row in zip(timestamps, values.to_numpy(dtype=float))]


def values_in_order(matrix: np.ndarray, columns: list[str]) -> dict[str, np.ndarray]:
    """Every value of each field (a column of ``matrix``), in row (time) order, for the
    recent baseline."""
    return {field: column[~np.isnan(column)] for field, column in zip(columns, matrix.T)}


def snapshot(baseline: dict[str, Moments], recent: dict[str, Moments]) -> dict[str, dict]:
    """The baselines events are judged against, per field, so a verdict can be redone.

    Built once per chunk: every event of the chunk shares these figures (its verdict names
    the fields it has), rather than each recomputing them.
    """
    return {f: {"n": m.n, "mean": m.mean, "std": m.std,
                **({"recent_n": recent[f].n, "recent_mean": recent[f].mean,
                    "recent_std": recent[f].std} if f in recent else {})}
            for f, m in baseline.items()}


class Verdicts(dict[str, list[dict]]):
    """What judge_jobs answers: per job, the verdicts of its events that were judged and
    merged, in index order (every event, unless the job failed); ``failed``: per job that
    could not be judged whole, its error, naming the events that were not judged."""

    def __init__(self, results: dict[str, list[dict]], failed: dict[str, str]):
        super().__init__(results)
        self.failed = failed


def judge_jobs(r: redis.Redis, cfg: Settings, tenant: str, jobs: dict[str, list[dict]],
               on_progress: Callable[[int], None] | None = None) -> Verdicts:
    """Verdicts for the events of one or many jobs of a tenant, vectorised per event type.

    Events of all the jobs are judged together (one z-score pass and one model call per
    type and chunk), then merged into the baselines per job, so each job's batch is
    counted once however the jobs were grouped. A redelivered job reuses the verdicts of
    the chunks it merged before its worker died, so what it reports is what moved the
    baselines. A chunk that cannot be judged fails only the jobs with events in it (nothing
    of the chunk was merged), and their later events are not judged: every other job goes
    on, and a failed job still reports the events it merged (a job's event is either merged
    and reported, or neither, so a client resends only what was not).
    """
    entries = [(job_id, i, event) for job_id, events in jobs.items()
               for i, event in enumerate(events)]
    results: dict[str, list[dict]] = {job_id: [{} for _ in events]
                                      for job_id, events in jobs.items()}
    errors: dict[str, Exception] = {}
    done = 0
    for event_type, chunks in chunks_by_type(entries):
        # The type's own settings (PUT .../settings) judge it, and its verdicts name them.
        typed, settings_version = type_settings.effective(r, cfg, tenant, event_type)
        rules = Judge.from_settings(typed)
        for chunk in chunks:
            batches = batch_ids(chunk, event_type)
            merged_before = job_data.partial_results(r, tenant, batches)
            todo = [entry for entry in chunk
                    if entry[0] not in merged_before and entry[0] not in errors]
            if todo:
                try:
                    judged = judge_chunk(r, typed, tenant, event_type, todo, rules,
                                         settings_version)
                    merge_per_job(r, typed, tenant, event_type, todo, judged, batches)
                except redis.RedisError:
                    raise  # waited out by the caller (through_outages); merges are idempotent
                except Exception as exc:
                    log.exception("events could not be judged; their jobs fail",
                                  extra={"tenant": tenant, "event_type": event_type,
                                         "events": len(todo)})
                    errors.update({job_id: exc for job_id, _, _ in todo if job_id not in errors})
                else:
                    for (job_id, i, _), result in zip(todo, judged.results):
                        results[job_id][i] = result
            for job_id, earlier in merged_before.items():
                for result in earlier:
                    results[job_id][result["index"]] = result
            done += len(chunk)
            if on_progress:
                on_progress(done)
        train_if_due(r, typed, tenant, event_type)
    return Verdicts({job_id: [x for x in verdicts if x] if job_id in errors else verdicts
                     for job_id, verdicts in results.items()},
                    {job_id: not_judged(results[job_id], exc) for job_id, exc in errors.items()})


def not_judged(verdicts: list[dict], exc: Exception) -> str:
    """The error of a job some of whose events could not be judged (``verdicts``: {} for
    each of those): which ones, and that only they need resending."""
    missing = [i for i, verdict in enumerate(verdicts) if not verdict]
    spans: list[list[int]] = []
    for i in missing:
        if spans and spans[-1][1] == i - 1:
            spans[-1][1] = i
        else:
            spans.append([i, i])
    where = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in spans)
    merged = len(verdicts) - len(missing)
    if not merged:
        return (f"the job's events could not be judged ({type(exc).__name__}: {exc}); none "
                "of them was merged into the baselines: resend the whole job.")
    return (f"{len(missing)} of {len(verdicts)} events could not be judged "
            f"({type(exc).__name__}: {exc}): the events at index {where} were not judged and "
            f"did not move the baselines; resend only those. `results` holds the verdicts of "
            f"the {merged} events that were judged and merged.")


def train_if_due(r: redis.Redis, cfg: Settings, tenant: str, event_type: str) -> None:
    """Schedule training if due. After events were merged: a failure here (the broker away)
    must not fail the jobs whose events were merged; beat's retrain_due tries again."""
    try:
        if wants_training(r, cfg, tenant, event_type):
            schedule_training(r, cfg, tenant, event_type)
    except redis.RedisError:
        raise  # waited out by the caller, which finds every chunk merged
    except Exception:
        log.warning("training not scheduled; beat's retrain_due will",
                    exc_info=True, extra={"tenant": tenant, "event_type": event_type})


def chunks_by_type(entries: Sequence[tuple[str, int, dict]]
                   ) -> Iterator[tuple[str, list[list[tuple[str, int, dict]]]]]:
    """(event type, its entries in chunks of at most CHUNK) per type, each type's entries in
    time order: deltas and the recent baseline follow the series."""
    by_type: dict[str, list[tuple[str, int, dict]]] = defaultdict(list)
    for entry in sorted(entries, key=lambda entry: entry[2]["timestamp"]):
        by_type[entry[2]["event_type"]].append(entry)
    for event_type, ordered in by_type.items():
        yield event_type, [ordered[start:start + CHUNK] for start in range(0, len(ordered), CHUNK)]


def batch_ids(chunk: list[tuple[str, int, dict]], event_type: str) -> dict[str, str]:
    """Each job's batch in this chunk, named by the job's own first index: the same name on
    every redelivery, whatever else shares the chunk."""
    first: dict[str, int] = {}
    for job_id, i, _ in chunk:
        first.setdefault(job_id, i)
    return {job_id: f"{job_id}:{event_type}:{i}" for job_id, i in first.items()}


@dataclass
class ModelInput:
    """The anomaly model a chunk is scored with, and what it scores (none: no model yet, or
    ``error`` says why the model at ``version`` could not be loaded or prepared)."""
    version: int | None = None
    model: AnomalyModel | None = None
    input: pd.DataFrame | None = None
    robust: dict[str, Moments] | None = None
    error: Exception | None = None
    # Why the model at ``version`` does not judge (model_outdated_note), if it does not.
    note: dict | None = None


def prepare_model(r: redis.Redis, cfg: Settings, tenant: str, event_type: str,
                  values: pd.DataFrame, timestamps: list[float]) -> ModelInput:
    """The current model with its input for these events. A model that cannot be loaded or
    prepared (a corrupt blob, a payload key clashing with a derived feature) fails nothing:
    judge_events judges by the z-check alone and notes why (a Redis outage is waited out)."""
    version = None
    try:
        found = current_model(r, cfg.redis_url, tenant, event_type)
        if found is None:
            return ModelInput(note=no_model_note(r, cfg, tenant, event_type))
        version, model = found
        shift_at = level_shift_at(r, tenant, event_type)
        if outdated(meta_of(r, cfg, tenant, event_type, version), shift_at):
            return ModelInput(version, note=outdated_note(shift_at, cfg))
        fields = list(values.columns)
        prepared = ModelInput(version, model, model_frame(
            values, timestamps, baselines.load_last_values(r, tenant, event_type, fields),
            derived_in(model)))  # what it was trained with (earned), not the settings
        if cfg.baseline_mode == "robust":
            prepared.robust = {f: Moments(n, med, spread * spread * n)
                               for f, (n, med, spread) in robust_moments(model).items()}
        return prepared
    except redis.RedisError:
        raise
    except Exception as exc:
        if version is None:  # its blob would not load: the version stored names it
            version = model_blobs.model_version(r, tenant, event_type)
        log.warning("anomaly model could not be loaded or prepared; judged by the z-check alone",
                    exc_info=True, extra={"tenant": tenant, "event_type": event_type,
                                          "model_version": version})
        return ModelInput(version=version, error=exc)


@dataclass
class JudgedChunk:
    values: pd.DataFrame
    rows: list[dict]
    verdicts: list[dict]
    results: list[dict]
    # What the chunk changed of its type's episodes (written when it merges); None: nothing.
    episode_update: episodes.Outcome | None = None
    # Its level shifts and the runs to write when it merges (None: level shifts are off).
    shifts: level_shifts.Shifts | None = None
    # The job of each event.
    job_ids: list[str] = dataclasses.field(default_factory=list)


def judge_chunk(r: redis.Redis, cfg: Settings, tenant: str, event_type: str,
                chunk: list[tuple[str, int, dict]], rules: Judge,
                settings_version: int = 0) -> JudgedChunk:
    """One z-score pass and one model call for a chunk of events of one type, judged with
    the type's settings ``cfg`` (version ``settings_version``)."""
    every = payload_frame([event["payload"] for _, _, event in chunk])
    # Fields the settings leave unchecked are not judged, but still merged (JudgedChunk).
    values = checked_fields(every, cfg)
    timestamps = [event["timestamp"] for _, _, event in chunk]
    fields = list(values.columns)
    baseline = baselines.load_baseline(r, tenant, event_type, fields)
    recent = baselines.load_recent(r, tenant, event_type, fields)
    model = prepare_model(r, cfg, tenant, event_type, values, timestamps)
    # The z thresholds calibrated on the type's history with its current model.
    thresholds = calibrated_thresholds(r, cfg, tenant, event_type, model.version)
    if thresholds:
        rules = dataclasses.replace(rules, thresholds=thresholds)
    verdicts = judge_events(values, baseline, rules, model.model, model.version, recent=recent,
                            robust=model.robust, model_input=model.input, model_error=model.error,
                            model_note=model.note)
    # Before the results are built: a level shift changes the verdicts after it.
    shifts = level_shifts.follow(r, cfg, tenant, event_type, values, timestamps, verdicts,
                                 baseline, recent, rules)
    processed_at = datetime.now(UTC).isoformat(timespec="milliseconds")
    present = values.notna().to_numpy()
    figures = snapshot(baseline, recent)
    results = []
    for row, ((_, i, event), verdict) in enumerate(zip(chunk, verdicts)):
        results.append({
            "index": i, "event_id": event.get("event_id"), "event_type": event_type,
            "timestamp": event["timestamp"], "processed_at": processed_at, **verdict,
            "model_version": model.version, "settings_version": settings_version,
            "baseline": {f: figures[f] for f, has in zip(fields, present[row])
                         if has and f in figures}})
    level_shifts.refigure(results, shifts)
    # Last, on the final verdicts: each names its episode.
    changed = episodes.follow(r, cfg, tenant, event_type, chunk, results)
    return JudgedChunk(every, accepted_rows(every, timestamps), verdicts, results, changed,
                       shifts, [job_id for job_id, _, _ in chunk])


def checked_fields(values: pd.DataFrame, cfg: Settings) -> pd.DataFrame:
    """The columns of ``values`` the settings check (all of them unless a type says not)."""
    if cfg.check_fields is None and not cfg.ignore_fields:
        return values
    return values[[f for f in values.columns if cfg.checks(f)]]


def merge_per_job(r: redis.Redis, cfg: Settings, tenant: str, event_type: str,
                  chunk: list[tuple[str, int, dict]], judged: JudgedChunk,
                  batches: dict[str, str]) -> None:
    """Merge a judged chunk into the baselines, one idempotent batch per job, and keep each
    job's verdicts for this batch, all in one transaction (both or neither survive a crash).

    The jobs of a micro-batch (many jobs, one chunk) are merged in one call that marks every
    job's batch; should any of them have been merged before (a job redelivered while its
    first delivery still ran), they are merged job by job instead, each at most once.
    The chunk's episode changes are written (and announced) with the merge of the whole
    chunk only: merged job by job, it records none (the other delivery recorded its own).
    Only valid events move the all-time baseline and join the history (no poisoning); the
    recent baseline sees every value but clips outliers itself.
    """
    positions: dict[str, list[int]] = defaultdict(list)
    for position, (job_id, _, _) in enumerate(chunk):
        positions[job_id].append(position)
    # numpy rather than pandas per job: a micro-batch holds hundreds of one-event jobs.
    matrix, columns = judged.values.to_numpy(dtype=float), list(judged.values.columns)
    # The whole chunk as one batch, under the first job's batch id and marking the others'
    # (for a chunk of one job, simply that job's batch).
    first, *others = positions
    pipe = r.pipeline(transaction=True)
    # Before the merge, so it applies exactly when the merge does (tasks.episodes).
    episodes.queue_write(pipe, tenant, event_type, judged.episode_update,
                         [batches[j] for j in positions])
    level_shifts.queue_write(pipe, tenant, event_type, judged.shifts,
                             [batches[j] for j in positions])
    merge_at = len(pipe)
    _apply(pipe, cfg, tenant, event_type, judged, matrix, columns, list(range(len(chunk))),
           batches[first], [batches[j] for j in others])
    for job_id, mine in positions.items():
        job_data.save_partial_results(pipe, cfg, tenant, job_id, batches[job_id],
                                   [judged.results[p] for p in mine])
    together = pipe.execute()[merge_at]
    if together and judged.episode_update:
        announce_episodes(r, tenant, judged.episode_update.transitions)
    if others and not together:
        pipe = r.pipeline(transaction=True)
        for job_id, mine in positions.items():
            _apply(pipe, cfg, tenant, event_type, judged, matrix, columns, mine, batches[job_id])
        pipe.execute()


def _apply(pipe: redis.client.Pipeline, cfg: Settings, tenant: str, event_type: str,
           judged: JudgedChunk, matrix: np.ndarray, columns: list[str], mine: list[int],
           batch_id: str, together_with: Sequence[str] = ()) -> None:
    """Queue the merge of the chunk's rows ``mine`` (in time order) as one batch."""
    rows, verdicts = judged.rows, judged.verdicts
    valid = [p for p in mine if verdicts[p]["valid"]]
    baselines.apply_batch(
        pipe, cfg, tenant, event_type, batch_id,
        column_moments(matrix[valid], columns), [rows[p] for p in valid],
        recent=values_in_order(matrix[mine], columns),
        flagged=[flagged_row(judged, p) for p in mine if not verdicts[p]["valid"]],
        together_with=together_with,
        reseeds=level_shifts.marks(judged.shifts, matrix, columns, mine))


def flagged_row(judged: JudgedChunk, p: int) -> dict:
    """What the type keeps of a flagged event (the UI's list, feedback, replay): its values,
    its rules, the fields that raised them (an anomaly's: the one that contributed most),
    and where its verdict is (job, index)."""
    warnings = judged.verdicts[p]["warnings"]
    fields = {w["field"] for w in warnings if w.get("field")}
    fields |= {w["contributors"][0]["field"] for w in warnings if w.get("contributors")}
    return {**judged.rows[p], "codes": sorted({w["code"] for w in warnings}),
            "fields": sorted(fields), "job": judged.job_ids[p],
            "i": judged.results[p]["index"]}


def summarise(results: list[dict]) -> dict:
    n_valid = sum(result["valid"] for result in results)
    codes = Counter(w["code"] for result in results for w in result["warnings"])
    return {"events": len(results), "valid": n_valid, "invalid": len(results) - n_valid,
            "warnings": dict(codes)}


def check_events(r: redis.Redis, cfg: Settings, tenant: str,
                 job: dict[str, Any]) -> tuple[dict, list]:
    """One job, in chunks, with progress visible while it runs."""
    job_id = job["job_id"]
    events = job_data.get_events(r, tenant, job_id)
    judged = judge_jobs(r, cfg, tenant, {job_id: events},
                        on_progress=lambda done: jobs.set_progress(r, tenant, job_id, done))
    results = judged[job_id]
    if job_id in judged.failed:
        # Failed, reporting what it merged: a client that resends the whole job would count
        # those events twice.
        raise JobError(judged.failed[job_id], summary=summarise(results) if results else None,
                       results=results or None)
    return summarise(results), results


@shared_task(name="vigil.validate_job", **JOB_TASK_OPTIONS)
def validate_job(tenant: str, job_id: str) -> str | None:
    return run_job(tenant, job_id, check_events)

"""Level shifts in a judged chunk and in Redis (the run logic itself: ml.level_shift).

When a chunk of a type is judged, each field's run of out-of-range values (carried over from
the chunks before) is followed through the chunk's verdicts. The value that completes a run
of VIGIL_LEVEL_SHIFT_RUN gets a ``level_shift`` warning, the recent baseline of its field
re-seeds there (mean of the run, the larger of the run's and the previous variance), and the
chunk's later values of that field are judged again against the re-seeded baseline: the new
level is valid from the next value on. The merge then re-seeds the stored recent baseline at
the same value (tasks.store.baselines.apply_batch, ``reseeds``) and writes the runs, only if the merge
applies (a redelivered batch changes nothing twice). The all-time baseline is untouched.
The anomaly model learnt the old level: from the shift on it is set aside (its opinions on
the chunk's later events dropped, a ``model_outdated`` note instead) until a model is trained
on the new level (tasks.models.outdated).

Two jobs of one type judged at the same time both start from the runs before either merged:
their runs may then interleave (as the recent baseline does); nothing locks the type for this.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import orjson
import pandas as pd
import redis

from core import keys
from core.config import Settings
from ml.level_shift import Run, first_shift, reseed
from ml.stats import Moments
from tasks.models import outdated_note
from tasks.store import lua
from tasks.verdicts import Judge, judge_events, level_shift_warning

# The baseline modes in which the recent baseline judges values: only there does re-seeding
# it make the new level valid. With "all_time" or "robust" no level shift is looked for.
FOLLOWED_MODES = ("both", "recent")


@dataclass(frozen=True)
class Reseed:
    """The recent baseline of ``field`` re-seeds at the chunk's row ``row``."""
    row: int
    field: str
    mean: float
    var: float
    recent: Moments  # what the chunk's later values of the field were judged against


@dataclass
class Shifts:
    """What a judged chunk found: its re-seeds in row order, and each field's run after it
    (``runs``) where that differs from the run before (``changed``: to write); ``at``: the
    timestamp of its last shift (None: none), from which the type's model is outdated."""
    reseeds: list[Reseed]
    runs: dict[str, Run]
    changed: bool
    at: float | None = None


def load_runs(r: redis.Redis, tenant: str, event_type: str,
              fields: Sequence[str]) -> dict[str, Run]:
    """Each field's run of out-of-range values so far (fields without one are left out)."""
    if not fields:
        return {}
    raw = r.hmget(keys.level_runs(tenant, event_type), list(fields))
    return {f: Run.from_dict(orjson.loads(x)) for f, x in zip(fields, raw) if x}


def follow(r: redis.Redis, cfg: Settings, tenant: str, event_type: str, values: pd.DataFrame,
           timestamps: Sequence[float], verdicts: list[dict], baseline: Mapping[str, Moments],
           recent: Mapping[str, Moments], rules: Judge) -> Shifts | None:
    """Find the chunk's level shifts, changing ``verdicts`` as find_shifts says; after the
    first, the anomaly model's opinions are set aside too (set_model_aside). None: level
    shifts are off (VIGIL_LEVEL_SHIFT_RUN=0, or a baseline mode they do not apply to)."""
    if cfg.level_shift_run < 2 or rules.baseline_mode not in FOLLOWED_MODES:
        return None
    runs = load_runs(r, tenant, event_type, list(values.columns))
    shifts = find_shifts(values, verdicts, baseline, recent, rules, runs, cfg.level_shift_run)
    if shifts.reseeds:
        first = shifts.reseeds[0].row
        set_model_aside(verdicts[first + 1:], outdated_note(float(timestamps[first]), cfg))
        shifts.at = float(timestamps[shifts.reseeds[-1].row])
    return shifts


def set_model_aside(verdicts: Sequence[dict], note: dict) -> None:
    """Drop the anomaly model's opinion from verdicts after a level shift (the model learnt the
    old level; tasks.models.outdated), with ``note`` saying so."""
    for verdict in verdicts:
        if verdict["anomaly_score"] is None:
            continue  # the model did not judge it anyway
        verdict["warnings"] = [w for w in verdict["warnings"] if w["code"] != "anomaly"]
        verdict["anomaly_score"] = None
        verdict["notes"].append(note)
        verdict["valid"] = not verdict["warnings"]


def side_of(verdict: dict, field: str) -> int:
    """+1 / -1 if the verdict has ``field`` out of range above / below (of the recent
    baseline when that judged it: the one a shift re-seeds), 0 if in range."""
    for warning in verdict["warnings"]:
        if warning["code"] == "out_of_range" and warning["field"] == field:
            judged = warning["baselines"]
            figures = judged.get("recent") or next(iter(judged.values()))
            return 1 if warning["value"] > figures["mean"] else -1
    return 0


def find_shifts(values: pd.DataFrame, verdicts: list[dict], baseline: Mapping[str, Moments],
                recent: Mapping[str, Moments], rules: Judge, runs: Mapping[str, Run],
                k: int) -> Shifts:
    """Follow each field's run through the chunk (rows in time order). At a shift: a
    ``level_shift`` warning on the row that completed it, and the field judged again on the
    later rows against the re-seeded recent baseline (``verdicts`` changed in place)."""
    reseeds: list[Reseed] = []
    after: dict[str, Run] = {}
    for field in values.columns:
        column = values[field].to_numpy(dtype=float)
        present = ~np.isnan(column)
        current, run, start = recent.get(field), runs.get(field, Run()), 0
        while True:
            sides = [side_of(verdicts[row], field) if present[row] else None
                     for row in range(start, len(column))]
            scan = first_shift(sides, column[start:], run, k)
            run = scan.run
            if scan.position is None:
                break
            row = start + scan.position
            judged = current if current is not None and current.n >= rules.min_history \
                else baseline[field]
            mean, var = reseed(scan.completed, judged.variance)
            n = (current.n if current is not None else 0) + int(present[start:row + 1].sum())
            current = Moments(n, mean, var * n)
            side = sides[scan.position]
            verdicts[row]["warnings"].append(level_shift_warning(
                field, float(column[row]), side, k, (judged.mean, judged.std),
                (mean, math.sqrt(var))))
            verdicts[row]["valid"] = False
            rejudge(values, verdicts, field, row + 1, baseline, current, rules)
            reseeds.append(Reseed(row, field, mean, var, current))
            start = row + 1
        if run != runs.get(field, Run()):
            after[field] = run
    reseeds.sort(key=lambda x: x.row)
    return Shifts(reseeds, after, bool(after))


def rejudge(values: pd.DataFrame, verdicts: list[dict], field: str, start: int,
            baseline: Mapping[str, Moments], recent: Moments, rules: Judge) -> None:
    """Judge ``field`` again on rows ``start``.. against the re-seeded recent baseline: its
    out_of_range warning replaced (or dropped, or added), everything else kept."""
    later = values.iloc[start:][[field]]
    if later.empty or field not in baseline:
        return
    fresh = judge_events(later, {field: baseline[field]}, rules, recent={field: recent})
    for verdict, new in zip(verdicts[start:], fresh):
        warning = next((w for w in new["warnings"] if w["code"] == "out_of_range"), None)
        warnings = verdict["warnings"]
        at = next((i for i, w in enumerate(warnings)
                   if w["code"] == "out_of_range" and w["field"] == field), None)
        if at is not None:
            del warnings[at]
        else:  # after the other fields' out_of_range warnings, before the model's
            at = next((i for i, w in enumerate(warnings) if w["code"] != "out_of_range"),
                      len(warnings))
        if warning is not None:
            warnings.insert(at, warning)
        verdict["valid"] = not warnings


def refigure(results: list[dict], shifts: Shifts | None) -> None:
    """The baseline figures of each result (``result["baseline"]``) as its values were
    judged: after a re-seed, the field's recent figures are the re-seeded ones."""
    for shift in shifts.reseeds if shifts else ():
        figures = {"recent_n": shift.recent.n, "recent_mean": shift.recent.mean,
                   "recent_std": shift.recent.std}
        for result in results[shift.row + 1:]:
            if shift.field in result["baseline"]:
                result["baseline"] = {**result["baseline"],
                                      shift.field: {**result["baseline"][shift.field], **figures}}


def marks(shifts: Shifts | None, matrix: np.ndarray, columns: list[str],
          mine: Sequence[int]) -> dict[str, list[tuple[int, float, float]]]:
    """The re-seeds of a batch of the chunk's rows ``mine`` (ascending), for apply_batch:
    per field, (position among the field's values in the batch, mean, variance)."""
    found: dict[str, list[tuple[int, float, float]]] = {}
    if not shifts or not shifts.reseeds:
        return found
    rows = {row: at for at, row in enumerate(mine)}
    for shift in shifts.reseeds:
        if shift.row not in rows:
            continue
        column = matrix[list(mine)[:rows[shift.row]], columns.index(shift.field)]
        found.setdefault(shift.field, []).append(
            (int((~np.isnan(column)).sum()), shift.mean, shift.var))
    return found


# Writes the runs a chunk changed and when its last shift was, but only when the merge queued
# right after it in the same transaction applies: both look at the same batch markers
# (KEYS[3..]) with nothing in between, so both decide alike. KEYS: runs, level_shift_at;
# ARGV: the last shift's timestamp ('' if none), then (field, run JSON or '' to delete) pairs.
_WRITE = lua.text("level_shifts_write")


def queue_write(pipe: redis.client.Pipeline, tenant: str, event_type: str,
                shifts: Shifts | None, batch_ids: Sequence[str]) -> None:
    """Queue the write of the chunk's runs on the merge's transaction, BEFORE the merge of
    the batches ``batch_ids``: it applies exactly when that merge does."""
    if not shifts or not (shifts.changed or shifts.at is not None):
        return
    args: list[str | bytes] = [repr(shifts.at) if shifts.at is not None else ""]
    for field, run in shifts.runs.items():
        args += [field, orjson.dumps(run.as_dict()) if run.values else ""]
    pipe.register_script(_WRITE)(
        keys=[keys.level_runs(tenant, event_type), keys.level_shift_at(tenant, event_type),
              *(keys.batch_applied(tenant, b) for b in batch_ids)],
        args=args)

"""Episodes: consecutive flagged events of one event type, told as one incident.

An episode opens at a flagged event when none is open, takes in every later flagged event,
and closes at the ``quiet``-th consecutive valid event after its last flagged one. Pure: the
state in, the events in time order, and out come each event's episode (flagged events only),
the state out and what opened or closed, so a caller can store and announce them.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

# The rule that opened an episode, when its first event broke several: the most specific.
RULE_ORDER = ("level_shift", "out_of_range", "anomaly")
# Warnings whose size is a z-score; an anomaly warning's is its model score (0-1).
Z_CODES = ("out_of_range", "level_shift")


@dataclass(frozen=True)
class Step:
    """One event as the episode logic sees it."""
    ts: float
    flagged: bool
    rule: str | None = None  # the warning code that would open an episode
    peak: dict | None = None  # its largest warning (peak_of), flagged events only
    key: str = ""  # names an episode this event opens (episode_id): the same on a redelivery


@dataclass
class State:
    """The open episode (None: none is open) and the valid events seen since its last
    flagged one."""
    open: dict | None = None
    quiet: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"open": self.open, "quiet": self.quiet}

    @classmethod
    def from_dict(cls, raw: dict | None) -> State:
        return cls(raw.get("open"), int(raw.get("quiet", 0))) if raw else cls()


@dataclass
class Outcome:
    """Per event its episode id (None for valid events); the state after the last event;
    every episode that changed (as it is now, by id, in the order first touched); and the
    transitions ("opened" | "closed", the episode as it was then) in the order they
    happened."""
    ids: list[str | None]
    state: State
    changed: dict[str, dict] = field(default_factory=dict)
    transitions: list[tuple[str, dict]] = field(default_factory=list)


def episode_id(*parts: object) -> str:
    """"ep_" + 16 hex digits of sha256 over what opened it: deterministic, so a redelivered
    batch computes the same id."""
    return "ep_" + hashlib.sha256("\0".join(map(str, parts)).encode()).hexdigest()[:16]


def _size(warning: dict) -> tuple[int, float]:
    """Ranks warnings for the peak: z-scores above model scores (a model score is at most 1,
    a z-score that flags is larger), then by |z| or score; a z of None (the history never
    varied) counts as infinite; a z warning without one (a level_shift's: its figures are the
    before/after baselines) as 0."""
    if warning.get("code") in Z_CODES:
        if "z" not in warning:
            return 1, 0.0
        z = warning["z"]
        return 1, math.inf if z is None else abs(float(z))
    score = warning.get("score")
    return 0, float(score) if score is not None else 0.0


def peak_of(warnings: Sequence[dict]) -> dict | None:
    """The largest warning of an event, as an episode's peak: code, field, value, z or score."""
    if not warnings:
        return None
    top = max(warnings, key=_size)
    peak = {"code": top.get("code"), "field": top.get("field")}
    for name in ("value", "z", "score"):
        if name in top:
            peak[name] = top[name]
    return peak


def rule_of(warnings: Sequence[dict]) -> str | None:
    """The rule an event breaks, as the one that opens an episode."""
    codes = [w.get("code") for w in warnings]
    for code in RULE_ORDER:
        if code in codes:
            return code
    return codes[0] if codes else None


def advance(state: State, steps: Sequence[Step], quiet: int, event_type: str) -> Outcome:
    """Run the episode logic over ``steps`` (time order) from ``state``."""
    if quiet < 1:
        raise ValueError("quiet must be at least 1")
    current = State(dict(state.open) if state.open else None, state.quiet)
    outcome = Outcome([], current)
    for step in steps:
        episode = current.open
        if step.flagged:
            if episode is None:
                episode = _opened(step, event_type)
                outcome.transitions.append(("opened", dict(episode)))
            else:
                _extend(episode, step)
            current.open, current.quiet = episode, 0
            outcome.changed[episode["id"]] = episode
            outcome.ids.append(episode["id"])
            continue
        outcome.ids.append(None)
        if episode is None:
            continue
        current.quiet += 1
        if current.quiet >= quiet:
            episode["closed_at"] = step.ts
            outcome.changed[episode["id"]] = episode
            outcome.transitions.append(("closed", dict(episode)))
            current.open, current.quiet = None, 0
    # Episodes still open are the same objects as the state's: each change is in both.
    outcome.changed = {k: dict(v) for k, v in outcome.changed.items()}
    return outcome


def _opened(step: Step, event_type: str) -> dict:
    return {"id": step.key, "event_type": event_type, "opened_at": step.ts,
            "last_flagged_at": step.ts, "closed_at": None, "count": 1,
            "peak": step.peak, "rule": step.rule}


def _extend(episode: dict, step: Step) -> None:
    episode["count"] += 1
    episode["last_flagged_at"] = step.ts
    if step.peak is not None and (episode["peak"] is None
                                  or _size(step.peak) > _size(episode["peak"])):
        episode["peak"] = step.peak


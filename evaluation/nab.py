"""`make eval`: replay the four NAB families through Vigil, with its defaults, as a client would.

Per series (../shared/data/nab, its README says how): the first 15% is imported as history; the
rest is submitted as events in the file's order (jobs of --batch events, each submitted when the
previous one finished). An event counts as flagged when its verdict is invalid. Per family and
in total it prints:
- windows flagged: windows with at least one flagged event, of the windows with at least one
  replayed event (a window wholly inside the imported history is never judged: NAB does not
  score windows of its probationary period either; how many there were is printed);
- false alarms per 1,000 events outside every window;
- the NAB score under NAB's `standard` and `reward_low_FP_rate` profiles, normalised 0-100 as
  NAB reports it (evaluation/nab_score.py; the imported history is the probationary period);
- the same for a naive detector (mean and std of the history part, 3 sigma) on the same events.
After each series, a round of feedback as a user would give it: its first 10 false alarms
marked `false_alarm`, the model retrained, the series' stored events replayed
(POST /v1/event-types/{type}/revalidate). Beside the figures as judged and after feedback it
prints a control, replayed after retraining without any feedback, so the feedback's own part
can be told apart (--no-feedback skips all of it).
Then Gaussian streams (issue 15's goal: no more than 2x the configured alert rate whatever the
history's time span) and the run's duration.

A private stack (its own Redis, API, workers, beat) is started WITH THE DEFAULTS (the caller's
VIGIL_* variables are not passed on); `--env NAME=VALUE` (repeatable) overrides one setting,
and --url replays through a running service instead (with whatever settings it runs with).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.config import Settings  # noqa: E402
from evaluation.nab_score import PROFILES, FamilyScore, score_series, window_spans  # noqa: E402
from evaluation.stack import private_stack  # noqa: E402
from vigil_client import Client  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "nab"
FAMILIES = ("realKnownCause", "realTweets", "artificialWithAnomaly", "artificialNoAnomaly")
HISTORY_SHARE = 0.15
# False alarms marked per series in the feedback round (issue 16).
FEEDBACK_ROUND = 10
SHOWN_PROFILES = ("standard", "reward_low_FP_rate")


@dataclass
class Tally:
    """One detector's figures on one series, or summed over several."""

    windows_flagged: int = 0
    windows: int = 0  # windows with at least one replayed event
    windows_in_history: int = 0  # windows wholly inside the imported history: never judged
    false_alarms: int = 0
    events_outside: int = 0
    nab: dict[str, FamilyScore] = field(default_factory=lambda: {p: FamilyScore() for p in PROFILES})

    @property
    def per_1000(self) -> float:
        return 1000 * self.false_alarms / max(self.events_outside, 1)

    @property
    def window_share(self) -> float | None:
        return self.windows_flagged / self.windows if self.windows else None

    def __add__(self, other: Tally) -> Tally:
        return Tally(self.windows_flagged + other.windows_flagged, self.windows + other.windows,
                     self.windows_in_history + other.windows_in_history,
                     self.false_alarms + other.false_alarms,
                     self.events_outside + other.events_outside,
                     {p: self.nab[p] + other.nab[p] for p in PROFILES})


def tally(times: pd.Series, flags: np.ndarray, windows: Sequence[Sequence[str]],
          history: int) -> Tally:
    """Figures of one series: times and flags of every row; rows before `history` were
    imported as history (no verdict; their flags are ignored)."""
    flags = np.asarray(flags, dtype=bool).copy()
    flags[:history] = False
    replayed = np.arange(len(flags)) >= history
    spans = window_spans(times, windows)
    inside_any = np.zeros(len(flags), dtype=bool)
    result = Tally()
    for left, right in spans:
        inside_any[left:right + 1] = True
        if right < history:
            result.windows_in_history += 1
            continue
        result.windows += 1
        result.windows_flagged += bool(flags[left:right + 1].any())
    outside = replayed & ~inside_any
    result.false_alarms = int((flags & outside).sum())
    result.events_outside = int(outside.sum())
    result.nab = {name: score_series(flags, spans, cost, probation=history)
                  for name, cost in PROFILES.items()}
    return result


def naive_flags(history: np.ndarray, values: np.ndarray, k: float = 3.0) -> np.ndarray:
    return np.abs(values - history.mean()) > k * history.std()


def wait(client: Client, job_id: str, poll_s: float = 0.05) -> dict:
    # Faster than Retry-After (whole seconds): hundreds of small jobs run back to back here.
    while True:
        job = client.job(job_id)
        if job["status"] in ("succeeded", "failed", "cancelled"):
            if job["status"] != "succeeded":
                raise RuntimeError(f"job {job_id} {job['status']}: {job.get('error')}")
            return job
        time.sleep(poll_s)


def judge(client: Client, history: list[dict], events: list[dict], batch: int,
          verdicts: list[tuple[str, int]] | None = None) -> np.ndarray:
    """Import the history of the events' type, then submit the events in jobs of `batch`,
    each awaited; the invalid flag of each event, in order. verdicts: if given, gets each
    event's (job id, index), where feedback on it goes."""
    wait(client, client.import_history(events[0]["event_type"], history)["job_id"])
    flags: list[bool] = []
    for start in range(0, len(events), batch):
        job = wait(client, client.submit(events[start:start + batch])["job_id"])
        flags += [not result["valid"] for result in job["results"]]
        if verdicts is not None:
            verdicts += [(job["job_id"], result["index"]) for result in job["results"]]
    return np.array(flags, dtype=bool)


def epochs(frame: pd.DataFrame) -> np.ndarray:
    return ((frame["timestamp"] - pd.Timestamp("1970-01-01")) // pd.Timedelta(seconds=1)
            ).to_numpy(dtype=np.int64)


def replay(client: Client, frame: pd.DataFrame, event_type: str, batch: int,
           verdicts: list[tuple[str, int]] | None = None) -> np.ndarray:
    """Flags of every row of the series (False for the history part); ``verdicts``, if
    given, gets (job id, index) of each replayed row."""
    epoch = epochs(frame)
    values = frame["value"].astype(float)
    split = int(len(frame) * HISTORY_SHARE)
    history = [{"timestamp": int(t), "payload": {"value": float(v)}}
               for t, v in zip(epoch[:split], values[:split], strict=True)]
    events = [{"event_type": event_type, "timestamp": int(t), "payload": {"value": float(v)}}
              for t, v in zip(epoch[split:], values[split:], strict=True)]
    flags = judge(client, history, events, batch, verdicts)
    return np.concatenate([np.zeros(split, dtype=bool), flags])


def replayed(client: Client, event_type: str, frame: pd.DataFrame, flags: np.ndarray,
             split: int) -> np.ndarray:
    """The flags after retraining the type's model and replaying its stored events (POST
    .../revalidate); events the type no longer keeps (beyond VIGIL_HISTORY_MAX_ROWS accepted
    or 1,000 flagged) keep their verdicts."""
    wait(client, client.train(event_type)["job_id"])
    epoch = epochs(frame)
    job = wait(client, client.revalidate(event_type, since=int(epoch[split]),
                                         changed_limit=10_000)["job_id"])
    after = flags.copy()
    rows_at: dict[int, list[int]] = {}
    for row in range(split, len(epoch)):
        rows_at.setdefault(int(epoch[row]), []).append(row)
    for changed in job["summary"]["changed_events"]:
        for row in rows_at.get(int(changed["ts"]), []):
            after[row] = not changed["after"]["valid"]
    return after


def feedback_round(client: Client, event_type: str, frame: pd.DataFrame, flags: np.ndarray,
                   verdicts: list[tuple[str, int]], windows: list,
                   split: int) -> tuple[np.ndarray, np.ndarray]:
    """What a user's round of feedback does: the flags of a replay without feedback (the
    control: a retrained model and today's baselines alone change verdicts too), then after
    the first FEEDBACK_ROUND false alarms (flagged events outside every window) were marked
    as such, the model retrained and the stored events replayed."""
    control = replayed(client, event_type, frame, flags, split)
    inside = np.zeros(len(flags), dtype=bool)
    for left, right in window_spans(frame["timestamp"], windows):
        inside[left:right + 1] = True
    false_alarms = np.flatnonzero(flags & ~inside & (np.arange(len(flags)) >= split))
    for row in false_alarms[:FEEDBACK_ROUND]:
        job_id, index = verdicts[row - split]
        client.feedback(job_id, index, "false_alarm", "make eval's feedback round")
    return control, replayed(client, event_type, frame, flags, split)


@dataclass
class SeriesResult:
    family: str
    name: str
    vigil: Tally
    naive: Tally
    seconds: float
    # Replayed without feedback (the control), and after the round of feedback.
    replayed: Tally | None = None
    after_feedback: Tally | None = None


def evaluate_series(args: argparse.Namespace, name: str, windows: list, run: str) -> SeriesResult:
    started = time.monotonic()
    frame = pd.read_csv(args.data / name, parse_dates=["timestamp"])
    family, stem = name.split("/", 1)
    split = int(len(frame) * HISTORY_SHARE)
    event_type = f"nab-{family}-{Path(stem).stem[:50]}-{run}"
    verdicts: list[tuple[str, int]] = []
    with Client(args.url, args.key, timeout=120) as client:
        flags = replay(client, frame, event_type, args.batch, verdicts)
        control, after = ((None, None) if args.no_feedback else
                          feedback_round(client, event_type, frame, flags, verdicts, windows,
                                         split))
    values = frame["value"].to_numpy(dtype=float)
    naive = np.concatenate([np.zeros(split, dtype=bool), naive_flags(values[:split], values[split:])])
    times = frame["timestamp"]
    result = SeriesResult(family, name, tally(times, flags, windows, split),
                          tally(times, naive, windows, split), time.monotonic() - started,
                          None if control is None else tally(times, control, windows, split),
                          None if after is None else tally(times, after, windows, split))
    print(f"eval: {name}: {describe(result.vigil)}; naive 3-sigma {describe(result.naive)}"
          + ("" if after is None else f"; replayed {describe(result.replayed)}, after "
                                       f"feedback {describe(result.after_feedback)}")
          + f" ({result.seconds:.0f} s)", file=sys.stderr, flush=True)
    return result


def describe(t: Tally) -> str:
    return f"{t.windows_flagged}/{t.windows} windows, {t.per_1000:.2f} FA/1000"


# --- the table ------------------------------------------------------------------------------

def _share(t: Tally) -> str:
    share = t.window_share
    return f"{t.windows_flagged:>5}/{t.windows:<4} {share:>4.0%}" if share is not None else f"{'n/a':>15}"


def _nab(score: FamilyScore) -> str:
    value = score.normalised
    return f"{value:>8.1f}" if value is not None else f"{'n/a':>8}"


def table_rows(label: str, vigil: Tally, naive: Tally) -> list[str]:
    rows = []
    for i, (detector, t) in enumerate((("vigil", vigil), ("3-sigma", naive))):
        rows.append(f"{label if i == 0 else '':27} {detector:8} {_share(t)} {t.per_1000:>9.2f} "
                    + " ".join(f"{_nab(t.nab[p]):>12}" for p in SHOWN_PROFILES))
    return rows


def report(results: list[SeriesResult]) -> list[str]:
    header = (f"{'family (series)':27} {'detector':8} {'windows flagged':>15} {'FA/1000':>9} "
              f"{'NAB standard':>12} {'NAB low-FP':>12}")
    lines = [header]
    total_v = total_n = Tally()
    for family in FAMILIES:
        mine = [r for r in results if r.family == family]
        if not mine:
            continue
        vigil = sum((r.vigil for r in mine), Tally())
        naive = sum((r.naive for r in mine), Tally())
        total_v, total_n = total_v + vigil, total_n + naive
        lines += table_rows(f"{family} ({len(mine)})", vigil, naive)
    lines += table_rows("ALL", total_v, total_n)
    lines += [f"windows flagged: of the {total_v.windows} windows with events after the history "
              f"({total_v.windows_in_history} more lay wholly in it: never judged,",
              "  as in NAB's probationary period). FA/1000: invalid events outside every window, "
              "per 1,000 such events.",
              "NAB: NAB's score, normalised as NAB does: 0 = no detection at all, 100 = perfect."]
    return lines


def feedback_report(results: list[SeriesResult]) -> list[str]:
    """Windows and false alarms as judged, replayed without feedback, and after feedback."""
    lines = [f"A round of feedback (per series: the model retrained and the stored events "
             f"replayed without feedback; then the first {FEEDBACK_ROUND} false alarms marked "
             "false_alarm, retrained, replayed):",
             f"{'family (series)':27} {'windows judged':>15} {'replayed':>15} "
             f"{'after feedback':>15} {'FA/1000 judged':>15} {'replayed':>9} {'after':>7}"]
    for family in (*FAMILIES, None):
        mine = [r for r in results if family in (None, r.family) and r.after_feedback]
        if not mine:
            continue
        judged = sum((r.vigil for r in mine), Tally())
        control = sum((r.replayed for r in mine), Tally())
        after = sum((r.after_feedback for r in mine), Tally())
        lines.append(f"{(family or 'ALL') + f' ({len(mine)})':27} {_share(judged):>15} "
                     f"{_share(control):>15} {_share(after):>15} {judged.per_1000:>15.2f} "
                     f"{control.per_1000:>9.2f} {after.per_1000:>7.2f}")
    return lines


# --- Gaussian streams -----------------------------------------------------------------------

@dataclass
class StreamResult:
    label: str
    events: int
    flagged: int

    @property
    def per_1000(self) -> float:
        return 1000 * self.flagged / max(self.events, 1)


def gaussian_short_history(client: Client, run: str, batch: int) -> StreamResult:
    """1,000 events of N(100, 10) one second apart (17 minutes) as history, then 20,000 of the
    same distribution spread over a day that starts a day later."""
    rng = np.random.default_rng(15)
    t0 = 1_790_000_000
    event_type = f"eval-gauss-{run}"
    history = [{"timestamp": t0 + i, "payload": {"amount": float(v)}}
               for i, v in enumerate(rng.normal(100, 10, 1000))]
    times = t0 + 86_400 + np.arange(20_000) * 86_400 // 20_000
    events = [{"event_type": event_type, "timestamp": int(t), "payload": {"amount": float(v)}}
              for t, v in zip(times, rng.normal(100, 10, 20_000), strict=True)]
    flags = judge(client, history, events, batch)
    return StreamResult(f"N(100,10), history 17 min, then a later day (jobs of {batch:,})",
                        len(events), int(flags.sum()))


def bench_events(client: Client, run: str, batch: int = 1000) -> list[StreamResult]:
    """`make bench`'s events (benchmarks/load.py): 2,000 history rows, then 20,000 events in
    jobs of 1,000, 1% of them with amount at +6 sigma."""
    from benchmarks import load  # its generators; imported here so the NAB part needs none of it

    event_type = f"eval-bench-{run}"
    history = load.history(2000)
    events = load.events(20_000, event_type)
    outlier = np.array([e["payload"]["amount"] == load.MEANS[0] + 6 * load.STDS[0] for e in events])
    flags = judge(client, history, events, batch)
    return [StreamResult("make bench events, ordinary (99%)", int((~outlier).sum()),
                         int((flags & ~outlier).sum())),
            StreamResult("make bench events, +6 sigma (1%): caught", int(outlier.sum()),
                         int((flags & outlier).sum()))]


def gaussian_report(streams: list[StreamResult], alert_rate: float | None) -> list[str]:
    bound = (f"bound 2 x VIGIL_ALERT_RATE = {2000 * alert_rate:.2f} per 1,000"
             if alert_rate is not None else "no VIGIL_ALERT_RATE in this build")
    lines = [f"{'Gaussian stream':62} {'events':>7} {'flagged/1000':>13}   ({bound})"]
    lines += [f"{s.label:62} {s.events:>7} {s.per_1000:>13.2f}" for s in streams]
    return lines


# --- main -----------------------------------------------------------------------------------

def env_setting(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=VALUE (e.g. VIGIL_ALERT_RATE=0.002)")
    return name.strip(), value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running Vigil to replay through (default: start a "
                                      "private one with the defaults)")
    parser.add_argument("--key", default=os.environ.get("VIGIL_API_KEY", "vigil-dev-key"))
    parser.add_argument("--env", type=env_setting, action="append", default=[], metavar="NAME=VALUE",
                        help="a setting for the private stack (repeatable); default: none")
    parser.add_argument("--family", action="append", choices=FAMILIES,
                        help="replay only this family (repeatable); default: all four")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--batch", type=int, default=250, help="events per job")
    parser.add_argument("--parallel", type=int, default=2,
                        help="series replayed at a time (the jobs worker has 2 processes)")
    parser.add_argument("--no-gaussian", action="store_true", help="skip the Gaussian streams")
    parser.add_argument("--no-feedback", action="store_true",
                        help="skip the round of feedback after each series")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    overrides = dict(args.env)
    settings_text = (" ".join(f"{k}={v}" for k, v in overrides.items()) or "the defaults")
    # Read here, before anything starts: a bad --env value fails now, with the setting's name.
    settings = stack_settings(overrides)
    windows = json.loads((args.data / "windows.json").read_text())
    names = [n for n in sorted(windows) if n.split("/", 1)[0] in (args.family or FAMILIES)]
    with ExitStack() as stack:
        if args.url is None:
            print(f"eval: a private stack with {settings_text}", flush=True)
            args.url, _ = stack.enter_context(private_stack(overrides, inherit_settings=False))
        else:
            print(f"eval: replaying through {args.url} (with its own settings)", flush=True)
        return run(args, names, windows, settings)


def stack_settings(overrides: dict[str, str]) -> Settings:
    """The settings the private stack runs with: the defaults and the overrides."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    return Settings.from_env({**environ, **overrides})


def run(args: argparse.Namespace, names: list[str], windows: dict, settings: Settings) -> int:
    started = time.monotonic()
    tag = uuid.uuid4().hex[:6]
    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        results = list(pool.map(lambda name: evaluate_series(args, name, windows[name], tag), names))
    lines = report(results)
    if not args.no_feedback:
        lines += [""] + feedback_report(results)
    if not args.no_gaussian:
        with Client(args.url, args.key, timeout=120) as client:
            streams = [gaussian_short_history(client, tag, settings.max_events_per_job),
                       *bench_events(client, tag)]
        lines += [""] + gaussian_report(streams, getattr(settings, "alert_rate", None))
    lines.append(f"{len(results)} series; the run took {time.monotonic() - started:.0f} s, ended "
                 f"{time.strftime('%Y-%m-%d %H:%M %Z')}.")
    print("\n".join(lines), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

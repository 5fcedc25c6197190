"""`vigil`: submit events, import history, follow jobs and read baselines from a terminal.

Exit codes: 0 done; 1 the job failed or was cancelled; 2 bad usage, a bad file or a 4xx
answer; 3 Vigil unreachable or a 5xx answer; 130 interrupted while waiting; 141 the output's
reader closed it (`vigil results JOB | head`), quietly, as Unix tools do.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from tqdm import tqdm

from vigil_client.client import DEFAULT_URL, FINISHED, Client, VigilError, read_events

DEV_KEY = "vigil-dev-key"

EPILOG = f"""\
examples:
  vigil history import checkout history.csv --wait
  vigil submit events.csv --wait
  vigil results JOB_ID --csv > verdicts.csv
  vigil baseline checkout
  vigil webhook-secret > webhook-secret.txt   # verify your webhooks with it

environment: VIGIL_URL (default {DEFAULT_URL}), VIGIL_API_KEY.
exit codes: 0 ok, 1 job failed or cancelled, 2 bad usage or request, 3 Vigil unreachable or 5xx.
"""


class CliError(Exception):
    """A problem found before or after talking to Vigil; printed as `vigil: <message>`."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


# -- output helpers ------------------------------------------------------------------------


def out(text: str = "") -> None:
    print(text, file=sys.stdout)


def dump(data: Any) -> None:
    out(json.dumps(data, indent=2, ensure_ascii=False))


def number(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if value != 0 and (abs(value) >= 1e7 or abs(value) < 1e-3):
        return f"{value:.4g}"
    return f"{value:.4f}"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], right: set[int]) -> str:
    """Plain aligned columns; columns in ``right`` (indexes) are right-aligned."""
    cells = [list(map(str, headers))] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(row, widths))).rstrip()

    return "\n".join([line(cells[0]), line(["-" * w for w in widths])] + [line(r) for r in cells[1:]])


def without_results(job: dict) -> dict:
    return {k: v for k, v in job.items() if k != "results"}


# -- jobs ----------------------------------------------------------------------------------


def estimated(job: dict) -> str:
    """The server's estimate of the time left (eta_s), if it gave one."""
    eta_s = job.get("eta_s")
    if not isinstance(eta_s, int | float):
        return ""
    return ", under a second to go" if eta_s < 1 else f", about {eta_s:.0f} s to go"


def accepted_message(client: Client, accepted: dict, what: str) -> None:
    out(f"{what}: job {accepted['job_id']} {accepted['status']}{estimated(accepted)}")
    out(f"status: {client.url(accepted['status_url'])}")


def wait_with_progress(client: Client, job_id: str) -> dict:
    """Wait for the job, drawing a progress bar on stderr while it has events to count."""
    bar: tqdm | None = None

    def on_progress(job: dict) -> None:
        nonlocal bar
        progress = job.get("progress") or {}
        total, done = progress.get("total") or 0, progress.get("done") or 0
        if bar is None and total > 0:
            bar = tqdm(total=total, file=sys.stderr, unit="event", desc=job.get("status"),
                       leave=True, mininterval=0.2)
        if bar is not None:
            # The server's estimate too: tqdm's own says "?" while the job is queued.
            bar.set_description_str(f"{job.get('status') or ''}{estimated(job)}", refresh=False)
            bar.update(max(0, min(done, total) - bar.n))

    try:
        return client.wait(job_id, on_progress=on_progress)
    except KeyboardInterrupt:
        raise CliError(f"stopped waiting; job {job_id} carries on (vigil status {job_id})",
                       130) from None
    finally:
        if bar is not None:
            bar.close()


def finish(job: dict, args: argparse.Namespace, describe: Callable[[dict], str]) -> int:
    """Print the finished job (summary line, or JSON) and turn its status into an exit code."""
    if args.json:
        dump(without_results(job))
    elif job["status"] == "succeeded":
        out(f"succeeded: {describe(job.get('summary') or {})}")
    else:
        reason = job.get("error") or ("cancelled before it finished" if job["status"] == "cancelled"
                                      else "no reason recorded")
        out(f"{job['status']}: {reason}")
    return 0 if job["status"] == "succeeded" else 1


def describe_validation(summary: dict) -> str:
    text = f"{summary.get('valid', 0)} valid, {summary.get('invalid', 0)} invalid"
    warnings = summary.get("warnings") or {}
    if warnings:
        text += " (" + ", ".join(f"{code}: {n}" for code, n in sorted(
            warnings.items(), key=lambda item: (-item[1], item[0]))) + ")"
    return text


def describe_model(summary: dict) -> str:
    model = summary.get("model")
    if not model:
        return f"no model yet ({summary.get('model_note') or 'not enough history'})"
    features = ", ".join(model.get("features") or [])
    return f"model v{model.get('version')} trained on {model.get('rows')} rows (features: {features})"


def describe_history(summary: dict) -> str:
    fields = ", ".join(summary.get("fields") or []) or "none"
    return f"{summary.get('events', 0)} events imported (fields: {fields}); {describe_model(summary)}"


def submitted(client: Client, args: argparse.Namespace, accepted: dict, what: str,
              describe: Callable[[dict], str]) -> int:
    if not args.wait:
        if args.json:
            dump(accepted)
        else:
            accepted_message(client, accepted, what)
        return 0
    if not args.json:
        accepted_message(client, accepted, what)
    return finish(wait_with_progress(client, accepted["job_id"]), args, describe)


# -- commands ------------------------------------------------------------------------------


def cmd_submit(client: Client, args: argparse.Namespace) -> int:
    loaded = load(args.file)
    if loaded.csv is not None:
        accepted = client.submit(csv=loaded.csv, callback_url=args.callback)
    else:
        accepted = client.submit(loaded.events, callback_url=args.callback or loaded.callback_url)
    return submitted(client, args, accepted, "submitted", describe_validation)


def cmd_status(client: Client, args: argparse.Namespace) -> int:
    job = client.job(args.job)
    dump(job if args.results else without_results(job))
    return 0


def cmd_results(client: Client, args: argparse.Namespace) -> int:
    if args.csv:
        text = client.results_csv(args.job)
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        return 0
    job = client.job(args.job)
    if "results" not in job:
        why = f": {job['error']}" if job.get("error") else ""
        hint = "" if job["status"] in FINISHED else f" (vigil status {args.job})"
        raise CliError(f"job {args.job} is {job['status']}{why}; results exist once it "
                       f"succeeded{hint}")
    dump(job["results"])
    return 0


def cmd_history_import(client: Client, args: argparse.Namespace) -> int:
    if args.file == "-":
        source: Any = {"events": load("-").events}
    else:
        source = args.file
    accepted = client.import_history(args.event_type, source)
    return submitted(client, args, accepted, "history import", describe_history)


def cmd_baseline(client: Client, args: argparse.Namespace) -> int:
    baseline = client.baseline(args.event_type)
    if args.json:
        dump(baseline)
        return 0
    rows = [(f["field"], f["count"], number(f["mean"]), number(f["std"]),
             "yes" if f["checked"] else "no") for f in baseline["fields"]]
    out(table(("field", "count", "mean", "std", "checked"), rows, right={1, 2, 3}))
    out(f"\nfields are checked once they have {baseline['min_history']} values of history")
    return 0


def cmd_train(client: Client, args: argparse.Namespace) -> int:
    accepted = client.train(args.event_type)
    return submitted(client, args, accepted, "training", describe_model)


def cmd_types(client: Client, args: argparse.Namespace) -> int:
    types = client.event_types()
    if args.json:
        dump(types)
    elif not types:
        out("no event types yet; import history with: vigil history import TYPE FILE")
    else:
        rows = [(t["event_type"], t["events"],
                 "-" if t.get("model_version") is None else f"v{t['model_version']}")
                for t in types]
        out(table(("event type", "events", "model"), rows, right={1}))
    return 0


def moment(epoch: float) -> str:
    """An event timestamp (epoch seconds) as UTC ISO-8601."""
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def cmd_episodes(client: Client, args: argparse.Namespace) -> int:
    episodes = client.episodes(args.event_type, open_only=args.open)
    if args.json:
        dump(episodes)
    elif not episodes:
        out("no open episodes" if args.open else "no episodes yet")
    else:
        rows = [(e["id"], moment(e["opened_at"]),
                 "open" if e["closed_at"] is None else moment(e["closed_at"]), e["count"],
                 e["rule"], f"{(e.get('peak') or {}).get('field') or '-'}")
                for e in episodes]
        out(table(("episode", "opened", "closed", "events", "rule", "peak field"), rows,
                  right={1, 2, 3}))
    return 0


LIST_SETTINGS = ("derived_features", "check_fields", "ignore_fields")
NUMBER_SETTINGS = {"z_threshold": float, "alert_rate": float, "min_history": int}


def parse_assignments(assignments: Sequence[str], start: dict) -> dict:
    """--set name=value ... applied to ``start``: lists comma-separated (empty: none),
    "default" reverts a setting to the environment's."""
    settings = dict(start)
    for assignment in assignments:
        name, sep, raw = assignment.partition("=")
        name, raw = name.strip(), raw.strip()
        if not sep or not name:
            raise CliError(f"--set takes name=value, not {assignment!r}")
        if raw.lower() in ("default", "null", "none"):
            settings.pop(name, None)
        elif name in LIST_SETTINGS:
            settings[name] = [part.strip() for part in raw.split(",") if part.strip()]
        elif name in NUMBER_SETTINGS:
            try:
                settings[name] = NUMBER_SETTINGS[name](raw)
            except ValueError:
                raise CliError(f"{name} takes a number, not {raw!r}") from None
        else:
            settings[name] = raw  # the server names what it refuses
    return settings


def show_setting(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list | tuple):
        return ",".join(map(str, value)) or "(none)"
    return f"{value:g}" if isinstance(value, float) else str(value)


def cmd_settings(client: Client, args: argparse.Namespace) -> int:
    current = client.settings(args.event_type)
    if args.set or args.reset:
        overrides = {} if args.reset else current["overrides"]
        current = client.set_settings(args.event_type, parse_assignments(args.set, overrides),
                                      if_version=current["version"])
    if args.json:
        dump(current)
        return 0
    rows = [(name, show_setting(value), "type" if name in current["overrides"] else "env")
            for name, value in current["settings"].items()]
    out(table(("setting", "value", "from"), rows, right=set()))
    out(f"\nversion {current['version']}"
        + (f", set {current['updated_at']}" if current["updated_at"] else
           " (the environment's)"))
    return 0


def rule_counts(side: dict) -> str:
    return ", ".join(f"{code} {n}" for code, n in sorted(side["by_rule"].items())) or "-"


def comparison(left: dict, right: dict, names: tuple[str, str]) -> str:
    """Two sets of verdict figures (a backtest's or a replay's) side by side."""
    rows = [(label, show(left), show(right)) for label, show in (
        ("events", lambda s: s["events"]),
        ("flagged", lambda s: s["flagged"]),
        ("alert rate", lambda s: "-" if s["alert_rate"] is None
            else f"{1000 * s['alert_rate']:.2f} per 1,000"),
        ("by rule", rule_counts),
        ("episodes", lambda s: s["episodes"]),
        ("false alarms flagged", lambda s: f"{s['false_alarms_flagged']} of "
                                           f"{s['false_alarms_marked']} marked"),
        ("confirmed flagged", lambda s: f"{s['confirmed_flagged']} of "
                                        f"{s['confirmed_marked']} marked"))]
    return table(("", *names), rows, right={1, 2})


def verdict_text(verdict: dict) -> str:
    if verdict.get("valid"):
        return "valid"
    if "codes" in verdict:  # a stored verdict: its rules only
        return "invalid: " + ", ".join(verdict["codes"]) if verdict["codes"] else "invalid"
    parts = []
    for w in verdict.get("warnings", []):
        if w.get("z") is not None:
            parts.append(f"{w['code']} {w.get('field')} z={w['z']:+.1f}")
        elif w.get("score") is not None:
            parts.append(f"{w['code']} score={w['score']:.2f}")
        else:
            parts.append(w["code"])
    return "invalid: " + "; ".join(parts) if parts else "invalid"


def changed_table(events: list[dict], before: str, after: str) -> str:
    rows = [(moment(e["ts"]), ", ".join(f"{k}={v:g}" for k, v in e["values"].items()),
             e.get("feedback") or "-", verdict_text(e[before]), verdict_text(e[after]))
            for e in events]
    return table(("timestamp", "values", "feedback", before, after), rows, right=set())


def run_and_wait(client: Client, args: argparse.Namespace, accepted: dict) -> dict | None:
    """Wait for a backtest or replay job; None (after printing why) if it did not succeed."""
    job = wait_with_progress(client, accepted["job_id"])
    if job["status"] != "succeeded" or args.json:
        finish(job, args, lambda summary: "")
        return None
    return job["summary"]


def show_rejudged(client: Client, args: argparse.Namespace, accepted: dict, sides: tuple[str, str],
                  names: tuple[str, str], changed: str) -> int:
    """Wait for a backtest or replay job and print its two sides and the changed verdicts."""
    summary = run_and_wait(client, args, accepted)
    if summary is None:
        return 0 if args.json else 1
    out(comparison(summary[sides[0]], summary[sides[1]], names))
    listed = summary["changed_events"]
    out(f"\n{summary['changed']} verdicts {changed}"
        + (f"; the first {len(listed)}:" if listed else ""))
    if listed:
        out(changed_table(listed, *sides))
    return 0


def cmd_backtest(client: Client, args: argparse.Namespace) -> int:
    proposed = parse_assignments(args.set, client.settings(args.event_type)["overrides"])
    accepted = client.backtest(args.event_type, proposed, since=args.since, until=args.until)
    return show_rejudged(client, args, accepted, ("current", "proposed"),
                         ("current", "proposed"), "would change")


def cmd_revalidate(client: Client, args: argparse.Namespace) -> int:
    accepted = client.revalidate(args.event_type, since=args.since, until=args.until)
    return show_rejudged(client, args, accepted, ("before", "after"),
                         ("as judged", "judged now"), "changed")


def cmd_feedback(client: Client, args: argparse.Namespace) -> int:
    label = None if args.label == "withdraw" else args.label
    given = client.feedback(args.job, args.index, label, args.note)
    if args.json:
        dump(given)
        return 0
    where = "in" if given["in_history"] else "out of"
    what = f"marked {label}" if label else "feedback withdrawn"
    out(f"{what}{'' if given['changed'] else ' (already so: nothing moved)'}; its values are "
        f"{where} the baselines and training history")
    return 0


def cmd_feedback_summary(client: Client, args: argparse.Namespace) -> int:
    summary = client.feedback_summary(args.event_type)
    if args.json:
        dump(summary)
        return 0
    out(f"{summary['false_alarm']} false alarms, {summary['confirmed']} confirmed anomalies")
    if summary["audit"]:
        rows = [(entry["at"], entry["by"], entry["event"],
                 (entry.get("before") or {}).get("label") or "-",
                 (entry.get("after") or {}).get("label") or "withdrawn",
                 (entry.get("after") or {}).get("note") or "")
                for entry in summary["audit"]]
        out("")
        out(table(("when", "by", "event (job:index)", "before", "after", "note"), rows, set()))
    return 0


def cmd_webhook_secret(client: Client, args: argparse.Namespace) -> int:
    if args.status:
        info = client.webhook_secret_info()
        if args.json:
            dump(info)
        elif not info["has_secret"]:
            out("no webhook secret yet; create one with: vigil webhook-secret")
        else:
            out(f"webhook secret created {info['created_at']}")
            if info["previous_signing"]:
                out(f"the replaced secret signs too until {info['previous_expires_at']}")
        return 0
    if args.end_overlap:
        client.end_webhook_secret_overlap()
        out("deliveries are signed with the current webhook secret only")
        return 0
    created = client.rotate_webhook_secret()
    if args.json:
        dump(created)
        return 0
    # The secret alone on stdout, so `vigil webhook-secret > file` keeps just the secret.
    out(created["secret"])
    print(f"vigil: {created.get('message') or 'store this secret now: it is not shown again'}",
          file=sys.stderr)
    return 0


def load(path: str):
    try:
        return read_events(path, sys.stdin.read() if path == "-" else None)
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}") from exc


# -- parser --------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    # Global options work before or after the command. Each subcommand has its own copies
    # with SUPPRESS defaults, so they only set what was actually given there (separate
    # action objects: set_defaults on a parser changes the defaults of the actions it holds).
    def global_options(target: argparse.ArgumentParser, suppress: bool) -> None:
        def default(value: Any) -> Any:
            return argparse.SUPPRESS if suppress else value

        target.add_argument("--url", default=default(None),
                            help=f"Vigil's base URL (env VIGIL_URL, default {DEFAULT_URL})")
        target.add_argument("--key", default=default(None), help="API key (env VIGIL_API_KEY)")
        target.add_argument("--json", action="store_true", default=default(False),
                            help="print raw JSON instead of tables and summaries")

    shared = argparse.ArgumentParser(add_help=False)
    global_options(shared, suppress=True)
    parser = argparse.ArgumentParser(
        prog="vigil", description="Validate events with Vigil and follow the jobs.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    global_options(parser, suppress=False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler: Callable, help_text: str, sub=commands) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[shared], help=help_text, description=help_text)
        p.set_defaults(handler=handler)
        return p

    p = command("submit", cmd_submit, "validate a batch of events from a file")
    p.add_argument("file", metavar="FILE",
                   help=".csv (event_type, timestamp, [event_id,] fields…), .json (a list of "
                        "events or {\"events\": [...]}), or - for JSON on stdin")
    p.add_argument("--wait", action="store_true", help="show progress and wait for the verdicts")
    p.add_argument("--callback", metavar="URL", help="webhook URL POSTed the finished job")

    p = command("status", cmd_status, "print a job as JSON")
    p.add_argument("job", metavar="JOB")
    p.add_argument("--results", action="store_true", help="include the per-event results")

    p = command("results", cmd_results, "print a finished job's results")
    p.add_argument("job", metavar="JOB")
    p.add_argument("--csv", action="store_true", help="as CSV instead of JSON")

    history = commands.add_parser("history", help="an event type's history",
                                  description="An event type's history.")
    history_commands = history.add_subparsers(dest="history_command", required=True,
                                              metavar="COMMAND")
    p = command("import", cmd_history_import, "import history (seeds baselines, trains the model)",
                sub=history_commands)
    p.add_argument("event_type", metavar="TYPE")
    p.add_argument("file", metavar="FILE",
                   help=".csv (timestamp plus field columns), .json ({\"events\": [{timestamp, "
                        "payload}]} or a list), or - for JSON on stdin")
    p.add_argument("--wait", action="store_true", help="show progress and wait for the import")

    p = command("baseline", cmd_baseline, "per-field count, mean and std of an event type")
    p.add_argument("event_type", metavar="TYPE")

    p = command("train", cmd_train, "train an event type's anomaly model now")
    p.add_argument("event_type", metavar="TYPE")
    p.add_argument("--wait", action="store_true", help="wait for the new model")

    command("types", cmd_types, "event types with their history counts and models")

    p = command("episodes", cmd_episodes, "an event type's episodes (runs of flagged events), "
                                          "newest first")
    p.add_argument("event_type", metavar="TYPE")
    p.add_argument("--open", action="store_true", help="only those still open")

    p = command("settings", cmd_settings, "show or change an event type's settings "
                                          "(they override the environment's for that type)")
    p.add_argument("event_type", metavar="TYPE")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="change one (repeatable): z_threshold=4, alert_rate=0.0005, "
                        "ignore_fields=a,b; NAME=default reverts it")
    p.add_argument("--reset", action="store_true", help="revert every setting first")

    for name, handler, text in (
            ("backtest", cmd_backtest, "preview settings on the type's stored events: "
                                       "current against proposed, side by side"),
            ("revalidate", cmd_revalidate, "re-judge the type's stored events with today's "
                                           "baselines, model and settings; show what changed")):
        p = command(name, handler, text)
        p.add_argument("event_type", metavar="TYPE")
        if name == "backtest":
            p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                           required=True, help="a proposed setting (repeatable), as for "
                                               "`vigil settings`")
        p.add_argument("--since", metavar="TIME", help="from (ISO-8601 or epoch seconds)")
        p.add_argument("--until", metavar="TIME", help="up to (ISO-8601 or epoch seconds)")

    p = command("feedback", cmd_feedback, "mark a verdict a false alarm or a confirmed "
                                          "anomaly (or withdraw the mark)")
    p.add_argument("job", metavar="JOB")
    p.add_argument("index", metavar="INDEX", type=int, help="the event's index in the job")
    p.add_argument("label", choices=("false_alarm", "confirmed", "withdraw"))
    p.add_argument("--note", help="why (kept in the audit trail)")

    p = command("feedback-summary", cmd_feedback_summary,
                "an event type's feedback: counts per label and the audit trail, newest first")
    p.add_argument("event_type", metavar="TYPE")

    p = command("webhook-secret", cmd_webhook_secret,
                "create (or rotate) this tenant's webhook secret and print it: it is shown once; "
                "the replaced one still signs for 24 h")
    choice = p.add_mutually_exclusive_group()
    choice.add_argument("--status", action="store_true",
                        help="show whether a secret exists and since when (never the secret)")
    choice.add_argument("--end-overlap", action="store_true",
                        help="stop signing with the replaced secret now")
    return parser


def resolve_key(given: str | None) -> str | None:
    if given:
        return given
    if os.environ.get("VIGIL_API_KEY"):
        return os.environ["VIGIL_API_KEY"]
    if os.environ.get("VIGIL_ENV", "development").strip().lower() != "production":
        return DEV_KEY
    return None


def output_closed() -> int:
    """stdout's reader went away (`vigil results JOB | head`): stop quietly, as Unix tools do,
    with their exit status (128 + SIGPIPE). What is still buffered goes to /dev/null, so the
    interpreter's flush at exit finds nothing to complain about."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return 128 + signal.SIGPIPE


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2): return, do not exit
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    try:
        with Client(args.url, resolve_key(args.key)) as client:
            code = args.handler(client, args)
            sys.stdout.flush()  # a closed pipe shows here, not at exit
            return code
    except BrokenPipeError:
        return output_closed()
    except VigilError as exc:
        print(f"vigil: {exc}", file=sys.stderr)
        return 3 if exc.status == 0 or exc.status >= 500 else 2
    except CliError as exc:
        print(f"vigil: {exc}", file=sys.stderr)
        return exc.code
    except TimeoutError as exc:
        print(f"vigil: {exc}", file=sys.stderr)
        return 3
    except ValueError as exc:
        print(f"vigil: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vigil: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""The `vigil` command-line tool and the Python client against the real stack (Redis, worker, API).

The CLI runs in-process through main([...]); capsys captures what it prints.
"""

from __future__ import annotations

import csv
import io
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from helpers import KEYS

import vigil_client.client as client_module
from core.localredis import free_port
from vigil_client import Client, VigilError
from vigil_client.cli import DEV_KEY, main, resolve_key

T0 = 1_790_000_000  # epoch seconds


@pytest.fixture
def vigil(api_url, worker, capsys):
    """Run `vigil --url <api> --key <alpha's key> ARGS...`; returns (exit code, stdout, stderr)."""

    def run(*args: object, key: str = KEYS["alpha"]) -> tuple[int, str, str]:
        code = main(["--url", api_url, "--key", key, *map(str, args)])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def history_csv(path, n: int = 300, seed: int = 3) -> np.ndarray:
    """n rows of history: timestamp (epoch seconds) and amount ~ N(100, 10)."""
    amounts = np.random.default_rng(seed).normal(100, 10, n)
    lines = ["timestamp,amount"] + [f"{T0 + 60 * i},{a:.6f}" for i, a in enumerate(amounts)]
    path.write_text("\n".join(lines) + "\n")
    return np.round(amounts, 6)


def job_id_from(stdout: str) -> str:
    match = re.search(r"job ([0-9a-f]{32}) queued", stdout)
    assert match, stdout
    return match.group(1)


def test_import_submit_results_baseline_status_and_train(vigil, event_type, tmp_path):
    amounts = history_csv(tmp_path / "history.csv")
    code, out, err = vigil("history", "import", event_type, tmp_path / "history.csv", "--wait")
    assert code == 0, err
    assert "succeeded: 300 events imported (fields: amount); model v1 trained on 300 rows" in out

    batch = tmp_path / "batch.csv"
    batch.write_text(f"event_type,timestamp,event_id,amount\n"
                     f"{event_type},{T0 + 100_000},typical,101.5\n"
                     f"{event_type},2026-11-23T12:00:00Z,extreme,400\n")
    code, out, err = vigil("submit", batch, "--wait")
    assert code == 0, err
    job_id = job_id_from(out)
    assert f"/v1/jobs/{job_id}" in out
    assert "succeeded: 1 valid, 1 invalid (" in out and "out_of_range: 1" in out

    code, out, err = vigil("results", job_id, "--csv")
    assert code == 0, err
    rows = {row["event_id"]: row for row in csv.DictReader(io.StringIO(out))}
    assert rows["typical"]["valid"] == "true" and rows["typical"]["warning_codes"] == ""
    assert rows["extreme"]["valid"] == "false"
    assert "out_of_range" in rows["extreme"]["warning_codes"].split(";")

    code, out, err = vigil("results", job_id)
    assert code == 0, err
    assert [r["valid"] for r in json.loads(out)] == [True, False]

    # The typical event joined the history; the extreme one did not.
    code, out, err = vigil("baseline", event_type)
    assert code == 0, err
    header, rule, row = out.splitlines()[:3]
    assert header.split() == ["field", "count", "mean", "std", "checked"]
    field, count, mean, std, checked = row.split()
    accepted = np.append(amounts, 101.5)
    assert (field, count, checked) == ("amount", "301", "yes")
    assert float(mean) == pytest.approx(accepted.mean(), abs=1e-4)
    assert float(std) == pytest.approx(accepted.std(), abs=1e-4)
    code, out, _ = vigil("--json", "baseline", event_type)
    assert json.loads(out)["fields"][0]["count"] == 301

    code, out, err = vigil("status", job_id)
    assert code == 0, err
    job = json.loads(out)
    assert job["job_id"] == job_id and job["status"] == "succeeded" and "results" not in job
    assert job["summary"]["invalid"] == 1
    code, out, _ = vigil("status", job_id, "--results")
    assert len(json.loads(out)["results"]) == 2

    code, out, err = vigil("types")
    assert code == 0, err
    assert re.search(rf"^{re.escape(event_type)}\s+301\s+v1$", out, re.MULTILINE), out

    code, out, err = vigil("train", event_type, "--wait")
    assert code == 0, err
    assert ("succeeded: model v2 trained on 301 rows "
            "(features: amount)") in out  # a 5-hour history: time of day not earned
    code, out, err = vigil("train", event_type, "--wait", "--json")  # options after the command too
    assert code == 0, err
    assert json.loads(out)["summary"]["model"]["version"] == 3


def test_failed_job_exits_1_with_its_error(vigil, event_type, tmp_path):
    (tmp_path / "short.json").write_text(json.dumps(
        {"events": [{"timestamp": T0 + i, "payload": {"amount": float(i)}} for i in range(10)]}))
    code, out, err = vigil("history", "import", event_type, tmp_path / "short.json", "--wait")
    assert code == 0, err
    assert "no model yet (10 events of history; the anomaly model needs 50)" in out

    code, out, err = vigil("train", event_type, "--wait")
    assert code == 1, (out, err)
    assert "failed: 10 events of history; the anomaly model needs 50" in out


def test_bad_files_exit_2_naming_the_problem(vigil, event_type, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([
        {"event_type": event_type, "timestamp": 1_790_000_000, "payload": {"amount": 1}},
        {"event_type": event_type, "timestamp": "yesterday", "payload": {"amount": 2}}]))
    code, out, err = vigil("submit", bad, "--wait")
    assert (code, out) == (2, "")
    assert err.startswith("vigil: 422 Unprocessable Entity: Some fields are invalid")
    assert "\n  json.events.1.timestamp: Not a timestamp" in err

    history = tmp_path / "history.json"
    history.write_text(json.dumps({"events": [{"timestamp": "soon", "payload": {"amount": 1}}]}))
    code, _, err = vigil("history", "import", event_type, history)
    assert code == 2 and "json.events.0.timestamp: Not a timestamp" in err

    (tmp_path / "broken.json").write_text("[{")
    code, _, err = vigil("submit", tmp_path / "broken.json")
    assert code == 2 and "broken.json is not valid JSON" in err
    code, _, err = vigil("submit", tmp_path / "missing.csv")
    assert code == 2 and "cannot read" in err and "missing.csv" in err
    code, _, err = vigil("submit", tmp_path / "events.txt")
    assert code == 2 and "expected a .csv or .json file" in err
    code, _, err = vigil("baseline", event_type)
    assert code == 2 and f"404 Not Found: No history for event type '{event_type}' yet." in err


def test_submit_json_from_stdin(vigil, event_type, monkeypatch):
    events = [{"event_type": event_type, "timestamp": T0, "event_id": "s-1", "payload": {"amount": 1}}]
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps({"events": events})))
    code, out, err = vigil("submit", "-", "--wait")
    assert code == 0, err
    assert "succeeded: 1 valid, 0 invalid" in out


def test_unreachable_vigil_exits_3(capsys):
    url = f"http://127.0.0.1:{free_port()}"  # nobody listens there
    code = main(["--url", url, "--key", "k", "types"])
    err = capsys.readouterr().err
    assert code == 3
    assert err.startswith(f"vigil: cannot reach Vigil at {url}: ") and "(make run)" in err


def test_wrong_key_exits_2_mentioning_vigil_api_key(vigil):
    code, out, err = vigil("types", key="not-a-key")
    assert (code, out) == (2, "")
    assert err.startswith("vigil: 401 Unauthorized: Missing or unknown API key")
    assert "VIGIL_API_KEY" in err


def test_key_defaults_to_env_then_dev_key_outside_production(monkeypatch):
    monkeypatch.delenv("VIGIL_API_KEY", raising=False)
    monkeypatch.delenv("VIGIL_ENV", raising=False)
    assert resolve_key("given") == "given"
    assert resolve_key(None) == DEV_KEY
    monkeypatch.setenv("VIGIL_ENV", "production")
    assert resolve_key(None) is None
    monkeypatch.setenv("VIGIL_API_KEY", "from-env")
    assert resolve_key(None) == "from-env"


def test_wait_polls_per_retry_after_and_reports_progress(api_url, worker, event_type, monkeypatch):
    slept: list[float] = []
    real_sleep = client_module._sleep

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        real_sleep(seconds)

    monkeypatch.setattr(client_module, "_sleep", sleep)
    with Client(api_url, KEYS["alpha"]) as client:
        accepted = client.validate({"event_type": event_type, "timestamp": T0,
                                    "payload": {"amount": 5}})
        seen: list[dict] = []
        job = client.wait(accepted["job_id"], timeout=60, on_progress=seen.append)
    assert job["status"] == "succeeded" and job["results"][0]["valid"] is True
    # on_progress gets the job without its results (a big job's would be megabytes).
    assert seen and seen[-1] == {k: v for k, v in job.items() if k != "results"}
    assert all(doc["job_id"] == accepted["job_id"] and "progress" in doc for doc in seen)
    assert not any("results" in doc for doc in seen)
    # One sleep after every unfinished poll, as long as the API's Retry-After (1 s) says.
    assert slept == [1.0] * (len(seen) - 1)


def test_wait_uses_retry_after_with_default_and_cap(monkeypatch):
    """Retry-After as sent (fractions too), 1 s when absent, 5 s at most; no server needed."""
    answers = iter([("queued", "0.25"), ("running", "7"), ("running", None), ("succeeded", None)])

    def handler(request: httpx.Request) -> httpx.Response:
        status, retry = next(answers)
        headers = {"Retry-After": retry} if retry else {}
        return httpx.Response(200, headers=headers, json={
            "job_id": "a" * 32, "status": status, "progress": {"done": 0, "total": 1}})

    slept: list[float] = []
    monkeypatch.setattr(client_module, "_sleep", slept.append)
    seen: list[dict] = []
    with Client("http://vigil.test", "k", transport=httpx.MockTransport(handler)) as client:
        job = client.wait("a" * 32, on_progress=seen.append)
    assert job["status"] == "succeeded"
    assert [doc["status"] for doc in seen] == ["queued", "running", "running", "succeeded"]
    assert slept == [0.25, 5.0, 1.0]

    def queued(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"Retry-After": "1"},
                              json={"job_id": "b" * 32, "status": "queued"})

    with (Client("http://vigil.test", "k", transport=httpx.MockTransport(queued)) as client,
          pytest.raises(TimeoutError, match="did not finish within 0")):
        client.wait("b" * 32, timeout=0)


def test_client_errors_are_readable(monkeypatch):
    def problem(request: httpx.Request) -> httpx.Response:
        return httpx.Response(422, headers={"Content-Type": "application/problem+json"}, json={
            "type": "about:blank", "title": "Unprocessable Entity", "status": 422,
            "detail": "Some fields are invalid.",
            "errors": {"json": {"events": {"0": {"timestamp": ["Not a timestamp."],
                                                 "payload": ["Missing data."]}}}}})

    with Client("http://vigil.test", "k", transport=httpx.MockTransport(problem)) as client, \
            pytest.raises(VigilError) as raised:
        client.submit([{}])
    assert raised.value.status == 422
    assert str(raised.value) == ("422 Unprocessable Entity: Some fields are invalid.\n"
                                 "  json.events.0.timestamp: Not a timestamp.\n"
                                 "  json.events.0.payload: Missing data.")


def test_progress_bar_on_stderr_for_a_large_submission(vigil, event_type, tmp_path):
    # Uniform on [95, 105]: no value is ever 3 std from the mean, so every event is valid.
    rng = np.random.default_rng(11)
    lines = ["event_type,timestamp,amount"] + [
        f"{event_type},{T0 + i},{a:.3f}" for i, a in enumerate(rng.uniform(95, 105, 5000))]
    (tmp_path / "big.csv").write_text("\n".join(lines) + "\n")
    code, out, err = vigil("submit", tmp_path / "big.csv", "--wait")
    assert code == 0, err
    assert "succeeded: 5000 valid, 0 invalid" in out
    assert "5000/5000" in err and "100%" in err and "event/s" in err


def test_the_feedback_loop_from_the_command_line(vigil, event_type, tmp_path):
    """settings, backtest, feedback and revalidate print what a user reads; bad input
    exits 2 naming the problem."""
    history_csv(tmp_path / "history.csv", n=400)
    assert vigil("history", "import", event_type, tmp_path / "history.csv", "--wait")[0] == 0
    batch = tmp_path / "batch.csv"
    batch.write_text(f"event_type,timestamp,amount\n{event_type},{T0 + 100_000},101\n"
                     f"{event_type},{T0 + 100_060},400\n")
    code, out, err = vigil("submit", batch, "--wait")
    assert code == 0 and "1 valid, 1 invalid" in out, out + err
    job = job_id_from(out)

    code, out, _ = vigil("backtest", event_type, "--set", "z_threshold=60",
                         "--since", T0 + 100_000)
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0].split() == ["current", "proposed"]
    assert lines[2].split() == ["events", "2", "2"]
    assert lines[3].split()[:1] == ["flagged"]
    assert "verdicts would change" in out

    code, out, err = vigil("feedback", job, 1, "false_alarm", "--note", "known spike")
    assert code == 0, err
    assert out.strip() == ("marked false_alarm; its values are in the baselines and training "
                           "history")
    assert "already so" in vigil("feedback", job, 1, "false_alarm", "--note", "known spike")[1]

    code, out, _ = vigil("settings", event_type, "--set", "z_threshold=60")
    assert code == 0
    assert re.search(r"z_threshold\s+60\s+type", out) and "version 1, set " in out
    code, out, _ = vigil("revalidate", event_type, "--since", T0 + 100_000)
    assert code == 0
    assert out.splitlines()[2].split() == ["events", "2", "2"]
    # z_threshold=60 took the out_of_range flag away; the model (not retrained) still flags.
    assert re.search(r"by rule\s+anomaly 1, out_of_range 1\s+anomaly 1\n", out), out
    assert re.search(r"false alarms flagged\s+1 of 1 marked\s+1 of 1 marked", out), out

    code, out, _ = vigil("feedback-summary", event_type)
    assert code == 0 and out.startswith("1 false alarms, 0 confirmed anomalies")
    assert re.search(rf"key:\w+\s+{job}:1\s+-\s+false_alarm\s+known spike", out), out

    code, _, err = vigil("settings", event_type, "--set", "alert_rate=2")
    assert code == 2 and "alert_rate" in err
    code, _, err = vigil("feedback", job, 7, "confirmed")
    assert code == 2 and "index 7" in err


def test_jobs_by_ids_and_pages_of_latest_jobs(api_url, worker, event_type):
    with Client(api_url, KEYS["alpha"]) as client:
        accepted = [client.validate({"event_type": event_type, "timestamp": T0 + i,
                                     "payload": {"amount": 5}})["job_id"] for i in range(3)]
        for job_id in accepted:
            client.wait(job_id, timeout=60)
        wanted = [accepted[2], "0" * 32, accepted[0], accepted[2]]  # unknown: left out
        found = client.jobs_by_ids(wanted)
        assert [job["job_id"] for job in found] == [accepted[2], accepted[0]]
        assert all(job["status"] == "succeeded" and len(job["results"]) == 1 for job in found)
        assert client.jobs_by_ids([]) == []

        # Newest first, a page at a time; each page's last job starts the next.
        first = client.jobs(limit=2)
        assert [job["job_id"] for job in first] == accepted[::-1][:2]
        assert all(job["event_type"] == event_type and "results" not in job for job in first)
        second = client.jobs(limit=2, before=first[-1]["job_id"])
        assert second[0]["job_id"] == accepted[0]
        with pytest.raises(VigilError) as raised:
            client.jobs(limit=201)
        assert raised.value.status == 422
        with pytest.raises(VigilError) as raised:  # a job no longer (or never) listed
            client.jobs(before="f" * 32)
        assert raised.value.status == 404


def test_results_piped_into_head_end_quietly(api_url, worker, event_type, tmp_path):
    """`vigil results JOB | head -1`: head closes the pipe early; no BrokenPipeError
    traceback, as with any Unix tool."""
    events = [{"event_type": event_type, "timestamp": T0 + i, "payload": {"amount": 5}}
              for i in range(1000)]  # more than a pipe holds (64 KB), as JSON and as CSV
    with Client(api_url, KEYS["alpha"]) as client:
        job_id = client.submit(events)["job_id"]
        assert client.wait(job_id, timeout=120)["status"] == "succeeded"
    vigil_bin = Path(sys.executable).parent / "vigil"
    for extra in ([], ["--csv"]):
        piped = subprocess.run(
            f"{shlex.quote(str(vigil_bin))} --url {api_url} --key {KEYS['alpha']} results "
            f"{job_id} {' '.join(extra)} | head -1; echo \"vigil exit: ${{PIPESTATUS[0]}}\" >&2",
            shell=True, executable="/bin/bash", capture_output=True, text=True, timeout=60,
            cwd=tmp_path)
        assert piped.stdout.strip() in ("[", "index,event_id,event_type,timestamp,valid,"
                                              "anomaly_score,warning_codes,warnings,processed_at")
        assert "Traceback" not in piped.stderr and "BrokenPipeError" not in piped.stderr, \
            piped.stderr
        # 128 + SIGPIPE, as a Unix tool's; the CSV (~75 KB) may fit what the pipe and head
        # take in before head exits, and then nothing was cut off.
        assert piped.stderr.strip() in (["vigil exit: 141"] if not extra else
                                        ["vigil exit: 141", "vigil exit: 0"]), piped.stderr

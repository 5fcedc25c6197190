"""`make run` holds back the API server's start-up lines (uWSGI's banner) until the stack
answers: dropped then, shown if the server exits first; its JSON log lines always pass."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("vigil_run", ROOT / "scripts" / "run.py")
run = importlib.util.module_from_spec(spec)
sys.modules["vigil_run"] = run  # dataclasses look their module up there
spec.loader.exec_module(run)

SCRIPT = "print('*** Starting a server ***'); print('{\"event\": \"request\"}')"


def child(hold: bool) -> run.Child:
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    started = run.Child("api", proc, hold)
    proc.wait()
    started.reader.join(timeout=10)
    return started


def test_start_up_lines_are_dropped_once_ready_and_json_lines_pass(capsys):
    started = child(hold=True)
    assert capsys.readouterr().out == '[api] {"event": "request"}\n'
    started.release(show=False)
    assert capsys.readouterr().out == ""


def test_start_up_lines_are_shown_when_the_server_exits_before_ready(capsys):
    started = child(hold=True)
    capsys.readouterr()
    started.release(show=True)
    assert capsys.readouterr().out == "[api] *** Starting a server ***\n"


def test_other_children_are_relayed_as_they_come(capsys):
    child(hold=False)
    assert capsys.readouterr().out.splitlines() == [
        "[api] *** Starting a server ***", '[api] {"event": "request"}']

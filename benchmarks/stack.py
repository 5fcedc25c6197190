"""The processes a benchmark run starts (Redis servers, Vigil stacks, API servers), and their CPU.

Everything goes through one Processes registry; stop_all() runs in run_all's `finally`, so
every child is stopped on success, error or Ctrl-C. A Vigil stack is `scripts/run.py` (which
stops its own children on SIGTERM); its process tree is snapshotted before it is stopped, and
whatever of it is still alive after the grace period is killed by pid (and start time, so a
reused pid is never hit).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from benchmarks.cgroups import joiner
from core.localredis import free_port, redis_answers, server_command
from core.server import DEFAULT_SERVER, api_command

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
STOP_GRACE_S = 20.0


# --- /proc ---------------------------------------------------------------------------------

def _stat(pid: int) -> tuple[int, int, float] | None:
    """(parent pid, start time in ticks, CPU seconds used) of a live process, else None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name in parentheses may hold spaces: split after its closing ')'.
    fields = raw.rsplit(")", 1)[1].split()
    return int(fields[1]), int(fields[19]), (int(fields[11]) + int(fields[12])) / CLK_TCK


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        stat = _stat(int(entry.name))
        if stat is not None:
            children.setdefault(stat[0], []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        kids = children.get(todo.pop(), [])
        found.extend(kids)
        todo.extend(kids)
    return found


def role_of(pid: int, cmd: str) -> str:
    if pid == os.getpid() or "benchmarks.load" in cmd:
        return "client"
    if "redis-server" in cmd:
        return "redis"
    if "scripts/run.py" in cmd:
        return "run.py"
    if "benchmarks.sync_api" in cmd:
        return "sync api"
    if any(server in cmd for server in ("uwsgi", "gunicorn", "granian")):
        return "api"
    if "celery" in cmd:
        for role in ("flower", "beat"):
            if f" {role}" in cmd:
                return role
        return "events" if "-Q events" in cmd else "worker"
    return "other"


def machine_busy_s() -> float:
    """CPU seconds every core of the machine spent busy since boot (not idle, not iowait)."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = ticks[:8]
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


@dataclass
class CpuSample:
    at: float
    machine_s: float
    per_process: dict[tuple[int, int], tuple[str, float]]  # (pid, start) -> (role, cpu s)


def cpu_sample() -> CpuSample:
    """CPU used so far by this process and every process below it, by role."""
    me = os.getpid()
    per: dict[tuple[int, int], tuple[str, float]] = {}
    for pid in [me, *descendants(me)]:
        stat = _stat(pid)
        if stat is not None:
            per[(pid, stat[1])] = (role_of(pid, _cmdline(pid)), stat[2])
    return CpuSample(time.monotonic(), machine_busy_s(), per)


def cpu_between(before: CpuSample, after: CpuSample) -> dict[str, float]:
    """Core-seconds per role between two samples, plus 'others' (the rest of the machine)."""
    used: dict[str, float] = {}
    for key, (role, cpu) in after.per_process.items():
        start = before.per_process.get(key, (role, 0.0))[1]
        used[role] = used.get(role, 0.0) + max(0.0, cpu - start)
    used["others"] = max(0.0, after.machine_s - before.machine_s - sum(used.values()))
    used["wall"] = after.at - before.at
    return used


# --- processes ------------------------------------------------------------------------------

def child_env(**overrides: str) -> dict[str, str]:
    """The parent's environment without any VIGIL_* setting (so defaults apply, with the
    development API key), plus overrides."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("VIGIL_") and k not in ("REDIS_URL", "PORT", "FLOWER_PORT",
                                                         "API_SERVER", "PROMETHEUS_MULTIPROC_DIR")}
    env["VIGIL_ENV"] = "development"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(overrides)
    return env


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _same_process(pid: int, start: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[1] == start


@dataclass
class Started:
    name: str
    popen: subprocess.Popen
    log: Path
    url: str
    stop_signal: int = signal.SIGTERM
    tree: list[tuple[int, int]] = field(default_factory=list)

    def snapshot(self) -> None:
        """Remember every process below this one, to kill leftovers after stopping it."""
        for pid in descendants(self.popen.pid):
            stat = _stat(pid)
            if stat is not None and (pid, stat[1]) not in self.tree:
                self.tree.append((pid, stat[1]))

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


class Processes:
    """Every process the benchmark starts, stopped by stop()/stop_all()."""

    def __init__(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="vigil-bench-"))
        self.started: list[Started] = []

    def _popen(self, name: str, cmd: list[str], env: dict[str, str], *, own_session: bool,
               url: str, stop_signal: int = signal.SIGTERM, cgroup: Path | None = None) -> Started:
        log = self.workdir / f"{name}.log"
        with open(log, "ab") as out:
            popen = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                     stderr=subprocess.STDOUT, start_new_session=own_session,
                                     preexec_fn=joiner(cgroup))
        started = Started(name, popen, log, url, stop_signal)
        self.started.append(started)
        return started

    def start_redis(self, name: str, cgroup: Path | None = None) -> str:
        """A private redis-server on a free port, configured as scripts/run.py starts its own
        (core.localredis.server_command) but with its files in a temp dir. Its own session: a
        Ctrl-C must not take Redis away before the stacks using it have stopped."""
        port, data = free_port(), self.workdir / name
        data.mkdir()
        url = f"redis://127.0.0.1:{port}/0"
        started = self._popen(name, server_command(port, data), child_env(), own_session=True,
                              url=url, cgroup=cgroup)
        deadline = time.monotonic() + 10
        while not redis_answers(url):
            if started.popen.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start; see {data / 'redis.log'}")
            time.sleep(0.05)
        return url

    def start_vigil(self, name: str, redis_url: str, expect_workers: int,
                    **overrides: str) -> Started:
        """scripts/run.py (API, workers, beat, Flower) against redis_url, on free ports."""
        port = free_port()
        env = child_env(REDIS_URL=redis_url, PORT=str(port), FLOWER_PORT=str(free_port()),
                        **overrides)
        started = self._popen(name, [sys.executable, str(ROOT / "scripts" / "run.py")], env,
                              own_session=False, url=f"http://127.0.0.1:{port}")
        self._wait_ready(started, "/readyz", lambda body: body.get("workers", 0) >= expect_workers)
        return started

    def start_server(self, name: str, module: str, cgroup: Path | None = None,
                     **env: str) -> Started:
        """`module` served as Vigil's API is (core.server.DEFAULT_SERVER), on a free port, in
        `cgroup` if given (benchmarks.cgroups)."""
        port = free_port()
        cmd = api_command(DEFAULT_SERVER, Path(sys.executable).parent, f"127.0.0.1:{port}",
                          module)
        # SIGINT: an immediate stop (SIGTERM lets busy workers finish first).
        started = self._popen(name, cmd, child_env(**env), own_session=False,
                              url=f"http://127.0.0.1:{port}", stop_signal=signal.SIGINT,
                              cgroup=cgroup)
        self._wait_ready(started, "/healthz", lambda body: True)
        return started

    def start_process(self, name: str, cmd: list[str], env: dict[str, str],
                      cgroup: Path | None = None) -> Started:
        """Any command (a Celery worker), in `cgroup` if given; not waited for."""
        return self._popen(name, cmd, env, own_session=False, url="", cgroup=cgroup)

    def _wait_ready(self, started: Started, path: str, ok, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if started.popen.poll() is not None:
                raise RuntimeError(f"{started.name} exited with {started.popen.returncode}:\n"
                                   f"{started.log_tail()}")
            with contextlib.suppress(httpx.HTTPError, ValueError):
                response = httpx.get(started.url + path, timeout=5)
                if response.status_code == 200 and ok(response.json()):
                    started.snapshot()
                    return
            time.sleep(0.5)
        raise RuntimeError(f"{started.name} was not ready within {timeout_s:.0f} s:\n"
                           f"{started.log_tail()}")

    def stop(self, started: Started) -> None:
        started.snapshot()
        if started.popen.poll() is None:
            _signal(started.popen.pid, started.stop_signal)
            try:
                started.popen.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                _signal(started.popen.pid, signal.SIGKILL)
                started.popen.wait()
        # Anything of its tree still alive (a pool process whose parent was killed): kill it.
        deadline = time.monotonic() + 5
        while any(_same_process(*p) for p in started.tree) and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid, start in started.tree:
            if _same_process(pid, start):
                _signal(pid, signal.SIGKILL)
        if started in self.started:
            self.started.remove(started)

    def stop_all(self) -> None:
        # Ignore further Ctrl-C / SIGTERM while cleaning up: every wait here is bounded.
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread
                signal.signal(sig, signal.SIG_IGN)
        # Newest first: stacks and API servers before the Redis servers they use.
        for started in reversed(list(self.started)):
            with contextlib.suppress(Exception):
                self.stop(started)
        shutil.rmtree(self.workdir, ignore_errors=True)

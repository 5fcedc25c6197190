"""`make run`: Redis (reused or private), the API, a worker, beat and Flower, stopped together.

Every child's output is shown with a ``[name]`` prefix. Ctrl-C or SIGTERM stops everything and
exits 0; a child that exits on its own stops everything else and exits 1.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, NoReturn
from urllib.parse import urlsplit

# Run as `python scripts/run.py`, sys.path[0] is scripts/; `core` needs the repo root.
# (A bare sys.path.insert is what lets the imports below stay E402-clean.)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.config import DEV_API_KEY, DEV_WEBHOOK_SECRET, ConfigError, Settings
from core.localredis import free_port, redis_answers, start_redis
from core.server import DEFAULT_SERVER, SERVERS, api_command, listen_queue_limit
from tasks import WORKER_ARGS
from tasks.webhook_secrets import bootstrap_allowed

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_FLOWER_AUTH = "vigil:vigil-dev"
STATE_DIR = ROOT / ".vigil"
# Prometheus multiprocess files of the API and the workers, emptied at every start (stale
# files of an earlier run would be added to this run's counters).
PROMETHEUS_DIR = STATE_DIR / "prometheus"
STOP_TIMEOUT_S = 10.0
READY_TIMEOUT_S = 120.0
LOCAL_HOSTS = ("127.0.0.1", "localhost")

# One lock for every line written, so lines from different children never interleave.
# Reentrant: the signal handler prints on the main thread, possibly mid-say().
_print_lock = threading.RLock()


def say(message: str = "", *, stream: IO[str] | None = None) -> None:
    with _print_lock:
        print(message, file=stream or sys.stdout, flush=True)


def die(message: str, code: int = 2) -> NoReturn:
    say(f"vigil: {message}", stream=sys.stderr)
    raise SystemExit(code)


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        die(f"{name}={raw!r} is not a valid port number")


def executable(name: str) -> str:
    """The venv's copy first (`make run` may be used without activating the venv), then PATH."""
    # Not resolve(): the venv's python is a symlink to the system one, whose bin has no celery.
    candidate = Path(sys.executable).parent / name
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        die(f"cannot find {name!r} next to {sys.executable} or on PATH; run `make install`")
    return found


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@dataclass
class Child:
    """A child whose output is relayed line by line. With ``hold`` set, its lines that are not
    JSON (a server's start-up banner) are held back until release(): dropped once the stack
    answers, shown if the child exits before (they say why it failed)."""
    name: str
    proc: subprocess.Popen[str]
    hold: bool = False
    reader: threading.Thread = field(init=False)
    held: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.reader = threading.Thread(target=self._pump, name=f"pump-{self.name}", daemon=True)
        self.reader.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        prefix = f"[{self.name}]"
        for line in self.proc.stdout:
            text = f"{prefix} {line.rstrip()}"
            with _print_lock:
                if self.hold and not line.startswith("{"):
                    self.held.append(text)
                else:
                    say(text)

    def release(self, *, show: bool) -> None:
        if show:
            self.reader.join(timeout=2)  # the rest of a dead child's output
        with _print_lock:
            if show:
                for text in self.held:
                    say(text)
            self.held.clear()
            self.hold = False


class Supervisor:
    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.children: list[Child] = []
        self.redis: subprocess.Popen[bytes] | None = None
        self.stopping = False  # set by the first SIGINT/SIGTERM
        self.hurry = False  # set by a second one: skip the grace period

    def on_signal(self, signum: int, _frame: FrameType | None) -> None:
        # Only set flags: the main loop does the work, so a signal never lands mid-Popen.
        if self.stopping:
            self.hurry = True
            return
        self.stopping = True
        say(f"\nvigil: {signal.Signals(signum).name} received, stopping everything...")

    def spawn(self, name: str, cmd: list[str], extra_env: dict[str, str] | None = None,
              nice: int = 0, hold: bool = False) -> None:
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env={**self.env, **(extra_env or {})},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            bufsize=1,
            start_new_session=False,
        )
        if nice:
            os.setpriority(os.PRIO_PROCESS, proc.pid, nice)
        self.children.append(Child(name, proc, hold))

    def first_exited(self) -> Child | None:
        return next((c for c in self.children if c.proc.poll() is not None), None)

    def stop_all(self) -> None:
        alive = [c for c in self.children if c.proc.poll() is None]
        for child in alive:
            _signal(child.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while any(c.proc.poll() is None for c in alive) and time.monotonic() < deadline:
            if self.hurry:
                break
            time.sleep(0.1)
        for child in alive:
            if child.proc.poll() is None:
                say(f"vigil: {child.name} did not stop within {STOP_TIMEOUT_S:.0f}s, killing it")
                # SIGKILL leaves no chance to reap server/Celery pool processes: kill them too.
                for pid in [*_descendants(child.proc.pid), child.proc.pid]:
                    _signal(pid, signal.SIGKILL)
                child.proc.wait()
        for child in self.children:
            child.reader.join(timeout=2)
        self.stop_redis()

    def stop_redis(self) -> None:
        if self.redis is None:
            return  # not ours: leave it running
        # Ctrl-C reaches redis too (same process group) and it may already be gone.
        if self.redis.poll() is None:
            # SIGTERM lets redis flush its append-only file before exiting.
            self.redis.terminate()
            try:
                self.redis.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.redis.kill()
                self.redis.wait()
        say("vigil: stopped the private redis-server")


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # already gone
        os.kill(pid, sig)


def _descendants(pid: int) -> list[int]:
    """Every process below pid, from /proc (Linux); an empty list elsewhere."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # The command name in parentheses may hold spaces: split after its closing ')'.
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    found: list[int] = []
    todo = [pid]
    while todo:
        kids = parents.get(todo.pop(), [])
        found.extend(kids)
        todo.extend(kids)
    return found


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"code {code}"


def choose_redis(url: str, sup: Supervisor) -> str:
    """Use the Redis at url if it answers; else start a private one and return its URL."""
    if redis_answers(url):
        return url
    parts = urlsplit(url)
    try:
        wanted = parts.port or 6379
    except ValueError:
        wanted = 6379  # malformed port: let free_port() pick
    local = (parts.hostname or "") in LOCAL_HOSTS
    port = wanted if local and port_is_free(wanted) else free_port()
    sup.redis = start_redis(port, STATE_DIR / "redis")
    started = f"redis://127.0.0.1:{port}/0"
    say(f"vigil: no Redis answered at {url}; started a private redis-server at {started} "
        f"(data in {STATE_DIR / 'redis'})")
    return started


def sentinel_description(settings: Settings) -> str:
    """The banner's Redis line under Sentinel: the primary's name and who is asked for it."""
    asked = ",".join(f"{host}:{port}" for host, port in settings.redis_sentinels)
    return f"primary {settings.redis_sentinel_master!r} named by the sentinels {asked}"


def wait_ready(sup: Supervisor, port: int, workers: int, timeout_s: float = READY_TIMEOUT_S) -> bool:
    """Wait until the API's /readyz counts ``workers`` workers, so that the banner's curl
    gets a verdict at once. False if something stopped meanwhile (the main loop says what);
    after timeout_s, says what is missing and goes on (the workers may still come up)."""
    say("vigil: waiting for the API and the workers to answer...")
    deadline = time.monotonic() + timeout_s
    last: dict = {}
    while not sup.stopping and sup.first_exited() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as answer:
                last = json.load(answer)
        except urllib.error.HTTPError as exc:  # 503 while unready: its body says why
            with contextlib.suppress(ValueError):
                last = json.load(exc)
        except (OSError, ValueError):
            pass  # the API is not listening yet
        if last.get("workers", 0) >= workers:
            return True
        if time.monotonic() > deadline:
            say(f"vigil: after {timeout_s:.0f} s, not everything answers yet ({last or 'no API'}); "
                "going on", stream=sys.stderr)
            return True
        time.sleep(0.25)
    return False


def banner(settings: Settings, *, port: int, flower_port: int, flower_auth: str,
           redis_url: str) -> str:
    api = f"http://127.0.0.1:{port}"
    key = DEV_API_KEY if settings.using_dev_key else "<your-api-key>"
    body = '{"event_type":"checkout","payload":{"amount":42.5},"timestamp":"2026-11-23T12:00:00Z"}'
    curl = (f"curl -s -X POST {api}/v1/events/validate -H 'Authorization: Bearer {key}' "
            f"-H 'Content-Type: application/json' -d '{body}'")
    lines = [
        "",
        "=" * 72,
        "Vigil is running",
        f"  API        {api}",
        f"  API docs   {api}/docs",
        f"  Web page   {api}/ui  (sign in with an API key)",
        f"  Flower     http://127.0.0.1:{flower_port}  (login {flower_auth})",
        f"  Metrics    {api}/metrics  (API and workers; Flower's own at "
        f"http://127.0.0.1:{flower_port}/metrics)",
        f"  Redis      {redis_url}",
    ]
    if settings.store_url:  # VIGIL_STORE_URL: the store is elsewhere (a cluster, docs/cluster.md)
        cluster = " (Redis Cluster)" if settings.store_cluster else ""
        lines.append(f"  Store      {settings.store_url}{cluster}")
    if settings.using_dev_key:
        lines.append(f"  API key    {DEV_API_KEY}  -- WARNING: development only, "
                     "set VIGIL_API_KEYS for anything else")
    else:
        lines.append("  API keys   from VIGIL_API_KEYS")
    create = "`vigil webhook-secret` (POST /v1/webhooks/secret)"
    if not bootstrap_allowed(settings):  # several tenants: never one secret for all
        lines.append(f"  Webhooks   signed with each tenant's own secret; create it: {create}")
    elif DEV_WEBHOOK_SECRET in settings.webhook_secrets:
        lines.append(f"  Webhooks   signed with the development secret {DEV_WEBHOOK_SECRET} "
                     f"until the tenant creates its own: {create}")
    else:
        lines.append("  Webhooks   signed with the secret from VIGIL_WEBHOOK_SECRET until the "
                     f"tenant creates its own: {create}")
    lines += [
        "",
        "Try it:",
        f"  {curl}",
        "",
        "Ctrl-C stops everything.",
        "=" * 72,
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    redis_url = os.environ.get("REDIS_URL", "").strip() or DEFAULT_REDIS_URL
    port = env_int("PORT", 8000)
    flower_port = env_int("FLOWER_PORT", 5555)
    flower_auth = os.environ.get("FLOWER_BASIC_AUTH", "").strip() or DEFAULT_FLOWER_AUTH

    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        die(str(exc))

    # Beat's schedule file only remembers when each periodic task last ran (every task here
    # runs every few seconds or minutes); one left half-written by a killed beat makes the
    # next beat die at start (EOFError), so each run starts without it.
    for stale in STATE_DIR.glob("celerybeat-schedule*"):
        stale.unlink()
    # Resolve every executable before starting anything, so a missing one leaves nothing behind.
    # API_SERVER picks another server for benchmarks/servers.py (core/server.py).
    server = os.environ.get("API_SERVER", "").strip() or DEFAULT_SERVER
    if server not in SERVERS:
        die(f"API_SERVER={server!r} is not one of {', '.join(SERVERS)}")
    api_bin = Path(executable(server.partition("-")[0])).parent
    celery = executable("celery")
    # --quiet: no Celery banners (config, queues, task list) before Vigil's own lines. Beat
    # logs at WARNING: at INFO it says "Sending due task" for every sweep (about 24 lines a
    # minute while idle); the workers' lines about those sweeps are DEBUG (tasks.observability).
    commands: list[tuple[str, list[str]]] = [
        ("api", api_command(server, api_bin, f"127.0.0.1:{port}")),
        *((role, [celery, "-A", "tasks.worker", "--quiet", "worker", "--loglevel", "INFO", "-E",
                  "--hostname", f"{role}@%h", *args]) for role, args in WORKER_ARGS.items()),
        ("beat", [celery, "-A", "tasks.worker", "--quiet", "beat", "--loglevel", "WARNING",
                  "--schedule", str(STATE_DIR / "celerybeat-schedule")]),
        ("flower", [celery, "-A", "tasks.worker", "flower", "--address=127.0.0.1",
                    f"--port={flower_port}", f"--basic-auth={flower_auth}",
                    "--logging=warning"]),  # not its 25-line banner (the task list)
    ]
    limit = listen_queue_limit()
    if limit is not None:
        say(f"vigil: the kernel allows {limit} waiting connections (net.core.somaxconn), fewer "
            "than the API's listen queue asks for: it gets that, and recovers more slowly "
            "from an overload. To raise it: sudo sysctl -w net.core.somaxconn=1024",
            stream=sys.stderr)
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(PROMETHEUS_DIR, ignore_errors=True)
    PROMETHEUS_DIR.mkdir()
    # The API and the workers share the directory, so the API's /metrics adds up every
    # API worker and every Celery pool process; beat and Flower stay out of it.
    metrics_env = {"PROMETHEUS_MULTIPROC_DIR": str(PROMETHEUS_DIR)}
    with_metrics = {"api", *WORKER_ARGS}

    env = dict(os.environ)
    # Children import api/ and tasks/ from the repo root whatever the caller's cwd was,
    # and flush each line at once so the prefixed output is live.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    if os.geteuid() == 0:
        # Each worker would print Celery's 8-line SecurityWarning about it: said once here.
        say("vigil: running as root; the Celery workers would rather not (use a normal user "
            "for anything but trying Vigil out)", stream=sys.stderr)
        env["PYTHONWARNINGS"] = ",".join(filter(None, [
            env.get("PYTHONWARNINGS"), "ignore:You're running the worker with superuser"]))
    sup = Supervisor(env)
    signal.signal(signal.SIGINT, sup.on_signal)
    signal.signal(signal.SIGTERM, sup.on_signal)

    exit_code = 0
    try:
        if settings.redis_sentinels:
            # The store is whatever primary the sentinels name: never a private one here.
            redis_url = sentinel_description(settings)
        else:
            try:
                redis_url = env["REDIS_URL"] = choose_redis(redis_url, sup)
            except RuntimeError as exc:
                die(str(exc))
        for name, cmd in commands:
            if sup.stopping:
                break
            # Beat and Flower yield the CPU to requests as the workers do (tasks/worker.py): under
            # load Flower digests every task event, and shared cores are the API's first.
            # The API server's start-up lines (uWSGI printed some 40) are held back: they
            # would bury the banner below; shown only if it fails to start.
            sup.spawn(name, cmd, metrics_env if name in with_metrics else None,
                      nice=settings.worker_nice if name in ("beat", "flower") else 0,
                      hold=name == "api")
        if not sup.stopping and wait_ready(sup, port, workers=len(WORKER_ARGS)):
            for child in sup.children:
                child.release(show=False)
            say(banner(settings, port=port, flower_port=flower_port, flower_auth=flower_auth,
                       redis_url=redis_url))
        while not sup.stopping:
            exited = sup.first_exited()
            if exited is not None:
                exited.release(show=True)
                say(f"vigil: {exited.name} exited by itself with "
                    f"{describe_exit(exited.proc.returncode)}; stopping everything",
                    stream=sys.stderr)
                exit_code = 1
                sup.stopping = True
                break
            time.sleep(0.2)
    finally:
        # Also on errors while starting: never leave children or a private redis behind.
        sup.stop_all()
    if exit_code == 0:
        say("vigil: stopped")
    return exit_code


if __name__ == "__main__":
    sys.exit(main())

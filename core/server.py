"""The API server's command line, as `make run`, `make bench` and the tests start it (the
Docker image's CMD spells out the same, and compose raises the kernel's limit for it).

uWSGI (uwsgi.ini) serves the API: docs/server.md has the measurements and the reasons.
granian (WSGI interface; `API_SERVER=granian make run`) and gunicorn (sync and gthread
workers) are here for `make bench-servers`, which compares them under the same settings.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
UWSGI_INI = ROOT / "uwsgi.ini"
SOMAXCONN = Path("/proc/sys/net/core/somaxconn")

# One set of settings for every server, so the comparison is like for like.
PROCESSES = 2  # worker processes, one request at a time each (uwsgi.ini: processes = 2)
# Connections waiting to be accepted. With 100 (uWSGI's default), an overload filled the queue
# and the kernel dropped handshakes; those clients' requests arrived seconds late (TCP backoff).
LISTEN = 1024
TIMEOUT_S = 30  # uWSGI's harakiri, gunicorn's --timeout; granian has no per-request timeout
# Granian: how long SIGTERM waits for a worker before killing it. Under make run's and Docker's
# 10 s. A worker still loading the app when SIGTERM comes was still running 15 s later in 3 of
# 7 tries (signalled at the first answer); every answer of the API takes well under this.
GRANIAN_KILL_TIMEOUT_S = 8
DEFAULT_SERVER = "uwsgi"
SERVERS = ("granian", "uwsgi", "gunicorn-sync", "gunicorn-gthread")


def listen_queue_limit(wanted: int = LISTEN, somaxconn: Path = SOMAXCONN) -> int | None:
    """The kernel's limit on a listen queue where it is below `wanted`, else None.

    The kernel caps a longer queue silently (granian, gunicorn); uWSGI refuses to start
    instead, so its command asks for the limit. Linux before 5.4 allows 128 by default.
    """
    try:
        allowed = int(somaxconn.read_text())
    except (OSError, ValueError):  # not Linux
        return None
    return allowed if allowed < wanted else None


def uwsgi_command(uwsgi: str, bind: str, module: str = "api.wsgi:app") -> list[str]:
    """uWSGI serving `module` over HTTP on `bind` with uwsgi.ini, its listen queue
    lowered to the kernel's limit where that is lower (a later option overrides the ini's)."""
    command = [uwsgi, "--ini", str(UWSGI_INI), "--http-socket", bind, "--module", module]
    limit = listen_queue_limit()
    return command if limit is None else [*command, "--listen", str(limit)]


def api_command(server: str, bin_dir: Path, bind: str, module: str = "api.wsgi:app") -> list[str]:
    """`module` served on `bind` by `server` (one of SERVERS) with the settings above; the
    executables are looked up in bin_dir."""
    host, _, port = bind.rpartition(":")
    # "module:factory()" (uWSGI's spelling) is granian's --factory.
    factory = module.endswith("()")
    backlog = str(listen_queue_limit() or LISTEN)
    if server == "granian":
        return [str(bin_dir / "granian"), "--interface", "wsgi", "--host", host or "0.0.0.0",
                "--port", port, "--workers", str(PROCESSES),
                # One request at a time per process, as with uWSGI; one Rust I/O thread.
                "--blocking-threads", "1", "--runtime-threads", "1", "--backlog", backlog,
                # A worker that dies is replaced (uWSGI's master did it; granian does not by
                # default). SIGTERM lets requests in flight finish, for this long at most.
                "--respawn-failed-workers", "--workers-kill-timeout", str(GRANIAN_KILL_TIMEOUT_S),
                # No access log (the API logs one JSON line per request itself) and nothing at
                # INFO: the start-up lines would bury `make run`'s banner.
                "--no-access-log", "--log-level", "warning",
                *(["--factory", module[:-2]] if factory else [module])]
    if server == "uwsgi":
        return uwsgi_command(str(bin_dir / "uwsgi"), bind, module)
    if server.startswith("gunicorn-"):
        worker = server.removeprefix("gunicorn-")
        return [str(bin_dir / "gunicorn"), "--bind", bind, "--workers", str(PROCESSES),
                "--worker-class", worker, "--threads", "1", "--backlog", backlog,
                "--timeout", str(TIMEOUT_S),
                # The app built once before the fork, as uWSGI does (no lazy-apps).
                "--preload",
                # GET /v1/jobs?ids= with 100 ids is a 3.4 KB request line: gunicorn's default
                # limit is 4,094 bytes, its largest 8,190.
                "--limit-request-line", "8190",
                # No access log, nothing at INFO (start-up lines).
                "--log-level", "warning", "--no-control-socket", module]
    raise ValueError(f"unknown API server {server!r}; one of {', '.join(SERVERS)}")

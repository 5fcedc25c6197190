"""The API server's command line: uWSGI with uwsgi.ini, as `make run`, `make bench` and the
tests start it (the Docker image's CMD spells out the same, and compose raises the kernel's
limit for it)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
UWSGI_INI = ROOT / "uwsgi.ini"
SOMAXCONN = Path("/proc/sys/net/core/somaxconn")


def listen_queue_limit(ini: Path = UWSGI_INI, somaxconn: Path = SOMAXCONN) -> int | None:
    """The kernel's limit on a listen queue where it is below uwsgi.ini's `listen`, else None.

    uWSGI refuses to start where the kernel allows fewer waiting connections than asked for
    (Linux before 5.4 allows 128 by default); elsewhere the kernel caps the queue silently.
    """
    asked = re.search(r"^listen\s*=\s*(\d+)", ini.read_text(), re.MULTILINE)
    try:
        allowed = int(somaxconn.read_text())
    except (OSError, ValueError):  # not Linux
        return None
    return allowed if asked and allowed < int(asked[1]) else None


def uwsgi_command(uwsgi: str, bind: str, module: str = "api.wsgi:app") -> list[str]:
    """uWSGI serving `module` over HTTP on `bind` with uwsgi.ini, its listen queue lowered to
    the kernel's limit where that is lower (a later option overrides the ini's)."""
    command = [uwsgi, "--ini", str(UWSGI_INI), "--http-socket", bind, "--module", module]
    limit = listen_queue_limit()
    return command if limit is None else [*command, "--listen", str(limit)]


# --- other servers, for benchmarks/servers.py (issue 18) -----------------------------------

# uwsgi.ini's settings, restated for the other servers so a comparison is like for like.
PROCESSES = 2  # uwsgi.ini: processes = 2, one request at a time each (no threads)
LISTEN = 1024  # uwsgi.ini: listen
TIMEOUT_S = 30  # uwsgi.ini: harakiri
SERVERS = ("uwsgi", "gunicorn-sync", "gunicorn-gthread", "granian")


def api_command(server: str, bin_dir: Path, bind: str, module: str = "api.wsgi:app") -> list[str]:
    """`module` served on `bind` by `server` (one of SERVERS) with uwsgi.ini's processes,
    listen queue and request timeout; the executables are looked up in bin_dir."""
    host, _, port = bind.rpartition(":")
    backlog = str(listen_queue_limit() or LISTEN)
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
                # No access log (the API logs its own JSON line), nothing at INFO (start-up).
                "--log-level", "warning", "--no-control-socket", module]
    if server == "granian":
        return [str(bin_dir / "granian"), "--interface", "wsgi", "--host", host or "127.0.0.1",
                "--port", port, "--workers", str(PROCESSES), "--blocking-threads", "1",
                "--runtime-threads", "1", "--backlog", backlog, "--no-access-log",
                "--log-level", "warning", module]
    raise ValueError(f"unknown API server {server!r}; one of {', '.join(SERVERS)}")

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

"""The API server's command (core/server.py): uWSGI as the Docker image runs it; the listen
queue lowered only where the kernel allows fewer; uWSGI's for the comparison (no server run)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from core import server

ROOT = Path(__file__).resolve().parents[2]


def test_the_listen_queue_is_lowered_only_where_the_kernel_allows_fewer(tmp_path):
    for allowed, expected in ((128, 128), (1024, None), (4096, None)):
        somaxconn = tmp_path / f"somaxconn-{allowed}"
        somaxconn.write_text(f"{allowed}\n")
        assert server.listen_queue_limit(1024, somaxconn) == expected
    assert server.listen_queue_limit(1024, tmp_path / "absent") is None  # not Linux


def test_the_docker_image_runs_the_default_command(monkeypatch):
    monkeypatch.setattr(server, "listen_queue_limit", lambda: None)
    cmd = re.search(r"^CMD (\[.*?\])$", (ROOT / "Dockerfile").read_text().replace("\\\n", ""),
                    re.MULTILINE | re.DOTALL)
    assert cmd, "no exec-form CMD in the Dockerfile"
    expected = server.api_command(server.DEFAULT_SERVER, Path("/x"), "0.0.0.0:8000")
    # The image runs from the project's folder: its files by their relative paths.
    relative = [str(Path(x).relative_to(ROOT)) if x.startswith(f"{ROOT}/") else x
                for x in expected[1:]]
    assert json.loads(cmd[1]) == [Path(expected[0]).name, *relative]


def test_granian_serves_the_api_quietly_with_the_kernels_queue(monkeypatch):
    monkeypatch.setattr(server, "listen_queue_limit", lambda: 128)
    cmd = server.api_command("granian", Path("/venv/bin"), "127.0.0.1:8000")
    assert cmd[:7] == ["/venv/bin/granian", "--interface", "wsgi", "--host", "127.0.0.1",
                       "--port", "8000"]
    assert cmd[cmd.index("--backlog") + 1] == "128"
    assert cmd[cmd.index("--log-level") + 1] == "warning" and "--no-access-log" in cmd
    assert cmd[-1] == "api.wsgi:app"
    # uWSGI's spelling of an app factory, as make bench's reference (b) is named.
    assert server.api_command("granian", Path("/b"), ":1", "m:make()")[-2:] == ["--factory",
                                                                               "m:make"]


def test_the_uwsgi_command_serves_its_ini_and_overrides_its_queue_after_it(monkeypatch):
    monkeypatch.setattr(server, "listen_queue_limit", lambda: None)
    assert server.uwsgi_command("/venv/bin/uwsgi", "127.0.0.1:8000") == [
        "/venv/bin/uwsgi", "--ini", str(server.UWSGI_INI), "--http-socket", "127.0.0.1:8000",
        "--module", "api.wsgi:app"]
    monkeypatch.setattr(server, "listen_queue_limit", lambda: 128)
    # After --ini: uWSGI takes the last value given.
    assert server.uwsgi_command("uwsgi", ":1", "m:app")[-4:] == ["--module", "m:app",
                                                                 "--listen", "128"]
    # The ini asks for the same queue as the other servers get.
    assert re.search(rf"^listen = {server.LISTEN}$", server.UWSGI_INI.read_text(), re.MULTILINE)


def test_every_server_has_a_command():
    for name in server.SERVERS:
        assert server.api_command(name, Path("/b"), "127.0.0.1:1")[0].startswith("/b/")

"""The API's uWSGI command: uwsgi.ini as it is, unless the kernel allows a shorter listen
queue than it asks for, where uWSGI would refuse to start (no server needed)."""

from __future__ import annotations

from core import server


def test_the_listen_queue_is_lowered_only_where_the_kernel_allows_fewer(tmp_path):
    ini = tmp_path / "uwsgi.ini"
    ini.write_text("[uwsgi]\n; listen = 5 (a comment)\nlisten = 1024\n")
    for allowed, expected in ((128, 128), (1024, None), (4096, None)):
        somaxconn = tmp_path / f"somaxconn-{allowed}"
        somaxconn.write_text(f"{allowed}\n")
        assert server.listen_queue_limit(ini, somaxconn) == expected
        # The project's own uwsgi.ini asks for 1,024 too.
        assert server.listen_queue_limit(server.UWSGI_INI, somaxconn) == expected
    assert server.listen_queue_limit(ini, tmp_path / "absent") is None  # not Linux
    bare = tmp_path / "bare.ini"
    bare.write_text("[uwsgi]\nprocesses = 2\n")
    assert server.listen_queue_limit(bare, tmp_path / "somaxconn-128") is None


def test_the_command_serves_uwsgi_ini_and_overrides_its_queue_after_it(monkeypatch):
    monkeypatch.setattr(server, "listen_queue_limit", lambda: None)
    assert server.uwsgi_command("/venv/bin/uwsgi", "127.0.0.1:8000") == [
        "/venv/bin/uwsgi", "--ini", str(server.UWSGI_INI), "--http-socket", "127.0.0.1:8000",
        "--module", "api.wsgi:app"]
    monkeypatch.setattr(server, "listen_queue_limit", lambda: 128)
    # After --ini: uWSGI takes the last value given.
    assert server.uwsgi_command("uwsgi", ":1", "m:app")[-4:] == ["--module", "m:app",
                                                                 "--listen", "128"]

"""The store's Lua scripts, read from tasks/store/lua/*.lua once, at import.

A script is named by its file's stem. Lua shared by several scripts (a function they call)
has a file of its own and is prepended to each script that calls it: ``text("counted",
"create_job")``. The modules that run a script keep its text in a module constant and hand
it to redis-py (register_script: EVALSHA, the text sent only when Redis lacks it).
"""

from __future__ import annotations

from pathlib import Path

_SCRIPTS = {path.stem: path.read_text(encoding="utf-8")
            for path in sorted((Path(__file__).parent / "lua").glob("*.lua"))}


def text(*names: str) -> str:
    """The scripts (or shared functions) named, in this order, as one script's text."""
    return "".join(_SCRIPTS[name] for name in names)

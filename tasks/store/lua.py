"""The store's Lua scripts, read from tasks/store/lua/*.lua once, at import.

A script is named by its file's stem. Lua shared by several scripts (a function they call)
has a file of its own and is prepended to each script that calls it: ``text("counted",
"create_job")``. The modules that run a script keep its text in a module constant and hand
it to run() (redis-py's register_script: EVALSHA, the text sent only when Redis lacks it).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from redis.cluster import ClusterPipeline

from core.keys import check_one_slot

_SCRIPTS = {path.stem: path.read_text(encoding="utf-8")
            for path in sorted((Path(__file__).parent / "lua").glob("*.lua"))}


def text(*names: str) -> str:
    """The scripts (or shared functions) named, in this order, as one script's text."""
    return "".join(_SCRIPTS[name] for name in names)


def run(r: Any, script: str, keys: Sequence[str], args: Sequence[Any] = ()) -> Any:
    """Run ``script`` on ``r`` (or queue it, ``r`` being a pipeline) with ``keys`` and ``args``.

    The keys are checked to be in one cluster slot first (core.keys.check_one_slot), on one
    Redis too: a script a Redis Cluster would refuse fails every test that runs it, not only
    those run against a cluster. redis-py's cluster pipeline refuses EVALSHA (it cannot load
    a script on the slot's node first): EVAL sends the text there, which Redis compiles once
    and caches all the same.
    """
    check_one_slot(keys)
    if isinstance(r, ClusterPipeline):
        return r.execute_command("EVAL", script, len(keys), *keys, *args)
    return r.register_script(script)(keys=keys, args=args)

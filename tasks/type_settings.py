"""Per event type settings: a tenant's overrides of the environment's detection settings,
versioned, with an audit trail; verdicts name the version they were judged with."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
import redis

from core import keys
from core.config import ConfigError, Settings
from tasks.store import lua
from tasks.store.encoding import dumps, now

log = logging.getLogger(__name__)
LOG_KEPT = 100


@dataclass(frozen=True)
class TypeSettings:
    """An event type's overrides; version 0: none ever set (the environment's settings)."""
    version: int
    overrides: dict[str, Any]
    updated_at: float | None = None


def load(r: redis.Redis, tenant: str, event_type: str) -> TypeSettings:
    raw = r.hgetall(keys.type_settings(tenant, event_type))
    if not raw:
        return TypeSettings(0, {})
    return TypeSettings(int(raw[b"version"]), orjson.loads(raw[b"overrides"]),
                        float(raw[b"updated_at"]))


def effective(r: redis.Redis, cfg: Settings, tenant: str, event_type: str
              ) -> tuple[Settings, int]:
    """The settings the type is judged with, and their version. Overrides were checked when
    they were set; should the environment have changed since so that they no longer hold
    together, the environment's settings judge (version 0), with a warning in the log."""
    return applied(cfg, load(r, tenant, event_type), tenant, event_type)


def applied(cfg: Settings, found: TypeSettings, tenant: str, event_type: str
            ) -> tuple[Settings, int]:
    """``cfg`` with the type's overrides ``found`` (as effective() reads them)."""
    try:
        return cfg.for_type(found.overrides), found.version
    except ConfigError:
        log.warning("per-type settings no longer valid; judged with the environment's",
                    exc_info=True, extra={"tenant": tenant, "event_type": event_type,
                                          "settings_version": found.version})
        return cfg, 0


# KEYS: settings, log. ARGV: overrides JSON, now, kept log entries, expected version.
# A new version only if the overrides change, and only over the version the caller read
# (two concurrent PUTs: the second is refused, not silently lost).
_SAVE = lua.text("type_settings_save")


class Conflict(Exception):
    """The settings changed since they were read."""


def save(r: redis.Redis, tenant: str, event_type: str, overrides: Mapping[str, Any],
         read_version: int) -> TypeSettings:
    """Store the type's overrides (all of them: what is not named reverts to the
    environment's) as a new version; unchanged overrides keep their version. Raises
    Conflict if another change landed after ``read_version`` was read."""
    at = now()
    body = dumps(dict(sorted(overrides.items())))
    version = int(r.register_script(_SAVE)(
        keys=[keys.type_settings(tenant, event_type), keys.type_settings_log(tenant, event_type)],
        args=[body, repr(at), LOG_KEPT, read_version]))
    if version < 0:
        raise Conflict(f"the settings of {event_type!r} changed while this change was made")
    return load(r, tenant, event_type)


def changes(r: redis.Redis, tenant: str, event_type: str, limit: int = 20) -> list[dict]:
    """The type's latest settings changes, newest first."""
    return [orjson.loads(raw) for raw in
            r.lrange(keys.type_settings_log(tenant, event_type), 0, limit - 1)]

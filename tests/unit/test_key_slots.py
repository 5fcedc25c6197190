"""Hash tags (core/keys.py): a tenant's keys share its slot, an event type's keys the type's,
and a script given keys of two slots is refused before anything is sent."""

from __future__ import annotations

import inspect

import pytest

from core import keys

ARGS = {"tenant": "acme", "event_type": "pay:card", "job_id": "0" * 32, "batch_id": "b:1:0",
        "key_digest": "ab" * 32, "window": 1790000000, "lane": "jobs"}


def named_keys() -> dict[str, str]:
    """Every key function of core.keys (scheme 2) called with sample arguments."""
    found = {}
    for name, fn in inspect.getmembers(keys, inspect.isfunction):
        if fn.__module__ != keys.__name__ or name.startswith(("legacy_", "_")) or name in (
                "tenant_tag", "type_tag", "slot", "check_one_slot"):
            continue
        params = list(inspect.signature(fn).parameters)
        found[name] = (params, fn(*(ARGS[p] for p in params)))
    return found


def test_every_key_of_a_type_is_in_its_slot_and_every_key_of_a_tenant_in_the_tenants():
    type_slot = keys.slot(keys.type_tag("acme", "pay:card"))
    tenant_slot = keys.slot(keys.tenant_tag("acme"))
    checked = {"type": 0, "tenant": 0}
    for name, (params, key) in named_keys().items():
        if "event_type" in params:
            assert keys.slot(key) == type_slot, name
            checked["type"] += 1
        elif "tenant" in params:
            assert keys.slot(key) == tenant_slot, name
            checked["tenant"] += 1
        elif name in ("pending_events", "judged", "judging_ms"):  # tasks.eta's, together
            assert keys.slot(key) == keys.slot("{work}"), name
    assert checked["type"] >= 19 and checked["tenant"] >= 14


def test_an_event_type_with_braces_still_keeps_its_keys_in_one_slot():
    # The API's rule allows no braces in an event type; were one to get through, the tag ends
    # at its first '}', the same for every key of the type.
    for event_type in ("a}b", "{x}", "}", "a{b}c"):
        names = [keys.baseline("acme", event_type), keys.history("acme", event_type),
                 keys.batch_applied("acme", event_type, "j:t:0"),
                 keys.type_counts("acme", event_type), keys.model("acme", event_type)]
        keys.check_one_slot(names)
        assert len(set(names)) == len(names)  # still distinct names


def test_keys_of_two_slots_in_one_call_are_refused():
    keys.check_one_slot([keys.job("acme", "1"), keys.recent_jobs("acme"),
                         keys.rate_window("acme", 1)])
    with pytest.raises(keys.CrossSlot, match="different cluster slots"):
        keys.check_one_slot([keys.job("acme", "1"), keys.pending_events()])
    with pytest.raises(keys.CrossSlot):
        keys.check_one_slot([keys.baseline("acme", "a"), keys.baseline("acme", "b")])


def test_the_store_refuses_a_cross_slot_script_before_sending_it():
    import redis

    from core.localredis import free_port
    from tasks.store import lua

    nobody = redis.Redis(port=free_port(), socket_connect_timeout=0.2)  # sending would fail
    with pytest.raises(keys.CrossSlot):
        lua.run(nobody, "return 1", [keys.job("acme", "1"), keys.pending_events()])

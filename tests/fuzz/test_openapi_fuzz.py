"""Property-based fuzzing of every operation in /openapi.json: no input may cause a 5xx.

Schemathesis generates requests from the OpenAPI document (valid ones and ones that break it)
and sends them in process (WSGI) to the real app, backed by the test session's Redis and real
workers; any 5xx fails. Requests carry the alpha test key; the fuzzing app maps that key to a
tenant of its own ("fuzz"), so the jobs and event types it creates stay out of other tests'
listings. Deterministic (derandomized); about a minute.
"""

from __future__ import annotations

import dataclasses
from collections import Counter

import pytest
import schemathesis
from helpers import KEYS
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from core.config import Settings, key_digest

MAX_EXAMPLES = 110  # per operation; hypothesis stops earlier for operations with few inputs
MIN_CASES = 1000
AUTH = {"Authorization": f"Bearer {KEYS['alpha']}"}
CASES: Counter[str] = Counter()


def _schema_app():
    # The OpenAPI document does not depend on settings; requests go to `fuzz_app` below.
    from api import create_app

    return create_app(Settings())


schema = schemathesis.openapi.from_wsgi("/openapi.json", _schema_app())


@pytest.fixture(scope="module")
def fuzz_app(settings, worker):
    from api import create_app

    return create_app(dataclasses.replace(settings, api_keys={key_digest(KEYS["alpha"]): "fuzz"}))


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_no_input_causes_a_server_error(case, fuzz_app):
    CASES[f"{case.method} {case.path}"] += 1
    case.call_and_validate(app=fuzz_app, headers=AUTH, checks=[not_a_server_error])


def test_enough_cases_ran():
    if len(CASES) < len(list(schema.get_all_operations())):
        pytest.skip("only some operations were fuzzed (-k?)")
    print(f"\nfuzz cases: {sum(CASES.values())} over {len(CASES)} operations: {dict(CASES)}")
    assert sum(CASES.values()) >= MIN_CASES, dict(CASES)

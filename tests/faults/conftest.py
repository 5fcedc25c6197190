"""Fixtures of the fault-injection tests: one private stack (Redis, API, workers) per module.

See fault_helpers.py. None of this touches the session fixtures of tests/conftest.py, so
breaking this stack (killing its workers, restarting its Redis) cannot break other tests.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from fault_helpers import FaultStack


@pytest.fixture(scope="module")
def fault_stack_factory(tmp_path_factory) -> Iterator[Callable[..., FaultStack]]:
    """``make(VIGIL_X="...")``: a private stack with these environment overrides (on top of
    fault_helpers' test settings). Every stack made is killed at the end of the module."""
    stacks: list[FaultStack] = []

    def make(**overrides: str) -> FaultStack:
        stacks.append(FaultStack(tmp_path_factory.mktemp("fault-stack"), overrides))
        return stacks[-1]

    yield make
    # Last made, first closed: each stack restores the log levels it found when it started.
    for stack in reversed(stacks):
        stack.close()


@pytest.fixture(scope="module")
def fault_stack(fault_stack_factory) -> FaultStack:
    """A private Redis and the API for this module's tests; tests start and kill the workers
    they need (``stack.ensure_workers("worker")``)."""
    return fault_stack_factory()

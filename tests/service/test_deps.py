"""Tests for service.deps: the route dependencies (the state dependency is a coroutine, so it
needs no thread hop: one of the /predict hot-path changes, see BENCHMARKS.md)."""

from __future__ import annotations

import inspect

from service.deps import get_state


def test_state_dependency_needs_no_thread_hop() -> None:
    # FastAPI runs a plain `def` dependency in its thread pool; a coroutine runs on the loop.
    assert inspect.iscoroutinefunction(get_state)

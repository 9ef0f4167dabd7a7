"""Schema-driven fuzzing: Schemathesis generates requests from the live OpenAPI document (bodies,
query values and paths that fit the schema, and ones that do not) for every operation; none may
get a 5xx.

Schemathesis' pytest loader (``from_fixture``) does not work with pytest 9 yet, so the
generated cases go through a plain Hypothesis ``@given`` inside the test.
"""

from __future__ import annotations

from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from tests.helpers.servers import Server, healthy

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

MAX_EXAMPLES = 200


def test_no_generated_request_gets_a_5xx(hostile_server: Server) -> None:
    schema = schemathesis.openapi.from_url(hostile_server.url + "/openapi.json")
    operations = {f"{op.ok().method.upper()} {op.ok().path}" for op in schema.get_all_operations()}
    assert {"POST /predict", "GET /readyz", "GET /models", "GET /metrics"} <= operations
    strategy = st.one_of(
        schema.as_strategy(GenerationMode.POSITIVE), schema.as_strategy(GenerationMode.NEGATIVE)
    )
    seen: Counter[tuple[str, int]] = Counter()

    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def check(case: schemathesis.Case) -> None:
        response = case.call_and_validate(
            base_url=hostile_server.url, checks=[not_a_server_error], timeout=30
        )
        seen[(f"{case.method} {case.path}", response.status_code)] += 1

    check()
    print(sorted(seen.items()))
    called = {operation for operation, _ in seen}
    assert {"POST /predict", "GET /models"} <= called
    assert all(status < 500 for _, status in seen)
    assert healthy(hostile_server)

"""Property-based requests from the app's own OpenAPI schema (Schemathesis) against the real server: no 5xx."""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode

from facestudio.server import BackgroundServer, create_app
from test_pipeline import new_pipe

EXAMPLES = 15  # per operation and mode: about 300 requests in all


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # Small limits: generated jobs that are valid stay cheap (and stop after two seconds).
    app = create_app(new_pipe(style=True), tmp_path_factory.mktemp("data"), queue_size=4, max_side=64, max_count=2,
                     default_steps=1, job_timeout=2.0, max_upload_bytes=256 * 1024)
    with BackgroundServer(app) as running:
        yield running


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_request_from_the_schema_gets_a_server_error(server, mode):
    operations = schema_operations(server)
    assert len(operations) >= 10

    def refused(response):
        assert response.json()["error"], response.text  # every refusal names its problem

    seen = fuzz(server, mode, operations, refused)
    assert len(seen) == len(operations)
    assert httpx.get(server.url + "/v1/models").status_code == 200


def schema_operations(server) -> list:
    """The operations of the server's own /openapi.json."""
    schema = schemathesis.openapi.from_dict(httpx.get(server.url + "/openapi.json").json())
    return [result.ok() for result in schema.get_all_operations()]


def fuzz(server, mode, operations, refused) -> dict:
    """`EXAMPLES` generated requests per operation in `mode`, none answered 5xx, each refusal checked by
    `refused(response)`; returns the status codes seen per operation (empty for one whose requests cannot
    break its schema: it takes no input)."""
    seen = {}
    for operation in operations:
        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None,
                  derandomize=True)
        def check(case):
            response = case.call_and_validate(base_url=server.url, checks=[not_a_server_error], timeout=30)
            seen.setdefault(operation.label, set()).add(response.status_code)
            if response.status_code >= 400:
                refused(response)

        try:
            check()
        except Unsatisfiable:  # no request that breaks the schema exists for an operation without inputs
            assert mode == GenerationMode.NEGATIVE and not _has_inputs(operation), operation.label
            seen[operation.label] = set()
    return seen


def _has_inputs(operation) -> bool:
    return any(len(list(group)) for group in (operation.path_parameters, operation.query, operation.body))

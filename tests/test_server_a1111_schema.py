"""Property-based requests to the AUTOMATIC1111-compatible routes from the app's OpenAPI schema (Schemathesis)
against the real server: no 5xx, and every refusal in A1111's error shape naming its problem."""

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

EXAMPLES = 15  # per operation and mode


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # Small limits: generated jobs that are valid stay cheap (and stop after two seconds); a request without a
    # size gets this pipeline's side, 64 (A1111 clients often leave the size out).
    pipe = new_pipe(style=True)
    pipe.default_side = 64
    app = create_app(pipe, tmp_path_factory.mktemp("data"), queue_size=4, max_side=64, max_count=2,
                     default_steps=1, job_timeout=2.0, max_upload_bytes=256 * 1024, a1111=True)
    with BackgroundServer(app) as running:
        yield running


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_request_to_the_a1111_routes_gets_a_server_error(server, mode):
    schema = schemathesis.openapi.from_dict(httpx.get(server.url + "/openapi.json").json())
    operations = [result.ok() for result in schema.get_all_operations()]
    operations = [op for op in operations if op.path.startswith(("/sdapi/", "/controlnet/"))]
    assert len(operations) >= 15
    seen = {}
    for operation in operations:
        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None,
                  derandomize=True)
        def check(case):
            response = case.call_and_validate(base_url=server.url, checks=[not_a_server_error], timeout=30)
            seen.setdefault(operation.label, set()).add(response.status_code)
            if response.status_code >= 400:
                problem = response.json()
                assert set(problem) == {"error", "detail", "body", "errors"} and problem["errors"], response.text

        try:
            check()
        except Unsatisfiable:  # no request that breaks the schema exists for an operation without inputs
            assert mode == GenerationMode.NEGATIVE, operation.label
            seen[operation.label] = set()
    assert len(seen) == len(operations)
    if mode == GenerationMode.POSITIVE:  # some generated requests are valid: they ran and were answered
        assert 200 in seen["POST /sdapi/v1/txt2img"], seen
    assert httpx.get(server.url + "/sdapi/v1/progress").json()["state"]["job_count"] == 0

"""Property-based requests to the AUTOMATIC1111-compatible routes from the app's OpenAPI schema (Schemathesis)
against the real server: no 5xx, and every refusal in A1111's error shape naming its problem."""

from __future__ import annotations

import httpx
import pytest
from schemathesis.generation import GenerationMode

from facestudio.server import BackgroundServer, create_app
from test_pipeline import new_pipe
from test_server_schema import fuzz, schema_operations


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
    operations = [op for op in schema_operations(server) if op.path.startswith(("/sdapi/", "/controlnet/"))]
    assert len(operations) >= 15

    def refused(response):
        problem = response.json()
        assert set(problem) == {"error", "detail", "body", "errors"} and problem["errors"], response.text

    seen = fuzz(server, mode, operations, refused)
    assert len(seen) == len(operations)
    if mode == GenerationMode.POSITIVE:  # some generated requests are valid: they ran and were answered
        assert 200 in seen["POST /sdapi/v1/txt2img"], seen
    assert httpx.get(server.url + "/sdapi/v1/progress").json()["state"]["job_count"] == 0

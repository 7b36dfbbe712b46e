"""The small things that must agree: the server's count limit in /openapi.json, /v1/models and a refused
request; `HEAD /`; and per-person CLI options that take comma lists and repeats alike."""

from __future__ import annotations

import httpx
import pytest

from facestudio.cli import build_parser
from facestudio.cli.generate import _check_settings, _listed, _preset_defaults
from facestudio.errors import FaceStudioError
from facestudio.server import BackgroundServer, create_app
from test_pipeline import new_pipe


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    app = create_app(new_pipe(), tmp_path_factory.mktemp("data"), max_count=3, max_side=128)
    with BackgroundServer(app) as running:
        yield running


def test_count_limit_is_the_same_everywhere(server):
    limits = httpx.get(server.url + "/v1/models").json()
    fields = httpx.get(server.url + "/openapi.json").json()["components"]["schemas"]["GenerationRequest"]["properties"]
    assert fields["count"]["maximum"] == limits["max_count"] == 3
    width = [o for o in fields["width"].get("anyOf", [fields["width"]]) if o.get("type") == "integer"][0]
    assert width["maximum"] == limits["max_side"] == 128
    refused = httpx.post(server.url + "/v1/generations", json={"prompt": "x", "count": 4})
    assert 400 <= refused.status_code < 500 and "at most 3" in refused.json()["error"]


def test_head_of_the_page(server):
    head = httpx.head(server.url + "/")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-type"].startswith("text/html")


def _settings(*options):
    args = build_parser().parse_args(["generate", "--prompt", "x", "--base-model", "tiny", "--adapter", "tiny",
                                      "--identity", "a.jpg", "--identity", "b.jpg", *options])
    _preset_defaults(args)  # as the command does first
    return _check_settings(args, None if args.mix is None else _listed(args.mix, "--mix", float))


def test_per_person_options_take_comma_lists_and_repeats_alike():
    listed = _settings("--strength", "0.5,1.5", "--face", "1,0")
    repeated = _settings("--strength", "0.5", "--strength", "1.5", "--face", "1", "--face", "0")
    assert listed == repeated
    assert [p.strength for p in listed.identities] == [0.5, 1.5] and [p.face for p in listed.identities] == [1, 0]
    assert _settings("--mix", "0.25,0.75") == _settings("--mix", "0.25", "--mix", "0.75")
    assert list(_settings("--mix", "0.25", "--mix", "0.75").mix) == [0.25, 0.75]
    assert [p.strength for p in _settings("--strength", "0.7").identities] == [0.7, 0.7]  # one for all
    with pytest.raises(FaceStudioError, match="3 --strength values for 2 --identity"):
        _settings("--strength", "1,1", "--strength", "1")
    with pytest.raises(FaceStudioError, match="--strength 'x': expected comma-separated numbers"):
        _settings("--strength", "x")

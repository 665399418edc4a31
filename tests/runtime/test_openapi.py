"""/openapi.json and /docs describe every endpoint, its form fields with this server's bounds, and its errors."""
from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

from asymvq.pipeline import InpaintPipeline
from asymvq.serve.schema import ERRORS
from asymvq.serve.server import create_app


@pytest.fixture(scope="module")
def spec():
    with TestClient(create_app(InpaintPipeline.from_preset("tiny"), max_steps=20, max_n=3, max_pixels=4096)) as c:
        docs = c.get("/docs")
        assert docs.status_code == 200 and "swagger" in docs.text.lower()
        resp = c.get("/openapi.json")
        assert resp.status_code == 200
        yield resp.json()


def _resolve(spec, schema):
    ref = schema.get("$ref")
    return spec["components"]["schemas"][ref.rsplit("/", 1)[1]] if ref else schema


def test_every_endpoint_is_listed(spec):
    assert spec["openapi"].startswith("3.")
    assert {p: set(ops) for p, ops in spec["paths"].items()} == {
        "/healthz": {"get"}, "/readyz": {"get"}, "/livez": {"get"}, "/metrics": {"get"}, "/v1/inpaint": {"post"},
        "/v1/images/edits": {"post"},
        "/v1/jobs": {"get"}, "/v1/jobs/{job_id}": {"delete"}}
    delete = spec["paths"]["/v1/jobs/{job_id}"]["delete"]["responses"]
    assert _resolve(spec, delete["404"]["content"]["application/json"]["schema"]) is spec["components"]["schemas"]["NativeError"]
    assert "max_steps 20" in spec["info"]["description"] and "max_n 3" in spec["info"]["description"]


@pytest.mark.parametrize("path, fields, error", [
    ("/v1/inpaint", {"image", "mask", "prompt", "negative_prompt", "steps", "guidance", "seed", "strength", "scheduler"},
     "NativeError"),
    ("/v1/images/edits", {"image", "mask", "prompt", "n", "size", "response_format", "output_format", "mask_mode",
                          "steps", "seed", "scheduler", "strength", "guidance"}, "OpenAIError"),
])
def test_forms_bounds_and_error_shapes(spec, path, fields, error):
    op = spec["paths"][path]["post"]
    form = op["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
    assert fields <= set(form)
    assert form["steps"]["maximum"] == 20 and form["image"]["format"] == "binary"
    if "n" in form:
        assert form["n"]["maximum"] == 3
        assert form["response_format"].get("const") == "b64_json" or form["response_format"].get("enum") == ["b64_json"]
        ok = _resolve(spec, op["responses"]["200"]["content"]["application/json"]["schema"])
        assert {"created", "data"} <= set(ok["properties"]) and "usage" not in ok["properties"]
    else:
        assert "image/png" in op["responses"]["200"]["content"]
    for status in ERRORS:
        schema = _resolve(spec, op["responses"][str(status)]["content"]["application/json"]["schema"])
        assert schema is spec["components"]["schemas"][error]
    body = spec["components"]["schemas"]["OpenAIErrorBody"]["properties"]
    assert set(body) == {"message", "type", "param", "code"}


@pytest.mark.parametrize("path, events", [("/v1/inpaint", {"progress", "preview", "result", "error"}),
                                          ("/v1/images/edits", {"image_edit.partial_image", "image_edit.completed",
                                                                "error"})])
def test_streams_and_their_events_are_described(spec, path, events):
    op = spec["paths"][path]["post"]
    stream = op["responses"]["200"]["content"]["text/event-stream"]
    assert set(stream["x-events"]) == events
    form = op["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
    assert form["stream"]["type"] == "boolean"
    if path == "/v1/inpaint":
        assert form["preview_every"]["maximum"] == 20 and stream["x-events"]["preview"]["properties"]["image"]
    else:
        assert form["partial_images"]["maximum"] == 3
        assert "partial_image_index" in stream["x-events"]["image_edit.partial_image"]["properties"]

"""`asymvq serve --preset tiny-sdxl|tiny-flux-fill`, started as a user starts it: the same HTTP API as SD's (native
endpoint, POST /v1/images/edits), the family's rules as 4xx, and deadlines through the family loops' cancel hook.
A handful of requests per family (each server start is a process and a pipeline build: seconds)."""
from __future__ import annotations

import base64
import io
import json

import numpy as np
import PIL.Image
import pytest

pytest.importorskip("fastapi")
from serve_helpers import ServerProcess, inpaint_request, multipart, png_pair, request

from asymvq.pipeline.inpaint_run import run_inpaint

PRESETS = ("tiny-sdxl", "tiny-flux-fill")


@pytest.fixture(scope="module", params=PRESETS)
def served(request, tmp_path_factory, family_pipes):
    # ~15-20 s per family on a loaded 2-core machine: a new process imports torch, diffusers and transformers and
    # builds the pipeline; that start, as a user runs it, is what these tests are about, so it is not faked
    preset = request.param
    srv = ServerProcess(["--preset", preset, "--max-steps", "200"], tmp_path_factory.mktemp(preset) / "serve.log")
    yield preset, srv, family_pipes[preset]
    srv.stop()


def post(port: int, fields: dict, path: str = "/v1/inpaint", headers: str = "") -> tuple[int, dict, bytes]:
    body, ctype = multipart(fields)
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\n{headers}\r\n")
    return request(port, head.encode() + body)


def expected(pipe, seed: int, **kw) -> np.ndarray:
    image, mask = (PIL.Image.open(io.BytesIO(b)) for b in png_pair())
    run = run_inpaint(pipe, image.convert("RGB"), mask.convert("L"), "a red sofa", steps=2, seed=seed, **kw)
    return np.asarray(run.images[0], np.int16)


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(PIL.Image.open(io.BytesIO(data)).convert("RGB"), np.int16)


def test_the_family_is_served_with_the_same_api(served):
    preset, srv, pipe = served
    status, _, body = request(srv.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    health = json.loads(body)
    assert status == 200 and health["family"] == pipe.rules.name and health["source"] == f"preset:{preset}"
    status, headers, body = request(srv.port, inpaint_request(seed=4, steps=2))
    assert status == 200, body[:300]
    assert np.abs(pixels(body) - expected(pipe, 4)).max() <= 1  # the family's image, the family's default guidance
    assert "unet_step;dur=" in headers["server-timing"] and float(headers["x-asymvq-pre-error"]) >= 0
    # OpenAI's edit endpoint: the same job from an alpha mask
    image, mask = png_pair()
    hole = np.asarray(PIL.Image.open(io.BytesIO(mask)))
    alpha = PIL.Image.fromarray(np.dstack([np.zeros(hole.shape + (3,), np.uint8), np.where(hole > 127, 0, 255)
                                           .astype(np.uint8)]), "RGBA")
    buf = io.BytesIO()
    alpha.save(buf, format="PNG")
    status, _, body = post(srv.port, {"image": image, "mask": buf.getvalue(), "prompt": "a red sofa", "steps": "2",
                                      "seed": "4"}, path="/v1/images/edits")
    assert status == 200, body[:300]
    assert np.abs(pixels(base64.b64decode(json.loads(body)["data"][0]["b64_json"])) - expected(pipe, 4)).max() <= 1


def test_the_family_rules_are_4xx_before_any_model_work(served):
    preset, srv, pipe = served
    flux = preset == "tiny-flux-fill"
    odd = 40 if flux else 36  # not a multiple of 16 / of 8
    image, mask = png_pair(odd, odd)
    cases = [({"image": image, "mask": mask}, f"image: expected width and height multiples of {16 if flux else 8}"),
             ({"guidance": "120" if flux else "60"},
              f"guidance: expected a value in [0, {100 if flux else 50}] for {pipe.rules.label}")]
    if flux:
        cases += [({"negative_prompt": "blurry"}, "negative_prompt: FLUX.1 Fill has no classifier-free guidance"),
                  ({"scheduler": "euler"}, "scheduler: FLUX.1 Fill runs its own flow-matching scheduler only")]
    image, mask = png_pair()
    for fields, needle in cases:
        status, _, body = post(srv.port, {"image": image, "mask": mask, "prompt": "x", "steps": "2", **fields})
        assert status == 400 and needle in json.loads(body)["error"], (status, body[:300])
        status, _, body = post(srv.port, {"image": image, "mask": mask, "prompt": "x", "steps": "2", "mask_mode": "white",
                                          **fields}, path="/v1/images/edits")
        error = json.loads(body)["error"]
        assert status == 400 and needle in error["message"] and error["param"] == needle.split(":")[0], body[:300]
    # past CLIP's 77 tokens: refused by the pipeline's tokenizer check, a 400 too
    status, _, body = post(srv.port, {"image": image, "mask": mask, "prompt": "word " * 80, "steps": "1"})
    assert status == 400 and "prompt: a prompt is" in json.loads(body)["error"], body[:300]


def test_a_deadline_stops_the_family_loop_at_a_step(served):
    """The request's deadline cancels its job through the loop's cancel hook (pipeline.cancel), then it serves on."""
    preset, srv, _ = served
    status, _, body = request(srv.port, inpaint_request(steps=200, extra_headers="X-Asymvq-Timeout-s: 0.5\r\n"))
    assert status == 504 and "cancelled before denoising step" in json.loads(body)["error"], body[:300]
    assert request(srv.port, inpaint_request(steps=1))[0] == 200


def test_openapi_and_the_form_follow_the_served_family(family_pipes):
    """In-process: /openapi.json writes the family's guidance range and size multiple; a FLUX guidance SD's range
    refuses (60) is served, a SD-only field refused."""
    from fastapi.testclient import TestClient

    from asymvq.serve.server import create_app

    client = TestClient(create_app(family_pipes["tiny-flux-fill"], max_pixels=64 * 64, max_steps=4))
    form = client.get("/openapi.json").json()["paths"]["/v1/inpaint"]["post"]["requestBody"]["content"]
    props = form["multipart/form-data"]["schema"]["properties"]
    assert (props["guidance"]["maximum"], props["guidance"]["default"]) == (100.0, 30.0)
    assert "multiples of 16" in props["image"]["description"]
    image, mask = png_pair()
    files = {"image": ("i.png", image), "mask": ("m.png", mask)}
    assert client.post("/v1/inpaint", files=files, data={"prompt": "x", "steps": "1", "guidance": "60"}).status_code == 200
    resp = client.post("/v1/inpaint", files=files, data={"prompt": "x", "steps": "1", "guidance": "101"})
    assert resp.status_code == 400 and resp.json()["error"].startswith("guidance: expected a value in [0, 100]")

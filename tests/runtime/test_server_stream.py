"""stream=true: a progress event per denoising step, latent-to-RGB previews on the schedule's steps, then the same
image as the plain answer; errors after the 200 as an error event in the endpoint's shape. The pipeline's on_step
hook and the projections it feeds. (Disconnect mid-stream: test_server_cancel.py; the official client:
test_openai_edits.py; Ray: test_ray_serve.py's end-to-end test.)"""
from __future__ import annotations

import base64
import io
import json

import numpy as np
import PIL.Image
import pytest
import torch

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient
from test_openai_edits import alpha_mask
from test_server import png, source_and_mask

from asymvq.models.latent_space import FLUX, SD, SD_RGB, SDXL, LatentSpace, RGBProjection, rgb_projection
from asymvq.pipeline import InpaintPipeline
from asymvq.serve.progress import preview_wanted
from asymvq.serve.server import create_app

STEPS = 4


@pytest.fixture(scope="module")
def pipe():
    return InpaintPipeline.from_preset("tiny")


@pytest.fixture(scope="module")
def client(pipe):
    with TestClient(create_app(pipe, max_pixels=64 * 64, max_steps=20, max_n=2)) as c:
        yield c


def events(resp) -> list[tuple[str, dict]]:
    """The SSE stream as (event, data) pairs."""
    out, name = [], None
    for line in resp.text.splitlines():
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            out.append((name, json.loads(line[6:])))
    return out


def files(mask=None):
    source, hole = source_and_mask()
    return {"image": ("i.png", png(source)), "mask": ("m.png", png(hole) if mask is None else mask)}


def test_on_step_reports_every_step_and_changes_no_result(pipe):
    source, hole = source_and_mask()
    steps = []

    def run(on_step=None, scheduler=None):
        return pipe.denoise("a sofa", source, hole, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(1),
                            scheduler=scheduler, on_step=on_step).latents

    latents = run(steps.append)
    assert torch.equal(latents, run())
    assert [(s.index, s.total) for s in steps] == [(i, STEPS) for i in range(1, STEPS + 1)]
    assert torch.equal(steps[-1].latents, latents) and steps[0].estimate.shape == latents.shape
    assert not torch.equal(steps[0].estimate, steps[0].latents)  # DDIM's x0 prediction, not the noisy sample
    pndm = []
    run(pndm.append, scheduler="pndm")  # no x0 prediction there: the sample itself
    assert all(s.estimate is s.latents for s in pndm) and pndm[-1].index == pndm[-1].total


def test_rgb_projections_per_latent_space():
    assert rgb_projection(LatentSpace()) is SD_RGB and rgb_projection(SD).channels == 4
    assert rgb_projection(SDXL).bias != (0.0, 0.0, 0.0) and rgb_projection(FLUX).channels == 16
    assert rgb_projection(LatentSpace(4, 0.5)) is None  # factors fitted to one VAE say nothing about another's
    z = torch.zeros(1, 4, 2, 3)
    z[0, 2, 1, 0] = 1.0  # one unit latent in channel 2: that channel's (R, G, B) row, nothing elsewhere
    rgb = SD_RGB.apply(z)
    assert rgb.shape == (1, 3, 2, 3) and torch.allclose(rgb[0, :, 1, 0], torch.tensor(SD_RGB.factors[2]))
    assert float(rgb.abs().sum()) == pytest.approx(sum(abs(v) for v in SD_RGB.factors[2]))
    with pytest.raises(ValueError, match=r"latents: expected \(B, 16, h, w\), got shape \(1, 4, 2, 3\)"):
        rgb_projection(FLUX).apply(z)
    with pytest.raises(ValueError, match="factors: expected one"):
        RGBProjection(((1.0, 2.0),))


def test_preview_schedules():
    assert [i for i in range(1, 11) if preview_wanted(("every", 3), i, 10)] == [3, 6, 9]
    assert [i for i in range(1, 11) if preview_wanted(("every", 5), i, 10)] == [5]  # never the last step
    assert not any(preview_wanted(("every", 0), i, 10) for i in range(1, 11))
    assert [i for i in range(1, 5) if preview_wanted(("count", 2), i, 4)] == [1, 3]  # OpenAI's partial_images
    assert [i for i in range(1, 3) if preview_wanted(("count", 3), i, 2)] == [1]  # fewer when the run is short
    assert not preview_wanted(None, 1, 4)


def test_native_stream_progress_previews_and_the_plain_answers_image(client, pipe):
    plain = client.post("/v1/inpaint", files=files(), data={"prompt": "a sofa", "steps": str(STEPS), "seed": "2"})
    resp = client.post("/v1/inpaint", files=files(), data={"prompt": "a sofa", "steps": str(STEPS), "seed": "2",
                                                            "stream": "true", "preview_every": "2"})
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
    got = events(resp)
    job_id = resp.headers["X-Asymvq-Job-Id"]
    assert [n for n, _ in got] == ["progress", "progress", "preview", "progress", "progress", "result"]
    progress = [d for n, d in got if n == "progress"]
    assert [(d["step"], d["total"]) for d in progress] == [(i, STEPS) for i in range(1, STEPS + 1)]
    assert all(d["job_id"] == job_id for _, d in got)
    elapsed = [d["elapsed_ms"] for _, d in got]
    assert elapsed == sorted(elapsed) and elapsed[0] > 0
    # the preview is the projection of step 2's clean-latent estimate: the same run in this process
    steps = []
    source, hole = source_and_mask()
    pipe.denoise("a sofa", source, hole, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(2),
                 on_step=steps.append)
    want = ((SD_RGB.apply(steps[1].estimate)[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0)
    preview = got[2][1]
    image = np.asarray(PIL.Image.open(io.BytesIO(base64.b64decode(preview["image"]))))
    assert (preview["width"], preview["height"], preview["step"]) == (4, 4, 2)  # latent resolution: 32 / 8
    assert np.array_equal(image, want.numpy())
    result = got[-1][1]
    assert base64.b64decode(result["image"]) == plain.content  # the same PNG as the plain answer
    assert result["pre_error"] == pytest.approx(float(plain.headers["X-Asymvq-Pre-Error"]), abs=1e-4)
    assert "unet_step;dur=" in result["server_timing"] and result["latency_ms"] > 0


@pytest.mark.parametrize("path, data, message", [
    ("/v1/inpaint", {"stream": "yes"}, "stream: expected one of ['false', 'true', '0', '1'], got 'yes'"),
    ("/v1/inpaint", {"preview_every": "2"}, "preview_every: expected only with stream=true"),
    ("/v1/inpaint", {"stream": "true", "preview_every": "21"}, "preview_every: expected a value in [0, 20], got 21"),
    ("/v1/images/edits", {"partial_images": "2"}, "partial_images: expected 0 without stream=true, got 2"),
    ("/v1/images/edits", {"stream": "true", "partial_images": "4"}, "partial_images: expected a value in [0, 3], got 4"),
    ("/v1/images/edits", {"stream": "true", "n": "2"}, "n: expected 1 with stream=true (one image per stream), got 2"),
], ids=["stream value", "preview without stream", "preview_every over", "partials without stream", "partials over",
        "n with stream"])
def test_stream_fields_are_checked_before_any_stream(client, path, data, message):
    mask = alpha_mask(source_and_mask()[1]) if path == "/v1/images/edits" else None
    resp = client.post(path, files=files(mask), data={"prompt": "a sofa", "steps": "2", **data})
    assert resp.status_code == 400 and resp.headers["content-type"] == "application/json", resp.text
    error = resp.json()["error"]
    assert message in (error["message"] if isinstance(error, dict) else error)


def test_a_failure_mid_stream_is_an_error_event_in_the_endpoints_shape(client, monkeypatch, caplog):
    import asymvq.serve.runner as runner

    def fails_at_step_two(pipe, *args, on_step=None, **kwargs):
        class Step:
            index, total = 1, STEPS
            latents = estimate = torch.zeros(1, 4, 4, 4)

        on_step(Step)
        raise RuntimeError("CUDA out of memory: secret internals")

    monkeypatch.setattr(runner, "run_inpaint", fails_at_step_two)
    resp = client.post("/v1/inpaint", files=files(), data={"prompt": "a sofa", "steps": "4", "stream": "true"})
    assert resp.status_code == 200
    got = events(resp)
    assert [n for n, _ in got] == ["progress", "error"]
    assert got[1][1] == {"error": "internal error while inpainting (details in the server log)", "status": 500,
                         "job_id": resp.headers["X-Asymvq-Job-Id"], "elapsed_ms": got[1][1]["elapsed_ms"]}
    assert "secret" not in resp.text and "CUDA out of memory" in caplog.text  # the log has it, the client not
    resp = client.post("/v1/images/edits", files=files(alpha_mask(source_and_mask()[1])),
                       data={"prompt": "a sofa", "steps": "4", "stream": "true", "partial_images": "1"})
    got = events(resp)
    assert [n for n, _ in got] == ["error"]  # OpenAI's stream: no per-step events, the error in OpenAI's shape
    assert got[0][1] == {"error": {"message": "internal error while inpainting (details in the server log)",
                                   "type": "server_error", "param": None, "code": None}}
    assert client.get("/livez").json()["in_progress"] == 0  # every place freed


@pytest.mark.parametrize("preset", ["tiny-sdxl", "tiny-flux-fill"])
def test_the_families_stream_progress_and_previews_of_their_latent_space(family_pipes, preset):
    """SDXL's and FLUX.1 Fill's loops report through the same hook (FLUX's packed latents unpacked first)."""
    from asymvq.pipeline.inpaint_run import denoise_job

    pipe = family_pipes[preset]
    form = {"prompt": "a sofa", "steps": str(STEPS), "seed": "2"}
    with TestClient(create_app(pipe, max_pixels=64 * 64, max_steps=20)) as c:
        plain = c.post("/v1/inpaint", files=files(), data=form)
        resp = c.post("/v1/inpaint", files=files(), data={**form, "stream": "true", "preview_every": "2"})
    assert plain.status_code == 200 and resp.status_code == 200, (plain.text[:300], resp.text[:300])
    got = events(resp)
    assert [n for n, _ in got] == ["progress", "progress", "preview", "progress", "progress", "result"]
    assert base64.b64decode(got[-1][1]["image"]) == plain.content
    steps = []
    source, hole = source_and_mask()
    denoise_job(pipe, "a sofa", source, hole, steps=STEPS, generator=torch.Generator().manual_seed(2),
                on_step=steps.append)
    assert [s.index for s in steps] == list(range(1, STEPS + 1))
    assert steps[1].estimate.shape[1] == pipe.latent_space.channels  # unpacked: (B, C, h, w)
    proj = rgb_projection(pipe.latent_space)
    want = ((proj.apply(steps[1].estimate)[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0)
    image = np.asarray(PIL.Image.open(io.BytesIO(base64.b64decode(got[2][1]["image"]))))
    assert np.array_equal(image, want.numpy())

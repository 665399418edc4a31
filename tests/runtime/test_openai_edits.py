"""POST /v1/images/edits: OpenAI's API over the native jobs. Same pixels as /v1/inpaint, the native endpoint's
refusals in OpenAI's error shape, and the official ``openai`` client against ``asymvq serve`` as a user starts it."""
from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import PIL.Image
import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient
from serve_helpers import ServerProcess
from test_server import SIZE, _bad_cases, png, source_and_mask

from asymvq.pipeline import InpaintPipeline
from asymvq.serve.openai_edits import OPENAI_FIELDS
from asymvq.serve.server import create_app

MAX_N = 3


@pytest.fixture(scope="module")
def client():
    with TestClient(create_app(InpaintPipeline.from_preset("tiny"), max_pixels=64 * 64, max_steps=20,
                               max_body_bytes=1 << 20, max_n=MAX_N, source="preset:tiny")) as c:
        yield c


def alpha_mask(hole: PIL.Image.Image) -> bytes:
    """OpenAI's mask for a white-means-edit ``hole``: transparent (alpha 0) where it is white, opaque elsewhere."""
    a = np.where(np.asarray(hole) > 127, 0, 255).astype(np.uint8)
    rgba = np.dstack([np.full(a.shape + (3,), 90, np.uint8), a])
    return png(PIL.Image.fromarray(rgba, "RGBA"))


def edit(client, *, image=None, mask=None, omit=(), **data):
    source, hole = source_and_mask()
    files = {"image": ("image.png", png(source) if image is None else image, "image/png"),
             "mask": ("mask.png", alpha_mask(hole) if mask is None else mask, "image/png")}
    fields = {"prompt": "a red sofa", "steps": "2", "seed": "3", **data}
    for name in omit:
        files.pop(name, None)
        fields.pop(name, None)
    return client.post("/v1/images/edits", files=files, data=fields)


def native(client, **data) -> np.ndarray:
    source, hole = source_and_mask()
    resp = client.post("/v1/inpaint", files={"image": ("i.png", png(source)), "mask": ("m.png", png(hole))},
                       data={"prompt": "a red sofa", "steps": "2", "seed": "3", **data})
    assert resp.status_code == 200, resp.text
    return np.asarray(PIL.Image.open(io.BytesIO(resp.content)))


def decoded(item: dict) -> PIL.Image.Image:
    return PIL.Image.open(io.BytesIO(base64.b64decode(item["b64_json"])))


def test_alpha_mask_edit_is_the_native_job(client):
    resp = edit(client)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert set(body) == {"created", "data", "output_format", "size"} and "usage" not in body
    assert isinstance(body["created"], int) and body["size"] == f"{SIZE}x{SIZE}" and body["output_format"] == "png"
    assert len(body["data"]) == 1
    got = decoded(body["data"][0])
    assert got.format == "PNG" and got.size == (SIZE, SIZE)
    # the same job as /v1/inpaint with the white-means-edit mask: the same pixels, on the same server
    assert np.array_equal(np.asarray(got), native(client))
    assert float(resp.headers["X-Asymvq-Latency-ms"]) > 0


def test_white_mask_mode_and_image_alpha_and_extras(client):
    source, hole = source_and_mask()
    white = edit(client, mask=png(hole), mask_mode="white", guidance="5.0", scheduler="euler")
    assert white.status_code == 200, white.text
    assert np.array_equal(np.asarray(decoded(white.json()["data"][0])), native(client, guidance="5.0", scheduler="euler"))
    # no mask: the image's own transparent pixels are the area (OpenAI's rule)
    rgba = np.dstack([np.asarray(source), np.where(np.asarray(hole) > 127, 0, 255).astype(np.uint8)])
    own = edit(client, image=png(PIL.Image.fromarray(rgba, "RGBA")), omit=("mask",))
    assert own.status_code == 200, own.text
    assert np.array_equal(np.asarray(decoded(own.json()["data"][0])), native(client))


def test_n_images_use_consecutive_seeds_and_output_format(client):
    resp = edit(client, n="2", output_format="jpeg", output_compression="90")
    assert resp.status_code == 200, resp.text
    data = resp.json()["data"]
    assert len(data) == 2 and all(decoded(d).format == "JPEG" for d in data)
    png_resp = edit(client, n="2", size=f"{SIZE}x{SIZE}", response_format="b64_json")
    assert len(png_resp.headers["X-Asymvq-Pre-Error"].split(", ")) == 2 and "unet_step" in png_resp.headers["Server-Timing"]
    first, second = (np.asarray(decoded(d)) for d in png_resp.json()["data"])
    assert np.array_equal(first, native(client)) and np.array_equal(second, native(client, seed="4"))


def _openai_cases():
    source, hole = source_and_mask()
    return [
        ("mask without alpha", dict(mask=png(hole)), 400, "mask: expected a PNG with an alpha channel", "mask"),
        ("no mask and no alpha", dict(omit=("mask",)), 400, "or an image with transparent pixels", "mask"),
        ("n above max_n", dict(n=str(MAX_N + 1)), 400, f"n: expected a value in [1, {MAX_N}] (the server's max_n)", "n"),
        ("n zero", dict(n="0"), 400, "n: expected a value in [1, 3]", "n"),
        ("size disagrees", dict(size="64x64"), 400, f"size: expected auto or the image's own size {SIZE}x{SIZE}", "size"),
        ("size malformed", dict(size="big"), 400, "size: expected auto or WxH", "size"),
        ("url", dict(response_format="url"), 400, "response_format: expected b64_json, got 'url'", "response_format"),
        ("output format", dict(output_format="gif"), 400, "output_format: expected one of ['png', 'jpeg', 'webp']",
         "output_format"),
        ("stream", dict(stream="maybe"), 400, "stream: expected one of ['false', 'true', '0', '1']", "stream"),
        ("partial images", dict(partial_images="2"), 400, "partial_images: expected 0 without stream=true, got 2",
         "partial_images"),
        ("partial images over", dict(stream="true", partial_images="4"), 400,
         "partial_images: expected a value in [0, 3], got 4", "partial_images"),
        ("mask mode", dict(mask_mode="black"), 400, "mask_mode: expected one of ['alpha', 'white']", "mask_mode"),
        ("unknown field", dict(stpes="3"), 400, "stpes: expected a field among", None),
    ]


def _native_cases():
    """Every refusal of /v1/inpaint, sent here with its white-means-edit masks (mask_mode=white): the same
    status and words, in OpenAI's shape."""
    white = png(source_and_mask()[1])
    out = []
    for name, kw, status, msg in _bad_cases():
        kw = {"mask": white, **kw, "mask_mode": "white"}
        if "mask" in kw.get("omit", ()):
            kw.pop("mask")
        head = msg.split(":")[0]
        out.append((f"native {name}", kw, status, msg, head if head in OPENAI_FIELDS else None))
    return out


@pytest.mark.parametrize("case", _openai_cases() + _native_cases(), ids=lambda c: c[0])
def test_bad_input_is_openais_error_shape_naming_the_argument(client, case):
    _, kwargs, status, message, param = case
    resp = edit(client, **kwargs)
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/json"
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert message in error["message"], error
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert "Traceback" not in resp.text


def test_wrong_method_and_header_bomb_are_openais_shape_there(client):
    resp = client.get("/v1/images/edits")
    assert resp.status_code == 405 and resp.json()["error"]["message"].startswith("GET /v1/images/edits")
    resp = client.post("/v1/images/edits", headers={"X-Big": "x" * (20 << 10)})
    assert resp.status_code == 431 and resp.json()["error"]["type"] == "invalid_request_error"


# -- the official client against `asymvq serve` ----------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = ServerProcess(["--preset", "tiny", "--max-n", "2", "--max-steps", "20"],
                        tmp_path_factory.mktemp("openai") / "serve.log")
    yield srv
    srv.stop()


def test_official_openai_client(server):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    source, hole = source_and_mask()
    out = client.images.edit(image=("image.png", png(source), "image/png"),
                             mask=("mask.png", alpha_mask(hole), "image/png"), prompt="a red sofa", n=2,
                             size=f"{SIZE}x{SIZE}", response_format="b64_json", extra_body={"steps": 2, "seed": 3})
    assert len(out.data) == 2 and out.created > 0
    images = [np.asarray(decoded({"b64_json": d.b64_json})) for d in out.data]
    assert images[0].shape == (SIZE, SIZE, 3) and not np.array_equal(images[0], images[1])  # seeds 3 and 4
    # the same job on the native endpoint of the same server gives the same first image
    raw = httpx.post(f"{server.url}/v1/inpaint", files={"image": ("i.png", png(source)), "mask": ("m.png", png(hole))},
                     data={"prompt": "a red sofa", "steps": "2", "seed": "3"}, timeout=120)
    assert raw.status_code == 200, raw.text
    assert np.array_equal(np.asarray(PIL.Image.open(io.BytesIO(raw.content))), images[0])

    with pytest.raises(openai.BadRequestError) as bad:
        client.images.edit(image=("image.png", png(source), "image/png"), mask=("mask.png", png(hole), "image/png"),
                           prompt="a red sofa", n=3)
    assert bad.value.status_code == 400 and bad.value.param == "mask" and "alpha channel" in bad.value.message
    with pytest.raises(openai.BadRequestError) as bad:
        client.images.edit(image=("image.png", png(source), "image/png"), mask=("mask.png", alpha_mask(hole), "image/png"),
                           prompt="a red sofa", n=3)
    assert bad.value.param == "n" and "the server's max_n" in bad.value.message


def test_official_openai_client_streams_partial_images_then_the_same_image(server):
    """``client.images.edit(..., stream=True)``: OpenAI's image_edit.partial_image events (previews at the image's
    size, indices 0..) then image_edit.completed with the image the plain call gives."""
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    source, hole = source_and_mask()
    args = dict(image=("image.png", png(source), "image/png"), mask=("mask.png", alpha_mask(hole), "image/png"),
                prompt="a red sofa", extra_body={"steps": 4, "seed": 3})
    stream = client.images.edit(**args, stream=True, partial_images=2, output_format="png")
    got = list(stream)
    assert [type(e).__name__ for e in got] == ["ImageEditPartialImageEvent"] * 2 + ["ImageEditCompletedEvent"]
    assert [e.partial_image_index for e in got[:2]] == [0, 1]
    assert all(e.size == f"{SIZE}x{SIZE}" and e.output_format == "png" and e.created_at > 0 for e in got)
    assert all(decoded({"b64_json": e.b64_json}).size == (SIZE, SIZE) for e in got)
    assert got[-1].usage.total_tokens == 0  # asymvq counts no tokens
    plain = client.images.edit(**args, response_format="b64_json")
    assert np.array_equal(np.asarray(decoded({"b64_json": got[-1].b64_json})),
                          np.asarray(decoded({"b64_json": plain.data[0].b64_json})))
    # partial_images=0: the one completed event, as OpenAI streams it
    assert [e.type for e in client.images.edit(**args, stream=True)] == ["image_edit.completed"]

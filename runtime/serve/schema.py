"""The typed models ``/openapi.json`` and ``/docs`` are generated from: every endpoint's form, answers and errors.

Why the forms are described here rather than declared as FastAPI ``Form``/``File`` parameters: FastAPI would
then parse the body itself through Starlette's ``request.form()`` (python-multipart), which returns an empty
form for a truncated body instead of an error and does not bound file parts (``asymvq.serve.http_form``).
So the routes keep reading the raw body under their limits and splitting it with ``http_form``, and these
models only document it (``openapi_extra``); the bounds a server was started with (``max_steps``, ``max_n``,
``max_pixels``, ``max_body_bytes``) are written into the schema per app.
"""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, Field

from ..pipeline.family_rules import family_rules
from ..pipeline.job_rules import GUIDANCE_RANGE, PROMPT_MAX_BYTES, SEED_MAX
from ..pipeline.schedulers import SCHEDULERS
from .progress import MAX_PARTIAL_IMAGES, PREVIEW_EVERY

_SCHEDULERS = Literal[tuple(SCHEDULERS)]  # type: ignore[valid-type]


class _JobFields(BaseModel):
    """asymvq's own job values, shared by both forms (``asymvq.pipeline.job_rules``)."""

    prompt: str = Field(description=f"What to paint in the area; at most {PROMPT_MAX_BYTES} bytes of UTF-8.")
    negative_prompt: Optional[str] = Field(None, description=f"At most {PROMPT_MAX_BYTES} bytes of UTF-8.")
    steps: int = Field(50, ge=1, description="Denoising steps; at most the server's max_steps.")
    guidance: float = Field(7.5, ge=GUIDANCE_RANGE[0], le=GUIDANCE_RANGE[1], description="Classifier-free guidance scale.")
    seed: int = Field(0, ge=0, le=SEED_MAX, description="Seed of the initial noise.")
    strength: float = Field(1.0, gt=0, le=1, description="Share of the steps run (strength x steps >= 1).")
    scheduler: Optional[_SCHEDULERS] = Field(None, description="Default: the server's --scheduler.")


class InpaintForm(_JobFields):
    """``POST /v1/inpaint``: multipart/form-data; unknown or repeated fields are 400s."""

    image: bytes = Field(json_schema_extra={"format": "binary"},
                         description="PNG or JPEG; width and height multiples of 8; at most max_pixels pixels.")
    mask: bytes = Field(json_schema_extra={"format": "binary"},
                        description="PNG or JPEG, the image's size; white marks the area to inpaint.")
    stream: bool = Field(False, description="true: answer text/event-stream: progress each step, preview every "
                                            "preview_every steps, then result (or error).")
    preview_every: int = Field(PREVIEW_EVERY, ge=0, description="With stream=true only: a preview every this many "
                                                                "steps (0: none); at most max_steps.")


class EditForm(_JobFields):
    """``POST /v1/images/edits``: OpenAI's form (createEdit); asymvq's values ride as extra fields."""

    image: bytes = Field(json_schema_extra={"format": "binary"},
                         description="PNG or JPEG (also sent as image[]); width and height multiples of 8.")
    mask: Optional[bytes] = Field(None, json_schema_extra={"format": "binary"},
                                  description="PNG with alpha: fully transparent pixels mark the area to edit "
                                              "(OpenAI's rule; a mask without alpha is a 400). Without a mask, the "
                                              "image's own transparent pixels.")
    mask_mode: Literal["alpha", "white"] = Field("alpha", description="Extension: white = white-means-edit masks "
                                                 "(A1111, ComfyUI, /v1/inpaint).")
    n: int = Field(1, ge=1, description="Images to make (seed, seed+1, ...); at most the server's max_n.")
    size: str = Field("auto", pattern=r"^(auto|[1-9][0-9]*x[1-9][0-9]*)$", description="auto or the image's own WxH.")
    response_format: Literal["b64_json"] = Field("b64_json", description="url is a 400: no files are kept.")
    output_format: Literal["png", "jpeg", "webp"] = "png"
    output_compression: int = Field(100, ge=0, le=100, description="jpeg/webp quality.")
    stream: bool = Field(False, description="true: OpenAI's image edit stream (text/event-stream); n must be 1.")
    partial_images: int = Field(0, ge=0, le=MAX_PARTIAL_IMAGES, description="With stream=true: previews sent as "
                                "image_edit.partial_image before image_edit.completed (fewer on short runs).")
    model: Optional[str] = Field(None, description="Accepted, not used: one model per server.")
    quality: Literal["auto"] = "auto"
    background: Literal["auto", "opaque"] = "auto"
    user: Optional[str] = Field(None, description="Accepted, not used.")
    safety_identifier: Optional[str] = Field(None, description="Accepted, not used.")
    moderation: Optional[str] = Field(None, description="Accepted, not used: no moderation.")


class ImageData(BaseModel):
    b64_json: str = Field(description="The image, base64, in output_format.")


class ImagesResponse(BaseModel):
    """OpenAI's ImagesResponse; no ``usage``: OpenAI's counts its models' tokens, nothing here means the same."""

    created: int = Field(description="Unix time, seconds.")
    data: list[ImageData]
    output_format: Literal["png", "jpeg", "webp"]
    size: str


class NativeError(BaseModel):
    error: str = Field(description="One line: '<argument>: expected ..., got ...'.")


class OpenAIErrorBody(BaseModel):
    message: str = Field(description="The same words as /v1/inpaint's error.")
    type: Literal["invalid_request_error", "server_error"]
    param: Optional[str] = Field(description="The form field the message names, if any.")
    code: Optional[str] = None


class OpenAIError(BaseModel):
    error: OpenAIErrorBody


# -- the streams' events (each event's ``data:``, JSON) ---------------------------------------------------
class _EventBase(BaseModel):
    job_id: str = Field(description="The job's id (X-Asymvq-Job-Id): DELETE /v1/jobs/{id} cancels it.")
    elapsed_ms: float = Field(description="Milliseconds since the request arrived.")


class ProgressEvent(_EventBase):
    step: int = Field(description="Denoising steps done, 1..total.")
    total: int


class PreviewEvent(ProgressEvent):
    width: int = Field(description="Latent resolution: the image's width / 8.")
    height: int
    image: str = Field(description="PNG, base64: a linear latent-to-RGB projection of the step's estimate.")


class ResultEvent(_EventBase):
    image: str = Field(description="The PNG the plain answer carries, base64.")
    pre_error: float
    latency_ms: float
    server_timing: str = Field(description="The plain answer's Server-Timing header.")


class StreamError(_EventBase):
    error: str = Field(description="The words the plain answer's error would have.")
    status: int = Field(description="The status the plain answer would have had (409, 499, 500, 504, ...).")


class _ImageEditEventBase(BaseModel):
    """What OpenAI's two image-edit stream events share (its ImageEditPartialImageEvent / ImageEditCompletedEvent)."""

    b64_json: str
    created_at: int
    size: str
    quality: Literal["auto"]
    background: Literal["auto", "opaque"]
    output_format: Literal["png", "jpeg", "webp"]


class ImageEditPartialImageEvent(_ImageEditEventBase):
    type: Literal["image_edit.partial_image"]
    partial_image_index: int


class ImageEditCompletedEvent(_ImageEditEventBase):
    type: Literal["image_edit.completed"]
    usage: dict = Field(description="OpenAI's token counts; all 0 (asymvq counts no tokens).")


def stream_content(events: dict[str, type[BaseModel]]) -> dict:
    """A ``text/event-stream`` answer's content; each event's ``data:`` schema under ``x-events`` (OpenAPI 3.1 has
    no standard place for them; 3.2's ``itemSchema`` would be it)."""
    return {"text/event-stream": {"schema": {"type": "string"},
                                  "x-events": {name: model.model_json_schema() for name, model in events.items()}}}


NATIVE_EVENTS = {"progress": ProgressEvent, "preview": PreviewEvent, "result": ResultEvent, "error": StreamError}
OPENAI_EVENTS = {"image_edit.partial_image": ImageEditPartialImageEvent,
                 "image_edit.completed": ImageEditCompletedEvent, "error": OpenAIError}


class JobCancelledBody(BaseModel):
    id: str
    cancelled: bool = Field(description="False when the job had already finished or was never known.")


ERRORS = {  # status -> when; every job endpoint answers these, in its own error shape
    400: "A field is missing, malformed or out of range (the message names it).",
    408: "The body did not all arrive within the server's body timeout.",
    413: "The body or an image is larger than the server's limits.",
    409: "The job was cancelled (DELETE /v1/jobs/{id}), or the X-Asymvq-Job-Id it asked for is in use.",
    415: "The body is not multipart/form-data with a boundary.",
    431: "The request line and headers are larger than the server's limit.",
    499: "The client closed the connection before its answer (logged; the client never reads it).",
    504: "The request's deadline passed (X-Asymvq-Timeout-s, at most the server's --request-timeout); its job stopped.",
    500: "Internal error; details in the server log only.",
    503: "The server holds max_queue requests already, or a stage is unavailable; Retry-After says when to retry.",
}


def form_schema(model: type[BaseModel], *, max_steps: int, max_pixels: int, max_n: int | None = None,
                family: str | None = None) -> dict:
    """``model``'s JSON schema as an OpenAPI multipart request body, with this server's bounds and its pipeline
    family's rules (``asymvq.pipeline.family_rules``: sizes, guidance, what it refuses) written in."""
    rules = family_rules(family)
    schema = model.model_json_schema()
    props = schema["properties"]
    props["steps"]["maximum"] = max_steps
    if "preview_every" in props:
        props["preview_every"]["maximum"] = max_steps
    if max_n is not None:
        props["n"]["maximum"] = max_n
    for name in ("image", "mask"):
        props[name]["description"] = props[name]["description"].replace(
            "multiples of 8", f"multiples of {rules.size_multiple}") + f" (max_pixels here: {max_pixels})"
    guidance = props["guidance"]
    (guidance["minimum"], guidance["maximum"]), guidance["default"] = rules.guidance_range, rules.default_guidance
    if not rules.negative_prompt:
        guidance["description"] = f"{rules.label}'s distilled guidance (no classifier-free guidance)."
        props["negative_prompt"]["description"] = f"Refused (400): {rules.label} has no classifier-free guidance."
    if not rules.schedulers:
        props["scheduler"]["description"] = f"Refused (400): {rules.label} runs its own flow-matching scheduler."
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}


def error_responses(model: type[BaseModel]) -> dict:
    return {status: {"model": model, "description": why} for status, why in ERRORS.items()}

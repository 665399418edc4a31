"""Images and masks in and out of the pipeline: PIL, numpy or torch, checked, then diffusers' processing.

Accepted forms (a list of PIL images is a batch):
- image: PIL (any mode PIL converts to RGB, 16-bit scaled to 8, EXIF orientation applied); numpy (H, W, 3) or
  (B, H, W, 3), uint8 in [0, 255]
  or float in [0, 1]; torch (3, H, W) or (B, 3, H, W), uint8, or float in [0, 1] (or in
  [-1, 1], diffusers' legacy convention, recognised by negative values).
- mask: the same containers with 1 channel (or none); 1/white = hole to repaint. Soft masks
  are binarised at 0.5 (diffusers' rule), so anti-aliased edges are fine.
Image and mask must have the same size; mask batch 1 broadcasts. Resizing and normalisation
are diffusers' ``VaeImageProcessor`` (the parity oracle); the checks in front of it turn what
it would silently misread (8-bit numpy, out-of-range floats, mismatched sizes) into ValueErrors.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch

VAE_SCALE_FACTOR = 8
OUTPUT_TYPES = ("pil", "np", "pt", "latent")
ACCEPTED = "a PIL image, a list of PIL images, a numpy array or a torch tensor"


def _fail(arg: str, expected: str, got: str):
    raise ValueError(f"{arg}: expected {expected}, got {got}")


def _describe(x) -> str:
    if isinstance(x, (np.ndarray, torch.Tensor)):
        return f"{type(x).__name__} of shape {tuple(x.shape)} and dtype {x.dtype}"
    return type(x).__name__


HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # 16-bit PNG/TIFF; "I" read as 16-bit too


def pil_convert(im: PIL.Image.Image, mode: str, arg: str = "image") -> PIL.Image.Image:
    """``im`` upright (EXIF orientation applied, as viewers show it) in ``mode`` ("RGB" or "L").

    PIL's own ``convert`` clips 16-bit images to 255 (a 16-bit PNG comes out nearly white): they
    are scaled to 8 bits here instead. 32-bit float images (mode F) have no agreed range and are
    refused, like the modes PIL cannot convert (LAB, La, ...).
    """
    try:
        im.load()
    except (OSError, SyntaxError, ValueError) as exc:  # truncated or corrupt data: PIL's decoders raise these
        _fail(arg, "a complete image", f"a damaged one ({str(exc)[:80]})")
    try:
        im = PIL.ImageOps.exif_transpose(im)
    except Exception as exc:  # noqa: BLE001 - a damaged EXIF block: PIL raises many types; the pixels are still good
        _fail(arg, "an image with a readable EXIF block (or none)", f"{type(exc).__name__}: {str(exc)[:80]}")
    if im.width < 1 or im.height < 1:
        _fail(arg, "an image at least 1x1", f"{im.width}x{im.height} (WxH)")
    if im.mode in HIGH_DEPTH_MODES:
        a = np.asarray(im).astype(np.int64)
        if a.size and (a.min() < 0 or a.max() > 65535):
            _fail(arg, "16-bit values in [0, 65535] for a PIL mode 'I' image", f"values in [{a.min()}, {a.max()}]")
        im = PIL.Image.fromarray(((a * 255 + 32767) // 65535).astype(np.uint8), "L")
    elif im.mode == "La":  # premultiplied alpha: PIL converts it to LA only
        im = im.convert("LA")
    elif im.mode == "F":
        _fail(arg, "an 8-bit or 16-bit image", "a 32-bit float PIL image (mode F): convert it to 8 bits first")
    if im.mode == mode:
        return im
    try:
        return im.convert(mode)
    except ValueError as exc:  # "conversion from LAB to RGB not supported"
        _fail(arg, f"a PIL image convertible to {mode}", f"mode {im.mode} ({exc})")


def _canonical(x, arg: str, channels: int):
    """Bring ``x`` to what VaeImageProcessor reads right: PIL list (RGB images, L masks, upright),
    float numpy BHWC or float torch BCHW."""
    mode = "RGB" if channels == 3 else "L"
    if isinstance(x, PIL.Image.Image):
        return [pil_convert(x, mode, arg)]
    if isinstance(x, (list, tuple)):
        if not x or not all(isinstance(i, PIL.Image.Image) for i in x):
            _fail(arg, ACCEPTED, f"a list of {[type(i).__name__ for i in x][:3]}")
        return [pil_convert(i, mode, arg) for i in x]
    if isinstance(x, np.ndarray):
        a = x
        if a.ndim == 2 and channels == 1:
            a = a[None, ..., None]
        elif a.ndim == 3 and (channels == 3 or a.shape[-1] == 1):
            a = a[None]  # (H, W, C)
        elif a.ndim == 3:
            a = a[..., None]  # a batch of single-channel masks (B, H, W)
        if a.ndim != 4 or a.shape[-1] != channels:
            shape = "(H, W, 3)" if channels == 3 else "(H, W)"
            _fail(arg, f"numpy shape {shape} or (B, H, W, {channels}) (channels last)", _describe(x))
        return _as_unit_range(torch.from_numpy(np.ascontiguousarray(a)), arg, _describe(x)).numpy()
    if isinstance(x, torch.Tensor):
        t = x
        if t.ndim == 2 and channels == 1:
            t = t[None, None]
        elif t.ndim == 3:
            t = t[None]
        if t.ndim != 4 or t.shape[1] != channels:
            _fail(arg, f"torch shape ({channels}, H, W) or (B, {channels}, H, W) (channels first)", _describe(x))
        return _as_unit_range(t.detach().cpu(), arg, _describe(x), allow_signed=channels == 3)
    _fail(arg, ACCEPTED, type(x).__name__)


def _as_unit_range(t: torch.Tensor, arg: str, desc: str, allow_signed: bool = False) -> torch.Tensor:
    """uint8 -> [0, 1] float; bool -> float; floats must already be in [0, 1] ([-1, 1] if allowed)."""
    if t.dtype == torch.bool:
        return t.float()
    if t.dtype == torch.uint8:
        return t.float() / 255.0
    if not t.is_floating_point():
        _fail(arg, "uint8, bool or float values", desc)
    t = t.float()
    if not bool(torch.isfinite(t).all()):
        _fail(arg, "finite values", f"NaN or Inf in {desc}")
    lo, hi = float(t.min()), float(t.max())
    low_ok = -1.0 if allow_signed else 0.0
    if lo < low_ok - 1e-3 or hi > 1.0 + 1e-3:
        want = "float values in [0, 1] (or [-1, 1] for torch images)" if allow_signed else "float values in [0, 1]"
        _fail(arg, want, f"values in [{lo:g}, {hi:g}] in {desc}")
    return t


def image_size(x) -> tuple[int, int]:
    """(H, W) of an image or mask in any accepted form (after ``_canonical``)."""
    if isinstance(x, list):
        return x[0].height, x[0].width
    if isinstance(x, np.ndarray):
        return x.shape[1], x.shape[2]
    return x.shape[2], x.shape[3]


def _batch(x) -> int:
    return len(x) if isinstance(x, list) else x.shape[0]


def _processors():
    from diffusers.image_processor import VaeImageProcessor

    image_proc = VaeImageProcessor(vae_scale_factor=VAE_SCALE_FACTOR)
    # What StableDiffusionInpaintPipeline builds: no [-1, 1] scaling, binarise at 0.5, grayscale.
    mask_proc = VaeImageProcessor(
        vae_scale_factor=VAE_SCALE_FACTOR, do_normalize=False, do_binarize=True, do_convert_grayscale=True
    )
    return image_proc, mask_proc


def check_size(height: int, width: int) -> None:
    for name, v in (("height", height), ("width", width)):
        if not isinstance(v, int) or v <= 0 or v % VAE_SCALE_FACTOR:
            _fail(name, f"a positive multiple of {VAE_SCALE_FACTOR}", repr(v))


def prepare_image_and_mask(image, mask, height: int | None, width: int | None):
    """(image (B,3,H,W) float32 in [-1, 1], mask (B|1,1,H,W) float32 0/1, H, W).

    ``height``/``width`` default to the image's size rounded down to a multiple of 8; when
    given and different from the image's size, both are resized (as diffusers does).
    """
    if image is None or mask is None:
        missing = "image" if image is None else "mask_image"
        _fail(missing, "an image whenever the other of image/mask_image is given (inpainting)", "None")
    img = _canonical(image, "image", 3)
    msk = _canonical(mask, "mask_image", 1)
    if image_size(img) != image_size(msk):
        (ih, iw), (mh, mw) = image_size(img), image_size(msk)
        _fail("mask_image", f"the image's size {ih}x{iw} (HxW)", f"{mh}x{mw}")
    if _batch(msk) not in (1, _batch(img)):
        _fail("mask_image", f"batch 1 or {_batch(img)} (the image batch)", f"batch {_batch(msk)}")
    h0, w0 = image_size(img)
    height = height if height is not None else h0 - h0 % VAE_SCALE_FACTOR
    width = width if width is not None else w0 - w0 % VAE_SCALE_FACTOR
    check_size(height, width)
    image_proc, mask_proc = _processors()
    if isinstance(img, torch.Tensor) and float(img.min()) < 0:
        # Already in [-1, 1]: resize only (diffusers would do the same, with a deprecation warning).
        pixels = image_proc.resize(img, height, width) if (height, width) != (h0, w0) else img
    else:
        pixels = image_proc.preprocess(img, height=height, width=width)
    mask_t = mask_proc.preprocess(msk, height=height, width=width)
    return pixels.float(), mask_t.float(), height, width


def postprocess(sample: torch.Tensor, output_type: str):
    """Decoder output in [-1, 1] -> PIL list, numpy (B,H,W,3) in [0, 1] or torch (B,3,H,W) in [0, 1]."""
    if output_type not in OUTPUT_TYPES:
        _fail("output_type", f"one of {OUTPUT_TYPES}", repr(output_type))
    image_proc, _ = _processors()
    return image_proc.postprocess(sample.float().cpu(), output_type=output_type)


def load_image(path, *, mode: str = "RGB") -> PIL.Image.Image:
    """Open an image file; a missing file or one PIL cannot read is a one-line error."""
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{p}: expected an image file, got a directory")
    if not p.is_file():
        raise FileNotFoundError(f"image file not found: {p}")
    try:
        with PIL.Image.open(p) as im:
            return pil_convert(im, mode, str(p))
    except PIL.UnidentifiedImageError:
        raise ValueError(f"{p}: not an image file PIL can read (png, jpg, webp, ...)") from None
    except (OSError, SyntaxError) as exc:  # truncated or corrupt data: PIL's decoders raise these
        raise ValueError(f"{p}: a damaged image file ({str(exc)[:120]})") from None

"""ctypes binding of the C API (include/asymvq/asymvq.h), for the tests and the benchmark.

Not part of the Python package: it shows that any language with a C FFI can drive the host,
and lets the tests call the library in-process (threads, NULL arguments, timings). ctypes
releases the GIL during each call, so Python threads really run the library concurrently.
"""
from __future__ import annotations

import ctypes as C
from pathlib import Path

import numpy as np

OK, INVALID_ARGUMENT, NOT_FOUND, MANIFEST, UNSUPPORTED, RUNTIME, FORMAT, IO = range(8)
FLOAT32, INT64 = 0, 1
SCHEDULERS = {"ddim": 0, "euler": 1}
REGIONS = {None: 0, "mask": 1, "auto": 2}  # asymvq_region
DECODED = {0: "full", 1: "box", 2: "none"}  # asymvq_decoded, in asymvq.models.region.RegionChoice.describe's words
MAX_DIMS = 8


class Tensor(C.Structure):
    _fields_ = [("data", C.c_void_p), ("shape", C.POINTER(C.c_int64)), ("ndim", C.c_int32), ("dtype", C.c_int)]


class Output(C.Structure):
    _fields_ = [("data", C.POINTER(C.c_float)), ("shape", C.c_int64 * MAX_DIMS), ("ndim", C.c_int32), ("numel", C.c_int64)]


class Stats(C.Structure):
    _fields_ = [(n, C.c_double) for n in ("text_encode_s", "vae_encode_s", "loop_s", "unet_s", "decode_s", "total_s")] + [
        ("steps", C.c_int32)]


class RegionChoice(C.Structure):
    """asymvq_region_choice (ABI 3): what a region decode decoded. Made by ``RegionChoice()`` with struct_size set."""

    _fields_ = [("struct_size", C.c_uint32), ("decoded", C.c_int32), ("y0", C.c_int32), ("y1", C.c_int32),
                ("x0", C.c_int32), ("x1", C.c_int32), ("share", C.c_double), ("predicted_speedup", C.c_double),
                ("min_speedup", C.c_double)]

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        if not self.struct_size:
            self.struct_size = C.sizeof(self)

    @property
    def kind(self) -> str:
        """One of "full", "box" and "none" (asymvq_decoded)."""
        return DECODED.get(self.decoded, f"unknown {self.decoded}")

    @property
    def box(self) -> tuple[int, int, int, int]:
        return self.y0, self.y1, self.x0, self.x1


class Params(C.Structure):
    _fields_ = [("struct_size", C.c_uint32)] + [
        (n, C.POINTER(Tensor)) for n in ("prompt_embeds", "negative_embeds", "prompt_ids", "negative_ids", "image", "mask")
    ] + [("height", C.c_int32), ("width", C.c_int32), ("steps", C.c_int32), ("guidance_scale", C.c_double),
         ("seed", C.c_uint64), ("scheduler", C.c_int), ("stats", C.POINTER(Stats)),
         ("region", C.c_int), ("margin", C.c_int32),  # ABI 2
         ("region_choice", C.POINTER(RegionChoice))]  # ABI 3


V1_SIZE = Params.region.offset  # the ABI 1 layout: everything before `region` (ASYMVQ_INPAINT_PARAMS_V1_SIZE)
V2_SIZE = Params.region_choice.offset  # the ABI 2 layout: everything before `region_choice` (_V2_SIZE)


class HostError(RuntimeError):
    def __init__(self, status: int, name: str, message: str):
        super().__init__(f"{name}: {message}")
        self.status, self.name, self.message = status, name, message


def load_library(path: str | Path) -> C.CDLL:
    lib = C.CDLL(str(path))
    lib.asymvq_version.restype = C.c_char_p
    lib.asymvq_last_error.restype = C.c_char_p
    lib.asymvq_status_name.restype = C.c_char_p
    lib.asymvq_status_name.argtypes = [C.c_int]
    lib.asymvq_open.argtypes = [C.c_char_p, C.c_char_p, C.POINTER(C.c_void_p)]
    lib.asymvq_close.argtypes = [C.c_void_p]
    lib.asymvq_close.restype = None
    lib.asymvq_has_component.argtypes = [C.c_void_p, C.c_char_p, C.POINTER(C.c_int)]
    lib.asymvq_unet_channels.argtypes = [C.c_void_p, C.POINTER(C.c_int)]
    lib.asymvq_latent_space.argtypes = [C.c_void_p, C.POINTER(C.c_int), C.POINTER(C.c_double), C.POINTER(C.c_double)]
    lib.asymvq_decode.argtypes = [C.c_void_p, C.POINTER(Tensor), C.POINTER(Tensor), C.POINTER(Tensor), C.POINTER(Output)]
    lib.asymvq_decode_scaled.argtypes = lib.asymvq_decode.argtypes
    lib.asymvq_decode_region.argtypes = [C.c_void_p, C.POINTER(Tensor), C.POINTER(Tensor), C.POINTER(Tensor), C.c_int32,
                                         C.POINTER(Output)]
    lib.asymvq_decode_region_scaled.argtypes = lib.asymvq_decode_region.argtypes
    lib.asymvq_decode_region_ex.argtypes = [C.c_void_p, C.POINTER(Tensor), C.POINTER(Tensor), C.POINTER(Tensor), C.c_int32,
                                            C.c_int32, C.POINTER(RegionChoice), C.POINTER(Output)]
    lib.asymvq_decode_region_scaled_ex.argtypes = lib.asymvq_decode_region_ex.argtypes
    lib.asymvq_region_choice_init.argtypes = [C.POINTER(RegionChoice)]
    lib.asymvq_region_choice_init.restype = None
    lib.asymvq_encode_text.argtypes = [C.c_void_p, C.POINTER(Tensor), C.POINTER(Output)]
    lib.asymvq_inpaint_params_init.argtypes = [C.POINTER(Params)]
    lib.asymvq_inpaint_params_init.restype = None
    lib.asymvq_inpaint.argtypes = [C.c_void_p, C.POINTER(Params), C.POINTER(Output)]
    lib.asymvq_output_free.argtypes = [C.POINTER(Output)]
    lib.asymvq_output_free.restype = None
    for f in ("asymvq_open", "asymvq_has_component", "asymvq_unet_channels", "asymvq_latent_space", "asymvq_decode",
              "asymvq_decode_scaled", "asymvq_decode_region", "asymvq_decode_region_scaled", "asymvq_decode_region_ex",
              "asymvq_decode_region_scaled_ex", "asymvq_encode_text", "asymvq_inpaint"):
        getattr(lib, f).restype = C.c_int
    return lib


class _View:
    """A Tensor struct over a contiguous numpy array (kept alive with it)."""

    def __init__(self, array):
        a = np.ascontiguousarray(array)
        if a.dtype == np.int64:
            dtype = INT64
        else:
            a = np.ascontiguousarray(a, dtype=np.float32)
            dtype = FLOAT32
        self.array = a
        self.shape = (C.c_int64 * max(a.ndim, 1))(*a.shape)
        self.struct = Tensor(a.ctypes.data_as(C.c_void_p), self.shape, a.ndim, dtype)

    def ptr(self):
        return C.pointer(self.struct)


def _arr(x):
    if x is None:
        return None
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    return x


class Host:
    """One handle (asymvq_open ... asymvq_close)."""

    def __init__(self, lib: C.CDLL, engines_dir: str | Path, device: str = "cpu"):
        self.lib = lib
        self.handle = C.c_void_p()
        self._check(lib.asymvq_open(str(engines_dir).encode(), device.encode(), C.byref(self.handle)))

    def _check(self, status: int) -> None:
        if status != OK:
            raise HostError(status, self.lib.asymvq_status_name(status).decode(), self.lib.asymvq_last_error().decode())

    def close(self) -> None:
        if self.handle:
            self.lib.asymvq_close(self.handle)
            self.handle = C.c_void_p()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _take(self, out: Output) -> np.ndarray:
        shape = tuple(out.shape[i] for i in range(out.ndim))
        result = np.ctypeslib.as_array(out.data, shape=(out.numel,)).copy().reshape(shape)
        self.lib.asymvq_output_free(C.byref(out))
        return result

    def has(self, component: str) -> bool:
        present = C.c_int()
        self._check(self.lib.asymvq_has_component(self.handle, component.encode(), C.byref(present)))
        return bool(present.value)

    def unet_channels(self) -> int:
        ch = C.c_int()
        self._check(self.lib.asymvq_unet_channels(self.handle, C.byref(ch)))
        return ch.value

    def latent_space(self) -> tuple[int, float, float]:
        """(channels, scaling_factor, shift_factor) of the directory's manifest."""
        ch, scale, shift = C.c_int(), C.c_double(), C.c_double()
        self._check(self.lib.asymvq_latent_space(self.handle, C.byref(ch), C.byref(scale), C.byref(shift)))
        return ch.value, scale.value, shift.value

    def decode(self, latents, image=None, mask=None, *, scaled: bool = False) -> np.ndarray:
        """VAE-space latents (``scaled=True``: diffusion-space ones, asymvq_decode_scaled) -> image."""
        views = [None if x is None else _View(_arr(x)) for x in (latents, image, mask)]
        out = Output()
        fn = self.lib.asymvq_decode_scaled if scaled else self.lib.asymvq_decode
        self._check(fn(self.handle, *[None if v is None else v.ptr() for v in views], C.byref(out)))
        return self._take(out)

    def decode_region(self, latents, image, mask, margin: int = -1, *, scaled: bool = False, region: str | int | None = None,
                      choice: RegionChoice | None = None) -> np.ndarray:
        """The mask's box only (asymvq_decode_region; margin < 0: the manifest's default), the rest is ``image``.
        With ``region`` ("mask", "auto" or an int, passed as is) or ``choice`` (filled with what was decoded):
        asymvq_decode_region_ex."""
        views = [None if x is None else _View(_arr(x)) for x in (latents, image, mask)]
        ptrs = [None if v is None else v.ptr() for v in views]
        out = Output()
        if region is None and choice is None:
            fn = self.lib.asymvq_decode_region_scaled if scaled else self.lib.asymvq_decode_region
            self._check(fn(self.handle, *ptrs, margin, C.byref(out)))
        else:
            mode = region if isinstance(region, int) else REGIONS[region or "mask"]
            fn = self.lib.asymvq_decode_region_scaled_ex if scaled else self.lib.asymvq_decode_region_ex
            self._check(fn(self.handle, *ptrs, mode, margin, None if choice is None else C.pointer(choice), C.byref(out)))
        return self._take(out)

    def encode_text(self, ids) -> np.ndarray:
        v = _View(np.asarray(_arr(ids), dtype=np.int64))
        out = Output()
        self._check(self.lib.asymvq_encode_text(self.handle, v.ptr(), C.byref(out)))
        return self._take(out)

    def inpaint(self, *, prompt_embeds=None, negative_embeds=None, prompt_ids=None, negative_ids=None, image=None,
                mask=None, height: int = 0, width: int = 0, steps: int = 50, guidance_scale: float = 7.5, seed: int = 0,
                scheduler: str = "ddim", stats: Stats | None = None, region: str | int | None = None, margin: int = -1,
                region_choice: RegionChoice | None = None, struct_size: int | None = None) -> np.ndarray:
        """``region``: None, "mask" or "auto" (or an int, passed as is); ``region_choice``: filled with what the
        decode step decoded; ``struct_size``: another than the init's (``V1_SIZE`` / ``V2_SIZE``: a caller of the
        ABI 1 / 2 layout, whose struct ends before region and margin / before region_choice)."""
        p = Params()
        self.lib.asymvq_inpaint_params_init(C.byref(p))
        keep = []
        for name, x in (("prompt_embeds", prompt_embeds), ("negative_embeds", negative_embeds),
                        ("prompt_ids", prompt_ids), ("negative_ids", negative_ids), ("image", image), ("mask", mask)):
            if x is not None:
                a = _arr(x)
                if name.endswith("_ids"):
                    a = np.asarray(a, dtype=np.int64)
                v = _View(a)
                keep.append(v)
                setattr(p, name, v.ptr())
        p.height, p.width, p.steps, p.guidance_scale, p.seed = height, width, steps, guidance_scale, seed
        p.scheduler = SCHEDULERS[scheduler]
        p.region = region if isinstance(region, int) else REGIONS[region]
        p.margin = margin
        if struct_size is not None:
            p.struct_size = struct_size
        if stats is not None:
            p.stats = C.pointer(stats)
        if region_choice is not None:
            p.region_choice = C.pointer(region_choice)
        out = Output()
        self._check(self.lib.asymvq_inpaint(self.handle, C.byref(p), C.byref(out)))
        return self._take(out)

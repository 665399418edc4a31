"""``PipelineSource``: where a pipeline comes from and how it runs, the one value every front end holds.

A source is a preset (seeded random networks, no files: SD's tiny / sd15, or tiny-sdxl, sdxl, tiny-flux-fill,
flux-fill), a local diffusers folder of any family (SD 1.x, SDXL or FLUX.1 Fill inpainting, told apart by
``asymvq.pipeline.families.folder_family``; plus an optional decoder checkpoint) or an engines directory from
``asymvq export``; with it the device, dtype,
decoder kernels, default scheduler and, for an engines directory, the backend, its precision and
threads. The rules of which option goes with which, and the words a wrong combination gets, are
written here once: ``asymvq inpaint`` / ``profile`` / ``serve``, the HTTP server and each Ray Serve
stage hold a ``PipelineSource`` and call ``build()``. Every value is plain (strings, numbers), so a
source pickles to a Ray replica as it is.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from ..engines.contract import UNET
from ..engines.loader import BACKENDS
from ..engines.manifest import manifest_family, read_manifest
from ..models import PRESETS as DECODER_PRESETS
from ..models.family_networks import FAMILY_PRESETS
from ..models.sd_networks import SD_PRESETS
from .checks import check_int
from .families import family_from_folder, family_from_preset, folder_family
from .family_rules import SD, preset_family
from .inpaint_pipeline import InpaintPipeline
from .job_rules import check_scheduler

OPENVINO_PRECISIONS = ("fp32", "bf16")
SERVING_PRESET = "tiny"  # what `asymvq serve` and Ray serve when no source is named: a demo


def _text(value) -> str | None:
    return None if value is None else str(value)


def source_family(preset=None, model=None, engines=None) -> str:
    """The family of a preset (by its name), a model folder (by its components' configs: read, not loaded,
    milliseconds) or an engines directory (its manifest's ``family``). What ``asymvq inpaint`` checks a job by
    before any model loads."""
    if preset is not None:
        return preset_family(str(preset))
    if model is not None:
        return folder_family(model)
    if engines is not None:
        return manifest_family(read_manifest(engines))
    return SD


@dataclass(frozen=True)
class PipelineSource:
    """Exactly one of ``preset``, ``model`` (with an optional ``decoder``) or ``engines``; the rest
    says how it runs. Checked on construction, so a bad combination fails before any model loads."""

    preset: str | None = None  # seeded random networks: tiny, sd15, tiny-sdxl, sdxl, tiny-flux-fill, flux-fill
    model: str | None = None  # a local diffusers-format inpainting folder: SD 1.x, SDXL or FLUX.1 Fill
    decoder: str | None = None  # with model: a decoder checkpoint (default: the folder's own VAE decoder); with
    # an SDXL / FLUX.1 Fill preset: a checkpoint or a decoder preset (tiny-asuka: ASUKA's, seeded)
    engines: str | None = None  # an engines directory written by `asymvq export`
    device: str = "cpu"
    dtype: str = "auto"  # preset and model (asymvq.models.devices: auto = bf16 on a CPU with avx512_bf16 or AMX,
    # fp32 on other CPUs, fp16 on CUDA); an engines directory runs at its exported precision
    kernels: str = "torch"  # the torch decoder's kernels: torch or triton (preset and model)
    scheduler: str | None = None  # the default of calls that name none (None: DDIM for SD, the pipeline's own
    # for SDXL; FLUX.1 Fill runs its flow-matching scheduler only)
    backend: str | None = None  # engines: one of BACKENDS (default: the loader's choice)
    precision: str | None = None  # engines with backend openvino: fp32 or bf16
    threads: int | None = None  # engines run by onnxruntime or openvino: their intra-op threads

    def __post_init__(self):
        for name in ("model", "decoder", "engines"):  # Paths from a command line, strings from Ray args
            object.__setattr__(self, name, _text(getattr(self, name)))
        if self.preset is not None:
            family = self.preset in FAMILY_PRESETS
            if self.model is not None or self.engines is not None or (self.decoder is not None and not family):
                raise ValueError("--preset: give either --preset or --model/--engines (with --decoder), not both")
            if self.preset not in SD_PRESETS + FAMILY_PRESETS:
                raise ValueError(f"preset must be one of {list(SD_PRESETS + FAMILY_PRESETS)}, got {self.preset!r}")
            if family and self.decoder is not None and self.decoder not in DECODER_PRESETS \
                    and not Path(self.decoder).exists():
                raise ValueError(f"--decoder: expected a decoder checkpoint or a decoder preset (e.g. tiny-asuka, "
                                 f"asuka-flux), got {self.decoder!r}")
        elif (self.model is None) == (self.engines is None):
            raise ValueError("--model / --engines: give exactly one (a diffusers SD folder, or an `asymvq export` directory)")
        if self.engines is not None:
            if self.decoder is not None:
                raise ValueError("--decoder: an engines directory brings its own decoder; re-export with --decoder instead")
            if self.kernels != "torch":
                raise ValueError("--kernels: chooses the torch decoder's kernels; an engines directory runs its "
                                 "exported engines (drop --kernels)")
        elif self.backend is not None or self.precision is not None:
            raise ValueError("--backend / --precision: they choose how an engines directory runs; give --engines DIR")
        if self.backend is not None and self.backend not in BACKENDS:
            raise ValueError(f"--backend: expected one of {list(BACKENDS)}, got {self.backend!r}")
        if self.precision is not None:
            if self.backend != "openvino":
                raise ValueError("--precision: chooses OpenVINO's inference precision; use it with --backend openvino")
            if self.precision not in OPENVINO_PRECISIONS:
                raise ValueError(f"--precision: expected fp32 or bf16, got {self.precision!r}")
        if self.threads is not None:
            check_int(self.threads, "--threads")
        family = source_family(self.preset, self.model)  # an engines directory's is checked when it loads
        if family != SD:
            if self.kernels != "torch":
                raise ValueError(f"--kernels: the {family} pipelines run the torch decoder kernels only; drop it")
            if self.scheduler is not None:
                check_scheduler(self.scheduler, "--scheduler", family)

    @property
    def family(self) -> str:
        """The pipeline family (``asymvq.pipeline.family_rules``): ``source_family`` of its preset or folder."""
        return source_family(self.preset, self.model, self.engines)

    @classmethod
    def serving(cls, **options) -> "PipelineSource":
        """The source a server runs: ``options`` as given, or the tiny preset when they name no source."""
        if all(options.get(k) is None for k in ("preset", "model", "decoder", "engines")):
            options["preset"] = SERVING_PRESET
        return cls(**options)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @property
    def label(self) -> str:
        """What ``/healthz`` reports as the source: ``preset:tiny``, or the folder or directory."""
        return f"preset:{self.preset}" if self.preset else str(self.model or self.engines)

    def engine_options(self) -> dict:
        """``from_engines`` keyword arguments: the backend, OpenVINO's precision, ORT / OpenVINO threads."""
        options: dict = {"backend": self.backend}
        if self.precision is not None:
            options["precision"] = self.precision
        if self.threads is not None and self.backend in ("onnxruntime", "openvino"):
            options["threads"] = self.threads
        return options

    def build(self, components=None):
        """The pipeline this source describes (an ``InpaintPipeline``, or an SDXL / FLUX.1 Fill one); ``components``:
        only those (``DENOISE_COMPONENTS`` or ``DECODER_COMPONENTS``: what a Ray Serve stage holds), built or loaded
        alone where the source allows. An SDXL / FLUX.1 Fill pipeline is built whole, and a decoding subset then
        lets go of its denoising networks (``FamilyBase.keep_decoder_only``)."""
        if self.family != SD:
            options = dict(device=self.device, dtype=self.dtype, scheduler=self.scheduler, decoder=self.decoder)
            if self.engines is not None:  # the directory's own scheduler unless one is named
                pipe = InpaintPipeline.from_engines(Path(self.engines), device=self.device, scheduler=self.scheduler,
                                                    **self.engine_options())
            elif self.preset is not None:
                pipe = family_from_preset(self.preset, **options)
            else:
                pipe = family_from_folder(Path(self.model), self.family, **options)
            if components is not None and UNET not in components:
                pipe.keep_decoder_only()
            return pipe
        scheduler = self.scheduler or "ddim"
        if self.preset is not None:
            return InpaintPipeline.from_preset(self.preset, device=self.device, dtype=self.dtype,
                                               scheduler=scheduler, kernels=self.kernels, components=components)
        if self.engines is not None:
            return InpaintPipeline.from_engines(Path(self.engines), device=self.device, scheduler=scheduler,
                                                components=components, **self.engine_options())
        return InpaintPipeline.from_pretrained(Path(self.model), decoder=None if self.decoder is None else Path(self.decoder),
                                               device=self.device, dtype=self.dtype, scheduler=scheduler,
                                               kernels=self.kernels, components=components)

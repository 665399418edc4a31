"""Write an engines directory: one ONNX file, OpenVINO IR and/or AOTInductor package per component, the
tokenizer and scheduler the pipeline needs, and ``manifest.json`` describing and hashing all of it.

The directory is replaced in one step (``atomic_dir``): everything is written into a hidden sibling,
the old directory's components that this export does not rewrite are linked in (``carry_over``), the
manifest is written last, and the sibling is swapped in. A kill at any moment leaves the old complete
directory or the new complete one.

The directory is self-contained: ``asymvq.engines.load_engine_dir`` and the runtime read
nothing else. TensorRT plans are added to it afterwards by
``asymvq.engines.tensorrt_engine.build_plans`` (engines sit above export in the data flow).
"""
from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path

from asymvq.engines.contract import COMPONENTS, DECODER, DECODER_COMPONENTS
from asymvq.engines.manifest import artifact_entry, new_manifest, weights_sha256, write_manifest
from asymvq.models.components import FAMILY_COMPONENTS, SD
from asymvq.models.extras import missing_extra
from asymvq.models.family_networks import FAMILY_PRESETS, family_scheduler_config, family_tokenizers
from asymvq.models.latent_space import LatentSpace
from asymvq.models.sd_networks import SCHEDULER_CONFIG, SCHEDULER_FILE, SD_PRESETS, build_tokenizer
from asymvq.models.sources import Source, build_module

from .aoti_export import export_aoti
from .atomic_dir import clean_stale, export_target, publish, staging_dir
from .carry_over import keep_artifacts, keep_components, previous_manifest
from .specs import DEFAULT_OPSET, Shapes, io_specs, spatial_multiple

log = logging.getLogger(__name__)

EXPORT_FORMATS = ("onnx", "aoti", "openvino")  # written here; TensorRT plans are built from the ONNX by the engines


def parse_components(value: str | list[str], family: str = SD) -> list[str]:
    """``"all"`` (the ``family``'s components), one name, or a comma-separated list; validated (each a
    component of ``family``) and de-duplicated in order."""
    own = FAMILY_COMPONENTS[family]
    items = value.split(",") if isinstance(value, str) else list(value)
    out: list[str] = []
    for item in (i.strip() for i in items):
        names = own if item == "all" else (item,)
        for n in names:
            if n not in COMPONENTS:
                raise ValueError(f"component must be 'all' or one of {list(COMPONENTS)}, got {item!r}")
            if n not in own:
                raise ValueError(f"component: {n!r} is not a network of the {family} family; its components are "
                                 f"'all' or {list(own)}")
            if n not in out:
                out.append(n)
    return out


def _says_all(value: str | list[str]) -> bool:
    items = value.split(",") if isinstance(value, str) else list(value)
    return any(i.strip() == "all" for i in items)


def _write_tokenizer_and_scheduler(out: Path, source: Source) -> dict:
    """tokenizer/ and scheduler/ next to the engines; returns the manifest keys for them."""
    import diffusers

    if source.model is not None:
        from transformers import CLIPTokenizer

        tokenizer = CLIPTokenizer.from_pretrained(source.model, subfolder="tokenizer", local_files_only=True)
        scheduler = json.loads((Path(source.model) / "scheduler" / SCHEDULER_FILE).read_text())
    elif source.preset in FAMILY_PRESETS:
        return _write_family_texts(out, source.preset)
    elif source.preset in SD_PRESETS:
        tokenizer = build_tokenizer(source.preset)
        # SD 1.5's own file: PNDM with these keys (the other schedulers read the same keys).
        scheduler = {"_class_name": "PNDMScheduler", "_diffusers_version": diffusers.__version__,
                     **SCHEDULER_CONFIG, "skip_prk_steps": True}
    else:
        return {}
    for sub in ("tokenizer", "scheduler"):
        shutil.rmtree(out / sub, ignore_errors=True)
    tokenizer.save_pretrained(out / "tokenizer")
    (out / "scheduler").mkdir()
    (out / "scheduler" / SCHEDULER_FILE).write_text(json.dumps(scheduler, indent=2, sort_keys=True) + "\n")
    return {"tokenizer": "tokenizer", "scheduler": "scheduler"}


def _write_family_texts(out: Path, preset: str) -> dict:
    """A FLUX.1 Fill / SDXL preset's tokenizer/, tokenizer_2/ (SDXL: CLIP again; FLUX: T5) and scheduler/."""
    import diffusers

    for sub in ("tokenizer", "tokenizer_2", "scheduler"):
        shutil.rmtree(out / sub, ignore_errors=True)
    for key, tokenizer in family_tokenizers(preset).items():
        tokenizer.save_pretrained(out / key)
    (out / "scheduler").mkdir()
    scheduler = {**family_scheduler_config(preset), "_diffusers_version": diffusers.__version__}
    (out / "scheduler" / SCHEDULER_FILE).write_text(json.dumps(scheduler, indent=2, sort_keys=True) + "\n")
    return {"tokenizer": "tokenizer", "tokenizer_2": "tokenizer_2", "scheduler": "scheduler"}


def _exporters(formats) -> dict:
    """The exporter of each requested format that needs an extra, imported now (MissingExtraError if absent)."""
    found = {}
    if "onnx" in formats or "openvino" in formats:  # the OpenVINO IR is converted from an ONNX export
        try:
            from .onnx_export import export_onnx  # defers the onnx extra
        except ImportError as e:
            raise missing_extra("onnx", f"--format {','.join(formats)}", e) from None
        found["onnx"] = export_onnx
    if "openvino" in formats:
        try:
            from .openvino_export import OPENVINO_VERSION, export_openvino  # defers the openvino extra
        except ImportError as e:
            raise missing_extra("openvino", "--format openvino", e) from None
        found["openvino"] = (export_openvino, OPENVINO_VERSION)
    return found


def export_directory(
    out: str | Path,
    components: str | list[str],
    source: Source,
    *,
    precision: str = "fp32",
    shapes: Shapes,
    opset: int = DEFAULT_OPSET,
    formats: tuple[str, ...] | list[str] = ("onnx",),
) -> dict:
    """Export ``components`` of ``source`` to the directory ``out`` in ``formats`` (onnx, aoti, openvino);
    returns the manifest.

    ``out`` is replaced atomically. When it is an engines directory of the same precision, source,
    shapes and latent space, its other components (and their files) are kept.
    """
    names = parse_components(components, source.family)
    if _says_all(components) and DECODER in names and not source.decoder_module().config.has_condition:
        names.remove(DECODER)  # "all" of a plain decoder (FLUX's, SDXL's own VAE): it has no conditioned entry
    if not formats or any(f not in EXPORT_FORMATS for f in formats):
        raise ValueError(f"formats: expected some of {list(EXPORT_FORMATS)}, got {list(formats)}")
    exporters = _exporters(formats)  # before any work: a missing extra is named at once
    latent_space = source.latent_space(names)  # before any work: a decoder of another latent space is refused
    out = export_target(out)
    clean_stale(out)  # what killed exports of out left beside it
    manifest = new_manifest(
        precision=precision,
        source=source.to_dict(),
        shapes={"batch": list(shapes.batch), "height": list(shapes.height), "width": list(shapes.width)},
        latent_space=latent_space,
        family=source.family,
    )
    old = previous_manifest(out, manifest)
    staged = staging_dir(out)
    try:
        _export_into(staged, names, source, manifest, exporters, old=old, old_root=out, precision=precision,
                     shapes=shapes, latent_space=latent_space, opset=opset, formats=formats)
        write_manifest(staged, manifest)  # last: a staged directory with a manifest is complete
        publish(staged, out)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)  # an error or Ctrl-C: the old directory stays as it was
        raise
    return manifest


def _export_into(staged: Path, names: list[str], source: Source, manifest: dict, exporters: dict, *,
                 old: dict | None, old_root: Path, precision: str, shapes: Shapes, latent_space: LatentSpace,
                 opset: int, formats) -> None:
    """Write the components ``names`` into ``staged`` and their entries into ``manifest``; link what is kept of ``old``."""
    if any(n not in DECODER_COMPONENTS for n in names):  # any network before the decoder reads them
        manifest.update(_write_tokenizer_and_scheduler(staged, source))
    if old is not None:
        keep_components(old, old_root, staged, manifest, names)
    for name in names:
        log.info("exporting %s (%s)", name, precision)
        module = build_module(name, source)
        inputs, outputs = io_specs(name, module, shapes, precision, latent_space)
        entry = {
            "weights_sha256": weights_sha256(module),
            "inputs": [s.to_dict() for s in inputs],
            "outputs": [s.to_dict() for s in outputs],
        }
        entry["artifacts"] = {}
        if "onnx" in formats or "openvino" in formats:
            # OpenVINO alone: its IR is converted from an ONNX file that is not kept
            onnx_dir = staged if "onnx" in formats else Path(tempfile.mkdtemp(prefix=f".{name}-onnx-", dir=staged))
            try:
                files = exporters["onnx"](module, inputs, outputs, onnx_dir / f"{name}.onnx", precision=precision,
                                          multiple=spatial_multiple(name, module), opset=opset)
                if "onnx" in formats:
                    entry["artifacts"]["onnx"] = artifact_entry(staged, files, opset=opset)
                if "openvino" in formats:
                    export_openvino, openvino_version = exporters["openvino"]
                    ir = export_openvino(files[0], staged / f"{name}.xml", precision=precision)
                    entry["artifacts"]["openvino"] = artifact_entry(staged, ir, converted_from="onnx",
                                                                    openvino=openvino_version)
            finally:
                if onnx_dir != staged:
                    shutil.rmtree(onnx_dir, ignore_errors=True)
        if "aoti" in formats:
            if "onnx" in formats:  # export_onnx converted the module in place (fp16); start from the source again
                module = build_module(name, source)
            files = export_aoti(module, inputs, staged / f"{name}.pt2", precision=precision,
                                multiple=spatial_multiple(name, module))
            entry["artifacts"]["aoti"] = artifact_entry(staged, files, device="cpu")  # compiled where built: the CPU
        keep_artifacts(old, old_root, staged, name, entry, formats)
        manifest["components"][name] = entry

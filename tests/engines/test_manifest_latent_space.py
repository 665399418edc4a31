"""The manifest's latent space: checked when read (one ManifestError naming the key), read once per load,
and what the pipeline of an engines directory converts latents with. The directory here is built by
hand from the tiny preset's modules (stand-in artifact files; the torch backend rebuilds the networks
from the recorded source and checks their weights), so no export runs."""
import json
import shutil

import pytest
import torch

from asymvq import InpaintPipeline
from asymvq.engines import loader
from asymvq.engines.manifest import (
    ManifestError,
    artifact_entry,
    manifest_latent_space,
    new_manifest,
    read_manifest,
    weights_sha256,
    write_manifest,
)
from asymvq.export.build import _write_tokenizer_and_scheduler
from asymvq.export.specs import DEFAULT_SHAPES, io_specs
from asymvq.models.components import FAMILY_COMPONENTS
from asymvq.models.components import SD as SD_FAMILY
from asymvq.models.latent_space import SD, LatentSpace
from asymvq.models.sources import Source, build_module
from asymvq.pipeline import Denoised
from asymvq.pipeline.stages import NULL_TIMER

SD_COMPONENTS = FAMILY_COMPONENTS[SD_FAMILY]  # the tiny preset's directory: SD's components


@pytest.fixture(scope="module")
def engines_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("latent-engines")
    source = Source(preset="tiny")
    space = source.latent_space(SD_COMPONENTS)
    manifest = new_manifest(precision="fp32", source=source.to_dict(), shapes={}, latent_space=space)
    manifest.update(_write_tokenizer_and_scheduler(root, source))
    for name in SD_COMPONENTS:
        module = build_module(name, source)
        inputs, outputs = io_specs(name, module, DEFAULT_SHAPES["tiny"], "fp32", space)
        (root / f"{name}.onnx").write_bytes(b"stand-in")
        manifest["components"][name] = {"weights_sha256": weights_sha256(module), "inputs": [s.to_dict() for s in inputs],
                                         "outputs": [s.to_dict() for s in outputs],
                                         "artifacts": {"onnx": artifact_entry(root, [root / f"{name}.onnx"])}}
    write_manifest(root, manifest)
    return root


def _with(root, tmp_path, edit):
    m = json.loads((root / "manifest.json").read_text())
    edit(m)
    (tmp_path / "manifest.json").write_text(json.dumps(m))  # NaN/Infinity as Python's json writes them
    return tmp_path


def _set(key, value):
    return lambda m: m["latent_space"].__setitem__(key, value)


def test_the_manifest_records_the_latent_space(engines_dir):
    m = read_manifest(engines_dir)
    assert m["format_version"] == 2
    assert m["latent_space"] == {"channels": 4, "scaling_factor": 0.18215, "shift_factor": 0.0}
    assert manifest_latent_space(m) == SD


@pytest.mark.parametrize("edit,match", [
    (lambda m: m.pop("latent_space"), r"latent_space must be an object with exactly the keys \['channels', "),
    (lambda m: m["latent_space"].pop("shift_factor"), "latent_space must be an object with exactly the keys"),
    (lambda m: m["latent_space"].update(extra=1), "latent_space must be an object with exactly the keys"),
    (lambda m: m.update(latent_space=[4, 0.18215, 0.0]), "latent_space must be an object"),
    (_set("scaling_factor", 0), r"latent_space\.scaling_factor must be a positive finite number, got 0$"),
    (_set("scaling_factor", -1.0), r"latent_space\.scaling_factor must be a positive finite number, got -1\.0"),
    (_set("scaling_factor", float("nan")), r"latent_space\.scaling_factor must be a positive finite number, got nan"),
    (_set("scaling_factor", float("inf")), r"latent_space\.scaling_factor must be a positive finite number, got inf"),
    (_set("scaling_factor", "0.18215"), r"latent_space\.scaling_factor must be a positive finite number"),
    (_set("scaling_factor", 10**400), r"latent_space\.scaling_factor must be a positive finite number"),  # not float
    (_set("shift_factor", None), r"latent_space\.shift_factor must be a finite number, got None"),
    (_set("shift_factor", float("-inf")), r"latent_space\.shift_factor must be a finite number"),
    (_set("channels", True), r"latent_space\.channels must be a positive integer, got True"),
    (_set("channels", 4.0), r"latent_space\.channels must be a positive integer, got 4\.0"),
    (_set("channels", 0), r"latent_space\.channels must be a positive integer"),
    (_set("channels", 16), r"decoder\.inputs\[0\]\.dims\[1\] must be 16 \(latent_channels of latent_space\.channels = 16\), "
                           r"got 4"),
    (lambda m: m.update(format_version=1), r"format_version 1; this asymvq reads 2 \(format 1 does not record the latent "
                                           r"space\): re-export the directory with `asymvq export`"),
])
def test_bad_latent_spaces_are_refused_naming_the_key(engines_dir, tmp_path, edit, match):
    d = _with(engines_dir, tmp_path, edit)
    with pytest.raises(ManifestError, match=r"^engines: .*" + match):
        read_manifest(d)


def test_the_vae_moments_must_be_twice_the_channels(engines_dir, tmp_path):
    def edit(m):
        spec = m["components"]["vae-encoder"]["outputs"][0]
        spec["dims"][1] = spec["min"][1] = spec["opt"][1] = spec["max"][1] = 4
    with pytest.raises(ManifestError, match=r"vae-encoder\.outputs\[0\]\.dims\[1\] must be 8 \(2\*latent_channels"):
        read_manifest(_with(engines_dir, tmp_path, edit))


def test_an_engines_directory_is_read_once_per_load(engines_dir, monkeypatch):
    reads = []
    real = loader.read_manifest

    def counting(path):
        reads.append(path)
        return real(path)

    monkeypatch.setattr(loader, "read_manifest", counting)
    import asymvq.pipeline.parts as parts
    monkeypatch.setattr(parts, "read_manifest", counting)
    InpaintPipeline.from_engines(engines_dir, backend="torch")
    assert len(reads) == 1
    # the public functions still take a path alone
    assert loader.load_scheduler_config(engines_dir)["beta_schedule"] == "scaled_linear" and len(reads) == 2


def test_the_pipeline_converts_with_the_manifest_latent_space(engines_dir, tmp_path):
    space = LatentSpace(4, 0.5, 0.1)
    d = tmp_path / "shifted"
    shutil.copytree(engines_dir, d)
    _with(engines_dir, d, lambda m: m.update(latent_space=space.to_dict()))
    pipe = InpaintPipeline.from_engines(d, backend="torch")
    assert pipe.spec.latent_space == space
    g = torch.Generator().manual_seed(0)
    z = torch.randn(1, 4, 8, 8, generator=g)
    image = torch.rand(1, 3, 64, 64, generator=g) * 2 - 1
    mask = (torch.rand(1, 1, 64, 64, generator=g) > 0.5).float()
    engine = pipe.stages.engines["decoder"]
    with torch.inference_mode():
        assert torch.equal(pipe.decode(Denoised(z, image, mask)), engine(latent=z / 0.5 + 0.1, image=image, mask=mask)["sample"])
        moments = pipe.stages.vae_encode(image)
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    want = (DiagonalGaussianDistribution(moments).sample(torch.Generator().manual_seed(3)) - 0.1) * 0.5
    assert torch.equal(pipe._vae_latents(image, torch.Generator().manual_seed(3), NULL_TIMER), want)

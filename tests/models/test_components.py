"""The component vocabulary as data: what the contract, the manifest reader and export derive from it."""
import pytest
import torch

from asymvq.engines.contract import COMPONENT_IO, COMPONENTS, DECODER_COMPONENTS
from asymvq.export.specs import DEFAULT_SHAPES, example_inputs, io_specs
from asymvq.models.component_modules import WRAPPERS
from asymvq.models.components import (
    DECODER,
    DENOISERS,
    DYNAMIC_DIMS,
    FAMILY_COMPONENTS,
    FLOAT,
    FLUX_FILL,
    SDXL,
    STATIC_DIMS,
    UNET,
    VAE_ENCODER,
    VOCABULARY,
    TensorIO,
    family_of_components,
    split_dim,
)
from asymvq.models.components import SD as SD_FAMILY
from asymvq.models.config import DecoderConfig
from asymvq.models.decoder import AsymmetricDecoder
from asymvq.models.latent_space import FLUX, SD
from asymvq.models.sources import Source, build_module


def test_the_contract_is_derived_from_the_vocabulary():
    assert COMPONENTS[:5] == ("text-encoder", "vae-encoder", "unet", "decoder", "decoder-plain")  # pipeline order
    assert set(COMPONENTS) == {c for names in FAMILY_COMPONENTS.values() for c in names}  # each in a family
    assert COMPONENT_IO == {n: (c.input_names, c.output_names) for n, c in VOCABULARY.items()}
    assert DECODER_COMPONENTS == ("decoder", "decoder-plain")


def test_each_input_name_has_one_meaning():
    """example_inputs and the manifest's rank check look tensors up by name across components."""
    seen = {}
    for c in VOCABULARY.values():
        for t in c.inputs:
            assert seen.setdefault(t.name, (t.domain, len(t.dims))) == (t.domain, len(t.dims)), t.name
    for c in VOCABULARY.values():
        for t in c.inputs + c.outputs:
            for d in t.dims:
                assert isinstance(d, int) or split_dim(d)[1] in DYNAMIC_DIMS + STATIC_DIMS


def test_tensor_io_binds_dims_and_checks_itself():
    moments = VOCABULARY[VAE_ENCODER].tensor("moments")
    assert moments.bind_dims({"latent_channels": 16}) == ("batch", 32, "h", "w")
    assert VOCABULARY[UNET].tensor("timestep").ranks == (0, 1) and moments.ranks == (4,)
    assert VOCABULARY[DECODER].tensor("image").dtype("float16") == "float16"
    assert VOCABULARY[UNET].tensor("timestep").dtype("float16") == "float32"
    with pytest.raises(ValueError, match="no size bound for dim 'latent_channels'"):
        moments.bind_dims({})
    with pytest.raises(ValueError, match="names none of"):
        TensorIO("x", FLOAT, ("batch", "depth"))
    with pytest.raises(ValueError, match="kind must be one of"):
        TensorIO("x", "float64", ("batch",))


@pytest.mark.parametrize("preset,family", [("tiny", SD_FAMILY), ("tiny-sdxl", SDXL), ("tiny-flux-fill", FLUX_FILL)])
def test_wrappers_state_the_sizes_they_fix(preset, family):
    source = Source(preset=preset)
    assert source.family == family
    for name in FAMILY_COMPONENTS[family]:
        if name == DECODER and family != SD_FAMILY:
            with pytest.raises(ValueError, match="no condition branch"):  # the family VAE's plain decoder
                build_module(name, source)
            continue
        module = build_module(name, source)
        assert isinstance(module, WRAPPERS[name])
        assert set(module.static_dims()) <= set(STATIC_DIMS)
    with pytest.raises(ValueError, match=f"is not a network of the {family} family"):
        build_module(DENOISERS[SDXL if family == FLUX_FILL else FLUX_FILL], source)


def test_a_family_is_told_by_its_components():
    assert family_of_components(FAMILY_COMPONENTS[SDXL]) == SDXL
    assert family_of_components(["t5-encoder"]) == FLUX_FILL
    assert family_of_components([DECODER, VAE_ENCODER]) == SD_FAMILY
    with pytest.raises(ValueError, match="one family at a time"):
        family_of_components([UNET, DENOISERS[SDXL]])


def test_specs_take_the_latent_channels_from_the_latent_space():
    flux_tiny = DecoderConfig((16, 32, 64, 64), 1, latent_channels=16, norm_num_groups=8,
                              scaling_factor=FLUX.scaling_factor, shift_factor=FLUX.shift_factor)
    module = WRAPPERS[DECODER](AsymmetricDecoder(flux_tiny)).eval()
    inputs, outputs = io_specs(DECODER, module, DEFAULT_SHAPES["tiny"], "fp32", FLUX)
    latent = inputs[0]
    assert latent.dims == ("batch", 16, "h", "w") and latent.min == (1, 16, 1, 1) and latent.max == (4, 16, 16, 16)
    assert inputs[1].dims == ("batch", 3, "8*h", "8*w") and outputs[0].max == (4, 3, 128, 128)
    with pytest.raises(ValueError, match="the decoder has 16 latent channels, the directory's latent space 4"):
        io_specs(DECODER, module, DEFAULT_SHAPES["tiny"], "fp32", SD)
    vae = build_module(VAE_ENCODER, Source(preset="tiny"))
    assert io_specs(VAE_ENCODER, vae, DEFAULT_SHAPES["tiny"], "fp32", SD)[1][0].dims == ("batch", 8, "h", "w")
    feeds = example_inputs(inputs)
    assert set(torch.unique(feeds["mask"]).tolist()) <= {0.0, 1.0} and feeds["image"].abs().max() <= 1


def test_the_directory_latent_space_is_the_sources():
    assert Source(preset="tiny").latent_space(["unet"]) == SD
    assert Source(preset="tiny").latent_space(["decoder", "unet"]) == SD
    assert Source(decoder="x1.5").latent_space(["decoder"]) == SD


def test_a_decoder_of_another_latent_space_is_refused_next_to_the_sd_networks(tmp_path):
    from dataclasses import replace

    from asymvq.models.checkpoints import save_decoder
    from asymvq.models.config import preset_config

    sdxl_like = AsymmetricDecoder(replace(preset_config("tiny"), scaling_factor=0.13025))
    save_decoder(sdxl_like, tmp_path / "dec")
    source = Source(preset="tiny", decoder=str(tmp_path / "dec"))
    assert source.latent_space(["decoder"]).scaling_factor == 0.13025  # alone, the decoder's own
    with pytest.raises(ValueError, match=r"decoder: it decodes the latent space .*0\.13025.*but the SD VAE's is"):
        source.latent_space(["unet", "decoder"])

"""What an engine states about itself (``Capabilities``), so the runtime asks instead of probing its insides:
the decoder modes a torch decoder runs, the static dims exported specs bind, the defaults of a foreign engine."""
import pytest
import torch

from asymvq.engines.contract import (
    DECODER,
    DECODER_PLAIN,
    UNET,
    Capabilities,
    EngineBase,
    capabilities,
)
from asymvq.engines.feeds import ExportedEngine
from asymvq.engines.torch_engine import TorchEngine, torch_decoder_engines
from asymvq.export.specs import DEFAULT_SHAPES, io_specs
from asymvq.models.sources import Source, build_module, random_decoder


def test_a_torch_decoder_tiles_and_decodes_regions():
    dec = random_decoder("tiny")
    engines = torch_decoder_engines(dec)
    cond, plain = capabilities(engines[DECODER]), capabilities(engines[DECODER_PLAIN])
    assert (cond.condition, cond.tiles, cond.regions) == (True, True, True)
    assert (plain.condition, plain.tiles, plain.regions) == (False, True, True)
    assert cond.parameters == sum(p.numel() for p in dec.parameters())
    assert cond.static_dims == {"latent_channels": dec.config.latent_channels}
    lat = torch.randn(1, 4, 24, 20)
    with torch.inference_mode():
        want = dec(lat, None, None, tile=20, overlap=18)
    got = engines[DECODER_PLAIN].decode_with_modes({"tile": 20, "overlap": 18}, latent=lat)["sample"]
    assert torch.equal(got, want)


def test_exported_specs_bind_the_static_dims_and_decode_the_whole_image():
    source = Source(preset="tiny")
    for name in (UNET, DECODER):
        module = build_module(name, source)
        inputs, outputs = io_specs(name, module, DEFAULT_SHAPES["tiny"], "fp32")
        caps = ExportedEngine(name, inputs, outputs, "cpu").capabilities
        assert module.static_dims().items() <= caps.static_dims.items(), name  # what the torch module states
        # the conditional decoder decodes regions (crops through the same graph); nothing exported tiles
        assert (caps.tiles, caps.regions, caps.parameters) == (False, name == DECODER, None)
        assert caps.condition == (name == DECODER)
        # the tiny ranges (1..16 latent pixels) bind no format but TensorRT/AOTInductor: any crop here
        assert caps.region_sizes is None
    unet = build_module(UNET, source)
    assert TorchEngine(UNET, unet).capabilities.static_dims["text_dim"] == unet.unet.config.cross_attention_dim


def test_bound_formats_state_their_crop_range():
    inputs, outputs = io_specs(DECODER, build_module(DECODER, Source(preset="tiny")), DEFAULT_SHAPES["tiny"], "fp32")

    class Bound(ExportedEngine):
        backend, bound_ranges = "aoti", True

    assert Bound(DECODER, inputs, outputs, "cpu").capabilities.region_sizes == ((1, 16), (1, 16))


def test_an_engine_that_states_nothing_gets_its_components_defaults():
    class Foreign:
        component, output_names = DECODER, ("sample",)

    assert capabilities(Foreign()) == Capabilities(condition=True)
    with pytest.raises(ValueError, match="decodes the whole image only"):
        EngineBase(DECODER).decode_with_modes({"tile": 8}, latent=torch.zeros(1))

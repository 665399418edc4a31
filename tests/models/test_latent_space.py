"""The latent space: diffusers' conversions (bit for bit SD's division when there is no shift), its
checks, and the decoder config that carries it (old saved configs without a shift still load)."""
import json
import math

import pytest
import torch
from reference_models import random_inputs

from asymvq import AsymmetricDecoder, DecoderConfig, load_decoder, save_decoder
from asymvq.models.latent_space import FLUX, SD, SD3, LatentSpace


def test_sd_conversions_are_the_plain_division_and_product_bit_for_bit():
    z = torch.randn(2, 4, 5, 7)
    z[0, 0, 0, 0] = -0.0  # -0.0 + 0.0 would be +0.0: no shift is added at all
    assert torch.equal(SD.to_vae(z), z / 0.18215)
    assert torch.equal(SD.to_diffusion(z), z * 0.18215)
    assert math.copysign(1.0, SD.to_vae(z)[0, 0, 0, 0].item()) == -1.0


@pytest.mark.parametrize("space", [SD3, FLUX, LatentSpace(4, 0.5, -0.25)])
def test_shifted_conversions_are_diffusers_formulas(space):
    z = torch.randn(1, space.channels, 3, 4, dtype=torch.float64)
    # diffusers' SD3/FLUX pipelines: latents / scaling_factor + shift_factor before vae.decode;
    # (latents - shift_factor) * scaling_factor after vae.encode
    assert torch.equal(space.to_vae(z), z / space.scaling_factor + space.shift_factor)
    assert torch.equal(space.to_diffusion(z), (z - space.shift_factor) * space.scaling_factor)
    torch.testing.assert_close(space.to_diffusion(space.to_vae(z)), z, rtol=1e-12, atol=1e-12)


def test_known_latent_spaces():
    assert (SD.channels, SD.scaling_factor, SD.shift_factor, SD.vae_scale_factor) == (4, 0.18215, 0.0, 8)
    assert (SD3.channels, SD3.scaling_factor, SD3.shift_factor) == (16, 1.5305, 0.0609)
    assert (FLUX.channels, FLUX.scaling_factor, FLUX.shift_factor) == (16, 0.3611, 0.1159)
    assert LatentSpace() == SD and LatentSpace(4, 1, 0).scaling_factor == 1.0  # ints are taken as floats


@pytest.mark.parametrize("kwargs,match", [
    (dict(channels=True), "channels must be a positive integer, got True"),
    (dict(channels=4.0), "channels must be a positive integer"),
    (dict(channels=0), "channels must be a positive integer"),
    (dict(scaling_factor=0), "scaling_factor must be a positive finite number, got 0"),
    (dict(scaling_factor=-0.18215), "scaling_factor must be a positive finite number"),
    (dict(scaling_factor=float("nan")), "scaling_factor must be a positive finite number, got nan"),
    (dict(scaling_factor=float("inf")), "scaling_factor must be a positive finite number"),
    (dict(scaling_factor="0.18215"), "scaling_factor must be a positive finite number"),
    (dict(scaling_factor=True), "scaling_factor must be a positive finite number"),
    (dict(shift_factor=float("nan")), "shift_factor must be a finite number, got nan"),
    (dict(shift_factor=None), "shift_factor must be a finite number, got None"),
])
def test_bad_values_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LatentSpace(**kwargs)


def test_dict_form_names_the_key():
    assert LatentSpace.from_dict(FLUX.to_dict()) == FLUX
    assert FLUX.to_dict() == {"channels": 16, "scaling_factor": 0.3611, "shift_factor": 0.1159}
    with pytest.raises(ValueError, match=r"^latent_space\.scaling_factor must be a positive finite number, got 0$"):
        LatentSpace.from_dict({"channels": 4, "scaling_factor": 0, "shift_factor": 0.0})
    with pytest.raises(ValueError, match=r"^latent_space must be an object with exactly the keys"):
        LatentSpace.from_dict({"channels": 4, "scaling_factor": 0.18215})
    with pytest.raises(ValueError, match=r"^vae\.latent_space must be an object"):
        LatentSpace.from_dict([4, 0.18215, 0.0], key="vae.latent_space")


def test_from_a_diffusers_vae_config():
    assert LatentSpace.from_vae_config({}) == SD  # diffusers' defaults
    assert LatentSpace.from_vae_config({"scaling_factor": 0.13025, "shift_factor": None}) == LatentSpace(4, 0.13025)
    assert LatentSpace.from_vae_config({"latent_channels": 16, "scaling_factor": 1.5305, "shift_factor": 0.0609}) == SD3


def test_decoder_config_carries_its_latent_space(tmp_path):
    assert DecoderConfig().latent_space == SD and DecoderConfig().shift_factor == 0.0
    cfg = DecoderConfig((16, 32, 64, 64), 1, latent_channels=16, norm_num_groups=8, scaling_factor=0.3611,
                        shift_factor=0.1159)
    assert cfg.latent_space == FLUX
    assert DecoderConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="shift_factor must be a finite number"):
        DecoderConfig(shift_factor=float("inf"))
    with pytest.raises(ValueError, match="scaling_factor must be a positive finite number"):
        DecoderConfig(scaling_factor=0.0)
    # a folder saved before the shift existed (no "shift_factor" in config.json) still loads, unshifted
    save_decoder(AsymmetricDecoder("tiny"), tmp_path / "old")
    config = json.loads((tmp_path / "old" / "config.json").read_text())
    del config["shift_factor"]
    (tmp_path / "old" / "config.json").write_text(json.dumps(config))
    assert load_decoder(tmp_path / "old").config.latent_space == SD


def test_decode_scaled_applies_scale_and_shift():
    torch.manual_seed(0)
    cfg = DecoderConfig((16, 32, 64, 64), 1, latent_channels=16, norm_num_groups=8, scaling_factor=0.3611,
                        shift_factor=0.1159)
    dec = AsymmetricDecoder(cfg).eval()
    _, image, mask = random_inputs(batch=1)
    z = torch.randn(1, 16, image.shape[-2] // 8, image.shape[-1] // 8)
    with torch.no_grad():
        assert torch.equal(dec.decode_scaled(z, image, mask), dec(z / 0.3611 + 0.1159, image, mask))
        assert torch.equal(dec.decode_scaled(z), dec(z / 0.3611 + 0.1159))
    with pytest.raises(ValueError, match=r"latents: expected shape \(B, 16, h, w\)"):
        dec.decode_scaled(torch.randn(1, 4, 2, 2))


def test_sd_decode_scaled_is_the_division_bit_for_bit():
    dec = AsymmetricDecoder("tiny").eval()
    z, image, mask = random_inputs(batch=2)
    with torch.no_grad():
        assert torch.equal(dec.decode_scaled(z, image, mask), dec(z / 0.18215, image, mask))

"""load_decoder on every supported layout, each checked against the diffusers reference output."""
import pytest
import torch
from reference_models import diffusers_reference, random_inputs, to_official_layout
from safetensors.torch import save_file

from asymvq import AsymmetricDecoder, CheckpointError, load_decoder, preset_config, save_decoder
from asymvq.models.checkpoints import read_checkpoint


@pytest.fixture(scope="module")
def tiny_reference():
    ref = diffusers_reference("tiny")
    z, image, mask = random_inputs(batch=2, h=3, w=5)
    with torch.no_grad():
        expected = ref.decode(z, image=image, mask=mask).sample
    return ref, (z, image, mask), expected


def _check(decoder, inputs, expected):
    with torch.no_grad():
        got = decoder(*inputs)
    assert (got - expected).abs().max().item() <= 1e-5


def test_diffusers_folder(tmp_path, tiny_reference):
    ref, inputs, expected = tiny_reference
    ref.save_pretrained(tmp_path / "vae")
    _check(load_decoder(tmp_path / "vae"), inputs, expected)
    # a whole diffusers pipeline folder resolves to its vae/
    _check(load_decoder(tmp_path), inputs, expected)


def test_official_lightning_checkpoint(tmp_path, tiny_reference):
    ref, inputs, expected = tiny_reference
    sd = to_official_layout(ref.state_dict())
    # dead ConvTranspose weights and the training loss: present in the release, never used
    sd["decoder.up_layers.0.weight"] = torch.randn(64, 64, 4, 4)
    sd["loss.logvar"] = torch.zeros(())
    torch.save({"state_dict": sd, "epoch": 3}, tmp_path / "base.ckpt")
    dec = load_decoder(tmp_path / "base.ckpt")  # preset inferred from shapes
    assert dec.config.block_out_channels == (16, 32, 64, 64) and dec.config.condition == "conv"
    assert read_checkpoint(tmp_path / "base.ckpt")[2] == "official"
    _check(dec, inputs, expected)


def test_official_layout_infers_released_sizes():
    from asymvq.models.checkpoints import infer_ldm_config

    for preset in ("base", "x1.5", "x2"):
        with torch.device("meta"):
            ours = AsymmetricDecoder(preset).state_dict()  # post_quant_conv sits beside decoder.*, as released
            sd = to_official_layout({k if k.startswith("post_quant_conv.") else f"decoder.{k}": v for k, v in ours.items()})
        cfg = infer_ldm_config(sd)
        assert cfg == preset_config(preset)


def test_single_file_sd_vae_is_vanilla(tmp_path):
    ref = diffusers_reference("vanilla")
    sd = {"first_stage_model." + k: v for k, v in to_official_layout(ref.state_dict()).items()}
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "vae.safetensors"))
    dec = load_decoder(tmp_path / "vae.safetensors")
    assert dec.config.condition is None and dec.config.block_out_channels == (128, 256, 512, 512)
    z, _, _ = random_inputs(batch=1, h=2, w=3)
    with torch.no_grad():
        assert (dec(z) - ref.decode(z).sample).abs().max().item() <= 1e-5


def test_own_format_round_trip(tmp_path):
    torch.manual_seed(3)
    dec = AsymmetricDecoder("tiny").eval()
    save_decoder(dec, tmp_path / "dec")
    back = load_decoder(tmp_path / "dec")
    inputs = random_inputs(batch=1)
    with torch.no_grad():
        assert torch.equal(dec(*inputs), back(*inputs))


def test_partial_config_round_trip(tmp_path):
    from asymvq import DecoderConfig

    dec = AsymmetricDecoder(DecoderConfig((16, 32, 64, 64), 1, norm_num_groups=8, condition="partial"))
    save_decoder(dec, tmp_path / "p")
    assert load_decoder(tmp_path / "p").config.condition == "partial"


def test_missing_and_unexpected_keys_are_listed(tmp_path, tiny_reference):
    ref, _, _ = tiny_reference
    sd = to_official_layout(ref.state_dict())
    del sd["decoder.conv_out.bias"]
    sd["decoder.mystery.weight"] = torch.zeros(1)
    torch.save({"state_dict": sd}, tmp_path / "broken.ckpt")
    with pytest.raises(CheckpointError, match=r"missing keys \['conv_out.bias'\].*unexpected keys \['mystery.weight'\]"):
        load_decoder(tmp_path / "broken.ckpt")


def test_preset_that_does_not_fit_is_refused(tmp_path, tiny_reference):
    ref, _, _ = tiny_reference
    ref.save_pretrained(tmp_path / "vae")
    with pytest.raises(CheckpointError, match="shape mismatches|missing keys"):
        load_decoder(tmp_path / "vae", preset="base")


def test_bad_paths_and_formats(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_decoder(tmp_path / "nope.ckpt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="config.json"):
        load_decoder(tmp_path / "empty")
    torch.save({"state_dict": {"model.diffusion_model.x": torch.zeros(1)}}, tmp_path / "unet.ckpt")
    with pytest.raises(CheckpointError, match="no decoder weights"):
        load_decoder(tmp_path / "unet.ckpt")


def test_dtype_and_device_arguments(tmp_path):
    save_decoder(AsymmetricDecoder("tiny"), tmp_path / "d")
    dec = load_decoder(tmp_path / "d", dtype=torch.float16)
    assert dec.conv_in.weight.dtype == torch.float16 and not dec.training

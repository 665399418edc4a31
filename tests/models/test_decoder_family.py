"""The decoder family beyond SD 1.x: SDXL, SD3 and FLUX VAEs, and ASUKA's conditional decoder.

Vanilla presets against diffusers' ``AutoencoderKL.decode`` (fp32, 1e-5); BFL's ldm layout against the
same weights in diffusers' layout; ASUKA against an independent plain-torch reference written from its
published description (the main path on diffusers' own modules, the branch and blends functional).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from reference_models import diffusers_reference, random_inputs, to_official_layout
from safetensors.torch import save_file

from asymvq import PRESETS, AsymmetricDecoder, load_decoder
from asymvq.models.checkpoints import CheckpointError, decoder_from_vae, infer_ldm_config

TOL = dict(atol=1e-5, rtol=1e-5)  # fp32, vanilla presets against diffusers
# ASUKA against its plain-torch reference: both are 3.6e-6 from a float64 run of themselves (outputs
# within +-2.1); two fp32 runs have differed by up to 1.8e-5 when oneDNN picked other conv algorithms.
ASUKA_TOL = dict(atol=1e-4, rtol=1e-4)


def _bfl_layout(vae) -> dict:
    """A diffusers FLUX-style VAE's weights as BFL's ae.safetensors names them (ldm layout, no quant convs)."""
    return {k: v.contiguous() for k, v in to_official_layout(vae.state_dict()).items()}


@pytest.mark.parametrize("preset", ["tiny-flux"])
def test_flux_style_decoder_equals_diffusers(preset, tmp_path):
    vae = diffusers_reference(preset)
    z, _, _ = random_inputs(channels=16)
    with torch.no_grad():
        expected = vae.decode(z).sample
        ours = decoder_from_vae(vae)
        assert ours.config == PRESETS[preset] and ours.post_quant_conv is None
        torch.testing.assert_close(ours(z), expected, **TOL)
        # decode_scaled undoes FLUX's scale and shift: z_vae = z / 0.3611 + 0.1159
        zd = (z - vae.config.shift_factor) * vae.config.scaling_factor
        torch.testing.assert_close(ours.decode_scaled(zd), expected, **TOL)
        # a diffusers AutoencoderKL folder (config.json records 16 channels, no quant convs, the shift)
        vae.save_pretrained(tmp_path / "vae")
        folder = load_decoder(tmp_path / "vae")
        assert folder.config.latent_space == PRESETS[preset].latent_space
        torch.testing.assert_close(folder(z), expected, **TOL)
        # BFL's ae.safetensors: ldm names, encoder beside the decoder, no quant convs
        save_file(_bfl_layout(vae), str(tmp_path / "ae.safetensors"))
        bfl = load_decoder(tmp_path / "ae.safetensors")
        assert bfl.config == PRESETS[preset] and bfl.load_report["format"] == "ldm-vae"
        assert bfl.load_report["ignored"].get("encoder.", 0) > 0  # counted, not silently dropped
        torch.testing.assert_close(bfl(z), expected, **TOL)


def test_real_size_ldm_files_take_their_latent_space_from_the_checkpoint():
    """The weights cannot tell SD from SDXL or SD3 from FLUX: the single file's other networks can."""
    def ldm(preset):
        with torch.device("meta"):
            ours = AsymmetricDecoder(preset).state_dict()
        return to_official_layout({k if k.startswith("post_quant_conv.") else f"decoder.{k}": v for k, v in ours.items()})

    assert infer_ldm_config(ldm("flux")) == PRESETS["flux"]  # BFL's ae.safetensors
    assert infer_ldm_config(ldm("flux"), "sd3") == PRESETS["sd3"]  # under first_stage_model. of an SD3 file
    assert infer_ldm_config(ldm("vanilla")) == PRESETS["vanilla"]
    assert infer_ldm_config(ldm("vanilla"), "sdxl") == PRESETS["sdxl"]
    assert infer_ldm_config(ldm("asuka-flux")) == PRESETS["asuka-flux"]


def test_single_file_sd3_checkpoint_decodes_in_sd3_space(tmp_path):
    vae = diffusers_reference("tiny-flux")
    sd = {"first_stage_model." + k: v for k, v in _bfl_layout(vae).items()}
    sd["model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight"] = torch.zeros(2, 2)
    save_file(sd, str(tmp_path / "sd3.safetensors"))
    dec = load_decoder(tmp_path / "sd3.safetensors", preset=None)
    # no tiny SD3 preset: the shapes make a custom config, the latent space comes from the family
    assert (dec.config.scaling_factor, dec.config.shift_factor) == (PRESETS["sd3"].scaling_factor, PRESETS["sd3"].shift_factor)
    assert dec.load_report["ignored"]["model."] == 1


# -- ASUKA -------------------------------------------------------------------------------------------
def _asuka_branch(c: int, top: int, gated: bool, seed: int = 3) -> dict:
    """Random weights of ASUKA's five branch convs in its checkpoint's names (decoder.encoder.layers.N)."""
    g = torch.Generator().manual_seed(seed)
    geometry = [(4, c, 3), (c, 2 * c, 3), (2 * c, top, 4), (top, top, 4), (top, top, 4)]
    sd = {}
    for i, (cin, cout, k) in enumerate(geometry):
        cout = 2 * cout if gated else cout
        sd[f"decoder.encoder.layers.{i}.weight"] = torch.randn(cout, cin, k, k, generator=g) * (1.0 / (cin * k * k)) ** 0.5
        sd[f"decoder.encoder.layers.{i}.bias"] = torch.randn(cout, generator=g) * 0.1
    return sd


def _reference_asuka(vae, branch: dict, z, image, mask, gated: bool):
    """ASUKA's decode written from its description: branch input (1-m)*x ++ m; 3x3 s1, 3x3 s1, three 4x4
    s2 p1 convs, each output kept before the ReLU feeding the next (gated: x*clamp(1-tanh(g),0,1));
    blend h*m + f*(1-m) at each level's input and before norm_out, level masks = area average > 0."""
    x = torch.cat([(1 - mask) * image, mask.expand(image.shape[0], -1, -1, -1)], 1)
    feats = []
    for i in range(5):
        stride, pad = (1, 1) if i < 2 else (2, 1)
        x = F.conv2d(torch.relu(x) if i else x, branch[f"decoder.encoder.layers.{i}.weight"],
                     branch[f"decoder.encoder.layers.{i}.bias"], stride, pad)
        if gated:
            a, gate = x.chunk(2, 1)
            x = a * torch.clamp(1 - torch.tanh(gate), 0, 1)
        feats.append(x)

    def blend(h, f):
        m = mask if h.shape[-1] == mask.shape[-1] else (F.avg_pool2d(mask, mask.shape[-1] // h.shape[-1]) > 0).to(h.dtype)
        return h * m + f * (1 - m)

    d = vae.decoder
    h = d.mid_block(d.conv_in(z))
    for up, f in zip(d.up_blocks, (feats[4], feats[3], feats[2], feats[1])):
        h = up(blend(h, f))
    h = blend(h, feats[0])
    return d.conv_out(d.conv_act(d.conv_norm_out(h)))


def _asuka_checkpoint(tmp_path, gated=False):
    vae = diffusers_reference("tiny-asuka")
    cfg = PRESETS["tiny-asuka"]
    branch = _asuka_branch(cfg.block_out_channels[0], cfg.block_out_channels[-1], gated)
    sd = {**_bfl_layout(vae), **branch}
    sd["decoder.up_layers.0.weight"] = torch.zeros(4, 4, 2, 2)  # ASUKA's unused transposed convs
    torch.save({"state_dict": sd, "global_step": 7}, tmp_path / "asuka_decoder.ckpt")
    return vae, branch


@pytest.mark.parametrize("gated", [False, True], ids=["released", "gate_conv"])
def test_asuka_decoder_equals_independent_reference(tmp_path, gated):
    vae, branch = _asuka_checkpoint(tmp_path, gated)
    dec = load_decoder(tmp_path / "asuka_decoder.ckpt")
    assert dec.config.condition == "asuka" and dec.config.gate_conv == gated and dec.config.latent_channels == 16
    assert dec.load_report["format"] == "asuka" and dec.load_report["ignored"]["decoder.up_layers."] == 1
    z, image, mask = random_inputs(channels=16, h=4, w=6)
    with torch.no_grad():
        expected = _reference_asuka(vae, branch, z, image, mask, gated)
        torch.testing.assert_close(dec(z, image, mask), expected, **ASUKA_TOL)
        # a batch-1 image and mask for a batch of latents broadcast like the reference
        torch.testing.assert_close(dec(z, image[:1], mask[:1]),
                                   _reference_asuka(vae, branch, z, image[:1], mask[:1], gated), **ASUKA_TOL)
        # the branch matters: decoding without it (or with the Asymmetric VQGAN's nearest masks) differs
        assert (dec(z) - expected).abs().max() > 1e-2


def test_asuka_level_masks_count_a_partly_covered_cell_as_hole():
    from asymvq.models.condition import level_mask

    mask = torch.zeros(1, 1, 16, 16)
    mask[0, 0, 9, 13] = 1  # one hole pixel inside the (1, 1) cell at stride 8
    assert level_mask(mask, 8, "any")[0, 0].tolist() == [[0, 0], [0, 1]]
    assert level_mask(mask, 8, "nearest")[0, 0].tolist() == [[0, 0], [0, 0]]  # the Asymmetric VQGAN's resize
    assert torch.equal(level_mask(mask, 4, "any"), (F.avg_pool2d(mask, 4) > 0).float())


def test_asuka_region_decode_matches_the_full_decode(tmp_path):
    """A box that covers the whole latent is the full decode (the level masks cut at the box's edges
    off the 8-pixel grid); tiling of ASUKA's branch is tests/models/test_tiled_decode.py's "asuka-gated"."""
    _asuka_checkpoint(tmp_path)
    dec = load_decoder(tmp_path / "asuka_decoder.ckpt")
    z, image, _ = random_inputs(batch=1, channels=16, h=6, w=5)
    mask = torch.zeros(1, 1, 48, 40)
    mask[..., 13:29, 11:30] = 1
    with torch.no_grad():
        full = dec(z, image, mask)
        region = dec(z, image, mask, region="mask", margin=8)
        torch.testing.assert_close(region, full, atol=1e-4, rtol=1e-4)
        inner = dec(z, image, mask, region="mask", margin=0)  # a smaller box: the source outside it
        box = torch.zeros_like(mask, dtype=torch.bool)
        box[..., 8:32, 8:32] = True  # the mask's box on the latent grid: rows 1..3, cols 1..3
        assert torch.equal(inner[~box.expand_as(inner)], image.expand_as(inner)[~box.expand_as(inner)])


def test_bad_family_inputs_are_named(tmp_path):
    vae, _ = _asuka_checkpoint(tmp_path)
    dec = load_decoder(tmp_path / "asuka_decoder.ckpt")
    z4, image, mask = random_inputs()
    with pytest.raises(ValueError, match=r"latents.*\(B, 16, h, w\)"):
        dec(z4, image, mask)
    # a FLUX file where an SD decoder is expected, and the reverse
    save_file(_bfl_layout(vae), str(tmp_path / "ae.safetensors"))
    with pytest.raises(CheckpointError, match="ae.safetensors.*4 latent channels, post_quant_conv=True"):
        load_decoder(tmp_path / "ae.safetensors", preset="tiny")
    sd_vae = diffusers_reference("vanilla")
    sd_vae.save_pretrained(tmp_path / "sd-vae")
    with pytest.raises(CheckpointError, match="16 latent channels"):
        load_decoder(tmp_path / "sd-vae", preset="flux")
    # an ASUKA checkpoint whose branch is missing: its dead up_layers say what it was
    sd = torch.load(tmp_path / "asuka_decoder.ckpt")["state_dict"]
    for k in [k for k in sd if k.startswith("decoder.encoder.layers.")]:
        del sd[k]
    torch.save({"state_dict": sd}, tmp_path / "no_branch.ckpt")
    with pytest.raises(CheckpointError, match=r"no_branch\.ckpt.*condition branch.*decoder\.encoder\.layers"):
        load_decoder(tmp_path / "no_branch.ckpt")
    del sd["decoder.up_layers.0.weight"]
    sd.update({k: v for k, v in _asuka_branch(16, 64, False).items() if ".layers.4." not in k})
    torch.save({"state_dict": sd}, tmp_path / "half_branch.ckpt")
    with pytest.raises(CheckpointError, match=r"missing keys \['condition_encoder\.layers\.4\.bias'"):
        load_decoder(tmp_path / "half_branch.ckpt")

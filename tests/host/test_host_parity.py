"""The C++ host against Python on the same tiny AOTInductor engines.

decode: asymvq-run against the Python decoder (the torch modules rebuilt from the manifest's
recorded source, i.e. asymvq.AsymmetricDecoder), with and without image and mask, two sizes
and batches from one package. inpaint: asymvq-run / the C API against asymvq.InpaintPipeline
on the same engines, same seed, DDIM and Euler, with and without negative embeddings, from
token ids, and text-to-image with the 4-channel UNet. All within 1e-4.
"""
from __future__ import annotations

import subprocess

import pytest
import torch
from safetensors.torch import load_file, save_file

import asymvq
from asymvq.engines import load_engine_dir

TOL = 1e-4


def _save(tmp_path, name, t):
    p = tmp_path / f"{name}.safetensors"
    save_file({name: t.contiguous()}, str(p))
    return p


def _run(runner, *args):
    r = subprocess.run([str(runner), *map(str, args)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r


@pytest.fixture(scope="module")
def torch_decoders(tiny):
    return load_engine_dir(tiny, backend="torch", components=["decoder", "decoder-plain"])


@pytest.mark.parametrize("batch,h,w", [(1, 64, 64), (3, 96, 128)])
def test_decode_matches_python_decoder(runner, tiny, torch_decoders, tmp_path, batch, h, w):
    g = torch.Generator().manual_seed(batch)
    z = torch.randn(batch, 4, h // 8, w // 8, generator=g)
    image = torch.rand(batch, 3, h, w, generator=g) * 2 - 1
    mask = (torch.rand(1, 1, h, w, generator=g) > 0.5).float()  # batch 1 broadcasts
    zp, ip, mp = _save(tmp_path, "z", z), _save(tmp_path, "image", image), _save(tmp_path, "mask", mask)
    out = tmp_path / "out.safetensors"

    _run(runner, "decode", "--engines", tiny, "--latents", zp, "--image", ip, "--mask", mp, "--out", out)
    got = load_file(str(out))
    assert list(got) == ["sample"]
    with torch.inference_mode():
        ref = torch_decoders["decoder"](latent=z, image=image, mask=mask)["sample"]
    assert got["sample"].shape == (batch, 3, h, w)
    err = (got["sample"] - ref).abs().max().item()
    assert err < TOL, f"decoder with mask: max abs error {err}"

    _run(runner, "decode", "--engines", tiny, "--latents", zp, "--out", out)
    with torch.inference_mode():
        ref = torch_decoders["decoder-plain"](latent=z)["sample"]
    err = (load_file(str(out))["sample"] - ref).abs().max().item()
    assert err < TOL, f"plain decoder: max abs error {err}"


@pytest.fixture(scope="module")
def pipe(tiny):
    return asymvq.InpaintPipeline.from_engines(tiny, backend="aoti")


def _python_inpaint(pipe, scheduler, **kw):
    denoised = pipe.denoise(num_inference_steps=4, guidance_scale=7.5, generator=torch.Generator().manual_seed(0),
                            scheduler=scheduler, **kw)
    return pipe.decode(denoised)


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(7)
    return dict(
        embeds=torch.randn(1, 77, 32, generator=g),
        negative=torch.randn(1, 77, 32, generator=g),
        image=torch.rand(1, 3, 64, 64, generator=g) * 2 - 1,
        mask=(torch.rand(1, 1, 64, 64, generator=g) > 0.6).float(),
    )


@pytest.mark.parametrize("scheduler", ["ddim", "euler"])
def test_inpaint_cli_matches_pipeline(runner, tiny, pipe, inputs, tmp_path, scheduler):
    paths = {k: _save(tmp_path, k, v) for k, v in inputs.items()}
    out = tmp_path / "out.safetensors"
    _run(runner, "inpaint", "--engines", tiny, "--prompt-embeds", paths["embeds"], "--negative-embeds", paths["negative"],
         "--image", paths["image"], "--mask", paths["mask"], "--steps", 4, "--guidance", 7.5, "--seed", 0,
         "--scheduler", scheduler, "--out", out)
    got = load_file(str(out))["sample"]
    ref = _python_inpaint(pipe, scheduler, prompt_embeds=inputs["embeds"], negative_prompt_embeds=inputs["negative"],
                          image=inputs["image"], mask_image=inputs["mask"])
    assert got.shape == ref.shape == (1, 3, 64, 64)
    err = (got - ref).abs().max().item()
    assert err < TOL, f"{scheduler}: max abs error {err}"
    # and the public call with output_type="pt" is the same picture in [0, 1]
    pt = pipe(prompt_embeds=inputs["embeds"], negative_prompt_embeds=inputs["negative"], image=inputs["image"],
              mask_image=inputs["mask"], num_inference_steps=4, guidance_scale=7.5, scheduler=scheduler,
              generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert (pt - (got / 2 + 0.5).clamp(0, 1)).abs().max().item() < TOL


def test_inpaint_seed_changes_the_image(runner, tiny, inputs, tmp_path):
    paths = {k: _save(tmp_path, k, v) for k, v in inputs.items()}
    outs = []
    for seed in (0, 1):
        out = tmp_path / f"out{seed}.safetensors"
        _run(runner, "inpaint", "--engines", tiny, "--prompt-embeds", paths["embeds"], "--negative-embeds", paths["negative"],
             "--image", paths["image"], "--mask", paths["mask"], "--steps", 2, "--seed", seed, "--out", out)
        outs.append(load_file(str(out))["sample"])
    assert (outs[0] - outs[1]).abs().max().item() > 1e-3


@pytest.mark.parametrize("scheduler", ["ddim", "euler"])
def test_inpaint_capi_token_ids_and_empty_negative(lib, tiny, pipe, inputs, scheduler):
    """Token ids through the text-encoder engine; no negative: the empty prompt, tokenized as CLIPTokenizer does."""
    import asymvq_host

    prompts = ["a red sofa", "a cat"]
    ids = pipe.tokenizer(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with asymvq_host.Host(lib, tiny) as host:
        got = torch.from_numpy(host.inpaint(prompt_ids=ids, image=inputs["image"], mask=inputs["mask"], steps=3,
                                            guidance_scale=5.0, seed=3, scheduler=scheduler))
    denoised = pipe.denoise(prompts, inputs["image"], inputs["mask"], num_inference_steps=3, guidance_scale=5.0,
                            generator=torch.Generator().manual_seed(3), scheduler=scheduler)
    ref = pipe.decode(denoised)
    assert got.shape == ref.shape == (2, 3, 64, 64)
    err = (got - ref).abs().max().item()
    assert err < TOL, f"{scheduler} from token ids: max abs error {err}"


def test_text_to_image_matches_pipeline(lib, engines, inputs):
    import asymvq_host

    t2i = engines["t2i"]
    pipe = asymvq.InpaintPipeline.from_engines(t2i, backend="aoti")
    with asymvq_host.Host(lib, t2i) as host:
        assert host.unet_channels() == 4
        got = torch.from_numpy(host.inpaint(prompt_embeds=inputs["embeds"], negative_embeds=inputs["negative"], height=48,
                                            width=64, steps=3, seed=5, scheduler="euler"))
        with pytest.raises(asymvq_host.HostError) as e:  # a 4-channel UNet takes no image/mask
            host.inpaint(prompt_embeds=inputs["embeds"], negative_embeds=inputs["negative"], image=inputs["image"],
                         mask=inputs["mask"], steps=1)
        assert e.value.status == asymvq_host.INVALID_ARGUMENT and "4 input channels" in e.value.message
    denoised = pipe.denoise(prompt_embeds=inputs["embeds"], negative_prompt_embeds=inputs["negative"], height=48, width=64,
                            num_inference_steps=3, guidance_scale=7.5, generator=torch.Generator().manual_seed(5),
                            scheduler="euler")
    ref = pipe.decode(denoised)
    assert got.shape == ref.shape == (1, 3, 48, 64)
    assert (got - ref).abs().max().item() < TOL

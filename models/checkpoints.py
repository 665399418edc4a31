"""Loading decoder weights from every layout users have, and saving our own.

Accepted (detected from the path's contents, never from its name):
- our folder: ``config.json`` with ``"_class_name": "asymvq.AsymmetricDecoder"`` + ``model.safetensors``;
- a diffusers ``AsymmetricAutoencoderKL`` or ``AutoencoderKL`` folder (config.json + safetensors or bin);
- an official Asymmetric VQGAN Lightning checkpoint (``base.ckpt``, ``larger1.5.ckpt``,
  ``larger2.ckpt``: LDM key layout under ``state_dict``), preset inferred from weight shapes;
- a diffusers ``AutoencoderKL`` folder of SD, SDXL, SD3 or FLUX (16 latent channels, no quant convs,
  a shift factor: all read from its config.json);
- ASUKA's ``asuka_decoder.ckpt`` (FLUX's decoder with a 4-channel condition branch under
  ``decoder.encoder.layers.*``, beside the FLUX encoder), preset ``asuka-flux``;
- a single-file VAE state dict in the LDM layout (``.ckpt``/``.pt``/``.safetensors``): Black Forest
  Labs' ``ae.safetensors`` (16 channels, no quant convs: ``flux``), an SD/SDXL/SD3 checkpoint holding
  its VAE under ``first_stage_model.`` (the latent space told apart by the checkpoint's other
  networks: SDXL's second text encoder, SD3's joint blocks), or a bare SD VAE (``vanilla``).
Known-dead weights (the encoder, ``quant_conv``, ``decoder.up_layers.*``, ``loss.*``, a full
checkpoint's other networks) are counted per prefix in the load report (``decoder.load_report``),
never used; any other missing or unexpected key is an error that lists the keys.
"""
from __future__ import annotations

import json
import logging
import pickle
import re
from collections import Counter
from pathlib import Path

import torch

from .config import PRESETS, DecoderConfig, preset_config
from .decoder import AsymmetricDecoder
from .op_select import select_ops
from .safe_pickle import restricted_pickle

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
OUR_CLASS = "asymvq.AsymmetricDecoder"
DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
# Keys of a full VAE / training checkpoint that the decoder does not use.
IGNORED_PREFIXES = ("encoder.", "quant_conv.", "decoder.up_layers.", "loss.")
ATTENTION_LINEARS = ("to_q", "to_k", "to_v", "to_out.0")
# Single-file diffusion checkpoints keep the VAE under this prefix, beside their other networks;
# the other networks tell which latent space the VAE is trained for (the weights cannot).
SINGLE_FILE_VAE = "first_stage_model."
_SINGLE_FILE_FAMILY = (("conditioner.embedders.1.", "sdxl"), ("model.diffusion_model.joint_blocks.", "sd3"))
log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded as a decoder (format, keys or shapes)."""


# -- state-dict conversion -----------------------------------------------------------------
_LDM_RULES = [
    # (LDM pattern, our replacement); applied to keys with the "decoder." prefix removed.
    (r"^encoder\.layers\.", "condition_encoder.layers."),
    (r"^mid\.block_(\d)\.", lambda m: f"mid_block.resnets.{int(m.group(1)) - 1}."),
    (r"^mid\.attn_1\.norm\.", "mid_block.attentions.0.group_norm."),
    (r"^mid\.attn_1\.q\.", "mid_block.attentions.0.to_q."),
    (r"^mid\.attn_1\.k\.", "mid_block.attentions.0.to_k."),
    (r"^mid\.attn_1\.v\.", "mid_block.attentions.0.to_v."),
    (r"^mid\.attn_1\.proj_out\.", "mid_block.attentions.0.to_out.0."),
    # LDM's up.0 is full resolution; ours (diffusers') up_blocks.0 is H/8.
    (r"^up\.(\d)\.block\.", lambda m: f"up_blocks.{3 - int(m.group(1))}.resnets."),
    (r"^up\.(\d)\.upsample\.", lambda m: f"up_blocks.{3 - int(m.group(1))}.upsamplers.0."),
    (r"\.nin_shortcut\.", ".conv_shortcut."),
    (r"^norm_out\.", "conv_norm_out."),
]
# diffusers' deprecated attention names (old AutoencoderKL checkpoints)
_OLD_ATTENTION = {".query.": ".to_q.", ".key.": ".to_k.", ".value.": ".to_v.", ".proj_attn.": ".to_out.0."}


def _squeeze_attention(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """1x1-conv q/k/v/proj weights [C, C, 1, 1] -> Linear weights [C, C]."""
    for k, v in sd.items():
        if ".attentions.0." in k and k.endswith(".weight") and v.ndim == 4 and any(f".{n}." in k for n in ATTENTION_LINEARS):
            sd[k] = v[:, :, 0, 0]
    return sd


def _drop_ignored(sd: dict, report: dict | None = None) -> dict:
    """``sd`` without the known-dead keys; ``report["ignored"]`` counts them per prefix."""
    kept, dropped = {}, Counter()
    for k, v in sd.items():
        prefix = next((p for p in IGNORED_PREFIXES if k.startswith(p)), None)
        if prefix is None:
            kept[k] = v
        else:
            dropped[prefix] += 1
    if report is not None:
        report.setdefault("ignored", Counter()).update(dropped)
    return kept


def convert_ldm_state_dict(sd: dict[str, torch.Tensor], report: dict | None = None) -> dict[str, torch.Tensor]:
    """Official / LDM decoder keys -> ours. Unknown keys pass through so the strict load names them."""
    out = {}
    for key, value in _drop_ignored(sd, report).items():
        if key.startswith("decoder."):
            new = key[len("decoder."):]
            for pattern, repl in _LDM_RULES:
                new = re.sub(pattern, repl, new)
            out[new] = value
        else:
            out[key] = value
    return _squeeze_attention(out)


def convert_diffusers_state_dict(sd: dict[str, torch.Tensor], report: dict | None = None) -> dict[str, torch.Tensor]:
    """diffusers VAE keys -> ours: drop the encoder, strip ``decoder.``, modernise old attention names."""
    out = {}
    for key, value in _drop_ignored(sd, report).items():
        new = key[len("decoder."):] if key.startswith("decoder.") else key
        for old, cur in _OLD_ATTENTION.items():
            new = new.replace(old, cur)
        out[new] = value
    return _squeeze_attention(out)


def infer_ldm_config(sd: dict[str, torch.Tensor], family: str | None = None) -> DecoderConfig:
    """Decoder size from LDM-layout weight shapes (the official configs do not record it).

    GroupNorm's group count and the latent space are not in the weights: a shape that matches a
    preset takes the preset's config (``family``, e.g. "sdxl" or "sd3", first; then SD for 4 latent
    channels, FLUX for 16); any other takes 32 groups (every released decoder uses 32) and the
    latent space of the first preset with its channel count and quant convs.
    """
    try:
        channels = tuple(sd[f"decoder.up.{i}.block.0.conv1.weight"].shape[0] for i in range(4))
        latent = sd["decoder.conv_in.weight"].shape[1]
        out_ch = sd["decoder.conv_out.weight"].shape[0]
    except KeyError as e:
        raise CheckpointError(f"checkpoint: not an LDM/official decoder layout, missing key {e.args[0]!r}") from None
    except IndexError:
        raise CheckpointError("checkpoint: not an LDM/official decoder layout (a conv weight without dims)") from None
    blocks = {int(m.group(1)) for k in sd if (m := re.match(r"decoder\.up\.0\.block\.(\d+)\.", k))}
    condition, gate_conv = None, False
    first = sd.get("decoder.encoder.layers.0.weight")
    if first is not None:
        if first.ndim != 4:
            raise CheckpointError("checkpoint: decoder.encoder.layers.0.weight is not a conv weight")
        # ASUKA's branch reads the mask as one more input channel; its gated variant doubles outputs.
        condition = "asuka" if first.shape[1] == out_ch + 1 else "conv"
        gate_conv = condition == "asuka" and first.shape[0] == 2 * channels[0]
    shape = dict(block_out_channels=channels, layers_per_block=len(blocks) - 1, latent_channels=latent,
                 out_channels=out_ch, condition=condition, gate_conv=gate_conv,
                 post_quant_conv="post_quant_conv.weight" in sd)
    space = PRESETS.get(family)
    if space is None or (space.latent_channels, space.post_quant_conv) != (latent, shape["post_quant_conv"]):
        space = next((c for c in PRESETS.values()
                      if (c.latent_channels, c.post_quant_conv) == (latent, shape["post_quant_conv"])), None)
    if space is not None:  # the family's latent space (or the first preset's with these channels)
        shape.update(scaling_factor=space.scaling_factor, shift_factor=space.shift_factor)
    sizes = ("block_out_channels", "layers_per_block", "latent_channels", "out_channels")
    groups = next((c.norm_num_groups for c in PRESETS.values() if all(getattr(c, k) == shape[k] for k in sizes)), 32)
    config = DecoderConfig(**shape, norm_num_groups=groups)  # a known size takes its preset's group count
    return next((c for c in PRESETS.values() if c == config), config)


def decoder_config_from_diffusers(cfg: dict) -> DecoderConfig:
    cls = cfg.get("_class_name")
    if cls == "AsymmetricAutoencoderKL":
        return DecoderConfig(
            tuple(cfg["up_block_out_channels"]), cfg["layers_per_up_block"],
            latent_channels=cfg.get("latent_channels", 4), out_channels=cfg.get("out_channels", 3),
            norm_num_groups=cfg.get("norm_num_groups", 32), condition="conv",
            scaling_factor=cfg.get("scaling_factor", 0.18215),
        )
    if cls == "AutoencoderKL":
        if not cfg.get("mid_block_add_attention", True) or cfg.get("latents_mean") or cfg.get("latents_std"):
            raise CheckpointError(
                "decoder: this AutoencoderKL is not an SD/SDXL/SD3/FLUX-style VAE (no mid attention, or "
                "latents_mean/latents_std set); supported: the SD decoder topology with 4 or 16 latent channels"
            )
        return DecoderConfig(
            tuple(cfg["block_out_channels"]), cfg["layers_per_block"],
            latent_channels=cfg.get("latent_channels", 4), out_channels=cfg.get("out_channels", 3),
            norm_num_groups=cfg.get("norm_num_groups", 32), condition=None,
            scaling_factor=cfg.get("scaling_factor", 0.18215), shift_factor=cfg.get("shift_factor") or 0.0,
            post_quant_conv=cfg.get("use_post_quant_conv", True),
        )
    raise CheckpointError(
        f"config.json: expected _class_name AsymmetricAutoencoderKL, AutoencoderKL or {OUR_CLASS}, got {cls!r}"
    )


# -- file reading ----------------------------------------------------------------------------
def _torch_load(path: Path):
    """``torch.load`` with ``weights_only=True``; when that refuses a global (a Lightning checkpoint's
    hyper-parameters), again with the restricted unpickler (``asymvq.models.safe_pickle``): never code
    from the file, never state set on a live class or object."""
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights_only" not in str(e) and "Weights only" not in str(e):
            raise
    return torch.load(str(path), map_location="cpu", weights_only=False, pickle_module=restricted_pickle)


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # noqa: BLE001 - SafetensorError (truncated, bad header), OSError: never half a file
            raise CheckpointError(f"{path}: not a readable safetensors file ({type(e).__name__}: {str(e)[:200]})") from None
    # A checkpoint is data, never code to run: weights_only, or the restricted unpickler.
    try:
        obj = _torch_load(path)
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - not a zip/pickle archive, truncated, a storage it cannot rebuild
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (zip or pickle archive of tensors): "
                              f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                       for k, v in obj.items()):
        got = type(obj).__name__ if not isinstance(obj, dict) else \
            next((f"{k!r}: {type(v).__name__}" for k, v in obj.items() if not isinstance(v, torch.Tensor)), "an empty dict")
        raise CheckpointError(f"{path}: expected a state dict of tensors (optionally under 'state_dict'), got {got}")
    return obj


def _strip_prefix(sd: dict, prefix: str) -> dict:
    if any(k.startswith(prefix) for k in sd):
        return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    return sd


def read_checkpoint(path, report: dict | None = None) -> tuple[DecoderConfig, dict[str, torch.Tensor], str]:
    """(config, state dict in our layout, format name) for any supported checkpoint.

    ``report``, when given, receives ``"ignored"``: the known-dead keys dropped, counted per prefix."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"decoder path does not exist: {path}")
    if path.is_dir():
        cfg_path = path / CONFIG_NAME
        if not cfg_path.is_file():
            # a diffusers pipeline folder: the VAE lives in vae/
            if (path / "vae" / CONFIG_NAME).is_file():
                return read_checkpoint(path / "vae", report)
            raise CheckpointError(f"{path}: a decoder folder needs {CONFIG_NAME}")
        try:
            cfg = json.loads(cfg_path.read_bytes().decode("utf-8"))
        except (OSError, ValueError, RecursionError) as e:  # unreadable, not UTF-8, not JSON
            raise CheckpointError(f"{cfg_path}: not a readable JSON config ({str(e)[:200]})") from None
        if not isinstance(cfg, dict):
            raise CheckpointError(f"{cfg_path}: expected a JSON object, got {type(cfg).__name__}")
        try:
            if cfg.get("_class_name") == OUR_CLASS:
                config = DecoderConfig.from_dict({k: v for k, v in cfg.items() if not k.startswith("_")})
            else:
                config = decoder_config_from_diffusers(cfg)
        except CheckpointError as e:
            raise CheckpointError(f"{cfg_path}: {str(e).removeprefix('config.json: ')}") from None
        except (KeyError, TypeError, ValueError) as e:  # a missing key, a wrong type, a bad value
            what = f"missing key {e.args[0]!r}" if isinstance(e, KeyError) else str(e)
            raise CheckpointError(f"{cfg_path}: not a valid decoder config ({what})") from None
        if cfg.get("_class_name") == OUR_CLASS:
            weights = path / WEIGHTS_NAME
            if not weights.is_file():
                raise CheckpointError(f"{path}: no weights file, expected {WEIGHTS_NAME}")
            return config, _read_tensors(weights), "asymvq"
        weights = next((path / n for n in DIFFUSERS_WEIGHTS if (path / n).is_file()), None)
        if weights is None:
            raise CheckpointError(f"{path}: no weights file, expected one of {list(DIFFUSERS_WEIGHTS)}")
        return config, convert_diffusers_state_dict(_read_tensors(weights), report), f"diffusers-{cfg['_class_name']}"
    full = _read_tensors(path)
    family = None
    if any(k.startswith(SINGLE_FILE_VAE) for k in full):  # a whole SD/SDXL/SD3 checkpoint: keep its VAE
        family = next((f for prefix, f in _SINGLE_FILE_FAMILY if any(k.startswith(prefix) for k in full)), None)
        others = Counter(k.split(".", 1)[0] + "." for k in full if not k.startswith(SINGLE_FILE_VAE))
        if report is not None:
            report.setdefault("ignored", Counter()).update(others)
    sd = _strip_prefix(full, SINGLE_FILE_VAE)
    if "decoder.conv_in.weight" not in sd:
        raise CheckpointError(f"{path}: no decoder weights (no 'decoder.conv_in.weight' key)")
    if "decoder.mid.block_1.norm1.weight" in sd:
        config = infer_ldm_config(sd, family)
        if not config.has_condition and any(k.startswith("decoder.up_layers.") for k in sd):
            # Only the conditional decoders' training code leaves these dead transposed convs behind.
            raise CheckpointError(
                f"{path}: a conditional decoder's checkpoint (it has decoder.up_layers.*) without its "
                "condition branch weights decoder.encoder.layers.0-4.*; expected the whole decoder"
            )
        kind = {None: "ldm-vae", "conv": "official", "asuka": "asuka"}[config.condition]
        return config, convert_ldm_state_dict(sd, report), kind
    raise CheckpointError(
        f"{path}: a single-file checkpoint must use the LDM/official key layout (decoder.mid.block_1...); "
        "for diffusers weights pass the folder that holds config.json"
    )


# -- public API ------------------------------------------------------------------------------
def load_state_dict_strict(decoder: AsymmetricDecoder, sd: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Load every parameter or fail listing the missing and unexpected keys (never half a model)."""
    own = decoder.state_dict()
    not_float = [k for k, v in sd.items() if k in own and not (v.is_floating_point() and bool(torch.isfinite(v).all()))]
    if not_float:  # integer weights would be cast silently, NaN ones give a NaN image: refuse both
        raise CheckpointError(f"{source}: expected finite floating-point weights, got {not_float[:5]}"
                              f"{' and more' if len(not_float) > 5 else ''} (integer, NaN or Inf)")
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    if missing or unexpected:
        cfg = decoder.config
        raise CheckpointError(
            f"{source}: weights do not match the {cfg.block_out_channels} decoder "
            f"(condition={cfg.condition}, {cfg.latent_channels} latent channels, post_quant_conv="
            f"{cfg.post_quant_conv}); missing keys {missing}; unexpected keys {unexpected}"
        )
    bad = [f"{k}: {tuple(sd[k].shape)} vs {tuple(v.shape)}" for k, v in own.items() if sd[k].shape != v.shape]
    if bad:
        raise CheckpointError(f"{source}: shape mismatches (checkpoint vs decoder): {bad}")
    # assign=True: a decoder built on the meta device takes the checkpoint's tensors as they are
    decoder.load_state_dict(sd, strict=True, assign=True)


def load_decoder(path, *, preset: str | None = None, dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu", kernels: str = "torch") -> AsymmetricDecoder:
    """Load a decoder from any supported checkpoint (see module docstring), in eval mode.

    ``preset`` (a name of ``PRESETS``) overrides the size and latent space read from the checkpoint;
    the weights must then match it exactly. ``kernels``: "torch" or "triton". What was read is
    kept as ``decoder.load_report``: ``format`` and the known-dead keys ``ignored`` per prefix.
    """
    report: dict = {}
    config, sd, fmt = read_checkpoint(path, report)
    if preset is not None:
        config = preset_config(preset)
    with torch.device("meta"):  # no random init of weights that are overwritten anyway (seconds at x2)
        decoder = AsymmetricDecoder(config)
    load_state_dict_strict(decoder, sd, source=f"{path} ({fmt})")
    decoder.load_report = {"format": fmt, "ignored": dict(report.get("ignored", {}))}
    if decoder.load_report["ignored"]:
        log.info("%s (%s): %d weights loaded; unused, ignored: %s", path, fmt, len(sd),
                 ", ".join(f"{k}* x{n}" for k, n in sorted(decoder.load_report["ignored"].items())))
    decoder.set_ops(select_ops(kernels))
    decoder = decoder.to(device=device, dtype=dtype).eval()
    if decoder.conv_in.weight.is_cuda:
        # cuDNN's fastest convs and the fused kernels both work channels-last; left NCHW,
        # every fused op would start with a layout copy. (Kept NCHW on the CPU, where the
        # reference layout is what makes the diffusers parity bitwise.)
        decoder = decoder.to(memory_format=torch.channels_last)
    return decoder


def decoder_from_vae(vae) -> AsymmetricDecoder:
    """Our decoder with the weights of a live diffusers ``AutoencoderKL`` / ``AsymmetricAutoencoderKL``."""
    cls = type(vae).__name__
    if cls not in ("AutoencoderKL", "AsymmetricAutoencoderKL"):
        raise ValueError(f"vae: expected a diffusers AutoencoderKL or AsymmetricAutoencoderKL, got {cls}")
    config = decoder_config_from_diffusers({**dict(vae.config), "_class_name": cls})
    with torch.device("meta"):
        decoder = AsymmetricDecoder(config)
    load_state_dict_strict(decoder, convert_diffusers_state_dict(vae.state_dict()), source=f"{cls} decoder")
    p = next(vae.parameters())
    return decoder.to(device=p.device, dtype=p.dtype).eval()


def save_decoder(decoder: AsymmetricDecoder, path) -> None:
    """Save as a folder: ``config.json`` + ``model.safetensors``, which ``load_decoder`` reads."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    cfg = {"_class_name": OUR_CLASS, **decoder.config.to_dict()}
    (path / CONFIG_NAME).write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    sd = {k: v.detach().contiguous().cpu() for k, v in decoder.state_dict().items()}
    save_file(sd, str(path / WEIGHTS_NAME), metadata={"format": "pt", "asymvq": "decoder"})

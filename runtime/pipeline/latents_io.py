"""Reading and writing latents files: .pt, .npy and .safetensors, one float tensor (B, C, h, w)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

LATENT_SUFFIXES = (".pt", ".pth", ".npy", ".safetensors")
LATENT_KEY = "latents"  # the key used in .safetensors / .pt dicts


def _one_tensor(obj, path: Path) -> torch.Tensor:
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, dict):
        if LATENT_KEY in obj:
            return obj[LATENT_KEY]
        tensors = [v for v in obj.values() if isinstance(v, torch.Tensor)]
        if len(tensors) == 1:
            return tensors[0]
    raise ValueError(f"{path}: expected one tensor, or a dict with a {LATENT_KEY!r} entry")


def _load_npy(path: Path) -> torch.Tensor:
    """A numeric .npy array. Object arrays (pickled Python objects) are refused without being read: numpy's own
    message would advise ``allow_pickle=True``, which runs whatever code the file carries."""
    try:
        array = np.load(str(path), allow_pickle=False)
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise ValueError(f"{path}: expected a numeric .npy array, got an object array (pickled Python objects, "
                             "never loaded: they can run code)") from None
        raise ValueError(f"{path}: cannot read as .npy latents ({exc})") from None
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "fiub":
        raise ValueError(f"{path}: expected a numeric .npy array, got dtype {getattr(array, 'dtype', type(array))}")
    return torch.from_numpy(array)


def load_latents(path) -> torch.Tensor:
    """A float32 tensor (B, C, h, w) from ``path``; (C, h, w) gains a batch of 1."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path}: expected a latents file, got a directory")
    if not path.is_file():
        raise FileNotFoundError(f"latents file not found: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix in (".pt", ".pth"):
            # weights_only: a latents file is data, never code to run
            t = _one_tensor(torch.load(str(path), map_location="cpu", weights_only=True), path)
        elif suffix == ".npy":
            t = _load_npy(path)
        elif suffix == ".safetensors":
            from safetensors.torch import load_file

            t = _one_tensor(load_file(str(path)), path)
        else:
            raise ValueError(f"{path}: expected a {', '.join(LATENT_SUFFIXES)} file")
    except ValueError:
        raise
    except Exception as exc:  # noqa: BLE001 - a corrupt or foreign file: say which and why, in one line
        raise ValueError(f"{path}: cannot read as {suffix} latents ({type(exc).__name__}: {exc})") from None
    if t.ndim == 3:
        t = t[None]
    if t.ndim != 4 or not t.is_floating_point():
        raise ValueError(f"{path}: expected float latents of shape (B, C, h, w) or (C, h, w), "
                         f"got {tuple(t.shape)} {t.dtype}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{path}: latents contain NaN or Inf")
    return t.float()


def save_latents(latents: torch.Tensor, path) -> Path:
    """Write ``latents`` in the format the suffix names."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    t = latents.detach().float().cpu().contiguous()
    suffix = path.suffix.lower()
    if suffix in (".pt", ".pth"):
        torch.save(t, str(path))
    elif suffix == ".npy":
        np.save(str(path), t.numpy())
    elif suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({LATENT_KEY: t}, str(path))
    else:
        raise ValueError(f"{path}: expected a {', '.join(LATENT_SUFFIXES)} file")
    return path

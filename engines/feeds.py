"""The base of the exported engines, and the checks and conversions of the feeds they get.

The torch modules accept what COMPONENT_IO's conventions allow (a scalar timestep, an
image/mask of batch 1 for a batch of latents); an exported graph has one fixed rank and a
shared ``batch`` dim, so those feeds are expanded here, and a feed of another rank or fixed dim
is refused, instead of failing deep in the runtime.

The specs' min..max ranges bind only where the format was compiled for them (``bound=True``):
TensorRT's optimization profile and AOTInductor's dynamic dims, which refuse or misread other
sizes; a feed outside is refused with the range and how to widen it. ONNX Runtime and OpenVINO run
the graph at any batch, height and width (a 48x64 image, a 1x1 latent crop, a tile), so they check
only the rank and the fixed dims (numbers, and named dims exported at one size, min == max: those
are static in the graph).

Region decoding (``region="mask"`` / ``"auto"``) is the same for every exported decoder: the latent,
image and mask crops of the mask's box go through this engine's own ``__call__``, the rest is the
source (``asymvq.models.region``); the crop is grown to the smallest size the engine accepts, and a box
above its largest is refused, naming the dynamic export it needs (``region_sizes``). A crop decoded alone has
its own GroupNorm statistics: ``region_stats="box"`` only ("lowres" is refused, naming the torch backend).
"""
from __future__ import annotations

import torch

from asymvq.models.region import check_region, choose_region, decode_box

from .contract import DECODER, Capabilities, EngineBase, TensorSpec, bound_static_dims, check_io, split_dim


class ExportedEngine(EngineBase):
    """The one base of the engines that run an exported artifact (ONNX Runtime, OpenVINO, TensorRT,
    AOTInductor): the manifest's I/O specs, one device, and the feeds conformed to the exported ranges.

    Refuses specs that do not name ``component``'s inputs and outputs (COMPONENT_IO), so a
    manifest entry can never bind one network's file under another's name.
    """

    bound_ranges = False  # True where the format was compiled for the specs' min..max (TensorRT, AOTInductor)

    def __init__(self, component: str, inputs: list[TensorSpec], outputs: list[TensorSpec], device):
        super().__init__(component)
        check_io(component, inputs, outputs, f"{component} engine")
        self.inputs, self.outputs = {s.name: s for s in inputs}, outputs
        self.device = torch.device(device)
        self.dtype = getattr(torch, inputs[0].dtype)

    @property
    def capabilities(self) -> Capabilities:
        """An exported graph does not tile; the conditional decoder decodes regions (crops through the same
        graph, ``decode_with_modes``); its specs bind the static dims."""
        dims = bound_static_dims(self.component, self.inputs, self.outputs)
        regions = self.component == DECODER
        return Capabilities.of(self.component, regions=regions, region_sizes=self.region_sizes() if regions else None,
                               static_dims=dims)

    def region_sizes(self) -> tuple[tuple[int, float], tuple[int, float]] | None:
        """``((min_h, max_h), (min_w, max_w))``: the latent crops this engine decodes, or None for any size.
        The latent spec's range where the format binds it, its one size where the graph is static (min == max)."""
        spec = self.inputs[self.input_names[0]]
        any_size = (1, float("inf"))
        sizes = tuple((spec.min[d], spec.max[d]) if self.bound_ranges or spec.min[d] == spec.max[d] else any_size
                      for d in (2, 3))
        return None if sizes == (any_size, any_size) else sizes

    def decode_with_modes(self, options: dict, **feeds: torch.Tensor) -> dict[str, torch.Tensor]:
        """``region="mask"`` / ``"auto"`` (and ``margin``) on the conditional decoder; tiles are the torch path's."""
        if self.component != DECODER or options.get("region") is None or {"tile", "overlap"} & set(options):
            return super().decode_with_modes(options, **feeds)
        region, margin = check_region(options["region"], options.get("margin"))
        latent, image, mask = (feeds[n] for n in self.input_names)
        spec = self.inputs[self.input_names[0]]
        where = (f"the {self.backend} {self.component} engine (latent h {spec.min[2]}..{spec.max[2]}, "
                 f"w {spec.min[3]}..{spec.max[3]})")
        self.capabilities.check_region_stats(options.get("region_stats"), where)  # the crop alone: "box" only
        choice = choose_region(region, mask, margin, latent.shape[-2], latent.shape[-1], self.region_sizes(), where)
        name = self.output_names[0]
        if not (choice.decodes_box or choice.empty):  # "auto" found the whole image cheaper
            return self(latent=latent, image=image, mask=mask)
        out = decode_box(lambda lat, img, msk: self(latent=lat, image=img, mask=msk)[name], latent, image, mask,
                         choice.box, getattr(torch, self.outputs[0].dtype))
        return {name: out}

    def conform(self, feeds: dict, dtypes: dict[str, torch.dtype] | None = None, *, bound: bool,
                tied: bool = False) -> dict[str, torch.Tensor]:
        """``conform_feeds`` for this engine (``bound``: its format was compiled for the specs' ranges);
        ``tied``: also ``check_tied_dims`` (for compiled code that does not)."""
        out = conform_feeds(self.component, self.inputs, feeds, self.device, dtypes, bound=bound)
        if tied:
            check_tied_dims(self.component, self.inputs, out)
        return out


def conform_feeds(component: str, specs: dict[str, TensorSpec], feeds: dict, device: torch.device,
                  dtypes: dict[str, torch.dtype] | None = None, *, bound: bool) -> dict[str, torch.Tensor]:
    """``feeds`` as contiguous tensors on ``device`` in each input's dtype, in ``specs`` order.

    ``bound``: the specs' min..max ranges bind (TensorRT, AOTInductor); otherwise only rank and fixed dims."""
    names = list(specs)
    missing = [n for n in names if n not in feeds]
    extra = [n for n in feeds if n not in specs]
    if missing or extra:
        raise ValueError(f"{component} engine: expected inputs {names}, missing {missing}, unexpected {extra}")
    batch = torch.as_tensor(feeds[names[0]]).shape[0]
    out = {}
    for name, spec in specs.items():
        t = torch.as_tensor(feeds[name])
        if t.ndim == 0 and len(spec.dims) == 1:  # one timestep for the whole batch
            t = t.reshape(1)
        if t.ndim == len(spec.dims) and spec.dims[0] == "batch" and t.shape[0] == 1 and batch > 1:
            t = t.expand(batch, *t.shape[1:])
        if bound and (t.ndim != len(spec.dims) or any(not lo <= n <= hi for n, lo, hi in zip(t.shape, spec.min, spec.max))):
            raise ValueError(
                f"{component} engine: {name} must have shape {list(spec.dims)} within {list(spec.min)}..{list(spec.max)} "
                f"(the ranges it was exported for; re-export with --shapes to widen them), got {tuple(t.shape)}"
            )
        if not bound:
            # a named dim exported at one size (min == max) is static in the graph, like a number
            want = [lo if isinstance(d, int) or lo == hi else d for d, lo, hi in zip(spec.dims, spec.min, spec.max)]
            if t.ndim != len(want) or any(n != w if isinstance(w, int) else n < 1 for w, n in zip(want, t.shape)):
                raise ValueError(f"{component} engine: {name} must have shape {want} (any positive size where a dim "
                                 f"is named), got {tuple(t.shape)}")
        if spec.dims[0] == "batch" and t.shape[0] != batch:
            raise ValueError(f"{component} engine: {name} has batch {t.shape[0]}, expected {batch} (or 1)")
        dtype = dtypes[name] if dtypes else getattr(torch, spec.dtype)
        out[name] = t.to(device=device, dtype=dtype).contiguous()
    return out


def check_tied_dims(component: str, specs: dict[str, TensorSpec], feeds: dict[str, torch.Tensor]) -> None:
    """Refuse feeds whose derived dims disagree (an image that is not 8x the latent).

    An ONNX Runtime graph refuses them by its shapes; compiled code (AOTInductor without
    AOTI_RUNTIME_CHECK_INPUTS, an OpenVINO model reshaped to the feeds) may not, and indexes
    every input with the latent's sizes (a 56x56 or 72x72 image with an 8x8 latent ran
    without error under AOTInductor): a wrong picture, or a read past a smaller buffer.
    """
    seen: dict[str, tuple[str, str, int]] = {}  # base dim -> (input, dim, size) where first met
    for name, t in feeds.items():
        for d, n in zip(specs[name].dims, t.shape):
            if not isinstance(d, str):
                continue
            k, base = split_dim(d)
            ref_name, ref_d, ref_n = seen.setdefault(base, (name, d, n))
            if n % k or n * split_dim(ref_d)[0] != ref_n * k:
                raise ValueError(f"{component} engine: {name} has {d} = {n}, which does not fit "
                                 f"{ref_name}'s {ref_d} = {ref_n}")

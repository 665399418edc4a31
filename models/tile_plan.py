"""The decoder's up path as segments between GroupNorms: what the tiled decode runs tile by tile.

``plan_up_path(decoder, conditioned)`` traces ``decoder.decode_up`` (the decoder's one forward,
nothing re-implemented) with torch.fx under an op table of its own, scoped to the call by
``ops.ops_override`` so the live decoder is untouched: every GroupNorm+SiLU, blend and the
condition branch become leaf nodes (``norm_leaf``, ``blend_leaf``, ``condition_leaf``), the
convolutions stay ``call_module`` nodes of the decoder's own modules. The graph is cut before
each ``norm_leaf``: a *segment* is the layers from one norm to the next. For each node the plan
knows its resolution (``scale``: pixels per latent pixel) and, per segment, the context
(``halo``, latent pixels) its inputs need around a tile's part so that the part comes out exact:
the sum over the segment's longest path of each conv's reach at its resolution (a 3x3 conv at
H/8 reaches 1 latent pixel, at H 1/8), plus the condition branch's, rounded up.

A variant with another block gets its plan for free as long as its up path is made of the ops
``_footprint`` knows (convolutions, nearest upsampling, element-wise ops, the op table's calls,
whole-image strides and non-overlapping max-pools of the mask);
anything else is refused with ``NotImplementedError`` naming the op rather than tiled wrongly.

*Constants*: a module the tracer steps into (a ``Conv2d`` subclass such as ``cpu_bf16.Fp32OutConv``,
whose forward casts its input to its weight's dtype) reads its parameters as ``get_attr`` nodes. Those,
and whatever is computed from them alone (``weight.dtype``, a view), have no spatial extent: the plan
evaluates them once (``Plan.constants``) and keeps them out of the segments. Where one meets the
activations it must not vary over the image: the input of a functional conv (its reach read from the
weight's kernel), a cast's dtype or device, or an element-wise operand constant over height and width
(a per-channel scale); anything else that mixes a constant with the image is refused like an unknown op.
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn

from .ops import TorchOps, ops_override

SCALE = 8  # image pixels per latent pixel


# -- the leaves: markers in the graph, run by the tiled decode ---------------------------------------
def norm_leaf(x, norm_name: str):
    """GroupNorm ``norm_name`` + SiLU of ``x``; the tiled decode normalises with image-wide statistics."""
    raise RuntimeError("norm_leaf is a graph marker; tiled_decode runs it")


def blend_leaf(h, f, m):
    """The op table's ``blend(h, f, m)``."""
    raise RuntimeError("blend_leaf is a graph marker; tiled_decode runs it")


def condition_leaf(encoder_name: str, image, mask, h):
    """The op table's ``condition_blend``: ``(h blended with L4, L0, ..., L3)``."""
    raise RuntimeError("condition_leaf is a graph marker; tiled_decode runs it")


class _TraceOps(TorchOps):
    """The op table while tracing: each call becomes one leaf node (the norm keeps its module's name)."""

    name = "tile-trace"

    def __init__(self, names: dict[int, str]):
        self.names = names

    def group_norm_silu(self, x, norm):
        return x.tracer.create_proxy("call_function", norm_leaf, (x, self.names[id(norm)]), {})

    def blend(self, h, f, m):
        return h.tracer.create_proxy("call_function", blend_leaf, (h, f, m), {})

    def blend_group_norm_silu(self, h, f, m, norm):
        # two nodes: the blend's output is the norm's input, whose statistics the tiles share
        return self.group_norm_silu(self.blend(h, f, m), norm)

    def condition_blend(self, encoder, image, mask, h):
        out = h.tracer.create_proxy("call_function", condition_leaf, (self.names[id(encoder)], image, mask, h), {})
        return out[0], [out[1 + i] for i in range(len(encoder.layers) - 1)]

    def condition_features(self, encoder, masked_image, valid):
        raise NotImplementedError("the up path calls condition_blend, not condition_features")


class _Up(nn.Module):
    def __init__(self, dec):
        super().__init__()
        self.dec = dec  # a child of the wrapper only: the decoder itself is not changed

    def forward(self, h, image, mask):
        return self.dec.decode_up(h, image, mask)


class _PlainUp(_Up):
    def forward(self, h):
        return self.dec.decode_up(h, None, None)


# -- resolution and reach of each op ------------------------------------------------------------------
POINTWISE_FUNCTIONS = (operator.add, operator.sub, operator.mul, operator.truediv, torch.add, torch.sub, torch.mul,
                       F.silu, F.relu, torch.relu, torch.sigmoid)
POINTWISE_METHODS = ("to", "contiguous", "float", "half", "bfloat16", "type_as", "clone")


CONSTANT = None  # the scale of a value with no spatial extent: a parameter, a dtype, what is computed from them alone
CASTS = ("dtype", "device")  # attributes of an activation that are not spatial (a cast's argument)


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def kernel_reach(kernel_size, dilation, padding) -> int:
    """Input pixels a conv's output pixel reads beyond its own footprint, on the worse side."""
    if isinstance(padding, str):
        raise NotImplementedError(f"tiled decoding: padding={padding!r} convolutions")
    return max(max(p, d * (k - 1) - p) for k, d, p in zip(_pair(kernel_size), _pair(dilation), _pair(padding)))


def conv_reach(conv: nn.Conv2d) -> int:
    """``kernel_reach`` of a conv module."""
    return kernel_reach(conv.kernel_size, conv.dilation, conv.padding)


def _uniform_over_the_image(v) -> bool:
    """A constant an activation may meet element-wise: a number, or a tensor broadcast alike to every pixel."""
    if not isinstance(v, torch.Tensor):
        return True
    return v.dim() == 0 or (v.shape[-1] == 1 and (v.dim() < 2 or v.shape[-2] == 1))


def _encoder_footprint(encoder, image_scale: float):
    """(scales of L0..L3, reach of the whole branch in latent pixels) of a strided conv encoder."""
    scales, reach, s = [], 0.0, image_scale
    for layer in encoder.layers:
        reach += conv_reach(layer) / s
        s = s / layer.stride[0]
        scales.append(s)
    return scales, reach


def _get_attr(root: nn.Module, target: str):
    owner, _, name = target.rpartition(".")
    return getattr(root.get_submodule(owner), name)


def _footprint(node: fx.Node, scale: dict, root: nn.Module, constants: dict, hoisted: set):
    """(scale of the node's value, {input node: reach in latent pixels}) for one graph node.

    ``constants``: the values of the constant nodes before it, for their shapes: ``hoisted`` ones evaluated
    here (parameters, what they give alone), a constant cast to an activation's dtype by its value before
    the cast (known at run time only). This node's is added when it is one."""
    ins = node.all_input_nodes
    tensor_ins = [a for a in ins if isinstance(scale[a], float)]
    s_in = max((scale[a] for a in tensor_ins), default=None)
    zero = {a: 0.0 for a in ins}
    op, target = node.op, node.target
    if op == "get_attr" or (ins and all(a in hoisted for a in ins) and op in ("call_function", "call_method")):
        # a parameter, or computed from parameters alone: evaluated here, once (Plan.constants)
        args = fx.node.map_arg(node.args, constants.__getitem__)
        kwargs = fx.node.map_arg(node.kwargs, constants.__getitem__)
        constants[node] = (_get_attr(root, target) if op == "get_attr" else getattr(args[0], target)(*args[1:], **kwargs)
                           if op == "call_method" else target(*args, **kwargs))
        hoisted.add(node)
        return CONSTANT, zero
    if target is getattr and node.args[0] in tensor_ins and node.args[1] in CASTS:
        return CONSTANT, zero  # an activation's dtype or device, read inside the segment that makes it
    if op == "call_method" and target in POINTWISE_METHODS and node.args[0] in constants and not tensor_ins:
        constants[node] = constants[node.args[0]]  # a parameter cast to an activation's dtype: the same shape
        return CONSTANT, zero
    if target is torch.conv2d:  # what a Conv2d subclass's forward calls (F.conv2d is torch.conv2d)
        names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
        a = dict(zip(names, node.args)) | dict(node.kwargs)
        x, weight = a["input"], a["weight"]
        if not (isinstance(scale[x], float) and weight in constants and (a.get("bias") is None or a["bias"] in constants)):
            raise NotImplementedError(f"tiled decoding: conv2d {node} whose weight is not a parameter")
        stride = _pair(a.get("stride", 1))
        if stride[0] != stride[1]:
            raise NotImplementedError(f"tiled decoding: conv2d {node} with stride {stride}")
        r = kernel_reach(constants[weight].shape[-2:], a.get("dilation", 1), a.get("padding", 0))
        return scale[x] / stride[0], {x: r / scale[x], **{c: 0.0 for c in ins if c is not x}}
    if op == "call_module":
        mod = root.get_submodule(target)
        if isinstance(mod, nn.Conv2d):
            (x,) = ins
            return scale[x] / mod.stride[0], {x: conv_reach(mod) / scale[x]}
        raise NotImplementedError(f"tiled decoding: no spatial footprint known for module {target} ({type(mod).__name__})")
    if target is norm_leaf or target is blend_leaf:
        return s_in, zero
    if target is condition_leaf:
        _, image, mask, h = node.args
        feats, reach = _encoder_footprint(root.get_submodule(node.args[0]), scale[image])
        return (scale[h], *feats[:-1]), {image: reach, mask: reach, h: 0.0}
    if target is operator.getitem:
        base, idx = node.args
        if isinstance(scale[base], tuple) and isinstance(idx, int):
            return scale[base][idx], zero
        if isinstance(idx, tuple) and all(isinstance(i, slice) and i.start is None and i.stop is None for i in idx):
            steps = [i.step or 1 for i in idx[-2:]]
            if len(idx) == 4 and steps[0] == steps[1]:
                return scale[base] / steps[0], zero
        raise NotImplementedError(f"tiled decoding: indexing {idx!r} is not a whole-image stride")
    if target is F.max_pool2d:
        # a level mask of ASUKA's branch (condition.level_mask): non-overlapping windows of k image
        # pixels, k dividing 8, so every tile (whole latent pixels) cuts between windows: no reach
        base, k = node.args[0], node.args[1] if len(node.args) > 1 else node.kwargs.get("kernel_size")
        stride = node.args[2] if len(node.args) > 2 else node.kwargs.get("stride")
        pad = node.args[3] if len(node.args) > 3 else node.kwargs.get("padding", 0)
        if isinstance(k, int) and stride in (None, k) and pad == 0 and 8 % k == 0:
            return scale[base] / k, zero
        raise NotImplementedError(f"tiled decoding: max_pool2d(kernel_size={k!r}, stride={stride!r}, padding={pad!r})")
    if target is F.interpolate:
        sf, mode = node.kwargs.get("scale_factor"), node.kwargs.get("mode", "nearest")
        if mode != "nearest" or sf is None or float(sf) != int(sf):
            raise NotImplementedError(f"tiled decoding: interpolate(mode={mode!r}, scale_factor={sf!r})")
        return s_in * int(sf), zero
    if op == "call_function" and target in POINTWISE_FUNCTIONS:
        const_ins = [a for a in ins if a in constants]
        if tensor_ins and all(_uniform_over_the_image(constants[a]) for a in const_ins):
            return s_in, zero
        raise NotImplementedError(f"tiled decoding: {target.__name__} of an activation and a constant that varies "
                                  f"over the image ({', '.join(map(str, const_ins))})")
    if op == "call_method" and target in POINTWISE_METHODS and node.args[0] in tensor_ins:
        return s_in, zero  # a cast or copy: constant arguments give only a dtype or device
    raise NotImplementedError(f"tiled decoding: no spatial footprint known for {op} {target}")


# -- the plan -------------------------------------------------------------------------------------------
@dataclass
class Segment:
    nodes: list            # in graph order; the first is a norm_leaf (except for the segment before the first norm)
    inputs: list           # values made before it (placeholders or earlier segments' outputs)
    outputs: list          # values it makes that a later segment, or the result, reads
    halo: int = 0          # latent pixels of context its inputs need around a tile's part


@dataclass
class Plan:
    root: nn.Module        # call_module targets resolve on it
    placeholders: list     # h (mid block output, latent resolution)[, image, mask]
    segments: list
    result: fx.Node
    scale: dict            # node -> pixels per latent pixel (a tuple for the condition leaf)
    last_use: dict         # stored node -> index of the last segment that reads it
    norm_inputs: dict = field(default_factory=dict)  # node -> num_groups of the norms that read it
    constants: dict = field(default_factory=dict)    # CONSTANT node -> its value (parameters and what they give)


def plan_up_path(dec, conditioned: bool) -> Plan:
    root = _Up(dec) if conditioned else _PlainUp(dec)
    names = {id(m): n for n, m in root.named_modules()}
    with ops_override(_TraceOps(names)):
        graph = fx.Tracer().trace(root)
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    (out,) = [n for n in graph.nodes if n.op == "output"]
    result = out.args[0]
    body = [n for n in graph.nodes if n.op not in ("placeholder", "output")]

    scale = {placeholders[0]: 1.0, **{p: float(SCALE) for p in placeholders[1:]}}
    reach, constants, hoisted = {}, {}, set()
    for n in body:
        scale[n], reach[n] = _footprint(n, scale, root, constants, hoisted)
    body = [n for n in body if n not in hoisted]  # evaluated once, in no segment
    constants = {n: constants[n] for n in hoisted}

    cuts = [i for i, n in enumerate(body) if n.target is norm_leaf]
    bounds = sorted({0, *cuts, len(body)})
    segments = [Segment(body[a:b], [], []) for a, b in zip(bounds, bounds[1:])]
    seg_of = {n: k for k, s in enumerate(segments) for n in s.nodes}
    last_use = {}
    for k, seg in enumerate(segments):
        inside = set(seg.nodes)
        seen = set()
        for n in seg.nodes:
            for a in n.all_input_nodes:
                if a not in inside and a not in seen and a not in constants:
                    seen.add(a)
                    seg.inputs.append(a)
                    last_use[a] = k
        seg.outputs = [n for n in seg.nodes if n is result or any(seg_of.get(u, -1) > k for u in n.users)]
        need = {n: 0.0 for n in seg.outputs}
        for n in reversed(seg.nodes):
            if n not in need:
                continue
            for a, r in reach[n].items():
                need[a] = max(need.get(a, 0.0), need[n] + r)
        seg.halo = math.ceil(max((need.get(a, 0.0) for a in seg.inputs), default=0.0) - 1e-9)
    norm_inputs = {}
    for n in body:
        if n.target is norm_leaf:
            norm_inputs[n.args[0]] = root.get_submodule(n.args[1]).num_groups
    for n in seg_of:
        if not isinstance(scale[n], float) and any(seg_of.get(u) != seg_of[n] for u in n.users):
            raise NotImplementedError(f"tiled decoding: a value that is not an image-sized tensor ({n}) crosses a GroupNorm")
    return Plan(root, placeholders, segments, result, scale, last_use, norm_inputs, constants)

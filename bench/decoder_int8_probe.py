"""Does int8 (NNCF post-training quantization of the OpenVINO IR) keep the decoder's image? A probe.

The decoder is exported as asymvq exports it (seeded random weights), its IR quantized with NNCF
(OpenVINO's own quantization tool) calibrated on the decoder's own activations from seeded latents,
images and box masks, then compared with the fp32 IR on held-out inputs: PSNR of the images in
[-1, 1] (peak-to-peak 2), the worst of the test inputs, the share of the convolutions' multiply-adds
that run in int8 (load-independent), and the minimum of a few timed calls each (a probe under load,
an ordering only: run bench/decoder_cpu.py for speed).

Variants (``--variants``, default all): NNCF's presets; ignored scopes (conv_out, the last up level,
conv_in and post_quant_conv, the condition branch, the norms, the attention); ``fast_bias_correction``
off; advanced parameters (overflow fix off: full 8-bit weights, range estimators, per-channel
activations, SmoothQuant with ``ModelType.TRANSFORMER``); combinations; int8 weight-only compression
(``nncf.compress_weights``); and ``accuracy-control`` (``quantize_with_accuracy_control`` with a PSNR
metric on validation inputs of their own, returning quantized ops to float, most harmful first,
until the 40 dB bound holds there).

asymvq ships an int8 precision only where it holds >= 40 dB on what can be run here. Needs
``pip install nncf==3.4.0`` (not an asymvq extra). Writes bench/results/decoder_int8_probe_<preset>_<size>.json.

    .venv/bin/python bench/decoder_int8_probe.py --preset base --size 128 [--variants "a|b"] [--calibration-sizes 128,192]
"""
from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from bench_common import cpu_record, loadavg

from asymvq.export import Source, export_directory
from asymvq.export.specs import Shapes
from asymvq.models import preset_config

RESULTS = Path(__file__).parent / "results"
FLOOR_DB = 40.0
CAP_DB = 60.0  # accuracy control's metric: PSNR capped (the fp32 model itself is inf), over the cap


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return 10 * math.log10(4 / max(float(np.mean((a.astype(np.float64) - b) ** 2)), 1e-30))


def sample(seed: int, channels: int, size: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    lat = torch.randn(1, channels, size // 8, size // 8, generator=g)
    img = torch.rand(1, 3, size, size, generator=g) * 2 - 1
    mask = torch.zeros(1, 1, size, size)
    y0 = int(torch.randint(0, size // 2, (1,), generator=g))
    mask[..., y0:y0 + size // 2, size // 4: 3 * size // 4] = 1
    return {"latent": lat.numpy(), "image": img.numpy(), "mask": mask.numpy()}


# -- the graph: which ops are which part of the decoder --------------------------------------------

def scopes(model) -> dict[str, list[str]]:
    """Friendly names of the op groups the ignored scopes use. The IR's names are the exporter's
    (node_conv2d_N), not the modules', so the groups are found from the graph: the condition branch is
    what the image/mask reach and the latent does not; the head convs are those before the first norm
    on the latent's path; the last up level is the latent path's convs at full resolution."""
    ops = model.get_ordered_ops()
    reach: dict[str, set] = {}
    for param in model.get_parameters():
        seen, todo = set(), [param]
        while todo:
            node = todo.pop()
            for out in node.outputs():
                for t in out.get_target_inputs():
                    n = t.get_node()
                    if n.get_friendly_name() not in seen:
                        seen.add(n.get_friendly_name())
                        todo.append(n)
        reach[param.get_friendly_name()] = seen
    lat = next(v for k, v in reach.items() if "latent" in k)
    cond = set().union(*(v for k, v in reach.items() if "latent" not in k))
    full = max(int(op.get_output_partial_shape(0)[-1].get_length()) for op in ops if op.get_type_name() == "Convolution")
    convs = [op for op in ops if op.get_type_name() == "Convolution"]
    head, seen_norm = [], False
    for op in ops:
        if op.get_friendly_name() not in lat:
            continue
        seen_norm |= op.get_type_name() == "MVN"
        if op.get_type_name() == "Convolution" and not seen_norm:
            head.append(op.get_friendly_name())
    last = [c.get_friendly_name() for c in convs if c.get_friendly_name() in lat
            and c.get_output_partial_shape(0)[-1].get_length() == full]
    return {
        "conv_out": [convs[-1].get_friendly_name()],
        "last_level": last,  # includes conv_out
        "head": head,
        "condition": sorted(n for n in cond - lat if n),
        "blends": sorted(op.get_friendly_name() for op in ops if op.get_friendly_name() in lat & cond
                         and op.get_type_name() in ("Multiply", "Add", "Subtract")),
        "norms": [op.get_friendly_name() for op in ops if op.get_type_name() == "MVN"],
    }


def _int8_source(port, depth: int = 6) -> bool:
    """Whether a conv input comes from a FakeQuantize or an int8 constant (through the dequantize chain)."""
    node = port.get_source_output().get_node()
    for _ in range(depth):
        kind = node.get_type_name()
        if kind == "FakeQuantize":
            return True
        if kind == "Constant":
            return node.get_element_type().get_type_name() in ("i8", "u8")
        if kind not in ("Convert", "Subtract", "Multiply", "Reshape"):
            return False
        node = node.input(0).get_source_output().get_node()
    return False


def int8_share(model) -> dict:
    """How many convolutions (and what share of their multiply-adds) take int8 activations and weights."""
    total = act = wts = 0
    n_act = n = 0
    for op in model.get_ordered_ops():
        if op.get_type_name() != "Convolution":
            continue
        out = op.get_output_partial_shape(0).to_shape()
        w = op.input(1).get_partial_shape().to_shape()
        macs = int(np.prod(out)) * int(np.prod(w[1:]))
        a8, w8 = _int8_source(op.input(0)), _int8_source(op.input(1))
        total += macs
        n += 1
        act += macs * (a8 and w8)
        wts += macs * w8
        n_act += a8 and w8
    return {"convs_int8": n_act, "convs": n, "conv_macs_int8_share": round(act / total, 4),
            "conv_macs_int8_weights_share": round(wts / total, 4)}


# -- the variants ----------------------------------------------------------------------------------

def variants(nncf, sc: dict) -> dict:
    """name -> keyword arguments of nncf.quantize (or {"compress": mode} for weight-only compression)."""
    from nncf.quantization.advanced_parameters import (  # the probe's own requirement
        AdvancedQuantizationParameters as Adv,
    )
    from nncf.quantization.advanced_parameters import OverflowFix, QuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet as Ranges

    P, T = nncf.QuantizationPreset, nncf.ModelType.TRANSFORMER

    def ignore(*groups, types=()):
        return nncf.IgnoredScope(names=sorted({n for g in groups for n in sc[g]}), types=list(types), validate=False)

    full8 = Adv(overflow_fix=OverflowFix.DISABLE)
    minmax8 = Adv(overflow_fix=OverflowFix.DISABLE, activations_range_estimator_params=Ranges.MINMAX)
    attention = ("MatMul", "ScaledDotProductAttention")
    edges = ignore("conv_out", "head", "condition", types=attention)
    return {
        "int8 MIXED": dict(preset=P.MIXED),
        "int8 PERFORMANCE": dict(preset=P.PERFORMANCE),
        "int8 MIXED, attention in float": dict(preset=P.MIXED, ignored_scope=ignore(types=attention)),
        "int8 MIXED, conv_out in float": dict(preset=P.MIXED, ignored_scope=ignore("conv_out")),
        "int8 MIXED, last up level in float": dict(preset=P.MIXED, ignored_scope=ignore("last_level")),
        "int8 MIXED, conv_in/post_quant_conv in float": dict(preset=P.MIXED, ignored_scope=ignore("head")),
        "int8 MIXED, condition branch in float": dict(preset=P.MIXED, ignored_scope=ignore("condition")),
        "int8 MIXED, blends in float": dict(preset=P.MIXED, ignored_scope=ignore("blends")),
        "int8 MIXED, norms in float": dict(preset=P.MIXED, ignored_scope=ignore("norms")),
        "int8 MIXED, slow bias correction": dict(preset=P.MIXED, fast_bias_correction=False),
        "int8 MIXED, no bias correction": dict(preset=P.MIXED, advanced_parameters=Adv(disable_bias_correction=True)),
        "int8 MIXED, 8-bit weights (overflow fix off)": dict(preset=P.MIXED, advanced_parameters=full8),
        "int8 MIXED, min-max ranges": dict(preset=P.MIXED, advanced_parameters=Adv(
            activations_range_estimator_params=Ranges.MINMAX)),
        "int8 MIXED, mean-quantile ranges": dict(preset=P.MIXED, advanced_parameters=Adv(
            activations_range_estimator_params=Ranges.MEAN_QUANTILE)),
        "int8 MIXED, histogram ranges": dict(preset=P.MIXED, advanced_parameters=Adv(
            activations_range_estimator_params=Ranges.HISTOGRAM)),
        "int8 MIXED, channel alignment": dict(preset=P.MIXED, advanced_parameters=Adv(disable_channel_alignment=False)),
        "int8 MIXED, per-channel activations": dict(preset=P.MIXED, advanced_parameters=Adv(
            activations_quantization_params=QuantizationParameters(per_channel=True))),
        "int8 MIXED, per-channel activations, target CPU": dict(
            preset=P.MIXED, target_device=nncf.TargetDevice.CPU, advanced_parameters=Adv(
                activations_quantization_params=QuantizationParameters(per_channel=True))),
        "int8 MIXED, transformer, SmoothQuant 0.5": dict(preset=P.MIXED, model_type=nncf.ModelType.TRANSFORMER,
                                                          advanced_parameters=Adv(smooth_quant_alpha=0.5)),
        "int8 MIXED, edges in float (conv_out, head, condition, attention)": dict(preset=P.MIXED, ignored_scope=edges),
        "int8 MIXED, edges in float, 8-bit weights, slow bias correction": dict(
            preset=P.MIXED, ignored_scope=edges, fast_bias_correction=False, advanced_parameters=full8),
        "int8 MIXED, last level + edges in float, 8-bit weights, slow bias correction": dict(
            preset=P.MIXED, ignored_scope=ignore("last_level", "head", "condition", types=attention),
            fast_bias_correction=False, advanced_parameters=full8),
        # ModelType.TRANSFORMER quantizes the inputs of the compute ops only (convolutions, MatMuls,
        # Interpolate): MIXED also quantizes the residual Adds, the norms' Multiplys and Reshapes, which
        # saves no arithmetic and adds noise. Its SmoothQuant touches the attention MatMuls only.
        "int8 conv inputs only (TRANSFORMER)": dict(preset=P.MIXED, model_type=T),
        "int8 conv inputs only (TRANSFORMER), SmoothQuant off": dict(preset=P.MIXED, model_type=T,
                                                                     advanced_parameters=Adv(smooth_quant_alpha=-1)),
        "int8 conv inputs only (TRANSFORMER), 8-bit weights": dict(preset=P.MIXED, model_type=T, advanced_parameters=full8),
        "int8 conv inputs only (TRANSFORMER), 8-bit weights, slow bias correction": dict(
            preset=P.MIXED, model_type=T, advanced_parameters=full8, fast_bias_correction=False),
        "int8 conv inputs only (TRANSFORMER), 8-bit weights, min-max ranges": dict(preset=P.MIXED, model_type=T,
                                                                                 advanced_parameters=minmax8),
        "int8 conv inputs only (TRANSFORMER), 8-bit weights, edges in float": dict(
            preset=P.MIXED, model_type=T, advanced_parameters=full8, ignored_scope=edges),
        "int8 conv inputs only (TRANSFORMER), 8-bit weights, last level + edges in float": dict(
            preset=P.MIXED, model_type=T, advanced_parameters=full8,
            ignored_scope=ignore("last_level", "head", "condition", types=attention)),
        "int8 conv inputs only (TRANSFORMER), 8-bit weights, min-max ranges, edges in float": dict(
            preset=P.MIXED, model_type=T, advanced_parameters=minmax8, ignored_scope=edges),
        "int8 conv inputs only (TRANSFORMER), 8-bit weights, min-max ranges, last level + edges in float": dict(
            preset=P.MIXED, model_type=T, advanced_parameters=minmax8,
            ignored_scope=ignore("last_level", "head", "condition", types=attention)),
        "int8 conv inputs only (TRANSFORMER), 8-bit weights, min-max ranges, no bias correction": dict(
            preset=P.MIXED, model_type=T, advanced_parameters=Adv(
                overflow_fix=OverflowFix.DISABLE, activations_range_estimator_params=Ranges.MINMAX,
                disable_bias_correction=True)),
        "int8 conv inputs only (TRANSFORMER), PERFORMANCE, 8-bit weights": dict(
            preset=P.PERFORMANCE, model_type=T, advanced_parameters=full8),
        "int8 weights only (compress_weights INT8_ASYM)": {"compress": "INT8_ASYM"},
        "int8 weights only (compress_weights INT8_SYM)": {"compress": "INT8_SYM"},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="base")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--calibration", type=int, default=16, help="calibration samples (seeds 0..N-1)")
    ap.add_argument("--calibration-sizes", default=None,
                    help="comma list of image sizes to calibrate at (default: --size); other sizes export a dynamic IR")
    ap.add_argument("--test", type=int, default=3, help="held-out test inputs (seeds 1000..)")
    ap.add_argument("--variants", default=None, help="substrings of the variant names to run, separated by | (default all)")
    ap.add_argument("--accuracy-control", action="store_true",
                    help="also run quantize_with_accuracy_control (MIXED, and conv inputs only with 8-bit weights)")
    ap.add_argument("--ac-recipes", default=None, help="a substring of the accuracy-control recipes to run (default both)")
    ap.add_argument("--ac-target-db", type=float, default=FLOOR_DB,
                    help="the PSNR accuracy control must hold on its validation inputs (above the floor: a margin)")
    ap.add_argument("--interleave", action="store_true",
                    help="keep every compiled model and time them round-robin at the end (memory: one per variant)")
    ap.add_argument("--repeats", type=int, default=3, help="timed calls per variant (the minimum is recorded)")
    ap.add_argument("--threads", type=int, default=1, help="INFERENCE_NUM_THREADS of every compiled model")
    ap.add_argument("--tag", default="", help="suffix of the results file")
    args = ap.parse_args()
    import nncf  # not an asymvq extra: this probe's own requirement
    import openvino as ov

    load_before = loadavg()
    s = args.size
    calib_sizes = [int(v) for v in args.calibration_sizes.split(",")] if args.calibration_sizes else [s]
    lo, hi = min(calib_sizes + [s]), max(calib_sizes + [s])
    out = Path(tempfile.mkdtemp(prefix="int8-probe-"))
    export_directory(out, "decoder", Source(decoder=args.preset), shapes=Shapes((1, 1, 1), (lo, s, hi), (lo, s, hi)),
                     formats=("openvino",))
    core = ov.Core()
    model = core.read_model(str(out / "decoder.xml"))
    channels = preset_config(args.preset).latent_channels
    calib = [sample(i, channels, calib_sizes[i % len(calib_sizes)]) for i in range(args.calibration)]
    test = [sample(1000 + i, channels, s) for i in range(args.test)]
    valid = [sample(2000 + i, channels, s) for i in range(args.test)]  # accuracy control's, apart from the test
    config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": str(args.threads)}

    def compile_at(m):
        m = m.clone()
        m.reshape({p.get_any_name(): ov.PartialShape(list(test[0][p.get_any_name()].shape)) for p in m.inputs})
        return core.compile_model(m, "CPU", config)

    ref_model = compile_at(model)
    refs = [ref_model(t)[0] for t in test]
    valid_refs = [ref_model(t)[0] for t in valid]

    kept: dict = {}  # name -> compiled model, for the interleaved timing (--interleave)

    def measure(m, name="fp32") -> dict:
        compiled = compile_at(m)
        if args.interleave:
            kept[name] = compiled
        outs = [compiled(t)[0] for t in test]
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            compiled(test[0])
            times.append(time.perf_counter() - t0)
        per = [psnr(o, r) for o, r in zip(outs, refs)]
        return {"psnr_db_min": min(per), "psnr_db": [round(p, 2) for p in per], "min_call_s": min(times),
                "loadavg_1m": loadavg()[0], **int8_share(m)}

    rows = {"fp32": measure(model)}
    print("fp32", rows["fp32"], flush=True)
    data = nncf.Dataset(calib)
    picked = [v.strip() for v in args.variants.split("|")] if args.variants else None
    for name, kw in variants(nncf, scopes(model)).items():
        if picked is not None and not any(p in name for p in picked):
            continue
        t0 = time.perf_counter()
        try:
            if "compress" in kw:
                q = nncf.compress_weights(model.clone(), mode=getattr(nncf.CompressWeightsMode, kw["compress"]))
            else:
                q = nncf.quantize(model.clone(), data, subset_size=len(calib), **kw)
        except (ValueError, RuntimeError, nncf.ValidationError) as e:  # a recipe NNCF refuses is a result too
            rows[name] = {"refused": f"{type(e).__name__}: {' '.join(str(e).split())}"}
            print(name, rows[name], flush=True)
            continue
        rows[name] = {**measure(q, name), "quantize_s": round(time.perf_counter() - t0, 1)}
        print(name, rows[name], flush=True)
    if args.accuracy_control:
        def validate(compiled, items):  # items: indices into valid (the evaluator picks subsets)
            per = [min(psnr(compiled(valid[i])[0], valid_refs[i]), CAP_DB) / CAP_DB for i in items]
            return min(per), per

        from nncf.quantization.advanced_parameters import OverflowFix  # the probe's own requirement

        recipes = {"MIXED": {}, "conv inputs only (TRANSFORMER), 8-bit weights": dict(
            model_type=nncf.ModelType.TRANSFORMER,
            advanced_quantization_parameters=nncf.AdvancedQuantizationParameters(overflow_fix=OverflowFix.DISABLE))}
        for recipe, kw in recipes.items():
            if args.ac_recipes is not None and args.ac_recipes not in recipe:
                continue
            t0 = time.perf_counter()
            q = nncf.quantize_with_accuracy_control(
                model.clone(), data, nncf.Dataset(list(range(len(valid)))), validate,
                max_drop=(CAP_DB - args.ac_target_db) / CAP_DB, drop_type=nncf.DropType.ABSOLUTE,
                preset=nncf.QuantizationPreset.MIXED, subset_size=len(calib), **kw)
            name = f"int8 accuracy control ({recipe}; PSNR >= {args.ac_target_db:g} dB on validation inputs)"
            rows[name] = {**measure(q, name), "quantize_s": round(time.perf_counter() - t0, 1)}
            print(name, rows[name], flush=True)
    if args.interleave:  # round-robin, so that the machine's drift hits every model alike
        times: dict[str, list[float]] = {n: [] for n in kept}
        for _ in range(args.repeats + 1):
            for n, compiled in kept.items():
                t0 = time.perf_counter()
                compiled(test[0])
                times[n].append(time.perf_counter() - t0)
        stats = {n: sorted(ts[1:]) for n, ts in times.items()}  # the first round warms up
        mid = len(stats["fp32"]) // 2
        for n, ts in stats.items():
            rows[n]["interleaved_s"] = {"min": ts[0], "median": ts[mid]}
            rows[n]["fp32_over_this_median"] = round(stats["fp32"][mid] / ts[mid], 2)
    ref_out = np.concatenate([r.ravel() for r in refs])
    result = {"what": f"{args.preset} decoder, {s}x{s}, OpenVINO IR fp32 vs NNCF int8 (nncf {nncf.__version__}, "
                      f"openvino {ov.__version__.split('-')[0]})",
              "machine": cpu_record(), "threads": args.threads,
              "load_average_1_5_15": {"before": load_before, "after": loadavg()}, "floor_db": FLOOR_DB,
              "calibration": {"samples": args.calibration, "sizes": calib_sizes}, "test_inputs": args.test,
              "accuracy_control_target_db": args.ac_target_db if args.accuracy_control else None,
              "fp32_output": {"min": float(ref_out.min()), "max": float(ref_out.max()), "std": float(ref_out.std())},
              "variants": rows,
              "ships": [n for n, r in rows.items() if n != "fp32" and r.get("psnr_db_min", 0) >= FLOOR_DB
                        and r["min_call_s"] < rows["fp32"]["min_call_s"]]}
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"decoder_int8_probe_{args.preset}_{s}{args.tag}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "variants"}, indent=2))


if __name__ == "__main__":
    main()

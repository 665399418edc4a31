"""``--dtype auto``, the default of the front ends: bf16 on a CPU with native bf16 (avx512_bf16 or AMX),
fp32 on the others, fp16 on CUDA, through every layer that resolves it (asymvq.models.devices), on the
CPUs of tests/models/test_cpu_features.py faked into this process, so both kinds are checked on any CPU."""
import dataclasses

import pytest
import torch
from typer.testing import CliRunner

import asymvq.models.cpu_features as cf
import asymvq.models.devices as devices
from asymvq.cli.app import app
from asymvq.models.cpu_features import read_cpu_features
from asymvq.models.devices import DTYPE_CHOICES, auto_dtype, dtype_reason, parse_dtype, resolve_dtype_name
from asymvq.pipeline.source import PipelineSource
from asymvq.profiling.profiler import ProfileConfig
from tests.models.test_cpu_features import AVX512_NO_BF16, XEON_AMX, ZEN3, ZEN4

KINDS = {"zen3": (ZEN3, torch.float32), "skylake-avx512": (AVX512_NO_BF16, torch.float32),
         "zen4": (ZEN4, torch.bfloat16), "xeon-amx": (XEON_AMX, torch.bfloat16)}


@pytest.fixture(params=list(KINDS))
def cpu_kind(request, monkeypatch):
    """This process sees one of the four CPUs (the real one's kernels still run: only the choice is faked)."""
    text, dtype = KINDS[request.param]
    fake = read_cpu_features(text, capability="AVX2")
    monkeypatch.setattr(cf, "cpu_features", lambda: fake)
    monkeypatch.setattr(devices, "cpu_features", lambda: fake)
    return fake, dtype


def test_auto_resolves_from_the_cpu_features(cpu_kind):
    fake, dtype = cpu_kind
    assert parse_dtype("auto") == parse_dtype("auto", "cpu") == parse_dtype("auto", torch.device("cpu")) == dtype
    assert auto_dtype("cuda") == auto_dtype("cuda:1") == torch.float16  # not resolved against the CPU there
    name = {torch.float32: "fp32", torch.bfloat16: "bf16"}[dtype]
    assert resolve_dtype_name("auto") == name
    reason = dtype_reason("auto", "cpu")
    assert reason.startswith(f"{name} (auto: {fake.model}: ") and reason.endswith(f"-> {name})")
    for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "vnni"):  # every deciding feature, present or not
        assert f in reason
    assert dtype_reason("fp32") == "fp32 (asked)" and parse_dtype("fp16") == torch.float16  # explicit wins


def test_bad_dtype_names_the_choices():
    with pytest.raises(ValueError, match=r"dtype must be one of \['auto', 'fp32', 'fp16', 'bf16'\], got 'fp64'"):
        parse_dtype("fp64")
    assert DTYPE_CHOICES == ("auto", "fp32", "fp16", "bf16")


def test_profile_config_resolves_and_says_why(cpu_kind):
    fake, dtype = cpu_kind
    config = ProfileConfig()
    assert config.dtype == {torch.float32: "fp32", torch.bfloat16: "bf16"}[dtype]
    assert config.dtype_choice == dtype_reason("auto") and fake.model in config.dtype_choice
    assert dataclasses.replace(config, dtype="fp32").dtype_choice == "fp32 (asked)"


def test_the_pipeline_source_default_builds_the_cpus_precision(cpu_kind):
    _, dtype = cpu_kind
    source = PipelineSource(preset="tiny")
    assert source.dtype == "auto"
    pipe = source.build()
    assert pipe.dtype == dtype
    for engine in pipe.stages.decoders().values():  # torch engines: the decoder's own weights (fp32 conv_out in bf16)
        assert dtype in {p.dtype for p in engine.module.parameters()}


def test_cli_decode_default_is_auto(cpu_kind, tmp_path):
    """`asymvq decode` without --dtype decodes in the CPU's precision: the image equals --dtype <that>'s."""
    _, dtype = cpu_kind
    lat = tmp_path / "z.pt"
    torch.save(torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0)), lat)
    runner = CliRunner()
    outs = {}
    for name, extra in (("default", []), ("explicit", ["--dtype", {torch.float32: "fp32", torch.bfloat16: "bf16"}[dtype]]),
                        ("other", ["--dtype", "bf16" if dtype == torch.float32 else "fp32"])):
        out = tmp_path / f"{name}.png"
        r = runner.invoke(app, ["decode", "--preset", "tiny", "--latents", str(lat), "--out", str(out), *extra])
        assert r.exit_code == 0, r.output
        outs[name] = out.read_bytes()
    assert outs["default"] == outs["explicit"]  # same kernels, same layout, same shapes: bitwise
    assert outs["default"] != outs["other"]


def test_cli_refuses_a_bad_dtype_naming_the_option():
    r = CliRunner().invoke(app, ["profile", "--dtype", "fp64"])
    assert r.exit_code != 0
    assert "--dtype: expected one of ['auto', 'fp32', 'fp16', 'bf16'], got 'fp64'" in str(r.exception or r.output)

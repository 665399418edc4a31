"""The CPU's features and the default CPU precision (asymvq.models.cpu_features), on /proc/cpuinfo text
of the three CPUs this project runs on (Zen 3 AVX2 only, Zen 4 with avx512_bf16, a Xeon with AMX),
an Arm CPU and none at all, plus this machine's own."""
import pytest
import torch

from asymvq.models.cpu_features import (
    FEATURES,
    CpuFeatures,
    cap_flags,
    cpu_features,
    default_cpu_dtype,
    env_isa_cap,
    parse_cpuinfo,
    read_cpu_features,
)


def _cpuinfo(model: str, flags: str, processors: int = 2) -> str:
    one = (f"processor\t: {{i}}\nvendor_id\t: X\ncpu family\t: 25\nmodel name\t: {model}\n"
           f"cpu MHz\t\t: 2450.000\nflags\t\t: {flags}\nbugs\t\t: sysret_ss_attrs\n\n")
    return "".join(one.format(i=i) for i in range(processors))


_BASE = ("fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ht "
         "syscall nx mmxext fxsr_opt pdpe1gb rdtscp lm constant_tsc rep_good nopl nonstop_tsc cpuid pni pclmulqdq "
         "ssse3 fma cx16 sse4_1 sse4_2 x2apic movbe popcnt aes xsave avx f16c rdrand hypervisor lahf_lm bmi1 avx2 "
         "smep bmi2 erms rdseed adx smap clflushopt clwb sha_ni xsaveopt xsavec xgetbv1 xsaves")
ZEN3 = _cpuinfo("AMD EPYC 7B13", _BASE + " clzero xsaveerptr rdpru wbnoinvd arat npt nrip_save umip pku ospke vaes "
                "vpclmulqdq rdpid fsrm")
ZEN4 = _cpuinfo("AMD EPYC 9B14", _BASE + " avx512f avx512dq avx512ifma avx512cd avx512bw avx512vl avx512_bf16 "
                "clzero xsaveerptr avx512vbmi umip pku ospke avx512_vbmi2 gfni vaes vpclmulqdq avx512_vnni "
                "avx512_bitalg avx512_vpopcntdq rdpid fsrm")
XEON_AMX = _cpuinfo("Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz", _BASE + " avx_vnni avx512_bf16 avx512f "
                    "avx512dq avx512cd avx512bw avx512vl avx512vbmi umip pku ospke waitpkg avx512_vbmi2 gfni vaes "
                    "vpclmulqdq avx512_vnni avx512_bitalg avx512_vpopcntdq la57 rdpid movdiri movdir64b fsrm md_clear "
                    "serialize tsxldtrk amx_bf16 avx512_fp16 amx_tile amx_int8 arch_capabilities")
AVX512_NO_BF16 = _cpuinfo("Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz", _BASE + " avx512f avx512dq avx512cd avx512bw "
                          "avx512vl")  # Skylake-SP: AVX-512, but bf16 only emulated
ARM = ("processor\t: 0\nBogoMIPS\t: 243.75\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp "
       "asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs\nCPU implementer\t: 0x41\nCPU part\t: 0xd0c\n\n")


@pytest.mark.parametrize("text,model,want,dtype", [
    (ZEN3, "AMD EPYC 7B13", {"avx2"}, torch.float32),
    (ZEN4, "AMD EPYC 9B14", {"avx2", "avx512f", "avx512_bf16", "vnni"}, torch.bfloat16),
    (XEON_AMX, "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz", set(FEATURES), torch.bfloat16),
    (AVX512_NO_BF16, "Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz", {"avx2", "avx512f"}, torch.float32),
], ids=["zen3", "zen4", "xeon-amx", "skylake-avx512"])
def test_features_and_default_dtype_from_cpuinfo(text, model, want, dtype):
    cpu = read_cpu_features(text, capability="AVX2")
    assert cpu.model == model
    assert {f for f, on in cpu.features().items() if on} == want
    assert default_cpu_dtype(cpu) == dtype and cpu.native_bf16 == (dtype == torch.bfloat16)
    line = cpu.describe()
    assert line.startswith(model + ": ") and line.endswith("(torch AVX2) -> " + ("bf16" if cpu.native_bf16 else "fp32"))
    for f in FEATURES:  # every deciding feature is named, present or absent
        assert f in line
    assert cpu.to_dict()["default_dtype"] == ("bf16" if cpu.native_bf16 else "fp32")


def test_amx_alone_or_avx512_bf16_alone_each_make_bf16_native():
    assert CpuFeatures("x", frozenset({"amx_bf16"})).native_bf16
    assert CpuFeatures("x", frozenset({"avx512_bf16"})).native_bf16
    assert not CpuFeatures("x", frozenset({"avx512f", "avx512_vnni", "amx_int8"})).native_bf16


def test_arm_and_unreadable_cpuinfo_default_to_fp32():
    model, flags = parse_cpuinfo(ARM)
    assert model is None and "asimd" in flags
    arm = read_cpu_features(ARM)
    assert arm.model and default_cpu_dtype(arm) == torch.float32 and not any(arm.features().values())
    empty = read_cpu_features("")
    assert empty.flags == frozenset() and default_cpu_dtype(empty) == torch.float32
    assert "none of avx2" in empty.describe()


def test_this_machine_agrees_with_its_cpuinfo():
    cpu = cpu_features()
    assert cpu is cpu_features(), "read once per process"
    try:
        text = open("/proc/cpuinfo", encoding="utf-8").read()
    except OSError:
        pytest.skip("no /proc/cpuinfo here")
    assert cpu.flags == cap_flags(parse_cpuinfo(text)[1], env_isa_cap())  # a cap set here (make test-avx2) applies
    assert cpu.capability == torch.backends.cpu.get_cpu_capability()
    assert default_cpu_dtype() == (torch.bfloat16 if {"avx512_bf16", "amx_bf16"} & cpu.flags else torch.float32)


@pytest.mark.parametrize("cap,want,dtype", [
    ("AVX2", {"avx2"}, torch.float32),  # what an AVX2-only CPU runs: fp32
    ("avx2_vnni", {"avx2", "vnni"}, torch.float32),
    ("AVX512_CORE", {"avx2", "avx512f"}, torch.float32),  # Skylake-SP's kernels
    ("AVX512_CORE_BF16", {"avx2", "avx512f", "avx512_bf16", "vnni"}, torch.bfloat16),  # Zen 4's
    ("AVX512_CORE_AMX", set(FEATURES), torch.bfloat16),
    ("ALL", set(FEATURES), torch.bfloat16),
])
def test_onednn_isa_cap_removes_the_features_above_it(cap, want, dtype):
    cpu = read_cpu_features(XEON_AMX, capability="AVX2", isa_cap=cap)
    assert {f for f, on in cpu.features().items() if on} == want
    assert default_cpu_dtype(cpu) == dtype
    assert f"oneDNN capped at {cap}" in cpu.describe() and cpu.to_dict()["onednn_isa_cap"] == cap
    assert read_cpu_features(ZEN3, isa_cap=cap).features()["avx512f"] is False  # a cap adds nothing


def test_a_bad_isa_cap_names_the_variable():
    with pytest.raises(ValueError, match="ONEDNN_MAX_CPU_ISA: expected one of oneDNN's ISA names"):
        read_cpu_features(XEON_AMX, isa_cap="avx9000")


def test_the_environments_cap_is_read(monkeypatch):
    assert env_isa_cap({}) is None
    assert env_isa_cap({"ONEDNN_MAX_CPU_ISA": "AVX2"}) == "AVX2" == env_isa_cap({"DNNL_MAX_CPU_ISA": "AVX2"})
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert read_cpu_features().native_bf16 is False  # this machine, capped (the cached cpu_features() is not re-read)

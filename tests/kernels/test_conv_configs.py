"""The conv autotuner's offer per problem (kernels/conv.py prune_configs), on stand-in targets."""
import pytest
import torch

from asymvq.kernels import compile_check
from asymvq.kernels.conv import _GPU_CONFIGS, prune_configs, smem_estimate


def _offer(capability, dtype, cin, cout, m):
    nargs = {"x_ptr": torch.empty(1, dtype=dtype, device="meta"), "Cin": cin, "Cout": cout,
             "M_BUCKET": max(m, 1).bit_length()}
    with compile_check.stand_in(capability):
        return [(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"], c.num_warps, c.num_stages)
                for c in prune_configs(_GPU_CONFIGS, nargs)]


@pytest.mark.parametrize("capability", [80, 90])
def test_large_problem_gets_every_config(capability):
    offer = _offer(capability, torch.float16, 384, 768, 512 * 512)
    assert len(offer) == len(_GPU_CONFIGS) == len(set(offer))


def test_tiles_never_exceed_the_next_power_of_two_of_the_problem():
    offer = _offer(90, torch.float16, 3, 20, 100)  # L0-like: 3 channels in, 20 out, 100 pixels
    assert offer and all(bk == 16 and bn == 32 and bm <= 128 for bm, bn, bk, _, _ in offer), offer
    assert len(offer) == len(set((bm, bn, bk, w) for bm, bn, bk, w, _ in offer))  # clamped K: one depth per tile


def test_fp32_gets_the_one_spill_free_tile():
    assert _offer(80, torch.float32, 384, 768, 512 * 512) == [(64, 64, 32, 4, 4)]


def test_configs_over_the_targets_shared_memory_are_not_offered(monkeypatch):
    from asymvq.kernels import _common

    monkeypatch.setitem(_common.SMEM_LIMIT, 86, 60_000)  # a device with less shared memory per block
    small = _offer(86, torch.float16, 384, 768, 512 * 512)
    assert small and all(smem_estimate(bm, bn, bk, s, 2) <= 60_000 for bm, bn, bk, _, s in small)
    assert (128, 128, 64, 8, 3) not in small and (128, 64, 32, 4, 4) in small

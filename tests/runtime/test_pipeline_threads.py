"""Call state is passed, not swapped: two threads share one pipeline, each with its own scheduler and timer."""
from __future__ import annotations

import threading

import torch
from runtime_helpers import image_and_mask

from asymvq.profiling.timing import StageTimer


def _run(pipe, scheduler, timer, seed):
    image, mask = image_and_mask(size=32, seed=seed)
    return pipe("a cat", image, mask, num_inference_steps=2, scheduler=scheduler, timer=timer, output_type="pt",
                generator=torch.Generator().manual_seed(seed)).images


def test_two_threads_one_pipeline(tiny_pipe):
    before = dict(vars(tiny_pipe))
    expected = {name: _run(tiny_pipe, name, None, seed) for seed, name in enumerate(("euler", "ddim"))}
    results, timers, errors = {}, {}, []

    def worker(seed, name):
        try:
            timers[name] = StageTimer("cpu")
            for _ in range(3):
                results[name] = _run(tiny_pipe, name, timers[name], seed)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(seed, name)) for seed, name in enumerate(("euler", "ddim"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    for name in expected:
        torch.testing.assert_close(results[name], expected[name], rtol=0, atol=1e-6)
        spans = [n for n, _ in timers[name].collect()]
        assert spans.count("unet_step") == 3 * 2 and spans.count("decode") == 3  # each timer saw its own calls only
    assert vars(tiny_pipe).keys() == before.keys() and all(vars(tiny_pipe)[k] is v for k, v in before.items())
    assert not torch.equal(expected["euler"], expected["ddim"])

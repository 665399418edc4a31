"""Embedding: the installed CMake package builds the C example consumer, which runs; one
handle serves two threads at once and two handles run in two threads, with the same results
as one thread alone."""
from __future__ import annotations

import subprocess
import threading

import asymvq_host as capi
import numpy as np
import torch
from host_fixtures import BUILD, ROOT, file_lock

import asymvq


def test_installed_package_builds_and_runs_the_c_example(host_build, tiny, tmp_path):
    prefix, example = tmp_path / "prefix", tmp_path / "example"
    with file_lock(BUILD.parent / f".{BUILD.name}.lock"):  # not while another worker rebuilds
        r = subprocess.run(["cmake", "--install", str(host_build), "--prefix", str(prefix)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (prefix / "include" / "asymvq" / "asymvq.h").is_file()
    assert (prefix / "lib" / "cmake" / "asymvq_host" / "asymvq_hostConfig.cmake").is_file()
    r = subprocess.run(["cmake", "-S", str(ROOT / "examples"), "-B", str(example), f"-DCMAKE_PREFIX_PATH={prefix}"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run(["cmake", "--build", str(example)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    # the consumer is plain C and knows nothing of torch: only the C header and the library
    assert "torch" not in (ROOT / "examples" / "minimal.c").read_text()
    r = subprocess.run([str(example / "minimal"), str(tiny)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"asymvq {asymvq.__version__}: decoded (1, 3, 64, 64), mean ")
    assert (prefix / "include" / "asymvq" / "version.h").is_file()
    r = subprocess.run([str(example / "minimal"), str(tmp_path / "nowhere")], capture_output=True, text=True)
    assert r.returncode == 1 and "engines_dir: expected a directory" in r.stderr
    # the installed asymvq-run runs from the prefix (its run path finds the library and libtorch)
    r = subprocess.run([str(prefix / "bin" / "asymvq-run"), "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "asymvq-run decode" in r.stdout


def _jobs():
    g = torch.Generator().manual_seed(11)
    jobs = []
    for b in (1, 2):
        z = torch.randn(b, 4, 8, 8, generator=g).numpy()
        img = (torch.rand(b, 3, 64, 64, generator=g) * 2 - 1).numpy()
        m = (torch.rand(1, 1, 64, 64, generator=g) > 0.5).float().numpy()
        jobs.append((z, img, m))
    return jobs


def _run_threads(targets):
    errors = []

    def wrap(fn):
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=wrap, args=(t,)) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not errors, errors


def test_one_handle_two_threads_and_two_handles(lib, tiny):
    jobs = _jobs()
    embeds = torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(2)).numpy()
    with capi.Host(lib, tiny) as host:
        expected = [host.decode(*j) for j in jobs]
        expected_inpaint = host.inpaint(prompt_embeds=embeds, negative_embeds=embeds * 0.5, image=jobs[0][1],
                                        mask=jobs[0][2], steps=2, seed=1)
        # one handle, two threads, repeatedly (the handle serialises its calls)
        results: dict = {}

        def worker(k):
            def fn():
                for rep in range(3):
                    results[(k, rep)] = host.decode(*jobs[k])
                results[(k, "inpaint")] = host.inpaint(prompt_embeds=embeds, negative_embeds=embeds * 0.5, image=jobs[0][1],
                                                       mask=jobs[0][2], steps=2, seed=1)
            return fn

        _run_threads([worker(0), worker(1)])
        for k in (0, 1):
            for rep in range(3):
                np.testing.assert_array_equal(results[(k, rep)], expected[k])
            np.testing.assert_array_equal(results[(k, "inpaint")], expected_inpaint)

    # two handles, one per thread, truly in parallel
    hosts = [capi.Host(lib, tiny), capi.Host(lib, tiny)]
    try:
        out: dict = {}

        def per_handle(k):
            def fn():
                for rep in range(3):
                    out[(k, rep)] = hosts[k].decode(*jobs[k])
            return fn

        _run_threads([per_handle(0), per_handle(1)])
        for k in (0, 1):
            for rep in range(3):
                np.testing.assert_array_equal(out[(k, rep)], expected[k])
    finally:
        for h in hosts:
            h.close()

# `make run`: the main job on the built-in default. `make test`: the whole suite (and, where cmake
# is installed, the C++ host built once into build/host and reused). `make host`: that build alone.
# Both create .venv when it is missing: `make run` installs the base package (what `pip install asymvq`
# gives: the torch backend, no extras), `make test` adds the dev extras (ONNX, OpenVINO, Triton, servers,
# Ray, test tools). A second `make run` or `make test` reuses what is there.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
BASE_STAMP := $(VENV)/.installed-base
STAMP  := $(VENV)/.installed
# Where torch comes from. Empty: pip's default, which on these machines (no CUDA) takes the
# CPU wheel of torch 2.13.0 lying on disk. Elsewhere, point it at a CPU or CUDA torch index.
TORCH_INDEX ?=

.PHONY: run test test-avx2 install clean host fuzz wheels

$(BASE_STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first and pinned, so nothing later can pull another (CUDA) build in
	$(PY) -m pip install -q torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -q -e .
	touch $(BASE_STAMP)

$(STAMP): $(BASE_STAMP)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(BASE_STAMP)
	$(VENV)/bin/asymvq profile

# The C++ host (CMakeLists.txt) against the .venv's torch; configured once, rebuilt incrementally.
HOST_BUILD := build/host
HAVE_CMAKE := $(shell command -v cmake 2>/dev/null)

host: $(STAMP)
	@test -n "$(HAVE_CMAKE)" || { echo "make host: cmake is not installed (apt-get install cmake g++)"; exit 1; }
	@# sha256 comes from OpenSSL's libcrypto: install its headers when missing (root, as in CI)
	@test -f /usr/include/openssl/evp.h || { test "$$(id -u)" = 0 && apt-get update -q && apt-get install -y -q libssl-dev; } \
	  || { echo "make host: OpenSSL headers missing: apt-get install libssl-dev"; exit 1; }
	test -f $(HOST_BUILD)/CMakeCache.txt || cmake -S . -B $(HOST_BUILD) -DCMAKE_BUILD_TYPE=Release -DASYMVQ_PYTHON=$(abspath $(PY))
	cmake --build $(HOST_BUILD) -j 2

# The suite's run, shared by test and test-avx2: two xdist workers, whole files per worker (tests/conftest.py: why)
PYTEST = $(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder

test: $(STAMP) $(if $(HAVE_CMAKE),host)
	$(VENV)/bin/ruff check .   # pyflakes, pycodestyle, import order, bugbear, blind excepts ([tool.ruff] in pyproject.toml)
	$(PYTEST)

# The suite on the kernels an AVX2-only CPU runs (torch's and oneDNN's, capped), on a newer CPU: the check that no
# test leans on AVX-512/AMX kernels. OpenVINO's tests are left out: its CPU plugin fails or crashes under the cap
# (models/cpu_features.py). ONNX Runtime's MLAS ignores the cap. Not a substitute for a run on an AVX2-only CPU.
test-avx2: $(STAMP) $(if $(HAVE_CMAKE),host)
	ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 $(PYTEST) --ignore=tests/engines/test_openvino_engine.py -k "not openvino"

# Coverage-guided fuzzing (atheris, the `fuzz` extra) of the multipart form and the manifest reader,
# FUZZ_SECONDS each; new inputs go to out/fuzz/<name>, findings to out/fuzz/<name>-crash-*.
FUZZ_SECONDS ?= 600
fuzz: $(STAMP)
	$(PY) -m pip install -q -e '.[fuzz]'
	@for n in form manifest; do mkdir -p out/fuzz/$$n; \
	  PATH=$(abspath $(VENV))/bin:$$PATH tests/fuzz/fuzz_$$n.py out/fuzz/$$n tests/fuzz/corpus/$$n -dict=tests/fuzz/$$n.dict \
	    -max_total_time=$(FUZZ_SECONDS) -timeout=20 -rss_limit_mb=4096 -print_final_stats=1 \
	    -artifact_prefix=out/fuzz/$$n- || exit 1; done

# The wheels bench/gpu_check.sh carries to the GPU machine (docs/gpu_check.md): for its Python 3.12,
# no dependencies (the image has them), into bench/wheels/ (gitignored), 20.6 MiB. Needs PyPI.
GPU_WHEELS := diffusers==0.42.1 transformers==5.23.0 importlib_metadata==10.2.0 regex==2026.1.15 \
              onnx-graphsurgeon==0.6.1 polygraphy==0.53.6
wheels:
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
	  -d bench/wheels $(GPU_WHEELS)
	@du -ch bench/wheels/*.whl | tail -1

clean:
	rm -rf $(VENV) build *.egg-info

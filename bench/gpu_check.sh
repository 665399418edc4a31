#!/usr/bin/env bash
# bench/gpu_check.sh: every GPU check of asymvq in one bounded command (540 s by default).
#
# On a CUDA machine with an empty pip cache and no network (the device tool's H200 image: torch 2.11,
# triton 3.6, the CPU build of onnxruntime, transformers 5.17, no diffusers, no openvino), it installs
# what was carried (bench/wheels/), then runs, each step under its own `timeout`, going on past a
# failing step, in this order (most wanted first: what the budget cuts is the end):
#   env          versions, GPU, driver                                            -> env.json
#   pytest_gpu   `pytest -m gpu` over the files holding GPU tests (every kernel test in fp32, fp16,
#                bf16; the x1.5 decoder at 512; the CUDA profile), one JSON line per test as it goes
#                                                                                 -> pytest-gpu.jsonl, .xml
#   decoder      x1.5 decoder, 512x512 fp16: kernels="torch", "triton", torch.compile
#                                                                                 -> decoder-x1.5-512-fp16.json
#   family_decoders  the FLUX (bf16), ASUKA (bf16) and SDXL (fp16) decoders at 1024x1024, the same three
#                ways, beside the published anchors (bench/gpu_anchors.py: FLUX.2 VAE H200 97.6 ms eager /
#                29.2 ms fused GroupNorm+SiLU; FLUX.1 VAE B200 117.6 / 27.1 ms compiled; SDXL VAE
#                TensorRT H100 127 ms)                                            -> decoder-<preset>-1024-<dtype>.json
#   kernels      bench/kernels.py at 512x512 fp16 (rewritten after every case)    -> kernels-<gpu>-<time>.json
#   profile      `asymvq profile --preset sd15 --device cuda --dtype fp16`, 512x512, 50 steps,
#                all four decoders, --flops (needs diffusers)                     -> profile-sd15-512-fp16.json
#   ort          ONNX Runtime CUDA EP vs torch, decoder and UNet, 512 fp16 (the UNet needs diffusers:
#                the decoder alone without it; the CUDA EP needs onnxruntime-gpu) -> ort-cuda-512-fp16.json
#   family_pipelines  SDXL inpainting, 30 steps at 1024x1024 fp16, real sizes with random weights,
#                diffusers against asymvq, beside the anchor (H100: 1471 ms TensorRT, 2496 ms PyTorch);
#                then FLUX.1 Fill (12B transformer, T5-XXL) at 1024, 4 steps, bf16 (needs diffusers)
#                                                                                 -> pipeline-{sdxl-1024-fp16,flux-fill-1024-bf16}.json
#   decoder_cpu  bench/decoder_cpu.py at 128x128 on the machine's CPU (needs diffusers; OpenVINO rows
#                are left out without openvino)                                   -> decoder-cpu-128.json
# A step whose Python packages are neither on the image nor carried is recorded as skipped, with
# what it needs, instead of failing on an import.
#
# What comes back: the device tool returns what is under $OUT (at most 8 files, 16 MiB each), so by
# default everything goes there as two files, rewritten after every step and every 30 s while one
# runs (a run cut short keeps what it had):
#   $OUT/summary.json               every step (status, exit code, seconds, log tail), the pytest
#                                   outcomes, and the small result files inlined
#   $OUT/gpu-check-<stamp>.tar.gz   the whole results folder: logs, JSON, junit XML, plots
# Without $OUT: bench/results/gpu/<stamp>/ (dry run: out/gpu_check-dry-run/<stamp>/). The working
# folder is ${TMPDIR:-/tmp}/asymvq-gpu-check-<stamp>. Exit status 0 when every step passed.
#
#   bash bench/gpu_check.sh                          # on the GPU machine: docs/gpu_check.md has the call
#   bash bench/gpu_check.sh --steps env,pytest_gpu   # only those (in the order above)
#   bash bench/gpu_check.sh --dry-run                # here, on the CPU, with the packages the GPU image lacks
#                                                    # made unimportable (unless carried): argument parsing,
#                                                    # wheel discovery, the project shim, every step at tiny
#                                                    # shapes; GPU-only parts printed
#   bash bench/gpu_check.sh --help
#
# Wheels: `make wheels` fetches them into bench/wheels/ (gitignored; carried with the device tool's
# `carry`, e.g. run(carry=["bench/wheels"], command="bash bench/gpu_check.sh", timeout_s=600)):
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       -d bench/wheels diffusers==0.42.1 transformers==5.23.0 importlib_metadata==10.2.0 regex==2026.1.15 \
#       onnx-graphsurgeon==0.6.1 polygraphy==0.53.6
# 20.6 MiB together, measured: transformers 12.7, diffusers 6.1, regex 0.8, polygraphy 0.5,
# onnx-graphsurgeon 0.06, importlib_metadata 0.03 (the image has the rest; its transformers is 5.17).
# Without them the steps that need diffusers (profile, decoder_cpu, ort's UNet) or the ONNX export's
# cleanup (ort: onnx_graphsurgeon, polygraphy) are skipped; env, pytest_gpu, decoder and kernels run.
#
# onnxruntime-gpu (the CUDA 13 build, 1.31.1, matching the image's CUDA 13 libraries) is a 244 MiB
# wheel: larger than one device call may carry (64 MiB). It travels in parts over several calls to
# the same warm machine (each call within its 30 s warm window, the machine keeps /tmp between them):
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 -d bench/wheels onnxruntime-gpu==1.31.1
#   bash bench/gpu_check.sh --split-wheels         # bench/wheels/*.whl over 56 MiB -> bench/wheel-parts/
#   # then, per part P, one call: run(carry=["bench/wheel-parts/P", "bench/wheel-parts/<wheel>.sha256"],
#   #                                 command="bash bench/gpu_check.sh --receive-parts")
#   # and last: run(carry=["bench/wheels"], command="bash bench/gpu_check.sh")  (reassembles, checks sha256)
# Without it the ort step records that onnxruntime has no CUDA provider and the other steps run.
set -u -o pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PARTS_HOME=/tmp/asymvq-wheels          # where received parts and reassembled wheels live on the machine
SPLIT_MIB=56   # a part plus the working tree must stay under one call's 64 MiB
ALL_STEPS="env pytest_gpu decoder family_decoders kernels profile ort family_pipelines decoder_cpu"
DRY=0 MODE=check WHEELS="" DEST="" BUDGET="" PY="" SKIP_INSTALL=0 STEPS_ARG=""
# What the GPU image lacks (docs/gpu_check.md; /work/.library/device/KINDS.md lists what it holds), as
# top-level module names. The dry run makes them unimportable unless a carried wheel provides them.
IMAGE_LACKS="diffusers openvino fastapi starlette uvicorn ray onnx_graphsurgeon polygraphy importlinter omegaconf atheris"

usage() {
    sed -n '2,/^set -u/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'
    cat <<'USAGE'
Options:
  --dry-run          run the CPU side here (tiny shapes on the CPU, the GPU image's missing packages
                     made unimportable); print what needs a GPU
  --steps A,B        run only these steps (among: env pytest_gpu decoder family_decoders kernels profile ort
                     family_pipelines decoder_cpu)
  --wheels DIR       wheel folder (default: the first of $ASYMVQ_WHEELS, bench/wheels, .whl, shared/wheels,
                     plus /tmp/asymvq-wheels where parts were reassembled)
  --out DIR          where summary.json and the archive go (default: $OUT when set, the device tool's
                     folder that comes back; else bench/results/gpu/<date>; dry run: out/gpu_check-dry-run/<date>)
  --budget SECONDS   bound on the whole run, install included (default 540; dry run 1800)
  --python PY        interpreter (default python3; dry run: .venv/bin/python when present)
  --skip-install     use what is installed
  --split-wheels     split wheels over 56 MiB in the wheel folder into bench/wheel-parts/ (here)
  --receive-parts    copy carried bench/wheel-parts/* to /tmp/asymvq-wheels/parts (on the GPU machine)
USAGE
}

while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY=1 ;;
        --steps) STEPS_ARG="${2:?--steps needs a list}"; shift ;;
        --wheels) WHEELS="${2:?--wheels needs a folder}"; shift ;;
        --out) DEST="${2:?--out needs a folder}"; shift ;;
        --budget) BUDGET="${2:?--budget needs seconds}"; shift ;;
        --python) PY="${2:?--python needs an interpreter}"; shift ;;
        --skip-install) SKIP_INSTALL=1 ;;
        --split-wheels) MODE=split ;;
        --receive-parts) MODE=receive ;;
        -h|--help) usage; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done
case "$BUDGET" in ''|*[!0-9]*) [ -n "$BUDGET" ] && { echo "gpu_check.sh: --budget: expected whole seconds, got '$BUDGET'" >&2; exit 2; } ;; esac
STEPS="$ALL_STEPS"
if [ -n "$STEPS_ARG" ]; then
    for s in ${STEPS_ARG//,/ }; do
        case " $ALL_STEPS " in *" $s "*) ;; *) echo "gpu_check.sh: --steps: unknown step '$s' (among: $ALL_STEPS)" >&2; exit 2 ;; esac
    done
    STEPS=" ${STEPS_ARG//,/ } "
fi
wanted() { case " $STEPS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

cd "$ROOT"

# -- wheels: discovery, split, receive, reassemble ------------------------------------------
wheel_dirs() {  # every folder holding wheels, first the one asked for
    local d
    for d in "$WHEELS" "${ASYMVQ_WHEELS:-}" "$ROOT/bench/wheels" "$ROOT/.whl" "$ROOT/shared/wheels" "$PARTS_HOME"; do
        [ -n "$d" ] && compgen -G "$d/*.whl" > /dev/null && echo "$d"
    done | awk '!seen[$0]++'
}

if [ "$MODE" = split ]; then
    src="${WHEELS:-$ROOT/bench/wheels}"
    mkdir -p "$ROOT/bench/wheel-parts" "$ROOT/bench/wheels-big"
    found=0
    for w in "$src"/*.whl; do
        [ -f "$w" ] || continue
        [ "$(stat -c %s "$w")" -gt $((SPLIT_MIB * 1024 * 1024)) ] || continue
        found=1
        name="$(basename "$w")"
        (cd "$(dirname "$w")" && sha256sum "$name") > "$ROOT/bench/wheel-parts/$name.sha256"
        split -b "${SPLIT_MIB}m" -d -a 2 "$w" "$ROOT/bench/wheel-parts/$name.part-"
        mv "$w" "$ROOT/bench/wheels-big/"   # so that carrying bench/wheels stays under 64 MiB
        echo "split $name:"; ls -l "$ROOT/bench/wheel-parts/$name".*
        echo "carry, one call each: $(cd "$ROOT" && ls bench/wheel-parts/"$name".part-* | tr '\n' ' ')"
        echo "  with bench/wheel-parts/$name.sha256, command: bash bench/gpu_check.sh --receive-parts"
    done
    [ "$found" = 1 ] || echo "no wheel over ${SPLIT_MIB} MiB in $src"
    exit 0
fi

if [ "$MODE" = receive ]; then
    mkdir -p "$PARTS_HOME/parts"
    cp -v "$ROOT"/bench/wheel-parts/* "$PARTS_HOME/parts/" 2>/dev/null || echo "no parts carried (bench/wheel-parts/)"
    ls -l "$PARTS_HOME/parts"
    exit 0
fi

reassemble() {  # parts under $PARTS_HOME/parts -> whole wheels in $PARTS_HOME, sha256 checked
    local sum name
    for sum in "$PARTS_HOME"/parts/*.sha256; do
        [ -f "$sum" ] || continue
        name="$(basename "$sum" .sha256)"
        [ -f "$PARTS_HOME/$name" ] && continue
        cat "$PARTS_HOME/parts/$name".part-* > "$PARTS_HOME/$name.tmp" 2>/dev/null
        if (cd "$PARTS_HOME" && mv "$name.tmp" "$name" && sha256sum --quiet -c "parts/$name.sha256" 2>/dev/null); then
            echo "reassembled $name"
        else
            echo "incomplete or corrupt parts of $name: left out" >&2
            rm -f "$PARTS_HOME/$name"
        fi
    done
}

# -- set-up ---------------------------------------------------------------------------------
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
if [ "$DRY" = 1 ]; then
    DEST="${DEST:-$ROOT/out/gpu_check-dry-run/$STAMP}"
    BUDGET="${BUDGET:-1800}"
    if [ -z "$PY" ]; then if [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"; else PY=python3; fi; fi
else
    DEST="${DEST:-${OUT:-$ROOT/bench/results/gpu/$STAMP}}"
    BUDGET="${BUDGET:-540}"
    PY="${PY:-python3}"
fi
# the steps run inside WORK: a relative interpreter path is made absolute first (a bare name stays on PATH)
case "$PY" in /*) ;; */*) PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")" ;; esac
WORK="${TMPDIR:-/tmp}/asymvq-gpu-check-$STAMP"   # every step writes here; DEST gets the archive + summary
mkdir -p "$DEST" "$WORK"
DEST="$(cd "$DEST" && pwd)"
STEPS_LOG="$WORK/steps.jsonl"
: > "$STEPS_LOG"
START=$(date +%s)
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PIP_NO_INDEX=1 PIP_NO_CACHE_DIR=1
echo "gpu_check: $( [ "$DRY" = 1 ] && echo "DRY RUN on the CPU" || echo "GPU run" ), steps:$STEPS, results in $DEST (work $WORK), budget ${BUDGET}s, python $PY"

json_str() { printf '%s' "$1" | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' | tr '\n\t' '  '; }

record() {  # name status rc seconds limit command
    printf '{"step":"%s","status":"%s","rc":%s,"seconds":%s,"timeout_s":%s,"command":"%s","log":"%s.log"}\n' \
        "$1" "$2" "$3" "$4" "$5" "$(json_str "$6")" "$1" >> "$STEPS_LOG"
}

# summary.json + the archive, into DEST; atomic (a reader never sees half a file). Called after every
# step and every 30 s by the background packer, so a run killed at any point leaves its latest state.
pack() {
    local final="${1:-0}" arch="$DEST/gpu-check-$STAMP.tar.gz"
    "$PY" "$ROOT/bench/gpu_check_summary.py" "$WORK" "$BUDGET" "$DRY" "$(( $(date +%s) - START ))" "$final" \
        > "$DEST/.summary.json.tmp" 2> "$WORK/summary.err" && mv -f "$DEST/.summary.json.tmp" "$DEST/summary.json"
    cp -f "$DEST/summary.json" "$WORK/summary.json" 2>/dev/null
    tar -czf "$DEST/.archive.tmp" -C "$WORK" --exclude=.hypothesis . 2>/dev/null
    if [ "$(stat -c %s "$DEST/.archive.tmp" 2>/dev/null || echo 0)" -gt $((15 * 1024 * 1024)) ]; then
        # over what one returned file may be (16 MiB): leave out the plots and the logs' heads
        tar -czf "$DEST/.archive.tmp" -C "$WORK" --exclude=.hypothesis --exclude='*.png' --exclude='*.log' . 2>/dev/null
    fi
    mv -f "$DEST/.archive.tmp" "$arch"
}
( while sleep 30; do kill -0 $$ 2>/dev/null || exit 0; pack; done ) > /dev/null 2>&1 &
PACKER=$!
trap 'kill $PACKER 2>/dev/null' EXIT

have() {  # module...: all importable by $PY (with what was installed and the dry run's blocks)
    "$PY" -c "import importlib, sys; [importlib.import_module(m) for m in sys.argv[1:]]" "$@" 2>/dev/null
}

run_step() {  # name timeout_s needs command...: bounded by what is left of the budget; never stops the run
    local name="$1" limit="$2" needs="$3"; shift 3
    wanted "$name" || return 0
    local left=$((BUDGET - ($(date +%s) - START)))
    if [ "$left" -lt 20 ]; then
        echo "== $name: skipped, the ${BUDGET}s budget is spent"
        record "$name" skipped null 0 0 "budget spent: $*"
        pack
        return 0
    fi
    local m missing=()
    for m in ${needs//,/ }; do have "$m" || missing+=("$m"); done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "== $name: skipped, needs ${missing[*]}: neither on the image nor carried (make wheels; docs/gpu_check.md)"
        record "$name" skipped null 0 0 "needs ${missing[*]}: $*"
        pack
        return 0
    fi
    [ "$limit" -gt "$((left - 5))" ] && limit=$((left - 5))
    echo "== $name (timeout ${limit}s): $*"
    local t0 rc status secs
    t0=$(date +%s.%N)
    (cd "$WORK" && timeout -k 10 "$limit" "$@") > "$WORK/$name.log" 2>&1
    rc=$?
    secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    case $rc in 0) status=ok ;; 124|137) status=timeout ;; *) status=failed ;; esac
    echo "   $status (exit $rc) in ${secs}s; last lines of $name.log:"
    tail -n 4 "$WORK/$name.log" | cut -c1-200 | sed 's/^/   | /'
    record "$name" "$status" "$rc" "$secs" "$limit" "$*"
    pack
}

note() {  # step command...: what the GPU run of the step would do, printed (dry run), as <step>_gpu
    wanted "$1" || return 0
    echo "== $1_gpu: GPU only, not run here: ${*:2}"
    record "$1_gpu" printed null 0 0 "${*:2}"
}

# 0. install: wheels into a private --target folder (first on PYTHONPATH: it shadows the image's
# older transformers and CPU onnxruntime), the project through a symlink shim (its package-dir
# mapping: asymvq -> runtime/, asymvq.models -> models/, ...), never `pip install -e` (its pins
# would ask for torch 2.13 and there is no index).
SITE="${TMPDIR:-/tmp}/asymvq-site-$STAMP"
SHIM="${TMPDIR:-/tmp}/asymvq-shim-$STAMP"
CARRIED=""
install_step() {
    local dirs wheels=() d w name
    [ -d "$PARTS_HOME/parts" ] && reassemble
    mapfile -t dirs < <(wheel_dirs)
    echo "wheel folders: ${dirs[*]:-none}"
    declare -A seen=()
    for d in "${dirs[@]}"; do
        for w in "$d"/*.whl; do
            name="$(basename "$w" | cut -d- -f1 | tr 'A-Z-' 'a-z_')"
            [ -n "${seen[$name]:-}" ] && { echo "  $w: another $name already taken, skipped"; continue; }
            seen[$name]=1
            wheels+=("$w")
            echo "  $(basename "$w") ($(( $(stat -c %s "$w") / 1024 / 1024 )) MiB)"
        done
    done
    CARRIED="${!seen[*]}"
    local missing=()
    for name in diffusers transformers onnxruntime_gpu; do [ -n "${seen[$name]:-}" ] || missing+=("$name"); done
    [ ${#missing[@]} -gt 0 ] && echo "not carried: ${missing[*]} (make wheels; see the header of bench/gpu_check.sh)"
    mkdir -p "$SITE"
    if [ ${#wheels[@]} -gt 0 ]; then
        local cmd=("$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "${wheels[@]}")
        if [ "$DRY" = 1 ]; then
            echo "would run: ${cmd[*]}"   # the wheels are for the GPU image's Python 3.12, not this one
        else
            "${cmd[@]}" || echo "pip install failed" >&2
        fi
    fi
    # the project, as a package tree of symlinks: runtime/'s files and subpackages are asymvq's
    mkdir -p "$SHIM/asymvq"
    for w in "$ROOT"/runtime/*; do
        case "$(basename "$w")" in __pycache__|*.egg-info) continue ;; esac
        ln -sfn "$w" "$SHIM/asymvq/"
    done
    for d in models kernels engines export; do ln -sfn "$ROOT/$d" "$SHIM/asymvq/$d"; done
}

if [ "$SKIP_INSTALL" = 1 ]; then
    record install skipped null 0 0 "--skip-install"
else
    t0=$(date +%s)
    install_step > "$WORK/install.log" 2>&1
    rc=$?
    # CARRIED is set in a subshell-free call: recompute it here for the dry run's blocks
    CARRIED="$(for d in $(wheel_dirs); do for w in "$d"/*.whl; do basename "$w" | cut -d- -f1 | tr 'A-Z-' 'a-z_'; done; done | sort -u | tr '\n' ' ')"
    status=$([ $rc = 0 ] && echo ok || echo failed)
    echo "== install: $status in $(( $(date +%s) - t0 ))s"; sed 's/^/   | /' "$WORK/install.log" | cut -c1-200 | head -40
    record install "$status" "$rc" "$(( $(date +%s) - t0 ))" 0 "wheels -> $SITE; project shim -> $SHIM"
fi
export PYTHONPATH="$SITE:$SHIM:$ROOT/bench${PYTHONPATH:+:$PYTHONPATH}"
if [ "$DRY" = 1 ]; then
    # As on the GPU image: what it lacks cannot be imported here, unless a carried wheel brings it.
    ABSENT=""
    for m in $IMAGE_LACKS; do case " $CARRIED " in *" $m "*) ;; *) ABSENT="$ABSENT,$m" ;; esac; done
    export ASYMVQ_ABSENT="${ABSENT#,}"
    export PYTHONPATH="$ROOT/bench/gpu_image:$PYTHONPATH"
    echo "dry run: absent as on the GPU image: ${ASYMVQ_ABSENT:-nothing}"
fi
"$PY" - >> "$WORK/install.log" 2>&1 <<'PYEOF'
import importlib
import asymvq, asymvq.models, asymvq.engines, asymvq.export, asymvq.kernels
print("asymvq from", asymvq.__file__)
for name in ("torch", "triton", "diffusers", "transformers", "onnxruntime", "onnx", "openvino"):
    try:
        m = importlib.import_module(name)
        extra = f" providers {m.get_available_providers()}" if name == "onnxruntime" else ""
        print(f"{name} {m.__version__}{extra}")
    except Exception as e:  # noqa: BLE001
        print(f"{name}: missing ({type(e).__name__}: {e})")
PYEOF
tail -n 8 "$WORK/install.log" | sed 's/^/   | /'

CLI=("$PY" -m asymvq.cli)
# The files that hold GPU tests (and the kernel tests, all of which run on a GPU): collecting only
# them keeps test modules that need packages the image lacks (diffusers) out of the GPU run.
mapfile -t GPU_TESTS < <(cd "$ROOT" && { grep -rl --include='test_*.py' 'mark\.gpu' tests; ls tests/kernels/test_*.py; } | sort -u)
# One JSON line per test as it finishes (bench/pytest_jsonl.py): junit XML is written only at exit.
PYTEST=("$PY" -m pytest -q -m gpu -p no:cacheprovider -p pytest_jsonl --jsonl "$WORK/pytest-gpu.jsonl"
        --junitxml "$WORK/pytest-gpu.xml" -o junit_family=xunit1 --rootdir "$ROOT" -c "$ROOT/pyproject.toml")
GPU_TESTS=("${GPU_TESTS[@]/#/$ROOT/}")

# The UNet comes from diffusers; without it the ort step compares the decoder alone.
ORT_COMPONENTS=decoder
have diffusers && ORT_COMPONENTS=decoder,unet

# 1. environment
run_step env 60 "" "$PY" "$ROOT/bench/gpu_check_env.py" "$WORK/env.json"

if [ "$DRY" = 1 ]; then
    # the GPU tests are collected (imports, selection); running them here is `make test`'s job
    run_step pytest_gpu 300 "" "${PYTEST[@]}" --collect-only "${GPU_TESTS[@]}"
    # the decoder three ways: torch and triton (interpreter) here; torch.compile on the CPU takes
    # minutes on two shared cores (253 s measured), so it runs on the GPU only
    run_step decoder 600 "" env TRITON_INTERPRET=1 "$PY" "$ROOT/bench/decoder_gpu.py" --device cpu --preset tiny --size 32 \
        --dtype fp32 --variants torch,triton --warmup 0 --repeats 1 --out "$WORK/decoder-tiny-cpu.json"
    note decoder "$PY bench/decoder_gpu.py --preset x1.5 --size 512 --dtype fp16 --variants torch,triton,compile"
    # the new latent space and ASUKA's branch (16 channels, the mask as a 4th input channel) through the
    # Triton interpreter; the real FLUX / ASUKA / SDXL decoders at 1024 on the GPU only
    run_step family_decoders 600 "" env TRITON_INTERPRET=1 "$PY" "$ROOT/bench/decoder_gpu.py" --device cpu --preset tiny-asuka \
        --size 32 --dtype fp32 --variants torch,triton --warmup 0 --repeats 1 --out "$WORK/decoder-tiny-asuka-cpu.json"
    note family_decoders "$PY bench/decoder_gpu.py --preset {flux,asuka-flux (bf16),sdxl (fp16)} --size 1024" \
        "--variants torch,triton,compile (beside bench/gpu_anchors.py)"
    # the kernels: every case once through the Triton interpreter, checked against its reference
    run_step kernels 600 "" "$PY" "$ROOT/bench/kernels.py" --interpret
    note kernels "$PY bench/kernels.py --sizes 512 --warmup 5 --repeats 20 --out $WORK"
    # the profile with FLOPs at tiny shapes (the SD 1.5 FLOP table is counted for real, on meta)
    run_step profile 600 diffusers "${CLI[@]}" profile --preset tiny --device cpu --dtype fp32 --size 32x32 --steps 2 \
        --decoders tiny --warmup 0 --repeats 1 --flops --json "$WORK/profile-tiny-cpu.json" --plot "$WORK/profile-tiny-cpu.png"
    note profile "${CLI[*]} profile --preset sd15 --device cuda --dtype fp16 --size 512x512 --steps 50" \
        "--decoders vanilla,base,x1.5,x2 --warmup 1 --repeats 3 --flops --json $WORK/profile-sd15-512-fp16.json"
    # ONNX Runtime against torch (CPU provider here), decoder and UNet
    run_step ort 600 onnxruntime,onnx,onnx_graphsurgeon,polygraphy "$PY" "$ROOT/bench/ort_cuda.py" --device cpu --preset tiny --size 32 \
        --components "$ORT_COMPONENTS" --precision fp32 --warmup 0 --repeats 1 --out "$WORK/ort-cpu-tiny.json"
    note ort "$PY bench/ort_cuda.py --size 512 --precision fp16 --out $WORK/ort-cuda-512-fp16.json"
    # the whole SDXL job (tiny preset) through bench/pipeline_gpu.py; real sizes on the GPU only
    run_step family_pipelines 600 diffusers "$PY" "$ROOT/bench/pipeline_gpu.py" --family sdxl --preset tiny-sdxl --size 64 \
        --steps 2 --device cpu --dtype fp32 --warmup 0 --repeats 1 --out "$WORK/pipeline-tiny-sdxl-cpu.json"
    note family_pipelines "$PY bench/pipeline_gpu.py --family sdxl --size 1024 --steps 30 --dtype fp16;" \
        "--family flux-fill --size 1024 --steps 4 --dtype bf16"
    # the CPU benchmark of issue 10b is this machine's own (bench/results/decoder_cpu.json)
    note decoder_cpu "$PY bench/decoder_cpu.py --size 128 --warmup 0 --repeats 1 --threads 16 (on the GPU machine's CPU)"
else
    # Limits from the Triton builds each step compiles for sm_90 (counted without a GPU, through the
    # same recording as tests/kernels/kernel_builds.py; docs/gpu_check.md): pytest_gpu 113 for the
    # kernel tests (3 dtypes) + 31 for the x1.5 decoder at 512 fp16, over 8 xdist workers when the
    # image has xdist (it does); decoder: the same 31 (Triton's disk cache has them by then) and
    # torch.compile of the decoder; kernels: the bench's own shapes, and torch.compile per case.
    XDIST=()
    have xdist && XDIST=(-n 8)
    run_step pytest_gpu 240 "" "${PYTEST[@]}" "${XDIST[@]}" "${GPU_TESTS[@]}"
    run_step decoder 150 "" "$PY" "$ROOT/bench/decoder_gpu.py" --preset x1.5 --size 512 --dtype fp16 \
        --variants torch,triton,compile --warmup 3 --repeats 10 --out "$WORK/decoder-x1.5-512-fp16.json"
    # FLUX's and ASUKA's decoders in bf16 (as FLUX runs), SDXL's in fp16 (TensorRT's anchor); per preset: the
    # Triton builds of its shapes and a torch.compile of the decoder at 1024
    run_step family_decoders 300 "" bash -c 'rc=0; for spec in flux:bf16 asuka-flux:bf16 sdxl:fp16; do
        "$0" "$1/bench/decoder_gpu.py" --preset "${spec%%:*}" --size 1024 --dtype "${spec##*:}" \
            --variants torch,triton,compile --warmup 3 --repeats 10 --out "$2/decoder-${spec%%:*}-1024-${spec##*:}.json" || rc=1
        done; exit $rc' "$PY" "$ROOT" "$WORK"
    run_step kernels 180 "" "$PY" "$ROOT/bench/kernels.py" --sizes 512 --warmup 5 --repeats 20 --out "$WORK"
    run_step profile 120 diffusers "${CLI[@]}" profile --preset sd15 --device cuda --dtype fp16 --size 512x512 --steps 50 \
        --decoders vanilla,base,x1.5,x2 --warmup 1 --repeats 3 --flops \
        --json "$WORK/profile-sd15-512-fp16.json" --plot "$WORK/profile-sd15-512-fp16.png"
    run_step ort 120 onnxruntime,onnx,onnx_graphsurgeon,polygraphy "$PY" "$ROOT/bench/ort_cuda.py" --size 512 --precision fp16 --warmup 3 \
        --components "$ORT_COMPONENTS" --repeats 10 --workdir "${TMPDIR:-/tmp}/asymvq-ort-$STAMP" --out "$WORK/ort-cuda-512-fp16.json"
    # whole jobs at the real sizes (random weights built on the GPU): SDXL 30 steps beside its anchor, then FLUX Fill
    run_step family_pipelines 300 diffusers bash -c '"$0" "$1/bench/pipeline_gpu.py" --family sdxl --size 1024 --steps 30 \
        --dtype fp16 --warmup 1 --repeats 3 --out "$2/pipeline-sdxl-1024-fp16.json"; a=$?
        "$0" "$1/bench/pipeline_gpu.py" --family flux-fill --size 1024 --steps 4 --dtype bf16 --warmup 1 --repeats 2 \
            --out "$2/pipeline-flux-fill-1024-bf16.json"; b=$?; [ $a = 0 ] && [ $b = 0 ]' "$PY" "$ROOT" "$WORK"
    # last: least important here; without openvino its rows are left out, the others run
    run_step decoder_cpu 120 diffusers "$PY" "$ROOT/bench/decoder_cpu.py" --size 128 --warmup 0 --repeats 1 \
        --threads 16 --out "$WORK/decoder-cpu-128.json"
fi

kill $PACKER 2>/dev/null
pack 1
"$PY" - "$DEST/summary.json" <<'PYEOF'
import json, sys
s = json.load(open(sys.argv[1]))
bad = [x["step"] for x in s["steps"] if x["status"] not in ("ok", "printed", "skipped")]
print(f"gpu_check: {len(s['steps'])} steps in {s['total_s']}s; " + (f"not ok: {', '.join(bad)}" if bad else "every step ok")
      + f"; {sys.argv[1]} and {s['archive']}")
sys.exit(1 if bad else 0)
PYEOF

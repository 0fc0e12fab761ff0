#!/usr/bin/env bash
# How the committed device results under benchmarks/results/ were produced: three calls on one
# 2-GPU machine (nvidia-h100-x2), after the staged wheels are installed (shared/device/bootstrap.sh).
# Each phase runs two lanes side by side, one per GPU, so their timings do not share a card.
#   bash benchmarks/device_run.sh models|e2e|service  (writes JSON and logs under $OUT)
set -uo pipefail
: "${OUT:?set OUT to the output folder}" "${SV_ENGINE_COMMIT:?set SV_ENGINE_COMMIT to the commit under test}"
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null
nvidia-smi -L
lane() {  # lane GPU NAME COMMAND...
  local gpu=$1 name=$2; shift 2
  CUDA_VISIBLE_DEVICES=$gpu timeout "${LANE_TIMEOUT:-560}" "$@" >"$OUT/$name.log" 2>&1
  echo "lane $name (GPU $gpu) exit $?"; tail -n 25 "$OUT/$name.log"
}
case ${1:?phase: models, e2e or service} in
  models)  # model stages on every backend | whole edit: torch vs torch.compile (PSNR, profile)
    lane 0 bench-models python3 -m sv_engine.benchmarks.bench --stages text_encoder,unet_step,unet_step_wide,vae_encode,vae_decode \
      --backends torch,torch-compile,ort --repeat 10 --json "$OUT/bench-models.json" &
    lane 1 e2e-compile python3 -m sv_engine.benchmarks.e2e_parity --out "$OUT/e2e-compile.json" --backends torch,torch-compile --profile --budget-s 500 &
    wait ;;
  e2e)  # the other stages + whole edit warm/cold/profile | whole edit: torch, overlap, ORT before/after its thread fix
    lane 0 bench-rest python3 -m sv_engine.benchmarks.bench --stages depth,nla_maps,kernels,aggregation,video_encode \
      --backends torch,torch-compile,ort --e2e --profile --json "$OUT/bench-rest.json" &
    lane 1 e2e-ort python3 -m sv_engine.benchmarks.e2e_parity --out "$OUT/e2e-ort.json" --profile --budget-s 500 \
      --backends torch,torch:overlap=1,ort,ort:allow_spinning=1:intra_op_threads=0 &
    wait ;;
  service)  # warm Ray service vs a fresh process per edit, and 8 edits on 1 vs 2 GPUs
    LANE_TIMEOUT=570 lane 0,1 service python3 -m sv_engine.benchmarks.service_bench --out "$OUT/service.json" --random-full \
      --precision fp16 --backend torch --edits 3 --fresh 1 --batch 8 ;;
esac

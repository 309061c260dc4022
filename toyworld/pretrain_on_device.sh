#!/usr/bin/env bash
# toyworld/pretrain_on_device.sh — the population base (--model tiny-toyworld) pretrained in one device call of
# the library's `device` tool, continuing from /tmp/tw on a warm machine (so 2-3 calls back to back make the
# ~25 min base). Pretraining needs only diffusers, transformers, peft and a recent regex beyond the device image:
# put their wheels in .gpumin/ first (ignored by git; ~21 MB, so it travels with the tree in one call):
#   mkdir -p .gpumin && echo /.gpumin/ >> .git/info/exclude && python3 -m pip download --no-deps --only-binary=:all: \
#     --python-version 3.12 --platform manylinux2014_x86_64 -d .gpumin diffusers==0.42.1 transformers==5.23.0 \
#     peft==0.21.2 regex==2026.12.2
# then call the device with carry [".gpumin"] and: bash toyworld/pretrain_on_device.sh 520   (seconds of training)
# The weights come back under $OUT split below the tool's 16 MB a file: join them with
#   cat transformer.safetensors.part* > weights/tiny-toyworld/transformer.safetensors   (and text_encoder likewise)
# Not yet run: the device could not be started in the session that wrote it (toyworld/README.md, "Issue 26").
set -uo pipefail
BUDGET=${1:-520}
if [ ! -d /tmp/site/diffusers ]; then  # pure-Python wheels (and regex's manylinux one) unpack as they are
  mkdir -p /tmp/site && for wheel in .gpumin/*.whl; do python3 -m zipfile -e "$wheel" /tmp/site; done
fi
export PYTHONPATH=/tmp/site
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
init=(); [ -f /tmp/tw/transformer.safetensors ] && init=(--init /tmp/tw)
mkdir -p /tmp/tw
python toyworld/pretrain.py --model tiny-toyworld --device cuda --out /tmp/tw --budget-s "$BUDGET" "${init[@]}" 2>&1 | tail -40
status=${PIPESTATUS[0]}
cd /tmp/tw && for f in *.safetensors; do split -b 15M -d "$f" "$OUT/$f.part"; done
cp pretrain_log.jsonl "$OUT/" 2>/dev/null
ls -la /tmp/tw
exit "$status"

#!/usr/bin/env bash
# toyworld/pretrain_on_device.sh — one device call of the population base's pretraining (--model tiny-toyworld),
# for the library's `device` tool: 10 min a call, 64 MiB carried a call (the tree included), no pip there.
#
#   bash toyworld/pretrain_on_device.sh SECONDS [pretrain.py flags ...]      (carry [".gpumin/site.tar.xz"])
#
# .gpumin/ (ignored by git) holds what the device image lacks, packed small enough to travel with the tree:
#   site.tar.xz     diffusers 0.42.1, transformers 5.23.0, peft 0.21.2 and regex 2026.12.2 for Python 3.12,
#                   unpacked (6.6 MB; the four wheels are 21 MB):
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
#       -d /tmp/whl diffusers==0.42.1 transformers==5.23.0 peft==0.21.2 regex==2026.12.2
#     mkdir /tmp/site && for w in /tmp/whl/*.whl; do python3 -m zipfile -e $w /tmp/site; done
#     tar -C /tmp/site -cf - . | xz -9 > .gpumin/site.tar.xz
# The weights to continue from are the shipped base, weights/tiny-toyworld/ (33 MB, tracked: it travels with the
# tree, 52 MB with it); .gpumin/init/ (transformer.safetensors.xz, text_encoder.safetensors) wins where present.
# The first call copies them into /tmp/tw (kept while the machine stays warm: back-to-back calls continue from
# /tmp/tw, where each call leaves its weights). FRESH=1 bash toyworld/pretrain_on_device.sh ... starts from
# random weights instead (pretrain.py's own initialization; a new base, not a continuation). The weights come back under $OUT split below 16 MB a file:
#   cat transformer.safetensors.part* > weights/tiny-toyworld/transformer.safetensors     (text_encoder likewise)
# (Not all of .gpumin when it also holds face.tar.xz, 32 MB: the call would pass 64 MiB.) Then, on the same warm
# machine, toyworld/protocol_on_device.sh runs the benchmark on /tmp/tw's weights. toyworld/README.md ("Face-weighted
# continuation") has the calls that made the current base.
set -uo pipefail
BUDGET=${1:-520}; shift || true
if [ ! -d /tmp/site/diffusers ]; then
  mkdir -p /tmp/site && tar -C /tmp/site -xJf .gpumin/site.tar.xz
fi
export PYTHONPATH=/tmp/site
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
mkdir -p /tmp/tw
if [ "${FRESH:-0}" = 1 ]; then   # a new base from scratch: nothing to continue from
  rm -f /tmp/tw/*.safetensors
elif [ ! -f /tmp/tw/transformer.safetensors ] && [ -f .gpumin/init/transformer.safetensors.xz ]; then
  xz -dc .gpumin/init/transformer.safetensors.xz > /tmp/tw/transformer.safetensors
  cp .gpumin/init/text_encoder.safetensors /tmp/tw/
elif [ ! -f /tmp/tw/transformer.safetensors ] && [ -f weights/tiny-toyworld/transformer.safetensors ]; then
  cp weights/tiny-toyworld/*.safetensors /tmp/tw/
fi
init=(); [ -f /tmp/tw/transformer.safetensors ] && init=(--init /tmp/tw)
python toyworld/pretrain.py --model tiny-toyworld --device cuda --out /tmp/tw --budget-s "$BUDGET" "${init[@]}" "$@" 2>&1 | tail -30
status=${PIPESTATUS[0]}
cd /tmp/tw && for f in *.safetensors; do split -b 15M -d "$f" "$OUT/$f.part"; done
cp pretrain_log.jsonl "$OUT/" 2>/dev/null
grep -v '"transformer"' pretrain_log.jsonl | cut -c1-300
ls -la /tmp/tw
exit "$status"

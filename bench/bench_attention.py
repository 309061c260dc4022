"""attention.py's FlashAttention-4 operator against PyTorch SDPA at Wan2.1-1.3B's attention shapes (bf16, random).

For each shape: forward and forward+backward time of PyTorch SDPA (its own kernel choice: cuDNN on an H100 with
torch 2.11) and of torch.ops.magicid.flash_attention (FA4), called eagerly and inside a torch.compile(fullgraph=True)
region (a graph break there would raise); the max and mean |Δ| of the output and of dQ, dK, dV against SDPA, next
to the same Δ between two exact kernels of PyTorch's own (cuDNN vs FlashAttention-2): the bf16 floor.

    python bench/bench_attention.py            # GPU (~1 minute plus FA4's first-call JIT compile)
    python bench/bench_attention.py --small    # CPU: tiny shapes, the operator's reference path
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import published as P  # noqa: E402

import attention  # noqa: E402

SHAPES = {"DPO pair, 33 frames": (2, 14040), "one video, 81 frames": (1, 32760)}  # (batch, tokens); 12 heads × 128
HEADS, HEAD_DIM = 12, 128


def sdpa(q, k, v):  # [B, S, H, D] in and out, like the operator
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)


def fa4(q, k, v):
    return attention.flash_attention(q, k, v)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="CPU, tiny shapes")
    parser.add_argument("--out", default=None, help="also append the table to this file")
    args = parser.parse_args()
    device, _, _ = P.start(args.small, 600)
    if device == "cuda" and (reason := attention.flash_attention_4_unavailable(device)):
        raise SystemExit(reason)
    shapes = {"tiny": (2, 64)} if args.small else SHAPES
    compiled_fa4 = torch.compile(fa4, fullgraph=True)
    rows = []
    for label, (batch, tokens) in shapes.items():
        generator = torch.Generator(device).manual_seed(0)
        q, k, v, grad_out = (torch.randn(batch, tokens, HEADS, HEAD_DIM, generator=generator, device=device,
                                         dtype=torch.bfloat16) for _ in range(4))
        flops = 4 * batch * HEADS * tokens * tokens * HEAD_DIM  # QKᵀ and PV, forward
        reference = outputs_and_grads(sdpa, q, k, v, grad_out)
        if device == "cuda":
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                floor = outputs_and_grads(sdpa, q, k, v, grad_out)
            rows.append(row(label, "SDPA FlashAttention-2 (floor)", sdpa, q, k, v, grad_out, reference, floor, flops))
        rows.append(row(label, "SDPA default (cuDNN)", sdpa, q, k, v, grad_out, reference, reference, flops))
        for name, fn in (("FA4 operator", fa4), ("FA4 operator, compiled fullgraph", compiled_fa4)):
            rows.append(row(label, name, fn, q, k, v, grad_out, reference, outputs_and_grads(fn, q, k, v, grad_out),
                            flops))
    P.print_table("attention, bf16, 12 heads × 128; Δ vs SDPA default over O, dQ, dK, dV",
                  ["shape", "kernel", "fwd ms", "fwd TFLOP/s", "fwd+bwd ms", "max |Δ| O", "mean |Δ| O",
                   "max |Δ| dQ,dK,dV"], rows, args.out)


def outputs_and_grads(fn, q, k, v, grad_out):
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    out = fn(q, k, v)
    return (out.detach(), *torch.autograd.grad(out, (q, k, v), grad_out))


def row(label, name, fn, q, k, v, grad_out, reference, result, flops):
    def forward():
        with torch.no_grad():
            fn(q, k, v)

    q_, k_, v_ = (t.detach().requires_grad_() for t in (q, k, v))

    def forward_backward():
        torch.autograd.grad(fn(q_, k_, v_), (q_, k_, v_), grad_out)

    fwd = P.timed(forward, warmup=2, repeats=10)
    both = P.timed(forward_backward, warmup=2, repeats=10)
    delta = [(a.float() - b.float()).abs() for a, b in zip(result, reference)]
    return [label, name, f"{fwd * 1e3:.2f}", f"{flops / fwd / 1e12:.0f}", f"{both * 1e3:.2f}",
            f"{delta[0].max():.1e}", f"{delta[0].mean():.1e}", f"{max(d.max() for d in delta[1:]):.1e}"]


if __name__ == "__main__":
    main()

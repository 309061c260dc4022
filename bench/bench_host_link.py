"""How much activation memory could go to the host instead of being recomputed: the GPU-host link, measured.

Offloading a saved activation to pinned host memory in the forward and fetching it back in the backward frees
GPU memory without recomputation, if the copies hide under compute. They cannot free more than the link carries
while the forward runs: the copies of block k's activations must be done before the memory they free is
counted, and the forward is the short half of a step.

    offloadable bytes ≤ bandwidth(device → host, while computing) × forward seconds
    blocks' worth     = offloadable bytes / activation bytes of one block

This script measures the bandwidth both ways, alone and with bf16 GEMMs running on the compute stream meanwhile
(copies on their own stream, as an offloader would issue them), and how much the copies slow the GEMMs. With a
step's figures (--forward-s: the policy forward of a DPO step; --block-gib: one block's saved activations;
bench/NOTES.md gives both for Wan2.1-1.3B at 33 frames) it prints the bound.

    python bench/bench_host_link.py                                     # GPU; defaults: the 33-frame DPO step
    python bench/bench_host_link.py --forward-s 0.19 --block-gib 1.45 --recompute-ms-per-block 4.2
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import torch


def copy_seconds(source: torch.Tensor, target: torch.Tensor, stream: torch.cuda.Stream, repeats: int) -> float:
    """Seconds per copy of `source` into `target` on `stream` (issued back to back, timed by CUDA events)."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    with torch.cuda.stream(stream):
        start.record()
        for _ in range(repeats):
            target.copy_(source, non_blocking=True)
        end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1000 / repeats


def gemm_seconds(a: torch.Tensor, b: torch.Tensor, repeats: int, meanwhile=None):
    """(seconds per product a @ b, `repeats` queued back to back; what meanwhile() returned). meanwhile is called
    once the products are queued, to put work on other streams beside them."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    result = meanwhile() if meanwhile else None
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats, result


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gib", type=float, default=1.0, help="size of one copy, GiB")
    p.add_argument("--forward-s", type=float, default=0.19, help="policy forward of a step, seconds")
    p.add_argument("--block-gib", type=float, default=1.45, help="one block's saved activations, GiB")
    p.add_argument("--recompute-ms-per-block", type=float, default=4.2, help="what recomputing a block costs")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("bench_host_link.py measures a GPU's link to the host: no CUDA device here")

    gpu = torch.empty(int(args.gib * 2**30), dtype=torch.uint8, device="cuda")
    host = torch.empty(gpu.numel(), dtype=torch.uint8, pin_memory=True)
    copies = torch.cuda.Stream()
    a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    gemm_seconds(a, b, 20)  # warm-up: cuBLAS's choice of kernel, the clocks
    gemm_alone, _ = gemm_seconds(a, b, 200)
    rows = []
    for name, source, target in (("device -> host", gpu, host), ("host -> device", host, gpu)):
        copy_seconds(source, target, copies, 1)  # warm-up
        alone = copy_seconds(source, target, copies, 5)
        # the same copies while the compute stream runs GEMMs: enough of them to outlast the copies (so the GEMM
        # slowdown is diluted by the GEMMs that run after the copies: a lower bound)
        repeats = max(5, int(5 * alone / gemm_alone * 1.5))
        gemm_with_copies, busy = gemm_seconds(a, b, repeats, partial(copy_seconds, source, target, copies, 5))
        rows.append((name, gpu.numel() / alone / 1e9, gpu.numel() / busy / 1e9, gemm_with_copies / gemm_alone - 1))
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; copies of {args.gib:g} GiB, pinned host memory")
    print(f"{'direction':<16} {'GB/s alone':>10} {'GB/s with GEMMs':>16} {'GEMM slowdown':>14}")
    for name, alone, busy, slowdown in rows:
        print(f"{name:<16} {alone:>10.1f} {busy:>16.1f} {slowdown:>13.1%}")
    offloadable = rows[0][2] * 1e9 * args.forward_s / 2**30
    blocks = offloadable / args.block_gib
    print(f"bound: {rows[0][2]:.1f} GB/s x {args.forward_s} s of forward = {offloadable:.1f} GiB offloadable = "
          f"{blocks:.1f} blocks of {args.block_gib} GiB; recomputing them costs {blocks * args.recompute_ms_per_block:.0f} "
          f"ms a step, the most offloading could save")


if __name__ == "__main__":
    main()

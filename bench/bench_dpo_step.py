"""One Diffusion-DPO step of Wan2.1-1.3B (published config, random weights, bf16), lever by lever.

The step is the one train.py runs: dpo.preference_step (reference forward under no_grad with the frozen
"reference" adapter, policy forward with the trainable "default" LoRA, r = 64 on the attention
projections), backward, fused AdamW on the LoRA. One pair = batch 2; latents and text embeddings are
precomputed (the VAE and text encoder never run inside the step). Levers switch on one at a time:
bf16 autocast of the fp32 LoRA matmuls, compiled blocks, then fewer checkpointed
blocks (as few as keep the peak under --memory-gib, found from the measured cost of a block), and the
same at 81 frames.

Each row is timed two ways: "synced", the device synchronized around every step (the host's preparation
of a step then shows as GPU idle time), and "loop", steps back to back with one synchronization at the
end, as train.py's loop runs them (its logging reads a step's numbers one step late). Useful MFU =
(1 reference forward + 3 policy forwards) of bench/published.py's FLOP formula per second of the loop,
over the bf16 matmul ceiling measured in the same run.

    python bench/bench_dpo_step.py --profile       # GPU, 33 frames 480x832 then 81 frames (~9 minutes)
    python bench/bench_dpo_step.py --rows loop --attention-backend fa4 --checkpoint-blocks 23 --long-frames 0
                                                   # train.py's loop: host gaps, compiler variants, FP8
    python bench/bench_dpo_step.py --rows loop --attention-backend fa4 --checkpoint-blocks 23 --long-frames 0 \
        --variants fp8,offload                     # + FP8, then K of its fitted blocks offloaded (offload.py)
    python bench/bench_dpo_step.py --small         # CPU, 2 blocks, tiny video: checks the script
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import time
import traceback
from pathlib import Path

import torch
import torch._dynamo
from torch._functorch import config as functorch_config
from torch._inductor import config as inductor_config

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import published as P  # noqa: E402

import dpo  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="2-block model, 9 frames 64x96, on the CPU")
    parser.add_argument("--frames", type=int, default=33, help="video frames (4k+1)")
    parser.add_argument("--long-frames", type=int, default=81, help="frames of the long-video rows (0: none)")
    parser.add_argument("--height", type=int, default=480, help="pixels")
    parser.add_argument("--width", type=int, default=832, help="pixels")
    parser.add_argument("--pairs", type=int, default=1, help="preference pairs per step (batch = 2 x pairs)")
    parser.add_argument("--rank", type=int, default=64, help="LoRA rank")
    parser.add_argument("--checkpoint-blocks", type=int, default=21, help="checkpointed blocks of the 'syncs' rows")
    parser.add_argument("--activation-budget", type=float, default=0.3,
                        help="torch._functorch activation_memory_budget of the 'budget' row (fraction saved)")
    parser.add_argument("--memory-gib", type=float, default=24, help="peak-memory target of the selective rows")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per row (median)")
    parser.add_argument("--budget-s", type=float, default=560, help="wall seconds; later rows are skipped past it")
    parser.add_argument("--attention-backend", default=None,
                        help="diffusers attention kernel for every row (default: PyTorch SDPA's choice)")
    parser.add_argument("--rows", default="eager,compiled,long",
                        help="row groups to run: eager, compiled (+ selective checkpointing), long, syncs, "
                             "budget (compiler-chosen recomputation), levers (FA4, checkpointing that keeps attention), "
                             "loop (train.py's loop: host-side latents, where GPU time goes, max-autotune, FP8)")
    parser.add_argument("--profile", action="store_true", help="print where the GPU time of the best step goes")
    parser.add_argument("--variants", default="reductions,autotune,fp8",
                        help="loop rows: compiler variants, cumulative, in this order (reductions, autotune, fp8; "
                             "offload: K blocks of the last fit offloaded to the host instead, offload.py)")
    parser.add_argument("--no-checkpoint-row", action="store_true", help="loop rows: also no checkpointing at all")
    parser.add_argument("--out", default=None, help="also append the table to this file")
    args = parser.parse_args()
    if args.small:
        args.frames, args.long_frames, args.height, args.width, args.repeats = 9, 13, 64, 96, 2
    device, deadline, ceiling = P.start(args.small, args.budget_s)

    model = P.build_published(device, torch.bfloat16, small=args.small)
    model.add_lora(args.rank, name="reference", trainable=False)   # the frozen DPO reference (identity LoRA)
    model.add_lora(args.rank, name="default")                      # the trainable policy LoRA (fp32)
    with torch.no_grad():  # random, non-zero LoRAs: never time multiplications by zero
        for name in ("reference", "default"):
            for p in model.lora_parameters(name):
                p.copy_(torch.randn_like(p) * 0.01)
    optimizer = torch.optim.AdamW(model.lora_parameters("default"), lr=1e-5, fused=device == "cuda")
    n_blocks = len(model.transformer.blocks)

    rows, state = [], {}

    def measure(label, frames, compiled, backend, checkpoint_blocks, estimate_s, keep_attention=False,
                latents_on_host=False, offload_blocks=0):
        """One row: `repeats` timed steps after warm-up (the first step compiles); OOM is a result too."""
        try:
            return measure_row(label, frames, compiled, backend, checkpoint_blocks, estimate_s, keep_attention,
                               latents_on_host, offload_blocks)
        except Exception as error:  # one broken lever must not cost the rest of the table
            traceback.print_exc()
            rows.append([label, frames, f"error: {type(error).__name__}", "", "", "", "", "", ""])
            return None

    def measure_row(label, frames, compiled, backend, checkpoint_blocks, estimate_s, keep_attention,
                    latents_on_host=False, offload_blocks=0):
        if not deadline.allows(estimate_s):
            rows.append([label, frames, "skipped: out of time", "", "", "", "", "", ""])
            return None
        P.set_compiled(model, compiled)
        P.set_attention(model, backend if device == "cuda" else None)
        model.enable_speedups(gradient_checkpointing=True, checkpoint_blocks=checkpoint_blocks,
                              compile_blocks=compiled, keep_attention=keep_attention, offload_blocks=offload_blocks)
        batch = P.dpo_batch(model, frames, args.height, args.width, args.pairs, device)
        if latents_on_host:  # as train.py reads them from the repository: CPU latents, cached text on the GPU
            batch = {key: value.cpu() if key.startswith("latents") else value for key, value in batch.items()}
        generator = torch.Generator().manual_seed(0)

        def step():  # a bf16 model runs its forwards under autocast (model.denoising_error)
            optimizer.zero_grad(set_to_none=True)
            loss, _ = dpo.preference_step(model, batch, generator=generator)
            loss.backward()
            optimizer.step()
            state["loss"] = loss.detach()

        try:
            P.reset_peak()
            first, _ = P.timed_once(step)
            repeats = args.repeats if frames == args.frames else 3
            synced = P.timed(step, warmup=1, repeats=repeats)
            if model.offload:
                model.offload.offloaded_bytes = model.offload.fetched_late = 0
            seconds = P.timed_loop(step, repeats)
        except torch.OutOfMemoryError:
            optimizer.zero_grad(set_to_none=True)
            state.clear()
            torch.cuda.empty_cache()
            rows.append([label, frames, "OOM", "", "", "", "", "", ""])
            print(rows[-1], flush=True)
            return None
        S = P.tokens(frames, args.height, args.width)
        useful = P.dpo_step_flops(model, S, args.pairs, args.rank)
        tflops = useful / seconds / 1e12
        gib = P.peak_gib()
        ckpt = n_blocks if checkpoint_blocks is None else checkpoint_blocks
        rows.append([label, frames, f"{synced:.3f}", f"{seconds:.3f}", f"{tflops:.0f}", f"{tflops / ceiling:.0%}",
                     f"{gib:.1f}", f"{ckpt}/{n_blocks}", f"{first:.0f}"])
        retries = torch.cuda.memory_stats().get("num_alloc_retries", 0) if torch.cuda.is_available() else 0
        print(rows[-1], f"loss {state['loss'].item():.4f}, allocator retries so far {retries} (each frees the cache: "
              f"a device sync)", flush=True)
        if model.offload:  # the loop ran repeats + 1 steps
            print(f"offload: {model.offload.offloaded_bytes / (repeats + 1) / 2**30:.1f} GiB a step to the host, "
                  f"{model.offload.fetched_late / (repeats + 1):.1f} tensors a step fetched late", flush=True)
        state["step"] = step
        return seconds, gib

    S = P.tokens(args.frames, args.height, args.width)
    if device == "cuda":
        c = model.transformer.config
        q = torch.randn(2, c.num_attention_heads, S, c.attention_head_dim, device=device, dtype=torch.bfloat16,
                        requires_grad=True)
        print(f"SDPA default kernel with grad: {torch._fused_sdp_choice(q, q, q)} (1 flash, 2 efficient, 3 cuDNN)")
    print(f"{args.frames} frames: {S} tokens/video, batch {2 * args.pairs}; useful FLOPs/step "
          f"{P.dpo_step_flops(model, S, args.pairs, args.rank) / 1e12:.0f} TFLOP", flush=True)
    f, A, groups = args.frames, args.attention_backend, set(args.rows.split(","))
    if "eager" in groups:
        measure("eager, bf16 autocast, all blocks checkpointed", f, False, A, None, 30)
    full = fewer = best = None
    part = n_blocks * 2 // 3
    if groups & {"compiled", "long"}:
        full = measure("+ compiled blocks", f, True, A, None, 150)
        fewer = measure(f"+ checkpoint {part}/{n_blocks} blocks", f, True, A, part, 30)
    if "syncs" in groups:
        k = args.checkpoint_blocks
        measure(f"compiled, autocast, checkpoint {k}/{n_blocks}: dpo.preference_step", f, True, A, k, 150)
        time_adapter_switch(model)
    if "budget" in groups:  # let the compiler pick what to recompute inside each block, no block checkpointing
        functorch_config.activation_memory_budget = args.activation_budget
        torch._dynamo.reset()
        measure(f"compiled, autocast, no block checkpointing, activation_memory_budget={args.activation_budget:g}",
                f, True, A, 0, 150)
        functorch_config.activation_memory_budget = 1.0
        torch._dynamo.reset()
    if "compiled" in groups and full and fewer:
        k = n_blocks - fit_free_blocks(full[1], fewer[1], n_blocks - part, args.memory_gib, n_blocks)
        best = k
        if k not in (part, n_blocks):
            measure(f"+ checkpoint {k}/{n_blocks} blocks (fits {args.memory_gib:g} GiB)", f, True, A, k, 30)
        if k > 0:
            measure("no checkpointing (memory reference)", f, True, A, 0, 30)
    if "levers" in groups:  # issue 16: FlashAttention-4, then selective checkpointing that keeps attention
        levers(measure, f, args, n_blocks)
    if "loop" in groups:
        loop(measure, model, state, f, args, n_blocks, deadline)
    if args.profile and device == "cuda" and best is not None and deadline.allows(60):
        model.enable_speedups(gradient_checkpointing=True, checkpoint_blocks=best)
        profile_step(model, optimizer, P.dpo_batch(model, f, args.height, args.width, args.pairs, device), f"{f} frames, {best}/{n_blocks} checkpointed")
    if "long" in groups and args.long_frames:
        L = args.long_frames
        long_full = measure("compiled, bf16 autocast, all checkpointed", L, True, A, None, 150)
        if long_full and full and fewer:
            per_block = (fewer[1] - full[1]) / (n_blocks - part) * P.tokens(L, args.height, args.width) / S
            free = fit_free_blocks(long_full[1], long_full[1] + per_block, 1, args.memory_gib, n_blocks)
            if free:
                measure(f"+ checkpoint {n_blocks - free}/{n_blocks} blocks (fits {args.memory_gib:g} GiB)", L, True,
                        A, n_blocks - free, 60)
    P.print_table(f"DPO step, one call of dpo.preference_step + backward + AdamW; {args.pairs} pair(s) = batch "
                  f"{2 * args.pairs}, LoRA r={args.rank}; useful MFU vs {ceiling:.0f} TFLOP/s",
                  ["variant", "frames", "s/step synced", "s/step loop", "TFLOP/s", "MFU", "peak GiB", "ckpt",
                   "1st step s"], rows, args.out)
    if best is not None:
        print(f"selective checkpointing: {best}/{n_blocks} blocks keep the peak under {args.memory_gib:g} GiB")


def levers(measure, frames: int, args, n_blocks: int) -> None:
    """Issue 16's levers with --attention-backend (default fa4): SDPA at session 3's setting (21/30 blocks recomputed
    whole), the backend at it, then checkpointed blocks that keep their attention outputs
    (speedups.keep_attention_outputs): all blocks, then as few as --memory-gib allows, fitted from two measured
    peaks; no checkpointing as the memory reference; then the long video."""
    A, k = args.attention_backend or "fa4", args.checkpoint_blocks
    measure(f"compiled, sdpa, checkpoint {k}/{n_blocks} (session 3's best)", frames, True, "sdpa", k, 150)
    if A != "sdpa":
        measure(f"compiled, {A}, checkpoint {k}/{n_blocks}", frames, True, A, k, 150)
    fit_and_measure(measure, f"compiled, {A}, keeping attention", frames, A, n_blocks, args.memory_gib, 150)
    measure(f"compiled, {A}, no checkpointing (memory reference)", frames, True, A, 0, 60)
    if args.long_frames:
        L = args.long_frames
        measure(f"compiled, {A}, all checkpointed", L, True, A, None, 150)
        measure(f"compiled, {A}, all checkpointed keeping attention", L, True, A, None, 150, keep_attention=True)


# --variants of the compiler: which config, which setting
COMPILER_VARIANTS = {"reductions": (functorch_config, {"ban_recompute_reductions": False}),
                     "autotune": (inductor_config, {"max_autotune": True})}


def loop(measure, model, state, frames: int, args, n_blocks: int, deadline) -> None:
    """train.py's DPO loop at the best setting under --memory-gib (--checkpoint-blocks blocks recomputed, keeping
    attention): latents come from the host as the repository gives them; where the GPU time goes when steps run
    back to back; then --variants, each compiled afresh and fitted to --memory-gib again from two measured peaks
    (all blocks checkpointed, half of them): "reductions" lets the partitioner recompute norms instead of saving
    their outputs (smaller blocks, so more of them fit un-checkpointed), "autotune" is inductor's max-autotune
    (Triton GEMM templates with fused epilogues), "fp8" FP8 with fast accumulation (fp8.py; it rounds, so it stays
    opt-in; it converts the weights in place, so it runs last and keeps the variants before it)."""
    A, k = args.attention_backend or "fa4", min(args.checkpoint_blocks, n_blocks)
    label = f"compiled, {A}, checkpoint {k}/{n_blocks} keeping attention, latents on the host"
    if (measure(label, frames, True, A, k, 150, keep_attention=True, latents_on_host=True)
            and torch.cuda.is_available() and deadline.allows(60)):
        profile_loop(state["step"], f"{frames} frames, {label}")
    if args.no_checkpoint_row:
        measure(f"compiled, {A}, no checkpointing (memory reference), latents on the host", frames, True, A, 0, 60,
                latents_on_host=True)
    names, fitted = [], k
    with contextlib.ExitStack() as settings:  # the variants add up: each keeps the settings of those before it
        for variant in [v for v in args.variants.split(",") if v]:
            if variant == "offload":  # not a compiler setting: rows at the last fitted count, K of it offloaded
                offload_rows(measure, model, state, f"compiled, {A}, keeping attention, latents on the host"
                             + "".join(f" + {n}" for n in names), frames, A, n_blocks, fitted, args)
                continue
            if variant == "fp8":
                model.enable_fp8(fast_accumulation=True)
            else:
                config, setting = COMPILER_VARIANTS[variant]
                settings.enter_context(config.patch(setting))
            names.append(variant)
            torch._dynamo.reset()  # compile afresh under the new settings
            fitted = fit_and_measure(measure, f"compiled, {A}, keeping attention, latents on the host, + "
                                     f"{' + '.join(names)}", frames, A, n_blocks, args.memory_gib,
                                     400 if variant == "autotune" else 90, latents_on_host=True) or fitted
    torch._dynamo.reset()


def fit_and_measure(measure, label: str, frames: int, A: str, n_blocks: int, memory_gib: float, estimate_s: float,
                    latents_on_host: bool = False):
    """Compiled blocks checkpointed keeping attention: all of them, half of them, then as few as fit memory_gib,
    fitted from the two measured peaks (linear in blocks)."""
    half = n_blocks // 2
    kept_all = measure(f"{label}, all checkpointed", frames, True, A, None, estimate_s, keep_attention=True,
                       latents_on_host=latents_on_host)
    kept_half = measure(f"{label}, {half}/{n_blocks}", frames, True, A, half, 60, keep_attention=True,
                        latents_on_host=latents_on_host)
    if kept_all and kept_half:
        k = n_blocks - fit_free_blocks(kept_all[1], kept_half[1], n_blocks - half, memory_gib, n_blocks)
        if k not in (half, n_blocks):
            measure(f"{label}, {k}/{n_blocks} (fits {memory_gib:g} GiB)", frames, True, A, k, 60,
                    keep_attention=True, latents_on_host=latents_on_host)
        return k
    return None


def offload_rows(measure, model, state, label: str, frames: int, A: str, n_blocks: int, fitted: int, args,
                 counts=(4, 6, 8)) -> None:
    """Blocks offloaded to the host (offload.py) instead of recomputed: of the `fitted` blocks that had to go to
    fit the memory, K are offloaded and the rest checkpointed; first the gradients checked against recomputing."""
    check_offload_gradients(model, frames, fitted, min(counts[0], fitted), args)
    for i, k in enumerate([k for k in counts if k <= fitted]):
        row = f"{label}, {fitted - k}/{n_blocks} checkpointed + {k} offloaded"
        if (measure(row, frames, True, A, fitted - k, 60, keep_attention=True, latents_on_host=True, offload_blocks=k)
                and i == 0 and torch.cuda.is_available()):
            profile_loop(state["step"], f"{frames} frames, {row}")


def check_offload_gradients(model, frames: int, fitted: int, k: int, args) -> None:
    """One step's LoRA gradients with K blocks offloaded vs the same blocks kept on the GPU (same layout, same
    kernels: only where the saved tensors wait differs). The copies run on their own streams; a missed
    synchronization would show as a difference far above two kept runs' own (FA4's backward accumulates in a
    nondeterministic order). Kept vs recomputed is no reference: compiled checkpointed blocks round differently,
    and β = 2500 turns rounding into ~10 % loss changes."""
    batch = P.dpo_batch(model, frames, args.height, args.width, args.pairs, str(model.device))
    params = model.lora_parameters("default")
    model.enable_speedups(gradient_checkpointing=True, checkpoint_blocks=fitted - k, compile_blocks=True,
                          keep_attention=True, offload_blocks=k)

    def gradients(min_bytes):
        model.offload.min_bytes = min_bytes  # above every tensor's size: nothing leaves
        for p in params:
            p.grad = None
        loss, _ = dpo.preference_step(model, batch, generator=torch.Generator().manual_seed(1))
        loss.backward()
        return torch.cat([p.grad.flatten() for p in params])

    offloaded, kept, again = gradients(16 * 2**20), gradients(2**62), gradients(2**62)
    scale = kept.abs().max().item()
    print(f"offload gradient check ({k} blocks): max |Δ| / max |g| = {(offloaded - kept).abs().max().item() / scale:.2e} "
          f"offloaded vs kept, {(again - kept).abs().max().item() / scale:.2e} between two kept runs", flush=True)
    for p in params:
        p.grad = None


def profile_loop(step, title: str, steps: int = 3) -> None:
    """`steps` steps back to back under the profiler: the share of wall time the GPU is busy, and by what."""
    from torch.profiler import ProfilerActivity, profile

    step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
        wall_ms = (time.perf_counter() - start) * 1e3
    intervals = sorted((e.time_range.start, e.time_range.end) for e in prof.events()
                       if e.device_type == torch.autograd.DeviceType.CUDA)
    busy_us, last_end = 0.0, -math.inf
    for begin, end in intervals:  # the union of kernel intervals: overlapping kernels count once
        busy_us += max(0.0, end - max(begin, last_end))
        last_end = max(last_end, end)
    print(f"{title}: {steps} steps back to back, {wall_ms / steps:.0f} ms a step, GPU busy "
          f"{busy_us / 1e3 / steps:.0f} ms a step ({busy_us / 1e3 / wall_ms:.0%} of the wall)", flush=True)
    print_kernel_profile(prof, f"{title}, {steps} steps")
    print_idle_gaps(prof, intervals, steps)


def print_idle_gaps(prof, intervals, steps: int, min_gap_us: float = 200) -> None:
    """Where the GPU waits for the host: each idle gap between kernels is charged to the host op that was
    running just before the kernel that ended it (innermost op, and its outermost caller)."""
    cpu = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CPU]
    starts = sorted((e.time_range.start, i) for i, e in enumerate(cpu))
    charged = {}
    last_end = intervals[0][1]
    for begin, end in intervals[1:]:
        if begin - last_end >= min_gap_us:
            moment = begin - 15  # the launch came just before the kernel started
            running = [cpu[i] for t, i in starts if t <= moment and cpu[i].time_range.end >= moment]
            inner = min(running, key=lambda e: e.time_range.end - e.time_range.start, default=None)
            outer = max(running, key=lambda e: e.time_range.end - e.time_range.start, default=None)
            key = (inner.name[:60] if inner else "?", outer.name[:40] if outer else "?")
            total, count = charged.get(key, (0.0, 0))
            charged[key] = (total + begin - last_end, count + 1)
        last_end = max(last_end, end)
    rows = sorted(charged.items(), key=lambda kv: -kv[1][0])[:15]
    P.print_table(f"GPU idle gaps >= {min_gap_us:g} us, per step, by the host op before the kernel that ended them",
                  ["host op (innermost)", "outermost", "ms/step", "gaps/step"],
                  [[inner, outer, f"{total / 1e3 / steps:.1f}", f"{count / steps:.0f}"]
                   for (inner, outer), (total, count) in rows])


def time_adapter_switch(model, repeats: int = 20) -> None:
    """Host time of one `with model.adapter(...)` enter + exit (it walks every module and parameter)."""
    start = time.perf_counter()
    for _ in range(repeats):
        with model.adapter("reference"):
            pass
    print(f"model.adapter enter+exit: {(time.perf_counter() - start) / repeats * 1e3:.1f} ms of host time", flush=True)


def profile_step(model, optimizer, batch, title: str) -> None:
    """GPU time of one step by kernel family (attention, GEMM, compiled element-wise, other), top kernels."""
    from torch.profiler import ProfilerActivity, profile

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss, _ = dpo.preference_step(model, batch, generator=torch.Generator().manual_seed(0))
        loss.backward()
        optimizer.step()

    step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    print_kernel_profile(prof, title)


def print_kernel_profile(prof, title: str) -> None:
    # kernels only: a CPU op's own device time is its kernels' again (and CUPTI's "Command Buffer Full" is no kernel)
    kernels = [(e.key, e.self_device_time_total / 1e3, e.count) for e in prof.key_averages()
               if e.device_type == torch.autograd.DeviceType.CUDA and e.self_device_time_total > 0
               and "Command Buffer" not in e.key]
    families = {}
    for name, ms, _ in kernels:
        families[kernel_family(name)] = families.get(kernel_family(name), 0.0) + ms
    total = sum(families.values())
    P.print_table(f"GPU time by kernel family, {title}: {total:.0f} ms", ["family", "ms", "share"],
                  [[k, f"{v:.0f}", f"{v / total:.0%}"] for k, v in sorted(families.items(), key=lambda kv: -kv[1])])
    P.print_table("top kernels", ["kernel", "ms", "calls"],
                  [[name[:100], f"{ms:.0f}", count] for name, ms, count in sorted(kernels, key=lambda kv: -kv[1])[:30]])


def kernel_family(name: str) -> str:
    n = name.lower()
    if any(k in n for k in ("fmha", "flash", "cudnn", "sdpa", "attention", "attn")):
        return "attention (bwd)" if ("bwd" in n or "backward" in n or "dgrad" in n) else "attention"
    if any(k in n for k in ("gemm", "xmma", "cutlass", "nvjet", "matmul", "sm90", "triton_tem")):
        return "GEMM"
    if "triton" in n:
        return "compiled element-wise (Triton)"
    return "other (eager element-wise, copies, optimizer)"


def fit_free_blocks(peak_all: float, peak_fewer: float, freed: int, target_gib: float, n_blocks: int) -> int:
    """How many blocks may skip checkpointing under target_gib, from two measured peaks (linear in blocks)."""
    per_block = (peak_fewer - peak_all) / freed
    if not math.isfinite(per_block):  # no memory figures (CPU): exercise the row anyway
        return n_blocks // 2
    if per_block <= 0:
        return n_blocks
    return max(0, min(n_blocks, math.floor((target_gib - peak_all) / per_block)))


if __name__ == "__main__":
    main()

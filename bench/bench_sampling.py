"""Forward latency and 30-step CFG sampling of Wan2.1-1.3B (published config, random weights, bf16).

Two tables, every variant measured side by side in one run:
  forward   one transformer forward at 81 frames 480x832 (32,760 tokens): eager vs compiled blocks,
            PyTorch SDPA's default kernel vs cuDNN attention, one video vs the CFG pair batched.
  sampling  one video, 30 UniPC steps, guidance 5, prompt embeddings passed in: the stock diffusers
            WanPipeline (eager, compiled, compiled + cuDNN) against fast_sampling.py (lossless mode and
            the fast-mode flags and diffusers' cache hooks, rows grouped by equal work saved), with each
            output's max/mean |Δ| to the stock pipeline's latents from the same noise and the fraction of the
            lossless sampler's block evaluations it skipped; then the VAE decode of the result.
MFU is the matmul FLOPs of bench/published.py's formula over the bf16 matmul ceiling measured here.

    python bench/bench_sampling.py                 # GPU, published size (about 5 minutes with compiles)
    python bench/bench_sampling.py --rows fast,cache  # GPU: fast mode vs the cache hooks at equal work (~5 min)
    python bench/bench_sampling.py --small         # CPU, 2 blocks, tiny video: checks the script in seconds
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import published as P  # noqa: E402

import fast_sampling  # noqa: E402

CUDNN = "_native_cudnn"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="2-block model, 9 frames 64x96, on the CPU")
    parser.add_argument("--frames", type=int, default=81, help="video frames (4k+1)")
    parser.add_argument("--height", type=int, default=480, help="pixels")
    parser.add_argument("--width", type=int, default=832, help="pixels")
    parser.add_argument("--steps", type=int, default=30, help="denoising steps of the lossless rows")
    parser.add_argument("--fast-steps", default="15,10", help="comma list: step counts of the fast-mode rows")
    parser.add_argument("--caches", default="sea:0.3,sea:1e9,taylorseer:2",
                        help="comma list: fast_sampling cache hooks of the cache rows. Random weights skip what they "
                             "skip at a threshold tuned on trained ones (sea:0.3: ~25 %% in the toy world), so a huge "
                             "threshold (the hook's own most-skipping schedule) measures its cost per skipped block")
    parser.add_argument("--repeats", type=int, default=5, help="timed forwards per forward row (median)")
    parser.add_argument("--budget-s", type=float, default=540, help="wall seconds; later rows are skipped past it")
    parser.add_argument("--rows", default="forward,sampling,floor,fast,decode",
                        help="row groups: forward, sampling, floor (same sampler, another exact attention kernel: "
                             "the bf16 noise floor of the Δ columns), fast, cache (diffusers' cache hooks), decode, "
                             "profile")
    parser.add_argument("--attention", default=CUDNN,
                        help="attention kernel of the fast_sampling rows: _native_cudnn, fa4 (attention.py), sdpa")
    parser.add_argument("--out", default=None, help="also append the tables to this file")
    args = parser.parse_args()
    if args.small:
        args.frames, args.height, args.width, args.steps, args.repeats, args.fast_steps = 9, 64, 96, 4, 2, "3,2"
    device, deadline, ceiling = P.start(args.small, args.budget_s)

    model = P.build_published(device, torch.bfloat16, small=args.small)
    # Count block evaluations from the start: compiled blocks do not see a hook added after they were traced.
    counting = contextlib.ExitStack()  # held to the end: a collected stack would remove the hooks
    work = counting.enter_context(fast_sampling.block_evaluations(model))
    S = P.tokens(args.frames, args.height, args.width)
    flops = P.forward_flops(model, S, 1)
    c = model.transformer.config
    print(f"{args.frames} frames {args.height}x{args.width}: {S} tokens/video; one forward = {flops / 1e12:.1f} TFLOP "
          f"(attention scores {4 * S * S * c.num_attention_heads * c.attention_head_dim * c.num_layers / flops:.0%} of it)", flush=True)
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(1, *model.latent_shape(args.frames, args.height, args.width), generator=generator)
    text_emb = torch.randn(1, P.TEXT_TOKENS, c.text_dim, generator=generator).to(device, torch.bfloat16)
    negative_emb = torch.randn(1, P.TEXT_TOKENS, c.text_dim, generator=generator).to(device, torch.bfloat16)
    if device == "cuda":
        q = torch.randn(1, c.num_attention_heads, S, c.attention_head_dim, device=device, dtype=torch.bfloat16)
        print(f"SDPA default kernel for this shape: {torch._fused_sdp_choice(q, q, q)} "
              "(0 math, 1 flash, 2 efficient, 3 cuDNN)", flush=True)

    # ---------------------------------------------------------------- forward latency
    x = noise.to(device, torch.bfloat16)
    t = torch.tensor([500.0], device=device)
    groups = set(args.rows.split(","))
    rows = []
    for label, compiled, backend, batch in [] if "forward" not in groups else [
            ("eager, SDPA default", False, None, 1),
            ("eager, cuDNN attention", False, CUDNN, 1),
            ("compiled, SDPA default", True, None, 1),
            ("compiled, cuDNN attention", True, CUDNN, 1),
            ("compiled, cuDNN, CFG pair as batch 2", True, CUDNN, 2),
            ("CUDA graphs: whole transformer, compile mode=reduce-overhead", "graphs", None, 1)]:
        if device == "cpu" and backend == CUDNN:
            continue
        if not deadline.allows(120):
            rows.append([label, "skipped: out of time", "", "", "", ""])
            continue
        P.set_compiled(model, compiled is True)
        P.set_attention(model, backend)
        xb, tb, eb = x.expand(batch, -1, -1, -1, -1), t.expand(batch), text_emb.expand(batch, -1, -1)
        P.reset_peak()
        forward = lambda: model.predict(xb, tb, eb)  # noqa: E731
        if compiled == "graphs":  # one graph for the whole forward, replayed: no per-kernel launch cost
            graphed = torch.compile(model.transformer, mode="reduce-overhead", fullgraph=False)
            forward = lambda: graphed(hidden_states=xb, timestep=tb, encoder_hidden_states=eb,  # noqa: E731
                                      return_dict=False)[0].clone()
        try:
            with torch.no_grad():
                first, _ = P.timed_once(forward)
                seconds = P.timed(forward, warmup=1, repeats=args.repeats)
        except Exception as error:  # one broken lever must not cost the rest of the table
            traceback.print_exc()
            rows.append([label, f"error: {type(error).__name__}", "", "", "", "", ""])
            continue
        per_video = seconds / batch
        tflops = flops / per_video / 1e12
        rows.append([label, f"{seconds:.3f}", f"{per_video:.3f}", f"{tflops:.0f}", f"{tflops / ceiling:.0%}",
                     f"{P.peak_gib():.1f}", f"{first:.0f}"])
        print(rows[-1], flush=True)
    if rows:
        P.print_table(f"forward, {args.frames}x{args.height}x{args.width} ({S} tokens/video), bf16, no grad",
                      ["variant", "s/forward", "s/video", "TFLOP/s", "MFU", "peak GiB", "1st call s"], rows, args.out)
    if "profile" in groups and device == "cuda":
        from torch.profiler import ProfilerActivity, profile

        from bench_dpo_step import print_kernel_profile

        P.set_compiled(model, True)
        P.set_attention(model, None)
        with torch.no_grad():
            model.predict(x, t, text_emb)
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                model.predict(x, t, text_emb)
                torch.cuda.synchronize()
        print_kernel_profile(prof, f"one compiled forward, {S} tokens")

    # ---------------------------------------------------------------- sampling
    stock_kwargs = dict(prompt_embeds=text_emb, negative_prompt_embeds=negative_emb, num_frames=args.frames,
                        height=args.height, width=args.width, num_inference_steps=args.steps, guidance_scale=5.0,
                        output_type="latent", return_dict=False)

    def stock():
        latents = noise.to(device, torch.float32)
        return model.pipe(latents=latents, **stock_kwargs)[0].float()

    def fast(steps=args.steps, cfg_interval=1, cache=None):
        return lambda: fast_sampling.sample_latents(model, text_emb, negative_emb, noise, steps, 5.0, cfg_interval,
                                                    cache)

    variants = [("stock WanPipeline, eager", False, None, stock, args.steps)]  # the reference of every Δ
    if "floor" in groups:
        variants.append(("stock, eager, FlashAttention-2 kernel (Δ floor)", False, "_native_flash", stock, args.steps))
    A = args.attention
    if "sampling" in groups:
        variants += [("stock WanPipeline, compiled", True, None, stock, args.steps),
                     ("stock WanPipeline, compiled + cuDNN", True, CUDNN, stock, args.steps),
                     (f"fast_sampling lossless (compiled + {A})", True, A, fast(), args.steps)]
    if "sampling" not in groups and groups & {"fast", "cache"}:  # the speed the lossy rows are to beat
        variants.append((f"fast_sampling lossless (compiled + {A})", True, A, fast(), args.steps))
    if "fast" in groups:
        variants.append(("fast: cfg_interval=2", True, A, fast(cfg_interval=2), args.steps))
        for n in [int(s) for s in args.fast_steps.split(",") if s]:
            variants.append((f"fast: steps={n}", True, A, fast(steps=n), n))
        n = min(int(s) for s in args.fast_steps.split(","))
        variants.append((f"fast: steps={n}, cfg_interval=2", True, A, fast(steps=n, cfg_interval=2), n))
    if "cache" in groups:  # the hooks' skips are their own compiled graphs: the warm-up runs the row itself
        for spec in [s for s in args.caches.split(",") if s]:
            variants.append((f"cache: {spec}", "warm-up run", A, fast(cache=spec), args.steps))

    rows, reference, stock_seconds, last = [], None, None, None
    lossless_blocks = 2 * args.steps * len(model.transformer.blocks)  # one video, CFG: 2 rows a step
    for label, compiled, backend, run, steps in variants:
        if device == "cpu":  # the fused attention kernels are CUDA-only
            backend = None
        estimate = (stock_seconds or 60) * steps / args.steps + (90 if compiled else 0)
        if compiled == "warm-up run":  # two runs; the blocks' graphs exist, a hook's branches recompile (~30 s)
            estimate = 2 * (stock_seconds or 60) + 30
        if not deadline.allows(estimate):
            rows.append([label, "skipped: out of time", "", "", "", "", "", ""])
            continue
        P.set_compiled(model, bool(compiled))
        P.set_attention(model, backend)
        try:
            if compiled == "warm-up run":  # every graph this row reaches (skip branches included), untimed
                run()
            elif compiled:  # compile this configuration's graphs before the clock starts (2 steps are enough)
                with torch.no_grad():
                    fast_sampling.sample_latents(model, text_emb, negative_emb, noise, 2, 5.0, 1)
                    model.predict(x, t, text_emb)
            P.reset_peak()
            blocks_before = int(work)
            seconds, latents = P.timed_once(run)
        except Exception as error:
            traceback.print_exc()
            rows.append([label, f"error: {type(error).__name__}", "", "", "", "", "", ""])
            continue
        if reference is None:
            reference, stock_seconds = latents, seconds
        diff = (latents - reference).abs()
        skipped = 1 - (int(work) - blocks_before) / lossless_blocks
        rows.append([label, f"{skipped:.0%}", f"{seconds:.1f}", f"{seconds / steps:.3f}",
                     f"{stock_seconds / seconds:.2f}x", f"{diff.max().item():.2e}", f"{diff.mean().item():.2e}",
                     f"{P.peak_gib():.1f}"])
        last = latents
        print(rows[-1], f"finite={bool(torch.isfinite(latents).all())} |latents| mean {latents.abs().mean():.3f}",
              flush=True)
    P.print_table(f"sampling one video, {args.frames}x{args.height}x{args.width}, CFG 5.0, UniPC; Δ vs stock eager",
                  ["variant", "skipped", "s", "s/step", "speed-up", "max|Δ|", "mean|Δ|", "peak GiB"], rows, args.out)

    if "decode" in groups and deadline.allows(30) and last is not None:
        P.reset_peak()
        model.decode(reference[:, :, :2])  # warm up the VAE's kernels on a short clip
        decode, _ = P.timed_once(lambda: model.decode(reference))
        P.print_table("VAE decode (fp32, as model.decode)", ["video", "s", "peak GiB"],
                      [[f"{args.frames}x{args.height}x{args.width}", f"{decode:.2f}", f"{P.peak_gib():.1f}"]],
                      args.out)


if __name__ == "__main__":
    main()

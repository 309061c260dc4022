"""Wan2.2 on one GPU (issue 27, item 5): the DPO step, the A14B's expert switch and 30-step sampling.

Built IN MEMORY from the published configs (rehearsal.BACKBONES), random weights, bf16 (Wan's fp32 modules upcast
as from_pretrained leaves them), straight onto the GPU. Not exercised: from_pretrained of a folder (the A14B's ~68 GB
exceed the 64 GB disk; rehearsal.py reads the 5B's), UMT5 (text embeddings are random [1, 512, 4096], as train.py
caches them), the VAE (latents are random; a toy-width stand-in of the published latent shape fills the pipeline).

  dpo       train.py's DPO step at the published preset (batch 1: dpo.preference_step, backward, clip to 1, fused
            AdamW), 33 frames at the model's height x width, LoRA r=64 on the attention (trainable + frozen
            reference, every expert), train.py's GPU switches: compiled blocks, every block checkpointed keeping its
            attention output (cli.py, GPUs >= 40 GiB), FA4 where installed else SDPA; out of memory: again
            recomputing attention, then at 17 frames. Median s/step after two (compiling) steps; peak GiB.
  switch    (A14B) ExpertPlacement.place (weights from pinned host memory): s a switch; per step with
            p = P(t >= boundary) of the timestep sampler: switches_per_step(p, pairs a step) x that.
  sampling  CFG sampling at the generation size on a 30-step schedule: stock WanPipeline (model.sample's lossless
            path) eager, with compiled blocks (the strongest stock form), and fast_sampling.py's lossless loop
            (CFG batched, compiled). StepClock stops each after --timed-steps steps (compiled: one more, its
            compile); 30 x the median step (A14B: + 2 switches a video), or the whole run when all 30 ran.

Memory by arithmetic (2 B a bf16 parameter, GiB = 2^30 B, S tokens a video, batch 2 = winner + loser):
  A14B: an expert is 14.29 B parameters = 28.6 GB = 26.6 GiB; both, 53.2 GiB, do not fit an 80 GB H100 (~78 GiB
    usable) with training activations: one expert on the GPU. DPO at 33x720x1280: S = 9*45*80 = 32,400 (not the
    8,100 of bench/NOTES.md: the 2x2 patch divided twice); [2, S, 5120] bf16 = 0.62 GiB, so the 40 checkpointed
    blocks' inputs 24.7 GiB, kept attention outputs 24.7 more. LoRA, 210 M parameters an expert and adapter, fp32:
    policy + reference of both experts 3.1 GiB, gradients 1.6, AdamW 3.1. A block's recompute and backward
    ~12-16 GiB (a dozen [2,S,D], FFN [2,S,13824] x 3, gradients). So ~72-76 GiB recomputing attention (an H100 at
    its edge: else the 17-frame row, S = 5*45*80 = 18,000, ~55 GiB), ~97-101 GiB keeping it (train.py's default:
    out of memory expected on an H100; an H200 fits). Sampling at 81x720x1280: S =
    21*45*80 = 75,600: one expert + ~10 GiB of a forward's transients (x2 CFG-batched). Host: ExpertPlacement
    pins both experts, and torch's pinned allocator rounds each tensor to a power of two: 40.8 GiB an expert,
    81.6 GiB of the box's 128 GiB ("host_after_build" in the JSON).
  5B: 5.00 B parameters = 9.3 GiB. DPO at 33x704x1280: S = 9*22*40 = 7,920, [2, S, 3072] = 0.09 GiB: 2.7 GiB of
    block inputs (+2.7 attention), LoRA 1.7 GiB with AdamW, per-token modulation [2, S, 6, 3072] fp32 1.1: ~20 GiB.
    Sampling at 121x704x1280: S = 31*22*40 = 27,280, ~15 GiB.
Expected on an H100 (~450 TFLOP/s): 5B DPO ~2 s a step (0.95 PFLOP), sampling ~2.3 s a step; A14B DPO ~35 s (16.6
PFLOP), a switch ~0.6 s (~50 GB/s host link), sampling ~29 s a step: 30 steps ~15 min, so its rows time 1 step.

    python bench/bench_wan22.py --backbone wan2.2-5b --timed-steps 30 --repeats 5   # GPU ~6 min (wan22_on_device.sh)
    python bench/bench_wan22.py --backbone wan2.2-14b --small --out /tmp/bw22        # CPU check, toy widths, ~1 min

Exports: video_tokens, switches_per_step, StepClock, build_in_memory, main.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import published as P  # noqa: E402
from rehearsal import BACKBONES, SMALL_TRANSFORMER  # noqa: E402

import attention  # noqa: E402
import dpo  # noqa: E402
import fast_sampling  # noqa: E402
import tiny  # noqa: E402
from cli import PRESETS  # noqa: E402
from model import DEFAULTS, VideoModel  # noqa: E402
from speedups import LOW_MEMORY_BELOW_GIB, keeps_attention  # noqa: E402

PRESET = PRESETS["published"]  # train.py's preset for a published backbone: 33 frames, r = 64, batch 1
SMALL_VIDEO = (9, 64, 64)      # --small: frames, height, width


def video_tokens(frames: int, height: int, width: int, spatial: int, temporal: int, patch=(1, 2, 2)) -> int:
    """Transformer tokens of one video: the VAE's compression (temporal: 4k+1 frames -> k+1), then the patches."""
    p_t, p_h, p_w = patch
    return ((frames - 1) // temporal + 1) // p_t * (height // spatial // p_h) * (width // spatial // p_w)


def switches_per_step(p_high: float, items: int) -> float:
    """Expected expert switches a training step, in the long run, when each of its `items` draws its expert
    independently (high with probability p_high) and the step runs them grouped, the resident expert first.

    From resident high, a step stays only if all its items are high (p^n), else it ends on low after one switch
    (mixed: high first, then low; all low: one switch). Symmetrically from low (q^n, q = 1 - p). The chain's
    stationary P(high) = (1 - q^n) / ((1 - p^n) + (1 - q^n)), so the rate is 2 (1 - p^n)(1 - q^n) / (2 - p^n - q^n);
    n = 1: 2 p q.
    """
    p, q = p_high ** items, (1 - p_high) ** items
    if p + q == 2:  # one expert only: never a switch
        return 0.0
    return 2 * (1 - p) * (1 - q) / (2 - p - q)


class StopSampling(Exception):  # raised by StepClock inside the sampler once its steps are done
    pass


class StepClock:
    """Times the first n steps of a sampler from outside it: a forward pre-hook on every expert notes when a new
    timestep's first transformer call arrives (after a device synchronize: the step before is done) and stops the
    sampler when step n + 1 would start. The schedule is the real one (30 steps); only n of them run."""

    def __init__(self, transformers, n: int):
        self.transformers, self.n = transformers, n
        self.marks: list[float] = []
        self.last_t = None

    def run(self, sampler) -> tuple[float, list[float]]:
        """(seconds before the first step, [seconds of each step run])."""
        handles = [t.register_forward_pre_hook(self._note, with_kwargs=True) for t in self.transformers]
        start = time.perf_counter()
        try:
            sampler()
            synchronize()
            self.marks.append(time.perf_counter())  # it ran to the end: close the last step
        except StopSampling:
            pass
        finally:
            for handle in handles:
                handle.remove()
        return self.marks[0] - start, [b - a for a, b in zip(self.marks, self.marks[1:])]

    def _note(self, module, args, kwargs):
        t = float(kwargs["timestep"].reshape(-1)[0])  # [B] or, expanded (5B), [B, tokens]: every entry is t
        if t != self.last_t:
            self.last_t = t
            synchronize()
            self.marks.append(time.perf_counter())
            if len(self.marks) > self.n:
                raise StopSampling


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", required=True, choices=["wan2.2-5b", "wan2.2-14b"], help="published configs to build")
    p.add_argument("--small", action="store_true", help="toy widths, 9x64x64 videos, on the CPU: checks the script")
    p.add_argument("--out", default="runs/bench_wan22", help="folder for bench_wan22-<backbone>.json and .txt")
    p.add_argument("--budget-s", type=float, default=560, help="wall seconds; a measurement that would pass them is skipped")
    p.add_argument("--rows", default="dpo,switch,sampling", help="comma list of the measurements to run")
    p.add_argument("--repeats", type=int, default=2, help="timed DPO steps after two compiling ones")
    p.add_argument("--timed-steps", type=int, default=3, help="sampling steps timed a row (compiled: one more first)")
    p.add_argument("--sample-steps", type=int, default=30, help="the sampling schedule's steps")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="compile blocks where train.py does (default: on a GPU; off: compiled rows are skipped)")
    p.add_argument("--compile-allowance-s", type=float, default=60, help="budget planning: s a first compiled call takes")
    p.add_argument("--assumed-tflops", type=float, default=450, help="budget planning until a DPO step is measured")
    args = p.parse_args(argv)
    device, deadline, ceiling = P.start(args.small, args.budget_s)
    compile_on = args.compile if args.compile is not None else device == "cuda"
    Path(args.out).mkdir(parents=True, exist_ok=True)
    report = Report(Path(args.out), args.backbone, device, ceiling)
    start = time.perf_counter()
    model = build_in_memory(args.backbone, device, args.small)
    report.data["build_s"] = round(time.perf_counter() - start, 1)
    report.data["params_b_per_transformer"] = round(sum(q.numel() for q in model.transformer.parameters()) / 1e9, 3)
    report.data["host_after_build"] = host_memory()  # the A14B's pinned expert copies (the allocator rounds up)
    reason = attention.flash_attention_4_unavailable(device)
    report.data["attention"] = "fa4" if reason is None else f"sdpa ({reason})"
    print(f"built {args.backbone} in memory in {report.data['build_s']} s: "
          f"{len(model.transformers)} x {report.data['params_b_per_transformer']} B parameters", flush=True)
    speed = {"tflops": args.assumed_tflops if device == "cuda" else 0.05}  # calibrated by the DPO step
    rows = args.rows.split(",")
    if "dpo" in rows:
        measure_dpo(model, args, device, compile_on, deadline, report, speed)
    if "switch" in rows and len(model.transformers) > 1:
        measure_switch(model, deadline, report)
    if "sampling" in rows:
        measure_sampling(model, args, device, compile_on, deadline, report, speed)
    report.finish()


def build_in_memory(backbone: str, device: str, small: bool) -> VideoModel:
    """VideoModel over a WanPipeline of the published transformer config(s), random weights, no folder on disk."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel

    config = BACKBONES[backbone]
    shape = {**(SMALL_TRANSFORMER if small else P.PUBLISHED_TRANSFORMER),  # --small keeps only the channels
             **{k: v for k, v in config["transformer"].items() if not small or k.endswith("_channels")}}
    torch.manual_seed(0)
    experts = []
    for _ in range(config["experts"]):  # both A14B experts on the GPU for a moment (53 GiB): VideoModel's
        with torch.device(device):      # ExpertPlacement then sends the second to pinned host memory
            torch.set_default_dtype(torch.bfloat16)
            try:
                transformer = WanTransformer3DModel(**shape)
            finally:
                torch.set_default_dtype(torch.float32)
        keep = set(transformer._keep_in_fp32_modules)  # as from_pretrained(dtype=bf16) leaves them
        for name, q in transformer.named_parameters():
            if keep.intersection(name.split(".")):
                q.data = q.data.float()
        experts.append(transformer)
    stand_in = tiny.build_tiny_pipeline("tiny")  # tokenizer and text encoder: never on the timed path
    with torch.device(device):  # a toy-width VAE with the published latent channels and compression: never run
        vae = AutoencoderKLWan(**config["small_vae"])
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                        num_train_timesteps=1000, flow_shift=config["shift"])
    pipe = WanPipeline(tokenizer=stand_in.tokenizer, text_encoder=stand_in.text_encoder.to(device), vae=vae,
                       scheduler=scheduler, transformer=experts[0], transformer_2=experts[1] if len(experts) > 1 else None,
                       **config["pipeline"])
    pipe.set_progress_bar_config(disable=True)
    model = VideoModel(pipe, "wan", DEFAULTS[backbone], f"{backbone}-random" + ("-small" if small else ""))
    if device == "cuda":
        torch.cuda.empty_cache()  # the second expert's GPU copy, now in host memory
    return model


def measure_dpo(model, args, device, compile_on, deadline, report, speed) -> None:
    """train.py's DPO step at the preset's training video; while it runs out of memory: recomputing attention, then
    a 17-frame video (what fits, and s/step to scale by tokens)."""
    preset = SMALL_VIDEO[0] if args.small else PRESET["frames"]
    height, width = SMALL_VIDEO[1:] if args.small else (model.defaults.height, model.defaults.width)
    rank, targets = PRESET["rank"], PRESET["lora_targets"]
    model.add_lora(rank, targets, name="reference", trainable=False)  # the frozen DPO reference
    model.add_lora(rank, targets, name="default")                     # the trainable policy
    with torch.no_grad():  # random, non-zero LoRAs: never time multiplications by zero
        for name in ("reference", "default"):
            for q in model.lora_parameters(name):
                q.copy_(torch.randn_like(q) * 0.01)
    params = model.lora_parameters("default")
    optimizer = torch.optim.AdamW(params, lr=PRESET["dpo_lr"], weight_decay=0.0, fused=device == "cuda")
    seed = next(s for s in range(1000)  # a draw whose t falls to the expert on the GPU: the step times no switch
                if model.expert_of(model.sample_timesteps(1, torch.Generator().manual_seed(s)))[0] == 0)
    gpu_gib = torch.cuda.get_device_properties(0).total_memory / 2**30 if device == "cuda" else None
    low_memory = gpu_gib is not None and gpu_gib < LOW_MEMORY_BELOW_GIB
    train_keeps = keeps_attention(True, low_memory, len(model.transformers), gpu_gib)  # what train.py would pick
    report.data["dpo"] = dict(height=height, width=width, rank=rank, targets=targets, rows=[])
    attempts = [(keep, preset) for keep in ([False] if low_memory else [True, False])] + [(False, (preset + 1) // 2)]
    for keep, frames in attempts:  # keeping attention first (train.py's choice but for the A14B under 120 GiB)
        S = tokens_of(model, frames, height, width)
        flops = P.dpo_step_flops(model, S, 1, rank)
        batch = P.dpo_batch(model, frames, height, width, 1, device)
        batch = {k: v.cpu() if k.startswith("latents") else v for k, v in batch.items()}  # as repo.latents gives them

        def step():  # train.py's train_steps at batch 1
            optimizer.zero_grad(set_to_none=False)
            loss, _ = dpo.preference_step(model, batch, generator=torch.Generator().manual_seed(seed))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()

        label = (f"{'compiled' if compile_on else 'eager'}, every block checkpointed, "
                 + ("keeping attention" if keep else "recomputing attention") + (" (train.py's)" * (keep == train_keeps)))
        estimate = (2 + args.repeats) * 1.25 * flops / (speed["tflops"] * 1e12) + args.compile_allowance_s * compile_on
        if not deadline.allows(estimate):
            report.skip("dpo", f"{label}, {frames} frames", f"~{estimate:.0f} s left out of the budget")
            return
        print(f"DPO at {frames}x{height}x{width}: {S} tokens a video, batch 2, {flops / 1e12:.0f} useful TFLOP a step; "
              f"{label}", flush=True)
        model.enable_speedups(compile_blocks=compile_on, gradient_checkpointing=True, keep_attention=keep,
                              attention_backend="fa4" if device == "cuda" else None)
        row = dict(variant=label, frames=frames, tokens=S, useful_tflop=round(flops / 1e12, 1))
        try:
            P.reset_peak()
            # two untimed steps: the first compiles, the second again (peft's active-adapter list is a new object
            # after the first adapter switch, and torch.compile guards on its identity)
            row["first_steps_s"] = [round(P.timed_once(step)[0], 2) for _ in range(2)]
            seconds = P.timed(step, warmup=0, repeats=args.repeats)
            row.update(status="ok", s_per_step=round(seconds, 3), peak_gib=round(P.peak_gib(), 1),
                       tflops=round(flops / seconds / 1e12))
            speed["tflops"] = flops / seconds / 1e12
        except Exception as error:  # noqa: BLE001 — out of memory is a result; any other failure is reported
            row.update(status=failure(error), peak_gib=round(P.peak_gib(), 1))
        del batch
        gc.collect()  # the failed step's graph, before the next row
        if device == "cuda":
            torch.cuda.empty_cache()
        report.add("dpo", row)
        if row["status"] == "ok":
            return


def measure_switch(model, deadline, report, repeats: int = 3) -> None:
    """ExpertPlacement.place back and forth: seconds a switch; then what it costs a training step."""
    placement = model.placement
    if not deadline.allows(30):
        report.skip("switch", "expert switch", "out of budget")
        return
    moved_gib = sum(t.numel() * t.element_size() for t in placement._frozen(model.transformers[1])) / 2**30
    seconds = []
    for expert in [1, 0] * repeats:  # ends on the high-noise expert, where sampling starts
        synchronize()
        start = time.perf_counter()
        placement.place(expert)
        synchronize()
        seconds.append(time.perf_counter() - start)
    switch_s = statistics.median(seconds)
    t = model.sample_timesteps(100_000, torch.Generator().manual_seed(0))
    p_high = (t >= model.boundary).float().mean().item()
    step_s = next((row["s_per_step"] for row in report.data.get("dpo", {}).get("rows", []) if "s_per_step" in row), None)
    per_step = [dict(pairs=n, switches_per_step=round(switches_per_step(p_high, n), 3),
                     s_per_step=round(switches_per_step(p_high, n) * switch_s, 3),  # share: of n pairs' compute
                     share_of_dpo_step=step_s and round(switches_per_step(p_high, n) * switch_s / (n * step_s), 3))
                for n in (1, 2, 4)]
    report.data["switch"] = dict(active=placement.active, moved_gib=round(moved_gib, 2), median_s=round(switch_s, 3),
                                 seconds=[round(s, 3) for s in seconds], p_high=round(p_high, 4), per_step=per_step,
                                 gb_per_s=round(moved_gib * 2**30 / 1e9 / switch_s, 1) if switch_s else None)
    report.save()
    report.table(f"expert switch: {moved_gib:.1f} GiB from pinned host memory, median {switch_s:.3f} s "
                 f"({'a real copy' if placement.active else 'CPU: bookkeeping only'}); P(t >= boundary) = {p_high:.3f}",
                 ["pairs a step", "switches a step", "s a step", "share of the DPO step"],
                 [[r["pairs"], r["switches_per_step"], r["s_per_step"], r["share_of_dpo_step"]] for r in per_step])


def measure_sampling(model, args, device, compile_on, deadline, report, speed) -> None:
    """Stock WanPipeline eager / compiled vs fast_sampling's lossless loop, n steps each of a 30-step schedule."""
    d = model.defaults
    frames, height, width = SMALL_VIDEO if args.small else (d.frames, d.height, d.width)
    S = tokens_of(model, frames, height, width)
    steps, guidance = args.sample_steps, model.defaults.guidance
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(1, *model.latent_shape(frames, height, width), generator=generator)   # [1, C, f, h, w]
    text_emb, negative_emb = (torch.randn(1, P.TEXT_TOKENS, model.transformer.config.text_dim, generator=generator)
                              .to(device, model.dtype) for _ in range(2))                     # [1, L, D] each
    switches = 2 if len(model.transformers) > 1 else 0  # a video: high -> low, then back at the next video's start
    switch_s = report.data.get("switch", {}).get("median_s", 0.0)
    report.data["sampling"] = dict(frames=frames, height=height, width=width, tokens=S, steps=steps, guidance=guidance,
                                   text="random embeddings [1, 512, text_dim] for both sides (no UMT5)", rows=[],
                                   lora=model._active_adapters(), switches_added=f"{switches} x {switch_s} s")
    stock = lambda: model._pipeline_latents(text_emb, negative_emb, noise, frames, height, width, steps,  # noqa: E731
                                            guidance, False)
    ours = lambda: fast_sampling.sample_latents(model, text_emb, negative_emb, noise, steps, guidance)  # noqa: E731
    variants = [("stock WanPipeline, eager, SDPA", False, "sdpa", stock),
                ("stock WanPipeline, compiled blocks, SDPA", True, "sdpa", stock)]
    variants.append((f"fast_sampling lossless, CFG batched, compiled, {report.data['attention'].split(' ')[0]}",
                     True, "fa4" if device == "cuda" else None, ours))
    step_estimate = 2 * P.forward_flops(model, S, 1) / (speed["tflops"] * 1e12)
    print(f"sampling at {frames}x{height}x{width}: {S} tokens a video, ~{step_estimate:.1f} s a step expected",
          flush=True)
    for label, compiled, backend, sampler in variants:
        if compiled and not compile_on:
            report.skip("sampling", label, "--no-compile")
            continue
        n = args.timed_steps + compiled  # a compiled row's first step compiles: run one more, drop it
        estimate = n * step_estimate + args.compile_allowance_s * compiled
        if not deadline.allows(estimate):
            report.skip("sampling", label, f"~{estimate:.0f} s left out of the budget")
            continue
        set_compiled(model, compiled)
        model.enable_speedups(attention_backend=backend)
        P.reset_peak()
        try:
            setup_s, step_seconds = StepClock(model.transformers, n).run(sampler)
        except Exception as error:  # noqa: BLE001 — one broken row must not cost the rest
            report.add("sampling", dict(variant=label, status=failure(error), peak_gib=round(P.peak_gib(), 1)))
            continue
        per_step = statistics.median(step_seconds[1:] if compiled and len(step_seconds) > 1 else step_seconds)
        ran_all = len(step_seconds) == steps  # then the whole run's wall time is measured, compiling included
        report.add("sampling", dict(variant=label, status="ok", steps_run=len(step_seconds),
                                    step_s=[round(s, 2) for s in step_seconds], s_per_step=round(per_step, 3),
                                    setup_s=round(setup_s, 2), peak_gib=round(P.peak_gib(), 1),
                                    extrapolated_s=round(steps * per_step + switches * switch_s, 1),
                                    measured_s=round(setup_s + sum(step_seconds), 1) if ran_all else None))
        step_estimate = per_step


def tokens_of(model, frames: int, height: int, width: int) -> int:
    pipe = model.pipe
    return video_tokens(frames, height, width, pipe.vae_scale_factor_spatial, pipe.vae_scale_factor_temporal,
                        model.transformer.config.patch_size)


def set_compiled(model, on: bool) -> None:
    """Compiled blocks (model.enable_speedups, every expert) or back to eager."""
    if on:
        model.enable_speedups(compile_blocks=True)
        return
    for transformer in model.transformers:
        for block in transformer.blocks:
            block._compiled_call_impl = None


def failure(error: Exception) -> str:
    """A row's status when it failed: out of memory is a result, anything else is shown with its traceback."""
    if isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error):
        return "out of memory"
    traceback.print_exc()
    return f"failed: {type(error).__name__}: {str(error).splitlines()[0][:120] if str(error) else ''}"


def host_memory() -> dict:
    """Peak resident host memory and pinned memory now (GiB): ExpertPlacement's host copies live there."""
    found = {"peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 1)}  # Linux: KiB
    if torch.cuda.is_available() and hasattr(torch.cuda, "host_memory_stats"):
        found["pinned_gib"] = round(torch.cuda.host_memory_stats().get("allocated_bytes.current", 0) / 2**30, 1)
    return found


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class Report:
    """What was measured, written after every row (a run killed at the call's limit keeps what it had):
    bench_wan22-<backbone>.json (everything) and .txt (the tables as printed)."""

    def __init__(self, out: Path, backbone: str, device: str, ceiling: float):
        self.json, self.txt = out / f"bench_wan22-{backbone}.json", out / f"bench_wan22-{backbone}.txt"
        gpu = "CPU" if device != "cuda" else (
            f"{torch.cuda.get_device_name()} ({torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB)")
        self.data = dict(backbone=backbone, device=gpu, environment=P.environment(), skipped=[],
                         bf16_matmul_ceiling_tflops=None if ceiling != ceiling else round(ceiling),
                         built="in memory, random weights, bf16 (no from_pretrained, no UMT5, VAE never run)")
        self.txt.write_text(P.environment() + "\n\n")

    def add(self, section: str, row: dict) -> None:
        self.data[section]["rows"].append(row)
        print(row, flush=True)
        self.save()

    def skip(self, section: str, what: str, why: str) -> None:
        self.data["skipped"].append(f"{section}: {what}: {why}")
        print("skipped", self.data["skipped"][-1], flush=True)
        self.save()

    def save(self) -> None:
        self.json.write_text(json.dumps(self.data, indent=1))

    def table(self, title: str, header: list[str], rows: list[list]) -> None:
        P.print_table(f"{self.data['backbone']}, {self.data['device']}: {title}", header, rows,
                      file=str(self.txt))

    def finish(self) -> None:
        self.data["host_at_end"] = host_memory()
        if "dpo" in self.data:
            d = self.data["dpo"]
            self.table(f"DPO step (train.py's), {d['height']}x{d['width']}, batch 2, LoRA r={d['rank']} {d['targets']}, "
                       f"attention {self.data['attention']}",
                       ["variant", "frames", "tokens", "status", "s/step", "1st, 2nd step s", "peak GiB", "TFLOP/s"],
                       [[r["variant"], r["frames"], r["tokens"], r["status"], r.get("s_per_step", ""),
                         r.get("first_steps_s", ""), r.get("peak_gib", ""), r.get("tflops", "")] for r in d["rows"]])
        if "sampling" in self.data:
            s = self.data["sampling"]
            self.table(f"sampling, {s['frames']}x{s['height']}x{s['width']} = {s['tokens']} tokens, CFG "
                       f"{s['guidance']}, first steps of a {s['steps']}-step schedule; {s['text']}",
                       ["variant", "status", "steps run", "s/step", f"{s['steps']} steps s", "ran s", "peak GiB"],
                       [[r["variant"], r["status"], r.get("steps_run", ""), r.get("s_per_step", ""),
                         r.get("extrapolated_s", ""), r.get("measured_s") or "", r["peak_gib"]] for r in s["rows"]])
        skipped = "".join(f"skipped {line}\n" for line in self.data["skipped"])
        print(skipped, end="")
        with open(self.txt, "a") as handle:
            handle.write(skipped)
        self.save()


if __name__ == "__main__":
    main()

"""FP8 base weights (fp8.py) vs bf16 on Wan2.1-1.3B (published config, random weights): error, speed, DPO effect.

The same model, the same inputs, first in bf16, then with the transformer blocks' frozen linear weights in
float8_e4m3 (model.enable_fp8, after the LoRAs exist, as a resumed run would convert them):
    (a) max / mean |Δ| of one transformer forward (no grad, trainable LoRA on), and the bf16 floor beside it:
        compiled vs eager bf16, the difference every speed switch already accepts;
    (b) the time of that forward, compiled blocks (what sampling runs): a 33-frame pair (batch 2) and one
        81-frame video (batch 1), all 480×832;
    (c) one dpo.preference_step + backward (no optimizer step), 33 frames, one pair, LoRA r = 64, compiled,
        the first 21 of 30 blocks checkpointed (bench_dpo_step.py's fastest step under 24 GiB);
    (d) that step's DPO loss and the trainable LoRA's gradient, cosine to the bf16 one, on the same batch, t and ε.
Last, the forwards again with the H100's fast FP8 accumulation (no periodic promotion to fp32).

    python bench/bench_fp8.py                          # GPU, ~4 minutes on an H100 (compiles 3 shapes x 3 variants)
    python bench/bench_fp8.py --attention-backend fa4  # the same with FlashAttention-4 where installed
    python bench/bench_fp8.py --small                  # CPU, 2 blocks, tiny video, eager: checks the script
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

import torch
import torch._dynamo

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import published as P  # noqa: E402

import dpo  # noqa: E402
import fp8  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="2-block model, 9 and 13 frames of 64x96, CPU, eager")
    parser.add_argument("--frames", type=int, default=33, help="frames of the DPO pair and the batch-2 forward (4k+1)")
    parser.add_argument("--long-frames", type=int, default=81, help="frames of the batch-1 forward (0: none)")
    parser.add_argument("--height", type=int, default=480, help="pixels")
    parser.add_argument("--width", type=int, default=832, help="pixels")
    parser.add_argument("--rank", type=int, default=64, help="LoRA rank")
    parser.add_argument("--checkpoint-blocks", type=int, default=21, help="checkpointed blocks of the DPO step")
    parser.add_argument("--attention-backend", default=None, help="fa4, sdpa, _native_cudnn, ... (default: sdpa)")
    parser.add_argument("--keep-attention", action="store_true",
                        help="checkpointed blocks keep their attention outputs (speedups.keep_attention_outputs)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per row (median)")
    parser.add_argument("--budget-s", type=float, default=290, help="wall seconds; later rows are skipped past it")
    parser.add_argument("--out", default=None, help="also append the table to this file")
    args = parser.parse_args()
    if args.small:
        args.frames, args.long_frames, args.height, args.width, args.repeats = 9, 13, 64, 96, 1
    device, deadline, _ = P.start(args.small, args.budget_s)
    compiled = device == "cuda"  # inductor on a 2-core CPU takes minutes a shape: --small checks the eager path

    model = P.build_published(device, torch.bfloat16, small=args.small)
    model.add_lora(args.rank, name="reference", trainable=False)   # the frozen DPO reference (identity LoRA)
    model.add_lora(args.rank, name="default")                      # the trainable policy LoRA (fp32)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # random, non-zero LoRAs: a zero B would hide what FP8 does to the adapters' inputs
        for p in model.lora_parameters("reference") + model.lora_parameters("default"):
            p.copy_(torch.randn(p.shape, generator=generator).to(p) * 0.01)
    P.set_attention(model, args.attention_backend)
    model.enable_speedups(gradient_checkpointing=True, checkpoint_blocks=args.checkpoint_blocks,  # only under grad
                          compile_blocks=not args.small, keep_attention=args.keep_attention)
    n_blocks = len(model.transformer.blocks)

    forwards = {f"forward {args.frames}f x2": forward_inputs(model, args.frames, 2, args, device)}
    if args.long_frames:
        forwards[f"forward {args.long_frames}f x1"] = forward_inputs(model, args.long_frames, 1, args, device)
    dpo_label = f"DPO step {args.frames}f pair, ckpt {min(args.checkpoint_blocks, n_blocks)}/{n_blocks}"
    dpo_batch = P.dpo_batch(model, args.frames, args.height, args.width, 1, device)
    rows, bf16 = [], {}

    # the bf16 floor: compiled vs eager blocks, a difference every speed switch already accepts
    P.set_compiled(model, False)  # the blocks were compiled with the checkpointing above: eager for the floor
    eager = {label: forward(model, inputs) for label, inputs in forwards.items()} if compiled else {}
    P.set_compiled(model, compiled)
    for variant in ("bf16", "fp8", "fp8, fast accumulation"):
        if variant == "fp8":
            model.enable_fp8()
            torch._dynamo.reset()  # new modules in every block: compile them afresh
        elif variant.startswith("fp8,"):
            for module in model.transformer.modules():
                if isinstance(module, fp8.FP8Linear):
                    module.fast_accumulation = True
            torch._dynamo.reset()
        for label, inputs in forwards.items():
            if not deadline.allows(30) or (variant != "bf16" and label not in bf16):
                rows.append([variant, label, "skipped: out of time"] + [""] * 8)
                continue
            P.reset_peak()
            call = functools.partial(forward, model, inputs)
            first, out = P.timed_once(call)
            seconds = P.timed(call, warmup=1, repeats=args.repeats)
            if variant == "bf16":
                bf16[label] = (seconds, out)
                if compiled:
                    rows.append(["bf16 compiled vs eager (floor)", label, "", "", *difference(out, eager[label])]
                                + [""] * 4)
            rows.append([variant, label, f"{seconds:.3f}", f"{bf16[label][0] / seconds:.2f}x",
                         *difference(out, bf16[label][1]), "", "", f"{P.peak_gib():.1f}", f"{first:.0f}"])
            print(rows[-1], flush=True)
        if variant.startswith("fp8,"):
            continue  # fast accumulation: forwards only (sampling); the DPO step keeps the accurate default
        if not deadline.allows(90) or (variant != "bf16" and dpo_label not in bf16):
            rows.append([variant, dpo_label, "skipped: out of time"] + [""] * 8)
            continue
        rows.append(dpo_row(model, dpo_batch, variant, dpo_label, bf16, args.repeats))
        print(rows[-1], flush=True)

    P.print_table(f"FP8 base weights vs bf16, Wan2.1-1.3B published config, {args.height}x{args.width}, LoRA r={args.rank}"
                  f", attention {args.attention_backend or 'sdpa'}, {'compiled' if compiled else 'eager'} blocks; "
                  "Δ and cos vs bf16 on the same inputs",
                  ["variant", "what", "s", "vs bf16", "max|Δ|", "mean|Δ|", "rel Δ", "DPO loss", "grad cos",
                   "peak GiB", "1st s"], rows, args.out)


def forward_inputs(model, frames: int, batch: int, args, device: str) -> tuple:
    """x_t [B, C, f, h, w] bf16, t [B], text embeddings [B, 512, 4096] bf16: what a sampling step feeds in."""
    generator = torch.Generator().manual_seed(frames)
    x_t = torch.randn(batch, *model.latent_shape(frames, args.height, args.width), generator=generator)
    t = torch.full((batch,), 500.0)
    text_emb = torch.randn(batch, P.TEXT_TOKENS, model.transformer.config.text_dim, generator=generator)
    return x_t.to(device, torch.bfloat16), t.to(device), text_emb.to(device, torch.bfloat16)


def forward(model, inputs) -> torch.Tensor:
    """One transformer forward with the trained LoRA on, as sampling runs it: [B, C, f, h, w] fp32."""
    with torch.no_grad(), model.adapter("default"):
        return model.predict(*inputs)


def difference(out: torch.Tensor, reference: torch.Tensor) -> list[str]:
    """max |Δ|, mean |Δ|, and ‖Δ‖ / ‖reference‖."""
    delta = (out - reference).float()
    return [f"{delta.abs().max().item():.2e}", f"{delta.abs().mean().item():.2e}",
            f"{(delta.norm() / reference.float().norm()).item():.2e}"]


def dpo_row(model, batch, variant: str, label: str, bf16: dict, repeats: int) -> list:
    """(c) and (d): the step's time and peak, its loss, and the LoRA gradient's cosine to bf16's (same t and ε)."""
    params = model.lora_parameters("default")
    state = {}

    def step():
        for p in params:
            p.grad = None
        loss, _ = dpo.preference_step(model, batch, generator=torch.Generator().manual_seed(0))  # the same t, ε
        loss.backward()
        state["loss"] = loss.detach()

    P.reset_peak()
    first, _ = P.timed_once(step)
    grads = torch.cat([p.grad.flatten() for p in params])
    loss = state["loss"].item()
    seconds = P.timed(step, warmup=1, repeats=repeats)
    if variant == "bf16":
        bf16[label] = (seconds, grads, loss)
        cosine, speed = 1.0, 1.0
    else:
        cosine = torch.nn.functional.cosine_similarity(grads, bf16[label][1], dim=0).item()
        speed = bf16[label][0] / seconds
    return [variant, label, f"{seconds:.3f}", f"{speed:.2f}x", "", "", "", f"{loss:.4f}", f"{cosine:.4f}",
            f"{P.peak_gib():.1f}", f"{first:.0f}"]


if __name__ == "__main__":
    main()

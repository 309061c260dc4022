"""One MagicID preference round at the published Wan2.1-T2V-1.3B size (random weights), timed stage by stage.

A round is what train.py does between two DPO phases: generate K videos of a prompt (fast_sampling,
lossless settings), decode them, score them (r_id with dlib on the CPU, r_dyn with DIS flow), select
identity and dynamic pairs (sampling.py), then N Diffusion-DPO steps (dpo.preference_step: policy
LoRA with grad, the reference adapter under no_grad). Weights are random, so the rewards are
meaningless; the seconds are what a user's round costs. The ID reference is examples/astronaut.jpg.

    python bench/bench_round.py                  # GPU: 4 videos of 81×480×832 at 30 steps, 10 DPO steps
    python bench/bench_round.py --small          # CPU check: 2-block model, tiny VAE, small videos
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import fast_sampling  # noqa: E402
from dpo import preference_step  # noqa: E402
from published import build_published, environment, peak_gib, print_table, reset_peak, timed_once  # noqa: E402
from faces import ID_CALIBRATION, load_references, make_face_encoder  # noqa: E402
from rewards import score_videos  # noqa: E402
from sampling import select_dynamic_pairs, select_identity_pairs  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

DELTA_ID = ID_CALIBRATION["dlib"].delta_id  # the round scores with dlib on the box's CPU


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true", help="2-block model and small videos: a CPU check")
    p.add_argument("--videos", type=int, default=4, help="K videos of the prompt")
    p.add_argument("--frames", type=int, default=81)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=832)
    p.add_argument("--steps", type=int, default=30, help="denoising steps")
    p.add_argument("--dpo-steps", type=int, default=10)
    p.add_argument("--rank", type=int, default=64)
    p.add_argument("--compile", action="store_true", help="torch.compile the transformer blocks")
    p.add_argument("--attention-backend", default=None, help="e.g. _native_cudnn")
    p.add_argument("--out", default=None, help="append the table to this file")
    args = p.parse_args()
    if args.small:
        args.frames, args.height, args.width, args.steps, args.dpo_steps = 5, 64, 64, 3, 2
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = build_published(device, torch.bfloat16 if device == "cuda" else torch.float32, small=args.small)
    model.enable_speedups(compile_blocks=args.compile, gradient_checkpointing=True,
                          attention_backend=args.attention_backend)
    print(environment(), flush=True)
    text_dim = model.transformer.config.text_dim
    generator = torch.Generator().manual_seed(0)
    text_emb = torch.randn(1, 512, text_dim, generator=generator).to(device, model.dtype)  # [1, L, D] cached
    negative_emb = torch.randn(1, 512, text_dim, generator=generator).to(device, model.dtype)
    rows = []

    # 1. Generation of K videos (one batch through fast_sampling) and decoding.
    shape = (args.videos, *model.latent_shape(args.frames, args.height, args.width))
    noise = torch.randn(shape, generator=generator)
    seconds, latents = timed_once(lambda: fast_sampling.sample_latents(
        model, text_emb.expand(args.videos, -1, -1), negative_emb, noise, steps=args.steps))
    rows.append([f"generate {args.videos} videos ({args.steps} steps, CFG)", f"{seconds:.1f}", f"{peak_gib():.1f}"])
    reset_peak()
    seconds, videos = timed_once(lambda: model.decode(latents))
    rows.append([f"VAE decode {args.videos} videos", f"{seconds:.1f}", f"{peak_gib():.1f}"])

    # 2. Rewards (ID encoder on the CPU, flow on the CPU).
    encoder = make_face_encoder("dlib")
    refs = load_references([str(REPO / "examples" / "astronaut.jpg")], encoder)
    seconds, scores = timed_once(lambda: score_videos(videos, None, refs, encoder, fps=16, progress=False))
    rows.append([f"score {args.videos} videos (r_id dlib + r_dyn DIS)", f"{seconds:.1f}", "-"])

    # 3. Pairs: the K generated videos plus their own copies marked static (so both rules have input).
    r_id = np.array([s["r_id"] for s in scores] * 2)
    r_dyn = np.array([s["r_dyn"] for s in scores] + [0.0] * args.videos)
    prompt = np.array(["p"] * 2 * args.videos, dtype=object)
    source = np.array(["initial"] * args.videos + ["static"] * args.videos, dtype=object)
    seconds, _ = timed_once(lambda: (select_identity_pairs(r_id, r_dyn, prompt, source, delta_id=DELTA_ID),
                                     select_dynamic_pairs(r_id, r_dyn, prompt, source, delta_id=DELTA_ID)))
    rows.append(["select pairs", f"{seconds * 1000:.1f} ms", "-"])

    # 4. N DPO steps on pairs of the generated latents (one pair per step: batch 2).
    model.add_lora(args.rank, name="reference", trainable=False)
    model.add_lora(args.rank, name="default")
    params = model.lora_parameters("default")
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    batch = {"latents_w": latents[:1], "latents_l": latents[1:2], "text_emb": text_emb}

    def dpo_steps():
        for step in range(args.dpo_steps):
            loss, _ = preference_step(model, batch, generator=torch.Generator().manual_seed(step))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    timed_once(lambda: preference_step(model, batch, generator=torch.Generator().manual_seed(0))[0].backward())
    optimizer.zero_grad(set_to_none=True)  # the warm-up step above (compilation, allocator) is not timed
    reset_peak()
    seconds, _ = timed_once(dpo_steps)
    rows.append([f"{args.dpo_steps} DPO steps (1 pair each, r={args.rank}, grad ckpt)", f"{seconds:.1f}",
                 f"{peak_gib():.1f}"])
    title = (f"One preference round, Wan2.1-1.3B published config, random weights, {args.frames}x{args.height}x"
             f"{args.width}{' (--small)' if args.small else ''}; {environment()}")
    print_table(title, ["stage", "seconds", "peak GiB"], rows, file=args.out)


if __name__ == "__main__":
    main()

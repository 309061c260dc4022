"""Scaling of a MagicID round from 1 to N GPUs, through the code train.py runs (parallel.py, run.Run, train.optimize).

Launch once per process count, on the same machine, and compare the tables:

    python -m torch.distributed.run --nproc_per_node 1 bench/bench_multigpu.py --out bench/multigpu.txt
    python -m torch.distributed.run --nproc_per_node 2 bench/bench_multigpu.py --out bench/multigpu.txt
    (accelerate launch --num_processes N starts the same processes)

Two measurements, Wan2.1-1.3B at its published config with random weights, bf16:
  * repository generation: --videos videos (one job each) split by parallel.shard, each process
    sampling its share with fast_sampling and decoding it; wall time until every process is done.
  * DPO training: train.optimize with a global batch of --pairs pairs (items split over the
    processes, LoRA gradients summed), --steps steps after one warm-up step; s/step, and the loss of
    every step written to <out>.losses.N.json so the curves of 1 and N processes can be compared.
Scaling efficiency = t(1 GPU) / (N · t(N GPUs)). --small runs a 2-block model on CPUs (gloo) in seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import fast_sampling  # noqa: E402
import parallel  # noqa: E402
from run import Run  # noqa: E402
from dpo import preference_step  # noqa: E402
from published import build_published, environment, print_table  # noqa: E402
from train import optimize  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true")
    p.add_argument("--frames", type=int, default=33)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=832)
    p.add_argument("--videos", type=int, default=8, help="repository videos to generate")
    p.add_argument("--sample-steps", type=int, default=10, help="denoising steps per video (fast mode)")
    p.add_argument("--pairs", type=int, default=4, help="global batch of the DPO step, pairs")
    p.add_argument("--steps", type=int, default=5, help="timed DPO steps")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    if args.small:
        args.frames, args.height, args.width, args.sample_steps = 5, 64, 64, 2
    rank, world = parallel.rank_and_world()
    device = parallel.device()
    on_gpu = device.type == "cuda"
    model = build_published(str(device), torch.bfloat16 if on_gpu else torch.float32, small=args.small)
    model.enable_speedups(gradient_checkpointing=True)
    text_dim = model.transformer.config.text_dim
    draw = torch.Generator().manual_seed(0)
    text_emb = torch.randn(1, 512, text_dim, generator=draw).to(device, model.dtype)      # [1, L, D]
    negative_emb = torch.randn(1, 512, text_dim, generator=draw).to(device, model.dtype)
    latent_shape = model.latent_shape(args.frames, args.height, args.width)

    # Repository generation: one job per video, every P-th to this process.
    def generate(job):
        noise = torch.randn((1, *latent_shape), generator=torch.Generator().manual_seed(job))
        latents = fast_sampling.sample_latents(model, text_emb, negative_emb, noise, steps=args.sample_steps)
        return model.decode(latents)

    generate(0)  # warm-up (allocator, cuDNN plans), not timed
    parallel.barrier()
    start = time.perf_counter()
    for job in parallel.shard(list(range(args.videos))):
        generate(job)
    parallel.barrier()
    generation_s = time.perf_counter() - start

    # DPO: the training loop of train.py on random latent pairs.
    model.add_lora(64, name="reference", trainable=False)
    model.add_lora(64, name="default")
    pairs = [(torch.randn(latent_shape, generator=draw), torch.randn(latent_shape, generator=draw))
             for _ in range(args.pairs)]
    folder = Path(tempfile.mkdtemp()) if parallel.is_main() else None
    shared = [str(folder)] if folder else [None]
    if world > 1:
        torch.distributed.broadcast_object_list(shared, src=0)
    run = Run(shared[0], config={"seed": 0}, resume=False)
    step_times = []

    def item_loss(step, item):
        winner, loser = pairs[item]
        batch = {"latents_w": winner[None], "latents_l": loser[None], "text_emb": text_emb}
        return preference_step(model, batch, generator=torch.Generator().manual_seed(run.step_seed("dpo", step, item)))

    def timed_item_loss(step, item):
        if item == rank and (not step_times or step_times[-1][0] != step):
            if on_gpu:
                torch.cuda.synchronize()
            step_times.append((step, time.perf_counter()))
        return item_loss(step, item)

    loop = argparse.Namespace(batch_size=args.pairs, warmup=1, checkpoint_every=10**9)  # train.optimize's settings
    optimize(run, "dpo", model, args.steps + 1, 1e-5, loop, timed_item_loss)
    if on_gpu:
        torch.cuda.synchronize()
    step_s = (time.perf_counter() - step_times[1][1]) / args.steps  # from the 2nd step's start: warm-up excluded
    if parallel.is_main():
        losses = [r["loss"] for r in run.read_log()]
        if args.out:
            Path(f"{args.out}.losses.{world}.json").write_text(json.dumps(losses))
        rows = [[f"generate {args.videos} videos {args.frames}x{args.height}x{args.width}, {args.sample_steps} steps",
                 f"{generation_s:.1f} s", f"{args.videos / generation_s * 60:.1f} videos/min"],
                [f"DPO step, global batch {args.pairs} pairs", f"{step_s:.2f} s", f"{args.pairs / step_s:.2f} pairs/s"]]
        print_table(f"{world} process(es) on {device.type}; {environment()}", ["", "time", "throughput"], rows,
                    file=args.out)
        print("losses:", ", ".join(f"{x:.6f}" for x in losses), flush=True)


if __name__ == "__main__":
    main()

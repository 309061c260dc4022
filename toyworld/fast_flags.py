"""toyworld/fast_flags.py — what fast_sampling's lossy flags do to the rewards, measured in the toy world.

The preference repository may be generated in fast mode (fewer UniPC steps, the unconditional CFG branch
only every k-th step, or one of diffusers' cache hooks, which skip transformer blocks: fast_sampling.py).
Each is measured by the work it saves, the fraction of transformer block evaluations skipped against the
exact sampler (fast_sampling.block_evaluations), so variants are compared at equal work. bench/NOTES.md
gives each flag's speed-up and latent difference on the H100; this
script asks the question that matters for MagicID: do the rewards the pairs are chosen by (r_id, face-hit
rate, r_dyn) stay the same? For the base and the identity-stage and MagicID LoRAs of a finished toy-world
run (toyworld/benchmark.py), it samples the repository prompts × seeds with each variant from the same noise and
prints mean [95 % CI] of each reward, the mean per-video change of the rewards and of the latents against the
exact sampler, and seconds per video on this machine.

    python toyworld/benchmark.py --identity astronaut          # first: a toy-world run
    python toyworld/fast_flags.py --run runs/toyworld/astronaut --seeds 4
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import fast_sampling  # noqa: E402
from evaluate import bootstrap_ci  # noqa: E402
from model import VideoModel  # noqa: E402
from faces import load_references, make_face_encoder  # noqa: E402
from rewards import score_videos  # noqa: E402
from prompt_files import person_phrase, read_prompts  # noqa: E402

REWARDS = ("r_id", "face_hit_rate", "r_dyn")


def variants(steps: int) -> dict:
    """name -> fast_sampling flags; the first is the exact sampler at the run's --sample-steps.

    Grouped by the work they save: cfg_interval=2 skips 25 % of the block evaluations, half the steps 50 %;
    the cache hooks' thresholds were picked on other seeds of the same prompts (tiny base, 12 steps) to skip
    about as much (the hooks adapt, so the table reports what each really skipped).
    """
    half = steps // 2
    return {f"exact ({steps} steps)": dict(steps=steps),
            "cfg_interval=2": dict(steps=steps, cfg_interval=2),
            "first-block:0.13": dict(steps=steps, cache="first-block:0.13"),
            "sea:0.3": dict(steps=steps, cache="sea:0.3"),
            f"steps={half}": dict(steps=half),
            "taylorseer:3": dict(steps=steps, cache="taylorseer:3"),
            "first-block:0.28": dict(steps=steps, cache="first-block:0.28"),
            "sea:0.6": dict(steps=steps, cache="sea:0.6"),
            f"steps={half}, cfg_interval=2": dict(steps=half, cfg_interval=2)}


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a finished toy-world (train.py --model tiny) run folder")
    p.add_argument("--seeds", type=int, default=4, help="seeds per repository prompt")
    args = p.parse_args(argv)
    run = Path(args.run)
    config = json.loads((run / "config.json").read_text())
    model = VideoModel.from_pretrained(config["model"])
    encoder = make_face_encoder(config["id_backend"], config["id_model_root"])
    refs = load_references(config["ref"], encoder)
    prompts = read_prompts(config["prompts"], person_phrase(config["token"]))[:config["num_prompts"]]
    all_prompts = [q for q in prompts for _ in range(args.seeds)]
    seeds = [20_000 + 100 * i + s for i in range(len(prompts)) for s in range(args.seeds)]  # not train.py's seeds
    model.load_lora(str(run / "identity_lora"), name="identity")
    model.load_lora(str(run / "magicid_lora"), name="magicid")

    lines = [f"# fast_sampling flags in the toy world: {run}", "",
             f"{len(prompts)} repository prompts × {args.seeds} seeds per LoRA, same noise for every variant; "
             "Δ = mean |reward − exact reward| per video; |Δx| = mean |latents − exact latents|; skipped = the "
             "fraction of the exact sampler's transformer block evaluations not run.", "",
             "| LoRA | sampler | skipped | s/video | r_id | face_hit_rate | r_dyn | Δr_id | Δr_dyn | \\|Δx\\| |",
             "|---" * 10 + "|"]
    full_work = 2 * config["sample_steps"] * len(model.transformer.blocks) * len(all_prompts)  # CFG: 2 rows a step
    for lora in (None, "identity", "magicid"):  # the base's videos move: the check r_dyn needs
        exact = exact_latents = None
        for name, flags in variants(config["sample_steps"]).items():
            start = time.perf_counter()
            with model.adapter(lora), fast_sampling.block_evaluations(model) as work:
                videos, latents = model.sample(all_prompts, frames=config["frames"], height=config["height"],
                                               width=config["width"], seed=seeds, **flags)
            seconds = (time.perf_counter() - start) / len(videos)
            exact_latents = latents if exact_latents is None else exact_latents
            rows = score_videos(videos, all_prompts, refs, encoder, fps=model.defaults.fps, progress=False)
            rewards = {r: np.array([row[r] for row in rows]) for r in REWARDS}
            exact = exact or rewards
            cells = []
            for r in REWARDS:
                mean, low, high = bootstrap_ci(rewards[r])
                cells.append(f"{mean:.3f} [{low:.3f}, {high:.3f}]")
            deltas = [f"{np.abs(rewards[r] - exact[r]).mean():.3f}" for r in ("r_id", "r_dyn")]
            deltas.append(f"{(latents - exact_latents).abs().mean():.3f}")
            skipped = 1 - int(work) / full_work
            lines.append(f"| {lora or 'base'} | {name} | {skipped:.0%} | {seconds:.2f} | " + " | ".join(cells + deltas)
                         + " |")
            print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    (run / "fast_sampling_rewards.md").write_text(text)
    print(text)
    return text


if __name__ == "__main__":
    main()

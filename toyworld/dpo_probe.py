"""toyworld/dpo_probe.py — where did a DPO margin come from: a likelier winner, or a less likely loser?

Diffusion-DPO (dpo.py) grows the implicit reward margin
    −(β/2)·[(e_θ(x_w) − e_ref(x_w)) − (e_θ(x_l) − e_ref(x_l))].
Writing Δ(x) = e_θ(x) − e_ref(x) (the policy's denoising error on x minus the reference's; < 0: x became
likelier), the margin grows just as well when Δ(x_l) rises (the loser less likely) as when Δ(x_w) falls (the
winner likelier). Only the second makes the preferred videos (for dynamic pairs: the moving ones) more
probable. For a finished run, this measures Δ(x_w) and Δ(x_l) on its own pairs, with the reference the
identity-stage LoRA and the policy the MagicID LoRA, averaged over the same draws of (t, ε) for every video,
and also Δ on the identity stage's own repository videos (what the policy samples before DPO). Beside Δ,
e_ref itself: how far a video is from what the reference draws (its own samples have the smallest).

    python toyworld/dpo_probe.py --run runs/tw_seed/astronaut --draws 8
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model import VideoModel  # noqa: E402
from repository import Repository  # noqa: E402


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a finished train.py --model tiny run folder")
    p.add_argument("--draws", type=int, default=8, help="(t, ε) draws per video, the same for every video")
    args = p.parse_args(argv)
    run = Path(args.run)
    pairs = json.loads(sorted(run.glob("pairs_round*.json"))[0].read_text())
    repo = Repository(run / "repository")
    model = VideoModel.from_pretrained("tiny")
    model.load_lora(str(run / "identity_lora"), name="reference")
    model.load_lora(str(run / "magicid_lora"), name="policy")
    delta = ErrorChange(model, repo, args.draws)

    lines = [f"# Where the DPO margin came from: {run}", "",
             f"Δ = e_policy − e_reference (MagicID LoRA vs identity LoRA), mean over {args.draws} shared (t, ε) "
             "draws, ×1000; < 0: the video became likelier.", "",
             "| videos | n | mean e_ref | mean Δ ×1000 | fraction of pairs |", "|---|---|---|---|---|"]
    for rule in ("identity", "dynamic"):
        chosen = pairs[rule]
        if not chosen["pairs"]:
            continue
        winners = np.array([delta(w, prompt) for (w, _), prompt in zip(chosen["pairs"], chosen["prompts"])])  # [P, 2]
        losers = np.array([delta(l, prompt) for (_, l), prompt in zip(chosen["pairs"], chosen["prompts"])])
        lines.append(f"| {rule} winners | {len(winners)} | {winners[:, 1].mean():.3f} "
                     f"| {1000 * winners[:, 0].mean():+.3f} "
                     f"| winner likelier: {(winners[:, 0] < 0).mean():.2f} of pairs |")
        lines.append(f"| {rule} losers | {len(losers)} | {losers[:, 1].mean():.3f} | {1000 * losers[:, 0].mean():+.3f} "
                     f"| loser less likely: {(losers[:, 0] > 0).mean():.2f} of pairs |")
    own = [e for e in repo.entries() if e["source"] == "finetuned"]   # the identity stage's own samples
    values = np.array([delta(e["id"], e["prompt"]) for e in own])     # [V, 2]
    lines.append(f"| identity-stage samples (repository) | {len(values)} | {values[:, 1].mean():.3f} "
                 f"| {1000 * values[:, 0].mean():+.3f} | |")
    text = "\n".join(lines) + "\n"
    (run / "dpo_probe.md").write_text(text)
    print(text)
    return text


class ErrorChange:
    """(Δ, e_ref) of a repository video and prompt: means over fixed (t, ε) draws of e_policy − e_reference
    and of e_reference."""

    def __init__(self, model, repo, draws: int):
        self.model, self.repo, self.draws = model, repo, draws

    @torch.no_grad()
    def __call__(self, video_id: str, prompt: str) -> tuple[float, float]:
        x0 = self.repo.latents(video_id)[None].float().repeat(self.draws, 1, 1, 1, 1)   # [D, C, F, H, W]
        generator = torch.Generator().manual_seed(0)        # the same draws for every video: Δs compare
        t = self.model.sample_timesteps(self.draws, generator)                          # [D]
        noise = torch.randn(x0.shape, generator=generator)                               # [D, C, F, H, W]
        text = self.model.encode_prompt([prompt]).repeat(self.draws, 1, 1)               # [D, L, D_text]
        errors = {}
        for name in ("policy", "reference"):
            with self.model.adapter(name):
                errors[name] = self.model.denoising_error(x0, noise, t, text)             # [D]
        return float((errors["policy"] - errors["reference"]).mean()), float(errors["reference"].mean())


if __name__ == "__main__":
    main()

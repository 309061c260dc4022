"""eval.py — the paper's comparison: base model vs identity-stage LoRA vs MagicID LoRA, on held-out prompts.

For each model variant v, held-out prompt c and seed s, generate a video and score it (rewards.py):
    face similarity r_id, face-hit rate, dynamic reward r_dyn, VBench dynamic degree (0/1),
    temporal consistency (mean cosine between consecutive frames' CLIP image embeddings) and CLIP-T
    (mean CLIP text–frame cosine) when a local CLIP is given, otherwise "not available" and why.
Each metric is reported as mean ± 95 % bootstrap interval over prompts × seeds:
    CI = percentiles 2.5 / 97.5 of mean(resample with replacement of the n scores), 2000 resamples.
The per-frame ID curve (r_id of each sampled frame, averaged over prompts × seeds) shows whether
identity fades as the video goes on: the paper's claim is that it does for the baseline, not for MagicID.

    python eval.py --model tiny --ref photo.jpg --lora-baseline runs/x/identity_lora \\
                   --lora-magicid runs/x/magicid_lora --seeds 3 --out runs/x/eval_table

Outputs in --out: table.md, table.csv, rows.csv (every video's numbers), id_curve.png, rewards.png.

Exports: evaluate (used by train.py's report), summarize, bootstrap_ci, main.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

import media
from rewards import identity_reward, dynamic_reward, prompt_reward

METRICS = ("r_id", "face_hit_rate", "r_dyn", "dynamic_degree", "temporal_consistency", "clip_t")


def evaluate(model, variants: dict, prompts: list[str], seeds: int, refs, encoder, video: dict,
             cache_dir: Path, seed: int = 10_000, clip=None) -> dict:
    """Generate and score prompts × seeds videos per variant ({name: adapter name or None}).

    Each video's scores are cached as JSON in cache_dir, so an interrupted evaluation resumes.
    Returns {"rows": [one dict per video], "summary": summarize(rows), "sheets": {variant: png path}}.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    rows, sheets = [], {}
    jobs = [(name, adapter, p, s) for name, adapter in variants.items()
            for p, prompt in enumerate(prompts) for s in range(seeds)]
    for name, adapter, p, s in tqdm(jobs, desc="evaluation", unit="video"):
        stem = cache_dir / f"{_slug(name)}_p{p}_s{s}"
        if stem.with_suffix(".json").exists():
            rows.append(json.loads(stem.with_suffix(".json").read_text()))
        else:
            with model.adapter(adapter):
                videos, _ = model.sample([prompts[p]], seed=[seed + 100 * p + s], **video)
            row = {"variant": name, "prompt": prompts[p], "seed": seed + 100 * p + s,
                   **score_video(videos[0], prompts[p], refs, encoder, model.defaults.fps, clip)}
            if s == 0:
                media.write_png(str(stem.with_suffix(".png")), media.contact_sheet(videos[0]))
            partial = stem.with_suffix(".json.partial")  # written whole or not at all: a kill here is resumable
            partial.write_text(json.dumps(row))
            os.replace(partial, stem.with_suffix(".json"))
            rows.append(row)
        if s == 0 and p == 0:
            sheets[name] = str(stem.with_suffix(".png"))
    return {"rows": rows, "summary": summarize(rows, list(variants)), "sheets": sheets}


def score_video(video: np.ndarray, prompt: str, refs, encoder, fps: float, clip=None,
                id_frames: int = 16) -> dict:
    """Every metric of one video uint8 [F, H, W, 3]; the CLIP ones are None without a CLIP."""
    ident = identity_reward(video, refs, encoder, num_frames=id_frames)
    dyn = dynamic_reward(video, fps)
    sem = prompt_reward(video, prompt, clip)
    return {"r_id": ident.reward, "face_hit_rate": ident.face_hit_rate, "r_dyn": dyn.reward,
            "dynamic_degree": float(dyn.is_dynamic), "temporal_consistency": temporal_consistency(video, clip),
            "clip_t": sem.reward, "id_per_frame": ident.per_frame.tolist(),
            "id_frame_positions": (ident.frames / max(1, len(video) - 1)).tolist(), "id_backend": ident.backend}


def temporal_consistency(video: np.ndarray, clip=None) -> float | None:
    """Mean cosine between CLIP image embeddings of consecutive frames (VBench-style); None without CLIP."""
    if clip is None:
        return None
    import torch

    inputs = clip.processor(images=list(video), return_tensors="pt").to(clip.device)
    with torch.no_grad():
        emb = clip.model.get_image_features(**inputs).float()        # [F, D]
    emb = torch.nn.functional.normalize(emb, dim=-1)
    return float((emb[1:] * emb[:-1]).sum(-1).mean())


def bootstrap_ci(values, resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): the 95 % percentile bootstrap interval of the mean of `values` [n]."""
    values = np.asarray(values, dtype=float)
    if len(values) == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (resamples, len(values)))].mean(axis=1)  # [resamples]
    low, high = np.percentile(means, [2.5, 97.5])
    return float(values.mean()), float(low), float(high)


def summarize(rows: list[dict], variants: list[str]) -> dict:
    """{variant: {metric: (mean, low, high) or None when not available}}, plus the mean ID curve."""
    out = {}
    for name in variants:
        mine = [r for r in rows if r["variant"] == name]
        out[name] = {m: (None if any(r[m] is None for r in mine) else bootstrap_ci([r[m] for r in mine]))
                     for m in METRICS}
        out[name]["n"] = len(mine)
        out[name]["id_curve"] = np.mean([r["id_per_frame"] for r in mine], axis=0).tolist() if mine else []
    return out


def markdown_table(summary: dict, backend: str) -> str:
    unavailable = "not available (needs --clip: a local CLIP checkpoint)"
    lines = [f"ID encoder: {backend}. Mean ± 95 % bootstrap CI over prompts × seeds.", "",
             "| model | n | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 2) + "|"]
    for name, metrics in summary.items():
        cells = [unavailable if metrics[m] is None else f"{metrics[m][0]:.3f} [{metrics[m][1]:.3f}, {metrics[m][2]:.3f}]"
                 for m in METRICS]
        lines.append(f"| {name} | {metrics['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def id_curve_figure(summary: dict):
    """A matplotlib figure: mean r_id of each sampled frame against its position in the video, per model."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    for name, metrics in summary.items():
        curve = metrics["id_curve"]
        ax.plot(np.linspace(0, 1, len(curve)), curve, marker="o", ms=3, label=name)
    ax.set(xlabel="position in the video (0 = first frame, 1 = last)", ylabel="r_id of the frame",
           title="identity over the video length")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def write_outputs(results: dict, out: Path, backend: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    summary = results["summary"]
    (out / "table.md").write_text(markdown_table(summary, backend))
    with open(out / "table.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["model", "n"] + [f"{m}_{k}" for m in METRICS for k in ("mean", "ci_low", "ci_high")])
        for name, metrics in summary.items():
            cells = [("not available" if metrics[m] is None else f"{v:.6f}") for m in METRICS for v in (metrics[m] or (0, 0, 0))]
            writer.writerow([name, metrics["n"], *cells])
    with open(out / "rows.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["variant", "prompt", "seed", *METRICS, "id_backend"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(results["rows"])
    figure = id_curve_figure(summary)
    figure.savefig(out / "id_curve.png", dpi=120)


def main(argv=None) -> Path:
    from model import ModelLoadError, add_model_args, load_model_from_args
    from rewards import ReferencePhotoError, load_clip, load_references, make_face_encoder

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(parser)
    parser.add_argument("--ref", action="append", required=True, help="photo(s) of the person; repeatable")
    parser.add_argument("--lora-baseline", required=True, help="identity-stage LoRA folder (train.py: identity_lora)")
    parser.add_argument("--lora-magicid", required=True, help="MagicID LoRA folder (train.py: magicid_lora)")
    parser.add_argument("--prompts", default=str(Path(__file__).resolve().parent / "prompts" / "heldout.txt"),
                        help="held-out prompts, one per line; {person} becomes 'a <token> person'")
    parser.add_argument("--token", default="sks", help="the word the LoRAs were trained with")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per prompt")
    parser.add_argument("--frames", type=int, default=None, help="frames per video (longer than training shows fading)")
    parser.add_argument("--height", type=int, default=None)
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None, help="denoising steps")
    parser.add_argument("--id-backend", default="auto", choices=["auto", "dlib", "insightface"])
    parser.add_argument("--id-model-root", default=None, help="insightface model pack folder")
    parser.add_argument("--clip", default=None, help="local CLIP checkpoint folder (enables CLIP-T, temporal consistency)")
    parser.add_argument("--out", default="eval_out", help="folder for table.md, table.csv, plots")
    args = parser.parse_args(argv)

    for name, folder in (("--lora-baseline", args.lora_baseline), ("--lora-magicid", args.lora_magicid)):
        if not (Path(folder) / "pytorch_lora_weights.safetensors").is_file():
            sys.exit(f"error: {name} {folder!r} holds no LoRA (pytorch_lora_weights.safetensors)")
    prompts_file = Path(args.prompts)
    if not prompts_file.is_file():
        sys.exit(f"error: prompts file {prompts_file} does not exist")
    prompts = [line.strip().replace("{person}", f"a {args.token} person")
               for line in prompts_file.read_text().splitlines() if line.strip() and not line.startswith("#")]
    try:
        encoder = make_face_encoder(args.id_backend, args.id_model_root)
        refs = load_references(args.ref, encoder)
        clip = load_clip(args.clip) if args.clip else None
        model = load_model_from_args(args)
        model.check_video_size(args.frames, args.height, args.width)
        model.load_lora(args.lora_baseline, name="baseline")
        model.load_lora(args.lora_magicid, name="magicid")
    except (ReferencePhotoError, ModelLoadError, FileNotFoundError, ValueError) as error:
        sys.exit(f"error: {error}")
    variants = {"base": None, "identity stage": "baseline", "MagicID": "magicid"}
    video = dict(frames=args.frames, height=args.height, width=args.width, steps=args.steps)
    out = Path(args.out)
    results = evaluate(model, variants, prompts, args.seeds, refs, encoder, video, out / "videos", clip=clip)
    write_outputs(results, out, encoder.describe())
    print(markdown_table(results["summary"], encoder.describe()))
    return out


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text.lower())


if __name__ == "__main__":
    main()

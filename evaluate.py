"""evaluate.py — the paper's comparison: base model vs identity-stage LoRA vs MagicID LoRA, on held-out prompts.

For each model variant v, held-out prompt c and seed s, generate a video and score it with the columns
of the paper's Table 1 that can be computed offline (rewards.py):
    Face Sim.   r_id, ArcFace or dlib cosine to the mean reference embedding (the backend is named in
                every table), with the face-hit rate beside it;
    Dyna. Deg.  r_dyn, top-5 % optical-flow magnitude in px at a 256-px short side: a flow magnitude
                like the paper's column, whose scale and flow model the paper does not give, so compare
                models by ratio; and VBench's dynamic degree (0/1 per video, its mean the fraction of
                dynamic videos) as its own column;
    T. Cons.    mean cosine between consecutive frames' CLIP image embeddings;
    CLIP-T      mean CLIP text–frame cosine (8 sampled frames);
    CLIP-I      mean CLIP image cosine between every frame and every reference photo;
    r_sem       the prompt judge's reward (--judge clip:DIR | vlm:DIR), named in the table;
    FVD         not computed: it needs I3D weights, which no pip package ships.
The CLIP metrics use --clip DIR, or the judge's CLIP when the judge is one; without a CLIP they read
"not available" and why (a VLM judge gives r_sem, not CLIP-T: the paper's CLIP-T is a CLIP score).
Each metric is reported as mean ± 95 % percentile-bootstrap interval over the n = prompts × seeds videos:
    CI = percentiles 2.5 / 97.5 of { mean(n scores drawn with replacement) } over 2000 resamples.
(With n below ~10 the percentile interval is too narrow: it cannot see spread it has not sampled.)
The per-frame ID curve (cosine to the reference at each sampled frame position, averaged over prompts ×
seeds, with its bootstrap CI) shows whether identity fades as the video goes on: the paper's claim is that
it does for the baseline, not for MagicID; pass --frames longer than training to look for it.

    python evaluate.py --model tiny --ref photo.jpg --lora-baseline runs/x/identity_lora \\
                   --lora-magicid runs/x/magicid_lora --seeds 3 --out runs/x/eval_table \\
                   --judge vlm:checkpoints/SmolVLM-256M-Instruct --clip checkpoints/clip-vit-base-patch32

Outputs in --out: table.md, table.csv (mean, CI per model and metric), rows.csv (every video's numbers),
id_curve.csv and id_curve.png (the ID curve), rewards.png (r_id and r_dyn with CIs), videos/ (per-video
scores as JSON: a rerun with the same settings reuses them, any change regenerates).

One identity per call: --ref takes several photos (or a folder) of that one person, and the two LoRAs are
that person's. For several identities, loop, one run folder each:
    for who in alice bob; do python evaluate.py --ref photos/$who --lora-baseline runs/$who/identity_lora \\
        --lora-magicid runs/$who/magicid_lora --out runs/$who/eval_table; done

Exports: evaluate (used by train.py's report), score_video, bootstrap_ci, summarize, markdown_table,
id_curve_figure, rewards_figure, write_outputs, main. (The CLIP metrics: clip_metrics.py.)
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import sys
from concurrent.futures import Future
from pathlib import Path

import numpy as np
from tqdm import tqdm

import flags
import media
from clip_metrics import clip_image_similarity, reference_clip_embeddings, temporal_consistency
from rewards import dynamic_reward, identity_reward, prompt_reward
from run import atomic_write
from scoring_worker import ScoringWorker

COLUMNS = {"r_id": "Face Sim. ↑", "face_hit_rate": "face hit rate", "r_dyn": "Dyna. Deg. ↑ (r_dyn, px)",
           "dynamic_degree": "VBench dynamic ↑", "temporal_consistency": "T. Cons. ↑", "clip_t": "CLIP-T ↑",
           "clip_i": "CLIP-I ↑", "r_sem": "r_sem ↑"}   # metric -> its column, named as in the paper's Table 1
METRICS = tuple(COLUMNS)
CLIP_METRICS = ("temporal_consistency", "clip_t", "clip_i")
NO_CLIP = "not available (no local CLIP checkpoint: pass --clip DIR or --judge clip:DIR)"
NO_JUDGE = "off (no prompt judge: pass --judge clip:DIR or vlm:DIR)"
FVD = "not computed (no offline I3D weights)"
SEED_STRIDE = flags.SEED_STRIDE  # video seed = seed + SEED_STRIDE·prompt + s: more --seeds keeps the first ones' videos
# The definition of a cached row's scores: bump it when one changes, so rows scored the old way are redone
# (2: r_id over the frames with a face, shrunk below 50 % presence; rows keep id_found).
SCORING_VERSION = 2


def evaluate(model, variants: dict, prompts: list[str], seeds: int, refs, encoder, video: dict,
             cache_dir: Path, seed: int = 10_000, clip=None, setup=None, id_frames: int = 16,
             judge=None) -> dict:
    """Generate and score prompts × seeds videos per variant ({name: adapter name or None}); clip: the
    CLIP for T. Cons., CLIP-T and CLIP-I, judge: the prompt judge for r_sem (judges.load_judge), each optional.

    Each video's scores are cached as JSON in cache_dir with everything that made them (model, adapter,
    prompt, seed, video size, encoders, `setup`: e.g. the LoRA files' hashes); a cached score is reused
    only when all of that matches, so an interrupted evaluation resumes and a changed one regenerates.
    Returns {"rows": [one dict per video], "summary": summarize(rows), "sheets": {variant: png path}}.
    """
    if not 1 <= seeds <= SEED_STRIDE:
        raise ValueError(f"seeds per prompt must be 1..{SEED_STRIDE}, got {seeds}")
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    settings = {"model": model.name, "video": video, "id_encoder": encoder.describe(), "references": refs.paths,
                "id_frames": id_frames, "clip": clip.name if clip else None, "setup": setup,
                "judge": judge.name if judge else None, "scoring": SCORING_VERSION}
    ref_clip = reference_clip_embeddings(refs.paths, clip)   # [N, D], or None without CLIP
    rows, sheets = [], {}
    jobs = [(name, adapter, p, s) for name, adapter in variants.items()
            for p in range(len(prompts)) for s in range(seeds)]

    def score_and_keep(video, name, p, s, video_seed, stem, key):  # video: uint8 [F, H, W, 3]
        row = {"variant": name, "prompt": prompts[p], "seed": video_seed,
               **score_video(video, prompts[p], refs, encoder, model.defaults.fps, clip, id_frames, judge, ref_clip)}
        if s == 0:
            media.write_png(str(stem.with_suffix(".png")), media.contact_sheet(video))
        atomic_write(stem.with_suffix(".json"), json.dumps({"key": key, "row": row}))  # whole or not at all
        return row

    with ScoringWorker() as worker:  # scores video k while the GPU samples video k + 1 (scoring_worker.py)
        for name, adapter, p, s in tqdm(jobs, desc="evaluation", unit="video"):
            stem = cache_dir / f"{_slug(name)}_p{p}_s{s}"
            video_seed = seed + SEED_STRIDE * p + s
            key = json.loads(json.dumps({**settings, "adapter": adapter, "prompt": prompts[p], "seed": video_seed}))
            row = _cached_row(stem.with_suffix(".json"), key)
            if row is None:
                with model.adapter(adapter):
                    videos, _ = model.sample([prompts[p]], seed=[video_seed], **video)
                row = worker.submit(score_and_keep, videos[0], name, p, s, video_seed, stem, key)
            rows.append(row)
            if s == 0 and p == 0:
                sheets[name] = str(stem.with_suffix(".png"))
    rows = [row.result() if isinstance(row, Future) else row for row in rows]  # all scored: the worker is done
    return {"rows": rows, "summary": summarize(rows, list(variants)), "sheets": sheets}


def score_video(video: np.ndarray, prompt: str, refs, encoder, fps: float, clip=None,
                id_frames: int = 16, judge=None, ref_clip=None) -> dict:
    """Every metric of one video uint8 [F, H, W, 3]. The CLIP ones are None without a CLIP (CLIP-I also
    without ref_clip, reference_clip_embeddings'), r_sem is None without a judge; which ran is in the row."""
    ident = identity_reward(video, refs, encoder, num_frames=id_frames)
    dyn = dynamic_reward(video, fps)
    sem = prompt_reward(video, prompt, judge)
    return {"r_id": ident.reward, "face_hit_rate": ident.face_hit_rate, "r_dyn": dyn.reward,
            "dynamic_degree": float(dyn.is_dynamic), "temporal_consistency": temporal_consistency(video, clip),
            "clip_t": prompt_reward(video, prompt, clip).reward, "clip_i": clip_image_similarity(video, ref_clip, clip),
            "r_sem": sem.reward, "r_sem_judge": sem.reason, "clip_model": clip.name if clip else NO_CLIP,
            "id_per_frame": ident.per_frame.tolist(), "id_found": ident.found.tolist(),
            "id_frame_positions": (ident.frames / max(1, len(video) - 1)).tolist(), "id_backend": ident.backend}


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
    """{variant: {metric: (mean, low, high) or None when not available, "n": videos, "id_curve": ...}}.

    id_curve: {"position": [S] in [0, 1], "mean", "low", "high": [S]}, the cosine to the reference face at each
    sampled frame, over the prompts × seeds whose video shows a face there (NaN where none does).
    """
    out = {}
    for name in variants:
        mine = [r for r in rows if r["variant"] == name]
        out[name] = {m: (None if any(r[m] is None for r in mine) else bootstrap_ci([r[m] for r in mine]))
                     for m in METRICS}
        out[name]["n"] = len(mine)
        out[name]["r_sem_judge"] = mine[0]["r_sem_judge"] if mine else NO_JUDGE   # one judge and CLIP a run
        out[name]["clip_model"] = mine[0]["clip_model"] if mine else NO_CLIP
        # The curve is identity where the face was found: a frame without one is face presence, not a stranger.
        per_frame = np.array([r["id_per_frame"] for r in mine], float)   # [n, S] (one length: same F per run)
        found = np.array([r["id_found"] for r in mine], bool)           # [n, S]
        bands = [bootstrap_ci(column[hit]) if hit.any() else (float("nan"),) * 3
                 for column, hit in zip(per_frame.T, found.T)] if mine else []  # S × (mean, low, high)
        out[name]["id_curve"] = {"position": mine[0]["id_frame_positions"] if mine else [],
                                 **{k: [band[i] for band in bands] for i, k in enumerate(("mean", "low", "high"))}}
    return out


def markdown_table(summary: dict, backend: str) -> str:
    """The paper's Table 1 where computable: one row per model, "mean [low, high]" per metric."""
    first = next(iter(summary.values()), {"r_sem_judge": NO_JUDGE, "clip_model": NO_CLIP})
    judge = NO_JUDGE if first["r_sem_judge"].startswith("off") else first["r_sem_judge"]
    lines = [f"ID encoder: {backend}. Prompt judge (r_sem): {judge}. CLIP: {first['clip_model']}.",
             "Mean [95 % bootstrap CI] over prompts × seeds (n videos per model).", "",
             "| model | n | " + " | ".join(COLUMNS.values()) + " | FVD ↓ |", "|---" * (len(METRICS) + 3) + "|"]
    for name, metrics in summary.items():
        cells = [("off ²" if m == "r_sem" else "not available ¹") if metrics[m] is None
                 else "{:.3f} [{:.3f}, {:.3f}]".format(*metrics[m]) for m in METRICS]
        lines.append(f"| {name} | {metrics['n']} | " + " | ".join(cells) + " | not computed ³ |")
    lines += ["", "Face Sim.: r_id, mean cosine to the mean reference face over the frames with a face, shrunk toward 0 "
              "below 50 % face presence (rewards.py). Dyna. Deg.: r_dyn, "
              "top-5 % flow magnitude in px at a 256-px short side; the paper's column (MagicID 14.42) is a flow "
              "magnitude at a scale it does not give: compare models by ratio. VBench dynamic: fraction of videos "
              "VBench calls dynamic. T. Cons., CLIP-T, CLIP-I: CLIP cosines (consecutive frames; prompt and 8 "
              "frames; every frame and every reference photo); the paper prints CLIP-T and CLIP-I as 100 × cosine."]
    if any(metrics[m] is None for metrics in summary.values() for m in CLIP_METRICS):
        lines.append(f"¹ {NO_CLIP}: T. Cons., CLIP-T and CLIP-I are measured with CLIP.")
    if any(metrics["r_sem"] is None for metrics in summary.values()):
        lines.append(f"² prompt reward {NO_JUDGE}.")
    lines.append(f"³ FVD {FVD}.")
    if any(metrics["n"] < 10 for metrics in summary.values()):
        lines.append("Fewer than 10 videos per model: the bootstrap intervals are optimistic; add --seeds.")
    return "\n".join(lines) + "\n"


def id_curve_figure(summary: dict):
    """A matplotlib figure: mean r_id of each sampled frame (band: 95 % CI) against its position in the video."""
    plt = media.pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for name, metrics in summary.items():
        curve = metrics["id_curve"]
        line, = ax.plot(curve["position"], curve["mean"], marker="o", ms=3, label=name)
        ax.fill_between(curve["position"], curve["low"], curve["high"], color=line.get_color(), alpha=0.2, lw=0)
    ax.set(xlabel="position in the video (0 = first frame, 1 = last)", ylabel="r_id of the frame",
           title="identity over the video length (band: 95 % CI)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def rewards_figure(summary: dict):
    """r_id and r_dyn per model: the mean with its 95 % bootstrap CI as an error bar."""
    plt = media.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(7, 3))
    names = list(summary)
    for ax, metric, label in zip(axes, ("r_id", "r_dyn"), ("r_id (identity)", "r_dyn (motion, px)")):
        mean, low, high = np.array([summary[name][metric] for name in names]).T  # [models] each
        ax.errorbar(range(len(names)), mean, yerr=[mean - low, high - mean], fmt="o", capsize=4)
        ax.set_xticks(range(len(names)), names, fontsize=8)
        ax.set(title=label, xlim=(-0.5, len(names) - 0.5))
    fig.suptitle("mean and 95 % bootstrap CI over prompts × seeds", fontsize=9)
    fig.tight_layout()
    return fig


def write_outputs(results: dict, out: Path, backend: str) -> None:
    """table.md, table.csv, rows.csv, id_curve.csv, id_curve.png and rewards.png in `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = results["summary"]
    (out / "table.md").write_text(markdown_table(summary, backend))
    with open(out / "table.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["model", "n", "id_backend", "r_sem_judge", "clip_model"]
                        + [f"{m}_{k}" for m in METRICS for k in ("mean", "ci_low", "ci_high")] + ["fvd"])
        for name, metrics in summary.items():
            cells = [_why_missing(m) if metrics[m] is None else repr(v)
                     for m in METRICS for v in (metrics[m] or (0, 0, 0))]
            writer.writerow([name, metrics["n"], backend, metrics["r_sem_judge"], metrics["clip_model"], *cells, FVD])
    with open(out / "rows.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["variant", "prompt", "seed", *METRICS, "id_backend",
                                                    "r_sem_judge", "clip_model"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows({**row, **{m: _why_missing(m) for m in METRICS if row[m] is None}} for row in results["rows"])
    with open(out / "id_curve.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["model", "position", "r_id_mean", "ci_low", "ci_high"])
        for name, metrics in summary.items():
            curve = metrics["id_curve"]
            points = zip(curve["position"], curve["mean"], curve["low"], curve["high"])
            writer.writerows([name, *point] for point in points)
    plt = media.pyplot()
    for filename, figure in (("id_curve.png", id_curve_figure(summary)), ("rewards.png", rewards_figure(summary))):
        figure.savefig(out / filename, dpi=120)
        plt.close(figure)


def parse_args(argv=None) -> argparse.Namespace:
    """The flags, every value checked before anything loads (flags.check_evaluate_args): one line, exit 2."""
    from cli import ArgumentParser, HelpFormatter, add_model_args

    parser = ArgumentParser(prog="evaluate.py", description=__doc__, formatter_class=HelpFormatter)
    add_model_args(parser)
    parser.add_argument("--ref", action="append", required=True,
                        help="photo of the person, or a folder of photos; repeatable (one person per call)")
    parser.add_argument("--lora-baseline", required=True, help="identity-stage LoRA folder (train.py: identity_lora)")
    parser.add_argument("--lora-magicid", required=True, help="MagicID LoRA folder (train.py: magicid_lora)")
    parser.add_argument("--prompts", default=str(Path(__file__).resolve().parent / "prompts" / "heldout.txt"),
                        help="held-out prompts, one per line, # comments; {person} becomes 'a <token> person'")
    parser.add_argument("--token", default="sks", help="the word the LoRAs were trained with")
    parser.add_argument("--seeds", type=int, default=3, help=f"seeds per prompt (1..{SEED_STRIDE})")
    parser.add_argument("--seed", type=int, default=10_000, help="first video seed")
    parser.add_argument("--frames", type=int, default=None,
                        help="frames per video, 4k+1 (longer than training shows fading)")
    parser.add_argument("--height", type=int, default=None, help="video height, px (multiple of 16)")
    parser.add_argument("--width", type=int, default=None, help="video width, px (multiple of 16)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps")
    parser.add_argument("--id-frames", type=int, default=16, help="frames per video scored for r_id and the ID curve")
    parser.add_argument("--id-backend", default="auto", choices=["auto", "dlib", "insightface", "toyface"],
                        help="face encoder for r_id (auto: insightface ArcFace when its model pack is on disk)")
    parser.add_argument("--id-model-root", default=None,
                        help="insightface model pack folder, or toyface's weights folder (default weights/toyface)")
    parser.add_argument("--clip", default=None,
                        help="local CLIP checkpoint folder for T. Cons., CLIP-T and CLIP-I (default: the --judge's "
                             "CLIP when it is one; otherwise these columns are not available)")
    parser.add_argument("--judge", default=None,
                        help="prompt judge for the r_sem column: clip:DIR (CLIP text-frame cosine) or vlm:DIR (a "
                             "local image-text-to-text VLM asked whether the frames show the prompt: P(yes)); "
                             "default: off")
    parser.add_argument("--out", default=None, help="output folder (default: eval_table next to --lora-magicid)")
    return flags.parse_or_exit("evaluate.py", parser.parse_args, flags.check_evaluate_args, argv)


def main(argv=None) -> Path:
    from cli import load_model_from_args
    from model import ModelLoadError
    from faces import ReferencePhotoError, load_references, make_face_encoder
    from prompt_files import person_phrase, read_prompts
    import parallel
    from judges import ClipScorer, load_clip, load_judge

    args = parse_args(argv)

    try:
        loras = {"baseline": _lora_file("--lora-baseline", args.lora_baseline),
                 "magicid": _lora_file("--lora-magicid", args.lora_magicid)}
        prompts = read_prompts(args.prompts, person_phrase(args.token))
        encoder = make_face_encoder(args.id_backend, args.id_model_root)
        refs = load_references(args.ref, encoder)
        device = args.device or str(parallel.device())
        judge = load_judge(args.judge, device) if args.judge else None
        clip = load_clip(args.clip, device) if args.clip else judge if isinstance(judge, ClipScorer) else None
        model = load_model_from_args(args)
        model.check_video_size(args.frames, args.height, args.width)
        model.cache_prompts(prompts + [""])  # low memory: one visit of the text encoder to the GPU
        for name, file in loras.items():
            model.load_lora(str(file.parent), name=name)
    except (ReferencePhotoError, ModelLoadError, FileNotFoundError, ValueError) as error:
        sys.exit(f"error: {error}")
    variants = {"base": None, "identity stage": "baseline", "MagicID": "magicid"}
    video = dict(frames=args.frames, height=args.height, width=args.width, steps=args.steps)
    out = Path(args.out) if args.out else Path(args.lora_magicid).resolve().parent / "eval_table"
    setup = {name: hashlib.sha256(file.read_bytes()).hexdigest() for name, file in loras.items()}
    results = evaluate(model, variants, prompts, args.seeds, refs, encoder, video, out / "videos", seed=args.seed,
                       clip=clip, setup=setup, id_frames=args.id_frames, judge=judge)
    write_outputs(results, out, encoder.describe())
    print(markdown_table(results["summary"], encoder.describe()))
    print(f"outputs: {out}")
    return out


# ---- helpers, in the order the entry points above use them -------------------------------------

def _why_missing(metric: str) -> str:
    return NO_JUDGE if metric == "r_sem" else NO_CLIP


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text.lower())


def _cached_row(path: Path, key: dict) -> dict | None:
    """The cached row at `path` if it was made with exactly `key`, else None (regenerate)."""
    if not path.exists():
        return None
    cached = json.loads(path.read_text())
    return cached["row"] if cached.get("key") == key else None


def _lora_file(flag: str, folder: str) -> Path:
    """The LoRA weights file in `folder`, or a FileNotFoundError that says what to pass."""
    from model import LORA_FILE

    path = Path(folder).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"{flag} folder {folder!r} does not exist: pass a LoRA folder that train.py wrote "
                                f"(identity_lora for --lora-baseline, magicid_lora for --lora-magicid)")
    if not (path / LORA_FILE).is_file():
        raise FileNotFoundError(f"{flag} folder {folder!r} holds no LoRA ({LORA_FILE}): pass a folder that "
                                f"train.py or VideoModel.save_lora wrote")
    return path / LORA_FILE


if __name__ == "__main__":
    main()

"""train.py — MagicID end to end: a few photos of one person in, a LoRA that puts them in moving videos out.

The stages (METHOD.md steps 0–6), in the order this file runs them; each is resumable:

  0. references   photos -> face embeddings ē                                        faces.load_references
  1. identity     LoRA on static videos of the photos (self-reconstruction baseline):
                  min E ‖target(x_0, ε, t) − f_θ(x_t, t, "a photo of sks person")‖²  model.py
  2. repository   K videos per prompt from the initial model (LoRA off) and the identity model (LoRA on),
                  plus the static videos, each scored with r_id, r_dyn (, r_sem)      sampling.Repository, rewards
  3. pairs        identity pairs (static-first) and dynamic pairs (Pareto frontier)  sampling.select_*_pairs
  4. DPO          Diffusion-DPO on identity pairs, then on dynamic pairs; the reference is the identity
                  model (a frozen copy of its LoRA, no network copy)                dpo.preference_step
  5. report       base / identity-stage / MagicID rewards on held-out prompts, plots  evaluate.py, report.py

    python train.py --ref me.jpg --model tiny --out runs/tiny        # offline, CPU, a few minutes
    python train.py --ref me.jpg --ref me2.jpg --out runs/me         # Wan2.1-1.3B on one 80 GB GPU

Every step's randomness (batch, timestep, noise) is a function of (--seed, stage, step), so a run
killed at any point and started again with --resume ends with the same LoRA as one that never stopped.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import evaluate
import fast_sampling
import parallel
import report
from checkpoint import Run
from dpo import BETA, preference_step
from model import LORA_TARGETS, ModelLoadError, add_model_args, load_model_from_args
from faces import ID_CALIBRATION, ReferencePhotoError, load_references, make_face_encoder, read_photo
from rewards import score_videos
from sampling import Repository, crop_around_face, select_dynamic_pairs, select_identity_pairs, static_video, summary

PROMPTS_DIR = Path(__file__).resolve().parent / "prompts"

# Defaults that differ between a CPU run of the tiny preset and Wan2.1-1.3B on one 80 GB GPU (ours).
PRESETS = {
    # tiny: the toy-world base (toyworld/README.md) learns a face it has never seen, and draws it in videos
    # of other prompts, after ~1200 steps at 2e-3 of a LoRA on attention and feed-forward layers; its VAE
    # draws one dlib can find when the face fills the frame (1.5 face heights).
    # DPO at 2e-5: at 2e-4 the loss saturates within ~10 steps and the face is lost (toyworld/README.md).
    "tiny": dict(identity_steps=1200, dpo_identity_steps=60, dpo_dynamic_steps=60, lr=2e-3, dpo_lr=2e-5,
                 rank=64, lora_targets="attention+ffn", face_framing=1.5, batch_size=2, videos_per_prompt=4,
                 num_prompts=4, static_videos=4, eval_prompts=3, eval_seeds=3, sample_steps=12, checkpoint_every=50,
                 grad_checkpointing=False),
    "gpu": dict(identity_steps=800, dpo_identity_steps=300, dpo_dynamic_steps=300, lr=1e-4, dpo_lr=1e-5,
                rank=64, lora_targets="attention", face_framing=3.0, batch_size=1, videos_per_prompt=4,
                num_prompts=20, static_videos=16, eval_prompts=6, eval_seeds=2, sample_steps=30, checkpoint_every=100,
                grad_checkpointing=True),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ref", action="append", required=True, help="a photo (or folder of photos) of the person; repeatable")
    p.add_argument("--out", default=None, help="run folder (default: runs/<first photo's name>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out where it stopped")
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice in the run")
    p.add_argument("--token", default="sks", help="the rare word that names the person in prompts")
    p.add_argument("--prompts", default=str(PROMPTS_DIR / "train.txt"), help="repository prompts, one per line")
    p.add_argument("--heldout-prompts", default=str(PROMPTS_DIR / "heldout.txt"), help="evaluation prompts")
    add_model_args(p)
    g = p.add_argument_group("schedule (defaults: tiny preset on CPU / Wan on GPU)")
    g.add_argument("--identity-steps", type=int, help="identity-stage LoRA steps (tiny 1200 / gpu 800)")
    g.add_argument("--dpo-identity-steps", type=int, help="DPO steps on identity pairs (60 / 300)")
    g.add_argument("--dpo-dynamic-steps", type=int, help="DPO steps on dynamic pairs (60 / 300)")
    g.add_argument("--rounds", type=int, default=1, help="preference rounds; >1 regenerates the repository with "
                                                         "the current model (online, ours)")
    g.add_argument("--lr", type=float, help="identity-stage learning rate (2e-3 / 1e-4)")
    g.add_argument("--dpo-lr", type=float, help="DPO learning rate (2e-5 / 1e-5)")
    g.add_argument("--warmup", type=int, default=10, help="linear learning-rate warm-up, steps")
    g.add_argument("--rank", type=int, help="LoRA rank (64 / 64)")
    g.add_argument("--lora-targets", choices=sorted(LORA_TARGETS),
                   help="layers the LoRA adapts (attention+ffn / attention)")
    g.add_argument("--batch-size", type=int, help="videos (identity) or pairs (DPO) per step (2 / 1)")
    g.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (50 / 100)")
    g.add_argument("--grad-checkpointing", action=argparse.BooleanOptionalAction, default=None,
                   help="recompute block activations in backward: less memory, slower (tiny off / gpu on)")
    g.add_argument("--checkpoint-blocks", type=int, default=None,
                   help="with --grad-checkpointing, recompute only the first N blocks (default all; on an H100 "
                        "Wan-1.3B fits 24 GiB with 21/30 at 33 frames, 28/30 at 81: bench/NOTES.md)")
    v = p.add_argument_group("videos")
    v.add_argument("--frames", type=int, default=None, help="frames per video, 4k+1 (default: the model's)")
    v.add_argument("--height", type=int, default=None, help="pixels (default: the model's)")
    v.add_argument("--width", type=int, default=None, help="pixels (default: the model's)")
    v.add_argument("--sample-steps", type=int, help="denoising steps when generating (12 / 30)")
    v.add_argument("--cfg-interval", type=int, default=1,
                   help="repository fast mode (Wan): the unconditional CFG branch only every k-th step, lossy; "
                        "1 = exact (bench/NOTES.md measures its speed and its effect on the rewards)")
    v.add_argument("--static-videos", type=int, help="static videos made from the photos (4 / 16)")
    v.add_argument("--face-framing", type=float,
                   help="static videos show the photo cropped to this many face heights (0: the whole photo; 1.5 / 3)")
    v.add_argument("--jitter", type=float, default=0.1, help="static-video crop/scale jitter, fraction of the side")
    r = p.add_argument_group("repository, rewards and pairs")
    r.add_argument("--num-prompts", type=int, help="repository prompts used from --prompts (4 / 20)")
    r.add_argument("--videos-per-prompt", type=int, help="K videos per prompt and model (4 / 4)")
    r.add_argument("--id-backend", default="auto", choices=["auto", "dlib", "insightface"], help="ID encoder")
    r.add_argument("--id-model-root", default=None, help="insightface model pack folder")
    r.add_argument("--delta-id", type=float, default=None, help="identity margin δ_id (default: the backend's calibration)")
    r.add_argument("--tau-dyn", type=float, default=2.0, help="max |Δr_dyn| of an identity pair, px at 256-px side")
    r.add_argument("--dyn-margin", type=float, default=0.2, help="relative r_dyn margin of a dynamic pair")
    r.add_argument("--max-pairs", type=int, default=None, help="keep at most this many pairs per rule")
    r.add_argument("--max-uses", type=int, default=2, help="times one video may appear in dynamic pairs")
    d = p.add_argument_group("preference optimization")
    d.add_argument("--beta", type=float, default=BETA, help="Diffusion-DPO β (see dpo.py for the choice)")
    d.add_argument("--sft-weight", type=float, default=0.0, help="weight of a denoising loss on winners")
    e = p.add_argument_group("report")
    e.add_argument("--eval-prompts", type=int, help="held-out prompts in the report (3 / 6)")
    e.add_argument("--eval-seeds", type=int, help="seeds per held-out prompt (3 / 2)")
    args = p.parse_args(argv)
    preset = PRESETS["tiny" if args.model.startswith("tiny") else "gpu"]
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.out = args.out or str(Path("runs") / Path(args.ref[0]).stem)
    return args


def main(argv=None) -> Path:
    args = parse_args(argv)
    # On a CPU, a saturated DPO loss sends gradients into the denormal range, where x86 arithmetic
    # is ~10-100× slower (measured: saturated tiny DPO steps took 1-3 s instead of 0.2 s); zero them instead.
    torch.set_flush_denormal(True)
    run = Run(args.out, config=vars(args), resume=args.resume)
    try:
        # 0. References: the person's face, embedded once.
        encoder = make_face_encoder(args.id_backend, args.id_model_root)
        refs = load_references(args.ref, encoder)
        model = load_model_from_args(args, args.grad_checkpointing, args.checkpoint_blocks)
        model.check_video_size(args.frames, args.height, args.width)
        if args.cfg_interval > 1 and not fast_sampling.supports(model):
            raise ValueError(f"--cfg-interval needs a flow-matching (Wan) model; {args.model!r} samples with "
                             "its own pipeline: leave --cfg-interval at 1")
    except (ReferencePhotoError, ModelLoadError, FileNotFoundError, ValueError) as error:
        sys.exit(f"error: {error}")
    delta_id = args.delta_id if args.delta_id is not None else ID_CALIBRATION[encoder.name].delta_id
    run.log("setup", 0, {"id_backend": encoder.describe(), "delta_id": delta_id, "references": len(refs.paths)})
    person = f"a {args.token} person"
    train_prompts = read_prompts(args.prompts, person)[:args.num_prompts]
    heldout_prompts = read_prompts(args.heldout_prompts, person)[:args.eval_prompts]
    repo = Repository(run.dir / "repository")
    video = dict(frames=args.frames, height=args.height, width=args.width, steps=args.sample_steps)

    def scored_add(videos, latents, prompts, source, seeds):
        rows = score_videos(videos, prompts, refs, encoder, fps=model.defaults.fps, progress=False)
        for clip, z, prompt, seed, row in zip(videos, latents, prompts, seeds, rows):
            repo.add(z, prompt, source, row, seed, video=clip)

    # 1. Identity stage: static videos of the photos, then a LoRA that reconstructs them.
    add_static_videos(repo, model, refs, encoder, args, read_prompts(PROMPTS_DIR / "identity.txt", person), scored_add)
    repo = Repository(repo.root)  # every process sees every static video
    model.add_lora(args.rank, args.lora_targets, name="default")
    statics = [e for e in repo.entries() if e["source"] == "static"]
    text_cache = TextCache(model)
    run.train("identity", model, args.identity_steps, args.batch_size, args.lr, args.warmup, args.checkpoint_every,
              lambda step, item: reconstruction_loss(model, repo, statics, text_cache, args, run, "identity", step, item))
    run.save_stage_lora(model, "identity")

    # 2-4. Repository, pairs, preference optimization; later rounds regenerate with the current model.
    model.load_lora(str(run.dir / "identity_lora"), name="reference", trainable=False)
    model.set_adapter("default")
    for round_index in range(args.rounds):
        repo = build_repository(repo, model, train_prompts, round_index, args, video, scored_add)
        pairs = select_pairs(repo, args, delta_id)
        run.write_json(f"pairs_round{round_index}.json", pairs)
        for rule in ("identity", "dynamic"):
            stage = f"dpo_{rule}_round{round_index}"
            steps = getattr(args, f"dpo_{rule}_steps") if pairs[rule]["pairs"] else 0
            run.train(stage, model, steps, args.batch_size, args.dpo_lr, args.warmup, args.checkpoint_every,
                      lambda step, item: dpo_loss_of_pair(model, repo, pairs[rule], text_cache, args, run, stage, step, item))
        if round_index + 1 < args.rounds:  # online: the next round's reference is this round's result
            copy_adapter(model, "default", "reference")
    run.save_stage_lora(model, "magicid")

    # 5. Report: the three models on held-out prompts, and how training went.
    variants = {"base": None, "identity stage": "reference", "MagicID": "default"}
    if args.rounds > 1:  # the reference moved; put the identity-stage LoRA back for the comparison
        model.load_lora(str(run.dir / "identity_lora"), name="identity", trainable=False)
        variants["identity stage"] = "identity"
    if parallel.is_main():  # the other processes are done: their LoRA is the main one's
        results = evaluate.evaluate(model, variants, heldout_prompts, args.eval_seeds, refs, encoder, video,
                                      cache_dir=run.dir / "eval", seed=args.seed + 10_000)
        model.set_adapter("default")
        path = report.write_report(run.dir, results, repo, run.read_log(), encoder.describe())
        print(f"MagicID LoRA: {run.dir / 'magicid_lora'}\nreport: {path}")
    return run.dir


# ---------------------------------------------------------------------- stage 1: identity

def add_static_videos(repo, model, refs, encoder, args, captions, scored_add):
    """--static-videos static videos, cycling over the photos and captions, each with its own jitter."""
    d = model.defaults
    frames, height, width = args.frames or d.frames, args.height or d.height, args.width or d.width
    photos = [read_photo(Path(p)) for p in refs.paths]
    if args.face_framing > 0:  # zoom each photo to its face (the largest, as load_references chose)
        boxes = [max(encoder.find_faces(photo, thorough=True), key=lambda f: f.area).box for photo in photos]
        photos = [crop_around_face(photo, box, height / width, args.face_framing) for photo, box in zip(photos, boxes)]
    for i in tqdm(parallel.shard(list(range(args.static_videos))), desc="static videos", unit="video",
                  disable=not parallel.is_main()):
        caption = captions[i % len(captions)]
        if repo.has(caption, "static", i):
            continue
        rng = np.random.default_rng([args.seed, i])
        clip = static_video(photos[i % len(photos)], frames, height, width, jitter=args.jitter, rng=rng)
        scored_add(clip[None], model.encode_video(clip[None]), [caption], "static", [i])
    parallel.barrier()


def reconstruction_loss(model, repo, statics, text_cache, args, run, stage, step, item):
    """The identity stage's loss on one static video: plain denoising (the self-reconstruction baseline)."""
    picks = np.random.default_rng(run.step_seed(stage, step)).integers(0, len(statics), args.batch_size)
    video = statics[picks[item]]
    x0 = repo.latents(video["id"])[None].to(model.device, torch.float32)  # [1, C, F, H, W]
    text_emb = text_cache([video["prompt"]])                               # [1, L, D]
    generator = torch.Generator().manual_seed(run.step_seed(stage, step, item))
    t = model.sample_timesteps(1, generator)
    noise = torch.randn(x0.shape, generator=generator).to(model.device)
    with torch.autocast(model.device.type, torch.bfloat16, enabled=model.dtype == torch.bfloat16):
        pred = model.predict(model.add_noise(x0, noise, t), t, text_emb)
    loss = (pred.float() - model.target(x0, noise, t)).pow(2).mean()
    return loss, {"loss": loss.item()}


# ---------------------------------------------------------------------- stages 2-4: repository, pairs, DPO

def build_repository(repo, model, prompts, round_index, args, video, scored_add):
    """K videos per prompt from the initial model (no LoRA) and from the current one; skip what exists.

    Jobs are (source, prompt) batches of K seeds, spread over processes (parallel.shard); each video
    is its own file, so a process that dies loses at most the batch it was writing.
    """
    sources = [("initial", None), ("finetuned", "default")] if round_index == 0 else [("finetuned", "default")]
    all_seeds = [args.seed + 1000 * round_index + k for k in range(args.videos_per_prompt)]
    jobs = [(source, adapter, prompt) for source, adapter in sources for prompt in prompts]
    for source, adapter, prompt in tqdm(parallel.shard(jobs), desc=f"repository round {round_index}",
                                        unit="prompt", disable=not parallel.is_main()):
        seeds = [s for s in all_seeds if not repo.has(prompt, source, s)]
        if not seeds:
            continue
        with model.adapter(adapter):
            if args.cfg_interval > 1:  # fast mode: fast_sampling's own loop (Wan only; checked at start)
                videos, latents = fast_sampling.sample(model, [prompt] * len(seeds), seed=seeds,
                                                       cfg_interval=args.cfg_interval, **video)
            else:
                videos, latents = model.sample([prompt] * len(seeds), seed=seeds, **video)
        scored_add(videos, latents, [prompt] * len(seeds), source, seeds)
    parallel.barrier()
    return Repository(repo.root)  # re-read: the other processes' videos are on disk now


def select_pairs(repo, args, delta_id) -> dict:
    """Both rules over the whole repository; pairs as video ids plus the prompt each trains on."""
    table = repo.table()
    common = dict(delta_id=delta_id, max_pairs=args.max_pairs)
    identity = select_identity_pairs(table["r_id"], table["r_dyn"], table["prompt"], table["source"],
                                     tau_dyn=args.tau_dyn, **common)
    dynamic = select_dynamic_pairs(table["r_id"], table["r_dyn"], table["prompt"], table["source"],
                                   dyn_margin=args.dyn_margin, max_uses=args.max_uses, **common)
    ids = table["id"]
    out = {sel.rule: {"pairs": [[ids[w], ids[l]] for w, l in sel.pairs], "prompts": list(sel.prompts)}
           for sel in (identity, dynamic)}
    out["summary"] = summary(identity, dynamic)
    if parallel.is_main():
        print(f"pairs: {len(identity.pairs)} identity, {len(dynamic.pairs)} dynamic")
    return out


def dpo_loss_of_pair(model, repo, pairs, text_cache, args, run, stage, step, item):
    """The Diffusion-DPO loss of one pair of the step's batch (dpo.preference_step with B = 1)."""
    picks = np.random.default_rng(run.step_seed(stage, step)).integers(0, len(pairs["pairs"]), args.batch_size)
    winner, loser = pairs["pairs"][picks[item]]
    batch = {"latents_w": repo.latents(winner)[None],                     # [1, C, F, H, W]
             "latents_l": repo.latents(loser)[None],
             "text_emb": text_cache([pairs["prompts"][picks[item]]])}     # [1, L, D]
    autocast = torch.bfloat16 if model.dtype == torch.bfloat16 else None
    return preference_step(model, batch, beta=args.beta, sft_weight=args.sft_weight, autocast_dtype=autocast,
                           generator=torch.Generator().manual_seed(run.step_seed(stage, step, item)))


def copy_adapter(model, source: str, target: str) -> None:
    with torch.no_grad():
        for src, dst in zip(model.lora_parameters(source), model.lora_parameters(target)):
            dst.copy_(src)


class TextCache:
    """Prompt embeddings computed once per prompt: the text encoder never runs inside a step."""

    def __init__(self, model):
        self.model, self.cache = model, {}

    def __call__(self, prompts: list[str]) -> torch.Tensor:
        missing = [p for p in dict.fromkeys(prompts) if p not in self.cache]
        if missing:
            self.cache.update(zip(missing, self.model.encode_prompt(missing)))
        return torch.stack([self.cache[p] for p in prompts])


def read_prompts(path, person: str) -> list[str]:
    path = Path(path)
    if not path.is_file():
        sys.exit(f"error: prompts file {path} does not exist")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    prompts = [line.replace("{person}", person) for line in lines if line and not line.startswith("#")]
    if not prompts:
        sys.exit(f"error: {path} holds no prompts")
    return prompts


if __name__ == "__main__":
    main()

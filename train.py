"""train.py — MagicID end to end: a few photos of one person in, a LoRA that puts them in moving videos out.

The stages (METHOD.md steps 0–6), in the order this file runs them; each is resumable:

  0. references   photos -> face embeddings ē                                        faces.load_references
  1. identity     LoRA on static videos of the photos (self-reconstruction baseline):
                  min E ‖target(x_0, ε, t) − f_θ(x_t, t, "a photo of sks person")‖²  model.denoising_error
  2. repository   K videos per prompt from the initial model (LoRA off) and the identity model (LoRA on),
                  plus the static videos, each scored with r_id, r_dyn (, r_sem)      repository.build_repository
  3. pairs        identity pairs (static-first) and dynamic pairs (Pareto frontier)  sampling.select_*_pairs
  4. DPO          Diffusion-DPO on identity pairs, then on dynamic pairs; the reference is the identity
                  model (a frozen copy of its LoRA, no network copy)                dpo.preference_step
  5. report       base / identity-stage / MagicID rewards on held-out prompts, plots  evaluate.py, report.py

Every training stage is the same loop, `optimize` below: per step, the batch's losses are backpropagated
one item at a time, gradients summed (over processes too), clipped, one AdamW step, a checkpoint every
--checkpoint-every steps. Each stage's wall seconds go to <run>/timings.json (run.StageTimer), each step's to the log.

    python train.py --ref me.jpg --model tiny --out runs/tiny        # offline, CPU, a few minutes
    python train.py --ref me.jpg --ref me2.jpg --out runs/me         # Wan2.1-1.3B on one 80 GB GPU

Every step's randomness (batch, timestep, noise) is a function of (--seed, stage, step), so a run
killed at any point and started again with --resume ends with the same LoRA as one that never stopped.
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import comfy_lora
import evaluate
import fast_sampling
import parallel
import report
from dpo import BETA, preference_step
from faces import ID_CALIBRATION, ReferencePhotoError, different_people_message, load_references, make_face_encoder
from cli import HelpFormatter, add_model_args, load_model_from_args
from lora import LORA_TARGETS, ModelLoadError, copy_adapter
from prompt_files import PromptFileError, person_phrase, read_prompts
from judges import ClipScorer, load_judge
from rewards import score_videos
from repository import Repository, add_static_videos, build_repository
from run import Run, RunLock, StageTimer, StepLog, disk_full, resume_command, run_settings
from sampling import select_dynamic_pairs, select_identity_pairs, summary

PROMPTS_DIR = Path(__file__).resolve().parent / "prompts"

# The settings that differ between the offline toy-world preset (--model tiny, tiny-cogvideox) and a
# published backbone (Wan2.1 / CogVideoX on one 80 GB GPU); the preset follows --model (ours).
# tiny: the toy-world base (toyworld/README.md) learns a face it has never seen, and draws it in videos
# of other prompts, after ~800 steps at 2e-3 of a LoRA on attention and feed-forward layers (README run r_id
# 0.919; 0.928 at 1200 steps, which pushed the run past 5 minutes); its VAE draws one dlib can find when the
# face fills the frame (1.5 face heights). 2 evaluation seeds: time too (toyworld/benchmark.py keeps 1200 and 3).
# DPO at 2e-5 and β = 100: at 2e-4 or β = 2500 the loss saturates within ~10 steps (toyworld/README.md, dpo.py).
# published: 33-frame videos, 10 repository prompts (x 4 videos x 2 sources) and 6 report videos per model, so
# that a whole run takes under an hour on one H100 (bench/time_to_lora.py extrapolates this preset to 54 min; 81
# frames, 20 prompts and 12 report videos per model to ~3.7 h). generate.py still makes the model's 81 frames.
PRESETS = {
    "tiny": dict(identity_steps=800, dpo_identity_steps=60, dpo_dynamic_steps=60, lr=2e-3, dpo_lr=2e-5,
                 rank=64, lora_targets="attention+ffn", face_framing=1.5, batch_size=2, videos_per_prompt=4,
                 num_prompts=4, static_videos=4, eval_prompts=3, eval_seeds=2, sample_steps=12, checkpoint_every=50,
                 grad_checkpointing=False, beta=100.0, frames=None),
    "published": dict(identity_steps=800, dpo_identity_steps=300, dpo_dynamic_steps=300, lr=1e-4, dpo_lr=1e-5,
                      rank=64, lora_targets="attention", face_framing=3.0, batch_size=1, videos_per_prompt=4,
                      num_prompts=10, static_videos=16, eval_prompts=3, eval_seeds=2, sample_steps=30,
                      checkpoint_every=100, grad_checkpointing=True, beta=BETA, frames=33),
}


def preset_name(model: str) -> str:
    return "tiny" if model.startswith("tiny") else "published"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)

    def preset_arg(group, flag, help, **kwargs):
        """A flag whose default comes from PRESETS, shown in --help as 'tiny X / published Y'."""
        key = flag.lstrip("-").replace("-", "_")
        shown = " / ".join(f"{name} {PRESETS[name][key]}" for name in PRESETS)
        group.add_argument(flag, default=None, help=f"{help} (default by --model: {shown})", **kwargs)

    p.add_argument("--ref", action="append", required=True, help="a photo (or folder of photos) of the person; repeatable")
    p.add_argument("--out", default=None, help="run folder (default: runs/<first photo's name>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out where it stopped")
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice in the run")
    p.add_argument("--token", default="sks", help="the rare word that names the person in prompts")
    p.add_argument("--prompts", default=str(PROMPTS_DIR / "train.txt"), help="repository prompts, one per line")
    p.add_argument("--heldout-prompts", default=str(PROMPTS_DIR / "heldout.txt"), help="evaluation prompts")
    add_model_args(p)
    g = p.add_argument_group("schedule (defaults follow --model: the tiny preset, or a published backbone)")
    preset_arg(g, "--identity-steps", "identity-stage LoRA steps", type=int)
    preset_arg(g, "--dpo-identity-steps", "DPO steps on identity pairs", type=int)
    preset_arg(g, "--dpo-dynamic-steps", "DPO steps on dynamic pairs", type=int)
    g.add_argument("--rounds", type=int, default=1, help="preference rounds; >1 regenerates the repository with "
                                                         "the current model (online, ours)")
    preset_arg(g, "--lr", "identity-stage learning rate", type=float)
    preset_arg(g, "--dpo-lr", "DPO learning rate", type=float)
    g.add_argument("--warmup", type=int, default=10, help="linear learning-rate warm-up, steps")
    preset_arg(g, "--rank", "LoRA rank", type=int)
    preset_arg(g, "--lora-targets", "layers the LoRA adapts", choices=sorted(LORA_TARGETS))
    preset_arg(g, "--batch-size", "videos (identity) or pairs (DPO) per step", type=int)
    preset_arg(g, "--checkpoint-every", "steps between checkpoints", type=int)
    preset_arg(g, "--grad-checkpointing", "recompute block activations in backward: less memory, slower",
               action=argparse.BooleanOptionalAction)
    g.add_argument("--checkpoint-blocks", type=int, default=None,
                   help="with --grad-checkpointing, recompute only the first N blocks (None: all; Wan-1.3B's "
                        "DPO step at 33 frames on an H100: all at 12.7 GiB, 23 1.17 s/step at 23.2 GiB, 0 1.08 s at "
                        "58.7 GiB plus the text encoder's 11 GiB: bench/NOTES.md)")
    g.add_argument("--offload-blocks", type=int, default=0,
                   help="with --grad-checkpointing, K blocks whose saved activations wait in host memory instead of "
                        "being recomputed (offload.py): of the first N + K blocks (N: --checkpoint-blocks; all blocks "
                        "without it), K evenly spread go to the host, the rest are recomputed. Free while the "
                        "copies hide under compute: measured on an H100 with --fp8 at 33 frames, --checkpoint-blocks "
                        "16 --offload-blocks 6 is 1.086 s/step at 22.4 GiB vs 22 recomputed 1.100 s at 23.6 GiB; needs "
                        "~1.7 GiB of host memory a block")
    v = p.add_argument_group("videos")
    preset_arg(v, "--frames", "frames per training and report video, 4k+1 (None: the model's)", type=int)
    v.add_argument("--height", type=int, default=None, help="pixels (None: the model's)")
    v.add_argument("--width", type=int, default=None, help="pixels (None: the model's)")
    preset_arg(v, "--sample-steps", "denoising steps when generating", type=int)
    v.add_argument("--cfg-interval", type=int, default=1,
                   help="repository fast mode (Wan): the unconditional CFG branch only every k-th step, lossy; "
                        "1 = exact (bench/NOTES.md measures its speed and its effect on the rewards)")
    v.add_argument("--cache", default=None,
                   help="repository fast mode (Wan), lossy: a diffusers cache hook that skips transformer blocks "
                        "while the output barely changes, e.g. sea:0.3 (fast_sampling.cache_config; bench/NOTES.md)")
    preset_arg(v, "--static-videos", "static videos made from the photos", type=int)
    preset_arg(v, "--face-framing", "static videos show the photo cropped to this many face heights (0: whole photo)",
               type=float)
    v.add_argument("--jitter", type=float, default=0.1, help="static-video crop/scale jitter, fraction of the side")
    r = p.add_argument_group("repository, rewards and pairs")
    preset_arg(r, "--num-prompts", "repository prompts used from --prompts", type=int)
    preset_arg(r, "--videos-per-prompt", "K videos per prompt and model", type=int)
    r.add_argument("--id-backend", default="auto", choices=["auto", "dlib", "insightface"], help="ID encoder")
    r.add_argument("--id-model-root", default=None, help="insightface model pack folder")
    r.add_argument("--judge", default=None, help="prompt reward r_sem: clip:DIR (a local CLIP folder) or vlm:DIR (a "
                                                 "local VLM folder, the paper's choice); None: r_sem off")
    r.add_argument("--sem-floor", type=float, default=None,
                   help="with --judge: generated videos with r_sem below this take part in no pair; the scale is the "
                        "judge's: a CLIP cosine (~0.2-0.35 for a match) or a VLM's P(yes) in [0, 1] (None: no floor)")
    r.add_argument("--delta-id", type=float, default=None, help="identity margin δ_id (None: the backend's calibration)")
    r.add_argument("--tau-dyn", type=float, default=2.0, help="max |Δr_dyn| of an identity pair, px at 256-px side")
    r.add_argument("--dyn-margin", type=float, default=0.2, help="relative r_dyn margin of a dynamic pair")
    r.add_argument("--dyn-id-tolerance", type=float, default=0.0,
                   help="a dynamic winner may trail its loser's r_id by this much (0: the paper's dominance; an "
                        "investigation switch, toyworld/README.md)")
    r.add_argument("--max-pairs", type=int, default=None, help="keep at most this many pairs per rule (None: all)")
    r.add_argument("--max-uses", type=int, default=2, help="times one video may appear in dynamic pairs")
    d = p.add_argument_group("preference optimization")
    preset_arg(d, "--beta", "Diffusion-DPO β (dpo.py says why these)", type=float)
    d.add_argument("--sft-weight", type=float, default=0.0, help="weight of a denoising loss on winners")
    e = p.add_argument_group("report")
    preset_arg(e, "--eval-prompts", "held-out prompts in the report", type=int)
    preset_arg(e, "--eval-seeds", "seeds per held-out prompt", type=int)
    args = p.parse_args(argv)
    for key, value in PRESETS[preset_name(args.model)].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.out = args.out or str(Path("runs") / Path(args.ref[0]).stem)
    return args


def main(argv=None) -> Path:
    """The command line: train(args), with Ctrl-C and a full disk answered by the command that continues."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    try:
        return train(args)
    except KeyboardInterrupt:
        print(f"\ninterrupted: continue with {resume_command(argv, args.out)}", file=sys.stderr)
        sys.exit(130)
    except Exception as error:
        if not disk_full(error):
            raise
        sys.exit(f"error: the disk holding {args.out} is full ({error}). Free some space, then continue (the "
                 f"run keeps what it finished): {resume_command(argv, args.out)}")


def train(args) -> Path:
    """Stages 0-5 on the photos of --ref, in the run folder --out; returns it."""
    # On a CPU, a saturated DPO loss sends gradients into the denormal range, where x86 arithmetic
    # is ~10-100× slower (measured: saturated tiny DPO steps took 1-3 s instead of 0.2 s); zero them instead.
    torch.set_flush_denormal(True)
    person = person_phrase(args.token)
    lock, timer = None, StageTimer()  # wall seconds of every stage: <run>/timings.json, a table at the end
    try:  # every input checked before anything slow loads; a failed start leaves no run folder behind
        lock = RunLock(args.out)  # one train.py per run folder
        train_prompts = read_prompts(args.prompts, person)[:args.num_prompts]
        heldout_prompts = read_prompts(args.heldout_prompts, person)[:args.eval_prompts]
        identity_captions = read_prompts(PROMPTS_DIR / "identity.txt", person)
        encoder = make_face_encoder(args.id_backend, args.id_model_root)
        refs = load_references(args.ref, encoder)  # 0. References: the person's face, embedded once.
        if mixed := different_people_message(refs):  # a warning, not a refusal: faces.py says why
            print(f"WARNING: {mixed}", file=sys.stderr)
        settings = run_settings(vars(args), refs.paths, encoder.name,  # a resumed run must match them
                                {"prompts": train_prompts, "heldout_prompts": heldout_prompts})
        Run.check_out(args.out, args.resume, settings)  # not a finished run without --resume, nor another run
        if args.sem_floor is not None and not args.judge:
            raise ValueError("--sem-floor needs a prompt judge: add --judge clip:DIR or --judge vlm:DIR")
        with timer("model load"):
            judge = load_judge(args.judge, str(parallel.device())) if args.judge else None
            model = load_model_from_args(args, args.grad_checkpointing, args.checkpoint_blocks, args.offload_blocks)
        model.check_video_size(args.frames, args.height, args.width)
        if (args.cfg_interval > 1 or args.cache) and not fast_sampling.supports(model):
            raise ValueError(f"--cfg-interval and --cache need a flow-matching (Wan) model; {args.model!r} samples "
                             "with its own pipeline: leave them out")
        run = Run(args.out, config=vars(args), resume=args.resume, settings=settings, timer=timer)
    except BaseException as error:
        if lock is not None:
            lock.abandon()
        if isinstance(error, (PromptFileError, ReferencePhotoError, ModelLoadError, FileNotFoundError, ValueError)):
            sys.exit(f"error: {error}")
        raise
    delta_id = args.delta_id if args.delta_id is not None else ID_CALIBRATION[encoder.name].delta_id
    run.log("setup", 0, {"id_backend": encoder.describe(), "delta_id": delta_id, "references": len(refs.paths),
                         "prompt_judge": judge.name if judge else "off"})
    repo = Repository(run.dir / "repository")
    video = dict(frames=args.frames, height=args.height, width=args.width, steps=args.sample_steps)
    with timer("text encoder"):  # every prompt of the run encoded once, up front (low memory: one visit of the GPU)
        model.cache_prompts(identity_captions + train_prompts + heldout_prompts + [""])

    def scored_add(videos, latents, prompts, source, seeds):
        rows = score_videos(videos, prompts, refs, encoder, judge, fps=model.defaults.fps, progress=False)
        for clip, z, prompt, seed, row in zip(videos, latents, prompts, seeds, rows):
            repo.add(z, prompt, source, row, seed, video=clip)

    # 1. Identity stage: static videos of the photos, then a LoRA that reconstructs them.
    with timer("static videos", args.static_videos):
        add_static_videos(repo, model, refs, encoder, args, identity_captions, scored_add)
    repo = Repository(repo.root)  # every process sees every static video
    model.add_lora(args.rank, args.lora_targets, name="default", seed=args.seed)
    statics = [e for e in repo.entries() if e["source"] == "static"]
    with timer("identity", args.identity_steps):
        optimize(run, "identity", model, args.identity_steps, args.lr, args,
                 partial(reconstruction_loss, model, repo, statics, args, partial(run.step_seed, "identity")))
    run.save_stage_lora(model, "identity")

    # 2-4. Repository, pairs, preference optimization; later rounds regenerate with the current model.
    model.load_lora(str(run.dir / "identity_lora"), name="reference", trainable=False)
    model.set_adapter("default")
    for round_index in range(args.rounds):
        repo = build_repository(repo, model, train_prompts, round_index, args, video, scored_add, timer)
        with timer("pairs"):
            pairs = select_pairs(repo, args, delta_id, judged=judge is not None)
        run.write_json(f"pairs_round{round_index}.json", pairs)
        for rule in ("identity", "dynamic"):
            stage, chosen = f"dpo_{rule}_round{round_index}", pairs[rule]
            steps = getattr(args, f"dpo_{rule}_steps") if chosen["pairs"] else 0
            with timer(stage, steps):
                optimize(run, stage, model, steps, args.dpo_lr, args,
                         partial(dpo_loss_of_pair, model, repo, chosen, args, partial(run.step_seed, stage)))
        if round_index + 1 < args.rounds:  # online: the next round's reference is this round's result
            copy_adapter(model, "default", "reference")
    run.save_stage_lora(model, "magicid")
    if parallel.is_main():  # the same LoRA under ComfyUI's key names, next to it
        comfy_lora.write_comfy_lora(run.dir / "magicid_lora")

    # 5. Report: the three models on held-out prompts, and how training went.
    variants = {"base": None, "identity stage": "reference", "MagicID": "default"}
    if args.rounds > 1:  # the reference moved; put the identity-stage LoRA back for the comparison
        model.load_lora(str(run.dir / "identity_lora"), name="identity", trainable=False)
        variants["identity stage"] = "identity"
    if parallel.is_main():  # the other processes are done: their LoRA is the main one's
        with timer("evaluation videos", len(variants) * len(heldout_prompts) * args.eval_seeds):
            results = evaluate.evaluate(model, variants, heldout_prompts, args.eval_seeds, refs, encoder, video,
                                        cache_dir=run.dir / "eval", seed=args.seed + 10_000, judge=judge,
                                        clip=judge if isinstance(judge, ClipScorer) else None)  # CLIP-T needs a CLIP
        model.set_adapter("default")
        with timer("report"):
            path = report.write_report(run.dir, results, repo, run.read_log(), encoder.describe())
        print(f"{timer.table()}\nMagicID LoRA: {run.dir / 'magicid_lora'}\nreport: {path}")
    return run.dir


# ---------------------------------------------------------------------- the training loop of every stage

def optimize(run: Run, stage: str, model, steps: int, lr: float, args, item_loss) -> None:
    """Train the "default" LoRA for `steps` AdamW steps of `stage`, resuming from its last checkpoint.

        for step:  lr_step = lr · min(1, (step + 1) / warmup)                       linear warm-up
                   g = Σ_items ∇ item_loss(step, item) / batch_size                 one item at a time
                   clip ‖g‖ to 1;  AdamW step;  log;  checkpoint every N steps and at the end

    item_loss(step, i) -> (loss, metrics of 0-d tensors) computes batch item i of the step. Items are spread
    over processes (parallel.py) and each one is backpropagated on its own (gradient accumulation), so
    memory holds one item's activations whatever the batch. A step's metrics become numbers a step late
    (run.StepLog), so the GPU never waits for the host between steps.
    """
    params = model.lora_parameters("default")
    # fused: one kernel for all ~500 LoRA tensors on a GPU instead of a few per group (the bench's optimizer too)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, fused=params[0].is_cuda)
    start = run.restore(stage, params, optimizer)
    if run.is_done(stage) or steps == 0:
        run.finish(stage)
        return
    rank, world = parallel.rank_and_world()
    step_log = StepLog(run, stage)  # each step's numbers, written once the next step is queued on the GPU
    for step in tqdm(range(start, steps), desc=stage, unit="step", initial=start, total=steps,
                     disable=not parallel.is_main()):
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / max(1, args.warmup))
        optimizer.zero_grad(set_to_none=False)
        totals = {}
        for item in range(rank, args.batch_size, world):
            loss, metrics = item_loss(step, item)
            (loss / args.batch_size).backward()
            for key, value in metrics.items():
                totals[key] = totals.get(key, 0.0) + value.detach().double()
        parallel.sum_across([p.grad for p in params])  # Σ over processes of Σ over their items
        grad_norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        keys = sorted(totals)
        means = torch.stack([totals[k] for k in keys]).to(params[0].device)  # [metrics], float64
        parallel.sum_across([means])
        step_log.add(step, keys + ["grad_norm"], torch.cat([means / args.batch_size, grad_norm.double().view(1)]),
                     lr=optimizer.param_groups[0]["lr"])
        if (step + 1) % args.checkpoint_every == 0 or step + 1 == steps:
            step_log.flush()  # the log holds every step a checkpoint holds
            run.save_checkpoint(stage, step + 1, params, optimizer)
    if model.offload is not None:  # --offload-blocks: the stage's pinned host buffers go back
        model.offload.release()
    run.finish(stage)


# ---------------------------------------------------------------------- stage 1: identity

def reconstruction_loss(model, repo, statics, args, step_seed, step, item):
    """The identity stage's loss on one static video: plain denoising (the self-reconstruction baseline).
    step_seed(step[, item]) seeds the step's draws: which videos, t and ε."""
    picks = np.random.default_rng(step_seed(step)).integers(0, len(statics), args.batch_size)
    video = statics[picks[item]]
    x0 = model.to_device(repo.latents(video["id"])[None].float())          # [1, C, F, H, W]
    generator = torch.Generator().manual_seed(step_seed(step, item))
    t = model.sample_timesteps(1, generator)                               # [1]
    noise = model.to_device(torch.randn(x0.shape, generator=generator))    # [1, C, F, H, W]
    loss = model.denoising_error(x0, noise, t, model.encode_prompt([video["prompt"]])).mean()
    return loss, {"loss": loss.detach()}


# ---------------------------------------------------------------------- stages 2-4: repository, pairs, DPO

def select_pairs(repo, args, delta_id, judged: bool) -> dict:
    """Both rules over the whole repository; pairs as video ids plus the prompt each trains on.
    With a prompt judge, r_sem floors both rules and is the dynamic frontier's third objective (sampling.py)."""
    table = repo.table()
    common = dict(delta_id=delta_id, max_pairs=args.max_pairs,
                  r_sem=table["r_sem"] if judged else None, sem_floor=args.sem_floor)
    identity = select_identity_pairs(table["r_id"], table["r_dyn"], table["prompt"], table["source"],
                                     tau_dyn=args.tau_dyn, **common)
    dynamic = select_dynamic_pairs(table["r_id"], table["r_dyn"], table["prompt"], table["source"],
                                   dyn_margin=args.dyn_margin, max_uses=args.max_uses,
                                   id_tolerance=args.dyn_id_tolerance, **common)
    ids = table["id"]
    out = {sel.rule: {"pairs": [[ids[w], ids[l]] for w, l in sel.pairs], "prompts": list(sel.prompts)}
           for sel in (identity, dynamic)}
    out["summary"] = summary(identity, dynamic)
    if parallel.is_main():
        print(f"pairs: {len(identity.pairs)} identity, {len(dynamic.pairs)} dynamic")
    return out


def dpo_loss_of_pair(model, repo, pairs, args, step_seed, step, item):
    """The Diffusion-DPO loss of one pair of the step's batch (dpo.preference_step with B = 1)."""
    picks = np.random.default_rng(step_seed(step)).integers(0, len(pairs["pairs"]), args.batch_size)
    winner, loser = pairs["pairs"][picks[item]]
    batch = {"latents_w": repo.latents(winner)[None],                     # [1, C, F, H, W]
             "latents_l": repo.latents(loser)[None],
             "text_emb": model.encode_prompt([pairs["prompts"][picks[item]]])}  # [1, L, D]
    return preference_step(model, batch, beta=args.beta, sft_weight=args.sft_weight,
                           generator=torch.Generator().manual_seed(step_seed(step, item)))


if __name__ == "__main__":
    main()

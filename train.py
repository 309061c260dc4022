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
import json
import shlex
import sys
from functools import partial
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import comfy_lora
import evaluate
import fast_sampling
import flags
import parallel
import report
from dpo import BETA, beta_from_error_gaps, preference_step
from faces import ID_CALIBRATION, ReferencePhotoError, different_people_message, load_references, make_face_encoder
from cli import PROMPTS_DIR, load_model_from_args, parse_train_args
from lora import ModelLoadError, copy_adapter
from prompt_files import PromptFileError, person_phrase, read_prompts
from judges import ClipScorer, load_judge
from rewards import score_videos
from repository import Repository, add_static_videos, build_repository
from run import Run, RunLock, StageTimer, StepLog, disk_full, resume_command, run_settings
from sampling import select_dynamic_pairs, select_identity_pairs, summary

# --beta auto: pairs per DPO phase whose reference errors set β (dpo.beta_from_error_gaps); their draws are the
# ones the phase's first steps train on, so β is set where training starts.
BETA_DRAWS = 8


def parse_args(argv=None) -> argparse.Namespace:
    """The command line (cli.parse_train_args: flags, the --model preset's defaults), every value checked before
    anything loads (flags.check_train_args): a value that cannot work ends here, one line on stderr, exit 2."""
    return flags.parse_or_exit("train.py", partial(parse_train_args, description=__doc__), flags.check_train_args,
                               argv)


def main(argv=None) -> Path:
    """The command line: train(args), with Ctrl-C and a full disk answered by the command that continues."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    try:
        return train(args)
    except KeyboardInterrupt:  # before the run folder holds a run, --resume would be refused: start it again
        start_again = shlex.join(["python", "train.py", *argv])
        again = resume_command(argv, args.out) if flags.holds_run(args.out) else start_again
        print(f"\ninterrupted: continue with {again}", file=sys.stderr)
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
        pairs_file = run.dir / f"pairs_round{round_index}.json"
        if pairs_file.exists():  # resumed: the round's own pairs (the repository has grown since, in later rounds)
            pairs = json.loads(pairs_file.read_text())
        else:
            with timer("pairs"):
                pairs = select_pairs(repo, args, delta_id, judged=judge is not None)
            run.write_json(pairs_file.name, pairs)
        beta = args.beta if args.beta != "auto" else calibrated_beta(run, model, repo, pairs, args, round_index)
        for rule in ("identity", "dynamic"):
            stage, chosen = f"dpo_{rule}_round{round_index}", pairs[rule]
            steps = getattr(args, f"dpo_{rule}_steps") if chosen["pairs"] else 0
            with timer(stage, steps):
                optimize(run, stage, model, steps, args.dpo_lr, args,
                         partial(dpo_loss_of_pair, model, repo, chosen, args, beta, partial(run.step_seed, stage)))
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
    if lock is not None:
        lock.release()   # finished: a caller in this process (benchmark.py, tests) may resume it
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
        # a two-expert model (Wan2.2-A14B) runs the items of one expert together: one weight move a step at most
        items = model.order_items(range(rank, args.batch_size, world), partial(run.step_seed, stage, step))
        for item in items:
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


def dpo_loss_of_pair(model, repo, pairs, args, beta, step_seed, step, item):
    """The Diffusion-DPO loss of one pair of the step's batch (dpo.preference_step with B = 1)."""
    batch = pair_batch(model, repo, pairs, args, step_seed, step, item)
    return preference_step(model, batch, beta=beta, sft_weight=args.sft_weight,
                           generator=torch.Generator().manual_seed(step_seed(step, item)))


def pair_batch(model, repo, pairs, args, step_seed, step, item) -> dict:
    """Item `item` of DPO step `step`: a pair drawn by the step's seed, as preference_step's batch."""
    picks = np.random.default_rng(step_seed(step)).integers(0, len(pairs["pairs"]), args.batch_size)
    winner, loser = pairs["pairs"][picks[item]]
    return {"latents_w": repo.latents(winner)[None],                      # [1, C, F, H, W]
            "latents_l": repo.latents(loser)[None],
            "text_emb": model.encode_prompt([pairs["prompts"][picks[item]]])}  # [1, L, D]


def calibrated_beta(run, model, repo, pairs, args, round_index) -> float:
    """--beta auto (ours, dpo.beta_from_error_gaps): β/2 · the reference's median |e_ref(x_w) − e_ref(x_l)| = 1,
    measured on the pairs and the (t, ε) draws of each DPO phase's first BETA_DRAWS items, the ones training
    starts on. Kept in the run folder (beta_round<r>.json): a resumed run goes on with the same β."""
    path = run.dir / f"beta_round{round_index}.json"
    if path.exists():
        return json.loads(path.read_text())["beta"]
    errors = []                                                            # [(e_ref(x_w), e_ref(x_l))]
    for rule in ("identity", "dynamic"):
        step_seed = partial(run.step_seed, f"dpo_{rule}_round{round_index}")
        for draw in range(BETA_DRAWS if pairs[rule]["pairs"] else 0):
            step, item = divmod(draw, args.batch_size)
            batch = pair_batch(model, repo, pairs[rule], args, step_seed, step, item)
            with torch.no_grad():  # the reference as "policy" too: its metrics' err_w, err_l are e_ref
                _, metrics = preference_step(model, batch, policy_adapter="reference",
                                             generator=torch.Generator().manual_seed(step_seed(step, item)))
            errors.append((metrics["err_w"].item(), metrics["err_l"].item()))
    if not errors:  # no pairs at all: no DPO step will run, any β does
        return BETA
    e_w, e_l = torch.tensor(errors, dtype=torch.float64).T
    beta = beta_from_error_gaps(e_w, e_l)
    run.write_json(path.name, {"beta": beta, "median_gap": 2 / beta, "draws": len(errors), "rule": "dpo.py"})
    run.log("dpo_beta", round_index, {"beta": beta, "median_gap": 2 / beta})
    if parallel.is_main():
        print(f"β = {beta:.4g} (--beta auto: 2 / the median reference error gap {2 / beta:.3g}, {len(errors)} pairs)")
    return beta


if __name__ == "__main__":
    main()

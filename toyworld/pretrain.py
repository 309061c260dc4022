"""toyworld/pretrain.py — the toy world: a tiny text-to-video base that knows motion, trained from scratch in minutes.

MagicID's claims are about motion: self-reconstruction on still photos kills it, preference learning
keeps it. A random-init model has no motion to lose, so this script gives the `--model tiny` preset
(tiny.py: Wan2.1's own classes at a small size) a world to know, with no face in it:

  data         a canvas seen through a moving camera (world.py: a scikit-image photo without a face, or a
               procedural canvas; the camera pans, tilts, zooms, sways, shakes, or stays still), captioned
               "a cat, camera pans left", "a photo of a rocket" (still).
  VAE          L = |x − D(z)|₁ + λ_∇·|∇x − ∇D(z)|₁ + λ_KL·KL(q(z|x) ‖ N(0, I)),   z ~ q(z|x)
               then an affine map folded into its 1×1 convs, so that the latent normalization model.py
               applies (the config's latents_mean/std) gives zero-mean, unit-variance latents.
  people       half the videos (--people-share) show one generic, procedurally drawn person (people.py:
               never a real identity) who walks left or right, turns, nods, waves, talks or comes closer
               while the camera holds still, or stands while the camera moves: "a person waves, camera
               still", "a blond person, camera pans left". The benchmark's "a sks person, ..." prompts
               then have a person with a face and motion to start from (MagicID's dynamic pairs need one).
  transformer  flow matching on those latents, with model.py's own objective (what the LoRA stages use),
               plus the same error's frame-to-frame differences (ours, --motion-weight λ_Δ):
               e = (ε − x_0) − f_θ((1 − σ)·x_0 + σ·ε, t, c),   L = ‖e‖² + λ_Δ·‖e[:, :, 1:] − e[:, :, :-1]‖²
               The extra term is a positive semi-definite quadratic form in e, so its minimizer is still
               E[ε − x_0 | x_t, c]; it only weights the part of the error that is motion. Why: the first
               base moved but ignored its captions' direction (0 of 12). A right caption lowered its
               loss by 0.3 % over the opposite one (0.3372 vs 0.3383 on 64 pans), so direction was almost
               free to ignore; the VAE keeps it (pans reconstruct with the right sign) and the text
               encoder separates the words (cosine 0.75 between "pans left" and "pans right").
               --face-weight λ_face (ours, the population base) weights the latent cells that show a head:
               L = Σ w·e² / Σ w (+ the same for the differences), w = 1 + (λ_face − 1)·[cell shows the head],
               so the few cells that hold eyes and mouth get the share of the gradient a face detector needs.
               The caption is dropped 10 % of the time (classifier-free guidance). The text encoder
               trains with it. Weights are an exponential moving average of the trained ones.
Each phase stops at its step count or its share of --budget-s, whichever comes first; the log says
which. Writes <out>/{vae,transformer,text_encoder}.safetensors, which tiny.py loads from weights/tiny/.

    python toyworld/pretrain.py --device cuda --out weights/tiny            # toyworld/README.md: the exact run
    python toyworld/pretrain.py --model tiny-toyworld --device cuda         # the population base (issue 26)

--model tiny-toyworld (PRESET_ARGS) is the population base: tiny.py's 16.4 M-parameter transformer on tiny's
VAE (kept as it is), people drawn from the identity population (identities.PopulationWorld: seeds below
1,000,000 only; held-out seeds are refused), the transformer saved in bf16 (33 MB), 540 s a run: the device
allows 10 min a call, so the base is three runs, the later ones with --init weights/tiny-toyworld (≤ 25 min
in all; toyworld/README.md has the commands).

Exports: main, parse_args, calibrate_latents (the world's videos: toyworld/world.py).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tiny.py, model.py

import tiny  # noqa: E402
from model import DEFAULTS, VideoModel  # noqa: E402
from run import replacing  # noqa: E402

from toyworld.identities import PopulationWorld  # noqa: E402
from toyworld.people import PeopleWorld  # noqa: E402
from toyworld.world import ToyWorld  # noqa: E402

# Each preset's run, as flag defaults (a flag given on the command line wins). tiny: see toyworld/README.md.
PRESET_ARGS = {
    "tiny": {},
    "tiny-toyworld": dict(vae_steps=0, vae_share=0.0, people_share=0.7, population=True, budget_s=540.0,
                          dit_batch=256, dit_lr=5e-4, pool_share=0.1, warmup=200, ema=0.998, reserve_s=40.0,
                          transformer_dtype="bf16", save_every_s=120.0),
}


def main(argv=None) -> None:
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    start = time.time()
    torch.manual_seed(args.seed)
    torch.backends.cudnn.benchmark = True  # the VAE's 3-D convolutions: pick the fastest kernels once
    device = torch.device(args.device)
    pipe = tiny.build_tiny_pipeline(args.model, pretrained=False)
    if args.model == "tiny-toyworld":  # tiny's VAE (its latent space, loaded from weights/tiny by tiny.py too)
        tiny.load_pretrained_weights(pipe, os.path.join(tiny.TINY_WEIGHTS_DIR, "tiny"), components=("vae", "text_encoder"))
    if args.init:  # continue from an earlier run's weights
        tiny.load_pretrained_weights(pipe, args.init)
    pipe.to(device)
    model = VideoModel(pipe, "wan", DEFAULTS["tiny"], "tiny")  # the objective of every later stage
    if args.face_weight != 1.0 and not args.population:
        raise SystemExit("pretrain.py: error: --face-weight needs --population (only identities.py's people give head boxes)")
    world = ToyWorld(device, seed=args.seed, people_share=args.people_share)
    # people from identity seeds 0..999,999 (identities.py), or a fresh random look per video (people.py)
    world.people = PopulationWorld(world) if args.population else PeopleWorld(world)
    log = Log(os.path.join(args.out, "pretrain_log.jsonl"))
    log("setup", {"device": str(device), "canvases": world.describe(), "args": vars(args)})
    autocast = torch.autocast(device.type, torch.bfloat16, enabled=args.bf16)

    if args.vae_steps > 0:  # else the VAE (of --init) and so its latent space stay as they are
        train_vae(pipe.vae, world, args, start + args.vae_share * args.budget_s, autocast, log)
        calibrate_latents(pipe.vae, world, args, autocast, log)
    vae = ["vae"] if args.model == "tiny" else []                            # tiny-toyworld reads weights/tiny's
    save(pipe, vae, args.out)

    pools = encode_pool(model, world, args, start + (args.vae_share + args.pool_share) * args.budget_s, autocast, log)
    train_transformer(model, pools, args, start + args.budget_s - args.reserve_s, autocast, log)
    save(pipe, vae + ["transformer", "text_encoder"], args.out, args.transformer_dtype)
    log("done", {"seconds": time.time() - start})


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny", choices=sorted(PRESET_ARGS), help="which tiny.py preset to pretrain")
    p.add_argument("--out", default=None, help="folder for the weights and log (default: weights/<model>)")
    p.add_argument("--population", action="store_true",
                   help="people from the identity population (toyworld/identities.py) instead of people.py's looks")
    p.add_argument("--transformer-dtype", default="fp32", choices=("fp32", "bf16"), help="the saved transformer's dtype")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init", default=None, help="folder of weights to continue from (an earlier --out)")
    p.add_argument("--budget-s", type=float, default=520.0, help="wall-clock seconds for the whole run")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None, help="bf16 autocast (default: on CUDA)")
    p.add_argument("--size", type=int, default=DEFAULTS["tiny"].height, help="video side, px (the preset's 128)")
    p.add_argument("--frames", type=int, default=DEFAULTS["tiny"].frames, help="frames of the VAE's and most pooled videos")
    p.add_argument("--vae-steps", type=int, default=20000, help="VAE steps (or its share of the budget)")
    p.add_argument("--vae-batch", type=int, default=8, help="videos per VAE step")
    p.add_argument("--vae-image-batch", type=int, default=48, help="single frames per VAE step, besides the videos")
    p.add_argument("--vae-lr", type=float, default=2e-3)
    p.add_argument("--vae-share", type=float, default=0.58, help="fraction of --budget-s for the VAE")
    p.add_argument("--grad-weight", type=float, default=0.5, help="λ_∇: L1 on image gradients (sharp edges)")
    p.add_argument("--kl-weight", type=float, default=1e-4, help="λ_KL, per latent element vs per pixel")
    p.add_argument("--pool-videos", type=int, default=24576, help="videos encoded once for the transformer")
    p.add_argument("--long-fraction", type=float, default=0.25, help="of those, the fraction with --long-frames")
    p.add_argument("--long-frames", type=int, default=17, help="longer videos, so sampling past 9 frames works")
    p.add_argument("--pool-share", type=float, default=0.06, help="fraction of --budget-s for encoding the pool")
    p.add_argument("--dit-steps", type=int, default=20000, help="transformer steps (or the rest of the budget)")
    p.add_argument("--dit-batch", type=int, default=128, help="latent videos per transformer step")
    p.add_argument("--dit-lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=200, help="linear warm-up steps of both phases")
    p.add_argument("--ema", type=float, default=0.999, help="EMA decay of the transformer and text encoder")
    p.add_argument("--people-share", type=float, default=0.5, help="fraction of videos showing a person (people.py)")
    p.add_argument("--motion-weight", type=float, default=1.0,
                   help="λ_Δ: weight of the frame-to-frame error term (direction; see train_transformer)")
    p.add_argument("--face-weight", type=float, default=1.0,
                   help="λ_face: weight of the latent cells that show a head in the transformer's loss (--population)")
    p.add_argument("--caption-dropout", type=float, default=0.1, help="empty caption, for guidance")
    p.add_argument("--reserve-s", type=float, default=20.0, help="seconds kept at the end for saving")
    p.add_argument("--save-every-s", type=float, default=60.0, help="write the weights this often")
    model = p.parse_known_args(argv)[0].model
    p.set_defaults(**PRESET_ARGS[model])                                     # the preset's run; flags still win
    args = p.parse_args(argv)
    args.out = args.out or os.path.join(tiny.TINY_WEIGHTS_DIR, args.model)
    if args.bf16 is None:
        args.bf16 = args.device.startswith("cuda")
    return args


# ---------------------------------------------------------------------- phase 1: the VAE

def train_vae(vae, world, args, deadline, autocast, log) -> None:
    """Reconstruction with a sampled latent, plus edges and a small KL (the docstring's L_VAE), on a
    batch of videos and a batch of single frames each step (frames: more scenes for the same compute)."""
    if not args.init:  # a pretrained VAE (--init) is fine-tuned as it is
        init_encoder_scale(vae, world, args)
    vae.requires_grad_(True).train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, betas=(0.9, 0.99), weight_decay=0.0)
    step, t0 = 0, time.time()
    while step < args.vae_steps and time.time() < deadline:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(args.vae_lr, step, args.vae_steps, args.warmup, t0, deadline)
        optimizer.zero_grad(set_to_none=True)
        for batch, frames in ((args.vae_batch, args.frames), (args.vae_image_batch, 1)):
            x, _, _ = world.batch(batch, frames, args.size)                  # [B, 3, F, H, W]
            loss, metrics = _vae_loss(vae, x, args, autocast)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        if step % 100 == 0:
            log("vae", {"step": step, **metrics, "seconds": time.time() - t0})  # metrics of the frames batch
        step += 1
    log("vae_end", {"steps": step, "stopped_by": "steps" if step >= args.vae_steps else "budget",
                    "seconds": time.time() - t0})
    vae.requires_grad_(False).eval()


def learning_rate(peak, step, steps, warmup, start, deadline) -> float:
    """Linear warm-up, then a cosine from peak to peak/10 over the phase, whose progress is the larger
    of its steps and its wall-clock budget used (the phase ends at whichever runs out first)."""
    progress = min(1.0, max(step / steps, (time.time() - start) / max(1e-9, deadline - start)))
    return peak * min(1.0, (step + 1) / warmup) * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))


def _vae_loss(vae, x, args, autocast):
    with autocast:
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample.float()                # [B, 3, F, H, W]
    l1 = (recon - x).abs().mean()
    edges = sum((recon.diff(dim=d) - x.diff(dim=d)).abs().mean() for d in (-1, -2))
    kl = 0.5 * (posterior.mean.pow(2) + posterior.var - 1 - posterior.logvar).float().mean()  # per element
    loss = l1 + args.grad_weight * edges + args.kl_weight * kl
    psnr = -10 * math.log10(((recon.detach() - x) / 2).pow(2).mean().item() + 1e-12)
    return loss, {"loss": loss.item(), "l1": l1.item(), "kl": kl.item(), "psnr": psnr}


@torch.no_grad()
def init_encoder_scale(vae, world, args) -> None:
    """Data-dependent initialization (ours): scale the encoder's posterior means to zero mean and unit
    variance on real frames and start its noise small (σ = e^-2), so the decoder sees the picture from
    the first step. From the random init the means are ~0.15 and the noise σ ~1, and the decoder learns
    the average frame for hundreds of steps first."""
    x, _, _ = world.batch(args.vae_batch, args.frames, args.size)
    mean = vae.encode(x).latent_dist.mean.transpose(0, 1).flatten(1)         # [C, N]
    m, s = mean.mean(1), mean.std(1)
    C = len(m)
    q = vae.quant_conv
    q.weight[:C] /= s.view(C, 1, 1, 1, 1)
    q.bias[:C] = (q.bias[:C] - m) / s
    q.bias[C:] -= 4.0                                                        # log-variance: σ shrinks by e^-2


@torch.no_grad()
def calibrate_latents(vae, world, args, autocast, log, batches: int = 8) -> None:
    """Fold z' = a·z + b into the VAE so that model.py's normalization (z' − M)/S is standardized.

    With m, s the measured per-channel mean and std of the posterior means z and M, S the config's
    latents_mean/std: a = S/s, b = M − a·m. The encoder's quant_conv outputs (mean, log-variance):
    mean rows are scaled by a and shifted by b, log-variance rows shifted by 2·log a; the decoder's
    post_quant_conv takes z = (z' − b)/a, folded into its weights. Reconstructions do not change."""
    z = []
    for _ in range(batches):
        x, _, _ = world.batch(args.vae_batch, args.frames, args.size)
        with autocast:
            z.append(vae.encode(x).latent_dist.mean.float())                  # [B, C, f, h, w]
    z = torch.cat(z).transpose(0, 1).flatten(1)                               # [C, N]
    m, s = z.mean(1), z.std(1)
    M = torch.tensor(vae.config.latents_mean, device=z.device)
    S = torch.tensor(vae.config.latents_std, device=z.device)
    a, b = S / s, M - S / s * m
    C = len(m)
    q, post = vae.quant_conv, vae.post_quant_conv                            # 1×1×1 convs
    q.weight[:C] *= a.view(C, 1, 1, 1, 1)
    q.bias[:C] = q.bias[:C] * a + b
    q.bias[C:] += 2 * torch.log(a)
    post.bias += (post.weight[:, :, 0, 0, 0] @ (-b / a))
    post.weight /= a.view(1, C, 1, 1, 1)
    log("calibrate", {"latent_mean": m.tolist(), "latent_std": s.tolist()})


# ---------------------------------------------------------------------- phase 2: the transformer and text encoder

@torch.no_grad()
def encode_pool(model, world, args, deadline, autocast, log) -> list[tuple[torch.Tensor, list[str], torch.Tensor | None]]:
    """Videos encoded once, as model.py's normalized latents: [(latents [N, C, f, h, w], captions,
    face masks [N, f, h, w] or None)]; the masks only with --face-weight ≠ 1 (face_latent_mask)."""
    pools, t0 = [], time.time()
    n_long = int(args.pool_videos * args.long_fraction)
    with_faces = args.face_weight != 1.0
    for frames, count in ((args.frames, args.pool_videos - n_long), (args.long_frames, n_long)):
        latents, captions, masks = [], [], []
        batch = max(1, min(256, 2048 // frames))
        while len(captions) < count and (time.time() < deadline or not captions):
            x, caps, _, *boxes = world.batch(min(batch, count - len(captions)), frames, args.size, with_faces=with_faces)
            with autocast:
                z = model.vae.encode(x).latent_dist.mode().float()
            latents.append(model.normalize_latents(z).to(torch.bfloat16))          # model.py's latent space
            if with_faces:
                masks.append(face_latent_mask(boxes[0], z.shape[2:], args.size).to(torch.bfloat16))
            captions += caps
        if count and captions:
            latents = torch.cat(latents)
            pools.append((latents, captions, torch.cat(masks).to(latents.device) if masks else None))
        log("pool", {"frames": frames, "videos": len(captions), "seconds": time.time() - t0})
    return pools


def face_latent_mask(boxes: np.ndarray, latent_shape, size: int, margin: float = 1.25) -> torch.Tensor:
    """Which latent cells show the head: boxes [n, F, 3] (identities.face_boxes: centre x, y, half-height in
    output px; 0 where no one is shown) -> mask [n, f, h, w] in {0, 1}. A cell is in when its centre lies within
    margin × the head's half-height of the head's centre (hair and chin included). Wan's VAE keeps frame 0 as
    latent frame 0 and packs frames 4k−3..4k into latent frame k: a cell is in when any of those frames has it."""
    f, h, w = latent_shape
    n, frames, _ = boxes.shape
    cell = size / h                                                            # output px per latent cell
    centres = (np.arange(h) + 0.5) * cell                                      # [h] (square frames: w = h)
    b = boxes[:, :, :, None, None]                                             # [n, F, 3, 1, 1]
    inside = ((centres[None, None, None, :] - b[:, :, 0]) ** 2 + (centres[None, None, :, None] - b[:, :, 1]) ** 2
              < (margin * b[:, :, 2]) ** 2)                                    # [n, F, h, w]: y rows, x columns
    groups = [[0]] + [list(range(max(1, 4 * k - 3), min(frames, 4 * k + 1))) for k in range(1, f)]
    return torch.from_numpy(np.stack([inside[:, g].any(1) for g in groups], axis=1)).float()   # [n, f, h, w]


def train_transformer(model, pools, args, deadline, autocast, log) -> None:
    """Flow matching on the pool (the docstring's L_FM), transformer and text encoder together, EMA kept."""
    params = [p for m in (model.transformer, model.pipe.text_encoder) for p in m.parameters()]
    for module in (model.transformer, model.pipe.text_encoder):
        module.requires_grad_(True).train()
    ema = [p.detach().clone() for p in params]
    optimizer = torch.optim.AdamW(params, lr=args.dit_lr, betas=(0.9, 0.99), weight_decay=0.01)
    generator = torch.Generator().manual_seed(args.seed)
    device_generator = torch.Generator(model.device).manual_seed(args.seed)
    sizes = np.array([len(c) for _, c, _ in pools], float)                      # every pooled video equally often
    tokens = CaptionTokens(model, [c for _, captions, _ in pools for c in captions] + [""])
    step, t0, last_save, running = 0, time.time(), time.time(), []
    while step < args.dit_steps and time.time() < deadline:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(args.dit_lr, step, args.dit_steps, args.warmup, t0, deadline)
        latents, captions, masks = pools[np.random.default_rng([args.seed, step]).choice(len(pools), p=sizes / sizes.sum())]
        idx = torch.randint(0, len(captions), (args.dit_batch,), generator=generator)
        x0 = latents[idx.to(latents.device)].float()                          # [B, C, f, h, w]
        # w = 1 + (λ_face − 1)·[cell shows the head]: [B, 1, f, h, w] (all ones without --face-weight)
        weight = 1 + (args.face_weight - 1) * masks[idx.to(masks.device)].float()[:, None] if masks is not None else None
        drop = torch.rand(args.dit_batch, generator=generator) < args.caption_dropout
        texts = ["" if d else captions[i] for i, d in zip(idx.tolist(), drop.tolist())]
        t = model.sample_timesteps(args.dit_batch, generator)
        noise = torch.randn(x0.shape, generator=device_generator, device=x0.device)
        with autocast:
            pred = model.predict(model.add_noise(x0, noise, t), t, tokens.embed(texts))  # text: [B, L, D], with grad
        error = pred - model.target(x0, noise, t)                             # [B, C, f, h, w]
        loss = weighted_mean(error.pow(2), weight)
        if error.shape[2] > 1:  # the frame-to-frame term (docstring): same minimizer, more weight on motion
            frame_pairs = None if weight is None else torch.maximum(weight[:, :, 1:], weight[:, :, :-1])
            loss = loss + args.motion_weight * weighted_mean(error.diff(dim=2).pow(2), frame_pairs)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        with torch.no_grad():
            decay = min(args.ema, (1 + step) / (10 + step))                  # short memory while it warms up
            torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - decay)
        running.append(loss.detach())
        if step % 200 == 0:
            log("transformer", {"step": step, "loss": torch.stack(running).mean().item(), "seconds": time.time() - t0})
            running = []
        if time.time() - last_save > args.save_every_s:
            _with_ema(params, ema, lambda: save(model.pipe, ["transformer", "text_encoder"], args.out,
                                                args.transformer_dtype))
            last_save = time.time()
        step += 1
    log("transformer_end", {"steps": step, "stopped_by": "steps" if step >= args.dit_steps else "budget",
                            "seconds": time.time() - t0})
    with torch.no_grad():
        for p, e in zip(params, ema):
            p.copy_(e)
    for module in (model.transformer, model.pipe.text_encoder):
        module.requires_grad_(False).eval()


def weighted_mean(values: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """Σ w·v / Σ w over every element (w broadcast over channels): the plain mean when weight is None. Normalized
    by the weights' sum, so --face-weight moves the loss's emphasis, not its scale or the learning rate's meaning."""
    if weight is None:
        return values.mean()
    weight = weight.expand_as(values)
    return (weight * values).sum() / weight.sum()


class CaptionTokens:
    """The captions' token ids, tokenized once (the vocabulary is small), and their text embeddings with
    grad: what WanPipeline.encode_prompt computes (the encoder's hidden states of the real tokens, zeros
    after them), minus the per-step tokenization that dominated a step on the GPU."""

    def __init__(self, model, captions: list[str]):
        self.text_encoder = model.pipe.text_encoder
        self.index = {c: i for i, c in enumerate(dict.fromkeys(captions))}
        batch = model.pipe.tokenizer(list(self.index), padding="max_length", max_length=model.defaults.max_text_tokens,
                                     truncation=True, add_special_tokens=True, return_attention_mask=True,
                                     return_tensors="pt")
        self.ids, self.mask = batch.input_ids.to(model.device), batch.attention_mask.to(model.device)  # [U, L]

    def embed(self, texts: list[str]) -> torch.Tensor:
        rows = torch.tensor([self.index[t] for t in texts], device=self.ids.device)
        ids, mask = self.ids[rows], self.mask[rows]                                      # [B, L]
        hidden = self.text_encoder(ids, mask).last_hidden_state                          # [B, L, D]
        return hidden * mask[..., None].to(hidden.dtype)


def _with_ema(params, ema, fn) -> None:
    """Run fn with the EMA weights swapped in, then put the trained ones back."""
    with torch.no_grad():
        backup = [p.detach().clone() for p in params]
        for p, e in zip(params, ema):
            p.copy_(e)
        fn()
        for p, b in zip(params, backup):
            p.copy_(b)


def save(pipe, components, out: str, transformer_dtype: str = "fp32") -> None:
    """<out>/<component>.safetensors, fp32 (the transformer in bf16 if asked: tiny.py casts it back on
    loading), written under a temporary name and moved into place."""
    from safetensors.torch import save_file

    for name in components:
        # clone: the text encoder ties its embedding to `shared`, and safetensors stores no shared tensors
        dtype = torch.bfloat16 if name == "transformer" and transformer_dtype == "bf16" else torch.float32
        state = {k: v.detach().to(dtype).cpu().clone() for k, v in getattr(pipe, name).state_dict().items()}
        path = os.path.join(out, f"{name}.safetensors")
        with replacing(path) as partial:
            save_file(state, str(partial))


class Log:
    """Print each record and append it to a JSON-lines file."""

    def __init__(self, path: str):
        self.path = path

    def __call__(self, event: str, record: dict) -> None:
        line = json.dumps({"event": event, **record})
        print(line, flush=True)
        with open(self.path, "a") as handle:
            handle.write(line + "\n")


if __name__ == "__main__":
    main()

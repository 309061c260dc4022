"""toyworld/train_face.py — train the toy world's face-embedding model (toy_face.py), the toy ArcFace.

Real MagicID scores identity with ArcFace, a network trained to tell real people apart. Here the people
are procedural identities (identities.py), so the embedding is trained on them: renders of identity seeds
0..N−1 (never a held-out seed >= 1,000,000: identities.PopulationWorld refuses them), each in a few videos
with their own pose, expression, lighting, clothes, background and framing (the world's nuisance).

Data. Each frame's head box is known exactly (identities.face_boxes); a detector's box is simulated from
it (HOG's measured offset and width on the renders, plus its noise) and cut out with the encoder's own
crop (toy_face.face_crop), so training and scoring crop alike. What the tiny video model does to a face
is imitated: a share of the crops goes through the tiny VAE's encode/decode, and every batch is degraded
at random (gaussian blur, downscale-upscale, noise, colour and contrast jitter): toyworld/generated_look.py.

Loss (CosFace, Wang et al. 2018, the additive-margin softmax of the ArcFace family): over the identities
with class centres w_j (unit vectors), for an embedding e of identity y,

    L = −log( exp(s·(cos θ_y − m)) / (exp(s·(cos θ_y − m)) + Σ_{j≠y} exp(s·cos θ_j)) ),   cos θ_j = w_j·e

so an identity's crops must sit closer to their own centre than to any other by the margin m.

    OMP_NUM_THREADS=1 python toyworld/train_face.py          # ~20 min on one CPU core -> weights/toyface/

Writes model.safetensors, config.json and train_log.json (the loss curve and a check on identities it
never saw: seeds just below the held-out range, still pretraining seeds). Exports: main, TrainConfig,
render_training_crops, detector_like_boxes, cosface_loss, pair_auc.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root

from toy_face import TOYFACE_WEIGHTS, ToyFaceNet, crops_to_tensor, face_crop  # noqa: E402
from toyworld import identities, world as toy  # noqa: E402
from toyworld.generated_look import generated_look, vae_round_trip  # noqa: E402

# dlib's HOG box on the world's renders, in head half-heights h relative to the renderer's head box (centre
# cx, cy; half-height h): centre (cx + 0.00·h, cy + 0.18·h), width 1.54·h (σ 0.05, 0.06, 0.12 over 66 faces;
# MTCNN's, found where HOG missed: cy + 0.12·h, width 1.47·h). The simulated box draws from both.
BOX_DY, BOX_WIDTH = (0.12, 0.18), 1.5
BOX_NOISE = {"dx": 0.05, "dy": 0.06, "log_width": 0.08}


@dataclass
class TrainConfig:
    identities: int = 2000
    videos: int = 3
    frames: int = 3
    vae_share: float = 0.25
    steps: int = 1600
    batch: int = 128
    lr: float = 2e-3
    weight_decay: float = 5e-4
    scale: float = 30.0
    margin: float = 0.2
    check_identities: int = 100
    seed: int = 0


HELP = {  # one line per TrainConfig field, for --help
    "identities": "train on identity seeds 0..N-1 (pretraining seeds: N <= 1,000,000)",
    "videos": "videos per identity, each with its own pose, light, clothes, background, shot",
    "frames": "frames per video (each a crop)",
    "vae_share": "share of the crops that go through the tiny VAE's encode/decode",
    "steps": "optimizer steps", "batch": "crops per step", "lr": "AdamW learning rate (cosine schedule)",
    "weight_decay": "AdamW weight decay", "scale": "CosFace scale s", "margin": "CosFace margin m (cosine units)",
    "check_identities": "identities never trained on (the highest pretraining seeds) for the final check",
    "seed": "rendering, augmentation and initialisation seed",
}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for field in dataclasses.fields(TrainConfig):
        p.add_argument("--" + field.name.replace("_", "-"), type=type(field.default), default=field.default,
                       help=f"{HELP[field.name]} (default {field.default})")
    p.add_argument("--out", default=str(TOYFACE_WEIGHTS), help="folder for model.safetensors, config.json, train_log.json")
    args = p.parse_args(argv)
    config = TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})
    torch.manual_seed(config.seed)
    start = time.time()
    crops, labels = render_training_crops(list(range(config.identities)), config.videos, config.frames,
                                          config.vae_share, config.seed)
    print(f"{len(crops)} crops of {config.identities} identities in {time.time() - start:.0f} s", flush=True)
    net, log = train(crops, labels, config)
    check = check_unseen(net, config)
    log.update(check, seconds=round(time.time() - start, 1), config=dataclasses.asdict(config))
    save(net, log, Path(args.out))
    print(json.dumps(check), flush=True)
    return log


def render_training_crops(seeds: list[int], videos: int, frames: int, vae_share: float, seed: int,
                          chunk: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Head crops of `videos` videos × `frames` frames of each seed -> (crops uint8 [N, 64, 64, 3], labels [N],
    the seed's index in `seeds`). A held-out seed raises identities.HeldOutIdentityError before anything renders."""
    for s in seeds:
        identities.check_pretraining_seed(s)
    population = identities.PopulationWorld(toy.ToyWorld("cpu", seed=[seed, 26]))
    rng = np.random.default_rng([seed, 27])
    owners = np.repeat(np.arange(len(seeds)), videos)                          # [n videos]
    crops, labels = [], []
    for begin in range(0, len(owners), chunk):
        part = owners[begin:begin + chunk]
        video, _, _, heads = population.batch_of([seeds[i] for i in part], frames, 128, with_faces=True)
        frames_u8 = toy.to_uint8(video)                                        # [n, F, 128, 128, 3]
        boxes = detector_like_boxes(heads, rng)                                # [n, F, 4]
        for v, owner in enumerate(part):
            crops += [face_crop(frames_u8[v, f], boxes[v, f]) for f in range(frames)]
            labels += [owner] * frames
    crops, labels = np.stack(crops), np.array(labels)
    through_vae = rng.random(len(crops)) < vae_share
    if through_vae.any():  # each crop a 1-frame video: it holds the head at about its size in a 128-px frame
        crops[through_vae] = toy.to_uint8(vae_round_trip(crops_to_tensor(crops[through_vae]).unsqueeze(2)))[:, 0]
    return crops, labels


def detector_like_boxes(heads: np.ndarray, rng) -> np.ndarray:
    """Renderer head boxes [..., 3] (cx, cy, half-height h) -> boxes [..., 4] (x0, y0, x1, y1) where a face
    detector would put them (BOX_DY, BOX_WIDTH and BOX_NOISE, measured with dlib's HOG and MTCNN)."""
    cx, cy, h = heads[..., 0], heads[..., 1], heads[..., 2]
    x = cx + rng.normal(0, BOX_NOISE["dx"], cx.shape) * h
    y = cy + (rng.choice(BOX_DY, cy.shape) + rng.normal(0, BOX_NOISE["dy"], cy.shape)) * h
    half_width = BOX_WIDTH / 2 * h * np.exp(rng.normal(0, BOX_NOISE["log_width"], h.shape))
    return np.stack([x - half_width, y - half_width, x + half_width, y + half_width], axis=-1)


def train(crops: np.ndarray, labels: np.ndarray, config: TrainConfig) -> tuple[ToyFaceNet, dict]:
    """CosFace over the identities, AdamW, cosine learning rate after a short warm-up."""
    rng = np.random.default_rng([config.seed, 28])
    net = ToyFaceNet()
    centres = torch.nn.Parameter(torch.randn(int(labels.max()) + 1, net.dim) * 0.01)  # w_j: [identities, 128]
    optimizer = torch.optim.AdamW([*net.parameters(), centres], lr=config.lr, weight_decay=config.weight_decay)
    warmup = max(1, config.steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1, (step + 1) / warmup) * 0.5 * (
        1 + math.cos(math.pi * min(1.0, step / config.steps))))
    log, losses, start = {"steps": []}, [], time.time()
    net.train()
    for step in range(config.steps):
        pick = rng.integers(0, len(crops), config.batch)
        x = crops_to_tensor(generated_look(crops[pick], rng))                 # [B, 3, 64, 64]
        loss, accuracy = cosface_loss(net(x), centres, torch.from_numpy(labels[pick]), config.scale, config.margin)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append((loss.item(), accuracy))
        if (step + 1) % 50 == 0 or step + 1 == config.steps:
            mean = np.mean(losses, axis=0)
            log["steps"].append({"step": step + 1, "loss": round(float(mean[0]), 4),
                                 "accuracy": round(float(mean[1]), 4), "seconds": round(time.time() - start, 1)})
            print(json.dumps(log["steps"][-1]), flush=True)
            losses = []
    return net.eval(), log


def cosface_loss(emb: torch.Tensor, centres: torch.Tensor, labels: torch.Tensor, scale: float, margin: float):
    """emb [B, D] unit, centres [K, D] (normalised here), labels [B] -> (the module docstring's L, mean over
    the batch; the share of the batch whose nearest centre is its own)."""
    cos = emb @ torch.nn.functional.normalize(centres, dim=1).T                # [B, K]
    own = torch.nn.functional.one_hot(labels, cos.shape[1]).bool()
    loss = torch.nn.functional.cross_entropy(scale * torch.where(own, cos - margin, cos), labels)
    return loss, float((cos.argmax(1) == labels).float().mean())


def check_unseen(net: ToyFaceNet, config: TrainConfig) -> dict:
    """Same-vs-different separation of identities the training never saw (the highest pretraining seeds),
    clean and through generated_look at full strength: pair AUC and the mean cosine of each kind."""
    seeds = list(range(identities.HELDOUT_FROM - config.check_identities, identities.HELDOUT_FROM))
    crops, labels = render_training_crops(seeds, 2, 3, 0.0, config.seed + 1)
    result = {}
    for name, look in (("clean", crops), ("degraded", generated_look(crops, np.random.default_rng(1)))):
        with torch.no_grad():
            emb = net(crops_to_tensor(look)).numpy()                           # [N, 128]
        result[f"unseen_{name}"] = pair_auc(emb, labels)
    return result


def pair_auc(emb: np.ndarray, labels: np.ndarray) -> dict:
    """All pairs of rows: AUC of same-identity cosines over different-identity ones, and both means."""
    from toyworld.identity_gate import auc

    cos = emb @ emb.T
    upper = np.triu(np.ones_like(cos, bool), k=1)
    same = labels[:, None] == labels[None, :]
    return {"auc": round(auc(cos[upper & same], cos[upper & ~same]), 4),
            "same": round(float(cos[upper & same].mean()), 4), "cross": round(float(cos[upper & ~same].mean()), 4)}


def save(net: ToyFaceNet, log: dict, out: Path) -> None:
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps({"widths": list(net.widths), "dim": net.dim}, indent=1))
    (out / "train_log.json").write_text(json.dumps(log, indent=1))


if __name__ == "__main__":
    main()

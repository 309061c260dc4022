"""toyworld/train_face_detector.py — trains the toy world's own face detector (its RetinaFace): toy_face.ToyFaceDetector.

Why: the population base draws a face in nearly every frame of a "a person …" video, but dlib's HOG and MTCNN,
trained on photographs, find it in about half of them (toyworld/README.md, "The toy face detector"). In the real
method the ID reward's detector (insightface's RetinaFace) finds the faces a video model draws; here that role
needs a detector that has seen this world's faces, as the toy face embedding (train_face.py) and the toy prompt
judge do for theirs.

The detector (toy_face.FaceDetectorNet) is CenterNet-like (Zhou et al. 2019, "Objects as Points"):

    heat[i, j]  = P(a head's centre falls in cell (i, j))          16 × 16 cells of 8 px       (focal loss)
    size[i, j]  = log(h / 128) at a centre cell                      h: the head's half-height   (L1)
    offset      = where in its cell the centre lies, in [0, 1]²                                 (L1)

Training boxes come from the renderer (identities.face_boxes: the head's centre and half-height, exact).
Data: identity seeds below 1,000,000 only (PopulationWorld refuses held-out ones), other subjects without
people as negatives, each frame degraded like a generated one (a zoom towards the head as in the identity
stage's close-ups, blur, down- and up-sampling, colour, noise; 30 % of the videos through the tiny VAE's round trip).

    python toyworld/train_face_detector.py --minutes 14 --pool-videos 1600   # the shipped weights, ~26 min on 2 busy cores
    python toyworld/train_face_detector.py --check                           # held-out renders: hits, false positives

Exports: targets, detector_loss, render_pool, degrade, train, check_on_renders, main.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from toy_face import (DETECTOR_WEIGHTS as WEIGHTS, DETECT_SIZE, DETECT_STRIDE, DETECT_THRESHOLD,  # noqa: E402,F401
                      FaceDetectorNet, ToyFaceDetector, head_to_face_box)

def targets(heads: np.ndarray) -> tuple[torch.Tensor, ...]:
    """Heads [B, 3] (centre x, y, half-height in DETECT_SIZE px; half 0: no one) -> heat [B, G, G] (a Gaussian of
    σ = max(0.7, half / 3 / DETECT_STRIDE) cells at the centre), and at the centre cell: mask, log size, offsets."""
    G = DETECT_SIZE // DETECT_STRIDE
    B = len(heads)
    heat, mask = torch.zeros(B, G, G), torch.zeros(B, G, G, dtype=torch.bool)
    size, offset = torch.zeros(B, G, G), torch.zeros(B, 2, G, G)
    grid = torch.arange(G).float()
    for b, (cx, cy, half) in enumerate(heads):
        if half <= 0:
            continue
        gx, gy = cx / DETECT_STRIDE, cy / DETECT_STRIDE
        i, j = int(np.clip(gy, 0, G - 1)), int(np.clip(gx, 0, G - 1))
        sigma = max(0.7, half / 3 / DETECT_STRIDE)
        heat[b] = torch.exp(-((grid[None, :] - j) ** 2 + (grid[:, None] - i) ** 2) / (2 * sigma**2))
        mask[b, i, j] = True
        size[b, i, j] = float(np.log(half / DETECT_SIZE))
        offset[b, :, i, j] = torch.tensor([np.clip(gx - j, 0, 1), np.clip(gy - i, 0, 1)])
    return heat, mask, size, offset


def detector_loss(out: torch.Tensor, heat, mask, size, offset) -> torch.Tensor:
    """CenterNet's focal loss on the heat map (α = 2, β = 4) + L1 on size and offset at the centre cells."""
    p = torch.sigmoid(out[:, 0]).clamp(1e-4, 1 - 1e-4)
    positive = heat >= 1 - 1e-6
    focal = torch.where(positive, -(1 - p) ** 2 * torch.log(p), -((1 - heat) ** 4) * p**2 * torch.log(1 - p))
    n = max(1, int(positive.sum()))
    loss = focal.sum() / n
    if mask.any():
        loss = loss + F.l1_loss(out[:, 1][mask], size[mask]) + F.l1_loss(
            torch.sigmoid(out[:, 2:4].permute(0, 2, 3, 1)[mask]), offset.permute(0, 2, 3, 1)[mask])
    return loss


# ---- training ------------------------------------------------------------------------------------------------

def render_pool(videos: int, seed: int, people_share: float = 0.75, frames: int = 5, vae_share: float = 0.3):
    """Frames of the pretraining world (identity seeds < 1,000,000; other subjects without people) ->
    frames uint8 [N, 128, 128, 3], heads [N, 3] (centre x, y, half-height px; 0: no one). A vae_share of the
    videos go through the tiny VAE's round trip (generated_look.vae_round_trip: tiny-toyworld shares that VAE), the
    blur a generated frame has."""
    from toyworld import identities, world as toy
    from toyworld.generated_look import vae_round_trip

    world = toy.ToyWorld("cpu", seed=seed, people_share=people_share)
    world.people = identities.PopulationWorld(world)
    all_frames, all_heads = [], []
    for start in range(0, videos, 32):
        clips, _, _, heads = world.batch(min(32, videos - start), frames, DETECT_SIZE, with_faces=True)  # [n, 3, F, H, W]
        through_vae = world.rng.random(len(clips)) < vae_share
        if through_vae.any():
            clips[torch.from_numpy(through_vae)] = vae_round_trip(clips[torch.from_numpy(through_vae)])
        clips = toy.to_uint8(clips)                                                       # [n, F, H, W, 3]
        all_frames.append(clips.reshape(-1, DETECT_SIZE, DETECT_SIZE, 3))
        all_heads.append(heads.reshape(-1, 3))
    return np.concatenate(all_frames), np.concatenate(all_heads).astype(np.float32)


def degrade(x: torch.Tensor, heads: np.ndarray, rng) -> tuple[torch.Tensor, np.ndarray]:
    """A batch [B, 3, 128, 128] in [-1, 1] made to look generated: a zoom towards the head (the identity stage's
    close-ups), blur, down- and up-sampling, colour and noise. heads [B, 3] follow the zoom."""
    x, heads = x.clone(), heads.copy()
    for b in range(len(x)):
        if rng.random() < 0.3 and heads[b, 2] > 0:                    # zoom in up to 2x, keeping the head inside
            z = rng.uniform(1.0, 2.0)
            side = DETECT_SIZE / z
            cx, cy = heads[b, :2]
            x0 = float(np.clip(cx - rng.uniform(0.3, 0.7) * side, 0, DETECT_SIZE - side))
            y0 = float(np.clip(cy - rng.uniform(0.3, 0.7) * side, 0, DETECT_SIZE - side))
            left, top, width = int(x0), int(y0), int(side)                 # one square, cut and mapped alike
            crop = x[b:b + 1, :, top:top + width, left:left + width]
            x[b] = F.interpolate(crop, size=(DETECT_SIZE, DETECT_SIZE), mode="bilinear", align_corners=False)[0]
            heads[b] = [(cx - left) * DETECT_SIZE / width, (cy - top) * DETECT_SIZE / width, heads[b, 2] * DETECT_SIZE / width]
        if rng.random() < 0.6:                                        # blur, σ up to 1.8 px
            sigma = rng.uniform(0.3, 1.8)
            k = torch.arange(-4, 5).float()
            kernel = torch.exp(-k**2 / (2 * sigma**2))
            kernel = kernel / kernel.sum()
            img = x[b:b + 1].transpose(0, 1)                                            # [3, 1, H, W]
            img = F.conv2d(F.pad(img, (4, 4, 0, 0), mode="replicate"), kernel.view(1, 1, 1, 9))
            x[b] = F.conv2d(F.pad(img, (0, 0, 4, 4), mode="replicate"), kernel.view(1, 1, 9, 1)).transpose(0, 1)[0]
        if rng.random() < 0.4:                                        # down to 32-96 px and back
            small = int(rng.uniform(32, 96))
            x[b] = F.interpolate(F.interpolate(x[b:b + 1], size=small, mode="area"), size=DETECT_SIZE, mode="bilinear",
                                 align_corners=False)[0]
    gain = torch.from_numpy(rng.uniform(0.75, 1.25, (len(x), 3, 1, 1))).float()
    shift = torch.from_numpy(rng.uniform(-0.15, 0.15, (len(x), 3, 1, 1))).float()
    noise = torch.randn_like(x) * torch.from_numpy(rng.uniform(0, 0.08, (len(x), 1, 1, 1))).float()
    return ((x * gain + shift + noise).clamp(-1, 1)), heads


def train(minutes: float, pool_videos: int, seed: int = 0, width: int = 64, batch_size: int = 48, lr: float = 2e-3,
          out: Path = WEIGHTS) -> dict:
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    start = time.time()
    frames, heads = render_pool(pool_videos, seed)
    print(f"pool: {len(frames)} frames, {(heads[:, 2] > 0).mean():.2f} with a person, {time.time() - start:.0f} s", flush=True)
    pixels = torch.from_numpy(frames).permute(0, 3, 1, 2)                                # uint8 [N, 3, H, W]
    net = FaceDetectorNet(width)
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    deadline, log, step = time.time() + minutes * 60, [], 0
    while time.time() < deadline:
        pick = rng.integers(0, len(frames), batch_size)
        x, h = degrade(pixels[pick].float() / 127.5 - 1, heads[pick], rng)
        loss = detector_loss(net(x), *targets(h))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step += 1
        if step % 100 == 0:
            log.append({"step": step, "loss": round(loss.item(), 4), "seconds": round(time.time() - start)})
            print(log[-1], flush=True)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(out / "model.safetensors"))
    config = {"width": width, "threshold": DETECT_THRESHOLD, "size": DETECT_SIZE, "stride": DETECT_STRIDE, "pool_videos": pool_videos,
              "seed": seed, "steps": step, "minutes": minutes, "batch_size": batch_size, "lr": lr}
    (out / "config.json").write_text(json.dumps(config, indent=1))
    (out / "train_log.json").write_text(json.dumps(log))
    return config


def check_on_renders(detector: ToyFaceDetector, identities_n: int = 24, first: int = 1_000_700, seed: int = 7) -> dict:
    """On held-out identities (seeds from `first`: rendered for evaluation only) and on subjects without people:
    hit rate (a face centred within a quarter of the head's height of the truth), false-positive rate (a face where no one is),
    clean and degraded (degrade's blur, resampling, colour, noise; no zoom)."""
    from toyworld import identities, world as toy

    world = toy.ToyWorld("cpu", seed=seed)
    people, _, _, heads = identities.render_identity_videos(list(range(first, first + identities_n)), world, frames=5,
                                                            size=DETECT_SIZE, with_faces=True)
    canvases = toy.render(world.backgrounds(identities_n), torch.from_numpy(np.stack(
        [toy.camera_path("still", 5, DETECT_SIZE, world.rng) for _ in range(identities_n)])).float(), DETECT_SIZE)
    rng = np.random.default_rng(seed)
    result = {}
    for name, videos, truth in (("people", people, heads), ("no one", canvases, None)):
        frames = toy.to_uint8(videos).reshape(-1, DETECT_SIZE, DETECT_SIZE, 3)
        for degraded in (False, True):
            x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1
            if degraded:
                x = degrade_no_zoom(x, rng)
            found = detector.detect(((x.permute(0, 2, 3, 1) + 1) * 127.5).round().clamp(0, 255).byte().numpy())
            key = f"{name}, {'degraded' if degraded else 'clean'}"
            if truth is None:
                result[key] = {"false_positive_rate": float(np.mean([bool(f) for f in found]))}
                continue
            hits = []
            for faces, (cx, cy, half) in zip(found, truth.reshape(-1, 3)):
                centre = head_to_face_box(cx, cy, half)
                hits.append(any(np.abs((box[:2] + box[2:]) / 2 - (centre[:2] + centre[2:]) / 2).max() < half / 2
                                for box, _ in faces))
            result[key] = {"hit_rate": float(np.mean(hits)), "frames": len(hits)}
    return result


def degrade_no_zoom(x: torch.Tensor, rng) -> torch.Tensor:
    heads = np.zeros((len(x), 3), np.float32)              # no head: degrade's zoom is skipped
    return degrade(x, heads, rng)[0]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="measure the shipped detector on held-out renders instead")
    p.add_argument("--minutes", type=float, default=14.0, help="training time (after rendering the pool)")
    p.add_argument("--pool-videos", type=int, default=1600, help="videos of 5 frames rendered once, then degraded")
    p.add_argument("--seed", type=int, default=0, help="the world's and the training's seed")
    p.add_argument("--out", default=str(WEIGHTS), help="the weights folder (written; --check reads it)")
    args = p.parse_args(argv)
    if args.check:
        result = check_on_renders(ToyFaceDetector(args.out))
        print(json.dumps(result, indent=1))
        return result
    return train(args.minutes, args.pool_videos, args.seed, out=Path(args.out))


if __name__ == "__main__":
    main()
